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
//!
//! Bounds (the files and processes are any pod's): a file yields at most
//! `tls::MAX_PROBES_PER_FILE` probes, the files found through one process at most
//! `MAX_PROBES_PER_PROCESS`, the node at most `MAX_PROBES` (and half the open-file limit:
//! each probe holds a descriptor). The polling thread attaches for at most `ATTACH_BUDGET`
//! at a time, then drains the ring again; a file not done by then is resumed next time
//! (slow machines attach slowly: nothing is refused for time). What a bound refuses is counted in `TlsAttachStats`. Every full rescan also sweeps: a file no
//! process maps any more, and that the path it was found by no longer leads to, is
//! detached and forgotten (its inode may be reused, and a probe pins it).

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
use super::unprobe::Unprober;
use crate::tls::procfs::{self, FileId};
use crate::tls::{self, Flavor, Inspection, Probe, TlsTarget};

pub use crate::model::counters::TlsAttachStats;

#[derive(Debug, Default)]
struct StatCells {
    libraries: AtomicU64,
    binaries: AtomicU64,
    go: AtomicU64,
    failures: AtomicU64,
    exec_queue_full: AtomicU64,
    over_budget: AtomicU64,
    files_refused: AtomicU64,
    probes_refused: AtomicU64,
    detached: AtomicU64,
    probes_attached: AtomicU64,
    links_attached: AtomicU64,
    /// Links handed to the detaching thread and not closed yet.
    links_detaching: Arc<AtomicU64>,
    /// Links closed in all.
    links_closed: Arc<AtomicU64>,
}

impl StatCells {
    fn refused(&self, probes: usize) {
        self.files_refused.fetch_add(1, Ordering::Relaxed);
        self.probes_refused
            .fetch_add(probes as u64, Ordering::Relaxed);
    }
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
            inspections_over_budget: c.over_budget.load(Ordering::Relaxed),
            files_refused: c.files_refused.load(Ordering::Relaxed),
            probes_refused: c.probes_refused.load(Ordering::Relaxed),
            files_detached: c.detached.load(Ordering::Relaxed),
            probes_attached: c.probes_attached.load(Ordering::Relaxed),
            links_attached: c.links_attached.load(Ordering::Relaxed),
            exec_notes_dropped: c.exec_queue_full.load(Ordering::Relaxed),
            links_detaching: c.links_detaching.load(Ordering::Relaxed),
            links_detached: c.links_closed.load(Ordering::Relaxed),
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

/// What the worker hands the polling thread.
#[derive(Debug)]
enum ToAttacher {
    Attach(Plan),
    /// The file is gone (see `Scanner::rescan_and_sweep`): detach its probes.
    Detach(FileId),
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
    /// Inspection over budget, or more probes than a bound allows: logged and counted once.
    Refused,
}

/// A file seen, and the path it was found by (to tell, in a sweep, whether that path
/// still leads to it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    state: FileState,
    path: PathBuf,
}

type Files = HashMap<FileId, Seen>;
type Registry = Arc<Mutex<Files>>;

fn lock(r: &Registry) -> std::sync::MutexGuard<'_, Files> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// The files of `files` that are gone: not in `live` (mapped by a process now), not
/// being analysed or attached, and their path leads elsewhere or nowhere. `identity` is
/// `FileId::of` (a parameter for tests).
fn gone_files(
    files: &Files,
    live: &HashSet<FileId>,
    identity: impl Fn(&Path) -> Option<FileId>,
) -> Vec<FileId> {
    files
        .iter()
        .filter(|(id, seen)| {
            seen.state != FileState::Pending
                && !live.contains(id)
                && identity(&seen.path) != Some(**id)
        })
        .map(|(id, _)| *id)
        .collect()
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
/// Longest stretch the polling thread spends attaching before it drains again; a file
/// not done by then is resumed in the next stretch.
const ATTACH_BUDGET: Duration = Duration::from_millis(20);
/// Most probes for the files found through one process (its executable, its libraries,
/// its root's library directories).
const MAX_PROBES_PER_PROCESS: usize = 512;
/// Most probes attached on the node.
const MAX_PROBES: usize = 16_384;

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
    /// Probes planned for the files found through each process.
    per_process: HashMap<u32, usize>,
    /// During a full rescan: the files mapped by the processes seen, and their roots.
    sweep: Option<Sweep>,
}

#[derive(Debug, Default)]
struct Sweep {
    files: HashSet<FileId>,
    roots: HashSet<FileId>,
    pids: HashSet<u32>,
    maps_ids: HashMap<(String, u64), FileId>,
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
            per_process: HashMap::new(),
            sweep: None,
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
            self.consider(&p, shown, Origin::Library, None, out);
        }
        self.rescan_processes(out);
    }

    /// Every process again, then forget what is gone: returns the probed files to
    /// detach. Also drops the per-process and per-root state of processes gone.
    fn rescan_and_sweep(&mut self, out: &mut Vec<Plan>) -> Vec<FileId> {
        self.sweep = Some(Sweep::default());
        self.rescan_processes(out);
        let Some(seen) = self.sweep.take() else {
            return Vec::new();
        };
        let mut detach = Vec::new();
        {
            let mut reg = lock(&self.registry);
            for id in gone_files(&reg, &seen.files, FileId::of) {
                if let Some(s) = reg.remove(&id) {
                    if s.state == FileState::Attached {
                        detach.push(id);
                    }
                }
            }
        }
        // The host's root stays: its library directories were scanned at start.
        let host = FileId::of_dir(Path::new("/"));
        self.roots
            .retain(|r| seen.roots.contains(r) || Some(*r) == host);
        self.per_process.retain(|pid, _| seen.pids.contains(pid));
        self.dynamic.retain(|id, _| seen.files.contains(id));
        self.maps_ids = seen.maps_ids;
        detach
    }

    fn rescan_processes(&mut self, out: &mut Vec<Plan>) {
        let me = std::process::id();
        for pid in procfs::pids() {
            if pid == me || !self.wanted(pid) || procfs::is_kernel_thread(pid) {
                continue;
            }
            if let Some(s) = self.sweep.as_mut() {
                s.pids.insert(pid);
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
        self.consider(p, x.filename.clone(), Origin::Executable, Some(x.pid), out);
    }

    fn scan_root(&mut self, pid: u32, out: &mut Vec<Plan>) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let Some(id) = FileId::of_dir(&root) else {
            return;
        };
        if let Some(s) = self.sweep.as_mut() {
            s.roots.insert(id);
        }
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
            self.consider(&p, shown, Origin::Library, Some(pid), out);
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
        if let Some(s) = self.sweep.as_mut() {
            s.files.insert(id);
        }
        // Read once per executable: the libssl it links directly (found by the
        // loader's rules), and whether it is dynamically linked at all.
        if !self.dynamic.contains_key(&id) {
            let linking = tls::Image::open(&exe)
                .ok()
                .and_then(|m| tls::elf::linking(&m));
            if let Some((needs, dynamic)) = linking {
                if self.dynamic.len() > 100_000 {
                    self.dynamic.clear();
                }
                self.dynamic.insert(id, dynamic);
                let root = PathBuf::from(format!("/proc/{pid}/root"));
                for p in procfs::resolve_needed_ssl(&root, &target, &needs) {
                    let shown = format!(
                        "{} (needed by {})",
                        Path::new("/")
                            .join(p.strip_prefix(&root).unwrap_or(&p))
                            .display(),
                        target.display()
                    );
                    self.consider(&p, shown, Origin::Library, Some(pid), out);
                }
            }
        }
        if lock(&self.registry).contains_key(&id) {
            return self.dynamic.get(&id).copied().unwrap_or(true);
        }
        let shown = target.display().to_string();
        self.consider(&exe, shown, Origin::Executable, Some(pid), out);
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
                    self.maps_ids.insert(key.clone(), id);
                    id
                }
            };
            if let Some(s) = self.sweep.as_mut() {
                s.files.insert(id);
                s.maps_ids.insert(key, id);
            }
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
            self.consider(&path, m.path.clone(), origin, Some(pid), out);
        }
    }

    /// Analyse a file once (by identity); queue a plan if it holds TLS code. `by`: the
    /// process it was found through (whose probe allowance it uses).
    fn consider(
        &mut self,
        path: &Path,
        shown: String,
        origin: Origin,
        by: Option<u32>,
        out: &mut Vec<Plan>,
    ) {
        let Ok(file) = File::open(path) else { return };
        let Ok(meta) = file.metadata() else { return };
        if !meta.is_file() {
            return;
        }
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let seen = |state| Seen {
            state,
            path: path.to_path_buf(),
        };
        {
            let mut reg = lock(&self.registry);
            if reg.contains_key(&id) {
                return;
            }
            reg.insert(id, seen(FileState::Pending));
        }
        let state = match tls::inspect_file(&file) {
            Ok(Inspection::NoTls) => FileState::NoTls,
            Ok(Inspection::Tls(target)) => {
                let n = target.probe_count();
                if let Some(pid) = by {
                    let used = self.per_process.entry(pid).or_default();
                    if used.saturating_add(n) > MAX_PROBES_PER_PROCESS {
                        tracing::warn!(
                            "TLS: not probing {shown}: {n} more probes for process {pid} would pass {MAX_PROBES_PER_PROCESS}"
                        );
                        self.stats.refused(n);
                        lock(&self.registry).insert(id, seen(FileState::Refused));
                        return;
                    }
                    *used += n;
                }
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
            Ok(Inspection::OverBudget(limit)) => {
                tracing::warn!("TLS: gave up reading {shown}: limit on the {limit} reached");
                self.stats.over_budget.fetch_add(1, Ordering::Relaxed);
                FileState::Refused
            }
            Ok(Inspection::TooManyProbes(why)) => {
                tracing::warn!("TLS: not probing {shown}: {why}");
                self.stats.refused(0);
                FileState::Refused
            }
            Err(e) => {
                // Gone or unreadable: forget it, a later sighting tries again.
                tracing::debug!("TLS: cannot read {shown}: {e}");
                lock(&self.registry).remove(&id);
                return;
            }
        };
        lock(&self.registry).insert(id, seen(state));
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
    /// The probes of each file; dropping them detaches them.
    links: HashMap<FileId, FileLinks>,
    /// Probes in `links`.
    attached: usize,
    /// Links in `links`.
    links_held: usize,
    /// One `uprobe_multi` link per group of a function's probes running the same
    /// program, rather than one perf-event link per probe.
    multi: bool,
    /// Closes the links of files gone, off this thread.
    unprober: Unprober,
    /// Most probes in all: `MAX_PROBES`, or less when the open-file limit is low.
    max_probes: usize,
    exec_tx: Option<SyncSender<ExecNote>>,
    plans_rx: Option<Receiver<ToAttacher>>,
    worker: Option<JoinHandle<()>>,
    exec_full_logged: bool,
    /// A file whose attaching the last stretch left unfinished.
    resume: Option<Job>,
}

/// A file's probe links and how many probes they hold.
#[derive(Default)]
struct FileLinks {
    links: Vec<Link>,
    probes: usize,
}

/// One file being attached, function by function.
struct Job {
    plan: Plan,
    /// The next function of `plan.target.funcs` to attach.
    next: usize,
    attached: usize,
    errors: Vec<String>,
    vanished: bool,
    refused: usize,
    refused_why: &'static str,
    links: Vec<Link>,
}

impl Job {
    fn new(plan: Plan) -> Self {
        Job {
            plan,
            next: 0,
            attached: 0,
            errors: Vec::new(),
            vanished: false,
            refused: 0,
            refused_why: "",
            links: Vec::new(),
        }
    }
}

/// Raise the soft open-file limit to the hard one (each probe holds a descriptor) and
/// return how many probes fit in half of it.
fn probe_room() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return MAX_PROBES.min(512);
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl = raised;
            }
        }
    }
    usize::try_from(rl.rlim_cur / 2)
        .unwrap_or(usize::MAX)
        .min(MAX_PROBES)
}

impl TlsProbes {
    /// Scan the node and attach to what is there now, then start the worker that
    /// follows new processes.
    pub fn start(
        skel: &AlogSkel<'static>,
        pids: &[u32],
        multi: bool,
        mut note: impl FnMut(AttachNote<'_>),
    ) -> Self {
        let registry: Registry = Arc::default();
        let stats: Arc<StatCells> = Arc::default();
        let unprober = Unprober::start(
            Arc::clone(&stats.links_detaching),
            Arc::clone(&stats.links_closed),
        );
        let mut me = Self {
            registry: Arc::clone(&registry),
            stats: Arc::clone(&stats),
            links: HashMap::new(),
            attached: 0,
            links_held: 0,
            multi,
            unprober,
            max_probes: probe_room(),
            exec_tx: None,
            plans_rx: None,
            worker: None,
            exec_full_logged: false,
            resume: None,
        };
        let t0 = Instant::now();
        let mut scanner = Scanner::new(registry, stats, pids.to_vec());
        let mut plans = Vec::new();
        scanner.scan_all(&mut plans);
        let scanned = t0.elapsed();
        // At start-up there is no ring to drain yet: each file is attached whole.
        for p in plans {
            let _ = me.attach(skel, Job::new(p), None, &mut note);
        }
        tracing::debug!(
            "TLS: start-up scan {} ms, attach {} ms: {:?}",
            scanned.as_millis(),
            (t0.elapsed() - scanned).as_millis(),
            me.stats()
        );
        if me.max_probes < MAX_PROBES {
            tracing::info!(
                "TLS: at most {} probes (half the open-file limit)",
                me.max_probes
            );
        }
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

    /// Attach what the worker found (and detach what it found gone) for at most
    /// ATTACH_BUDGET; a file left unfinished is resumed by the next call.
    pub fn attach_pending(
        &mut self,
        skel: &AlogSkel<'static>,
        mut note: impl FnMut(AttachNote<'_>),
    ) {
        let deadline = Instant::now() + ATTACH_BUDGET;
        if let Some(job) = self.resume.take() {
            self.resume = self.attach(skel, job, Some(deadline), &mut note);
            if self.resume.is_some() {
                return;
            }
        }
        while Instant::now() < deadline {
            let Some(rx) = &self.plans_rx else { return };
            match rx.try_recv() {
                Ok(ToAttacher::Attach(p)) => {
                    self.resume = self.attach(skel, Job::new(p), Some(deadline), &mut note);
                    if self.resume.is_some() {
                        return;
                    }
                }
                Ok(ToAttacher::Detach(id)) => self.detach(id),
                Err(_) => return,
            }
        }
    }

    fn publish_counts(&self) {
        self.stats
            .probes_attached
            .store(self.attached as u64, Ordering::Relaxed);
        self.stats
            .links_attached
            .store(self.links_held as u64, Ordering::Relaxed);
    }

    /// Detach a file's probes.
    fn detach(&mut self, id: FileId) {
        let Some(FileLinks { links, probes }) = self.links.remove(&id) else {
            return;
        };
        self.attached = self.attached.saturating_sub(probes);
        self.links_held = self.links_held.saturating_sub(links.len());
        self.publish_counts();
        self.stats.detached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "TLS: detaching {probes} probes ({} links) of a file gone ({}:{})",
            links.len(),
            id.dev,
            id.ino
        );
        self.unprober.close(links);
    }

    /// Attach one file's probes, function by function, within `max_probes` (what it leaves
    /// is refused and counted); returns the job unfinished when `deadline` passes first.
    fn attach(
        &mut self,
        skel: &AlogSkel<'static>,
        mut job: Job,
        deadline: Option<Instant>,
        note: &mut impl FnMut(AttachNote<'_>),
    ) -> Option<Job> {
        let attach_path = PathBuf::from(format!("/proc/self/fd/{}", job.plan.file.as_raw_fd()));
        while job.next < job.plan.target.funcs.len() {
            if job.next > 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                return Some(job);
            }
            let f = &job.plan.target.funcs[job.next];
            job.next += 1;
            // Once a bound is met, the rest of the file is refused.
            if job.refused == 0 && self.attached + job.attached + f.points.len() > self.max_probes {
                job.refused_why = "the probes allowed in all";
            }
            if !job.refused_why.is_empty() {
                job.refused += f.points.len();
                continue;
            }
            let mut group = Vec::new();
            let attached = if self.multi {
                attach_multi(skel, &attach_path, &f.points, &mut group)
            } else {
                attach_each(skel, &attach_path, &f.points, &mut group)
            };
            match attached {
                Ok(()) => {
                    job.attached += f.points.len();
                    job.links.extend(group);
                }
                Err(e) => {
                    // The group's links close here: a function is probed whole or not at all.
                    self.unprober.close(group);
                    if e.kind() == ErrorKind::NotFound {
                        job.vanished = true;
                    }
                    job.errors.push(format!("{}: {e}", f.func));
                }
            }
        }
        let Job {
            plan,
            attached,
            errors,
            vanished,
            refused,
            refused_why,
            links,
            ..
        } = job;
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
        if refused > 0 {
            tracing::warn!(
                "TLS: {} ({what}): {refused} probes refused: over {refused_why} ({} probes)",
                plan.shown,
                self.max_probes
            );
            self.stats.refused(refused);
        }
        if !links.is_empty() {
            self.attached += attached;
            self.links_held += links.len();
            let entry = self.links.entry(plan.id).or_default();
            entry.links.extend(links);
            entry.probes += attached;
            self.publish_counts();
        }
        let state = if attached == 0 && refused > 0 {
            FileState::Refused
        } else if attached == 0 {
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
                return None;
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
        if let Some(seen) = lock(&self.registry).get_mut(&plan.id) {
            seen.state = state;
        }
        None
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
        // Every link at once: closes made together share the kernel's grace periods.
        let mut links = Vec::new();
        if let Some(job) = self.resume.take() {
            links.extend(job.links);
        }
        for (_, f) in self.links.drain() {
            links.extend(f.links);
        }
        let n = links.len() + self.stats.links_detaching.load(Ordering::Relaxed) as usize;
        self.unprober.close(links);
        let took = self.unprober.finish();
        if n > 0 {
            tracing::debug!("TLS: {n} probe links detached in {} ms", took.as_millis());
        }
    }
}

/// Attach each probe point as its own perf-event uprobe (all kernels).
fn attach_each(
    skel: &AlogSkel<'static>,
    path: &Path,
    points: &[tls::ProbePoint],
    out: &mut Vec<Link>,
) -> Result<(), libbpf_rs::Error> {
    for p in points {
        let offset = usize::try_from(p.offset).unwrap_or(usize::MAX);
        out.push(program(skel, p.probe).attach_uprobe(p.probe.is_retprobe(), -1, path, offset)?);
    }
    Ok(())
}

/// Attach the probe points as one `uprobe_multi` link per program (kernel 6.6 and later).
fn attach_multi(
    skel: &AlogSkel<'static>,
    path: &Path,
    points: &[tls::ProbePoint],
    out: &mut Vec<Link>,
) -> Result<(), libbpf_rs::Error> {
    let mut done: Vec<Probe> = Vec::new();
    for p in points {
        if done.contains(&p.probe) {
            continue;
        }
        done.push(p.probe);
        let offsets: Vec<usize> = points
            .iter()
            .filter(|q| q.probe == p.probe)
            .map(|q| usize::try_from(q.offset).unwrap_or(usize::MAX))
            .collect();
        let opts = libbpf_rs::UprobeMultiOpts {
            offsets,
            retprobe: p.probe.is_retprobe(),
            ..Default::default()
        };
        out.push(program(skel, p.probe).attach_uprobe_multi_with_opts(-1, path, "", opts)?);
    }
    Ok(())
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

/// The worker: exec notifications in, plans out; delayed and periodic rescans, each
/// periodic one with a sweep of the files gone.
fn worker(mut scanner: Scanner, rx: Receiver<ExecNote>, tx: Sender<ToAttacher>) {
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
        let mut detach = Vec::new();
        if now >= next_full {
            detach = scanner.rescan_and_sweep(&mut out);
            next_full = Instant::now() + FULL_RESCAN;
        }
        // Detach first: a file gone whose inode is already reused by a new one found in
        // the same rescan gets the new file's probes after.
        let msgs = detach
            .into_iter()
            .map(ToAttacher::Detach)
            .chain(out.drain(..).map(ToAttacher::Attach));
        for m in msgs {
            if tx.send(m).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(state: FileState, path: &str) -> Seen {
        Seen {
            state,
            path: PathBuf::from(path),
        }
    }

    fn id(ino: u64) -> FileId {
        FileId { dev: 1, ino }
    }

    #[test]
    fn files_gone_are_the_unmapped_whose_path_leads_elsewhere() {
        let mut files = Files::new();
        files.insert(id(1), seen(FileState::Attached, "/lib/libssl.so.3"));
        files.insert(id(2), seen(FileState::Attached, "/proc/7/exe"));
        files.insert(id(3), seen(FileState::NoTls, "/usr/bin/ls"));
        files.insert(id(4), seen(FileState::Pending, "/gone"));
        files.insert(id(5), seen(FileState::Refused, "/gone"));
        files.insert(id(6), seen(FileState::Attached, "/lib/replaced.so"));
        // ino 1 still at its path; 2 mapped; 3 mapped; 6's path is a new file now.
        let live: HashSet<FileId> = [id(2), id(3)].into();
        let identity = |p: &Path| match p.to_str() {
            Some("/lib/libssl.so.3") => Some(id(1)),
            Some("/lib/replaced.so") => Some(id(60)),
            _ => None,
        };
        let mut gone = gone_files(&files, &live, identity);
        gone.sort();
        // Pending files are being analysed or attached: never swept.
        assert_eq!(gone, vec![id(5), id(6)]);
    }

    fn scanner() -> Scanner {
        Scanner::new(Arc::default(), Arc::default(), Vec::new())
    }

    /// A copy of `sleep` run from a temp dir: mapped while it runs, even once deleted.
    #[test]
    fn sweep_forgets_a_file_once_its_last_process_exits() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("alog-sweep-sleep");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let fid = FileId::of(&exe).unwrap();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        // Only that process; the host's library directories count as scanned (start-up).
        let mut sc = Scanner::new(Arc::default(), Arc::default(), vec![child.id()]);
        sc.roots.extend(FileId::of_dir(Path::new("/")));
        let mut out = Vec::new();
        // Wait for the exec to be visible.
        let t0 = Instant::now();
        while FileId::of(Path::new(&format!("/proc/{}/exe", child.id()))) != Some(fid) {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }
        sc.rescan_processes(&mut out);
        assert!(out.is_empty(), "sleep has no TLS code");
        assert_eq!(
            lock(&sc.registry).get(&fid).map(|s| s.state),
            Some(FileState::NoTls)
        );
        // Pretend it was probed, and a file with no process and no path.
        lock(&sc.registry).get_mut(&fid).unwrap().state = FileState::Attached;
        let ghost = FileId {
            dev: u64::MAX,
            ino: 42,
        };
        lock(&sc.registry).insert(ghost, seen(FileState::Attached, "/nonexistent/x"));
        std::fs::remove_file(&exe).unwrap();
        // Still mapped by the running process: kept.
        let detach = sc.rescan_and_sweep(&mut out);
        assert_eq!(detach, vec![ghost]);
        assert!(lock(&sc.registry).contains_key(&fid));
        assert!(!lock(&sc.registry).contains_key(&ghost));
        child.kill().unwrap();
        child.wait().unwrap();
        let detach = sc.rescan_and_sweep(&mut out);
        assert_eq!(detach, vec![fid]);
        // Its libraries too (found through the process alone).
        assert!(lock(&sc.registry).is_empty(), "{:?}", lock(&sc.registry));
    }

    #[test]
    fn probes_per_process_are_capped() {
        let Some(lib) = procfs::LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join("libssl.so.3"))
            .find(|p| p.exists())
        else {
            eprintln!("no libssl.so.3 here: skipped");
            return;
        };
        let per_file = match tls::inspect(&lib).unwrap() {
            Inspection::Tls(t) => t.probe_count(),
            other => panic!("{other:?}"),
        };
        // Copies: each its own inode, so each needs its own probes.
        let dir = tempfile::tempdir().unwrap();
        let fit = MAX_PROBES_PER_PROCESS / per_file;
        let mut sc = scanner();
        let mut out = Vec::new();
        for i in 0..fit + 3 {
            let p = dir.path().join(format!("libssl-{i}.so.3"));
            std::fs::copy(&lib, &p).unwrap();
            sc.consider(&p, format!("copy {i}"), Origin::Library, Some(7), &mut out);
        }
        assert_eq!(out.len(), fit);
        let st = TlsStatsSource(Arc::clone(&sc.stats)).get();
        assert_eq!(st.files_refused, 3);
        assert_eq!(st.probes_refused, 3 * per_file as u64);
        let refused = lock(&sc.registry)
            .values()
            .filter(|s| s.state == FileState::Refused)
            .count();
        assert_eq!(refused, 3);
        // Another process has its own allowance; files found through none are not
        // counted against any.
        let p = dir.path().join("libssl-other.so.3");
        std::fs::copy(&lib, &p).unwrap();
        sc.consider(&p, "other".into(), Origin::Library, Some(8), &mut out);
        let p = dir.path().join("libssl-host.so.3");
        std::fs::copy(&lib, &p).unwrap();
        sc.consider(&p, "host".into(), Origin::Library, None, &mut out);
        assert_eq!(out.len(), fit + 2);
    }
}
