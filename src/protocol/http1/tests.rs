//! Unit tests that drive whole connections (pure, no I/O): pairing, pipelining, interim
//! responses, upgrades, close, gaps and resync, the waiting-request queue and its byte
//! budget, shedding, and randomised input.

use super::conn::{MAX_PENDING, MAX_PENDING_BYTES};
use super::test_util::{get, ok, only, E, I, T};
use super::Http1Conn;
use crate::protocol::{Chunk, Direction, Role};

#[test]
fn simple_get() {
    let mut t = T::new(Role::Client);
    let req = b"GET /index.html?q=1&r=2 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\nCookie: secret-cookie\r\nAuthorization: Bearer hunter2\r\n\r\n";
    let t1 = t.send(E, req);
    assert!(t.out.is_empty());
    assert!(t.c.is_http());
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: s=1\r\nContent-Length: 5\r\n\r\nhello";
    let t2 = t.send(I, resp);
    let ex = only(&t);
    assert_eq!(ex.method, "GET");
    assert_eq!(ex.target, "/index.html?q=1&r=2");
    assert_eq!(ex.version, "1.1");
    assert_eq!(ex.host.as_deref(), Some("example.com"));
    assert_eq!(ex.user_agent.as_deref(), Some("curl/8.0"));
    assert_eq!(ex.status, Some(200));
    assert_eq!(ex.content_type.as_deref(), Some("text/html"));
    assert_eq!(ex.req_header_bytes, req.len() as u64);
    assert_eq!(ex.req_body_bytes, 0);
    assert_eq!(ex.resp_header_bytes, resp.len() as u64 - 5);
    assert_eq!(ex.resp_body_bytes, 5);
    assert_eq!((ex.req_start_ns, ex.req_end_ns), (t1, t1));
    assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t2, t2));
    assert!(ex.complete && !ex.partial && ex.notes.is_empty());
    assert!(ex.interim.is_empty() && ex.upgrade.is_none() && ex.trace.is_none());
    assert!(!ex.chunked_request && !ex.chunked_response);
    // Only the kept header values may appear anywhere in the record.
    let json = serde_json::to_string(ex).unwrap();
    assert!(json.contains("\"status\":200"));
    assert!(!json.contains("secret") && !json.contains("hunter2") && !json.contains("hello"));
    assert_eq!(t.c.stats().requests, 1);
    assert_eq!(t.c.stats().responses, 1);
    assert_eq!(t.c.buffered_bytes(), 0);
    assert_eq!(t.c.pending_requests(), 0);
}

#[test]
fn keep_alive_thousand_exchanges() {
    let mut t = T::new(Role::Server);
    for n in 0..1000 {
        t.send(I, &get(&format!("/item/{n}")));
        t.send(E, &ok(&"x".repeat(n % 17)));
    }
    assert_eq!(t.out.len(), 1000);
    for (n, ex) in t.out.iter().enumerate() {
        assert_eq!(ex.target, format!("/item/{n}"));
        assert_eq!(ex.resp_body_bytes, (n % 17) as u64);
        assert!(ex.complete, "{ex:?}");
        assert!(ex.req_start_ns < ex.resp_end_ns);
    }
    let s = t.c.stats();
    assert_eq!((s.requests, s.responses), (1000, 1000));
    assert_eq!(s.parse_errors + s.resyncs + s.unmatched_responses, 0);
    assert_eq!(t.c.buffered_bytes(), 0);
}

#[test]
fn pipelining_three_requests_and_responses_in_one_chunk() {
    let mut t = T::new(Role::Client);
    let mut reqs = get("/a");
    reqs.extend_from_slice(b"POST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody");
    reqs.extend_from_slice(&get("/c"));
    let t1 = t.send(E, &reqs);
    assert_eq!(t.c.pending_requests(), 3);
    let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad";
    let t2 = t.send(I, resps);
    assert_eq!(t.out.len(), 3);
    let got: Vec<_> = t
        .out
        .iter()
        .map(|e| {
            (
                e.target.as_str(),
                e.status,
                e.req_body_bytes,
                e.resp_body_bytes,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a", Some(200), 0, 2),
            ("/b", Some(404), 4, 0),
            ("/c", Some(500), 0, 3)
        ]
    );
    for ex in &t.out {
        assert!(ex.complete);
        assert_eq!((ex.req_start_ns, ex.resp_end_ns), (t1, t2));
    }
}

#[test]
fn continue_then_final_response() {
    let mut t = T::new(Role::Client);
    let t1 = t.send(
        E,
        b"POST /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n",
    );
    t.send(I, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(t.out.is_empty());
    let t2 = t.send(E, b"abcdef");
    let t3 = t.send(
        I,
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    let ex = only(&t);
    assert_eq!(ex.interim, vec![100, 103]);
    assert_eq!(ex.status, Some(201));
    assert_eq!((ex.req_start_ns, ex.req_end_ns), (t1, t2));
    assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t3, t3));
    assert_eq!(ex.req_body_bytes, 6);
    assert!(ex.complete);
    assert_eq!(t.c.stats().interim_responses, 2);
    assert_eq!(t.c.stats().responses, 1);
}

#[test]
fn switching_protocols_stops_parsing() {
    let mut t = T::new(Role::Client);
    t.send(
        E,
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    let frame = b"\x81\x05hello";
    let mut resp =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec();
    resp.extend_from_slice(frame);
    t.send(I, &resp);
    let ex = only(&t);
    assert_eq!(ex.status, Some(101));
    assert_eq!(ex.upgrade.as_deref(), Some("websocket"));
    assert!(ex.complete);
    assert!(t.c.is_upgraded());
    t.send(E, b"GET / HTTP/1.1\r\n\r\n");
    t.send(I, b"HTTP/1.1 200 OK\r\n\r\n");
    t.close();
    assert_eq!(t.out.len(), 1);
    let s = t.c.stats();
    assert_eq!(s.bytes_skipped, (frame.len() + 18 + 19) as u64);
    assert_eq!(s.parse_errors, 0);
}

#[test]
fn connect_tunnel_stops_parsing() {
    let mut t = T::new(Role::Server);
    t.send(
        I,
        b"CONNECT db:443 HTTP/1.1\r\nHost: db:443\r\nContent-Length: 0\r\n\r\n",
    );
    t.send(E, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    assert!(t.c.is_upgraded());
    t.send(I, b"\x16\x03\x01\x00\x05hello");
    let ex = only(&t);
    assert_eq!(
        (ex.method.as_str(), ex.target.as_str()),
        ("CONNECT", "db:443")
    );
    assert_eq!(ex.status, Some(200));
    assert!(ex.upgrade.is_none() && ex.complete);
    assert_eq!(t.c.stats().bytes_skipped, 10);
}

#[test]
fn refused_connect_keeps_parsing() {
    let mut t = T::new(Role::Client);
    t.send(E, b"CONNECT db:443 HTTP/1.1\r\n\r\n");
    t.send(I, b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n");
    t.send(E, &get("/x"));
    t.send(I, &ok(""));
    assert_eq!(t.out.len(), 2);
    assert!(!t.c.is_upgraded());
}

#[test]
fn request_never_answered_is_flushed_at_close() {
    let mut t = T::new(Role::Client);
    let t1 = t.send(E, &get("/lost"));
    t.close();
    let ex = only(&t);
    assert_eq!(ex.status, None);
    assert!(!ex.complete);
    assert_eq!(ex.notes, vec!["no_response"]);
    assert_eq!(
        (ex.req_start_ns, ex.resp_start_ns, ex.resp_end_ns),
        (t1, 0, 0)
    );
    assert_eq!(t.c.stats().abandoned_requests, 1);
    // Closing twice and feeding afterwards do nothing.
    t.close();
    t.send(E, &get("/late"));
    assert_eq!(t.out.len(), 1);
}

/// Pipelined requests never answered hold at most `MAX_PENDING_BYTES`: past it the
/// oldest are written out early (`memory_budget`), counted.
#[test]
fn waiting_requests_are_held_to_their_byte_budget() {
    let mut t = T::with_cap(Role::Client, 16 * 1024);
    let long = "p".repeat(4000);
    for k in 0..2000 {
        t.send(E, &get(&format!("/{long}/{k}")));
        assert!(t.c.buffered_bytes() <= MAX_PENDING_BYTES + 2 * 16 * 1024);
    }
    let early = t.c.stats().requests_evicted_memory;
    assert!(early >= 1700, "{early}");
    assert_eq!(t.out.len() as u64, early);
    assert!(t.out.iter().all(|x| x.notes.contains(&"memory_budget")));
    t.close();
    assert_eq!(t.out.len(), 2000);
}

/// Shedding writes the waiting requests out and keeps pairing right: the answers
/// to the shed requests are skipped, the next request gets its own answer.
#[test]
fn shed_requests_keep_pairing_in_step() {
    let mut t = T::new(Role::Client);
    t.send(E, &get("/a"));
    t.send(E, &get("/b"));
    let mut out = Vec::new();
    t.c.shed(&mut out);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|x| x.status.is_none() && !x.complete && x.notes.contains(&"memory_budget")));
    assert_eq!(t.c.buffered_bytes(), 0);
    t.send(I, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
    t.send(I, b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb");
    t.send(E, &get("/c"));
    t.send(I, b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nc");
    let ex = only(&t);
    assert_eq!((ex.target.as_str(), ex.status), ("/c", Some(404)));
    assert!(ex.complete);
}

#[test]
fn unknown_role_decided_by_written_request() {
    let mut t = T::new(Role::Unknown);
    t.send(E, &get("/c"));
    assert_eq!(t.c.role(), Role::Client);
    t.send(I, &ok("x"));
    assert!(only(&t).complete);
}

#[test]
fn unknown_role_decided_by_read_request() {
    let mut t = T::new(Role::Unknown);
    t.send(I, &get("/s"));
    assert_eq!(t.c.role(), Role::Server);
    t.send(E, &ok("x"));
    assert!(only(&t).complete);
    assert_eq!(t.c.stats().resyncs, 0);
}

#[test]
fn mid_stream_join_skips_to_a_request_line() {
    let mut t = T::new(Role::Unknown);
    // Tail of a response body and of a request body from before we joined.
    t.send(I, b"lo world</html>");
    t.send(E, b"\x00\x01binary\r\n\r\n");
    assert!(!t.c.is_http());
    // A response whose request was never seen is counted, not emitted.
    t.send(I, &ok("orphan"));
    assert_eq!(t.c.role(), Role::Unknown);
    t.send(E, &get("/first"));
    t.send(I, &ok("x"));
    let ex = only(&t);
    assert_eq!(ex.target, "/first");
    assert!(ex.complete);
    let s = t.c.stats();
    assert_eq!(s.resyncs, 2);
    assert_eq!(s.bytes_skipped, 15 + 12);
    assert_eq!(s.unmatched_responses, 1);
    assert_eq!(s.parse_errors, 0);
}

#[test]
fn garbage_between_messages_resyncs() {
    let mut t = T::new(Role::Server);
    t.send(I, &get("/1"));
    t.send(E, &ok("1"));
    t.send(I, b"NOT HTTP AT ALL\r\n\r\n");
    t.send(I, b"more junk");
    t.send(I, &get("/2"));
    t.send(E, &ok("2"));
    assert_eq!(t.out.len(), 2);
    assert!(t.out.iter().all(|e| e.complete));
    let s = t.c.stats();
    assert_eq!(s.parse_errors, 1);
    assert_eq!(s.resyncs, 1);
    assert_eq!(s.bytes_skipped, 19 + 9);
}

#[test]
fn message_in_wrong_direction() {
    let mut t = T::new(Role::Client);
    t.send(E, &get("/1"));
    // A request arriving where responses are expected.
    t.send(I, &get("/bogus"));
    t.send(E, b"HTTP/1.1 200 OK\r\n\r\n");
    t.send(I, &ok("1"));
    assert_eq!(only(&t).target, "/1");
    assert!(only(&t).complete);
    assert!(t.c.stats().parse_errors >= 2);
}

#[test]
fn gap_during_response_body() {
    let mut t = T::new(Role::Client);
    t.send(E, &get("/1"));
    t.send(I, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc");
    t.c.gap(I);
    t.send(I, &[b'z'; 200]);
    t.send(E, &get("/2"));
    t.send(I, &ok("two"));
    assert_eq!(t.out.len(), 2);
    assert_eq!(t.out[0].status, Some(200));
    assert!(t.out[0].partial && t.out[0].notes.contains(&"gap"));
    assert!(t.out[1].complete);
    assert_eq!(t.out[1].target, "/2");
}

#[test]
fn gap_losing_a_whole_response() {
    let mut t = T::new(Role::Client);
    t.send(E, &get("/1"));
    t.c.gap(I);
    t.send(E, &get("/2"));
    t.send(I, &ok("two"));
    assert_eq!(t.out.len(), 2);
    assert_eq!(t.out[0].status, None);
    assert!(t.out[0].notes.contains(&"gap") && t.out[0].notes.contains(&"no_response"));
    assert_eq!(
        (t.out[1].target.as_str(), t.out[1].status),
        ("/2", Some(200))
    );
    assert!(t.out[1].complete);
}

#[test]
fn gap_losing_a_pipelined_request_never_mispairs() {
    let mut t = T::new(Role::Client);
    t.send(E, &get("/1"));
    t.c.gap(E); // "/2" was in the lost calls
    t.send(E, &get("/3"));
    t.send(I, &ok("r1"));
    t.send(I, &ok("r2"));
    t.send(I, &ok("r3"));
    t.close();
    for ex in &t.out {
        if ex.target == "/3" {
            assert_eq!(ex.status, None, "{ex:?}");
        }
    }
    assert_eq!(t.out.len(), 2);
    assert_eq!(t.out[0].target, "/1");
    assert_eq!(t.out[0].status, Some(200));
    assert_eq!(t.out[0].resp_body_bytes, 2);
    assert!(t.out[1].notes.contains(&"gap"));
    assert_eq!(t.c.stats().unmatched_responses, 2);
}

#[test]
fn pairing_is_trusted_again_after_the_pipeline_drains() {
    let mut t = T::new(Role::Client);
    t.send(E, &get("/1"));
    t.c.gap(E);
    t.send(I, &ok("r1"));
    t.send(I, &ok("r2"));
    // Nothing outstanding when this request starts: its answer is its own.
    t.send(E, &get("/3"));
    t.send(I, &ok("r3"));
    assert_eq!(t.out.len(), 2);
    assert_eq!(
        (t.out[1].target.as_str(), t.out[1].resp_body_bytes),
        ("/3", 2)
    );
    assert!(t.out[1].complete);
    assert_eq!(t.c.stats().unmatched_responses, 1);
}

#[test]
fn gap_in_request_head_and_body() {
    let mut t = T::new(Role::Server);
    t.send(I, b"POST /a HTTP/1.1\r\nContent-Len");
    t.c.gap(I);
    t.send(I, b"gth: 5\r\n\r\nhello");
    t.send(I, b"POST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello");
    t.c.gap(I);
    t.send(E, &ok("b"));
    t.send(I, &get("/c"));
    t.send(E, &ok("c"));
    assert_eq!(t.out.len(), 2, "{:#?}", t.out);
    assert_eq!(t.out[0].target, "/b");
    assert_eq!(t.out[0].req_body_bytes, 5);
    assert!(t.out[0].partial && t.out[0].notes.contains(&"gap"));
    assert_eq!(t.out[0].status, Some(200));
    assert!(t.out[1].complete);
    assert_eq!(t.c.stats().abandoned_requests, 1);
}

#[test]
fn pending_queue_is_capped() {
    let mut t = T::new(Role::Client);
    for n in 0..MAX_PENDING + 6 {
        t.send(E, &get(&format!("/{n}")));
    }
    assert_eq!(t.c.pending_requests(), MAX_PENDING);
    assert_eq!(t.out.len(), 6);
    assert!(t.out.iter().all(|e| e.status.is_none()));
    assert!(t.out[0].notes.contains(&"queue_overflow"));
    assert_eq!(t.out[5].target, "/5");
    // The first six answers belong to the requests given up on.
    for _ in 0..7 {
        t.send(I, &ok(""));
    }
    assert_eq!(t.c.stats().unmatched_responses, 6);
    assert_eq!(t.out.len(), 7);
    assert_eq!(
        (t.out[6].target.as_str(), t.out[6].status),
        ("/6", Some(200))
    );
}

/// Deterministic xorshift64 so the fuzz run is reproducible without extra crates.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

const PIECES: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    b"HEAD /h HTTP/1.0\r\n\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nxyz",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"\r\n",
    b"HTTP/1.",
    b"GET ",
    b"0\r\n",
    b"ffffffffffffffff\r\n",
    b"Content-Length: 18446744073709551615\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"sw8: 1-YQ-Yg-1-Yw-ZA-ZQ-Zg\r\n",
    b"b3: a3ce929d0e0e4736-00f067aa0ba902b7\r\n",
    b"\r\n\r\n",
    b"\n\n",
];

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let roles = [Role::Unknown, Role::Client, Role::Server];
    let mut chunks = 0;
    let mut exchanges = 0;
    for round in 0..300 {
        let cap = [32usize, 64, 100, 512, 4096][round % 5];
        let mut c = Http1Conn::new(roles[round % 3], cap);
        let mut out = Vec::new();
        let mut ts = 0u64;
        for _ in 0..20 {
            // Build a call's payload from valid fragments and random bytes.
            let mut data = Vec::new();
            for _ in 0..rng.below(6) {
                if rng.below(3) == 0 {
                    for _ in 0..rng.below(40) {
                        data.push(rng.next() as u8);
                    }
                } else {
                    let p = PIECES[rng.below(PIECES.len() as u64) as usize];
                    let from = if rng.below(4) == 0 {
                        rng.below(p.len() as u64) as usize
                    } else {
                        0
                    };
                    data.extend_from_slice(&p[from..]);
                }
            }
            let captured = match rng.below(4) {
                0 => rng.below(data.len() as u64 + 1) as usize,
                _ => data.len(),
            };
            let extra = match rng.below(5) {
                0 => rng.below(100_000),
                1 => rng.below(10),
                _ => 0,
            };
            let dir = if rng.below(2) == 0 { E } else { I };
            ts += rng.below(1000);
            let chunk = Chunk {
                dir,
                start_ns: ts,
                end_ns: ts,
                len: data.len() as u64 + extra,
                data: &data[..captured],
            };
            c.feed(&chunk, &mut out);
            chunks += 1;
            if rng.below(15) == 0 {
                c.gap(if rng.below(2) == 0 { E } else { I });
            }
            assert!(c.head_bytes() <= 2 * cap, "round {round}");
            assert!(
                c.buffered_bytes() <= 2 * cap + MAX_PENDING_BYTES,
                "round {round}"
            );
            assert!(c.pending_requests() <= MAX_PENDING);
        }
        c.close(ts + 1, &mut out);
        assert_eq!(c.buffered_bytes(), 0);
        assert_eq!(c.pending_requests(), 0);
        for ex in &out {
            assert!(!ex.complete || (ex.status.is_some() && !ex.partial));
            assert!(ex.version == "1.0" || ex.version == "1.1");
        }
        exchanges += out.len();
    }
    assert!(chunks >= 6000);
    assert!(exchanges > 0);
}

#[test]
fn pure_random_bytes_never_panic() {
    let mut rng = XorShift(42);
    for round in 0..50 {
        let mut c = Http1Conn::new(Role::Unknown, 32 + round * 10);
        let mut out = Vec::new();
        for _ in 0..100 {
            let n = rng.below(300) as usize;
            let data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let chunk = Chunk {
                dir: if rng.below(2) == 0 { E } else { I },
                start_ns: 0,
                end_ns: 0,
                len: n as u64 + rng.below(3) * rng.below(5000),
                data: &data,
            };
            c.feed(&chunk, &mut out);
            assert!(c.head_bytes() <= 2 * (32 + round * 10));
        }
        c.close(1, &mut out);
    }
}

#[test]
fn request_starts_when_its_write_started() {
    // A client's write that blocked: the request began at the call's start.
    let mut c = Http1Conn::new(Role::Client, 4096);
    let mut out = Vec::new();
    let req = b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n";
    c.feed(
        &Chunk {
            dir: Direction::Egress,
            start_ns: 100,
            end_ns: 900,
            len: req.len() as u64,
            data: req,
        },
        &mut out,
    );
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    c.feed(
        &Chunk {
            dir: Direction::Ingress,
            start_ns: 1500,
            end_ns: 1500,
            len: resp.len() as u64,
            data: resp,
        },
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].req_start_ns, out[0].resp_end_ns), (100, 1500));
}
