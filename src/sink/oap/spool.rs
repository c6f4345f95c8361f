//! The bounded on-disk spool: batches that could not be delivered wait here, oldest
//! first, until the OAP is back (also across restarts). One file per batch
//! (`<seq>.batch`, written to a temporary name then renamed, so a crash leaves no half
//! file under a batch name); the total size never exceeds the bound: a batch that does
//! not fit is refused and the caller counts it as dropped. A damaged file is set aside
//! as `<name>.corrupt`, counted, and skipped.
//!
//! File format: `ALOGSPL1`, message count (u32 LE), payload length (u64 LE), FNV-1a 64
//! of the payload (u64 LE), payload = the messages, each length-delimited protobuf.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use prost::Message;

use super::pb::EbpfAccessLogMessage;

const MAGIC: &[u8; 8] = b"ALOGSPL1";
const HEADER: usize = 8 + 4 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("spool directory {0} is in use by another k8s-alog (use another --oap-spool-dir)")]
    Locked(PathBuf),
    #[error("spool file {0} is damaged ({1}); set aside as .corrupt")]
    Corrupt(PathBuf, String),
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

/// The spool directory, locked for this process.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
    /// Files set aside as damaged since start.
    pub corrupt_files: u64,
    /// Largest size reached, bytes.
    pub peak_bytes: u64,
    _lock: File,
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
    out.extend_from_slice(&(msgs.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Spool-file bytes back to a batch, or why not.
pub fn decode(data: &[u8]) -> Result<Vec<EbpfAccessLogMessage>, String> {
    if data.len() < HEADER {
        return Err(format!("{} bytes, shorter than the header", data.len()));
    }
    if &data[..8] != MAGIC {
        return Err("not a spool file (bad magic)".into());
    }
    let count = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
    let len = u64::from_le_bytes(data[12..20].try_into().unwrap_or_default());
    let sum = u64::from_le_bytes(data[20..28].try_into().unwrap_or_default());
    let payload = &data[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "payload {} bytes, header says {len}",
            payload.len()
        ));
    }
    if fnv1a64(payload) != sum {
        return Err("checksum mismatch".into());
    }
    let mut buf = payload;
    let mut out = Vec::with_capacity(count as usize);
    while !buf.is_empty() {
        let m = EbpfAccessLogMessage::decode_length_delimited(&mut buf)
            .map_err(|e| format!("message {}: {e}", out.len()))?;
        out.push(m);
    }
    if out.len() != count as usize {
        return Err(format!("{} messages, header says {count}", out.len()));
    }
    Ok(out)
}

fn seq_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".batch")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

impl Spool {
    /// Open (creating it with mode 0700) and lock `dir`; batches left by an earlier run
    /// are kept and delivered first. Their size counts against `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let io = |e| SpoolError::Io(dir.to_path_buf(), e);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(SpoolError::Locked(dir.to_path_buf()));
        }
        let mut found = Vec::new();
        for e in fs::read_dir(dir).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A batch being written when a previous run died.
                let _ = fs::remove_file(e.path());
                continue;
            }
            let Some(seq) = seq_of(&name) else { continue };
            let bytes = e.metadata().map_err(io)?.len();
            let messages = read_count(&e.path()).unwrap_or(0);
            found.push(Entry {
                seq,
                bytes,
                messages,
            });
        }
        found.sort_by_key(|e| e.seq);
        let bytes = found.iter().map(|e| e.bytes).sum();
        let next_seq = found.last().map_or(1, |e| e.seq + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            entries: found.into(),
            bytes,
            next_seq,
            corrupt_files: 0,
            peak_bytes: bytes,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Append a batch, unless it would take the spool past its bound.
    pub fn push(&mut self, msgs: &[EbpfAccessLogMessage]) -> Result<Pushed, SpoolError> {
        let data = encode(msgs);
        if self.bytes + data.len() as u64 > self.max_bytes {
            return Ok(Pushed::Full);
        }
        let seq = self.next_seq;
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        let io = |e| SpoolError::Io(tmp.clone(), e);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        if let Err(e) = f.write_all(&data) {
            let _ = fs::remove_file(&tmp);
            return Err(io(e));
        }
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| SpoolError::Io(path.clone(), e))?;
        self.next_seq += 1;
        self.bytes += data.len() as u64;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        self.entries.push_back(Entry {
            seq,
            bytes: data.len() as u64,
            messages: msgs.len() as u32,
        });
        Ok(Pushed::Spooled)
    }

    /// The oldest batch, read back (it stays spooled until `pop`). A damaged file is
    /// renamed `.corrupt`, leaves the spool, is counted, and returned as the error.
    pub fn front(&mut self) -> Option<Result<Vec<EbpfAccessLogMessage>, SpoolError>> {
        let e = *self.entries.front()?;
        let path = self.path(e.seq);
        let mut data = Vec::new();
        let read = File::open(&path).and_then(|mut f| f.read_to_end(&mut data));
        let res = match read {
            Ok(_) => decode(&data),
            Err(err) => Err(format!("cannot read: {err}")),
        };
        Some(match res {
            Ok(msgs) => Ok(msgs),
            Err(why) => {
                self.entries.pop_front();
                self.bytes = self.bytes.saturating_sub(e.bytes);
                self.corrupt_files += 1;
                let aside = path.with_extension("batch.corrupt");
                let _ = fs::rename(&path, &aside);
                Err(SpoolError::Corrupt(path, why))
            }
        })
    }

    /// Forget the oldest batch (it was delivered).
    pub fn pop(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            let _ = fs::remove_file(self.path(e.seq));
            self.bytes = self.bytes.saturating_sub(e.bytes);
        }
    }
}

fn read_count(path: &Path) -> Option<u32> {
    let mut f = File::open(path).ok()?;
    let mut h = [0u8; 12];
    f.read_exact(&mut h).ok()?;
    if &h[..8] != MAGIC {
        return None;
    }
    Some(u32::from_le_bytes(h[8..12].try_into().ok()?))
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

    #[test]
    fn damaged_files_are_set_aside_and_counted_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for t in ["a", "b", "c", "d"] {
            s.push(&batch(2, t)).unwrap();
        }
        drop(s);
        let mut files: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "batch"))
            .collect();
        files.sort();
        // a: a flipped payload byte; b: truncated; c: garbage; d intact.
        let mut a = fs::read(&files[0]).unwrap();
        let last = a.len() - 1;
        a[last] ^= 0xff;
        fs::write(&files[0], a).unwrap();
        let b = fs::read(&files[1]).unwrap();
        fs::write(&files[1], &b[..b.len() - 3]).unwrap();
        fs::write(&files[2], b"hello").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.batches(), 4);
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
        assert!(errors[1].contains("header says"), "{errors:?}");
        assert!(errors[2].contains("shorter than the header"), "{errors:?}");
        s.pop();
        assert!(s.is_empty() && s.bytes() == 0);
        let aside = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".corrupt")
            })
            .count();
        assert_eq!(aside, 3);
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
        wrong_count[8] = 9;
        assert!(decode(&wrong_count).unwrap_err().contains("header says 9"));
        assert!(decode(b"ALOGSPL2xxxxxxxxxxxxxxxxxxxxxxxx").is_err());
    }
}
