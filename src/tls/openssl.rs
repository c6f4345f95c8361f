//! OpenSSL's internal read and write functions, found through the public wrappers, so that
//! probes can sit on instructions the kernel emulates instead of single-stepping.
//!
//! Why: a uprobe (and a uretprobe, which is a uprobe at the function entry) on an
//! instruction the kernel cannot emulate is single-stepped; in a VM that intercepts debug
//! exceptions that costs about 9 us per call here, against about 1 us for emulated
//! instructions (push, nop, call, jmp, jcc). OpenSSL's `SSL_read*` / `SSL_write*` often
//! begin with `sub $n,%rsp` or `endbr64` (single-stepped), while `ssl_read_internal` and
//! `ssl_write_internal`, which they all call (and the SSL BIO too), begin with pushes.
//!
//! The internal functions are not exported. They are taken as the first call of
//! `SSL_read_ex` / `SSL_write_ex` when that wrapper passes its four arguments through
//! untouched (only stack-frame instructions before the call), which shows the callee takes
//! the same `(ssl, buf, num, size_t *done)` in the same registers; `SSL_read` / `SSL_write`
//! must call the same function first; the target must be in the file's own code (not a
//! PLT stub) and begin with an emulated instruction. Anything else: the public functions
//! are probed as before.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use super::elf::{self, Elf, Func};

/// Bytes decoded at most per wrapper.
const WRAPPER_BYTES: u64 = 256;

fn code<'d>(file: &Elf<'d>, f: Func) -> Option<&'d [u8]> {
    let len = if f.size == 0 {
        WRAPPER_BYTES
    } else {
        f.size.min(WRAPPER_BYTES)
    };
    elf::bytes_at(file, f.addr, len)
}

/// Target of the first direct call in `code` (address order), if any.
pub fn first_call(code: &[u8], ip: u64) -> Option<u64> {
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut instr = iced_x86::Instruction::default();
    while dec.can_decode() {
        dec.decode_out(&mut instr);
        if instr.is_invalid() {
            return None;
        }
        if instr.mnemonic() == Mnemonic::Call {
            return (instr.op0_kind() == OpKind::NearBranch64).then(|| instr.near_branch_target());
        }
        if instr.mnemonic() == Mnemonic::Ret {
            return None;
        }
    }
    None
}

/// Target of a wrapper's first call when nothing before it can change an argument
/// register: only endbr64, push, `sub`/`add` on RSP, `mov %rsp,%rbp`.
pub fn passthrough_call(code: &[u8], ip: u64) -> Option<u64> {
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut instr = iced_x86::Instruction::default();
    for _ in 0..8 {
        if !dec.can_decode() {
            return None;
        }
        dec.decode_out(&mut instr);
        if instr.is_invalid() {
            return None;
        }
        let reg0 = (instr.op0_kind() == OpKind::Register).then(|| instr.op0_register());
        match instr.mnemonic() {
            Mnemonic::Call if instr.op0_kind() == OpKind::NearBranch64 => {
                return Some(instr.near_branch_target())
            }
            Mnemonic::Endbr64 | Mnemonic::Push => {}
            Mnemonic::Sub | Mnemonic::Add if reg0 == Some(Register::RSP) => {}
            Mnemonic::Mov
                if reg0 == Some(Register::RBP)
                    && instr.op1_kind() == OpKind::Register
                    && instr.op1_register() == Register::RSP => {}
            _ => return None,
        }
    }
    None
}

/// True when the first instruction is one the kernel emulates for uprobes (no
/// single-step): `push r64` or `nop`.
pub fn emulated_entry(code: &[u8]) -> bool {
    match code {
        [0x90, ..] => true,
        [op, ..] if (0x50..=0x57).contains(op) => true,
        [0x41, op, ..] if (0x50..=0x57).contains(op) => true,
        _ => false,
    }
}

/// The internal function behind a wrapper pair (`SSL_read_ex` + `SSL_read`, or the write
/// pair), if it can be trusted (see the module comment).
pub fn internal(file: &Elf<'_>, ex: Func, plain: Func, exported: &[u64]) -> Option<u64> {
    let target = passthrough_call(code(file, ex)?, ex.addr)?;
    if first_call(code(file, plain)?, plain.addr)? != target {
        return None;
    }
    if exported.contains(&target) {
        return None;
    }
    let section = elf::section_name_at(file, target)?;
    if section.starts_with(".plt") || section != ".text" {
        return None;
    }
    let entry = elf::bytes_at(file, target, 2)?;
    emulated_entry(entry).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_shapes() {
        // sub $0x8,%rsp ; call +0x10 ; ret   (Debian 12's SSL_read_ex)
        let ex = [0x48, 0x83, 0xec, 0x08, 0xe8, 0x10, 0x00, 0x00, 0x00, 0xc3];
        assert_eq!(passthrough_call(&ex, 0x1000), Some(0x1019));
        assert_eq!(first_call(&ex, 0x1000), Some(0x1019));
        // endbr64 ; push %rbx ; call
        let cet = [0xf3, 0x0f, 0x1e, 0xfa, 0x53, 0xe8, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(passthrough_call(&cet, 0x1000), Some(0x100a));
        // mov %rcx,%r8 ; xor %ecx,%ecx ; call: arguments moved, not a pass-through
        let moved = [0x49, 0x89, 0xc8, 0x31, 0xc9, 0xe8, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(passthrough_call(&moved, 0x1000), None);
        assert_eq!(first_call(&moved, 0x1000), Some(0x100a));
        // test %edx,%edx ; js ; movslq %edx,%rdx ; call (SSL_read: not a pass-through,
        // but its first call is what counts)
        let plain = [
            0x85, 0xd2, 0x78, 0x2f, 0x48, 0x63, 0xd2, 0xe8, 0x00, 0x00, 0x00, 0x00, 0xc3,
        ];
        assert_eq!(passthrough_call(&plain, 0x1000), None);
        assert_eq!(first_call(&plain, 0x1000), Some(0x100c));
        // ret before any call
        assert_eq!(first_call(&[0xc3, 0xe8, 0, 0, 0, 0], 0), None);
        // indirect call: no target
        assert_eq!(first_call(&[0xff, 0xd0], 0), None);
    }

    #[test]
    fn emulated_entries() {
        assert!(emulated_entry(&[0x41, 0x55])); // push %r13
        assert!(emulated_entry(&[0x53])); // push %rbx
        assert!(emulated_entry(&[0x90]));
        assert!(!emulated_entry(&[0x48, 0x83, 0xec, 0x18])); // sub $0x18,%rsp
        assert!(!emulated_entry(&[0xf3, 0x0f, 0x1e, 0xfa])); // endbr64
        assert!(!emulated_entry(&[]));
    }
}
