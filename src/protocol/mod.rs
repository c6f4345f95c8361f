//! L7 protocol parsing: turns the byte streams of one connection into exchanges.

pub mod http1;
pub mod http2;
pub mod l7;
pub mod trace;

/// Which way bytes moved, from the point of view of the traced socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The local process wrote these bytes (send/write family).
    Egress,
    /// The local process read these bytes (recv/read family).
    Ingress,
}

/// The role of the local socket in its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Unknown,
    Client,
    Server,
}

/// One socket call's worth of bytes as the kernel reported it.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub dir: Direction,
    /// Monotonic ns at the start of the call (equal to `end_ns` when not measured).
    pub start_ns: u64,
    /// Monotonic ns at the end of the call.
    pub end_ns: u64,
    /// Bytes the call moved (its return value).
    pub len: u64,
    /// The captured prefix of those bytes; `data.len() <= len`.
    pub data: &'a [u8],
}

/// Hand out everything `from` holds, then free its storage if a burst grew it: a
/// connection's scratch space must not keep the peak of a flood for as long as it lives.
pub(crate) fn hand_out<T>(from: &mut Vec<T>, out: &mut Vec<T>) {
    out.append(from);
    release(from);
}

/// Free a drained vector's storage if a burst grew it.
pub(crate) fn release<T>(v: &mut Vec<T>) {
    if v.capacity() > 16 {
        *v = Vec::new();
    }
}
