//! Body framing: how a message body is delimited (none, Content-Length, chunked, until close)
//! and the byte-by-byte walk of chunked framing. Bodies are framed and counted, never
//! buffered. Pure.

use super::head::Head;

/// Longest chunk-size line (size plus extensions) before chunked framing is declared broken.
const MAX_CHUNK_LINE: u32 = 4096;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Position inside a chunked body; kept byte-exact so any split of the stream works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkState {
    Size {
        value: u64,
        seen_digit: bool,
        in_ext: bool,
        line_len: u32,
    },
    Data(u64),
    /// After chunk data: expecting CR or LF.
    DataCr,
    /// After chunk data and CR: expecting LF.
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        has_content: bool,
        bytes: u64,
    },
}

pub(super) const SIZE_START: ChunkState = ChunkState::Size {
    value: 0,
    seen_digit: false,
    in_ext: false,
    line_len: 0,
};

/// `None`: the body length cannot be known (invalid headers, or headers cut off).
pub(super) fn request_framing(head: &Head, truncated: bool) -> Option<Framing> {
    match head.chunked {
        Some(true) => return Some(Framing::Chunked),
        // A request with a non-chunked transfer coding has no determinable length.
        Some(false) => return None,
        None => {}
    }
    match head.content_length {
        Some(Some(n)) => Some(Framing::Length(n)),
        Some(None) => None,
        None if truncated => None,
        None => Some(Framing::Empty),
    }
}

pub(super) fn response_framing(
    head: &Head,
    code: u16,
    to_head: bool,
    truncated: bool,
) -> Option<Framing> {
    if to_head || code == 204 || code == 304 || (100..200).contains(&code) {
        return Some(Framing::Empty);
    }
    match head.chunked {
        Some(true) => return Some(Framing::Chunked),
        Some(false) => return Some(Framing::UntilClose),
        None => {}
    }
    match head.content_length {
        Some(Some(n)) => Some(Framing::Length(n)),
        Some(None) => None,
        None if truncated => None,
        None => Some(Framing::UntilClose),
    }
}

fn hex_val(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// One framing byte of a chunked body. `Ok(None)`: the body ended with this byte.
pub(super) fn chunk_step(
    st: ChunkState,
    b: u8,
    trailer_cap: u64,
) -> Result<Option<ChunkState>, ()> {
    let next = match st {
        ChunkState::Size {
            value,
            seen_digit,
            in_ext,
            line_len,
        } => {
            let line_len = line_len + 1;
            if line_len > MAX_CHUNK_LINE {
                return Err(());
            }
            let same = |value, seen_digit, in_ext| ChunkState::Size {
                value,
                seen_digit,
                in_ext,
                line_len,
            };
            match b {
                b'\n' if !seen_digit => return Err(()),
                b'\n' if value == 0 => ChunkState::Trailer {
                    has_content: false,
                    bytes: 0,
                },
                b'\n' => ChunkState::Data(value),
                b'\r' => same(value, seen_digit, in_ext),
                _ if in_ext => same(value, seen_digit, true),
                b';' | b' ' | b'\t' if seen_digit => same(value, seen_digit, true),
                _ => {
                    let h = hex_val(b).ok_or(())?;
                    if value > u64::MAX >> 4 {
                        return Err(());
                    }
                    same(value << 4 | h, true, false)
                }
            }
        }
        ChunkState::DataCr => match b {
            b'\r' => ChunkState::DataLf,
            b'\n' => SIZE_START,
            _ => return Err(()),
        },
        ChunkState::DataLf => match b {
            b'\n' => SIZE_START,
            _ => return Err(()),
        },
        ChunkState::Trailer { has_content, bytes } => {
            let bytes = bytes.saturating_add(1);
            if bytes > trailer_cap {
                return Err(());
            }
            match b {
                b'\n' if !has_content => return Ok(None),
                b'\n' => ChunkState::Trailer {
                    has_content: false,
                    bytes,
                },
                b'\r' => ChunkState::Trailer { has_content, bytes },
                _ => ChunkState::Trailer {
                    has_content: true,
                    bytes,
                },
            }
        }
        // Data is consumed in bulk by the caller and never reaches here.
        ChunkState::Data(_) => return Err(()),
    };
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use crate::protocol::http1::test_util::{get, ok, only, E, I, T};
    use crate::protocol::Role;

    #[test]
    fn end_of_one_response_and_start_of_next_in_one_chunk() {
        let mut t = T::new(Role::Client);
        let mut reqs = get("/1");
        reqs.extend_from_slice(&get("/2"));
        t.send(E, &reqs);
        let t1 = t.send(I, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234");
        let t2 = t.send(
            I,
            b"56789HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nab",
        );
        let t3 = t.send(I, b"cd");
        assert_eq!(t.out.len(), 2);
        assert_eq!((t.out[0].resp_start_ns, t.out[0].resp_end_ns), (t1, t2));
        assert_eq!((t.out[1].resp_start_ns, t.out[1].resp_end_ns), (t2, t3));
        assert_eq!(t.out[0].resp_body_bytes, 10);
        assert_eq!(t.out[1].status, Some(201));
        assert!(t.out.iter().all(|e| e.complete));
    }

    #[test]
    fn five_megabyte_bodies_with_short_captures() {
        const BODY: u64 = 5 * 1024 * 1024;
        const CALL: u64 = 16 * 1024;
        let mut t = T::new(Role::Client);
        let head = format!("PUT /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {BODY}\r\n\r\n");
        let filler = vec![b'z'; 4096];
        // The first call carries the head and the start of the body.
        let mut first = head.clone().into_bytes();
        first.extend_from_slice(&filler[..4096 - first.len()]);
        let t1 = t.send_len(E, &first, CALL);
        let mut sent = CALL - head.len() as u64;
        let mut calls = 1;
        let mut last = t1;
        while sent < BODY {
            let n = (BODY - sent).min(CALL);
            last = t.send_len(E, &filler[..(n as usize).min(4096)], n);
            sent += n;
            calls += 1;
        }
        assert!(calls > 300);
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
        let mut first = resp.clone().into_bytes();
        first.extend_from_slice(&filler[..100]);
        let t2 = t.send_len(I, &first, 65536);
        let mut got = 65536 - resp.len() as u64;
        let mut t3 = t2;
        while got < BODY {
            let n = (BODY - got).min(65536);
            t3 = t.send_len(I, &filler[..(n as usize).min(4096)], n);
            got += n;
        }
        let ex = only(&t);
        assert_eq!(ex.req_body_bytes, BODY);
        assert_eq!(ex.resp_body_bytes, BODY);
        assert_eq!(ex.req_header_bytes, head.len() as u64);
        assert_eq!((ex.req_start_ns, ex.req_end_ns), (t1, last));
        assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t2, t3));
        assert!(ex.complete && !ex.partial);
        assert_eq!(t.c.stats().bytes_skipped, 0);
    }

    const CHUNKED_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5;name=val\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Checksum: 42\r\nX-More: 1\r\n\r\n";
    const CHUNKED_HEAD_LEN: u64 = 73;

    fn check_chunked(t: &T) {
        let ex = only(t);
        assert_eq!(ex.status, Some(200));
        assert!(ex.chunked_response);
        assert_eq!(ex.resp_body_bytes, 31);
        assert_eq!(ex.resp_header_bytes, CHUNKED_HEAD_LEN);
        assert!(ex.complete, "{ex:?}");
    }

    #[test]
    fn chunked_response_split_at_every_position() {
        for split in 1..CHUNKED_RESP.len() {
            let mut t = T::new(Role::Client);
            t.send(E, &get("/c"));
            t.send(I, &CHUNKED_RESP[..split]);
            assert!(t.out.is_empty(), "split {split}");
            let end = t.send(I, &CHUNKED_RESP[split..]);
            check_chunked(&t);
            assert_eq!(t.out[0].resp_end_ns, end);
            assert_eq!(t.c.stats().parse_errors, 0);
        }
    }

    #[test]
    fn chunked_response_split_at_every_pair_of_positions() {
        let n = CHUNKED_RESP.len();
        for a in 1..n {
            for b in a..n {
                let mut t = T::new(Role::Client);
                t.send(E, &get("/c"));
                t.send(I, &CHUNKED_RESP[..a]);
                t.send(I, &CHUNKED_RESP[a..b]);
                t.send(I, &CHUNKED_RESP[b..]);
                check_chunked(&t);
            }
        }
    }

    #[test]
    fn chunked_response_byte_by_byte_then_next_exchange() {
        let mut t = T::new(Role::Client);
        t.send(E, &get("/c"));
        for b in CHUNKED_RESP {
            t.send(I, std::slice::from_ref(b));
        }
        check_chunked(&t);
        // Trailer end must be exact for the next exchange to parse.
        t.send(E, &get("/next"));
        t.send(I, &ok("n"));
        assert_eq!(t.out.len(), 2);
        assert!(t.out[1].complete);
    }

    #[test]
    fn chunked_with_trailers_and_following_response_in_same_chunk() {
        let mut t = T::new(Role::Client);
        let mut reqs = get("/1");
        reqs.extend_from_slice(&get("/2"));
        t.send(E, &reqs);
        let mut resps = CHUNKED_RESP.to_vec();
        resps.extend_from_slice(&ok("second"));
        t.send(I, &resps);
        assert_eq!(t.out.len(), 2);
        assert_eq!(t.out[0].resp_body_bytes, 31);
        assert_eq!(t.out[1].resp_body_bytes, 6);
        assert!(t.out.iter().all(|e| e.complete));
    }

    #[test]
    fn chunked_request_counts_payload() {
        let mut t = T::new(Role::Server);
        t.send(
            I,
            b"POST /up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nab",
        );
        t.send(I, b"cd\r\n3\r\nefg\r");
        t.send(I, b"\n0\r\n\r\n");
        t.send(E, &ok(""));
        let ex = only(&t);
        assert!(ex.chunked_request);
        assert_eq!(ex.req_body_bytes, 7);
        assert!(ex.complete);
    }

    #[test]
    fn chunked_framing_lost_in_uncaptured_bytes() {
        let mut t = T::new(Role::Client);
        t.send(E, &get("/big"));
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2710\r\n".to_vec();
        resp.extend_from_slice(&[b'q'; 10000]);
        resp.extend_from_slice(b"\r\n0\r\n\r\n");
        let t1 = t.send_captured(I, &resp, 4096);
        assert!(t.out.is_empty());
        // The next request ends the response whose end could not be seen.
        t.send(E, &get("/after"));
        assert_eq!(t.out.len(), 1);
        let ex = &t.out[0];
        assert_eq!(ex.status, Some(200));
        assert!(ex.partial && !ex.complete);
        assert!(ex.notes.contains(&"body_framing_lost"));
        assert_eq!(ex.resp_end_ns, t1);
        t.send(I, &ok("fine"));
        assert_eq!(t.out.len(), 2);
        assert!(t.out[1].complete);
        assert_eq!(t.out[1].target, "/after");
    }

    #[test]
    fn chunked_framing_lost_ends_at_next_status_line() {
        let mut t = T::new(Role::Client);
        let mut reqs = get("/1");
        reqs.extend_from_slice(&get("/2"));
        t.send(E, &reqs);
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        resp.extend_from_slice(b"1000\r\n");
        resp.extend_from_slice(&[b'q'; 0x1000]);
        resp.extend_from_slice(b"\r\n");
        t.send_captured(I, &resp, 1000);
        t.send_len(I, b"", 500);
        t.send(I, &ok("2"));
        assert_eq!(t.out.len(), 2);
        assert!(t.out[0].partial);
        assert!(t.out[1].complete);
        assert_eq!(t.out[1].status, Some(200));
    }

    #[test]
    fn malformed_chunk_size_is_a_parse_error() {
        let mut t = T::new(Role::Client);
        t.send(E, &get("/x"));
        t.send(
            I,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        );
        t.send(E, &get("/y"));
        t.send(I, &ok("y"));
        assert_eq!(t.out.len(), 2);
        assert!(t.out[0].partial && t.out[0].notes.contains(&"body_framing_lost"));
        assert!(t.out[1].complete);
        assert_eq!(t.c.stats().parse_errors, 1);
    }

    #[test]
    fn head_response_has_no_body() {
        let mut t = T::new(Role::Client);
        t.send(E, b"HEAD /file HTTP/1.1\r\nHost: h\r\n\r\n");
        t.send(I, b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\n\r\n");
        t.send(E, &get("/next"));
        t.send(I, &ok("abc"));
        assert_eq!(t.out.len(), 2);
        assert_eq!(t.out[0].method, "HEAD");
        assert_eq!(t.out[0].resp_body_bytes, 0);
        assert_eq!(t.out[1].resp_body_bytes, 3);
        assert!(t.out.iter().all(|e| e.complete));
    }

    #[test]
    fn no_body_for_204_and_304() {
        let mut t = T::new(Role::Client);
        let mut reqs = get("/a");
        reqs.extend_from_slice(&get("/b"));
        reqs.extend_from_slice(&get("/c"));
        t.send(E, &reqs);
        t.send(
            I,
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: x\r\n\r\n",
        );
        t.send(I, &ok("c"));
        let got: Vec<_> = t
            .out
            .iter()
            .map(|e| (e.status, e.resp_body_bytes, e.complete))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(204), 0, true),
                (Some(304), 0, true),
                (Some(200), 1, true)
            ]
        );
    }

    #[test]
    fn response_delimited_by_close() {
        let mut t = T::new(Role::Client);
        t.send(E, b"GET /old HTTP/1.0\r\n\r\n");
        let t1 = t.send(
            I,
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ",
        );
        let t2 = t.send(I, b"second");
        assert!(t.out.is_empty());
        t.close();
        let ex = only(&t);
        assert_eq!(ex.version, "1.0");
        assert_eq!(ex.resp_body_bytes, 12);
        assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t1, t2));
        assert!(ex.complete);
    }

    #[test]
    fn close_in_the_middle_of_a_body() {
        let mut t = T::new(Role::Client);
        t.send(E, &get("/x"));
        t.send(
            I,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        );
        t.close();
        let ex = only(&t);
        assert_eq!(ex.status, Some(200));
        assert_eq!(ex.resp_body_bytes, 10);
        assert!(!ex.complete && !ex.partial);
        assert!(ex.notes.contains(&"closed_before_complete"));
    }

    #[test]
    fn invalid_content_length_loses_framing() {
        let mut t = T::new(Role::Client);
        t.send(
            E,
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        );
        t.send(I, &ok(""));
        t.send(E, &get("/y"));
        t.send(I, &ok(""));
        assert_eq!(t.out.len(), 2);
        assert!(t.out[0].partial && t.out[0].notes.contains(&"body_framing_lost"));
        assert!(t.out[1].complete);
        assert_eq!(t.c.stats().parse_errors, 1);
    }
}
