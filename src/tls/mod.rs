//! TLS libraries in ELF files: what to probe to see plaintext, and where.
//!
//! - OpenSSL, BoringSSL and LibreSSL, as shared libraries or linked into a binary, are
//!   found by their exported function names (`SSL_read`, `SSL_write`, ...).
//! - Go crypto/tls is found through the Go function table (`.gopclntab`), so stripped
//!   binaries work; returns are probed at each RET instruction.
//!
//! This module only reads files; `capture::tls` attaches the probes and `procfs` finds
//! the files in use on the node. The files belong to whoever runs them (any pod): they
//! are read in owned pieces (never mapped), within a `Budget` of bytes, work and time, and
//! a file yields at most `MAX_PROBES_PER_FILE` probes.

pub mod budget;
pub mod elf;
pub mod golang;
pub mod image;
pub mod openssl;
pub mod procfs;

use std::path::Path;

pub use budget::{Budget, Limit, Limits};
pub use image::Image;

/// Most probes attached in one file (OpenSSL needs 12; Go three functions, each an entry
/// and its RETs, at most `golang::MAX_RETS_PER_FUNC`).
pub const MAX_PROBES_PER_FILE: usize = 256;
/// Longest function decoded for its RET instructions; crypto/tls functions are a few KiB.
pub const MAX_FUNC_BYTES: u64 = 1 << 20;

/// The BPF program a probe runs (see the TLS section of `src/bpf/alog.bpf.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// OpenSSL read/write/sendfile entry (uprobe).
    SslEnter,
    /// SSL_do_handshake entry (uprobe).
    SslHsEnter,
    /// SSL_do_handshake return (uretprobe).
    SslHsRet,
    SslReadRet,
    SslReadExRet,
    SslWriteRet,
    SslWriteExRet,
    SslSendfileRet,
    /// crypto/tls.(*Conn).Read and Write entry (uprobe).
    GoEnter,
    /// crypto/tls.(*Conn).handshakeContext entry (uprobe).
    GoHsEnter,
    /// Returns of Go functions: uprobes on RET instructions, never uretprobes.
    GoHsRet,
    GoReadRet,
    GoWriteRet,
}

impl Probe {
    /// True for uretprobes (attached at the function entry, fire at its return).
    pub fn is_retprobe(self) -> bool {
        matches!(
            self,
            Self::SslHsRet
                | Self::SslReadRet
                | Self::SslReadExRet
                | Self::SslWriteRet
                | Self::SslWriteExRet
                | Self::SslSendfileRet
        )
    }
}

/// One probe: a program at a file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePoint {
    pub probe: Probe,
    /// Offset in the file (what the kernel places a uprobe by).
    pub offset: u64,
}

/// The probes of one function: attached all together or not at all (an entry without
/// its returns would only leave calls in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncProbes {
    pub func: &'static str,
    pub points: Vec<ProbePoint>,
}

/// Which TLS implementation a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// OpenSSL-compatible API (OpenSSL 1.1/3, BoringSSL, LibreSSL).
    OpenSsl,
    /// Go crypto/tls.
    Go,
}

/// What to attach in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    pub flavor: Flavor,
    pub funcs: Vec<FuncProbes>,
    /// Go toolchain version, when known.
    pub go_version: Option<String>,
}

impl TlsTarget {
    pub fn probe_count(&self) -> usize {
        self.funcs.iter().map(|f| f.points.len()).sum()
    }
}

/// The outcome of looking at a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// Not an ELF file, another architecture, or no TLS code in it.
    NoTls,
    /// TLS code to probe.
    Tls(TlsTarget),
    /// TLS code that cannot be probed (reason for the log).
    Unsupported(String),
    /// The inspection stopped at a limit of its `Budget`: nothing is known of the file.
    OverBudget(Limit),
    /// TLS code that would take more probes than a file may have (reason for the log).
    TooManyProbes(String),
}

/// OpenSSL-API functions and their probes; the first two must exist.
const SSL_FUNCS: &[(&str, Probe, Probe)] = &[
    ("SSL_read", Probe::SslEnter, Probe::SslReadRet),
    ("SSL_write", Probe::SslEnter, Probe::SslWriteRet),
    ("SSL_read_ex", Probe::SslEnter, Probe::SslReadExRet),
    ("SSL_write_ex", Probe::SslEnter, Probe::SslWriteExRet),
    ("SSL_sendfile", Probe::SslEnter, Probe::SslSendfileRet),
    ("SSL_do_handshake", Probe::SslHsEnter, Probe::SslHsRet),
];

/// Go functions and their probes; Read and Write must exist.
const GO_FUNCS: &[(&str, Probe, Probe)] = &[
    ("crypto/tls.(*Conn).Read", Probe::GoEnter, Probe::GoReadRet),
    (
        "crypto/tls.(*Conn).Write",
        Probe::GoEnter,
        Probe::GoWriteRet,
    ),
    (
        "crypto/tls.(*Conn).handshakeContext",
        Probe::GoHsEnter,
        Probe::GoHsRet,
    ),
];

/// Look at one file (a library or an executable).
pub fn inspect(path: &Path) -> std::io::Result<Inspection> {
    inspect_file(&std::fs::File::open(path)?)
}

/// Look at an open file, within `Limits::DEFAULT`.
pub fn inspect_file(f: &std::fs::File) -> std::io::Result<Inspection> {
    inspect_file_with(f, Limits::DEFAULT)
}

/// Look at an open file within these limits. An I/O error (not a file shorter than its
/// headers say, which is `NoTls`) means nothing is known of the file.
pub fn inspect_file_with(f: &std::fs::File, limits: Limits) -> std::io::Result<Inspection> {
    let image = Image::of_file(f, limits)?;
    let found = inspect_image(&image);
    if let Some(e) = image.io_error() {
        return Err(e);
    }
    if let Some(l) = image.budget().hit() {
        return Ok(Inspection::OverBudget(l));
    }
    if let Inspection::Tls(t) = &found {
        // Each part is bounded already; the sum too.
        if t.probe_count() > MAX_PROBES_PER_FILE {
            return Ok(Inspection::TooManyProbes(format!(
                "{} probes (at most {MAX_PROBES_PER_FILE} per file)",
                t.probe_count()
            )));
        }
    }
    Ok(found)
}

fn inspect_image(image: &Image) -> Inspection {
    if !image.is_elf() {
        return Inspection::NoTls;
    }
    let Ok(file) = image.parse() else {
        return Inspection::NoTls;
    };
    if !elf::is_x86_64(&file) {
        return Inspection::NoTls;
    }
    if let Some(t) = inspect_openssl(&file) {
        return t;
    }
    inspect_go(&file)
}

fn inspect_openssl(file: &elf::Elf<'_>) -> Option<Inspection> {
    let names: Vec<&str> = SSL_FUNCS.iter().map(|f| f.0).collect();
    let found = elf::defined_funcs(file, &names);
    if !found.contains_key("SSL_read") || !found.contains_key("SSL_write") {
        return None;
    }
    // Cheaper probe sites when the internal read/write functions can be trusted: they
    // replace the four public functions of their side (see `openssl`).
    let exported: Vec<u64> = found.values().map(|f| f.addr).collect();
    let internal = |ex: &str, plain: &str| match (found.get(ex), found.get(plain)) {
        (Some(e), Some(p)) => openssl::internal(file, *e, *p, &exported),
        _ => None,
    };
    let mut read_internal = internal("SSL_read_ex", "SSL_read");
    let mut write_internal = internal("SSL_write_ex", "SSL_write");
    if read_internal.is_some() && read_internal == write_internal {
        read_internal = None;
        write_internal = None;
    }
    let mut sites: Vec<(&'static str, u64, Probe, Probe)> = Vec::new();
    if let Some(a) = read_internal {
        sites.push(("ssl_read_internal", a, Probe::SslEnter, Probe::SslReadExRet));
    }
    if let Some(a) = write_internal {
        sites.push((
            "ssl_write_internal",
            a,
            Probe::SslEnter,
            Probe::SslWriteExRet,
        ));
    }
    for &(name, enter, ret) in SSL_FUNCS {
        let replaced = match name {
            "SSL_read" | "SSL_read_ex" => read_internal.is_some(),
            "SSL_write" | "SSL_write_ex" => write_internal.is_some(),
            _ => false,
        };
        if let (false, Some(f)) = (replaced, found.get(name)) {
            sites.push((name, f.addr, enter, ret));
        }
    }
    let mut funcs = Vec::new();
    for (name, addr, enter, ret) in sites {
        let Some(offset) = elf::file_offset(file, addr) else {
            return Some(Inspection::Unsupported(format!(
                "{name} at {addr:#x} is outside every loaded segment"
            )));
        };
        funcs.push(FuncProbes {
            func: name,
            points: vec![
                ProbePoint {
                    probe: enter,
                    offset,
                },
                ProbePoint { probe: ret, offset },
            ],
        });
    }
    Some(Inspection::Tls(TlsTarget {
        flavor: Flavor::OpenSsl,
        funcs,
        go_version: None,
    }))
}

fn inspect_go(file: &elf::Elf<'_>) -> Inspection {
    let budget = file.data().budget();
    let is_go = elf::has_section(file, ".go.buildinfo")
        || elf::has_section(file, ".gopclntab")
        || elf::has_section(file, ".note.go.buildid");
    if !is_go {
        return Inspection::NoTls;
    }
    let version = golang::build_version(file);
    let table = match golang::Pclntab::find(file) {
        Ok(t) => t,
        Err(e) => return Inspection::Unsupported(format!("Go binary: {e}")),
    };
    let names: Vec<&str> = GO_FUNCS.iter().map(|f| f.0).collect();
    let found = table.lookup(&names, budget);
    if !found.contains_key(GO_FUNCS[0].0) || !found.contains_key(GO_FUNCS[1].0) {
        // A Go program that does not use crypto/tls.
        return Inspection::NoTls;
    }
    // The probes read arguments from registers: Go >= 1.17 on amd64.
    let regabi = match version.as_deref().and_then(golang::minor_version) {
        Some(minor) => minor >= 17,
        None => table.version() != golang::PclnVersion::Go116,
    };
    if !regabi {
        return Inspection::Unsupported(format!(
            "Go binary built with {} (crypto/tls probes need Go >= 1.17, register ABI)",
            version.as_deref().unwrap_or("Go < 1.18 of unknown version")
        ));
    }
    let mut funcs = Vec::new();
    for &(name, enter, ret) in GO_FUNCS {
        let Some(f) = found.get(name) else { continue };
        // lookup() returns end > entry.
        let len = f.end.saturating_sub(f.entry);
        if len > MAX_FUNC_BYTES {
            return Inspection::Unsupported(format!(
                "{name}: {len} bytes long (at most {MAX_FUNC_BYTES} are decoded)"
            ));
        }
        let Some(code) = elf::bytes_at(file, f.entry, len) else {
            return Inspection::Unsupported(format!("{name}: code outside the file image"));
        };
        let Some(entry_off) = elf::file_offset(file, golang::entry_probe_address(code, f.entry))
        else {
            return Inspection::Unsupported(format!("{name}: code outside the file image"));
        };
        let rets = match golang::ret_addresses(code, f.entry, name, budget) {
            Ok(r) => r,
            Err(e @ golang::GoError::TooManyReturns(_)) => {
                return Inspection::TooManyProbes(e.to_string())
            }
            Err(e) => return Inspection::Unsupported(e.to_string()),
        };
        let mut points = vec![ProbePoint {
            probe: enter,
            offset: entry_off,
        }];
        for r in rets {
            // Inside the same segment as the entry, so this cannot fail after bytes_at.
            let Some(offset) = elf::file_offset(file, r) else {
                return Inspection::Unsupported(format!("{name}: RET outside the file image"));
            };
            points.push(ProbePoint { probe: ret, offset });
        }
        funcs.push(FuncProbes { func: name, points });
    }
    Inspection::Tls(TlsTarget {
        flavor: Flavor::Go,
        funcs,
        go_version: version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_libssl_if_present() {
        let Some(p) = procfs::LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join("libssl.so.3"))
            .find(|p| p.exists())
        else {
            eprintln!("no libssl.so.3 here: skipped");
            return;
        };
        match inspect(&p).unwrap() {
            Inspection::Tls(t) => {
                assert_eq!(t.flavor, Flavor::OpenSsl);
                let names: Vec<_> = t.funcs.iter().map(|f| f.func).collect();
                // Either the internal functions or the four public ones, per side.
                let read = names.contains(&"ssl_read_internal")
                    || (names.contains(&"SSL_read") && names.contains(&"SSL_read_ex"));
                let write = names.contains(&"ssl_write_internal")
                    || (names.contains(&"SSL_write") && names.contains(&"SSL_write_ex"));
                assert!(read && write, "{names:?}");
                assert!(names.contains(&"SSL_do_handshake"), "{names:?}");
                eprintln!("{}: {names:?}", p.display());
                for f in &t.funcs {
                    assert_eq!(f.points.len(), 2);
                    assert!(!f.points[0].probe.is_retprobe());
                    assert!(f.points[1].probe.is_retprobe());
                }
            }
            other => panic!("{}: {other:?}", p.display()),
        }
    }

    /// A library or executable truncated and rewritten while it is read (a container can
    /// do that to its own files): inspection fails or succeeds, the process lives on.
    #[test]
    fn file_truncated_while_inspected() {
        let src = procfs::LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join("libssl.so.3"))
            .find(|p| p.exists())
            .unwrap_or_else(|| std::env::current_exe().unwrap());
        let bytes = std::fs::read(&src).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libssl.so.3");
        std::fs::write(&p, &bytes).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                let mut round = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    f.set_len(0).unwrap();
                    // Back in a few pieces, so that reads meet many lengths.
                    let piece = bytes.len() / 4 + 1 + round % 7;
                    for (i, chunk) in bytes.chunks(piece).enumerate() {
                        f.write_all_at(chunk, (i * piece) as u64).unwrap();
                    }
                    round += 1;
                }
            })
        };
        let t0 = std::time::Instant::now();
        let mut seen = [0u32; 3];
        while t0.elapsed() < std::time::Duration::from_secs(2) {
            let f = std::fs::File::open(&p).unwrap();
            match inspect_file(&f) {
                Ok(Inspection::Tls(_)) => seen[0] += 1,
                Ok(_) => seen[1] += 1,
                Err(_) => seen[2] += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
        eprintln!(
            "inspections of a file truncated meanwhile: {} found TLS, {} not, {} failed",
            seen[0], seen[1], seen[2]
        );
    }

    #[test]
    fn plain_binary_has_no_tls() {
        assert_eq!(
            inspect(&std::env::current_exe().unwrap()).unwrap(),
            Inspection::NoTls
        );
    }
}
