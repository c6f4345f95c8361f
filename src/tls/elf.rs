//! ELF reading for TLS probes: defined function symbols, sections, virtual address to file
//! offset (what a uprobe is placed by), and the libraries an executable asks for.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

/// Why a file could not be read as ELF.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a 64-bit ELF file: {0}")]
    Parse(#[from] object::read::Error),
}

/// A file mapped read-only into memory (ELF files can be large: map, never read whole).
pub struct Mapped {
    map: Mmap,
}

impl Mapped {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::of_file(&File::open(path)?)
    }

    pub fn of_file(f: &File) -> std::io::Result<Self> {
        // SAFETY: the mapping is read-only and private; a file truncated under us would
        // fault, which executables and libraries in use are not (ETXTBSY for writers of
        // running executables; libraries are replaced by rename, never rewritten).
        let map = unsafe { Mmap::map(f)? };
        Ok(Self { map })
    }

    pub fn data(&self) -> &[u8] {
        &self.map
    }

    /// True when the file starts with the ELF magic.
    pub fn is_elf(&self) -> bool {
        self.map.len() >= 4 && &self.map[..4] == b"\x7fELF"
    }

    pub fn parse(&self) -> Result<ElfFile64<'_, Endianness>, ElfError> {
        Ok(ElfFile64::parse(self.data())?)
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
pub fn defined_functions<'n>(
    file: &ElfFile64<'_, Endianness>,
    names: &[&'n str],
) -> HashMap<&'n str, u64> {
    defined_funcs(file, names)
        .into_iter()
        .map(|(n, f)| (n, f.addr))
        .collect()
}

/// Like `defined_functions`, with sizes.
pub fn defined_funcs<'n>(
    file: &ElfFile64<'_, Endianness>,
    names: &[&'n str],
) -> HashMap<&'n str, Func> {
    let mut out = HashMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
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

/// File offset of a virtual address inside a loaded segment's file image.
pub fn file_offset(file: &ElfFile64<'_, Endianness>, vaddr: u64) -> Option<u64> {
    for seg in file.segments() {
        let (off, size) = seg.file_range();
        let start = seg.address();
        if vaddr >= start && vaddr - start < size {
            return Some(off + (vaddr - start));
        }
    }
    None
}

/// `len` bytes of the file image at a virtual address (inside one segment).
pub fn bytes_at<'d>(
    file: &ElfFile64<'d, Endianness>,
    data: &'d [u8],
    vaddr: u64,
    len: u64,
) -> Option<&'d [u8]> {
    for seg in file.segments() {
        let (off, size) = seg.file_range();
        let start = seg.address();
        if vaddr >= start && vaddr - start < size {
            let rel = vaddr - start;
            if len > size - rel {
                return None;
            }
            let from = usize::try_from(off + rel).ok()?;
            let to = from.checked_add(usize::try_from(len).ok()?)?;
            return data.get(from..to);
        }
    }
    None
}

/// Contents and address of a section, by exact name.
pub fn section<'d>(file: &ElfFile64<'d, Endianness>, name: &str) -> Option<(&'d [u8], u64)> {
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

pub fn needs(file: &ElfFile64<'_, Endianness>) -> Needs {
    let mut out = Needs::default();
    let endian = file.endian();
    let data = file.data();
    let sections = file.elf_section_table();
    let Ok(Some((dyns, link))) = sections.dynamic(endian, data) else {
        return out;
    };
    let Ok(strings) = sections.strings(endian, data, link) else {
        return out;
    };
    for d in dyns {
        let Some(tag) = d.tag32(endian) else { continue };
        if tag != elf::DT_NEEDED && tag != elf::DT_RUNPATH && tag != elf::DT_RPATH {
            continue;
        }
        let Ok(s) = d.string(endian, strings) else {
            continue;
        };
        let s = String::from_utf8_lossy(s).into_owned();
        if tag == elf::DT_NEEDED {
            out.needed.push(s);
        } else {
            out.runpath
                .extend(s.split(':').filter(|p| !p.is_empty()).map(String::from));
        }
    }
    out
}

/// True for an executable with a program interpreter (the dynamic loader): libraries
/// get mapped into its process after exec. Static executables (most Go binaries, static
/// PIE) have none.
pub fn is_dynamic(file: &ElfFile64<'_, Endianness>) -> bool {
    use object::read::elf::ProgramHeader;
    let endian = file.endian();
    file.elf_program_headers()
        .iter()
        .any(|p| p.p_type(endian) == elf::PT_INTERP)
}

/// True for an x86-64 ELF file (the only architecture whose probes are written).
pub fn is_x86_64(file: &ElfFile64<'_, Endianness>) -> bool {
    file.elf_header().e_machine(file.endian()) == elf::EM_X86_64
}

/// Name of the section that holds a virtual address.
pub fn section_name_at(file: &ElfFile64<'_, Endianness>, vaddr: u64) -> Option<String> {
    file.sections()
        .find(|s| vaddr >= s.address() && vaddr - s.address() < s.size())
        .and_then(|s| s.name().ok().map(String::from))
}

/// True when the file has a section of this name that holds bytes.
pub fn has_section(file: &ElfFile64<'_, Endianness>, name: &str) -> bool {
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
        let m = Mapped::open(&exe).unwrap();
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
        assert!(is_dynamic(&f), "test executables link libc dynamically");
        // libc's symbols are imports here, never definitions.
        let found = defined_functions(&f, &["malloc", "SSL_read"]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn not_elf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        let m = Mapped::open(&p).unwrap();
        assert!(!m.is_elf());
        assert!(m.parse().is_err());
    }
}
