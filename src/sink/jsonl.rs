//! JSON Lines output: one record per line, whole lines only, file mode 0600.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

use super::Sink;
use crate::model::Record;

/// Writes records as JSON Lines to a file or to stdout.
pub struct JsonlSink {
    out: BufWriter<Box<dyn Write + Send>>,
    line: Vec<u8>,
    records: u64,
}

impl JsonlSink {
    /// `-` means stdout. A file is created with mode 0600 (records name processes and
    /// peers) and appended to if it exists.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let w: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot open {} for writing", path.display()))?;
            Box::new(f)
        };
        Ok(Self::from_writer(w))
    }

    pub fn from_writer(w: Box<dyn Write + Send>) -> Self {
        Self {
            out: BufWriter::with_capacity(256 * 1024, w),
            line: Vec::with_capacity(2048),
            records: 0,
        }
    }

    pub fn records(&self) -> u64 {
        self.records
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, rec: &Record) -> anyhow::Result<()> {
        // Serialise into a reused buffer first, so that the file only ever receives
        // whole lines.
        self.line.clear();
        serde_json::to_writer(&mut self.line, rec).context("serialising a record")?;
        self.line.push(b'\n');
        self.out.write_all(&self.line).context("writing a record")?;
        self.records += 1;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("flushing records")
    }
}

/// Reads a recording back, one record per line. A line that is not a record is an error
/// naming its line number (a recording is our own output: damage should be seen, not skipped).
pub fn read_records(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Record>>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open recording {}", path.display()))?;
    let name = path.display().to_string();
    Ok(std::io::BufReader::new(f)
        .lines()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Ok(s) if s.trim().is_empty()))
        .map(move |(i, l)| {
            let l = l.with_context(|| format!("reading {name}"))?;
            serde_json::from_str::<Record>(&l)
                .with_context(|| format!("{name}:{}: not a k8s-alog record", i + 1))
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LossCounters, StatsRecord, UserCounters};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_whole_lines_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let mut s = JsonlSink::open(&p).unwrap();
        let rec = Record::Stats(StatsRecord {
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
        });
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
