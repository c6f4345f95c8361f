//! `k8s-alog doctor`: gather the facts, print the table and the verdict, exit with the
//! verdict's code (see `doctor::exit`).

use std::io::Write;
use std::time::Duration;

use crate::cli::DoctorArgs;
use crate::doctor::{self, gather};

pub fn run(args: &DoctorArgs) -> anyhow::Result<()> {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 300.0) {
        anyhow::bail!(
            "--timeout {} must be between 0 and 300 seconds",
            args.timeout
        );
    }
    let k = &args.k8s;
    let inputs = gather::Inputs {
        host_root: k.host_root.clone(),
        cri_sockets: k.cri_sockets.clone(),
        containerd_state: k.containerd_state.clone(),
        kubelet_pods_dir: k.kubelet_pods_dir.clone(),
        kubeconfig: k.kubeconfig.clone(),
        api_server: k.api_server.clone(),
        oap: args.oap.clone(),
        skip_bpf: false,
        hooks: args.hooks,
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let facts = gather::gather(&inputs);
    let verdict = doctor::verdict(&facts);
    let text = if args.json {
        doctor::render_json(&facts, &verdict) + "\n"
    } else {
        doctor::render_text(&facts, &verdict)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    drop(out);
    // The verdict is the exit code: 0 only when capture runs fully.
    std::process::exit(i32::from(verdict.exit_code));
}
