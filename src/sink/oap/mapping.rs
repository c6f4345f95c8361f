//! Records to SkyWalking eBPF access-log messages. Pure: no I/O, no clock; the same
//! records always give the same messages (a recording replayed with `push --from` gives
//! what the live push gave). The field-by-field table is docs/oap-mapping.md.
//!
//! A batch becomes one `collect` stream:
//! - the first message carries `node`;
//! - messages are grouped per connection view (connection id and local role), groups in
//!   order of first appearance; the first message of each group carries `connection`;
//! - in a group, first one message with the non-L7 kernel logs (connect, accept, close,
//!   and read/write of traffic with no HTTP exchange), then one message per HTTP exchange
//!   with `protocolLog` and the read/write logs that carried it.
//!
//! A record seen from both ends (`observed_by: both`) gives two views, as an agent that
//! sees both sockets does: the server's (role server) and the client's (role client).

use std::collections::HashMap;

use super::pb;
use crate::model::{ConnectionRecord, Endpoint, HttpRecord, ObservedBy, Record};

/// A network interface of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInterface {
    pub index: i32,
    pub mtu: i32,
    pub name: String,
}

/// What the node tells the OAP about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub interfaces: Vec<NetInterface>,
    pub cluster: String,
    /// Namespaces whose processes are not reported (sent to the OAP as the policy, and
    /// views whose local end is in one of them are left out).
    pub exclude_namespaces: Vec<String>,
}

/// What mapping counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapCounters {
    pub records: u64,
    pub stats_records: u64,
    /// Views left out because their local end is in an excluded namespace.
    pub excluded_views: u64,
    /// HTTP exchanges sent without a protocol log: a method the protocol cannot name, no
    /// method (request not seen) or no response; their kernel logs are still sent.
    pub exchanges_without_protocol_log: u64,
    pub messages: u64,
}

/// Turns batches of records into streams of messages.
#[derive(Debug, Clone)]
pub struct Mapper {
    node: NodeConfig,
    /// Boot time as ns since the epoch, from the first record (its wall-clock time minus
    /// its monotonic time): the clock the records were written with, so a replay sends
    /// the boot time of the capture, not of the replay.
    boot_epoch_ns: Option<i128>,
    pub counters: MapCounters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Client,
    Server,
}

struct View<'a> {
    local: &'a Endpoint,
    remote: &'a Endpoint,
    role: Role,
}

fn views<'a>(observed_by: ObservedBy, client: &'a Endpoint, server: &'a Endpoint) -> Vec<View<'a>> {
    let server_view = View {
        local: server,
        remote: client,
        role: Role::Server,
    };
    let client_view = View {
        local: client,
        remote: server,
        role: Role::Client,
    };
    match observed_by {
        ObservedBy::Client => vec![client_view],
        ObservedBy::Server => vec![server_view],
        ObservedBy::Both => vec![server_view, client_view],
    }
}

struct Group {
    connection: pb::AccessLogConnection,
    kernel: Vec<(u64, pb::AccessLogKernelLog)>,
    exchanges: Vec<pb::EbpfAccessLogMessage>,
}

impl Mapper {
    pub fn new(node: NodeConfig) -> Self {
        Self {
            node,
            boot_epoch_ns: None,
            counters: MapCounters::default(),
        }
    }

    /// Boot time (ns since the epoch) in use, once a record has given it.
    pub fn boot_epoch_ns(&self) -> Option<i128> {
        self.boot_epoch_ns
    }

    /// The node message, with the boot time known so far (0 before any record).
    pub fn node_info(&self) -> pb::EbpfAccessLogNodeInfo {
        let boot = self.boot_epoch_ns.unwrap_or(0);
        pb::EbpfAccessLogNodeInfo {
            name: self.node.name.clone(),
            net_interfaces: self
                .node
                .interfaces
                .iter()
                .map(|i| pb::EbpfAccessLogNodeNetInterface {
                    index: i.index,
                    mtu: i.mtu,
                    name: i.name.clone(),
                })
                .collect(),
            boot_time: Some(pb::Instant {
                seconds: boot.div_euclid(1_000_000_000) as i64,
                nanos: boot.rem_euclid(1_000_000_000) as i32,
            }),
            cluster_name: self.node.cluster.clone(),
            policy: Some(pb::EbpfAccessLogPolicy {
                exclude_namespaces: self.node.exclude_namespaces.clone(),
            }),
        }
    }

    fn learn_boot_time(&mut self, rec: &Record) {
        if self.boot_epoch_ns.is_some() {
            return;
        }
        let (time, mono) = match rec {
            Record::Http(h) => (&h.start_time, h.start_mono_ns),
            Record::Connection(c) => (&c.time, c.mono_ns),
            Record::Stats(s) => (&s.time, s.mono_ns),
        };
        if let Some(wall) = parse_rfc3339_ns(time) {
            self.boot_epoch_ns = Some(wall - i128::from(mono));
        }
    }

    fn excluded(&self, ep: &Endpoint) -> bool {
        ep.namespace
            .as_ref()
            .is_some_and(|ns| self.node.exclude_namespaces.iter().any(|x| x == ns))
    }

    /// One stream's messages for a batch of records (empty when nothing to send).
    pub fn batch(&mut self, records: &[Record]) -> Vec<pb::EbpfAccessLogMessage> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(u64, Role), usize> = HashMap::new();
        for rec in records {
            self.counters.records += 1;
            self.learn_boot_time(rec);
            let (conn_id, observed_by, client, server) = match rec {
                Record::Http(h) => (h.conn_id, h.observed_by, &h.client, &h.server),
                Record::Connection(c) => (c.conn_id, c.observed_by, &c.client, &c.server),
                Record::Stats(_) => {
                    self.counters.stats_records += 1;
                    continue;
                }
            };
            for view in views(observed_by, client, server) {
                if self.excluded(view.local) {
                    self.counters.excluded_views += 1;
                    continue;
                }
                let gi = *index.entry((conn_id, view.role)).or_insert_with(|| {
                    groups.push(Group {
                        connection: connection(rec, &view),
                        kernel: Vec::new(),
                        exchanges: Vec::new(),
                    });
                    groups.len() - 1
                });
                let g = &mut groups[gi];
                match rec {
                    Record::Http(h) => {
                        let logs = exchange_kernel_logs(h, view.role);
                        match http_protocol(h) {
                            Some(p) => g.exchanges.push(pb::EbpfAccessLogMessage {
                                node: None,
                                connection: None,
                                kernel_logs: logs,
                                protocol_log: Some(pb::AccessLogProtocolLogs {
                                    protocol: Some(pb::access_log_protocol_logs::Protocol::Http(p)),
                                }),
                            }),
                            None => {
                                self.counters.exchanges_without_protocol_log += 1;
                                g.kernel
                                    .extend(logs.into_iter().map(|l| (log_start(&l), l)));
                            }
                        }
                    }
                    Record::Connection(c) => g.kernel.extend(connection_kernel_logs(c, view.role)),
                    Record::Stats(_) => {}
                }
            }
        }
        let mut out = Vec::new();
        for g in groups {
            let mut kernel = g.kernel;
            // Stable: logs of one instant keep their order (connect before close).
            kernel.sort_by_key(|(t, _)| *t);
            let mut msgs = Vec::with_capacity(g.exchanges.len() + 1);
            if !kernel.is_empty() {
                msgs.push(pb::EbpfAccessLogMessage {
                    node: None,
                    connection: None,
                    kernel_logs: kernel.into_iter().map(|(_, l)| l).collect(),
                    protocol_log: None,
                });
            }
            msgs.extend(g.exchanges);
            if let Some(first) = msgs.first_mut() {
                first.connection = Some(g.connection);
            }
            out.extend(msgs);
        }
        if let Some(first) = out.first_mut() {
            first.node = Some(self.node_info());
        }
        self.counters.messages += out.len() as u64;
        out
    }
}

fn ts(mono_ns: u64) -> Option<pb::EbpfTimestamp> {
    Some(pb::EbpfTimestamp {
        timestamp: Some(pb::ebpf_timestamp::Timestamp::Offset(
            pb::EbpfOffsetTimestamp { offset: mono_ns },
        )),
    })
}

fn ts_value(t: &Option<pb::EbpfTimestamp>) -> u64 {
    match t {
        Some(pb::EbpfTimestamp {
            timestamp: Some(pb::ebpf_timestamp::Timestamp::Offset(o)),
        }) => o.offset,
        _ => 0,
    }
}

fn log_start(l: &pb::AccessLogKernelLog) -> u64 {
    use pb::access_log_kernel_log::Operation as Op;
    match &l.operation {
        Some(Op::Connect(o)) => ts_value(&o.start_time),
        Some(Op::Accept(o)) => ts_value(&o.start_time),
        Some(Op::Close(o)) => ts_value(&o.start_time),
        Some(Op::Read(o)) => ts_value(&o.start_time),
        Some(Op::Write(o)) => ts_value(&o.start_time),
        None => 0,
    }
}

/// An end as the OAP names it: a Kubernetes process address when its service and pod
/// are known, its IP address otherwise (the OAP then asks the Kubernetes API).
pub fn address(ep: &Endpoint) -> pb::ConnectionAddress {
    use pb::connection_address::Address;
    let a = match (&ep.service, &ep.pod) {
        (Some(svc), Some(pod)) => Address::Kubernetes(pb::KubernetesProcessAddress {
            service_name: svc.clone(),
            pod_name: pod.clone(),
            container_name: ep.container.clone().unwrap_or_default(),
            process_name: ep.process.clone().unwrap_or_default(),
            port: i32::from(ep.port),
        }),
        _ => Address::Ip(pb::IpAddress {
            host: ep.addr.map(|a| a.to_string()).unwrap_or_default(),
            port: i32::from(ep.port),
        }),
    };
    pb::ConnectionAddress { address: Some(a) }
}

fn protocol_type(rec: &Record) -> pb::AccessLogProtocolType {
    let p = match rec {
        Record::Http(h) => h.protocol.as_str(),
        Record::Connection(c) => c.protocol.as_str(),
        Record::Stats(_) => "",
    };
    match p {
        "HTTP/2" | "HTTP/2.0" | "http2" => pb::AccessLogProtocolType::Http2,
        "HTTP/1.0" | "HTTP/1.1" | "http1" => pb::AccessLogProtocolType::Http1,
        _ => pb::AccessLogProtocolType::Tcp,
    }
}

fn connection(rec: &Record, view: &View<'_>) -> pb::AccessLogConnection {
    let tls = match rec {
        Record::Http(h) => h.tls,
        Record::Connection(c) => c.tls,
        Record::Stats(_) => false,
    };
    pb::AccessLogConnection {
        local: Some(address(view.local)),
        remote: Some(address(view.remote)),
        role: match view.role {
            Role::Client => pb::DetectPoint::Client,
            Role::Server => pb::DetectPoint::Server,
        } as i32,
        tls_mode: if tls {
            pb::AccessLogConnectionTlsMode::Tls
        } else {
            pb::AccessLogConnectionTlsMode::Plain
        } as i32,
        protocol: protocol_type(rec) as i32,
        attachment: None,
    }
}

fn write_log(start: u64, end: u64, bytes: u64, segs: u32, retrans: u32) -> pb::AccessLogKernelLog {
    pb::AccessLogKernelLog {
        operation: Some(pb::access_log_kernel_log::Operation::Write(
            pb::AccessLogKernelWriteOperation {
                start_time: ts(start),
                end_time: ts(end),
                syscall: pb::AccessLogKernelWriteSyscall::Write as i32,
                l4_metrics: Some(pb::AccessLogKernelWriteL4Metrics {
                    total_duration: end.saturating_sub(start),
                    total_transmit_package_count: i64::from(segs),
                    total_retransmit_package_count: i64::from(retrans),
                    loss_package_metrics: Vec::new(),
                    total_package_size: i64::try_from(bytes).unwrap_or(i64::MAX),
                }),
                l3_metrics: None,
                l2_metrics: None,
            },
        )),
    }
}

fn read_log(start: u64, end: u64, bytes: u64, segs: u32) -> pb::AccessLogKernelLog {
    pb::AccessLogKernelLog {
        operation: Some(pb::access_log_kernel_log::Operation::Read(
            pb::AccessLogKernelReadOperation {
                start_time: ts(start),
                end_time: ts(end),
                syscall: pb::AccessLogKernelReadSyscall::Read as i32,
                l2_metrics: Some(pb::AccessLogKernelReadL2Metrics {
                    ifindex: 0,
                    total_package_count: segs,
                    total_package_size: bytes,
                    total_package_to_queue_duration: 0,
                    total_rcv_package_from_queue_duration: 0,
                }),
                l3_metrics: None,
                l4_metrics: Some(pb::AccessLogKernelReadL4Metrics {
                    total_duration: end.saturating_sub(start),
                }),
            },
        )),
    }
}

/// The read and write that carried an exchange, from the local end's side: the client
/// writes the request and reads the response, the server the other way round. Only the
/// first request byte and the last response byte are timed; sizes are exact.
fn exchange_kernel_logs(h: &HttpRecord, role: Role) -> Vec<pb::AccessLogKernelLog> {
    let req = h.request.header_bytes + h.request.body_bytes;
    let resp = h.response.header_bytes + h.response.body_bytes;
    let start = h.start_mono_ns;
    let end = if h.end_mono_ns > 0 {
        h.end_mono_ns
    } else {
        start
    };
    match role {
        Role::Client => {
            let mut v = vec![write_log(start, start, req, 0, 0)];
            if h.end_mono_ns > 0 {
                v.push(read_log(end, end, resp, 0));
            }
            v
        }
        Role::Server => {
            let mut v = vec![read_log(start, start, req, 0)];
            if h.end_mono_ns > 0 {
                v.push(write_log(end, end, resp, 0, 0));
            }
            v
        }
    }
}

/// Connect or accept, the bytes of a connection with no HTTP exchange, and close; each
/// with the monotonic time it happened.
fn connection_kernel_logs(c: &ConnectionRecord, role: Role) -> Vec<(u64, pb::AccessLogKernelLog)> {
    use pb::access_log_kernel_log::Operation as Op;
    let mut v = Vec::new();
    if !c.preexisting {
        match role {
            Role::Client => {
                if let Some(start) = c.handshake.start_mono_ns {
                    let end = c.handshake.end_mono_ns.unwrap_or(start);
                    v.push((
                        start,
                        pb::AccessLogKernelLog {
                            operation: Some(Op::Connect(pb::AccessLogKernelConnectOperation {
                                start_time: ts(start),
                                end_time: ts(end),
                                success: c.handshake.success,
                            })),
                        },
                    ));
                }
            }
            Role::Server => {
                if let Some(t) = c.handshake.end_mono_ns {
                    v.push((
                        t,
                        pb::AccessLogKernelLog {
                            operation: Some(Op::Accept(pb::AccessLogKernelAcceptOperation {
                                start_time: ts(t),
                                end_time: ts(t),
                            })),
                        },
                    ));
                }
            }
        }
    }
    let l7 = matches!(c.protocol.as_str(), "http1" | "http2");
    if !l7 {
        let (sent, received) = match role {
            Role::Client => (c.bytes_client_to_server, c.bytes_server_to_client),
            Role::Server => (c.bytes_server_to_client, c.bytes_client_to_server),
        };
        let (start, end) = (c.open_mono_ns, c.mono_ns);
        if sent > 0 {
            v.push((
                start,
                write_log(start, end, sent, c.tcp.segs_out, c.tcp.retransmits),
            ));
        }
        if received > 0 {
            v.push((start, read_log(start, end, received, c.tcp.segs_in)));
        }
    }
    if matches!(c.close_reason.as_str(), "fin" | "reset" | "connect_failed") {
        v.push((
            c.mono_ns,
            pb::AccessLogKernelLog {
                operation: Some(Op::Close(pb::AccessLogKernelCloseOperation {
                    start_time: ts(c.mono_ns),
                    end_time: ts(c.mono_ns),
                    success: true,
                })),
            },
        ));
    }
    v
}

fn method(m: &str) -> Option<pb::AccessLogHttpProtocolRequestMethod> {
    use pb::AccessLogHttpProtocolRequestMethod as M;
    Some(match m {
        "GET" => M::Get,
        "POST" => M::Post,
        "PUT" => M::Put,
        "DELETE" => M::Delete,
        "HEAD" => M::Head,
        "PATCH" => M::Patch,
        "OPTIONS" => M::Options,
        "TRACE" => M::Trace,
        "CONNECT" => M::Connect,
        _ => return None,
    })
}

fn trace(h: &HttpRecord) -> Option<pb::AccessLogTraceInfo> {
    let t = h.trace.as_ref()?;
    let provider = match t.provider.as_str() {
        "skywalking" => pb::AccessLogTraceInfoProvider::SkyWalking,
        "zipkin" => pb::AccessLogTraceInfoProvider::Zipkin,
        _ => return None,
    };
    Some(pb::AccessLogTraceInfo {
        provider: provider as i32,
        trace_id: t.trace_id.clone(),
        trace_segment_id: t.segment_id.clone().unwrap_or_default(),
        span_id: t.span_id.clone().unwrap_or_default(),
    })
}

/// The protocol log of an exchange; None when the protocol cannot carry it (method
/// outside the nine it names, request or response not seen).
fn http_protocol(h: &HttpRecord) -> Option<pb::AccessLogHttpProtocol> {
    let m = method(h.method.as_deref()?)?;
    let status = h.status?;
    let version = if h.protocol.starts_with("HTTP/2") {
        pb::AccessLogHttpProtocolVersion::Http2
    } else {
        pb::AccessLogHttpProtocolVersion::Http1
    };
    Some(pb::AccessLogHttpProtocol {
        start_time: ts(h.start_mono_ns),
        end_time: ts(h.end_mono_ns.max(h.start_mono_ns)),
        version: version as i32,
        request: Some(pb::AccessLogHttpProtocolRequest {
            method: m as i32,
            path: h.path.clone().unwrap_or_default(),
            size_of_headers_bytes: h.request.header_bytes,
            size_of_body_bytes: h.request.body_bytes,
            trace: trace(h),
            host: h.host.clone().unwrap_or_default(),
        }),
        response: Some(pb::AccessLogHttpProtocolResponse {
            status_code: i32::from(status),
            size_of_headers_bytes: h.response.header_bytes,
            size_of_body_bytes: h.response.body_bytes,
        }),
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (what the records carry) to ns since the epoch.
pub fn parse_rfc3339_ns(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = &s[19..];
    let (frac, tail) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            (&r[..n], &r[n..])
        }
        None => ("", rest),
    };
    if tail != "Z" || frac.len() > 9 {
        return None;
    }
    let mut nanos: i64 = 0;
    for (i, c) in frac.bytes().enumerate() {
        nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    // Days from civil (proleptic Gregorian).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        rfc3339_ns, Clock, Handshake, MessageSize, RoleSource, TcpFigures, Trace, SCHEMA_VERSION,
    };
    use pb::access_log_kernel_log::Operation as Op;
    use pb::connection_address::Address;

    const BOOT: i128 = 1_700_000_000_123_456_789;

    fn ep(ip: &str, port: u16, svc: Option<&str>, pod: Option<&str>) -> Endpoint {
        Endpoint {
            addr: Some(ip.parse().unwrap()),
            port,
            service: svc.map(String::from),
            pod: pod.map(String::from),
            namespace: svc.map(|s| s.split('.').nth(1).unwrap().to_string()),
            container: pod.map(|_| "app".to_string()),
            process: pod.map(|_| "python3".to_string()),
            ..Endpoint::default()
        }
    }

    fn http(conn: u64, by: ObservedBy, method: &str, status: Option<u16>, start: u64) -> Record {
        let clock = Clock::with_offset(BOOT);
        Record::Http(HttpRecord {
            v: SCHEMA_VERSION,
            time: clock.rfc3339(start + 1000),
            conn_id: conn,
            observed_by: by,
            client: ep("10.0.0.1", 40000, Some("web.shop"), Some("web-1")),
            server: ep("10.0.0.2", 8080, Some("cart.shop"), Some("cart-0")),
            protocol: "HTTP/1.1".into(),
            tls: false,
            method: Some(method.into()),
            path: Some("/api/items".into()),
            query: None,
            host: Some("cart:8080".into()),
            user_agent: None,
            status,
            content_type: None,
            request: MessageSize {
                header_bytes: 80,
                body_bytes: 5,
                chunked: false,
            },
            response: MessageSize {
                header_bytes: 120,
                body_bytes: 1000,
                chunked: false,
            },
            start_mono_ns: start,
            end_mono_ns: if status.is_some() { start + 1000 } else { 0 },
            start_time: clock.rfc3339(start),
            duration_ns: 1000,
            interim: vec![],
            upgrade: None,
            trace: Some(Trace {
                provider: "skywalking".into(),
                trace_id: "t1".into(),
                segment_id: Some("s1".into()),
                span_id: Some("3".into()),
                parent_service: None,
            }),
            stream_id: None,
            grpc: None,
            reset_code: None,
            error: false,
            complete: true,
            partial: false,
            notes: vec![],
        })
    }

    fn conn(id: u64, by: ObservedBy, protocol: &str, at: u64) -> Record {
        let clock = Clock::with_offset(BOOT);
        Record::Connection(ConnectionRecord {
            v: SCHEMA_VERSION,
            time: clock.rfc3339(at),
            mono_ns: at,
            conn_id: id,
            observed_by: by,
            role_source: RoleSource::Handshake,
            client: ep("10.0.0.1", 40000, Some("web.shop"), Some("web-1")),
            server: ep("10.0.0.2", 8080, Some("cart.shop"), Some("cart-0")),
            protocol: protocol.into(),
            tls: true,
            preexisting: false,
            handshake: Handshake {
                start_mono_ns: Some(10),
                end_mono_ns: Some(20),
                duration_ns: Some(10),
                success: true,
            },
            bytes_client_to_server: 300,
            bytes_server_to_client: 700,
            calls_client_to_server: 1,
            calls_server_to_client: 1,
            tcp: TcpFigures {
                srtt_us: 10,
                retransmits: 1,
                segs_in: 4,
                segs_out: 5,
            },
            closed_by: "client".into(),
            reset_sent: false,
            reset_received: false,
            close_reason: "fin".into(),
            open_mono_ns: 20,
            duration_ns: at - 20,
            exchanges: 0,
            data_lost: false,
        })
    }

    fn node() -> NodeConfig {
        NodeConfig {
            name: "node-a".into(),
            interfaces: vec![NetInterface {
                index: 2,
                mtu: 1500,
                name: "eth0".into(),
            }],
            cluster: "prod".into(),
            exclude_namespaces: vec!["kube-system".into()],
        }
    }

    fn http_of(m: &pb::EbpfAccessLogMessage) -> &pb::AccessLogHttpProtocol {
        match m.protocol_log.as_ref().and_then(|p| p.protocol.as_ref()) {
            Some(pb::access_log_protocol_logs::Protocol::Http(h)) => h,
            None => panic!("no protocol log in {m:?}"),
        }
    }

    #[test]
    fn rfc3339_parses_what_the_model_writes() {
        for ns in [
            0i128,
            1,
            BOOT,
            951_782_400_000_000_000,
            4_102_444_799_999_999_999,
        ] {
            assert_eq!(parse_rfc3339_ns(&rfc3339_ns(ns)), Some(ns), "{ns}");
        }
        assert_eq!(
            parse_rfc3339_ns("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000_500_000_000)
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20+01:00",
            "x023-11-14T22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_on_the_first_message_only_with_boot_time_from_the_records() {
        let mut m = Mapper::new(node());
        let msgs = m.batch(&[
            http(1, ObservedBy::Server, "GET", Some(200), 5_000),
            http(2, ObservedBy::Server, "GET", Some(200), 6_000),
        ]);
        assert_eq!(msgs.len(), 2);
        let n = msgs[0].node.as_ref().expect("node on the first message");
        assert!(msgs[1].node.is_none());
        assert_eq!(n.name, "node-a");
        assert_eq!(n.cluster_name, "prod");
        assert_eq!(
            n.net_interfaces,
            vec![pb::EbpfAccessLogNodeNetInterface {
                index: 2,
                mtu: 1500,
                name: "eth0".into()
            }]
        );
        let bt = n.boot_time.unwrap();
        assert_eq!(
            (bt.seconds, bt.nanos),
            (1_700_000_000, 123_456_789),
            "boot time = record wall time - record monotonic time"
        );
        assert_eq!(
            n.policy.as_ref().unwrap().exclude_namespaces,
            vec!["kube-system".to_string()]
        );
        // A second batch is a second stream: node again on its first message.
        let msgs = m.batch(&[http(1, ObservedBy::Server, "GET", Some(200), 7_000)]);
        assert!(msgs[0].node.is_some());
        assert!(m.batch(&[]).is_empty());
    }

    #[test]
    fn connection_on_the_first_message_of_each_contiguous_group() {
        let mut m = Mapper::new(node());
        // Interleaved on the wire: 1, 2, 1, then connection 1 closes.
        let msgs = m.batch(&[
            http(1, ObservedBy::Server, "GET", Some(200), 100),
            http(2, ObservedBy::Client, "POST", Some(201), 200),
            http(1, ObservedBy::Server, "PUT", Some(500), 300),
            conn(1, ObservedBy::Server, "http1", 400),
        ]);
        // Group 1: kernel message (accept, close), GET, PUT; group 2: POST.
        assert_eq!(msgs.len(), 4, "{msgs:#?}");
        let c1 = msgs[0].connection.as_ref().expect("connection on group 1");
        assert!(msgs[0].protocol_log.is_none());
        let ops: Vec<&Op> = msgs[0]
            .kernel_logs
            .iter()
            .map(|l| l.operation.as_ref().unwrap())
            .collect();
        assert!(matches!(ops[0], Op::Accept(_)), "{ops:?}");
        assert!(matches!(ops[1], Op::Close(c) if c.success), "{ops:?}");
        assert_eq!(
            ops.len(),
            2,
            "HTTP connection: its bytes are in the exchanges"
        );
        assert!(msgs[1].connection.is_none() && msgs[2].connection.is_none());
        assert_eq!(
            http_of(&msgs[1]).request.as_ref().unwrap().method,
            pb::AccessLogHttpProtocolRequestMethod::Get as i32
        );
        assert_eq!(
            http_of(&msgs[2]).response.as_ref().unwrap().status_code,
            500
        );
        let c2 = msgs[3].connection.as_ref().expect("connection on group 2");
        assert_eq!(c1.role, pb::DetectPoint::Server as i32);
        assert_eq!(c2.role, pb::DetectPoint::Client as i32);
        // Server view: local is the server.
        match c1.local.as_ref().unwrap().address.as_ref().unwrap() {
            Address::Kubernetes(k) => {
                assert_eq!(
                    (
                        k.service_name.as_str(),
                        k.pod_name.as_str(),
                        k.container_name.as_str(),
                        k.process_name.as_str(),
                        k.port
                    ),
                    ("cart.shop", "cart-0", "app", "python3", 8080)
                );
            }
            a => panic!("{a:?}"),
        }
        match c2.local.as_ref().unwrap().address.as_ref().unwrap() {
            Address::Kubernetes(k) => assert_eq!(k.service_name, "web.shop"),
            a => panic!("{a:?}"),
        }
        assert_eq!(c1.protocol, pb::AccessLogProtocolType::Http1 as i32);
        assert_eq!(c1.tls_mode, pb::AccessLogConnectionTlsMode::Plain as i32);
    }

    #[test]
    fn http_exchange_fields_and_kernel_logs() {
        let mut m = Mapper::new(node());
        let msgs = m.batch(&[http(7, ObservedBy::Server, "POST", Some(201), 1_000)]);
        let h = http_of(&msgs[0]);
        assert_eq!(ts_value(&h.start_time), 1_000);
        assert_eq!(ts_value(&h.end_time), 2_000);
        assert_eq!(h.version, pb::AccessLogHttpProtocolVersion::Http1 as i32);
        let req = h.request.as_ref().unwrap();
        assert_eq!(
            req.method,
            pb::AccessLogHttpProtocolRequestMethod::Post as i32
        );
        assert_eq!(req.path, "/api/items");
        assert_eq!(req.host, "cart:8080");
        assert_eq!((req.size_of_headers_bytes, req.size_of_body_bytes), (80, 5));
        let t = req.trace.as_ref().unwrap();
        assert_eq!(
            t.provider,
            pb::AccessLogTraceInfoProvider::SkyWalking as i32
        );
        assert_eq!(
            (
                t.trace_id.as_str(),
                t.trace_segment_id.as_str(),
                t.span_id.as_str()
            ),
            ("t1", "s1", "3")
        );
        let resp = h.response.as_ref().unwrap();
        assert_eq!(
            (
                resp.status_code,
                resp.size_of_headers_bytes,
                resp.size_of_body_bytes
            ),
            (201, 120, 1000)
        );
        // The server read the request and wrote the response.
        let ops: Vec<&Op> = msgs[0]
            .kernel_logs
            .iter()
            .map(|l| l.operation.as_ref().unwrap())
            .collect();
        match (ops[0], ops[1]) {
            (Op::Read(r), Op::Write(w)) => {
                assert_eq!(ts_value(&r.start_time), 1_000);
                assert_eq!(r.l2_metrics.as_ref().unwrap().total_package_size, 85);
                assert_eq!(ts_value(&w.end_time), 2_000);
                assert_eq!(w.l4_metrics.as_ref().unwrap().total_package_size, 1120);
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn both_ends_on_the_node_give_two_views() {
        let mut m = Mapper::new(node());
        let msgs = m.batch(&[
            http(3, ObservedBy::Both, "GET", Some(200), 100),
            conn(3, ObservedBy::Both, "http1", 500),
        ]);
        // Server group: kernel (accept, close) + exchange; client group: kernel (connect, close) + exchange.
        assert_eq!(msgs.len(), 4, "{msgs:#?}");
        assert_eq!(
            msgs[0].connection.as_ref().unwrap().role,
            pb::DetectPoint::Server as i32
        );
        assert_eq!(
            msgs[2].connection.as_ref().unwrap().role,
            pb::DetectPoint::Client as i32
        );
        match msgs[2].kernel_logs[0].operation.as_ref().unwrap() {
            Op::Connect(c) => {
                assert_eq!(
                    (ts_value(&c.start_time), ts_value(&c.end_time), c.success),
                    (10, 20, true)
                )
            }
            o => panic!("{o:?}"),
        }
        // Client's kernel logs of the exchange: write the request, read the response.
        assert!(matches!(
            msgs[3].kernel_logs[0].operation,
            Some(Op::Write(_))
        ));
        assert!(matches!(
            msgs[3].kernel_logs[1].operation,
            Some(Op::Read(_))
        ));
    }

    #[test]
    fn plain_tcp_connection_sends_its_bytes_as_kernel_logs() {
        let mut m = Mapper::new(node());
        let msgs = m.batch(&[conn(9, ObservedBy::Client, "unknown", 900)]);
        assert_eq!(msgs.len(), 1);
        let c = msgs[0].connection.as_ref().unwrap();
        assert_eq!(c.protocol, pb::AccessLogProtocolType::Tcp as i32);
        assert_eq!(c.tls_mode, pb::AccessLogConnectionTlsMode::Tls as i32);
        let ops: Vec<&Op> = msgs[0]
            .kernel_logs
            .iter()
            .map(|l| l.operation.as_ref().unwrap())
            .collect();
        assert_eq!(ops.len(), 4, "connect, write, read, close: {ops:?}");
        match ops[1] {
            Op::Write(w) => {
                let l4 = w.l4_metrics.as_ref().unwrap();
                assert_eq!(
                    (
                        l4.total_package_size,
                        l4.total_transmit_package_count,
                        l4.total_retransmit_package_count
                    ),
                    (300, 5, 1)
                );
            }
            o => panic!("{o:?}"),
        }
        match ops[2] {
            Op::Read(r) => assert_eq!(r.l2_metrics.as_ref().unwrap().total_package_size, 700),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn unnamed_methods_and_missing_responses_keep_their_kernel_logs_only() {
        let mut m = Mapper::new(node());
        let msgs = m.batch(&[
            http(4, ObservedBy::Server, "PROPFIND", Some(207), 100),
            http(4, ObservedBy::Server, "GET", None, 200),
        ]);
        assert_eq!(msgs.len(), 1, "{msgs:#?}");
        assert!(msgs[0].protocol_log.is_none());
        assert_eq!(msgs[0].kernel_logs.len(), 3, "read+write, then read");
        assert_eq!(m.counters.exchanges_without_protocol_log, 2);
    }

    #[test]
    fn ip_addresses_when_not_attributed_and_excluded_namespaces() {
        let mut m = Mapper::new(node());
        let mut r = http(5, ObservedBy::Client, "GET", Some(200), 100);
        if let Record::Http(h) = &mut r {
            h.server = ep("198.18.0.9", 80, None, None);
        }
        let msgs = m.batch(&[r]);
        match msgs[0]
            .connection
            .as_ref()
            .unwrap()
            .remote
            .as_ref()
            .unwrap()
            .address
            .as_ref()
            .unwrap()
        {
            Address::Ip(ip) => assert_eq!((ip.host.as_str(), ip.port), ("198.18.0.9", 80)),
            a => panic!("{a:?}"),
        }
        let mut r = http(6, ObservedBy::Server, "GET", Some(200), 100);
        if let Record::Http(h) = &mut r {
            h.server = ep("10.0.0.5", 53, Some("dns.kube-system"), Some("dns-0"));
        }
        assert!(m.batch(&[r]).is_empty());
        assert_eq!(m.counters.excluded_views, 1);
    }

    #[test]
    fn http2_exchanges_and_zipkin_traces() {
        let mut m = Mapper::new(node());
        let mut r = http(8, ObservedBy::Server, "POST", Some(200), 100);
        if let Record::Http(h) = &mut r {
            h.protocol = "HTTP/2".into();
            h.path = Some("/shop.Cart/Add".into());
            h.trace = Some(Trace {
                provider: "zipkin".into(),
                trace_id: "abc".into(),
                segment_id: None,
                span_id: Some("def".into()),
                parent_service: None,
            });
        }
        let msgs = m.batch(&[r]);
        let c = msgs[0].connection.as_ref().unwrap();
        assert_eq!(c.protocol, pb::AccessLogProtocolType::Http2 as i32);
        let h = http_of(&msgs[0]);
        assert_eq!(h.version, pb::AccessLogHttpProtocolVersion::Http2 as i32);
        let req = h.request.as_ref().unwrap();
        assert_eq!(req.path, "/shop.Cart/Add");
        let t = req.trace.as_ref().unwrap();
        assert_eq!(t.provider, pb::AccessLogTraceInfoProvider::Zipkin as i32);
        assert_eq!(
            (
                t.trace_id.as_str(),
                t.trace_segment_id.as_str(),
                t.span_id.as_str()
            ),
            ("abc", "", "def")
        );
    }

    #[test]
    fn same_records_same_messages() {
        let recs = vec![
            http(1, ObservedBy::Server, "GET", Some(200), 100),
            conn(1, ObservedBy::Server, "http1", 400),
        ];
        let a = Mapper::new(node()).batch(&recs);
        let b = Mapper::new(node()).batch(&recs);
        assert_eq!(a, b);
    }
}
