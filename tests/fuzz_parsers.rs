//! Mutation fuzzing of the L7 parsers (HTTP/1, HTTP/2, h2c upgrade) on stable Rust.
//!
//! Seeds are real or hand-made sessions (`tests/fixtures/fuzz/http1/`,
//! `tests/fixtures/http2/`): one line per socket call, `C` (client to server) or `S`,
//! then hex. Each iteration mutates a seed (bit flips, interesting bytes, inserted,
//! deleted and duplicated ranges, splices from other seeds, re-cut calls, captures shorter
//! than the call, lost calls) and feeds it to every parser flavour. A panic or a parser
//! past its bounds fails the test and leaves the input in `target/fuzz-crashes/` to
//! replay. Not coverage-guided: a deterministic, seeded search.
//!
//! Bounds are measured, not taken from the parser's word: a counting allocator sees the
//! heap each connection's parser retains between calls (`RETAINED_BOUND`) and the bytes it
//! allocates per input byte (`ALLOC_PER_BYTE`, the copying work an input can ask for).
//! Nanoseconds per input byte are printed, not asserted (the machines are shared).
//!
//! Time: `K8S_ALOG_FUZZ_SECONDS` (default 15); seed: `K8S_ALOG_FUZZ_SEED`.

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "common/alloc.rs"]
mod counting;

use counting::{allocated, live};
use k8s_alog::protocol::l7::{self, Parser};
use k8s_alog::protocol::{Chunk, Direction, Role};

/// What a parser may say it holds per connection (HTTP/2: partial frames, header blocks
/// and HPACK tables of both directions plus its 1 MiB stream budget; HTTP/1: the head cap
/// per direction).
const BUFFER_BOUND: usize = 1024 * 1024 + 512 * 1024;

/// Heap a parser may really retain per connection between calls.
const RETAINED_BOUND: isize = 2 * 1024 * 1024;

/// Bytes a parser may allocate per input byte, beyond `ALLOC_FLOOR` per session.
const ALLOC_PER_BYTE: u64 = 1000;
const ALLOC_FLOOR: u64 = 4 * 1024 * 1024;

/// The worst figures seen, over every session and parser flavour.
#[derive(Debug, Default, Clone, Copy)]
struct Worst {
    retained: isize,
    alloc_per_byte: f64,
    ns_per_byte: f64,
    bytes: u64,
}

impl Worst {
    fn merge(&mut self, o: Worst) {
        self.retained = self.retained.max(o.retained);
        self.alloc_per_byte = self.alloc_per_byte.max(o.alloc_per_byte);
        self.ns_per_byte = self.ns_per_byte.max(o.ns_per_byte);
        self.bytes += o.bytes;
    }
}

#[derive(Debug, Clone)]
struct Call {
    client: bool,
    data: Vec<u8>,
    /// Bytes the call moved; `data` is its captured prefix.
    len: u64,
}

type Session = Vec<Call>;

fn load_seeds() -> Vec<Session> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["fuzz/http1", "http2"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            files.extend(
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "txt")),
            );
        }
    }
    files.sort();
    let mut seeds = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("reading a seed");
        let mut s = Session::new();
        for line in text.lines() {
            let Some((dir, hex)) = line.split_once(' ') else {
                continue;
            };
            let client = match dir {
                "C" => true,
                "S" => false,
                _ => continue,
            };
            let data = decode_hex(hex.trim());
            let len = data.len() as u64;
            s.push(Call { client, data, len });
        }
        if !s.is_empty() {
            seeds.push(s);
        }
    }
    seeds
}

fn decode_hex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
        .collect()
}

const INTERESTING: [u8; 12] = [0, 1, 0x7f, 0x80, 0xff, b'\r', b'\n', b' ', b':', b'0', 4, 9];

fn mutate(rng: &mut Rng, seeds: &[Session], base: &Session) -> Session {
    let mut s = base.clone();
    let rounds = 1 + rng.below(6);
    for _ in 0..rounds {
        if s.is_empty() {
            s.push(Call {
                client: true,
                data: vec![],
                len: 0,
            });
        }
        let i = rng.below(s.len());
        match rng.below(11) {
            0 => {
                let c = &mut s[i];
                if !c.data.is_empty() {
                    let p = rng.below(c.data.len());
                    c.data[p] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let c = &mut s[i];
                if !c.data.is_empty() {
                    let p = rng.below(c.data.len());
                    c.data[p] = INTERESTING[rng.below(INTERESTING.len())];
                }
            }
            2 => {
                let c = &mut s[i];
                let p = rng.below(c.data.len() + 1);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                c.data.splice(p..p, ins);
            }
            3 => {
                let c = &mut s[i];
                if !c.data.is_empty() {
                    let a = rng.below(c.data.len());
                    let b = (a + 1 + rng.below(64)).min(c.data.len());
                    c.data.drain(a..b);
                }
            }
            4 => {
                let c = &mut s[i];
                if !c.data.is_empty() {
                    let a = rng.below(c.data.len());
                    let b = (a + 1 + rng.below(64)).min(c.data.len());
                    let dup = c.data[a..b].to_vec();
                    c.data.splice(b..b, dup);
                }
            }
            5 => {
                // Splice in a call from another seed.
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let c = other[rng.below(other.len())].clone();
                    let p = rng.below(s.len() + 1);
                    s.insert(p, c);
                }
            }
            6 => {
                // Re-cut a call in two.
                let c = s[i].clone();
                if c.data.len() > 1 {
                    let p = 1 + rng.below(c.data.len() - 1);
                    s[i].data.truncate(p);
                    s.insert(
                        i + 1,
                        Call {
                            client: c.client,
                            data: c.data[p..].to_vec(),
                            len: 0,
                        },
                    );
                }
            }
            7 => {
                // Merge with the next call of the same direction.
                if i + 1 < s.len() && s[i].client == s[i + 1].client {
                    let next = s.remove(i + 1);
                    s[i].data.extend_from_slice(&next.data);
                }
            }
            8 => {
                // The capture kept only a prefix of a bigger call.
                let c = &mut s[i];
                let keep = rng.below(c.data.len() + 1);
                c.len = c.data.len() as u64 + rng.below(100_000) as u64;
                c.data.truncate(keep);
            }
            9 => {
                // A lost call.
                s.remove(i);
            }
            _ => {
                s[i].client = !s[i].client;
            }
        }
    }
    for c in &mut s {
        c.len = c.len.max(c.data.len() as u64);
    }
    s
}

/// Every parser flavour, from both ends, over one session. Panics on a broken bound.
/// `gaps`: every seventh call also reports a lost call before it.
fn run_all(s: &Session, gaps: bool) -> Worst {
    let mut worst = Worst::default();
    let input: u64 = s.iter().map(|c| c.data.len() as u64).sum();
    for &(client_side, role, kind) in &[
        (false, Role::Server, 0u8),
        (true, Role::Client, 0),
        (false, Role::Unknown, 0),
        (false, Role::Server, 1),
        (true, Role::Client, 1),
        (false, Role::Unknown, 2),
        (true, Role::Unknown, 2),
    ] {
        let base = live();
        let alloc0 = allocated();
        let t0 = Instant::now();
        let mut p = match kind {
            0 => Parser::http1(role, 16 * 1024),
            1 => Parser::http2(role, true),
            _ => Parser::http2(role, false),
        };
        let mut out = Vec::new();
        let mut ts = 1_000u64;
        for (n, c) in s.iter().enumerate() {
            ts += 1_000;
            let dir = if c.client == client_side {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let _ = l7::detect(&c.data);
            if gaps && n % 7 == 6 {
                p.gap(dir);
            }
            p.feed(
                &Chunk {
                    dir,
                    start_ns: ts,
                    end_ns: ts,
                    len: c.len,
                    data: &c.data,
                },
                &mut out,
            );
            assert!(
                p.buffered_bytes() <= BUFFER_BOUND,
                "parser holds {} bytes",
                p.buffered_bytes()
            );
            p.expire(ts, 0, &mut out);
            // Records handed out are the caller's: only what the parser keeps counts.
            drop(std::mem::take(&mut out));
            let retained = live() - base;
            assert!(
                retained <= RETAINED_BOUND,
                "parser flavour {kind} ({role:?}) retains {retained} heap bytes after call {n} \
                 (buffered_bytes says {})",
                p.buffered_bytes()
            );
            worst.retained = worst.retained.max(retained);
        }
        p.close(ts + 1, &mut out);
        drop(out);
        drop(p);
        let spent = t0.elapsed();
        let alloc = allocated() - alloc0;
        assert!(
            alloc <= ALLOC_FLOOR + ALLOC_PER_BYTE * input,
            "parser flavour {kind} ({role:?}) allocated {alloc} bytes for {input} input bytes"
        );
        if input >= 4096 {
            worst.alloc_per_byte = worst.alloc_per_byte.max(alloc as f64 / input as f64);
            worst.ns_per_byte = worst
                .ns_per_byte
                .max(spent.as_nanos() as f64 / input as f64);
        }
        worst.bytes += input;
    }
    worst
}

fn save_crash(s: &Session, why: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("crash-{}.txt", std::process::id()));
    let mut text = format!("# {why}\n");
    for c in s {
        let hex: String = c.data.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!("{} {hex}\n", if c.client { "C" } else { "S" }));
    }
    let _ = std::fs::write(&path, text);
    path
}

#[test]
fn fuzz_l7_parsers() {
    let secs: f64 = std::env::var("K8S_ALOG_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15.0);
    let seed: u64 = std::env::var("K8S_ALOG_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let seeds = load_seeds();
    assert!(
        seeds.len() >= 8,
        "only {} seed sessions found under tests/fixtures",
        seeds.len()
    );
    // The seeds themselves first.
    let mut worst = Worst::default();
    for s in &seeds {
        worst.merge(run_all(s, true));
    }
    // Silence the default hook: a caught panic is reported once, below, with its input.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(seed | 1);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut iters = 0u64;
    let mut failure = None;
    while Instant::now() < deadline {
        let base = &seeds[rng.below(seeds.len())];
        let s = mutate(&mut rng, &seeds, base);
        let r = catch_unwind(AssertUnwindSafe(|| run_all(&s, true)));
        if let Ok(w) = r {
            worst.merge(w);
        }
        if let Err(e) = r {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            failure = Some((save_crash(&s, &why), why));
            break;
        }
        iters += 1;
    }
    std::panic::set_hook(prev);
    eprintln!(
        "fuzz: {iters} mutated sessions ({} seeds, 7 parser flavours each) in {secs} s, seed {seed:#x}; \
         {} bytes fed over all flavours; worst: {} heap bytes retained by one connection, {:.1} bytes allocated \
         and {:.0} ns per input byte (sessions of 4 KiB or more)",
        seeds.len(),
        worst.bytes,
        worst.retained,
        worst.alloc_per_byte,
        worst.ns_per_byte,
    );
    if let Some((path, why)) = failure {
        panic!(
            "a parser failed after {iters} sessions: {why}; input saved to {}",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile HTTP/2 sessions: what one pod talking to itself can send.

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// RFC 7541 integer with `flags` in the first byte's high bits.
fn hint(v: usize, prefix: u8, flags: u8) -> Vec<u8> {
    let max = (1usize << prefix) - 1;
    if v < max {
        return vec![flags | v as u8];
    }
    let mut out = vec![flags | max as u8];
    let mut rest = v - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

fn hstr(b: &[u8]) -> Vec<u8> {
    let mut out = hint(b.len(), 7, 0);
    out.extend_from_slice(b);
    out
}

const HEADERS: u8 = 1;
const CONTINUATION: u8 = 9;
const SETTINGS: u8 = 4;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// A header block as HEADERS and CONTINUATION frames of at most 16,000 bytes.
fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
    let pieces: Vec<&[u8]> = block.chunks(16_000).collect();
    let mut out = Vec::new();
    for (k, p) in pieces.iter().enumerate() {
        let mut flags = if k + 1 == pieces.len() {
            END_HEADERS
        } else {
            0
        };
        let ty = if k == 0 {
            flags |= END_STREAM;
            HEADERS
        } else {
            CONTINUATION
        };
        out.extend(frame(ty, flags, stream, p));
    }
    out
}

/// The client's preface and SETTINGS; the server's SETTINGS give the client's blocks a
/// 64 KiB table; then `first`, the client's first block, on stream 1.
fn opening(first: &[u8]) -> Session {
    let mut c = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    c.extend(frame(SETTINGS, 0, 0, &[]));
    let mut s = frame(SETTINGS, 0, 0, &[0, 1, 0, 1, 0, 0]);
    s.extend(frame(SETTINGS, 1, 0, &[]));
    let mut block = hint(65_536, 5, 0x20);
    block.extend_from_slice(first);
    let call = |client: bool, data: Vec<u8>| Call {
        client,
        len: data.len() as u64,
        data,
    };
    vec![
        call(true, c),
        call(false, s),
        call(true, headers(1, &block)),
    ]
}

fn push_calls(s: &mut Session, client: bool, bytes: Vec<u8>) {
    for piece in bytes.chunks(64 * 1024) {
        s.push(Call {
            client,
            data: piece.to_vec(),
            len: piece.len() as u64,
        });
    }
}

/// Streams that never end, each naming eight 4000-byte table entries in 17 bytes.
fn stream_flood() -> Session {
    let names = [
        ":path",
        ":authority",
        "user-agent",
        "content-type",
        "sw8",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
    ];
    let mut first = vec![0x82];
    for n in names {
        first.push(0x40);
        first.extend(hstr(n.as_bytes()));
        first.extend(hstr(&[b'v'; 4000]));
    }
    let mut s = opening(&first);
    let mut flood = Vec::new();
    for k in 1..4000u32 {
        let mut block = vec![0x82];
        block.extend((0..8u8).rev().map(|i| 0x80 | (62 + i)));
        flood.extend(headers(2 * k + 1, &block));
    }
    push_calls(&mut s, true, flood);
    s
}

/// Header blocks repeating one indexed 4000-byte field 60,000 times.
fn repeated_field() -> Session {
    let mut first = vec![0x82, 0x44];
    first.extend(hstr(&[b'p'; 4000]));
    let mut s = opening(&first);
    let mut bytes = Vec::new();
    for k in 1..20u32 {
        let mut block = vec![0x82];
        block.extend(std::iter::repeat_n(0x80 | 62u8, 60_000));
        bytes.extend(headers(2 * k + 1, &block));
    }
    push_calls(&mut s, true, bytes);
    s
}

/// A 60 KB name in the table, then literals of 3 bytes reusing it, with and without
/// adding them to the table.
fn reused_name() -> Session {
    let mut first = vec![0x82, 0x40];
    first.extend(hstr(&[b'n'; 60_000]));
    first.extend(hstr(b""));
    let mut s = opening(&first);
    let mut bytes = Vec::new();
    for k in 1..20u32 {
        let mut block = vec![0x82];
        for i in 0..20_000 {
            if i % 100 == 99 {
                // Literal with incremental indexing, name from entry 62: the entry is
                // replaced by one with the same name, so 62 stays valid.
                block.extend([0x40 | 62, 0x00]);
            } else {
                // Literal without indexing, name from entry 62 (4-bit prefix: 15 + 47).
                block.extend([0x0f, 47, 0x00]);
            }
        }
        bytes.extend(headers(2 * k + 1, &block));
    }
    push_calls(&mut s, true, bytes);
    s
}

/// HTTP/1 requests with 8 KB targets and 4 KB user agents, pipelined and never
/// answered: the waiting requests alone would hold 12 MB per connection.
fn pipelined_flood() -> Session {
    let mut bytes = Vec::new();
    let target = "t".repeat(8000);
    let agent = "u".repeat(4000);
    for k in 0..3000 {
        bytes.extend(
            format!("GET /{target}/{k} HTTP/1.1\r\nHost: h\r\nUser-Agent: {agent}\r\n\r\n")
                .as_bytes(),
        );
    }
    let mut s = Session::new();
    push_calls(&mut s, true, bytes);
    s
}

/// What a pod can send to make a parser hold memory or copy bytes again and again stays
/// within the same measured bounds as the fuzzed sessions.
#[test]
fn hostile_sessions_stay_bounded() {
    for (name, s) in [
        ("HTTP/1 pipelined flood", pipelined_flood()),
        ("stream flood", stream_flood()),
        ("repeated field", repeated_field()),
        ("reused 60 KB name", reused_name()),
    ] {
        let w = run_all(&s, false);
        eprintln!(
            "{name}: {} input bytes; {} heap bytes retained at most by one connection, \
             {:.1} bytes allocated and {:.0} ns per input byte at worst",
            w.bytes, w.retained, w.alloc_per_byte, w.ns_per_byte
        );
    }
}
