//! A file read in owned pieces, for the ELF parser: each range asked for is read with a
//! positioned read (pread) into a buffer kept until the inspection ends, within a
//! `Budget`. Never a memory map: the files are binaries and libraries that pods control,
//! and a mapped file truncated by its owner while it is read kills the reader (SIGBUS).
//! A file that changes under us reads short and fails cleanly instead.

use std::cell::{Cell, OnceCell};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use object::ReadRef;

use super::budget::{Budget, Limits};

/// Bytes read at the start of the file at once (ELF header and program headers).
const HEAD: u64 = 4096;
/// Longest string read from outside a string table read whole.
const MAX_STRING: u64 = 4096;

struct Piece {
    at: u64,
    bytes: Box<[u8]>,
}

impl Piece {
    /// The bytes `[offset, offset + size)` if this piece holds them all.
    fn get(&self, offset: u64, size: u64) -> Option<&[u8]> {
        let from = usize::try_from(offset.checked_sub(self.at)?).ok()?;
        let to = from.checked_add(usize::try_from(size).ok()?)?;
        self.bytes.get(from..to)
    }
}

/// An open file and the pieces of it read so far.
pub struct Image {
    file: File,
    len: u64,
    budget: Budget,
    /// Filled in order, never emptied before the image is dropped, so that a piece can be
    /// lent out for the image's lifetime (what `ReadRef` asks for). `Limits::reads` long.
    pieces: Box<[OnceCell<Piece>]>,
    used: Cell<usize>,
    /// The first read error other than the file being shorter than its headers say.
    io_error: Cell<Option<std::io::ErrorKind>>,
}

impl Image {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::new(File::open(path)?, Limits::DEFAULT)
    }

    /// An image of an open file (the descriptor is duplicated).
    pub fn of_file(f: &File, limits: Limits) -> std::io::Result<Self> {
        Self::new(f.try_clone()?, limits)
    }

    pub fn new(file: File, limits: Limits) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let me = Self {
            file,
            len,
            budget: Budget::new(limits),
            pieces: (0..limits.reads).map(|_| OnceCell::new()).collect(),
            used: Cell::new(0),
            io_error: Cell::new(None),
        };
        // The headers, in one read.
        if len > 0 {
            let _ = me.load(0, len.min(HEAD));
        }
        if let Some(kind) = me.io_error.get() {
            return Err(kind.into());
        }
        Ok(me)
    }

    /// Length of the file when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// A read error that was not the file being short (EIO and the like), if any: the
    /// inspection says nothing about the file then.
    pub fn io_error(&self) -> Option<std::io::Error> {
        self.io_error.get().map(Into::into)
    }

    /// True when the file starts with the ELF magic.
    pub fn is_elf(&self) -> bool {
        self.read_bytes_at(0, 4).is_ok_and(|m| m == b"\x7fELF")
    }

    fn find(&self, offset: u64, size: u64) -> Option<&[u8]> {
        self.pieces[..self.used.get()]
            .iter()
            .rev()
            .find_map(|p| p.get()?.get(offset, size))
    }

    /// Read `[offset, offset + size)` into a new piece.
    fn load(&self, offset: u64, size: u64) -> Option<&Piece> {
        let end = offset.checked_add(size)?;
        if end > self.len {
            return None;
        }
        // The budget counts every read, so it runs out before the pieces do.
        if !self.budget.read(size) {
            return None;
        }
        let slot = self.pieces.get(self.used.get())?;
        let size = usize::try_from(size).ok()?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(size).ok()?;
        bytes.resize(size, 0);
        if let Err(e) = self.file.read_exact_at(&mut bytes, offset) {
            if e.kind() != std::io::ErrorKind::UnexpectedEof && self.io_error.get().is_none() {
                self.io_error.set(Some(e.kind()));
            }
            return None;
        }
        self.used.set(self.used.get() + 1);
        let _ = slot.set(Piece {
            at: offset,
            bytes: bytes.into_boxed_slice(),
        });
        slot.get()
    }

    /// Read a range whole (a string or symbol table), so that later reads inside it
    /// cost nothing. False when it does not fit the budget.
    pub fn preload(&self, offset: u64, size: u64) -> bool {
        size == 0 || self.find(offset, size).is_some() || self.load(offset, size).is_some()
    }
}

impl<'a> ReadRef<'a> for &'a Image {
    fn len(self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        if size == 0 {
            return Ok(&[]);
        }
        if let Some(b) = self.find(offset, size) {
            return Ok(b);
        }
        self.load(offset, size).map(|p| &p.bytes[..]).ok_or(())
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        if range.start >= range.end || range.end > self.len {
            return Err(());
        }
        let until = |b: &'a [u8]| b.iter().position(|&c| c == delimiter).map(|n| &b[..n]);
        // Inside a piece already read (string tables are preloaded whole).
        let in_piece = self.pieces[..self.used.get()].iter().rev().find_map(|p| {
            let p = p.get()?;
            let from = usize::try_from(range.start.checked_sub(p.at)?).ok()?;
            let avail = range.end.checked_sub(p.at)?.min(p.bytes.len() as u64);
            let to = usize::try_from(avail).ok()?;
            until(p.bytes.get(from..to)?)
        });
        if let Some(s) = in_piece {
            return Ok(s);
        }
        let size = (range.end - range.start).min(MAX_STRING);
        let p = self.load(range.start, size).ok_or(())?;
        until(&p.bytes).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_of(bytes: &[u8], limits: Limits) -> (tempfile::NamedTempFile, Image) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        let img = Image::of_file(f.as_file(), limits).unwrap();
        (f, img)
    }

    #[test]
    fn reads_and_reuses_pieces() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (_f, img) = image_of(&data, Limits::DEFAULT);
        let r = &img;
        assert!(!img.is_elf());
        assert_eq!(r.read_bytes_at(10, 5).unwrap(), &data[10..15]);
        let used = img.used.get();
        // Inside the head piece: no new read.
        assert_eq!(r.read_bytes_at(100, 100).unwrap(), &data[100..200]);
        assert_eq!(img.used.get(), used);
        // Past the head: a new piece, then reused.
        assert_eq!(r.read_bytes_at(5000, 3000).unwrap(), &data[5000..8000]);
        assert_eq!(r.read_bytes_at(6000, 10).unwrap(), &data[6000..6010]);
        assert_eq!(img.used.get(), used + 1);
        // Out of the file, or past u64::MAX.
        assert!(r.read_bytes_at(9990, 11).is_err());
        assert!(r.read_bytes_at(u64::MAX - 1, 4).is_err());
        assert!(r.read_bytes_at_until(9990..u64::MAX, 0).is_err());
    }

    #[test]
    fn strings() {
        let mut data = vec![b'x'; 9000];
        data[8000..8006].copy_from_slice(b"hello\0");
        data[100..103].copy_from_slice(b"ab\0");
        let (_f, img) = image_of(&data, Limits::DEFAULT);
        let r = &img;
        assert_eq!(r.read_bytes_at_until(100..9000, 0).unwrap(), b"ab");
        assert_eq!(r.read_bytes_at_until(8000..9000, 0).unwrap(), b"hello");
        // The range ends before the delimiter.
        assert!(r.read_bytes_at_until(8000..8003, 0).is_err());
        // No delimiter within MAX_STRING.
        assert!(r.read_bytes_at_until(0..100, 0).is_err());
    }

    #[test]
    fn budget_bounds_reads() {
        let data = vec![0u8; 1 << 20];
        let (_f, img) = image_of(
            &data,
            Limits {
                read_bytes: 64 << 10,
                reads: 8,
                ..Limits::DEFAULT
            },
        );
        let r = &img;
        assert!(r.read_bytes_at(100_000, 100_000).is_err());
        assert_eq!(
            img.budget().hit(),
            Some(super::super::budget::Limit::ReadBytes)
        );
        let (_f, img) = image_of(
            &data,
            Limits {
                reads: 4,
                ..Limits::DEFAULT
            },
        );
        let r = &img;
        for i in 0..3 {
            assert!(r.read_bytes_at(10_000 * (i + 1), 10).is_ok());
        }
        assert!(r.read_bytes_at(90_000, 10).is_err());
        assert_eq!(img.budget().hit(), Some(super::super::budget::Limit::Reads));
    }

    #[test]
    fn truncated_after_open() {
        let data = vec![7u8; 100_000];
        let (f, img) = image_of(&data, Limits::DEFAULT);
        f.as_file().set_len(10).unwrap();
        let r = &img;
        assert!(r.read_bytes_at(50_000, 10).is_err());
        assert!(img.io_error().is_none(), "a short file is not an I/O error");
        // What was read before stays readable.
        assert_eq!(r.read_bytes_at(0, 10).unwrap(), &data[..10]);
    }
}
