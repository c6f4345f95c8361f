//! The words capture and the protocol parsers share about one connection's bytes: which
//! way they moved, which end the local socket is, and one socket call's worth of them.
//! Plain data; imports nothing from the crate.

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
