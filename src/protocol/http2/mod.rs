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
//!
//! The parts, all pure (bytes and timestamps in, exchanges out): `frame` reads frame headers
//! and knows the framing rules; `conn` takes each direction's bytes through the preface,
//! frames and resync, and applies frames to streams; `stream` keeps the stream table and its
//! memory budget, walks gRPC messages and makes the exchange records; `head` keeps the header
//! fields a record reports; `hpack` and `huffman` decode header blocks.

mod conn;
mod frame;
mod head;
mod hpack;
mod huffman;
mod stream;

#[cfg(test)]
mod real_traffic_tests;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

use super::trace::TraceContext;
use super::{Chunk, Direction, Role};
use conn::DirState;
use stream::{exchange_cost, Given, Stream};

pub use frame::{detect, Detected};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DIRS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

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
