//! Per-connection state in user space: turns kernel events into access-log records.
//!
//! Pure: no I/O except through the injected process resolver. Records are pushed to
//! `Engine::out`, which the caller drains after each event.
//!
//! This file holds the connection table and the handling of events (opening, data,
//! closing, ticks, eviction); `pairing` links the two views of a connection whose both
//! ends are on this node and decides which view writes; `records` builds the records
//! (pure); `budget` holds the parsers to their shared memory budget.

mod budget;
mod pairing;
mod records;
#[cfg(test)]
mod test_util;

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::capture::{comm_str, ConnEvent, ConnKind, DataEvent, KernelCounters};
use crate::model::{
    Clock, Endpoint, LossCounters, Record, RoleSource, ServiceAddr, StatsRecord, UserCounters,
    SCHEMA_VERSION,
};
use crate::protocol::http1::Http1Stats;
use crate::protocol::http2::H2Stats;
use crate::protocol::l7::{self, Exchange, Parser};
use crate::protocol::{Chunk, Direction, Role};
use crate::resolve::Attribution;

pub use budget::DEFAULT_PARSER_BYTES;
use pairing::PeerView;
pub use records::split_target;

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

    /// The client and server ends of a record of this socket, attributed.
    fn ends(&mut self, c: &Conn, role: Role, peer: Option<&PeerView>) -> (Endpoint, Endpoint) {
        let mut local = records::endpoint(c.local, c.owner.as_ref());
        let mut remote = records::endpoint(c.remote, peer.and_then(|p| p.owner.as_ref()));
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
        let Some(observed_by) = self.exchange_observed_by(c, role, peer.as_ref()) else {
            self.user.deduplicated += 1;
            return;
        };
        let (client, server) = self.ends(c, role, peer.as_ref());
        let ends = records::ExchangeEnds {
            conn_id: c.cookie,
            observed_by,
            client,
            server,
            tls: c.tls,
        };
        let rec = records::http_record(x, ends, &self.clock, self.opts.keep_query);
        if rec.partial {
            self.user.partial_records += 1;
        }
        self.user.http_records += 1;
        self.out.push(Record::Http(rec));
    }

    /// Close out a connection: flush its parser, write its record (unless its peer's
    /// view is written instead), forget it.
    fn finish(&mut self, mut c: Conn, ev: Option<&ConnEvent>, now: u64, end_reason: &str) {
        self.set_mem(&mut c, 0);
        if let Some(mut h) = c.http.take() {
            self.close_parser(&mut c, &mut h, now, None);
            c.http = Some(h);
        }
        self.unindex(&c);
        self.count_protocol(&c);
        let (role, role_source) = self.effective_role(&c);
        let peer = self.peer_view(&c);
        self.keep_view_for_peer(&c);
        let Some(observed_by) = self.observed_by(&c, role, peer.as_ref()) else {
            self.user.deduplicated += 1;
            return;
        };
        let (client, server) = self.ends(&c, role, peer.as_ref());
        let rec = records::connection_record(
            records::Finished {
                conn: &c,
                close: ev,
                end_reason,
                now,
                role,
                role_source,
                peer: peer.as_ref(),
                observed_by,
                client,
                server,
            },
            &self.clock,
        );
        self.user.connection_records += 1;
        self.out.push(Record::Connection(rec));
    }

    /// Count a finished connection by its protocol; TLS whose plaintext no probe saw (a
    /// JVM's JSSE, a TLS library that is not probed) names its process, rather than
    /// nothing.
    fn count_protocol(&mut self, c: &Conn) {
        match c.proto {
            Proto::Http1 => self.user.connections_by_protocol_http1 += 1,
            Proto::Http2 => self.user.connections_by_protocol_http2 += 1,
            Proto::Tls => {
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

#[cfg(test)]
mod tests {
    use super::test_util::data;
    use super::*;

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
}
