//! `k8s-alog push` end to end: real traffic between pods of the simulated node
//! (tests/sim), captured by the real BPF programs, streamed to a STAND-IN OAP collector:
//! a tonic server implementing SkyWalking's `EBPFAccessLogService` from the project's own
//! proto files (a real OAP, a Java server with storage, cannot run here). The stand-in
//! only records what it receives, stream by stream, and answers as the OAP does.
//!
//! Root only (namespaces, cgroups, nft, eBPF). Run:
//! `cargo test --release --test push_oap -- --test-threads=1`.

mod common;
mod oap;
mod sim;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_alog::sink::oap::pb;
use pb::access_log_kernel_log::Operation as Op;
use pb::EbpfAccessLogMessage as Msg;
use prost::Message;

use common::*;
use oap::*;
use sim::SimNode;

// ---------------------------------------------------------------------------------------
// Running `k8s-alog push` (or `record --oap`).

/// A running k8s-alog whose stderr is collected line by line; killed on drop.
struct Alog {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Alog {
    fn spawn(args: &[String]) -> Self {
        let mut cmd = Command::new(alog_bin());
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("K8S_ALOG_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting k8s-alog");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("  | {line}");
                l2.lock().unwrap().push(line);
            }
        });
        Self {
            child: Some(child),
            lines,
            reader: Some(reader),
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Wait until `n` stderr lines contain `needle` (a generous bound: only a hang fails).
    fn wait_lines(&mut self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < n {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "k8s-alog exited ({st}) before printing {needle:?}:\n{}",
                    self.text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {n} lines with {needle:?} within {timeout:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGINT (after the ring buffer drained), a clean exit, and the counters it printed.
    fn stop(mut self) -> (Vec<String>, BTreeMap<String, u64>) {
        std::thread::sleep(DRAIN_DELAY);
        let mut child = self.child.take().unwrap();
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        self.finish(&mut child)
    }

    /// Wait for the process to exit by itself.
    fn wait(mut self) -> (Vec<String>, BTreeMap<String, u64>) {
        let mut child = self.child.take().unwrap();
        self.finish(&mut child)
    }

    fn finish(&mut self, child: &mut Child) -> (Vec<String>, BTreeMap<String, u64>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("k8s-alog did not exit within 60 s:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines.lock().unwrap().clone();
        assert!(
            status.success(),
            "k8s-alog exited with {status}:\n{}",
            lines.join("\n")
        );
        (lines.clone(), counters(&lines))
    }
}

impl Drop for Alog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `push counters:` line as a map.
fn counters(lines: &[String]) -> BTreeMap<String, u64> {
    let line = lines
        .iter()
        .rev()
        .find_map(|l| l.split("push counters: ").nth(1))
        .unwrap_or_else(|| panic!("no `push counters:` line:\n{}", lines.join("\n")));
    line.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// `push --oap 127.0.0.1:port` on the sim node, only the pods' port 8080 (so that the
/// push's own gRPC traffic to the stand-in is not captured), started once it captures.
fn start_push(node: &SimNode, port: u16, spool: &Path, extra: &[&str]) -> Alog {
    let mut args: Vec<String> = [
        "push",
        "--oap",
        &format!("127.0.0.1:{port}"),
        "--port",
        "8080",
        "--oap-spool-dir",
        &spool.to_string_lossy(),
        "--oap-batch-period",
        "0.2",
        "--oap-backoff-max",
        "1",
        "--oap-log-interval",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(node.alog_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut a = Alog::spawn(&args);
    a.wait_lines("capturing:", 1, START_TIMEOUT);
    a
}

/// `curl` in a pod with several URLs on one keep-alive connection; returns the local port.
fn curl_many(node: &SimNode, pod: &str, ctr: &str, urls: &[String]) -> u16 {
    curl_with(node, pod, ctr, &[], urls)
}

/// `curl_many` with extra curl options.
fn curl_with(node: &SimNode, pod: &str, ctr: &str, opts: &[&str], urls: &[String]) -> u16 {
    let mut cmd = node.command(pod, ctr, "/usr/bin/curl");
    cmd.args(["-q", "-s", "-S", "--noproxy", "*", "--max-time", "30"]);
    cmd.args(opts);
    for u in urls {
        cmd.args(["-o", "/dev/null", u.as_str()]);
    }
    cmd.args(["-w", "%{local_port} %{http_code}\\n"]);
    let o = Running::spawn(cmd, "curl").wait_ok(CLIENT_TIMEOUT);
    let first = o.stdout.lines().next().expect("curl -w output");
    first.split_whitespace().next().unwrap().parse().unwrap()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn url(node: &SimNode, pod: &str, path: &str) -> String {
    format!("http://{}:8080{path}", node.pod(pod).ip)
}

// ---------------------------------------------------------------------------------------

/// A real session on the sim node arrives at the stand-in with every field the contract
/// names: node first, connection first in each group, both views of each connection
/// (both ends are on this node), HTTP fields, Kubernetes names of both ends.
#[test]
fn live_session_arrives_as_the_contract_says() {
    if !require_root() {
        return;
    }
    let node = SimNode::up();
    let _cart = node.start_server("cart", "cart", 8080);
    let _pay = node.start_server("pay", "payment", 8080);
    let port = free_port();
    let streams: Streams = Arc::default();
    let oap = StandIn::start(port, Arc::clone(&streams), None);
    let spool = tempfile::tempdir().unwrap();
    // HTTP/2 (prior knowledge) from nghttpd in the cart pod's second container.
    let h2_files = tempfile::tempdir().unwrap();
    std::fs::write(h2_files.path().join("small"), b"abcd").unwrap();
    let mut h2cmd = node.command("cart", "proxy", "/usr/sbin/nghttpd");
    h2cmd
        .args(["--no-tls", "-d"])
        .arg(h2_files.path())
        .arg("15001");
    let _h2 = ServerGuard::spawn(h2cmd, "nghttpd in cart/proxy");
    wait_for_port(node.addr("cart", 15001), Duration::from_secs(20));
    let push = start_push(
        &node,
        port,
        spool.path(),
        &[
            "--oap-token",
            "t0ken",
            "--oap-cluster",
            "sim",
            "--port",
            "15001",
        ],
    );
    let t0 = monotonic_ns();
    let mut singles = Vec::new();
    for _ in 0..3 {
        let (_, p, code) = node.curl("web", "web", &url(&node, "cart", "/bytes/100"));
        assert_eq!(code, 200);
        singles.push(p);
    }
    let keepalive = curl_many(
        &node,
        "web",
        "web",
        &[
            url(&node, "cart", "/bytes/10"),
            url(&node, "cart", "/status/404"),
        ],
    );
    let (_, pay_port, code) = node.curl("cart", "cart", &url(&node, "pay", "/status/503"));
    assert_eq!(code, 503);
    let h2_port = curl_with(
        &node,
        "web",
        "web",
        &["--http2-prior-knowledge"],
        &[format!("http://{}:15001/small", node.pod("cart").ip)],
    );
    wait_port_idle(8080, Duration::from_secs(10));
    wait_port_idle(15001, Duration::from_secs(10));
    let (_, c) = push.stop();
    let t1 = monotonic_ns();
    oap.stop();
    let got = snapshot(&streams);
    eprintln!(
        "stand-in received {} streams, {} messages; push counters {c:?}",
        got.len(),
        got.iter().map(|s| s.messages.len()).sum::<usize>()
    );
    assert!(
        got.iter().all(|s| s.token.as_deref() == Some("t0ken")),
        "authentication on every call"
    );
    let msgs = with_connections(&got);
    assert_eq!(
        msgs.len() as u64,
        c["messages_sent"],
        "the stand-in holds exactly what push says it sent"
    );
    assert_eq!(c["dropped_messages"], 0);

    // Node info: name, interfaces, cluster, boot time (wall clock minus monotonic).
    let boot_now = realtime_ns() - i128::from(monotonic_ns());
    for s in &got {
        let n = s.messages[0].node.as_ref().unwrap();
        assert_eq!(n.name, "sim-node");
        assert_eq!(n.cluster_name, "sim");
        assert!(
            n.net_interfaces
                .iter()
                .any(|i| i.name == "lo" && i.index == 1 && i.mtu > 0),
            "{n:?}"
        );
        let bt = n.boot_time.unwrap();
        let boot = i128::from(bt.seconds) * 1_000_000_000 + i128::from(bt.nanos);
        assert!(
            (boot - boot_now).abs() < 1_000_000_000,
            "boot time {boot} vs {boot_now}"
        );
    }

    let web = node.pod("web");
    let cart = node.pod("cart");
    let pay = node.pod("pay");
    let check_ends =
        |c: &pb::AccessLogConnection, server: (&str, &str, &str), client: (&str, &str)| {
            let (local, remote) = if c.role == pb::DetectPoint::Server as i32 {
                (&c.local, &c.remote)
            } else {
                (&c.remote, &c.local)
            };
            let s = k8s(local).unwrap_or_else(|| panic!("server end not a k8s address: {c:?}"));
            assert_eq!(
                (
                    s.service_name.as_str(),
                    s.pod_name.as_str(),
                    s.container_name.as_str(),
                    s.port
                ),
                (server.0, server.1, server.2, 8080)
            );
            let cl = k8s(remote).unwrap_or_else(|| panic!("client end not a k8s address: {c:?}"));
            assert_eq!((cl.service_name.as_str(), cl.pod_name.as_str()), client);
            assert_eq!(c.tls_mode, pb::AccessLogConnectionTlsMode::Plain as i32);
            assert_eq!(c.protocol, pb::AccessLogProtocolType::Http1 as i32);
        };
    let check_exchange = |h: &pb::AccessLogHttpProtocol, path: &str, status: i32, body: u64| {
        let req = h.request.as_ref().unwrap();
        let resp = h.response.as_ref().unwrap();
        assert_eq!(
            req.method,
            pb::AccessLogHttpProtocolRequestMethod::Get as i32
        );
        assert_eq!(req.path, path);
        assert!(
            req.size_of_headers_bytes > 20 && req.size_of_body_bytes == 0,
            "{req:?}"
        );
        assert_eq!(resp.status_code, status);
        assert!(resp.size_of_headers_bytes > 20, "{resp:?}");
        assert_eq!(resp.size_of_body_bytes, body, "{resp:?}");
        assert_eq!(h.version, pb::AccessLogHttpProtocolVersion::Http1 as i32);
        let (s, e) = (ts(&h.start_time), ts(&h.end_time));
        assert!(
            t0 <= s && s <= e && e <= t1,
            "times {s}..{e} outside the run {t0}..{t1}"
        );
    };
    // One exchange per single-request connection, seen from both ends.
    for p in &singles {
        for role in [pb::DetectPoint::Server, pb::DetectPoint::Client] {
            let v = of_client_port(&msgs, *p, role);
            let x = exchanges(&v);
            assert_eq!(x.len(), 1, "port {p} {role:?}: {v:#?}");
            check_exchange(x[0], "/bytes/100", 200, 100);
            for (c, _) in &v {
                check_ends(
                    c,
                    ("cart.shop", &cart.name, "cart"),
                    ("web.shop", &web.name),
                );
            }
            let ops = kernel_ops(&v);
            let open = match role {
                pb::DetectPoint::Server => ops.iter().any(|o| matches!(o, Op::Accept(_))),
                _ => ops.iter().any(|o| matches!(o, Op::Connect(c) if c.success && ts(&c.start_time) <= ts(&c.end_time))),
            };
            assert!(open, "port {p} {role:?}: no connect/accept in {ops:?}");
            assert!(
                ops.iter().any(|o| matches!(o, Op::Close(_))),
                "port {p} {role:?}: no close in {ops:?}"
            );
            // The exchange's own kernel logs: request and response bytes.
            let xm = v.iter().find(|(_, m)| http(m).is_some()).unwrap();
            assert_eq!(xm.1.kernel_logs.len(), 2, "{:?}", xm.1.kernel_logs);
        }
    }
    // Two exchanges on one keep-alive connection, in order.
    let v = of_client_port(&msgs, keepalive, pb::DetectPoint::Server);
    let x = exchanges(&v);
    assert_eq!(x.len(), 2, "{v:#?}");
    check_exchange(x[0], "/bytes/10", 200, 10);
    assert_eq!(x[1].response.as_ref().unwrap().status_code, 404);
    assert!(ts(&x[0].end_time) <= ts(&x[1].start_time));
    // Across namespaces: cart calls payment, which answers 503.
    for role in [pb::DetectPoint::Server, pb::DetectPoint::Client] {
        let v = of_client_port(&msgs, pay_port, role);
        let x = exchanges(&v);
        assert_eq!(x.len(), 1, "{v:#?}");
        check_exchange(
            x[0],
            "/status/503",
            503,
            x[0].response.as_ref().unwrap().size_of_body_bytes,
        );
        for (c, _) in &v {
            check_ends(
                c,
                ("payment.pay", &pay.name, "payment"),
                ("cart.shop", &cart.name),
            );
        }
    }
    // HTTP/2: protocol HTTP_2 on the connection, version HTTP2 on the exchange.
    let v = of_client_port(&msgs, h2_port, pb::DetectPoint::Server);
    let x = exchanges(&v);
    assert_eq!(x.len(), 1, "{v:#?}");
    assert_eq!(x[0].version, pb::AccessLogHttpProtocolVersion::Http2 as i32);
    let req = x[0].request.as_ref().unwrap();
    assert_eq!(
        (req.method, req.path.as_str()),
        (pb::AccessLogHttpProtocolRequestMethod::Get as i32, "/small")
    );
    let resp = x[0].response.as_ref().unwrap();
    assert_eq!((resp.status_code, resp.size_of_body_bytes), (200, 4));
    for (c, _) in &v {
        assert_eq!(c.protocol, pb::AccessLogProtocolType::Http2 as i32);
        let s = k8s(&c.local).expect("server end named");
        assert_eq!(
            (
                s.service_name.as_str(),
                s.pod_name.as_str(),
                s.container_name.as_str(),
                s.port
            ),
            ("cart.shop", cart.name.as_str(), "proxy", 15001)
        );
        let cl = k8s(&c.remote).expect("client end named");
        assert_eq!(
            (cl.service_name.as_str(), cl.pod_name.as_str()),
            ("web.shop", web.name.as_str())
        );
    }
    eprintln!(
        "figures: {} streams, {} messages, {} HTTP exchanges, {} kernel logs",
        got.len(),
        msgs.len(),
        msgs.iter().filter(|(_, m)| http(m).is_some()).count(),
        msgs.iter().map(|(_, m)| m.kernel_logs.len()).sum::<usize>()
    );
}

/// The stand-in goes away in the middle of a run and comes back: every exchange arrives,
/// exactly once.
#[test]
fn collector_restart_loses_nothing() {
    if !require_root() {
        return;
    }
    let node = SimNode::up();
    let _cart = node.start_server("cart", "cart", 8080);
    let port = free_port();
    let streams: Streams = Arc::default();
    let oap = StandIn::start(port, Arc::clone(&streams), None);
    let spool = tempfile::tempdir().unwrap();
    let mut push = start_push(&node, port, spool.path(), &[]);
    let round = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| node.curl("web", "web", &url(&node, "cart", "/bytes/50")).1)
            .collect()
    };
    let a = round(5);
    wait_delivered(&streams, &a, Duration::from_secs(60));
    oap.stop();
    let b = round(5);
    push.wait_lines("oap: lost", 1, Duration::from_secs(60));
    // Let the rest of round B reach the spool while the collector is away.
    std::thread::sleep(Duration::from_secs(2));
    let oap = StandIn::start(port, Arc::clone(&streams), None);
    push.wait_lines("oap: connected", 2, Duration::from_secs(60));
    let c = round(5);
    wait_port_idle(8080, Duration::from_secs(10));
    let (_, k) = push.stop();
    oap.stop();
    let msgs = with_connections(&snapshot(&streams));
    for p in a.iter().chain(&b).chain(&c) {
        for role in [pb::DetectPoint::Server, pb::DetectPoint::Client] {
            let n = exchanges(&of_client_port(&msgs, *p, role)).len();
            assert_eq!(
                n, 1,
                "client port {p} {role:?}: {n} exchanges (want exactly 1)"
            );
        }
    }
    assert_eq!(msgs.len() as u64, k["messages_sent"]);
    assert!(k["reconnects"] >= 1 && k["spooled_messages"] >= 1, "{k:?}");
    assert_eq!(k["spool_waiting_messages"], 0, "{k:?}");
    assert_eq!(k["dropped_messages"], 0, "{k:?}");
    eprintln!(
        "figures: 15 exchanges x 2 views delivered once each; {} messages sent, {} spooled then delivered ({} batches), {} reconnects, {} failed sends",
        k["messages_sent"], k["spool_delivered_messages"], k["spool_delivered_batches"], k["reconnects"], k["send_failures"]
    );
}

/// No collector at all: the spool fills to its bound, then batches are dropped and
/// counted; once a collector listens, the spooled batches arrive, and every message
/// mapped is either delivered or counted as dropped.
#[test]
fn spool_fills_to_its_bound_then_drops_are_counted_then_delivered() {
    if !require_root() {
        return;
    }
    let node = SimNode::up();
    let _cart = node.start_server("cart", "cart", 8080);
    let port = free_port();
    let spool = tempfile::tempdir().unwrap();
    let bound: u64 = 16 * 1024;
    let mut push = start_push(&node, port, spool.path(), &["--oap-spool-max", "16K"]);
    let urls: Vec<String> = (0..20).map(|_| url(&node, "cart", "/bytes/20")).collect();
    let mut rounds = 0;
    while push.count("oap: spool full") == 0 {
        rounds += 1;
        assert!(rounds <= 100, "the spool never filled:\n{}", push.text());
        curl_many(&node, "web", "web", &urls);
        std::thread::sleep(Duration::from_millis(300));
    }
    // On disk, never more than the bound.
    let on_disk: u64 = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".batch"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(on_disk <= bound, "{on_disk} bytes spooled, bound {bound}");
    let streams: Streams = Arc::default();
    let oap = StandIn::start(port, Arc::clone(&streams), None);
    push.wait_lines("oap: connected", 1, Duration::from_secs(60));
    push.wait_lines("spooled batches", 1, Duration::from_secs(60));
    let last = curl_many(&node, "web", "web", &urls[..2]);
    wait_delivered(&streams, &[last], Duration::from_secs(60));
    let (_, k) = push.stop();
    oap.stop();
    let got = snapshot(&streams);
    let msgs = with_connections(&got);
    eprintln!("figures: {rounds} rounds of 20 exchanges; spool on disk when full {on_disk} of {bound} bytes; counters {k:?}");
    assert!(
        k["dropped_messages"] > 0 && k["dropped_batches"] > 0,
        "{k:?}"
    );
    assert!(
        k["spool_peak_bytes"] <= bound && k["spool_peak_bytes"] > 0,
        "{k:?}"
    );
    assert!(k["spooled_messages"] > 0, "{k:?}");
    assert_eq!(
        k["spool_delivered_messages"], k["spooled_messages"],
        "every spooled message delivered: {k:?}"
    );
    assert_eq!(k["spool_waiting_messages"], 0, "{k:?}");
    assert_eq!(msgs.len() as u64, k["messages_sent"], "{k:?}");
    assert_eq!(
        k["messages_sent"] + k["dropped_messages"],
        k["messages_mapped"],
        "every message is delivered or counted as dropped: {k:?}"
    );
}

fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, a server certificate for `localhost` and a client certificate, all from it.
fn make_pki(dir: &Path) -> PathBuf {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=alog test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
            dir,
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
            dir,
        );
    }
    dir.to_path_buf()
}

/// Canonical content of what a collector received, batching aside: every node info; every
/// exchange message with its connection; every kernel log of the kernel-only messages with
/// its connection. Sorted encodings, so two runs compare exactly.
#[derive(Debug, PartialEq, Eq)]
struct Content {
    nodes: BTreeSet<Vec<u8>>,
    exchanges: Vec<Vec<u8>>,
    kernel: Vec<Vec<u8>>,
}

fn content(streams: &[Stream]) -> Content {
    let nodes = streams
        .iter()
        .map(|s| s.messages[0].node.as_ref().unwrap().encode_to_vec())
        .collect();
    let mut exchanges = Vec::new();
    let mut kernel = Vec::new();
    for (c, m) in with_connections(streams) {
        let conn = c.encode_to_vec();
        if m.protocol_log.is_some() {
            let bare = Msg {
                node: None,
                connection: None,
                ..m.clone()
            };
            exchanges.push([conn.clone(), bare.encode_to_vec()].concat());
        } else {
            for l in &m.kernel_logs {
                kernel.push([conn.clone(), l.encode_to_vec()].concat());
            }
        }
    }
    exchanges.sort();
    kernel.sort();
    Content {
        nodes,
        exchanges,
        kernel,
    }
}

/// `record --oap` forwards while it records; `push --from` that recording (over TLS with
/// a client certificate and a token, to another stand-in) sends the same messages,
/// timestamps and boot time included.
#[test]
fn replay_of_a_recording_sends_what_the_live_push_sent() {
    if !require_root() {
        return;
    }
    let node = SimNode::up();
    let _cart = node.start_server("cart", "cart", 8080);
    let _pay = node.start_server("pay", "payment", 8080);
    let live_port = free_port();
    let live: Streams = Arc::default();
    let oap = StandIn::start(live_port, Arc::clone(&live), None);
    let spool = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--oap".to_string(),
        format!("127.0.0.1:{live_port}"),
        "--oap-spool-dir".into(),
        spool.path().join("live").to_string_lossy().into_owned(),
        "--oap-batch-period".into(),
        "0.2".into(),
    ];
    args.extend(node.alog_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let rec = Recorder::start(&[8080], &argv);
    let mut ports = Vec::new();
    for i in 0..4 {
        ports.push(
            node.curl(
                "web",
                "web",
                &url(&node, "cart", &format!("/bytes/{}", 10 + i)),
            )
            .1,
        );
    }
    ports.push(curl_many(
        &node,
        "web",
        "web",
        &[
            url(&node, "cart", "/bytes/1"),
            url(&node, "cart", "/status/500"),
        ],
    ));
    ports.push(
        node.curl("cart", "cart", &url(&node, "pay", "/status/503"))
            .1,
    );
    wait_port_idle(8080, Duration::from_secs(10));
    let recording = rec.stop();
    oap.stop();
    let live_counters = counters(&recording.stderr);
    assert_eq!(live_counters["dropped_messages"], 0, "{live_counters:?}");

    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let rd = |n: &str| std::fs::read(pki.path().join(n)).unwrap();
    let replay_port = free_port();
    let replayed: Streams = Arc::default();
    let oap = StandIn::start(
        replay_port,
        Arc::clone(&replayed),
        Some(ServerTls {
            cert: rd("server.pem"),
            key: rd("server.key"),
            client_ca: rd("ca.pem"),
        }),
    );
    let p = |n: &str| pki.path().join(n).to_string_lossy().into_owned();
    let push = Alog::spawn(&[
        "push".into(),
        "--from".into(),
        recording.path.to_string_lossy().into_owned(),
        "--oap".into(),
        format!("localhost:{replay_port}"),
        "--oap-ca".into(),
        p("ca.pem"),
        "--oap-cert".into(),
        p("client.pem"),
        "--oap-key".into(),
        p("client.key"),
        "--oap-token".into(),
        "replay-token".into(),
        "--oap-spool-dir".into(),
        spool.path().join("replay").to_string_lossy().into_owned(),
        "--node-name".into(),
        "sim-node".into(),
    ]);
    let (_, k) = push.wait();
    oap.stop();
    let a = snapshot(&live);
    let b = snapshot(&replayed);
    assert!(b.iter().all(|s| s.token.as_deref() == Some("replay-token")));
    let (ca, cb) = (content(&a), content(&b));
    eprintln!(
        "figures: live {} streams / {} messages, replay {} streams / {} messages; {} exchange messages, {} kernel logs; replay counters {k:?}",
        a.len(),
        a.iter().map(|s| s.messages.len()).sum::<usize>(),
        b.len(),
        b.iter().map(|s| s.messages.len()).sum::<usize>(),
        ca.exchanges.len(),
        ca.kernel.len()
    );
    // Every exchange of the session is there (server and client views).
    let msgs = with_connections(&a);
    for p in &ports {
        assert!(
            !exchanges(&of_client_port(&msgs, *p, pb::DetectPoint::Server)).is_empty(),
            "port {p}"
        );
    }
    assert!(
        ca.exchanges.len() >= 2 * 7,
        "{} exchange messages",
        ca.exchanges.len()
    );
    assert_eq!(ca.nodes.len(), 1, "one node info for the whole session");
    assert_eq!(
        ca.nodes, cb.nodes,
        "node info (name, interfaces, boot time) differs"
    );
    assert_eq!(ca.exchanges, cb.exchanges, "exchange messages differ");
    assert_eq!(ca.kernel, cb.kernel, "kernel logs differ");
}

/// A synthetic exchange record (the delivery test below is about delivery, not capture).
fn synthetic_http(i: u16) -> k8s_alog::model::Record {
    serde_json::from_value(serde_json::json!({
        "kind": "http", "v": 1, "time": "2026-01-01T00:00:01.000001000Z",
        "conn_id": 100 + u64::from(i), "observed_by": "server",
        "client": {"addr": "10.0.0.1", "port": 40000 + i, "pod": "web-1", "namespace": "shop", "service": "web.shop"},
        "server": {"addr": "10.0.0.2", "port": 8080, "pod": "cart-0", "namespace": "shop", "service": "cart.shop"},
        "protocol": "HTTP/1.1", "tls": false, "method": "GET", "path": "/x", "status": 200,
        "request": {"header_bytes": 50, "body_bytes": 0}, "response": {"header_bytes": 60, "body_bytes": 10},
        "start_mono_ns": 1_000_000_000u64, "end_mono_ns": 1_000_001_000u64,
        "start_time": "2026-01-01T00:00:01.000000000Z", "duration_ns": 1000,
        "error": false, "complete": true, "partial": false
    }))
    .unwrap()
}

/// Delivery alone (no capture, so no root needed): a dead first address is skipped for
/// the live second one; a spool left by an earlier run is delivered first, oldest first;
/// a damaged spool file is set aside in `bad/` and counted, not fatal.
#[test]
fn delivery_fails_over_and_skips_damaged_spool_files() {
    use k8s_alog::sink::oap::mapping::{Mapper, NodeConfig};
    use k8s_alog::sink::oap::spool::Spool;
    use k8s_alog::sink::oap::{OapConfig, OapSink};
    use k8s_alog::sink::Sink;

    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig {
        name: "n1".into(),
        ..NodeConfig::default()
    };
    let earlier = Mapper::new(node.clone()).batch(&[synthetic_http(1), synthetic_http(2)]);
    {
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(&earlier).unwrap();
        s.push(&earlier).unwrap();
    }
    let second = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "batch"))
        .max()
        .unwrap();
    std::fs::write(&second, b"ALOGSPL1 damaged by a test").unwrap();

    let dead = free_port();
    let live_port = free_port();
    let streams: Streams = Arc::default();
    let oap = StandIn::start(live_port, Arc::clone(&streams), None);
    let cfg = OapConfig {
        addresses: vec![
            format!("127.0.0.1:{dead}"),
            format!("127.0.0.1:{live_port}"),
        ],
        tls: None,
        token: Some("tok".into()),
        batch_size: 100,
        batch_period: Duration::from_millis(200),
        spool_dir: dir.path().to_path_buf(),
        spool_max_bytes: 1 << 20,
        node,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        flush_timeout: Duration::from_secs(20),
        log_every: Duration::ZERO,
    };
    let mut sink = OapSink::start(cfg).unwrap();
    for i in 10..15 {
        sink.write(&synthetic_http(i)).unwrap();
    }
    let st = sink.finish();
    drop(sink);
    oap.stop();
    let got = snapshot(&streams);
    eprintln!("figures: {st}");
    assert_eq!(
        got.len(),
        2,
        "the spooled batch, then the new one: {got:#?}"
    );
    assert_eq!(
        got[0].messages, earlier,
        "the earlier run's batch first, unchanged"
    );
    assert_eq!(got[1].messages.len(), 5);
    assert!(got.iter().all(|s| s.token.as_deref() == Some("tok")));
    assert_eq!(st.spool_corrupt_files, 1, "{st:?}");
    assert_eq!(st.spool_delivered_messages, 2, "{st:?}");
    assert_eq!(st.messages_sent, 7, "{st:?}");
    assert!(
        st.connect_failures >= 1,
        "the dead address was tried first: {st:?}"
    );
    assert_eq!(
        (st.spool_waiting_messages, st.dropped_messages),
        (0, 0),
        "{st:?}"
    );
    let aside = std::fs::read_dir(dir.path().join("bad")).unwrap().count();
    assert_eq!(aside, 1, "the damaged file is kept aside in bad/");
}

/// Synthetic records as a recording `push --from` can replay.
fn write_recording(path: &Path, n: u16) {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&serde_json::to_string(&synthetic_http(i)).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A spool directory that cannot be used (here below a regular file; a read-only root
/// file system or a refused directory goes the same way) does not stop `push`: one loud
/// warning, delivery goes on from memory, and the counters say so. No root needed.
#[test]
fn push_without_a_usable_spool_delivers_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("rec.jsonl");
    write_recording(&recording, 20);
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let port = free_port();
    let streams: Streams = Arc::default();
    let oap = StandIn::start(port, Arc::clone(&streams), None);
    let push = Alog::spawn(&[
        "push".to_string(),
        "--oap".into(),
        format!("127.0.0.1:{port}"),
        "--from".into(),
        recording.to_string_lossy().into_owned(),
        "--oap-spool-dir".into(),
        blocker.join("spool").to_string_lossy().into_owned(),
        "--oap-batch-size".into(),
        "5".into(),
        "--oap-log-interval".into(),
        "0".into(),
    ]);
    let (lines, k) = push.wait();
    oap.stop();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("NO SPOOL ON DISK"))
        .collect();
    assert_eq!(warnings.len(), 1, "one loud warning:\n{}", lines.join("\n"));
    assert!(warnings[0].contains("not-a-directory"), "{}", warnings[0]);
    assert_eq!(k["spool_memory_only"], 1, "{k:?}");
    assert_eq!(k["dropped_messages"], 0, "{k:?}");
    assert!(
        lines.iter().any(|l| l.contains("IN MEMORY ONLY")),
        "the summary says it:\n{}",
        lines.join("\n")
    );
    let got: usize = snapshot(&streams).iter().map(|s| s.messages.len()).sum();
    assert_eq!(got as u64, k["messages_sent"], "{k:?}");
    assert!(got > 0);
}

/// In memory, batches wait for an OAP that is away like on disk, within the memory bound;
/// what is still waiting at exit is dropped and counted, never left unsaid.
#[test]
fn a_memory_spool_counts_what_it_could_not_deliver() {
    use k8s_alog::sink::oap::mapping::NodeConfig;
    use k8s_alog::sink::oap::{OapConfig, OapSink};
    use k8s_alog::sink::Sink;

    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let cfg = OapConfig {
        addresses: vec![format!("127.0.0.1:{}", free_port())],
        tls: None,
        token: None,
        batch_size: 4,
        batch_period: Duration::from_millis(100),
        spool_dir: blocker.join("spool"),
        spool_max_bytes: 1 << 20,
        node: NodeConfig {
            name: "n1".into(),
            ..NodeConfig::default()
        },
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        flush_timeout: Duration::from_millis(500),
        log_every: Duration::ZERO,
    };
    let mut sink = OapSink::start(cfg).expect("no spool directory is not fatal");
    for i in 0..12 {
        sink.write(&synthetic_http(i)).unwrap();
    }
    let st = sink.finish();
    eprintln!("figures: {st}");
    assert_eq!(st.spool_memory_only, 1, "{st:?}");
    assert_eq!(st.messages_sent, 0, "{st:?}");
    assert!(st.spooled_messages > 0, "{st:?}");
    assert_eq!(st.dropped_messages, st.messages_mapped, "{st:?}");
    assert_eq!(
        (st.spool_waiting_messages, st.spool_bytes),
        (0, 0),
        "{st:?}"
    );
    assert!(!blocker.join("spool").exists());
}

/// `top --oap`: the dashboard runs in a real terminal (tmux) and forwards the same
/// capture to the stand-in collector; every exchange arrives, and on `q` the counters in
/// its log agree with what the stand-in received.
#[test]
fn top_forwards_to_the_oap_while_it_shows() {
    if !require_root() {
        return;
    }
    assert!(
        common::tmux::have_tmux(),
        "tmux is needed (scripts/deps.sh installs it)"
    );
    let node = SimNode::up();
    let _cart = node.start_server("cart", "cart", 8080);
    let port = free_port();
    let streams: Streams = Arc::default();
    let oap = StandIn::start(port, Arc::clone(&streams), None);
    let spool = tempfile::tempdir().unwrap();
    let log = spool.path().join("top.log");
    let mut cmd: Vec<String> = [
        alog_bin().to_string_lossy().as_ref(),
        "top",
        "--oap",
        &format!("127.0.0.1:{port}"),
        "--port",
        "8080",
        "--oap-spool-dir",
        &spool.path().join("spool").to_string_lossy(),
        "--oap-batch-period",
        "0.2",
        "--log-file",
        &log.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.extend(node.alog_args());
    let t = common::tmux::Tmux::start(&cmd, 100, 30);
    t.wait_for("the dashboard", START_TIMEOUT, |s| s.contains("Services"));
    let ports: Vec<u16> = (0..5)
        .map(|_| node.curl("web", "web", &url(&node, "cart", "/bytes/50")).1)
        .collect();
    wait_delivered(&streams, &ports, Duration::from_secs(60));
    t.wait_for("cart.shop on screen", Duration::from_secs(30), |s| {
        s.contains("cart.shop")
    });
    t.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = t.pane_dead() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "top did not exit:\n{}",
            t.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 0, "top exit status; screen:\n{}", t.screen());
    oap.stop();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let k = counters(&lines);
    let msgs = with_connections(&snapshot(&streams));
    for p in &ports {
        for role in [pb::DetectPoint::Server, pb::DetectPoint::Client] {
            let n = exchanges(&of_client_port(&msgs, *p, role)).len();
            assert_eq!(n, 1, "client port {p} {role:?}: {n} exchanges (want 1)");
        }
    }
    assert_eq!(msgs.len() as u64, k["messages_sent"], "{k:?}");
    assert_eq!(k["dropped_messages"], 0, "{k:?}");
    eprintln!(
        "figures: top --oap: 5 exchanges x 2 views, {} messages sent",
        k["messages_sent"]
    );
}
