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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{ConnFlags, ConnKind};
    use crate::engine::test_util::{conn, sa};
    use crate::protocol::l7::Parser;
    use crate::protocol::{Chunk, Direction};

    const CLIENT: &str = "10.0.0.1:40000";
    const SERVER: &str = "10.0.0.2:8080";

    fn owner(pid: u32, comm: &str) -> Owner {
        Owner {
            pid,
            comm: comm.to_string(),
            cgroup_id: u64::from(pid) * 10,
        }
    }

    /// The exchanges a real HTTP/1 parser makes of one request and its answer, seen by
    /// the client.
    fn one_exchange(req: &[u8], resp: &[u8]) -> Vec<Exchange> {
        let mut parser = Parser::http1(Role::Client, 16 * 1024);
        let mut done = Vec::new();
        for (dir, start_ns, end_ns, data) in [
            (Direction::Egress, 2_000, 2_100, req),
            (Direction::Ingress, 5_000, 5_000, resp),
        ] {
            let chunk = Chunk {
                dir,
                start_ns,
                end_ns,
                len: data.len() as u64,
                data,
            };
            parser.feed(&chunk, &mut done);
        }
        parser.close(9_000, &mut done);
        done
    }

    /// A client's connection that carried one exchange and was closed by the client:
    /// one HTTP record with the exchange and the ends it is given, and a connection
    /// record with the close event's figures, the handshake and who closed it.
    #[test]
    fn a_finished_connection_with_one_exchange_gives_its_http_and_connection_records() {
        let clock = Clock::with_offset(1_700_000_000_000_000_000);
        let req = b"GET /cart?id=7 HTTP/1.1\r\nHost: shop\r\nUser-Agent: curl/8\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
        let mut exchanges = one_exchange(req, resp);
        assert_eq!(exchanges.len(), 1);

        let mut c = Conn::new(7, 1_000);
        c.local = Some(sa(CLIENT));
        c.remote = Some(sa(SERVER));
        c.role = Role::Client;
        c.role_source = RoleSource::Handshake;
        c.preexisting = false;
        c.connect_start_ns = 900;
        c.established_ns = 1_000;
        c.owner = Some(owner(100, "curl"));
        c.proto = Proto::Http1;
        c.exchanges = 1;
        let client = endpoint(c.local, c.owner.as_ref());
        let server = endpoint(c.remote, None);

        let http = http_record(
            exchanges.remove(0),
            ExchangeEnds {
                conn_id: c.cookie,
                observed_by: ObservedBy::Client,
                client: client.clone(),
                server: server.clone(),
                tls: false,
            },
            &clock,
            false,
        );
        assert_eq!(http.v, SCHEMA_VERSION);
        assert_eq!(http.conn_id, 7);
        assert_eq!(http.observed_by, ObservedBy::Client);
        assert_eq!(http.protocol, "HTTP/1.1");
        assert_eq!(http.method.as_deref(), Some("GET"));
        assert_eq!(http.path.as_deref(), Some("/cart"));
        assert_eq!(http.query, None, "query strings are dropped unless kept");
        assert_eq!(http.host.as_deref(), Some("shop"));
        assert_eq!(http.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(http.status, Some(200));
        assert_eq!(http.content_type.as_deref(), Some("text/plain"));
        assert_eq!(http.response.body_bytes, 2);
        assert_eq!(http.start_mono_ns, 2_000);
        assert_eq!(http.end_mono_ns, 5_000);
        assert_eq!(http.duration_ns, 3_000);
        assert_eq!(http.time, clock.rfc3339(5_000));
        assert_eq!(http.start_time, clock.rfc3339(2_000));
        assert_eq!(http.client.pid, Some(100));
        assert_eq!(http.client.process.as_deref(), Some("curl"));
        assert_eq!(http.client.port, 40000);
        assert_eq!(http.server.addr, Some(sa(SERVER).ip()));
        assert_eq!(http.server.pid, None);
        assert!(!http.tls && !http.error && http.complete && !http.partial);
        assert_eq!(http.stream_id, None);
        assert!(http.grpc.is_none());

        let mut close = conn(ConnKind::Closed, 7, 10_000, CLIENT, SERVER, Role::Client);
        close.bytes_sent = req.len() as u64;
        close.bytes_recv = resp.len() as u64;
        close.send_calls = 1;
        close.recv_calls = 1;
        close.srtt_us = 50;
        close.segs_out = 4;
        close.segs_in = 3;
        let rec = connection_record(
            Finished {
                conn: &c,
                close: Some(&close),
                end_reason: "",
                now: 10_300,
                role: Role::Client,
                role_source: RoleSource::Handshake,
                peer: None,
                observed_by: ObservedBy::Client,
                client,
                server,
            },
            &clock,
        );
        assert_eq!(rec.v, SCHEMA_VERSION);
        assert_eq!(rec.conn_id, 7);
        assert_eq!(rec.time, clock.rfc3339(10_300));
        assert_eq!(rec.mono_ns, 10_300);
        assert_eq!(rec.observed_by, ObservedBy::Client);
        assert_eq!(rec.role_source, RoleSource::Handshake);
        assert_eq!(rec.client.pid, Some(100));
        assert_eq!(rec.server.port, 8080);
        assert_eq!(rec.protocol, "http1");
        assert!(!rec.tls && !rec.preexisting && !rec.data_lost);
        assert_eq!(rec.handshake.start_mono_ns, Some(900));
        assert_eq!(rec.handshake.end_mono_ns, Some(1_000));
        assert_eq!(rec.handshake.duration_ns, Some(100));
        assert!(rec.handshake.success);
        assert_eq!(rec.bytes_client_to_server, req.len() as u64);
        assert_eq!(rec.bytes_server_to_client, resp.len() as u64);
        assert_eq!(rec.calls_client_to_server, 1);
        assert_eq!(rec.calls_server_to_client, 1);
        assert_eq!(rec.tcp.srtt_us, 50);
        assert_eq!(rec.tcp.segs_out, 4);
        assert_eq!(rec.tcp.segs_in, 3);
        assert_eq!(rec.closed_by, "client");
        assert_eq!(rec.close_reason, "fin");
        assert!(!rec.reset_sent && !rec.reset_received);
        assert_eq!(rec.open_mono_ns, 1_000);
        assert_eq!(rec.duration_ns, 9_300);
        assert_eq!(rec.exchanges, 1);
    }

    /// The server's view of a connection whose client is linked on this node: the
    /// handshake comes from the client's view, each byte count is the larger of the two
    /// views', and a reset the client sent closes it.
    #[test]
    fn a_server_view_with_a_linked_client_takes_the_handshake_and_larger_counts() {
        let clock = Clock::with_offset(0);
        let mut c = Conn::new(8, 1_000);
        c.local = Some(sa(SERVER));
        c.remote = Some(sa(CLIENT));
        c.established_ns = 1_000;
        c.preexisting = false;
        c.proto = Proto::Http1;
        c.exchanges = 2;
        c.taken_over = 1;
        c.late_recv = 10;
        let peer = PeerView {
            owner: Some(owner(100, "curl")),
            role: Some(Role::Client),
            http: true,
            bytes_sent: 500,
            bytes_recv: 90,
            connect_start_ns: 800,
            established_ns: 990,
            ..PeerView::default()
        };
        let mut close = conn(ConnKind::Closed, 8, 5_000, SERVER, CLIENT, Role::Server);
        close.flags = ConnFlags::OWNER_KNOWN | ConnFlags::RST_RECV;
        close.bytes_recv = 400;
        close.bytes_sent = 100;
        close.recv_calls = 3;
        close.send_calls = 2;
        let rec = connection_record(
            Finished {
                conn: &c,
                close: Some(&close),
                end_reason: "",
                now: 5_000,
                role: Role::Server,
                role_source: RoleSource::Handshake,
                peer: Some(&peer),
                observed_by: ObservedBy::Both,
                client: endpoint(c.remote, peer.owner.as_ref()),
                server: endpoint(c.local, None),
            },
            &clock,
        );
        assert_eq!(rec.observed_by, ObservedBy::Both);
        assert_eq!(rec.client.pid, Some(100));
        assert_eq!(rec.handshake.start_mono_ns, Some(800));
        assert_eq!(rec.handshake.end_mono_ns, Some(990));
        assert_eq!(rec.handshake.duration_ns, Some(190));
        assert_eq!(
            rec.bytes_client_to_server, 500,
            "the client's count is larger"
        );
        assert_eq!(
            rec.bytes_server_to_client, 100,
            "the server's count is larger"
        );
        assert_eq!(rec.calls_client_to_server, 3);
        assert_eq!(rec.calls_server_to_client, 2);
        assert_eq!(rec.closed_by, "client");
        assert_eq!(rec.close_reason, "reset");
        assert!(rec.reset_received && !rec.reset_sent);
        assert_eq!(rec.exchanges, 3, "its own and the one its client wrote");
    }

    /// A connection still open when capture ends: the reason given, no closer, the
    /// counts the engine kept, and its role guessed from its ports as the caller says.
    #[test]
    fn an_open_connection_at_exit_is_written_with_its_own_counts() {
        let clock = Clock::with_offset(0);
        let mut c = Conn::new(9, 1_000);
        c.local = Some(sa(CLIENT));
        c.remote = Some(sa(SERVER));
        c.bytes_sent = 11;
        c.bytes_recv = 22;
        c.send_calls = 1;
        c.recv_calls = 2;
        c.data_lost = true;
        c.proto = Proto::Tls;
        let rec = connection_record(
            Finished {
                conn: &c,
                close: None,
                end_reason: "open_at_exit",
                now: 4_000,
                role: Role::Client,
                role_source: RoleSource::Port,
                peer: None,
                observed_by: ObservedBy::Client,
                client: endpoint(c.local, None),
                server: endpoint(c.remote, None),
            },
            &clock,
        );
        assert_eq!(rec.role_source, RoleSource::Port);
        assert_eq!(rec.close_reason, "open_at_exit");
        assert_eq!(rec.closed_by, "unknown");
        assert_eq!(rec.protocol, "tls");
        assert!(rec.tls && rec.preexisting && rec.data_lost);
        assert!(
            rec.handshake.success,
            "joined mid-stream: it was established"
        );
        assert_eq!(rec.handshake.start_mono_ns, None);
        assert_eq!(rec.bytes_client_to_server, 11);
        assert_eq!(rec.bytes_server_to_client, 22);
        assert_eq!(rec.calls_client_to_server, 1);
        assert_eq!(rec.calls_server_to_client, 2);
        assert_eq!(rec.tcp, TcpFigures::default());
        assert_eq!(rec.duration_ns, 3_000);
    }
}
