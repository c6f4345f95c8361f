//! Kubernetes attribution through a REAL containerd: the test starts Debian's containerd
//! (CRI plugin, runc, bridge CNI on 198.18.42.0/24) with everything under a temporary
//! directory, imports images it builds itself (OCI layouts: busybox, the Go HTTPS fixture,
//! and the DaemonSet's image holding only the static binary), creates pod sandboxes and
//! containers through CRI with the project's own tonic client (as a kubelet with the
//! cgroupfs driver would), then checks:
//! - that the resolver names a pod from the CRI socket, and from containerd's task bundles
//!   alone, and that `k8s-alog record` attributes the pod's traffic;
//! - that deploy/daemonset.yaml, translated into CRI from the file, runs: k8s-alog in its
//!   pod captures HTTPS of processes already running, names the pods, delivers to a
//!   stand-in OAP collector (tests/oap), spools while the collector is away.
//!
//! Everything is removed at the end, also on failure (shims by pid, mounts, cgroups,
//! bridge, netns, CNI state, sysctl).
//!
//! Root only; needs `containerd runc containernetworking-plugins busybox-static`, and
//! `golang-go` and the static build's toolchain for the DaemonSet test (it runs
//! `make static` when `K8S_ALOG_BIN` is not a static binary).
//! Run: `cargo test --release --test k8s_cri -- --test-threads=1`.

mod common;
mod oap;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_alog::model::Endpoint;
use k8s_alog::resolve::cri::{self, pb, RuntimeServiceClient};
use k8s_alog::resolve::k8s::{K8sAttribution, K8sConfig};
use k8s_alog::resolve::Attribution;
use serde_json::{json, Value};
use tonic::transport::Channel;

use common::*;
use k8s_alog::sink::oap::pb as opb;
use oap::*;
use std::sync::Arc;

const BRIDGE: &str = "alogcri0";
const SUBNET: &str = "198.18.42.0/24";
const APP_IMAGE: &str = "k8s-alog.test/app:1";
const PAUSE_IMAGE: &str = "k8s-alog.test/pause:1";
const POD_NAME: &str = "shop-api-7d4b9c8f6d-x2x9k";
const POD_NS: &str = "cri-test";
const CONTAINER: &str = "api";
const PORT: u16 = 8080;

fn have(bin: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(bin).exists())
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha256_file(p: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(p));
    out.split_whitespace().next().unwrap().to_string()
}

/// Write `bytes` as a blob of an OCI layout; returns (digest, size).
fn blob(layout: &Path, tmp: &Path, bytes: &[u8]) -> (String, usize) {
    std::fs::write(tmp, bytes).unwrap();
    let d = sha256_file(tmp);
    std::fs::rename(tmp, layout.join("blobs/sha256").join(&d)).unwrap();
    (format!("sha256:{d}"), bytes.len())
}

/// What goes into a one-layer image.
struct Image<'a> {
    /// The name containerd lists it under (`ctr images import` takes it from the index).
    name: &'a str,
    /// busybox with the applets used here, a web root and the usual directories (the
    /// app image); without it the image holds nothing but `files` (FROM scratch).
    busybox: bool,
    /// (file on this machine, path in the image), copied with mode 0755.
    files: &'a [(&'a Path, &'a str)],
    entrypoint: &'a [&'a str],
}

/// The busybox image's entrypoint: a pause that exits on SIGTERM.
const PAUSE_ENTRYPOINT: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
];

/// An OCI-layout tarball with one layer holding what `img` says.
fn build_image(dir: &Path, img: &Image) -> PathBuf {
    let dir = dir.join(format!(
        "image-{}",
        img.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    if img.busybox {
        for d in ["bin", "www", "tmp", "proc", "sys", "dev", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "httpd"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("www/index.html"), "hello from the pod\n").unwrap();
    }
    for (src, dst) in img.files {
        use std::os::unix::fs::PermissionsExt;
        let to = rootfs.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src, &to).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer_tar = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("."));
    let layer_digest = format!("sha256:{}", sha256_file(&layer_tar));
    let layer_size = std::fs::metadata(&layer_tar).unwrap().len();
    std::fs::rename(
        &layer_tar,
        layout
            .join("blobs/sha256")
            .join(layer_digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": img.entrypoint, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let tmp = dir.join("blob.tmp");
    let (cfg_digest, cfg_size) = blob(&layout, &tmp, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
    });
    let (m_digest, m_size) = blob(&layout, &tmp, manifest.to_string().as_bytes());
    let tag = img.name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": img.name, "org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tarball = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    tarball
}

/// A pod uid unique per call and per run: a leftover of a crashed run never collides.
fn fresh_pod_uid() -> String {
    format!(
        "{:08x}-7b3d-4c8e-9a6f-{:012x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 & 0xffff_ffff_ffff)
            .unwrap_or(0)
    )
}

/// What a kubelet masks and makes read-only in a container's /proc and /sys by default
/// (`ConvertToRuntimeMaskedPaths`, `ConvertToRuntimeReadonlyPaths`); containerd masks
/// nothing when the lists are empty.
const KUBELET_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const KUBELET_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The namespaces a kubelet asks for (`namespacesForPod`): the node's when the pod
/// says so, else the pod's network and IPC and a PID namespace of the container's own.
fn namespaces(host_network: bool, host_pid: bool) -> pb::NamespaceOption {
    let mode = |host: bool, otherwise: pb::NamespaceMode| {
        if host {
            pb::NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    pb::NamespaceOption {
        network: mode(host_network, pb::NamespaceMode::Pod),
        pid: mode(host_pid, pb::NamespaceMode::Container),
        ipc: pb::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// A plain application container as a kubelet describes it (no securityContext in its
/// pod spec): own PID namespace, the default masked and read-only paths.
fn app_container(name: &str, image: &str) -> pb::ContainerConfig {
    let mut labels = HashMap::new();
    labels.insert("io.kubernetes.container.name".to_string(), name.to_string());
    pb::ContainerConfig {
        metadata: Some(pb::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(pb::ImageSpec {
            image: image.into(),
            annotations: HashMap::new(),
        }),
        labels,
        log_path: format!("{name}/0.log"),
        linux: Some(pb::LinuxContainerConfig {
            resources: None,
            security_context: Some(pb::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(false, false)),
                masked_paths: strings(KUBELET_MASKED_PATHS),
                readonly_paths: strings(KUBELET_READONLY_PATHS),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// containerd and everything it made; all of it removed on drop.
struct Rig {
    dir: tempfile::TempDir,
    containerd: Option<Child>,
    rt: tokio::runtime::Runtime,
    sandboxes: Vec<String>,
    /// The pods' cgroup levels (`kubepods/<qos>/pod<uid>`), removed at the end.
    pod_cgroups: Vec<String>,
    pod_uid: String,
    ip_forward: String,
    had_var_lib_cni: bool,
    had_run_containerd: bool,
    had_nat_table: bool,
}

impl Rig {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task/k8s.io")
    }

    fn start() -> Self {
        let had_nat_table = Command::new("nft")
            .args(["list", "table", "ip", "nat"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let dir = tempfile::Builder::new()
            .prefix("alog-cri-")
            .tempdir()
            .unwrap();
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            containerd: None,
            sandboxes: vec![],
            pod_cgroups: vec![],
            pod_uid: fresh_pod_uid(),
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap()
                .trim()
                .to_string(),
            had_var_lib_cni: Path::new("/var/lib/cni").exists(),
            had_run_containerd: Path::new("/run/containerd").exists(),
            had_nat_table,
            dir,
        }
    }

    fn launch(&mut self) {
        let d = self.dir.path().to_path_buf();
        std::fs::create_dir_all(d.join("cni")).unwrap();
        std::fs::write(
            d.join("cni/10-alog.conflist"),
            json!({
                "cniVersion": "0.4.0", "name": "alog-cri",
                "plugins": [
                    {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": d.join("cni-ipam")}},
                    {"type": "loopback"}
                ]
            })
            .to_string(),
        )
        .unwrap();
        let cfg = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), cfg).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.containerd = Some(child);
        wait_for_file(&self.sock(), Duration::from_secs(30));
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        let ch = self
            .rt
            .block_on(cri::connect(&self.sock(), Duration::from_secs(30)))
            .expect("connecting to the CRI socket");
        RuntimeServiceClient::new(ch)
    }

    fn ctr(&self, args: &[&str]) -> String {
        run(Command::new("ctr")
            .arg("-a")
            .arg(self.sock())
            .args(["-n", "k8s.io"])
            .args(args))
    }

    /// The pod of the first test: one busybox container serving HTTP, as a kubelet would
    /// describe it (its own PID namespace, on the pod network).
    fn shop_pod(&self) -> (pb::PodSandboxConfig, pb::ContainerConfig) {
        let uid = self.pod_uid.clone();
        let mut labels = HashMap::new();
        labels.insert("app".to_string(), "shopapi".to_string());
        labels.insert("pod-template-hash".to_string(), "7d4b9c8f6d".to_string());
        let sandbox = pb::PodSandboxConfig {
            metadata: Some(pb::PodSandboxMetadata {
                name: POD_NAME.into(),
                uid: uid.clone(),
                namespace: POD_NS.into(),
                attempt: 0,
            }),
            hostname: POD_NAME.into(),
            log_directory: self
                .dir
                .path()
                .join(format!("logs/{POD_NS}_{POD_NAME}_{uid}"))
                .to_string_lossy()
                .into_owned(),
            labels,
            annotations: HashMap::new(),
            linux: Some(pb::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: None,
                sysctls: HashMap::new(),
            }),
        };
        let container = pb::ContainerConfig {
            command: vec![
                "/bin/busybox".into(),
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                PORT.to_string(),
                "-h".into(),
                "/www".into(),
            ],
            ..app_container(CONTAINER, APP_IMAGE)
        };
        (sandbox, container)
    }

    /// Run a pod sandbox and one container in it, as a kubelet does (RunPodSandbox,
    /// CreateContainer, StartContainer); returns (sandbox id, container id, pod IP: empty
    /// on the host network).
    fn run_pod(
        &mut self,
        sandbox_config: pb::PodSandboxConfig,
        container: pb::ContainerConfig,
    ) -> (String, String, String) {
        let mut c = self.client();
        if let Some(l) = &sandbox_config.linux {
            self.pod_cgroups
                .push(l.cgroup_parent.trim_start_matches('/').to_string());
        }
        let sb = self
            .rt
            .block_on(c.run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        self.sandboxes.push(sb.clone());
        let ctr = self
            .rt
            .block_on(c.create_container(pb::CreateContainerRequest {
                pod_sandbox_id: sb.clone(),
                config: Some(container),
                sandbox_config: Some(sandbox_config),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log_tail()))
            .into_inner()
            .container_id;
        self.rt
            .block_on(c.start_container(pb::StartContainerRequest {
                container_id: ctr.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.log_tail()));
        let st = self
            .rt
            .block_on(c.pod_sandbox_status(pb::PodSandboxStatusRequest {
                pod_sandbox_id: sb.clone(),
                verbose: false,
            }))
            .expect("PodSandboxStatus")
            .into_inner();
        let ip = st
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        (sb, ctr, ip)
    }

    /// StopContainer with a grace period, as a kubelet stops a pod's container; returns
    /// how long it took and the exit code.
    fn stop_container(&self, id: &str, grace_seconds: i64) -> (Duration, i32) {
        let mut c = self.client();
        let t = Instant::now();
        self.rt
            .block_on(c.stop_container(pb::StopContainerRequest {
                container_id: id.to_string(),
                timeout: grace_seconds,
            }))
            .expect("StopContainer");
        let took = t.elapsed();
        let st = self
            .rt
            .block_on(c.container_status(pb::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }))
            .expect("ContainerStatus")
            .into_inner()
            .status
            .unwrap();
        (took, st.exit_code)
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        t.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The pid of the first process of a container (from its cgroup below `pod_cgroup`,
    /// e.g. `kubepods/besteffort/pod<uid>`).
    fn container_pid(&self, pod_cgroup: &str, id: &str) -> u32 {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let cg = k8s_alog::resolve::node::cgroup2_mount(&mi, Path::new("/")).expect("cgroup2");
        let dir = cg.join(pod_cgroup).join(id);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = k8s_alog::resolve::node::procs_of(&dir).first() {
                return *p;
            }
            assert!(Instant::now() < deadline, "no process in {}", dir.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Processes whose command line mentions `needle` (the shims this containerd started).
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) && pid != std::process::id() {
            out.push(pid);
        }
    }
    out
}

impl Drop for Rig {
    fn drop(&mut self) {
        let d = self.dir.path().to_path_buf();
        // Sandboxes first, through CRI (it tears down the CNI network and netns).
        if self.containerd.is_some() && self.sock().exists() && !self.sandboxes.is_empty() {
            if let Ok(ch) = self
                .rt
                .block_on(cri::connect(&self.sock(), Duration::from_secs(5)))
            {
                let mut c = RuntimeServiceClient::new(ch);
                // The last first: the DaemonSet's pod holds copies of the other pods'
                // mounts (through the task-state volume) until it stops.
                for sb in self.sandboxes.clone().into_iter().rev() {
                    let _ = self
                        .rt
                        .block_on(c.stop_pod_sandbox(pb::StopPodSandboxRequest {
                            pod_sandbox_id: sb.clone(),
                        }));
                    let _ =
                        self.rt
                            .block_on(c.remove_pod_sandbox(pb::RemovePodSandboxRequest {
                                pod_sandbox_id: sb,
                            }));
                }
            }
        }
        if let Some(mut c) = self.containerd.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Shims (and anything they left) by pid: they name our socket on their command line.
        for pid in pids_mentioning(&d.to_string_lossy()) {
            // SAFETY: kill(2); these processes were started for this test.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
        // Mounts below our directory (rootfs overlays, shm), deepest first.
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = mi
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&*d.to_string_lossy()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        // The pods' cgroup levels in every hierarchy (runc removes only the leaves).
        for l in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 4 && l.contains(" - cgroup") {
                for rel in &self.pod_cgroups {
                    let pod = Path::new(f[4]).join(rel);
                    if let Ok(rd) = std::fs::read_dir(&pod) {
                        for e in rd.flatten() {
                            if e.path().is_dir() {
                                let _ = std::fs::remove_dir(e.path());
                            }
                        }
                    }
                    let _ = std::fs::remove_dir(&pod);
                }
                for up in ["kubepods/besteffort", "kubepods/burstable", "kubepods"] {
                    let _ = std::fs::remove_dir(Path::new(f[4]).join(up));
                }
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(Stdio::null())
            .status();
        if !self.had_nat_table {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", "nat"])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward);
        if !self.had_var_lib_cni {
            let _ = std::fs::remove_dir_all("/var/lib/cni");
        }
        if !self.had_run_containerd {
            let _ = std::fs::remove_dir_all("/run/containerd");
        }
    }
}

fn prerequisites() -> bool {
    let missing: Vec<&str> = [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "nft",
        "tar",
        "sha256sum",
    ]
    .into_iter()
    .filter(|b| !have(b))
    .chain((!Path::new("/usr/lib/cni/bridge").exists()).then_some("containernetworking-plugins"))
    .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!("SKIPPED: missing {missing:?}: apt-get install containerd runc containernetworking-plugins busybox-static nftables");
    false
}

#[test]
fn cri_pod_attributed_from_the_socket_the_bundles_and_record() {
    if !require_root() || !prerequisites() {
        return;
    }
    let t0 = Instant::now();
    let mut rig = Rig::start();
    rig.launch();
    let tarball = build_image(
        rig.dir.path(),
        &Image {
            name: APP_IMAGE,
            busybox: true,
            files: &[],
            entrypoint: PAUSE_ENTRYPOINT,
        },
    );
    rig.ctr(&[
        "images",
        "import",
        "--platform",
        "linux/amd64",
        &tarball.to_string_lossy(),
    ]);
    rig.ctr(&["images", "tag", APP_IMAGE, PAUSE_IMAGE]);
    let (sb_config, ctr_config) = rig.shop_pod();
    let (sandbox, ctr_id, ip) = rig.run_pod(sb_config, ctr_config);
    assert!(ip.starts_with("198.18.42."), "pod IP {ip:?}");
    let pod_cgroup = format!("kubepods/besteffort/pod{}", rig.pod_uid);
    eprintln!(
        "containerd pod up in {:?}: sandbox {sandbox}, container {ctr_id}, ip {ip}",
        t0.elapsed()
    );
    let pid = rig.container_pid(&pod_cgroup, &ctr_id);
    // A real sample for the cgroup parser's tests.
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    eprintln!("/proc/{pid}/cgroup:\n{text}");
    let info = k8s_alog::resolve::cgroup::parse(&text);
    assert_eq!(info.container_id.as_deref(), Some(ctr_id.as_str()));
    assert_eq!(info.pod_uid.as_deref(), Some(rig.pod_uid.as_str()));
    // Wait until httpd listens.
    let addr: std::net::SocketAddr = format!("{ip}:{PORT}").parse().unwrap();
    wait_for_port(addr, Duration::from_secs(20));

    let cg_id = {
        use std::os::unix::fs::MetadataExt;
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let cg = k8s_alog::resolve::node::cgroup2_mount(&mi, Path::new("/")).unwrap();
        std::fs::metadata(cg.join(&pod_cgroup).join(&ctr_id))
            .unwrap()
            .ino()
    };
    let absent = rig.dir.path().join("absent");
    let process_end = || Endpoint {
        addr: Some(ip.parse().unwrap()),
        port: PORT,
        pid: Some(pid),
        cgroup_id: Some(cg_id),
        ..Endpoint::default()
    };

    // 1. The CRI socket: labels (service from `app`), the pod IP.
    let mut k = K8sAttribution::start(K8sConfig {
        cri_sockets: vec![rig.sock()],
        containerd_state_dir: absent.clone(),
        kubelet_pods_dir: absent.clone(),
        in_cluster: false,
        ..K8sConfig::default()
    })
    .unwrap();
    let mut ep = process_end();
    k.attribute_process(&mut ep);
    assert_eq!(ep.pod.as_deref(), Some(POD_NAME), "{ep:?}");
    assert_eq!(ep.namespace.as_deref(), Some(POD_NS));
    assert_eq!(ep.container.as_deref(), Some(CONTAINER));
    assert_eq!(ep.service.as_deref(), Some("shopapi.cri-test"), "label app");
    let mut remote = Endpoint {
        addr: Some(ip.parse().unwrap()),
        port: PORT,
        ..Endpoint::default()
    };
    k.attribute_address(&mut remote, None);
    assert_eq!(
        (remote.pod.as_deref(), remote.resolved_by.as_deref()),
        (Some(POD_NAME), Some("pod_ip"))
    );
    assert_eq!(remote.container.as_deref(), Some(CONTAINER));
    let st = k.stats();
    assert_eq!(st.cri_errors, 0, "{st:?}");
    drop(k);

    // 2. No socket: containerd's task bundles (no labels: the workload name).
    let mut k = K8sAttribution::start(K8sConfig {
        cri_sockets: vec![absent.join("cri.sock")],
        containerd_state_dir: rig.state_dir(),
        kubelet_pods_dir: absent.clone(),
        in_cluster: false,
        ..K8sConfig::default()
    })
    .unwrap();
    let mut ep = process_end();
    k.attribute_process(&mut ep);
    assert_eq!(ep.pod.as_deref(), Some(POD_NAME), "{ep:?}");
    assert_eq!(ep.container.as_deref(), Some(CONTAINER));
    assert_eq!(
        ep.service.as_deref(),
        Some("shop-api.cri-test"),
        "workload from the pod name"
    );
    let mut remote = Endpoint {
        addr: Some(ip.parse().unwrap()),
        port: PORT,
        ..Endpoint::default()
    };
    k.attribute_address(&mut remote, None);
    assert_eq!(
        remote.pod.as_deref(),
        Some(POD_NAME),
        "pod IP from its network namespace"
    );
    drop(k);

    // 3. `k8s-alog record` with the CRI socket.
    let sock = rig.sock().to_string_lossy().into_owned();
    let state = rig.state_dir().to_string_lossy().into_owned();
    let rec = Recorder::start(
        &[],
        &[
            "--cri-socket",
            &sock,
            "--containerd-state",
            &state,
            "--kubelet-pods-dir",
            &absent.to_string_lossy(),
        ],
    );
    let mut ports = Vec::new();
    for _ in 0..3 {
        let c = curl(&[&format!("http://{ip}:{PORT}/index.html")]);
        assert_eq!(c.http_code, 200);
        ports.push(c.local_port);
    }
    wait_port_idle(PORT, Duration::from_secs(10));
    let out = rec.stop();
    if !out
        .stderr
        .iter()
        .any(|l| l.contains("kubernetes attribution:"))
    {
        eprintln!("SKIPPED (record part): `k8s-alog record` does not use K8sAttribution yet");
        return;
    }
    let http: Vec<&Value> = out.http(PORT);
    assert_eq!(http.len(), 3, "{}", dump(&http));
    for r in &http {
        let s = &r["server"];
        assert_eq!(s["pod"], POD_NAME, "{r}");
        assert_eq!(s["namespace"], POD_NS, "{r}");
        assert_eq!(s["container"], CONTAINER, "{r}");
        assert_eq!(s["service"], "shopapi.cri-test", "{r}");
        assert_eq!(s["container_id"], ctr_id.as_str(), "{r}");
        // The client is curl on the node itself: a process, in no pod.
        assert_eq!(r["client"]["resolved_by"], "process", "{r}");
        assert!(r["client"]["pod"].is_null(), "{r}");
        assert!(ports.contains(&(r["client"]["port"].as_u64().unwrap() as u16)));
    }
    eprintln!("CRI test total {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------
// The DaemonSet's pod: deploy/daemonset.yaml translated into CRI calls, as a kubelet would
// make them, and run by the real containerd.

/// Capability numbers (linux/capability.h), by the names Kubernetes uses.
const CAPABILITIES: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("NET_BIND_SERVICE", 10),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_ADMIN", 21),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("MKNOD", 27),
    ("AUDIT_WRITE", 29),
    ("SETFCAP", 31),
    ("SYSLOG", 34),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

fn cap_bit(name: &str) -> u32 {
    CAPABILITIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("capability {name}: add it to CAPABILITIES"))
}

/// A hex capability mask of /proc/PID/status (`CapBnd:` etc.).
fn status_mask(status: &str, field: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in\n{status}"));
    u64::from_str_radix(v.trim(), 16).unwrap()
}

/// Kubernetes quantities as used in the manifest: `100m` CPUs, `512Mi` bytes.
fn quantity(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("quantity {v}"));
    for (suffix, mul) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * mul;
        }
    }
    if let Some(n) = s.strip_suffix('m') {
        return n.parse().unwrap();
    }
    s.parse::<u64>().unwrap() * 1000
}

/// Panics unless every key of the map `v` is one the translation knows: the test must
/// not drift from the manifest.
fn only_keys(v: &Value, what: &str, keys: &[&str]) {
    let m = v
        .as_object()
        .unwrap_or_else(|| panic!("deploy/daemonset.yaml: {what} is not a map: {v}"));
    for k in m.keys() {
        assert!(
            keys.contains(&k.as_str()),
            "deploy/daemonset.yaml: `{what}.{k}` is not translated into CRI by this test: update the translation in tests/k8s_cri.rs"
        );
    }
}

/// What this machine gives in place of a cluster's.
struct NodeSide {
    /// The manifest's host paths and where they are here.
    host_paths: Vec<(&'static str, PathBuf)>,
    /// Root of the pods' log directories (the kubelet's /var/log/pods).
    pod_logs: PathBuf,
    node_name: String,
    /// K8S_ALOG_OAP: the stand-in collector.
    oap: String,
    /// /proc/self/status CapBnd: capabilities outside it cannot be granted.
    bounding: u64,
}

/// The DaemonSet's pod in CRI terms, and what had to differ from a cluster.
struct DaemonPod {
    sandbox: pb::PodSandboxConfig,
    container: pb::ContainerConfig,
    pod_name: String,
    /// `kubepods/<qos>/pod<uid>`.
    pod_cgroup: String,
    /// Capabilities granted (the manifest's, less those the machine cannot give).
    caps: Vec<String>,
    grace_seconds: i64,
    /// The manifest asks for no seccomp filter.
    seccomp_unconfined: bool,
    /// Where the container's stdout and stderr are written (CRI log format).
    log_file: PathBuf,
    /// The host side of the manifest's writable spool volume.
    spool_host: PathBuf,
    deviations: Vec<String>,
}

/// Translate deploy/daemonset.yaml into the CRI configs a kubelet would send for one of
/// its pods (pkg/kubelet/kuberuntime: sandbox config, container config, security
/// context, mounts, resources), with `node` in place of the cluster.
fn translate_daemonset(ds: &Value, node: &NodeSide) -> DaemonPod {
    let mut deviations = Vec::new();
    assert_eq!(ds["kind"], "DaemonSet");
    let ds_name = ds["metadata"]["name"].as_str().unwrap();
    let namespace = ds["metadata"]["namespace"].as_str().unwrap().to_string();
    let tpl = &ds["spec"]["template"];
    only_keys(tpl, "spec.template", &["metadata", "spec"]);
    only_keys(&tpl["metadata"], "spec.template.metadata", &["labels"]);
    let spec = &tpl["spec"];
    only_keys(
        spec,
        "spec.template.spec",
        &[
            "serviceAccountName",
            "hostPID",
            "hostNetwork",
            "dnsPolicy",
            "priorityClassName",
            "tolerations",
            "terminationGracePeriodSeconds",
            "containers",
            "volumes",
        ],
    );
    let host_network = spec["hostNetwork"].as_bool().unwrap_or(false);
    let host_pid = spec["hostPID"].as_bool().unwrap_or(false);
    if let Some(sa) = spec["serviceAccountName"].as_str() {
        deviations.push(format!(
            "serviceAccountName {sa}: no API server here, so no token is mounted (k8s-alog runs with `API none`)"
        ));
    }
    if let Some(d) = spec["dnsPolicy"].as_str() {
        deviations.push(format!(
            "dnsPolicy {d}: no cluster DNS here; containerd gives the pod the host's resolv.conf"
        ));
    }
    let critical = match spec["priorityClassName"].as_str() {
        Some(p @ ("system-node-critical" | "system-cluster-critical")) => {
            deviations.push(format!(
                "priorityClassName {p}: oom_score_adj -997 sent, as a kubelet does; containerd (restrict_oom_score_adj) keeps it at its own"
            ));
            true
        }
        None => false,
        Some(p) => panic!("priorityClassName {p}: update the translation"),
    };
    let grace_seconds = spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);

    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container in the DaemonSet's pod");
    let c = &containers[0];
    only_keys(
        c,
        "container",
        &[
            "name",
            "image",
            "imagePullPolicy",
            "command",
            "args",
            "env",
            "securityContext",
            "resources",
            "volumeMounts",
        ],
    );
    let cname = c["name"].as_str().unwrap().to_string();
    let pod_name = format!("{ds_name}-x7k2p");
    let uid = fresh_pod_uid();

    // Environment: literal values, the node name from the downward API.
    let mut envs = Vec::new();
    for e in c["env"].as_array().cloned().unwrap_or_default() {
        only_keys(&e, "container.env[]", &["name", "value", "valueFrom"]);
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            let path = e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .unwrap_or_else(|| panic!("env {name}: only fieldRef is translated"));
            assert_eq!(path, "spec.nodeName", "env {name}: update the translation");
            deviations.push(format!(
                "{name}: fieldRef spec.nodeName given as the literal {:?} (no downward API without a kubelet)",
                node.node_name
            ));
            node.node_name.clone()
        };
        let value = if name == "K8S_ALOG_OAP" {
            deviations.push(format!(
                "{name}: {value} replaced by {} (the stand-in collector)",
                node.oap
            ));
            node.oap.clone()
        } else {
            value
        };
        envs.push(pb::KeyValue {
            key: name,
            value: value.into_bytes(),
        });
    }

    // Volumes: hostPath only, each to where it is on this machine.
    let mut volumes = HashMap::new();
    let mut spool_host = None;
    for v in spec["volumes"].as_array().cloned().unwrap_or_default() {
        only_keys(&v, "volumes[]", &["name", "hostPath"]);
        only_keys(&v["hostPath"], "volumes[].hostPath", &["path", "type"]);
        let path = v["hostPath"]["path"].as_str().unwrap();
        let here = node
            .host_paths
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| {
                panic!("hostPath {path}: where is it on this machine? update NodeSide")
            });
        match v["hostPath"]["type"].as_str().unwrap_or("") {
            "DirectoryOrCreate" => std::fs::create_dir_all(&here).unwrap(),
            "Directory" => assert!(here.is_dir(), "hostPath {path} ({})", here.display()),
            "" => assert!(here.exists(), "hostPath {path} ({})", here.display()),
            t => panic!("hostPath type {t}: update the translation"),
        }
        if Path::new(path) != here {
            deviations.push(format!("hostPath {path} is {} here", here.display()));
        }
        volumes.insert(v["name"].as_str().unwrap().to_string(), here);
    }
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().cloned().unwrap_or_default() {
        only_keys(&m, "volumeMounts[]", &["name", "mountPath", "readOnly"]);
        let name = m["name"].as_str().unwrap();
        let host = volumes
            .get(name)
            .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
        let readonly = m["readOnly"].as_bool().unwrap_or(false);
        if !readonly && host.is_dir() && spool_host.is_none() && name == "spool" {
            spool_host = Some(host.clone());
        }
        mounts.push(pb::Mount {
            container_path: m["mountPath"].as_str().unwrap().to_string(),
            host_path: host.to_string_lossy().into_owned(),
            readonly,
            selinux_relabel: false,
            // No mountPropagation in the manifest: a kubelet sends PRIVATE.
            propagation: pb::MountPropagation::PropagationPrivate as i32,
        });
    }

    // Security context.
    let sc = &c["securityContext"];
    only_keys(
        sc,
        "securityContext",
        &[
            "privileged",
            "allowPrivilegeEscalation",
            "readOnlyRootFilesystem",
            "runAsUser",
            "capabilities",
            "seccompProfile",
            "appArmorProfile",
        ],
    );
    only_keys(
        &sc["capabilities"],
        "securityContext.capabilities",
        &["add", "drop"],
    );
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let drop_caps = names(&sc["capabilities"]["drop"]);
    let mut caps = Vec::new();
    for cap in names(&sc["capabilities"]["add"]) {
        if node.bounding & (1u64 << cap_bit(&cap)) == 0 {
            deviations.push(format!(
                "capability {cap} left out: not in this machine's bounding set (CapBnd {:016x}); runc cannot grant it",
                node.bounding
            ));
        } else {
            caps.push(cap);
        }
    }
    let profile = |v: &Value, what: &str| -> (Option<pb::SecurityProfile>, String) {
        match v["type"].as_str() {
            None => (None, String::new()),
            Some("Unconfined") => (
                Some(pb::SecurityProfile {
                    profile_type: pb::security_profile::ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                }),
                "unconfined".to_string(),
            ),
            Some("RuntimeDefault") => (
                Some(pb::SecurityProfile {
                    profile_type: pb::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                "runtime/default".to_string(),
            ),
            Some(t) => panic!("{what} {t}: update the translation"),
        }
    };
    let (seccomp, seccomp_path) = profile(&sc["seccompProfile"], "seccompProfile");
    let (apparmor, apparmor_name) = profile(&sc["appArmorProfile"], "appArmorProfile");
    let security_context = pb::LinuxContainerSecurityContext {
        capabilities: Some(pb::Capability {
            add_capabilities: caps.clone(),
            drop_capabilities: drop_caps,
            add_ambient_capabilities: vec![],
        }),
        privileged: sc["privileged"].as_bool().unwrap_or(false),
        namespace_options: Some(namespaces(host_network, host_pid)),
        run_as_user: sc["runAsUser"]
            .as_i64()
            .map(|value| pb::Int64Value { value }),
        readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        apparmor_profile: apparmor_name,
        seccomp_profile_path: seccomp_path,
        no_new_privs: !sc["allowPrivilegeEscalation"].as_bool().unwrap_or(true),
        masked_paths: strings(KUBELET_MASKED_PATHS),
        readonly_paths: strings(KUBELET_READONLY_PATHS),
        seccomp,
        apparmor,
    };

    // Resources and the QoS class (which decides the pod's cgroup).
    let res = &c["resources"];
    only_keys(res, "resources", &["requests", "limits"]);
    only_keys(&res["requests"], "resources.requests", &["cpu", "memory"]);
    only_keys(&res["limits"], "resources.limits", &["cpu", "memory"]);
    let cpu_request = res["requests"].get("cpu").map(quantity);
    let cpu_limit = res["limits"].get("cpu").map(quantity);
    let mem_limit = res["limits"].get("memory").map(quantity);
    let any = res["requests"].as_object().is_some_and(|m| !m.is_empty())
        || res["limits"].as_object().is_some_and(|m| !m.is_empty());
    let guaranteed = ["cpu", "memory"].iter().all(|k| {
        res["limits"].get(*k).is_some()
            && res["requests"]
                .get(*k)
                .is_none_or(|r| Some(r) == res["limits"].get(*k))
    });
    let qos = match (any, guaranteed) {
        (false, _) => "besteffort",
        (true, true) => "",
        (true, false) => "burstable",
    };
    let pod_cgroup = if qos.is_empty() {
        format!("kubepods/pod{uid}")
    } else {
        format!("kubepods/{qos}/pod{uid}")
    };
    let resources = pb::LinuxContainerResources {
        cpu_period: 100_000,
        // MilliCPUToShares; MilliCPUToQuota (0: no limit).
        cpu_shares: cpu_request
            .or(cpu_limit)
            .map_or(2, |m| (m * 1024 / 1000).max(2)) as i64,
        cpu_quota: cpu_limit.map_or(0, |m| (m * 100) as i64),
        memory_limit_in_bytes: mem_limit.unwrap_or(0) as i64,
        oom_score_adj: if critical { -997 } else { 0 },
        ..Default::default()
    };

    let mut labels: HashMap<String, String> = tpl["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default();
    labels.insert("io.kubernetes.pod.name".into(), pod_name.clone());
    labels.insert("io.kubernetes.pod.namespace".into(), namespace.clone());
    labels.insert("io.kubernetes.pod.uid".into(), uid.clone());
    let log_dir = node.pod_logs.join(format!("{namespace}_{pod_name}_{uid}"));
    let sandbox = pb::PodSandboxConfig {
        metadata: Some(pb::PodSandboxMetadata {
            name: pod_name.clone(),
            uid: uid.clone(),
            namespace: namespace.clone(),
            attempt: 0,
        }),
        // A kubelet sends no hostname for a host-network pod (it keeps the node's UTS
        // namespace; runc refuses a hostname there).
        hostname: if host_network {
            String::new()
        } else {
            pod_name.clone()
        },
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: labels.clone(),
        annotations: HashMap::new(),
        linux: Some(pb::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{pod_cgroup}"),
            security_context: Some(pb::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(host_network, host_pid)),
                privileged: security_context.privileged,
            }),
            sysctls: HashMap::new(),
        }),
    };
    let mut clabels = HashMap::new();
    clabels.insert("io.kubernetes.container.name".to_string(), cname.clone());
    for k in [
        "io.kubernetes.pod.name",
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.uid",
    ] {
        clabels.insert(k.to_string(), labels[k].clone());
    }
    let container = pb::ContainerConfig {
        metadata: Some(pb::ContainerMetadata {
            name: cname.clone(),
            attempt: 0,
        }),
        image: Some(pb::ImageSpec {
            image: c["image"].as_str().unwrap().to_string(),
            annotations: HashMap::new(),
        }),
        command: names(&c["command"]),
        args: names(&c["args"]),
        envs,
        mounts,
        labels: clabels,
        log_path: format!("{cname}/0.log"),
        linux: Some(pb::LinuxContainerConfig {
            resources: Some(resources),
            security_context: Some(security_context),
        }),
        ..Default::default()
    };
    DaemonPod {
        sandbox,
        container,
        pod_name,
        pod_cgroup,
        caps,
        grace_seconds,
        seccomp_unconfined: sc["seccompProfile"]["type"] == "Unconfined",
        log_file: log_dir.join(format!("{cname}/0.log")),
        spool_host: spool_host.expect("a writable spool volume"),
        deviations,
    }
}

/// The lines a container wrote, from its CRI log file (`<time> <stream> <P|F> <text>`).
fn cri_log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect()
}

/// Wait until the container's log has a line containing every one of `needles`.
fn wait_log(path: &Path, needles: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = cri_log_lines(path);
        if let Some(l) = lines.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in the pod's log within {timeout:?}:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The static binary (`make static`): `K8S_ALOG_BIN` when it is one, else built here.
fn static_alog_bin() -> PathBuf {
    let is_static = |p: &Path| {
        let o = Command::new("ldd").arg(p).output().expect("running ldd");
        let t = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
        t.contains("statically linked") || t.contains("not a dynamic executable")
    };
    let bin = alog_bin();
    if is_static(&bin) {
        return bin;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    eprintln!("building the static binary for the image (make static)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new("make")
        .arg("-C")
        .arg(root)
        .arg(format!("CARGO={cargo}"))
        .arg("static"));
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("x86_64-unknown-linux-gnu/release/k8s-alog");
    assert!(is_static(&bin), "{} is not static", bin.display());
    bin
}

/// deploy/daemonset.yaml run for real: its image (the static binary alone, FROM scratch)
/// is imported into the real containerd without a registry, and the manifest's pod is
/// started through CRI with its securityContext, capabilities, host namespaces, host
/// paths and volumes translated from the file as a kubelet would send them. In the pod,
/// k8s-alog must start, probe the Go HTTPS server of another pod that was running before
/// it, name that pod from the CRI socket, deliver the exchanges to the stand-in OAP
/// collector, spool them while the collector is away, and stop cleanly.
#[test]
fn daemonset_pod_runs_through_cri_and_delivers() {
    if !require_root() || !prerequisites() {
        return;
    }
    let t0 = Instant::now();
    let alog = static_alog_bin();
    let mut rig = Rig::start();
    rig.launch();
    let d = rig.dir.path().to_path_buf();

    // Images: the app (busybox + the Go HTTPS server), the DaemonSet's.
    let tlsapp = d.join("tlsapp");
    go_build(&tlsapp, false);
    let ds_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/daemonset.yaml"),
    )
    .unwrap();
    let ds: Value = serde_yaml_ng::from_str(&ds_text).expect("deploy/daemonset.yaml is YAML");
    let alog_image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    for img in [
        Image {
            name: APP_IMAGE,
            busybox: true,
            files: &[(&tlsapp, "/tlsapp")],
            entrypoint: PAUSE_ENTRYPOINT,
        },
        Image {
            name: &alog_image,
            busybox: false,
            files: &[(&alog, "/k8s-alog")],
            entrypoint: &["/k8s-alog"],
        },
    ] {
        let tarball = build_image(&d, &img);
        rig.ctr(&[
            "images",
            "import",
            "--platform",
            "linux/amd64",
            &tarball.to_string_lossy(),
        ]);
    }
    rig.ctr(&["images", "tag", APP_IMAGE, PAUSE_IMAGE]);

    // The app pod, running before k8s-alog: Go's crypto/tls on the pod network.
    let cert = Cert::new();
    const TLS_POD: &str = "shop-tls-5f6d7c8b9a-q7w2e";
    const TLS_PORT: u16 = 8443;
    let app_uid = fresh_pod_uid();
    let mut labels = HashMap::new();
    labels.insert("app".to_string(), "shoptls".to_string());
    let app_sandbox = pb::PodSandboxConfig {
        metadata: Some(pb::PodSandboxMetadata {
            name: TLS_POD.into(),
            uid: app_uid.clone(),
            namespace: POD_NS.into(),
            attempt: 0,
        }),
        hostname: TLS_POD.into(),
        log_directory: d
            .join(format!("var-log-pods/{POD_NS}_{TLS_POD}_{app_uid}"))
            .to_string_lossy()
            .into_owned(),
        labels,
        annotations: HashMap::new(),
        linux: Some(pb::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{app_uid}"),
            security_context: None,
            sysctls: HashMap::new(),
        }),
    };
    let app = pb::ContainerConfig {
        command: vec![
            "/tlsapp".into(),
            "server".into(),
            TLS_PORT.to_string(),
            "/certs/cert.pem".into(),
            "/certs/key.pem".into(),
            "0.0.0.0".into(),
        ],
        mounts: vec![pb::Mount {
            container_path: "/certs".into(),
            host_path: cert.cert().parent().unwrap().to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        }],
        ..app_container(CONTAINER, APP_IMAGE)
    };
    let (_app_sb, app_ctr, ip) = rig.run_pod(app_sandbox, app);
    assert!(ip.starts_with("198.18.42."), "pod IP {ip:?}");
    wait_for_port(
        format!("{ip}:{TLS_PORT}").parse().unwrap(),
        Duration::from_secs(20),
    );
    eprintln!("app pod up ({:?}): {ip}, container {app_ctr}", t0.elapsed());
    // And a process on the node itself, also running before k8s-alog: OpenSSL (Python's
    // ssl module), whose library is found through /proc/PID/map_files.
    let py_port = free_server_port();
    let _py = start_https_python(py_port, &cert);

    // The stand-in collector, and the DaemonSet's pod.
    let oap_port = free_port();
    let streams: Streams = Arc::default();
    let mut collector = Some(StandIn::start(oap_port, Arc::clone(&streams), None));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let tasks = d.join("state/io.containerd.runtime.v2.task");
    for dir in ["var-log-pods", "var-log-containers"] {
        std::fs::create_dir_all(d.join(dir)).unwrap();
    }
    let node = NodeSide {
        host_paths: vec![
            ("/proc", PathBuf::from("/proc")),
            ("/sys/fs/cgroup", PathBuf::from("/sys/fs/cgroup")),
            ("/run/containerd/containerd.sock", rig.sock()),
            ("/run/containerd/io.containerd.runtime.v2.task", tasks),
            ("/var/log/pods", d.join("var-log-pods")),
            ("/var/log/containers", d.join("var-log-containers")),
            ("/var/lib/k8s-alog", d.join("var-lib-k8s-alog")),
        ],
        pod_logs: d.join("var-log-pods"),
        node_name: "cri-node-1".into(),
        oap: format!("127.0.0.1:{oap_port}"),
        bounding: status_mask(&status, "CapBnd:"),
    };
    let pod = translate_daemonset(&ds, &node);
    eprintln!("deploy/daemonset.yaml as CRI; differences from a cluster:");
    for dv in &pod.deviations {
        eprintln!("  - {dv}");
    }
    let t_start = Instant::now();
    let (ds_sb, ds_ctr, _) = rig.run_pod(pod.sandbox.clone(), pod.container.clone());
    let pid = rig.container_pid(&pod.pod_cgroup, &ds_ctr);
    eprintln!(
        "DaemonSet pod {} started: sandbox {ds_sb}, container {ds_ctr}, k8s-alog pid {pid}",
        pod.pod_name
    );

    // What the runtime made of it: the bundle, and the process itself.
    let bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(rig.state_dir().join(&ds_ctr).join("config.json")).unwrap(),
    )
    .unwrap();
    let want: u64 = pod.caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let mut want_names: Vec<String> = pod.caps.iter().map(|c| format!("CAP_{c}")).collect();
    want_names.sort();
    let proc_ = &bundle["process"];
    for set in ["bounding", "effective", "permitted"] {
        let mut got: Vec<String> = proc_["capabilities"][set]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, want_names, "bundle process.capabilities.{set}");
    }
    assert_eq!(proc_["noNewPrivileges"], true, "bundle noNewPrivileges");
    assert_eq!(bundle["root"]["readonly"], true, "bundle root.readonly");
    assert_eq!(
        bundle["linux"]["seccomp"].is_null(),
        pod.seccomp_unconfined,
        "seccomp filter in the bundle"
    );
    // Host network and PID: no new namespaces of those kinds, only joined ones (the
    // sandbox's, which are the host's: compared below).
    for n in bundle["linux"]["namespaces"].as_array().unwrap() {
        if n["type"] == "network" || n["type"] == "pid" {
            assert!(n["path"].is_string(), "a new {} namespace: {n}", n["type"]);
        }
    }
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(
        status_mask(&st, "CapEff:"),
        want,
        "CapEff of k8s-alog\n{st}"
    );
    assert_eq!(status_mask(&st, "CapBnd:"), want, "CapBnd of k8s-alog");
    assert!(st.contains("NoNewPrivs:\t1"), "{st}");
    let seccomp_mode = if pod.seccomp_unconfined { 0 } else { 2 };
    assert!(st.contains(&format!("Seccomp:\t{seccomp_mode}")), "{st}");
    let uid_line = st.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some("0"),
        "{uid_line}"
    );
    for ns in ["pid", "net"] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "{ns} namespace of the node (this test's)"
        );
    }
    let root_ro = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
        });
    assert!(root_ro, "the root file system is read-only");

    // k8s-alog starts, finds the node's runtime through the mounted paths, probes the
    // Go server that was already running.
    let log = &pod.log_file;
    let started = wait_log(log, &["capturing:"], Duration::from_secs(90));
    eprintln!(
        "k8s-alog in the pod after {:?}: {started}",
        t_start.elapsed()
    );
    let attribution = wait_log(log, &["kubernetes attribution:"], Duration::from_secs(5));
    for want in [
        "cgroup v2 at /host/sys/fs/cgroup",
        "CRI probing defaults",
        "containerd state /host/run/containerd/io.containerd.runtime.v2.task/k8s.io",
        "kubelet pods /host/var/log/pods",
        "API none",
    ] {
        assert!(attribution.contains(want), "{want:?} in {attribution}");
    }
    let probed = wait_log(log, &["TLS: probing", "tlsapp"], Duration::from_secs(60));
    eprintln!("{probed}");
    let probed = wait_log(log, &["TLS: probing", "libssl"], Duration::from_secs(60));
    eprintln!("{probed}");

    let https = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                let c = curl(&["-k", &format!("https://{ip}:{TLS_PORT}/hello")]);
                assert_eq!(c.http_code, 200);
                c.local_port
            })
            .collect()
    };
    let ports = https(3);
    let py_ports: Vec<u16> = (0..2)
        .map(|_| {
            let c = curl(&["-k", &format!("https://127.0.0.1:{py_port}/hello")]);
            assert_eq!(c.http_code, 200);
            c.local_port
        })
        .collect();
    wait_delivered(&streams, &ports, Duration::from_secs(60));
    wait_delivered(&streams, &py_ports, Duration::from_secs(60));
    let check = |ports: &[u16]| {
        let msgs = with_connections(&snapshot(&streams));
        for p in ports {
            let view = of_client_port(&msgs, *p, opb::DetectPoint::Server);
            let ex = exchanges(&view);
            assert_eq!(ex.len(), 1, "one exchange from client port {p}");
            let (conn, _) = view[0];
            assert_eq!(conn.tls_mode, opb::AccessLogConnectionTlsMode::Tls as i32);
            let req = ex[0].request.as_ref().unwrap();
            assert_eq!(req.path, "/hello");
            assert_eq!(ex[0].response.as_ref().unwrap().status_code, 200);
            let local =
                k8s(&conn.local).unwrap_or_else(|| panic!("server end not a pod: {conn:?}"));
            assert_eq!(local.pod_name, TLS_POD, "{local:?}");
            assert_eq!(local.container_name, CONTAINER, "{local:?}");
            assert_eq!(local.service_name, "shoptls.cri-test", "{local:?}");
            assert_eq!(local.port, i32::from(TLS_PORT));
        }
        msgs
    };
    let msgs = check(&ports);
    for p in &py_ports {
        let view = of_client_port(&msgs, *p, opb::DetectPoint::Server);
        let ex = exchanges(&view);
        assert_eq!(ex.len(), 1, "one exchange from client port {p}");
        assert_eq!(
            view[0].0.tls_mode,
            opb::AccessLogConnectionTlsMode::Tls as i32
        );
        assert_eq!(ex[0].request.as_ref().unwrap().path, "/hello");
        assert_eq!(ex[0].response.as_ref().unwrap().status_code, 200);
    }
    let nodes: Vec<String> = snapshot(&streams)
        .iter()
        .filter_map(|s| s.messages[0].node.as_ref().map(|n| n.name.clone()))
        .collect();
    assert!(
        nodes.iter().all(|n| *n == node.node_name),
        "node names {nodes:?}"
    );
    // Its own pushes are not captured: no client view of a connection to the collector.
    let own = msgs
        .iter()
        .filter(|(c, _)| {
            c.role == opb::DetectPoint::Client as i32 && port_of(&c.remote) == i32::from(oap_port)
        })
        .count();
    assert_eq!(
        own, 0,
        "k8s-alog reported its own connections to the collector"
    );

    // The collector goes away: batches wait in the spool volume, then arrive.
    collector.take().unwrap().stop();
    let ports2 = https(3);
    let spool = pod.spool_host.join("spool");
    let deadline = Instant::now() + Duration::from_secs(60);
    let batches = loop {
        let files: Vec<PathBuf> = std::fs::read_dir(&spool)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "batch"))
            .collect();
        if !files.is_empty() {
            break files;
        }
        assert!(
            Instant::now() < deadline,
            "nothing spooled in {} while the collector was away:\n{}",
            spool.display(),
            cri_log_lines(log).join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&spool).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o700, 0), "spool directory");
        for b in &batches {
            let m = std::fs::symlink_metadata(b).unwrap();
            assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0), "{}", b.display());
        }
    }
    eprintln!(
        "{} batches spooled on the host while the collector was away",
        batches.len()
    );
    let _collector = StandIn::start(oap_port, Arc::clone(&streams), None);
    wait_delivered(&streams, &ports2, Duration::from_secs(90));
    check(&ports2);

    // What the pod's memory cgroup (limit from the manifest) saw, BPF maps included.
    for (file, what) in [
        ("memory.max_usage_in_bytes", "peak"),
        ("memory.limit_in_bytes", "limit"),
    ] {
        let p = Path::new("/sys/fs/cgroup/memory")
            .join(&pod.pod_cgroup)
            .join(&ds_ctr)
            .join(file);
        if let Ok(v) = std::fs::read_to_string(&p) {
            let v: u64 = v.trim().parse().unwrap_or(0);
            eprintln!(
                "memory cgroup of the pod's container: {what} {} MiB",
                v >> 20
            );
        }
    }
    // Stopped as a kubelet stops it: SIGTERM, the grace period.
    let (stop_took, exit_code) = rig.stop_container(&ds_ctr, pod.grace_seconds);
    let lines = cri_log_lines(log);
    assert_eq!(exit_code, 0, "exit code; log:\n{}", lines.join("\n"));
    assert!(
        stop_took < Duration::from_secs(pod.grace_seconds as u64),
        "stopped by SIGKILL after the grace period"
    );
    let counters = lines
        .iter()
        .rev()
        .find_map(|l| l.split("push counters: ").nth(1))
        .unwrap_or_else(|| panic!("no push counters:\n{}", lines.join("\n")));
    eprintln!("stopped in {stop_took:?}; {counters}");
    for want in [
        "spool_memory_only=0",
        "dropped_batches=0",
        "spool_corrupt_files=0",
    ] {
        assert!(
            counters.split_whitespace().any(|kv| kv == want),
            "{want} in {counters}"
        );
    }
    assert!(
        !counters.contains("spooled_batches=0 "),
        "batches went through the spool: {counters}"
    );

    // The same pod under the runtime's default seccomp profile (deploy/README.md says
    // what this shows): it must capture and deliver as well.
    if pod.seccomp_unconfined {
        let mut strict = translate_daemonset(&ds, &node);
        let sc = strict
            .container
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .unwrap();
        sc.seccomp = Some(pb::SecurityProfile {
            profile_type: pb::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        sc.seccomp_profile_path = "runtime/default".into();
        let (_, ctr2, _) = rig.run_pod(strict.sandbox.clone(), strict.container.clone());
        let pid2 = rig.container_pid(&strict.pod_cgroup, &ctr2);
        let st2 = std::fs::read_to_string(format!("/proc/{pid2}/status")).unwrap();
        assert!(st2.contains("Seccomp:\t2"), "a seccomp filter:\n{st2}");
        wait_log(&strict.log_file, &["capturing:"], Duration::from_secs(90));
        wait_log(
            &strict.log_file,
            &["TLS: probing", "tlsapp"],
            Duration::from_secs(60),
        );
        let ports3 = https(2);
        wait_delivered(&streams, &ports3, Duration::from_secs(60));
        check(&ports3);
        let (took, code) = rig.stop_container(&ctr2, strict.grace_seconds);
        assert_eq!(code, 0, "{}", cri_log_lines(&strict.log_file).join("\n"));
        eprintln!("under the runtime's default seccomp profile: captured and delivered, stopped in {took:?}");
    }
    eprintln!("DaemonSet test total {:?}", t0.elapsed());
}
