//! Harness for the real-kernel tests: runs `k8s-alog record`, test servers and clients,
//! and reads back the JSONL it wrote.
//!
//! Every process started here is killed when its guard drops, also when a test panics.

#![allow(dead_code)] // each test file uses its own subset

pub mod tmux;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long `record` may take to load and attach its programs.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `record` may take to start: START_TIMEOUT, or `K8S_ALOG_TEST_START_SECS` where
/// the machine is emulated (the kernels booted in QEMU without KVM, scripts/vm).
pub fn start_timeout() -> Duration {
    std::env::var("K8S_ALOG_TEST_START_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(START_TIMEOUT, Duration::from_secs)
}
/// How long `record` may take to exit after SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the last events to leave the ring buffer (the tool polls every 10 ms).
pub const DRAIN_DELAY: Duration = Duration::from_millis(300);
/// Bound on any client (curl, python) run by a test.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// True when running as root. Otherwise says loudly that the test is skipped.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!();
    eprintln!("################################################################################");
    eprintln!("SKIPPED: real-kernel test needs root (it loads eBPF programs): run it as root,");
    eprintln!("e.g. `sudo -E cargo test --release --test capture_http1 -- --test-threads=1`");
    eprintln!("################################################################################");
    eprintln!();
    false
}

/// The binary under test: `K8S_ALOG_BIN` if set (e.g. the static build), else cargo's.
pub fn alog_bin() -> PathBuf {
    std::env::var_os("K8S_ALOG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_k8s-alog")))
}

/// `/usr/bin/python3` if it exists, else whatever `python3` is on PATH.
pub fn python3() -> PathBuf {
    let p = Path::new("/usr/bin/python3");
    if p.exists() {
        p.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// A file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Build the Go fixture (stdlib only, offline) into `out`.
pub fn go_build(out: &Path, stripped: bool) {
    let go = ["/usr/bin/go", "/usr/lib/go/bin/go"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("go is not installed: install golang-go");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    let mut cmd = Command::new(go);
    cmd.arg("build").arg("-o").arg(out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    let o = cmd
        .arg(".")
        .current_dir(fixture("tls/go"))
        .env("GOPATH", cache.join("path"))
        .env("GOCACHE", cache.join("cache"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GO111MODULE", "on")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("running go build");
    assert!(
        o.status.success(),
        "go build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A TCP port that was free a moment ago (bound on 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// The kernel's ephemeral port range (where `connect()` picks client ports).
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A port for a test server: free on every IPv4 and IPv6 address (a dual-stack bind of
/// `[::]` succeeds), and below the ephemeral range, like a real server's. `free_port()`
/// would hand out an ephemeral one, and then nothing but the payload tells which end of
/// an idle connection is the server.
pub fn free_server_port() -> u16 {
    let (lo, _) = ephemeral_ports();
    let base = lo.saturating_sub(10_000).max(1024);
    let span = u32::from(lo.saturating_sub(base).max(1));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..span.min(2_000) {
        let p = base + ((seed.wrapping_add(i.wrapping_mul(7_919))) % span) as u16;
        if TcpListener::bind(("::", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free TCP port in {base}..{lo}");
}

/// TCP states in /proc/net/tcp{,6} (include/net/tcp_states.h).
const TCP_TIME_WAIT: u8 = 0x06;
const TCP_LISTEN: u8 = 0x0A;

/// (local port, remote port, state) of every TCP socket in this network namespace.
fn tcp_sockets() -> Vec<(u16, u16, u8)> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let port = |s: &str| {
                s.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if let (Some(l), Some(r), Ok(st)) =
                (port(f[1]), port(f[2]), u8::from_str_radix(f[3], 16))
            {
                out.push((l, r, st));
            }
        }
    }
    out
}

/// Wait until `addr` accepts TCP connections, then until the probe connection is gone
/// from the kernel (so that a recorder started next does not see it close).
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => {
                drop(s);
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{addr} did not accept connections within {timeout:?}: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    wait_port_idle(
        addr.port(),
        deadline.saturating_duration_since(Instant::now()),
    );
}

/// Wait until no TCP socket with `port` at either end exists other than listeners and
/// TIME_WAIT leftovers (which are already closed as far as the tool is concerned).
pub fn wait_port_idle(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let busy: Vec<_> = tcp_sockets()
            .into_iter()
            .filter(|&(l, r, st)| {
                (l == port || r == port) && st != TCP_LISTEN && st != TCP_TIME_WAIT
            })
            .collect();
        if busy.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} still has open connections after {timeout:?}: {busy:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until `path` exists.
pub fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send `sig` to `pid` (a process this harness started).
fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill has no memory-safety preconditions; pid is one of our children.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Send `sig` to the process group `pgid` (led by a child started in its own group).
fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    // SAFETY: as above; a negative pid addresses the process group we created.
    unsafe { libc::kill(-(pgid as libc::pid_t), sig) == 0 }
}

/// Wait for a child with a deadline; None on timeout.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for a child process: {e}"),
        }
    }
}

/// Collects a child's output stream in a thread.
fn collect<R: Read + Send + 'static>(r: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut r = r;
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Output of a bounded run.
#[derive(Debug)]
pub struct RunOutput {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Spawn `cmd`, return its pid immediately and a handle to wait for it (bounded).
pub struct Running {
    what: String,
    child: Option<Child>,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let out = child.stdout.take().map(collect);
        let err = child.stderr.take().map(collect);
        Self {
            what: what.to_string(),
            child: Some(child),
            out,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Wait (bounded) and return its output; panics on timeout (the child is killed).
    pub fn wait(mut self, timeout: Duration) -> RunOutput {
        let mut child = self.child.take().expect("child present");
        let pid = child.id();
        let status = match wait_timeout(&mut child, timeout) {
            Some(st) => st,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish within {timeout:?}", self.what);
            }
        };
        let text = |h: Option<JoinHandle<Vec<u8>>>| {
            h.map(|h| String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned())
                .unwrap_or_default()
        };
        RunOutput {
            pid,
            status,
            stdout: text(self.out.take()),
            stderr: text(self.err.take()),
        }
    }

    /// Wait and insist on success.
    pub fn wait_ok(self, timeout: Duration) -> RunOutput {
        let what = self.what.clone();
        let o = self.wait(timeout);
        assert!(
            o.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            o.stdout,
            o.stderr
        );
        o
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A server process (and everything in its process group), killed on drop.
pub struct ServerGuard {
    what: String,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl ServerGuard {
    /// Start `cmd` in its own process group (so that its workers die with it).
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut e) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = e.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Self {
            what: what.to_string(),
            child,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Wait for a line on its stdout that starts with `prefix`; returns the line.
    pub fn wait_stdout_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let out = self.child.stdout.take().expect("stdout is piped once");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} printed no line starting with {prefix:?} within {timeout:?}; exit: {:?}; stderr:\n{}",
                    self.what,
                    self.child.try_wait().ok().flatten(),
                    self.stderr_text()
                ),
            }
        }
    }

    /// Panic with its stderr if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "{} exited early ({st}); stderr:\n{}",
                self.what,
                self.stderr_text()
            );
        }
    }

    /// Pids of its direct children (e.g. nginx workers).
    pub fn children(&self) -> Vec<u32> {
        let pid = self.pid();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let pgid = self.child.id();
        if let Ok(None) = self.child.try_wait() {
            signal_group(pgid, libc::SIGTERM);
            if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Workers left in the group (if the leader died first) go too.
        signal_group(pgid, libc::SIGKILL);
    }
}

/// Start the python test server on `port` and wait until it listens.
pub fn start_python_server(port: u16) -> ServerGuard {
    let mut cmd = Command::new(python3());
    cmd.arg(fixture("http_server.py")).arg(port.to_string());
    let mut g = ServerGuard::spawn(cmd, "tests/fixtures/http_server.py");
    g.wait_stdout_line("READY", Duration::from_secs(20));
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    g
}

/// A running `k8s-alog record`; killed on drop if still running.
pub struct Recorder {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    out: PathBuf,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// What `record` left behind.
#[derive(Debug)]
pub struct Recording {
    pub records: Vec<Value>,
    pub path: PathBuf,
    pub stderr: Vec<String>,
    /// Keeps the output file alive for checks after stop.
    pub dir: tempfile::TempDir,
}

impl Recorder {
    /// `k8s-alog record --out <tmp>/out.jsonl --port P... --stats-interval 1 EXTRA...`
    /// (EXTRA may give its own `--stats-interval`),
    /// returned once it says "capturing:".
    pub fn start(ports: &[u16], extra_args: &[&str]) -> Self {
        Self::start_wrapped(&[], ports, extra_args)
    }

    /// As `start`, run through `wrapper` (a command and its arguments that execs the rest,
    /// e.g. `setpriv --bounding-set ...`).
    pub fn start_wrapped(wrapper: &[String], ports: &[u16], extra_args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("alog-rec-")
            .tempdir()
            .expect("temp dir");
        let out = dir.path().join("out.jsonl");
        let mut cmd = match wrapper.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(alog_bin());
                c
            }
            None => Command::new(alog_bin()),
        };
        cmd.arg("record").arg("--out").arg(&out);
        for p in ports {
            cmd.arg("--port").arg(p.to_string());
        }
        if !extra_args.contains(&"--stats-interval") {
            cmd.args(["--stats-interval", "1"]);
        }
        cmd.args(extra_args);
        // The test decides every setting: none may leak in from the environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("K8S_ALOG_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", alog_bin().display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut rec = Self {
            child: Some(child),
            dir: Some(dir),
            out,
            stderr_lines: lines,
            reader: Some(reader),
        };
        rec.wait_capturing(&rx);
        rec
    }

    fn wait_capturing(&mut self, rx: &Receiver<String>) {
        let timeout = start_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) if line.contains("capturing:") => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => {
                    let exited = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    panic!(
                        "k8s-alog record did not print \"capturing:\" within {timeout:?} ({e:?}; exit: {exited:?}); stderr:\n{}",
                        self.stderr_text()
                    );
                }
            }
        }
    }

    pub fn out_path(&self) -> &Path {
        &self.out
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }

    /// Records written so far (whole lines only; for waiting on periodic output).
    pub fn records_so_far(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGINT after the ring buffer had time to drain; see `stop_with`.
    pub fn stop(self) -> Recording {
        self.stop_with(libc::SIGINT)
    }

    /// Send `sig`, wait for a clean exit (status 0), and parse every line of the output
    /// (each must be a whole JSON object: no torn line).
    pub fn stop_with(mut self, sig: libc::c_int) -> Recording {
        std::thread::sleep(DRAIN_DELAY);
        let mut child = self.child.take().expect("recorder running");
        assert!(
            signal(child.id(), sig),
            "cannot signal k8s-alog: {}",
            std::io::Error::last_os_error()
        );
        let status = match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(st) => st,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "k8s-alog did not exit within {STOP_TIMEOUT:?} of signal {sig}; stderr:\n{}",
                    self.stderr_text()
                );
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let stderr = self.stderr_lines.lock().unwrap().clone();
        assert!(
            status.success(),
            "k8s-alog exited with {status} after signal {sig}; stderr:\n{}",
            stderr.join("\n")
        );
        let text = std::fs::read_to_string(&self.out)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.out.display()));
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "output does not end with a newline (torn last line): ...{:?}",
            &text[text.len().saturating_sub(200)..]
        );
        let records = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| {
                    panic!(
                        "line {} of the output is not one JSON object ({e}): {l:?}",
                        i + 1
                    )
                })
            })
            .collect();
        let dir = self.dir.take().expect("output directory");
        Recording {
            records,
            path: self.out.clone(),
            stderr,
            dir,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Recording {
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.records.iter().filter(|r| r["kind"] == kind).collect()
    }

    /// HTTP records whose server end is on `port`.
    pub fn http(&self, port: u16) -> Vec<&Value> {
        http_records(&self.records, port)
    }

    /// Connection records with `port` at either end.
    pub fn connections(&self, port: u16) -> Vec<&Value> {
        self.of_kind("connection")
            .into_iter()
            .filter(|r| r["server"]["port"] == port || r["client"]["port"] == port)
            .collect()
    }

    /// Every http and connection record with `port` at either end (for failure messages).
    pub fn on_port(&self, port: u16) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["kind"] != "stats")
            .filter(|r| r["server"]["port"] == port || r["client"]["port"] == port)
            .collect()
    }

    pub fn stats(&self) -> Vec<&Value> {
        self.of_kind("stats")
    }

    /// The stats record written at exit (the last line of the file).
    pub fn final_stats(&self) -> &Value {
        final_stats(&self.records)
    }

    /// Every loss counter of the final stats record must be 0.
    pub fn assert_nothing_lost(&self) {
        assert_nothing_lost(&self.records)
    }
}

/// HTTP records (of a whole recording) whose server end is on `port`.
pub fn http_records(records: &[Value], port: u16) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "http" && r["server"]["port"] == port)
        .collect()
}

/// The stats record written at exit (the last line of a recording).
pub fn final_stats(records: &[Value]) -> &Value {
    let last = records.last().expect("the output has no records at all");
    assert_eq!(
        last["kind"], "stats",
        "the last record is not the final stats record: {last}"
    );
    last
}

/// Every loss counter of a recording's final stats record must be 0.
pub fn assert_nothing_lost(records: &[Value]) {
    let st = final_stats(records);
    let lost = st["lost"]
        .as_object()
        .unwrap_or_else(|| panic!("stats without `lost`: {st}"));
    assert!(!lost.is_empty(), "empty `lost` in {st}");
    for (k, v) in lost {
        assert_eq!(
            v.as_u64(),
            Some(0),
            "lost.{k} is not 0 in the final stats: {st}"
        );
    }
}

/// Pretty list of records for failure messages.
pub fn dump(records: &[&Value]) -> String {
    let mut s = format!("{} record(s):\n", records.len());
    for r in records {
        s.push_str("  ");
        s.push_str(&r.to_string());
        s.push('\n');
    }
    s
}

/// Short form of HTTP records for failure messages.
pub fn dump_http(records: &[&Value]) -> String {
    let mut s = format!("{} http record(s):\n", records.len());
    for r in records {
        s.push_str(&format!(
            "  {} {} -> {} req_body={} resp_body={} chunked={} complete={} partial={} conn={} client={}:{} pid={} proc={} server={}:{} proc={} notes={}\n",
            r["method"],
            r["path"],
            r["status"],
            r["request"]["body_bytes"],
            r["response"]["body_bytes"],
            r["response"]["chunked"],
            r["complete"],
            r["partial"],
            r["conn_id"],
            r["client"]["addr"],
            r["client"]["port"],
            r["client"]["pid"],
            r["client"]["process"],
            r["server"]["addr"],
            r["server"]["port"],
            r["server"]["process"],
            r["notes"],
        ));
    }
    s
}

/// What one curl run reported about its single connection (`-w` variables).
#[derive(Debug, Clone)]
pub struct CurlRun {
    pub pid: u32,
    /// Bytes of request head sent.
    pub size_request: u64,
    /// Bytes of request body sent.
    pub size_upload: u64,
    /// Bytes of response heads received (interim responses included).
    pub size_header: u64,
    /// Bytes of response body received (after de-chunking).
    pub size_download: u64,
    pub local_port: u16,
    pub local_ip: String,
    pub http_code: u16,
}

/// Debian's curl, one request, output discarded; `args` are the request options and URL.
pub fn curl(args: &[&str]) -> CurlRun {
    let mut cmd = Command::new("/usr/bin/curl");
    // -q first: ignore any ~/.curlrc. No proxy: traffic stays on loopback.
    cmd.args(["-q", "-s", "-S", "--noproxy", "*", "--max-time", "60"])
        .args(["-o", "/dev/null", "-w"])
        .arg("%{size_request} %{size_upload} %{size_header} %{size_download} %{local_port} %{local_ip} %{http_code}")
        .args(args);
    let o = Running::spawn(cmd, &format!("curl {}", args.join(" "))).wait_ok(CLIENT_TIMEOUT);
    let f: Vec<&str> = o.stdout.split_whitespace().collect();
    assert_eq!(f.len(), 7, "unexpected curl -w output {:?}", o.stdout);
    let n = |i: usize| -> u64 {
        f[i].parse()
            .unwrap_or_else(|e| panic!("curl -w field {i} {:?}: {e}", f[i]))
    };
    CurlRun {
        pid: o.pid,
        size_request: n(0),
        size_upload: n(1),
        size_header: n(2),
        size_download: n(3),
        local_port: n(4) as u16,
        local_ip: f[5].to_string(),
        http_code: n(6) as u16,
    }
}

/// Command line of the python test client (`tests/fixtures/http_client.py`).
pub fn python_client(args: &[&str]) -> Command {
    let mut cmd = Command::new(python3());
    cmd.arg(fixture("http_client.py")).args(args);
    cmd
}

/// Run the python test client to completion; returns (pid, its JSON report).
pub fn run_python_client(args: &[&str]) -> (u32, Value) {
    let o = Running::spawn(
        python_client(args),
        &format!("http_client.py {}", args.join(" ")),
    )
    .wait_ok(CLIENT_TIMEOUT);
    let v: Value = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("http_client.py printed no JSON ({e}): {:?}", o.stdout));
    (o.pid, v)
}

/// Collects every mismatch, so that one failure message shows all of them.
#[derive(Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn eq(&mut self, what: impl std::fmt::Display, got: &Value, want: impl Into<Value>) {
        let want = want.into();
        if *got != want {
            self.0.push(format!("{what}: got {got}, want {want}"));
        }
    }

    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    /// The record's server end is one of the expected processes.
    pub fn server_end(&mut self, tag: &str, r: &Value, server: &ServerIs) {
        let name = r["server"]["process"].as_str().unwrap_or("");
        self.check(name.contains(server.process), || {
            format!(
                "{tag}: server.process {}, want one containing {:?}",
                r["server"]["process"], server.process
            )
        });
        let pid = r["server"]["pid"].as_u64().unwrap_or(0) as u32;
        self.check(server.pids.contains(&pid), || {
            format!(
                "{tag}: server.pid {}, want one of {:?}",
                r["server"]["pid"], server.pids
            )
        });
    }

    /// An http record's times agree: 0 < start <= end, duration = end - start > 0.
    pub fn timing(&mut self, tag: &str, r: &Value) {
        let dur = r["duration_ns"].as_u64().unwrap_or(0);
        let (s, end) = (
            r["start_mono_ns"].as_u64().unwrap_or(0),
            r["end_mono_ns"].as_u64().unwrap_or(0),
        );
        self.check(dur > 0 && s > 0 && end >= s && end - s == dur, || {
            format!("{tag}: start_mono_ns {s} / end_mono_ns {end} / duration_ns {dur}: want 0 < start <= end, duration = end - start > 0")
        });
    }

    pub fn finish(self, context: impl FnOnce() -> String) {
        if !self.0.is_empty() {
            panic!(
                "{} problem(s):\n  - {}\n\n{}",
                self.0.len(),
                self.0.join("\n  - "),
                context()
            );
        }
    }
}

/// Which server the records must name.
pub struct ServerIs<'a> {
    /// Allowed pids of the serving process (the server, or nginx's workers).
    pub pids: &'a [u32],
    /// Substring of the process name.
    pub process: &'a str,
}

/// nginx as Debian ships it, in the private prefix `dir` (its temp paths, pid file and
/// error log there), one worker, not daemonised; `http_block` is what goes inside
/// `http { }`. Returns once every address in `listening` accepts connections.
pub fn start_nginx(dir: &Path, http_block: &str, listening: &[SocketAddr]) -> ServerGuard {
    let bin = Path::new("/usr/sbin/nginx");
    assert!(
        bin.exists(),
        "nginx is not installed ({} is missing): run `make deps` (as root) to install the test dependencies",
        bin.display()
    );
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http_block}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("writing nginx.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir)
        .args(["-g", "daemon off;"]);
    let mut guard = ServerGuard::spawn(cmd, "nginx");
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in listening {
        guard.assert_running();
        let left = deadline.saturating_duration_since(Instant::now());
        wait_for_port(*addr, left.max(Duration::from_secs(1)));
    }
    guard
}

/// A self-signed certificate and key for 127.0.0.1 in a temp dir.
pub struct Cert {
    dir: tempfile::TempDir,
}

#[allow(clippy::new_without_default)] // each call makes a new key: not a default
impl Cert {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("alog-tls-cert-")
            .tempdir()
            .expect("temp dir");
        let o = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .output()
            .expect("running openssl (install the openssl package)");
        assert!(o.status.success(), "openssl req failed: {o:?}");
        Self { dir }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// Start the HTTPS test server (Python's ssl module, OpenSSL) on `port`; wait until it
/// listens.
pub fn start_https_python(port: u16, cert: &Cert) -> ServerGuard {
    let mut cmd = Command::new(python3());
    cmd.arg(fixture("tls/https_server.py"))
        .arg(port.to_string())
        .arg(cert.cert())
        .arg(cert.key());
    let mut g = ServerGuard::spawn(cmd, "tests/fixtures/tls/https_server.py");
    g.wait_stdout_line("READY", Duration::from_secs(20));
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    g
}
