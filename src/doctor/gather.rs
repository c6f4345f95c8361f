//! Gathering doctor's facts from this node: kernel files, mountinfo, the CRI socket,
//! the kubelet's directories, the API, /proc/self/status, the OAP address. The BPF
//! part is in `probe`.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    is_mounted, parse_cap_eff, parse_lockdown, probe, ApiFacts, Facts, MountState, OapFacts,
    Privileges, RuntimeSocket, RuntimeState,
};
use crate::resolve::api::{ApiClient, ApiSettings};
use crate::resolve::cri;
use crate::resolve::k8s::{in_cluster_available, DEFAULT_CRI_SOCKETS};
use crate::resolve::node::cgroup2_mount;

/// What to look at.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub host_root: PathBuf,
    pub cri_sockets: Vec<PathBuf>,
    pub containerd_state: PathBuf,
    pub kubelet_pods_dir: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub api_server: Option<String>,
    pub oap: Vec<String>,
    /// Skip the BPF probes (e.g. when only the node's files are of interest).
    pub skip_bpf: bool,
    /// How the capture programs' hooks are chosen.
    pub hooks: crate::capture::HookMode,
    /// Bound on each network check (CRI, API, OAP).
    pub timeout: Duration,
}

fn host_path(root: &Path, p: &Path) -> PathBuf {
    if root == Path::new("/") || p.starts_with(root) {
        p.to_path_buf()
    } else {
        root.join(p.strip_prefix("/").unwrap_or(p))
    }
}

fn uname() -> (String, String) {
    // SAFETY: uname fills a zeroed utsname; the fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return ("unknown".into(), "unknown".into());
        }
        let s = |f: &[libc::c_char]| {
            std::ffi::CStr::from_ptr(f.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        (s(&u.release), s(&u.machine))
    }
}

fn count_dirs(p: &Path) -> Option<usize> {
    let rd = std::fs::read_dir(p).ok()?;
    Some(
        rd.filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .count(),
    )
}

fn mount_fs(fstype: &str, point: &str) -> Result<(), String> {
    let src = std::ffi::CString::new("nodev").map_err(|e| e.to_string())?;
    let fs = std::ffi::CString::new(fstype).map_err(|e| e.to_string())?;
    let dir = std::ffi::CString::new(point).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount {fstype} on {point}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// tracefs and securityfs for the checks: when the host has not mounted them, doctor
/// mounts them in a mount namespace of its own (nothing changes for the host). Must run
/// while the process has a single thread (unshare(CLONE_NEWNS)).
pub fn ensure_mounts() -> (MountState, MountState) {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let has_tracefs = is_mounted(&mi, "/sys/kernel/tracing", "tracefs")
        || is_mounted(&mi, "/sys/kernel/debug/tracing", "tracefs");
    let has_secfs = is_mounted(&mi, "/sys/kernel/security", "securityfs");
    if has_tracefs && has_secfs {
        return (MountState::Host, MountState::Host);
    }
    // SAFETY: unshare and mount with valid arguments; a failure is reported, not fatal.
    let private = unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            Err(format!(
                "unshare(CLONE_NEWNS): {}",
                std::io::Error::last_os_error()
            ))
        } else if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            Err(format!(
                "making / private: {}",
                std::io::Error::last_os_error()
            ))
        } else {
            Ok(())
        }
    };
    let one = |present: bool, fstype: &str, point: &str| -> MountState {
        if present {
            return MountState::Host;
        }
        match &private {
            Err(why) => MountState::Missing { why: why.clone() },
            Ok(()) => match mount_fs(fstype, point) {
                Ok(()) => MountState::Private,
                Err(why) => MountState::Missing { why },
            },
        }
    };
    (
        one(has_tracefs, "tracefs", "/sys/kernel/tracing"),
        one(has_secfs, "securityfs", "/sys/kernel/security"),
    )
}

/// Gather everything.
pub fn gather(inp: &Inputs) -> Facts {
    let (tracefs, securityfs) = if inp.skip_bpf {
        (MountState::Unknown, MountState::Unknown)
    } else {
        ensure_mounts()
    };
    let (release, machine) = uname();
    let root = &inp.host_root;
    let mut f = Facts {
        kernel_release: release,
        machine,
        btf_bytes: std::fs::metadata("/sys/kernel/btf/vmlinux")
            .ok()
            .map(|m| m.len()),
        lockdown: std::fs::read_to_string("/sys/kernel/security/lockdown")
            .ok()
            .and_then(|t| parse_lockdown(&t)),
        tracefs,
        securityfs,
        ..Facts::default()
    };
    f.privileges = Privileges {
        // SAFETY: geteuid has no preconditions.
        uid: unsafe { libc::geteuid() },
        cap_eff: std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_cap_eff(&s))
            .unwrap_or(0),
    };
    if !inp.skip_bpf {
        f.probes = probe::run_all();
        let (capture, hooks) = probe::capture_programs(inp.hooks);
        f.capture = Some(capture);
        f.hooks = hooks;
    }
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        f.cgroup2 = cgroup2_mount(&mi, root);
    }
    if let Some(cg) = &f.cgroup2 {
        f.kubepods_cgroup = cg.join("kubepods").is_dir() || cg.join("kubepods.slice").is_dir();
    }
    let sockets: Vec<PathBuf> = if inp.cri_sockets.is_empty() {
        DEFAULT_CRI_SOCKETS.iter().map(PathBuf::from).collect()
    } else {
        inp.cri_sockets.clone()
    };
    for s in sockets {
        let path = host_path(root, &s);
        let state = runtime_state(&path, inp.timeout);
        f.runtimes.push(RuntimeSocket { path, state });
    }
    f.containerd_state = host_path(root, &inp.containerd_state);
    f.containerd_bundles = count_dirs(&f.containerd_state);
    f.kubelet_pods_dir = host_path(root, &inp.kubelet_pods_dir);
    f.kubelet_pods = count_dirs(&f.kubelet_pods_dir);
    f.api = api_facts(inp);
    f.oap = inp.oap.iter().map(|a| oap_facts(a, inp.timeout)).collect();
    f
}

fn runtime_state(path: &Path, timeout: Duration) -> RuntimeState {
    let Ok(md) = std::fs::metadata(path) else {
        return RuntimeState::Absent;
    };
    if !md.file_type().is_socket() {
        return RuntimeState::NotASocket;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return RuntimeState::Failed {
                error: e.to_string(),
            }
        }
    };
    rt.block_on(async {
        let call = async {
            let ch = cri::connect(path, timeout)
                .await
                .map_err(|e| format!("{e}"))?;
            let mut c = cri::RuntimeServiceClient::new(ch);
            let v = c
                .version(cri::pb::VersionRequest {
                    version: "v1".into(),
                })
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                .into_inner();
            Ok::<_, String>(RuntimeState::Answered {
                runtime: v.runtime_name,
                version: v.runtime_version,
                api: v.runtime_api_version,
            })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => RuntimeState::Failed { error },
            Err(_) => RuntimeState::Failed {
                error: format!("no answer within {timeout:?}"),
            },
        }
    })
}

/// The resources k8s-alog lists (what deploy/rbac.yaml grants).
const API_RESOURCES: [(&str, &str); 4] = [
    ("pods", "/api/v1/pods?limit=1"),
    ("services", "/api/v1/services?limit=1"),
    (
        "endpointslices",
        "/apis/discovery.k8s.io/v1/endpointslices?limit=1",
    ),
    ("nodes", "/api/v1/nodes?limit=1"),
];

fn api_facts(inp: &Inputs) -> ApiFacts {
    let in_cluster = in_cluster_available();
    let source = if let Some(k) = &inp.kubeconfig {
        Some(format!("kubeconfig {}", k.display()))
    } else if in_cluster {
        Some("in-cluster service account".to_string())
    } else {
        inp.api_server.as_ref().map(|u| format!("--api-server {u}"))
    };
    let mut out = ApiFacts {
        source,
        ..ApiFacts::default()
    };
    if out.source.is_none() {
        return out;
    }
    let settings = ApiSettings {
        kubeconfig: inp.kubeconfig.clone(),
        in_cluster,
        api_server: inp.api_server.clone(),
        timeout: inp.timeout,
    };
    let client = match ApiClient::from_settings(&settings) {
        Ok(Some(c)) => c,
        Ok(None) => {
            out.config_error = Some("no API server in the settings".into());
            return out;
        }
        Err(e) => {
            out.config_error = Some(format!("{e:#}"));
            return out;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.config_error = Some(e.to_string());
            return out;
        }
    };
    rt.block_on(async {
        match client.get("/version").await {
            Ok((st, body)) if st.is_success() => {
                let v = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|j| j["gitVersion"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "answers".into());
                out.version = Some(Ok(v));
            }
            Ok((st, _)) => out.version = Some(Err(format!("/version: {st}"))),
            Err(e) => out.version = Some(Err(format!("{e:#}"))),
        }
        if matches!(out.version, Some(Ok(_))) {
            for (name, path) in API_RESOURCES {
                let r = match client.get(path).await {
                    Ok((st, _)) if st.is_success() => Ok(()),
                    Ok((st, _)) => Err(st.to_string()),
                    Err(e) => Err(format!("{e:#}")),
                };
                out.access.push((name.to_string(), r));
            }
        }
    });
    out
}

fn oap_facts(addr: &str, timeout: Duration) -> OapFacts {
    let resolved = crate::netaddr::resolve(addr).map_err(|e| format!("{e:#}"));
    let connect = match &resolved {
        Ok(addrs) => {
            let mut errs = Vec::new();
            let mut ok: Option<SocketAddr> = None;
            for a in addrs {
                match TcpStream::connect_timeout(a, timeout) {
                    Ok(_) => {
                        ok = Some(*a);
                        break;
                    }
                    Err(e) => errs.push(format!("{a}: {e}")),
                }
            }
            Some(ok.ok_or_else(|| errs.join("; ")))
        }
        Err(_) => None,
    };
    OapFacts {
        addr: addr.to_string(),
        resolved,
        connect,
    }
}
