//! Per-connection state in user space: turns kernel events into access-log records.
//!
//! Pure: no I/O except through the injected process resolver. Records are pushed to
//! `Engine::out`, which the caller drains after each event.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::capture::{comm_str, ConnEvent, ConnKind, DataEvent, KernelCounters};
use crate::model::{
    grpc_status_name, Clock, ConnectionRecord, Endpoint, GrpcCall, Handshake, HttpRecord,
    LossCounters, MessageSize, ObservedBy, Record, RoleSource, ServiceAddr, StatsRecord,
    TcpFigures, Trace, UserCounters, SCHEMA_VERSION,
};
use crate::protocol::http1::{Http1Exchange, Http1Stats};
use crate::protocol::http2::{H2Exchange, H2Stats};
use crate::protocol::l7::{self, Exchange, Parser};
use crate::protocol::{Chunk, Direction, Role};
use crate::resolve::Attribution;

/// How many payload-carrying chunks of a connection joined mid-stream are tried for
/// protocol detection before it is settled as unknown.
const DETECT_TRIES_PREEXISTING: u32 = 16;

/// How long an HTTP/2 stream that lost frames may stay quiet before it is written out.
const H2_LOST_IDLE_NS: u64 = 5_000_000_000;

/// Most process names listed as doing TLS that cannot be seen.
const MAX_TLS_NOT_VISIBLE: usize = 32;

/// How long a closed connection stays open to late events before its record is written:
/// a reset can close a socket before the sends that provoked it are reported, and the
/// other end of a local connection closes a moment later.
const CLOSE_GRACE_NS: u64 = 300_000_000;

/// A client's socket whose server end may be a socket on this node that has not been
/// used yet (an accepted socket is announced at its first use) is not made to write its
/// exchanges early for this long after it opened: they would be written by both ends.
const LINK_WAIT_NS: u64 = 1_000_000_000;

/// The parsers' shared budget by default: 128 MiB (a connection's parser holds at most
/// about 1.1 MiB: HTTP/2 streams 1 MiB plus frame buffers and HPACK tables; HTTP/1 two
/// heads plus 1 MiB of requests waiting).
pub const DEFAULT_PARSER_BYTES: usize = 128 << 20;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Keep query strings in records (private by default).
    pub keep_query: bool,
    /// Largest HTTP head buffered per direction.
    pub max_header_bytes: usize,
    /// Most connections tracked at once; beyond it the least recently active are
    /// written out as "evicted" and counted.
    pub max_connections: usize,
    /// Most bytes the protocol parsers of all connections may hold together; beyond it
    /// the parsers holding the most write out what waits for an answer, and are started
    /// over only if that is not enough (both counted).
    pub max_parser_bytes: usize,
    /// Ephemeral port range, to guess roles when nothing else tells.
    pub ephemeral_ports: (u16, u16),
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            keep_query: false,
            max_header_bytes: 16 * 1024,
            max_connections: 262_144,
            max_parser_bytes: DEFAULT_PARSER_BYTES,
            ephemeral_ports: (32768, 60999),
        }
    }
}

/// The process that uses a socket.
#[derive(Debug, Clone, PartialEq, Default)]
struct Owner {
    pid: u32,
    comm: String,
    cgroup_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Undecided,
    Http1,
    Http2,
    /// TLS records whose plaintext has not been seen.
    Tls,
    Unknown,
}

/// What a socket's linked local peer looked like, kept after the peer closed.
#[derive(Debug, Clone, Default)]
struct PeerView {
    owner: Option<Owner>,
    role: Option<Role>,
    http: bool,
    /// Responses its parser sent or received with no request to pair them with (its
    /// view missed the request: a read in flight when capture attached, on the hook rungs
    /// that see a call only from its entry), not yet taken over by the linked client.
    unanswered: u64,
    /// Its socket's byte counts so far (a call in flight when capture attached is missing
    /// from one end's counts on some hook rungs, never from both).
    bytes_sent: u64,
    bytes_recv: u64,
    connect_start_ns: u64,
    established_ns: u64,
}

#[derive(Debug)]
struct Conn {
    cookie: u64,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    role: Role,
    role_source: RoleSource,
    preexisting: bool,
    connect_start_ns: u64,
    established_ns: u64,
    open_ns: u64,
    last_ns: u64,
    owner: Option<Owner>,
    proto: Proto,
    detect_tries: u32,
    http: Option<Parser>,
    next_seq: u64,
    exchanges: u64,
    /// Unmatched responses of this view whose exchange a linked client wrote instead.
    taken_over: u64,
    peer: Option<u64>,
    /// The address its client dialled, when that was translated to this (server) end
    /// and the client's socket is linked as its peer.
    nat_via: Option<SocketAddr>,
    data_seen: bool,
    data_lost: bool,
    /// What its parser held after the last call fed to it (in `Engine::parser_bytes`).
    mem: usize,
    /// TLS seen on it (plaintext from a TLS library, or TLS records).
    tls: bool,
    /// Plaintext from a TLS library was seen on it.
    tls_plaintext: bool,
    /// Its close event, while it waits out the grace before its record is written.
    closing: Option<Box<ConnEvent>>,
    /// Bytes moved after the close event was taken (not in its counters).
    late_sent: u64,
    late_recv: u64,
    bytes_sent: u64,
    bytes_recv: u64,
    send_calls: u64,
    recv_calls: u64,
}

impl Conn {
    fn new(cookie: u64, ts: u64) -> Self {
        Self {
            cookie,
            local: None,
            remote: None,
            role: Role::Unknown,
            role_source: RoleSource::Payload,
            preexisting: true,
            connect_start_ns: 0,
            established_ns: 0,
            open_ns: ts,
            last_ns: ts,
            owner: None,
            proto: Proto::Undecided,
            detect_tries: 0,
            http: None,
            next_seq: 0,
            exchanges: 0,
            taken_over: 0,
            peer: None,
            nat_via: None,
            data_seen: false,
            data_lost: false,
            mem: 0,
            tls: false,
            tls_plaintext: false,
            closing: None,
            late_sent: 0,
            late_recv: 0,
            bytes_sent: 0,
            bytes_recv: 0,
            send_calls: 0,
            recv_calls: 0,
        }
    }

    fn view(&self) -> PeerView {
        PeerView {
            owner: self.owner.clone(),
            role: Some(self.role),
            http: self.http.is_some(),
            unanswered: self
                .http
                .as_ref()
                .and_then(|h| h.http1_stats())
                .map_or(0, |s| s.unmatched_responses.saturating_sub(self.taken_over)),
            bytes_sent: self.bytes_sent,
            bytes_recv: self.bytes_recv,
            connect_start_ns: self.connect_start_ns,
            established_ns: self.established_ns,
        }
    }
}

/// Turns kernel events into records.
pub struct Engine {
    opts: EngineOptions,
    clock: Clock,
    attrib: Option<Box<dyn Attribution>>,
    conns: HashMap<u64, Conn>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    /// Client sockets by local address, and accepted sockets by remote address: the two
    /// ends of a connection whose destination was translated (a Service IP) meet here.
    clients_by_local: HashMap<SocketAddr, u64>,
    servers_by_remote: HashMap<SocketAddr, u64>,
    /// Views of linked peers that closed first, by their cookie.
    closed_peers: HashMap<u64, PeerView>,
    /// Closed connections waiting out their grace, oldest first.
    closing: std::collections::VecDeque<(u64, u64)>,
    /// Processes with TLS connections whose plaintext was not visible.
    tls_not_visible: Vec<String>,
    hooks: Option<crate::model::HookRungs>,
    user: UserCounters,
    lost: LossCounters,
    http_closed: Http1Stats,
    h2_closed: H2Stats,
    /// The sum of `Conn::mem` over `conns` (recounted exactly at every tick).
    parser_bytes: usize,
    started_mono_ns: u64,
    /// Records produced and not yet taken by the caller.
    pub out: Vec<Record>,
    scratch: Vec<Exchange>,
}

impl Engine {
    pub fn new(
        opts: EngineOptions,
        clock: Clock,
        attrib: Option<Box<dyn Attribution>>,
        now: u64,
    ) -> Self {
        Self {
            opts,
            clock,
            attrib,
            conns: HashMap::new(),
            by_tuple: HashMap::new(),
            clients_by_local: HashMap::new(),
            servers_by_remote: HashMap::new(),
            closed_peers: HashMap::new(),
            closing: std::collections::VecDeque::new(),
            tls_not_visible: Vec::new(),
            hooks: None,
            user: UserCounters::default(),
            lost: LossCounters::default(),
            http_closed: Http1Stats::default(),
            h2_closed: H2Stats::default(),
            parser_bytes: 0,
            started_mono_ns: now,
            out: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn user_counters(&self) -> UserCounters {
        let mut u = self.user;
        u.connections_open = self.conns.len() as u64;
        let mut s = self.http_closed.clone();
        let mut s2 = self.h2_closed.clone();
        for c in self.conns.values() {
            if let Some(h) = &c.http {
                if let Some(x) = h.http1_stats() {
                    add_stats(&mut s, x);
                }
                if let Some(x) = h.http2_stats() {
                    add_h2_stats(&mut s2, x);
                }
            }
        }
        u.http2_streams = s2.streams;
        u.http2_resyncs = s2.resyncs;
        u.http2_hpack_errors = s2.hpack_errors;
        u.http2_hpack_fields_unknown = s2.hpack_fields_unknown;
        u.http2_streams_cut = s2.streams_cut;
        u.http2_header_blocks_cut = s2.header_blocks_cut;
        u.http2_parse_errors = s2.parse_errors;
        u.http2_streams_evicted_memory = s2.streams_evicted_memory;
        u.http2_hpack_blocks_overworked = s2.hpack_blocks_overworked;
        u.http_parse_errors = s.parse_errors;
        u.http_resyncs = s.resyncs;
        u.http_headers_truncated = s.headers_truncated;
        u.http_unmatched_responses = s.unmatched_responses;
        u.http_abandoned_requests = s.abandoned_requests;
        u.http_requests_evicted_memory = s.requests_evicted_memory;
        u.parser_bytes = self.parser_bytes as u64;
        u
    }

    pub fn loss_counters(&self) -> LossCounters {
        self.lost
    }

    pub fn connections_open(&self) -> usize {
        self.conns.len()
    }

    /// The kernel hooks capture runs on, for the statistics records.
    pub fn set_hooks(&mut self, h: crate::model::HookRungs) {
        self.hooks = Some(h);
    }

    /// A record from the kernel that could not be decoded.
    pub fn bad_record(&mut self) {
        self.lost.bad_records += 1;
    }

    /// Build a statistics record from the kernel's counters and ours.
    pub fn stats(&mut self, now: u64, k: &KernelCounters) -> StatsRecord {
        self.lost.ringbuf_data_events = k.drop_data_ringbuf;
        self.lost.ringbuf_conn_events = k.drop_conn_ringbuf;
        self.lost.kernel_storage = k.storage_fail;
        self.lost.ringbuf_exec_events = k.drop_exec_ringbuf;
        self.lost.after_close_untracked = k.late_untracked;
        StatsRecord {
            v: SCHEMA_VERSION,
            time: self.clock.rfc3339(now),
            mono_ns: now,
            uptime_s: now.saturating_sub(self.started_mono_ns) as f64 / 1e9,
            kernel: *k,
            user: self.user_counters(),
            lost: self.lost,
            attribution: self.attrib.as_ref().and_then(|a| a.stats()),
            tls_not_visible: self.tls_not_visible.clone(),
            hooks: self.hooks.clone(),
            tls_probes: None,
        }
    }

    pub fn on_conn(&mut self, ev: &ConnEvent) {
        self.user.events += 1;
        match ev.kind {
            ConnKind::Connected | ConnKind::Accepted | ConnKind::Discovered => {
                let c = self
                    .conns
                    .entry(ev.cookie)
                    .or_insert_with(|| Conn::new(ev.cookie, ev.ts_ns));
                c.local = Some(ev.local);
                c.remote = Some(ev.remote);
                c.preexisting = ev.kind == ConnKind::Discovered || ev.flags.preexisting();
                c.connect_start_ns = ev.connect_start_ns;
                c.established_ns = ev.established_ns;
                c.open_ns = if ev.established_ns > 0 {
                    ev.established_ns
                } else {
                    ev.ts_ns
                };
                if ev.role != Role::Unknown {
                    c.role = ev.role;
                    c.role_source = RoleSource::Handshake;
                }
                if ev.flags.owner_known() && c.owner.is_none() {
                    c.owner = Some(Owner {
                        pid: ev.tgid,
                        comm: comm_str(&ev.comm),
                        cgroup_id: ev.cgroup_id,
                    });
                }
                self.link(ev.cookie, ev.local, ev.remote);
                self.link_translated(ev.cookie, ev.local, ev.remote, ev.role);
                self.maybe_evict(ev.ts_ns);
            }
            ConnKind::ConnectFailed | ConnKind::Closed => {
                let (mut c, unseen) = match self.conns.remove(&ev.cookie) {
                    Some(c) => (c, false),
                    None => {
                        let mut c = Conn::new(ev.cookie, ev.ts_ns);
                        c.local = Some(ev.local);
                        c.remote = Some(ev.remote);
                        c.preexisting = ev.flags.preexisting();
                        c.connect_start_ns = ev.connect_start_ns;
                        c.established_ns = ev.established_ns;
                        if ev.established_ns > 0 {
                            c.open_ns = ev.established_ns;
                        }
                        if ev.role != Role::Unknown {
                            c.role = ev.role;
                            c.role_source = RoleSource::Handshake;
                        }
                        (c, true)
                    }
                };
                if c.owner.is_none() && ev.flags.owner_known() {
                    c.owner = Some(Owner {
                        pid: ev.tgid,
                        comm: comm_str(&ev.comm),
                        cgroup_id: ev.cgroup_id,
                    });
                }
                if ev.flags.data_lost() {
                    c.data_lost = true;
                }
                if ev.kind == ConnKind::ConnectFailed {
                    self.finish(c, Some(ev), ev.ts_ns, "");
                    return;
                }
                // Hold it open briefly (see CLOSE_GRACE_NS); `tick` writes it out.
                c.closing = Some(Box::new(ev.clone()));
                let cookie = c.cookie;
                self.conns.insert(cookie, c);
                if unseen {
                    self.link(cookie, ev.local, ev.remote);
                }
                self.closing
                    .push_back((ev.ts_ns.saturating_add(CLOSE_GRACE_NS), cookie));
            }
        }
    }

    /// Write out closed connections whose grace is over.
    fn flush_closing(&mut self, now: u64) {
        while let Some(&(deadline, cookie)) = self.closing.front() {
            if deadline > now {
                break;
            }
            self.closing.pop_front();
            let due = self.conns.get(&cookie).is_some_and(|c| c.closing.is_some());
            if due {
                if let Some(mut c) = self.conns.remove(&cookie) {
                    if let Some(ev) = c.closing.take() {
                        let ts = ev.ts_ns;
                        self.finish(c, Some(&ev), ts, "");
                    }
                }
            }
        }
    }

    /// Periodic work: write out held records whose wait is over.
    pub fn tick(&mut self, now: u64) {
        if let Some(a) = self.attrib.as_mut() {
            a.tick(now);
        }
        self.flush_closing(now);
        self.expire_lost_streams(now);
        self.recount_parser_bytes();
        self.enforce_parser_budget(now);
    }

    /// Count what every parser holds (parsers also shrink between calls).
    fn recount_parser_bytes(&mut self) {
        let mut total = 0usize;
        for c in self.conns.values_mut() {
            c.mem = c.http.as_ref().map_or(0, Parser::buffered_bytes);
            total = total.saturating_add(c.mem);
        }
        self.parser_bytes = total;
    }

    /// A connection's parser holds `mem` bytes now.
    fn set_mem(&mut self, c: &mut Conn, mem: usize) {
        self.parser_bytes = self.parser_bytes.saturating_sub(c.mem).saturating_add(mem);
        c.mem = mem;
    }

    /// Over the shared budget: bring the parsers that hold the most down until all hold
    /// at most three quarters of it (so that parsers held at the budget do not sort on
    /// every call). First what waits for an answer is written out early (nothing is
    /// lost, the parsers stay in step); only if that is not enough are parsers started
    /// over (their partial heads, frames and tables are lost, counted).
    fn enforce_parser_budget(&mut self, now: u64) {
        if self.parser_bytes <= self.opts.max_parser_bytes {
            return;
        }
        let goal = self.opts.max_parser_bytes / 4 * 3;
        for restart in [false, true] {
            let mut held: Vec<(usize, u64)> = self
                .conns
                .values()
                .filter(|c| c.mem > 0 && !self.may_be_linked_yet(c, now))
                .map(|c| (c.mem, c.cookie))
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            for (_, cookie) in held {
                if self.parser_bytes <= goal {
                    return;
                }
                if let Some(mut c) = self.conns.remove(&cookie) {
                    if restart {
                        self.restart_parser(&mut c, now);
                    } else {
                        self.shed_waiting(&mut c);
                    }
                    self.conns.insert(cookie, c);
                }
            }
        }
    }

    /// A client's view that may still be linked to a server's view on this node: its
    /// exchanges must not be written yet (the server's view writes them once linked).
    fn may_be_linked_yet(&self, c: &Conn, now: u64) -> bool {
        c.peer.is_none() && c.role != Role::Server && now.saturating_sub(c.open_ns) < LINK_WAIT_NS
    }

    /// Write out early what a connection's parser holds waiting for an answer.
    fn shed_waiting(&mut self, c: &mut Conn) {
        let Some(mut h) = c.http.take() else {
            return;
        };
        let mut done = std::mem::take(&mut self.scratch);
        h.shed(&mut done);
        let any = !done.is_empty();
        for x in done.drain(..) {
            self.emit_http(c, x);
        }
        self.scratch = done;
        let mem = h.buffered_bytes();
        c.http = Some(h);
        self.set_mem(c, mem);
        if any {
            self.user.parsers_shed_memory += 1;
        }
    }

    /// Close a connection's parser (taken out of it): what it has in flight is written
    /// out (with `note`, if any), the role it learnt is kept, its counters are kept.
    fn close_parser(&mut self, c: &mut Conn, h: &mut Parser, now: u64, note: Option<&'static str>) {
        let mut done = std::mem::take(&mut self.scratch);
        h.close(now, &mut done);
        if c.role == Role::Unknown && h.role() != Role::Unknown {
            c.role = h.role();
            c.role_source = RoleSource::Payload;
        }
        for mut x in done.drain(..) {
            if let Some(n) = note {
                x.note(n);
            }
            self.emit_http(c, x);
        }
        self.scratch = done;
        if let Some(x) = h.http1_stats() {
            add_stats(&mut self.http_closed, x);
        }
        if let Some(x) = h.http2_stats() {
            add_h2_stats(&mut self.h2_closed, x);
        }
    }

    /// Start a connection's parser over: what it has in flight is written out,
    /// incomplete, note `memory_budget`; what follows is parsed as if joined mid-stream,
    /// and the connection is marked as having lost data.
    fn restart_parser(&mut self, c: &mut Conn, now: u64) {
        let Some(mut h) = c.http.take() else {
            return;
        };
        self.close_parser(c, &mut h, now, Some("memory_budget"));
        let mut fresh = if h.is_http2() {
            Parser::http2(c.role, false)
        } else {
            Parser::http1(c.role, self.opts.max_header_bytes)
        };
        // Bytes were skipped: pairing is only trusted again from a fresh start.
        fresh.gap(Direction::Egress);
        fresh.gap(Direction::Ingress);
        c.http = Some(fresh);
        let mem = c.http.as_ref().map_or(0, Parser::buffered_bytes);
        self.set_mem(c, mem);
        c.data_lost = true;
        self.user.parsers_restarted_memory += 1;
    }

    /// HTTP/2 streams that lost frames and went quiet are written out incomplete.
    fn expire_lost_streams(&mut self, now: u64) {
        let h2: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.http.as_ref().is_some_and(|h| h.is_http2()))
            .map(|(k, _)| *k)
            .collect();
        for cookie in h2 {
            let Some(mut c) = self.conns.remove(&cookie) else {
                continue;
            };
            let mut done = std::mem::take(&mut self.scratch);
            if let Some(h) = c.http.as_mut() {
                h.expire(now, H2_LOST_IDLE_NS, &mut done);
            }
            for x in done.drain(..) {
                self.emit_http(&mut c, x);
            }
            self.scratch = done;
            self.conns.insert(cookie, c);
        }
    }

    pub fn on_data(&mut self, ev: &DataEvent<'_>) {
        self.user.events += 1;
        let mut c = match self.conns.remove(&ev.cookie) {
            Some(c) => c,
            None => {
                // Its opening event was lost: track it from here, as joined mid-stream,
                // within the table's bound like any other.
                self.maybe_evict(ev.ts_ns);
                let mut c = Conn::new(ev.cookie, ev.ts_ns);
                c.next_seq = ev.seq;
                c
            }
        };
        if ev.seq != c.next_seq {
            if ev.seq > c.next_seq {
                self.lost.sequence_gaps += ev.seq - c.next_seq;
            }
            c.data_lost = true;
            if let Some(h) = c.http.as_mut() {
                h.gap(Direction::Egress);
                h.gap(Direction::Ingress);
            }
        }
        c.next_seq = ev.seq + 1;
        c.last_ns = ev.ts_ns;
        c.data_seen = true;
        // TLS plaintext repeats bytes the socket calls (ciphertext) already counted.
        let plaintext = ev.is_tls_plaintext();
        match ev.dir {
            _ if plaintext => {}
            Direction::Egress => {
                c.bytes_sent += ev.len;
                c.send_calls += 1;
                if c.closing.is_some() {
                    c.late_sent += ev.len;
                }
            }
            Direction::Ingress => {
                c.bytes_recv += ev.len;
                c.recv_calls += 1;
                if c.closing.is_some() {
                    c.late_recv += ev.len;
                }
            }
        }
        let owner_changed = c.owner.as_ref().is_none_or(|o| o.pid != ev.tgid);
        if owner_changed {
            c.owner = Some(Owner {
                pid: ev.tgid,
                comm: comm_str(&ev.comm),
                cgroup_id: ev.cgroup_id,
            });
        }

        if ev.is_ciphertext() {
            // Encrypted bytes of a TLS connection: never parsed; its plaintext comes
            // from the TLS library's probes.
            c.tls = true;
            self.conns.insert(c.cookie, c);
            return;
        }
        if plaintext {
            c.tls = true;
            c.tls_plaintext = true;
            if c.proto == Proto::Tls {
                // The handshake was seen as TLS records; now parse what it protects.
                c.proto = Proto::Undecided;
                c.detect_tries = 0;
            }
        }
        if c.proto == Proto::Undecided && !ev.payload.is_empty() {
            c.detect_tries += 1;
            match l7::detect(ev.payload) {
                l7::Detected::Http1 => {
                    c.proto = Proto::Http1;
                    c.http = Some(Parser::http1(c.role, self.opts.max_header_bytes));
                }
                l7::Detected::Http2 { preface } => {
                    c.proto = Proto::Http2;
                    // Without the preface, or on a connection open before capture, the
                    // HPACK tables' earlier state is unknown.
                    let from_start = preface || !c.preexisting;
                    c.http = Some(Parser::http2(c.role, from_start));
                }
                l7::Detected::Tls => c.proto = Proto::Tls,
                l7::Detected::Unknown => {
                    if !c.preexisting || c.detect_tries >= DETECT_TRIES_PREEXISTING {
                        c.proto = Proto::Unknown;
                    }
                }
            }
        }
        if let Some(h) = c.http.as_mut() {
            let chunk = Chunk {
                dir: ev.dir,
                start_ns: ev.start_ns,
                end_ns: ev.ts_ns,
                len: ev.len,
                data: ev.payload,
            };
            let mut done = std::mem::take(&mut self.scratch);
            h.feed(&chunk, &mut done);
            if c.role == Role::Unknown && h.role() != Role::Unknown {
                c.role = h.role();
                c.role_source = RoleSource::Payload;
            }
            if c.proto == Proto::Http1 && h.is_http2() {
                c.proto = Proto::Http2;
            }
            for x in done.drain(..) {
                self.emit_http(&mut c, x);
            }
            self.scratch = done;
        }
        let mem = c.http.as_ref().map_or(0, Parser::buffered_bytes);
        self.set_mem(&mut c, mem);
        let over = self.parser_bytes > self.opts.max_parser_bytes;
        self.conns.insert(c.cookie, c);
        if over {
            self.enforce_parser_budget(ev.ts_ns);
        }
    }

    /// Capture is ending: write out every connection still open.
    pub fn finish_all(&mut self, now: u64) {
        self.flush_closing(u64::MAX);
        let cookies: Vec<u64> = self.conns.keys().copied().collect();
        for cookie in cookies {
            if let Some(c) = self.conns.remove(&cookie) {
                self.finish(c, None, now, "open_at_exit");
            }
        }
    }

    fn link(&mut self, cookie: u64, local: SocketAddr, remote: SocketAddr) {
        self.by_tuple.insert((local, remote), cookie);
        if let Some(&peer) = self.by_tuple.get(&(remote, local)) {
            if peer != cookie && self.conns.contains_key(&peer) {
                if let Some(c) = self.conns.get_mut(&cookie) {
                    c.peer = Some(peer);
                }
                if let Some(p) = self.conns.get_mut(&peer) {
                    p.peer = Some(cookie);
                }
            }
        }
    }

    /// Link the two local sockets of a connection whose destination was translated on
    /// the way (a client dialled a Service IP; the backend accepted from the client's
    /// address): the client's local address is the server's remote, and the kernel's
    /// NAT table says the client's destination became the server's local address.
    fn link_translated(&mut self, cookie: u64, local: SocketAddr, remote: SocketAddr, role: Role) {
        let (client, server) = match role {
            Role::Client => {
                self.clients_by_local.insert(local, cookie);
                match self.servers_by_remote.get(&local) {
                    Some(&s) => (cookie, s),
                    None => return,
                }
            }
            Role::Server => {
                self.servers_by_remote.insert(remote, cookie);
                match self.clients_by_local.get(&remote) {
                    Some(&c) => (c, cookie),
                    None => return,
                }
            }
            Role::Unknown => return,
        };
        if client == server {
            return;
        }
        let (Some(c), Some(s)) = (self.conns.get(&client), self.conns.get(&server)) else {
            return;
        };
        if c.peer.is_some() || s.peer.is_some() {
            return;
        }
        let (Some(cl), Some(cr), Some(sl)) = (c.local, c.remote, s.local) else {
            return;
        };
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        if canon(cr) == canon(sl) {
            return; // not translated: the mirrored tuple links these
        }
        let Some(dest) = self.attrib.as_mut().and_then(|a| a.nat_destination(cl, cr)) else {
            return;
        };
        if canon(dest) != canon(sl) {
            return;
        }
        if let Some(c) = self.conns.get_mut(&client) {
            c.peer = Some(server);
        }
        if let Some(s) = self.conns.get_mut(&server) {
            s.peer = Some(client);
            s.nat_via = Some(cr);
        }
        self.user.nat_linked += 1;
    }

    fn peer_view(&self, c: &Conn) -> Option<PeerView> {
        let peer = c.peer?;
        self.conns
            .get(&peer)
            .map(Conn::view)
            .or_else(|| self.closed_peers.get(&peer).cloned())
    }

    fn effective_role(&self, c: &Conn) -> (Role, RoleSource) {
        if c.role != Role::Unknown {
            return (c.role, c.role_source);
        }
        // Nothing told: the end with an ephemeral port is the client.
        let (lo, hi) = self.opts.ephemeral_ports;
        let eph = |p: u16| p >= lo && p <= hi;
        match (c.local, c.remote) {
            (Some(l), Some(r)) if eph(l.port()) && !eph(r.port()) => {
                (Role::Client, RoleSource::Port)
            }
            (Some(l), Some(r)) if !eph(l.port()) && eph(r.port()) => {
                (Role::Server, RoleSource::Port)
            }
            (Some(l), Some(r)) if l.port() > r.port() => (Role::Client, RoleSource::Port),
            _ => (Role::Server, RoleSource::Port),
        }
    }

    /// Which side writes the record of this socket, or None when the peer's view is
    /// written instead.
    fn observed_by(&self, c: &Conn, role: Role, peer: Option<&PeerView>) -> Option<ObservedBy> {
        match (role, peer) {
            (Role::Server, Some(_)) => Some(ObservedBy::Both),
            (Role::Server, _) => Some(ObservedBy::Server),
            (_, Some(p)) => {
                let peer_is_server = match p.role {
                    Some(Role::Server) => true,
                    Some(Role::Unknown) | None => {
                        // Both ends unsure: the ephemeral-port end is the client.
                        self.effective_role(c).0 == Role::Client
                    }
                    Some(Role::Client) => false,
                };
                if peer_is_server {
                    None
                } else {
                    Some(ObservedBy::Client)
                }
            }
            _ => Some(ObservedBy::Client),
        }
    }

    fn endpoint(addr: Option<SocketAddr>, owner: Option<&Owner>) -> Endpoint {
        let mut e = Endpoint {
            addr: addr.map(|a| a.ip()),
            port: addr.map(|a| a.port()).unwrap_or(0),
            ..Endpoint::default()
        };
        if let Some(o) = owner {
            e.pid = Some(o.pid);
            e.process = Some(o.comm.clone());
            e.cgroup_id = Some(o.cgroup_id);
        }
        e
    }

    fn ends(&mut self, c: &Conn, role: Role, peer: Option<&PeerView>) -> (Endpoint, Endpoint) {
        let mut local = Self::endpoint(c.local, c.owner.as_ref());
        let mut remote = Self::endpoint(c.remote, peer.and_then(|p| p.owner.as_ref()));
        if let Some(a) = self.attrib.as_mut() {
            for (ep, other) in [(&mut local, c.remote), (&mut remote, c.local)] {
                if ep.pid.is_some() {
                    a.attribute_process(ep);
                } else {
                    a.attribute_address(ep, other);
                }
            }
        }
        if let (Some(via), Role::Server) = (c.nat_via, role) {
            local.via = Some(ServiceAddr {
                addr: Some(via.ip()),
                port: via.port(),
                service: self.attrib.as_mut().and_then(|a| a.service_at(via)),
            });
        }
        if role == Role::Client {
            (local, remote)
        } else {
            (remote, local)
        }
    }

    fn emit_http(&mut self, c: &mut Conn, x: Exchange) {
        c.exchanges += 1;
        let role = if c.role == Role::Unknown {
            self.effective_role(c).0
        } else {
            c.role
        };
        let peer = self.peer_view(c);
        // A linked peer that parses the same traffic writes the exchange if it is the
        // server. The server's view says `both` whenever the client's socket is linked,
        // whether or not the client's bytes were parsed by then (TLS plaintext of the
        // client's write can arrive after the server answered: the client's side then
        // drops its duplicate as usual).
        let peer_http = if role == Role::Server {
            peer.as_ref()
        } else {
            peer.as_ref().filter(|p| p.http)
        };
        let observed_by = match self.observed_by(c, role, peer_http) {
            Some(o) => o,
            // The server's view could not pair this exchange's response with a request
            // (it missed the request): the client's view writes it, once.
            None if peer_http.is_some_and(|p| p.unanswered > 0) => {
                if let Some(p) = c.peer.and_then(|p| self.conns.get_mut(&p)) {
                    p.taken_over += 1;
                }
                ObservedBy::Both
            }
            None => {
                self.user.deduplicated += 1;
                return;
            }
        };
        let (client, server) = self.ends(c, role, peer.as_ref());
        let mut rec = match x {
            Exchange::Http1(x) => self.http1_record(x),
            Exchange::Http2(x) => self.http2_record(x),
        };
        rec.conn_id = c.cookie;
        rec.observed_by = observed_by;
        rec.client = client;
        rec.server = server;
        rec.tls = c.tls;
        if rec.partial {
            self.user.partial_records += 1;
        }
        self.user.http_records += 1;
        self.out.push(Record::Http(rec));
    }

    fn path_and_query(&self, target: &str) -> (String, Option<String>) {
        let (path, query) = split_target(target);
        (path, if self.opts.keep_query { query } else { None })
    }

    /// The parts of a record that come from an HTTP/1 exchange.
    fn http1_record(&self, x: Http1Exchange) -> HttpRecord {
        let (path, query) = self.path_and_query(&x.target);
        let end = if x.resp_end_ns > 0 {
            x.resp_end_ns
        } else {
            x.req_end_ns
        };
        let error = x.status.is_none_or(|s| s >= 500);
        HttpRecord {
            v: SCHEMA_VERSION,
            time: self.clock.rfc3339(end),
            conn_id: 0,
            observed_by: ObservedBy::Server,
            client: Endpoint::default(),
            server: Endpoint::default(),
            protocol: format!("HTTP/{}", x.version),
            tls: false,
            method: Some(x.method),
            path: Some(path),
            query,
            host: x.host,
            user_agent: x.user_agent,
            status: x.status,
            content_type: x.content_type,
            request: MessageSize {
                header_bytes: x.req_header_bytes,
                body_bytes: x.req_body_bytes,
                chunked: x.chunked_request,
            },
            response: MessageSize {
                header_bytes: x.resp_header_bytes,
                body_bytes: x.resp_body_bytes,
                chunked: x.chunked_response,
            },
            start_mono_ns: x.req_start_ns,
            end_mono_ns: x.resp_end_ns,
            start_time: self.clock.rfc3339(x.req_start_ns),
            duration_ns: if x.resp_end_ns > 0 {
                x.resp_end_ns.saturating_sub(x.req_start_ns)
            } else {
                0
            },
            interim: x.interim,
            upgrade: x.upgrade,
            trace: x.trace.map(trace_of),
            stream_id: None,
            grpc: None,
            reset_code: None,
            error,
            complete: x.complete,
            partial: x.partial,
            notes: x.notes.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The parts of a record that come from an HTTP/2 stream.
    fn http2_record(&self, x: H2Exchange) -> HttpRecord {
        let (path, query) = match x.path.as_deref() {
            Some(t) => {
                let (p, q) = self.path_and_query(t);
                (Some(p), q)
            }
            None => (None, None),
        };
        let grpc = if x.grpc {
            let (service, method) = grpc_parts(path.as_deref().unwrap_or(""));
            Some(GrpcCall {
                service,
                method,
                status: x.grpc_status,
                status_name: x.grpc_status.map(|c| grpc_status_name(c).to_string()),
                message: x.grpc_message.clone(),
                request_messages: x.req_messages,
                response_messages: x.resp_messages,
                trailers_only: x.trailers_only,
            })
        } else {
            None
        };
        let error = x.status.is_none_or(|s| s >= 500)
            || x.reset_code.is_some()
            || (x.grpc && x.grpc_status.is_none_or(|g| g != 0));
        let end = if x.resp_end_ns > 0 {
            x.resp_end_ns
        } else {
            x.req_end_ns.max(x.req_start_ns)
        };
        HttpRecord {
            v: SCHEMA_VERSION,
            time: self.clock.rfc3339(end),
            conn_id: 0,
            observed_by: ObservedBy::Server,
            client: Endpoint::default(),
            server: Endpoint::default(),
            protocol: "HTTP/2".to_string(),
            tls: false,
            method: x.method,
            path,
            query,
            host: x.authority,
            user_agent: x.user_agent,
            status: x.status,
            content_type: x.content_type,
            request: MessageSize {
                header_bytes: x.req_header_bytes,
                body_bytes: x.req_body_bytes,
                chunked: false,
            },
            response: MessageSize {
                header_bytes: x.resp_header_bytes,
                body_bytes: x.resp_body_bytes,
                chunked: false,
            },
            start_mono_ns: x.req_start_ns,
            end_mono_ns: x.resp_end_ns,
            start_time: self.clock.rfc3339(x.req_start_ns),
            duration_ns: if x.resp_end_ns > 0 && x.req_start_ns > 0 {
                x.resp_end_ns.saturating_sub(x.req_start_ns)
            } else {
                0
            },
            interim: Vec::new(),
            upgrade: None,
            trace: x.trace.map(trace_of),
            stream_id: Some(x.stream_id),
            grpc,
            reset_code: x.reset_code,
            error,
            complete: x.complete,
            partial: x.partial,
            notes: x.notes.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Close out a connection: flush its parser, write its record (unless its peer's
    /// view is written instead), forget it.
    fn finish(&mut self, mut c: Conn, ev: Option<&ConnEvent>, now: u64, end_reason: &str) {
        self.set_mem(&mut c, 0);
        if let Some(mut h) = c.http.take() {
            self.close_parser(&mut c, &mut h, now, None);
            c.http = Some(h);
        }
        if let (Some(l), Some(r)) = (c.local, c.remote) {
            if self.by_tuple.get(&(l, r)) == Some(&c.cookie) {
                self.by_tuple.remove(&(l, r));
            }
            if self.clients_by_local.get(&l) == Some(&c.cookie) {
                self.clients_by_local.remove(&l);
            }
            if self.servers_by_remote.get(&r) == Some(&c.cookie) {
                self.servers_by_remote.remove(&r);
            }
        }
        match c.proto {
            Proto::Http1 => self.user.connections_by_protocol_http1 += 1,
            Proto::Http2 => self.user.connections_by_protocol_http2 += 1,
            Proto::Tls => {
                // TLS whose plaintext no probe saw (a JVM's JSSE, a TLS library that
                // is not probed): say which processes, rather than nothing.
                self.user.connections_by_protocol_tls += 1;
                if let Some(o) = &c.owner {
                    if !self.tls_not_visible.contains(&o.comm)
                        && self.tls_not_visible.len() < MAX_TLS_NOT_VISIBLE
                    {
                        self.tls_not_visible.push(o.comm.clone());
                    }
                }
            }
            Proto::Undecided | Proto::Unknown => self.user.connections_by_protocol_unknown += 1,
        }
        let (role, role_source) = self.effective_role(&c);
        let peer = self.peer_view(&c);
        if let Some(p) = c.peer {
            if self.conns.contains_key(&p) {
                self.closed_peers.insert(c.cookie, c.view());
            } else {
                self.closed_peers.remove(&p);
            }
        }
        let Some(observed_by) = self.observed_by(&c, role, peer.as_ref()) else {
            self.user.deduplicated += 1;
            return;
        };
        let (client, server) = self.ends(&c, role, peer.as_ref());
        let (sent, recv, sc, rc) = match ev {
            Some(e) => (
                e.bytes_sent + c.late_sent,
                e.bytes_recv + c.late_recv,
                e.send_calls,
                e.recv_calls,
            ),
            None => (c.bytes_sent, c.bytes_recv, c.send_calls, c.recv_calls),
        };
        let (mut c2s, mut s2c, c2s_calls, s2c_calls) = if role == Role::Client {
            (sent, recv, sc, rc)
        } else {
            (recv, sent, rc, sc)
        };
        if let Some(p) = &peer {
            // What one end sent the other received: the larger count is the one that
            // missed nothing.
            let (p_c2s, p_s2c) = if role == Role::Client {
                (p.bytes_recv, p.bytes_sent)
            } else {
                (p.bytes_sent, p.bytes_recv)
            };
            c2s = c2s.max(p_c2s);
            s2c = s2c.max(p_s2c);
        }
        let mut handshake = Handshake::default();
        let (cs, est) = if role == Role::Client {
            (c.connect_start_ns, c.established_ns)
        } else {
            match &peer {
                Some(p) if p.connect_start_ns > 0 => (p.connect_start_ns, p.established_ns),
                _ => (0, c.established_ns),
            }
        };
        if cs > 0 {
            handshake.start_mono_ns = Some(cs);
        }
        if est > 0 {
            handshake.end_mono_ns = Some(est);
            if cs > 0 && est >= cs {
                handshake.duration_ns = Some(est - cs);
            }
        }
        handshake.success = est > 0 || c.preexisting;
        let (closed_by, reset_sent, reset_received, close_reason, tcp) = match ev {
            Some(e) => {
                let local_first = e.flags.closed_local();
                let peer_first = e.flags.closed_peer();
                let rs = e.flags.rst_sent();
                let rr = e.flags.rst_recv();
                let closer = |local: bool| -> &'static str {
                    match (role, local) {
                        (Role::Client, true) | (Role::Server, false) => "client",
                        _ => "server",
                    }
                };
                let closed_by = if local_first {
                    closer(true)
                } else if peer_first {
                    closer(false)
                } else if rs {
                    closer(true)
                } else if rr {
                    closer(false)
                } else {
                    "unknown"
                };
                let reason = if e.kind == ConnKind::ConnectFailed {
                    "connect_failed"
                } else if rs || rr {
                    "reset"
                } else {
                    "fin"
                };
                (
                    closed_by.to_string(),
                    rs,
                    rr,
                    reason.to_string(),
                    TcpFigures {
                        srtt_us: e.srtt_us,
                        retransmits: e.total_retrans,
                        segs_in: e.segs_in,
                        segs_out: e.segs_out,
                    },
                )
            }
            None => (
                "unknown".to_string(),
                false,
                false,
                end_reason.to_string(),
                TcpFigures::default(),
            ),
        };
        if ev.is_some_and(|e| e.kind == ConnKind::ConnectFailed) {
            handshake.success = false;
        }
        self.user.connection_records += 1;
        self.out.push(Record::Connection(ConnectionRecord {
            v: SCHEMA_VERSION,
            time: self.clock.rfc3339(now),
            mono_ns: now,
            conn_id: c.cookie,
            observed_by,
            role_source,
            client,
            server,
            protocol: match c.proto {
                Proto::Http1 => "http1",
                Proto::Http2 => "http2",
                Proto::Tls => "tls",
                Proto::Undecided | Proto::Unknown => "unknown",
            }
            .to_string(),
            tls: c.tls || c.proto == Proto::Tls,
            preexisting: c.preexisting,
            handshake,
            bytes_client_to_server: c2s,
            bytes_server_to_client: s2c,
            calls_client_to_server: c2s_calls,
            calls_server_to_client: s2c_calls,
            tcp,
            closed_by,
            reset_sent,
            reset_received,
            close_reason,
            open_mono_ns: c.open_ns,
            duration_ns: now.saturating_sub(c.open_ns),
            exchanges: c.exchanges + c.taken_over,
            data_lost: c.data_lost,
        }));
    }

    fn maybe_evict(&mut self, now: u64) {
        if self.conns.len() <= self.opts.max_connections {
            return;
        }
        // Evict the least recently active tenth in one go, so that a table held at its
        // bound does not sort on every insert.
        let mut ages: Vec<(u64, u64)> =
            self.conns.values().map(|c| (c.last_ns, c.cookie)).collect();
        ages.sort_unstable();
        let n = (self.opts.max_connections / 10).max(1);
        for (_, cookie) in ages.into_iter().take(n) {
            if let Some(c) = self.conns.remove(&cookie) {
                self.lost.evicted_connections += 1;
                self.finish(c, None, now, "evicted");
            }
        }
    }
}

fn trace_of(t: crate::protocol::http1::TraceContext) -> Trace {
    Trace {
        provider: t.provider.to_string(),
        trace_id: t.trace_id,
        segment_id: t.segment_id,
        span_id: t.span_id,
        parent_service: t.parent_service,
    }
}

/// `/package.Service/Method` to (`package.Service`, `Method`).
fn grpc_parts(path: &str) -> (String, String) {
    let p = path.trim_start_matches('/');
    match p.rsplit_once('/') {
        Some((svc, m)) => (svc.to_string(), m.to_string()),
        None => (p.to_string(), String::new()),
    }
}

fn add_h2_stats(acc: &mut H2Stats, s: &H2Stats) {
    acc.frames += s.frames;
    acc.streams += s.streams;
    acc.resyncs += s.resyncs;
    acc.hpack_errors += s.hpack_errors;
    acc.hpack_fields_unknown += s.hpack_fields_unknown;
    acc.streams_cut += s.streams_cut;
    acc.header_blocks_cut += s.header_blocks_cut;
    acc.bytes_skipped += s.bytes_skipped;
    acc.goaways += s.goaways;
    acc.rst_streams += s.rst_streams;
    acc.push_promises_ignored += s.push_promises_ignored;
    acc.parse_errors += s.parse_errors;
    acc.hpack_downgrades += s.hpack_downgrades;
    acc.streams_evicted += s.streams_evicted;
    acc.streams_evicted_memory += s.streams_evicted_memory;
    acc.hpack_blocks_overworked += s.hpack_blocks_overworked;
}

fn add_stats(acc: &mut Http1Stats, s: &Http1Stats) {
    acc.requests += s.requests;
    acc.responses += s.responses;
    acc.interim_responses += s.interim_responses;
    acc.parse_errors += s.parse_errors;
    acc.resyncs += s.resyncs;
    acc.headers_truncated += s.headers_truncated;
    acc.unmatched_responses += s.unmatched_responses;
    acc.abandoned_requests += s.abandoned_requests;
    acc.bytes_skipped += s.bytes_skipped;
    acc.requests_evicted_memory += s.requests_evicted_memory;
}

/// Split a request target into path and query.
pub fn split_target(target: &str) -> (String, Option<String>) {
    match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{ConnFlags, Syscall};

    /// Attribution stand-in: one translated connection, from `client` to `service`,
    /// really to `backend`.
    struct Nat {
        client: SocketAddr,
        service: SocketAddr,
        backend: SocketAddr,
        lookups: std::sync::Arc<std::sync::atomic::AtomicU32>,
    }

    impl Attribution for Nat {
        fn attribute_process(&mut self, ep: &mut Endpoint) {
            ep.resolved_by = Some("process".into());
        }
        fn attribute_address(&mut self, ep: &mut Endpoint, _peer: Option<SocketAddr>) {
            ep.resolved_by = Some("unresolved".into());
        }
        fn nat_destination(&mut self, l: SocketAddr, r: SocketAddr) -> Option<SocketAddr> {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (l == self.client && r == self.service).then_some(self.backend)
        }
        fn service_at(&mut self, a: SocketAddr) -> Option<String> {
            (a == self.service).then(|| "cart.shop".to_string())
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn conn(
        kind: ConnKind,
        cookie: u64,
        ts: u64,
        local: &str,
        remote: &str,
        role: Role,
    ) -> ConnEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(if role == Role::Client {
            b"curl"
        } else {
            b"srv\0"
        });
        ConnEvent {
            kind,
            cookie,
            ts_ns: ts,
            connect_start_ns: 0,
            established_ns: ts,
            close_start_ns: 0,
            cgroup_id: cookie * 10,
            netns: 0,
            bytes_sent: 0,
            bytes_recv: 0,
            send_calls: 0,
            recv_calls: 0,
            data_events: 0,
            tcp_bytes_acked: 0,
            tcp_bytes_received: 0,
            srtt_us: 0,
            total_retrans: 0,
            segs_out: 0,
            segs_in: 0,
            tgid: cookie as u32 * 100,
            flags: ConnFlags::OWNER_KNOWN | ConnFlags::CLOSED_LOCAL,
            role,
            old_state: 0,
            new_state: 0,
            local: sa(local),
            remote: sa(remote),
            comm,
        }
    }

    fn data<'a>(
        cookie: u64,
        seq: u64,
        ts: u64,
        dir: Direction,
        payload: &'a [u8],
    ) -> DataEvent<'a> {
        DataEvent {
            cookie,
            ts_ns: ts,
            start_ns: ts,
            seq,
            len: payload.len() as u64,
            cgroup_id: cookie * 10,
            tgid: cookie as u32 * 100,
            tid: cookie as u32 * 100,
            fd: 3,
            dir,
            syscall: match dir {
                Direction::Egress => Syscall::Write,
                Direction::Ingress => Syscall::Read,
            },
            flags: 0,
            comm: [0; 16],
            payload,
        }
    }

    /// Client 198.18.7.11 dials the Service 198.19.7.10:80; the backend 198.18.7.12:8080
    /// accepts from the client's own address. Both sockets are on this node: one record
    /// per exchange and per connection, with both processes and the Service address.
    #[test]
    fn translated_connection_between_local_sockets_is_written_once() {
        let (client, service, backend) =
            ("198.18.7.11:40000", "198.19.7.10:80", "198.18.7.12:8080");
        let lookups = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let nat = Nat {
            client: sa(client),
            service: sa(service),
            backend: sa(backend),
            lookups: lookups.clone(),
        };
        let mut e = Engine::new(
            EngineOptions::default(),
            Clock::now(),
            Some(Box::new(nat)),
            0,
        );
        let req = b"GET /x HTTP/1.1\r\nHost: cart\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        e.on_conn(&conn(
            ConnKind::Connected,
            1,
            1_000,
            client,
            service,
            Role::Client,
        ));
        e.on_data(&data(1, 0, 2_000, Direction::Egress, req));
        // The accepted socket is announced at its first data.
        e.on_conn(&conn(
            ConnKind::Accepted,
            2,
            2_500,
            backend,
            client,
            Role::Server,
        ));
        e.on_data(&data(2, 0, 3_000, Direction::Ingress, req));
        e.on_data(&data(2, 1, 4_000, Direction::Egress, resp));
        e.on_data(&data(1, 1, 5_000, Direction::Ingress, resp));
        e.on_conn(&conn(
            ConnKind::Closed,
            1,
            6_000,
            client,
            service,
            Role::Client,
        ));
        e.on_conn(&conn(
            ConnKind::Closed,
            2,
            6_100,
            backend,
            client,
            Role::Server,
        ));
        e.finish_all(1_000_000_000);
        let http: Vec<&HttpRecord> = e
            .out
            .iter()
            .filter_map(|r| match r {
                Record::Http(h) => Some(h),
                _ => None,
            })
            .collect();
        let conns: Vec<&ConnectionRecord> = e
            .out
            .iter()
            .filter_map(|r| match r {
                Record::Connection(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(http.len(), 1, "{:#?}", e.out);
        assert_eq!(conns.len(), 1, "{:#?}", e.out);
        assert_eq!(e.user_counters().nat_linked, 1);
        for (ob, cl, sv) in [
            (http[0].observed_by, &http[0].client, &http[0].server),
            (conns[0].observed_by, &conns[0].client, &conns[0].server),
        ] {
            assert_eq!(ob, ObservedBy::Both);
            assert_eq!(cl.pid, Some(100));
            assert_eq!(sv.pid, Some(200));
            assert_eq!(sv.port, 8080);
            let via = sv.via.as_ref().expect("the Service address is kept");
            assert_eq!(via.addr, Some(sa(service).ip()));
            assert_eq!(via.port, 80);
            assert_eq!(via.service.as_deref(), Some("cart.shop"));
        }
        assert_eq!(lookups.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// Data of sockets whose opening events were all lost (a ring overflow, or sockets a
    /// pod opens and writes without ever being seen connecting) still fills the table
    /// only to its bound: the least recently active are written out and counted.
    #[test]
    fn connections_first_seen_by_their_data_are_bounded() {
        let opts = EngineOptions {
            max_connections: 100,
            ..EngineOptions::default()
        };
        let mut e = Engine::new(opts, Clock::now(), None, 0);
        for cookie in 1..=1000u64 {
            e.on_data(&data(cookie, 0, cookie * 10, Direction::Egress, b"x"));
            assert!(e.connections_open() <= 101, "{}", e.connections_open());
        }
        let evicted = e.loss_counters().evicted_connections;
        assert!(evicted >= 899, "{evicted}");
        assert_eq!(evicted as usize + e.connections_open(), 1000);
    }

    /// Clients that pipeline requests no one answers make every parser hold up to its own
    /// bound; together they are held to the shared budget: the parsers holding the most
    /// start over, their requests are written out (incomplete, `memory_budget`), none is
    /// lost, and parsing goes on.
    #[test]
    fn parsers_are_held_to_one_shared_budget() {
        let budget = 256 * 1024;
        let opts = EngineOptions {
            max_parser_bytes: budget,
            ..EngineOptions::default()
        };
        let mut e = Engine::new(opts, Clock::now(), None, 0);
        let long = "a".repeat(1000);
        let mut sent = 0u64;
        let mut peak = 0;
        for cookie in 1..=40u64 {
            e.on_conn(&conn(
                ConnKind::Connected,
                cookie,
                cookie,
                &format!("127.0.0.1:{}", 40000 + cookie),
                "127.0.0.2:8080",
                Role::Client,
            ));
            for seq in 0..50u64 {
                let req = format!("GET /{long}/{seq} HTTP/1.1\r\nHost: x\r\n\r\n");
                // Past the wait for a server's view on this node to be linked.
                let ts = LINK_WAIT_NS + 1000 + seq;
                e.on_data(&data(cookie, seq, ts, Direction::Egress, req.as_bytes()));
                sent += 1;
                peak = peak.max(e.user_counters().parser_bytes);
            }
        }
        let u = e.user_counters();
        assert!(peak <= budget as u64 + 64 * 1024, "peak {peak}");
        assert!(u.parsers_shed_memory >= 4, "{u:?}");
        // A client's view younger than the wait, with no server's view linked yet, is
        // not made to write early: the server's view may still come and write it.
        let mut young = Engine::new(
            EngineOptions {
                max_parser_bytes: 16 * 1024,
                ..EngineOptions::default()
            },
            Clock::now(),
            None,
            0,
        );
        young.on_conn(&conn(
            ConnKind::Connected,
            1,
            1,
            "127.0.0.1:40001",
            "127.0.0.2:8080",
            Role::Client,
        ));
        for seq in 0..50u64 {
            let req = format!("GET /{long}/{seq} HTTP/1.1\r\nHost: x\r\n\r\n");
            young.on_data(&data(1, seq, 1000 + seq, Direction::Egress, req.as_bytes()));
        }
        assert_eq!(young.user_counters().parsers_shed_memory, 0);
        young.tick(LINK_WAIT_NS + 10);
        assert_eq!(young.user_counters().parsers_shed_memory, 1);
        assert!(young.user_counters().parser_bytes <= 16 * 1024);
        // Held back without the budget: 40 x 50 requests of about 1.1 KB.
        e.finish_all(LINK_WAIT_NS + 1_000_000);
        let http: Vec<&HttpRecord> = e
            .out
            .iter()
            .filter_map(|r| match r {
                Record::Http(h) => Some(h),
                _ => None,
            })
            .collect();
        assert_eq!(http.len() as u64, sent, "every request written once");
        let shed = http
            .iter()
            .filter(|h| h.notes.iter().any(|n| n == "memory_budget"))
            .count();
        assert!(shed >= 100, "{shed} written early");
        assert_eq!(e.user_counters().parser_bytes, 0);
    }

    /// A server whose remote happens to be a local client's address, but the kernel's
    /// NAT table does not send that client to it: not linked.
    #[test]
    fn untranslated_coincidence_is_not_linked() {
        let nat = Nat {
            client: sa("198.18.7.11:40000"),
            service: sa("198.19.7.10:80"),
            backend: sa("198.18.7.13:8080"),
            lookups: Default::default(),
        };
        let mut e = Engine::new(
            EngineOptions::default(),
            Clock::now(),
            Some(Box::new(nat)),
            0,
        );
        e.on_conn(&conn(
            ConnKind::Connected,
            1,
            1,
            "198.18.7.11:40000",
            "198.19.7.10:80",
            Role::Client,
        ));
        e.on_conn(&conn(
            ConnKind::Accepted,
            2,
            2,
            "198.18.7.12:8080",
            "198.18.7.11:40000",
            Role::Server,
        ));
        e.finish_all(1_000_000_000);
        assert_eq!(e.user_counters().nat_linked, 0);
        let n = e
            .out
            .iter()
            .filter(|r| matches!(r, Record::Connection(_)))
            .count();
        assert_eq!(n, 2);
    }
}
