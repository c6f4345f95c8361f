//! Which BPF program types this kernel really loads, attaches and runs: each program of
//! `src/bpf/probe.bpf.c` is loaded on its own (a refused one must not take the others
//! down), attached, triggered (a loopback TCP connect; a call to a function of this
//! binary for the uprobe), and its hit counter (or ring-buffer record) read back.
//! Then the real capture programs are loaded and attached once, and detached.

use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject, RingBufferBuilder};

use super::{FailKind, HookFact, ProbeKind, ProbeResult};
use crate::capture::{Capture, CaptureConfig, CaptureError, Hook, HookMode};

mod skel {
    //! The generated skeleton of src/bpf/probe.bpf.c (see build.rs).
    #![allow(
        clippy::all,
        clippy::pedantic,
        missing_docs,
        non_camel_case_types,
        dead_code
    )]
    include!(concat!(env!("OUT_DIR"), "/probe.skel.rs"));
}

use skel::{ProbeSkel, ProbeSkelBuilder};

/// Index of each probe's counter in `hits` (the PROBE_* of probe.bpf.c).
fn hit_index(k: ProbeKind) -> usize {
    match k {
        ProbeKind::Tracepoint => 0,
        ProbeKind::RawTracepoint => 1,
        ProbeKind::TpBtf => 2,
        ProbeKind::Uprobe => 3,
        ProbeKind::RingBuffer => 4,
        ProbeKind::Fentry => 5,
        ProbeKind::Kprobe => 6,
    }
}

fn fail_kind(e: &libbpf_rs::Error) -> FailKind {
    match e.kind() {
        libbpf_rs::ErrorKind::PermissionDenied => FailKind::PermissionDenied,
        libbpf_rs::ErrorKind::NotFound => FailKind::NotFound,
        _ => FailKind::Other,
    }
}

/// The uprobe's target: a function of this very binary, never inlined.
#[inline(never)]
#[no_mangle]
pub extern "C" fn k8s_alog_doctor_uprobe_target(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(3).wrapping_add(1)
}

/// This binary's file and the file offset of `addr` in it (from /proc/self/maps), as a
/// uprobe wants it. Needs no symbol table (the binary may be stripped).
fn self_file_offset(addr: usize) -> Result<(PathBuf, usize), String> {
    let maps =
        std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let Some((lo, hi)) = f[0].split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi), Ok(off)) = (
            usize::from_str_radix(lo, 16),
            usize::from_str_radix(hi, 16),
            usize::from_str_radix(f[2], 16),
        ) else {
            continue;
        };
        if (lo..hi).contains(&addr) {
            return Ok((PathBuf::from(f[5..].join(" ")), addr - lo + off));
        }
    }
    Err("the function's address is in no mapping of /proc/self/maps".into())
}

/// Make every probe fire once: a TCP connection over loopback (state changes,
/// tcp_v4_connect) and a call of the uprobe target.
fn trigger() {
    if let Ok(l) = TcpListener::bind("127.0.0.1:0") {
        if let Ok(addr) = l.local_addr() {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                let _ = l.accept();
                drop(s);
            }
        }
    }
    std::hint::black_box(k8s_alog_doctor_uprobe_target(std::hint::black_box(41)));
}

/// Try one program type for real.
pub fn run_probe(kind: ProbeKind) -> ProbeResult {
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = match ProbeSkelBuilder::default().open(&mut storage) {
        Ok(o) => o,
        Err(e) => {
            return ProbeResult::LoadRefused {
                kind: fail_kind(&e),
                error: format!("{e:#}"),
            }
        }
    };
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.target_tgid = std::process::id();
    }
    // Only the program under test is loaded; the ring buffer only made when needed
    // (an old kernel without it must not fail the other probes).
    let progs = &mut open.progs;
    for (k, p) in [
        (ProbeKind::Tracepoint, &mut progs.p_tracepoint),
        (ProbeKind::RawTracepoint, &mut progs.p_raw_tp),
        (ProbeKind::TpBtf, &mut progs.p_tp_btf),
        (ProbeKind::Uprobe, &mut progs.p_uprobe),
        (ProbeKind::RingBuffer, &mut progs.p_ringbuf),
        (ProbeKind::Fentry, &mut progs.p_fentry),
        (ProbeKind::Kprobe, &mut progs.p_kprobe),
    ] {
        p.set_autoload(k == kind);
    }
    if kind != ProbeKind::RingBuffer {
        let _ = open.maps.probe_ring.set_autocreate(false);
    }
    let skel = match open.load() {
        Ok(s) => s,
        Err(e) => {
            return ProbeResult::LoadRefused {
                kind: fail_kind(&e),
                error: format!("{e:#}"),
            }
        }
    };
    let link = attach(&skel, kind);
    let _link: Link = match link {
        Ok(l) => l,
        Err(r) => return r,
    };
    if kind == ProbeKind::RingBuffer {
        return ring_buffer_check(&skel);
    }
    trigger();
    if hits(&skel, kind) > 0 {
        ProbeResult::Works
    } else {
        ProbeResult::DidNotFire
    }
}

fn attach(skel: &ProbeSkel<'_>, kind: ProbeKind) -> Result<Link, ProbeResult> {
    let p = &skel.progs;
    let res = match kind {
        ProbeKind::Tracepoint => p.p_tracepoint.attach(),
        ProbeKind::RawTracepoint => p.p_raw_tp.attach(),
        ProbeKind::TpBtf => p.p_tp_btf.attach(),
        ProbeKind::RingBuffer => p.p_ringbuf.attach(),
        ProbeKind::Fentry => p.p_fentry.attach(),
        ProbeKind::Kprobe => p.p_kprobe.attach(),
        ProbeKind::Uprobe => {
            let (path, off) = self_file_offset(k8s_alog_doctor_uprobe_target as *const () as usize)
                .map_err(|why| ProbeResult::NotTried { why })?;
            p.p_uprobe.attach_uprobe(false, -1, &path, off)
        }
    };
    res.map_err(|e| ProbeResult::AttachRefused {
        kind: fail_kind(&e),
        error: format!("{e:#}"),
    })
}

fn hits(skel: &ProbeSkel<'_>, kind: ProbeKind) -> u64 {
    skel.maps
        .bss_data
        .as_deref()
        // SAFETY: a read of a u64 in the mmapped .bss the kernel writes to.
        .map(|b| unsafe { std::ptr::read_volatile(&b.hits[hit_index(kind)]) })
        .unwrap_or(0)
}

/// The ring-buffer program submits one record per trigger: consume it in user space.
fn ring_buffer_check(skel: &ProbeSkel<'_>) -> ProbeResult {
    let me = std::process::id();
    let got = std::cell::Cell::new(0u32);
    let mut b = RingBufferBuilder::new();
    if let Err(e) = b.add(&skel.maps.probe_ring, |data: &[u8]| {
        if data.len() >= 8 {
            let tgid = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
            let magic = u32::from_ne_bytes([data[4], data[5], data[6], data[7]]);
            if tgid == me && magic == 0xa10c {
                got.set(got.get() + 1);
            }
        }
        0
    }) {
        return ProbeResult::AttachRefused {
            kind: fail_kind(&e),
            error: format!("{e:#}"),
        };
    }
    let rb = match b.build() {
        Ok(rb) => rb,
        Err(e) => {
            return ProbeResult::AttachRefused {
                kind: fail_kind(&e),
                error: format!("{e:#}"),
            }
        }
    };
    trigger();
    for _ in 0..20 {
        let _ = rb.poll(Duration::from_millis(50));
        if got.get() > 0 {
            return ProbeResult::Works;
        }
    }
    ProbeResult::DidNotFire
}

/// Every probe in table order.
pub fn run_all() -> Vec<(ProbeKind, ProbeResult)> {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit; failure only matters on old kernels.
    unsafe {
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl);
    }
    ProbeKind::ALL.iter().map(|k| (*k, run_probe(*k))).collect()
}

/// Load and attach k8s-alog's real capture programs (TLS probes off, a small ring),
/// then detach them. No event is read. With them, the rung each data hook landed on and
/// why the cheaper ones were passed over (`hooks` names, in order).
pub fn capture_programs(mode: HookMode) -> (ProbeResult, Vec<HookFact>) {
    let cfg = CaptureConfig {
        ring_bytes: 1 << 16,
        hooks: mode,
        ..CaptureConfig::default()
    };
    let r = match Capture::start_without_tls(&cfg) {
        Ok(c) => {
            let plan = c.hook_plan().clone();
            drop(c);
            let facts = Hook::ALL
                .into_iter()
                .map(|h| {
                    let ch = plan.get(h);
                    HookFact {
                        hook: h.as_str().to_string(),
                        rung: ch.rung.map(|r| r.as_str().to_string()),
                        passed_over: ch.passed_over.clone(),
                    }
                })
                .collect();
            return (ProbeResult::Works, facts);
        }
        Err(CaptureError::NotPermitted) => ProbeResult::LoadRefused {
            kind: FailKind::PermissionDenied,
            error: "not permitted".into(),
        },
        Err(CaptureError::NoBtf) => ProbeResult::NotTried {
            why: "no BTF".into(),
        },
        Err(CaptureError::Refused { what, source }) => {
            let kind = fail_kind(&source);
            let error = format!("{what}: {source:#}");
            if what.starts_with("attaching") {
                ProbeResult::AttachRefused { kind, error }
            } else {
                ProbeResult::LoadRefused { kind, error }
            }
        }
        Err(CaptureError::Config(e)) => ProbeResult::NotTried { why: e },
        Err(CaptureError::NoHook(e)) => ProbeResult::LoadRefused {
            kind: FailKind::Other,
            error: e,
        },
    };
    (r, Vec::new())
}
