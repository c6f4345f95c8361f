//! A simulated Kubernetes node for tests: `scripts/simnode.sh up` builds it (pods as
//! network namespaces on a bridge, kubelet-shaped cgroup v2 directories, the kubelet's
//! log layout, Service IPs DNAT'ed by nft), `SimNode` reads its description and runs
//! processes as a given container of a given pod; dropping it runs `simnode.sh down`,
//! also when a test panics.

#![allow(dead_code)] // each test file uses its own subset

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use crate::common::{fixture, python3, Running, ServerGuard, CLIENT_TIMEOUT};

#[derive(Debug, Clone, Deserialize)]
pub struct SimContainer {
    pub name: String,
    pub id: String,
    pub cgroup: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimPod {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub qos: String,
    pub netns: String,
    pub sandbox_id: String,
    pub sandbox_cgroup: PathBuf,
    pub containers: Vec<SimContainer>,
}

impl SimPod {
    pub fn container(&self, name: &str) -> &SimContainer {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("pod {} has no container {name}", self.name))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimService {
    pub name: String,
    pub namespace: String,
    pub ip: String,
    pub port: u16,
    /// Key of the backend pod.
    pub backend: String,
    pub target_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimDesc {
    pub root: PathBuf,
    pub cgroup_root: PathBuf,
    pub kubelet_pods_dir: PathBuf,
    pub gateway: String,
    pub pods: Vec<SimPod>,
    pub services: Vec<SimService>,
}

/// The script that builds and removes the node.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/simnode.sh")
}

/// A running simulated node; torn down on drop.
pub struct SimNode {
    pub desc: SimDesc,
    root: PathBuf,
    // Held for the node's life: there is one simulated node per machine (fixed names and
    // addresses), so test binaries running side by side take turns.
    _lock: std::fs::File,
}

/// The lock every user of the simulated node holds (`flock /run/lock/alogsim.lock` in shell).
pub const LOCK_PATH: &str = "/run/lock/alogsim.lock";

fn lock_machine_wide() -> std::fs::File {
    let _ = std::fs::create_dir_all("/run/lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .expect("opening the simulated node's lock");
    // SAFETY: flock on a descriptor we own; blocks until the other user is done.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {LOCK_PATH}");
    f
}

impl SimNode {
    /// Build the node (needs root, iproute2, nft).
    pub fn up() -> Self {
        let lock = lock_machine_wide();
        let root = std::env::temp_dir().join(format!("alogsim-{}", std::process::id()));
        let out = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(&root)
            .output()
            .expect("running scripts/simnode.sh up");
        // From here on, whatever happened, `down` runs.
        let mut node = Self {
            desc: SimDesc {
                root: root.clone(),
                cgroup_root: PathBuf::new(),
                kubelet_pods_dir: PathBuf::new(),
                gateway: String::new(),
                pods: vec![],
                services: vec![],
            },
            root: root.clone(),
            _lock: lock,
        };
        assert!(
            out.status.success(),
            "simnode.sh up failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(root.join("sim.json")).expect("sim.json");
        let desc: SimDesc = serde_json::from_str(&text).expect("sim.json parses");
        node.desc = desc;
        node
    }

    /// The flags that point k8s-alog at this node's metadata (its kubelet layout; no
    /// runtime socket, no bundles) and name the node `sim-node`.
    pub fn alog_args(&self) -> Vec<String> {
        let absent = self.desc.root.join("absent");
        vec![
            "--kubelet-pods-dir".into(),
            self.desc.kubelet_pods_dir.to_string_lossy().into_owned(),
            "--containerd-state".into(),
            absent.to_string_lossy().into_owned(),
            "--cri-socket".into(),
            absent.join("cri.sock").to_string_lossy().into_owned(),
            "--node-name".into(),
            "sim-node".into(),
        ]
    }

    pub fn pod(&self, key: &str) -> &SimPod {
        self.desc
            .pods
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    pub fn service(&self, name: &str) -> &SimService {
        self.desc
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// `program` run as container `ctr` of pod `pod`: in its cgroup (joined before exec,
    /// so even the first packet is the container's) and its pod's network namespace.
    pub fn command(&self, pod: &str, ctr: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let p = self.pod(pod);
        let c = p.container(ctr);
        let procs = File::options()
            .write(true)
            .open(c.cgroup.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("opening {}/cgroup.procs: {e}", c.cgroup.display()));
        let netns = File::open(format!("/run/netns/{}", p.netns))
            .unwrap_or_else(|e| panic!("opening netns {}: {e}", p.netns));
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (write, setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // "0" moves the writing process itself.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// The test HTTP server (tests/fixtures/http_server.py) as a container, on `port`.
    pub fn start_server(&self, pod: &str, ctr: &str, port: u16) -> ServerGuard {
        let mut cmd = self.command(pod, ctr, python3());
        cmd.arg(fixture("http_server.py")).arg(port.to_string());
        let mut g = ServerGuard::spawn(cmd, &format!("http_server.py in {pod}/{ctr}"));
        g.wait_stdout_line("READY", Duration::from_secs(20));
        g
    }

    /// One curl request as container `ctr` of `pod`: (pid, local port, HTTP status).
    pub fn curl(&self, pod: &str, ctr: &str, url: &str) -> (u32, u16, u16) {
        let mut cmd = self.command(pod, ctr, "/usr/bin/curl");
        cmd.args([
            "-q",
            "-s",
            "-S",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{local_port} %{http_code}"])
        .arg(url);
        let o = Running::spawn(cmd, &format!("curl {url} in {pod}/{ctr}")).wait_ok(CLIENT_TIMEOUT);
        let f: Vec<&str> = o.stdout.split_whitespace().collect();
        assert_eq!(f.len(), 2, "curl -w output {:?}", o.stdout);
        (o.pid, f[0].parse().unwrap(), f[1].parse().unwrap())
    }

    /// A short-lived process in a container; returns its pid after it exited.
    pub fn run_and_exit(&self, pod: &str, ctr: &str) -> u32 {
        let o = Running::spawn(self.command(pod, ctr, "/bin/true"), "true").wait_ok(CLIENT_TIMEOUT);
        o.pid
    }

    pub fn addr(&self, pod: &str, port: u16) -> SocketAddr {
        SocketAddr::new(self.pod(pod).ip.parse().unwrap(), port)
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.root)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "simnode.sh down failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("simnode.sh down: {e}"),
        }
    }
}

/// The cgroup v2 id of a directory (its inode), as the BPF programs report it.
pub fn cgroup_id(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()))
        .ino()
}

/// An end whose socket belongs to `pid` in container `ctr` of pod `pod` (what the engine
/// hands the resolver when it saw the process).
pub fn process_end(
    node: &SimNode,
    pod: &str,
    ctr: &str,
    pid: u32,
    port: u16,
) -> k8s_alog::model::Endpoint {
    k8s_alog::model::Endpoint {
        addr: Some(node.pod(pod).ip.parse().unwrap()),
        port,
        pid: Some(pid),
        cgroup_id: Some(cgroup_id(&node.pod(pod).container(ctr).cgroup)),
        ..Default::default()
    }
}

/// An end known only by its address.
pub fn address_end(addr: &str, port: u16) -> k8s_alog::model::Endpoint {
    k8s_alog::model::Endpoint {
        addr: Some(addr.parse().unwrap()),
        port,
        ..Default::default()
    }
}
