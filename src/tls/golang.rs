//! Go binaries: toolchain version (`.go.buildinfo`), function table (`.gopclntab`, present
//! in stripped binaries too), and the RET instructions of a function (Go's stacks move,
//! so returns are probed at each RET instead of with uretprobes). The table's counts and
//! offsets come from a file a pod controls: every one is bounded by the table's size and
//! every sum checked; the walk and the decoding draw on the inspection's `Budget`.

use std::collections::HashMap;

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection};

use super::budget::Budget;
use super::elf::{self, Elf};

/// Most RET instructions probed in one function (each is a uprobe); real crypto/tls
/// functions have a handful.
pub const MAX_RETS_PER_FUNC: usize = 64;

/// Why a Go binary's functions could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoError {
    #[error("no Go function table (.gopclntab)")]
    NoPclntab,
    #[error("unsupported Go function table (magic {0:#x})")]
    UnsupportedPclntab(u32),
    #[error("corrupt Go function table: {0}")]
    Corrupt(&'static str),
    #[error("cannot decode the instructions of {0}")]
    Undecodable(String),
    #[error("{0} has no RET instruction")]
    NoReturn(String),
    #[error("{0} has more than {MAX_RETS_PER_FUNC} RET instructions")]
    TooManyReturns(String),
    #[error("inspection budget spent")]
    OverBudget,
}

/// Function table versions, by the pclntab magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PclnVersion {
    /// Go 1.16 and 1.17 (0xfffffffa).
    Go116,
    /// Go 1.18 and 1.19 (0xfffffff0).
    Go118,
    /// Go 1.20 and later (0xfffffff1).
    Go120,
}

impl PclnVersion {
    fn from_magic(m: u32) -> Option<Self> {
        match m {
            0xffff_fffa => Some(Self::Go116),
            0xffff_fff0 => Some(Self::Go118),
            0xffff_fff1 => Some(Self::Go120),
            _ => None,
        }
    }
}

/// The Go release a binary was built with ("go1.19.8"), from `.go.buildinfo`.
pub fn build_version(file: &Elf<'_>) -> Option<String> {
    let (info, _) = elf::section(file, ".go.buildinfo")?;
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if info.len() < 32 || !info.starts_with(MAGIC) {
        return None;
    }
    let ptr_size = info[14] as usize;
    let flags = info[15];
    if flags & 2 != 0 {
        // Go 1.18+: the version string follows the header, length-prefixed (uvarint).
        let (len, n) = uvarint(&info[32..])?;
        let start = 32 + n;
        let s = info.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
        return Some(String::from_utf8_lossy(s).into_owned());
    }
    if ptr_size != 8 || flags & 1 != 0 {
        return None;
    }
    // Older: a pointer to a Go string header {ptr, len}.
    let hdr_addr = u64::from_le_bytes(info.get(16..24)?.try_into().ok()?);
    let hdr = elf::bytes_at(file, hdr_addr, 16)?;
    let ptr = u64::from_le_bytes(hdr[..8].try_into().ok()?);
    let len = u64::from_le_bytes(hdr[8..16].try_into().ok()?);
    if len > 128 {
        return None;
    }
    let s = elf::bytes_at(file, ptr, len)?;
    Some(String::from_utf8_lossy(s).into_owned())
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        // The tenth byte holds only the top bit; more is not a u64.
        if i == 9 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Minor version of a "go1.N[.x]" string (also "devel go1.N-..."), if it says.
pub fn minor_version(v: &str) -> Option<u32> {
    let at = v.find("go1.")?;
    let rest = &v[at + 4..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One function of the table: where it starts and where the next one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoFunc {
    pub entry: u64,
    pub end: u64,
}

/// The function table of a Go binary.
pub struct Pclntab<'d> {
    data: &'d [u8],
    version: PclnVersion,
    nfunc: usize,
    text_start: u64,
    funcnametab: usize,
    functab: usize,
}

impl<'d> Pclntab<'d> {
    /// Find and check the table: the `.gopclntab` section, else a search of the
    /// read-only data for its header.
    pub fn find(file: &Elf<'d>) -> Result<Self, GoError> {
        let budget = file.data().budget();
        let text = file
            .section_by_name(".text")
            .map(|s| s.address())
            .unwrap_or(0);
        if let Some((data, _)) = elf::section(file, ".gopclntab") {
            return Self::parse(data, text);
        }
        for name in [".data.rel.ro", ".rodata", ".noptrdata"] {
            let Some((data, _)) = elf::section(file, name) else {
                continue;
            };
            let mut at = 0;
            while let Some(i) = data.get(at..).and_then(find_magic) {
                if !budget.entry() {
                    return Err(GoError::OverBudget);
                }
                let start = at.saturating_add(i);
                if let Ok(t) = Self::parse(&data[start..], text) {
                    return Ok(t);
                }
                at = start.saturating_add(4);
            }
        }
        Err(GoError::NoPclntab)
    }

    /// Parse a table that starts at `data[0]`. `text` is the address of `.text`
    /// (runtime.text), used when the header's own copy was left for the loader to fill.
    pub fn parse(data: &'d [u8], text: u64) -> Result<Self, GoError> {
        if data.len() < 8 {
            return Err(GoError::Corrupt("short header"));
        }
        let magic = u32::from_le_bytes(data[..4].try_into().unwrap_or_default());
        let version = PclnVersion::from_magic(magic).ok_or(GoError::UnsupportedPclntab(magic))?;
        if data[4] != 0 || data[5] != 0 {
            return Err(GoError::Corrupt("header padding"));
        }
        if data[7] != 8 {
            return Err(GoError::Corrupt("pointer size is not 8"));
        }
        let word = |i: usize| -> Result<u64, GoError> {
            let at = 8 + i * 8; // i < 8
            data.get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                .ok_or(GoError::Corrupt("short header"))
        };
        let off = |i: usize| -> Result<usize, GoError> {
            let v = usize::try_from(word(i)?).map_err(|_| GoError::Corrupt("offset"))?;
            if v >= data.len() {
                return Err(GoError::Corrupt("offset outside the table"));
            }
            Ok(v)
        };
        let nfunc = usize::try_from(word(0)?).map_err(|_| GoError::Corrupt("nfunc"))?;
        let (text_start, funcnametab, functab) = match version {
            PclnVersion::Go116 => (0, off(2)?, off(6)?),
            PclnVersion::Go118 | PclnVersion::Go120 => {
                let t = if text != 0 { text } else { word(2)? };
                (t, off(3)?, off(7)?)
            }
        };
        let t = Self {
            data,
            version,
            nfunc,
            text_start,
            funcnametab,
            functab,
        };
        // The functab (nfunc pairs and an end marker) must fit; each function takes at
        // least a pair of 4-byte fields.
        if nfunc == 0 || nfunc > data.len() / 8 {
            return Err(GoError::Corrupt("nfunc"));
        }
        let need = nfunc
            .checked_mul(2)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(t.field()))
            .and_then(|n| n.checked_add(functab))
            .ok_or(GoError::Corrupt("nfunc"))?;
        if need > data.len() {
            return Err(GoError::Corrupt("function table outside the data"));
        }
        Ok(t)
    }

    pub fn version(&self) -> PclnVersion {
        self.version
    }

    /// Size of one functab field.
    fn field(&self) -> usize {
        match self.version {
            PclnVersion::Go116 => 8,
            _ => 4,
        }
    }

    fn read(&self, at: usize, size: usize) -> Option<u64> {
        let b = self.data.get(at..at.checked_add(size)?)?;
        Some(match size {
            4 => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
            _ => u64::from_le_bytes(b.try_into().ok()?),
        })
    }

    /// Byte offset of field `k` of functab pair `i`.
    fn slot(&self, i: usize, k: usize) -> Option<usize> {
        let f = self.field();
        i.checked_mul(2)?
            .checked_add(k)?
            .checked_mul(f)?
            .checked_add(self.functab)
    }

    /// Entry address of functab slot `i` (slot `nfunc` is the end of the last function).
    fn entry(&self, i: usize) -> Option<u64> {
        let f = self.field();
        let v = self.read(self.slot(i, 0)?, f)?;
        match self.version {
            PclnVersion::Go116 => Some(v),
            _ => self.text_start.checked_add(v),
        }
    }

    /// Name of the function in functab slot `i`, if it is at most `max_len` bytes long
    /// (names are compared with known ones: no need to scan further for the NUL).
    fn name(&self, i: usize, max_len: usize) -> Option<&'d [u8]> {
        let f = self.field();
        let funcoff = usize::try_from(self.read(self.slot(i, 1)?, f)?).ok()?;
        let func = self.functab.checked_add(funcoff)?;
        // _func: entry (uintptr in 1.16/1.17, uint32 offset later), then nameOff int32.
        let name_at = func.checked_add(f)?;
        let name_off = self.read(name_at, 4)? as u32 as i32;
        let start = i64::try_from(self.funcnametab)
            .ok()?
            .checked_add(i64::from(name_off))?;
        let rest = self.data.get(usize::try_from(start).ok()?..)?;
        let head = &rest[..rest.len().min(max_len.saturating_add(1))];
        let len = head.iter().position(|&b| b == 0)?;
        Some(&head[..len])
    }

    /// Find functions by their full Go names ("crypto/tls.(*Conn).Read"). Stops early
    /// when the budget runs out (the caller asks the budget).
    pub fn lookup<'n>(&self, names: &[&'n str], budget: &Budget) -> HashMap<&'n str, GoFunc> {
        let mut out = HashMap::new();
        let max_len = names.iter().map(|n| n.len()).max().unwrap_or(0);
        for i in 0..self.nfunc {
            if !budget.entry() {
                break;
            }
            let Some(name) = self.name(i, max_len) else {
                continue;
            };
            let Some(n) = names.iter().find(|n| n.as_bytes() == name) else {
                continue;
            };
            if let (Some(entry), Some(end)) = (self.entry(i), self.entry(i.saturating_add(1))) {
                if end > entry {
                    out.entry(*n).or_insert(GoFunc { entry, end });
                }
            }
            if out.len() == names.len() {
                break;
            }
        }
        out
    }
}

fn find_magic(data: &[u8]) -> Option<usize> {
    data.windows(8).position(|w| {
        matches!(
            u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
            0xffff_fffa | 0xffff_fff0 | 0xffff_fff1
        ) && w[4] == 0
            && w[5] == 0
            && matches!(w[6], 1 | 2 | 4)
            && w[7] == 8
    })
}

/// Addresses of every RET instruction of the function whose machine code is `code`,
/// loaded at `entry`. Decoded instruction by instruction from the entry, so that no
/// byte 0xC3 inside another instruction is taken for a RET (a probe there would corrupt
/// the target). More than `MAX_RETS_PER_FUNC` is an error: all or none are probed.
pub fn ret_addresses(
    code: &[u8],
    entry: u64,
    name: &str,
    budget: &Budget,
) -> Result<Vec<u64>, GoError> {
    // An entry so close to the end of the address space that the code would wrap is
    // not real code.
    if entry.checked_add(code.len() as u64).is_none() {
        return Err(GoError::Undecodable(name.to_string()));
    }
    let mut dec = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut instr = iced_x86::Instruction::default();
    while dec.can_decode() {
        if !budget.instruction() {
            return Err(GoError::OverBudget);
        }
        dec.decode_out(&mut instr);
        if instr.is_invalid() {
            return Err(GoError::Undecodable(name.to_string()));
        }
        if matches!(instr.code(), Code::Retnq | Code::Retnq_imm16) {
            if out.len() == MAX_RETS_PER_FUNC {
                return Err(GoError::TooManyReturns(name.to_string()));
            }
            out.push(instr.ip());
        }
    }
    if out.is_empty() {
        return Err(GoError::NoReturn(name.to_string()));
    }
    Ok(out)
}

/// Where to put a function's entry probe: the stack-check branch of the standard Go
/// prologue (`[LEAQ -n(SP), R12;] CMPQ ..(R14), SP|R12; JBE morestack`) when the function
/// starts that way, else the first instruction.
///
/// Why: a uprobe on an instruction the kernel cannot emulate is single-stepped, which is
/// slow (about 9 us here, in a VM that intercepts debug exceptions); conditional branches
/// are emulated (about 1 us). The branch runs on every call (straight-line code from the
/// entry, and again after a stack growth, which restarts the function), and the prologue
/// before it writes only R12 and the flags: the arguments (RAX, RBX, RCX) and the
/// goroutine (R14) are intact there.
pub fn entry_probe_address(code: &[u8], entry: u64) -> u64 {
    let mut dec = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut instr = iced_x86::Instruction::default();
    for _ in 0..3 {
        if !dec.can_decode() {
            break;
        }
        dec.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        match instr.mnemonic() {
            // LEAQ -n(SP), R12 (large frames compare SP minus the frame size).
            Mnemonic::Lea
                if instr.op0_kind() == OpKind::Register
                    && instr.op0_register() == Register::R12
                    && instr.memory_base() == Register::RSP => {}
            // CMPQ SP or R12 against g.stackguard0 at 0x10(R14): writes only the flags.
            Mnemonic::Cmp if instr.memory_base() == Register::R14 => {}
            Mnemonic::Jbe | Mnemonic::Jb if instr.op0_kind() == OpKind::NearBranch64 => {
                return instr.ip()
            }
            _ => break,
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::super::budget::{Limit, Limits};
    use super::*;

    fn budget() -> Budget {
        Budget::new(Limits::DEFAULT)
    }

    /// A Go 1.20-style table with two functions ("a.f" at text+0x10, "b.g" at
    /// text+0x40, end text+0x80).
    fn table() -> Vec<u8> {
        let mut t = vec![0u8; 8 + 8 * 8];
        t[..4].copy_from_slice(&0xffff_fff1u32.to_le_bytes());
        t[6] = 1;
        t[7] = 8;
        let names_at = t.len();
        t.extend_from_slice(b"a.f\0b.g\0");
        let functab = t.len();
        // nfunc=2 pairs + end: (0x10, fo0) (0x40, fo1) (0x80)
        let pairs = 5 * 4;
        let func0 = pairs;
        let func1 = pairs + 8;
        for v in [0x10u32, func0 as u32, 0x40, func1 as u32, 0x80] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        for (entry, name) in [(0x10u32, 0i32), (0x40, 4)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name.to_le_bytes());
        }
        let hdr = [2u64, 0, 0x1000, names_at as u64, 0, 0, 0, functab as u64];
        for (i, w) in hdr.iter().enumerate() {
            t[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        t
    }

    #[test]
    fn pclntab_lookup() {
        let t = table();
        let p = Pclntab::parse(&t, 0x401000).unwrap();
        assert_eq!(p.version(), PclnVersion::Go120);
        let f = p.lookup(&["b.g", "a.f", "c.h"], &budget());
        assert_eq!(
            f["a.f"],
            GoFunc {
                entry: 0x401010,
                end: 0x401040
            }
        );
        assert_eq!(
            f["b.g"],
            GoFunc {
                entry: 0x401040,
                end: 0x401080
            }
        );
        assert!(!f.contains_key("c.h"));
        // Without a .text address the header's own textStart is used.
        let p = Pclntab::parse(&t, 0).unwrap();
        assert_eq!(p.lookup(&["a.f"], &budget())["a.f"].entry, 0x1010);
    }

    #[test]
    fn pclntab_rejects_garbage() {
        let mut t = table();
        assert!(matches!(
            Pclntab::parse(&t[..20], 0),
            Err(GoError::Corrupt(_))
        ));
        t[0] = 0;
        assert!(matches!(
            Pclntab::parse(&t, 0),
            Err(GoError::UnsupportedPclntab(_))
        ));
        let mut t = table();
        t[8..16].copy_from_slice(&1_000_000u64.to_le_bytes()); // nfunc too large
        assert!(Pclntab::parse(&t, 0).is_err());
        assert_eq!(find_magic(&table()), Some(0));
    }

    #[test]
    fn huge_nfunc_is_rejected() {
        // nfunc = 2^63: `nfunc * 2 + 1` wraps to 1 in release builds, and a table that
        // passed the size check would be walked 2^63 times.
        let mut t = table();
        t[8..16].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(Pclntab::parse(&t, 0).is_err());
        for n in [u64::MAX, u64::MAX / 2 + 1, (t.len() as u64) / 8 + 1] {
            t[8..16].copy_from_slice(&n.to_le_bytes());
            assert!(Pclntab::parse(&t, 0).is_err(), "nfunc {n:#x}");
        }
    }

    #[test]
    fn addresses_past_the_end_of_the_address_space() {
        // runtime.text near u64::MAX: entry = text + offset overflows.
        let t = table();
        let p = Pclntab::parse(&t, u64::MAX - 0x20).unwrap();
        assert!(p.lookup(&["a.f", "b.g"], &budget()).is_empty());
    }

    #[test]
    fn returns_per_function_are_capped() {
        // 1 MiB of RET instructions: one probe each would be a million uprobes.
        let code = vec![0xc3u8; 1 << 20];
        assert_eq!(
            ret_addresses(&code, 0x1000, "f", &budget()),
            Err(GoError::TooManyReturns("f".into()))
        );
        let code = vec![0xc3u8; MAX_RETS_PER_FUNC];
        assert_eq!(
            ret_addresses(&code, 0x1000, "f", &budget()).map(|r| r.len()),
            Ok(MAX_RETS_PER_FUNC)
        );
        // Code that would run past the end of the address space.
        assert!(ret_addresses(&[0x90, 0xc3], u64::MAX - 1, "f", &budget()).is_err());
    }

    #[test]
    fn walks_stop_at_the_budget() {
        let t = table();
        let p = Pclntab::parse(&t, 0x401000).unwrap();
        let b = Budget::new(Limits {
            entries: 1,
            ..Limits::DEFAULT
        });
        // "b.g" is the second entry: not reached.
        assert!(p.lookup(&["b.g"], &b).is_empty());
        assert_eq!(b.hit(), Some(Limit::Entries));
        let b = Budget::new(Limits {
            instructions: 3,
            ..Limits::DEFAULT
        });
        assert_eq!(
            ret_addresses(&[0x90, 0x90, 0x90, 0xc3], 0, "f", &b),
            Err(GoError::OverBudget)
        );
        assert_eq!(b.hit(), Some(Limit::Instructions));
    }

    #[test]
    fn names_are_read_only_as_far_as_needed() {
        // A name with no NUL before the end of the table: no match, and no scan of the
        // rest of the table per function.
        let mut t = table();
        let names_at = t.iter().position(|&b| b == b'a').unwrap();
        t[names_at + 3] = b'x'; // "a.fxb.g\0"
        let p = Pclntab::parse(&t, 0).unwrap();
        let f = p.lookup(&["a.f", "b.g"], &budget());
        assert!(!f.contains_key("a.f"));
        assert!(f.contains_key("b.g"));
    }

    #[test]
    fn rets_only_at_instruction_boundaries() {
        // mov eax, 0xc3c3c3c3 ; ret ; add rax, rcx ; ret 8 ; int3 ; int3
        let code = [
            0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0x48, 0x01, 0xc8, 0xc2, 0x08, 0x00, 0xcc, 0xcc,
        ];
        let r = ret_addresses(&code, 0x1000, "f", &budget()).unwrap();
        assert_eq!(r, vec![0x1005, 0x1009]);
        // No RET at all.
        assert_eq!(
            ret_addresses(&[0x90, 0x90], 0, "g", &budget()),
            Err(GoError::NoReturn("g".into()))
        );
        // Truncated instruction.
        assert!(matches!(
            ret_addresses(&[0xb8, 0x01], 0, "h", &budget()),
            Err(GoError::Undecodable(_))
        ));
    }

    #[test]
    fn entry_probe_on_the_stack_check_branch() {
        // LEAQ -0x68(SP), R12 ; CMPQ 0x10(R14), R12 ; JBE +0x764 ; SUBQ $0xe8, SP
        let big = [
            0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x64, 0x07, 0x00,
            0x00, 0x48, 0x81, 0xec, 0xe8, 0x00, 0x00, 0x00,
        ];
        assert_eq!(entry_probe_address(&big, 0x5a6de0), 0x5a6de9);
        // CMPQ SP, 0x10(R14) ; JBE +0x20 (small frame)
        let small = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55];
        assert_eq!(entry_probe_address(&small, 0x1000), 0x1004);
        // Anything else before the branch: stay at the entry.
        let other = [0x48, 0x89, 0xc3, 0x49, 0x3b, 0x66, 0x10, 0x76, 0x20];
        assert_eq!(entry_probe_address(&other, 0x1000), 0x1000);
        // LEAQ into a register that carries an argument: stay at the entry.
        let lea_rax = [
            0x48, 0x8d, 0x44, 0x24, 0x98, 0x49, 0x3b, 0x66, 0x10, 0x76, 0x20,
        ];
        assert_eq!(entry_probe_address(&lea_rax, 0x1000), 0x1000);
        assert_eq!(entry_probe_address(&[], 0x1000), 0x1000);
    }

    #[test]
    fn versions() {
        assert_eq!(minor_version("go1.19.8"), Some(19));
        assert_eq!(minor_version("go1.21"), Some(21));
        assert_eq!(minor_version("devel go1.23-abc"), Some(23));
        assert_eq!(minor_version("weird"), None);
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0xff; 10]), None);
        assert_eq!(
            uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Some((u64::MAX, 10))
        );
    }
}
