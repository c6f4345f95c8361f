//! `k8s-alog top`: wiring only. A feeding thread (the live capture, or a recording
//! replayed at its own pace) sends records through a bounded channel to the dashboard
//! loop in `crate::top`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Write;

use anyhow::Context;

use super::live::{self, LiveOptions};
use crate::cli::TopArgs;
use crate::model::Record;
use crate::sink::{Fanout, Sink};
use crate::top::app::Outside;
use crate::top::cost::{BpfStatsGuard, CostProbe};
use crate::top::state::Limits;
use crate::top::window::Window;
use crate::top::{self, Inputs, LoopOptions, Msg, StderrGuard, TerminalGuard};

/// Hands records to the dashboard without ever blocking the capture: when the queue is
/// full the record is dropped and counted (shown in the header).
pub struct ChannelSink {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Set at the first record.
    started: Arc<AtomicBool>,
}

impl ChannelSink {
    pub fn new(tx: SyncSender<Msg>, dropped: Arc<AtomicU64>, started: Arc<AtomicBool>) -> Self {
        Self {
            tx,
            dropped,
            started,
        }
    }
}

impl Sink for ChannelSink {
    fn write(&mut self, rec: &Record) -> anyhow::Result<()> {
        self.started.store(true, Ordering::Relaxed);
        match self.tx.try_send(Msg::Record(Box::new(rec.clone()))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The dashboard has gone: the capture is being stopped.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn node_name(args: &TopArgs) -> String {
    args.k8s.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    })
}

/// Replay `path` into `tx` at `speed` (0: at once), keeping `clock` at the replayed
/// monotonic time. Records are never dropped (the replay waits instead).
/// Feed the recording at `path` to `tx`; `failed` is set before the closing `Msg::Done`
/// when a record could not be read.
fn replay(
    path: PathBuf,
    speed: f64,
    tx: SyncSender<Msg>,
    clock: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) {
    let res = (|| -> anyhow::Result<()> {
        let start = Instant::now();
        let mut t0: Option<u64> = None;
        for rec in crate::sink::jsonl::read_records(&path)? {
            let rec = rec?;
            let m = rec.mono_ns();
            let base = *t0.get_or_insert(m);
            if speed > 0.0 && m > base {
                let due = Duration::from_secs_f64((m - base) as f64 / 1e9 / speed);
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let el = start.elapsed();
                    let now = base + (el.as_secs_f64() * speed * 1e9) as u64;
                    clock.fetch_max(now.min(m), Ordering::Relaxed);
                    if el >= due {
                        break;
                    }
                    std::thread::sleep((due - el).min(Duration::from_millis(50)));
                }
            }
            clock.fetch_max(m, Ordering::Relaxed);
            if tx.send(Msg::Record(Box::new(rec))).is_err() {
                return Ok(());
            }
        }
        Ok(())
    })();
    failed.store(res.is_err(), Ordering::Relaxed);
    let _ = tx.send(Msg::Done(res.err().map(|e| format!("{e:#}"))));
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    let window = Window::parse(&args.window)
        .with_context(|| format!("--window {}: 10s, 1m or 5m", args.window))?;
    if !(args.tick >= 0.05 && args.tick <= 60.0) {
        anyhow::bail!("--tick {} must be between 0.05 and 60 seconds", args.tick);
    }
    if !(args.speed >= 0.0 && args.speed.is_finite()) {
        anyhow::bail!("--speed {} must be 0 (at once) or more", args.speed);
    }
    if args.queue == 0 {
        anyhow::bail!("--queue must be at least 1");
    }
    if args.from.is_some() && !args.oap.oap.is_empty() {
        anyhow::bail!(
            "--oap forwards a live capture; to deliver a recording use `k8s-alog push --from FILE --oap ADDR`"
        );
    }
    // Built before the screen changes, so that a bad OAP setting is a plain error.
    let oap = if args.from.is_none() {
        super::oap::sink(&args.oap, &args.k8s)?
    } else {
        None
    };
    let oap_addrs = args.oap.oap.join(",");
    let stop = super::stop_flag()?;
    // From here on nothing writes on the terminal but the dashboard: stderr goes to the
    // log file (or nowhere) until this returns.
    let stderr_guard = StderrGuard::redirect(args.log_file.as_deref())?;
    let (tx, rx) = sync_channel::<Msg>(args.queue);
    let dropped = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicBool::new(false));
    let replay_clock = Arc::new(AtomicU64::new(0));
    let replay_failed = Arc::new(AtomicBool::new(false));
    let live_mode = args.from.is_none();

    let feeder: std::thread::JoinHandle<Option<anyhow::Error>> = match &args.from {
        Some(path) => {
            // Fail before the screen changes when the file cannot be read.
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let failed_flag = replay_failed.clone();
            let (path, speed, clock, stop) =
                (path.clone(), args.speed, replay_clock.clone(), stop.clone());
            std::thread::Builder::new()
                .name("top-replay".into())
                .spawn(move || {
                    // The error itself is reported at exit; the header says it stopped.
                    replay(path, speed, tx, clock, stop, failed_flag);
                    None
                })?
        }
        None => {
            let (capture, k8s, stop, dropped, started) = (
                args.capture.clone(),
                args.k8s.clone(),
                stop.clone(),
                dropped.clone(),
                started.clone(),
            );
            std::thread::Builder::new()
                .name("top-capture".into())
                .spawn(move || {
                    let mut oap = oap;
                    let mut sinks: Vec<Box<dyn Sink + '_>> =
                        vec![Box::new(ChannelSink::new(tx.clone(), dropped, started))];
                    if let Some(o) = oap.as_mut() {
                        sinks.push(Box::new(o));
                    }
                    let mut sink = Fanout(sinks);
                    let opts = LiveOptions {
                        duration: None,
                        stats_interval: 1.0,
                        what: "showing the dashboard".into(),
                    };
                    let res = live::run_until(&capture, &k8s, &opts, &mut sink, &stop);
                    drop(sink);
                    if let Some(o) = oap.as_mut() {
                        let st = o.finish();
                        tracing::info!("push to {oap_addrs}: {st}");
                        tracing::info!("push counters: {}", st.kv());
                    }
                    let err = res.err();
                    let _ = tx.send(Msg::Done(err.as_ref().map(|e| format!("{e:#}"))));
                    err
                })?
        }
    };

    if live_mode {
        // The screen changes only once the capture runs (its first record), so that
        // an error such as "not permitted" is a plain message with its exit code.
        if let Some(mut e) = top::original_stderr() {
            let _ = writeln!(e, "k8s-alog: starting the capture...");
        }
        let t0 = Instant::now();
        while !started.load(Ordering::Relaxed) {
            if feeder.is_finished() {
                return Err(feeder
                    .join()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| anyhow::anyhow!("the capture ended before it started")));
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    let bpf_stats = live_mode.then(BpfStatsGuard::enable);
    let bpf_note = bpf_stats.as_ref().and_then(|g| g.note.clone());
    let node = match &args.from {
        Some(p) => format!(
            "{}",
            p.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        ),
        None => node_name(args),
    };
    let speed = args.speed;
    let mut probe = CostProbe::new();
    let outside_dropped = dropped.clone();
    let failed2 = replay_failed.clone();
    // "replay done" once the loop has applied everything the replay sent (`ended`), not
    // merely once the replay has sent it.
    let outside = move |ended: bool| {
        let c = probe.sample();
        Outside {
            node: node.clone(),
            mode: match (live_mode, ended, speed) {
                (true, _, _) => "live".into(),
                (false, true, _) if failed2.load(Ordering::Relaxed) => {
                    "replay STOPPED at a bad record (q: details)".into()
                }
                (false, true, _) => "replay done".into(),
                (false, false, 0.0) => "replay".into(),
                (false, false, s) => format!("replay x{s}"),
            },
            queue_dropped: outside_dropped.load(Ordering::Relaxed),
            cpu_pct: c.cpu_pct,
            rss_bytes: c.rss_bytes,
            bpf_cpu_pct: c.bpf_cpu_pct.filter(|_| live_mode),
            bpf_note: bpf_note.clone(),
        }
    };
    let clock: Box<dyn Fn() -> Option<u64>> = if live_mode {
        Box::new(|| Some(crate::capture::monotonic_ns()))
    } else {
        let c = replay_clock.clone();
        Box::new(move || Some(c.load(Ordering::Relaxed)).filter(|v| *v > 0))
    };
    let mut inputs = Inputs {
        records: rx,
        events: top::crossterm_events(),
        clock,
        outside: Box::new(outside),
        stop: stop.clone(),
    };
    let opts = LoopOptions {
        tick: Duration::from_secs_f64(args.tick),
        window,
        limits: Limits::default(),
        exit_on_done: live_mode,
    };
    let res = {
        let guard = TerminalGuard::enter()?;
        let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
        let res = ratatui::Terminal::new(backend)
            .map_err(anyhow::Error::from)
            .and_then(|mut term| top::run_loop(&mut term, &mut inputs, &opts));
        drop(guard);
        res
    };
    stop.store(true, Ordering::Relaxed);
    drop(inputs);
    let feeder_err = feeder.join().ok().flatten();
    drop(bpf_stats);
    drop(stderr_guard);
    let (perf, _, st) = res?;
    if args.perf {
        eprintln!("{}", perf.summary());
        eprintln!(
            "queue dropped: {}; aggregates {:?}; evicted {}",
            dropped.load(Ordering::Relaxed),
            st.sizes(),
            st.evicted()
        );
    }
    if let Some(e) = feeder_err {
        return Err(e);
    }
    if let Some(e) = perf.source_error {
        anyhow::bail!("{e}");
    }
    Ok(())
}
