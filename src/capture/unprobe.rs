//! Detaching uprobes without stalling capture, and which kind of uprobe link the kernel
//! offers.
//!
//! Closing a uprobe waits for RCU grace periods (tasks-trace, SRCU, classic), measured at
//! about 130 ms per close on a 6.18 kernel. A uprobe made through a perf event also holds
//! the kernel's global `event_mutex` while it waits, so those closes run one at a time
//! whatever we do, and every other perf or tracefs operation on the node waits behind
//! them. A `uprobe_multi` link (kernel 6.6 and later) covers many offsets of one file in
//! one descriptor and waits once per link, outside that mutex: closes made at the same
//! time share their grace periods. So capture uses `uprobe_multi` links where the kernel
//! has them, and hands every link to be closed to [`Unprober`], whose thread closes them
//! from up to [`HELPERS`] short-lived threads at once, off the thread that drains the
//! ring and attaches new probes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::Link;

/// Most threads closing links at once, while capturing.
pub(crate) const HELPERS: usize = 32;
/// Most threads closing links at once when capture stops (everything left goes at once).
const HELPERS_AT_STOP: usize = 128;
/// The closing threads need little stack.
const HELPER_STACK: usize = 64 * 1024;

/// Closes links on its own thread; counts what waits.
pub(crate) struct Unprober {
    tx: Option<Sender<Vec<Link>>>,
    thread: Option<JoinHandle<()>>,
    /// Links handed over and not closed yet.
    waiting: Arc<AtomicU64>,
    /// Links closed in all.
    closed: Arc<AtomicU64>,
}

impl Unprober {
    /// Start the closing thread. When it cannot start, links are closed where handed
    /// over (slowly, but nothing is kept).
    pub fn start(waiting: Arc<AtomicU64>, closed: Arc<AtomicU64>) -> Self {
        let (tx, rx) = mpsc::channel::<Vec<Link>>();
        let (w, c) = (Arc::clone(&waiting), Arc::clone(&closed));
        let thread = std::thread::Builder::new()
            .name("alog-unprobe".into())
            .spawn(move || closer(rx, &w, &c));
        match thread {
            Ok(h) => Unprober {
                tx: Some(tx),
                thread: Some(h),
                waiting,
                closed,
            },
            Err(e) => {
                tracing::warn!("TLS: cannot start the thread that detaches probes ({e}): probes of files gone are detached in line");
                Unprober {
                    tx: None,
                    thread: None,
                    waiting,
                    closed,
                }
            }
        }
    }

    /// Close these links soon (never blocks while the closing thread runs).
    pub fn close(&self, links: Vec<Link>) {
        if links.is_empty() {
            return;
        }
        let n = links.len() as u64;
        self.waiting.fetch_add(n, Ordering::Relaxed);
        let back = match &self.tx {
            Some(tx) => match tx.send(links) {
                Ok(()) => return,
                Err(mpsc::SendError(l)) => l,
            },
            None => links,
        };
        close_all(back, 1, &self.waiting, &self.closed);
    }

    /// Close everything handed over, all at once, and end the thread; returns how long
    /// it took.
    pub fn finish(&mut self) -> Duration {
        let t0 = Instant::now();
        self.tx = None;
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
        t0.elapsed()
    }
}

impl Drop for Unprober {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The closing thread: take everything queued, close it from up to `HELPERS` threads,
/// again; when the sender goes, close the rest with up to `HELPERS_AT_STOP`.
fn closer(rx: Receiver<Vec<Link>>, waiting: &AtomicU64, closed: &AtomicU64) {
    let mut batch: Vec<Link> = Vec::new();
    loop {
        match rx.recv() {
            Ok(l) => batch.extend(l),
            Err(_) => return,
        }
        let mut stopping = false;
        loop {
            match rx.try_recv() {
                Ok(l) => batch.extend(l),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
            }
        }
        let helpers = if stopping { HELPERS_AT_STOP } else { HELPERS };
        close_all(std::mem::take(&mut batch), helpers, waiting, closed);
        if stopping {
            return;
        }
    }
}

/// Close `links` from up to `helpers` threads at once, this one among them (grace
/// periods waited for at the same time are shared); a helper that cannot be made leaves
/// its share to the others.
fn close_all(links: Vec<Link>, helpers: usize, waiting: &AtomicU64, closed: &AtomicU64) {
    let n = links.len();
    if n == 0 {
        return;
    }
    let queue = Mutex::new(links);
    let work = || loop {
        let next = match queue.lock() {
            Ok(mut q) => q.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        let Some(l) = next else { return };
        drop(l);
        waiting.fetch_sub(1, Ordering::Relaxed);
        closed.fetch_add(1, Ordering::Relaxed);
    };
    std::thread::scope(|s| {
        for _ in 1..helpers.clamp(1, n) {
            let made = std::thread::Builder::new()
                .name("alog-unprobe".into())
                .stack_size(HELPER_STACK)
                .spawn_scoped(s, work);
            if made.is_err() {
                break;
            }
        }
        work();
    });
}

/// Whether the kernel makes `uprobe_multi` links (6.6 and later): a minimal program of
/// that attach type is loaded and linked to `/`, which such a kernel refuses with EBADF
/// (not a regular file) and an older one with EINVAL (or refuses the program).
pub(crate) fn uprobe_multi_works() -> bool {
    use libbpf_rs::libbpf_sys as sys;
    // r0 = 0; exit, as two 8-byte bpf_insn records whose opcode is the low byte: the
    // byte order of a little-endian host.
    if cfg!(target_endian = "big") {
        return false;
    }
    let insns: [u64; 2] = [0xb7, 0x95];
    let mut opts = sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<sys::bpf_prog_load_opts>() as _,
        expected_attach_type: sys::BPF_TRACE_UPROBE_MULTI,
        ..Default::default()
    };
    // SAFETY: two valid instructions, a NUL-terminated licence, sized options.
    let prog = unsafe {
        sys::bpf_prog_load(
            sys::BPF_PROG_TYPE_KPROBE,
            std::ptr::null(),
            c"GPL".as_ptr(),
            insns.as_ptr().cast(),
            2,
            &mut opts,
        )
    };
    if prog < 0 {
        return false;
    }
    let offset: libc::c_ulong = 0;
    let mut link_opts = sys::bpf_link_create_opts {
        sz: std::mem::size_of::<sys::bpf_link_create_opts>() as _,
        ..Default::default()
    };
    link_opts.__bindgen_anon_1.uprobe_multi =
        sys::bpf_link_create_opts__bindgen_ty_1__bindgen_ty_3 {
            path: c"/".as_ptr(),
            offsets: &offset,
            cnt: 1,
            ..Default::default()
        };
    // SAFETY: prog is a descriptor we own; the options point at live locals.
    let link = unsafe { sys::bpf_link_create(prog, 0, sys::BPF_TRACE_UPROBE_MULTI, &link_opts) };
    let err = std::io::Error::last_os_error().raw_os_error();
    // SAFETY: closing descriptors we own.
    unsafe {
        if link >= 0 {
            libc::close(link);
        }
        libc::close(prog);
    }
    link < 0 && err == Some(libc::EBADF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_nothing_spawns_nothing() {
        let w = Arc::new(AtomicU64::new(0));
        let c = Arc::new(AtomicU64::new(0));
        close_all(Vec::new(), 8, &w, &c);
        let mut u = Unprober::start(Arc::clone(&w), Arc::clone(&c));
        u.close(Vec::new());
        u.finish();
        assert_eq!(
            (w.load(Ordering::Relaxed), c.load(Ordering::Relaxed)),
            (0, 0)
        );
    }
}
