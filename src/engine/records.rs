//! Building the access-log records: an HTTP record from one exchange, and the connection
//! record of a finished connection. Pure: everything a record is made from comes in as
//! arguments (no engine state, no I/O).

use std::net::SocketAddr;

use super::pairing::PeerView;
use super::{Conn, Owner, Proto};
use crate::capture::{ConnEvent, ConnKind};
use crate::model::{
    grpc_status_name, Clock, ConnectionRecord, Endpoint, GrpcCall, Handshake, HttpRecord,
    MessageSize, ObservedBy, RoleSource, TcpFigures, Trace, SCHEMA_VERSION,
};
use crate::protocol::http1::Http1Exchange;
use crate::protocol::http2::H2Exchange;
use crate::protocol::l7::Exchange;
use crate::protocol::Role;

/// The parts of an HTTP record that come from the connection rather than the exchange.
pub(super) struct ExchangeEnds {
    pub(super) conn_id: u64,
    pub(super) observed_by: ObservedBy,
    pub(super) client: Endpoint,
    pub(super) server: Endpoint,
    pub(super) tls: bool,
}

/// The HTTP record of one exchange of a connection.
pub(super) fn http_record(
    x: Exchange,
    ends: ExchangeEnds,
    clock: &Clock,
    keep_query: bool,
) -> HttpRecord {
    let mut rec = match x {
        Exchange::Http1(x) => http1_record(x, clock, keep_query),
        Exchange::Http2(x) => http2_record(x, clock, keep_query),
    };
    rec.conn_id = ends.conn_id;
    rec.observed_by = ends.observed_by;
    rec.client = ends.client;
    rec.server = ends.server;
    rec.tls = ends.tls;
    rec
}

/// What the connection record of a finished connection is made from.
pub(super) struct Finished<'a> {
    /// The connection as it was when finished (its parser closed).
    pub(super) conn: &'a Conn,
    /// Its close event; None when it is written out still open (at exit, or evicted).
    pub(super) close: Option<&'a ConnEvent>,
    /// Why it ended, when there is no close event.
    pub(super) end_reason: &'a str,
    pub(super) now: u64,
    /// Its role (guessed from its ports if nothing told), and what told it.
    pub(super) role: Role,
    pub(super) role_source: RoleSource,
    /// The view of its linked peer on this node, if any.
    pub(super) peer: Option<&'a PeerView>,
    pub(super) observed_by: ObservedBy,
    pub(super) client: Endpoint,
    pub(super) server: Endpoint,
}

/// The connection record of a finished connection.
pub(super) fn connection_record(f: Finished<'_>, clock: &Clock) -> ConnectionRecord {
    let Finished {
        conn: c,
        close: ev,
        end_reason,
        now,
        role,
        role_source,
        peer,
        observed_by,
        client,
        server,
    } = f;
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
    ConnectionRecord {
        v: SCHEMA_VERSION,
        time: clock.rfc3339(now),
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
    }
}

/// One end of a record as the socket knows it: its address and, when known, its process
/// (attribution fills in the rest).
pub(super) fn endpoint(addr: Option<SocketAddr>, owner: Option<&Owner>) -> Endpoint {
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

fn path_and_query(target: &str, keep_query: bool) -> (String, Option<String>) {
    let (path, query) = split_target(target);
    (path, if keep_query { query } else { None })
}

/// The parts of a record that come from an HTTP/1 exchange.
fn http1_record(x: Http1Exchange, clock: &Clock, keep_query: bool) -> HttpRecord {
    let (path, query) = path_and_query(&x.target, keep_query);
    let end = if x.resp_end_ns > 0 {
        x.resp_end_ns
    } else {
        x.req_end_ns
    };
    let error = x.status.is_none_or(|s| s >= 500);
    HttpRecord {
        v: SCHEMA_VERSION,
        time: clock.rfc3339(end),
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
        start_time: clock.rfc3339(x.req_start_ns),
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
fn http2_record(x: H2Exchange, clock: &Clock, keep_query: bool) -> HttpRecord {
    let (path, query) = match x.path.as_deref() {
        Some(t) => {
            let (p, q) = path_and_query(t, keep_query);
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
        time: clock.rfc3339(end),
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
        start_time: clock.rfc3339(x.req_start_ns),
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

/// Split a request target into path and query.
pub fn split_target(target: &str) -> (String, Option<String>) {
    match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    }
}

