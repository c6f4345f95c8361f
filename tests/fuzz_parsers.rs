//! Mutation fuzzing of the L7 parsers (HTTP/1, HTTP/2, h2c upgrade) on stable Rust.
//!
//! Seeds are real or hand-made sessions (`tests/fixtures/fuzz/http1/`,
//! `tests/fixtures/http2/`): one line per socket call, `C` (client to server) or `S`,
//! then hex. Each iteration mutates a seed (bit flips, interesting bytes, inserted,
//! deleted and duplicated ranges, splices from other seeds, re-cut calls, captures shorter
//! than the call, lost calls) and feeds it to every parser flavour. A panic or a parser
//! holding more than its bound fails the test and leaves the input in
//! `target/fuzz-crashes/` to replay. Not coverage-guided: a deterministic, seeded search.
//!
//! Time: `K8S_ALOG_FUZZ_SECONDS` (default 15); seed: `K8S_ALOG_FUZZ_SEED`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_alog::protocol::l7::{self, Parser};
use k8s_alog::protocol::{Chunk, Direction, Role};

/// Buffers may hold at most this much per connection (HTTP/2: 64 KiB per direction plus
/// a header block; HTTP/1: the head cap per direction).
const BUFFER_BOUND: usize = 512 * 1024;

#[derive(Debug, Clone)]
struct Call {
    client: bool,
    data: Vec<u8>,
    /// Bytes the call moved; `data` is its captured prefix.
    len: u64,
}

type Session = Vec<Call>;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

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
fn run_all(s: &Session) {
    for &(client_side, role, kind) in &[
        (false, Role::Server, 0u8),
        (true, Role::Client, 0),
        (false, Role::Unknown, 0),
        (false, Role::Server, 1),
        (true, Role::Client, 1),
        (false, Role::Unknown, 2),
        (true, Role::Unknown, 2),
    ] {
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
            // Every seventh call also reports a lost call before it.
            if n % 7 == 6 {
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
        }
        p.close(ts + 1, &mut out);
    }
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
    for s in &seeds {
        run_all(s);
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
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run_all(&s))) {
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
        "fuzz: {iters} mutated sessions ({} seeds, 7 parser flavours each) in {secs} s, seed {seed:#x}",
        seeds.len()
    );
    if let Some((path, why)) = failure {
        panic!(
            "a parser failed after {iters} sessions: {why}; input saved to {}",
            path.display()
        );
    }
}
