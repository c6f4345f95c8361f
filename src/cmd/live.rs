//! The live pipeline shared by `record`, `top` and `push`: load and attach the BPF
//! programs, attribute and parse in the engine, and hand every record to a sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::capture::{
    self, Capture, CaptureConfig, DecodeError, Event, EventHandler, KernelCounters,
};
use crate::cli::{CaptureArgs, K8sArgs};
use crate::engine::{Engine, EngineOptions};
use crate::model::{Clock, LossCounters, Record, UserCounters};
use crate::resolve::k8s::{K8sAttribution, K8sConfig};
use crate::resolve::procs::ProcResolver;
use crate::resolve::Attribution;
use crate::sink::{OutputClosed, Sink};

/// Capture settings from the command line.
pub fn capture_config(a: &CaptureArgs) -> anyhow::Result<CaptureConfig> {
    let ring = a
        .ring_mb
        .checked_mul(1 << 20)
        .filter(|r| r.is_power_of_two())
        .ok_or_else(|| {
            crate::exit::usage(format!(
                "--ring-mb {} must be a power of two up to 2048",
                a.ring_mb
            ))
        })?;
    Ok(CaptureConfig {
        capture_bytes: a.capture_bytes,
        ring_bytes: ring,
        pids: a.pids.clone(),
        cgroups: a.cgroups.clone(),
        ports: a.ports.clone(),
        hooks: a.hooks,
        // Kernel-side socket state: both ends of local connections and idle sockets count,
        // so room for several per tracked connection (allocated as used, not up front).
        max_sockets: u32::try_from(a.max_connections.saturating_mul(4))
            .unwrap_or(u32::MAX)
            .clamp(1 << 16, 1 << 22),
    })
}

/// The rung of each data hook, as the statistics records name them.
pub fn hook_rungs(plan: &capture::hooks::Plan) -> crate::model::HookRungs {
    let name = |h: capture::Hook| plan.get(h).rung.map(|r| r.as_str().to_string());
    crate::model::HookRungs {
        send: name(capture::Hook::Send),
        recv: name(capture::Hook::Recv),
        send_start: name(capture::Hook::SendStart),
    }
}

/// Who the ends of records are: Kubernetes metadata from whatever the node offers, or
/// container ids only with `--no-k8s`.
pub fn attribution(a: &K8sArgs) -> anyhow::Result<Box<dyn Attribution>> {
    if a.no_k8s {
        return Ok(Box::new(ProcResolver::new("/proc")));
    }
    let cfg = K8sConfig {
        host_root: a.host_root.clone(),
        cri_sockets: a.cri_sockets.clone(),
        containerd_state_dir: a.containerd_state.clone(),
        kubelet_pods_dir: a.kubelet_pods_dir.clone(),
        kubeconfig: a.kubeconfig.clone(),
        api_server: a.api_server.clone(),
        cluster_name: a.cluster.clone(),
        node_name: a.node_name.clone(),
        ..K8sConfig::default()
    };
    Ok(Box::new(K8sAttribution::start(cfg)?))
}

/// Engine settings from the command line and this host.
pub fn engine_options(a: &CaptureArgs) -> EngineOptions {
    EngineOptions {
        keep_query: a.keep_query,
        max_connections: a.max_connections.max(1),
        max_parser_bytes: (a.max_parser_memory as usize) << 20,
        ephemeral_ports: ephemeral_ports().unwrap_or((32768, 60999)),
        ..EngineOptions::default()
    }
}

fn ephemeral_ports() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// How a live capture runs.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Stop after this many seconds (None: until SIGINT/SIGTERM or the stop flag).
    pub duration: Option<f64>,
    /// Seconds between `stats` records (0: only at exit).
    pub stats_interval: f64,
    /// Where the records go, for the start-up log line.
    pub what: String,
}

/// What a finished capture counted.
#[derive(Debug, Clone)]
pub struct LiveSummary {
    pub elapsed: Duration,
    pub kernel: KernelCounters,
    pub user: UserCounters,
    pub loss: LossCounters,
}

struct Pump<'a> {
    engine: Engine,
    sink: &'a mut dyn Sink,
    /// The first sink error; it stops the capture (through `stop`).
    error: Option<anyhow::Error>,
    stop: &'a AtomicBool,
    stats_every_ns: u64,
    last_stats_ns: u64,
    last_counters: KernelCounters,
    tls: Option<capture::TlsStatsSource>,
}

impl Pump<'_> {
    /// Records go nowhere after the sink failed: the capture is stopping.
    fn failed(&mut self, e: anyhow::Error) {
        if self.error.is_none() {
            if e.is::<OutputClosed>() {
                tracing::info!("the output's reader has gone: stopping");
            } else {
                tracing::error!("{e:#}: stopping");
            }
            self.error = Some(e);
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn drain(&mut self) {
        let mut err = None;
        for rec in self.engine.out.drain(..) {
            if self.error.is_none() && err.is_none() {
                err = self.sink.write(&rec).err();
            }
        }
        if let Some(e) = err {
            self.failed(e);
        }
    }

    fn write_stats(&mut self, now: u64) {
        let mut st = self.engine.stats(now, &self.last_counters);
        st.tls_probes = self.tls.as_ref().map(capture::TlsStatsSource::get);
        if self.error.is_none() {
            if let Err(e) = self.sink.write(&Record::Stats(st)) {
                self.failed(e);
            }
        }
    }
}

impl EventHandler for Pump<'_> {
    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Data(d) => self.engine.on_data(&d),
            Event::Conn(c) => self.engine.on_conn(&c),
        }
        self.drain();
    }

    fn on_bad_record(&mut self, err: DecodeError) {
        tracing::debug!("undecodable ring-buffer record: {err:?}");
        self.engine.bad_record();
    }

    fn on_tick(&mut self, now: u64, counters: &KernelCounters) {
        self.last_counters = *counters;
        self.engine.tick(now);
        self.drain();
        if self.stats_every_ns > 0 && now.saturating_sub(self.last_stats_ns) >= self.stats_every_ns
        {
            self.last_stats_ns = now;
            self.write_stats(now);
        }
        if self.error.is_none() {
            if let Err(e) = self.sink.flush() {
                self.failed(e);
            }
        }
    }
}

/// Capture until SIGINT/SIGTERM (or `opts.duration`), writing every record to `sink`;
/// at the end every open connection and a final `stats` record are written and the sink
/// flushed. A sink error stops the capture at once: the output's reader having gone
/// (`OutputClosed`, a closed pipe) ends it successfully, any other error is returned.
pub fn run(
    capture_args: &CaptureArgs,
    k8s: &K8sArgs,
    opts: &LiveOptions,
    sink: &mut dyn Sink,
) -> anyhow::Result<LiveSummary> {
    let stop = super::stop_flag()?;
    run_until(capture_args, k8s, opts, sink, &stop)
}

/// [`run`] with a caller-owned stop flag (the dashboard sets it on `q`).
pub fn run_until(
    capture_args: &CaptureArgs,
    k8s: &K8sArgs,
    opts: &LiveOptions,
    sink: &mut dyn Sink,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<LiveSummary> {
    let cfg = capture_config(capture_args)?;
    let t0 = Instant::now();
    let cap = Capture::start(&cfg)?;
    tracing::info!(
        "capturing: attached in {} ms, {}",
        t0.elapsed().as_millis(),
        opts.what
    );
    if let Some(secs) = opts.duration {
        let stop = stop.clone();
        let d = Duration::from_secs_f64(secs.max(0.0));
        std::thread::spawn(move || {
            std::thread::sleep(d);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let now = capture::monotonic_ns();
    let mut pump = Pump {
        engine: Engine::new(
            engine_options(capture_args),
            Clock::now(),
            Some(attribution(k8s)?),
            now,
        ),
        sink,
        error: None,
        stop,
        stats_every_ns: (opts.stats_interval.max(0.0) * 1e9) as u64,
        last_stats_ns: now,
        last_counters: KernelCounters::default(),
        tls: cap.tls_stats_source(),
    };
    pump.engine.set_hooks(hook_rungs(cap.hook_plan()));
    let tick = Duration::from_millis(if opts.stats_interval > 0.0 && opts.stats_interval < 0.5 {
        100
    } else {
        500
    });
    cap.run(stop, tick, &mut pump)?;

    let now = capture::monotonic_ns();
    pump.last_counters = cap.counters();
    pump.engine.finish_all(now);
    pump.drain();
    pump.write_stats(now);
    let res = match pump.error.take() {
        Some(e) => Err(e),
        None => pump.sink.flush(),
    };
    if let Err(e) = res {
        if !e.is::<OutputClosed>() {
            return Err(e);
        }
    }
    Ok(LiveSummary {
        elapsed: t0.elapsed(),
        kernel: pump.last_counters,
        user: pump.engine.user_counters(),
        loss: pump.engine.loss_counters(),
    })
}
