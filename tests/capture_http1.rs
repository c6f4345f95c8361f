//! Real-kernel tests of `k8s-alog record` on HTTP/1 over loopback: real servers (a python
//! test server, nginx), real clients (curl, a raw-socket python client), exact records.
//!
//! They load eBPF programs, so they need root; without it each test says SKIPPED loudly
//! and returns. Run: `cargo test --release --test capture_http1 -- --test-threads=1`.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

/// One request a test made and what its record must say.
#[derive(Debug, Clone)]
struct Expected {
    method: &'static str,
    path: String,
    status: u16,
    req_body: u64,
    resp_body: u64,
    chunked: bool,
    interim: Vec<u16>,
    /// Loopback address both ends use ("127.0.0.1" or "::1").
    addr: &'static str,
    /// Chunked-encoding framing bytes on the wire that curl does not count.
    framing: u64,
    curl: CurlRun,
}

/// Bytes of chunked framing for a body of `total` bytes in `count` chunks, as written
/// by tests/fixtures/http_server.py (sizes in lower-case hex, last chunk takes the rest).
fn chunk_framing(total: u64, count: u64) -> u64 {
    let (base, extra) = (total / count, total % count);
    let mut n = 5; // "0\r\n\r\n"
    for i in 0..count {
        let size = base + if i == count - 1 { extra } else { 0 };
        if size > 0 {
            n += format!("{size:x}").len() as u64 + 4;
        }
    }
    n
}

/// The recording holds exactly one http record and one connection record per curl run
/// in `expected` (and nothing else on `port`), each saying what it must.
fn assert_exact_curl_records(rec: &Recording, port: u16, expected: &[Expected], server: &ServerIs) {
    let http = rec.http(port);
    let conns = rec.connections(port);
    let mut p = Problems::default();
    p.check(http.len() == expected.len(), || {
        format!(
            "{} http records on port {port}, want exactly {} (one per request)",
            http.len(),
            expected.len()
        )
    });
    p.check(conns.len() == expected.len(), || {
        format!(
            "{} connection records on port {port}, want exactly {} (one per curl connection)",
            conns.len(),
            expected.len()
        )
    });
    for e in expected {
        let tag = format!("{} {} (curl port {})", e.method, e.path, e.curl.local_port);
        let cport = e.curl.local_port;
        let mine: Vec<&&Value> = http
            .iter()
            .filter(|r| r["client"]["port"] == cport)
            .collect();
        if mine.len() != 1 {
            p.0.push(format!("{tag}: {} http records, want 1", mine.len()));
        }
        if let Some(r) = mine.first() {
            check_http(&mut p, &tag, r, e, server, port);
        }
        let cs: Vec<&&Value> = conns
            .iter()
            .filter(|r| r["client"]["port"] == cport)
            .collect();
        if cs.len() != 1 {
            p.0.push(format!("{tag}: {} connection records, want 1", cs.len()));
        }
        if let Some(c) = cs.first() {
            check_curl_connection(&mut p, &tag, c, e, server, port);
            if let Some(r) = mine.first() {
                p.eq(
                    format!("{tag}: connection conn_id vs http conn_id"),
                    &c["conn_id"],
                    r["conn_id"].clone(),
                );
            }
        }
    }
    p.finish(|| {
        format!(
            "records on port {port}: {}\n{}",
            dump_http(&http),
            dump(&rec.on_port(port))
        )
    });
}

fn check_http(p: &mut Problems, tag: &str, r: &Value, e: &Expected, server: &ServerIs, port: u16) {
    p.eq(format!("{tag}: method"), &r["method"], e.method);
    p.eq(format!("{tag}: path"), &r["path"], e.path.as_str());
    p.eq(format!("{tag}: status"), &r["status"], e.status);
    p.eq(format!("{tag}: protocol"), &r["protocol"], "HTTP/1.1");
    p.eq(format!("{tag}: tls"), &r["tls"], false);
    p.eq(format!("{tag}: observed_by"), &r["observed_by"], "both");
    p.eq(
        format!("{tag}: request.body_bytes"),
        &r["request"]["body_bytes"],
        e.req_body,
    );
    p.eq(
        format!("{tag}: response.body_bytes"),
        &r["response"]["body_bytes"],
        e.resp_body,
    );
    p.eq(
        format!("{tag}: response.chunked"),
        &r["response"]["chunked"],
        e.chunked,
    );
    p.eq(
        format!("{tag}: request.chunked"),
        &r["request"]["chunked"],
        false,
    );
    let interim = r.get("interim").cloned().unwrap_or_else(|| json!([]));
    p.eq(format!("{tag}: interim"), &interim, json!(e.interim));
    p.eq(format!("{tag}: complete"), &r["complete"], true);
    p.eq(format!("{tag}: partial"), &r["partial"], false);
    p.eq(format!("{tag}: client.addr"), &r["client"]["addr"], e.addr);
    p.eq(format!("{tag}: server.addr"), &r["server"]["addr"], e.addr);
    p.eq(format!("{tag}: server.port"), &r["server"]["port"], port);
    p.eq(
        format!("{tag}: client.process"),
        &r["client"]["process"],
        "curl",
    );
    p.eq(
        format!("{tag}: client.pid"),
        &r["client"]["pid"],
        e.curl.pid,
    );
    p.server_end(tag, r, server);
    let ua = r["user_agent"].as_str().unwrap_or("");
    p.check(ua.starts_with("curl/"), || {
        format!("{tag}: user_agent {:?}, want curl/...", r["user_agent"])
    });
    p.timing(tag, r);
}

fn check_curl_connection(
    p: &mut Problems,
    tag: &str,
    c: &Value,
    e: &Expected,
    server: &ServerIs,
    port: u16,
) {
    let tag = format!("{tag} connection");
    p.eq(format!("{tag}: protocol"), &c["protocol"], "http1");
    p.eq(format!("{tag}: observed_by"), &c["observed_by"], "both");
    p.eq(
        format!("{tag}: role_source"),
        &c["role_source"],
        "handshake",
    );
    p.eq(format!("{tag}: preexisting"), &c["preexisting"], false);
    p.eq(format!("{tag}: exchanges"), &c["exchanges"], 1);
    p.eq(format!("{tag}: data_lost"), &c["data_lost"], false);
    p.eq(format!("{tag}: close_reason"), &c["close_reason"], "fin");
    p.eq(format!("{tag}: closed_by"), &c["closed_by"], "client");
    p.eq(
        format!("{tag}: handshake.success"),
        &c["handshake"]["success"],
        true,
    );
    p.eq(format!("{tag}: client.addr"), &c["client"]["addr"], e.addr);
    p.eq(format!("{tag}: server.addr"), &c["server"]["addr"], e.addr);
    p.eq(format!("{tag}: server.port"), &c["server"]["port"], port);
    p.eq(
        format!("{tag}: client.process"),
        &c["client"]["process"],
        "curl",
    );
    p.eq(
        format!("{tag}: client.pid"),
        &c["client"]["pid"],
        e.curl.pid,
    );
    p.server_end(&tag, c, server);
    let c2s = e.curl.size_request + e.curl.size_upload;
    let s2c = e.curl.size_header + e.curl.size_download + e.framing;
    p.eq(
        format!("{tag}: bytes_client_to_server (curl: size_request + size_upload)"),
        &c["bytes_client_to_server"],
        c2s,
    );
    p.eq(
        format!(
            "{tag}: bytes_server_to_client (curl: size_header + size_download + chunk framing)"
        ),
        &c["bytes_server_to_client"],
        s2c,
    );
    let got_s2c = c["bytes_server_to_client"].as_u64().unwrap_or(0);
    p.check(got_s2c >= e.resp_body, || {
        format!(
            "{tag}: bytes_server_to_client {got_s2c} is below the response body size {}",
            e.resp_body
        )
    });
}

/// A GET (or other request) with curl, and what its record must say.
fn curl_expect(
    args: &[&str],
    method: &'static str,
    path: &str,
    status: u16,
    req_body: u64,
    resp_body: u64,
    addr: &'static str,
) -> Expected {
    let run = curl(args);
    assert_eq!(run.http_code, status, "curl {args:?}: {run:?}");
    Expected {
        method,
        path: path.to_string(),
        status,
        req_body,
        resp_body,
        chunked: false,
        interim: Vec::new(),
        addr,
        framing: 0,
        curl: run,
    }
}

#[test]
fn known_requests_python_server() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let server = start_python_server(port);
    let work = tempfile::tempdir().expect("temp dir");
    let upload = work.path().join("upload.bin");
    const FIVE_MB: u64 = 5 * 1024 * 1024;
    std::fs::write(&upload, vec![b'u'; FIVE_MB as usize]).expect("writing the upload body");
    let upload_arg = format!("@{}", upload.display());
    let v4 = |path: &str| format!("http://127.0.0.1:{port}{path}");

    let rec = Recorder::start(&[port], &[]);
    let mut want = Vec::new();
    for (path, status, body) in [
        ("/bytes/10", 200, 10),
        ("/status/404", 404, 11),
        ("/status/500", 500, 11),
        ("/status/204", 204, 0),
        ("/status/304", 304, 0),
    ] {
        want.push(curl_expect(
            &[&v4(path)],
            "GET",
            path,
            status,
            0,
            body,
            "127.0.0.1",
        ));
    }
    want.push(curl_expect(
        &["-I", &v4("/bytes/1000")],
        "HEAD",
        "/bytes/1000",
        200,
        0,
        0,
        "127.0.0.1",
    ));
    let mut chunked = curl_expect(
        &[&v4("/chunked/3000/3")],
        "GET",
        "/chunked/3000/3",
        200,
        0,
        3000,
        "127.0.0.1",
    );
    chunked.chunked = true;
    chunked.framing = chunk_framing(3000, 3);
    want.push(chunked);
    // curl sends `Expect: 100-continue` for a body this large: the server answers
    // 100 Continue first, and the record carries it as an interim status.
    let mut post = curl_expect(
        &["--data-binary", &upload_arg, &v4("/upload")],
        "POST",
        "/upload",
        200,
        FIVE_MB,
        format!("received {FIVE_MB} bytes\n").len() as u64,
        "127.0.0.1",
    );
    post.interim = vec![100];
    want.push(post);
    want.push(curl_expect(
        &[&v4(&format!("/bytes/{FIVE_MB}"))],
        "GET",
        &format!("/bytes/{FIVE_MB}"),
        200,
        0,
        FIVE_MB,
        "127.0.0.1",
    ));
    want.push(curl_expect(
        &["-g", &format!("http://[::1]:{port}/bytes/7")],
        "GET",
        "/bytes/7",
        200,
        0,
        7,
        "::1",
    ));
    for e in &want {
        assert_eq!(e.curl.size_download, e.resp_body, "curl's view of {e:?}");
    }
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();

    assert_exact_curl_records(
        &out,
        port,
        &want,
        &ServerIs {
            pids: &[server.pid()],
            process: "python",
        },
    );
    out.assert_nothing_lost();
    eprintln!("known_requests_python_server: {:?}", t0.elapsed());
}

/// The one connection record of the python client's connection, and its http records.
fn client_records<'a>(
    out: &'a Recording,
    port: u16,
    report: &Value,
) -> (Vec<&'a Value>, Vec<&'a Value>) {
    let lport = report["local_port"]
        .as_u64()
        .expect("client reported its port");
    let http: Vec<&Value> = out
        .http(port)
        .into_iter()
        .filter(|r| r["client"]["port"] == lport)
        .collect();
    let conns: Vec<&Value> = out
        .connections(port)
        .into_iter()
        .filter(|r| r["client"]["port"] == lport)
        .collect();
    (http, conns)
}

/// The connection record of a python-client connection says what the client saw.
#[allow(clippy::too_many_arguments)]
fn check_client_connection(
    p: &mut Problems,
    c: &Value,
    client_pid: u32,
    server_pid: u32,
    exchanges: u64,
    c2s: &Value,
    s2c: &Value,
    preexisting: bool,
) {
    p.eq("connection protocol", &c["protocol"], "http1");
    p.eq("connection observed_by", &c["observed_by"], "both");
    p.eq("connection preexisting", &c["preexisting"], preexisting);
    p.eq(
        "connection role_source",
        &c["role_source"],
        if preexisting { "payload" } else { "handshake" },
    );
    p.eq("connection exchanges", &c["exchanges"], exchanges);
    p.eq("connection data_lost", &c["data_lost"], false);
    p.eq("connection close_reason", &c["close_reason"], "fin");
    p.eq("connection closed_by", &c["closed_by"], "client");
    p.eq("connection client.pid", &c["client"]["pid"], client_pid);
    p.check(
        c["client"]["process"]
            .as_str()
            .is_some_and(|s| s.contains("python")),
        || {
            format!(
                "connection client.process {}, want python*",
                c["client"]["process"]
            )
        },
    );
    p.eq("connection server.pid", &c["server"]["pid"], server_pid);
    p.eq("connection client.addr", &c["client"]["addr"], "127.0.0.1");
    p.eq("connection server.addr", &c["server"]["addr"], "127.0.0.1");
    p.eq(
        "connection bytes_client_to_server (client's count)",
        &c["bytes_client_to_server"],
        c2s.clone(),
    );
    p.eq(
        "connection bytes_server_to_client (client's count)",
        &c["bytes_server_to_client"],
        s2c.clone(),
    );
}

#[test]
fn keepalive_1000_requests() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let server = start_python_server(port);
    let rec = Recorder::start(&[port], &[]);
    let (client_pid, report) =
        run_python_client(&["keepalive", "127.0.0.1", &port.to_string(), "1000"]);
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();

    let (http, conns) = client_records(&out, port, &report);
    let mut p = Problems::default();
    p.check(out.http(port).len() == 1000, || {
        format!(
            "{} http records on port {port}, want exactly 1000",
            out.http(port).len()
        )
    });
    p.check(http.len() == 1000, || {
        format!(
            "{} http records on the client's connection, want 1000",
            http.len()
        )
    });
    p.check(out.connections(port).len() == 1, || {
        format!(
            "{} connection records on port {port}, want exactly 1",
            out.connections(port).len()
        )
    });
    let conn_id = http
        .first()
        .map(|r| r["conn_id"].clone())
        .unwrap_or(Value::Null);
    let mut bad = 0;
    let mut last_start = 0;
    for (i, r) in http.iter().enumerate() {
        let ok = r["conn_id"] == conn_id
            && r["method"] == "GET"
            && r["path"] == "/bytes/100"
            && r["status"] == 200
            && r["response"]["body_bytes"] == 100
            && r["request"]["body_bytes"] == 0
            && r["complete"] == true
            && r["partial"] == false
            && r["observed_by"] == "both"
            && r["client"]["pid"] == client_pid
            && r["server"]["pid"] == server.pid();
        if !ok {
            bad += 1;
            if bad <= 5 {
                p.0.push(format!("http record #{i} is not a complete GET /bytes/100 -> 200 on conn {conn_id} (client pid {client_pid}): {r}"));
            }
        }
        let start = r["start_mono_ns"].as_u64().unwrap_or(0);
        if start < last_start {
            p.0.push(format!(
                "http record #{i} starts before the one written before it"
            ));
        }
        last_start = start;
    }
    p.check(bad == 0, || {
        format!("{bad} of {} http records are wrong", http.len())
    });
    match conns.as_slice() {
        [c] => {
            check_client_connection(
                &mut p,
                c,
                client_pid,
                server.pid(),
                1000,
                &report["sent"],
                &report["received"],
                false,
            );
            p.eq("connection conn_id", &c["conn_id"], conn_id.clone());
        }
        _ => p.0.push(format!(
            "{} connection records for the client's connection, want 1",
            conns.len()
        )),
    }
    p.finish(|| {
        format!(
            "client report: {report}\nfirst http records: {}\n{}",
            dump_http(&http.iter().take(3).copied().collect::<Vec<_>>()),
            dump(&out.connections(port))
        )
    });
    out.assert_nothing_lost();
    eprintln!("keepalive_1000_requests: {:?}", t0.elapsed());
}

#[test]
fn pipelined_requests() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let server = start_python_server(port);
    let rec = Recorder::start(&[port], &[]);
    let (client_pid, report) =
        run_python_client(&["pipeline", "127.0.0.1", &port.to_string(), "5"]);
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();

    let (http, conns) = client_records(&out, port, &report);
    let mut p = Problems::default();
    p.check(out.http(port).len() == 5, || {
        format!(
            "{} http records on port {port}, want exactly 5",
            out.http(port).len()
        )
    });
    let paths: Vec<&str> = http
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("?"))
        .collect();
    p.check(
        paths == ["/bytes/1", "/bytes/2", "/bytes/3", "/bytes/4", "/bytes/5"],
        || format!("paths in output order {paths:?}, want /bytes/1 ... /bytes/5 in order"),
    );
    for r in &http {
        let path = r["path"].as_str().unwrap_or("");
        let n: u64 = path
            .trim_start_matches("/bytes/")
            .parse()
            .unwrap_or(u64::MAX);
        let tag = format!("pipelined GET {path}");
        p.eq(format!("{tag}: method"), &r["method"], "GET");
        p.eq(format!("{tag}: status"), &r["status"], 200);
        p.eq(
            format!("{tag}: response.body_bytes (paired with its own request?)"),
            &r["response"]["body_bytes"],
            n,
        );
        p.eq(format!("{tag}: complete"), &r["complete"], true);
        p.eq(format!("{tag}: partial"), &r["partial"], false);
        p.eq(format!("{tag}: observed_by"), &r["observed_by"], "both");
        p.eq(
            format!("{tag}: client.pid"),
            &r["client"]["pid"],
            client_pid,
        );
        p.eq(
            format!("{tag}: server.pid"),
            &r["server"]["pid"],
            server.pid(),
        );
        p.check(r["duration_ns"].as_u64().unwrap_or(0) > 0, || {
            format!("{tag}: duration_ns {}, want > 0", r["duration_ns"])
        });
    }
    // Pipelined: every response ends after the previous one.
    let ends: Vec<u64> = http
        .iter()
        .map(|r| r["end_mono_ns"].as_u64().unwrap_or(0))
        .collect();
    p.check(ends.windows(2).all(|w| w[0] <= w[1]), || {
        format!("response end times out of order: {ends:?}")
    });
    match conns.as_slice() {
        [c] => check_client_connection(
            &mut p,
            c,
            client_pid,
            server.pid(),
            5,
            &report["sent"],
            &report["received"],
            false,
        ),
        _ => p.0.push(format!(
            "{} connection records for the client's connection, want 1",
            conns.len()
        )),
    }
    p.finish(|| format!("client report: {report}\n{}", dump(&out.on_port(port))));
    out.assert_nothing_lost();
    eprintln!("pipelined_requests: {:?}", t0.elapsed());
}

/// nginx as Debian ships it, in a private prefix; killed with its workers on drop.
struct Nginx {
    guard: ServerGuard,
    _dir: tempfile::TempDir,
    www: std::path::PathBuf,
}

fn nginx_serving_files(port: u16) -> Nginx {
    let dir = tempfile::Builder::new()
        .prefix("alog-nginx-")
        .tempdir()
        .expect("temp dir");
    let d = dir.path();
    // Workers run as an unprivileged user: they must be able to read the files.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let www = d.join("www");
    std::fs::create_dir(&www).expect("mkdir www");
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let block = format!(
        "    access_log off;
    sendfile on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        listen [::1]:{port};
        root {www};
    }}",
        www = www.display(),
    );
    let guard = start_nginx(
        d,
        &block,
        &[
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ],
    );
    Nginx {
        guard,
        _dir: dir,
        www,
    }
}

#[test]
fn nginx_static_files() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let nginx = nginx_serving_files(port);
    let files = [
        ("small.bin", 100u64),
        ("medium.bin", 100 * 1024),
        ("large.bin", 2 * 1024 * 1024),
    ];
    for (name, size) in files {
        let f = nginx.www.join(name);
        std::fs::write(&f, vec![b'n'; size as usize]).expect("writing a static file");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let workers = nginx.guard.children();
    assert!(!workers.is_empty(), "nginx has no worker process");

    let rec = Recorder::start(&[port], &[]);
    let mut want = Vec::new();
    for (name, size) in files {
        let path = format!("/{name}");
        want.push(curl_expect(
            &[&format!("http://127.0.0.1:{port}{path}")],
            "GET",
            &path,
            200,
            0,
            size,
            "127.0.0.1",
        ));
    }
    // nginx's own error page: its size is whatever curl received.
    let missing = curl(&[&format!("http://127.0.0.1:{port}/missing.bin")]);
    assert_eq!(missing.http_code, 404, "{missing:?}");
    want.push(Expected {
        method: "GET",
        path: "/missing.bin".into(),
        status: 404,
        req_body: 0,
        resp_body: missing.size_download,
        chunked: false,
        interim: Vec::new(),
        addr: "127.0.0.1",
        framing: 0,
        curl: missing,
    });
    want.push(curl_expect(
        &["-g", &format!("http://[::1]:{port}/small.bin")],
        "GET",
        "/small.bin",
        200,
        0,
        100,
        "::1",
    ));
    for e in &want {
        assert_eq!(e.curl.size_download, e.resp_body, "curl's view of {e:?}");
    }
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();

    assert_exact_curl_records(
        &out,
        port,
        &want,
        &ServerIs {
            pids: &workers,
            process: "nginx",
        },
    );
    out.assert_nothing_lost();
    eprintln!("nginx_static_files: {:?}", t0.elapsed());
}

#[test]
fn preexisting_connection() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let server = start_python_server(port);
    let work = tempfile::tempdir().expect("temp dir");
    // One connection: one request before capture begins, three after.
    let client = open_preexisting_client(port, work.path(), 3);
    let client_pid = client.pid();

    let rec = Recorder::start(&[port], &[]);
    release_preexisting_client(port, work.path());
    let o = client.wait_ok(CLIENT_TIMEOUT);
    let report: Value = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {:?}", o.stdout));
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();

    let (http, conns) = client_records(&out, port, &report);
    let mut p = Problems::default();
    p.check(out.http(port).len() == 3, || {
        format!(
            "{} http records on port {port}, want exactly 3 (the requests made after capture began)",
            out.http(port).len()
        )
    });
    p.check(
        !out.http(port).iter().any(|r| r["path"] == "/bytes/10"),
        || "the request made before capture began (/bytes/10) is in the output".to_string(),
    );
    for (i, want_path) in ["/bytes/21", "/bytes/22", "/bytes/23"].iter().enumerate() {
        let n: u64 = want_path.trim_start_matches("/bytes/").parse().unwrap();
        let found: Vec<&&Value> = http.iter().filter(|r| r["path"] == *want_path).collect();
        if found.len() != 1 {
            p.0.push(format!(
                "GET {want_path}: {} http records, want 1",
                found.len()
            ));
            continue;
        }
        let r = found[0];
        let tag = format!("GET {want_path} (request #{} after start)", i + 1);
        p.eq(format!("{tag}: method"), &r["method"], "GET");
        p.eq(format!("{tag}: status"), &r["status"], 200);
        p.eq(format!("{tag}: observed_by"), &r["observed_by"], "both");
        p.eq(
            format!("{tag}: client.pid"),
            &r["client"]["pid"],
            client_pid,
        );
        p.eq(
            format!("{tag}: server.pid"),
            &r["server"]["pid"],
            server.pid(),
        );
        p.eq(
            format!("{tag}: client.addr"),
            &r["client"]["addr"],
            "127.0.0.1",
        );
        // The tool may mark these partial when unsure; whole requests after the join
        // point should not be.
        if r["partial"] == false {
            p.eq(format!("{tag}: complete"), &r["complete"], true);
            p.eq(
                format!("{tag}: response.body_bytes"),
                &r["response"]["body_bytes"],
                n,
            );
        }
    }
    match conns.as_slice() {
        [c] => check_client_connection(
            &mut p,
            c,
            client_pid,
            server.pid(),
            3,
            &report["sent_after"],
            &report["received_after"],
            true,
        ),
        _ => p.0.push(format!(
            "{} connection records for the client's connection, want 1",
            conns.len()
        )),
    }
    p.check(out.connections(port).len() == 1, || {
        format!(
            "{} connection records on port {port}, want exactly 1",
            out.connections(port).len()
        )
    });
    p.finish(|| format!("client report: {report}\n{}", dump(&out.on_port(port))));
    out.assert_nothing_lost();
    eprintln!("preexisting_connection: {:?}", t0.elapsed());
}

/// Start the python client in `preexisting` mode against `port` and wait until its one
/// connection is open and has done its first request.
fn open_preexisting_client(port: u16, work: &Path, requests_after: u32) -> Running {
    let ready = work.join(format!("ready-{port}"));
    let go = work.join(format!("go-{port}"));
    let client = Running::spawn(
        python_client(&[
            "preexisting",
            "127.0.0.1",
            &port.to_string(),
            &ready.display().to_string(),
            &go.display().to_string(),
            &requests_after.to_string(),
        ]),
        &format!("http_client.py preexisting (port {port})"),
    );
    wait_for_file(&ready, Duration::from_secs(20));
    client
}

/// Let a client started by `open_preexisting_client` go on.
fn release_preexisting_client(port: u16, work: &Path) {
    std::fs::write(work.join(format!("go-{port}")), b"go\n").expect("creating the go file");
}

#[test]
fn preexisting_idle_connection_written_once() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let _server = start_python_server(port);
    let work = tempfile::tempdir().expect("temp dir");
    // Open before capture, idle during it, closed during it: the tool sees only the two
    // sockets closing.
    let client = open_preexisting_client(port, work.path(), 0);
    let rec = Recorder::start(&[port], &[]);
    release_preexisting_client(port, work.path());
    let o = client.wait_ok(CLIENT_TIMEOUT);
    let report: Value = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {:?}", o.stdout));
    wait_port_idle(port, Duration::from_secs(10));
    let out = rec.stop();

    let conns = out.connections(port);
    let mut p = Problems::default();
    p.check(out.http(port).is_empty(), || {
        format!(
            "{} http records, want none (no request during capture)",
            out.http(port).len()
        )
    });
    // Both ends are on this node: one record, from the server's view.
    match conns.as_slice() {
        [c] => {
            p.eq("observed_by", &c["observed_by"], "both");
            p.eq("preexisting", &c["preexisting"], true);
            p.eq(
                "client.port",
                &c["client"]["port"],
                report["local_port"].clone(),
            );
            p.eq("server.port", &c["server"]["port"], port);
            p.eq("client.addr", &c["client"]["addr"], "127.0.0.1");
            p.eq("server.addr", &c["server"]["addr"], "127.0.0.1");
            p.eq("exchanges", &c["exchanges"], 0);
            p.eq("bytes_client_to_server", &c["bytes_client_to_server"], 0);
            p.eq("bytes_server_to_client", &c["bytes_server_to_client"], 0);
            p.eq("close_reason", &c["close_reason"], "fin");
        }
        _ => p.0.push(format!(
            "{} connection records on port {port}, want exactly 1 (observed_by \"both\")",
            conns.len()
        )),
    }
    p.finish(|| format!("client report: {report}\n{}", dump(&out.on_port(port))));
    eprintln!(
        "preexisting_idle_connection_written_once: {:?}",
        t0.elapsed()
    );
}

#[test]
fn port_filter_excludes_other_connections() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let _server = start_python_server(port);
    let other = free_server_port(); // cannot be `port`: that one is taken now
    let _other_server = start_python_server(other);
    let work = tempfile::tempdir().expect("temp dir");
    // A connection on the other port, open before capture, idle during it, closed
    // during it.
    let idle = open_preexisting_client(other, work.path(), 0);

    let rec = Recorder::start(&[port], &[]);
    let wanted = curl(&[&format!("http://127.0.0.1:{port}/bytes/1")]);
    let unwanted = curl(&[&format!("http://127.0.0.1:{other}/bytes/2")]);
    release_preexisting_client(other, work.path());
    idle.wait_ok(CLIENT_TIMEOUT);
    wait_port_idle(port, Duration::from_secs(10));
    wait_port_idle(other, Duration::from_secs(10));
    let out = rec.stop();

    let leaked: Vec<&Value> = out
        .records
        .iter()
        .filter(|r| {
            r["kind"] != "stats" && (r["client"]["port"] == other || r["server"]["port"] == other)
        })
        .collect();
    let mut p = Problems::default();
    p.check(leaked.is_empty(), || {
        format!(
            "{} record(s) on port {other}, which is not in --port {port}: {}",
            leaked.len(),
            dump(&leaked)
        )
    });
    p.check(out.http(port).len() == 1, || {
        format!(
            "{} http records on port {port}, want 1",
            out.http(port).len()
        )
    });
    p.check(out.connections(port).len() == 1, || {
        format!(
            "{} connection records on port {port}, want 1",
            out.connections(port).len()
        )
    });
    p.finish(|| {
        format!(
            "curl runs: {wanted:?} {unwanted:?}\nall records: {}",
            dump(&out.records.iter().collect::<Vec<_>>())
        )
    });
    eprintln!("port_filter_excludes_other_connections: {:?}", t0.elapsed());
}

#[test]
fn stats_and_signal() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let port = free_server_port();
    let _server = start_python_server(port);
    let rec = Recorder::start(&[port], &[]);
    for path in ["/bytes/10", "/status/404", "/bytes/20000"] {
        curl(&[&format!("http://127.0.0.1:{port}{path}")]);
    }
    // --stats-interval 1: a periodic stats record reaches the file while capture runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rec.records_so_far().iter().any(|r| r["kind"] == "stats") {
        assert!(
            Instant::now() < deadline,
            "no periodic stats record in the output within 10 s (--stats-interval 1); stderr:\n{}",
            rec.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_port_idle(port, Duration::from_secs(10));
    let path = rec.out_path().to_path_buf();
    // SIGTERM here; every other test stops the recorder with SIGINT.
    let out = rec.stop_with(libc::SIGTERM);
    assert_eq!(path, out.path);

    let st = out.final_stats().clone();
    let mut p = Problems::default();
    p.eq("stats v", &st["v"], 1);
    let lost = st["lost"].as_object().cloned().unwrap_or_default();
    for k in [
        "ringbuf_data_events",
        "ringbuf_conn_events",
        "kernel_storage",
        "bad_records",
        "sequence_gaps",
        "evicted_connections",
    ] {
        p.check(lost.contains_key(k), || {
            format!("final stats has no lost.{k}")
        });
    }
    for (k, v) in &lost {
        p.eq(format!("final stats lost.{k}"), v, 0);
    }
    let data_events = st["kernel"]["data_events"].as_u64().unwrap_or(0);
    p.check(data_events > 0, || {
        format!("kernel.data_events {data_events}, want > 0")
    });
    let conn_events = st["kernel"]["conn_events"].as_u64().unwrap_or(0);
    p.check(conn_events > 0, || {
        format!("kernel.conn_events {conn_events}, want > 0")
    });
    p.eq(
        "final stats user.http_records (vs http lines written)",
        &st["user"]["http_records"],
        out.of_kind("http").len(),
    );
    p.eq(
        "final stats user.connection_records (vs connection lines written)",
        &st["user"]["connection_records"],
        out.of_kind("connection").len(),
    );
    p.check(out.stats().len() >= 2, || {
        format!(
            "{} stats records, want a periodic one and the final one",
            out.stats().len()
        )
    });
    p.check(out.http(port).len() == 3, || {
        format!(
            "{} http records on port {port}, want 3",
            out.http(port).len()
        )
    });
    let mode = std::fs::metadata(&out.path)
        .expect("output file metadata")
        .permissions()
        .mode()
        & 0o777;
    p.check(mode == 0o600, || {
        format!("output file mode {mode:o}, want 600")
    });
    // The exit summary counts what was written.
    let summary = out
        .stderr
        .iter()
        .find(|l| l.starts_with("k8s-alog: ") && l.contains(" records ("));
    match summary {
        Some(l) => {
            let n: Option<usize> = l
                .trim_start_matches("k8s-alog: ")
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok());
            p.check(n == Some(out.records.len()), || {
                format!(
                    "exit summary says {n:?} records, the file has {}: {l}",
                    out.records.len()
                )
            });
        }
        None => {
            p.0.push("no exit summary (\"k8s-alog: N records (...)\") on stderr".into())
        }
    }
    p.finish(|| format!("final stats: {st}\nstderr:\n{}", out.stderr.join("\n")));
    eprintln!("stats_and_signal: {:?}", t0.elapsed());
}

/// A client that sends a request and closes at once (the server's answer then meets a
/// reset), and a connection opened and closed with no data: each is one exchange / one
/// connection, with nothing invented and nothing counted twice.
#[test]
fn early_close_and_empty_connection() {
    if !require_root() {
        return;
    }
    let port = free_server_port();
    let nginx = nginx_serving_files(port);
    std::fs::write(nginx.www.join("r"), "hello\n").expect("writing a file");
    let rec = Recorder::start(&[port], &[]);
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'GET /r HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         s.close()\n\
         e = socket.create_connection(('127.0.0.1', {port}))\n\
         e.close()\n"
    );
    let st = std::process::Command::new(python3())
        .arg("-c")
        .arg(&script)
        .status()
        .expect("running python");
    assert!(st.success());
    wait_port_idle(port, Duration::from_secs(10));
    std::thread::sleep(DRAIN_DELAY);
    let out = rec.stop();
    let http = out.http(port);
    let conns = out.connections(port);
    let mut p = Problems::default();
    p.check(http.len() == 1, || {
        format!("{} http records, want 1", http.len())
    });
    if let Some(r) = http.first() {
        p.eq("status of the early-closed request", &r["status"], 200);
        p.eq("path", &r["path"], "/r");
        // The body may meet the client's reset before it is sent: at most 6 bytes.
        p.check(
            r["response"]["body_bytes"].as_u64().unwrap_or(99) <= 6,
            || format!("response.body_bytes {}", r["response"]["body_bytes"]),
        );
        p.eq("observed_by", &r["observed_by"], "both");
    }
    p.check(conns.len() == 2, || {
        format!(
            "{} connection records, want 2 (one per connection)",
            conns.len()
        )
    });
    for c in &conns {
        p.eq("observed_by", &c["observed_by"], "both");
        p.eq("handshake.success", &c["handshake"]["success"], true);
        p.check(c["client"]["addr"] == "127.0.0.1", || {
            format!("client address {} (a phantom record?)", c["client"]["addr"])
        });
    }
    let data = conns.iter().find(|c| c["exchanges"] == 1);
    match data {
        Some(c) => p.check(
            c["bytes_server_to_client"].as_u64().unwrap_or(0) > 100,
            || {
                format!(
                    "bytes_server_to_client {} misses the response",
                    c["bytes_server_to_client"]
                )
            },
        ),
        None => p.0.push("no connection record with the exchange".into()),
    }
    p.finish(|| format!("{}\n{}", dump_http(&http), dump(&conns)));
    out.assert_nothing_lost();
    drop(nginx);
}

/// A hung backend: 30 clients pipeline 600 requests each (300-byte targets) that are read
/// and never answered, while every parser on the node may hold 4 MiB in all (both ends
/// are parsed here: about 25 MB would be held without the budget). The parsers holding
/// the most write their waiting requests out early; every request is still written
/// exactly once, none is counted lost, no parser had to start over, and what the parsers
/// hold stays near the budget.
#[test]
fn parsers_share_one_memory_budget() {
    if !require_root() {
        return;
    }
    let port = free_server_port();
    let script = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
print("ready", flush=True)
def drain(c):
    # Small reads: every byte captured, heads split across reads.
    while c.recv(256):
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"#;
    let mut cmd = Command::new(python3());
    cmd.args(["-c", script, &port.to_string()]);
    let mut server = ServerGuard::spawn(cmd, "never-answering server");
    server.wait_stdout_line("ready", Duration::from_secs(10));
    let rec = Recorder::start(&[port], &["--max-parser-memory", "4"]);
    let client = r#"
import socket, sys, time
port = int(sys.argv[1]); target = "/" + "t" * 300
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
def send(k):
    for i, c in enumerate(conns):
        c.sendall(f"GET {target}/{i}/{k} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
# One request each, then time for the server to have read from every socket (an
# accepted socket is announced at its first read): the two ends are linked before
# the flood, however slowly the server's threads start on a busy machine.
send(0)
time.sleep(1.5)
for k in range(1, 600):
    send(k)
time.sleep(1.5)
for c in conns:
    c.close()
"#;
    let mut cmd = Command::new(python3());
    cmd.args(["-c", client, &port.to_string()]);
    Running::spawn(cmd, "pipelining clients").wait_ok(Duration::from_secs(60));
    wait_port_idle(port, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    let out = rec.stop();
    drop(server);

    let http = out.http(port);
    let mut p = Problems::default();
    p.check(http.len() == 18_000, || {
        format!("{} http records, want exactly 18000", http.len())
    });
    let mut seen = std::collections::HashSet::new();
    let mut early = 0;
    for r in &http {
        let path = r["path"].as_str().unwrap_or("?").to_string();
        let notes: Vec<&str> = r["notes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if notes.contains(&"memory_budget") {
            early += 1;
        }
        p.check(r["status"].is_null(), || {
            format!("{path}: a status {}", r["status"])
        });
        if !seen.insert(path.clone()) {
            let tail: String = path
                .chars()
                .rev()
                .take(12)
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            p.0.push(format!(
                "...{tail} written twice: observed_by {} notes {} client {}",
                r["observed_by"], r["notes"], r["client"]["port"]
            ));
        }
    }
    let stats = out.stats();
    let user = &out.final_stats()["user"];
    let shed = user["parsers_shed_memory"].as_u64().unwrap_or(0);
    let restarted = user["parsers_restarted_memory"].as_u64().unwrap_or(1);
    let peak = stats
        .iter()
        .filter_map(|s| s["user"]["parser_bytes"].as_u64())
        .max()
        .unwrap_or(0);
    eprintln!(
        "parsers_share_one_memory_budget: {} records, {early} written early (memory_budget), \
         {shed} times a parser gave up what waited, {restarted} restarted, parser bytes at \
         most {peak} in {} stats records",
        http.len(),
        stats.len()
    );
    p.check(shed >= 1 && early >= 1, || {
        format!("no parser started over ({shed}) or no request written early ({early})")
    });
    p.check(restarted == 0, || {
        format!("{restarted} parsers started over")
    });
    p.check(peak <= 4 * 1024 * 1024 + 256 * 1024, || {
        format!("parsers held {peak} bytes, over the 4 MiB budget")
    });
    p.finish(|| {
        let f = out.final_stats();
        format!(
            "{} http records; lost {}; kernel {}; user {}",
            http.len(),
            f["lost"],
            f["kernel"],
            f["user"]
        )
    });
    out.assert_nothing_lost();
}
