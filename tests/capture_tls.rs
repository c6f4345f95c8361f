//! Real-kernel tests of TLS plaintext capture: OpenSSL (curl, Python's ssl module, openssl
//! s_server/s_client, nginx with HTTP/2, OpenSSL linked statically) and Go crypto/tls
//! (stripped and not), checked at the capture layer through the debug event log
//! (`K8S_ALOG_DEBUG_EVENTS`), which `record` writes whatever the engine does with events,
//! and once at the JSONL level (an https exchange is an http record with `tls: true`).
//!
//! They load eBPF programs, so they need root; without it each test says SKIPPED loudly and
//! returns. Tools they need (Debian): curl, openssl, python3, nginx, golang-go, gcc,
//! libssl-dev. Run: `cargo test --release --test capture_tls -- --test-threads=1`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

// ---------------------------------------------------------------------------------------
// Harness: `record` with the debug event log, certificates, tools.
// ---------------------------------------------------------------------------------------

/// `k8s-alog record` with `K8S_ALOG_DEBUG_EVENTS` set (the shared harness strips every
/// K8S_ALOG_ variable, so this one starts the recorder itself).
struct DebugRecorder {
    child: Option<Child>,
    dir: tempfile::TempDir,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// What a debug recording left: kernel events, attach notes, and the JSONL records.
struct Run {
    lines: Vec<Value>,
    records: Vec<Value>,
    stderr: String,
}

impl DebugRecorder {
    fn start(ports: &[u16]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("alog-tls-rec-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new(alog_bin());
        cmd.arg("record")
            .arg("--out")
            .arg(dir.path().join("out.jsonl"));
        for p in ports {
            cmd.arg("--port").arg(p.to_string());
        }
        cmd.args(["--stats-interval", "1"]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("K8S_ALOG_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("K8S_ALOG_DEBUG_EVENTS", dir.path().join("events.jsonl"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", alog_bin().display()));
        let err = child.stderr.take().expect("stderr piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut r = Self {
            child: Some(child),
            dir,
            stderr,
            reader: Some(reader),
        };
        let timeout = start_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.contains("capturing:") => break,
                _ if Instant::now() > deadline => panic!(
                    "record did not start within {timeout:?}; stderr:\n{}",
                    r.stderr_text()
                ),
                _ => {}
            }
            if let Some(st) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "record exited at start ({st}); stderr:\n{}",
                    r.stderr_text()
                );
            }
        }
        r
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn lines_so_far(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait until a file whose path contains `needle` has its TLS probes attached.
    fn wait_attached(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.lines_so_far().into_iter().any(|l| {
                l["kind"] == "attach"
                    && l["probes"].as_u64().unwrap_or(0) > 0
                    && l["path"].as_str().is_some_and(|p| p.contains(needle))
            });
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no TLS probes attached to {needle} within {timeout:?}; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> Run {
        std::thread::sleep(DRAIN_DELAY);
        let mut child = self.child.take().expect("running");
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait().expect("waiting for record") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("record did not stop; stderr:\n{}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let stderr = self.stderr_text();
        assert!(status.success(), "record exited with {status}:\n{stderr}");
        let records = std::fs::read_to_string(self.dir.path().join("out.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSONL line"))
            .collect();
        Run {
            lines: self.lines_so_far(),
            records,
            stderr,
        }
    }
}

impl Drop for DebugRecorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one http record of a TLS exchange must say.
struct Want<'a> {
    method: &'a str,
    path: &'a str,
    status: u64,
    protocol: &'a str,
}

impl Run {
    /// Exactly these exchanges were written (in this order of start), each once, marked
    /// TLS, complete, with both ends' processes (`observed_by: both`, the server's view),
    /// the server being one of `server_pids`; and nothing was counted lost.
    fn assert_tls_http(&self, port: u16, server_pids: &[u32], want: &[Want<'_>]) {
        let mut http = http_records(&self.records, port);
        http.sort_by_key(|r| r["start_mono_ns"].as_u64().unwrap_or(0));
        let dump = || {
            http.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            http.len(),
            want.len(),
            "http records on port {port}:\n{}",
            dump()
        );
        for (r, w) in http.iter().zip(want) {
            assert_eq!(r["tls"], true, "{r}");
            assert_eq!(r["method"], w.method, "{r}");
            assert_eq!(r["path"], w.path, "{r}");
            assert_eq!(r["status"], w.status, "{r}");
            assert_eq!(r["protocol"], w.protocol, "{r}");
            assert_eq!(r["complete"], true, "{r}");
            assert_eq!(r["observed_by"], "both", "{r}");
            assert!(r["client"]["pid"].is_u64(), "client process unknown: {r}");
            let sp = r["server"]["pid"].as_u64().unwrap_or(0) as u32;
            assert!(
                server_pids.contains(&sp),
                "server pid {sp} not in {server_pids:?}: {r}"
            );
        }
        assert_nothing_lost(&self.records);
    }
}

const GET_HELLO: Want<'static> = Want {
    method: "GET",
    path: "/hello",
    status: 200,
    protocol: "HTTP/1.1",
};

/// Undo `escape_ascii` (the debug log's payload form).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'x' if i + 3 < b.len() => {
                    let h = std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("00");
                    out.push(u8::from_str_radix(h, 16).unwrap_or(0));
                    i += 4;
                    continue;
                }
                c => out.push(c),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn payload(l: &Value) -> Vec<u8> {
    unescape(l["payload"].as_str().unwrap_or(""))
}

impl Run {
    fn data(&self) -> impl Iterator<Item = &Value> {
        self.lines.iter().filter(|l| l["kind"] == "data")
    }

    /// Plaintext events of a process through a TLS call (`ssl_read`, `go_tls_write`, ...).
    fn plaintext(&self, tgids: &[u32], syscall: &str) -> Vec<&Value> {
        self.data()
            .filter(|l| {
                l["tls"] == true
                    && l["syscall"] == syscall
                    && tgids
                        .iter()
                        .any(|t| l["tgid"].as_u64() == Some(u64::from(*t)))
            })
            .collect()
    }

    /// The first plaintext event of a process whose payload starts with `prefix`.
    fn find(&self, tgids: &[u32], syscall: &str, prefix: &[u8]) -> &Value {
        self.plaintext(tgids, syscall)
            .into_iter()
            .find(|l| payload(l).starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no {syscall} plaintext from {tgids:?} starting with {:?}\n{}",
                    String::from_utf8_lossy(prefix),
                    self.dump()
                )
            })
    }

    fn conn(&self, cookie: &Value, kind: &str) -> Option<&Value> {
        self.lines
            .iter()
            .find(|l| l["kind"] == "conn" && l["cookie"] == *cookie && l["type"] == kind)
    }

    fn port_of(addr: &Value) -> u16 {
        addr.as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// The connection (by cookie) has `local_port` here and `remote_port` at the other end.
    fn assert_ports(&self, cookie: &Value, open_kind: &str, local_port: u16, remote_port: u16) {
        let c = self
            .conn(cookie, open_kind)
            .unwrap_or_else(|| panic!("no {open_kind} event for cookie {cookie}\n{}", self.dump()));
        assert_eq!(Self::port_of(&c["local"]), local_port, "{c}");
        assert_eq!(Self::port_of(&c["remote"]), remote_port, "{c}");
    }

    /// Every data event of a TLS connection: plaintext (with payload) or ciphertext (none),
    /// one gap-free sequence from 0 shared by both kinds, and the close says TLS and the count.
    fn assert_tls_connection(&self, cookie: &Value) {
        let evs: Vec<&Value> = self.data().filter(|l| l["cookie"] == *cookie).collect();
        assert!(!evs.is_empty(), "no data events for {cookie}");
        let mut seqs = Vec::new();
        let (mut plain, mut cipher) = (0, 0);
        for e in &evs {
            match (e["tls"].as_bool(), e["cipher"].as_bool()) {
                (Some(true), Some(false)) => {
                    plain += 1;
                    assert!(
                        e["syscall"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("ssl_") || s.starts_with("go_tls_")),
                        "plaintext from a socket call: {e}"
                    );
                    assert!(
                        e["start_ns"].as_u64() <= e["ts_ns"].as_u64(),
                        "start after end: {e}"
                    );
                }
                (Some(false), Some(true)) => {
                    cipher += 1;
                    assert_eq!(e["cap"], 0, "ciphertext with a payload: {e}");
                    assert_eq!(e["payload"], "", "ciphertext with a payload: {e}");
                }
                _ => panic!(
                    "data event of a TLS connection neither plaintext nor ciphertext: {e}\n{}",
                    self.dump()
                ),
            }
            seqs.push(e["seq"].as_u64().expect("seq"));
        }
        assert!(plain > 0 && cipher > 0, "plain {plain}, cipher {cipher}");
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        let want: Vec<u64> = (0..sorted.len() as u64).collect();
        assert_eq!(
            sorted, want,
            "sequence of {cookie} is not 0..n (shared by ciphertext and plaintext)"
        );
        let closed = self
            .conn(cookie, "closed")
            .unwrap_or_else(|| panic!("no close for {cookie}\n{}", self.dump()));
        assert_eq!(closed["tls"], true, "close not marked TLS: {closed}");
        // Events written before the close event are numbered below its count, those
        // after it (a send during which the peer's reset closed the socket, which loopback
        // handles inside the send; queued bytes read after a reset) at or above it.
        let at_close = closed["data_events"].as_u64().expect("data_events");
        let mut after = false;
        for l in &self.lines {
            if l == closed {
                after = true;
            } else if l["kind"] == "data" && l["cookie"] == *cookie {
                let seq = l["seq"].as_u64().expect("seq");
                assert_eq!(
                    seq >= at_close,
                    after,
                    "event numbered against the close: {l}\n{closed}"
                );
            }
        }
    }

    fn dump(&self) -> String {
        let mut s = String::from("debug events:\n");
        for l in self.lines.iter().filter(|l| l["kind"] != "exec") {
            s.push_str(&format!("  {l}\n"));
        }
        s.push_str("stderr:\n");
        s.push_str(&self.stderr);
        s
    }

    /// No plaintext was dropped for want of a socket.
    fn assert_none_unattributed(&self) {
        let last = self
            .records
            .iter()
            .rev()
            .find(|r| r["kind"] == "stats")
            .expect("a stats record");
        assert_eq!(
            last["kernel"]["tls_unattributed"], 0,
            "unattributed plaintext: {last}"
        );
        assert!(
            last["kernel"]["tls_plaintext"].as_u64().unwrap_or(0) > 0,
            "{last}"
        );
    }
}

/// curl and Python's server: plaintext on both sides, on the right sockets.
fn check_curl_python(run: &Run, c: &CurlRun, server_pid: u32, port: u16) {
    let w = run.find(&[c.pid], "ssl_write", b"GET /hello HTTP/1.1\r\n");
    let r = run.find(&[server_pid], "ssl_read", b"GET /hello HTTP/1.1\r\n");
    assert_ne!(
        w["cookie"], r["cookie"],
        "client and server share a socket?"
    );
    assert_eq!(w["dir"], "egress");
    assert_eq!(r["dir"], "ingress");
    assert_eq!(w["len"], r["len"], "request plaintext lengths differ");
    assert_eq!(w["len"].as_u64(), Some(c.size_request));
    run.assert_ports(&w["cookie"], "connected", c.local_port, port);
    run.assert_ports(&r["cookie"], "accepted", port, c.local_port);
    let sw = run.find(&[server_pid], "ssl_write", b"HTTP/1.1 200 OK\r\n");
    assert_eq!(sw["cookie"], r["cookie"]);
    let cr = run.find(&[c.pid], "ssl_read", b"HTTP/1.1 200 OK\r\n");
    assert_eq!(cr["cookie"], w["cookie"]);
    run.assert_tls_connection(&w["cookie"]);
    run.assert_tls_connection(&r["cookie"]);
    run.assert_none_unattributed();
}

// ---------------------------------------------------------------------------------------
// (1) curl -> Python https server (OpenSSL 3: SSL_write/SSL_read vs SSL_read_ex/SSL_write_ex)
// ---------------------------------------------------------------------------------------

#[test]
fn curl_to_python_https_plaintext_both_sides() {
    if !require_root() {
        return;
    }
    let cert = Cert::new();
    let port = free_server_port();
    let server = start_https_python(port, &cert);
    let rec = DebugRecorder::start(&[port]);
    let c = curl(&["-k", &format!("https://127.0.0.1:{port}/hello")]);
    assert_eq!(c.http_code, 200);
    let run = rec.stop();
    check_curl_python(&run, &c, server.pid(), port);
    run.assert_tls_http(port, &[server.pid()], &[GET_HELLO]);
}

// ---------------------------------------------------------------------------------------
// (5) A TLS server and client both started after record began: the very first request.
// ---------------------------------------------------------------------------------------

#[test]
fn first_request_of_a_process_started_after_record() {
    if !require_root() {
        return;
    }
    let cert = Cert::new();
    let port = free_server_port();
    let rec = DebugRecorder::start(&[port]);
    // The system libssl was probed at start: new processes that map it are covered by
    // the same per-inode probes, with nothing to wait for.
    let server = start_https_python(port, &cert);
    let c = curl(&["-k", &format!("https://127.0.0.1:{port}/hello")]);
    assert_eq!(c.http_code, 200);
    let run = rec.stop();
    check_curl_python(&run, &c, server.pid(), port);
    run.assert_tls_http(port, &[server.pid()], &[GET_HELLO]);
    // It was the server's first TLS request, and the first bytes its socket carried.
    let r = run.find(&[server.pid()], "ssl_read", b"GET /hello");
    assert_eq!(
        run.plaintext(&[server.pid()], "ssl_read").len(),
        1,
        "{}",
        run.dump()
    );
    assert!(run
        .data()
        .filter(|l| l["cookie"] == r["cookie"])
        .all(|l| l["tls"] == true || l["cipher"] == true));
}

// ---------------------------------------------------------------------------------------
// (2) openssl s_client -> openssl s_server -www
// ---------------------------------------------------------------------------------------

/// A child killed on drop, with its stdout lines collected.
struct Piped {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Piped {
    fn spawn(mut cmd: Command, what: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                sink.lock().unwrap().push(l);
            }
        });
        Self { child, lines }
    }

    fn send(&mut self, b: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b).expect("writing to a child");
        stdin.flush().expect("flushing");
    }

    fn wait_line(&self, prefix: &str, what: &str) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with(prefix))
        {
            assert!(
                Instant::now() < deadline,
                "{what} never printed {prefix:?}: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server` in its default mode (it relays the connection to its stdin and
/// stdout with SSL_read/SSL_write; `-www` would answer through an SSL BIO, which calls
/// OpenSSL's internal read/write functions, not the exported ones: see the report).
#[test]
fn openssl_s_client_to_s_server() {
    if !require_root() {
        return;
    }
    let cert = Cert::new();
    let port = free_server_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-naccept", "2"])
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(cert.cert())
        .arg("-key")
        .arg(cert.key());
    let mut server = Piped::spawn(cmd, "openssl s_server");
    // The readiness probe is accepted (and fails its handshake): -naccept 2 leaves one.
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    let rec = DebugRecorder::start(&[port]);
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-no_ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{port}"));
    let mut client = Piped::spawn(cmd, "openssl s_client");
    let cpid = client.child.id();
    client.send(b"GET / HTTP/1.0\r\n\r\n");
    server.wait_line("GET / HTTP/1.0", "s_server");
    server.send(b"HTTP/1.0 200 ok\r\nContent-Length: 6\r\n\r\nhello\n");
    client.wait_line("HTTP/1.0 200 ok", "s_client");
    // End of its input: s_client sends close_notify and exits.
    drop(client.child.stdin.take());
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while client.child.try_wait().expect("waiting").is_none() {
        assert!(Instant::now() < deadline, "s_client did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let spid = server.child.id();
    let run = rec.stop();
    let w = run.find(&[cpid], "ssl_write", b"GET / HTTP/1.0\r\n\r\n");
    let r = run.find(&[spid], "ssl_read", b"GET / HTTP/1.0\r\n");
    let sw = run.find(&[spid], "ssl_write", b"HTTP/1.0 200 ok\r\n");
    let cr = run.find(&[cpid], "ssl_read", b"HTTP/1.0 200 ok\r\n");
    assert_eq!(sw["cookie"], r["cookie"]);
    assert_eq!(cr["cookie"], w["cookie"]);
    let lp = local_port_of(&run, &w["cookie"]);
    assert_ne!(lp, 0, "no connected event for s_client\n{}", run.dump());
    run.assert_ports(&w["cookie"], "connected", lp, port);
    run.assert_ports(&r["cookie"], "accepted", port, lp);
    run.assert_tls_connection(&w["cookie"]);
    run.assert_tls_connection(&r["cookie"]);
    run.assert_none_unattributed();
    run.assert_tls_http(
        port,
        &[spid],
        &[Want {
            method: "GET",
            path: "/",
            status: 200,
            protocol: "HTTP/1.0",
        }],
    );
}

fn local_port_of(run: &Run, cookie: &Value) -> u16 {
    run.conn(cookie, "connected")
        .map(|c| Run::port_of(&c["local"]))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// (3) nginx with TLS and HTTP/2 (ALPN h2), curl --http2
// ---------------------------------------------------------------------------------------

fn start_nginx_h2(port: u16, dir: &Path, cert: &Cert) -> ServerGuard {
    let block = format!(
        r#"    access_log {d}/access.log;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /h2 {{ return 200 "hello-h2-body\n"; }}
    }}"#,
        d = dir.display(),
        cert = cert.cert().display(),
        key = cert.key().display()
    );
    start_nginx(dir, &block, &[SocketAddr::from(([127, 0, 0, 1], port))])
}

#[test]
fn nginx_http2_over_tls_with_curl() {
    if !require_root() {
        return;
    }
    let cert = Cert::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_server_port();
    let nginx = start_nginx_h2(port, dir.path(), &cert);
    let workers = nginx.children();
    assert!(!workers.is_empty(), "nginx has no workers");
    let rec = DebugRecorder::start(&[port]);
    let c = curl(&[
        "-k",
        "--http2",
        "-H",
        "X-Test: one",
        &format!("https://127.0.0.1:{port}/h2"),
    ]);
    assert_eq!(c.http_code, 200);
    let run = rec.stop();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // The connection preface, in plaintext, sent by curl and read by the nginx worker.
    let w = run.find(&[c.pid], "ssl_write", PREFACE);
    let r = run.find(&workers, "ssl_read", PREFACE);
    run.assert_ports(&w["cookie"], "connected", c.local_port, port);
    run.assert_ports(&r["cookie"], "accepted", port, c.local_port);
    // nginx answers with its SETTINGS frame (type 4), then HEADERS and DATA.
    let sw = run.plaintext(&workers, "ssl_write");
    assert!(
        sw.iter().any(|l| {
            let p = payload(l);
            p.len() >= 9 && p[3] == 4 && l["cookie"] == r["cookie"]
        }),
        "no SETTINGS frame written by nginx\n{}",
        run.dump()
    );
    let body = b"hello-h2-body\n";
    let sent: u64 = sw.iter().filter_map(|l| l["len"].as_u64()).sum();
    let got: u64 = run
        .plaintext(&[c.pid], "ssl_read")
        .iter()
        .filter_map(|l| l["len"].as_u64())
        .sum();
    assert!(
        got >= 9 + body.len() as u64 && got <= sent,
        "curl read {got} plaintext bytes, nginx wrote {sent}"
    );
    run.assert_tls_connection(&w["cookie"]);
    run.assert_tls_connection(&r["cookie"]);
    run.assert_none_unattributed();
    run.assert_tls_http(
        port,
        &workers,
        &[Want {
            method: "GET",
            path: "/h2",
            status: 200,
            protocol: "HTTP/2",
        }],
    );
}

// ---------------------------------------------------------------------------------------
// (4) Go crypto/tls: server (stripped) and client built now with Debian's golang-go
// ---------------------------------------------------------------------------------------

/// True when the ELF file has no symbol table (stripped).
fn is_stripped(p: &Path) -> bool {
    use object::Object;
    let data = std::fs::read(p).expect("reading a built binary");
    let f = object::File::parse(&*data).expect("ELF");
    f.section_by_name(".symtab").is_none() && f.section_by_name(".gopclntab").is_some()
}

fn run_go_client(bin: &Path, url: &str, n: u32, proto: &str) -> (u32, Value) {
    let mut cmd = Command::new(bin);
    cmd.args(["client", url, &n.to_string(), proto]);
    let o = Running::spawn(cmd, "go client").wait_ok(CLIENT_TIMEOUT);
    let v: Value = serde_json::from_str(o.stdout.trim()).expect("client JSON");
    (o.pid, v)
}

#[test]
fn go_server_stripped_and_go_client() {
    if !require_root() {
        return;
    }
    let cert = Cert::new();
    let bins = tempfile::Builder::new()
        .prefix("alog-tls-go-")
        .tempdir()
        .expect("temp dir");
    let server_bin = bins.path().join("tlsapp-server");
    let client_bin = bins.path().join("tlsapp-client");
    go_build(&server_bin, true);
    go_build(&client_bin, false);
    assert!(
        is_stripped(&server_bin),
        "the server binary is not stripped"
    );
    assert!(!is_stripped(&client_bin));

    let port = free_server_port();
    let rec = DebugRecorder::start(&[port]);
    // Both binaries are new to the recorder: each is probed after its first exec.
    let mut cmd = Command::new(&server_bin);
    cmd.arg("server")
        .arg(port.to_string())
        .arg(cert.cert())
        .arg(cert.key());
    let mut server = ServerGuard::spawn(cmd, "go server");
    server.wait_stdout_line("READY", Duration::from_secs(20));
    rec.wait_attached("tlsapp-server", Duration::from_secs(20));
    let url = format!("https://127.0.0.1:{port}/hello");
    // A first client run gets the client binary probed (a process that starts and ends
    // within a few milliseconds of its first exec is the race documented in capture::tls).
    run_go_client(&client_bin, &url, 1, "h1");
    rec.wait_attached("tlsapp-client", Duration::from_secs(20));
    let (h1_pid, h1) = run_go_client(&client_bin, &url, 2, "h1");
    assert_eq!(h1["proto"], "HTTP/1.1");
    let (h2_pid, h2) = run_go_client(&client_bin, &url, 1, "h2");
    assert_eq!(h2["proto"], "HTTP/2.0");
    let run = rec.stop();
    let sp = server.pid();

    // HTTP/1.1: both requests on one connection, each side's plaintext on its socket.
    let writes: Vec<_> = run
        .plaintext(&[h1_pid], "go_tls_write")
        .into_iter()
        .filter(|l| payload(l).starts_with(b"GET /hello HTTP/1.1\r\n"))
        .collect();
    assert_eq!(writes.len(), 2, "{}", run.dump());
    let cw = writes[0];
    let client_port = local_port_of(&run, &cw["cookie"]);
    run.assert_ports(&cw["cookie"], "connected", client_port, port);
    // The server's side of that connection: accepted from the client's port (the
    // warm-up client's connection is there too). Go's server reads the second request
    // as "G" then the rest (its background reader takes one byte to notice a close), so
    // bytes are compared, not reads.
    let reads: Vec<_> = run
        .plaintext(&[sp], "go_tls_read")
        .into_iter()
        .filter(|l| {
            run.conn(&l["cookie"], "accepted")
                .is_some_and(|c| Run::port_of(&c["remote"]) == client_port)
        })
        .collect();
    assert!(!reads.is_empty(), "{}", run.dump());
    let sr = reads[0];
    assert!(
        payload(sr).starts_with(b"GET /hello HTTP/1.1\r\n"),
        "{sr}\n{}",
        run.dump()
    );
    assert!(reads.iter().all(|l| l["cookie"] == sr["cookie"]));
    let read_total: u64 = reads.iter().filter_map(|l| l["len"].as_u64()).sum();
    let write_total: u64 = writes.iter().filter_map(|l| l["len"].as_u64()).sum();
    assert_eq!(
        read_total, write_total,
        "request plaintext bytes, server vs client"
    );
    run.assert_ports(&sr["cookie"], "accepted", port, client_port);
    let sw = run
        .plaintext(&[sp], "go_tls_write")
        .into_iter()
        .find(|l| l["cookie"] == sr["cookie"] && payload(l).starts_with(b"HTTP/1.1 200 OK\r\n"))
        .unwrap_or_else(|| panic!("no response plaintext\n{}", run.dump()));
    assert_eq!(sw["dir"], "egress");
    let cr = run.find(&[h1_pid], "go_tls_read", b"HTTP/1.1 200 OK\r\n");
    assert_eq!(cr["cookie"], cw["cookie"]);
    assert_eq!(cr["dir"], "ingress");
    run.assert_tls_connection(&cw["cookie"]);
    run.assert_tls_connection(&sr["cookie"]);

    // HTTP/2: the preface both ways, the body in a DATA frame from the server.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let c2 = run.find(&[h2_pid], "go_tls_write", PREFACE);
    let h2_port = local_port_of(&run, &c2["cookie"]);
    let s2 = run
        .plaintext(&[sp], "go_tls_read")
        .into_iter()
        .find(|l| {
            payload(l).starts_with(PREFACE)
                && run
                    .conn(&l["cookie"], "accepted")
                    .is_some_and(|c| Run::port_of(&c["remote"]) == h2_port)
        })
        .unwrap_or_else(|| panic!("no preface read by the server\n{}", run.dump()));
    assert_ne!(c2["cookie"], cw["cookie"]);
    // The body goes out in a DATA frame, alone or after the HEADERS frame in one write
    // (then past the 64 bytes the debug log shows).
    let body = b"hello from go over HTTP/2.0\n";
    let writes = run.plaintext(&[sp], "go_tls_write");
    let on_s2: Vec<_> = writes
        .iter()
        .filter(|l| l["cookie"] == s2["cookie"])
        .collect();
    let shown = on_s2
        .iter()
        .any(|l| payload(l).windows(body.len()).any(|w| w == body));
    let hidden = on_s2
        .iter()
        .any(|l| l["len"].as_u64() > l["cap"].as_u64().map(|c| c.min(64)));
    assert!(
        shown || hidden,
        "no DATA frame with the body\n{}",
        run.dump()
    );
    let sent: u64 = on_s2.iter().filter_map(|l| l["len"].as_u64()).sum();
    let got: u64 = run
        .plaintext(&[h2_pid], "go_tls_read")
        .iter()
        .filter(|l| l["cookie"] == c2["cookie"])
        .filter_map(|l| l["len"].as_u64())
        .sum();
    assert!(
        got >= 9 + body.len() as u64 && got <= sent,
        "client read {got} plaintext bytes, server wrote {sent}"
    );
    run.assert_tls_connection(&c2["cookie"]);
    run.assert_tls_connection(&s2["cookie"]);
    run.assert_none_unattributed();

    // Reads and writes on different threads still land on the right socket (goroutines).
    let tids: HashSet<u64> = run
        .plaintext(&[sp], "go_tls_read")
        .iter()
        .chain(run.plaintext(&[sp], "go_tls_write").iter())
        .filter_map(|l| l["tid"].as_u64())
        .collect();
    eprintln!("go server plaintext seen on {} thread(s)", tids.len());
    // Records: the warm-up request, two HTTP/1.1 requests on one connection, one HTTP/2
    // stream; each written once from the (stripped) server's view.
    let h2_hello = Want {
        protocol: "HTTP/2",
        ..GET_HELLO
    };
    run.assert_tls_http(port, &[sp], &[GET_HELLO, GET_HELLO, GET_HELLO, h2_hello]);
}

// ---------------------------------------------------------------------------------------
// (6) OpenSSL linked statically into an executable: found by symbol
// ---------------------------------------------------------------------------------------

#[test]
fn static_openssl_client_found_by_symbols() {
    if !require_root() {
        return;
    }
    let bins = tempfile::Builder::new()
        .prefix("alog-tls-static-")
        .tempdir()
        .expect("temp dir");
    let bin = bins.path().join("static_client");
    let o = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(fixture("tls/static_client.c"))
        .args([
            "-Wl,-Bstatic",
            "-lssl",
            "-lcrypto",
            "-Wl,-Bdynamic",
            "-lpthread",
            "-ldl",
        ])
        .output()
        .expect("running cc (install gcc and libssl-dev)");
    assert!(
        o.status.success(),
        "building the static client failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    assert!(
        !String::from_utf8_lossy(&ldd.stdout).contains("libssl"),
        "the client links libssl.so"
    );
    let cert = Cert::new();
    let port = free_server_port();
    let server = start_https_python(port, &cert);
    let rec = DebugRecorder::start(&[port]);
    let run_client = || {
        let mut cmd = Command::new(&bin);
        cmd.args(["127.0.0.1", &port.to_string(), "/hello"]);
        let o = Running::spawn(cmd, "static_client").wait_ok(CLIENT_TIMEOUT);
        assert_eq!(o.stdout.trim(), "HTTP/1.1 200 OK");
        o.pid
    };
    run_client();
    rec.wait_attached("static_client", Duration::from_secs(20));
    let pid = run_client();
    let run = rec.stop();
    let attach = run
        .lines
        .iter()
        .find(|l| {
            l["kind"] == "attach"
                && l["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("static_client"))
        })
        .expect("attach note");
    assert_eq!(attach["origin"], "executable", "{attach}");
    assert_eq!(attach["flavor"], "openssl", "{attach}");
    let w = run.find(&[pid], "ssl_write", b"GET /hello HTTP/1.1\r\n");
    let cr = run.find(&[pid], "ssl_read", b"HTTP/1.1 200 OK\r\n");
    assert_eq!(w["cookie"], cr["cookie"]);
    let r = run
        .plaintext(&[server.pid()], "ssl_read")
        .into_iter()
        .filter(|l| payload(l).starts_with(b"GET /hello"))
        .count();
    assert_eq!(r, 2, "the server saw both requests in plaintext");
    run.assert_tls_connection(&w["cookie"]);
    // Both runs are written, the first (before the client binary was probed) from the
    // server's plaintext alone.
    run.assert_tls_http(port, &[server.pid()], &[GET_HELLO, GET_HELLO]);
}

// ---------------------------------------------------------------------------------------
// JSONL level: the engine turns the plaintext into an http record marked TLS.
// ---------------------------------------------------------------------------------------

#[test]
fn jsonl_https_records_are_marked_tls() {
    if !require_root() {
        return;
    }
    let cert = Cert::new();
    let port = free_server_port();
    let _server = start_https_python(port, &cert);
    let rec = Recorder::start(&[port], &[]);
    let c = curl(&["-k", &format!("https://127.0.0.1:{port}/hello")]);
    let recording = rec.stop();
    let http = recording.http(port);
    assert_eq!(http.len(), 1, "{}", dump_http(&http));
    let h = http[0];
    assert_eq!(h["tls"], true, "{h}");
    assert_eq!(h["method"], "GET");
    assert_eq!(h["path"], "/hello");
    assert_eq!(h["status"], 200);
    assert_eq!(h["client"]["port"], c.local_port);
    recording.assert_nothing_lost();
    let by_kind: BTreeMap<String, usize> =
        recording.records.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r["kind"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
            m
        });
    eprintln!("records by kind: {by_kind:?}");
}

// ---------------------------------------------------------------------------------------
// (7) A hostile binary: a Go crypto/tls function made of RET instructions
// ---------------------------------------------------------------------------------------

/// One probe per RET would be a uprobe per byte of the function: the file is refused
/// whole, logged, and counted in the stats records, and nothing is attached to it.
#[test]
fn go_function_full_of_returns_is_refused_and_counted() {
    if !require_root() {
        return;
    }
    let bins = tempfile::Builder::new()
        .prefix("alog-tls-rets-")
        .tempdir()
        .expect("temp dir");
    let good = bins.path().join("tlsapp-good");
    go_build(&good, true);
    // crypto/tls.(*Conn).Read, every byte a RET.
    let mut bytes = std::fs::read(&good).expect("reading the Go binary");
    let read = {
        use k8s_alog::tls::{elf, golang::Pclntab, Image};
        let img = Image::open(&good).expect("opening the Go binary");
        let f = img.parse().expect("an ELF file");
        let table = Pclntab::find(&f).expect("the Go function table");
        let func =
            table.lookup(&["crypto/tls.(*Conn).Read"], img.budget())["crypto/tls.(*Conn).Read"];
        let at = elf::file_offset(&f, func.entry).expect("in the file") as usize;
        at..at + (func.end - func.entry) as usize
    };
    let rets = read.len();
    bytes[read].fill(0xc3);
    let bin = bins.path().join("tlsapp-rets");
    std::fs::write(&bin, &bytes).expect("writing the patched binary");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let port = free_server_port();
    let rec = DebugRecorder::start(&[port]);
    // Started with no arguments, it prints its usage and exits: its exec is enough.
    let o = Command::new(&bin)
        .output()
        .expect("running the patched binary");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rec.stderr_text().contains("tlsapp-rets") {
        assert!(
            Instant::now() < deadline,
            "nothing logged about {} within 20 s:\n{}",
            bin.display(),
            rec.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500)); // a stats record after it
    let run = rec.stop();
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("tlsapp-rets"))
        .collect();
    assert!(
        said.iter()
            .any(|l| l.contains("not probing") && l.contains("RET instructions")),
        "{said:?}"
    );
    let attached: Vec<&Value> = run
        .lines
        .iter()
        .filter(|l| {
            l["kind"] == "attach"
                && l["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("tlsapp-rets"))
        })
        .collect();
    assert!(attached.is_empty(), "probes attached: {attached:?}");
    let tls = &final_stats(&run.records)["tls_probes"];
    assert!(tls["files_refused"].as_u64() >= Some(1), "{tls}");
    eprintln!("a function of {rets} RETs: refused; TLS probe stats {tls}");
}

// ---------------------------------------------------------------------------------------
// (8) The shipped DaemonSet's privileges
// ---------------------------------------------------------------------------------------

/// The capabilities deploy/daemonset.yaml adds (after dropping ALL), as setpriv names them.
fn daemonset_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("reading deploy/daemonset.yaml");
    let doc: Value = serde_yaml_ng::from_str(&text).expect("deploy/daemonset.yaml is YAML");
    let sc = &doc["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "the manifest no longer drops ALL: update this test"
    );
    sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("a capability name").to_ascii_lowercase())
        .collect()
}

/// k8s-alog with exactly the capabilities the DaemonSet grants (root, the bounding set
/// cut to the manifest's list) sees the plaintext of an HTTPS server that was running
/// before it started: a privilege the manifest lacks fails here, not on a cluster.
#[test]
fn daemonset_privileges_capture_tls_of_a_running_process() {
    if !require_root() {
        return;
    }
    let caps = daemonset_capabilities();
    let bounding = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let cert = Cert::new();
    let port = free_server_port();
    let _server = start_https_python(port, &cert);
    let wrapper = vec![
        "setpriv".to_string(),
        "--bounding-set".to_string(),
        bounding.clone(),
    ];
    let rec = Recorder::start_wrapped(&wrapper, &[port], &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", rec.pid())).unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("?")
        .to_string();
    let c = curl(&["-k", &format!("https://127.0.0.1:{port}/hello")]);
    let recording = rec.stop();
    let http = recording.http(port);
    assert_eq!(
        http.len(),
        1,
        "with the DaemonSet's capabilities ({bounding}; CapEff {cap_eff}) the HTTPS exchange was not seen; stderr:\n{}\n{}",
        recording.stderr.join("\n"),
        dump_http(&http)
    );
    let h = http[0];
    assert_eq!(h["tls"], true, "{h}");
    assert_eq!(h["path"], "/hello");
    assert_eq!(h["status"], 200);
    assert_eq!(h["client"]["port"], c.local_port);
    assert!(
        !recording.stderr.iter().any(|l| l.contains("cannot probe")),
        "TLS probes refused with the DaemonSet's capabilities:\n{}",
        recording.stderr.join("\n")
    );
}
