//! Load run on the real kernel: wrk against nginx on loopback while `record` captures.
//! Every request nginx served must be in the JSONL, or be covered by a counted loss.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

/// At least this many requests must be made for the run to count.
const MIN_REQUESTS: u64 = 50_000;

fn start_nginx_logging(port: u16, dir: &Path) -> ServerGuard {
    let block = format!(
        r#"    access_log {d}/access.log;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location /r {{ return 200 "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"; }}
    }}"#,
        d = dir.display()
    );
    start_nginx(dir, &block, &[SocketAddr::from(([127, 0, 0, 1], port))])
}

#[test]
fn wrk_load_nothing_lost_silently() {
    if !require_root() {
        return;
    }
    assert!(
        Path::new("/usr/bin/wrk").exists(),
        "wrk is not installed: run `make deps` (as root)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _nginx = start_nginx_logging(port, dir.path());
    let rec = Recorder::start(&[port], &[]);
    let t0 = Instant::now();
    let out = Command::new("/usr/bin/wrk")
        .args(["-t2", "-c16", "-d5s"])
        .arg(format!("http://127.0.0.1:{port}/r"))
        .output()
        .expect("running wrk");
    let load_secs = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "wrk failed: {out:?}");
    std::thread::sleep(DRAIN_DELAY);
    let recording = rec.stop();

    let access = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
    let served = access.lines().filter(|l| l.contains("GET /r ")).count() as u64;
    let http = recording.http(port);
    let complete = http
        .iter()
        .filter(|r| r["status"].as_u64() == Some(200) && r["path"] == "/r")
        .count() as u64;
    let stats = recording.final_stats();
    let lost = &stats["lost"];
    let lost_total: u64 = lost
        .as_object()
        .map(|o| o.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    eprintln!(
        "load: wrk {}; nginx served {served} requests in {load_secs:.1} s; records {complete} (http records in all {}); lost counters {lost}; kernel {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("requests in"))
            .unwrap_or("")
            .trim(),
        http.len(),
        stats["kernel"],
    );
    assert!(
        served >= MIN_REQUESTS,
        "the load made only {served} requests (< {MIN_REQUESTS}): the machine is too slow for this test"
    );
    // Without pipelining one lost data event hides at most one exchange, so records plus
    // counted losses must cover every request; with no loss they must match exactly.
    if lost_total == 0 {
        assert_eq!(
            complete, served,
            "nothing was counted as lost, yet records ({complete}) != requests ({served})"
        );
    } else {
        assert!(
            complete + lost_total >= served,
            "records {complete} + counted losses {lost_total} < requests {served}: loss went uncounted"
        );
    }
    assert!(
        complete <= served,
        "more records ({complete}) than requests ({served})"
    );
}
