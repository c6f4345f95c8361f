//! Kernel capture: load and attach the BPF programs, drain the ring buffer, decode events.
//!
//! TLS: uprobes on TLS libraries and Go binaries (see `tls`) add plaintext events; they
//! are on unless `K8S_ALOG_TLS=0`. `K8S_ALOG_DEBUG_EVENTS=PATH` logs every event (`debug`).

pub mod debug;
pub mod event;
pub mod tls;

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBufferBuilder};

pub use event::{
    comm_str, ConnEvent, ConnKind, DataEvent, DecodeError, Event, ExecEvent, Record, Syscall,
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

/// Largest payload prefix one event can carry (ALOG_MAX_CAPTURE in alog.h).
pub const MAX_CAPTURE: u32 = 8192;

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
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            capture_bytes: 4096,
            ring_bytes: 16 << 20,
            pids: Vec::new(),
            cgroups: Vec::new(),
            ports: Vec::new(),
        }
    }
}

/// Why capture could not start. Each maps to its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not permitted to load BPF programs: run as root (or with CAP_BPF and CAP_PERFMON)")]
    NotPermitted,
    #[error("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): a kernel >= 5.8 built with CONFIG_DEBUG_INFO_BTF=y is required")]
    NoBtf,
    #[error("the kernel refused {what}: {source} (kernel >= 5.8 with BTF is required; run `k8s-alog doctor`)")]
    Refused {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("invalid capture setting: {0}")]
    Config(String),
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

/// Counters kept by the BPF programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    pub data_events: u64,
    pub conn_events: u64,
    pub drop_data_ringbuf: u64,
    pub drop_conn_ringbuf: u64,
    pub storage_fail: u64,
    pub filtered: u64,
    pub payload_skipped: u64,
    pub read_fault: u64,
    pub self_calls: u64,
    pub wakeups: u64,
    /// TLS plaintext events written (also counted in `data_events`).
    pub tls_plaintext: u64,
    /// TLS plaintext whose socket could not be found: counted, event dropped.
    pub tls_unattributed: u64,
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
    attached_at: Instant,
    /// TLS probes (None when disabled with K8S_ALOG_TLS=0).
    tls: RefCell<Option<tls::TlsProbes>>,
    tls_stats: TlsStatsSource,
    debug: RefCell<Option<debug::DebugLog>>,
}

/// The environment variable that turns TLS probes off ("0", "off", "false", "no").
pub const TLS_ENV: &str = "K8S_ALOG_TLS";

fn tls_enabled() -> bool {
    match std::env::var(TLS_ENV) {
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
        // The skeleton borrows its object storage for as long as it lives; capture lives
        // for the whole process, so the storage is leaked once.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = AlogSkelBuilder::default()
            .open(storage)
            .map_err(|e| CaptureError::refused("opening the BPF object", e))?;
        {
            let ro = open
                .maps
                .rodata_data
                .as_deref_mut()
                .ok_or_else(|| CaptureError::Config("BPF object has no rodata".into()))?;
            ro.self_tgid = std::process::id();
            ro.capture_bytes = cfg.capture_bytes;
            // Wake the reader early once a quarter of the ring is in use; otherwise it
            // drains on its own short timer and the kernel never pays for a wake-up.
            ro.wakeup_bytes = u64::from(cfg.ring_bytes / 4);
            ro.filter_pid = !cfg.pids.is_empty();
            ro.filter_cgroup = !cfg.cgroups.is_empty();
            ro.filter_port = !cfg.ports.is_empty();
        }
        open.maps
            .events
            .set_max_entries(cfg.ring_bytes)
            .map_err(|e| CaptureError::refused("sizing the ring buffer", e))?;
        let skel = open
            .load()
            .map_err(|e| CaptureError::refused("loading the BPF programs", e))?;
        let one = [1u8];
        for pid in &cfg.pids {
            skel.maps
                .pid_filter
                .update(&pid.to_ne_bytes(), &one, MapFlags::ANY)
                .map_err(|e| CaptureError::refused("the pid filter", e))?;
        }
        for cg in &cfg.cgroups {
            skel.maps
                .cgroup_filter
                .update(&cg.to_ne_bytes(), &one, MapFlags::ANY)
                .map_err(|e| CaptureError::refused("the cgroup filter", e))?;
        }
        for port in &cfg.ports {
            skel.maps
                .port_filter
                .update(&port.to_ne_bytes(), &one, MapFlags::ANY)
                .map_err(|e| CaptureError::refused("the port filter", e))?;
        }
        let mut links = Vec::new();
        // Lifecycle first, so that no connection's data arrives before its opening.
        let progs = [
            ("tp_btf/inet_sock_set_state", &skel.progs.on_state),
            ("tp_btf/tcp_send_reset", &skel.progs.on_send_reset),
            ("tp_btf/tcp_receive_reset", &skel.progs.on_receive_reset),
            ("tp_btf/tcp_sendmsg_locked", &skel.progs.on_sendmsg_locked),
            ("tp_btf/sock_send_length", &skel.progs.on_send),
            ("tp_btf/sock_recv_length", &skel.progs.on_recv),
        ];
        for (name, prog) in progs {
            let link = prog
                .attach()
                .map_err(|e| CaptureError::refused(format!("attaching {name}"), e))?;
            links.push(link);
        }
        let mut debug_log = debug::DebugLog::from_env();
        let mut tls_probes = None;
        let mut tls_stats = TlsStatsSource::default();
        if tls {
            // Exec notifications first, so that no process started during the scan
            // below goes unseen.
            match skel.progs.on_exec.attach() {
                Ok(l) => links.push(l),
                Err(e) => tracing::warn!(
                    "TLS: cannot follow new processes (sched_process_exec: {e}): only TLS code present at start is probed"
                ),
            }
            let probes = tls::TlsProbes::start(&skel, &cfg.pids, |n| {
                if let Some(d) = debug_log.as_mut() {
                    d.attach(&n);
                }
            });
            tls_stats = probes.stats_source();
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
            attached_at: Instant::now(),
            tls: RefCell::new(tls_probes),
            tls_stats,
            debug: RefCell::new(debug_log),
        })
    }

    /// TLS probe attachment counters now.
    pub fn tls_stats(&self) -> TlsAttachStats {
        self.tls_stats.get()
    }

    /// A handle to read TLS probe counters from elsewhere (e.g. an event handler's
    /// `on_tick`, while `run` borrows the capture).
    pub fn tls_stats_source(&self) -> TlsStatsSource {
        self.tls_stats.clone()
    }

    /// When the programs were attached.
    pub fn attached_at(&self) -> Instant {
        self.attached_at
    }

    /// Read the in-kernel counters, summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        read_counters(&self.skel)
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
        let poll = Duration::from_millis(10);
        let mut last_tick = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            // Records are submitted without wake-ups: poll returns on the timer or
            // when the ring is a quarter full; consume drains whatever is there.
            if let Err(e) = rb.poll(poll) {
                if e.kind() != libbpf_rs::ErrorKind::Interrupted {
                    return Err(CaptureError::refused("polling the ring buffer", e));
                }
            }
            let _ = rb.consume();
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
    use types::alog_counter as C;
    KernelCounters {
        data_events: get(C::ALOG_CNT_DATA_EVENTS),
        conn_events: get(C::ALOG_CNT_CONN_EVENTS),
        drop_data_ringbuf: get(C::ALOG_CNT_DROP_DATA),
        drop_conn_ringbuf: get(C::ALOG_CNT_DROP_CONN),
        storage_fail: get(C::ALOG_CNT_STORAGE_FAIL),
        filtered: get(C::ALOG_CNT_FILTERED),
        payload_skipped: get(C::ALOG_CNT_PAYLOAD_SKIPPED),
        read_fault: get(C::ALOG_CNT_READ_FAULT),
        self_calls: get(C::ALOG_CNT_SELF),
        wakeups: get(C::ALOG_CNT_WAKEUPS),
        tls_plaintext: get(C::ALOG_CNT_TLS_PLAINTEXT),
        tls_unattributed: get(C::ALOG_CNT_TLS_UNATTRIBUTED),
    }
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

/// CLOCK_MONOTONIC in ns: the clock of every kernel timestamp (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME in ns since the epoch.
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
