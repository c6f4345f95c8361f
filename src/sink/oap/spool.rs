//! The bounded spool: batches that could not be delivered wait here, oldest first, until
//! the OAP is back (also across restarts). One file per batch (`<seq>.batch`, written to
//! an unpredictable temporary name created exclusively, then renamed, so a crash leaves
//! no half file under a batch name) in a directory of ours that only we can enter (0700,
//! `crate::fsutil`); the total size never exceeds the bound: a batch that does not fit is
//! refused and the caller counts it as dropped.
//!
//! Spool files are read back as hostile input: never followed through a link, never read
//! past the spool's bound, the header checked before anything is allocated from it, and
//! sequence numbers bounded. A file that fails a check is moved into `bad/` (at most
//! `BAD_KEPT` files are kept there; beyond that it is removed), counted, and skipped.
//!
//! When the directory cannot be used (read-only, not ours, ...), `in_memory` keeps the
//! batches in memory instead, within the same kind of bound; they do not outlive the
//! process.
//!
//! File format: `ALOGSPL1`, message count (u32 LE), payload length (u64 LE), FNV-1a 64
//! of the payload (u64 LE), payload = the messages, each length-delimited protobuf.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use prost::Message;

use super::pb::EbpfAccessLogMessage;
use crate::fsutil::{self, DirState, FileError};

const MAGIC: &[u8; 8] = b"ALOGSPL1";
const HEADER: usize = 8 + 4 + 8 + 8;

/// Messages in one spool file, at most: far above any batch (`--oap-batch-size` is at most
/// 100000 records), and a bound on what reading one file back can allocate.
pub const MAX_FILE_MESSAGES: u32 = 1 << 20;

/// Highest sequence number accepted from a file name: no run gets near it (10^18 batches),
/// so the numbering never overflows, whatever names are found in the directory.
const MAX_SEQ: u64 = 1_000_000_000_000_000_000;

/// The subdirectory damaged files are moved into.
pub const BAD_DIR: &str = "bad";
/// Damaged files kept in `bad/`; more are removed.
pub const BAD_KEPT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: {0}")]
    File(#[from] FileError),
    #[error("spool: {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("spool directory {0} is in use by another k8s-alog (use another --oap-spool-dir)")]
    Locked(PathBuf),
    #[error("spool file {0} is damaged ({1}); set aside in bad/")]
    Corrupt(PathBuf, String),
    #[error("a batch of {0} messages is more than a spool file holds ({MAX_FILE_MESSAGES})")]
    TooManyMessages(usize),
}

/// A spooled batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    seq: u64,
    bytes: u64,
    messages: u32,
}

/// What pushing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Spooled,
    /// It would have taken the spool past its bound.
    Full,
}

/// Where the batches are.
enum Store {
    /// In the directory, locked for this process.
    Disk { _lock: File },
    /// In memory, in the order of `entries`.
    Memory(VecDeque<Vec<u8>>),
}

/// The spool: a locked directory, or memory when no directory could be used.
pub struct Spool {
    dir: PathBuf,
    store: Store,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
    /// Files set aside as damaged since start.
    pub corrupt_files: u64,
    /// Largest size reached, bytes.
    pub peak_bytes: u64,
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One batch as spool-file bytes.
pub fn encode(msgs: &[EbpfAccessLogMessage]) -> Vec<u8> {
    let mut payload = Vec::new();
    for m in msgs {
        // Writing into a Vec cannot fail.
        let _ = m.encode_length_delimited(&mut payload);
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(msgs.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The header's (message count, payload length), if they can describe a file of
/// `file_len` bytes that we wrote: every message takes at least one byte.
fn check_header(h: &[u8], file_len: u64) -> Result<(u32, u64), String> {
    if h.len() < HEADER || file_len < HEADER as u64 {
        return Err(format!("{file_len} bytes, shorter than the header"));
    }
    if &h[..8] != MAGIC {
        return Err("not a spool file (bad magic)".into());
    }
    let count = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
    let len = u64::from_le_bytes(h[12..20].try_into().unwrap_or_default());
    let payload = file_len - HEADER as u64;
    if payload != len {
        return Err(format!("payload {payload} bytes, header says {len}"));
    }
    if count > MAX_FILE_MESSAGES || u64::from(count) > len {
        return Err(format!(
            "header says {count} messages in {len} bytes: not a batch this spool writes"
        ));
    }
    Ok((count, len))
}

/// Spool-file bytes back to a batch, or why not.
pub fn decode(data: &[u8]) -> Result<Vec<EbpfAccessLogMessage>, String> {
    let (count, _) = check_header(data, data.len() as u64)?;
    let sum = u64::from_le_bytes(data[20..28].try_into().unwrap_or_default());
    let payload = &data[HEADER..];
    if fnv1a64(payload) != sum {
        return Err("checksum mismatch".into());
    }
    let mut buf = payload;
    // The count is bounded by `check_header`; allocation still follows what decodes.
    let mut out = Vec::with_capacity((count as usize).min(4096));
    while !buf.is_empty() {
        if out.len() >= count as usize {
            return Err(format!("more messages than the {count} the header says"));
        }
        let m = EbpfAccessLogMessage::decode_length_delimited(&mut buf)
            .map_err(|e| format!("message {}: {e}", out.len()))?;
        out.push(m);
    }
    if out.len() != count as usize {
        return Err(format!("{} messages, header says {count}", out.len()));
    }
    Ok(out)
}

/// The sequence number of a batch file name: `None` for other names, `Some(Err)` for a
/// batch-like name whose number this spool never writes.
fn seq_of(name: &str) -> Option<Result<u64, String>> {
    let stem = name.strip_suffix(".batch")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        stem.parse::<u64>()
            .ok()
            .filter(|s| *s <= MAX_SEQ)
            .ok_or_else(|| format!("sequence number {stem} out of range")),
    )
}

/// Size, message count of a batch file found at start, after checking it as far as its
/// header: a regular file of ours, within the bound, with a header that fits it.
fn check_file(path: &Path, max_bytes: u64) -> Result<(u64, u32), String> {
    let (mut f, md) = fsutil::open_read(path).map_err(|e| e.to_string())?;
    if md.len() > max_bytes {
        return Err(format!(
            "{} bytes, more than the spool's bound {max_bytes}",
            md.len()
        ));
    }
    let mut h = [0u8; HEADER];
    let n = f.read(&mut h).map_err(|e| format!("cannot read: {e}"))?;
    let (count, _) = check_header(&h[..n], md.len())?;
    Ok((md.len(), count))
}

impl Spool {
    /// Open (creating it with mode 0700) and lock `dir`; batches left by an earlier run
    /// are kept and delivered first. Their size counts against `max_bytes`. A directory
    /// of ours open to others is made private (with a warning); a symbolic link or one
    /// owned by someone else is refused. Damaged files are set aside, not fatal.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let io = |e| SpoolError::Io(dir.to_path_buf(), e);
        if let DirState::Tightened(mode) = fsutil::private_dir(dir)? {
            tracing::warn!(
                "spool directory {} was mode {mode:04o}: made 0700 (only this process may read or plant batches)",
                dir.display()
            );
        }
        let lock = fsutil::open_append(&dir.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(SpoolError::Locked(dir.to_path_buf()));
        }
        let mut me = Self::empty(dir, Store::Disk { _lock: lock }, max_bytes);
        let mut found = Vec::new();
        let mut set_aside = Vec::new();
        for e in fs::read_dir(dir).map_err(io)? {
            let e = e.map_err(io)?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A batch being written when a previous run died.
                let _ = fs::remove_file(e.path());
                continue;
            }
            let checked = match seq_of(&name) {
                None => continue,
                Some(Err(why)) => Err(why),
                Some(Ok(seq)) => check_file(&e.path(), max_bytes).map(|(bytes, messages)| Entry {
                    seq,
                    bytes,
                    messages,
                }),
            };
            match checked {
                Ok(entry) => found.push(entry),
                Err(why) => set_aside.push((name, why)),
            }
        }
        for (name, _) in &set_aside {
            me.set_aside(&dir.join(name));
        }
        if let Some((name, why)) = set_aside.first() {
            tracing::warn!(
                "spool {}: {} damaged files set aside in {BAD_DIR}/ (first: {name}: {why})",
                dir.display(),
                set_aside.len()
            );
        }
        found.sort_by_key(|e| e.seq);
        me.bytes = found.iter().fold(0u64, |a, e| a.saturating_add(e.bytes));
        me.peak_bytes = me.bytes;
        // Bounded by MAX_SEQ: cannot overflow.
        me.next_seq = found.last().map_or(1, |e| e.seq.saturating_add(1));
        me.entries = found.into();
        Ok(me)
    }

    /// A spool in memory, for when no directory can be used: the same bound and order;
    /// nothing survives the process.
    pub fn in_memory(dir: &Path, max_bytes: u64) -> Self {
        Self::empty(dir, Store::Memory(VecDeque::new()), max_bytes)
    }

    /// A spool holding nothing yet, in `store`.
    fn empty(dir: &Path, store: Store, max_bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            store,
            max_bytes,
            entries: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            corrupt_files: 0,
            peak_bytes: 0,
        }
    }

    /// The directory (the one asked for, when in memory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The batches are in memory only.
    pub fn is_memory(&self) -> bool {
        matches!(self.store, Store::Memory(_))
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Batches waiting.
    pub fn batches(&self) -> usize {
        self.entries.len()
    }

    /// Messages waiting (as their headers say).
    pub fn messages(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.messages)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.batch"))
    }

    /// Move a damaged file into `bad/` (or remove it when `bad/` holds enough), and count
    /// it. Never fails: a file that can be neither moved nor removed stays, out of the
    /// spool's accounts.
    fn set_aside(&mut self, path: &Path) {
        self.corrupt_files += 1;
        let bad = self.dir.join(BAD_DIR);
        let room = fsutil::private_dir(&bad)
            .ok()
            .and_then(|_| fs::read_dir(&bad).ok())
            .is_some_and(|rd| rd.count() < BAD_KEPT);
        if room {
            if let Some(name) = path.file_name() {
                if fs::rename(path, bad.join(name)).is_ok() {
                    return;
                }
            }
        }
        let _ = fs::remove_file(path);
    }

    /// Append a batch, unless it would take the spool past its bound.
    pub fn push(&mut self, msgs: &[EbpfAccessLogMessage]) -> Result<Pushed, SpoolError> {
        if msgs.len() > MAX_FILE_MESSAGES as usize {
            return Err(SpoolError::TooManyMessages(msgs.len()));
        }
        let data = encode(msgs);
        let len = data.len() as u64;
        if self.bytes.saturating_add(len) > self.max_bytes {
            return Ok(Pushed::Full);
        }
        let seq = self.next_seq;
        let next = seq.checked_add(1).ok_or_else(|| {
            SpoolError::Io(
                self.dir.clone(),
                std::io::Error::other("sequence numbers exhausted"),
            )
        })?;
        match &mut self.store {
            Store::Memory(batches) => batches.push_back(data),
            Store::Disk { .. } => {
                let path = self.path(seq);
                let (mut f, tmp) = fsutil::create_temp(&self.dir, &format!("{seq:020}"))?;
                if let Err(e) = f.write_all(&data) {
                    let _ = fs::remove_file(&tmp);
                    return Err(SpoolError::Io(tmp, e));
                }
                drop(f);
                if let Err(e) = fs::rename(&tmp, &path) {
                    let _ = fs::remove_file(&tmp);
                    return Err(SpoolError::Io(path, e));
                }
            }
        }
        self.next_seq = next;
        self.bytes = self.bytes.saturating_add(len);
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        self.entries.push_back(Entry {
            seq,
            bytes: len,
            messages: msgs.len() as u32,
        });
        Ok(Pushed::Spooled)
    }

    /// The oldest batch, read back (it stays spooled until `pop`). A damaged file is
    /// moved into `bad/`, leaves the spool, is counted, and returned as the error.
    pub fn front(&mut self) -> Option<Result<Vec<EbpfAccessLogMessage>, SpoolError>> {
        let e = *self.entries.front()?;
        let path = self.path(e.seq);
        let res = match &self.store {
            Store::Memory(batches) => batches
                .front()
                .map_or_else(|| Err("missing".to_string()), |d| decode(d)),
            Store::Disk { .. } => fsutil::read_bounded(&path, self.max_bytes)
                .map_err(|err| err.to_string())
                .and_then(|d| decode(&d)),
        };
        Some(match res {
            Ok(msgs) => Ok(msgs),
            Err(why) => {
                self.forget_front();
                if !self.is_memory() {
                    self.set_aside(&path);
                } else {
                    self.corrupt_files += 1;
                }
                Err(SpoolError::Corrupt(path, why))
            }
        })
    }

    fn forget_front(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        if let Store::Memory(batches) = &mut self.store {
            batches.pop_front();
        }
        self.bytes = self.bytes.saturating_sub(e.bytes);
        Some(e)
    }

    /// Forget the oldest batch (it was delivered).
    pub fn pop(&mut self) {
        if let Some(e) = self.forget_front() {
            if !self.is_memory() {
                let _ = fs::remove_file(self.path(e.seq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::oap::pb;

    fn batch(n: usize, tag: &str) -> Vec<EbpfAccessLogMessage> {
        (0..n)
            .map(|i| EbpfAccessLogMessage {
                node: (i == 0).then(|| pb::EbpfAccessLogNodeInfo {
                    name: tag.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn batches_come_back_in_order_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.push(&batch(3, "a")).unwrap(), Pushed::Spooled);
        assert_eq!(s.push(&batch(2, "b")).unwrap(), Pushed::Spooled);
        assert_eq!((s.batches(), s.messages()), (2, 5));
        let bytes = s.bytes();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((s.batches(), s.messages(), s.bytes()), (2, 5, bytes));
        assert_eq!(s.front().unwrap().unwrap(), batch(3, "a"));
        s.pop();
        assert_eq!(s.front().unwrap().unwrap(), batch(2, "b"));
        s.pop();
        assert!(s.front().is_none());
        assert_eq!(s.bytes(), 0);
        // New batches continue the numbering, after a restart too.
        s.push(&batch(1, "c")).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.front().unwrap().unwrap(), batch(1, "c"));
    }

    #[test]
    fn the_bound_is_never_exceeded() {
        let dir = tempfile::tempdir().unwrap();
        let one = encode(&batch(4, "x")).len() as u64;
        let mut s = Spool::open(dir.path(), one * 3 + one / 2).unwrap();
        let mut refused = 0;
        for _ in 0..10 {
            if s.push(&batch(4, "x")).unwrap() == Pushed::Full {
                refused += 1;
            }
            assert!(s.bytes() <= s.max_bytes());
        }
        assert_eq!((s.batches(), refused), (3, 7));
        assert_eq!(s.peak_bytes, one * 3);
        // Room again once delivered.
        s.pop();
        assert_eq!(s.push(&batch(4, "x")).unwrap(), Pushed::Spooled);
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn batch_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "batch"))
            .collect();
        files.sort();
        files
    }

    /// A header and payload that pass the checksum, with whatever count is asked.
    fn crafted(count: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&fnv1a64(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn damaged_files_are_set_aside_and_counted_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for t in ["a", "b", "c", "d"] {
            s.push(&batch(2, t)).unwrap();
        }
        drop(s);
        let files = batch_files(dir.path());
        // a: a flipped payload byte; b: truncated; c: garbage; d intact.
        let mut a = fs::read(&files[0]).unwrap();
        let last = a.len() - 1;
        a[last] ^= 0xff;
        fs::write(&files[0], a).unwrap();
        let b = fs::read(&files[1]).unwrap();
        fs::write(&files[1], &b[..b.len() - 3]).unwrap();
        fs::write(&files[2], b"hello").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        // b and c fail their header check at start; a only when read.
        assert_eq!((s.batches(), s.corrupt_files), (2, 2));
        let mut errors = Vec::new();
        let good = loop {
            match s.front().expect("a batch") {
                Ok(m) => break m,
                Err(e) => errors.push(e.to_string()),
            }
        };
        assert_eq!(good, batch(2, "d"));
        assert_eq!(s.corrupt_files, 3);
        assert!(errors[0].contains("checksum"), "{errors:?}");
        s.pop();
        assert!(s.is_empty() && s.bytes() == 0);
        let bad = names_in(&dir.path().join(BAD_DIR));
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert_eq!(names_in(dir.path()), vec![BAD_DIR, "lock"]);
    }

    #[test]
    fn temporary_files_are_never_opened_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep\n").unwrap();
        let spool = dir.path().join("spool");
        let mut s = Spool::open(&spool, 1 << 20).unwrap();
        // Links at the names a predictable writer would use for the next batches.
        for seq in 1..=3u64 {
            for name in [format!("{seq:020}.tmp"), format!("{seq:020}.batch.tmp")] {
                std::os::unix::fs::symlink(&victim, spool.join(name)).unwrap();
            }
        }
        assert_eq!(s.push(&batch(2, "a")).unwrap(), Pushed::Spooled);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep\n");
        assert_eq!(s.front().unwrap().unwrap(), batch(2, "a"));
        let f = &batch_files(&spool)[0];
        let md = fs::symlink_metadata(f).unwrap();
        assert!(md.file_type().is_file());
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn a_header_count_near_u32_max_is_refused_before_any_allocation() {
        let payload = encode(&batch(2, "x"))[HEADER..].to_vec();
        for count in [u32::MAX, u32::MAX - 1, MAX_FILE_MESSAGES + 1] {
            let why = decode(&crafted(count, &payload)).unwrap_err();
            assert!(why.contains("not a batch this spool writes"), "{why}");
        }
        // A count the payload could hold but that disagrees with it is still refused.
        assert!(decode(&crafted(3, &payload))
            .unwrap_err()
            .contains("header says 3"));
        assert!(decode(&crafted(1, &payload))
            .unwrap_err()
            .contains("more messages than"));

        // At start, such a file is set aside; the spool opens and works.
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(format!("{:020}.batch", 7)),
            crafted(u32::MAX, &payload),
        )
        .unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((s.batches(), s.messages(), s.corrupt_files), (0, 0, 1));
        s.push(&batch(1, "ok")).unwrap();
        assert_eq!(s.front().unwrap().unwrap(), batch(1, "ok"));
    }

    #[test]
    fn links_devices_fifos_huge_and_foreign_files_are_set_aside_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        {
            let mut s = Spool::open(&d, 1 << 20).unwrap();
            for _ in 0..6 {
                s.push(&batch(1, "x")).unwrap();
            }
        }
        let files = batch_files(&d);
        fs::remove_file(&files[0]).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &files[0]).unwrap();
        fs::remove_file(&files[1]).unwrap();
        let c = std::ffi::CString::new(files[1].to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Sparse: 4 GiB that would be read whole.
        File::options()
            .write(true)
            .open(&files[2])
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
        // Someone else's (a test run as root can hand it over).
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&files[3], Some(65534), None).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let d2 = d.clone();
        std::thread::spawn(move || {
            let mut s = Spool::open(&d2, 1 << 20).unwrap();
            let n = s.batches();
            let first = s.front().map(|r| r.map_err(|e| e.to_string()));
            let _ = tx.send((n, s.corrupt_files, first));
        });
        let (n, corrupt, first) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("opening the spool blocked");
        let expect_bad = if root { 4 } else { 3 };
        assert_eq!((n, corrupt), (6 - expect_bad, expect_bad as u64));
        assert_eq!(first.unwrap().unwrap(), batch(1, "x"));
        assert_eq!(names_in(&d.join(BAD_DIR)).len(), expect_bad);
        // The link itself was moved, not what it points to.
        assert!(Path::new("/dev/zero").exists());
    }

    #[test]
    fn crafted_sequence_numbers_do_not_overflow_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let good = encode(&batch(1, "x"));
        fs::write(dir.path().join(format!("{}.batch", u64::MAX)), &good).unwrap();
        fs::write(dir.path().join("99999999999999999999.batch"), &good).unwrap();
        fs::write(dir.path().join(format!("{:020}.batch", 5)), &good).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((s.batches(), s.corrupt_files), (1, 2));
        s.push(&batch(1, "y")).unwrap();
        assert_eq!(
            batch_files(dir.path())
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            vec![format!("{:020}.batch", 5), format!("{:020}.batch", 6)]
        );
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.front().unwrap().unwrap(), batch(1, "x"));
        s.pop();
        assert_eq!(s.front().unwrap().unwrap(), batch(1, "y"));
    }

    #[test]
    fn bad_dir_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        for i in 1..=(BAD_KEPT as u64 + 10) {
            fs::write(dir.path().join(format!("{i:020}.batch")), b"junk").unwrap();
        }
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.corrupt_files, BAD_KEPT as u64 + 10);
        assert_eq!(names_in(&dir.path().join(BAD_DIR)).len(), BAD_KEPT);
        assert!(batch_files(dir.path()).is_empty());
    }

    #[test]
    fn the_directory_is_ours_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("spool");
        drop(Spool::open(&d, 1 << 20).unwrap());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("lock")), 0o600);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        drop(Spool::open(&d, 1 << 20).unwrap());
        assert_eq!(mode(&d), 0o700, "made private again");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = Spool::open(&link, 1 << 20)
            .err()
            .expect("a link is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            let e = Spool::open(&d, 1 << 20).err().expect("refused");
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
    }

    #[test]
    fn in_memory_the_order_and_bound_hold() {
        let one = encode(&batch(2, "x")).len() as u64;
        let mut s = Spool::in_memory(Path::new("/nonexistent"), one * 2);
        assert!(s.is_memory());
        assert_eq!(s.push(&batch(2, "a")).unwrap(), Pushed::Spooled);
        assert_eq!(s.push(&batch(2, "b")).unwrap(), Pushed::Spooled);
        assert_eq!(s.push(&batch(2, "c")).unwrap(), Pushed::Full);
        assert_eq!((s.batches(), s.messages(), s.bytes()), (2, 4, one * 2));
        assert_eq!(s.front().unwrap().unwrap(), batch(2, "a"));
        s.pop();
        assert_eq!(s.front().unwrap().unwrap(), batch(2, "b"));
        s.pop();
        assert!(s.front().is_none() && s.bytes() == 0);
        assert!(!Path::new("/nonexistent").exists());
    }

    #[test]
    fn one_process_per_spool_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Spool::open(dir.path(), 1 << 20).unwrap();
        match Spool::open(dir.path(), 1 << 20) {
            Err(SpoolError::Locked(_)) => {}
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn decode_rejects_what_encode_did_not_write() {
        let good = encode(&batch(2, "z"));
        assert_eq!(decode(&good).unwrap(), batch(2, "z"));
        let mut wrong_count = good.clone();
        wrong_count[8] = 3;
        assert!(decode(&wrong_count).unwrap_err().contains("header says 3"));
        assert!(decode(b"ALOGSPL2xxxxxxxxxxxxxxxxxxxxxxxx").is_err());
    }
}
