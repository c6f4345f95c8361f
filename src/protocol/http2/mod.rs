//! HTTP/2 and gRPC exchange reconstruction from the captured socket calls of one connection.
//!
//! Each direction is parsed as a sequence of frames whose bytes may be only partly captured
//! (`Chunk::data` is a prefix of `Chunk::len` bytes). DATA payloads are never buffered, only
//! counted (and, for gRPC, walked for the 5-byte message prefixes); header blocks are buffered,
//! bounded, until END_HEADERS and decoded by one HPACK decoder per direction. When frames are lost
//! (uncaptured tails, ring-buffer gaps) the direction resyncs at the next call that starts with a
//! plausible frame header, and its HPACK decoding turns tolerant: a field that refers to a
//! dynamic-table entry that was never seen is reported missing, never guessed.
//!
//! The HPACK decoder is our own because it must keep decoding with part of the table unknown;
//! it is exact while the table is fully known and is checked against loona-hpack's decoder in
//! the tests. (loona-hpack rebuilds its Huffman tables for every Huffman-coded string, about
//! 30 µs each: on nginx or nghttp2 traffic that was ~250 µs per exchange, against ~2 µs here.)

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::trace::{self, TraceContext};
use super::{Chunk, Direction, Role};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until the receiver raises it.
const DEFAULT_MAX_FRAME: u32 = 16_384;
/// The largest length the 24-bit length field can carry.
const LARGEST_FRAME: u32 = (1 << 24) - 1;
/// SETTINGS_HEADER_TABLE_SIZE until the receiver changes it.
const DEFAULT_TABLE_SIZE: usize = 4096;
/// Dynamic-table bytes kept per direction, whatever the peers negotiate: bounds memory.
const TABLE_SIZE_CAP: usize = 64 * 1024;
/// Bytes RFC 7541 adds to every dynamic-table entry's name and value lengths.
const ENTRY_OVERHEAD: usize = 32;
/// Longest header value kept for a report field (bounds memory per stream).
const MAX_VALUE_LEN: usize = 4 * 1024;
/// Bytes of header values one side of a stream keeps for its record, all fields together.
const MAX_HEAD_KEPT: usize = 8 * 1024;
/// Fields of one header block looked at for the record; the rest are decoded only to keep
/// the HPACK table in step (each field costs at least one byte, so this bounds the work a
/// block of repeated indexed fields can ask for).
const MAX_FIELDS_PER_BLOCK: usize = 1024;
/// What a tracked stream costs besides its kept values: its state and its table slot.
const STREAM_OVERHEAD: usize = std::mem::size_of::<Stream>() + 32;
/// How far above the highest stream id seen a resync candidate's stream id may be.
const STREAM_ID_SLACK: u32 = 4096;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Frame flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

const DIRS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

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

/// Memory bounds of one connection's parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Streams tracked at once; new streams beyond are not reported.
    pub max_streams: usize,
    /// Bytes of one header block (HEADERS + CONTINUATION fragments) kept for decoding.
    pub max_header_block: usize,
    /// Partial-frame bytes buffered per direction.
    pub max_buffered: usize,
    /// Bytes of stream state (kept header values included) held at once; past it the
    /// stalest streams are reported early, incomplete.
    pub max_retained: usize,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            max_streams: 1024,
            max_header_block: 64 * 1024,
            max_buffered: 64 * 1024,
            max_retained: 1024 * 1024,
        }
    }
}

/// Per-connection counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct H2Stats {
    /// Frame headers parsed while in sync.
    pub frames: u64,
    /// Streams tracked (exchanges that will be reported).
    pub streams: u64,
    /// Times a direction lost frame sync and had to find a frame boundary again.
    pub resyncs: u64,
    /// Header blocks the HPACK decoder rejected.
    pub hpack_errors: u64,
    /// Header fields not decodable: they referred to dynamic-table entries never seen.
    pub hpack_fields_unknown: u64,
    /// Streams not tracked because `max_streams` were open.
    pub streams_cut: u64,
    /// Header blocks longer than the cap, or partly uncaptured.
    pub header_blocks_cut: u64,
    /// Bytes not parsed: while out of sync, uncaptured bytes past the last known frame.
    pub bytes_skipped: u64,
    pub goaways: u64,
    pub rst_streams: u64,
    pub push_promises_ignored: u64,
    /// Frames that broke the protocol's rules (taken as lost sync).
    pub parse_errors: u64,
    /// Times a direction's HPACK decoding turned from exact to tolerant.
    pub hpack_downgrades: u64,
    /// Streams reported early, incomplete, to make room: they had lost frames.
    pub streams_evicted: u64,
    /// Streams reported early, incomplete, because the connection's streams held more than
    /// `max_retained` bytes.
    pub streams_evicted_memory: u64,
    /// Header blocks with more than `MAX_FIELDS_PER_BLOCK` fields (the rest not looked at).
    pub hpack_blocks_overworked: u64,
}

/// One HTTP/2 stream: a request and its response.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct H2Exchange {
    pub stream_id: u32,
    pub method: Option<String>,
    /// `:path` as sent; for gRPC `/package.Service/Method`.
    pub path: Option<String>,
    /// `:authority`, or the `host` header.
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub user_agent: Option<String>,
    /// Request content-type.
    pub content_type: Option<String>,
    pub status: Option<u16>,
    /// The request content-type starts with `application/grpc` (or, when the request's
    /// content-type was not seen or decoded, the response's does).
    pub grpc: bool,
    pub grpc_status: Option<u32>,
    /// Percent-decoded.
    pub grpc_message: Option<String>,
    /// HPACK-encoded header block bytes (fragments only: no padding nor priority fields).
    pub req_header_bytes: u64,
    /// DATA payload bytes, padding excluded.
    pub req_body_bytes: u64,
    pub resp_header_bytes: u64,
    pub resp_body_bytes: u64,
    /// gRPC length-prefixed messages; 0 for non-gRPC.
    pub req_messages: u64,
    pub resp_messages: u64,
    /// `end_ns` of the call carrying the start of the request's first HEADERS frame.
    pub req_start_ns: u64,
    pub req_end_ns: u64,
    pub resp_start_ns: u64,
    /// `end_ns` of the call carrying the end of the frame that ended the response.
    pub resp_end_ns: u64,
    /// The response was one HEADERS frame carrying grpc-status and END_STREAM.
    pub trailers_only: bool,
    /// RST_STREAM error code if the stream was reset.
    pub reset_code: Option<u32>,
    pub trace: Option<TraceContext>,
    /// Both sides ended the stream, or it was reset.
    pub complete: bool,
    /// Some bytes, frames or header fields were lost: the values are not exact.
    pub partial: bool,
    pub notes: Vec<&'static str>,
}

/// HTTP/2 state of one TCP connection.
pub struct H2Conn {
    role: Role,
    /// Direction of the client's frames (client to server), once known.
    client: Option<Direction>,
    limits: H2Limits,
    /// Index 0: Egress, 1: Ingress.
    dirs: [DirState; 2],
    /// Boxed: the table's slots stay small, whatever its capacity.
    streams: HashMap<u32, Box<Stream>>,
    /// Highest odd stream id a record was made (or refused) for: lower unknown ids are done.
    highest: u32,
    /// When joined mid-stream: ids below this may be streams that started before we joined.
    pre_join_below: u32,
    /// Pre-join streams already reported, so that stray late frames do not revive them.
    pre_join_done: BTreeSet<u32>,
    /// Exchanges finished by `gap`, handed out by the next `feed` or `close`.
    ready: Vec<H2Exchange>,
    /// Bytes the tracked streams hold (the sum of their `kept`).
    kept: usize,
    stats: H2Stats,
    closed: bool,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("role", &self.role())
            .field("streams", &self.streams.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl H2Conn {
    /// Connection seen from its start: the side that writes the preface is the client.
    pub fn new(role: Role, limits: H2Limits) -> Self {
        Self::build(role, limits, false)
    }

    /// Joined mid-stream: no preface, unknown HPACK dynamic tables. Frames are found at call
    /// boundaries; fields referring to dynamic-table entries added before we joined are
    /// reported missing; streams that started before we joined are reported when they end,
    /// without their request headers.
    pub fn new_midstream(role: Role, limits: H2Limits) -> Self {
        let mut c = Self::build(role, limits, true);
        c.pre_join_below = u32::MAX;
        c
    }

    /// After an HTTP/1.1 `Upgrade: h2c` request answered by 101: stream 1 is that request,
    /// already parsed by the HTTP/1 parser; the response to it arrives as HTTP/2.
    pub fn after_h2c_upgrade(
        role: Role,
        limits: H2Limits,
        method: String,
        path: String,
        authority: Option<String>,
        req_start_ns: u64,
        req_header_bytes: u64,
    ) -> Self {
        let mut c = Self::build(role, limits, false);
        let mut st = Stream::new(1, req_start_ns);
        st.given = Some(Box::new(Given {
            method,
            path,
            authority,
            start_ns: req_start_ns,
            header_bytes: req_header_bytes,
        }));
        st.kept = st.cost();
        c.kept = st.kept;
        c.streams.insert(1, Box::new(st));
        c.highest = 1;
        c.stats.streams = 1;
        c
    }

    fn build(role: Role, limits: H2Limits, midstream: bool) -> Self {
        let client = match role {
            Role::Client => Some(Direction::Egress),
            Role::Server => Some(Direction::Ingress),
            Role::Unknown => None,
        };
        H2Conn {
            role,
            client,
            limits,
            dirs: [DirState::new(midstream), DirState::new(midstream)],
            streams: HashMap::new(),
            highest: 0,
            pre_join_below: 0,
            pre_join_done: BTreeSet::new(),
            ready: Vec::new(),
            kept: 0,
            stats: H2Stats::default(),
            closed: false,
        }
    }

    /// The local socket's role: as given, or learned from the traffic (preface, pseudo-headers).
    pub fn role(&self) -> Role {
        match (self.role, self.client) {
            (Role::Unknown, Some(Direction::Egress)) => Role::Client,
            (Role::Unknown, Some(Direction::Ingress)) => Role::Server,
            (r, _) => r,
        }
    }

    pub fn stats(&self) -> &H2Stats {
        &self.stats
    }

    /// Bytes held, both directions: partial frames, header blocks, HPACK tables, tracked
    /// streams (kept header values included) and exchanges not yet handed out.
    pub fn buffered_bytes(&self) -> usize {
        let dirs: usize = self
            .dirs
            .iter()
            .map(|d| d.buffered() + d.hpack.held())
            .sum();
        let ready: usize = self.ready.iter().map(exchange_cost).sum();
        dirs + self.kept + ready
    }

    /// Partial-frame and header-block bytes held, both directions.
    #[cfg(test)]
    fn frame_bytes(&self) -> usize {
        self.dirs.iter().map(DirState::buffered).sum()
    }

    /// Streams currently tracked.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Parse one socket call's bytes; exchanges that end are appended to `out`.
    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<H2Exchange>) {
        let total = chunk.len.max(chunk.data.len() as u64);
        if self.closed {
            self.stats.bytes_skipped += total;
            return;
        }
        self.feed_chunk(chunk.dir, chunk.data, total, chunk.end_ns);
        super::hand_out(&mut self.ready, out);
    }

    /// Calls were lost in `dir`: its HPACK state is now unreliable (decoding turns tolerant),
    /// streams that may have lost frames are marked partial, and frames are found again at the
    /// next chunk. Exchanges this finishes are handed out by the next `feed` or `close`.
    pub fn gap(&mut self, dir: Direction) {
        if !self.closed {
            self.lose_sync(dir, "gap");
        }
    }

    /// The connection closed: streams still open are reported with `complete: false`.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<H2Exchange>) {
        let _ = ts_ns;
        if !self.closed {
            self.closed = true;
            let mut ids: Vec<u32> = self.streams.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                if let Some(st) = self.streams.remove(&id) {
                    self.emit(st, false, Some("closed_before_complete"));
                }
            }
        }
        super::hand_out(&mut self.ready, out);
    }

    /// Reports, incomplete, the streams that may have lost frames (their END_STREAM may be
    /// among them) and saw nothing for `idle_ns` by `now_ns`, so they do not linger until close.
    pub fn expire_lost(&mut self, now_ns: u64, idle_ns: u64, out: &mut Vec<H2Exchange>) {
        let mut ids: Vec<u32> = self
            .streams
            .values()
            .filter(|s| s.suspect && s.last_ns.saturating_add(idle_ns) <= now_ns)
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(st) = self.streams.remove(&id) {
                self.emit(st, false, Some("expired_after_loss"));
            }
        }
        super::hand_out(&mut self.ready, out);
    }

    /// Give up every open stream to free memory (the node's parsers are over their shared
    /// budget): each is reported now, incomplete, note `memory_budget`. Frames and HPACK
    /// state stay in step; later frames of those streams are ignored.
    pub fn shed(&mut self, out: &mut Vec<H2Exchange>) {
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(st) = self.streams.remove(&id) {
                self.stats.streams_evicted_memory += 1;
                self.emit(st, false, Some("memory_budget"));
            }
        }
        super::hand_out(&mut self.ready, out);
    }

    fn feed_chunk(&mut self, d: Direction, data: &[u8], total: u64, ns: u64) {
        let i = di(d);
        let mut uncaptured = total - data.len() as u64;
        let mut pos = 0usize;
        match self.dirs[i].phase {
            Phase::Start => {
                if data.is_empty() && uncaptured > 0 {
                    self.stats.bytes_skipped += uncaptured;
                    self.lose_sync(d, "frames_lost");
                    return;
                }
                if let Some(&first) = data.first() {
                    // A server's first frame never starts with 'P' (that length is too large).
                    self.dirs[i].phase = if first == PREFACE[0] {
                        Phase::Preface(0)
                    } else {
                        Phase::Frames
                    };
                }
            }
            Phase::Resync => {
                if preface_start(data) {
                    self.dirs[i].phase = Phase::Preface(0);
                } else if self.candidate_ok(d, data) {
                    self.dirs[i].phase = Phase::Frames;
                } else {
                    self.stats.bytes_skipped += total;
                    return;
                }
            }
            Phase::Preface(_) | Phase::Frames => {}
        }

        if let Phase::Preface(n) = self.dirs[i].phase {
            let want = &PREFACE[n..];
            let k = want.len().min(data.len());
            if data[..k] != want[..k] {
                self.stats.parse_errors += 1;
                self.stats.bytes_skipped += total;
                self.lose_sync(d, "frames_lost");
                return;
            }
            pos = k;
            if n + k == PREFACE.len() {
                self.dirs[i].phase = Phase::Frames;
                if self.client.is_none() {
                    self.client = Some(d);
                }
            } else {
                self.dirs[i].phase = Phase::Preface(n + k);
            }
        }

        if matches!(self.dirs[i].phase, Phase::Frames) {
            if let Err(at) = self.parse_frames(d, &data[pos..], ns) {
                self.stats.parse_errors += 1;
                self.stats.bytes_skipped += (data.len() - pos - at) as u64 + uncaptured;
                self.lose_sync(d, "frames_lost");
                return;
            }
        }

        if uncaptured == 0 {
            return;
        }
        if matches!(self.dirs[i].phase, Phase::Frames) && self.dirs[i].hdr_len == 0 {
            if let Some(remaining) = self.dirs[i].frame.as_ref().map(Frame::remaining) {
                // The uncaptured bytes start inside this frame's payload: that much is known.
                let k = uncaptured.min(u64::from(remaining));
                self.frame_piece(d, Piece::Skip(k), ns);
                uncaptured -= k;
                if u64::from(remaining) == k {
                    self.end_frame(d, ns);
                }
            }
        }
        if uncaptured > 0 {
            // Frame headers lie in bytes we cannot see.
            self.stats.bytes_skipped += uncaptured;
            self.lose_sync(d, "frames_lost");
        }
    }

    /// Consume captured bytes in sync; `Err(at)` when a frame breaks the protocol at `at`.
    fn parse_frames(&mut self, d: Direction, buf: &[u8], ns: u64) -> Result<(), usize> {
        let i = di(d);
        let mut p = 0;
        while p < buf.len() {
            let dir = &mut self.dirs[i];
            let Some(frame) = dir.frame.as_ref() else {
                if dir.hdr_len == 0 {
                    dir.hdr_ns = ns;
                }
                let k = (FRAME_HEADER - dir.hdr_len).min(buf.len() - p);
                dir.hdr[dir.hdr_len..dir.hdr_len + k].copy_from_slice(&buf[p..p + k]);
                dir.hdr_len += k;
                p += k;
                if dir.hdr_len < FRAME_HEADER {
                    break;
                }
                dir.hdr_len = 0;
                let h = FrameHeader::parse(&dir.hdr);
                let start_ns = dir.hdr_ns;
                if !self.frame_allowed(d, &h) {
                    return Err(p);
                }
                self.stats.frames += 1;
                self.begin_frame(d, h, start_ns);
                if h.len == 0 {
                    self.end_frame(d, ns);
                }
                continue;
            };
            let k = (frame.remaining() as usize).min(buf.len() - p);
            if !self.frame_piece(d, Piece::Bytes(&buf[p..p + k]), ns) {
                return Err(p);
            }
            p += k;
            if self.dirs[i]
                .frame
                .as_ref()
                .is_some_and(|f| f.remaining() == 0)
            {
                self.end_frame(d, ns);
            }
        }
        Ok(())
    }

    /// Lenient rules while in sync: what a correct peer never breaks.
    fn frame_allowed(&self, d: Direction, h: &FrameHeader) -> bool {
        let dir = &self.dirs[di(d)];
        if !header_ok(h, dir.max_frame, false) {
            return false;
        }
        match (&dir.block, h.ty) {
            (Some(b), CONTINUATION) => h.stream == b.stream,
            (Some(_), _) | (None, CONTINUATION) => false,
            _ => true,
        }
    }

    /// Whether a chunk can be where frames start again after lost sync.
    fn candidate_ok(&self, d: Direction, data: &[u8]) -> bool {
        let max = self.dirs[di(d)].max_frame;
        let highest = self.highest;
        chain_ok(data, max, |h| {
            h.stream == 0
                || highest == 0
                || self.streams.contains_key(&h.stream)
                || h.stream <= highest.saturating_add(STREAM_ID_SLACK)
        })
    }

    fn begin_frame(&mut self, d: Direction, h: FrameHeader, start_ns: u64) {
        let i = di(d);
        let mut f = Frame::new(h, start_ns);
        match h.ty {
            DATA => {
                f.target = self.stream_slot(h.stream, start_ns, false);
                if let Some(id) = f.target {
                    self.touch(id, d, start_ns, false);
                }
            }
            HEADERS | PUSH_PROMISE => {
                let push = h.ty == PUSH_PROMISE;
                if push {
                    self.stats.push_promises_ignored += 1;
                    // Only servers promise.
                    if self.client.is_none() {
                        self.client = Some(other(d));
                    }
                }
                self.dirs[i].block = Some(Block {
                    stream: h.stream,
                    push,
                    end_stream: !push && h.has(END_STREAM),
                    start_ns,
                    buf: Vec::new(),
                    bytes: 0,
                    cut: false,
                });
            }
            _ => {}
        }
        self.dirs[i].frame = Some(f);
    }

    /// Feed payload bytes of the current frame (at most its remaining length). Returns false
    /// when they break the frame's own layout.
    fn frame_piece(&mut self, d: Direction, piece: Piece<'_>, ns: u64) -> bool {
        let i = di(d);
        let Some(f) = self.dirs[i].frame.as_mut() else {
            return true;
        };
        let h = f.h;
        let n = piece.len().min(u64::from(f.remaining())) as u32;
        let start = f.pos;
        if h.padded() && start == 0 && n > 0 {
            match piece {
                Piece::Bytes(b) => {
                    let pad = u32::from(b[0]);
                    if h.preamble() + pad > h.len {
                        return false;
                    }
                    f.pad = pad;
                }
                // Padding length unknown: the padding is counted as content.
                Piece::Skip(_) => f.pad_unknown = true,
            }
        }
        f.pos = start + n;
        let mut settings: Vec<(u16, u32)> = Vec::new();
        match (h.ty, piece) {
            (RST_STREAM | GOAWAY, Piece::Bytes(b)) => f.keep_prefix(start, b),
            (SETTINGS, Piece::Bytes(b)) => f.settings_bytes(start, b, &mut settings),
            (SETTINGS, Piece::Skip(_)) => f.entry_broken = true,
            _ => {}
        }
        let target = f.target;
        let frame_start = f.start_ns;
        let (lo, hi) = h.content();
        let hi = hi - f.pad;
        for (id, value) in settings {
            self.apply_setting(d, id, value);
        }
        let (a, b) = (start.max(lo), (start + n).min(hi));
        if a >= b {
            return true;
        }
        let part = piece.sub(u64::from(a - start), u64::from(b - start));
        match h.ty {
            DATA => self.on_body(d, target, part, frame_start, ns),
            HEADERS | PUSH_PROMISE | CONTINUATION => self.on_fragment(d, part),
            _ => {}
        }
        true
    }

    fn end_frame(&mut self, d: Direction, ns: u64) {
        let Some(f) = self.dirs[di(d)].frame.take() else {
            return;
        };
        match f.h.ty {
            DATA => {
                let Some(id) = f.target else {
                    return;
                };
                if f.pad_unknown {
                    // The padding length was not captured: it was counted as body.
                    if let Some(st) = self.streams.get_mut(&id) {
                        st.mark("padding_unknown");
                    }
                }
                if f.h.has(END_STREAM) {
                    self.end_half(id, d, ns);
                }
            }
            HEADERS | PUSH_PROMISE | CONTINUATION if f.h.has(END_HEADERS) => {
                self.finish_block(d, ns);
            }
            RST_STREAM => {
                self.stats.rst_streams += 1;
                let code = f.prefix_u32(0);
                self.reset(f.h.stream, code);
            }
            GOAWAY => {
                self.stats.goaways += 1;
                if let Some(last) = f.prefix_u32(0) {
                    self.goaway(d, last & 0x7fff_ffff);
                }
            }
            _ => {}
        }
    }

    fn apply_setting(&mut self, d: Direction, id: u16, value: u32) {
        // A SETTINGS frame sets limits for what its receiver, the other direction, sends.
        let peer = &mut self.dirs[di(other(d))];
        match id {
            SETTINGS_HEADER_TABLE_SIZE => peer.hpack.announce(value as usize),
            SETTINGS_MAX_FRAME_SIZE if (DEFAULT_MAX_FRAME..=LARGEST_FRAME).contains(&value) => {
                peer.max_frame = peer.max_frame.max(value);
            }
            _ => {}
        }
    }

    fn on_fragment(&mut self, d: Direction, part: Piece<'_>) {
        let cap = self.limits.max_header_block.min(self.limits.max_buffered);
        let Some(block) = self.dirs[di(d)].block.as_mut() else {
            return;
        };
        block.bytes += part.len();
        if block.cut {
            return;
        }
        let fits = match part {
            Piece::Bytes(b) => {
                let room = cap.saturating_sub(block.buf.len());
                block.buf.extend_from_slice(&b[..b.len().min(room)]);
                b.len() <= room
            }
            Piece::Skip(_) => false,
        };
        if !fits {
            block.cut = true;
            self.stats.header_blocks_cut += 1;
        }
    }

    fn on_body(&mut self, d: Direction, target: Option<u32>, part: Piece<'_>, start: u64, ns: u64) {
        let Some(st) = target.and_then(|id| self.streams.get_mut(&id)) else {
            return;
        };
        let grpc = st.grpc_hint();
        st.last_ns = st.last_ns.max(ns);
        let h = &mut st.halves[di(d)];
        h.last_ns = ns;
        h.start_ns.get_or_insert(start);
        h.body_bytes += part.len();
        if matches!(h.framing, Framing::Pending) {
            // Message boundaries are known only when DATA follows this side's headers.
            h.framing = if grpc && h.blocks > 0 {
                Framing::On {
                    prefix: [0; 5],
                    have: 0,
                    remaining: 0,
                }
            } else {
                h.unframed_data = true;
                Framing::Off
            };
        }
        match part {
            Piece::Bytes(b) => h.messages += h.framing.feed(b),
            Piece::Skip(n) => h.framing.skip(n),
        }
    }

    /// Decode a finished (or abandoned) header block and apply it to its stream.
    fn finish_block(&mut self, d: Direction, ns: u64) {
        let i = di(d);
        let Some(block) = self.dirs[i].block.take() else {
            return;
        };
        let mut head = Head::default();
        let outcome = self.dirs[i]
            .hpack
            .decode(&block.buf, block.cut, &mut |n, v| head.add(n, v));
        self.stats.hpack_errors += u64::from(outcome.error);
        self.stats.hpack_fields_unknown += u64::from(outcome.unknown);
        self.stats.hpack_downgrades += u64::from(outcome.downgraded);
        self.stats.hpack_blocks_overworked += u64::from(outcome.overworked);
        if block.push || block.stream.is_multiple_of(2) {
            // Pushed streams are not reported; their blocks only keep the decoder in sync.
            return;
        }
        if self.client.is_none() {
            if head.method.is_some() {
                self.client = Some(d);
            } else if head.has_status {
                self.client = Some(other(d));
            }
        }
        let opens = head.method.is_some();
        let Some(id) = self.stream_slot(block.stream, block.start_ns, opens) else {
            return;
        };
        self.touch(id, d, block.start_ns, head.has_status);
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.last_ns = st.last_ns.max(ns);
        if outcome.unknown > 0 {
            st.mark("hpack_state_lost");
        }
        if outcome.error {
            st.mark("hpack_error");
        }
        if block.cut {
            st.mark("header_block_cut");
        }
        if head.truncated_value {
            st.mark("header_value_truncated");
        }
        if outcome.overworked {
            st.mark("header_block_too_many_fields");
        }
        let h = &mut st.halves[i];
        h.last_ns = ns;
        let interim = head.status.is_some_and(|s| (100..200).contains(&s));
        if !interim {
            h.header_bytes += block.bytes;
            if h.blocks == 0 {
                h.start_ns.get_or_insert(block.start_ns);
                h.trailers_only = block.end_stream && head.grpc_status.is_some();
                h.head = head;
            } else {
                h.head.take_outcome(head);
            }
            h.blocks += 1;
        }
        let cost = st.cost();
        self.kept = self.kept - st.kept + cost;
        st.kept = cost;
        if block.end_stream {
            self.end_half(id, d, ns);
        }
        self.hold_to_budget();
    }

    /// Report the stalest streams early, incomplete, while the streams hold more than
    /// `max_retained` bytes.
    fn hold_to_budget(&mut self) {
        while self.kept > self.limits.max_retained {
            let victim = self
                .streams
                .values()
                .min_by_key(|s| (s.last_ns, s.id))
                .map(|s| s.id);
            let Some(st) = victim.and_then(|id| self.streams.remove(&id)) else {
                break;
            };
            self.stats.streams_evicted_memory += 1;
            self.emit(st, false, Some("memory_budget"));
        }
    }

    /// Find the record of stream `id`, or make one when the id can be a stream we should report.
    fn stream_slot(&mut self, id: u32, ns: u64, opens_request: bool) -> Option<u32> {
        if id.is_multiple_of(2) {
            return None;
        }
        if self.streams.contains_key(&id) {
            return Some(id);
        }
        let fresh = id > self.highest;
        let pre_join = id < self.pre_join_below && !self.pre_join_done.contains(&id);
        if !fresh && !pre_join {
            return None;
        }
        if fresh {
            self.highest = id;
        }
        if opens_request && self.pre_join_below > id {
            // Streams opened after we joined have higher ids than every one opened before.
            self.pre_join_below = id;
        }
        if self.streams.len() >= self.limits.max_streams && !self.evict_one() {
            self.stats.streams_cut += 1;
            return None;
        }
        self.stats.streams += 1;
        let mut st = Stream::new(id, ns);
        st.kept = st.cost();
        self.kept += st.kept;
        self.streams.insert(id, Box::new(st));
        Some(id)
    }

    /// Make room by reporting the stalest stream that may have lost its END_STREAM.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .streams
            .values()
            .filter(|s| s.suspect)
            .min_by_key(|s| (s.last_ns, s.id))
            .map(|s| s.id);
        let Some(st) = victim.and_then(|id| self.streams.remove(&id)) else {
            return false;
        };
        self.stats.streams_evicted += 1;
        self.emit(st, false, Some("evicted"));
        true
    }

    /// A frame of `d` arrived for stream `id`; `status_block`: it is a header block with :status.
    fn touch(&mut self, id: u32, d: Direction, ns: u64, status_block: bool) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.last_ns = st.last_ns.max(ns);
        let h = &mut st.halves[di(d)];
        if h.loss_pending {
            h.loss_pending = false;
            // A response that starts with its :status began after the loss.
            if !status_block {
                st.mark("frames_lost");
                st.halves[di(d)].framing = Framing::Lost;
            }
        }
        let h = &mut st.halves[di(d)];
        h.seen = true;
        h.last_ns = h.last_ns.max(ns);
    }

    fn end_half(&mut self, id: u32, d: Direction, ns: u64) {
        let client = self.client;
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        let h = &mut st.halves[di(d)];
        h.seen = true;
        h.end_ns = Some(ns);
        h.last_ns = ns;
        st.last_ns = st.last_ns.max(ns);
        if st.finished(client) {
            if let Some(st) = self.streams.remove(&id) {
                self.emit(st, true, None);
            }
        }
    }

    fn reset(&mut self, id: u32, code: Option<u32>) {
        let Some(mut st) = self.streams.remove(&id) else {
            return;
        };
        st.reset = Some(code);
        if code.is_none() {
            st.mark("reset_code_unknown");
        }
        self.emit(st, true, None);
    }

    fn goaway(&mut self, d: Direction, last: u32) {
        // Only the server's GOAWAY speaks about client streams.
        if self.client != Some(other(d)) {
            return;
        }
        let mut ids: Vec<u32> = self.streams.keys().copied().filter(|&s| s > last).collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(st) = self.streams.remove(&id) {
                self.emit(st, false, Some("goaway_not_processed"));
            }
        }
    }

    /// Frames of `d` were lost: find frames again at the next chunk, stop trusting its HPACK
    /// state, and flag every stream whose frames in `d` may have been among the lost ones.
    fn lose_sync(&mut self, d: Direction, note: &'static str) {
        let i = di(d);
        if !matches!(self.dirs[i].phase, Phase::Resync) {
            self.stats.resyncs += 1;
        }
        let ns = self.dirs[i].frame.as_ref().map_or(0, |f| f.start_ns);
        let dir = &mut self.dirs[i];
        dir.frame = None;
        dir.hdr_len = 0;
        dir.phase = Phase::Resync;
        if let Some(b) = dir.block.as_mut() {
            // Decode what the block had so its fields (and END_STREAM) are not lost.
            if !b.cut {
                b.cut = true;
                self.stats.header_blocks_cut += 1;
            }
            let ns = ns.max(b.start_ns);
            self.finish_block(d, ns);
        }
        if self.dirs[i].hpack.lose() {
            self.stats.hpack_downgrades += 1;
        }
        // A SETTINGS frame raising the other direction's frame size may have been lost.
        self.dirs[1 - i].max_frame = LARGEST_FRAME;
        for st in self.streams.values_mut() {
            let h = &mut st.halves[i];
            if h.end_ns.is_some() {
                continue;
            }
            if h.seen {
                h.framing = Framing::Lost;
                st.mark(note);
            } else {
                h.loss_pending = true;
            }
            st.suspect = true;
        }
    }

    /// Every stream leaves the table through here.
    fn emit(&mut self, st: Box<Stream>, complete: bool, incomplete_note: Option<&'static str>) {
        self.kept -= st.kept;
        if st.id < self.pre_join_below {
            self.pre_join_done.insert(st.id);
            if self.pre_join_done.len() > self.limits.max_streams {
                self.pre_join_done.pop_first();
            }
        }
        let ex = (*st).into_exchange(self.client, complete, incomplete_note);
        self.ready.push(ex);
    }
}

/// Where a direction's parser stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet: the preface or frames.
    Start,
    /// Matched this many preface bytes.
    Preface(usize),
    Frames,
    /// Sync lost: the next chunk must start with a plausible frame header.
    Resync,
}

struct DirState {
    phase: Phase,
    hdr: [u8; FRAME_HEADER],
    hdr_len: usize,
    /// `end_ns` of the chunk where the pending frame header began.
    hdr_ns: u64,
    frame: Option<Frame>,
    /// Header block awaiting its END_HEADERS.
    block: Option<Block>,
    hpack: Hpack,
    /// Largest frame this direction may send (the receiver's SETTINGS_MAX_FRAME_SIZE).
    max_frame: u32,
}

impl DirState {
    fn new(midstream: bool) -> Self {
        DirState {
            phase: if midstream {
                Phase::Resync
            } else {
                Phase::Start
            },
            hdr: [0; FRAME_HEADER],
            hdr_len: 0,
            hdr_ns: 0,
            frame: None,
            block: None,
            hpack: if midstream {
                Hpack::lost()
            } else {
                Hpack::exact()
            },
            max_frame: if midstream {
                LARGEST_FRAME
            } else {
                DEFAULT_MAX_FRAME
            },
        }
    }

    fn buffered(&self) -> usize {
        self.hdr_len
            + self.frame.as_ref().map_or(0, |f| usize::from(f.small_len))
            + self.block.as_ref().map_or(0, |b| b.buf.len())
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
    reserved: bool,
}

impl FrameHeader {
    /// `b` holds at least 9 bytes.
    fn parse(b: &[u8]) -> FrameHeader {
        let raw = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            ty: b[3],
            flags: b[4],
            stream: raw & 0x7fff_ffff,
            reserved: raw >> 31 == 1,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn padded(&self) -> bool {
        self.has(PADDED) && matches!(self.ty, DATA | HEADERS | PUSH_PROMISE)
    }

    /// Payload bytes before the body or header block fragment (pad length, priority, promised id).
    fn preamble(&self) -> u32 {
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
    fn content(&self) -> (u32, u32) {
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
fn header_ok(h: &FrameHeader, max_len: u32, strict: bool) -> bool {
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
fn chain_ok(data: &[u8], max_len: u32, plausible: impl Fn(&FrameHeader) -> bool) -> bool {
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
fn preface_start(data: &[u8]) -> bool {
    let n = data.len().min(PREFACE.len());
    n >= 4 && data[..n] == PREFACE[..n]
}

#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    Bytes(&'a [u8]),
    /// This many uncaptured bytes.
    Skip(u64),
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Skip(n) => *n,
        }
    }

    fn sub(&self, from: u64, to: u64) -> Self {
        match *self {
            Piece::Bytes(b) => Piece::Bytes(&b[from as usize..to as usize]),
            Piece::Skip(_) => Piece::Skip(to - from),
        }
    }
}

/// The frame whose payload is being consumed.
struct Frame {
    h: FrameHeader,
    /// Payload bytes consumed.
    pos: u32,
    /// `end_ns` of the chunk where the frame header began.
    start_ns: u64,
    pad: u32,
    pad_unknown: bool,
    /// Leading payload bytes of RST_STREAM and GOAWAY; the SETTINGS entry being read.
    small: [u8; 8],
    small_len: u8,
    /// SETTINGS: the entry being read lost bytes.
    entry_broken: bool,
    /// DATA: the stream record it counts for.
    target: Option<u32>,
}

impl Frame {
    fn new(h: FrameHeader, start_ns: u64) -> Self {
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

    fn remaining(&self) -> u32 {
        self.h.len - self.pos
    }

    /// Keep the first 8 payload bytes, as long as they arrive contiguously.
    fn keep_prefix(&mut self, start: u32, b: &[u8]) {
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

    fn prefix_u32(&self, at: usize) -> Option<u32> {
        let b = self.small.get(at..at + 4)?;
        (usize::from(self.small_len) >= at + 4)
            .then(|| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// SETTINGS entries are 6 bytes: 16-bit id, 32-bit value.
    fn settings_bytes(&mut self, start: u32, b: &[u8], out: &mut Vec<(u16, u32)>) {
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
struct Block {
    stream: u32,
    push: bool,
    end_stream: bool,
    start_ns: u64,
    /// The fragments, up to the cap.
    buf: Vec<u8>,
    /// Fragment bytes, including those past the cap or uncaptured.
    bytes: u64,
    /// Not all of the block is in `buf`.
    cut: bool,
}

/// gRPC length-prefixed message framing of one side's DATA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Framing {
    /// No DATA yet.
    #[default]
    Pending,
    /// Not counted: not gRPC, or the start of the messages was not seen.
    Off,
    On {
        prefix: [u8; 5],
        have: u8,
        remaining: u64,
    },
    /// Bytes of a prefix were not seen: counting stopped.
    Lost,
}

impl Framing {
    /// Walk captured body bytes; returns the messages whose prefix completed.
    fn feed(&mut self, mut b: &[u8]) -> u64 {
        let Framing::On {
            mut prefix,
            mut have,
            mut remaining,
        } = *self
        else {
            return 0;
        };
        let mut count = 0;
        while !b.is_empty() {
            if remaining > 0 {
                let k = remaining.min(b.len() as u64);
                remaining -= k;
                b = &b[k as usize..];
                continue;
            }
            let k = (5 - usize::from(have)).min(b.len());
            prefix[usize::from(have)..usize::from(have) + k].copy_from_slice(&b[..k]);
            have += k as u8;
            b = &b[k..];
            if have == 5 {
                if prefix[0] > 1 {
                    // Only 0 and 1 are compression flags: these are not message boundaries.
                    *self = Framing::Lost;
                    return count;
                }
                count += 1;
                remaining = u64::from(u32::from_be_bytes([
                    prefix[1], prefix[2], prefix[3], prefix[4],
                ]));
                have = 0;
            }
        }
        *self = Framing::On {
            prefix,
            have,
            remaining,
        };
        count
    }

    /// Uncaptured body bytes: harmless inside a message, fatal if a prefix lies there.
    fn skip(&mut self, n: u64) {
        if let Framing::On {
            have, remaining, ..
        } = self
        {
            if *have == 0 && *remaining >= n {
                *remaining -= n;
            } else if n > 0 {
                *self = Framing::Lost;
            }
        }
    }
}

/// The request that an h2c upgrade carried over HTTP/1.
#[derive(Debug)]
struct Given {
    method: String,
    path: String,
    authority: Option<String>,
    start_ns: u64,
    header_bytes: u64,
}

/// One side of a stream.
#[derive(Debug, Default)]
struct Half {
    /// Any frame of this side was seen.
    seen: bool,
    /// Final (non-1xx) header blocks; the second and later are trailers.
    blocks: u32,
    start_ns: Option<u64>,
    /// Set by END_STREAM.
    end_ns: Option<u64>,
    last_ns: u64,
    header_bytes: u64,
    body_bytes: u64,
    head: Head,
    trailers_only: bool,
    framing: Framing,
    messages: u64,
    /// DATA was seen while message framing could not be followed.
    unframed_data: bool,
    /// Frames were lost before this side was seen: its first frame tells whether that matters.
    loss_pending: bool,
}

#[derive(Debug)]
struct Stream {
    id: u32,
    /// Index 0: frames sent Egress, 1: Ingress.
    halves: [Half; 2],
    given: Option<Box<Given>>,
    /// RST_STREAM seen, with its code when captured.
    reset: Option<Option<u32>>,
    /// Frames of this stream may have been lost (its END_STREAM may never come).
    suspect: bool,
    partial: bool,
    notes: Vec<&'static str>,
    first_ns: u64,
    last_ns: u64,
    /// Its `cost()` as last counted in the connection's `kept`.
    kept: usize,
}

impl Stream {
    fn new(id: u32, ns: u64) -> Self {
        Stream {
            id,
            halves: [Half::default(), Half::default()],
            given: None,
            reset: None,
            suspect: false,
            partial: false,
            notes: Vec::new(),
            first_ns: ns,
            last_ns: ns,
            kept: 0,
        }
    }

    /// Bytes this stream holds: its state and the header values it keeps.
    fn cost(&self) -> usize {
        let given = self.given.as_ref().map_or(0, |g| {
            std::mem::size_of::<Given>()
                + g.method.len()
                + g.path.len()
                + g.authority.as_ref().map_or(0, String::len)
        });
        STREAM_OVERHEAD + given + self.halves[0].head.kept + self.halves[1].head.kept
    }

    fn note(&mut self, note: &'static str) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn mark(&mut self, note: &'static str) {
        self.partial = true;
        self.note(note);
    }

    fn grpc_hint(&self) -> bool {
        self.halves
            .iter()
            .any(|h| is_grpc(h.head.content_type.as_deref()))
    }

    /// The direction of the request's frames, when the connection or the stream tells it.
    fn request_dir(&self, client: Option<Direction>) -> Option<Direction> {
        if client.is_some() {
            return client;
        }
        for d in DIRS {
            let h = &self.halves[di(d)];
            if h.head.method.is_some() {
                return Some(d);
            }
            if h.head.has_status {
                return Some(other(d));
            }
        }
        if self.given.is_some() {
            // The upgraded request was sent over HTTP/1: only the response side has frames.
            match (self.halves[0].seen, self.halves[1].seen) {
                (true, false) => return Some(DIRS[1]),
                (false, true) => return Some(DIRS[0]),
                _ => {}
            }
        }
        None
    }

    fn finished(&self, client: Option<Direction>) -> bool {
        if self.reset.is_some() {
            return true;
        }
        match self.request_dir(client) {
            Some(r) => {
                let (req, resp) = (&self.halves[di(r)], &self.halves[di(other(r))]);
                // A request side never seen ended before we joined (or over HTTP/1).
                resp.end_ns.is_some() && (req.end_ns.is_some() || !req.seen)
            }
            None => self.halves.iter().all(|h| h.end_ns.is_some()),
        }
    }

    fn into_exchange(
        mut self,
        client: Option<Direction>,
        complete: bool,
        incomplete_note: Option<&'static str>,
    ) -> H2Exchange {
        let r = self.request_dir(client).unwrap_or_else(|| {
            // Unknown roles: the side heard from first asked.
            let [a, b] = &self.halves;
            match (a.start_ns, b.start_ns) {
                (Some(x), Some(y)) if y < x => DIRS[1],
                (None, Some(_)) => DIRS[1],
                _ => DIRS[0],
            }
        });
        if let Some(n) = incomplete_note {
            self.note(n);
        }
        let given = self.given.take();
        let [h0, h1] = std::mem::take(&mut self.halves);
        let (mut req, mut resp) = if di(r) == 0 { (h0, h1) } else { (h1, h0) };
        let req_seen = given.is_some() || req.blocks > 0;
        if !req_seen {
            self.mark("request_unseen");
        }
        if req.loss_pending || resp.loss_pending {
            self.mark("frames_lost");
        }
        // The response's content-type stands in when the request's was not seen or decoded.
        let grpc = match req.head.content_type.as_deref() {
            Some(ct) => is_grpc(Some(ct)),
            None => is_grpc(resp.head.content_type.as_deref()),
        };
        if grpc
            && [&req, &resp]
                .iter()
                .any(|h| h.framing == Framing::Lost || h.unframed_data)
        {
            self.mark("grpc_framing_lost");
        }
        let trace = trace_of(&req.head);
        let req_start_ns = match &given {
            Some(g) => g.start_ns,
            None => req.start_ns.unwrap_or(self.first_ns),
        };
        let req_end_ns = req
            .end_ns
            .unwrap_or(if req.seen { req.last_ns } else { req_start_ns });
        let resp_start_ns = resp
            .start_ns
            .unwrap_or(if resp.seen { resp.last_ns } else { 0 });
        let resp_end_ns = resp
            .end_ns
            .unwrap_or(if resp.seen { resp.last_ns } else { 0 });
        let (method, path, authority, req_header_bytes) = match given {
            Some(g) => (
                Some(g.method),
                Some(g.path),
                g.authority,
                g.header_bytes + req.header_bytes,
            ),
            None => (
                req.head.method.take(),
                req.head.path.take(),
                req.head.authority.take().or(req.head.host.take()),
                req.header_bytes,
            ),
        };
        H2Exchange {
            stream_id: self.id,
            method,
            path,
            authority,
            scheme: req.head.scheme.take(),
            user_agent: req.head.user_agent.take(),
            content_type: req.head.content_type.take(),
            status: resp.head.status,
            grpc,
            grpc_status: resp.head.grpc_status,
            grpc_message: resp.head.grpc_message.take(),
            req_header_bytes,
            req_body_bytes: req.body_bytes,
            resp_header_bytes: resp.header_bytes,
            resp_body_bytes: resp.body_bytes,
            req_messages: if grpc { req.messages } else { 0 },
            resp_messages: if grpc { resp.messages } else { 0 },
            req_start_ns,
            req_end_ns,
            resp_start_ns,
            resp_end_ns,
            trailers_only: resp.trailers_only,
            reset_code: self.reset.flatten(),
            trace,
            complete,
            partial: self.partial,
            notes: self.notes,
        }
    }
}

/// Bytes an exchange waiting to be handed out holds.
fn exchange_cost(x: &H2Exchange) -> usize {
    let s = |v: &Option<String>| v.as_ref().map_or(0, String::len);
    std::mem::size_of::<H2Exchange>()
        + s(&x.method)
        + s(&x.path)
        + s(&x.authority)
        + s(&x.scheme)
        + s(&x.user_agent)
        + s(&x.content_type)
        + s(&x.grpc_message)
        + x.notes.len() * std::mem::size_of::<&str>()
}

fn is_grpc(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| c.starts_with("application/grpc"))
}

/// The header fields an exchange reports (others are dropped as they are decoded).
#[derive(Debug, Default)]
struct Head {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    host: Option<String>,
    scheme: Option<String>,
    user_agent: Option<String>,
    content_type: Option<String>,
    status: Option<u16>,
    has_status: bool,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
    sw8: Option<String>,
    b3: Option<String>,
    b3_trace: Option<String>,
    b3_span: Option<String>,
    truncated_value: bool,
    /// Bytes of the values kept (at most `MAX_HEAD_KEPT`).
    kept: usize,
}

impl Head {
    /// Keep a field the record uses. The first value of each field wins: a repeated field
    /// costs nothing more, and all values together are held to `MAX_HEAD_KEPT` bytes.
    fn add(&mut self, name: &[u8], value: &[u8]) {
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
    fn take_outcome(&mut self, trailers: Head) {
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

fn trace_of(h: &Head) -> Option<TraceContext> {
    trace::from_headers(
        h.sw8.as_deref(),
        h.b3.as_deref(),
        h.b3_trace.as_deref(),
        h.b3_span.as_deref(),
    )
}

fn di(d: Direction) -> usize {
    match d {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

fn other(d: Direction) -> Direction {
    match d {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

// ---------------------------------------------------------------------------------------------
// HPACK

/// What decoding one header block found.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    /// Fields whose name could not be known.
    unknown: u32,
    /// The block held more than `MAX_FIELDS_PER_BLOCK` fields: the rest were decoded for
    /// the table's sake but not looked at.
    overworked: bool,
    /// The block was malformed (or did not match the table we hold).
    error: bool,
    /// Decoding stopped being exact: part of the table is unknown from now on.
    downgraded: bool,
}

/// The HPACK decoder (RFC 7541) of one direction; it survives not knowing part of the table.
///
/// The entries inserted since the state was last known are kept, newest first, in `entries`;
/// older entries of unknown content may follow them (`tail_unknown`). Insertions push at the
/// front and evictions pop at the back, so our front always matches the peer's table: keeping
/// entries the peer already evicted is harmless (it never refers to them), evicting entries the
/// peer still has is not, and marks the tail unknown. With the tail known this is an ordinary,
/// exact decoder.
struct Hpack {
    entries: VecDeque<Entry>,
    /// Lower bound of the peer's size for `entries` (names not known count as empty).
    size: usize,
    tail_unknown: bool,
    /// The table's maximum size, when known (protocol default, or told by a size update).
    max: Option<usize>,
    /// Largest SETTINGS_HEADER_TABLE_SIZE the receiver announced.
    announced: usize,
}

/// A dynamic-table entry: its name is None when it came from an entry we never saw. Names
/// are shared: a literal that reuses an entry's name (up to the table's size) costs a
/// reference, not a copy.
type Entry = (Option<Arc<[u8]>>, Box<[u8]>);

/// A field name found in a table.
#[derive(Clone, Copy)]
enum Name<'a> {
    Static(&'static [u8]),
    Shared(&'a Arc<[u8]>),
}

impl Name<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Name::Static(b) => b,
            Name::Shared(a) => a,
        }
    }

    fn to_shared(self) -> Arc<[u8]> {
        match self {
            Name::Static(b) => Arc::from(b),
            Name::Shared(a) => Arc::clone(a),
        }
    }
}

enum Slot<'a> {
    Known(Option<Name<'a>>, &'a [u8]),
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Truncated,
    Malformed,
}

impl Hpack {
    /// At the connection start: the table is empty and its size the protocol default.
    fn exact() -> Self {
        Hpack {
            entries: VecDeque::new(),
            size: 0,
            tail_unknown: false,
            max: Some(DEFAULT_TABLE_SIZE),
            announced: DEFAULT_TABLE_SIZE,
        }
    }

    /// Joined mid-stream: nothing is known.
    fn lost() -> Self {
        Hpack {
            tail_unknown: true,
            max: None,
            ..Hpack::exact()
        }
    }

    /// Bytes the table holds, as the protocol counts them (at most `TABLE_SIZE_CAP`).
    fn held(&self) -> usize {
        self.size
    }

    fn announce(&mut self, size: usize) {
        self.announced = self.announced.max(size);
    }

    /// Table changes were missed: forget what is known. Returns whether it was exact.
    fn lose(&mut self) -> bool {
        let was_exact = !self.tail_unknown;
        self.entries.clear();
        self.size = 0;
        self.tail_unknown = true;
        self.max = None;
        was_exact
    }

    /// The maximum size is known and our table follows it exactly.
    fn exact_limit(&self) -> bool {
        self.max.is_some_and(|m| m <= TABLE_SIZE_CAP)
    }

    fn capacity(&self) -> usize {
        match self.max {
            Some(m) => m.min(TABLE_SIZE_CAP),
            None => self.announced.clamp(DEFAULT_TABLE_SIZE, TABLE_SIZE_CAP),
        }
    }

    /// Decode a header block; `truncated`: its tail is missing, so the table is lost after it.
    fn decode(
        &mut self,
        buf: &[u8],
        truncated: bool,
        sink: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Outcome {
        let was_exact = !self.tail_unknown;
        let mut out = Outcome::default();
        let mut fields = 0usize;
        let mut overworked = false;
        let mut capped = |n: &[u8], v: &[u8]| {
            if fields < MAX_FIELDS_PER_BLOCK {
                fields += 1;
                sink(n, v);
            } else {
                overworked = true;
            }
        };
        let mut pos = 0;
        while pos < buf.len() {
            match self.field(&buf[pos..], &mut capped, &mut out) {
                Ok(n) => pos += n,
                Err(Stop::Truncated) if truncated => break,
                Err(_) => {
                    out.error = true;
                    break;
                }
            }
        }
        if out.error || truncated {
            self.lose();
        }
        out.overworked = overworked;
        out.downgraded = was_exact && self.tail_unknown;
        out
    }

    fn field(
        &mut self,
        b: &[u8],
        sink: &mut dyn FnMut(&[u8], &[u8]),
        out: &mut Outcome,
    ) -> Result<usize, Stop> {
        let first = b[0];
        if first & 0x80 != 0 {
            let (index, n) = integer(b, 7)?;
            match self.slot(index)? {
                Slot::Known(Some(name), value) => sink(name.bytes(), value),
                _ => out.unknown += 1,
            }
            return Ok(n);
        }
        if first & 0xe0 == 0x20 {
            let (size, n) = integer(b, 5)?;
            self.resize(size);
            return Ok(n);
        }
        let insert = first & 0x40 != 0;
        let (index, mut n) = integer(b, if insert { 6 } else { 4 })?;
        let literal = if index == 0 {
            let (s, k) = string(&b[n..])?;
            n += k;
            Some(s)
        } else {
            // Checked before the value, as the field is read.
            self.slot(index)?;
            None
        };
        let (value, k) = string(&b[n..])?;
        n += k;
        // The name is borrowed from the block or the table; a copy (or a shared reference)
        // is made only for an entry to insert.
        let kept_name = match &literal {
            Some(name) => {
                sink(name, &value);
                insert.then(|| Arc::from(&name[..]))
            }
            None => match self.slot(index)? {
                Slot::Known(Some(name), _) => {
                    sink(name.bytes(), &value);
                    insert.then(|| name.to_shared())
                }
                _ => {
                    out.unknown += 1;
                    None
                }
            },
        };
        if insert {
            self.insert(kept_name, value.into_owned());
        }
        Ok(n)
    }

    fn slot(&self, index: usize) -> Result<Slot<'_>, Stop> {
        if index == 0 {
            return Err(Stop::Malformed);
        }
        if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok(Slot::Known(
                Some(Name::Static(name.as_bytes())),
                value.as_bytes(),
            ));
        }
        let at = index - STATIC_TABLE.len() - 1;
        if let Some((name, value)) = self.entries.get(at) {
            return Ok(Slot::Known(name.as_ref().map(Name::Shared), value));
        }
        // No table holds more entries than its size allows.
        let bound = self
            .max
            .unwrap_or(0)
            .max(self.announced)
            .max(TABLE_SIZE_CAP)
            / ENTRY_OVERHEAD;
        if self.tail_unknown && at < bound {
            Ok(Slot::Unknown)
        } else {
            Err(Stop::Malformed)
        }
    }

    fn insert(&mut self, name: Option<Arc<[u8]>>, value: Vec<u8>) {
        let size = name.as_ref().map_or(0, |n| n.len()) + value.len() + ENTRY_OVERHEAD;
        if size > self.capacity() {
            // Bigger than the table: the peer's table is now empty, if we know its size.
            self.entries.clear();
            self.size = 0;
            self.tail_unknown = !self.exact_limit();
            return;
        }
        self.entries.push_front((name, value.into_boxed_slice()));
        self.size += size;
        self.evict();
    }

    fn resize(&mut self, max: usize) {
        self.max = Some(max);
        self.evict();
    }

    fn evict(&mut self) {
        let cap = self.capacity();
        let mut evicted = false;
        while self.size > cap {
            let Some((name, value)) = self.entries.pop_back() else {
                self.size = 0;
                break;
            };
            self.size -= name.as_ref().map_or(0, |n| n.len()) + value.len() + ENTRY_OVERHEAD;
            evicted = true;
        }
        if evicted && !self.exact_limit() {
            // We may have dropped entries the peer keeps (its table is larger than we keep).
            self.tail_unknown = true;
        }
        if self.exact_limit() && self.max.is_some_and(|m| self.size + ENTRY_OVERHEAD > m) {
            // No room is left for any entry we do not know.
            self.tail_unknown = false;
        }
    }
}

/// RFC 7541 §5.1 integer with an n-bit prefix; values above 2^28 are refused.
fn integer(b: &[u8], prefix: u8) -> Result<(usize, usize), Stop> {
    let mask = (1u8 << prefix) - 1;
    let first = *b.first().ok_or(Stop::Truncated)?;
    let value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok((value, 1));
    }
    let mut value = value;
    for (k, &c) in b[1..].iter().enumerate() {
        if k == 4 {
            return Err(Stop::Malformed);
        }
        value += usize::from(c & 0x7f) << (7 * k);
        if c & 0x80 == 0 {
            return Ok((value, k + 2));
        }
    }
    Err(Stop::Truncated)
}

/// RFC 7541 §5.2 string literal, raw or Huffman-coded.
fn string(b: &[u8]) -> Result<(Cow<'_, [u8]>, usize), Stop> {
    let (len, n) = integer(b, 7)?;
    let end = n + len;
    let raw = b.get(n..end).ok_or(Stop::Truncated)?;
    if b[0] & 0x80 == 0 {
        return Ok((Cow::Borrowed(raw), end));
    }
    huffman_decode(raw)
        .map(|v| (Cow::Owned(v), end))
        .ok_or(Stop::Malformed)
}

/// Bit length of the HPACK Huffman code of each symbol: bytes 0..=255, then EOS (RFC 7541
/// Appendix B). The code is canonical (the codes of one length are consecutive, in symbol
/// order), so these lengths define it.
#[rustfmt::skip]
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
];

const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

/// Canonical decoding tables: for each code length, its first code, how many codes have it,
/// and where its symbols start in `symbols` (which lists symbols by length, then value).
struct HuffmanTable {
    first: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    start: [u16; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
}

const HUFFMAN: HuffmanTable = huffman_table();

const fn huffman_table() -> HuffmanTable {
    let mut t = HuffmanTable {
        first: [0; MAX_CODE_LEN + 1],
        count: [0; MAX_CODE_LEN + 1],
        start: [0; MAX_CODE_LEN + 1],
        symbols: [0; 257],
    };
    let mut s = 0;
    while s < 257 {
        t.count[HUFFMAN_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let (mut code, mut at, mut len) = (0u32, 0u16, 1);
    while len <= MAX_CODE_LEN {
        code = (code + t.count[len - 1]) << 1;
        t.first[len] = code;
        t.start[len] = at;
        let mut s = 0;
        while s < 257 {
            if HUFFMAN_LENGTHS[s] as usize == len {
                t.symbols[at as usize] = s as u16;
                at += 1;
            }
            s += 1;
        }
        len += 1;
    }
    t
}

/// Decode a Huffman-coded string; None if it holds EOS or its padding is not 1 bits (< 8).
fn huffman_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let t = &HUFFMAN;
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in raw {
        for shift in (0..8).rev() {
            code = code << 1 | u32::from(byte >> shift & 1);
            len += 1;
            let offset = code.wrapping_sub(t.first[len]);
            if offset < t.count[len] {
                let sym = t.symbols[usize::from(t.start[len]) + offset as usize];
                if sym == EOS {
                    return None;
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len == MAX_CODE_LEN {
                return None;
            }
        }
    }
    // Padding: the most significant bits of EOS, that is up to 7 one bits.
    (len < 8 && code == (1 << len) - 1).then_some(out)
}

/// RFC 7541 Appendix A.
static STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Egress as E, Ingress as I};

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.extend_from_slice(&[ty, flags]);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in entries {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }

    fn data(stream: u32, payload: &[u8], end: bool) -> Vec<u8> {
        frame(DATA, if end { END_STREAM } else { 0 }, stream, payload)
    }

    /// gRPC messages of these sizes, each with its 5-byte prefix.
    fn grpc_msgs(sizes: &[usize]) -> Vec<u8> {
        let mut v = Vec::new();
        for &n in sizes {
            v.push(0);
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v.extend(std::iter::repeat_n(b'm', n));
        }
        v
    }

    /// A header block as HEADERS then CONTINUATION frames of at most `frag` bytes each.
    fn split_block(stream: u32, block: &[u8], end_stream: bool, frag: usize) -> Vec<u8> {
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
    struct Peer(loona_hpack::Encoder<'static>);

    impl Peer {
        fn new() -> Self {
            Peer(loona_hpack::Encoder::new())
        }

        fn block(&mut self, h: &[(&str, &str)]) -> Vec<u8> {
            self.0
                .encode(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
        }

        fn headers(&mut self, stream: u32, h: &[(&str, &str)], end: bool) -> Vec<u8> {
            let b = self.block(h);
            split_block(stream, &b, end, usize::MAX)
        }
    }

    fn get(path: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "GET".into()),
            (":scheme", "http".into()),
            (":path", path.into()),
            (":authority", "svc.local".into()),
            ("user-agent", "test/1".into()),
        ]
    }

    fn grpc_req(method: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":path", method.into()),
            (":authority", "grpc.local:50051".into()),
            ("content-type", "application/grpc".into()),
            ("te", "trailers".into()),
        ]
    }

    fn as_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        h.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    /// A connection from a client's point of view (Egress: client to server).
    struct T {
        c: H2Conn,
        out: Vec<H2Exchange>,
        ts: u64,
        cl: Peer,
        sv: Peer,
    }

    impl T {
        fn with(c: H2Conn) -> Self {
            T {
                c,
                out: Vec::new(),
                ts: 1000,
                cl: Peer::new(),
                sv: Peer::new(),
            }
        }

        /// Preface and SETTINGS exchanged.
        fn new() -> Self {
            Self::limits(H2Limits::default())
        }

        fn limits(l: H2Limits) -> Self {
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

        fn send(&mut self, d: Direction, bytes: &[u8]) -> u64 {
            self.send_len(d, bytes, bytes.len() as u64)
        }

        fn send_len(&mut self, d: Direction, bytes: &[u8], len: u64) -> u64 {
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
        fn trickle(&mut self, d: Direction, bytes: &[u8], n: usize) {
            for c in bytes.chunks(n) {
                self.send(d, c);
            }
        }

        fn req(&mut self, stream: u32, h: &[(&'static str, String)], end: bool) -> Vec<u8> {
            self.cl.headers(stream, &as_refs(h), end)
        }

        fn resp(&mut self, stream: u32, h: &[(&str, &str)], end: bool) -> Vec<u8> {
            self.sv.headers(stream, h, end)
        }

        fn close(&mut self) {
            self.ts += 10;
            self.c.close(self.ts, &mut self.out);
        }

        fn only(&self) -> &H2Exchange {
            assert_eq!(self.out.len(), 1, "{:#?}", self.out);
            &self.out[0]
        }
    }

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

    fn simple_exchange(t: &mut T) -> (u64, u64, u64, u64) {
        let req = t.req(1, &get("/hello"), true);
        let t1 = t.send(E, &req);
        let mut r = t.resp(
            1,
            &[(":status", "200"), ("content-type", "text/plain")],
            false,
        );
        let t2 = t.send(I, &r);
        r.clear();
        r.extend(data(1, b"hello ", false));
        r.extend(data(1, b"world", true));
        let t3 = t.send(I, &r);
        (t1, t2, t3, req.len() as u64 - 9)
    }

    #[test]
    fn simple_get() {
        let mut t = T::new();
        let (t1, t2, t3, req_block) = simple_exchange(&mut t);
        let ex = t.only();
        assert_eq!(ex.stream_id, 1);
        assert_eq!(ex.method.as_deref(), Some("GET"));
        assert_eq!(ex.path.as_deref(), Some("/hello"));
        assert_eq!(ex.authority.as_deref(), Some("svc.local"));
        assert_eq!(ex.scheme.as_deref(), Some("http"));
        assert_eq!(ex.user_agent.as_deref(), Some("test/1"));
        assert_eq!(ex.status, Some(200));
        assert!(!ex.grpc && ex.complete && !ex.partial, "{ex:?}");
        assert!(ex.notes.is_empty());
        assert_eq!(ex.req_header_bytes, req_block);
        assert_eq!((ex.req_body_bytes, ex.resp_body_bytes), (0, 11));
        assert!(ex.resp_header_bytes > 0);
        assert_eq!((ex.req_start_ns, ex.req_end_ns), (t1, t1));
        assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t2, t3));
        assert_eq!(ex.reset_code, None);
        assert_eq!(t.c.role(), Role::Client);
        let s = t.c.stats();
        assert_eq!(
            (s.streams, s.resyncs, s.parse_errors, s.hpack_errors),
            (1, 0, 0, 0)
        );
        // Opening: 4 frames; request HEADERS; response HEADERS and two DATA.
        assert_eq!(s.frames, 8);
        assert_eq!(t.c.buffered_bytes(), 0);
    }

    /// The same conversation cut into two calls per direction at every possible point.
    #[test]
    fn frames_split_at_every_byte() {
        let mut reference = T::new();
        let mut cl = PREFACE.to_vec();
        cl.extend(settings(&[(4, 65535)]));
        let mut req = grpc_req("/pkg.Svc/Get");
        req.push(("sw8", "1-dHJhY2U=-c2Vn-3-c3Zj-aW5z-ZXA=-YWRkcg==".into()));
        let block = reference.cl.block(&as_refs(&req));
        cl.extend(split_block(1, &block, false, 20));
        cl.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]));
        cl.extend(data(1, &grpc_msgs(&[3, 0, 7]), true));
        let mut sv = settings(&[(3, 100)]);
        sv.extend(frame(SETTINGS, ACK, 0, &[]));
        let rb = reference
            .sv
            .block(&[(":status", "200"), ("content-type", "application/grpc")]);
        sv.extend(split_block(1, &rb, false, usize::MAX));
        sv.extend(frame(PING, 0, 0, &[1; 8]));
        sv.extend(data(1, &grpc_msgs(&[4, 9]), false));
        let tb = reference
            .sv
            .block(&[("grpc-status", "0"), ("grpc-message", "ok")]);
        sv.extend(split_block(1, &tb, true, 3));

        let run = |a: usize, b: usize| -> (Vec<H2Exchange>, H2Stats) {
            let mut t = T::with(H2Conn::new(Role::Client, H2Limits::default()));
            t.send(E, &cl[..a]);
            t.send(E, &cl[a..]);
            t.send(I, &sv[..b]);
            t.send(I, &sv[b..]);
            t.close();
            (t.out, t.c.stats().clone())
        };
        let (want, want_stats) = run(0, 0);
        assert_eq!(want.len(), 1);
        let ex = &want[0];
        assert!(ex.complete && !ex.partial && ex.grpc, "{ex:?}");
        assert_eq!((ex.req_messages, ex.resp_messages), (3, 2));
        assert_eq!(ex.grpc_status, Some(0));
        assert_eq!(ex.grpc_message.as_deref(), Some("ok"));
        assert_eq!(ex.path.as_deref(), Some("/pkg.Svc/Get"));
        assert_eq!(
            ex.trace.as_ref().map(|t| t.trace_id.as_str()),
            Some("trace")
        );
        assert_eq!(ex.req_header_bytes, block.len() as u64);
        assert_eq!(ex.resp_header_bytes, (rb.len() + tb.len()) as u64);
        assert_eq!(ex.req_body_bytes, 3 * 5 + 10);
        for a in 0..=cl.len() {
            let (got, stats) = run(a, 0);
            assert_eq!(got.len(), 1, "client split {a}");
            assert_eq!(
                (
                    &got[0].path,
                    got[0].req_messages,
                    got[0].req_body_bytes,
                    &got[0].trace
                ),
                (&ex.path, ex.req_messages, ex.req_body_bytes, &ex.trace),
                "client split {a}"
            );
            assert_eq!(stats.frames, want_stats.frames, "client split {a}");
        }
        for b in 0..=sv.len() {
            let (got, stats) = run(cl.len(), b);
            assert_eq!(got.len(), 1, "server split {b}");
            let g = &got[0];
            assert!(g.complete && !g.partial, "server split {b}: {g:?}");
            assert_eq!(
                (
                    g.status,
                    g.grpc_status,
                    &g.grpc_message,
                    g.resp_messages,
                    g.resp_body_bytes
                ),
                (
                    ex.status,
                    ex.grpc_status,
                    &ex.grpc_message,
                    ex.resp_messages,
                    ex.resp_body_bytes
                ),
                "server split {b}"
            );
            assert_eq!(g.resp_header_bytes, ex.resp_header_bytes);
            assert_eq!(stats, want_stats, "server split {b}");
        }
        // And one byte per call.
        let mut t = T::with(H2Conn::new(Role::Client, H2Limits::default()));
        t.trickle(E, &cl, 1);
        t.trickle(I, &sv, 1);
        assert_eq!(t.out.len(), 1);
        assert_eq!(t.out[0].resp_messages, 2);
        assert_eq!(t.out[0].req_messages, 3);
        assert_eq!(t.out[0].grpc_status, Some(0));
    }

    #[test]
    fn padding_and_priority_are_not_counted() {
        let mut t = T::new();
        let block = t.cl.block(&as_refs(&get("/p")));
        // HEADERS with PADDED and PRIORITY: pad length, dependency + weight, block, padding.
        let mut p = vec![7u8];
        p.extend_from_slice(&[0x80, 0, 0, 0, 16]);
        p.extend_from_slice(&block);
        p.extend_from_slice(&[0; 7]);
        let h = frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, &p);
        t.send(E, &h);
        // Padded DATA: 3 body bytes, 4 padding.
        let mut d = vec![4u8];
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&[0; 4]);
        t.send(E, &frame(DATA, END_STREAM | PADDED, 1, &d));
        let rb = t.sv.block(&[(":status", "204")]);
        let mut rp = vec![2u8];
        rp.extend_from_slice(&rb);
        rp.extend_from_slice(&[0, 0]);
        let mut r = frame(HEADERS, END_HEADERS | PADDED, 1, &rp);
        // Padding only: no body.
        r.extend(frame(DATA, END_STREAM | PADDED, 1, &[5, 0, 0, 0, 0, 0]));
        t.trickle(I, &r, 2);
        let ex = t.only();
        assert_eq!(ex.path.as_deref(), Some("/p"));
        assert_eq!(ex.status, Some(204));
        assert_eq!(ex.req_header_bytes, block.len() as u64);
        assert_eq!(ex.resp_header_bytes, rb.len() as u64);
        assert_eq!((ex.req_body_bytes, ex.resp_body_bytes), (3, 0));
        assert!(ex.complete && !ex.partial);
        // A padded frame whose padding length was not captured: counted, marked.
        let r = t.req(3, &get("/q"), true);
        t.send(E, &r);
        let r = t.resp(3, &[(":status", "200")], false);
        let mut s = r.clone();
        s.extend(frame(DATA, END_STREAM | PADDED, 3, &[2, b'a', b'b', 0, 0]));
        t.send_len(I, &s[..s.len() - 5], s.len() as u64);
        let ex = &t.out[1];
        assert!(ex.complete && ex.partial && ex.notes == ["padding_unknown"]);
        assert_eq!(ex.resp_body_bytes, 4);
        // Padding longer than the payload breaks the frame: sync is lost, not a panic.
        t.send(E, &frame(DATA, PADDED, 1, &[9, 1, 2]));
        assert_eq!(t.c.stats().parse_errors, 1);
        assert_eq!(t.c.stats().resyncs, 1);
    }

    #[test]
    fn continuation_over_many_frames_and_calls() {
        let mut t = T::new();
        let mut h = get("/long");
        let big = "v".repeat(300);
        h.push(("x-big", big.clone()));
        h.push((
            "b3",
            "463ac35c9f6413ad48485a3953bb6124-0020000000000001-1".into(),
        ));
        let block = t.cl.block(&as_refs(&h));
        let frames = split_block(3, &block, true, 7);
        assert!(frames.len() > 40 * 9);
        t.trickle(E, &frames, 5);
        // Several frames per call.
        let mut r = t.resp(3, &[(":status", "200")], false);
        r.extend(data(3, b"x", false));
        r.extend(data(3, b"yz", true));
        t.send(I, &r);
        let ex = t.only();
        assert_eq!(ex.stream_id, 3);
        assert_eq!(ex.path.as_deref(), Some("/long"));
        assert_eq!(ex.req_header_bytes, block.len() as u64);
        assert_eq!(ex.resp_body_bytes, 3);
        let tr = ex.trace.as_ref().unwrap();
        assert_eq!(tr.provider, "zipkin");
        assert_eq!(tr.trace_id, "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(tr.span_id.as_deref(), Some("0020000000000001"));
        assert!(ex.complete && !ex.partial);
        // CONTINUATION interrupted by another frame is a protocol error: resync.
        let b = t.cl.block(&as_refs(&get("/x")));
        let mut bad = split_block(5, &b, true, 4);
        bad.truncate(9 + 4);
        bad.extend(data(5, b"zz", true));
        t.send(E, &bad);
        assert_eq!(t.c.stats().parse_errors, 1);
    }

    #[test]
    fn control_frames_and_unknown_types_are_skipped() {
        let mut t = T::new();
        let mut c = t.req(1, &get("/c"), true);
        c.extend(frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 9]));
        c.extend(frame(PING, 0, 0, &[7; 8]));
        c.extend(frame(0x10, 0, 1, &[0, 0, 1, 2, 3])); // PRIORITY_UPDATE
        c.extend(frame(0xfa, 0xff, 0, b"extension payload"));
        c.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 1, 0, 0]));
        t.send(E, &c);
        let mut s = frame(PING, ACK, 0, &[7; 8]);
        s.extend(settings(&[(1, 8192), (5, 32768)]));
        s.extend(t.resp(1, &[(":status", "404")], true));
        s.extend(frame(SETTINGS, ACK, 0, &[]));
        t.send(I, &s);
        let ex = t.only();
        assert_eq!(ex.status, Some(404));
        assert!(ex.complete && !ex.partial);
        assert_eq!(t.c.stats().parse_errors, 0);
        // The client's frames may now be 32 KiB; the server's still 16 KiB.
        assert_eq!(t.c.dirs[di(I)].max_frame, DEFAULT_MAX_FRAME);
        assert_eq!(t.c.dirs[di(E)].max_frame, 32768);
        assert_eq!(t.c.dirs[di(E)].hpack.announced, 8192);
    }

    #[test]
    fn rst_stream_completes_with_code() {
        let mut t = T::new();
        let r = t.req(1, &grpc_req("/a.B/C"), false);
        t.send(E, &r);
        t.send(E, &data(1, &grpc_msgs(&[2]), false));
        let tr = t.send(I, &frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
        let ex = t.only();
        assert_eq!(ex.reset_code, Some(8));
        assert!(ex.complete);
        assert_eq!(ex.status, None);
        assert_eq!(ex.req_messages, 1);
        assert_eq!(ex.resp_end_ns, 0);
        assert!(ex.req_end_ns < tr);
        assert_eq!(t.c.stats().rst_streams, 1);
        // Late frames of the reset stream are ignored.
        t.send(E, &data(1, b"late", true));
        t.close();
        assert_eq!(t.out.len(), 1);
    }

    #[test]
    fn goaway_closes_streams_above_last_id() {
        let mut t = T::new();
        for id in [1, 3, 5] {
            let r = t.req(id, &get("/g"), true);
            t.send(E, &r);
        }
        let mut g = 1u32.to_be_bytes().to_vec();
        g.extend_from_slice(&0u32.to_be_bytes());
        g.extend_from_slice(b"bye");
        t.send(I, &frame(GOAWAY, 0, 0, &g));
        assert_eq!(t.out.len(), 2);
        assert!(t
            .out
            .iter()
            .all(|e| !e.complete && e.notes == ["goaway_not_processed"]));
        assert_eq!(
            t.out.iter().map(|e| e.stream_id).collect::<Vec<_>>(),
            vec![3, 5]
        );
        let r = t.resp(1, &[(":status", "200")], true);
        t.send(I, &r);
        assert_eq!(t.out.len(), 3);
        assert!(t.out[2].complete && t.out[2].stream_id == 1);
        assert_eq!(t.c.stats().goaways, 1);
        // A client's GOAWAY says nothing about client streams.
        let r = t.req(7, &get("/g"), true);
        t.send(E, &r);
        t.send(E, &frame(GOAWAY, 0, 0, &[0; 8]));
        assert_eq!(t.out.len(), 3);
        assert_eq!(t.c.open_streams(), 1);
    }

    #[test]
    fn push_promise_keeps_hpack_in_sync_and_pushed_streams_are_ignored() {
        let mut t = T::new();
        let r = t.req(1, &get("/index"), true);
        t.send(E, &r);
        let pb = t.sv.block(&[
            (":method", "GET"),
            (":path", "/style.css"),
            ("grpc-message", "pushed"),
        ]);
        let mut pp = 2u32.to_be_bytes().to_vec();
        pp.extend_from_slice(&pb[..4]);
        let mut s = frame(PUSH_PROMISE, 0, 1, &pp);
        s.extend(frame(CONTINUATION, END_HEADERS, 1, &pb[4..]));
        // The response refers to the entry the promise added to the table.
        let rb =
            t.sv.block(&[(":status", "200"), ("grpc-message", "pushed")]);
        assert!(rb.len() <= 3, "expected indexed references: {rb:?}");
        s.extend(split_block(1, &rb, false, 100));
        s.extend(t.resp(
            2,
            &[(":status", "200"), ("content-type", "text/css")],
            false,
        ));
        s.extend(data(2, b"body{}", true));
        s.extend(data(1, b"<html>", true));
        t.send(I, &s);
        let ex = t.only();
        assert_eq!(ex.stream_id, 1);
        assert_eq!(ex.grpc_message.as_deref(), Some("pushed"));
        assert_eq!(ex.resp_body_bytes, 6);
        assert!(ex.complete && !ex.partial);
        let st = t.c.stats();
        assert_eq!(
            (st.push_promises_ignored, st.hpack_errors, st.streams),
            (1, 0, 1)
        );
    }

    #[test]
    fn dynamic_table_size_updates() {
        let mut t = T::new();
        // Insert an entry, then shrink the table to 0 (evicting it) and grow it back.
        let mut b1 = vec![0x40, 5];
        b1.extend_from_slice(b"x-one");
        b1.extend_from_slice(&[1, b'1']);
        b1.extend(t.cl.block(&as_refs(&get("/1"))));
        t.send(E, &split_block(1, &b1, true, usize::MAX));
        let mut b2 = vec![0x20, 0x3f, 0xe1, 0x1f]; // size 0, then 4096
        b2.extend_from_slice(&[0x82, 0x86, 0x84]); // GET http /
        b2.extend_from_slice(&[0x40, 3, b'x', b'-', b'2', 1, b'2']);
        t.send(E, &split_block(3, &b2, true, usize::MAX));
        // Index 62 is now x-2; 63 does not exist any more.
        let b3 = [0x82, 0x86, 0x84, 0xbe];
        t.send(E, &split_block(5, &b3, true, usize::MAX));
        assert_eq!(t.c.stats().hpack_errors, 0);
        let b4 = [0x82, 0x86, 0x84, 0xbf];
        t.send(E, &split_block(7, &b4, true, usize::MAX));
        assert_eq!(t.c.stats().hpack_errors, 1);
        assert_eq!(t.c.stats().hpack_downgrades, 1);
        // A table larger than we keep: exact until an entry we dropped could still be there.
        let mut t = T::new();
        let mut b = vec![0x3f, 0xe1, 0xff, 0x7f, 0x82, 0x86, 0x84]; // 2 MiB
        b.extend_from_slice(&[0x40, 3, b'x', b'-', b'a', 1, b'1']);
        t.send(E, &split_block(1, &b, true, usize::MAX));
        for id in [3, 5, 7, 9] {
            let mut b = vec![0x82, 0x86, 0x84, 0xbe];
            for _ in 0..10 {
                b.extend_from_slice(&[0x40, 3, b'x', b'-', b'b', 0x7f, 0xe9, 0x0e]); // 2024 bytes
                b.extend(std::iter::repeat_n(b'v', 2024));
            }
            t.send(E, &split_block(id, &b, true, 16_000));
            // 62 is x-a only in the first of them.
            assert_eq!(t.c.stats().hpack_errors, 0);
            let downgraded = t.c.stats().hpack_downgrades;
            assert_eq!(downgraded, u64::from(id == 9), "stream {id}");
        }
        let st = t.c.stats();
        assert_eq!(
            (st.header_blocks_cut, st.hpack_fields_unknown, st.resyncs),
            (0, 0, 0)
        );
        assert!(t.c.dirs[di(E)].hpack.size <= TABLE_SIZE_CAP);
    }

    #[test]
    fn hpack_error_turns_tolerant_and_marks_the_stream() {
        let mut t = T::new();
        let r = t.req(1, &get("/a"), true);
        t.send(E, &r);
        // Index 70 does not exist: the response block cannot be decoded.
        let mut s = split_block(1, &[0x88, 0xc6], false, usize::MAX);
        s.extend(data(1, b"ok", true));
        t.send(I, &s);
        let ex = t.only();
        assert!(ex.complete && ex.partial);
        assert!(ex.notes.contains(&"hpack_error"), "{:?}", ex.notes);
        // Fields decoded before the error are kept.
        assert_eq!(ex.status, Some(200));
        let st = t.c.stats();
        assert_eq!((st.hpack_errors, st.hpack_downgrades), (1, 1));
        // Later blocks still decode static and literal fields.
        t.out.clear();
        let r = t.req(3, &get("/b"), true);
        t.send(E, &r);
        let mut lit = vec![0x88, 0x0f, 0x10, 16]; // content-type, without indexing
        lit.extend_from_slice(b"application/json");
        t.send(I, &split_block(3, &lit, true, usize::MAX));
        let ex = t.only();
        assert_eq!(ex.status, Some(200));
        assert!(ex.complete && !ex.partial, "{ex:?}");
    }

    #[test]
    fn interim_responses_are_ignored() {
        let mut t = T::new();
        let mut h = get("/up");
        h[0].1 = "PUT".into();
        h.push(("expect", "100-continue".into()));
        let r = t.req(1, &h, false);
        t.send(E, &r);
        let r = t.resp(1, &[(":status", "100")], false);
        t.send(I, &r);
        t.send(E, &data(1, b"payload", true));
        let r = t.resp(1, &[(":status", "103"), ("link", "</a>")], false);
        t.send(I, &r);
        let r = t.resp(1, &[(":status", "201")], false);
        let t3 = t.send(I, &r);
        let t4 = t.send(I, &data(1, b"", true));
        let ex = t.only();
        assert_eq!(ex.status, Some(201));
        assert_eq!(ex.method.as_deref(), Some("PUT"));
        assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t3, t4));
        assert_eq!(ex.req_body_bytes, 7);
        assert!(ex.complete && !ex.partial);
    }

    #[test]
    fn hundred_interleaved_streams() {
        let mut t = T::new();
        let ids: Vec<u32> = (0..100).map(|k| 2 * k + 1).collect();
        let mut c = Vec::new();
        for &id in &ids {
            let mut h = grpc_req(&format!("/svc.S/M{id}"));
            h.push(("x-id", id.to_string()));
            c.extend(t.req(id, &h, false));
        }
        // Request bodies interleaved, three messages each across frames.
        for k in 0..3 {
            for &id in &ids {
                let m = grpc_msgs(&[id as usize % 13 + k]);
                c.extend(data(id, &m[..2], false));
                c.extend(data(id, &m[2..], k == 2));
            }
        }
        t.trickle(E, &c, 1000);
        let mut rng = XorShift(7);
        let mut order = ids.clone();
        rng.shuffle(&mut order);
        let mut s = Vec::new();
        for &id in &order {
            s.extend(t.resp(
                id,
                &[(":status", "200"), ("content-type", "application/grpc")],
                false,
            ));
        }
        rng.shuffle(&mut order);
        for &id in &order {
            for _ in 0..id_msgs(id) {
                s.extend(data(id, &grpc_msgs(&[5]), false));
            }
        }
        rng.shuffle(&mut order);
        for &id in &order {
            let status = (id % 17).to_string();
            s.extend(t.resp(id, &[("grpc-status", &status)], true));
        }
        t.trickle(I, &s, 777);
        assert_eq!(t.out.len(), 100);
        let mut seen: Vec<u32> = t.out.iter().map(|e| e.stream_id).collect();
        seen.sort_unstable();
        assert_eq!(seen, ids);
        for ex in &t.out {
            let id = ex.stream_id;
            assert!(ex.complete && !ex.partial && ex.grpc, "{ex:?}");
            assert_eq!(ex.path, Some(format!("/svc.S/M{id}")));
            assert_eq!(ex.req_messages, 3);
            assert_eq!(ex.resp_messages, id_msgs(id));
            assert_eq!(ex.resp_body_bytes, 10 * id_msgs(id));
            assert_eq!(ex.grpc_status, Some(id % 17));
            assert_eq!(ex.status, Some(200));
        }
        assert_eq!(t.c.stats().streams, 100);
    }

    fn id_msgs(id: u32) -> u64 {
        u64::from(id % 4)
    }

    #[test]
    fn grpc_unary_and_trailers_only() {
        let mut t = T::new();
        let mut c = t.req(1, &grpc_req("/helloworld.Greeter/SayHello"), false);
        c.extend(data(1, &grpc_msgs(&[12]), true));
        let t1 = t.send(E, &c);
        let mut s = t.resp(
            1,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        s.extend(data(1, &grpc_msgs(&[30]), false));
        t.send(I, &s);
        let r = t.resp(1, &[("grpc-status", "0")], true);
        let t3 = t.send(I, &r);
        let ex = &t.out[0];
        assert!(ex.grpc && ex.complete && !ex.partial && !ex.trailers_only);
        assert_eq!(ex.content_type.as_deref(), Some("application/grpc"));
        assert_eq!((ex.req_messages, ex.resp_messages), (1, 1));
        assert_eq!((ex.req_body_bytes, ex.resp_body_bytes), (17, 35));
        assert_eq!(ex.grpc_status, Some(0));
        assert_eq!(
            (ex.req_start_ns, ex.req_end_ns, ex.resp_end_ns),
            (t1, t1, t3)
        );
        // Trailers-only: an error without a body.
        let mut c = t.req(3, &grpc_req("/helloworld.Greeter/Nope"), false);
        c.extend(data(3, &grpc_msgs(&[1]), true));
        t.send(E, &c);
        let r = t.resp(
            3,
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "12"),
                (
                    "grpc-message",
                    "unknown method %22Nope%22: 100%25 caf%C3%A9 %zz",
                ),
            ],
            true,
        );
        t.send(I, &r);
        let ex = &t.out[1];
        assert!(ex.trailers_only && ex.complete && !ex.partial);
        assert_eq!(ex.grpc_status, Some(12));
        assert_eq!(
            ex.grpc_message.as_deref(),
            Some("unknown method \"Nope\": 100% café %zz")
        );
        assert_eq!(ex.resp_messages, 0);
        assert_eq!(ex.status, Some(200));
    }

    #[test]
    fn grpc_streaming_kinds() {
        let mut t = T::new();
        // Server streaming: many messages, frames cutting through prefixes, tiny calls.
        let c = [
            t.req(1, &grpc_req("/s.S/Server"), false),
            data(1, &grpc_msgs(&[4]), true),
        ]
        .concat();
        t.send(E, &c);
        let sizes: Vec<usize> = (0..50).map(|k| k * 7 % 23).collect();
        let body = grpc_msgs(&sizes);
        let mut s = t.resp(
            1,
            &[
                (":status", "200"),
                ("content-type", "application/grpc+proto"),
            ],
            false,
        );
        for piece in body.chunks(7) {
            s.extend(data(1, piece, false));
        }
        s.extend(t.resp(1, &[("grpc-status", "0")], true));
        t.trickle(I, &s, 3);
        let ex = &t.out[0];
        assert_eq!((ex.req_messages, ex.resp_messages), (1, 50));
        assert_eq!(ex.resp_body_bytes, body.len() as u64);
        assert!(ex.complete && !ex.partial, "{ex:?}");
        // Client streaming: END_STREAM on an empty DATA frame.
        let mut c = t.req(3, &grpc_req("/s.S/Client"), false);
        for k in 0..20 {
            c.extend(data(3, &grpc_msgs(&[k, 1]), false));
        }
        c.extend(data(3, b"", true));
        t.trickle(E, &c, 11);
        let mut s = t.resp(
            3,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        s.extend(data(3, &grpc_msgs(&[8]), false));
        s.extend(t.resp(3, &[("grpc-status", "0")], true));
        t.send(I, &s);
        let ex = &t.out[1];
        assert_eq!((ex.req_messages, ex.resp_messages), (40, 1));
        // Bidi: both sides interleaved.
        let r = t.req(5, &grpc_req("/s.S/Bidi"), false);
        t.send(E, &r);
        let r = t.resp(
            5,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        t.send(I, &r);
        for k in 0..10 {
            t.send(E, &data(5, &grpc_msgs(&[k]), k == 9));
            t.send(I, &data(5, &grpc_msgs(&[k, k]), false));
        }
        let r = t.resp(5, &[("grpc-status", "0")], true);
        t.send(I, &r);
        let ex = &t.out[2];
        assert_eq!((ex.req_messages, ex.resp_messages), (10, 20));
        assert!(ex.complete && !ex.partial);
    }

    #[test]
    fn grpc_framing_with_uncaptured_body() {
        let mut t = T::new();
        let c = [
            t.req(1, &grpc_req("/s.S/Big"), false),
            data(1, &grpc_msgs(&[1]), true),
        ]
        .concat();
        t.send(E, &c);
        let h = t.resp(
            1,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        t.send(I, &h);
        // One 10000-byte message in a frame cut at 4096 bytes: the lost bytes are inside the
        // message, counting goes on.
        let big = data(1, &grpc_msgs(&[10_000]), false);
        t.send_len(I, &big[..4096], big.len() as u64);
        let tr = t.resp(1, &[("grpc-status", "0")], true);
        t.send(I, &tr);
        let ex = &t.out[0];
        assert_eq!(ex.resp_messages, 1);
        assert_eq!(ex.resp_body_bytes, 10_005);
        assert!(ex.complete && !ex.partial, "{ex:?}");
        assert_eq!(t.c.stats().resyncs, 0);
        // Three messages in a frame cut at 4096: the third prefix is not seen.
        let c = [
            t.req(3, &grpc_req("/s.S/Big"), false),
            data(3, &grpc_msgs(&[1]), true),
        ]
        .concat();
        t.send(E, &c);
        let mut s = t.resp(
            3,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        s.extend(data(3, &grpc_msgs(&[3000, 3000, 3000]), false));
        let cut = s.len() - 9015 + 4096;
        t.send_len(I, &s[..cut], s.len() as u64);
        let tr = t.resp(3, &[("grpc-status", "0")], true);
        t.send(I, &tr);
        let ex = &t.out[1];
        assert!(ex.complete && ex.partial);
        assert_eq!(ex.notes, ["grpc_framing_lost"]);
        assert_eq!(ex.resp_body_bytes, 9015);
        assert_eq!(ex.grpc_status, Some(0));
    }

    #[test]
    fn uncaptured_tail_resyncs_at_next_call() {
        let mut t = T::new();
        let mut c = t.req(1, &grpc_req("/s.S/A"), false);
        c.extend(data(1, &grpc_msgs(&[1]), true));
        c.extend(t.req(3, &grpc_req("/s.S/A"), false));
        c.extend(data(3, &grpc_msgs(&[1]), true));
        t.send(E, &c);
        // One big write: headers, 8000 bytes of DATA, trailers; only 4096 bytes captured.
        let mut s = t.resp(
            1,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        s.extend(data(1, &grpc_msgs(&[3000]), false));
        s.extend(data(1, &grpc_msgs(&[5000]), false));
        s.extend(t.resp(1, &[("grpc-status", "0")], true));
        t.send_len(I, &s[..4096], s.len() as u64);
        assert_eq!(t.c.stats().resyncs, 1);
        assert!(t.c.stats().bytes_skipped > 0);
        assert!(t.out.is_empty());
        // A call that starts mid-frame is refused; the next one starts at a frame.
        t.send(I, &[0x42; 100]);
        let mut s = t.resp(
            3,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        s.extend(data(3, &grpc_msgs(&[10]), false));
        s.extend(t.resp(3, &[("grpc-status", "0")], true));
        t.send(I, &s);
        let ex = t.only().clone();
        assert_eq!(ex.stream_id, 3);
        assert_eq!(ex.status, Some(200));
        // grpc-status: 0 refers to the table entry added by the lost trailers of stream 1.
        assert!(ex.partial && ex.complete);
        // Its response started after the loss: no frame of it was lost.
        assert_eq!(ex.notes, ["hpack_state_lost"]);
        assert_eq!(ex.grpc_status, None);
        let st = t.c.stats();
        assert_eq!((st.resyncs, st.hpack_downgrades), (1, 1));
        assert_eq!(st.hpack_fields_unknown, 1);
        t.close();
        let ex1 = &t.out[1];
        assert_eq!(ex1.stream_id, 1);
        assert!(!ex1.complete && ex1.partial);
        assert!(
            ex1.notes.contains(&"frames_lost") && ex1.notes.contains(&"closed_before_complete")
        );
        assert!(ex1.notes.contains(&"grpc_framing_lost"));
    }

    #[test]
    fn frame_ending_exactly_at_capture_end_keeps_sync() {
        let mut t = T::new();
        let r = t.req(1, &get("/dl"), true);
        t.send(E, &r);
        let r = t.resp(1, &[(":status", "200")], false);
        t.send(I, &r);
        let d = data(1, &[7; 9000], false);
        t.send_len(I, &d[..4096], d.len() as u64);
        t.send(I, &data(1, b"end", true));
        let ex = t.only();
        assert_eq!(ex.resp_body_bytes, 9003);
        assert!(ex.complete && !ex.partial);
        assert_eq!(t.c.stats().resyncs, 0);
        // Uncaptured bytes inside a header block: decoded as far as captured, then tolerant.
        let mut h = get("/cut");
        h.push(("x-pad", "p".repeat(200)));
        let r = t.req(3, &h, true);
        t.send_len(E, &r[..60], r.len() as u64);
        let r = t.resp(3, &[(":status", "200")], true);
        t.send(I, &r);
        let ex = &t.out[1];
        assert_eq!(ex.path.as_deref(), Some("/cut"));
        assert!(ex.complete && ex.partial);
        assert!(ex.notes.contains(&"header_block_cut"));
        assert_eq!(t.c.stats().header_blocks_cut, 1);
        assert_eq!(t.c.stats().hpack_downgrades, 1);
    }

    #[test]
    fn midstream_join_decodes_what_hpack_allows() {
        let mut cl = Peer::new();
        let mut sv = Peer::new();
        // Before we joined: table entries we never see.
        let _ = cl.block(&[("x-old", "1"), ("grpc-timeout", "5S")]);
        let _ = sv.block(&[("x-a", "1"), ("x-b", "2")]);
        let mut t = T::with(H2Conn::new_midstream(Role::Server, H2Limits::default()));
        t.cl = cl;
        t.sv = sv;
        // The first calls start mid-frame: skipped.
        t.send(I, b"\x00\x01garbage that is not a frame");
        assert_eq!(t.c.stats().bytes_skipped, 29);
        // A stream that started before we joined: only its response is seen (server: Egress).
        let mut s = t.resp(
            1,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        s.extend(data(1, &grpc_msgs(&[4]), false));
        s.extend(t.resp(1, &[("grpc-status", "0")], true));
        let t1 = t.send(E, &s);
        let ex = t.only().clone();
        assert_eq!(
            (ex.stream_id, ex.method.as_deref(), ex.path.as_deref()),
            (1, None, None)
        );
        assert!(ex.complete && ex.partial && ex.grpc);
        assert!(ex.notes.contains(&"request_unseen"), "{:?}", ex.notes);
        assert_eq!(ex.grpc_status, Some(0));
        assert_eq!(ex.resp_messages, 1);
        assert_eq!(ex.resp_end_ns, t1);
        // A new stream: static and literal fields decode, the old entry does not.
        let r = t.req(
            3,
            &[
                (":method", "POST".into()),
                (":path", "/n.S/M".into()),
                ("x-old", "1".into()),
            ],
            true,
        );
        t.send(I, &r);
        // grpc-status: 0 is now a known entry in front of the two unknown ones.
        let r = t.resp(
            3,
            &[(":status", "200"), ("grpc-status", "0"), ("x-a", "1")],
            true,
        );
        t.send(E, &r);
        let ex = &t.out[1];
        assert_eq!(ex.method.as_deref(), Some("POST"));
        assert_eq!(ex.path.as_deref(), Some("/n.S/M"));
        assert_eq!(ex.grpc_status, Some(0));
        assert!(ex.partial && ex.notes == ["hpack_state_lost"], "{ex:?}");
        assert_eq!(t.c.stats().hpack_fields_unknown, 2);
        assert_eq!(t.c.stats().hpack_errors, 0);
        // A late frame of the finished pre-join stream does not revive it.
        t.send(E, &data(1, b"x", true));
        t.close();
        assert_eq!(t.out.len(), 2);
        assert_eq!(t.c.role(), Role::Server);
    }

    #[test]
    fn midstream_role_learned_from_pseudo_headers() {
        let mut t = T::with(H2Conn::new_midstream(Role::Unknown, H2Limits::default()));
        let r = t.req(9, &get("/x"), true);
        t.send(E, &r);
        let r = t.resp(9, &[(":status", "302")], true);
        t.send(I, &r);
        assert_eq!(t.c.role(), Role::Client);
        let ex = t.only();
        assert_eq!((ex.method.as_deref(), ex.status), (Some("GET"), Some(302)));
        assert!(ex.complete && !ex.partial);
    }

    #[test]
    fn unknown_role_learned_from_preface() {
        let mut t = T::with(H2Conn::new(Role::Unknown, H2Limits::default()));
        t.send(E, &settings(&[]));
        let mut c = PREFACE.to_vec();
        c.extend(settings(&[]));
        c.extend(t.req(1, &get("/u"), true));
        t.send(I, &c);
        assert_eq!(t.c.role(), Role::Server);
        let r = t.resp(1, &[(":status", "200")], true);
        t.send(E, &r);
        let ex = t.only();
        assert_eq!(ex.path.as_deref(), Some("/u"));
        assert!(ex.complete);
    }

    #[test]
    fn gap_turns_hpack_tolerant_and_marks_streams() {
        let mut t = T::new();
        let r = t.req(1, &get("/one"), true);
        t.send(E, &r);
        let r = t.req(3, &get("/three"), true);
        t.send(E, &r);
        let r = t.resp(1, &[(":status", "200")], false);
        t.send(I, &r);
        t.c.gap(I);
        assert_eq!(t.c.stats().resyncs, 1);
        assert_eq!(t.c.stats().hpack_downgrades, 1);
        // Stream 3's response starts after the gap: it is whole.
        let mut s = t.resp(3, &[(":status", "200")], false);
        s.extend(data(3, b"three", true));
        t.send(I, &s);
        let ex = t.only();
        assert_eq!(ex.stream_id, 3);
        assert!(ex.complete && !ex.partial, "{ex:?}");
        t.close();
        let ex = &t.out[1];
        assert_eq!(ex.stream_id, 1);
        assert!(!ex.complete && ex.partial);
        assert_eq!(ex.notes, ["gap", "closed_before_complete"]);
    }

    #[test]
    fn gap_in_middle_of_header_block() {
        let mut t = T::new();
        let r = t.req(1, &get("/before"), false);
        t.send(E, &r[..r.len() - 3]);
        t.c.gap(E);
        let r = t.req(3, &get("/after"), true);
        t.send(E, &r);
        t.close();
        assert_eq!(t.out.len(), 2);
        let ex1 = &t.out[0];
        assert_eq!(ex1.stream_id, 1);
        assert!(ex1.notes.contains(&"header_block_cut"));
        let ex3 = &t.out[1];
        assert_eq!(ex3.stream_id, 3);
        assert_eq!(ex3.method.as_deref(), Some("GET"));
    }

    #[test]
    fn close_reports_open_streams() {
        let mut t = T::new();
        let r = t.req(1, &get("/slow"), true);
        t.send(E, &r);
        let r = t.resp(1, &[(":status", "200")], false);
        let t2 = t.send(I, &r);
        t.send(I, &data(1, b"part", false));
        t.close();
        let ex = t.only();
        assert!(!ex.complete && !ex.partial);
        assert_eq!(ex.notes, ["closed_before_complete"]);
        assert_eq!(ex.status, Some(200));
        assert_eq!(ex.resp_start_ns, t2);
        assert_eq!(ex.resp_body_bytes, 4);
        // Nothing after close.
        t.send(E, &data(1, b"x", true));
        t.close();
        assert_eq!(t.out.len(), 1);
    }

    #[test]
    fn stream_cap_and_header_block_cap() {
        let mut t = T::limits(H2Limits {
            max_streams: 2,
            ..H2Limits::default()
        });
        for id in [1, 3, 5] {
            let r = t.req(id, &get("/s"), true);
            t.send(E, &r);
        }
        assert_eq!(t.c.stats().streams_cut, 1);
        assert_eq!(t.c.open_streams(), 2);
        for id in [5, 3, 1] {
            let r = t.resp(id, &[(":status", "200")], true);
            t.send(I, &r);
        }
        assert_eq!(
            t.out.iter().map(|e| e.stream_id).collect::<Vec<_>>(),
            vec![3, 1]
        );

        let mut t = T::limits(H2Limits {
            max_header_block: 64,
            ..H2Limits::default()
        });
        let mut h = get("/big");
        h.push(("x-big", "b".repeat(500)));
        let r = t.req(1, &h, true);
        t.trickle(E, &r, 50);
        assert!(t.c.frame_bytes() <= 64);
        let r = t.resp(1, &[(":status", "200")], true);
        t.send(I, &r);
        let ex = &t.out[0];
        assert_eq!(ex.path.as_deref(), Some("/big"));
        assert!(ex.req_header_bytes > 500);
        assert!(ex.partial && ex.notes.contains(&"header_block_cut"));
        let st = t.c.stats();
        assert_eq!((st.header_blocks_cut, st.hpack_downgrades), (1, 1));
        // The next request still decodes its literal fields.
        let r = t.req(3, &get("/next"), true);
        t.send(E, &r);
        let r = t.resp(3, &[(":status", "200")], true);
        t.send(I, &r);
        assert_eq!(t.out[1].path.as_deref(), Some("/next"));
    }

    #[test]
    fn data_is_never_buffered() {
        let mut t = T::new();
        let r = t.req(1, &get("/big"), true);
        // The client accepts frames of up to 1 MiB.
        t.send(E, &[settings(&[(5, 1 << 20)]), r].concat());
        let r = t.resp(1, &[(":status", "200")], false);
        t.send(I, &r);
        let d = data(1, &vec![1u8; 200_000], true);
        for c in d.chunks(997) {
            t.send(I, c);
            assert!(t.c.frame_bytes() <= FRAME_HEADER);
        }
        assert_eq!(t.only().resp_body_bytes, 200_000);
    }

    #[test]
    fn h2c_upgrade_stream_one() {
        let c = H2Conn::after_h2c_upgrade(
            Role::Server,
            H2Limits::default(),
            "GET".into(),
            "/up".into(),
            Some("h.local".into()),
            500,
            80,
        );
        let mut t = T::with(c);
        let mut c = PREFACE.to_vec();
        c.extend(settings(&[]));
        t.send(I, &c);
        let mut s = settings(&[]);
        s.extend(t.resp(
            1,
            &[(":status", "200"), ("content-type", "text/plain")],
            false,
        ));
        s.extend(data(1, b"upgraded", true));
        let t2 = t.send(E, &s);
        let ex = t.only();
        assert_eq!(ex.method.as_deref(), Some("GET"));
        assert_eq!(ex.path.as_deref(), Some("/up"));
        assert_eq!(ex.authority.as_deref(), Some("h.local"));
        assert_eq!((ex.req_start_ns, ex.req_header_bytes), (500, 80));
        assert_eq!(
            (ex.status, ex.resp_body_bytes, ex.resp_end_ns),
            (Some(200), 8, t2)
        );
        assert!(ex.complete && !ex.partial, "{ex:?}");
        // Unknown role: the response side is the one with frames.
        let c = H2Conn::after_h2c_upgrade(
            Role::Unknown,
            H2Limits::default(),
            "GET".into(),
            "/".into(),
            None,
            1,
            10,
        );
        let mut t = T::with(c);
        let s = [settings(&[]), data(1, b"x", true)].concat();
        t.send(I, &s);
        assert_eq!(t.only().resp_body_bytes, 1);
    }

    #[test]
    fn sw8_trace_context() {
        let mut t = T::new();
        let mut h = get("/t");
        // trace "abc", segment "seg", span 5, service "svc", instance "i", endpoint "/e", peer "p:1"
        h.push(("sw8", "1-YWJj-c2Vn-5-c3Zj-aQ==-L2U=-cDox".into()));
        let r = t.req(1, &h, true);
        t.send(E, &r);
        let r = t.resp(1, &[(":status", "200")], true);
        t.send(I, &r);
        let tr = t.only().trace.clone().unwrap();
        assert_eq!(tr.provider, "skywalking");
        assert_eq!(tr.trace_id, "abc");
        assert_eq!(tr.segment_id.as_deref(), Some("seg"));
        assert_eq!(tr.span_id.as_deref(), Some("5"));
        assert_eq!(tr.parent_service.as_deref(), Some("svc"));
    }

    #[test]
    fn expire_lost_reports_stale_suspects() {
        let mut t = T::new();
        let r = t.req(1, &get("/z"), true);
        t.send(E, &r);
        let r = t.resp(1, &[(":status", "200")], false);
        t.send(I, &r);
        let mut s = data(1, &[0; 5000], false);
        s.extend(data(1, b"", true));
        t.send_len(I, &s[..100], s.len() as u64);
        let mut out = Vec::new();
        t.c.expire_lost(t.ts + 10, 1_000, &mut out);
        assert!(out.is_empty());
        t.c.expire_lost(t.ts + 2_000, 1_000, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].notes.contains(&"expired_after_loss"));
    }

    #[test]
    fn tolerant_decoder_rules() {
        let mut tol = Hpack::lost();
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut decode = |tol: &mut Hpack, b: &[u8], trunc: bool| {
            fields.clear();
            let mut f = Vec::new();
            let o = tol.decode(b, trunc, &mut |n, v| {
                f.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ))
            });
            (o, f)
        };
        // RFC 7541 C.4.1: Huffman-coded request.
        let c41 = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let (o, f) = decode(&mut tol, &c41, false);
        assert_eq!((o.unknown, o.error), (0, false));
        assert_eq!(f[3], (":authority".into(), "www.example.com".into()));
        // 62 is the entry just added; 63 may be an older unknown one.
        let (o, f) = decode(&mut tol, &[0xbe, 0xbf], false);
        assert_eq!((o.unknown, o.error), (1, false));
        assert_eq!(f, vec![(":authority".into(), "www.example.com".into())]);
        // A literal naming an unknown entry: name unknown, inserted as such.
        let (o, _) = decode(&mut tol, &[0x7f, 0x02, 1, b'v'], false);
        assert_eq!(o.unknown, 1);
        let (o, f) = decode(&mut tol, &[0xbf], false);
        assert_eq!((o.unknown, f.len()), (0, 1));
        // A size update to 0 empties the table for sure: nothing is unknown any more.
        let (o, _) = decode(&mut tol, &[0x20, 0x3f, 0xe1, 0x1f, 0x82], false);
        assert!(!o.error);
        assert!(!tol.tail_unknown && tol.entries.is_empty());
        let (o, _) = decode(&mut tol, &[0xbe], false);
        assert!(o.error);
        // Truncated input: fields before the cut are kept, no error.
        let mut lost = Hpack::lost();
        let (o, f) = decode(&mut lost, &c41[..8], true);
        assert!(!o.error && f.len() == 3);
        let (o, _) = decode(&mut lost, &c41[..8], false);
        assert!(o.error);
        // Eviction under an exact limit keeps the tail known.
        let mut t2 = Hpack::lost();
        let mut b = vec![0x3f, 0x21]; // size 64
        b.extend_from_slice(&[0x40, 1, b'a', 1, b'1', 0x40, 1, b'b', 1, b'2']);
        let (o, _) = decode(&mut t2, &b, false);
        assert!(!o.error);
        assert_eq!(t2.entries.len(), 1);
        assert!(!t2.tail_unknown);
        assert_eq!(integer(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
        assert_eq!(
            integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x01], 5),
            Err(Stop::Malformed)
        );
        assert_eq!(integer(&[0x1f, 0xff], 5), Err(Stop::Truncated));
    }

    /// Huffman-code `s` with our table (tests only).
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let t = &HUFFMAN;
        let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
        for &c in s {
            let len = usize::from(HUFFMAN_LENGTHS[usize::from(c)]);
            let at = (usize::from(t.start[len])..257)
                .find(|&k| t.symbols[k] == u16::from(c))
                .unwrap();
            let code = t.first[len] + (at - usize::from(t.start[len])) as u32;
            acc = acc << len | u64::from(code);
            bits += len as u32;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push((acc << (8 - bits)) as u8 | (0xff >> bits));
        }
        out
    }

    #[test]
    fn huffman_matches_reference_decoder() {
        // RFC 7541 C.4.1.
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(huffman_decode(&www).unwrap(), b"www.example.com");
        assert_eq!(huffman_encode(b"www.example.com"), www);
        assert_eq!(huffman_decode(&[]).unwrap(), b"");
        let mut reference = loona_hpack::huffman::HuffmanDecoder::new();
        let mut rng = XorShift(99);
        for round in 0..3000 {
            let n = rng.below(40) as usize;
            let s: Vec<u8> = if round < 256 {
                vec![round as u8; 3]
            } else {
                (0..n).map(|_| rng.next() as u8).collect()
            };
            let enc = huffman_encode(&s);
            assert_eq!(reference.decode(&enc).unwrap(), s, "{s:?}");
            assert_eq!(huffman_decode(&enc).unwrap(), s);
            // Random bytes: both decoders agree on what is valid.
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            assert_eq!(
                huffman_decode(&junk),
                reference.decode(&junk).ok(),
                "{junk:?}"
            );
        }
        // EOS in the string, padding of 8 bits, padding with a 0 bit.
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xfc]), None);
        assert_eq!(huffman_decode(&[0x07, 0xff]), None);
        assert_eq!(huffman_decode(&[0x06]), None);
    }

    /// Random header blocks using every representation: our decoder, exact, agrees with
    /// loona-hpack's on every field and on what is an error.
    #[test]
    fn hpack_matches_reference_decoder() {
        let mut rng = XorShift(4242);
        let names: [&[u8]; 6] = [
            b":path",
            b"x-a",
            b"grpc-status",
            b"cookie",
            b"x-long",
            b"b3",
        ];
        let mut blocks = 0;
        for _ in 0..80 {
            let mut ours = Hpack::exact();
            let mut theirs = loona_hpack::Decoder::new();
            let mut inserted = 0usize;
            for _ in 0..20 {
                let mut b = Vec::new();
                if rng.below(8) == 0 {
                    // Size update at the block start (at most what we keep).
                    let size = [0, 64, 200, 4096, 65536][rng.below(5) as usize];
                    b.push(0x3f);
                    if size < 31 {
                        b[0] = 0x20 | size as u8;
                    } else {
                        let mut v = size - 31;
                        while v >= 128 {
                            b.push(v as u8 | 0x80);
                            v >>= 7;
                        }
                        b.push(v as u8);
                    }
                }
                for _ in 0..1 + rng.below(6) {
                    let kind = rng.below(5);
                    if kind == 0 {
                        // Indexed, sometimes out of range.
                        let idx = 1 + rng.below(61 + inserted as u64 + 3) as usize;
                        push_int(&mut b, 0x80, 7, idx);
                        continue;
                    }
                    let (flag, prefix) = match kind {
                        1 | 2 => (0x40, 6),
                        3 => (0x00, 4),
                        _ => (0x10, 4),
                    };
                    if flag == 0x40 {
                        inserted += 1;
                    }
                    if rng.below(2) == 0 {
                        let idx = 1 + rng.below(61 + inserted as u64) as usize;
                        push_int(&mut b, flag, prefix, idx);
                    } else {
                        b.push(flag);
                        push_str(&mut b, names[rng.below(6) as usize], rng.below(2) == 0);
                    }
                    let v: Vec<u8> = (0..rng.below(100)).map(|_| rng.next() as u8).collect();
                    push_str(&mut b, &v, rng.below(2) == 0);
                }
                let mut mine = Vec::new();
                let o = ours.decode(&b, false, &mut |n, v| mine.push((n.to_vec(), v.to_vec())));
                let mut refs = Vec::new();
                let r = theirs.decode_with_cb(&b, |n, v| refs.push((n.to_vec(), v.to_vec())));
                assert_eq!(o.error, r.is_err(), "{b:?}");
                assert_eq!(mine, refs);
                assert_eq!(o.unknown, 0);
                blocks += 1;
                if o.error {
                    break;
                }
            }
        }
        assert!(blocks > 400, "{blocks}");
    }

    fn push_int(b: &mut Vec<u8>, flag: u8, prefix: u8, v: usize) {
        let max = (1usize << prefix) - 1;
        if v < max {
            b.push(flag | v as u8);
            return;
        }
        b.push(flag | max as u8);
        let mut v = v - max;
        while v >= 128 {
            b.push(v as u8 | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
    }

    fn push_str(b: &mut Vec<u8>, s: &[u8], huffman: bool) {
        if huffman {
            let h = huffman_encode(s);
            push_int(b, 0x80, 7, h.len());
            b.extend_from_slice(&h);
        } else {
            push_int(b, 0, 7, s.len());
            b.extend_from_slice(s);
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b"), "a b");
        assert_eq!(percent_decode(b"%"), "%");
        assert_eq!(percent_decode(b"%4"), "%4");
        assert_eq!(percent_decode(b"%E2%9C%93 done"), "\u{2713} done");
        assert_eq!(percent_decode(b"%FF"), "\u{fffd}");
    }

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
            self.next() % n.max(1)
        }

        fn shuffle<X>(&mut self, v: &mut [X]) {
            for k in (1..v.len()).rev() {
                let j = self.below(k as u64 + 1) as usize;
                v.swap(k, j);
            }
        }
    }

    /// A plausible conversation: (client bytes, server bytes).
    fn traffic(rng: &mut XorShift) -> (Vec<u8>, Vec<u8>) {
        let mut cl = Peer::new();
        let mut sv = Peer::new();
        let mut c = PREFACE.to_vec();
        c.extend(settings(&[(1, 4096), (4, 65535)]));
        let mut s = settings(&[(3, 100), (5, 32768)]);
        for k in 0..(1 + rng.below(12) as u32) {
            let id = 2 * k + 1;
            let grpc = rng.below(2) == 0;
            let h = if grpc {
                grpc_req("/f.S/M")
            } else {
                get(&format!("/p{}", rng.below(5)))
            };
            let b = cl.block(&as_refs(&h));
            c.extend(split_block(id, &b, !grpc, 1 + rng.below(40) as usize));
            if grpc {
                let n = rng.below(4) as usize;
                let sizes: Vec<usize> = (0..n).map(|_| rng.below(300) as usize).collect();
                c.extend(data(id, &grpc_msgs(&sizes), true));
            }
            if rng.below(5) == 0 {
                s.extend(frame(RST_STREAM, 0, id, &[0, 0, 0, 8]));
                continue;
            }
            let ct = if grpc {
                "application/grpc"
            } else {
                "text/html"
            };
            let b = sv.block(&[(":status", "200"), ("content-type", ct)]);
            s.extend(split_block(id, &b, false, 1 + rng.below(40) as usize));
            s.extend(data(id, &vec![3; rng.below(5000) as usize], !grpc));
            if grpc {
                let b = sv.block(&[("grpc-status", "0")]);
                s.extend(split_block(id, &b, true, 100));
            }
        }
        (c, s)
    }

    /// Random calls: cut traffic, mutated traffic, random bytes, truncated captures, gaps.
    #[test]
    fn random_input_never_panics_and_stays_bounded() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let limits = H2Limits {
            max_streams: 16,
            max_header_block: 512,
            max_buffered: 1024,
            max_retained: 16 * 1024,
        };
        let mut chunks = 0;
        let mut exchanges = 0;
        for round in 0..300 {
            let mut c = match round % 4 {
                0 => H2Conn::new(Role::Client, limits),
                1 => H2Conn::new_midstream(Role::Unknown, limits),
                2 => H2Conn::new(Role::Unknown, limits),
                _ => H2Conn::after_h2c_upgrade(
                    Role::Server,
                    limits,
                    "GET".into(),
                    "/".into(),
                    None,
                    0,
                    0,
                ),
            };
            let (mut cb, mut sb) = traffic(&mut rng);
            let mutate = round % 3 != 0;
            for buf in [&mut cb, &mut sb] {
                if mutate {
                    for _ in 0..rng.below(8) {
                        let at = rng.below(buf.len() as u64) as usize;
                        buf[at] = rng.next() as u8;
                    }
                }
            }
            let mut pos = [0usize, 0usize];
            let mut out = Vec::new();
            let mut ts = 0;
            while pos[0] < cb.len() || pos[1] < sb.len() {
                ts += 1;
                let k = rng.below(2) as usize;
                let buf = if k == 0 { &cb } else { &sb };
                let dir = DIRS[k];
                let roll = rng.below(100);
                if roll < 3 {
                    c.gap(dir);
                    continue;
                }
                let noise: Vec<u8>;
                let (bytes, len) = if roll < 8 {
                    let n = rng.below(64) as usize;
                    noise = (0..n).map(|_| rng.next() as u8).collect();
                    (&noise[..], n as u64 + rng.below(3) * rng.below(100_000))
                } else {
                    let p = pos[k];
                    let n = (1 + rng.below(3000) as usize).min(buf.len() - p);
                    pos[k] += n;
                    let cap = if rng.below(4) == 0 {
                        rng.below(n as u64 + 1) as usize
                    } else {
                        n
                    };
                    (&buf[p..p + cap], n as u64)
                };
                c.feed(
                    &Chunk {
                        dir,
                        start_ns: ts,
                        end_ns: ts,
                        len,
                        data: bytes,
                    },
                    &mut out,
                );
                chunks += 1;
                let tables: usize = c.dirs.iter().map(|d| d.hpack.held()).sum();
                assert!(c.buffered_bytes() - tables - c.kept <= 2 * (limits.max_buffered + 32));
                assert!(c.kept <= limits.max_retained);
                assert!(tables <= 2 * TABLE_SIZE_CAP);
                assert!(c.open_streams() <= limits.max_streams);
            }
            c.close(ts + 1, &mut out);
            assert_eq!(c.open_streams(), 0);
            exchanges += out.len();
            for ex in &out {
                assert!(ex.req_messages < 1000 && ex.resp_messages < 1000);
            }
        }
        assert!(chunks > 3000, "{chunks}");
        assert!(exchanges > 100, "{exchanges}");
        // Pure noise, all connection kinds.
        for round in 0..200 {
            let mut c = if round % 2 == 0 {
                H2Conn::new(Role::Unknown, limits)
            } else {
                H2Conn::new_midstream(Role::Client, limits)
            };
            let mut out = Vec::new();
            for ts in 0..20 {
                let n = rng.below(200) as usize;
                let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                if rng.below(3) == 0 && b.len() >= 9 {
                    // A frame header that claims to be valid.
                    b[..9].copy_from_slice(&frame(rng.below(10) as u8, 0, 1, &[])[..9]);
                    b[2] = rng.next() as u8;
                }
                let len = n as u64 + rng.below(2) * rng.below(1 << 20);
                let ch = Chunk {
                    dir: DIRS[rng.below(2) as usize],
                    start_ns: ts,
                    end_ns: ts,
                    len,
                    data: &b,
                };
                c.feed(&ch, &mut out);
                let tables: usize = c.dirs.iter().map(|d| d.hpack.held()).sum();
                assert!(c.buffered_bytes() - tables - c.kept <= 2 * (limits.max_buffered + 32));
                assert!(c.kept <= limits.max_retained);
                assert!(tables <= 2 * TABLE_SIZE_CAP);
            }
            c.close(100, &mut out);
        }
    }

    /// RFC 7541 §5.1 integer: `flags` in the first byte's high bits.
    fn hint(v: usize, prefix: u8, flags: u8) -> Vec<u8> {
        let max = (1usize << prefix) - 1;
        if v < max {
            return vec![flags | v as u8];
        }
        let mut out = vec![flags | max as u8];
        let mut rest = v - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
        out
    }

    /// A raw (not Huffman-coded) string literal.
    fn hstr(b: &[u8]) -> Vec<u8> {
        let mut out = hint(b.len(), 7, 0);
        out.extend_from_slice(b);
        out
    }

    /// A literal field with a new name, added to the table.
    fn lit_insert(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x40];
        out.extend(hstr(name));
        out.extend(hstr(value));
        out
    }

    /// Preface, SETTINGS with a 64 KiB table for the client's blocks, and a first block
    /// on stream 1 filling the table with the fields a record keeps, 4000 bytes each.
    fn hostile_open(l: H2Limits) -> T {
        let mut t = T::with(H2Conn::new(Role::Client, l));
        let mut c = PREFACE.to_vec();
        c.extend(settings(&[]));
        t.send(E, &c);
        let mut sv = settings(&[(SETTINGS_HEADER_TABLE_SIZE, 65_536)]);
        sv.extend(frame(SETTINGS, ACK, 0, &[]));
        t.send(I, &sv);
        let mut block = hint(65_536, 5, 0x20);
        block.push(0x82); // :method GET
        for name in KEPT {
            block.extend(lit_insert(name.as_bytes(), &[b'v'; 4000]));
        }
        t.send(E, &split_block(1, &block, true, 16_000));
        t
    }

    const KEPT: [&str; 8] = [
        ":path",
        ":authority",
        "user-agent",
        "content-type",
        "sw8",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
    ];

    /// A 21-byte HEADERS frame naming every kept field of the table: before the budget,
    /// each such stream held 2 x 4000 x 8 bytes until it ended.
    fn indexed_request(stream: u32) -> Vec<u8> {
        let mut block = vec![0x82];
        // Oldest entry (`:path`) first: the table lists the newest first, from 62.
        block.extend((0..KEPT.len()).rev().map(|k| 0x80 | (62 + k) as u8));
        frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
    }

    /// Streams that never end, each asking to keep 32 KB of header values from 17 bytes
    /// of indexes, are held to the connection's budget: the stalest are reported early,
    /// marked and counted, and `buffered_bytes` counts what is kept.
    #[test]
    fn shed_reports_open_streams_and_keeps_the_tables() {
        let l = H2Limits::default();
        let mut t = hostile_open(l);
        for k in 1..20u32 {
            t.send(E, &indexed_request(2 * k + 1));
        }
        let before = t.out.len();
        let held = t.c.buffered_bytes();
        let mut out = Vec::new();
        t.c.shed(&mut out);
        assert!(t.out.len() == before && out.len() >= 19, "{}", out.len());
        assert!(out
            .iter()
            .all(|x| !x.complete && x.notes.contains(&"memory_budget")));
        assert_eq!(t.c.stats().streams_evicted_memory, out.len() as u64);
        // Only the header tables (and frame buffers) are left; they still decode.
        assert_eq!(t.c.buffered_bytes(), held_tables(&t.c));
        assert!(t.c.buffered_bytes() < held);
        t.send(E, &indexed_request(101));
        t.close();
        let last = t.out.last().expect("the stream after the shed is reported");
        assert_eq!(last.path.as_ref().map(String::len), Some(4000));
    }

    #[test]
    fn idle_streams_are_held_to_the_memory_budget() {
        let l = H2Limits::default();
        let mut t = hostile_open(l);
        let mut most = 0;
        for k in 1..3000u32 {
            t.send(E, &indexed_request(2 * k + 1));
            most = most.max(t.c.buffered_bytes());
        }
        let slack = 2 * (TABLE_SIZE_CAP + l.max_buffered + l.max_header_block);
        assert!(most <= l.max_retained + slack, "held {most}");
        assert!(most >= l.max_retained / 2, "held only {most}");
        let st = t.c.stats().clone();
        assert!(st.streams_evicted_memory > 1000, "{st:?}");
        let early: Vec<_> = t
            .out
            .iter()
            .filter(|x| x.notes.contains(&"memory_budget"))
            .collect();
        assert_eq!(early.len() as u64, st.streams_evicted_memory);
        for x in &early {
            assert!(!x.complete);
            assert_eq!(x.method.as_deref(), Some("GET"));
            // Each value is kept whole while the head's total allows.
            assert_eq!(x.path.as_ref().map(String::len), Some(4000));
        }
        // A stream's head keeps at most MAX_HEAD_KEPT bytes: the rest is marked.
        assert!(early
            .iter()
            .all(|x| x.partial && x.notes.contains(&"header_value_truncated")));
        t.close();
        assert_eq!(t.c.buffered_bytes() - held_tables(&t.c), 0);
    }

    fn held_tables(c: &H2Conn) -> usize {
        c.dirs.iter().map(|d| d.hpack.held()).sum()
    }

    /// A block repeating one field, and literals reusing a 60 KB name from the table, cost
    /// no more copies than the record keeps; a block with more fields than are looked at
    /// is marked and counted, and the table stays in step after it.
    #[test]
    fn hostile_blocks_do_not_multiply_copies() {
        let mut t = hostile_open(H2Limits::default());
        // 30,000 copies of :path (4000 bytes in the table, the oldest entry), 1 byte each.
        let path_index = 0x80 | (62 + KEPT.len() - 1) as u8;
        let mut block = vec![0x82];
        block.extend(std::iter::repeat_n(path_index, 30_000));
        t.send(E, &split_block(3, &block, true, 16_000));
        let r = t.resp(3, &[(":status", "200")], true);
        t.send(I, &r);
        let x = t.out.last().unwrap().clone();
        assert_eq!(x.stream_id, 3);
        assert_eq!(x.path.as_ref().map(String::len), Some(4000));
        assert!(x.notes.contains(&"header_block_too_many_fields"), "{x:?}");
        assert_eq!(t.c.stats().hpack_blocks_overworked, 1);
        // The table is still right: stream 5 names every field.
        t.send(E, &indexed_request(5));
        let r = t.resp(5, &[(":status", "204")], true);
        t.send(I, &r);
        let x = t.out.last().unwrap().clone();
        assert_eq!(x.stream_id, 5);
        assert_eq!(x.status, Some(204));
        assert_eq!(x.path.as_ref().map(String::len), Some(4000));
        assert_eq!(x.authority.as_ref().map(String::len), Some(4000));
        assert!(!x.notes.contains(&"hpack_error"), "{x:?}");
    }

    /// The first value of a repeated kept field is the one reported.
    #[test]
    fn first_of_each_kept_field_wins() {
        let mut t = T::new();
        let h = vec![
            (":method", "GET".to_string()),
            (":scheme", "http".into()),
            (":path", "/first".into()),
            (":path", "/second".into()),
            (":authority", "a.example".into()),
            ("user-agent", "one".into()),
            ("user-agent", "two".into()),
        ];
        let b = t.req(1, &h, true);
        t.send(E, &b);
        let r = t.resp(1, &[(":status", "200"), (":status", "500")], true);
        t.send(I, &r);
        let x = t.out.last().unwrap();
        assert_eq!(x.path.as_deref(), Some("/first"));
        assert_eq!(x.user_agent.as_deref(), Some("one"));
        assert_eq!(x.status, Some(200));
    }
}

/// Traffic recorded from real implementations (tests/fixtures/http2/README.md says how).
#[cfg(test)]
mod real_traffic_tests {
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
}
