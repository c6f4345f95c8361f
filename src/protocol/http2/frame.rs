//! HTTP/2 framing (RFC 9113 §4 and §6): frame headers and the rules a valid one keeps, where
//! frames may start again after sync was lost, protocol detection on a stream's first bytes,
//! and the frame and header block being consumed. Pure.

use super::PREFACE;

pub(super) const FRAME_HEADER: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until the receiver raises it.
pub(super) const DEFAULT_MAX_FRAME: u32 = 16_384;
/// The largest length the 24-bit length field can carry.
pub(super) const LARGEST_FRAME: u32 = (1 << 24) - 1;

// Frame types (RFC 9113 §6).
pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const PRIORITY: u8 = 0x2;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

// Frame flags.
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const ACK: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY_FLAG: u8 = 0x20;

pub(super) const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub(super) const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// What the first bytes of a stream look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// The client connection preface: a connection seen from its start.
    Preface,
    /// Frames without a preface: the server's first flight, or a connection joined mid-stream.
    Frames,
}

/// Cheap protocol detection on the first bytes of a stream.
///
/// `Some(Detected::Preface)` if they start with the client preface (or are a prefix of it of at
/// least 16 bytes); `Some(Detected::Frames)` if they parse as 1+ valid frame headers whose first
/// is SETTINGS on stream 0 or HEADERS; `None` otherwise (HTTP/1, TLS records, anything else).
pub fn detect(first: &[u8]) -> Option<Detected> {
    let n = first.len().min(PREFACE.len());
    if n >= 16 && first[..n] == PREFACE[..n] {
        return Some(Detected::Preface);
    }
    // TLS record header: content type 20..=24, then major version 3.
    if first.len() >= 2 && (0x14..=0x18).contains(&first[0]) && first[1] == 0x03 {
        return None;
    }
    if first.len() < FRAME_HEADER {
        return None;
    }
    let h = FrameHeader::parse(first);
    // An opening frame is small: nothing has raised SETTINGS_MAX_FRAME_SIZE yet.
    let opener = match h.ty {
        SETTINGS => true,
        HEADERS => h.len > 0,
        _ => false,
    };
    (opener && h.len <= DEFAULT_MAX_FRAME && chain_ok(first, LARGEST_FRAME, |_| true))
        .then_some(Detected::Frames)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct FrameHeader {
    pub(super) len: u32,
    pub(super) ty: u8,
    flags: u8,
    pub(super) stream: u32,
    reserved: bool,
}

impl FrameHeader {
    /// `b` holds at least 9 bytes.
    pub(super) fn parse(b: &[u8]) -> FrameHeader {
        let raw = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            ty: b[3],
            flags: b[4],
            stream: raw & 0x7fff_ffff,
            reserved: raw >> 31 == 1,
        }
    }

    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub(super) fn padded(&self) -> bool {
        self.has(PADDED) && matches!(self.ty, DATA | HEADERS | PUSH_PROMISE)
    }

    /// Payload bytes before the body or header block fragment (pad length, priority, promised id).
    pub(super) fn preamble(&self) -> u32 {
        let pad = u32::from(self.padded());
        match self.ty {
            DATA => pad,
            HEADERS if self.has(PRIORITY_FLAG) => pad + 5,
            HEADERS => pad,
            PUSH_PROMISE => pad + 4,
            _ => 0,
        }
    }

    /// Payload range of the body or fragment, before padding is known to be subtracted.
    pub(super) fn content(&self) -> (u32, u32) {
        match self.ty {
            DATA | HEADERS | PUSH_PROMISE | CONTINUATION => {
                (self.preamble().min(self.len), self.len)
            }
            _ => (0, 0),
        }
    }
}

/// RFC 9113 rules on a frame header. `strict` adds what senders do in practice (no undefined
/// flags, reserved bit clear, known types only, no CONTINUATION): used to guess boundaries.
pub(super) fn header_ok(h: &FrameHeader, max_len: u32, strict: bool) -> bool {
    if h.len > max_len {
        return false;
    }
    let (flags, ok) = match h.ty {
        DATA => (END_STREAM | PADDED, h.stream != 0 && h.len >= h.preamble()),
        HEADERS => (
            END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
            h.stream != 0 && h.len >= h.preamble(),
        ),
        PRIORITY => (0, h.stream != 0 && h.len == 5),
        RST_STREAM => (0, h.stream != 0 && h.len == 4),
        SETTINGS => (
            ACK,
            h.stream == 0 && h.len.is_multiple_of(6) && (!h.has(ACK) || h.len == 0),
        ),
        PUSH_PROMISE => (END_HEADERS | PADDED, h.stream != 0 && h.len >= h.preamble()),
        PING => (ACK, h.stream == 0 && h.len == 8),
        GOAWAY => (0, h.stream == 0 && h.len >= 8),
        WINDOW_UPDATE => (0, h.len == 4),
        CONTINUATION => (END_HEADERS, h.stream != 0 && !strict),
        _ => return !strict,
    };
    ok && (!strict || (h.flags & !flags == 0 && !h.reserved))
}

/// Whether `data` starts with a plausible run of frames: every frame header that lies in it is
/// strictly valid and CONTINUATION frames appear exactly where a header block is open.
pub(super) fn chain_ok(
    data: &[u8],
    max_len: u32,
    plausible: impl Fn(&FrameHeader) -> bool,
) -> bool {
    let mut pos = 0usize;
    let mut open: Option<u32> = None;
    let mut seen = false;
    while data.len() - pos >= FRAME_HEADER {
        let h = FrameHeader::parse(&data[pos..]);
        let sequenced = match open {
            Some(s) => h.ty == CONTINUATION && h.stream == s && header_ok(&h, max_len, false),
            None => header_ok(&h, max_len, true),
        };
        if !sequenced || h.reserved || !plausible(&h) {
            return false;
        }
        if matches!(h.ty, HEADERS | PUSH_PROMISE | CONTINUATION) {
            open = (!h.has(END_HEADERS)).then_some(h.stream);
        }
        seen = true;
        pos += FRAME_HEADER + h.len as usize;
        if pos >= data.len() {
            break;
        }
    }
    seen
}

/// The chunk starts like the client preface (all of it that was captured, at least 16 bytes or
/// the whole capture).
pub(super) fn preface_start(data: &[u8]) -> bool {
    let n = data.len().min(PREFACE.len());
    n >= 4 && data[..n] == PREFACE[..n]
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Piece<'a> {
    Bytes(&'a [u8]),
    /// This many uncaptured bytes.
    Skip(u64),
}

impl Piece<'_> {
    pub(super) fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Skip(n) => *n,
        }
    }

    pub(super) fn sub(&self, from: u64, to: u64) -> Self {
        match *self {
            Piece::Bytes(b) => Piece::Bytes(&b[from as usize..to as usize]),
            Piece::Skip(_) => Piece::Skip(to - from),
        }
    }
}

/// The frame whose payload is being consumed.
pub(super) struct Frame {
    pub(super) h: FrameHeader,
    /// Payload bytes consumed.
    pub(super) pos: u32,
    /// `end_ns` of the chunk where the frame header began.
    pub(super) start_ns: u64,
    pub(super) pad: u32,
    pub(super) pad_unknown: bool,
    /// Leading payload bytes of RST_STREAM and GOAWAY; the SETTINGS entry being read.
    small: [u8; 8],
    pub(super) small_len: u8,
    /// SETTINGS: the entry being read lost bytes.
    pub(super) entry_broken: bool,
    /// DATA: the stream record it counts for.
    pub(super) target: Option<u32>,
}

impl Frame {
    pub(super) fn new(h: FrameHeader, start_ns: u64) -> Self {
        Frame {
            h,
            pos: 0,
            start_ns,
            pad: 0,
            pad_unknown: false,
            small: [0; 8],
            small_len: 0,
            entry_broken: false,
            target: None,
        }
    }

    pub(super) fn remaining(&self) -> u32 {
        self.h.len - self.pos
    }

    /// Keep the first 8 payload bytes, as long as they arrive contiguously.
    pub(super) fn keep_prefix(&mut self, start: u32, b: &[u8]) {
        for (k, &byte) in b.iter().enumerate() {
            let o = start as usize + k;
            if o >= self.small.len() {
                break;
            }
            if o == usize::from(self.small_len) {
                self.small[o] = byte;
                self.small_len += 1;
            }
        }
    }

    pub(super) fn prefix_u32(&self, at: usize) -> Option<u32> {
        let b = self.small.get(at..at + 4)?;
        (usize::from(self.small_len) >= at + 4)
            .then(|| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// SETTINGS entries are 6 bytes: 16-bit id, 32-bit value.
    pub(super) fn settings_bytes(&mut self, start: u32, b: &[u8], out: &mut Vec<(u16, u32)>) {
        for (k, &byte) in b.iter().enumerate() {
            let j = (start as usize + k) % 6;
            if j == 0 {
                self.entry_broken = false;
            }
            self.small[j] = byte;
            if j == 5 && !self.entry_broken {
                let s = &self.small;
                out.push((
                    u16::from_be_bytes([s[0], s[1]]),
                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                ));
            }
        }
    }
}

/// A header block being assembled from HEADERS/PUSH_PROMISE and CONTINUATION fragments.
pub(super) struct Block {
    pub(super) stream: u32,
    pub(super) push: bool,
    pub(super) end_stream: bool,
    pub(super) start_ns: u64,
    /// The fragments, up to the cap.
    pub(super) buf: Vec<u8>,
    /// Fragment bytes, including those past the cap or uncaptured.
    pub(super) bytes: u64,
    /// Not all of the block is in `buf`.
    pub(super) cut: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http2::test_util::{data, frame, settings, Peer};

    #[test]
    fn detect_preface_frames_and_others() {
        assert_eq!(detect(PREFACE), Some(Detected::Preface));
        assert_eq!(detect(&PREFACE[..16]), Some(Detected::Preface));
        assert_eq!(detect(&PREFACE[..15]), None);
        let mut with_settings = PREFACE.to_vec();
        with_settings.extend(settings(&[(3, 100)]));
        assert_eq!(detect(&with_settings), Some(Detected::Preface));
        // Server's first flight: SETTINGS, then more frames.
        let mut s = settings(&[(3, 100), (4, 65535)]);
        assert_eq!(detect(&s), Some(Detected::Frames));
        s.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
        s.extend(frame(SETTINGS, ACK, 0, &[]));
        assert_eq!(detect(&s), Some(Detected::Frames));
        assert_eq!(detect(&s[..12]), Some(Detected::Frames));
        // Joined mid-stream at a HEADERS frame.
        let h = Peer::new().headers(5, &[(":status", "200")], false);
        assert_eq!(detect(&h), Some(Detected::Frames));
        // Not openers, or broken sequences.
        assert_eq!(detect(&data(1, b"abc", false)), None);
        assert_eq!(detect(&frame(PING, 0, 0, &[0; 8])), None);
        assert_eq!(detect(&frame(SETTINGS, 0, 1, &[])), None);
        assert_eq!(detect(&frame(SETTINGS, 0, 0, &[0; 5])), None);
        let mut bad_next = settings(&[]);
        bad_next.extend(frame(CONTINUATION, END_HEADERS, 1, b"x"));
        assert_eq!(detect(&bad_next), None);
        // HTTP/1 in both directions, TLS, and other protocols' first bytes.
        for m in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\n",
            b"PUT /x HTTP/1.1\r\n",
            b"HEAD / HTTP/1.1\r\n",
            b"DELETE /a HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"PATCH /a HTTP/1.1\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.0 404 Not Found\r\n",
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
            &[
                0x16, 0x03, 0x01, 0x01, 0x04, 0x01, 0x00, 0x01, 0x00, 0x03, 0x03,
            ],
            &[0x17, 0x03, 0x03, 0x00, 0x20, 0, 0, 0, 1, 2, 3],
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"*1\r\n$4\r\nPING\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
        ] {
            assert_eq!(detect(m), None, "{m:?}");
        }
        assert_eq!(detect(b""), None);
    }
}
