//! Test-only helpers shared by the HTTP/1 unit tests (pure, no I/O): a driver that feeds one
//! connection calls with increasing timestamps and collects its exchanges, and the request and
//! response builders the tests use.

use super::{Http1Conn, Http1Exchange};
use crate::protocol::{Chunk, Direction, Role};

pub(super) const E: Direction = Direction::Egress;
pub(super) const I: Direction = Direction::Ingress;

/// Test driver: feeds chunks with increasing timestamps and collects exchanges.
pub(super) struct T {
    pub(super) c: Http1Conn,
    pub(super) out: Vec<Http1Exchange>,
    ts: u64,
}

impl T {
    pub(super) fn new(role: Role) -> Self {
        Self::with_cap(role, 4096)
    }

    pub(super) fn with_cap(role: Role, cap: usize) -> Self {
        T {
            c: Http1Conn::new(role, cap),
            out: Vec::new(),
            ts: 1000,
        }
    }

    /// Feed a fully captured call; returns its end timestamp.
    pub(super) fn send(&mut self, dir: Direction, data: &[u8]) -> u64 {
        self.send_len(dir, data, data.len() as u64)
    }

    /// Feed a call that moved `len` bytes of which `data` is the captured prefix.
    pub(super) fn send_len(&mut self, dir: Direction, data: &[u8], len: u64) -> u64 {
        self.ts += 10;
        let chunk = Chunk {
            dir,
            start_ns: self.ts,
            end_ns: self.ts,
            len,
            data,
        };
        self.c.feed(&chunk, &mut self.out);
        self.ts
    }

    /// Feed a call of `len` bytes whose content is `data`, capturing at most `capture`.
    pub(super) fn send_captured(&mut self, dir: Direction, data: &[u8], capture: usize) -> u64 {
        let n = data.len().min(capture);
        self.send_len(dir, &data[..n], data.len() as u64)
    }

    pub(super) fn close(&mut self) {
        self.ts += 10;
        self.c.close(self.ts, &mut self.out);
    }
}

pub(super) fn only(t: &T) -> &Http1Exchange {
    assert_eq!(t.out.len(), 1, "{:#?}", t.out);
    &t.out[0]
}

pub(super) fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n").into_bytes()
}

pub(super) fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
