//! The HTTP/1 state of one connection: a state machine per direction over the captured
//! calls, request/response pairing (pipelining, interim responses, upgrades, gaps), and
//! the bounded queue of requests waiting for an answer with its byte budget and shedding.
//! Pure: no I/O and no clock; time comes from the calls fed in.

use std::collections::VecDeque;

use super::body::{chunk_step, request_framing, response_framing, ChunkState, Framing, SIZE_START};
use super::head::{classify, detect, nl_step, parse_head, tail_state, Class, Head, Kind, NL_END};
use super::{Http1Exchange, Http1Stats, Leftover};
use crate::protocol::{Chunk, Direction, Role};

/// Requests waiting for an answer; beyond this the oldest are given up.
pub(super) const MAX_PENDING: usize = 1024;
/// Bytes the waiting requests may hold (their kept head fields); beyond this the oldest
/// are given up too (note `memory_budget`), so a pipelining client that is never
/// answered holds at most this much, not 1024 heads.
pub(super) const MAX_PENDING_BYTES: usize = 1 << 20;
/// Smallest head cap accepted, so that a request line prefix always fits for recognition.
const MIN_HEADER_CAP: usize = 32;
/// Bytes scanned for the end of an over-long head before giving up on finding it.
const MIN_OVERFLOW_SCAN: u64 = 64 * 1024;
/// A head buffer that grew past this is released after use, so idle connections stay small.
const KEEP_BUF_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Out of sync: ignore bytes until a chunk begins with a message start. `counted` records
    /// whether this episode was already counted as a resync.
    Skip {
        counted: bool,
    },
    /// At a message boundary.
    Start,
    /// Buffering a head.
    Head,
    /// The head outgrew the cap: scan (without buffering) for its end, then frame by `then`
    /// (`None`: framing unknown).
    HeadOverflow {
        nl: u8,
        scanned: u64,
        then: Option<Framing>,
    },
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
    /// Inside a message whose end cannot be known; it ends at the next safe point.
    Lost,
}

/// The message currently being read in one direction.
#[derive(Debug, Clone, Copy)]
struct Msg {
    kind: Option<Kind>,
    /// The pending exchange this message belongs to (None: unmatched or interim).
    entry: Option<u64>,
    first_ns: u64,
    last_ns: u64,
    head_bytes: u64,
    body_bytes: u64,
}

#[derive(Debug)]
struct Half {
    phase: Phase,
    buf: Vec<u8>,
    msg: Option<Msg>,
}

impl Half {
    fn new() -> Self {
        Half {
            // Nothing is known about where the stream is until a chunk starts with a message.
            phase: Phase::Skip { counted: false },
            buf: Vec::new(),
            msg: None,
        }
    }

    fn is_mid_message(&self) -> bool {
        !matches!(self.phase, Phase::Start | Phase::Skip { .. })
    }

    fn reset(&mut self, phase: Phase) {
        self.phase = phase;
        self.msg = None;
        self.clear_buf();
    }

    fn clear_buf(&mut self) {
        if self.buf.capacity() > KEEP_BUF_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

/// How a message ended, for the exchange's flags.
#[derive(Debug, Clone, Copy)]
enum End {
    Clean,
    /// Some bytes or framing were lost: the counts are not exact.
    Partial(&'static str),
    /// The message stopped before its framing said it should.
    Incomplete(&'static str),
}

#[derive(Debug)]
struct Entry {
    id: u64,
    ex: Http1Exchange,
    req_done: bool,
    /// The final response was framed to its end, or will never be paired.
    resp_done: bool,
    has_final: bool,
    incomplete: bool,
    /// Created while request/response pairing could be off after a gap.
    tainted: bool,
    is_head: bool,
    is_connect: bool,
    req_upgrade: Option<String>,
    /// What it holds, counted when it was queued.
    cost: usize,
}

impl Entry {
    fn awaiting(&self) -> bool {
        !self.has_final && !self.resp_done
    }

    fn note(&mut self, note: &'static str) {
        if !self.ex.notes.contains(&note) {
            self.ex.notes.push(note);
        }
    }

    fn mark(&mut self, end: End) {
        match end {
            End::Clean => {}
            End::Partial(n) => {
                self.ex.partial = true;
                self.note(n);
            }
            End::Incomplete(n) => {
                self.incomplete = true;
                self.note(n);
            }
        }
    }
}

/// The bytes of one call still to be consumed: a captured prefix, then `unknown` bytes.
struct Input<'a> {
    known: &'a [u8],
    unknown: u64,
}

impl Input<'_> {
    fn total(&self) -> u64 {
        self.known.len() as u64 + self.unknown
    }

    fn is_empty(&self) -> bool {
        self.total() == 0
    }

    fn advance(&mut self, n: u64) {
        let k = n.min(self.known.len() as u64) as usize;
        self.known = &self.known[k..];
        self.unknown -= (n - k as u64).min(self.unknown);
    }

    fn consume_all(&mut self) -> u64 {
        let n = self.total();
        self.known = &[];
        self.unknown = 0;
        n
    }
}

/// HTTP/1 state of one TCP connection.
#[derive(Debug)]
pub struct Http1Conn {
    role: Role,
    max_header_bytes: usize,
    /// Index 0: Egress, 1: Ingress.
    halves: [Half; 2],
    pending: VecDeque<Entry>,
    /// The `cost` of the entries in `pending`.
    pending_bytes: usize,
    next_id: u64,
    stats: Http1Stats,
    is_http: bool,
    upgraded: bool,
    closed: bool,
    /// Set by a gap (or a mid-stream join): requests may have been lost, so FIFO pairing is
    /// only trusted again from a request seen while nothing is outstanding.
    ambiguous: bool,
    /// Requests dropped by the queue cap that were still waiting: their responses come first.
    ghosts: u64,
    /// Bytes that followed an upgrade in the call that carried it.
    leftover: Option<Leftover>,
    /// Start of the call being fed: a message that begins in it began no earlier. For
    /// sends this is when the write started (it may have blocked); for receives, when
    /// the bytes arrived.
    chunk_start_ns: u64,
}

fn hi(d: Direction) -> usize {
    match d {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

/// What a waiting request holds: the entry and the head fields it keeps.
fn entry_cost(e: &Entry) -> usize {
    let x = &e.ex;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
    std::mem::size_of::<Entry>()
        + x.method.capacity()
        + x.target.capacity()
        + x.version.capacity()
        + opt(&x.host)
        + opt(&x.user_agent)
        + opt(&x.content_type)
        + opt(&x.upgrade)
        + opt(&e.req_upgrade)
        + x.trace.as_ref().map_or(0, |t| {
            std::mem::size_of_val(t)
                + t.trace_id.capacity()
                + t.segment_id.as_ref().map_or(0, String::capacity)
                + t.span_id.as_ref().map_or(0, String::capacity)
                + t.parent_service.as_ref().map_or(0, String::capacity)
        })
}

fn other(d: Direction) -> Direction {
    match d {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

impl Http1Conn {
    /// `role` may be Unknown (connection joined mid-stream); then the first request seen decides
    /// it: a request written (Egress) means Client, a request read (Ingress) means Server.
    pub fn new(role: Role, max_header_bytes: usize) -> Self {
        Http1Conn {
            role,
            max_header_bytes: max_header_bytes.max(MIN_HEADER_CAP),
            halves: [Half::new(), Half::new()],
            pending: VecDeque::new(),
            pending_bytes: 0,
            next_id: 0,
            stats: Http1Stats::default(),
            is_http: false,
            upgraded: false,
            closed: false,
            ambiguous: role == Role::Unknown,
            ghosts: 0,
            chunk_start_ns: 0,
            leftover: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// True once anything HTTP/1 was recognised on this connection.
    pub fn is_http(&self) -> bool {
        self.is_http
    }

    /// True when the connection stopped being HTTP/1 (101, or a 2xx answer to CONNECT).
    /// After an upgrade: the bytes of the same call that followed the switch, once.
    pub fn take_upgrade_leftover(&mut self) -> Option<Leftover> {
        self.leftover.take()
    }

    pub fn is_upgraded(&self) -> bool {
        self.upgraded
    }

    pub fn stats(&self) -> &Http1Stats {
        &self.stats
    }

    /// Bytes held: the head buffers (at most `max_header_bytes` per direction) and the
    /// requests waiting for an answer (at most `MAX_PENDING_BYTES`).
    pub fn buffered_bytes(&self) -> usize {
        self.halves.iter().map(|h| h.buf.len()).sum::<usize>() + self.pending_bytes
    }

    /// Bytes in the head buffers only.
    #[cfg(test)]
    pub(super) fn head_bytes(&self) -> usize {
        self.halves.iter().map(|h| h.buf.len()).sum()
    }

    /// Requests seen and not yet emitted.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Feed one call. Completed exchanges are pushed to `out`, in request order.
    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Http1Exchange>) {
        // Exchanges finished by an earlier `gap` are released here.
        self.emit_ready(out);
        let data = chunk.data;
        let len = chunk.len.max(data.len() as u64);
        if self.closed || self.upgraded {
            self.stats.bytes_skipped += len;
            return;
        }
        let d = chunk.dir;
        let ts = chunk.end_ns;
        self.chunk_start_ns = chunk.start_ns.min(ts);
        self.at_chunk_start(d, data);
        let mut inp = Input {
            known: data,
            unknown: len - data.len() as u64,
        };
        // Every step consumes input or moves to a phase that will; the guard only protects
        // against a logic slip turning into a hang.
        let mut guard = data.len().saturating_mul(4).saturating_add(64);
        while !inp.is_empty() {
            if self.upgraded {
                // Bytes after the switch belong to the new protocol: keep them for it.
                self.leftover = Some(Leftover {
                    dir: d,
                    start_ns: chunk.start_ns,
                    end_ns: ts,
                    data: inp.known.to_vec(),
                    len: inp.total(),
                });
                self.stats.bytes_skipped += inp.consume_all();
                break;
            }
            if guard == 0 {
                self.stats.parse_errors += 1;
                self.drop_message(d, End::Partial("body_framing_lost"));
                self.stats.bytes_skipped += inp.consume_all();
                break;
            }
            guard -= 1;
            self.step(d, &mut inp, ts, out);
        }
        self.emit_ready(out);
    }

    /// Some calls in `dir` were lost before the next chunk: abandon what was in progress there.
    /// Exchanges this finishes are released by the next `feed` or `close`.
    pub fn gap(&mut self, dir: Direction) {
        if self.closed || self.upgraded {
            return;
        }
        self.drop_message(dir, End::Partial("gap"));
        // Whole requests may have been in the lost calls, so later responses cannot be paired
        // blindly.
        self.ambiguous = true;
        if self.response_dir() == Some(dir) {
            // The lost calls may hold the answers of everything outstanding.
            for e in self.pending.iter_mut().filter(|e| e.awaiting()) {
                e.resp_done = true;
                e.mark(End::Partial("gap"));
            }
        }
    }

    /// The connection closed at `ts_ns` (or capture ends): complete a close-delimited response
    /// and flush every request left as an exchange (`status: None` when it got no answer).
    /// End timestamps stay those of the last data chunk, as for every message.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<Http1Exchange>) {
        let _ = ts_ns;
        if self.closed {
            return;
        }
        self.closed = true;
        for d in [Direction::Egress, Direction::Ingress] {
            match self.halves[hi(d)].phase {
                Phase::UntilClose | Phase::Lost => self.finish_msg(d, End::Clean),
                Phase::HeadOverflow { .. } | Phase::Length(_) | Phase::Chunked(_) => {
                    self.finish_msg(d, End::Incomplete("closed_before_complete"))
                }
                Phase::Head | Phase::Start | Phase::Skip { .. } => {}
            }
            self.drop_message(d, End::Incomplete("closed_before_complete"));
        }
        for e in self.pending.iter_mut() {
            if !e.req_done {
                e.req_done = true;
                e.mark(End::Incomplete("closed_before_complete"));
            }
            e.resp_done = true;
        }
        self.emit_ready(out);
    }

    fn expected(&self, d: Direction) -> Option<Kind> {
        match (self.role, d) {
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress) => {
                Some(Kind::Request)
            }
            (Role::Client, Direction::Ingress) | (Role::Server, Direction::Egress) => {
                Some(Kind::Response)
            }
            (Role::Unknown, _) => None,
        }
    }

    fn response_dir(&self) -> Option<Direction> {
        match self.role {
            Role::Client => Some(Direction::Ingress),
            Role::Server => Some(Direction::Egress),
            Role::Unknown => None,
        }
    }

    /// Resync points are only taken at call boundaries: that is where writers start messages.
    fn at_chunk_start(&mut self, d: Direction, data: &[u8]) {
        let phase = self.halves[hi(d)].phase;
        if !matches!(phase, Phase::Skip { .. } | Phase::Lost) {
            return;
        }
        let Some(is_req) = detect(data) else {
            // A call too short to tell (say "HTT") may still start a message; the head
            // parser validates it as more bytes come. Not so mid-message: body bytes could
            // look like that too often.
            if phase != Phase::Lost && matches!(classify(data), Class::NeedMore) {
                self.halves[hi(d)].phase = Phase::Start;
            }
            return;
        };
        let kind = if is_req {
            Kind::Request
        } else {
            Kind::Response
        };
        if self.expected(d).is_some_and(|e| e != kind) {
            // A message in the wrong direction: not ours to pair.
            self.stats.parse_errors += 1;
            return;
        }
        if phase == Phase::Lost {
            self.finish_msg(d, End::Clean);
        } else {
            self.halves[hi(d)].phase = Phase::Start;
        }
    }

    fn step(&mut self, d: Direction, inp: &mut Input<'_>, ts: u64, out: &mut Vec<Http1Exchange>) {
        let i = hi(d);
        match self.halves[i].phase {
            Phase::Skip { counted } => {
                if !counted {
                    self.stats.resyncs += 1;
                }
                self.stats.bytes_skipped += inp.consume_all();
                self.halves[i].phase = Phase::Skip { counted: true };
            }
            Phase::Start => self.step_start(d, inp, ts),
            Phase::Head => self.step_head(d, inp, ts, out),
            Phase::HeadOverflow { nl, scanned, then } => {
                self.step_overflow(d, inp, ts, nl, scanned, then)
            }
            Phase::Length(rem) => {
                let n = rem.min(inp.total());
                inp.advance(n);
                self.add_body(d, n, ts);
                if n == rem {
                    self.finish_msg(d, End::Clean);
                } else {
                    self.halves[i].phase = Phase::Length(rem - n);
                }
            }
            Phase::Chunked(st) => self.step_chunked(d, inp, ts, st),
            Phase::UntilClose | Phase::Lost => {
                let n = inp.consume_all();
                self.add_body(d, n, ts);
            }
        }
    }

    fn add_body(&mut self, d: Direction, n: u64, ts: u64) {
        if let Some(m) = self.halves[hi(d)].msg.as_mut() {
            if n > 0 {
                m.body_bytes += n;
                m.last_ns = ts;
            }
        }
    }

    fn step_start(&mut self, d: Direction, inp: &mut Input<'_>, ts: u64) {
        // Stray empty lines between messages are tolerated, as servers do.
        let blank = inp
            .known
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            inp.advance(blank as u64);
            return;
        }
        let half = &mut self.halves[hi(d)];
        if inp.known.is_empty() {
            // The next message starts in bytes that were not captured.
            half.phase = Phase::Skip { counted: false };
            return;
        }
        half.clear_buf();
        half.msg = Some(Msg {
            kind: None,
            entry: None,
            first_ns: if self.chunk_start_ns > 0 {
                self.chunk_start_ns
            } else {
                ts
            },
            last_ns: ts,
            head_bytes: 0,
            body_bytes: 0,
        });
        half.phase = Phase::Head;
    }

    fn step_head(
        &mut self,
        d: Direction,
        inp: &mut Input<'_>,
        ts: u64,
        out: &mut Vec<Http1Exchange>,
    ) {
        let cap = self.max_header_bytes;
        let expected = self.expected(d);
        let half = &mut self.halves[hi(d)];
        let old = half.buf.len();
        let window = &inp.known[..cap.saturating_sub(old).min(inp.known.len())];
        // Find the blank line incrementally so only this head's bytes get copied.
        let mut nl = tail_state(&half.buf);
        let mut end = None;
        for (k, &b) in window.iter().enumerate() {
            nl = nl_step(nl, b);
            if nl == NL_END {
                end = Some(k + 1);
                break;
            }
        }
        let take = end.unwrap_or(window.len());
        half.buf.extend_from_slice(&window[..take]);

        let mut kind = half.msg.and_then(|m| m.kind);
        if kind.is_none() {
            match classify(&half.buf) {
                Class::NeedMore => {}
                Class::Bad => return self.bad_start(d, old),
                Class::Is(k) if expected.is_some_and(|e| e != k) => return self.bad_start(d, old),
                Class::Is(k) => kind = Some(k),
            }
        }
        inp.advance(take as u64);
        let half = &mut self.halves[hi(d)];
        let Some(msg) = half.msg.as_mut() else {
            half.reset(Phase::Skip { counted: false });
            return;
        };
        msg.kind = kind;
        if take > 0 {
            msg.last_ns = ts;
        }
        msg.head_bytes = half.buf.len() as u64;
        let cut = inp.known.is_empty() && inp.unknown > 0;
        let full = half.buf.len() >= cap;
        if end.is_none() && !cut && !full {
            return;
        }
        if kind.is_none() {
            // Too little was captured to even tell what this is.
            self.stats.bytes_skipped += half.buf.len() as u64;
            half.reset(Phase::Skip { counted: false });
            return;
        }
        self.on_head(d, end.is_none(), ts, out);
    }

    /// The bytes at a message start are not HTTP/1 (or not expected here).
    fn bad_start(&mut self, d: Direction, earlier_bytes: usize) {
        self.stats.parse_errors += 1;
        // Bytes from this call are counted by Skip, which takes over the rest of the input.
        self.stats.bytes_skipped += earlier_bytes as u64;
        self.halves[hi(d)].reset(Phase::Skip { counted: false });
    }

    fn on_head(&mut self, d: Direction, truncated: bool, ts: u64, out: &mut Vec<Http1Exchange>) {
        let i = hi(d);
        let Some((msg, kind)) = self.halves[i].msg.and_then(|m| Some((m, m.kind?))) else {
            self.halves[i].reset(Phase::Skip { counted: false });
            return;
        };
        let parsed = parse_head(&self.halves[i].buf, kind, truncated);
        let nl = tail_state(&self.halves[i].buf);
        self.halves[i].clear_buf();
        let Some(head) = parsed else {
            self.stats.parse_errors += 1;
            self.stats.bytes_skipped += msg.head_bytes;
            self.halves[i].reset(Phase::Skip { counted: false });
            return;
        };
        self.is_http = true;
        if truncated {
            self.stats.headers_truncated += 1;
        }
        match kind {
            Kind::Request => self.on_request(d, head, truncated, nl, ts, out),
            Kind::Response => self.on_response(d, head, truncated, nl),
        }
    }

    fn on_request(
        &mut self,
        d: Direction,
        head: Head,
        truncated: bool,
        nl: u8,
        ts: u64,
        out: &mut Vec<Http1Exchange>,
    ) {
        if self.role == Role::Unknown {
            self.role = match d {
                Direction::Egress => Role::Client,
                Direction::Ingress => Role::Server,
            };
        }
        self.stats.requests += 1;
        let o = other(d);
        if self.halves[hi(o)].phase == Phase::Lost {
            // A new request means the answer being read with lost framing is over.
            self.finish_msg(o, End::Clean);
        }
        let busy = self.halves[hi(o)].is_mid_message();
        let outstanding = self.pending.iter().any(Entry::awaiting);
        let tainted = self.ambiguous && (busy || outstanding);
        if !tainted {
            self.ambiguous = false;
        }
        let Some(msg) = self.halves[hi(d)].msg else {
            return;
        };
        let framing = request_framing(&head, truncated);
        let id = self.next_id;
        self.next_id += 1;
        let mut entry = Entry {
            id,
            ex: Http1Exchange {
                version: if head.minor == 0 { "1.0" } else { "1.1" }.to_string(),
                host: head.host,
                user_agent: head.user_agent,
                status: None,
                content_type: None,
                req_header_bytes: msg.head_bytes,
                req_body_bytes: 0,
                resp_header_bytes: 0,
                resp_body_bytes: 0,
                req_start_ns: msg.first_ns,
                req_end_ns: ts,
                resp_start_ns: 0,
                resp_end_ns: 0,
                interim: Vec::new(),
                chunked_request: framing == Some(Framing::Chunked),
                chunked_response: false,
                upgrade: None,
                trace: head.trace,
                complete: false,
                partial: false,
                notes: Vec::new(),
                method: head.method,
                target: head.target,
            },
            req_done: false,
            resp_done: false,
            has_final: false,
            incomplete: false,
            tainted,
            is_head: false,
            is_connect: false,
            req_upgrade: head.upgrade,
            cost: 0,
        };
        entry.is_head = entry.ex.method == "HEAD";
        entry.is_connect = entry.ex.method == "CONNECT";
        if truncated {
            entry.mark(End::Partial("headers_truncated"));
        }
        self.push_entry(entry, out);
        if let Some(m) = self.halves[hi(d)].msg.as_mut() {
            m.entry = Some(id);
        }
        self.start_body(d, framing, truncated, nl);
    }

    fn on_response(&mut self, d: Direction, head: Head, truncated: bool, nl: u8) {
        let i = hi(d);
        let Some(msg) = self.halves[i].msg else {
            return;
        };
        let code = head.code;
        if (100..200).contains(&code) && code != 101 {
            self.stats.interim_responses += 1;
            if self.ghosts == 0 {
                if let Some(e) = self.pending.iter_mut().find(|e| e.awaiting()) {
                    if !e.tainted {
                        e.ex.interim.push(code);
                    }
                }
            }
            // Interim responses have no body and are not exchanges of their own.
            return self.start_body(d, Some(Framing::Empty), truncated, nl);
        }
        self.stats.responses += 1;
        let mut target = None;
        if self.ghosts > 0 {
            // This answers a request that the queue cap already gave up on.
            self.ghosts -= 1;
            self.stats.unmatched_responses += 1;
        } else if let Some(pos) = self.pending.iter().position(Entry::awaiting) {
            if self.pending[pos].tainted {
                // It may answer a request lost in a gap: pairing it could be wrong.
                let e = &mut self.pending[pos];
                e.resp_done = true;
                e.mark(End::Partial("gap"));
                self.stats.unmatched_responses += 1;
            } else {
                target = Some(pos);
            }
        } else {
            self.stats.unmatched_responses += 1;
        }

        let mut is_head = false;
        let mut is_connect = false;
        let mut entry_id = None;
        if let Some(pos) = target {
            let e = &mut self.pending[pos];
            is_head = e.is_head;
            is_connect = e.is_connect;
            e.has_final = true;
            e.ex.status = Some(code);
            e.ex.content_type = head.content_type.clone();
            e.ex.resp_start_ns = msg.first_ns;
            e.ex.resp_header_bytes = msg.head_bytes;
            if code == 101 {
                e.ex.upgrade = head.upgrade.clone().or_else(|| e.req_upgrade.clone());
            }
            if truncated {
                e.mark(End::Partial("headers_truncated"));
            }
            entry_id = Some(e.id);
        }
        if let Some(m) = self.halves[i].msg.as_mut() {
            m.entry = entry_id;
        }
        if let Some(id) = entry_id {
            let o = other(d);
            let req_half = &self.halves[hi(o)];
            if req_half.phase == Phase::Lost && req_half.msg.and_then(|m| m.entry) == Some(id) {
                // The request with lost framing ends where its answer starts.
                self.finish_msg(o, End::Clean);
            }
        }
        if code == 101 || (is_connect && (200..300).contains(&code)) {
            return self.switch_protocols(d);
        }
        let framing = response_framing(&head, code, is_head, truncated);
        if framing == Some(Framing::Chunked) {
            if let Some(e) = entry_id.and_then(|id| self.entry_mut(id)) {
                e.ex.chunked_response = true;
            }
        }
        self.start_body(d, framing, truncated, nl);
    }

    /// After 101 or a 2xx to CONNECT the bytes are another protocol: finish and stop.
    fn switch_protocols(&mut self, d: Direction) {
        self.finish_msg(d, End::Clean);
        self.drop_message(other(d), End::Partial("body_framing_lost"));
        for e in self.pending.iter_mut() {
            e.req_done = true;
            e.resp_done = true;
        }
        self.upgraded = true;
        for h in self.halves.iter_mut() {
            h.reset(Phase::Skip { counted: true });
        }
    }

    fn start_body(&mut self, d: Direction, framing: Option<Framing>, truncated: bool, nl: u8) {
        let half = &mut self.halves[hi(d)];
        if truncated {
            half.phase = Phase::HeadOverflow {
                nl,
                scanned: 0,
                then: framing,
            };
            return;
        }
        match framing {
            Some(Framing::Empty) | Some(Framing::Length(0)) => self.finish_msg(d, End::Clean),
            Some(Framing::Length(n)) => half.phase = Phase::Length(n),
            Some(Framing::Chunked) => half.phase = Phase::Chunked(SIZE_START),
            Some(Framing::UntilClose) => half.phase = Phase::UntilClose,
            None => {
                // Contradictory or invalid framing headers.
                self.stats.parse_errors += 1;
                self.enter_lost(d);
            }
        }
    }

    fn enter_lost(&mut self, d: Direction) {
        let half = &mut self.halves[hi(d)];
        half.phase = Phase::Lost;
        if let Some(id) = half.msg.and_then(|m| m.entry) {
            if let Some(e) = self.entry_mut(id) {
                e.mark(End::Partial("body_framing_lost"));
            }
        }
    }

    fn step_overflow(
        &mut self,
        d: Direction,
        inp: &mut Input<'_>,
        ts: u64,
        nl: u8,
        scanned: u64,
        then: Option<Framing>,
    ) {
        if inp.known.is_empty() {
            // The rest of the head was not captured.
            return self.enter_lost(d);
        }
        let mut state = nl;
        let mut end = None;
        for (k, &b) in inp.known.iter().enumerate() {
            state = nl_step(state, b);
            if state == NL_END {
                end = Some(k + 1);
                break;
            }
        }
        let n = end.unwrap_or(inp.known.len());
        inp.advance(n as u64);
        let half = &mut self.halves[hi(d)];
        if let Some(m) = half.msg.as_mut() {
            m.head_bytes += n as u64;
            m.last_ns = ts;
        }
        if end.is_some() {
            return match then {
                Some(f) => self.start_body(d, Some(f), false, 0),
                None => self.enter_lost(d),
            };
        }
        let scanned = scanned.saturating_add(n as u64);
        let limit = MIN_OVERFLOW_SCAN.max((self.max_header_bytes as u64).saturating_mul(4));
        if scanned > limit {
            self.enter_lost(d);
        } else {
            half.phase = Phase::HeadOverflow {
                nl: state,
                scanned,
                then,
            };
        }
    }

    fn step_chunked(&mut self, d: Direction, inp: &mut Input<'_>, ts: u64, st: ChunkState) {
        enum Outcome {
            NeedMore,
            Done,
            Uncaptured,
            Malformed,
        }
        let trailer_cap = self.max_header_bytes as u64;
        let mut st = st;
        let mut payload = 0u64;
        let mut consumed = false;
        let outcome = loop {
            if let ChunkState::Data(rem) = st {
                let n = rem.min(inp.total());
                if n == 0 {
                    break Outcome::NeedMore;
                }
                inp.advance(n);
                payload += n;
                consumed = true;
                st = if n == rem {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data(rem - n)
                };
                continue;
            }
            let Some(&b) = inp.known.first() else {
                break if inp.unknown > 0 {
                    Outcome::Uncaptured
                } else {
                    Outcome::NeedMore
                };
            };
            inp.advance(1);
            consumed = true;
            match chunk_step(st, b, trailer_cap) {
                Ok(Some(next)) => st = next,
                Ok(None) => break Outcome::Done,
                Err(()) => break Outcome::Malformed,
            }
        };
        if let Some(m) = self.halves[hi(d)].msg.as_mut() {
            m.body_bytes += payload;
            if consumed {
                m.last_ns = ts;
            }
        }
        match outcome {
            Outcome::NeedMore => self.halves[hi(d)].phase = Phase::Chunked(st),
            Outcome::Done => self.finish_msg(d, End::Clean),
            Outcome::Uncaptured => self.enter_lost(d),
            Outcome::Malformed => {
                self.stats.parse_errors += 1;
                self.enter_lost(d);
            }
        }
    }

    /// Give up the requests waiting for an answer to free memory (the node's parsers are
    /// over their shared budget): each is written out now, incomplete, note
    /// `memory_budget`, as the queue cap does; framing stays in step, and the answers
    /// still to come are paired with the requests they belong to (skipped).
    pub fn shed(&mut self, out: &mut Vec<Http1Exchange>) {
        self.emit_ready(out);
        while let Some(front) = self.pending.front_mut() {
            if front.awaiting() {
                self.ghosts += 1;
            }
            front.req_done = true;
            front.resp_done = true;
            front.mark(End::Incomplete("memory_budget"));
            self.stats.requests_evicted_memory += 1;
            self.emit_ready(out);
        }
    }

    fn entry_mut(&mut self, id: u64) -> Option<&mut Entry> {
        self.pending.iter_mut().find(|e| e.id == id)
    }

    fn push_entry(&mut self, mut entry: Entry, out: &mut Vec<Http1Exchange>) {
        entry.cost = entry_cost(&entry);
        let over = |me: &Self| {
            me.pending.len() >= MAX_PENDING
                || me.pending_bytes.saturating_add(entry.cost) > MAX_PENDING_BYTES
        };
        if over(self) {
            // Keep output in request order before forcing the oldest out.
            self.emit_ready(out);
        }
        while over(self) {
            let by_count = self.pending.len() >= MAX_PENDING;
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            if front.awaiting() {
                self.ghosts += 1;
            }
            front.req_done = true;
            front.resp_done = true;
            if by_count {
                front.mark(End::Incomplete("queue_overflow"));
            } else {
                front.mark(End::Incomplete("memory_budget"));
                self.stats.requests_evicted_memory += 1;
            }
            self.emit_ready(out);
        }
        self.pending_bytes += entry.cost;
        self.pending.push_back(entry);
    }

    /// End the message in progress in `d`, writing its sizes and end time to its exchange.
    fn finish_msg(&mut self, d: Direction, end: End) {
        let half = &mut self.halves[hi(d)];
        half.phase = Phase::Start;
        half.clear_buf();
        let Some(m) = half.msg.take() else {
            return;
        };
        let (Some(kind), Some(id)) = (m.kind, m.entry) else {
            return;
        };
        let Some(e) = self.entry_mut(id) else {
            return;
        };
        match kind {
            Kind::Request => {
                e.ex.req_header_bytes = m.head_bytes;
                e.ex.req_body_bytes = m.body_bytes;
                e.ex.req_end_ns = m.last_ns;
                e.req_done = true;
            }
            Kind::Response => {
                e.ex.resp_header_bytes = m.head_bytes;
                e.ex.resp_body_bytes = m.body_bytes;
                e.ex.resp_end_ns = m.last_ns;
                e.resp_done = true;
            }
        }
        e.mark(end);
    }

    /// Abandon whatever `d` was in the middle of and wait for the next message start.
    fn drop_message(&mut self, d: Direction, end: End) {
        let i = hi(d);
        match self.halves[i].phase {
            Phase::Head => {
                if self.halves[i].msg.and_then(|m| m.kind) == Some(Kind::Request) {
                    // Its head never completed: there is nothing to emit.
                    self.stats.abandoned_requests += 1;
                }
            }
            Phase::HeadOverflow { .. }
            | Phase::Length(_)
            | Phase::Chunked(_)
            | Phase::UntilClose
            | Phase::Lost => self.finish_msg(d, end),
            Phase::Start | Phase::Skip { .. } => {}
        }
        self.halves[i].reset(Phase::Skip { counted: false });
    }

    fn emit_ready(&mut self, out: &mut Vec<Http1Exchange>) {
        while self
            .pending
            .front()
            .is_some_and(|e| e.req_done && e.resp_done)
        {
            let Some(e) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes = self.pending_bytes.saturating_sub(e.cost);
            let mut ex = e.ex;
            if ex.status.is_none() {
                self.stats.abandoned_requests += 1;
                if !ex.notes.contains(&"no_response") {
                    ex.notes.push("no_response");
                }
            }
            ex.complete = ex.status.is_some() && !ex.partial && !e.incomplete;
            out.push(ex);
        }
    }
}
