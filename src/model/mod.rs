//! The access-log record: the one schema shared by `record`, `top` and `push`.
//!
//! Documented field by field in `docs/record-schema.md`; bump `SCHEMA_VERSION` on any
//! change that is not a pure addition.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub mod clock;
pub mod counters;

pub use counters::{KernelCounters, ResolveStats, TlsAttachStats};

/// Version of the record schema, written in every record as `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// One line of the access log.
// Records are built once and moved to a sink; boxing the large variants would add an
// allocation per record for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Http(HttpRecord),
    Connection(ConnectionRecord),
    Stats(StatsRecord),
}

impl Record {
    pub fn mono_ns(&self) -> u64 {
        match self {
            Self::Http(r) => r.end_mono_ns,
            Self::Connection(r) => r.mono_ns,
            Self::Stats(r) => r.mono_ns,
        }
    }
}

/// Which ends of a connection the tool saw from inside their own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedBy {
    /// Only the client's socket is on this node.
    Client,
    /// Only the server's socket is on this node.
    Server,
    /// Both sockets are on this node; the record is written once, from the server's view.
    Both,
}

/// How the client/server roles were decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleSource {
    /// Seen connect() or the passive handshake.
    Handshake,
    /// Joined mid-stream; a request or response on the wire told.
    Payload,
    /// Nothing told; the end with an ephemeral port is taken as the client.
    Port,
}

/// One end of a connection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// Process (tgid) that used this socket; absent when the end is not on this node.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_id: Option<String>,
    /// Kubernetes attribution, filled by the resolver when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<String>,
    /// The Service address the client dialled, when the connection was translated to
    /// this end (kube-proxy DNAT); `addr`/`port` are then the real backend.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub via: Option<ServiceAddr>,
    /// How this end was attributed: "process" (its socket was seen), "pod_ip",
    /// "service_ip", "conntrack", or "unresolved".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resolved_by: Option<String>,
}

/// A Service address a connection was made to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceAddr {
    pub addr: Option<IpAddr>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<String>,
}

/// Trace context carried by the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// "skywalking" (sw8) or "zipkin" (b3).
    pub provider: String,
    pub trace_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub segment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub span_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent_service: Option<String>,
}

/// Sizes of one HTTP message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MessageSize {
    pub header_bytes: u64,
    pub body_bytes: u64,
    #[serde(default)]
    pub chunked: bool,
}

/// One HTTP request and its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRecord {
    pub v: u32,
    /// Wall-clock time of the last response byte (RFC 3339, ns).
    pub time: String,
    /// Connection id (socket cookie of the observing socket).
    pub conn_id: u64,
    pub observed_by: ObservedBy,
    pub client: Endpoint,
    pub server: Endpoint,
    /// "HTTP/1.1", "HTTP/1.0".
    pub protocol: String,
    pub tls: bool,
    /// Request method; absent only when the request's headers were not seen (partial).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub method: Option<String>,
    /// Request path without the query string (unless `--keep-query`); for gRPC
    /// `/package.Service/Method`. Absent only when the request was not seen.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_agent: Option<String>,
    /// Final status; absent when no response was seen.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_type: Option<String>,
    pub request: MessageSize,
    pub response: MessageSize,
    /// Monotonic ns (CLOCK_MONOTONIC, as the kernel stamps events) of the first request byte.
    pub start_mono_ns: u64,
    /// Monotonic ns of the last response byte (0 when no response).
    pub end_mono_ns: u64,
    pub start_time: String,
    /// Latency: first request byte to last response byte, ns, as seen by `observed_by`'s side.
    pub duration_ns: u64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub interim: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upgrade: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trace: Option<Trace>,
    /// HTTP/2 stream id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stream_id: Option<u32>,
    /// gRPC call details, when the exchange is a gRPC call.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grpc: Option<GrpcCall>,
    /// HTTP/2 RST_STREAM error code, when the stream was reset.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reset_code: Option<u32>,
    /// The exchange failed: a 5xx status, a gRPC status other than OK (even under a 200),
    /// a reset stream, or no response at all.
    pub error: bool,
    /// Both messages were seen whole with exact framing.
    pub complete: bool,
    /// Joined mid-stream, lost events, truncated headers or lost body framing.
    pub partial: bool,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notes: Vec<String>,
}

/// A gRPC call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpcCall {
    /// `package.Service` from the path.
    pub service: String,
    /// `Method` from the path.
    pub method: String,
    /// `grpc-status`, from the trailers (or a trailers-only response).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u32>,
    /// Its name: `OK`, `NOT_FOUND`, `UNAVAILABLE`, ...
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_name: Option<String>,
    /// `grpc-message`, percent-decoded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    /// Length-prefixed messages each way (1 for unary; any number when streaming).
    pub request_messages: u64,
    pub response_messages: u64,
    /// The response carried no messages, only a status in its headers.
    pub trailers_only: bool,
}

/// Name of a gRPC status code.
pub fn grpc_status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN_CODE")
}

/// Handshake of a connection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Handshake {
    /// Monotonic ns of the SYN (client side only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_mono_ns: Option<u64>,
    /// Monotonic ns when the handshake completed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_mono_ns: Option<u64>,
    /// SYN to established, ns (client side only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ns: Option<u64>,
    pub success: bool,
}

/// TCP figures of a connection, from the kernel's tcp_sock at close.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TcpFigures {
    pub srtt_us: u32,
    pub retransmits: u32,
    pub segs_in: u32,
    pub segs_out: u32,
}

/// One TCP connection, written when it closes (or when capture ends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub v: u32,
    /// Wall-clock time of the close (or of the end of capture), RFC 3339 ns.
    pub time: String,
    pub mono_ns: u64,
    pub conn_id: u64,
    pub observed_by: ObservedBy,
    pub role_source: RoleSource,
    pub client: Endpoint,
    pub server: Endpoint,
    /// Application protocol found on it: "http1", "unknown" (no payload or not recognised).
    pub protocol: String,
    pub tls: bool,
    /// Open before capture began: its start and early bytes were not seen.
    pub preexisting: bool,
    pub handshake: Handshake,
    /// Payload bytes client to server and server to client, counted per socket call.
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub calls_client_to_server: u64,
    pub calls_server_to_client: u64,
    pub tcp: TcpFigures,
    /// "client", "server" or "unknown": who sent the first FIN.
    pub closed_by: String,
    pub reset_sent: bool,
    pub reset_received: bool,
    /// "fin", "reset", "connect_failed", "open_at_exit", "evicted".
    pub close_reason: String,
    /// Monotonic ns the connection was first seen (handshake end, or first sight).
    pub open_mono_ns: u64,
    pub duration_ns: u64,
    /// HTTP exchanges recorded on it.
    pub exchanges: u64,
    /// Some of its data events were lost (ring buffer full); figures above stay exact.
    pub data_lost: bool,
}

/// Periodic capture statistics: what was seen, and what was lost and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsRecord {
    pub v: u32,
    pub time: String,
    pub mono_ns: u64,
    pub uptime_s: f64,
    pub kernel: KernelCounters,
    pub user: UserCounters,
    /// Everything lost, by cause; zero everywhere means nothing was lost.
    pub lost: LossCounters,
    /// Attribution: ends resolved and not, by source; cache sizes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attribution: Option<ResolveStats>,
    /// Processes seen doing TLS whose plaintext is not visible (no probe for their TLS
    /// library: a JVM's JSSE, for one); their connections count in
    /// `user.connections_by_protocol_tls`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tls_not_visible: Vec<String>,
    /// The kernel hook each part of capture runs on (live capture only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hooks: Option<HookRungs>,
    /// TLS probes: files probed, refused by a bound, detached (live capture with TLS
    /// probes only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tls_probes: Option<TlsAttachStats>,
}

/// The rung of each data hook: "tracepoint", "fentry", "kprobe" or "syscall"; None: not
/// hooked on this kernel (only `send_start` can be missing).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HookRungs {
    pub send: Option<String>,
    pub recv: Option<String>,
    pub send_start: Option<String>,
}

impl HookRungs {
    /// "send tracepoint, recv tracepoint, start fentry"; the same rung everywhere says it once.
    pub fn summary(&self) -> String {
        let name = |r: &Option<String>| r.clone().unwrap_or_else(|| "none".into());
        if self.send == self.recv && self.recv == self.send_start {
            return name(&self.send);
        }
        format!(
            "send {}, recv {}, start {}",
            name(&self.send),
            name(&self.recv),
            name(&self.send_start)
        )
    }
}

/// Counters kept in user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserCounters {
    pub events: u64,
    pub http_records: u64,
    pub connection_records: u64,
    /// Client-side views not written because the server's view of the same exchange was.
    pub deduplicated: u64,
    /// Connections through a translated address (a Service IP) whose two local sockets
    /// were linked, so they were written once with both processes.
    #[serde(default)]
    pub nat_linked: u64,
    pub connections_open: u64,
    pub connections_by_protocol_http1: u64,
    pub connections_by_protocol_http2: u64,
    /// Connections carrying TLS whose plaintext was not seen (no probe for its library).
    pub connections_by_protocol_tls: u64,
    pub connections_by_protocol_unknown: u64,
    pub partial_records: u64,
    pub http_parse_errors: u64,
    pub http_resyncs: u64,
    pub http_headers_truncated: u64,
    pub http_unmatched_responses: u64,
    pub http_abandoned_requests: u64,
    pub http2_streams: u64,
    pub http2_resyncs: u64,
    pub http2_hpack_errors: u64,
    /// Header fields that could not be decoded (dynamic-table state lost before joining).
    pub http2_hpack_fields_unknown: u64,
    pub http2_streams_cut: u64,
    pub http2_header_blocks_cut: u64,
    pub http2_parse_errors: u64,
    /// Streams reported early, incomplete (note `memory_budget`): the connection's open
    /// streams held more than their byte budget.
    #[serde(default)]
    pub http2_streams_evicted_memory: u64,
    /// Header blocks with more fields than are looked at (note
    /// `header_block_too_many_fields`).
    #[serde(default)]
    pub http2_hpack_blocks_overworked: u64,
    /// HTTP/1 requests waiting for an answer written out early, incomplete (note
    /// `memory_budget`): the connection's waiting requests held more than 1 MiB, or the
    /// node's parsers more than their shared budget.
    #[serde(default)]
    pub http_requests_evicted_memory: u64,
    /// Bytes the protocol parsers of all open connections hold now (buffers, tables,
    /// streams and requests waiting for an answer).
    #[serde(default)]
    pub parser_bytes: u64,
    /// Times a connection's parser gave up what waited for an answer (HTTP/1 requests,
    /// HTTP/2 streams) to keep all parsers within their shared budget
    /// (`--max-parser-memory`): written out early, incomplete, note `memory_budget`.
    #[serde(default)]
    pub parsers_shed_memory: u64,
    /// Times a connection's parser was started over for the same budget, once nothing
    /// waiting was left to give up: its partial heads, frames and header tables were
    /// dropped and the connection is marked `data_lost`.
    #[serde(default)]
    pub parsers_restarted_memory: u64,
}

/// Losses, by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LossCounters {
    /// Data events the kernel could not queue (ring buffer full).
    pub ringbuf_data_events: u64,
    /// Connection events the kernel could not queue.
    pub ringbuf_conn_events: u64,
    /// Sockets whose state could not be allocated in the kernel.
    pub kernel_storage: u64,
    /// Records that could not be decoded.
    pub bad_records: u64,
    /// Gaps seen in per-connection event numbering (events lost before user space).
    pub sequence_gaps: u64,
    /// Connections dropped from the table to keep memory bounded.
    pub evicted_connections: u64,
    /// Exec notifications the kernel could not queue (a new binary's TLS code may go
    /// unprobed until the next scan).
    #[serde(default)]
    pub ringbuf_exec_events: u64,
    /// Reads after a socket had closed whose state was no longer held (not recorded).
    #[serde(default)]
    pub after_close_untracked: u64,
}

impl LossCounters {
    pub fn total(&self) -> u64 {
        self.ringbuf_data_events
            + self.ringbuf_conn_events
            + self.kernel_storage
            + self.bad_records
            + self.sequence_gaps
            + self.evicted_connections
            + self.ringbuf_exec_events
            + self.after_close_untracked
    }
}

/// Converts kernel monotonic timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - monotonic, ns.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let real = clock::realtime_ns();
        let mono = clock::monotonic_ns();
        Self {
            offset_ns: i128::from(real) - i128::from(mono),
        }
    }

    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Boot time as wall-clock ns since the epoch.
    pub fn boot_epoch_ns(&self) -> i128 {
        self.offset_ns
    }

    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.offset_ns
    }

    pub fn rfc3339(&self, mono_ns: u64) -> String {
        rfc3339_ns(self.wall_ns(mono_ns))
    }
}

/// Format ns since the epoch as RFC 3339 UTC with nanoseconds.
pub fn rfc3339_ns(epoch_ns: i128) -> String {
    let secs = epoch_ns.div_euclid(1_000_000_000) as i64;
    let nanos = epoch_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_ns(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339_ns(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(rfc3339_ns(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn clock_offsets_monotonic_time() {
        let c = Clock::with_offset(1_000);
        assert_eq!(c.wall_ns(5), 1_005);
    }

    #[test]
    fn record_round_trips_through_json() {
        let rec = Record::Stats(StatsRecord {
            v: SCHEMA_VERSION,
            time: rfc3339_ns(0),
            mono_ns: 1,
            uptime_s: 0.5,
            kernel: KernelCounters::default(),
            user: UserCounters::default(),
            lost: LossCounters::default(),
            attribution: None,
            tls_not_visible: Vec::new(),
            hooks: None,
            tls_probes: Some(TlsAttachStats {
                files_refused: 2,
                ..Default::default()
            }),
        });
        let s = serde_json::to_string(&rec).unwrap();
        assert!(s.starts_with(r#"{"kind":"stats","v":1"#), "{s}");
        let back: Record = serde_json::from_str(&s).unwrap();
        assert_eq!(back, rec);
    }
}
