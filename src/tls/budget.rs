//! Limits on the work spent looking at one file: the files are the node's binaries and
//! libraries, which any pod controls, so each inspection is bounded in bytes read, in
//! function-table entries and instructions examined, and in wall-clock time.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant};

/// The bounds of one inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from the file in all (headers, symbol and string tables, the Go function
    /// table, code). The largest Go binaries seen on nodes have function tables of a few
    /// tens of MiB.
    pub read_bytes: u64,
    /// Separate reads from the file (each is a buffer kept until the inspection ends).
    pub reads: usize,
    /// Go function-table entries and ELF symbols examined.
    pub entries: u64,
    /// Machine instructions decoded.
    pub instructions: u64,
    /// Wall-clock time: a backstop behind the counted limits, which already bound the work
    /// to well under a second; it is set high enough that a loaded or emulated machine
    /// (an emulated CPU runs ~15x slower) does not refuse real binaries.
    pub time: Duration,
}

impl Limits {
    /// What one inspection may spend: far above what real files need (a 100 MB Go binary
    /// takes about 40 MiB of reads, 150,000 function entries, a few thousand instructions
    /// and some tens of milliseconds).
    pub const DEFAULT: Self = Self {
        read_bytes: 256 << 20,
        reads: 2048,
        entries: 8_000_000,
        instructions: 1_000_000,
        time: Duration::from_secs(5),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which limit an inspection reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    ReadBytes,
    Reads,
    Entries,
    Instructions,
    Time,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReadBytes => "bytes read",
            Self::Reads => "number of reads",
            Self::Entries => "function entries examined",
            Self::Instructions => "instructions decoded",
            Self::Time => "time",
        })
    }
}

/// How often (in units of work) the clock is looked at.
const CLOCK_EVERY: u64 = 1024;

/// What one inspection has spent. Shared by reference (cells): the file reader and the
/// analysis both draw from it. Once a limit is reached every later request is refused.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    deadline: Instant,
    bytes: Cell<u64>,
    reads: Cell<usize>,
    entries: Cell<u64>,
    instructions: Cell<u64>,
    hit: Cell<Option<Limit>>,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            limits,
            deadline: now.checked_add(limits.time).unwrap_or(now),
            bytes: Cell::new(0),
            reads: Cell::new(0),
            entries: Cell::new(0),
            instructions: Cell::new(0),
            hit: Cell::new(None),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The first limit reached, if any.
    pub fn hit(&self) -> Option<Limit> {
        self.hit.get()
    }

    fn refuse(&self, l: Limit) -> bool {
        if self.hit.get().is_none() {
            self.hit.set(Some(l));
        }
        false
    }

    /// True while there is time left (and no other limit was reached).
    pub fn in_time(&self) -> bool {
        if self.hit.get().is_some() {
            return false;
        }
        if Instant::now() >= self.deadline {
            return self.refuse(Limit::Time);
        }
        true
    }

    /// One read of `len` bytes; false when it would go over a limit.
    pub fn read(&self, len: u64) -> bool {
        if !self.in_time() {
            return false;
        }
        let reads = self.reads.get().saturating_add(1);
        if reads > self.limits.reads {
            return self.refuse(Limit::Reads);
        }
        let bytes = self.bytes.get().saturating_add(len);
        if bytes > self.limits.read_bytes {
            return self.refuse(Limit::ReadBytes);
        }
        self.reads.set(reads);
        self.bytes.set(bytes);
        true
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.get()
    }

    /// One more function-table entry or symbol; false once over a limit.
    pub fn entry(&self) -> bool {
        Self::tick(self, &self.entries, self.limits.entries, Limit::Entries)
    }

    /// One more decoded instruction; false once over a limit.
    pub fn instruction(&self) -> bool {
        Self::tick(
            self,
            &self.instructions,
            self.limits.instructions,
            Limit::Instructions,
        )
    }

    fn tick(&self, cell: &Cell<u64>, max: u64, l: Limit) -> bool {
        if self.hit.get().is_some() {
            return false;
        }
        let n = cell.get().saturating_add(1);
        if n > max {
            return self.refuse(l);
        }
        cell.set(n);
        if n.is_multiple_of(CLOCK_EVERY) {
            return self.in_time();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_sticky() {
        let b = Budget::new(Limits {
            entries: 3,
            ..Limits::DEFAULT
        });
        assert!(b.entry() && b.entry() && b.entry());
        assert!(!b.entry());
        assert_eq!(b.hit(), Some(Limit::Entries));
        // Everything is refused after the first limit.
        assert!(!b.read(1));
        assert!(!b.instruction());
        assert_eq!(b.hit(), Some(Limit::Entries));
    }

    #[test]
    fn reads_count_bytes_and_calls() {
        let b = Budget::new(Limits {
            read_bytes: 100,
            reads: 10,
            ..Limits::DEFAULT
        });
        assert!(b.read(60));
        assert!(!b.read(41));
        assert_eq!(b.hit(), Some(Limit::ReadBytes));
        assert_eq!(b.bytes_read(), 60);
        let b = Budget::new(Limits {
            reads: 2,
            ..Limits::DEFAULT
        });
        assert!(b.read(0) && b.read(0) && !b.read(0));
        assert_eq!(b.hit(), Some(Limit::Reads));
    }

    #[test]
    fn time_runs_out() {
        let b = Budget::new(Limits {
            time: Duration::ZERO,
            ..Limits::DEFAULT
        });
        assert!(!b.in_time());
        assert_eq!(b.hit(), Some(Limit::Time));
        // The clock is read every CLOCK_EVERY units of work.
        let b = Budget::new(Limits {
            time: Duration::from_millis(1),
            ..Limits::DEFAULT
        });
        std::thread::sleep(Duration::from_millis(2));
        let mut n = 0;
        while b.instruction() {
            n += 1;
        }
        assert_eq!(n, CLOCK_EVERY - 1);
        assert_eq!(b.hit(), Some(Limit::Time));
    }
}
