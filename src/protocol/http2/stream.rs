//! The streams of one connection: the stream table (streams made, finished, reset, evicted),
//! the memory budget held over them, each side's state with the gRPC message framing of its
//! DATA, and the exchange record a stream becomes. Pure.

use super::head::{trace_of, Head};
use super::{di, other, H2Conn, H2Exchange, DIRS};
use crate::protocol::Direction;

/// What a tracked stream costs besides its kept values: its state and its table slot.
const STREAM_OVERHEAD: usize = std::mem::size_of::<Stream>() + 32;

impl H2Conn {
    /// Report the stalest streams early, incomplete, while the streams hold more than
    /// `max_retained` bytes.
    pub(super) fn hold_to_budget(&mut self) {
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
    pub(super) fn stream_slot(&mut self, id: u32, ns: u64, opens_request: bool) -> Option<u32> {
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
    pub(super) fn touch(&mut self, id: u32, d: Direction, ns: u64, status_block: bool) {
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

    pub(super) fn end_half(&mut self, id: u32, d: Direction, ns: u64) {
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

    pub(super) fn reset(&mut self, id: u32, code: Option<u32>) {
        let Some(mut st) = self.streams.remove(&id) else {
            return;
        };
        st.reset = Some(code);
        if code.is_none() {
            st.mark("reset_code_unknown");
        }
        self.emit(st, true, None);
    }

    pub(super) fn goaway(&mut self, d: Direction, last: u32) {
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

    /// Every stream leaves the table through here.
    pub(super) fn emit(
        &mut self,
        st: Box<Stream>,
        complete: bool,
        incomplete_note: Option<&'static str>,
    ) {
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

/// gRPC length-prefixed message framing of one side's DATA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Framing {
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
    pub(super) fn feed(&mut self, mut b: &[u8]) -> u64 {
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
    pub(super) fn skip(&mut self, n: u64) {
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
pub(super) struct Given {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) authority: Option<String>,
    pub(super) start_ns: u64,
    pub(super) header_bytes: u64,
}

/// One side of a stream.
#[derive(Debug, Default)]
pub(super) struct Half {
    /// Any frame of this side was seen.
    pub(super) seen: bool,
    /// Final (non-1xx) header blocks; the second and later are trailers.
    pub(super) blocks: u32,
    pub(super) start_ns: Option<u64>,
    /// Set by END_STREAM.
    pub(super) end_ns: Option<u64>,
    pub(super) last_ns: u64,
    pub(super) header_bytes: u64,
    pub(super) body_bytes: u64,
    pub(super) head: Head,
    pub(super) trailers_only: bool,
    pub(super) framing: Framing,
    pub(super) messages: u64,
    /// DATA was seen while message framing could not be followed.
    pub(super) unframed_data: bool,
    /// Frames were lost before this side was seen: its first frame tells whether that matters.
    pub(super) loss_pending: bool,
}

#[derive(Debug)]
pub(super) struct Stream {
    pub(super) id: u32,
    /// Index 0: frames sent Egress, 1: Ingress.
    pub(super) halves: [Half; 2],
    pub(super) given: Option<Box<Given>>,
    /// RST_STREAM seen, with its code when captured.
    reset: Option<Option<u32>>,
    /// Frames of this stream may have been lost (its END_STREAM may never come).
    pub(super) suspect: bool,
    partial: bool,
    notes: Vec<&'static str>,
    first_ns: u64,
    pub(super) last_ns: u64,
    /// Its `cost()` as last counted in the connection's `kept`.
    pub(super) kept: usize,
}

impl Stream {
    pub(super) fn new(id: u32, ns: u64) -> Self {
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
    pub(super) fn cost(&self) -> usize {
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

    pub(super) fn mark(&mut self, note: &'static str) {
        self.partial = true;
        self.note(note);
    }

    pub(super) fn grpc_hint(&self) -> bool {
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
pub(super) fn exchange_cost(x: &H2Exchange) -> usize {
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
