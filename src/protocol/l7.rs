//! One parser per connection whatever its protocol: detection, HTTP/1, HTTP/2, and the
//! switch from HTTP/1 to HTTP/2 after an `Upgrade: h2c`.

use super::http1::{self, Http1Conn, Http1Exchange, Http1Stats};
use super::http2::{self, H2Conn, H2Exchange, H2Limits, H2Stats};
use super::{Chunk, Direction, Role};

/// What the first payload bytes of a connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    /// `preface`: the client preface was seen (the connection is seen from its start).
    Http2 {
        preface: bool,
    },
    /// A TLS record: ciphertext, not parsable here.
    Tls,
    Unknown,
}

/// Cheap, on the first bytes of a stream.
pub fn detect(first: &[u8]) -> Detected {
    if looks_like_tls(first) {
        return Detected::Tls;
    }
    match http2::detect(first) {
        Some(http2::Detected::Preface) => return Detected::Http2 { preface: true },
        Some(http2::Detected::Frames) => return Detected::Http2 { preface: false },
        None => {}
    }
    if http1::detect(first).is_some() {
        return Detected::Http1;
    }
    Detected::Unknown
}

/// A TLS record header: handshake (22) or application data (23), version 3.x, sane length.
fn looks_like_tls(b: &[u8]) -> bool {
    b.len() >= 5
        && (b[0] == 22 || b[0] == 23)
        && b[1] == 3
        && b[2] <= 4
        && u16::from_be_bytes([b[3], b[4]]) <= 18 * 1024
}

/// One request and its response, from either protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Exchange {
    Http1(Http1Exchange),
    Http2(H2Exchange),
}

impl Exchange {
    /// Add a note, once.
    pub fn note(&mut self, note: &'static str) {
        let notes = match self {
            Exchange::Http1(x) => &mut x.notes,
            Exchange::Http2(x) => &mut x.notes,
        };
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
}

enum Inner {
    H1(Box<Http1Conn>),
    H2(Box<H2Conn>),
}

/// The L7 parser of one connection.
pub struct Parser {
    inner: Inner,
    /// Statistics of the HTTP/1 parser a connection started with, kept after an upgrade.
    h1_done: Option<Http1Stats>,
    scratch1: Vec<Http1Exchange>,
    scratch2: Vec<H2Exchange>,
    /// The HTTP/1 request that asked for h2c: what stream 1's record needs from it.
    h2c_request: Option<Box<Http1Exchange>>,
}

impl std::fmt::Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser")
            .field("protocol", &self.protocol())
            .field("role", &self.role())
            .finish()
    }
}

impl Parser {
    pub fn http1(role: Role, max_header_bytes: usize) -> Self {
        Self::with(Inner::H1(Box::new(Http1Conn::new(role, max_header_bytes))))
    }

    /// `from_start`: the connection was seen from its first byte (HPACK state is exact).
    pub fn http2(role: Role, from_start: bool) -> Self {
        let limits = H2Limits::default();
        let c = if from_start {
            H2Conn::new(role, limits)
        } else {
            H2Conn::new_midstream(role, limits)
        };
        Self::with(Inner::H2(Box::new(c)))
    }

    fn with(inner: Inner) -> Self {
        Self {
            inner,
            h1_done: None,
            scratch1: Vec::new(),
            scratch2: Vec::new(),
            h2c_request: None,
        }
    }

    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) {
        match &mut self.inner {
            Inner::H1(h) => {
                h.feed(chunk, &mut self.scratch1);
                self.take_h1(out);
            }
            Inner::H2(h) => {
                h.feed(chunk, &mut self.scratch2);
                self.take_h2(out);
            }
        }
    }

    fn take_h2(&mut self, out: &mut Vec<Exchange>) {
        for mut x in self.scratch2.drain(..) {
            if x.stream_id == 1 {
                if let Some(req) = self.h2c_request.take() {
                    // Stream 1 is the upgraded HTTP/1 request: its headers were HTTP/1's.
                    x.user_agent = x.user_agent.or(req.user_agent);
                    x.trace = x.trace.or(req.trace);
                }
            }
            out.push(Exchange::Http2(x));
        }
        super::release(&mut self.scratch2);
    }

    /// HTTP/1 exchanges out; on a 101 to `h2c`, continue as HTTP/2 with that request as
    /// stream 1 (its response comes as HTTP/2, so the 101 is not an exchange of its own).
    fn take_h1(&mut self, out: &mut Vec<Exchange>) {
        let mut upgrade = None;
        for x in self.scratch1.drain(..) {
            let h2c = x.status == Some(101)
                && x.upgrade
                    .as_deref()
                    .is_some_and(|u| u.trim().eq_ignore_ascii_case("h2c"));
            if h2c && upgrade.is_none() {
                upgrade = Some(x);
            } else {
                out.push(Exchange::Http1(x));
            }
        }
        super::release(&mut self.scratch1);
        if let (Some(x), Inner::H1(h)) = (upgrade, &mut self.inner) {
            let role = h.role();
            self.h1_done = Some(h.stats().clone());
            let leftover = h.take_upgrade_leftover();
            let mut c = H2Conn::after_h2c_upgrade(
                role,
                H2Limits::default(),
                x.method.clone(),
                x.target.clone(),
                x.host.clone(),
                x.req_start_ns,
                x.req_header_bytes,
            );
            self.h2c_request = Some(Box::new(x));
            // The server's first HTTP/2 frames often share the 101's write.
            if let Some(l) = leftover.filter(|l| l.len > 0) {
                let chunk = Chunk {
                    dir: l.dir,
                    start_ns: l.start_ns,
                    end_ns: l.end_ns,
                    len: l.len,
                    data: &l.data,
                };
                c.feed(&chunk, &mut self.scratch2);
            }
            self.inner = Inner::H2(Box::new(c));
            self.take_h2(out);
        }
    }

    /// HTTP/2 streams that lost frames and stayed idle for `idle_ns` are written out
    /// (incomplete) instead of waiting for the connection to close.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64, out: &mut Vec<Exchange>) {
        if let Inner::H2(h) = &mut self.inner {
            h.expire_lost(now_ns, idle_ns, &mut self.scratch2);
            self.take_h2(out);
        }
    }

    pub fn gap(&mut self, dir: Direction) {
        match &mut self.inner {
            Inner::H1(h) => h.gap(dir),
            Inner::H2(h) => h.gap(dir),
        }
    }

    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        match &mut self.inner {
            Inner::H1(h) => {
                h.close(ts_ns, &mut self.scratch1);
                // An upgrade cannot follow a close: everything is an exchange.
                out.extend(self.scratch1.drain(..).map(Exchange::Http1));
                super::release(&mut self.scratch1);
            }
            Inner::H2(h) => {
                h.close(ts_ns, &mut self.scratch2);
                self.take_h2(out);
            }
        }
    }

    /// Give up what waits for an answer (HTTP/1 requests, HTTP/2 streams) to free memory:
    /// reported now, incomplete, note `memory_budget`; the parser stays in step.
    pub fn shed(&mut self, out: &mut Vec<Exchange>) {
        match &mut self.inner {
            Inner::H1(h) => {
                h.shed(&mut self.scratch1);
                self.take_h1(out);
            }
            Inner::H2(h) => {
                h.shed(&mut self.scratch2);
                self.take_h2(out);
            }
        }
    }

    pub fn role(&self) -> Role {
        match &self.inner {
            Inner::H1(h) => h.role(),
            Inner::H2(h) => h.role(),
        }
    }

    /// Bytes held in the parser's buffers (bounded by its limits).
    pub fn buffered_bytes(&self) -> usize {
        match &self.inner {
            Inner::H1(h) => h.buffered_bytes(),
            Inner::H2(h) => h.buffered_bytes(),
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self.inner, Inner::H2(_))
    }

    /// "http1" or "http2".
    pub fn protocol(&self) -> &'static str {
        if self.is_http2() {
            "http2"
        } else {
            "http1"
        }
    }

    pub fn http1_stats(&self) -> Option<&Http1Stats> {
        match &self.inner {
            Inner::H1(h) => Some(h.stats()),
            Inner::H2(_) => self.h1_done.as_ref(),
        }
    }

    pub fn http2_stats(&self) -> Option<&H2Stats> {
        match &self.inner {
            Inner::H2(h) => Some(h.stats()),
            Inner::H1(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(dir: Direction, ts: u64, data: &[u8]) -> Chunk<'_> {
        Chunk {
            dir,
            start_ns: ts,
            end_ns: ts,
            len: data.len() as u64,
            data,
        }
    }

    #[test]
    fn detection() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Http1);
        assert_eq!(detect(b"HTTP/1.1 200 OK\r\n"), Detected::Http1);
        assert_eq!(detect(http2::PREFACE), Detected::Http2 { preface: true });
        assert_eq!(detect(&[22, 3, 1, 0, 200, 1, 0]), Detected::Tls);
        assert_eq!(detect(b"\x00\x01garbage"), Detected::Unknown);
        assert_eq!(detect(b""), Detected::Unknown);
    }

    #[test]
    fn h2c_upgrade_switches_to_http2_and_pairs_stream_one() {
        let mut p = Parser::http1(Role::Server, 4096);
        let mut out = Vec::new();
        p.feed(
            &chunk(
                Direction::Ingress,
                10,
                b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            ),
            &mut out,
        );
        p.feed(
            &chunk(
                Direction::Egress,
                20,
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            ),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        assert!(p.is_http2());
        // Client preface and SETTINGS, then the server's response on stream 1:
        // HEADERS (:status 200, indexed 0x88) with END_STREAM|END_HEADERS.
        let mut cl = http2::PREFACE.to_vec();
        // (The server's frames below come in a later write; see the next test for both in one.)
        cl.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        p.feed(&chunk(Direction::Ingress, 30, &cl), &mut out);
        let sv = [0u8, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 5, 0, 0, 0, 1, 0x88];
        p.feed(&chunk(Direction::Egress, 40, &sv), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        match &out[0] {
            Exchange::Http2(x) => {
                assert_eq!(x.stream_id, 1);
                assert_eq!(x.path.as_deref(), Some("/up"));
                assert_eq!(x.status, Some(200));
                assert_eq!((x.req_start_ns, x.resp_end_ns), (10, 40));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn h2c_frames_in_the_same_write_as_the_101_are_not_lost() {
        let mut p = Parser::http1(Role::Server, 4096);
        let mut out = Vec::new();
        p.feed(
            &chunk(
                Direction::Ingress,
                10,
                b"GET /same HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            ),
            &mut out,
        );
        let mut sv =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec();
        sv.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 5, 0, 0, 0, 1, 0x88]);
        p.feed(&chunk(Direction::Egress, 20, &sv), &mut out);
        assert!(p.is_http2());
        assert_eq!(out.len(), 1, "{out:?}");
        match &out[0] {
            Exchange::Http2(x) => {
                assert_eq!((x.stream_id, x.status), (1, Some(200)));
                assert_eq!(x.path.as_deref(), Some("/same"));
            }
            other => panic!("{other:?}"),
        }
    }
}
