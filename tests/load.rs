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

/// Pin every thread of `pid` to CPU 0 at a low priority: the event thread then gets
/// far less CPU than the load beside it, a dependable overload on any machine.
fn starve(pid: u32) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid = task
            .expect("task")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let ok = Command::new("taskset")
            .args(["-p", "-c", "0", &tid])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "taskset failed for thread {tid}");
        let ok = Command::new("renice")
            .args(["-n", "10", "-p", &tid])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "renice failed for thread {tid}");
    }
}

/// An event thread that cannot keep up must still tick: `stats` records keep coming while
/// the ring overflows (the losses are counted when they happen), and a stop request ends
/// the run promptly although records keep arriving.
#[test]
fn overload_still_ticks_and_stops() {
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
    let rec = Recorder::start(&[port], &["--stats-interval", "0.2"]);
    starve(rec.pid());
    // Connection churn on the same CPU for 60 s: every connection is several events. An
    // event loop that drains until the ring is empty never ticks during it and stops only
    // once the load ends (~50 s after the signal).
    let mut wrk = Command::new("taskset")
        .args(["-c", "0", "/usr/bin/wrk", "-t2", "-c200", "-d60s"])
        .args(["-H", "Connection: close"])
        .arg(format!("http://127.0.0.1:{port}/r"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running wrk");
    let load_start = Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(8));
    let t0 = Instant::now();
    let recording = rec.stop_with(libc::SIGTERM);
    let stop_secs = (t0.elapsed() - DRAIN_DELAY).as_secs_f64();
    let _ = wrk.kill();
    let _ = wrk.wait();

    let stats = recording.stats();
    let times: Vec<f64> = stats
        .iter()
        .filter_map(|s| s["mono_ns"].as_u64())
        .map(|ns| ns as f64 / 1e9)
        .collect();
    let max_gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    let last = recording.final_stats();
    let k = &last["kernel"];
    let dropped =
        k["drop_data_ringbuf"].as_u64().unwrap_or(0) + k["drop_conn_ringbuf"].as_u64().unwrap_or(0);
    let bounded = k["ring_drains_bounded"].as_u64().unwrap_or(0);
    eprintln!(
        "overload: {:.1} s of load; stats records {}, largest gap {max_gap:.2} s; ring losses {dropped}, drains left at their bound {bounded}; stopped {stop_secs:.2} s after SIGTERM",
        load_start.elapsed().as_secs_f64(),
        times.len()
    );
    assert!(
        dropped > 0 || bounded > 0,
        "the load did not saturate the event thread (no ring loss, no bounded drain): this test saw no overload"
    );
    assert!(
        times.len() >= 10,
        "only {} stats records in ~8 s at a 0.2 s interval: the loop stopped ticking under overload",
        times.len()
    );
    assert!(
        max_gap < 5.0,
        "{max_gap:.2} s without a stats record under overload (interval 0.2 s)"
    );
    assert!(
        stop_secs < 15.0,
        "k8s-alog took {stop_secs:.2} s to stop under overload"
    );
    // Losses reach the loss section, not just the kernel's counters.
    let lost = &last["lost"];
    let lost_ring = lost["ringbuf_data_events"].as_u64().unwrap_or(0)
        + lost["ringbuf_conn_events"].as_u64().unwrap_or(0);
    assert_eq!(lost_ring, dropped, "ring losses not all in `lost`: {lost}");
}
