//! Request and response heads: recognising a message start, finding the end of a head,
//! and parsing it (with `httparse`) into the few fields that are kept. Pure.

use crate::protocol::trace::{self, TraceContext};

/// Methods recognised at a message start; other tokens are treated as garbage so that resync
/// does not lock onto body bytes.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"PURGE",
    b"MERGE",
    b"MKCALENDAR",
    b"MKACTIVITY",
    b"CHECKOUT",
];

const STATUS_PREFIX: &[u8] = b"HTTP/1.";

/// Whether the first bytes of a stream look like HTTP/1: `Some(true)` for a request line
/// (known method then a space), `Some(false)` for a status line, `None` otherwise.
pub fn detect(first_bytes: &[u8]) -> Option<bool> {
    if first_bytes.starts_with(STATUS_PREFIX) {
        return Some(false);
    }
    let sp = first_bytes.iter().take(16).position(|&b| b == b' ')?;
    is_known_method(&first_bytes[..sp]).then_some(true)
}

fn is_known_method(token: &[u8]) -> bool {
    METHODS.contains(&token)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Request,
    Response,
}

pub(super) const NL_END: u8 = 3;

/// Blank-line detector: 0 = mid-line, 1 = after LF, 2 = after LF CR, 3 = head ended.
pub(super) fn nl_step(state: u8, b: u8) -> u8 {
    match (state, b) {
        (1 | 2, b'\n') => NL_END,
        (_, b'\n') => 1,
        (1, b'\r') => 2,
        _ => 0,
    }
}

/// Detector state after `buf` (it only depends on the last two bytes).
pub(super) fn tail_state(buf: &[u8]) -> u8 {
    buf[buf.len().saturating_sub(2)..]
        .iter()
        .fold(0, |s, &b| nl_step(s, b))
        .min(2)
}

pub(super) enum Class {
    NeedMore,
    Bad,
    Is(Kind),
}

/// Decide, from the first bytes of a message, whether it is a request, a response or garbage.
pub(super) fn classify(buf: &[u8]) -> Class {
    match detect(buf) {
        Some(true) => return Class::Is(Kind::Request),
        Some(false) => return Class::Is(Kind::Response),
        None => {}
    }
    let could_be =
        |word: &[u8]| !buf.is_empty() && buf.len() <= word.len() && word.starts_with(buf);
    if could_be(STATUS_PREFIX) || METHODS.iter().any(|m| could_be(m)) {
        Class::NeedMore
    } else {
        Class::Bad
    }
}

/// What is kept of a parsed head.
#[derive(Debug, Default)]
pub(super) struct Head {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) minor: u8,
    pub(super) code: u16,
    pub(super) host: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) upgrade: Option<String>,
    pub(super) trace: Option<TraceContext>,
    /// `Some(None)`: present but invalid or conflicting.
    pub(super) content_length: Option<Option<u64>>,
    /// `Some(true)` when the last transfer coding is chunked.
    pub(super) chunked: Option<bool>,
}

pub(super) fn parse_head(buf: &[u8], kind: Kind, truncated: bool) -> Option<Head> {
    if !truncated {
        return parse_full(buf, kind);
    }
    // Close the head after its last complete line so the lines that did fit are still read.
    if let Some(p) = buf.iter().rposition(|&b| b == b'\n') {
        let mut closed = Vec::with_capacity(p + 3);
        closed.extend_from_slice(&buf[..=p]);
        closed.extend_from_slice(b"\r\n");
        if let Some(h) = parse_full(&closed, kind) {
            return Some(h);
        }
    }
    parse_first_line(buf, kind)
}

fn parse_full(buf: &[u8], kind: Kind) -> Option<Head> {
    let mut small = [httparse::EMPTY_HEADER; 64];
    match parse_with(buf, kind, &mut small) {
        Ok(h) => h,
        Err(httparse::Error::TooManyHeaders) => {
            // Every header line takes at least three bytes, so this always suffices.
            let mut big = vec![httparse::EMPTY_HEADER; buf.len() / 3 + 1];
            parse_with(buf, kind, &mut big).ok().flatten()
        }
        Err(_) => None,
    }
}

fn parse_with<'b>(
    buf: &'b [u8],
    kind: Kind,
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<Head>, httparse::Error> {
    // Lenient: we observe traffic that peers already accepted, we do not police it.
    let mut cfg = httparse::ParserConfig::default();
    let mut head = Head::default();
    match kind {
        Kind::Request => {
            cfg.allow_multiple_spaces_in_request_line_delimiters(true)
                .ignore_invalid_headers_in_requests(true);
            let mut req = httparse::Request::new(headers);
            if cfg.parse_request(&mut req, buf)?.is_partial() {
                return Ok(None);
            }
            let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version)
            else {
                return Ok(None);
            };
            head.method = method.to_string();
            head.target = path.to_string();
            head.minor = minor;
            collect_headers(req.headers, &mut head);
        }
        Kind::Response => {
            cfg.allow_multiple_spaces_in_response_status_delimiters(true)
                .allow_spaces_after_header_name_in_responses(true)
                .allow_obsolete_multiline_headers_in_responses(true)
                .ignore_invalid_headers_in_responses(true);
            let mut resp = httparse::Response::new(headers);
            if cfg.parse_response(&mut resp, buf)?.is_partial() {
                return Ok(None);
            }
            let (Some(code), Some(minor)) = (resp.code, resp.version) else {
                return Ok(None);
            };
            head.code = code;
            head.minor = minor;
            collect_headers(resp.headers, &mut head);
        }
    }
    Ok(Some(head))
}

/// Fallback when not even the first line fit: take what the truncated line shows.
fn parse_first_line(buf: &[u8], kind: Kind) -> Option<Head> {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let mut parts = buf[..line_end]
        .split(|&b| b == b' ')
        .filter(|p| !p.is_empty());
    let mut head = Head::default();
    match kind {
        Kind::Request => {
            let method = parts.next()?;
            if !is_known_method(method) {
                return None;
            }
            head.method = String::from_utf8_lossy(method).into_owned();
            head.target = String::from_utf8_lossy(parts.next()?).into_owned();
            head.minor = match parts.next() {
                Some(b"HTTP/1.0") => 0,
                _ => 1,
            };
        }
        Kind::Response => {
            head.minor = match parts.next()? {
                b"HTTP/1.0" => 0,
                b"HTTP/1.1" => 1,
                _ => return None,
            };
            let code = parts.next()?;
            if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
                return None;
            }
            head.code = std::str::from_utf8(code).ok()?.parse().ok()?;
        }
    }
    Some(head)
}

/// Keep only the header values the exchange reports (privacy) and those that frame the body.
fn collect_headers(headers: &[httparse::Header<'_>], head: &mut Head) {
    let mut sw8 = None;
    let mut b3 = None;
    let mut b3_trace = None;
    let mut b3_span = None;
    for h in headers {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            head.host = Some(text(h.value));
        } else if is("user-agent") {
            head.user_agent = Some(text(h.value));
        } else if is("content-type") {
            head.content_type = Some(text(h.value));
        } else if is("upgrade") {
            head.upgrade = Some(text(h.value));
        } else if is("content-length") {
            head.content_length = Some(merge_content_length(head.content_length, h.value));
        } else if is("transfer-encoding") {
            head.chunked = Some(last_coding_is_chunked(h.value));
        } else if is("sw8") {
            sw8 = Some(h.value);
        } else if is("b3") {
            b3 = Some(h.value);
        } else if is("x-b3-traceid") {
            b3_trace = Some(h.value);
        } else if is("x-b3-spanid") {
            b3_span = Some(h.value);
        }
    }
    head.trace = trace::from_headers(
        sw8.and_then(as_str),
        b3.and_then(as_str),
        b3_trace.and_then(as_str),
        b3_span.and_then(as_str),
    );
}

fn as_str(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v).ok().map(str::trim)
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).trim().to_string()
}

/// Content-Length may repeat (as a list or as several headers) only with one value.
fn merge_content_length(prev: Option<Option<u64>>, v: &[u8]) -> Option<u64> {
    let mut value = match prev {
        Some(None) => return None,
        Some(Some(n)) => Some(n),
        None => None,
    };
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
        match value {
            Some(prev) if prev != n => return None,
            _ => value = Some(n),
        }
    }
    value
}

fn last_coding_is_chunked(v: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .rfind(|c| !c.is_empty())
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http1::test_util::{get, ok, only, E, I, T};
    use crate::protocol::Role;

    #[test]
    fn detect_recognises_heads() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(detect(b"OPTIONS * HTTP/1.1"), Some(true));
        assert_eq!(detect(b"HTTP/1.1 200 OK"), Some(false));
        assert_eq!(detect(b"HTTP/1.0 404"), Some(false));
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(detect(b"GETX / HTTP/1.1"), None);
        assert_eq!(detect(b"get / HTTP/1.1"), None);
        assert_eq!(detect(b"GET"), None);
        assert_eq!(detect(b""), None);
        assert_eq!(detect(b"\x16\x03\x01\x02\x00"), None);
    }

    #[test]
    fn split_head_across_three_chunks() {
        let mut t = T::new(Role::Client);
        let t1 = t.send(E, b"GET /split HT");
        t.send(E, b"TP/1.1\r\nHost: a.b\r\nUser-Ag");
        let t3 = t.send(E, b"ent: x\r\n\r\n");
        let t4 = t.send(I, b"HTTP/1.1 204 No Content\r");
        t.send(I, b"\nServer: s\r\n\r");
        let t6 = t.send(I, b"\n");
        let ex = only(&t);
        assert_eq!(ex.target, "/split");
        assert_eq!(ex.host.as_deref(), Some("a.b"));
        assert_eq!(ex.user_agent.as_deref(), Some("x"));
        assert_eq!(ex.status, Some(204));
        assert_eq!((ex.req_start_ns, ex.req_end_ns), (t1, t3));
        assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t4, t6));
        assert_eq!(ex.req_header_bytes, 49);
        assert_eq!(ex.resp_header_bytes, 38);
        assert!(ex.complete);
    }

    fn b64(data: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn trace_headers_on_requests() {
        let sw8 = format!(
            "0-{}-{}-1-{}-{}-{}-{}",
            b64(b"t1"),
            b64(b"s1"),
            b64(b"svc-a"),
            b64(b"i"),
            b64(b"/e"),
            b64(b"h:1")
        );
        let mut t = T::new(Role::Client);
        t.send(
            E,
            format!("GET /a HTTP/1.1\r\nSW8: {sw8}\r\n\r\n").as_bytes(),
        );
        t.send(I, &ok(""));
        t.send(
            E,
            b"GET /b HTTP/1.1\r\nb3: a3ce929d0e0e4736-00f067aa0ba902b7-1\r\n\r\n",
        );
        t.send(I, &ok(""));
        t.send(
            E,
            b"GET /c HTTP/1.1\r\nx-b3-traceid: 463ac35c9f6413ad48485a3953bb6124\r\nX-B3-SpanId: a2fb4a1d1a96d312\r\nX-B3-Sampled: 1\r\n\r\n",
        );
        t.send(I, &ok(""));
        t.send(E, b"GET /d HTTP/1.1\r\nsw8: 1-!!-!!-1-a-b-c-d\r\n\r\n");
        t.send(I, &ok(""));
        assert_eq!(t.out.len(), 4);
        let a = t.out[0].trace.as_ref().unwrap();
        assert_eq!((a.provider, a.trace_id.as_str()), ("skywalking", "t1"));
        assert_eq!(a.parent_service.as_deref(), Some("svc-a"));
        let b = t.out[1].trace.as_ref().unwrap();
        assert_eq!(
            (b.provider, b.trace_id.as_str()),
            ("zipkin", "a3ce929d0e0e4736")
        );
        let c = t.out[2].trace.as_ref().unwrap();
        assert_eq!(c.trace_id, "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(c.span_id.as_deref(), Some("a2fb4a1d1a96d312"));
        assert!(t.out[3].trace.is_none());
    }

    #[test]
    fn headers_beyond_cap_are_truncated() {
        let mut t = T::with_cap(Role::Client, 128);
        let cookie = "c".repeat(500);
        let req = format!(
            "POST /form HTTP/1.1\r\nHost: big.example\r\nContent-Length: 3\r\nCookie: {cookie}\r\n\r\nabc"
        );
        // Split so buffering is exercised across calls.
        t.send(E, &req.as_bytes()[..100]);
        assert!(t.c.head_bytes() <= 128);
        t.send(E, &req.as_bytes()[100..]);
        assert!(t.c.head_bytes() <= 128);
        t.send(I, &ok("done"));
        t.send(E, &get("/next"));
        t.send(I, &ok("n"));
        assert_eq!(t.out.len(), 2);
        let ex = &t.out[0];
        assert_eq!(ex.method, "POST");
        assert_eq!(ex.target, "/form");
        assert_eq!(ex.host.as_deref(), Some("big.example"));
        assert_eq!(ex.status, Some(200));
        assert!(ex.partial && !ex.complete);
        assert!(ex.notes.contains(&"headers_truncated"));
        // Framing seen before the cut still delimits the body exactly.
        assert_eq!(ex.req_header_bytes, req.len() as u64 - 3);
        assert_eq!(ex.req_body_bytes, 3);
        assert!(t.out[1].complete);
        assert_eq!(t.c.stats().headers_truncated, 1);
        assert_eq!(t.c.stats().parse_errors, 0);
    }

    #[test]
    fn truncated_head_without_framing_ends_at_the_response() {
        let mut t = T::with_cap(Role::Client, 64);
        let req = format!("GET /x HTTP/1.1\r\nCookie: {}\r\n\r\n", "k".repeat(300));
        t.send(E, req.as_bytes());
        let t2 = t.send(I, &ok("r"));
        let ex = only(&t);
        assert_eq!(ex.status, Some(200));
        assert!(ex.partial && ex.notes.contains(&"headers_truncated"));
        assert_eq!(ex.resp_end_ns, t2);
    }

    #[test]
    fn request_line_longer_than_cap() {
        let mut t = T::with_cap(Role::Server, 64);
        let path = format!("/{}", "p".repeat(200));
        t.send(
            I,
            format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
        );
        t.send(E, &ok("x"));
        let ex = only(&t);
        assert_eq!(ex.method, "GET");
        assert!(path.starts_with(&ex.target) && ex.target.len() > 50);
        assert!(ex.partial);
        assert_eq!(ex.status, Some(200));
    }

    #[test]
    fn head_cut_by_capture_limit() {
        let mut t = T::with_cap(Role::Client, 16384);
        let req = format!(
            "GET /cap HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "b".repeat(6000)
        );
        t.send_captured(E, req.as_bytes(), 4096);
        assert_eq!(t.c.head_bytes(), 0);
        t.send(I, &ok("ok"));
        let ex = only(&t);
        assert_eq!(ex.target, "/cap");
        assert_eq!(ex.host.as_deref(), Some("h"));
        assert!(ex.partial && ex.notes.contains(&"headers_truncated"));
        assert_eq!(ex.resp_body_bytes, 2);
    }

    #[test]
    fn content_length_list_of_equal_values() {
        assert_eq!(merge_content_length(None, b" 5 , 5"), Some(5));
        assert_eq!(merge_content_length(None, b"5, 6"), None);
        assert_eq!(merge_content_length(Some(Some(5)), b"5"), Some(5));
        assert_eq!(merge_content_length(None, b"+5"), None);
        assert_eq!(merge_content_length(None, b"99999999999999999999999"), None);
        assert!(last_coding_is_chunked(b"gzip, Chunked "));
        assert!(!last_coding_is_chunked(b"chunked, gzip"));
    }
}
