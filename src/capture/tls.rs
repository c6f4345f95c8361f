//! TLS probes at run time: find the files that hold TLS code (at start, at every exec, and
//! in a slow periodic rescan), analyse them on a worker thread, and attach their uprobes
//! from the polling thread. Attaching is per file (uprobes are per inode, so one attach
//! covers every process that maps the file, now and later) and fails soft: a file that
//! cannot be probed is logged once and counted.
//!
//! What stays racy: a binary or library seen for the first time (a new Go binary, a
//! container image's own libssl) is probed only after its exec notification reached user
//! space and the file was analysed, usually a few milliseconds; TLS calls made before that
//! are not seen. Libraries in the usual directories (the host's and, at its first exec,
//! each container root's) are attached before they are mapped, so the common case, the
//! system libssl, has no race. A process that exits before the worker looks at it still
//! gets its executable probed through the path it was started with, when that path means
//! the same file (device and inode) from here (host processes), so its next runs are
//! covered; a library mapped only by processes that all exit before a maps rescan sees
//! them is missed until one is caught alive (rescans at 20 ms, 300 ms, 3 s after exec,
//! then every 60 s).

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::{ErrorKind, Link, ProgramMut};

use super::event::ExecEvent;
use super::skel::AlogSkel;
use crate::tls::procfs::{self, FileId};
use crate::tls::{self, Flavor, Inspection, Probe, TlsTarget};

/// Counters of TLS probe attachment, for stats records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsAttachStats {
    /// Shared libraries with an OpenSSL-like API (libssl) probed.
    pub libraries_attached: u64,
    /// Executables with OpenSSL/BoringSSL linked in probed.
    pub binaries_attached: u64,
    /// Go executables probed (crypto/tls).
    pub go_binaries_attached: u64,
    /// Files with TLS code that could not be probed (each logged once).
    pub attach_failures: u64,
}

#[derive(Debug, Default)]
struct StatCells {
    libraries: AtomicU64,
    binaries: AtomicU64,
    go: AtomicU64,
    failures: AtomicU64,
    exec_queue_full: AtomicU64,
}

/// A handle that reads TLS attach counters from any thread (e.g. inside an event
/// handler's `on_tick`, while `Capture::run` borrows the capture).
#[derive(Debug, Clone, Default)]
pub struct TlsStatsSource(Arc<StatCells>);

impl TlsStatsSource {
    pub fn get(&self) -> TlsAttachStats {
        let c = &self.0;
        TlsAttachStats {
            libraries_attached: c.libraries.load(Ordering::Relaxed),
            binaries_attached: c.binaries.load(Ordering::Relaxed),
            go_binaries_attached: c.go.load(Ordering::Relaxed),
            attach_failures: c.failures.load(Ordering::Relaxed),
        }
    }
}

/// How a file was found: a mapped or installed library, or a process's executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Library,
    Executable,
}

/// What the worker needs from an exec notification.
#[derive(Debug, Clone)]
struct ExecNote {
    pid: u32,
    dev: u64,
    ino: u64,
    filename: String,
}

/// A file to attach to, with what the worker found in it.
#[derive(Debug)]
struct Plan {
    id: FileId,
    /// The file, open: attached through /proc/self/fd/N, so that it is the very file that
    /// was analysed, even when the process (and the /proc/PID path) is gone by then.
    file: File,
    /// The path to show in logs.
    shown: String,
    origin: Origin,
    target: TlsTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    /// Being analysed or waiting to be attached.
    Pending,
    Attached,
    /// No TLS code (or not ELF): never looked at again.
    NoTls,
    /// TLS code that could not be probed: logged and counted once.
    Failed,
}

type Registry = Arc<Mutex<HashMap<FileId, FileState>>>;

fn lock(r: &Registry) -> std::sync::MutexGuard<'_, HashMap<FileId, FileState>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rescans of a new process's mappings after its exec: shared libraries are mapped by
/// the dynamic loader after exec returns, plugins (Python's _ssl) later still.
const RESCAN_AFTER_EXEC: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(300),
    Duration::from_millis(3000),
];
/// Full rescan of every process: a safety net for lost exec notifications.
const FULL_RESCAN: Duration = Duration::from_secs(60);
/// Exec notifications queued for the worker before new ones are dropped (and left to
/// the periodic rescan).
const EXEC_QUEUE: usize = 4096;
/// Most delayed rescans kept (exec storms).
const MAX_DELAYED: usize = 100_000;
/// Longest stretch the polling thread spends attaching before it drains again.
const ATTACH_BUDGET: Duration = Duration::from_millis(20);

/// Finds candidate files and analyses them. Used at start (synchronously) and then on
/// the worker thread.
struct Scanner {
    registry: Registry,
    stats: Arc<StatCells>,
    /// (dev, inode) as /proc/PID/maps prints them -> file identity (saves a stat).
    maps_ids: HashMap<(String, u64), FileId>,
    /// Mount namespace roots whose library directories were scanned.
    roots: HashSet<FileId>,
    /// Executables by identity: dynamically linked (libraries get mapped after exec)?
    dynamic: HashMap<FileId, bool>,
    /// Only these processes, if not empty (the capture's pid filter).
    pids: Vec<u32>,
}

impl Scanner {
    fn new(registry: Registry, stats: Arc<StatCells>, pids: Vec<u32>) -> Self {
        Self {
            registry,
            stats,
            maps_ids: HashMap::new(),
            roots: HashSet::new(),
            dynamic: HashMap::new(),
            pids,
        }
    }

    fn wanted(&self, pid: u32) -> bool {
        self.pids.is_empty() || self.pids.contains(&pid)
    }

    /// Start-up: the host's library directories, then every process.
    fn scan_all(&mut self, out: &mut Vec<Plan>) {
        if let Some(root) = FileId::of_dir(Path::new("/")) {
            self.roots.insert(root);
        }
        for p in procfs::ssl_libs_under(Path::new("/")) {
            let shown = std::fs::canonicalize(&p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string();
            self.consider(&p, shown, Origin::Library, out);
        }
        self.rescan_processes(out);
    }

    fn rescan_processes(&mut self, out: &mut Vec<Plan>) {
        let me = std::process::id();
        for pid in procfs::pids() {
            if pid == me || !self.wanted(pid) || procfs::is_kernel_thread(pid) {
                continue;
            }
            self.scan_root(pid, out);
            let _ = self.scan_exe(pid, out);
            self.scan_maps(pid, out);
        }
    }

    /// A process just exec'd: its executable, its root's library directories (once per
    /// root), and the libssl its executable asks for. Returns whether its maps are worth
    /// rescanning later (a dynamically linked executable maps libraries after exec).
    fn on_exec(&mut self, x: &ExecNote, out: &mut Vec<Plan>) -> bool {
        let pid = x.pid;
        if !self.wanted(pid) {
            return false;
        }
        // By the path it was started with first, when that path leads to the very same
        // file from here: this works even if the process is already gone (short-lived).
        self.exe_by_path(x, out);
        self.scan_root(pid, out);
        if std::fs::symlink_metadata(format!("/proc/{pid}/exe")).is_err() {
            return false;
        }
        let dynamic = self.scan_exe(pid, out);
        self.scan_maps(pid, out);
        dynamic
    }

    fn exe_by_path(&mut self, x: &ExecNote, out: &mut Vec<Plan>) {
        let p = Path::new(&x.filename);
        if !p.is_absolute() {
            return;
        }
        let want = FileId {
            dev: x.dev,
            ino: x.ino,
        };
        if FileId::of(p) != Some(want) || lock(&self.registry).contains_key(&want) {
            return;
        }
        self.consider(p, x.filename.clone(), Origin::Executable, out);
    }

    fn scan_root(&mut self, pid: u32, out: &mut Vec<Plan>) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let Some(id) = FileId::of_dir(&root) else {
            return;
        };
        if !self.roots.insert(id) {
            return;
        }
        for p in procfs::ssl_libs_under(&root) {
            let shown = format!(
                "{} (root of pid {pid})",
                Path::new("/")
                    .join(p.strip_prefix(&root).unwrap_or(&p))
                    .display()
            );
            self.consider(&p, shown, Origin::Library, out);
        }
    }

    /// Returns whether the executable is dynamically linked (or could not be told).
    fn scan_exe(&mut self, pid: u32, out: &mut Vec<Plan>) -> bool {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(target) = std::fs::read_link(&exe) else {
            return false;
        };
        let Some(id) = FileId::of(&exe) else {
            return false;
        };
        // Parsed once per executable: the libssl it links directly (found by the
        // loader's rules), and whether it is dynamically linked at all.
        if !self.dynamic.contains_key(&id) {
            if let Ok(m) = tls::elf::Mapped::open(&exe) {
                if let Ok(f) = m.parse() {
                    let needs = tls::elf::needs(&f);
                    if self.dynamic.len() > 100_000 {
                        self.dynamic.clear();
                    }
                    self.dynamic.insert(id, tls::elf::is_dynamic(&f));
                    let root = PathBuf::from(format!("/proc/{pid}/root"));
                    for p in procfs::resolve_needed_ssl(&root, &target, &needs) {
                        let shown = format!(
                            "{} (needed by {})",
                            Path::new("/")
                                .join(p.strip_prefix(&root).unwrap_or(&p))
                                .display(),
                            target.display()
                        );
                        self.consider(&p, shown, Origin::Library, out);
                    }
                }
            }
        }
        if lock(&self.registry).contains_key(&id) {
            return self.dynamic.get(&id).copied().unwrap_or(true);
        }
        let shown = target.display().to_string();
        self.consider(&exe, shown, Origin::Executable, out);
        self.dynamic.get(&id).copied().unwrap_or(true)
    }

    fn scan_maps(&mut self, pid: u32, out: &mut Vec<Plan>) {
        for m in procfs::exec_mappings(pid) {
            let key = (m.maps_dev.clone(), m.maps_ino);
            let path = m.map_file(pid);
            let id = match self.maps_ids.get(&key) {
                Some(id) => *id,
                None => {
                    let Some(id) = FileId::of(&path) else {
                        continue;
                    };
                    if self.maps_ids.len() > 1_000_000 {
                        self.maps_ids.clear();
                    }
                    self.maps_ids.insert(key, id);
                    id
                }
            };
            if lock(&self.registry).contains_key(&id) {
                continue;
            }
            let origin = if std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|e| e.as_os_str() == m.path.as_str())
            {
                Origin::Executable
            } else {
                Origin::Library
            };
            self.consider(&path, m.path.clone(), origin, out);
        }
    }

    /// Analyse a file once (by identity); queue a plan if it holds TLS code.
    fn consider(&mut self, path: &Path, shown: String, origin: Origin, out: &mut Vec<Plan>) {
        let Ok(file) = File::open(path) else { return };
        let Ok(meta) = file.metadata() else { return };
        if !meta.is_file() {
            return;
        }
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        {
            let mut reg = lock(&self.registry);
            if reg.contains_key(&id) {
                return;
            }
            reg.insert(id, FileState::Pending);
        }
        let state = match tls::inspect_file(&file) {
            Ok(Inspection::NoTls) => FileState::NoTls,
            Ok(Inspection::Tls(target)) => {
                out.push(Plan {
                    id,
                    file,
                    shown,
                    origin,
                    target,
                });
                return;
            }
            Ok(Inspection::Unsupported(why)) => {
                tracing::warn!("TLS: cannot probe {shown}: {why}");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                FileState::Failed
            }
            Err(e) => {
                // Gone or unreadable: forget it, a later sighting tries again.
                tracing::debug!("TLS: cannot read {shown}: {e}");
                lock(&self.registry).remove(&id);
                return;
            }
        };
        lock(&self.registry).insert(id, state);
    }
}

impl FileId {
    /// Identity of a directory (mount namespace roots).
    fn of_dir(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        m.is_dir().then(|| Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// One line for the debug log about an attach outcome.
pub(crate) struct AttachNote<'a> {
    pub path: &'a str,
    pub flavor: &'static str,
    pub origin: &'static str,
    pub probes: usize,
    pub error: Option<String>,
}

/// TLS probing of a running capture.
pub(crate) struct TlsProbes {
    registry: Registry,
    stats: Arc<StatCells>,
    links: Vec<Link>,
    exec_tx: Option<SyncSender<ExecNote>>,
    plans_rx: Option<Receiver<Plan>>,
    worker: Option<JoinHandle<()>>,
    exec_full_logged: bool,
}

impl TlsProbes {
    /// Scan the node and attach to what is there now, then start the worker that
    /// follows new processes.
    pub fn start(
        skel: &AlogSkel<'static>,
        pids: &[u32],
        mut note: impl FnMut(AttachNote<'_>),
    ) -> Self {
        let registry: Registry = Arc::default();
        let stats: Arc<StatCells> = Arc::default();
        let mut me = Self {
            registry: Arc::clone(&registry),
            stats: Arc::clone(&stats),
            links: Vec::new(),
            exec_tx: None,
            plans_rx: None,
            worker: None,
            exec_full_logged: false,
        };
        let t0 = Instant::now();
        let mut scanner = Scanner::new(registry, stats, pids.to_vec());
        let mut plans = Vec::new();
        scanner.scan_all(&mut plans);
        let scanned = t0.elapsed();
        for p in plans {
            me.attach(skel, p, &mut note);
        }
        tracing::debug!(
            "TLS: start-up scan {} ms, attach {} ms: {:?}",
            scanned.as_millis(),
            (t0.elapsed() - scanned).as_millis(),
            me.stats()
        );
        let (exec_tx, exec_rx) = mpsc::sync_channel(EXEC_QUEUE);
        let (plans_tx, plans_rx) = mpsc::channel();
        match std::thread::Builder::new()
            .name("alog-tls".into())
            .spawn(move || worker(scanner, exec_rx, plans_tx))
        {
            Ok(h) => {
                me.worker = Some(h);
                me.exec_tx = Some(exec_tx);
                me.plans_rx = Some(plans_rx);
            }
            Err(e) => tracing::warn!(
                "TLS: cannot start the worker thread ({e}): new processes will not be probed"
            ),
        }
        me
    }

    pub fn stats(&self) -> TlsAttachStats {
        TlsStatsSource(Arc::clone(&self.stats)).get()
    }

    pub fn stats_source(&self) -> TlsStatsSource {
        TlsStatsSource(Arc::clone(&self.stats))
    }

    /// A process exec'd: hand it to the worker (never blocks).
    pub fn on_exec(&mut self, x: &ExecEvent) {
        let Some(tx) = &self.exec_tx else { return };
        let note = ExecNote {
            pid: x.pid,
            dev: x.dev,
            ino: x.ino,
            filename: x.filename.clone(),
        };
        match tx.try_send(note) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.exec_queue_full.fetch_add(1, Ordering::Relaxed);
                if !self.exec_full_logged {
                    self.exec_full_logged = true;
                    tracing::warn!("TLS: too many new processes at once: some are left to the periodic rescan ({} s)", FULL_RESCAN.as_secs());
                }
            }
            Err(TrySendError::Disconnected(_)) => self.exec_tx = None,
        }
    }

    /// Attach what the worker found, for at most ATTACH_BUDGET.
    pub fn attach_pending(
        &mut self,
        skel: &AlogSkel<'static>,
        mut note: impl FnMut(AttachNote<'_>),
    ) {
        let t0 = Instant::now();
        while t0.elapsed() < ATTACH_BUDGET {
            let Some(rx) = &self.plans_rx else { return };
            match rx.try_recv() {
                Ok(p) => self.attach(skel, p, &mut note),
                Err(_) => return,
            }
        }
    }

    fn attach(
        &mut self,
        skel: &AlogSkel<'static>,
        plan: Plan,
        note: &mut impl FnMut(AttachNote<'_>),
    ) {
        let mut attached = 0usize;
        let mut errors = Vec::new();
        let mut vanished = false;
        let attach_path = PathBuf::from(format!("/proc/self/fd/{}", plan.file.as_raw_fd()));
        for f in &plan.target.funcs {
            let mut group = Vec::with_capacity(f.points.len());
            let mut err = None;
            for p in &f.points {
                let offset = usize::try_from(p.offset).unwrap_or(usize::MAX);
                match program(skel, p.probe).attach_uprobe(
                    p.probe.is_retprobe(),
                    -1,
                    &attach_path,
                    offset,
                ) {
                    Ok(l) => group.push(l),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            match err {
                None => {
                    attached += group.len();
                    self.links.extend(group);
                }
                Some(e) => {
                    // The group's links drop here: a function is probed whole or not at all.
                    if e.kind() == ErrorKind::NotFound {
                        vanished = true;
                    }
                    errors.push(format!("{}: {e}", f.func));
                }
            }
        }
        let flavor = match plan.target.flavor {
            Flavor::OpenSsl => "openssl",
            Flavor::Go => "go",
        };
        let origin = match plan.origin {
            Origin::Library => "library",
            Origin::Executable => "executable",
        };
        let what = match (plan.target.flavor, plan.origin) {
            (Flavor::Go, _) => format!(
                "Go crypto/tls ({})",
                plan.target
                    .go_version
                    .as_deref()
                    .unwrap_or("version unknown")
            ),
            (Flavor::OpenSsl, Origin::Library) => "OpenSSL-API library".to_string(),
            (Flavor::OpenSsl, Origin::Executable) => "OpenSSL-API code linked in".to_string(),
        };
        let state = if attached == 0 {
            if vanished {
                // The process (and the path through it) went away: try again next time.
                tracing::debug!("TLS: {} vanished before it was probed", plan.shown);
                lock(&self.registry).remove(&plan.id);
                note(AttachNote {
                    path: &plan.shown,
                    flavor,
                    origin,
                    probes: 0,
                    error: Some(errors.join("; ")),
                });
                return;
            }
            tracing::warn!(
                "TLS: cannot probe {} ({what}): {}",
                plan.shown,
                errors.join("; ")
            );
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            FileState::Failed
        } else {
            if !errors.is_empty() {
                tracing::warn!(
                    "TLS: {} ({what}): some functions not probed: {}",
                    plan.shown,
                    errors.join("; ")
                );
            }
            tracing::info!("TLS: probing {} ({what}, {attached} probes)", plan.shown);
            let cell = match (plan.target.flavor, plan.origin) {
                (Flavor::Go, _) => &self.stats.go,
                (Flavor::OpenSsl, Origin::Library) => &self.stats.libraries,
                (Flavor::OpenSsl, Origin::Executable) => &self.stats.binaries,
            };
            cell.fetch_add(1, Ordering::Relaxed);
            FileState::Attached
        };
        note(AttachNote {
            path: &plan.shown,
            flavor,
            origin,
            probes: attached,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        });
        lock(&self.registry).insert(plan.id, state);
    }
}

impl Drop for TlsProbes {
    fn drop(&mut self) {
        // Closing the channel ends the worker.
        self.exec_tx = None;
        self.plans_rx = None;
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

fn program<'a>(skel: &'a AlogSkel<'static>, p: Probe) -> &'a ProgramMut<'static> {
    let g = &skel.progs;
    match p {
        Probe::SslEnter => &g.ssl_enter,
        Probe::SslHsEnter => &g.ssl_hs_enter,
        Probe::SslHsRet => &g.ssl_hs_ret,
        Probe::SslReadRet => &g.ssl_read_ret,
        Probe::SslReadExRet => &g.ssl_read_ex_ret,
        Probe::SslWriteRet => &g.ssl_write_ret,
        Probe::SslWriteExRet => &g.ssl_write_ex_ret,
        Probe::SslSendfileRet => &g.ssl_sendfile_ret,
        Probe::GoEnter => &g.go_tls_enter,
        Probe::GoHsEnter => &g.go_tls_hs_enter,
        Probe::GoHsRet => &g.go_tls_hs_ret,
        Probe::GoReadRet => &g.go_tls_read_ret,
        Probe::GoWriteRet => &g.go_tls_write_ret,
    }
}

/// The worker: exec notifications in, plans out; delayed and periodic rescans.
fn worker(mut scanner: Scanner, rx: Receiver<ExecNote>, tx: Sender<Plan>) {
    let mut delayed: BinaryHeap<std::cmp::Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut next_full = Instant::now() + FULL_RESCAN;
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        let mut deadline = next_full;
        if let Some(std::cmp::Reverse((t, _))) = delayed.peek() {
            deadline = deadline.min(*t);
        }
        match rx.recv_timeout(deadline.saturating_duration_since(now)) {
            Ok(note) => {
                let dynamic = scanner.on_exec(&note, &mut out);
                let now = Instant::now();
                if dynamic && delayed.len() < MAX_DELAYED {
                    for d in RESCAN_AFTER_EXEC {
                        delayed.push(std::cmp::Reverse((now + d, note.pid)));
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        while let Some(std::cmp::Reverse((t, pid))) = delayed.peek().copied() {
            if t > now {
                break;
            }
            delayed.pop();
            scanner.scan_maps(pid, &mut out);
        }
        if now >= next_full {
            scanner.rescan_processes(&mut out);
            next_full = Instant::now() + FULL_RESCAN;
        }
        for p in out.drain(..) {
            if tx.send(p).is_err() {
                return;
            }
        }
    }
}
