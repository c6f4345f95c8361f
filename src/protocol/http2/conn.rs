//! The connection's state machine: each direction's bytes go through the preface, frames and
//! resync after loss; frames feed the direction's HPACK decoder and are applied to their
//! streams. Pure.

use super::frame::{
    chain_ok, header_ok, preface_start, Block, Frame, FrameHeader, Piece, CONTINUATION, DATA,
    DEFAULT_MAX_FRAME, END_HEADERS, END_STREAM, FRAME_HEADER, GOAWAY, HEADERS, LARGEST_FRAME,
    PUSH_PROMISE, RST_STREAM, SETTINGS, SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_FRAME_SIZE,
};
use super::head::Head;
use super::hpack::Hpack;
use super::stream::Framing;
use super::{di, other, H2Conn, PREFACE};
use crate::protocol::Direction;

/// How far above the highest stream id seen a resync candidate's stream id may be.
const STREAM_ID_SLACK: u32 = 4096;

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

pub(super) struct DirState {
    phase: Phase,
    hdr: [u8; FRAME_HEADER],
    hdr_len: usize,
    /// `end_ns` of the chunk where the pending frame header began.
    hdr_ns: u64,
    frame: Option<Frame>,
    /// Header block awaiting its END_HEADERS.
    block: Option<Block>,
    pub(super) hpack: Hpack,
    /// Largest frame this direction may send (the receiver's SETTINGS_MAX_FRAME_SIZE).
    pub(super) max_frame: u32,
}

impl DirState {
    pub(super) fn new(midstream: bool) -> Self {
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

    pub(super) fn buffered(&self) -> usize {
        self.hdr_len
            + self.frame.as_ref().map_or(0, |f| usize::from(f.small_len))
            + self.block.as_ref().map_or(0, |b| b.buf.len())
    }
}

impl H2Conn {
    pub(super) fn feed_chunk(&mut self, d: Direction, data: &[u8], total: u64, ns: u64) {
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

    /// Frames of `d` were lost: find frames again at the next chunk, stop trusting its HPACK
    /// state, and flag every stream whose frames in `d` may have been among the lost ones.
    pub(super) fn lose_sync(&mut self, d: Direction, note: &'static str) {
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
}
