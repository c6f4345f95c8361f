//! JSON Lines output: one record per line, whole lines only, file mode 0600.

use std::io::{BufWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use anyhow::Context;

use super::{OutputClosed, Sink};
use crate::model::Record;

/// Writes records as JSON Lines to a file or to stdout.
pub struct JsonlSink {
    out: BufWriter<Box<dyn Write + Send>>,
    line: Vec<u8>,
    records: u64,
    /// For error messages: the file, or "standard output".
    name: String,
    /// The descriptor written to when it is a pipe (stdout or a FIFO): a reader that has
    /// gone is noticed at the next flush even when there is nothing to write.
    pipe: Option<RawFd>,
}

fn is_fifo(fd: RawFd) -> bool {
    // SAFETY: fstat into a zeroed struct; an invalid fd only makes it fail.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

/// True when `fd` is a pipe whose every reader has closed it (poll reports POLLERR for
/// the writing end then).
fn reader_gone(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLERR != 0
}

impl JsonlSink {
    /// `-` means stdout. A file is created with mode 0600 (records name processes and
    /// peers) and appended to if it exists and is ours alone; a symbolic link, or a file
    /// someone else owns or can write, is refused (`crate::fsutil`).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if path.as_os_str() == "-" {
            let pipe = is_fifo(libc::STDOUT_FILENO).then_some(libc::STDOUT_FILENO);
            let mut s = Self::from_writer(Box::new(std::io::stdout()));
            s.name = "standard output".into();
            s.pipe = pipe;
            return Ok(s);
        }
        let f = crate::fsutil::open_append(path).context("cannot open the output for writing")?;
        let pipe = is_fifo(f.as_raw_fd()).then_some(f.as_raw_fd());
        let mut s = Self::from_writer(Box::new(f));
        s.name = path.display().to_string();
        s.pipe = pipe;
        Ok(s)
    }

    pub fn from_writer(w: Box<dyn Write + Send>) -> Self {
        Self {
            out: BufWriter::with_capacity(256 * 1024, w),
            line: Vec::with_capacity(2048),
            records: 0,
            name: "the output".into(),
            pipe: None,
        }
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// A closed pipe is `OutputClosed` (the caller ends the run quietly); anything else
    /// names the output.
    fn failed(&self, e: std::io::Error) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return OutputClosed.into();
        }
        anyhow::Error::new(e).context(format!("writing records to {}", self.name))
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, rec: &Record) -> anyhow::Result<()> {
        // Serialise into a reused buffer first, so that the file only ever receives
        // whole lines.
        self.line.clear();
        serde_json::to_writer(&mut self.line, rec).context("serialising a record")?;
        self.line.push(b'\n');
        if let Err(e) = self.out.write_all(&self.line) {
            return Err(self.failed(e));
        }
        self.records += 1;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Err(e) = self.out.flush() {
            return Err(self.failed(e));
        }
        if self.pipe.is_some_and(reader_gone) {
            return Err(OutputClosed.into());
        }
        Ok(())
    }
}

/// Longest line `read_records` accepts: far above any record we write.
pub const MAX_RECORD_LINE: usize = 16 << 20;

/// Reads a recording back, one record per line. A line that is not a record is an error
/// naming its line number (a recording is our own output: damage should be seen, not
/// skipped), and ends the reading; so is a line longer than `MAX_RECORD_LINE`, read no
/// further than that.
pub fn read_records(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Record>>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open recording {}", path.display()))?;
    Ok(RecordLines {
        r: std::io::BufReader::new(f),
        name: path.display().to_string(),
        line: 0,
        buf: Vec::new(),
        done: false,
    })
}

struct RecordLines<R> {
    r: R,
    name: String,
    line: usize,
    buf: Vec<u8>,
    done: bool,
}

impl<R: std::io::BufRead> Iterator for RecordLines<R> {
    type Item = anyhow::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::{BufRead, Read};
        while !self.done {
            self.buf.clear();
            self.line += 1;
            let limit = MAX_RECORD_LINE as u64 + 1;
            let n = match (&mut self.r).take(limit).read_until(b'\n', &mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Some(Err(
                        anyhow::Error::new(e).context(format!("reading {}", self.name))
                    ));
                }
            };
            if n == 0 {
                self.done = true;
                break;
            }
            if self.buf.len() > MAX_RECORD_LINE {
                self.done = true;
                return Some(Err(anyhow::anyhow!(
                    "{}:{}: a line longer than {} MiB: not a k8s-alog record",
                    self.name,
                    self.line,
                    MAX_RECORD_LINE >> 20
                )));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let r = serde_json::from_slice::<Record>(&self.buf)
                .with_context(|| format!("{}:{}: not a k8s-alog record", self.name, self.line));
            if r.is_err() {
                self.done = true;
            }
            if self.buf.capacity() > 1 << 20 {
                self.buf = Vec::new();
            }
            return Some(r);
        }
        None
    }
}

/// Records of a recording given as bytes (see `read_records`).
pub fn records_from<'a>(
    bytes: &'a [u8],
    name: &str,
) -> impl Iterator<Item = anyhow::Result<Record>> + 'a {
    RecordLines {
        r: bytes,
        name: name.to_string(),
        line: 0,
        buf: Vec::new(),
        done: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LossCounters, StatsRecord, UserCounters};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    fn stats() -> Record {
        Record::Stats(StatsRecord {
            v: 1,
            time: "t".into(),
            mono_ns: 1,
            uptime_s: 0.0,
            kernel: Default::default(),
            user: UserCounters::default(),
            lost: LossCounters::default(),
            attribution: None,
            tls_not_visible: Vec::new(),
            hooks: None,
            tls_probes: None,
        })
    }

    /// A recording with a line longer than any record stops there, with its line number,
    /// read no further than the bound.
    #[test]
    fn an_endless_line_is_an_error_not_a_balloon() {
        let mut bytes = serde_json::to_vec(&stats()).unwrap();
        bytes.push(b'\n');
        bytes.resize(bytes.len() + MAX_RECORD_LINE + 10, b' ');
        bytes.extend_from_slice(b"x\n");
        bytes.extend(serde_json::to_vec(&stats()).unwrap());
        let got: Vec<_> = records_from(&bytes, "big.jsonl").collect();
        assert_eq!(got.len(), 2, "the record, then the error; nothing after it");
        assert!(got[0].is_ok());
        let e = format!("{:#}", got[1].as_ref().unwrap_err());
        assert!(e.contains("big.jsonl:2: a line longer than 16 MiB"), "{e}");
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let out = dir.path().join("out.jsonl");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        let e = JsonlSink::open(&out).err().expect("refused");
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
    }

    #[test]
    fn a_closed_pipe_is_output_closed_other_errors_name_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut s = JsonlSink::open(&fifo).unwrap();
        s.write(&stats()).unwrap();
        s.flush().unwrap();
        drop(reader);
        // Nothing left to write: the gone reader is still noticed.
        let e = s.flush().unwrap_err();
        assert!(e.is::<OutputClosed>(), "{e:#}");
        // And a write into the closed pipe says the same.
        s.write(&stats()).unwrap();
        assert!(s.flush().unwrap_err().is::<OutputClosed>());

        let mut full = JsonlSink::open(Path::new("/dev/full")).unwrap();
        full.write(&stats()).unwrap();
        let e = full.flush().unwrap_err();
        assert!(!e.is::<OutputClosed>());
        let msg = format!("{e:#}");
        assert!(
            msg.contains("/dev/full") && msg.contains("No space left"),
            "{msg}"
        );
    }

    #[test]
    fn writes_whole_lines_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let mut s = JsonlSink::open(&p).unwrap();
        let rec = stats();
        s.write(&rec).unwrap();
        s.write(&rec).unwrap();
        s.flush().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
