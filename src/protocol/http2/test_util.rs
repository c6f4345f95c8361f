//! Test code shared by the parser's test modules: frame builders, one HPACK encoder per
//! peer, a connection driven from the client's side, a small deterministic random generator.

use super::frame::{ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, SETTINGS};
use super::*;
use Direction::{Egress as E, Ingress as I};

pub(super) fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = len.to_be_bytes()[1..].to_vec();
    v.extend_from_slice(&[ty, flags]);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub(super) fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in entries {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub(super) fn data(stream: u32, payload: &[u8], end: bool) -> Vec<u8> {
    frame(DATA, if end { END_STREAM } else { 0 }, stream, payload)
}

/// gRPC messages of these sizes, each with its 5-byte prefix.
pub(super) fn grpc_msgs(sizes: &[usize]) -> Vec<u8> {
    let mut v = Vec::new();
    for &n in sizes {
        v.push(0);
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(b'm', n));
    }
    v
}

/// A header block as HEADERS then CONTINUATION frames of at most `frag` bytes each.
pub(super) fn split_block(stream: u32, block: &[u8], end_stream: bool, frag: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = if block.is_empty() {
        vec![block]
    } else {
        block.chunks(frag.max(1)).collect()
    };
    for (k, p) in pieces.iter().enumerate() {
        let last = k + 1 == pieces.len();
        let mut flags = if last { END_HEADERS } else { 0 };
        let ty = if k == 0 {
            if end_stream {
                flags |= END_STREAM;
            }
            HEADERS
        } else {
            CONTINUATION
        };
        out.extend(frame(ty, flags, stream, p));
    }
    out
}

/// One side's HPACK encoder.
pub(super) struct Peer(loona_hpack::Encoder<'static>);

impl Peer {
    pub(super) fn new() -> Self {
        Peer(loona_hpack::Encoder::new())
    }

    pub(super) fn block(&mut self, h: &[(&str, &str)]) -> Vec<u8> {
        self.0
            .encode(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    pub(super) fn headers(&mut self, stream: u32, h: &[(&str, &str)], end: bool) -> Vec<u8> {
        let b = self.block(h);
        split_block(stream, &b, end, usize::MAX)
    }
}

pub(super) fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":path", path.into()),
        (":authority", "svc.local".into()),
        ("user-agent", "test/1".into()),
    ]
}

pub(super) fn grpc_req(method: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".into()),
        (":scheme", "http".into()),
        (":path", method.into()),
        (":authority", "grpc.local:50051".into()),
        ("content-type", "application/grpc".into()),
        ("te", "trailers".into()),
    ]
}

pub(super) fn as_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// A connection from a client's point of view (Egress: client to server).
pub(super) struct T {
    pub(super) c: H2Conn,
    pub(super) out: Vec<H2Exchange>,
    pub(super) ts: u64,
    pub(super) cl: Peer,
    pub(super) sv: Peer,
}

impl T {
    pub(super) fn with(c: H2Conn) -> Self {
        T {
            c,
            out: Vec::new(),
            ts: 1000,
            cl: Peer::new(),
            sv: Peer::new(),
        }
    }

    /// Preface and SETTINGS exchanged.
    pub(super) fn new() -> Self {
        Self::limits(H2Limits::default())
    }

    pub(super) fn limits(l: H2Limits) -> Self {
        let mut t = Self::with(H2Conn::new(Role::Client, l));
        t.open();
        t
    }

    fn open(&mut self) {
        let mut c = PREFACE.to_vec();
        c.extend(settings(&[(2, 0), (4, 65535)]));
        self.send(E, &c);
        let mut s = settings(&[(3, 100)]);
        s.extend(frame(SETTINGS, ACK, 0, &[]));
        self.send(I, &s);
        self.send(E, &frame(SETTINGS, ACK, 0, &[]));
    }

    pub(super) fn send(&mut self, d: Direction, bytes: &[u8]) -> u64 {
        self.send_len(d, bytes, bytes.len() as u64)
    }

    pub(super) fn send_len(&mut self, d: Direction, bytes: &[u8], len: u64) -> u64 {
        self.ts += 10;
        let chunk = Chunk {
            dir: d,
            start_ns: self.ts - 5,
            end_ns: self.ts,
            len,
            data: bytes,
        };
        self.c.feed(&chunk, &mut self.out);
        self.ts
    }

    /// Send `bytes` in chunks of `n`.
    pub(super) fn trickle(&mut self, d: Direction, bytes: &[u8], n: usize) {
        for c in bytes.chunks(n) {
            self.send(d, c);
        }
    }

    pub(super) fn req(&mut self, stream: u32, h: &[(&'static str, String)], end: bool) -> Vec<u8> {
        self.cl.headers(stream, &as_refs(h), end)
    }

    pub(super) fn resp(&mut self, stream: u32, h: &[(&str, &str)], end: bool) -> Vec<u8> {
        self.sv.headers(stream, h, end)
    }

    pub(super) fn close(&mut self) {
        self.ts += 10;
        self.c.close(self.ts, &mut self.out);
    }

    pub(super) fn only(&self) -> &H2Exchange {
        assert_eq!(self.out.len(), 1, "{:#?}", self.out);
        &self.out[0]
    }
}

pub(super) struct XorShift(pub(super) u64);

impl XorShift {
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(super) fn shuffle<X>(&mut self, v: &mut [X]) {
        for k in (1..v.len()).rev() {
            let j = self.below(k as u64 + 1) as usize;
            v.swap(k, j);
        }
    }
}
