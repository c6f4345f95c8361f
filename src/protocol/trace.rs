//! Distributed-tracing context carried in request headers, shared by the HTTP/1 and
//! HTTP/2 parsers: SkyWalking `sw8`, Zipkin `b3` (single header) and `X-B3-TraceId` /
//! `X-B3-SpanId`. A header that is not well-formed is not trusted: no context.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// Distributed-tracing context carried by the request.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TraceContext {
    pub provider: &'static str,
    pub trace_id: String,
    pub segment_id: Option<String>,
    pub span_id: Option<String>,
    pub parent_service: Option<String>,
}

/// Standard alphabet, padding optional (agents differ).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The context of a request from its trace headers, best first: `sw8`, `b3`, then the
/// multi-header `X-B3-TraceId` + `X-B3-SpanId`.
pub fn from_headers(
    sw8_value: Option<&str>,
    b3_value: Option<&str>,
    b3_trace: Option<&str>,
    b3_span: Option<&str>,
) -> Option<TraceContext> {
    sw8_value
        .and_then(sw8)
        .or_else(|| b3_value.and_then(b3))
        .or_else(|| zipkin(b3_trace?.trim(), b3_span?.trim()))
}

/// SkyWalking v3 `sw8`: `sample-traceId-segmentId-spanId-parentService-parentInstance-
/// parentEndpoint-addressUsedAtClient`, the string fields base64-encoded.
pub fn sw8(v: &str) -> Option<TraceContext> {
    let fields: Vec<&str> = v.trim().split('-').collect();
    let [sample, trace, segment, span, service, instance, endpoint, peer] = fields[..] else {
        return None;
    };
    if !matches!(sample, "0" | "1")
        || span.is_empty()
        || span.len() > 10
        || !span.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let trace_id = base64_text(trace).filter(|t| !t.is_empty())?;
    let segment_id = base64_text(segment)?;
    let parent_service = base64_text(service)?;
    // Not reported, but a malformed one means the header cannot be trusted.
    for f in [instance, endpoint, peer] {
        base64_text(f)?;
    }
    Some(TraceContext {
        provider: "skywalking",
        trace_id,
        segment_id: Some(segment_id),
        span_id: Some(span.to_string()),
        parent_service: Some(parent_service),
    })
}

/// Zipkin single header `b3: traceid-spanid[-sampled[-parentspanid]]`.
pub fn b3(v: &str) -> Option<TraceContext> {
    let mut it = v.trim().split('-');
    let (trace, span) = (it.next()?, it.next()?);
    if !matches!(it.next(), None | Some("0" | "1" | "d")) {
        return None;
    }
    if it.next().is_some_and(|p| !hex_id(p, &[16])) || it.next().is_some() {
        return None;
    }
    zipkin(trace, span)
}

/// A Zipkin trace id (64 or 128 bits) and span id (64 bits), in hex.
pub fn zipkin(trace: &str, span: &str) -> Option<TraceContext> {
    (hex_id(trace, &[16, 32]) && hex_id(span, &[16])).then(|| TraceContext {
        provider: "zipkin",
        trace_id: trace.to_string(),
        segment_id: None,
        span_id: Some(span.to_string()),
        parent_service: None,
    })
}

fn hex_id(s: &str, lens: &[usize]) -> bool {
    lens.contains(&s.len()) && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Base64 holding UTF-8 text.
fn base64_text(s: &str) -> Option<String> {
    String::from_utf8(B64.decode(s).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn base64_padding_optional() {
        assert_eq!(base64_text("aGVsbG8=").as_deref(), Some("hello"));
        assert_eq!(base64_text("aGVsbG8").as_deref(), Some("hello"));
        assert_eq!(base64_text("aGk=").as_deref(), Some("hi"));
        assert_eq!(base64_text("").as_deref(), Some(""));
        assert!(base64_text("a").is_none());
        assert!(base64_text("aGk===").is_none());
        assert!(base64_text("a!b=").is_none());
    }

    #[test]
    fn sw8_parsing() {
        let v = format!(
            "1-{}-{}-3-{}-{}-{}-{}",
            b64(b"trace.abc.123"),
            b64(b"segment-9"),
            b64(b"frontend"),
            b64(b"pod-1@10.0.0.1"),
            b64(b"/api/list"),
            b64(b"backend:8080"),
        );
        let tc = sw8(&v).unwrap();
        assert_eq!(tc.provider, "skywalking");
        assert_eq!(tc.trace_id, "trace.abc.123");
        assert_eq!(tc.segment_id.as_deref(), Some("segment-9"));
        assert_eq!(tc.span_id.as_deref(), Some("3"));
        assert_eq!(tc.parent_service.as_deref(), Some("frontend"));
        // Unpadded base64 is accepted too; surrounding blanks are ignored.
        assert_eq!(sw8(&v.replace('=', "")), Some(tc.clone()));
        assert_eq!(sw8(&format!(" {v} ")), Some(tc));
        // Bad base64, bad span id, wrong field count, bad sample flag: no trace.
        assert!(sw8(&v.replacen(&b64(b"segment-9"), "!!!", 1)).is_none());
        assert!(sw8(&v.replacen("-3-", "-x-", 1)).is_none());
        assert!(sw8("1-abc-def").is_none());
        assert!(sw8(&format!("2{}", &v[1..])).is_none());
        assert!(sw8("").is_none());
        // Invalid UTF-8 inside the base64; an empty trace id.
        assert!(sw8(&v.replacen(&b64(b"frontend"), &b64(&[0xff, 0xfe]), 1)).is_none());
        assert!(sw8(&v.replacen(&b64(b"trace.abc.123"), "", 1)).is_none());
    }

    #[test]
    fn b3_parsing() {
        let tc =
            b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").unwrap();
        assert_eq!(tc.provider, "zipkin");
        assert_eq!(tc.trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(tc.span_id.as_deref(), Some("e457b5a2e4d86bd1"));
        assert!(tc.segment_id.is_none() && tc.parent_service.is_none());
        assert!(b3("a3ce929d0e0e4736-00f067aa0ba902b7").is_some());
        assert!(b3("a3ce929d0e0e4736-00f067aa0ba902b7-d").is_some());
        assert!(b3("0").is_none());
        assert!(b3("xyz-00f067aa0ba902b7").is_none());
        assert!(b3("a3ce929d0e0e4736-00f067aa0ba902b7-7").is_none());
        assert!(b3("a3ce929d0e0e4736-00f067aa0ba902b7-1-00f067aa0ba902b7-9").is_none());
    }

    #[test]
    fn header_precedence() {
        let z = ("a3ce929d0e0e4736", "00f067aa0ba902b7");
        let multi = from_headers(None, None, Some(z.0), Some(z.1)).unwrap();
        assert_eq!(multi.trace_id, z.0);
        let single = from_headers(
            None,
            Some("80f198ee56343ba8-e457b5a2e4d86bd1"),
            Some(z.0),
            Some(z.1),
        );
        assert_eq!(single.unwrap().trace_id, "80f198ee56343ba8");
        let sw = format!(
            "1-{}-{}-0-{}-{}-{}-{}",
            b64(b"t"),
            b64(b"s"),
            b64(b"a"),
            b64(b"b"),
            b64(b"c"),
            b64(b"d")
        );
        assert_eq!(
            from_headers(Some(&sw), None, Some(z.0), Some(z.1))
                .unwrap()
                .provider,
            "skywalking"
        );
        // A malformed sw8 falls through to the next header.
        assert_eq!(
            from_headers(Some("junk"), None, Some(z.0), Some(z.1))
                .unwrap()
                .provider,
            "zipkin"
        );
        assert!(from_headers(None, None, Some(z.0), None).is_none());
    }
}
