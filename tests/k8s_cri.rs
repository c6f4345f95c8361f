//! Kubernetes attribution through a REAL containerd: the test starts Debian's containerd
//! (CRI plugin, runc, bridge CNI on 198.18.42.0/24) with everything under a temporary
//! directory, imports an image it builds itself (an OCI layout holding busybox), creates a
//! pod sandbox and a container through CRI with the project's own tonic client (as a
//! kubelet with the cgroupfs driver would), then checks that the resolver names the pod
//! from the CRI socket, and from containerd's task bundles alone, and that `k8s-alog
//! record` attributes the pod's traffic. Everything is removed at the end, also on
//! failure (shims by pid, mounts, cgroups, bridge, netns, CNI state, sysctl).
//!
//! Root only; needs `containerd runc containernetworking-plugins busybox-static`.
//! Run: `cargo test --release --test k8s_cri -- --test-threads=1`.

mod common;

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

/// An OCI-layout tarball with one layer: busybox, its applets used here, a web root.
/// The image's entrypoint is a pause that exits on SIGTERM.
fn build_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "www", "tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "httpd"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("www/index.html"), "hello from the pod\n").unwrap();
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
        "config": {
            "Entrypoint": ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"],
            "WorkingDir": "/"
        },
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
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": APP_IMAGE, "org.opencontainers.image.ref.name": "1"}
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

/// containerd and everything it made; all of it removed on drop.
struct Rig {
    dir: tempfile::TempDir,
    containerd: Option<Child>,
    rt: tokio::runtime::Runtime,
    sandboxes: Vec<String>,
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
            // Unique per run: a leftover of a crashed run never collides.
            pod_uid: format!(
                "{:08x}-7b3d-4c8e-9a6f-{:012x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64 & 0xffff_ffff_ffff)
                    .unwrap_or(0)
            ),
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

    /// Run a pod sandbox with one container serving HTTP; returns (sandbox id, container id, pod IP).
    fn run_pod(&mut self) -> (String, String, String) {
        let mut c = self.client();
        let uid = self.pod_uid.clone();
        let mut labels = HashMap::new();
        labels.insert("app".to_string(), "shopapi".to_string());
        labels.insert("pod-template-hash".to_string(), "7d4b9c8f6d".to_string());
        let sandbox_config = pb::PodSandboxConfig {
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
        let mut clabels = HashMap::new();
        clabels.insert(
            "io.kubernetes.container.name".to_string(),
            CONTAINER.to_string(),
        );
        let ctr = self
            .rt
            .block_on(c.create_container(pb::CreateContainerRequest {
                pod_sandbox_id: sb.clone(),
                config: Some(pb::ContainerConfig {
                    metadata: Some(pb::ContainerMetadata {
                        name: CONTAINER.into(),
                        attempt: 0,
                    }),
                    image: Some(pb::ImageSpec {
                        image: APP_IMAGE.into(),
                        annotations: HashMap::new(),
                    }),
                    command: vec![
                        "/bin/busybox".into(),
                        "httpd".into(),
                        "-f".into(),
                        "-p".into(),
                        PORT.to_string(),
                        "-h".into(),
                        "/www".into(),
                    ],
                    args: vec![],
                    working_dir: String::new(),
                    envs: vec![],
                    labels: clabels,
                    annotations: HashMap::new(),
                    log_path: format!("{CONTAINER}/0.log"),
                }),
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
        assert!(ip.starts_with("198.18.42."), "pod IP {ip:?}");
        (sb, ctr, ip)
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

    /// The pid of the first process of a container (from its cgroup).
    fn container_pid(&self, id: &str) -> u32 {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let cg = k8s_alog::resolve::node::cgroup2_mount(&mi, Path::new("/")).expect("cgroup2");
        let dir = cg.join(format!("kubepods/besteffort/pod{}/{id}", self.pod_uid));
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
                for sb in self.sandboxes.clone() {
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
        // The pod's cgroup level in every hierarchy (runc removes only the leaves).
        for l in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 4 && l.contains(" - cgroup") {
                let pod = Path::new(f[4]).join(format!("kubepods/besteffort/pod{}", self.pod_uid));
                if let Ok(rd) = std::fs::read_dir(&pod) {
                    for e in rd.flatten() {
                        if e.path().is_dir() {
                            let _ = std::fs::remove_dir(e.path());
                        }
                    }
                }
                let _ = std::fs::remove_dir(&pod);
                for up in ["kubepods/besteffort", "kubepods"] {
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
    let tarball = build_image(rig.dir.path());
    rig.ctr(&[
        "images",
        "import",
        "--platform",
        "linux/amd64",
        &tarball.to_string_lossy(),
    ]);
    rig.ctr(&["images", "tag", APP_IMAGE, PAUSE_IMAGE]);
    let (sandbox, ctr_id, ip) = rig.run_pod();
    eprintln!(
        "containerd pod up in {:?}: sandbox {sandbox}, container {ctr_id}, ip {ip}",
        t0.elapsed()
    );
    let pid = rig.container_pid(&ctr_id);
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
        std::fs::metadata(cg.join(format!("kubepods/besteffort/pod{}/{ctr_id}", rig.pod_uid)))
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
