//! L7 protocol parsing: turns the byte streams of one connection into exchanges.

pub mod http1;
pub mod http2;
pub mod l7;
pub mod trace;

pub use crate::flow::{Chunk, Direction, Role};

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
