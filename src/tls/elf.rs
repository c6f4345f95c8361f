//! ELF reading for TLS probes: defined function symbols, sections, virtual address to file
//! offset (what a uprobe is placed by), and the libraries an executable asks for. Every
//! address and offset comes from a file a pod controls: all arithmetic on them is checked.

use std::collections::HashMap;

use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef, SymbolKind};

pub use super::image::Image;

/// A parsed ELF file whose bytes are read on demand from an `Image`.
pub type Elf<'d> = ElfFile64<'d, Endianness, &'d Image>;

/// Why a file could not be read as ELF.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a 64-bit ELF file: {0}")]
    Parse(#[from] object::read::Error),
}

impl Image {
    /// Parse the ELF headers, then read the string tables whole (symbol and section names
    /// are looked up one by one).
    pub fn parse(&self) -> Result<Elf<'_>, ElfError> {
        let file = ElfFile64::parse(self)?;
        let endian = file.endian();
        for s in file.elf_section_table().iter() {
            if s.sh_type(endian) == elf::SHT_STRTAB {
                if let Some((off, size)) = s.file_range(endian) {
                    let _ = self.preload(off, size);
                }
            }
        }
        Ok(file)
    }
}

/// A defined function: virtual address and size (0 when the symbol does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Func {
    pub addr: u64,
    pub size: u64,
}

/// Virtual addresses of the named functions that the file defines (not imports), from
/// `.dynsym` first, then `.symtab`. Versioned duplicates resolve to the first one seen.
pub fn defined_functions<'n>(file: &Elf<'_>, names: &[&'n str]) -> HashMap<&'n str, u64> {
    defined_funcs(file, names)
        .into_iter()
        .map(|(n, f)| (n, f.addr))
        .collect()
}

/// Like `defined_functions`, with sizes. Stops when the inspection's budget runs out.
pub fn defined_funcs<'n>(file: &Elf<'_>, names: &[&'n str]) -> HashMap<&'n str, Func> {
    let budget = file.data().budget();
    let mut out = HashMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if !budget.entry() {
            break;
        }
        if !sym.is_definition() || sym.address() == 0 || sym.kind() != SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name_bytes() else { continue };
        // `.symtab` may spell versioned symbols "SSL_read@@OPENSSL_3.0.0".
        let base = match name.iter().position(|&b| b == b'@') {
            Some(i) => &name[..i],
            None => name,
        };
        if let Some(n) = names.iter().find(|n| n.as_bytes() == base) {
            out.entry(*n).or_insert(Func {
                addr: sym.address(),
                size: sym.size(),
            });
        }
    }
    out
}

/// Where a virtual address lies in the file: the offset, and how many bytes of the same
/// loaded segment follow it in the file.
fn locate(file: &Elf<'_>, vaddr: u64) -> Option<(u64, u64)> {
    let file_len = file.data().len();
    for seg in file.segments() {
        let (off, size) = seg.file_range();
        let Some(rel) = vaddr.checked_sub(seg.address()) else {
            continue;
        };
        if rel >= size {
            continue;
        }
        // The segment as far as the file really goes.
        let at = off.checked_add(rel)?;
        let seg_end = off.checked_add(size)?.min(file_len);
        let left = seg_end.checked_sub(at).filter(|&n| n > 0)?;
        return Some((at, left));
    }
    None
}

/// File offset of a virtual address inside a loaded segment's file image.
pub fn file_offset(file: &Elf<'_>, vaddr: u64) -> Option<u64> {
    locate(file, vaddr).map(|(at, _)| at)
}

/// `len` bytes of the file image at a virtual address (inside one segment).
pub fn bytes_at<'d>(file: &Elf<'d>, vaddr: u64, len: u64) -> Option<&'d [u8]> {
    let (at, left) = locate(file, vaddr)?;
    if len > left {
        return None;
    }
    file.data().read_bytes_at(at, len).ok()
}

/// Contents and address of a section, by exact name.
pub fn section<'d>(file: &Elf<'d>, name: &str) -> Option<(&'d [u8], u64)> {
    let s = file.section_by_name(name)?;
    let data = s.data().ok()?;
    Some((data, s.address()))
}

/// DT_NEEDED names and DT_RUNPATH / DT_RPATH directories of a dynamic executable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Needs {
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
}

/// Most DT_NEEDED, DT_RUNPATH and DT_RPATH entries read.
const MAX_NEEDS: usize = 1024;

/// How an executable is linked: what it needs, and whether it has a program interpreter
/// (the dynamic loader: libraries get mapped into its process after exec; static
/// executables, most Go binaries and static PIE, have none). Reads only the headers and
/// the dynamic section, never the symbol tables.
pub fn linking(image: &Image) -> Option<(Needs, bool)> {
    let header = elf::FileHeader64::<Endianness>::parse(image).ok()?;
    let endian = header.endian().ok()?;
    let dynamic = header
        .program_headers(endian, image)
        .ok()?
        .iter()
        .any(|p| p.p_type(endian) == elf::PT_INTERP);
    let mut out = Needs::default();
    let Ok(sections) = header.sections(endian, image) else {
        return Some((out, dynamic));
    };
    let Ok(Some((dyns, link))) = sections.dynamic(endian, image) else {
        return Some((out, dynamic));
    };
    if let Ok(s) = sections.section(link) {
        if let Some((off, size)) = s.file_range(endian) {
            let _ = image.preload(off, size);
        }
    }
    let Ok(strings) = sections.strings(endian, image, link) else {
        return Some((out, dynamic));
    };
    for d in dyns {
        if out.needed.len() + out.runpath.len() >= MAX_NEEDS {
            break;
        }
        let Some(tag) = d.tag32(endian) else { continue };
        if tag != elf::DT_NEEDED && tag != elf::DT_RUNPATH && tag != elf::DT_RPATH {
            continue;
        }
        let Some(Ok(s)) = d.val32(endian).map(|v| strings.get(v)) else {
            continue;
        };
        let s = String::from_utf8_lossy(s).into_owned();
        if tag == elf::DT_NEEDED {
            out.needed.push(s);
        } else {
            out.runpath.extend(
                s.split(':')
                    .filter(|p| !p.is_empty())
                    .take(MAX_NEEDS)
                    .map(String::from),
            );
        }
    }
    Some((out, dynamic))
}

/// True for an x86-64 ELF file (the only architecture whose probes are written).
pub fn is_x86_64(file: &Elf<'_>) -> bool {
    file.elf_header().e_machine(file.endian()) == elf::EM_X86_64
}

/// Name of the section that holds a virtual address.
pub fn section_name_at(file: &Elf<'_>, vaddr: u64) -> Option<String> {
    file.sections()
        .find(|s| {
            vaddr
                .checked_sub(s.address())
                .is_some_and(|rel| rel < s.size())
        })
        .and_then(|s| s.name().ok().map(String::from))
}

/// True when the file has a section of this name that holds bytes.
pub fn has_section(file: &Elf<'_>, name: &str) -> bool {
    let endian = file.endian();
    file.elf_section_table()
        .section_by_name(endian, name.as_bytes())
        .is_some_and(|(_, s)| s.sh_type(endian) != elf::SHT_NOBITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_symbols_and_offsets() {
        let exe = std::env::current_exe().unwrap();
        let m = Image::open(&exe).unwrap();
        assert!(m.is_elf());
        let f = m.parse().unwrap();
        // Every loaded segment maps its first address to its file offset.
        for seg in f.segments() {
            let (off, size) = seg.file_range();
            if size > 0 {
                assert_eq!(file_offset(&f, seg.address()), Some(off));
            }
        }
        assert_eq!(file_offset(&f, u64::MAX - 1), None);
        let (needs, dynamic) = linking(&m).unwrap();
        assert!(dynamic, "test executables link libc dynamically");
        assert!(
            needs.needed.iter().any(|n| n.starts_with("libc.so")),
            "{needs:?}"
        );
        // libc's symbols are imports here, never definitions.
        let found = defined_functions(&f, &["malloc", "SSL_read"]);
        assert!(found.is_empty(), "{found:?}");
    }

    /// A minimal x86-64 ELF file with these program headers (type, offset, vaddr, filesz)
    /// and no sections.
    pub(crate) fn tiny_elf(phdrs: &[(u32, u64, u64, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0x1000u64.to_le_bytes()); // e_entry
        b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, phdrs.len() as u16, 64, 0, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for &(ty, off, vaddr, filesz) in phdrs {
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&5u32.to_le_bytes()); // R+X
            for v in [off, vaddr, vaddr, filesz, filesz, 0x1000] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b.resize(0x200, 0xcc);
        b
    }

    #[test]
    fn offsets_past_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        // A segment whose file offset is near u64::MAX: offset + (vaddr - start) wraps.
        std::fs::write(&p, tiny_elf(&[(1, u64::MAX - 0x10, 0x1000, 0x100)])).unwrap();
        let m = Image::open(&p).unwrap();
        let f = m.parse().unwrap();
        assert_eq!(file_offset(&f, 0x1000), None);
        assert_eq!(file_offset(&f, 0x1080), None);
        assert_eq!(bytes_at(&f, 0x1080, 4), None);
        // A segment that claims more bytes than the file has.
        std::fs::write(&p, tiny_elf(&[(1, 0x100, 0x1000, 0x10_0000)])).unwrap();
        let m = Image::open(&p).unwrap();
        let f = m.parse().unwrap();
        assert_eq!(file_offset(&f, 0x1000), Some(0x100));
        assert_eq!(file_offset(&f, 0x1100), None, "past the end of the file");
        assert_eq!(bytes_at(&f, 0x1000, 0x100), Some(&[0xcc; 0x100][..]));
        assert_eq!(bytes_at(&f, 0x1000, 0x101), None);
    }

    #[test]
    fn not_elf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        let m = Image::open(&p).unwrap();
        assert!(!m.is_elf());
        assert!(m.parse().is_err());
    }
}
