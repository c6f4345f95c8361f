//! The dashboard's data: records folded into per-service, per-pod, per-endpoint,
//! per-edge and per-L4-flow aggregates over sliding windows, the access-log tail and the
//! capture's health. Pure (no I/O, no clock): time comes in with the records and ticks.
//!
//! Names follow `entities` (SWIP-2): services `svc.ns`, instances are pods, endpoints
//! `METHOD:path`, relation parties `entities::Party` (a remote with no service is named
//! by its IP), no relation inside one pod or between instances of one service.
//!
//! One exchange can arrive twice: when a client reaches a pod on this node through a
//! Service IP, the client's socket and the server's socket each write a record. Inbound
//! figures (services, pods, endpoints, edges) count the server's view and skip a client's
//! view whose server is a pod seen on this node; outbound figures do the converse. What is
//! skipped is counted. A client's view of a pod not (yet) seen on this node waits a
//! short grace before it is counted, so that the server's view, written at about the
//! same time, can tell that the pod is local.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::entities::Party;
use crate::model::{ConnectionRecord, Endpoint, HttpRecord, ObservedBy, Record, StatsRecord};

use super::window::{Counts, Window, Windowed};

/// Bounds on what is kept; beyond them the least recently active entries are evicted
/// (counted).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub services: usize,
    pub pods: usize,
    pub endpoints: usize,
    pub edges: usize,
    pub flows: usize,
    pub tail: usize,
    pub local_pods: usize,
    /// Client views waiting for their grace.
    pub pending: usize,
}

/// How long a client's view of a pod waits for the server's view (ns).
pub const PENDING_GRACE_NS: u64 = 2_000_000_000;

impl Default for Limits {
    fn default() -> Self {
        Self {
            services: 256,
            pods: 512,
            endpoints: 1024,
            edges: 512,
            flows: 1024,
            tail: 1000,
            local_pods: 4096,
            pending: 65_536,
        }
    }
}

/// Protocol bits for filters.
pub const PROTO_HTTP1: u8 = 1;
pub const PROTO_HTTP2: u8 = 2;
pub const PROTO_GRPC: u8 = 4;
pub const PROTO_TLS: u8 = 8;
pub const PROTO_TCP: u8 = 16;

/// Small bounded sets of what an aggregate has seen, for filtering rows.
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    pub namespaces: Vec<String>,
    pub pods: Vec<String>,
    pub services: Vec<String>,
    pub ports: Vec<u16>,
    pub protos: u8,
}

const ATTR_MAX: usize = 8;

fn push_small<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if v.len() < ATTR_MAX && !v.contains(&x) {
        v.push(x);
    }
}

impl Attrs {
    fn end(&mut self, ep: &Endpoint) {
        if let Some(ns) = &ep.namespace {
            if !self.namespaces.iter().any(|n| n == ns) {
                push_small(&mut self.namespaces, ns.clone());
            }
        }
        if let Some(p) = &ep.pod {
            if !self.pods.iter().any(|n| n == p) {
                push_small(&mut self.pods, p.clone());
            }
        }
        if let Some(s) = &ep.service {
            if !self.services.iter().any(|n| n == s) {
                push_small(&mut self.services, s.clone());
            }
        }
    }
}

/// One aggregate: windows plus what it has seen.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    pub w: Windowed,
    pub attrs: Attrs,
    /// Everything since it was first seen (not windowed).
    pub total: Counts,
    pub first_ns: u64,
    /// Last gRPC status name that was not OK, for the detail pane.
    pub last_error: Option<String>,
}

impl Agg {
    fn add(&mut self, t: u64, now: u64, c: &Counts, lat: Option<u64>) {
        if self.first_ns == 0 {
            self.first_ns = t.max(1);
        }
        self.w.add(t, now, c, lat);
        add_counts(&mut self.total, c);
    }
}

fn add_counts(a: &mut Counts, b: &Counts) {
    // Only the figures shown as totals.
    a.requests += b.requests;
    a.errors += b.errors;
    a.out_requests += b.out_requests;
    a.out_errors += b.out_errors;
    a.bytes += b.bytes;
    a.conns += b.conns;
    a.conn_bytes_c2s += b.conn_bytes_c2s;
    a.conn_bytes_s2c += b.conn_bytes_s2c;
    a.retransmits += b.retransmits;
    a.resets += b.resets;
    a.connect_failed += b.connect_failed;
    a.s5xx += b.s5xx;
    a.s4xx += b.s4xx;
}

/// A map with at most `cap` entries; when full, the least recently active tenth is
/// evicted and counted.
#[derive(Debug, Clone)]
pub struct Bounded<K> {
    pub map: HashMap<K, Agg>,
    cap: usize,
    pub evicted: u64,
}

impl<K: std::hash::Hash + Eq + Clone> Bounded<K> {
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
            evicted: 0,
        }
    }

    fn entry(&mut self, k: &K) -> &mut Agg {
        if !self.map.contains_key(k) {
            if self.map.len() >= self.cap {
                self.evict();
            }
            self.map.insert(k.clone(), Agg::default());
        }
        self.map.get_mut(k).expect("just inserted")
    }

    fn evict(&mut self) {
        let mut ages: Vec<(u64, K)> = self
            .map
            .iter()
            .map(|(k, a)| (a.w.last_ns, k.clone()))
            .collect();
        ages.sort_by_key(|(t, _)| *t);
        let n = (self.cap / 10).max(1);
        for (_, k) in ages.into_iter().take(n) {
            self.map.remove(&k);
            self.evicted += 1;
        }
    }

    /// Drop what has been idle longer than the longest window (not an eviction: it is
    /// in no window any more).
    fn expire(&mut self, now: u64) {
        self.map.retain(|_, a| !a.w.idle(now));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// (namespace, pod).
pub type PodKey = (String, String);
/// (service, `METHOD:path`).
pub type EndpointKey = (String, String);
/// (client, server).
pub type EdgeKey = (Party, Party);
/// (client, server, server port).
pub type FlowKey = (Party, Party, u16);

/// One access-log line of the tail.
#[derive(Debug, Clone)]
pub struct TailEntry {
    pub mono_ns: u64,
    /// Wall clock as recorded (RFC 3339).
    pub time: String,
    pub client: String,
    pub server: String,
    pub server_port: u16,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub status: Option<u16>,
    pub grpc_status: Option<String>,
    pub duration_ns: u64,
    pub bytes: u64,
    pub error: bool,
    pub observed_by: ObservedBy,
    pub attrs: Attrs,
    pub status_mask: u8,
}

/// Counters of the dashboard itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounters {
    pub http: u64,
    pub connections: u64,
    pub stats: u64,
    /// Client views skipped for inbound figures (the server's view counts).
    pub dup_inbound_skipped: u64,
    /// Server views skipped for outbound figures (the client's view counts).
    pub dup_outbound_skipped: u64,
    /// Records in no relation: inside one pod, one service, or with no service at all.
    pub no_relation: u64,
    /// Client views counted without their grace (too many waiting).
    pub pending_overflow: u64,
}

/// The whole dashboard state.
#[derive(Debug, Clone)]
pub struct State {
    pub limits: Limits,
    pub now_ns: u64,
    /// Monotonic ns of the first record.
    pub start_ns: u64,
    pub services: Bounded<String>,
    pub pods: Bounded<PodKey>,
    pub endpoints: Bounded<EndpointKey>,
    pub edges: Bounded<EdgeKey>,
    pub flows: Bounded<FlowKey>,
    /// Newest first.
    pub tail: VecDeque<TailEntry>,
    /// Pods whose own sockets were seen: this node's.
    local_pods: HashSet<PodKey>,
    pub local_pods_full: u64,
    pub stats: Option<StatsRecord>,
    /// The stats record before `stats`, for rates.
    pub prev_stats: Option<StatsRecord>,
    pub counters: StateCounters,
    /// Every HTTP exchange counted (inbound), for the header's rate.
    pub totals: Windowed,
    /// Client views waiting for the grace, oldest first.
    pending: VecDeque<Record>,
}

fn status_counts(c: &mut Counts, status: Option<u16>) {
    match status {
        None => c.no_response += 1,
        Some(s) if s < 200 => c.s1xx += 1,
        Some(s) if s < 300 => c.s2xx += 1,
        Some(s) if s < 400 => c.s3xx += 1,
        Some(s) if s < 500 => c.s4xx += 1,
        Some(_) => c.s5xx += 1,
    }
}

fn pod_key(ep: &Endpoint) -> Option<PodKey> {
    Some((ep.namespace.clone().unwrap_or_default(), ep.pod.clone()?))
}

/// The relation party of an end (as `entities` names it).
pub fn party(ep: &Endpoint) -> Party {
    match &ep.service {
        Some(s) => Party::Service(s.clone()),
        None => Party::Ip(ep.addr.map(|a| a.to_string()).unwrap_or_default()),
    }
}

pub fn party_name(p: &Party) -> &str {
    match p {
        Party::Service(s) | Party::Ip(s) => s,
        Party::Instance(_, p) => p,
    }
}

/// Short display name of an end: service, else pod, else address.
pub fn end_name(ep: &Endpoint) -> String {
    if let Some(s) = &ep.service {
        return s.clone();
    }
    if let Some(p) = &ep.pod {
        return p.clone();
    }
    if let Some(p) = &ep.process {
        if ep.addr.is_none() {
            return p.clone();
        }
    }
    ep.addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

fn same_pod(a: &Endpoint, b: &Endpoint) -> bool {
    matches!((&a.pod, &b.pod), (Some(x), Some(y)) if x == y && a.namespace == b.namespace)
}

fn protos_of(h: &HttpRecord) -> u8 {
    let mut p = if h.grpc.is_some() {
        PROTO_GRPC | PROTO_HTTP2
    } else if h.protocol.starts_with("HTTP/2") {
        PROTO_HTTP2
    } else {
        PROTO_HTTP1
    };
    if h.tls {
        p |= PROTO_TLS;
    }
    p | PROTO_TCP
}

impl State {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            now_ns: 0,
            start_ns: 0,
            services: Bounded::new(limits.services),
            pods: Bounded::new(limits.pods),
            endpoints: Bounded::new(limits.endpoints),
            edges: Bounded::new(limits.edges),
            flows: Bounded::new(limits.flows),
            tail: VecDeque::new(),
            local_pods: HashSet::new(),
            local_pods_full: 0,
            stats: None,
            prev_stats: None,
            counters: StateCounters::default(),
            totals: Windowed::new(),
            pending: VecDeque::new(),
        }
    }

    /// A client's view of a pod that is not known as local yet: wait for the grace.
    fn should_wait(&self, by: ObservedBy, server: &Endpoint) -> bool {
        by == ObservedBy::Client
            && server.pid.is_none()
            && server.pod.is_some()
            && !self.is_local_pod(server)
    }

    fn settle_pending(&mut self, all: bool) {
        while let Some(r) = self.pending.front() {
            if !all && r.mono_ns().saturating_add(PENDING_GRACE_NS) > self.now_ns {
                break;
            }
            let r = self.pending.pop_front().expect("front exists");
            match &r {
                Record::Http(h) => self.apply_http_now(h),
                Record::Connection(c) => self.apply_conn_now(c),
                Record::Stats(_) => {}
            }
        }
    }

    /// Count every waiting client view now (at the end of a replay).
    pub fn flush_pending(&mut self) {
        self.settle_pending(true);
    }

    fn wait_or_apply(&mut self, rec: &Record) -> bool {
        let (by, server) = match rec {
            Record::Http(h) => (h.observed_by, &h.server),
            Record::Connection(c) if c.close_reason != "connect_failed" => {
                (c.observed_by, &c.server)
            }
            _ => return false,
        };
        if !self.should_wait(by, server) {
            return false;
        }
        if self.pending.len() >= self.limits.pending {
            self.counters.pending_overflow += 1;
            return false;
        }
        self.pending.push_back(rec.clone());
        true
    }

    /// Entries evicted from every map, in total.
    pub fn evicted(&self) -> u64 {
        self.services.evicted
            + self.pods.evicted
            + self.endpoints.evicted
            + self.edges.evicted
            + self.flows.evicted
    }

    /// Move the clock forward (never back) and expire what left every window.
    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        self.settle_pending(false);
        self.services.expire(now);
        self.pods.expire(now);
        self.endpoints.expire(now);
        self.edges.expire(now);
        self.flows.expire(now);
    }

    fn note_local(&mut self, ep: &Endpoint) {
        if ep.pid.is_some() {
            if let Some(k) = pod_key(ep) {
                if !self.local_pods.contains(&k) {
                    if self.local_pods.len() >= self.limits.local_pods {
                        self.local_pods_full += 1;
                    } else {
                        self.local_pods.insert(k);
                    }
                }
            }
        }
    }

    fn is_local_pod(&self, ep: &Endpoint) -> bool {
        ep.pid.is_some() || pod_key(ep).is_some_and(|k| self.local_pods.contains(&k))
    }

    /// Inbound figures take this record (it is the server's view, or no server view exists).
    fn counts_inbound(&self, by: ObservedBy, server: &Endpoint) -> bool {
        by != ObservedBy::Client || !self.is_local_pod(server)
    }

    fn counts_outbound(&self, by: ObservedBy, client: &Endpoint) -> bool {
        by != ObservedBy::Server || !self.is_local_pod(client)
    }

    /// Fold one record in.
    pub fn apply(&mut self, rec: &Record) {
        match rec {
            Record::Http(h) => {
                self.counters.http += 1;
                self.begin(if h.end_mono_ns == 0 {
                    h.start_mono_ns
                } else {
                    h.end_mono_ns
                });
                self.note_local(&h.client);
                self.note_local(&h.server);
                if !self.wait_or_apply(rec) {
                    self.apply_http_now(h);
                }
                self.settle_pending(false);
            }
            Record::Connection(c) => {
                self.counters.connections += 1;
                self.begin(c.mono_ns);
                self.note_local(&c.client);
                self.note_local(&c.server);
                if !self.wait_or_apply(rec) {
                    self.apply_conn_now(c);
                }
                self.settle_pending(false);
            }
            Record::Stats(s) => {
                self.counters.stats += 1;
                self.now_ns = self.now_ns.max(s.mono_ns);
                self.prev_stats = self.stats.take();
                self.stats = Some(s.clone());
            }
        }
    }

    fn begin(&mut self, t: u64) {
        if self.start_ns == 0 {
            self.start_ns = t.max(1);
        }
        self.now_ns = self.now_ns.max(t);
    }

    fn apply_http_now(&mut self, h: &HttpRecord) {
        let t = if h.end_mono_ns == 0 {
            h.start_mono_ns
        } else {
            h.end_mono_ns
        };
        let now = self.now_ns;
        let bytes = h.request.header_bytes
            + h.request.body_bytes
            + h.response.header_bytes
            + h.response.body_bytes;
        let lat = (h.end_mono_ns != 0).then_some(h.duration_ns);
        let protos = protos_of(h);
        let mut inbound = Counts {
            requests: 1,
            errors: u64::from(h.error),
            bytes,
            latency_sum_ns: lat.unwrap_or(0),
            ..Counts::default()
        };
        status_counts(&mut inbound, h.status);
        let status_mask = inbound.status_mask();
        let outbound = Counts {
            out_requests: 1,
            out_errors: u64::from(h.error),
            ..Counts::default()
        };
        let grpc_err = h
            .grpc
            .as_ref()
            .and_then(|g| g.status_name.clone())
            .filter(|n| n != "OK");
        let err_note = if h.error {
            Some(grpc_err.clone().unwrap_or_else(|| match h.status {
                Some(s) => format!("HTTP {s}"),
                None => "no response".into(),
            }))
        } else {
            None
        };
        self.totals.add(t, now, &inbound, lat);

        let inbound_ok = self.counts_inbound(h.observed_by, &h.server);
        let outbound_ok = self.counts_outbound(h.observed_by, &h.client);
        if !inbound_ok {
            self.counters.dup_inbound_skipped += 1;
        }
        if !outbound_ok {
            self.counters.dup_outbound_skipped += 1;
        }
        let port = h.server.port;
        // What a row can be filtered on: its own end (the server for inbound figures,
        // the client for outbound ones), both for an edge.
        let fill = |a: &mut Agg, client: bool, server: bool| {
            if client {
                a.attrs.end(&h.client);
            }
            if server {
                a.attrs.end(&h.server);
                push_small(&mut a.attrs.ports, port);
            }
            a.attrs.protos |= protos;
            if err_note.is_some() {
                a.last_error = err_note.clone();
            }
        };
        if inbound_ok {
            if let Some(svc) = &h.server.service {
                let a = self.services.entry(svc);
                a.add(t, now, &inbound, lat);
                fill(a, false, true);
            }
            if let Some(k) = pod_key(&h.server) {
                let a = self.pods.entry(&k);
                a.add(t, now, &inbound, lat);
                fill(a, false, true);
            }
            if let (Some(m), Some(p)) = (&h.method, &h.path) {
                let svc = h
                    .server
                    .service
                    .clone()
                    .unwrap_or_else(|| end_name(&h.server));
                let a = self.endpoints.entry(&(svc, format!("{m}:{p}")));
                a.add(t, now, &inbound, lat);
                fill(a, false, true);
            }
            if same_pod(&h.client, &h.server)
                || (h.client.service.is_none() && h.server.service.is_none())
                || (h.client.service.is_some() && h.client.service == h.server.service)
            {
                self.counters.no_relation += 1;
            } else {
                let a = self.edges.entry(&(party(&h.client), party(&h.server)));
                a.add(t, now, &inbound, lat);
                fill(a, true, true);
            }
        }
        if outbound_ok {
            if let Some(svc) = &h.client.service {
                let a = self.services.entry(svc);
                a.add(t, now, &outbound, None);
                fill(a, true, false);
            }
            if let Some(k) = pod_key(&h.client) {
                let a = self.pods.entry(&k);
                a.add(t, now, &outbound, None);
                fill(a, true, false);
            }
        }
        if inbound_ok {
            let mut attrs = Attrs::default();
            attrs.end(&h.client);
            attrs.end(&h.server);
            attrs.ports.push(port);
            attrs.protos = protos;
            self.tail.push_front(TailEntry {
                mono_ns: t,
                time: h.time.clone(),
                client: end_name(&h.client),
                server: end_name(&h.server),
                server_port: port,
                method: h.method.clone().unwrap_or_else(|| "-".into()),
                path: h.path.clone().unwrap_or_else(|| "-".into()),
                protocol: if h.grpc.is_some() {
                    "gRPC".into()
                } else {
                    h.protocol.clone()
                },
                status: h.status,
                grpc_status: h.grpc.as_ref().and_then(|g| g.status_name.clone()),
                duration_ns: h.duration_ns,
                bytes,
                error: h.error,
                observed_by: h.observed_by,
                attrs,
                status_mask,
            });
            self.tail.truncate(self.limits.tail);
        }
    }

    fn apply_conn_now(&mut self, c: &ConnectionRecord) {
        let t = c.mono_ns;
        let now = self.now_ns;
        // A refused connect has no server view: the client's is the only one.
        if c.close_reason != "connect_failed" && !self.counts_inbound(c.observed_by, &c.server) {
            self.counters.dup_inbound_skipped += 1;
            return;
        }
        let rtt = c.tcp.srtt_us;
        let counts = Counts {
            conns: 1,
            conn_bytes_c2s: c.bytes_client_to_server,
            conn_bytes_s2c: c.bytes_server_to_client,
            rtt_sum_us: u64::from(rtt),
            rtt_samples: u64::from(rtt > 0),
            rtt_max_us: u64::from(rtt),
            retransmits: u64::from(c.tcp.retransmits),
            // A refused connect is counted as that, not also as a reset.
            resets: u64::from(
                (c.reset_sent || c.reset_received) && c.close_reason != "connect_failed",
            ),
            connect_failed: u64::from(c.close_reason == "connect_failed"),
            ..Counts::default()
        };
        let mut protos = PROTO_TCP;
        match c.protocol.as_str() {
            "http1" => protos |= PROTO_HTTP1,
            "http2" => protos |= PROTO_HTTP2,
            _ => {}
        }
        if c.tls {
            protos |= PROTO_TLS;
        }
        let fill = |a: &mut Agg, client: bool| {
            if client {
                a.attrs.end(&c.client);
            }
            a.attrs.end(&c.server);
            push_small(&mut a.attrs.ports, c.server.port);
            a.attrs.protos |= protos;
            if counts.connect_failed > 0 {
                a.last_error = Some("connect failed".into());
            } else if counts.resets > 0 {
                a.last_error = Some("reset".into());
            }
        };
        let a = self
            .flows
            .entry(&(party(&c.client), party(&c.server), c.server.port));
        a.add(t, now, &counts, None);
        fill(a, true);
        // Connection figures also go to the edge and the services' rows.
        let conn_only = Counts {
            conns: 1,
            conn_bytes_c2s: c.bytes_client_to_server,
            conn_bytes_s2c: c.bytes_server_to_client,
            ..Counts::default()
        };
        if !(same_pod(&c.client, &c.server)
            || (c.client.service.is_none() && c.server.service.is_none())
            || (c.client.service.is_some() && c.client.service == c.server.service))
        {
            let a = self.edges.entry(&(party(&c.client), party(&c.server)));
            a.add(t, now, &conn_only, None);
            fill(a, true);
        }
        if let Some(svc) = &c.server.service {
            let a = self.services.entry(svc);
            a.add(t, now, &conn_only, None);
            fill(a, false);
        }
    }

    /// Seconds a window covers now (for rates).
    pub fn span_s(&self, w: Window) -> f64 {
        Windowed::span_s(w, self.now_ns, self.start_ns)
    }

    /// Aggregates currently held, and latency histograms allocated.
    pub fn sizes(&self) -> (usize, usize) {
        let mut n = 0;
        let mut h = 0;
        for a in self
            .services
            .map
            .values()
            .chain(self.pods.map.values())
            .chain(self.endpoints.map.values())
            .chain(self.edges.map.values())
            .chain(self.flows.map.values())
        {
            n += 1;
            h += a.w.hists_allocated();
        }
        (n, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Record;

    const S: u64 = 1_000_000_000;

    fn ep(
        addr: &str,
        port: u16,
        pod: Option<&str>,
        svc: Option<&str>,
        pid: Option<u32>,
    ) -> serde_json::Value {
        let mut v = serde_json::json!({"addr": addr, "port": port});
        if let Some(p) = pod {
            v["pod"] = p.into();
            v["namespace"] = "shop".into();
        }
        if let Some(s) = svc {
            v["service"] = s.into();
        }
        if let Some(p) = pid {
            v["pid"] = p.into();
        }
        v
    }

    fn web() -> serde_json::Value {
        ep(
            "198.18.0.11",
            40000,
            Some("web-0"),
            Some("web.shop"),
            Some(10),
        )
    }
    fn cart() -> serde_json::Value {
        ep(
            "198.18.0.12",
            8080,
            Some("cart-0"),
            Some("cart.shop"),
            Some(20),
        )
    }

    fn http(
        client: serde_json::Value,
        server: serde_json::Value,
        by: &str,
        status: u16,
        end_ns: u64,
        dur_ms: u64,
    ) -> Record {
        serde_json::from_value(serde_json::json!({
            "kind": "http", "v": 1, "time": "2026-01-01T10:00:00.000000000Z", "conn_id": 1,
            "observed_by": by, "client": client, "server": server, "protocol": "HTTP/1.1",
            "tls": false, "method": "GET", "path": "/items", "status": status,
            "request": {"header_bytes": 50, "body_bytes": 0},
            "response": {"header_bytes": 50, "body_bytes": 100},
            "start_mono_ns": end_ns - dur_ms * 1_000_000, "end_mono_ns": end_ns,
            "start_time": "", "duration_ns": dur_ms * 1_000_000, "error": status >= 500,
            "complete": true, "partial": false,
        }))
        .unwrap()
    }

    fn conn(
        client: serde_json::Value,
        server: serde_json::Value,
        t: u64,
        rtt: u32,
        reason: &str,
    ) -> Record {
        serde_json::from_value(serde_json::json!({
            "kind": "connection", "v": 1, "time": "", "mono_ns": t, "conn_id": 1,
            "observed_by": "both", "role_source": "handshake", "client": client, "server": server,
            "protocol": "http1", "tls": false, "preexisting": false, "handshake": {"success": true},
            "bytes_client_to_server": 100, "bytes_server_to_client": 1000,
            "calls_client_to_server": 1, "calls_server_to_client": 1,
            "tcp": {"srtt_us": rtt, "retransmits": 2, "segs_in": 0, "segs_out": 0},
            "closed_by": "client", "reset_sent": false, "reset_received": reason == "reset",
            "close_reason": reason, "open_mono_ns": 0, "duration_ns": 0, "exchanges": 1, "data_lost": false,
        }))
        .unwrap()
    }

    #[test]
    fn requests_errors_and_latency_per_service_pod_endpoint_edge() {
        let mut st = State::new(Limits::default());
        let t0 = 100 * S;
        for i in 0..20u64 {
            let status = if i % 4 == 0 { 500 } else { 200 };
            st.apply(&http(web(), cart(), "both", status, t0 + i * S / 10, i + 1));
        }
        st.tick(t0 + 2 * S);
        let w = Window::S10;
        let c = st.services.map["cart.shop"].w.counts(w, st.now_ns);
        assert_eq!((c.requests, c.errors, c.s5xx, c.s2xx), (20, 5, 5, 15));
        assert_eq!(c.bytes, 20 * 200);
        let web_c = st.services.map["web.shop"].w.counts(w, st.now_ns);
        assert_eq!(
            (web_c.requests, web_c.out_requests, web_c.out_errors),
            (0, 20, 5)
        );
        let pod = &st.pods.map[&("shop".to_string(), "cart-0".to_string())];
        assert_eq!(pod.w.counts(w, st.now_ns).requests, 20);
        let e = &st.endpoints.map[&("cart.shop".to_string(), "GET:/items".to_string())];
        assert_eq!(e.w.counts(w, st.now_ns).requests, 20);
        let edge = &st.edges.map[&(
            Party::Service("web.shop".into()),
            Party::Service("cart.shop".into()),
        )];
        assert_eq!(edge.w.counts(w, st.now_ns).errors, 5);
        let mut h = super::super::window::new_hist();
        let p = st.services.map["cart.shop"]
            .w
            .percentiles(w, st.now_ns, &[0.5, 0.99], &mut h)
            .unwrap();
        assert!((9_900_000..=10_100_000).contains(&p[0]), "{p:?}");
        assert!((19_800_000..=20_200_000).contains(&p[1]), "{p:?}");
        assert_eq!(st.tail.len(), 20);
        assert_eq!(st.tail[0].mono_ns, t0 + 19 * S / 10, "newest first");
        assert_eq!(st.tail.iter().filter(|t| t.error).count(), 5);
        assert_eq!(st.counters.http, 20);
    }

    #[test]
    fn client_view_of_a_local_server_is_not_counted_twice() {
        let mut st = State::new(Limits::default());
        let t = 10 * S;
        // Through a Service IP: the client's view (server named by conntrack, no pid) and
        // the server's view (client named by its pod IP, no pid).
        let mut server_by_ct = cart();
        server_by_ct.as_object_mut().unwrap().remove("pid");
        server_by_ct["resolved_by"] = "conntrack".into();
        let mut client_by_ip = web();
        client_by_ip.as_object_mut().unwrap().remove("pid");
        st.apply(&http(web(), server_by_ct.clone(), "client", 200, t, 5));
        st.apply(&http(client_by_ip, cart(), "server", 200, t + 1, 4));
        // The server view came second: the client view waited its grace, and by then
        // cart-0 was known as local. Every pair counts once.
        for i in 0..10 {
            let mut c2 = web();
            c2.as_object_mut().unwrap().remove("pid");
            st.apply(&http(
                web(),
                server_by_ct.clone(),
                "client",
                200,
                t + 10 + i,
                5,
            ));
            st.apply(&http(c2, cart(), "server", 200, t + 11 + i, 4));
        }
        assert_eq!(st.pending.len(), 1, "the first client view waits");
        st.tick(t + 3 * S);
        assert!(st.pending.is_empty());
        let c = st.services.map["cart.shop"]
            .w
            .counts(Window::S10, st.now_ns);
        assert_eq!(c.requests, 11, "the 11 server views");
        assert_eq!(st.counters.dup_inbound_skipped, 11);
        let o = st.services.map["web.shop"].w.counts(Window::S10, st.now_ns);
        assert_eq!(o.out_requests, 11, "client views; server views skipped");
        assert_eq!(st.counters.dup_outbound_skipped, 11);
        // A client-only view of a remote server counts inbound for the remote.
        let ext = ep("203.0.113.9", 443, None, None, None);
        st.apply(&http(web(), ext, "client", 200, t + 50, 5));
        assert!(st.edges.map.contains_key(&(
            Party::Service("web.shop".into()),
            Party::Ip("203.0.113.9".into())
        )));
    }

    #[test]
    fn connections_make_l4_flows() {
        let mut st = State::new(Limits::default());
        let t = 10 * S;
        st.apply(&conn(web(), cart(), t, 100, "fin"));
        st.apply(&conn(web(), cart(), t + 1, 300, "reset"));
        st.apply(&conn(web(), cart(), t + 2, 0, "connect_failed"));
        let f = &st.flows.map[&(
            Party::Service("web.shop".into()),
            Party::Service("cart.shop".into()),
            8080,
        )];
        let c = f.w.counts(Window::S10, st.now_ns);
        assert_eq!(c.conns, 3);
        assert_eq!((c.conn_bytes_c2s, c.conn_bytes_s2c), (300, 3000));
        assert_eq!((c.rtt_sum_us, c.rtt_samples, c.rtt_max_us), (400, 2, 300));
        assert_eq!((c.retransmits, c.resets, c.connect_failed), (6, 1, 1));
        // (the refused one had a reset too, counted only as refused)
        assert_eq!(f.last_error.as_deref(), Some("connect failed"));
    }

    #[test]
    fn maps_stay_bounded_and_count_evictions() {
        let limits = Limits {
            endpoints: 50,
            ..Limits::default()
        };
        let mut st = State::new(limits);
        for i in 0..1000u64 {
            let mut r = http(web(), cart(), "both", 200, S + i * 1000, 1);
            if let Record::Http(h) = &mut r {
                h.path = Some(format!("/items/{i}"));
            }
            st.apply(&r);
        }
        assert!(st.endpoints.len() <= 50);
        assert_eq!(st.endpoints.len() as u64 + st.endpoints.evicted, 1000);
        assert_eq!(st.evicted(), st.endpoints.evicted);
        // The newest survive.
        assert!(st
            .endpoints
            .map
            .contains_key(&("cart.shop".into(), "GET:/items/999".into())));
        // Tail bounded too.
        assert_eq!(st.tail.len(), limits.tail.min(1000));
    }

    #[test]
    fn idle_aggregates_expire_after_the_longest_window() {
        let mut st = State::new(Limits::default());
        st.apply(&http(web(), cart(), "both", 200, 10 * S, 1));
        st.tick(100 * S);
        assert_eq!(st.services.len(), 2);
        st.tick(400 * S);
        assert!(st.services.is_empty() && st.edges.is_empty());
        assert_eq!(st.evicted(), 0, "expiry is not eviction");
    }

    #[test]
    fn intra_pod_and_same_service_make_no_edge() {
        let mut st = State::new(Limits::default());
        let sidecar = ep(
            "127.0.0.1",
            15001,
            Some("web-0"),
            Some("web.shop"),
            Some(11),
        );
        st.apply(&http(web(), sidecar, "both", 200, 10 * S, 1));
        assert!(st.edges.is_empty());
        assert_eq!(st.counters.no_relation, 1);
    }

    #[test]
    fn stats_keep_the_latest_two() {
        let mut st = State::new(Limits::default());
        for i in 1..=3u64 {
            let s: Record = serde_json::from_value(serde_json::json!({
                "kind": "stats", "v": 1, "time": "", "mono_ns": i * S, "uptime_s": i as f64,
                "kernel": serde_json::to_value(crate::model::KernelCounters::default()).unwrap(),
                "user": serde_json::to_value(crate::model::UserCounters { events: i * 100, ..Default::default() }).unwrap(),
                "lost": serde_json::to_value(crate::model::LossCounters::default()).unwrap(),
            }))
            .unwrap();
            st.apply(&s);
        }
        assert_eq!(st.stats.as_ref().unwrap().user.events, 300);
        assert_eq!(st.prev_stats.as_ref().unwrap().user.events, 200);
        assert_eq!(st.now_ns, 3 * S);
    }
}
