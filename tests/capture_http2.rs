//! Real-kernel tests of `k8s-alog record` on HTTP/2 and gRPC over loopback: nghttpd with
//! nghttp, curl and h2load; a python grpcio server and client making every kind of call;
//! an HTTP/2 connection opened before capture began; the HTTP/1.1 `Upgrade: h2c` path.
//! Exact records, checked against what the clients themselves saw.
//!
//! They load eBPF programs, so they need root; without it each test says SKIPPED loudly
//! and returns. They need Debian's nghttp2-client and nghttp2-server, and the python
//! packages of tests/fixtures/grpc/requirements.txt and tests/fixtures/h2/requirements.txt
//! (`make deps` installs all of them).
//! Run: `cargo test --release --test capture_http2 -- --test-threads=1`.
//!
//! The capture copies at most the first 4096 bytes of each socket call and HTTP/2 servers
//! write many frames per call: every response here is small enough for a server's whole
//! write to be seen, so that every record can be exact.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

const NGHTTPD: &str = "/usr/sbin/nghttpd";
const NGHTTP: &str = "/usr/bin/nghttp";
const H2LOAD: &str = "/usr/bin/h2load";
const CURL: &str = "/usr/bin/curl";

/// Panic with the way out when a tool the tests run is not installed.
fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing (Debian package {package}): run `make deps` (as root) to install the test dependencies"
    );
}

/// Panic with the way out when the python interpreter the tests use lacks a module.
fn require_python_modules(modules: &[&str], requirements: &[&str]) {
    let mut cmd = Command::new(python3());
    cmd.arg("-c").arg(format!("import {}", modules.join(", ")));
    let o = Running::spawn(cmd, "python3 -c import").wait(Duration::from_secs(60));
    assert!(
        o.status.success(),
        "python modules {modules:?} are not importable by {} ({}): run `make deps` (as root), \
         which installs {}\n{}",
        python3().display(),
        o.status,
        requirements
            .iter()
            .map(|r| fixture(r).display().to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        o.stderr.trim()
    );
}

/// The name (`comm`) of a process running `python3()`: its file name, as the kernel keeps
/// it (at most 15 bytes).
fn python_comm() -> String {
    let p = python3();
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(15).collect()
}

/// What one HTTP/2 request's record must say.
#[derive(Debug, Clone)]
struct Want {
    tag: String,
    method: String,
    path: String,
    status: u16,
    stream_id: u32,
    req_body: u64,
    resp_body: u64,
    /// HPACK header block bytes, when the client reported its frames.
    req_header_bytes: Option<u64>,
    resp_header_bytes: Option<u64>,
    client_pid: u32,
    /// Exact process name of the client.
    client_process: String,
    /// The user agent starts with this.
    user_agent: String,
}

/// The checks every exact HTTP/2 record must pass, gRPC or not.
fn check_h2_record(p: &mut Problems, r: &Value, w: &Want, server: &ServerIs, port: u16) {
    let tag = &w.tag;
    p.eq(format!("{tag}: protocol"), &r["protocol"], "HTTP/2");
    p.eq(format!("{tag}: tls"), &r["tls"], false);
    p.eq(format!("{tag}: method"), &r["method"], w.method.as_str());
    p.eq(format!("{tag}: path"), &r["path"], w.path.as_str());
    p.eq(format!("{tag}: status"), &r["status"], w.status);
    p.eq(format!("{tag}: stream_id"), &r["stream_id"], w.stream_id);
    p.eq(
        format!("{tag}: host"),
        &r["host"],
        format!("127.0.0.1:{port}"),
    );
    p.eq(
        format!("{tag}: request.body_bytes"),
        &r["request"]["body_bytes"],
        w.req_body,
    );
    p.eq(
        format!("{tag}: response.body_bytes"),
        &r["response"]["body_bytes"],
        w.resp_body,
    );
    p.eq(
        format!("{tag}: request.chunked"),
        &r["request"]["chunked"],
        false,
    );
    p.eq(
        format!("{tag}: response.chunked"),
        &r["response"]["chunked"],
        false,
    );
    if let Some(h) = w.req_header_bytes {
        p.eq(
            format!("{tag}: request.header_bytes (the client's HEADERS fragments)"),
            &r["request"]["header_bytes"],
            h,
        );
    }
    if let Some(h) = w.resp_header_bytes {
        p.eq(
            format!("{tag}: response.header_bytes (HEADERS fragments the client received)"),
            &r["response"]["header_bytes"],
            h,
        );
    }
    for (dir, what) in [("request", "sent"), ("response", "received")] {
        p.check(r[dir]["header_bytes"].as_u64().unwrap_or(0) > 0, || {
            format!(
                "{tag}: {dir}.header_bytes {}, want > 0 (headers were {what})",
                r[dir]["header_bytes"]
            )
        });
    }
    p.eq(format!("{tag}: complete"), &r["complete"], true);
    p.eq(format!("{tag}: partial"), &r["partial"], false);
    p.eq(
        format!("{tag}: notes"),
        r.get("notes").unwrap_or(&json!([])),
        json!([]),
    );
    p.eq(
        format!("{tag}: reset_code"),
        r.get("reset_code").unwrap_or(&Value::Null),
        Value::Null,
    );
    p.eq(format!("{tag}: observed_by"), &r["observed_by"], "both");
    p.eq(
        format!("{tag}: client.addr"),
        &r["client"]["addr"],
        "127.0.0.1",
    );
    p.eq(
        format!("{tag}: server.addr"),
        &r["server"]["addr"],
        "127.0.0.1",
    );
    p.eq(format!("{tag}: server.port"), &r["server"]["port"], port);
    p.eq(
        format!("{tag}: client.pid"),
        &r["client"]["pid"],
        w.client_pid,
    );
    p.eq(
        format!("{tag}: client.process"),
        &r["client"]["process"],
        w.client_process.as_str(),
    );
    p.server_end(tag, r, server);
    let ua = r["user_agent"].as_str().unwrap_or("");
    p.check(ua.starts_with(&w.user_agent), || {
        format!(
            "{tag}: user_agent {}, want one starting with {:?}",
            r["user_agent"], w.user_agent
        )
    });
    p.timing(tag, r);
}

/// What one client connection's record must say.
struct WantConn<'a> {
    tag: String,
    client_pid: u32,
    client_process: &'a str,
    exchanges: u64,
    preexisting: bool,
    /// Bytes each way, when the client counted them.
    c2s: Option<u64>,
    s2c: Option<u64>,
    /// Who closed first, when that is certain.
    closed_by: Option<&'a str>,
    /// The server may write (e.g. a SETTINGS ack) after the client closed: the client's
    /// kernel then answers with a reset.
    reset_ok: bool,
}

fn check_h2_connection(p: &mut Problems, c: &Value, w: &WantConn, server: &ServerIs, port: u16) {
    let tag = &w.tag;
    p.eq(format!("{tag}: protocol"), &c["protocol"], "http2");
    p.eq(format!("{tag}: tls"), &c["tls"], false);
    p.eq(format!("{tag}: observed_by"), &c["observed_by"], "both");
    p.eq(
        format!("{tag}: role_source"),
        &c["role_source"],
        if w.preexisting {
            "payload"
        } else {
            "handshake"
        },
    );
    p.eq(
        format!("{tag}: preexisting"),
        &c["preexisting"],
        w.preexisting,
    );
    p.eq(format!("{tag}: exchanges"), &c["exchanges"], w.exchanges);
    p.eq(format!("{tag}: data_lost"), &c["data_lost"], false);
    if !(w.reset_ok && c["close_reason"] == "reset") {
        p.eq(format!("{tag}: close_reason"), &c["close_reason"], "fin");
    }
    match w.closed_by {
        Some(by) => p.eq(format!("{tag}: closed_by"), &c["closed_by"], by),
        None => p.check(
            c["closed_by"] == "client" || c["closed_by"] == "server",
            || {
                format!(
                    "{tag}: closed_by {}, want \"client\" or \"server\"",
                    c["closed_by"]
                )
            },
        ),
    }
    p.eq(
        format!("{tag}: handshake.success"),
        &c["handshake"]["success"],
        true,
    );
    p.eq(
        format!("{tag}: client.addr"),
        &c["client"]["addr"],
        "127.0.0.1",
    );
    p.eq(
        format!("{tag}: server.addr"),
        &c["server"]["addr"],
        "127.0.0.1",
    );
    p.eq(format!("{tag}: server.port"), &c["server"]["port"], port);
    p.eq(
        format!("{tag}: client.pid"),
        &c["client"]["pid"],
        w.client_pid,
    );
    p.eq(
        format!("{tag}: client.process"),
        &c["client"]["process"],
        w.client_process,
    );
    p.server_end(tag, c, server);
    if let Some(n) = w.c2s {
        p.eq(
            format!("{tag}: bytes_client_to_server (client's count)"),
            &c["bytes_client_to_server"],
            n,
        );
    }
    if let Some(n) = w.s2c {
        p.eq(
            format!("{tag}: bytes_server_to_client (client's count)"),
            &c["bytes_server_to_client"],
            n,
        );
    }
}

/// Short form of HTTP/2 records for failure messages.
fn dump_h2(records: &[&Value]) -> String {
    let mut s = format!("{} http record(s):\n", records.len());
    for r in records {
        s.push_str(&format!(
            "  stream={} {} {} -> {} grpc={} req={}+{} resp={}+{} complete={} partial={} error={} conn={} client={}:{} pid={} proc={} server pid={} proc={} notes={}\n",
            r["stream_id"],
            r["method"],
            r["path"],
            r["status"],
            r.get("grpc").unwrap_or(&Value::Null),
            r["request"]["header_bytes"],
            r["request"]["body_bytes"],
            r["response"]["header_bytes"],
            r["response"]["body_bytes"],
            r["complete"],
            r["partial"],
            r["error"],
            r["conn_id"],
            r["client"]["addr"],
            r["client"]["port"],
            r["client"]["pid"],
            r["client"]["process"],
            r["server"]["pid"],
            r["server"]["process"],
            r.get("notes").unwrap_or(&Value::Null),
        ));
    }
    s
}

/// Everything on `port` for a failure message: short HTTP/2 form, then every record whole.
fn context(out: &Recording, port: u16) -> String {
    format!(
        "{}\n{}\nfinal stats: {}",
        dump_h2(&out.http(port)),
        dump(&out.on_port(port)),
        out.records
            .last()
            .map(|r| r.to_string())
            .unwrap_or_default()
    )
}

/// nghttpd serving a private directory on 127.0.0.1; killed on drop.
struct Nghttpd {
    guard: ServerGuard,
    _dir: tempfile::TempDir,
}

/// Start `nghttpd --no-tls` on 127.0.0.1:`port` serving `files` (name, size).
fn start_nghttpd(port: u16, files: &[(&str, usize)]) -> Nghttpd {
    require_tool(NGHTTPD, "nghttp2-server");
    let dir = tempfile::Builder::new()
        .prefix("alog-nghttpd-")
        .tempdir()
        .expect("temp dir");
    for (name, size) in files {
        std::fs::write(dir.path().join(name), vec![b'x'; *size]).expect("writing a served file");
    }
    let mut cmd = Command::new(NGHTTPD);
    cmd.args(["--no-tls", "-a", "127.0.0.1", "-d"])
        .arg(dir.path())
        .arg(port.to_string());
    let mut guard = ServerGuard::spawn(cmd, "nghttpd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        guard.assert_running();
        assert!(
            Instant::now() < deadline,
            "nghttpd did not listen on {addr} within 20 s; stderr:\n{}",
            guard.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_port(addr, Duration::from_secs(10));
    Nghttpd { guard, _dir: dir }
}

/// One stream as nghttp -v printed it.
#[derive(Debug, Default, Clone)]
struct NghttpStream {
    id: u32,
    method: String,
    path: String,
    status: Option<u16>,
    req_header_bytes: u64,
    resp_header_bytes: u64,
    req_body: u64,
    resp_body: u64,
}

/// What one `nghttp -nv` run (one connection) did, from its own frame log.
#[derive(Debug)]
struct NghttpRun {
    pid: u32,
    /// Requests in the order sent.
    streams: Vec<NghttpStream>,
    /// Bytes written: the connection preface and every frame sent.
    sent: u64,
    /// Bytes read: every frame received.
    received: u64,
    log: String,
}

/// A frame line of nghttp -v: `send HEADERS frame <length=43, flags=0x25, stream_id=13>`.
fn nghttp_frame(line: &str) -> Option<(bool, String, u64, u8, u32)> {
    let rest = line.split_once("] ")?.1;
    let (dir, rest) = rest.split_once(' ')?;
    let send = match dir {
        "send" => true,
        "recv" => false,
        _ => return None,
    };
    let (ty, rest) = rest.split_once(" frame <")?;
    let fields = rest.trim_end_matches('>');
    let mut len = None;
    let mut flags = None;
    let mut sid = None;
    for f in fields.split(", ") {
        match f.split_once('=') {
            Some(("length", v)) => len = v.parse().ok(),
            Some(("flags", v)) => flags = u8::from_str_radix(v.trim_start_matches("0x"), 16).ok(),
            Some(("stream_id", v)) => sid = v.parse().ok(),
            _ => {}
        }
    }
    Some((send, ty.to_string(), len?, flags?, sid?))
}

/// Run `nghttp -nv URL...` (one connection, every URL at once) and parse its frame log.
fn nghttp(urls: &[String], extra: &[&str]) -> NghttpRun {
    require_tool(NGHTTP, "nghttp2-client");
    let mut cmd = Command::new(NGHTTP);
    cmd.args(["-n", "-v", "-t", "30"]).args(extra).args(urls);
    let o = Running::spawn(cmd, &format!("nghttp {}", urls.join(" "))).wait_ok(CLIENT_TIMEOUT);
    let mut streams: BTreeMap<u32, NghttpStream> = BTreeMap::new();
    let mut order = Vec::new();
    let mut sent = 24; // the client connection preface
    let mut received = 0;
    // The stream whose request header lines follow (after a `send HEADERS` line).
    let mut sending: Option<u32> = None;
    for line in o.stdout.lines() {
        if let Some((send, ty, len, flags, sid)) = nghttp_frame(line) {
            sending = None;
            if send {
                sent += 9 + len;
            } else {
                received += 9 + len;
            }
            let st = streams.entry(sid).or_insert_with(|| NghttpStream {
                id: sid,
                ..NghttpStream::default()
            });
            assert!(
                flags & 0x8 == 0 || !(ty == "HEADERS" || ty == "DATA"),
                "nghttp log shows a PADDED frame, which this test does not account for: {line}"
            );
            let prio = if ty == "HEADERS" && flags & 0x20 != 0 {
                5
            } else {
                0
            };
            match (send, ty.as_str()) {
                (true, "HEADERS") => {
                    st.req_header_bytes += len - prio;
                    if !order.contains(&sid) {
                        order.push(sid);
                    }
                    sending = Some(sid);
                }
                (true, "CONTINUATION") => st.req_header_bytes += len,
                (true, "DATA") => st.req_body += len,
                (false, "HEADERS") => st.resp_header_bytes += len - prio,
                (false, "CONTINUATION") => st.resp_header_bytes += len,
                (false, "DATA") => st.resp_body += len,
                _ => {}
            }
            continue;
        }
        let t = line.trim();
        if let Some(sid) = sending {
            if let Some(v) = t.strip_prefix(":method: ") {
                streams.get_mut(&sid).unwrap().method = v.to_string();
            } else if let Some(v) = t.strip_prefix(":path: ") {
                streams.get_mut(&sid).unwrap().path = v.to_string();
            }
        }
        // `[  0.002] recv (stream_id=13) :status: 200`
        if let Some((_, rest)) = t.split_once("] recv (stream_id=") {
            if let Some((sid, hdr)) = rest.split_once(") ") {
                if let (Ok(sid), Some(v)) = (sid.parse::<u32>(), hdr.strip_prefix(":status: ")) {
                    streams.entry(sid).or_default().status = v.trim().parse().ok();
                }
            }
        }
    }
    NghttpRun {
        pid: o.pid,
        streams: order.iter().map(|s| streams[s].clone()).collect(),
        sent,
        received,
        log: o.stdout,
    }
}

/// One transfer of a curl run, from `-w`.
#[derive(Debug, Clone)]
struct CurlTransfer {
    http_code: u16,
    size_download: u64,
    size_upload: u64,
    local_port: u16,
    http_version: String,
}

/// Debian's curl with options `opts`, then `urls` (one transfer each, on one connection
/// when curl can); returns its pid and one entry per transfer.
fn curl_h2(opts: &[&str], urls: &[String]) -> (u32, Vec<CurlTransfer>) {
    require_tool(CURL, "curl");
    let mut cmd = Command::new(CURL);
    cmd.args(["-q", "-s", "-S", "--noproxy", "*", "--max-time", "30", "-w"])
        .arg("%{http_code} %{size_download} %{size_upload} %{local_port} %{http_version}\\n")
        .args(opts);
    for u in urls {
        cmd.args(["-o", "/dev/null"]).arg(u);
    }
    let what = format!("curl {} {}", opts.join(" "), urls.join(" "));
    let o = Running::spawn(cmd, &what).wait_ok(CLIENT_TIMEOUT);
    let runs: Vec<CurlTransfer> = o
        .stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| -> u64 {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{what}: unexpected -w output {l:?}"))
            };
            CurlTransfer {
                http_code: n(0) as u16,
                size_download: n(1),
                size_upload: n(2),
                local_port: n(3) as u16,
                http_version: f.get(4).copied().unwrap_or("").to_string(),
            }
        })
        .collect();
    assert_eq!(runs.len(), urls.len(), "{what}: -w output {:?}", o.stdout);
    (o.pid, runs)
}

/// Http records on `port` made by the client process `pid`.
fn by_client(out: &Recording, port: u16, pid: u32) -> Vec<&Value> {
    out.http(port)
        .into_iter()
        .filter(|r| r["client"]["pid"] == pid)
        .collect()
}

/// Connection records on `port` whose client is the process `pid`.
fn conns_by_client(out: &Recording, port: u16, pid: u32) -> Vec<&Value> {
    out.connections(port)
        .into_iter()
        .filter(|r| r["client"]["pid"] == pid)
        .collect()
}

/// The one record among `records` of stream `sid`, or a problem.
fn one_stream<'a>(
    p: &mut Problems,
    records: &[&'a Value],
    sid: u32,
    tag: &str,
) -> Option<&'a Value> {
    let found: Vec<&Value> = records
        .iter()
        .copied()
        .filter(|r| r["stream_id"] == sid)
        .collect();
    if found.len() != 1 {
        p.0.push(format!(
            "{tag}: {} http records of stream {sid}, want exactly 1",
            found.len()
        ));
    }
    found.first().copied()
}

/// The records of one connection share its conn_id, which is the connection record's.
fn check_same_conn(p: &mut Problems, tag: &str, records: &[&Value], conn: Option<&Value>) {
    let ids: BTreeSet<String> = records.iter().map(|r| r["conn_id"].to_string()).collect();
    p.check(ids.len() <= 1, || {
        format!("{tag}: the http records of one connection carry several conn_ids {ids:?}")
    });
    if let (Some(c), Some(r)) = (conn, records.first()) {
        p.eq(
            format!("{tag}: connection conn_id vs http conn_id"),
            &c["conn_id"],
            r["conn_id"].clone(),
        );
    }
}

#[test]
fn nghttp2_prior_knowledge() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let nghttpd = start_nghttpd(
        port,
        &[
            ("ten.txt", 10),
            ("thousand.txt", 1000),
            ("three-k.txt", 3000),
        ],
    );
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let work = tempfile::tempdir().expect("temp dir");
    let upload = work.path().join("upload.bin");
    std::fs::write(&upload, vec![b'u'; 500]).expect("writing the upload body");
    let upload_arg = format!("@{}", upload.display());

    let rec = Recorder::start(&[port], &[]);
    // One connection, three requests at once (nghttpd answers them in one write, well
    // under the 4096 bytes captured per call), one of them for a missing file.
    let multi = nghttp(
        &[url("/ten.txt"), url("/thousand.txt"), url("/missing.txt")],
        &[],
    );
    // The largest file alone on its own connection.
    let single = nghttp(&[url("/three-k.txt")], &[]);
    // curl, prior knowledge: GET, HEAD, a POST with a body, a missing file.
    let h2pk = "--http2-prior-knowledge";
    let curl_runs = [
        (
            "GET",
            "/three-k.txt",
            curl_h2(&[h2pk], &[url("/three-k.txt")]),
            0u64,
        ),
        (
            "HEAD",
            "/thousand.txt",
            curl_h2(&[h2pk, "-I"], &[url("/thousand.txt")]),
            0,
        ),
        (
            "POST",
            "/ten.txt",
            curl_h2(&[h2pk, "--data-binary", &upload_arg], &[url("/ten.txt")]),
            500,
        ),
        (
            "GET",
            "/missing.txt",
            curl_h2(&[h2pk], &[url("/missing.txt")]),
            0,
        ),
    ];
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();

    let server = ServerIs {
        pids: &[nghttpd.guard.pid()],
        process: "nghttpd",
    };
    let mut p = Problems::default();
    let mut total = 0;
    // The clients' own view first: a wrong expectation is not the tool's fault.
    for run in [&multi, &single] {
        for s in &run.streams {
            assert!(
                s.status.is_some() && !s.path.is_empty(),
                "nghttp log not understood: {s:?}\n{}",
                run.log
            );
        }
    }
    assert_eq!(multi.streams.len(), 3, "nghttp log: {}", multi.log);
    assert_eq!(single.streams.len(), 1, "nghttp log: {}", single.log);
    for (name, run) in [("nghttp (3 URLs)", &multi), ("nghttp (1 URL)", &single)] {
        let mine = by_client(&out, port, run.pid);
        for s in &run.streams {
            total += 1;
            let tag = format!("{name} {} {} (stream {})", s.method, s.path, s.id);
            let want_status = if s.path == "/missing.txt" { 404 } else { 200 };
            assert_eq!(s.status, Some(want_status), "{tag}: nghttp's view: {s:?}");
            let want_body = match s.path.as_str() {
                "/ten.txt" => Some(10),
                "/thousand.txt" => Some(1000),
                "/three-k.txt" => Some(3000),
                _ => None, // nghttpd's own error page
            };
            if let Some(b) = want_body {
                assert_eq!(s.resp_body, b, "{tag}: nghttp's view: {s:?}");
            }
            if let Some(r) = one_stream(&mut p, &mine, s.id, &tag) {
                let w = Want {
                    tag: tag.clone(),
                    method: s.method.clone(),
                    path: s.path.clone(),
                    status: want_status,
                    stream_id: s.id,
                    req_body: s.req_body,
                    resp_body: s.resp_body,
                    req_header_bytes: Some(s.req_header_bytes),
                    resp_header_bytes: Some(s.resp_header_bytes),
                    client_pid: run.pid,
                    client_process: "nghttp".into(),
                    user_agent: "nghttp2/".into(),
                };
                check_h2_record(&mut p, r, &w, &server, port);
                p.eq(format!("{tag}: error"), &r["error"], false);
                p.eq(
                    format!("{tag}: grpc"),
                    r.get("grpc").unwrap_or(&Value::Null),
                    Value::Null,
                );
            }
        }
        p.check(mine.len() == run.streams.len(), || {
            format!(
                "{name}: {} http records, want exactly {} (one per request)",
                mine.len(),
                run.streams.len()
            )
        });
        let conns = conns_by_client(&out, port, run.pid);
        p.check(conns.len() == 1, || {
            format!("{name}: {} connection records, want exactly 1", conns.len())
        });
        if let Some(c) = conns.first() {
            check_h2_connection(
                &mut p,
                c,
                &WantConn {
                    tag: format!("{name} connection"),
                    client_pid: run.pid,
                    client_process: "nghttp",
                    exchanges: run.streams.len() as u64,
                    preexisting: false,
                    c2s: Some(run.sent),
                    s2c: Some(run.received),
                    // It sends GOAWAY; nghttpd may close first on reading it.
                    closed_by: None,
                    reset_ok: false,
                },
                &server,
                port,
            );
        }
        check_same_conn(&mut p, name, &mine, conns.first().copied());
    }
    for (method, path, (pid, transfers), req_body) in &curl_runs {
        total += 1;
        let tag = format!("curl {method} {path}");
        assert_eq!(transfers.len(), 1, "{tag}: {transfers:?}");
        let t = &transfers[0];
        let want_status = if *path == "/missing.txt" { 404 } else { 200 };
        assert_eq!(t.http_code, want_status, "{tag}: curl's view: {t:?}");
        assert_eq!(t.http_version, "2", "{tag}: curl's view: {t:?}");
        assert_eq!(t.size_upload, *req_body, "{tag}: curl's view: {t:?}");
        let mine = by_client(&out, port, *pid);
        p.check(mine.len() == 1, || {
            format!("{tag}: {} http records, want exactly 1", mine.len())
        });
        if let Some(r) = one_stream(&mut p, &mine, 1, &tag) {
            let w = Want {
                tag: tag.clone(),
                method: method.to_string(),
                path: path.to_string(),
                status: want_status,
                stream_id: 1,
                req_body: *req_body,
                resp_body: t.size_download,
                req_header_bytes: None,
                resp_header_bytes: None,
                client_pid: *pid,
                client_process: "curl".into(),
                user_agent: "curl/".into(),
            };
            check_h2_record(&mut p, r, &w, &server, port);
            p.eq(
                format!("{tag}: client.port"),
                &r["client"]["port"],
                t.local_port,
            );
            p.eq(format!("{tag}: error"), &r["error"], false);
        }
        let conns = conns_by_client(&out, port, *pid);
        p.check(conns.len() == 1, || {
            format!("{tag}: {} connection records, want exactly 1", conns.len())
        });
        if let Some(c) = conns.first() {
            check_h2_connection(
                &mut p,
                c,
                &WantConn {
                    tag: format!("{tag} connection"),
                    client_pid: *pid,
                    client_process: "curl",
                    exchanges: 1,
                    preexisting: false,
                    c2s: None,
                    s2c: None,
                    closed_by: Some("client"),
                    reset_ok: false,
                },
                &server,
                port,
            );
        }
        check_same_conn(&mut p, &tag, &mine, conns.first().copied());
    }
    p.check(out.http(port).len() == total, || {
        format!(
            "{} http records on port {port}, want exactly {total} (one per request)",
            out.http(port).len()
        )
    });
    p.check(out.connections(port).len() == 2 + curl_runs.len(), || {
        format!(
            "{} connection records on port {port}, want exactly {}",
            out.connections(port).len(),
            2 + curl_runs.len()
        )
    });
    p.finish(|| {
        format!(
            "nghttp (3 URLs) log:\n{}\n{}",
            multi.log,
            context(&out, port)
        )
    });
    out.assert_nothing_lost();
    eprintln!("nghttp2_prior_knowledge: {:?}", t0.elapsed());
}

#[test]
fn h2_100_concurrent_streams() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    require_tool(H2LOAD, "nghttp2-client");
    let port = free_server_port();
    // 100 responses of 4 bytes: all of them fit in the 4096 bytes captured per call even
    // if nghttpd writes them at once.
    let nghttpd = start_nghttpd(port, &[("small", 4)]);
    let rec = Recorder::start(&[port], &[]);
    let mut cmd = Command::new(H2LOAD);
    cmd.args(["-n", "100", "-c", "1", "-m", "100", "-t", "1"])
        .arg(format!("http://127.0.0.1:{port}/small"));
    let o = Running::spawn(cmd, "h2load").wait_ok(CLIENT_TIMEOUT);
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();
    assert!(
        o.stdout
            .contains("100 total, 100 started, 100 done, 100 succeeded")
            && o.stdout.contains("status codes: 100 2xx"),
        "h2load did not make 100 successful requests:\n{}",
        o.stdout
    );

    let server = ServerIs {
        pids: &[nghttpd.guard.pid()],
        process: "nghttpd",
    };
    let http = out.http(port);
    let mut p = Problems::default();
    p.check(http.len() == 100, || {
        format!(
            "{} http records on port {port}, want exactly 100",
            http.len()
        )
    });
    let ids: BTreeSet<u64> = http
        .iter()
        .filter_map(|r| r["stream_id"].as_u64())
        .collect();
    let want_ids: BTreeSet<u64> = (0..100).map(|i| 2 * i + 1).collect();
    p.check(ids == want_ids, || {
        format!(
            "{} distinct stream ids {:?}, want the 100 ids 1, 3, ..., 199",
            ids.len(),
            ids.symmetric_difference(&want_ids).collect::<Vec<_>>()
        )
    });
    let conns = out.connections(port);
    p.check(conns.len() == 1, || {
        format!(
            "{} connection records on port {port}, want exactly 1",
            conns.len()
        )
    });
    check_same_conn(&mut p, "h2load", &http, conns.first().copied());
    let mut bad = 0;
    for r in &http {
        let mut one = Problems::default();
        let sid = r["stream_id"].as_u64().unwrap_or(0) as u32;
        let w = Want {
            tag: format!("h2load stream {sid}"),
            method: "GET".into(),
            path: "/small".into(),
            status: 200,
            stream_id: sid,
            req_body: 0,
            resp_body: 4,
            req_header_bytes: None,
            resp_header_bytes: None,
            client_pid: o.pid,
            client_process: "h2load".into(),
            user_agent: "h2load".into(),
        };
        check_h2_record(&mut one, r, &w, &server, port);
        one.eq(format!("h2load stream {sid}: error"), &r["error"], false);
        if !one.0.is_empty() {
            bad += 1;
            if bad <= 3 {
                p.0.extend(one.0);
            }
        }
    }
    p.check(bad == 0, || {
        format!("{bad} of {} http records are wrong", http.len())
    });
    if let Some(c) = conns.first() {
        check_h2_connection(
            &mut p,
            c,
            &WantConn {
                tag: "h2load connection".into(),
                client_pid: o.pid,
                client_process: "h2load",
                exchanges: 100,
                preexisting: false,
                c2s: None,
                s2c: None,
                // It sends GOAWAY; nghttpd may close first on reading it.
                closed_by: None,
                reset_ok: false,
            },
            &server,
            port,
        );
    }
    p.finish(|| {
        format!(
            "h2load output:\n{}\nfirst records: {}\n{}",
            o.stdout,
            dump_h2(&http.iter().take(5).copied().collect::<Vec<_>>()),
            dump(&out.connections(port))
        )
    });
    out.assert_nothing_lost();
    eprintln!("h2_100_concurrent_streams: {:?}", t0.elapsed());
}

/// The python stubs of tests/fixtures/grpc/alog_test.proto, generated into a temp dir.
fn grpc_stubs() -> tempfile::TempDir {
    require_python_modules(
        &["grpc", "grpc_tools.protoc", "google.protobuf"],
        &["grpc/requirements.txt"],
    );
    let dir = tempfile::Builder::new()
        .prefix("alog-grpc-stubs-")
        .tempdir()
        .expect("temp dir");
    let mut cmd = Command::new(python3());
    cmd.args(["-m", "grpc_tools.protoc", "-I"])
        .arg(fixture("grpc"))
        .arg(format!("--python_out={}", dir.path().display()))
        .arg(format!("--grpc_python_out={}", dir.path().display()))
        .arg(fixture("grpc/alog_test.proto"));
    Running::spawn(cmd, "grpc_tools.protoc").wait_ok(CLIENT_TIMEOUT);
    dir
}

/// A python server that prints "READY PORT" once it listens on 127.0.0.1:`port`.
fn start_python_fixture(script: &str, port: u16, args: &[&Path]) -> ServerGuard {
    let mut cmd = Command::new(python3());
    cmd.arg("-u")
        .arg(fixture(script))
        .arg(port.to_string())
        .args(args);
    let mut g = ServerGuard::spawn(cmd, script);
    g.wait_stdout_line("READY", Duration::from_secs(30));
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    g
}

#[test]
fn grpc_python_calls() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let stubs = grpc_stubs();
    let port = free_server_port();
    let server = start_python_fixture("grpc/grpc_server.py", port, &[stubs.path()]);

    let rec = Recorder::start(&[port], &[]);
    let mut cmd = Command::new(python3());
    cmd.arg(fixture("grpc/grpc_client.py"))
        .arg(port.to_string())
        .arg(stubs.path());
    let o = Running::spawn(cmd, "grpc_client.py").wait_ok(CLIENT_TIMEOUT);
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();
    let report: Value = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("grpc_client.py printed no JSON ({e}): {:?}", o.stdout));
    let client_pid = report["pid"].as_u64().expect("client pid") as u32;
    let calls = report["calls"].as_array().expect("calls").clone();
    assert_eq!(calls.len(), 6, "client report: {report}");

    let srv_pids = [server.pid()];
    let srv = ServerIs {
        pids: &srv_pids,
        process: "python",
    };
    let mut http = out.http(port);
    http.sort_by_key(|r| r["start_mono_ns"].as_u64().unwrap_or(0));
    let mut p = Problems::default();
    p.check(http.len() == calls.len(), || {
        format!(
            "{} http records on port {port}, want exactly {} (one per call)",
            http.len(),
            calls.len()
        )
    });
    // The calls were made one after the other on a fresh connection: streams 1, 3, 5, ...
    for (i, call) in calls.iter().enumerate() {
        let sid = 2 * i as u32 + 1;
        let name = call["name"].as_str().unwrap_or("?");
        let path = call["path"].as_str().unwrap_or("?");
        let tag = format!("gRPC {name} {path} (stream {sid})");
        let Some(r) = one_stream(&mut p, &http, sid, &tag) else {
            continue;
        };
        let code = call["code"].as_u64().unwrap_or(u64::MAX);
        let w = Want {
            tag: tag.clone(),
            method: "POST".into(),
            path: path.to_string(),
            status: 200,
            stream_id: sid,
            req_body: call["request_body_bytes"].as_u64().unwrap_or(0),
            resp_body: call["response_body_bytes"].as_u64().unwrap_or(0),
            req_header_bytes: None,
            resp_header_bytes: None,
            client_pid,
            // The process's name, whatever its threads call themselves (grpcio's I/O
            // threads are named "event_engine").
            client_process: python_comm(),
            user_agent: "grpc-python/".into(),
        };
        check_h2_record(&mut p, r, &w, &srv, port);
        p.eq(
            format!("{tag}: content_type"),
            &r["content_type"],
            "application/grpc",
        );
        let g = &r["grpc"];
        p.eq(
            format!("{tag}: grpc.service"),
            &g["service"],
            "alogtest.v1.Echo",
        );
        p.eq(
            format!("{tag}: grpc.method"),
            &g["method"],
            path.rsplit('/').next().unwrap_or(""),
        );
        p.eq(format!("{tag}: grpc.status"), &g["status"], code);
        p.eq(
            format!("{tag}: grpc.status_name"),
            &g["status_name"],
            call["status_name"].clone(),
        );
        if code == 0 {
            // An empty grpc-message says nothing.
            let m = g.get("message").unwrap_or(&Value::Null);
            p.check(m.is_null() || *m == "", || {
                format!("{tag}: grpc.message {m}, want none for OK")
            });
        } else {
            p.eq(
                format!("{tag}: grpc.message (percent-decoded)"),
                g.get("message").unwrap_or(&Value::Null),
                call["message"].clone(),
            );
        }
        p.eq(
            format!("{tag}: grpc.request_messages"),
            &g["request_messages"],
            call["request_messages"].clone(),
        );
        p.eq(
            format!("{tag}: grpc.response_messages"),
            &g["response_messages"],
            call["response_messages"].clone(),
        );
        p.eq(
            format!("{tag}: grpc.trailers_only"),
            &g["trailers_only"],
            call["trailers_only_expected"].clone(),
        );
        p.eq(
            format!("{tag}: error (gRPC status {code} under :status 200)"),
            &r["error"],
            code != 0,
        );
    }
    let conns = out.connections(port);
    p.check(conns.len() == 1, || {
        format!(
            "{} connection records on port {port}, want exactly 1 (one channel)",
            conns.len()
        )
    });
    if let Some(c) = conns.first() {
        check_h2_connection(
            &mut p,
            c,
            &WantConn {
                tag: "gRPC connection".into(),
                client_pid,
                client_process: &python_comm(),
                exchanges: calls.len() as u64,
                preexisting: false,
                c2s: None,
                s2c: None,
                closed_by: Some("client"),
                reset_ok: false,
            },
            &srv,
            port,
        );
    }
    check_same_conn(&mut p, "gRPC", &http, conns.first().copied());
    p.finish(|| format!("client report: {report}\n{}", context(&out, port)));
    out.assert_nothing_lost();
    eprintln!("grpc_python_calls: {:?}", t0.elapsed());
}

#[test]
fn h2_preexisting_connection() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    require_python_modules(&["h2"], &["h2/requirements.txt"]);
    let port = free_server_port();
    let after = [("/a1.txt", 21u64), ("/a2.txt", 22), ("/a3.txt", 23)];
    let mut files = vec![("before1.txt", 10usize), ("before2.txt", 1000)];
    files.extend(after.iter().map(|(p, n)| (&p[1..], *n as usize)));
    let nghttpd = start_nghttpd(port, &files);
    let work = tempfile::tempdir().expect("temp dir");
    let ready = work.path().join("ready");
    let go = work.path().join("go");
    let after_paths: Vec<&str> = after.iter().map(|(p, _)| *p).collect();
    // One connection: two requests before capture begins, three after.
    let mut cmd = Command::new(python3());
    cmd.arg(fixture("h2/h2_client.py"))
        .args(["preexisting", "127.0.0.1", &port.to_string()])
        .arg(&ready)
        .arg(&go)
        .arg("/before1.txt,/before2.txt")
        .arg(after_paths.join(","));
    let client = Running::spawn(cmd, "h2_client.py preexisting");
    wait_for_file(&ready, Duration::from_secs(30));
    let client_pid = client.pid();

    let rec = Recorder::start(&[port], &[]);
    std::fs::write(&go, b"go\n").expect("creating the go file");
    let o = client.wait_ok(CLIENT_TIMEOUT);
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();
    let report: Value = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("h2_client.py printed no JSON ({e}): {:?}", o.stdout));

    let server = ServerIs {
        pids: &[nghttpd.guard.pid()],
        process: "nghttpd",
    };
    let http = out.http(port);
    let mut p = Problems::default();
    p.check(http.len() == after.len(), || {
        format!(
            "{} http records on port {port}, want exactly {} (the requests made after capture began)",
            http.len(),
            after.len()
        )
    });
    for b in report["before"].as_array().into_iter().flatten() {
        let sid = b["stream_id"].as_u64().unwrap_or(0);
        p.check(!http.iter().any(|r| r["stream_id"] == sid), || {
            format!(
                "stream {sid} ({}), done before capture began, is in the output",
                b["path"]
            )
        });
    }
    let done_after = report["after"].as_array().cloned().unwrap_or_default();
    assert_eq!(done_after.len(), after.len(), "client report: {report}");
    for ((path, size), a) in after.iter().zip(&done_after) {
        assert_eq!(a["status"], 200, "client's view: {a}");
        assert_eq!(a["body_bytes"], *size, "client's view: {a}");
        let sid = a["stream_id"].as_u64().unwrap_or(0) as u32;
        let tag = format!("GET {path} (stream {sid}, after capture began)");
        let Some(r) = one_stream(&mut p, &http, sid, &tag) else {
            continue;
        };
        // Joined mid-connection: header fields the peers index in HPACK's dynamic table
        // before capture began cannot be decoded. The record may then be partial, but must
        // say so, and whatever it does say must be right.
        p.eq(format!("{tag}: protocol"), &r["protocol"], "HTTP/2");
        p.eq(format!("{tag}: method"), &r["method"], "GET");
        p.eq(format!("{tag}: path (a new literal)"), &r["path"], *path);
        p.eq(format!("{tag}: status"), &r["status"], 200);
        p.eq(
            format!("{tag}: response.body_bytes"),
            &r["response"]["body_bytes"],
            *size,
        );
        p.eq(
            format!("{tag}: request.body_bytes"),
            &r["request"]["body_bytes"],
            0,
        );
        p.eq(format!("{tag}: error"), &r["error"], false);
        p.eq(format!("{tag}: observed_by"), &r["observed_by"], "both");
        p.eq(
            format!("{tag}: client.pid"),
            &r["client"]["pid"],
            client_pid,
        );
        p.eq(
            format!("{tag}: client.process"),
            &r["client"]["process"],
            python_comm(),
        );
        p.eq(
            format!("{tag}: client.addr"),
            &r["client"]["addr"],
            "127.0.0.1",
        );
        p.eq(
            format!("{tag}: client.port"),
            &r["client"]["port"],
            report["local_port"].clone(),
        );
        p.server_end(&tag, r, &server);
        if r["partial"] == true {
            let notes = r["notes"].as_array().map(Vec::len).unwrap_or(0);
            p.check(notes > 0, || {
                format!("{tag}: partial without a note saying why")
            });
        } else {
            p.eq(
                format!("{tag}: complete (not partial)"),
                &r["complete"],
                true,
            );
        }
        if let Some(h) = r.get("host").filter(|h| !h.is_null()) {
            p.eq(
                format!("{tag}: host (when decoded)"),
                h,
                format!("127.0.0.1:{port}"),
            );
        }
        if let Some(ua) = r.get("user_agent").filter(|h| !h.is_null()) {
            p.eq(
                format!("{tag}: user_agent (when decoded)"),
                ua,
                "alog-h2-test-client",
            );
        }
    }
    let conns = out.connections(port);
    p.check(conns.len() == 1, || {
        format!(
            "{} connection records on port {port}, want exactly 1",
            conns.len()
        )
    });
    if let Some(c) = conns.first() {
        check_h2_connection(
            &mut p,
            c,
            &WantConn {
                tag: "connection".into(),
                client_pid,
                client_process: &python_comm(),
                exchanges: after.len() as u64,
                preexisting: true,
                c2s: report["sent_after"].as_u64(),
                s2c: report["received_after"].as_u64(),
                // It sends GOAWAY; nghttpd may close first on reading it.
                closed_by: None,
                reset_ok: false,
            },
            &server,
            port,
        );
    }
    check_same_conn(&mut p, "preexisting", &http, conns.first().copied());
    let st = out.final_stats();
    p.eq(
        "final stats user.connections_by_protocol_unknown (nothing left undetected)",
        &st["user"]["connections_by_protocol_unknown"],
        0,
    );
    p.finish(|| format!("client report: {report}\n{}", context(&out, port)));
    out.assert_nothing_lost();
    eprintln!("h2_preexisting_connection: {:?}", t0.elapsed());
}

/// One h2c case: its name, the curl run, and each request's (path, stream id, body bytes).
type H2cCase<'a> = (
    &'a str,
    &'a (u32, Vec<CurlTransfer>),
    Vec<(&'a str, u32, u64)>,
);

#[test]
fn h2c_upgrade() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    require_python_modules(&["h2"], &["h2/requirements.txt"]);
    let port = free_server_port();
    let server_guard = start_python_fixture("h2/h2c_server.py", port, &[]);
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    let rec = Recorder::start(&[port], &[]);
    // One connection: the upgraded request (stream 1), then one more request (stream 3);
    // the server writes the 101, its SETTINGS and the response separately.
    let split = curl_h2(&["--http2"], &[url("/bytes/100"), url("/bytes/150")]);
    // The server writes the 101, its SETTINGS and the whole response in one call.
    let joined = curl_h2(&["--http2"], &[url("/one-write/bytes/200")]);
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();

    let srv_pids = [server_guard.pid()];
    let server = ServerIs {
        pids: &srv_pids,
        process: "python",
    };
    let mut p = Problems::default();
    // (case, curl run, [(path, stream id, body bytes)])
    let cases: [H2cCase; 2] = [
        (
            "separate writes",
            &split,
            vec![("/bytes/100", 1, 100), ("/bytes/150", 3, 150)],
        ),
        ("one write", &joined, vec![("/one-write/bytes/200", 1, 200)]),
    ];
    let mut total = 0;
    for (name, (pid, transfers), want) in &cases {
        assert_eq!(
            transfers.len(),
            want.len(),
            "{name}: curl's view: {transfers:?}"
        );
        let ports: BTreeSet<u16> = transfers.iter().map(|t| t.local_port).collect();
        assert_eq!(
            ports.len(),
            1,
            "{name}: curl used several connections: {transfers:?}"
        );
        for ((path, _, size), t) in want.iter().zip(transfers) {
            assert!(
                t.http_code == 200 && t.size_download == *size && t.http_version == "2",
                "{name} {path}: curl's view: {t:?}"
            );
        }
        let mine = by_client(&out, port, *pid);
        p.check(mine.len() == want.len(), || {
            format!(
                "h2c upgrade, {name}: {} http records, want exactly {}",
                mine.len(),
                want.len()
            )
        });
        for (path, sid, size) in want {
            total += 1;
            let tag = format!("h2c upgrade, {name}: GET {path} (stream {sid})");
            let Some(r) = one_stream(&mut p, &mine, *sid, &tag) else {
                continue;
            };
            let w = Want {
                tag: tag.clone(),
                method: "GET".into(),
                path: path.to_string(),
                status: 200,
                stream_id: *sid,
                req_body: 0,
                resp_body: *size,
                req_header_bytes: None,
                resp_header_bytes: None,
                client_pid: *pid,
                client_process: "curl".into(),
                user_agent: "curl/".into(),
            };
            check_h2_record(&mut p, r, &w, &server, port);
            p.eq(format!("{tag}: error"), &r["error"], false);
            p.eq(
                format!("{tag}: client.port"),
                &r["client"]["port"],
                transfers[0].local_port,
            );
        }
        let conns = conns_by_client(&out, port, *pid);
        p.check(conns.len() == 1, || {
            format!(
                "h2c upgrade, {name}: {} connection records, want exactly 1",
                conns.len()
            )
        });
        if let Some(c) = conns.first() {
            check_h2_connection(
                &mut p,
                c,
                &WantConn {
                    tag: format!("h2c upgrade, {name}: connection"),
                    client_pid: *pid,
                    client_process: "curl",
                    exchanges: want.len() as u64,
                    preexisting: false,
                    c2s: None,
                    s2c: None,
                    closed_by: Some("client"),
                    reset_ok: true,
                },
                &server,
                port,
            );
        }
        check_same_conn(&mut p, name, &mine, conns.first().copied());
    }
    p.check(out.http(port).len() == total, || {
        format!(
            "{} http records on port {port}, want exactly {total}",
            out.http(port).len()
        )
    });
    p.finish(|| {
        format!(
            "server stderr:\n{}\n{}",
            server_guard.stderr_text(),
            context(&out, port)
        )
    });
    out.assert_nothing_lost();
    eprintln!("h2c_upgrade: {:?}", t0.elapsed());
}
