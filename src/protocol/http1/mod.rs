//! HTTP/1.0 and HTTP/1.1 exchange reconstruction from the captured socket calls of one connection.
//!
//! Each direction is a small state machine over a byte stream whose bytes may be only partly
//! captured (`Chunk::data` is a prefix of `Chunk::len` bytes). Heads are buffered (bounded) and
//! parsed with `httparse`; bodies are never buffered, only framed and counted. Requests wait in a
//! bounded FIFO until the response that answers them has been framed.
//!
//! - `head`: recognising a message start and parsing a head (pure);
//! - `body`: body framing: Content-Length, chunked, until close (pure);
//! - `conn`: the per-connection state machine that drives both directions, pairs
//!   responses with requests and bounds the queue of requests waiting for an answer (pure:
//!   no I/O, no clock).

mod body;
mod conn;
mod head;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

use super::Direction;

pub use super::trace::TraceContext;
pub use conn::Http1Conn;
pub use head::detect;

/// Per-connection counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Http1Stats {
    /// Request heads parsed (including truncated ones).
    pub requests: u64,
    /// Final (non-1xx, or 101) response heads parsed, matched or not.
    pub responses: u64,
    /// 1xx responses other than 101.
    pub interim_responses: u64,
    pub parse_errors: u64,
    /// Times bytes had to be skipped to find a message start again.
    pub resyncs: u64,
    pub headers_truncated: u64,
    /// Final responses that could not be paired with a request.
    pub unmatched_responses: u64,
    /// Requests that never got a response: emitted with `status: None`, or lost before their
    /// head was complete.
    pub abandoned_requests: u64,
    /// Bytes not parsed: while out of sync, and everything after an upgrade or close.
    pub bytes_skipped: u64,
    /// Waiting requests given up early because the waiting requests of the connection
    /// held more than `MAX_PENDING_BYTES`.
    pub requests_evicted_memory: u64,
}

/// One request and (when seen) the response that answered it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Http1Exchange {
    pub method: String,
    pub target: String,
    pub version: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub req_header_bytes: u64,
    pub req_body_bytes: u64,
    pub resp_header_bytes: u64,
    pub resp_body_bytes: u64,
    pub req_start_ns: u64,
    pub req_end_ns: u64,
    pub resp_start_ns: u64,
    pub resp_end_ns: u64,
    pub interim: Vec<u16>,
    pub chunked_request: bool,
    pub chunked_response: bool,
    pub upgrade: Option<String>,
    pub trace: Option<TraceContext>,
    pub complete: bool,
    pub partial: bool,
    pub notes: Vec<&'static str>,
}

/// The rest of a call after the message that switched protocols (101, CONNECT 2xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub dir: Direction,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The captured part.
    pub data: Vec<u8>,
    /// All of it, captured or not.
    pub len: u64,
}
