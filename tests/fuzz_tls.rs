//! Mutation fuzzing of TLS code discovery (`tls::inspect_file`, the Go function table's
//! `lookup`, `ret_addresses`) on real binaries: a stripped Go binary built from
//! `tests/fixtures/tls/go` and the system libssl.so.3. The files a node runs belong to its
//! pods, so each mutated file must be inspected without a panic, within `TIME_BOUND`,
//! and yield at most `tls::MAX_PROBES_PER_FILE` probes, each inside the file.
//!
//! Mutations: random bit flips (anywhere, and in the headers, the section and program
//! header tables, the Go function table and the code of the crypto/tls functions),
//! truncations, and crafted fields: counts and offsets set to 0, u32::MAX, u64::MAX and
//! near it, 2^63, the file's length; a function table whose `nfunc` is huge or exactly as
//! large as fits; a crypto/tls function filled with RET instructions or claimed to span
//! the address space. A failing input is saved under `target/fuzz-crashes/`.
//!
//! Time: `K8S_ALOG_FUZZ_SECONDS` (default 4); seed: `K8S_ALOG_FUZZ_SEED`.

mod common;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

use std::io::Write;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_alog::tls::golang::{self, Pclntab, MAX_RETS_PER_FUNC};
use k8s_alog::tls::{self, Budget, Image, Inspection, Limits, MAX_PROBES_PER_FILE};
use object::{Object, ObjectSection};

/// Each inspection must end within this (the inspection's own limit is
/// `Limits::DEFAULT.time`, 1 s; the rest is slack for a loaded machine).
const TIME_BOUND: Duration = Duration::from_secs(2);
/// An inspection still running after this is taken for a hang: the input is saved and
/// the test process exits (a thread cannot be stopped).
const HANG: Duration = Duration::from_secs(20);

const GO_FUNCS: [&str; 3] = [
    "crypto/tls.(*Conn).Read",
    "crypto/tls.(*Conn).Write",
    "crypto/tls.(*Conn).handshakeContext",
];

/// A real file and where its interesting parts are.
struct Seed {
    name: String,
    bytes: Vec<u8>,
    /// Byte ranges worth mutating more than the rest.
    hot: Vec<Range<usize>>,
    /// Offsets of 8-byte header fields (ELF header, program and section headers).
    fields64: Vec<usize>,
    /// Offsets of 2-byte header fields (counts and indexes).
    fields16: Vec<usize>,
    /// The Go function table, if any.
    pclntab: Option<Range<usize>>,
    /// Address of .text (what the Go table's offsets are relative to).
    text_addr: u64,
    /// File ranges of the crypto/tls functions, if Go.
    go_code: Vec<Range<usize>>,
    /// Where their names are in the function table (the last byte before the NUL).
    go_names: Vec<usize>,
}

impl Seed {
    fn load(name: &str, path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let f = object::File::parse(&*bytes).expect("an ELF file");
        let u = |v: u64| v as usize;
        let mut hot: Vec<Range<usize>> = Vec::new();
        hot.push(0..64); // the ELF header
        let mut fields64 = vec![24, 32, 40]; // e_entry, e_phoff, e_shoff
        let fields16 = vec![56, 60, 62]; // e_phnum, e_shnum, e_shstrndx
        let phoff = u(u64::from_le_bytes(bytes[32..40].try_into().unwrap()));
        let phnum = u(u64::from(u16::from_le_bytes([bytes[56], bytes[57]])));
        let shoff = u(u64::from_le_bytes(bytes[40..48].try_into().unwrap()));
        let shnum = u(u64::from(u16::from_le_bytes([bytes[60], bytes[61]])));
        hot.push(phoff..phoff + phnum * 56);
        hot.push(shoff..shoff + shnum * 64);
        for i in 0..phnum {
            let p = phoff + i * 56;
            fields64.extend([p + 8, p + 16, p + 32, p + 40]); // offset, vaddr, filesz, memsz
        }
        for i in 0..shnum {
            let s = shoff + i * 64;
            fields64.extend([s + 16, s + 24, s + 32]); // addr, offset, size
        }
        for name in [".dynsym", ".dynstr", ".dynamic", ".go.buildinfo", ".symtab"] {
            if let Some((off, size)) = f.section_by_name(name).and_then(|s| s.file_range()) {
                hot.push(u(off)..u(off + size.min(4096)));
            }
        }
        let pclntab = f
            .section_by_name(".gopclntab")
            .and_then(|s| s.file_range())
            .map(|(off, size)| u(off)..u(off + size));
        if let Some(r) = &pclntab {
            hot.push(r.start..r.start + 72);
        }
        let text_addr = f.section_by_name(".text").map_or(0, |s| s.address());
        let mut go_code = Vec::new();
        if pclntab.is_some() {
            let img = Image::open(path).unwrap();
            let elf = img.parse().unwrap();
            let table = Pclntab::find(&elf).expect("the Go function table");
            let found = table.lookup(&GO_FUNCS, img.budget());
            for n in GO_FUNCS {
                let g = found[n];
                let off = tls::elf::file_offset(&elf, g.entry).unwrap();
                go_code.push(u(off)..u(off + (g.end - g.entry)));
            }
            hot.extend(go_code.iter().cloned());
        }
        let mut go_names = Vec::new();
        if let Some(t) = &pclntab {
            for n in GO_FUNCS {
                let needle = [n.as_bytes(), b"\0"].concat();
                if let Some(i) = bytes[t.clone()]
                    .windows(needle.len())
                    .position(|w| w == needle)
                {
                    go_names.push(t.start + i + n.len() - 1);
                }
            }
        }
        hot.retain(|r| r.start < r.end && r.end <= bytes.len());
        Self {
            name: name.to_string(),
            bytes,
            hot,
            fields64,
            fields16,
            pclntab,
            text_addr,
            go_code,
            go_names,
        }
    }
}

/// Values that break arithmetic: zero, ones, the sign bit, the top of the range, sizes.
fn interesting(rng: &mut Rng, file_len: usize) -> u64 {
    let k = rng.below(64) as u64;
    match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u64::MAX - k,
        4 => 1 << 63,
        5 => (1 << 63) - 1 - k,
        6 => u64::from(u32::MAX),
        7 => u64::from(u32::MAX) - k,
        8 => file_len as u64,
        9 => file_len as u64 + k,
        10 => (file_len as u64).wrapping_sub(k),
        _ => rng.next(),
    }
}

fn put(buf: &mut [u8], at: usize, v: &[u8]) {
    if let Some(dst) = at.checked_add(v.len()).and_then(|end| buf.get_mut(at..end)) {
        dst.copy_from_slice(v);
    }
}

/// One mutated copy of a seed, and what was done to it.
fn mutate(rng: &mut Rng, seed: &Seed) -> (Vec<u8>, Vec<String>) {
    let mut b = seed.bytes.clone();
    let len = b.len();
    let mut what = Vec::new();
    let mut cut = None;
    for _ in 0..1 + rng.below(4) {
        match rng.below(11) {
            0 => {
                let n = 1 + rng.below(64);
                for _ in 0..n {
                    let at = rng.below(len);
                    b[at] ^= 1 << rng.below(8);
                }
                what.push(format!("{n} bit flips"));
            }
            1 | 2 => {
                let r = &seed.hot[rng.below(seed.hot.len())];
                let n = 1 + rng.below(16);
                for _ in 0..n {
                    let at = rng.in_range(r);
                    b[at] = if rng.below(2) == 0 {
                        b[at] ^ (1 << rng.below(8))
                    } else {
                        rng.next() as u8
                    };
                }
                what.push(format!("{n} flips in {r:?}"));
            }
            3 => {
                let at = seed.fields64[rng.below(seed.fields64.len())];
                let v = interesting(rng, len);
                put(&mut b, at, &v.to_le_bytes());
                what.push(format!("u64 at {at:#x} = {v:#x}"));
            }
            4 => {
                let at = seed.fields16[rng.below(seed.fields16.len())];
                let v = interesting(rng, len) as u16;
                put(&mut b, at, &v.to_le_bytes());
                what.push(format!("u16 at {at:#x} = {v:#x}"));
            }
            5 | 6 if seed.pclntab.is_some() => {
                let t = seed.pclntab.clone().unwrap_or_default();
                // nfunc half the time.
                let word = if rng.below(2) == 0 { 0 } else { rng.below(8) };
                let v = match (word, rng.below(3)) {
                    (0, 1) => (1 << 63) + rng.below(4) as u64,
                    // nfunc as large as the table can hold, so that it is walked whole.
                    (0, 0) => {
                        let functab =
                            u64::from_le_bytes(b[t.start + 64..t.start + 72].try_into().unwrap());
                        (t.len() as u64).saturating_sub(functab).saturating_sub(4) / 8
                    }
                    _ => interesting(rng, len),
                };
                put(&mut b, t.start + 8 + word * 8, &v.to_le_bytes());
                what.push(format!("pclntab word {word} = {v:#x}"));
            }
            9 if !seed.go_names.is_empty() => {
                let at = seed.go_names[rng.below(seed.go_names.len())];
                b[at] ^= 0x20;
                what.push(format!("name at {at:#x} changed"));
            }
            7 if !seed.go_code.is_empty() => {
                // A crypto/tls function full of RETs, NOPs or noise.
                let r = seed.go_code[rng.below(seed.go_code.len())].clone();
                let fill = rng.below(3);
                for i in r.clone() {
                    b[i] = match fill {
                        0 => 0xc3,
                        1 => 0x90,
                        _ => rng.next() as u8,
                    };
                }
                what.push(format!("code {r:?} filled ({fill})"));
            }
            8 if seed.pclntab.is_some() => {
                // Some functab fields (u32: entry offsets and _func offsets).
                let t = seed.pclntab.clone().unwrap_or_default();
                let functab = u64::from_le_bytes(b[t.start + 64..t.start + 72].try_into().unwrap());
                let at = t.start.saturating_add(functab as usize);
                let v = interesting(rng, len) as u32;
                let slot = at.saturating_add(4 * rng.below(64));
                put(&mut b, slot, &v.to_le_bytes());
                what.push(format!("functab u32 at {slot:#x} = {v:#x}"));
            }
            _ => {
                let at = match rng.below(3) {
                    0 => rng.below(len),
                    1 => {
                        let r = &seed.hot[rng.below(seed.hot.len())];
                        rng.in_range(r)
                    }
                    _ => len - rng.below(4096).min(len),
                };
                cut = Some(cut.map_or(at, |c: usize| c.min(at)));
                what.push(format!("truncated to {at}"));
            }
        }
    }
    if let Some(c) = cut {
        b.truncate(c);
    }
    (b, what)
}

#[derive(Default)]
struct Tally {
    inputs: u64,
    tls: u64,
    no_tls: u64,
    unsupported: u64,
    over_budget: u64,
    too_many_probes: u64,
    errors: u64,
    worst: Duration,
    worst_what: String,
    max_probes: usize,
    max_rets: usize,
}

/// Inputs made on purpose, tried on every run: the fields that broke arithmetic or
/// bounded nothing, set to the values that did.
fn crafted(seed: &Seed) -> Vec<(Vec<u8>, String)> {
    let mut out = Vec::new();
    let len = seed.bytes.len() as u64;
    let mut with = |what: String, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = seed.bytes.clone();
        f(&mut b);
        out.push((b, what));
    };
    let huge = [
        u64::MAX,
        u64::MAX - 0x10,
        1 << 63,
        (1 << 63) + 1,
        1 << 62,
        u64::from(u32::MAX),
        len,
        len + 1,
    ];
    // ELF header offsets and every program and section header's offset, address, size.
    for &at in &seed.fields64 {
        for v in [u64::MAX - 0x10, 1 << 63, len] {
            with(format!("u64 at {at:#x} = {v:#x}"), &|b| {
                put(b, at, &v.to_le_bytes())
            });
        }
    }
    for &at in &seed.fields16 {
        with(format!("u16 at {at:#x} = 0xffff"), &|b| {
            put(b, at, &[0xff, 0xff])
        });
    }
    if let Some(t) = seed.pclntab.clone() {
        let functab =
            u64::from_le_bytes(seed.bytes[t.start + 64..t.start + 72].try_into().unwrap());
        let fits = (t.len() as u64 - functab - 4) / 8;
        for v in huge.iter().copied().chain([fits, fits + 1]) {
            with(format!("nfunc = {v:#x}"), &|b| {
                put(b, t.start + 8, &v.to_le_bytes())
            });
            // Without the names looked for, the whole table is walked.
            with(format!("nfunc = {v:#x}, crypto/tls names changed"), &|b| {
                put(b, t.start + 8, &v.to_le_bytes());
                for &at in &seed.go_names {
                    b[at] ^= 0x20;
                }
            });
        }
        for word in 1..8 {
            for v in huge {
                with(format!("pclntab word {word} = {v:#x}"), &|b| {
                    put(b, t.start + 8 + word * 8, &v.to_le_bytes())
                });
            }
        }
    }
    for (i, r) in seed.go_code.iter().enumerate() {
        with(format!("{} filled with RET", GO_FUNCS[i]), &|b| {
            b[r.clone()].fill(0xc3)
        });
    }
    for cut in [0, 3, 63, 64, 65, len / 2, len - 1] {
        with(format!("truncated to {cut}"), &|b| b.truncate(cut as usize));
    }
    out
}

/// What is being checked now, for the watchdog.
struct Current {
    since: Option<Instant>,
    seed: String,
    what: String,
    bytes: Vec<u8>,
}

/// Exits the test process when one input takes longer than HANG.
fn watchdog(current: Arc<Mutex<Current>>, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let c = current.lock().unwrap_or_else(|e| e.into_inner());
            if c.since.is_some_and(|t| t.elapsed() > HANG) {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("tls-{}-{}-hang.bin", c.seed, std::process::id()));
                let _ = std::fs::write(&path, &c.bytes);
                // Straight to stderr: the test harness's capture dies with the process.
                let _ = writeln!(
                    std::io::stderr(),
                    "fuzz {}: no answer within {HANG:?} (mutations: {}); input saved to {}",
                    c.seed,
                    c.what,
                    path.display()
                );
                std::process::exit(101);
            }
        }
    });
}

/// The checks on one input: inspection through a file, then the Go function table and
/// the RET search on the bytes directly.
fn check(seed: &Seed, bytes: &[u8], path: &Path, t: &mut Tally, what: &str) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("writing the input: {e}"))?;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let r = tls::inspect_file(&f);
    let took = t0.elapsed();
    t.inputs += 1;
    if took > t.worst {
        t.worst = took;
        t.worst_what = what.to_string();
    }
    if took > TIME_BOUND {
        return Err(format!("inspection took {took:?} (bound {TIME_BOUND:?})"));
    }
    match r {
        Ok(Inspection::Tls(target)) => {
            t.tls += 1;
            let n = target.probe_count();
            t.max_probes = t.max_probes.max(n);
            if n > MAX_PROBES_PER_FILE {
                return Err(format!("{n} probes"));
            }
            for func in &target.funcs {
                if func.points.len() > 1 + MAX_RETS_PER_FUNC {
                    return Err(format!("{}: {} probes", func.func, func.points.len()));
                }
                for p in &func.points {
                    if p.offset >= bytes.len() as u64 {
                        return Err(format!(
                            "{}: probe at {:#x}, past the end of the file ({:#x})",
                            func.func,
                            p.offset,
                            bytes.len()
                        ));
                    }
                }
            }
        }
        Ok(Inspection::NoTls) => t.no_tls += 1,
        Ok(Inspection::Unsupported(_)) => t.unsupported += 1,
        Ok(Inspection::OverBudget(_)) => t.over_budget += 1,
        Ok(Inspection::TooManyProbes(_)) => t.too_many_probes += 1,
        Err(_) => t.errors += 1,
    }
    // The table and the decoder on their own, on the mutated bytes.
    if let Some(r) = &seed.pclntab {
        let table = &bytes[r.start.min(bytes.len())..r.end.min(bytes.len())];
        let budget = Budget::new(Limits::DEFAULT);
        let t0 = Instant::now();
        if let Ok(p) = Pclntab::parse(table, seed.text_addr) {
            let _ = p.lookup(&GO_FUNCS, &budget);
        }
        if t0.elapsed() > TIME_BOUND {
            return Err(format!("lookup took {:?}", t0.elapsed()));
        }
    }
    for r in &seed.go_code {
        let code = &bytes[r.start.min(bytes.len())..r.end.min(bytes.len())];
        let budget = Budget::new(Limits::DEFAULT);
        if let Ok(rets) = golang::ret_addresses(code, 0x40_0000, "f", &budget) {
            t.max_rets = t.max_rets.max(rets.len());
            if rets.len() > MAX_RETS_PER_FUNC {
                return Err(format!("{} RETs", rets.len()));
            }
        }
    }
    Ok(())
}

fn save_crash(seed: &Seed, bytes: &[u8], why: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("tls-{}-{}.bin", seed.name, std::process::id()));
    let _ = std::fs::write(&path, bytes);
    let _ = std::fs::write(path.with_extension("txt"), why);
    path
}

fn seeds(dir: &Path) -> Vec<Seed> {
    let go = dir.join("tlsapp-stripped");
    common::go_build(&go, true);
    let mut out = vec![Seed::load("go-stripped", &go)];
    assert!(out[0].pclntab.is_some(), "the Go binary has a .gopclntab");
    assert_eq!(
        out[0].go_names.len(),
        3,
        "crypto/tls names in the Go binary"
    );
    let libssl = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
    if libssl.exists() {
        out.push(Seed::load("libssl.so.3", libssl));
    } else {
        eprintln!("no {}: fuzzing the Go binary only", libssl.display());
    }
    out
}

#[test]
fn fuzz_tls_inspection() {
    let secs: f64 = std::env::var("K8S_ALOG_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4.0);
    let seed: u64 = std::env::var("K8S_ALOG_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7157_f022_0000_0001);
    let dir = tempfile::Builder::new()
        .prefix("alog-fuzz-tls-")
        .tempdir()
        .expect("temp dir");
    let seeds = seeds(dir.path());
    let input = dir.path().join("input");
    let current = Arc::new(Mutex::new(Current {
        since: None,
        seed: String::new(),
        what: String::new(),
        bytes: Vec::new(),
    }));
    let done = Arc::new(AtomicBool::new(false));
    watchdog(Arc::clone(&current), Arc::clone(&done));
    let mut tallies: Vec<Tally> = seeds.iter().map(|_| Tally::default()).collect();
    // The seeds themselves: found, and probed within the bounds.
    for (s, t) in seeds.iter().zip(&mut tallies) {
        check(s, &s.bytes, &input, t, "unmutated").unwrap();
        assert_eq!(
            t.tls, 1,
            "{}: no TLS code found in the unmutated file",
            s.name
        );
    }
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(seed | 1);
    let made: Vec<Vec<(Vec<u8>, String)>> = seeds.iter().map(crafted).collect();
    let crafted_count: usize = made.iter().map(Vec::len).sum();
    let mut failure = None;
    // Every crafted input, then random ones for `secs`. A failure: where the input was
    // saved, and why.
    let run = |s: &Seed, t: &mut Tally, bytes: Vec<u8>, what: String| {
        {
            let mut c = current.lock().unwrap_or_else(|e| e.into_inner());
            c.since = Some(Instant::now());
            c.seed.clone_from(&s.name);
            c.what.clone_from(&what);
            c.bytes.clone_from(&bytes);
        }
        let r = catch_unwind(AssertUnwindSafe(|| check(s, &bytes, &input, t, &what)));
        current.lock().unwrap_or_else(|e| e.into_inner()).since = None;
        let why = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => why,
            Err(e) => e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string()),
        };
        let why = format!("{}: {why} (mutations: {what})", s.name);
        Err((save_crash(s, &bytes, &why), why))
    };
    'crafted: for ((s, t), inputs) in seeds.iter().zip(&mut tallies).zip(made) {
        for (bytes, what) in inputs {
            if let Err(f) = run(s, t, bytes, what) {
                failure = Some(f);
                break 'crafted;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    'random: while failure.is_none() && Instant::now() < deadline {
        for (s, t) in seeds.iter().zip(&mut tallies) {
            let (bytes, what) = mutate(&mut rng, s);
            if let Err(f) = run(s, t, bytes, what.join("; ")) {
                failure = Some(f);
                break 'random;
            }
        }
    }
    std::panic::set_hook(prev);
    done.store(true, Ordering::Relaxed);
    for (s, t) in seeds.iter().zip(&tallies) {
        eprintln!(
            "fuzz {}: {} inputs ({} TLS, {} no TLS, {} unsupported, {} over budget, {} too many probes, {} read errors); \
             worst inspection {:.1} ms ({}); max probes {}, max RETs in one function {}",
            s.name,
            t.inputs,
            t.tls,
            t.no_tls,
            t.unsupported,
            t.over_budget,
            t.too_many_probes,
            t.errors,
            t.worst.as_secs_f64() * 1e3,
            t.worst_what,
            t.max_probes,
            t.max_rets,
        );
    }
    eprintln!(
        "fuzz: {crafted_count} crafted inputs, then random ones for {secs} s, seed {seed:#x}"
    );
    if let Some((path, why)) = failure {
        panic!("{why}; input saved to {}", path.display());
    }
}
