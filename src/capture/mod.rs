//! Kernel capture: load and attach the BPF programs, drain the ring buffer, decode events.
//!
//! TLS: uprobes on TLS libraries and Go binaries (see `tls`) add plaintext events; they
//! are on unless `K8S_ALOG_TLS=0`. `K8S_ALOG_DEBUG_EVENTS=PATH` logs every event (`debug`).

pub mod debug;
pub mod drain;
pub mod event;
pub mod hooks;
pub mod tls;
mod unprobe;

use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBufferBuilder};

pub use hooks::{Hook, HookMode, Rung};

pub use event::{
    comm_str, ConnEvent, ConnFlags, ConnKind, DataEvent, DecodeError, Event, ExecEvent, Record,
    Syscall,
};
pub use tls::{TlsAttachStats, TlsStatsSource};

pub mod skel {
    //! The generated libbpf-rs skeleton (see build.rs).
    #![allow(
        clippy::all,
        clippy::pedantic,
        missing_docs,
        non_camel_case_types,
        dead_code
    )]
    include!(concat!(env!("OUT_DIR"), "/alog.skel.rs"));
}

use skel::{types, AlogSkel, AlogSkelBuilder};

/// Largest payload prefix one event can carry (`ALOG_MAX_CAPTURE` in alog.h).
pub const MAX_CAPTURE: u32 = types::alog_limits::ALOG_MAX_CAPTURE.0;

/// What to capture and how much room to give it.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Payload prefix copied per socket call, bytes (at most MAX_CAPTURE).
    pub capture_bytes: u32,
    /// Ring-buffer size, bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Only these processes (tgids), if not empty.
    pub pids: Vec<u32>,
    /// Only these cgroup v2 ids, if not empty.
    pub cgroups: Vec<u64>,
    /// Only connections with one of these ports at either end, if not empty.
    pub ports: Vec<u16>,
    /// How the data hooks are chosen (see `hooks`).
    pub hooks: HookMode,
    /// Sockets the kernel side tracks at once; beyond it new ones are counted in
    /// `storage_fail` and not followed.
    pub max_sockets: u32,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            capture_bytes: 4096,
            ring_bytes: 16 << 20,
            pids: Vec::new(),
            cgroups: Vec::new(),
            ports: Vec::new(),
            hooks: HookMode::Auto,
            max_sockets: 1 << 20,
        }
    }
}

/// Why capture could not start. Each maps to its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not permitted to load BPF programs: run as root (or with CAP_BPF and CAP_PERFMON)")]
    NotPermitted,
    #[error("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): a kernel >= 5.15 built with CONFIG_DEBUG_INFO_BTF=y is required")]
    NoBtf,
    #[error("the kernel refused {what}: {source} (kernel >= 5.15 with BTF is required; run `k8s-alog doctor`)")]
    Refused {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("invalid capture setting: {0}")]
    Config(String),
    #[error("{0} (run `k8s-alog doctor`)")]
    NoHook(String),
}

impl CaptureError {
    fn refused(what: impl Into<String>, source: libbpf_rs::Error) -> Self {
        let what = what.into();
        let perm = matches!(source.kind(), libbpf_rs::ErrorKind::PermissionDenied);
        if perm && !is_privileged() {
            return Self::NotPermitted;
        }
        Self::Refused { what, source }
    }
}

fn is_privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Receives everything capture produces, on the polling thread.
pub trait EventHandler {
    /// One decoded record from the kernel.
    fn on_event(&mut self, ev: Event<'_>);
    /// A record that could not be decoded (counted, never fatal).
    fn on_bad_record(&mut self, err: DecodeError);
    /// Called about every `tick` with fresh kernel counters.
    fn on_tick(&mut self, now_ns: u64, counters: &KernelCounters);
}

/// Loaded and attached BPF programs.
pub struct Capture {
    skel: AlogSkel<'static>,
    _links: Vec<Link>,
    plan: hooks::Plan,
    attached_at: Instant,
    /// TLS probes (None when disabled with K8S_ALOG_TLS=0).
    tls: RefCell<Option<tls::TlsProbes>>,
    /// None when TLS probes were not started.
    tls_stats: Option<TlsStatsSource>,
    debug: RefCell<Option<debug::DebugLog>>,
    drains_bounded: Cell<u64>,
}

/// The environment variable that turns TLS probes off ("0", "off", "false", "no").
pub const TLS_ENV: &str = "K8S_ALOG_TLS";

/// The environment variable that makes TLS probes one perf-event uprobe each even where
/// the kernel has `uprobe_multi` links ("0", "off", "false", "no").
pub const UPROBE_MULTI_ENV: &str = "K8S_ALOG_UPROBE_MULTI";

/// Whether TLS probes are made as `uprobe_multi` links: where the kernel has them (6.6
/// and later) unless turned off.
fn uprobe_multi() -> bool {
    switched_on(UPROBE_MULTI_ENV) && unprobe::uprobe_multi_works()
}

fn tls_enabled() -> bool {
    switched_on(TLS_ENV)
}

/// An on/off environment variable: on unless set to "0", "off", "false" or "no".
fn switched_on(var: &str) -> bool {
    match std::env::var(var) {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        ),
        Err(_) => true,
    }
}

impl Capture {
    /// Open, load and attach. Filters are applied in the kernel.
    pub fn start(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        Self::start_inner(cfg, tls_enabled())
    }

    /// [`Capture::start`] without the TLS probes (`doctor` checks the core programs).
    pub fn start_without_tls(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        Self::start_inner(cfg, false)
    }

    fn start_inner(cfg: &CaptureConfig, tls: bool) -> Result<Self, CaptureError> {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(CaptureError::NoBtf);
        }
        if cfg.capture_bytes > MAX_CAPTURE {
            return Err(CaptureError::Config(format!(
                "capture size {} is above the maximum {MAX_CAPTURE}",
                cfg.capture_bytes
            )));
        }
        if !cfg.ring_bytes.is_power_of_two() || cfg.ring_bytes < 4096 {
            return Err(CaptureError::Config(format!(
                "ring-buffer size {} must be a power of two of at least 4096",
                cfg.ring_bytes
            )));
        }
        bump_memlock();
        let kernel = KernelBtf::open();
        let multi = tls && uprobe_multi();
        let mut refused = hooks::Refusals::default();
        let mut skipped: Vec<String> = Vec::new();
        // Each round loads the programs of the current plan; a program the kernel refuses
        // (at load or attach) takes its rung off the ladder for its hooks, and the next
        // round climbs down. Four rungs and three hooks bound the rounds.
        let mut round = 0;
        let (skel, mut links, plan) = loop {
            round += 1;
            let plan = hooks::plan(&kernel, cfg.hooks, &refused).map_err(CaptureError::NoHook)?;
            match load_and_attach(cfg, &kernel, &plan, &skipped, multi) {
                Ok((skel, links)) => break (skel, links, plan),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Refused {
                    blamed,
                    why,
                    source,
                    whole_rung,
                }) => {
                    let mut any = false;
                    if whole_rung {
                        if let Some((_, r)) = blamed.iter().flat_map(|p| plan.hooks_of(p)).next() {
                            for h in Hook::ALL {
                                refused.add(h, r, why.clone());
                            }
                            any = true;
                        }
                    }
                    for prog in &blamed {
                        let optional = plan
                            .programs()
                            .iter()
                            .any(|(_, _, q)| q.name == prog && q.optional);
                        if optional && !skipped.contains(prog) {
                            // An extra of its rung (tcp_sendpage): the rung stands without it.
                            tracing::info!("{prog} left out: {why}");
                            skipped.push(prog.clone());
                            any = true;
                            continue;
                        }
                        for (h, r) in plan.hooks_of(prog) {
                            tracing::debug!("{} hook: {r} refused: {why}", h.as_str());
                            refused.add(h, r, why.clone());
                            any = true;
                        }
                    }
                    if !any || round > 12 {
                        return Err(source);
                    }
                }
            }
        };
        for h in Hook::ALL {
            let c = plan.get(h);
            if c.passed_over.is_empty() {
                tracing::debug!("{} hook: {}", h.as_str(), c.describe());
            } else {
                tracing::info!("{} hook: {}", h.as_str(), c.describe());
            }
        }
        let mut debug_log = debug::DebugLog::from_env();
        let mut tls_probes = None;
        let mut tls_stats = None;
        if tls {
            // Exec notifications first, so that no process started during the scan
            // below goes unseen.
            match skel.progs.on_exec.attach() {
                Ok(l) => links.push(l),
                Err(e) => tracing::warn!(
                    "TLS: cannot follow new processes (sched_process_exec: {e}): only TLS code present at start is probed"
                ),
            }
            tracing::debug!(
                "TLS probes as {}",
                if multi {
                    "uprobe_multi links"
                } else {
                    "perf-event uprobes"
                }
            );
            let probes = tls::TlsProbes::start(&skel, &cfg.pids, multi, |n| {
                if let Some(d) = debug_log.as_mut() {
                    d.attach(&n);
                }
            });
            tls_stats = Some(probes.stats_source());
            tls_probes = Some(probes);
        } else if tls_enabled() {
            tracing::debug!("TLS probes not started");
        } else {
            tracing::info!("TLS probes off ({TLS_ENV})");
        }
        tracing::debug!("attached {} programs", links.len());
        Ok(Self {
            skel,
            _links: links,
            plan,
            attached_at: Instant::now(),
            tls: RefCell::new(tls_probes),
            tls_stats,
            debug: RefCell::new(debug_log),
            drains_bounded: Cell::new(0),
        })
    }

    /// The rung each data hook runs on, and why.
    pub fn hook_plan(&self) -> &hooks::Plan {
        &self.plan
    }

    /// TLS probe attachment counters now.
    pub fn tls_stats(&self) -> TlsAttachStats {
        self.tls_stats
            .as_ref()
            .map(TlsStatsSource::get)
            .unwrap_or_default()
    }

    /// A handle to read TLS probe counters from elsewhere (e.g. an event handler's
    /// `on_tick`, while `run` borrows the capture); None when TLS probes are off.
    pub fn tls_stats_source(&self) -> Option<TlsStatsSource> {
        self.tls_stats.clone()
    }

    /// When the programs were attached.
    pub fn attached_at(&self) -> Instant {
        self.attached_at
    }

    /// Read the in-kernel counters, summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        KernelCounters {
            ring_drains_bounded: self.drains_bounded.get(),
            ..read_counters(&self.skel)
        }
    }

    /// Drain the ring buffer into `handler` until `stop` is set, then drain what is left.
    pub fn run(
        &self,
        stop: &AtomicBool,
        tick: Duration,
        handler: &mut dyn EventHandler,
    ) -> Result<(), CaptureError> {
        let handler = RefCell::new(handler);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.events, |data: &[u8]| {
                let mut h = handler.borrow_mut();
                match event::decode_record(data) {
                    Ok(Record::Event(ev)) => {
                        if let Some(d) = self.debug.borrow_mut().as_mut() {
                            d.event(&ev);
                        }
                        h.on_event(ev)
                    }
                    Ok(Record::Exec(x)) => {
                        if let Some(d) = self.debug.borrow_mut().as_mut() {
                            d.exec(&x);
                        }
                        if let Some(t) = self.tls.borrow_mut().as_mut() {
                            t.on_exec(&x);
                        }
                    }
                    Err(e) => h.on_bad_record(e),
                }
                0
            })
            .map_err(|e| CaptureError::refused("the ring buffer", e))?;
        let rb = builder
            .build()
            .map_err(|e| CaptureError::refused("the ring buffer", e))?;
        let wait_ms: i32 = 10;
        let epfd = rb.epoll_fd();
        let consume = |n: usize| rb.consume_raw_n(n);
        let mut backlog = false;
        let mut last_tick = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            // Records are submitted without wake-ups: the wait ends on the timer or when
            // the ring is a quarter full. With records left by the last drain, no wait.
            if !backlog && !stopping {
                wait_readable(epfd, wait_ms)
                    .map_err(|e| CaptureError::refused("waiting on the ring buffer", e.into()))?;
            }
            let bound = if stopping {
                drain::DrainBound::FINAL
            } else {
                drain::DrainBound::STEADY
            };
            let drained = drain::drain(bound, consume, Instant::now).map_err(|e| {
                CaptureError::refused(
                    "reading the ring buffer",
                    libbpf_rs::Error::from_raw_os_error(-e),
                )
            })?;
            backlog = matches!(drained, drain::Drained::Bounded(_));
            if backlog {
                self.drains_bounded.set(self.drains_bounded.get() + 1);
            }
            // New TLS code found by the worker: attached here, a bounded stretch at a time.
            if let Some(t) = self.tls.borrow_mut().as_mut() {
                t.attach_pending(&self.skel, |n| {
                    if let Some(d) = self.debug.borrow_mut().as_mut() {
                        d.attach(&n);
                    }
                });
            }
            if stopping || last_tick.elapsed() >= tick {
                last_tick = Instant::now();
                let c = self.counters();
                handler.borrow_mut().on_tick(monotonic_ns(), &c);
                if let Some(d) = self.debug.borrow_mut().as_mut() {
                    d.flush();
                }
            }
            if stopping {
                break;
            }
        }
        Ok(())
    }
}

/// Wait up to `ms` for the ring buffer's epoll descriptor to be readable. A signal ends
/// the wait early (the stop flag is checked next).
fn wait_readable(epfd: i32, ms: i32) -> Result<(), std::io::Error> {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: one valid, writable epoll_event for at most one event.
    let r = unsafe { libc::epoll_wait(epfd, &mut ev, 1, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Every slot of `enum alog_counter` (alog.h) and the field of `KernelCounters` it fills
/// (a unit test checks that none is left out).
/// The field of `KernelCounters` one counter slot fills.
type CounterField = fn(&mut KernelCounters) -> &mut u64;

const COUNTERS: &[(types::alog_counter, CounterField)] = {
    use types::alog_counter as C;
    &[
        (C::ALOG_CNT_DATA_EVENTS, |k| &mut k.data_events),
        (C::ALOG_CNT_CONN_EVENTS, |k| &mut k.conn_events),
        (C::ALOG_CNT_DROP_DATA, |k| &mut k.drop_data_ringbuf),
        (C::ALOG_CNT_DROP_CONN, |k| &mut k.drop_conn_ringbuf),
        (C::ALOG_CNT_STORAGE_FAIL, |k| &mut k.storage_fail),
        (C::ALOG_CNT_FILTERED, |k| &mut k.filtered),
        (C::ALOG_CNT_PAYLOAD_SKIPPED, |k| &mut k.payload_skipped),
        (C::ALOG_CNT_READ_FAULT, |k| &mut k.read_fault),
        (C::ALOG_CNT_SELF, |k| &mut k.self_calls),
        (C::ALOG_CNT_WAKEUPS, |k| &mut k.wakeups),
        (C::ALOG_CNT_TLS_PLAINTEXT, |k| &mut k.tls_plaintext),
        (C::ALOG_CNT_TLS_UNATTRIBUTED, |k| &mut k.tls_unattributed),
        (C::ALOG_CNT_DROP_EXEC, |k| &mut k.drop_exec_ringbuf),
        (C::ALOG_CNT_LATE_UNTRACKED, |k| &mut k.late_untracked),
    ]
};

fn read_counters(skel: &AlogSkel<'_>) -> KernelCounters {
    let get = |idx: types::alog_counter| -> u64 {
        let key = idx.0.to_ne_bytes();
        match skel.maps.counters.lookup_percpu(&key, MapFlags::ANY) {
            Ok(Some(per_cpu)) => per_cpu
                .iter()
                .map(|v| {
                    let mut b = [0u8; 8];
                    let n = v.len().min(8);
                    b[..n].copy_from_slice(&v[..n]);
                    u64::from_ne_bytes(b)
                })
                .sum(),
            _ => 0,
        }
    };
    // ring_drains_bounded is kept in user space; the caller fills it in.
    let mut k = KernelCounters::default();
    for (slot, field) in COUNTERS {
        *field(&mut k) = get(*slot);
    }
    k
}

/// Why one round of loading did not give a running capture.
enum Attempt {
    /// Nothing another rung could change (privilege, settings, a core program).
    Fatal(CaptureError),
    /// Rung programs were refused: these, for this reason.
    Refused {
        blamed: Vec<String>,
        why: String,
        source: CaptureError,
        /// Not permitted at all (lockdown refusing trampolines): the rung is gone for
        /// every hook, not only for the blamed programs'.
        whole_rung: bool,
    },
}

/// The kernel's BTF, asked which tracepoints and functions exist.
struct KernelBtf {
    btf: Option<libbpf_rs::btf::Btf<'static>>,
}

impl KernelBtf {
    fn open() -> Self {
        let btf = match libbpf_rs::btf::Btf::from_vmlinux() {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!("cannot read the kernel's BTF ({e}): every hook will be tried");
                None
            }
        };
        Self { btf }
    }
}

impl hooks::KernelHas for KernelBtf {
    fn tracepoint(&self, name: &str) -> bool {
        use libbpf_rs::btf::types::Typedef;
        self.btf.as_ref().is_none_or(|b| {
            b.type_by_name::<Typedef<'_>>(&format!("btf_trace_{name}"))
                .is_some()
        })
    }

    fn function(&self, name: &str) -> bool {
        use libbpf_rs::btf::types::Func;
        self.btf
            .as_ref()
            .is_none_or(|b| b.type_by_name::<Func<'_>>(name).is_some())
    }
}

/// libbpf's messages during one load, to learn which program the kernel refused.
static LOAD_LOG: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
type PrintFn = Option<(libbpf_rs::PrintLevel, libbpf_rs::PrintCallback)>;
static PREVIOUS_PRINT: std::sync::Mutex<PrintFn> = std::sync::Mutex::new(None);

fn collecting_print(level: libbpf_rs::PrintLevel, msg: String) {
    if let Ok(mut log) = LOAD_LOG.lock() {
        if log.len() < 10_000 {
            log.push(msg.clone());
        }
    }
    if let Ok(prev) = PREVIOUS_PRINT.lock() {
        if let Some((_, f)) = *prev {
            f(level, msg);
        }
    }
}

/// Run `f` with libbpf's messages collected; returns them with f's result.
fn with_libbpf_log<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    if let Ok(mut log) = LOAD_LOG.lock() {
        log.clear();
    }
    let prev = libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, collecting_print)));
    if let Ok(mut p) = PREVIOUS_PRINT.lock() {
        *p = prev;
    }
    let out = f();
    let prev = PREVIOUS_PRINT.lock().ok().and_then(|mut p| p.take());
    libbpf_rs::set_print(prev);
    let log = LOAD_LOG
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    (out, log)
}

/// The lines of a verifier or libbpf log worth showing for a refused program.
fn refusal_reason(log: &[String], prog: &str, err: &libbpf_rs::Error) -> String {
    let key = format!("prog '{prog}'");
    let line = log
        .iter()
        .filter(|l| l.contains(&key) && l.contains("fail"))
        .map(|l| l.trim().trim_start_matches("libbpf: ").to_string())
        .find(|l| !l.contains("BEGIN PROG LOAD LOG") && !l.contains("END PROG LOAD LOG"));
    match line {
        Some(l) => l,
        None => err.to_string(),
    }
}

/// One round: open the object, keep the core and the plan's programs, load, attach.
fn load_and_attach(
    cfg: &CaptureConfig,
    kernel: &KernelBtf,
    plan: &hooks::Plan,
    skipped: &[String],
    multi: bool,
) -> Result<(AlogSkel<'static>, Vec<Link>), Attempt> {
    let fatal = Attempt::Fatal;
    // The skeleton borrows its object storage for as long as it lives; capture lives
    // for the whole process, so the storage is leaked once per round (a few rounds at most).
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = AlogSkelBuilder::default()
        .open(storage)
        .map_err(|e| fatal(CaptureError::refused("opening the BPF object", e)))?;
    let wanted = plan.programs();
    let on = |h: Hook| plan.get(h).rung == Some(Rung::Syscall);
    {
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| fatal(CaptureError::Config("BPF object has no rodata".into())))?;
        ro.self_tgid = std::process::id();
        ro.capture_bytes = cfg.capture_bytes;
        // Wake the reader early once a quarter of the ring is in use; otherwise it
        // drains on its own short timer and the kernel never pays for a wake-up.
        ro.wakeup_bytes = u64::from(cfg.ring_bytes / 4);
        ro.filter_pid = !cfg.pids.is_empty();
        ro.filter_cgroup = !cfg.cgroups.is_empty();
        ro.filter_port = !cfg.ports.is_empty();
        ro.sc_send = on(Hook::Send);
        ro.sc_recv = on(Hook::Recv);
    }
    open.maps
        .events
        .set_max_entries(cfg.ring_bytes)
        .map_err(|e| fatal(CaptureError::refused("sizing the ring buffer", e)))?;
    open.maps
        .conns
        .set_max_entries(cfg.max_sockets.max(1024))
        .map_err(|e| fatal(CaptureError::refused("sizing the socket table", e)))?;
    let rung_progs = hooks::all_rung_programs();
    for mut p in open.open_object_mut().progs_mut() {
        let name = p.name().to_string_lossy().into_owned();
        if multi && p.section().to_string_lossy().starts_with("u") {
            // The TLS probes (SEC "uprobe"/"uretprobe"), linked many offsets at a time.
            p.set_attach_type(libbpf_rs::ProgramAttachType::TraceUprobeMulti);
        }
        if !rung_progs.contains(name.as_str()) {
            continue;
        }
        let load = !skipped.contains(&name)
            && wanted.iter().any(|(_, _, q)| {
                q.name == name && (!q.optional || hooks::target_present(kernel, q))
            });
        p.set_autoload(load);
    }
    let (loaded, log) = with_libbpf_log(|| open.load());
    let skel = match loaded {
        Ok(s) => s,
        Err(e) => {
            let blamed: Vec<String> = hooks::blamed_programs(&log)
                .into_iter()
                .filter(|p| rung_progs.contains(p.as_str()))
                .collect();
            let why = match blamed.first() {
                Some(p) => format!("refused at load: {}", refusal_reason(&log, p, &e)),
                None => e.to_string(),
            };
            let source = CaptureError::refused("loading the BPF programs", e);
            if blamed.is_empty() || matches!(source, CaptureError::NotPermitted) {
                return Err(fatal(source));
            }
            let whole_rung = matches!(
                &source,
                CaptureError::Refused { source, .. }
                    if source.kind() == libbpf_rs::ErrorKind::PermissionDenied
            );
            return Err(Attempt::Refused {
                blamed,
                why,
                source,
                whole_rung,
            });
        }
    };
    let one = [1u8];
    for pid in &cfg.pids {
        skel.maps
            .pid_filter
            .update(&pid.to_ne_bytes(), &one, MapFlags::ANY)
            .map_err(|e| fatal(CaptureError::refused("the pid filter", e)))?;
    }
    for cg in &cfg.cgroups {
        skel.maps
            .cgroup_filter
            .update(&cg.to_ne_bytes(), &one, MapFlags::ANY)
            .map_err(|e| fatal(CaptureError::refused("the cgroup filter", e)))?;
    }
    for port in &cfg.ports {
        skel.maps
            .port_filter
            .update(&port.to_ne_bytes(), &one, MapFlags::ANY)
            .map_err(|e| fatal(CaptureError::refused("the port filter", e)))?;
    }
    let mut links = Vec::new();
    // Lifecycle first, so that no connection's data arrives before its opening.
    let core = [
        ("tp_btf/inet_sock_set_state", &skel.progs.on_state),
        ("tp_btf/tcp_send_reset", &skel.progs.on_send_reset),
        ("tp_btf/tcp_receive_reset", &skel.progs.on_receive_reset),
    ];
    for (name, prog) in core {
        let link = prog
            .attach()
            .map_err(|e| fatal(CaptureError::refused(format!("attaching {name}"), e)))?;
        links.push(link);
    }
    // Start-of-send hooks before the data hooks, sends before receives.
    let mut order = wanted.clone();
    order.sort_by_key(|(h, _, _)| match h {
        Hook::SendStart => 0,
        Hook::Send => 1,
        Hook::Recv => 2,
    });
    for (_, _, q) in order {
        let Some(p) = skel
            .object()
            .progs_mut()
            .find(|p| p.name().to_string_lossy() == q.name)
        else {
            continue;
        };
        if !p.autoload() {
            continue;
        }
        match p.attach() {
            Ok(l) => links.push(l),
            Err(e) => {
                let why = format!("attach failed: {e}");
                let source = CaptureError::refused(format!("attaching {}", q.name), e);
                return Err(Attempt::Refused {
                    blamed: vec![q.name.to_string()],
                    why,
                    source,
                    whole_rung: false,
                });
            }
        }
    }
    Ok((skel, links))
}

/// Raise RLIMIT_MEMLOCK for kernels that still charge BPF maps against it (< 5.11).
fn bump_memlock() {
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; failure is harmless on new kernels.
    unsafe {
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl);
    }
}

/// The clocks and counters live with the records they appear in.
pub use crate::model::clock::{monotonic_ns, realtime_ns};
pub use crate::model::counters::KernelCounters;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter slot alog.h declares is read into `KernelCounters`, each into a
    /// field of its own.
    #[test]
    fn every_kernel_counter_is_read() {
        let mut declared: Vec<u32> = include_str!("../bpf/alog.h")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ALOG_CNT_"))
            .filter(|l| !l.starts_with("MAX"))
            .map(|l| {
                let v = l.split_once('=').expect("ALOG_CNT_x = n").1;
                let v = v.split(',').next().unwrap().trim();
                v.parse().unwrap_or_else(|e| panic!("{l}: {e}"))
            })
            .collect();
        declared.sort_unstable();
        assert!(declared.len() >= 14, "{declared:?}");
        let mut read: Vec<u32> = COUNTERS.iter().map(|(c, _)| c.0).collect();
        read.sort_unstable();
        assert_eq!(
            read, declared,
            "slots of enum alog_counter not read (or read twice)"
        );
        let mut k = KernelCounters::default();
        for (i, (_, field)) in COUNTERS.iter().enumerate() {
            *field(&mut k) = i as u64 + 1;
        }
        let json = serde_json::to_value(k).unwrap();
        let filled = json
            .as_object()
            .unwrap()
            .values()
            .filter(|v| v.as_u64() != Some(0))
            .count();
        assert_eq!(filled, COUNTERS.len(), "two slots fill one field: {json}");
    }
}
