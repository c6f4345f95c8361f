//! Traffic recorded from real implementations (tests/fixtures/http2/README.md says how).

use super::frame::{FrameHeader, CONTINUATION, END_HEADERS, FRAME_HEADER, HEADERS, PUSH_PROMISE};
use super::hpack::Hpack;
use super::*;
use Direction::{Egress as E, Ingress as I};

const NGHTTP_NGINX: &str = include_str!("../../../tests/fixtures/http2/nghttp_nginx.txt");
const NGHTTP_POST: &str = include_str!("../../../tests/fixtures/http2/nghttp_post.txt");
const H2LOAD_NGINX: &str = include_str!("../../../tests/fixtures/http2/h2load_nginx.txt");
const GRPC_PYTHON: &str = include_str!("../../../tests/fixtures/http2/grpc_python.txt");

/// The recorded calls, from the client's point of view (C: Egress).
fn calls(text: &str) -> Vec<(Direction, Vec<u8>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (tag, hex) = l.split_once(' ').unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap())
                .collect();
            (if tag == "C" { E } else { I }, bytes)
        })
        .collect()
}

/// Feed `calls`, each cut into pieces of `piece` bytes of which at most `cap` are captured.
fn run(
    mut c: H2Conn,
    calls: &[(Direction, Vec<u8>)],
    piece: usize,
    cap: usize,
) -> (Vec<H2Exchange>, H2Stats) {
    let mut out = Vec::new();
    let mut ts = 0;
    for (d, bytes) in calls {
        for p in bytes.chunks(piece) {
            ts += 1;
            let chunk = Chunk {
                dir: *d,
                start_ns: ts,
                end_ns: ts,
                len: p.len() as u64,
                data: &p[..p.len().min(cap)],
            };
            c.feed(&chunk, &mut out);
            assert!(c.buffered_bytes() <= 2 * (64 * 1024 + 32));
        }
    }
    c.close(ts + 1, &mut out);
    out.sort_by_key(|e| e.stream_id);
    (out, c.stats().clone())
}

fn full(text: &str) -> Vec<H2Exchange> {
    let (out, st) = run(
        H2Conn::new(Role::Client, H2Limits::default()),
        &calls(text),
        usize::MAX,
        usize::MAX,
    );
    assert_eq!((st.parse_errors, st.hpack_errors, st.resyncs), (0, 0, 0));
    assert_eq!((st.hpack_fields_unknown, st.bytes_skipped), (0, 0));
    for ex in &out {
        assert!(ex.complete && !ex.partial && ex.notes.is_empty(), "{ex:?}");
    }
    out
}

/// What a degraded run reports must never contradict the full run: values it gives are
/// right, and counts of exchanges it does not mark partial are exact.
fn consistent(got: &[H2Exchange], want: &[H2Exchange], what: &str) {
    for g in got {
        let Some(w) = want.iter().find(|w| w.stream_id == g.stream_id) else {
            panic!("{what}: unknown stream {}", g.stream_id);
        };
        let same = |a: &Option<String>, b: &Option<String>| a.is_none() || a == b;
        assert!(same(&g.method, &w.method), "{what}: {g:?}");
        assert!(same(&g.path, &w.path), "{what}: {g:?}");
        assert!(same(&g.authority, &w.authority), "{what}: {g:?}");
        assert!(same(&g.user_agent, &w.user_agent), "{what}: {g:?}");
        assert!(same(&g.content_type, &w.content_type), "{what}: {g:?}");
        assert!(same(&g.grpc_message, &w.grpc_message), "{what}: {g:?}");
        assert!(g.status.is_none() || g.status == w.status, "{what}: {g:?}");
        assert!(
            g.grpc_status.is_none() || g.grpc_status == w.grpc_status,
            "{what}: {g:?}"
        );
        assert!(g.trace.is_none() || g.trace == w.trace, "{what}: {g:?}");
        // A reset can end a stream whose END_STREAM was lost (nginx resets finished streams).
        assert!(g.partial || g.reset_code == w.reset_code, "{what}: {g:?}");
        if !g.partial {
            assert_eq!(
                (
                    g.req_body_bytes,
                    g.resp_body_bytes,
                    g.req_messages,
                    g.resp_messages
                ),
                (
                    w.req_body_bytes,
                    w.resp_body_bytes,
                    w.req_messages,
                    w.resp_messages
                ),
                "{what}: {g:?}"
            );
            if g.complete {
                assert_eq!(
                    (g.req_header_bytes, g.resp_header_bytes, g.trailers_only),
                    (w.req_header_bytes, w.resp_header_bytes, w.trailers_only),
                    "{what}: {g:?}"
                );
            }
        }
    }
}

/// The header blocks of one direction, in order (HEADERS or PUSH_PROMISE + CONTINUATION).
fn header_blocks(calls: &[(Direction, Vec<u8>)], d: Direction) -> Vec<Vec<u8>> {
    let mut bytes: Vec<u8> = calls
        .iter()
        .filter(|c| c.0 == d)
        .flat_map(|c| c.1.clone())
        .collect();
    if bytes.starts_with(PREFACE) {
        bytes.drain(..PREFACE.len());
    }
    let (mut blocks, mut cur, mut p) = (Vec::new(), Vec::new(), 0);
    while p + FRAME_HEADER <= bytes.len() {
        let h = FrameHeader::parse(&bytes[p..]);
        let payload = &bytes[p + FRAME_HEADER..p + FRAME_HEADER + h.len as usize];
        if matches!(h.ty, HEADERS | PUSH_PROMISE | CONTINUATION) {
            let pad = if h.padded() {
                usize::from(payload[0])
            } else {
                0
            };
            cur.extend_from_slice(&payload[h.preamble() as usize..payload.len() - pad]);
            if h.has(END_HEADERS) {
                blocks.push(std::mem::take(&mut cur));
            }
        }
        p += FRAME_HEADER + h.len as usize;
    }
    blocks
}

/// Every field of every recorded header block (Huffman-coded, indexed, ...) decodes as
/// loona-hpack decodes it.
#[test]
fn real_header_blocks_match_reference_decoder() {
    let mut total = 0;
    for text in [NGHTTP_NGINX, NGHTTP_POST, H2LOAD_NGINX, GRPC_PYTHON] {
        for d in [E, I] {
            let mut ours = Hpack::exact();
            let mut theirs = loona_hpack::Decoder::new();
            for b in header_blocks(&calls(text), d) {
                let mut mine = Vec::new();
                let o = ours.decode(&b, false, &mut |n, v| mine.push((n.to_vec(), v.to_vec())));
                let refs = theirs.decode(&b).unwrap();
                assert!(!o.error && o.unknown == 0);
                assert_eq!(mine, refs);
                total += mine.len();
            }
        }
    }
    assert!(total > 300, "{total}");
}

#[test]
fn nghttp_to_nginx() {
    let out = full(NGHTTP_NGINX);
    let got: Vec<(u32, &str, u16, u64)> = out
        .iter()
        .map(|e| {
            (
                e.stream_id,
                e.path.as_deref().unwrap(),
                e.status.unwrap(),
                e.resp_body_bytes,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (13, "/small.txt", 200, 9),
            (15, "/big.bin", 200, 20000),
            (17, "/mid.html", 200, 3013),
            (19, "/missing", 404, 153),
            (21, "/empty.txt", 200, 0),
            (23, "/small.txt?again", 200, 9),
        ]
    );
    for ex in &out {
        assert_eq!(ex.method.as_deref(), Some("GET"));
        assert_eq!(ex.authority.as_deref(), Some("127.0.0.1:28342"));
        assert_eq!(ex.user_agent.as_deref(), Some("fixture-agent/1.0"));
        assert_eq!(ex.scheme.as_deref(), Some("http"));
        assert_eq!(
            ex.trace.as_ref().unwrap().trace_id,
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(!ex.grpc);
    }
    // Seen from the server's side, the same.
    let flipped: Vec<_> = calls(NGHTTP_NGINX)
        .into_iter()
        .map(|(d, b)| (other(d), b))
        .collect();
    let c = H2Conn::new(Role::Server, H2Limits::default());
    let (out2, _) = run(c, &flipped, usize::MAX, usize::MAX);
    assert_eq!(out2, out);
    // Unknown role: the preface tells.
    let c = H2Conn::new(Role::Unknown, H2Limits::default());
    let (out3, _) = run(c, &flipped, usize::MAX, usize::MAX);
    assert_eq!(out3, out);
}

#[test]
fn nghttp_post_and_h2load() {
    let out = full(NGHTTP_POST);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].method.as_deref(), out[0].status),
        (Some("POST"), Some(201))
    );
    assert_eq!((out[0].req_body_bytes, out[0].resp_body_bytes), (4000, 8));
    assert_eq!(
        (out[1].path.as_deref(), out[1].status),
        (Some("/missing"), Some(404))
    );
    assert_eq!(out[1].req_body_bytes, 4000);

    let out = full(H2LOAD_NGINX);
    assert_eq!(out.len(), 30);
    let ok = out.iter().filter(|e| e.status == Some(200)).count();
    let missing = out.iter().filter(|e| e.status == Some(404)).count();
    assert_eq!((ok, missing), (20, 10));
    assert!(out
        .iter()
        .all(|e| e.user_agent.as_deref().unwrap().starts_with("h2load")));
}

#[test]
fn grpc_core_calls() {
    let out = full(GRPC_PYTHON);
    let got: Vec<(&str, u64, u64, Option<u32>, bool)> = out
        .iter()
        .map(|e| {
            (
                e.path.as_deref().unwrap(),
                e.req_messages,
                e.resp_messages,
                e.grpc_status,
                e.trailers_only,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/fixture.Echo/Unary", 1, 1, Some(0), false),
            ("/fixture.Echo/Unary", 1, 1, Some(0), false),
            ("/fixture.Echo/ServerStream", 1, 6, Some(0), false),
            ("/fixture.Echo/ClientStream", 4, 1, Some(0), false),
            ("/fixture.Echo/Bidi", 3, 3, Some(0), false),
            ("/fixture.Echo/Fail", 1, 0, Some(3), true),
            ("/fixture.Echo/Nope", 1, 0, Some(12), true),
            ("/fixture.Echo/Unary", 1, 1, Some(0), false),
        ]
    );
    assert!(out.iter().all(|e| e.grpc && e.status == Some(200)));
    assert_eq!(out[1].req_body_bytes, 20_005);
    assert_eq!(out[2].resp_body_bytes, 17_019 + 6 * 5);
    assert_eq!(
        out[5].grpc_message.as_deref(),
        Some("bad input: 100% sure \u{2713}")
    );
    assert_eq!(out[6].grpc_message.as_deref(), Some("Method not found!"));
    assert_eq!(out[0].trace.as_ref().unwrap().provider, "zipkin");
    assert!(out[0]
        .content_type
        .as_deref()
        .unwrap()
        .starts_with("application/grpc"));
}

/// Calls cut into small pieces, every byte captured: the same result.
#[test]
fn recut_calls_give_the_same_result() {
    for text in [NGHTTP_NGINX, NGHTTP_POST, H2LOAD_NGINX, GRPC_PYTHON] {
        let want = full(text);
        for piece in [1, 7, 100, 1000, 4096] {
            let c = H2Conn::new(Role::Client, H2Limits::default());
            let (got, st) = run(c, &calls(text), piece, usize::MAX);
            assert_eq!(st.resyncs, 0, "piece {piece}");
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    (
                        g.stream_id,
                        &g.path,
                        g.status,
                        g.grpc_status,
                        g.resp_messages
                    ),
                    (
                        w.stream_id,
                        &w.path,
                        w.status,
                        w.grpc_status,
                        w.resp_messages
                    ),
                    "piece {piece}"
                );
                assert_eq!(g.resp_body_bytes, w.resp_body_bytes);
            }
        }
    }
}

/// Captures cut short: what is reported is never wrong.
#[test]
fn short_captures_never_contradict() {
    for text in [NGHTTP_NGINX, NGHTTP_POST, H2LOAD_NGINX, GRPC_PYTHON] {
        let want = full(text);
        for (piece, cap) in [
            (usize::MAX, 4096),
            (usize::MAX, 512),
            (4096, 100),
            (333, 16),
        ] {
            let c = H2Conn::new(Role::Client, H2Limits::default());
            let (got, _) = run(c, &calls(text), piece, cap);
            consistent(&got, &want, &format!("piece {piece} cap {cap}"));
        }
    }
    // The gRPC calls keep their outcome when only DATA payloads are cut.
    let want = full(GRPC_PYTHON);
    let c = H2Conn::new(Role::Client, H2Limits::default());
    let (got, st) = run(c, &calls(GRPC_PYTHON), usize::MAX, 4096);
    consistent(&got, &want, "grpc 4096");
    assert_eq!(got.len(), want.len());
    assert!(st.resyncs > 0);
}

/// Joined before every call in turn: values reported are right, the rest is marked.
#[test]
fn midstream_joins_never_contradict() {
    for text in [NGHTTP_NGINX, H2LOAD_NGINX, GRPC_PYTHON] {
        let want = full(text);
        let all = calls(text);
        for k in 1..all.len() {
            for role in [Role::Client, Role::Unknown] {
                let c = H2Conn::new_midstream(role, H2Limits::default());
                let (got, _) = run(c, &all[k..], usize::MAX, usize::MAX);
                consistent(&got, &want, &format!("joined at call {k}"));
                for g in &got {
                    if g.method.is_none() {
                        assert!(g.partial, "joined at {k}: {g:?}");
                    }
                }
            }
        }
    }
}
