//! The header fields an exchange reports, kept as they are decoded and bounded in size: the
//! request's names, the status, the gRPC outcome and the trace context. Pure.

use crate::protocol::trace::{self, TraceContext};

/// Longest header value kept for a report field (bounds memory per stream).
const MAX_VALUE_LEN: usize = 4 * 1024;
/// Bytes of header values one side of a stream keeps for its record, all fields together.
const MAX_HEAD_KEPT: usize = 8 * 1024;

/// The header fields an exchange reports (others are dropped as they are decoded).
#[derive(Debug, Default)]
pub(super) struct Head {
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) host: Option<String>,
    pub(super) scheme: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) status: Option<u16>,
    pub(super) has_status: bool,
    pub(super) grpc_status: Option<u32>,
    pub(super) grpc_message: Option<String>,
    sw8: Option<String>,
    b3: Option<String>,
    b3_trace: Option<String>,
    b3_span: Option<String>,
    pub(super) truncated_value: bool,
    /// Bytes of the values kept (at most `MAX_HEAD_KEPT`).
    pub(super) kept: usize,
}

impl Head {
    /// Keep a field the record uses. The first value of each field wins: a repeated field
    /// costs nothing more, and all values together are held to `MAX_HEAD_KEPT` bytes.
    pub(super) fn add(&mut self, name: &[u8], value: &[u8]) {
        let slot = match name {
            b":method" => &mut self.method,
            b":path" => &mut self.path,
            b":authority" => &mut self.authority,
            b"host" => &mut self.host,
            b":scheme" => &mut self.scheme,
            b"user-agent" => &mut self.user_agent,
            b"content-type" => &mut self.content_type,
            b"sw8" => &mut self.sw8,
            b"b3" => &mut self.b3,
            b"x-b3-traceid" => &mut self.b3_trace,
            b"x-b3-spanid" => &mut self.b3_span,
            b":status" => {
                if !self.has_status {
                    self.has_status = true;
                    self.status = parse_status(value);
                }
                return;
            }
            b"grpc-status" => {
                if self.grpc_status.is_none() {
                    self.grpc_status = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                }
                return;
            }
            b"grpc-message" => &mut self.grpc_message,
            _ => return,
        };
        if slot.is_some() {
            return;
        }
        let room = MAX_HEAD_KEPT.saturating_sub(self.kept);
        let keep = value.len().min(MAX_VALUE_LEN).min(room);
        self.truncated_value |= keep < value.len();
        if keep == 0 && !value.is_empty() {
            return;
        }
        let kept = if name == b"grpc-message" {
            percent_decode(&value[..keep])
        } else {
            String::from_utf8_lossy(&value[..keep]).into_owned()
        };
        self.kept += kept.len();
        *slot = Some(kept);
    }

    /// Trailers: only the gRPC outcome is taken from them.
    pub(super) fn take_outcome(&mut self, trailers: Head) {
        if trailers.grpc_status.is_some() {
            self.grpc_status = trailers.grpc_status;
        }
        if let Some(m) = trailers.grpc_message {
            let old = self.grpc_message.as_ref().map_or(0, String::len);
            self.kept = self.kept - old + m.len();
            self.grpc_message = Some(m);
        }
        self.truncated_value |= trailers.truncated_value;
    }
}

fn parse_status(v: &[u8]) -> Option<u16> {
    if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// gRPC percent-encodes grpc-message (as UTF-8); malformed escapes are kept as they are.
fn percent_decode(v: &[u8]) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let v = &v[..v.len().min(MAX_VALUE_LEN)];
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                v.get(i + 1).copied().and_then(hex),
                v.get(i + 2).copied().and_then(hex),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn trace_of(h: &Head) -> Option<TraceContext> {
    trace::from_headers(
        h.sw8.as_deref(),
        h.b3.as_deref(),
        h.b3_trace.as_deref(),
        h.b3_span.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b"), "a b");
        assert_eq!(percent_decode(b"%"), "%");
        assert_eq!(percent_decode(b"%4"), "%4");
        assert_eq!(percent_decode(b"%E2%9C%93 done"), "\u{2713} done");
        assert_eq!(percent_decode(b"%FF"), "\u{fffd}");
    }
}
