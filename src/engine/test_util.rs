//! Helpers shared by the engine's unit tests: builders of kernel events, and an
//! attribution stand-in (a fake: it knows one NAT translation and nothing else).

use std::net::SocketAddr;

use crate::capture::{ConnEvent, ConnFlags, ConnKind, DataEvent, Syscall};
use crate::model::Endpoint;
use crate::protocol::{Direction, Role};
use crate::resolve::Attribution;

/// Attribution stand-in: one translated connection, from `client` to `service`,
/// really to `backend`.
pub(super) struct Nat {
    pub(super) client: SocketAddr,
    pub(super) service: SocketAddr,
    pub(super) backend: SocketAddr,
    pub(super) lookups: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Attribution for Nat {
    fn attribute_process(&mut self, ep: &mut Endpoint) {
        ep.resolved_by = Some("process".into());
    }
    fn attribute_address(&mut self, ep: &mut Endpoint, _peer: Option<SocketAddr>) {
        ep.resolved_by = Some("unresolved".into());
    }
    fn nat_destination(&mut self, l: SocketAddr, r: SocketAddr) -> Option<SocketAddr> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (l == self.client && r == self.service).then_some(self.backend)
    }
    fn service_at(&mut self, a: SocketAddr) -> Option<String> {
        (a == self.service).then(|| "cart.shop".to_string())
    }
}

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn conn(
    kind: ConnKind,
    cookie: u64,
    ts: u64,
    local: &str,
    remote: &str,
    role: Role,
) -> ConnEvent {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(if role == Role::Client {
        b"curl"
    } else {
        b"srv\0"
    });
    ConnEvent {
        kind,
        cookie,
        ts_ns: ts,
        connect_start_ns: 0,
        established_ns: ts,
        close_start_ns: 0,
        cgroup_id: cookie * 10,
        netns: 0,
        bytes_sent: 0,
        bytes_recv: 0,
        send_calls: 0,
        recv_calls: 0,
        data_events: 0,
        tcp_bytes_acked: 0,
        tcp_bytes_received: 0,
        srtt_us: 0,
        total_retrans: 0,
        segs_out: 0,
        segs_in: 0,
        tgid: cookie as u32 * 100,
        flags: ConnFlags::OWNER_KNOWN | ConnFlags::CLOSED_LOCAL,
        role,
        old_state: 0,
        new_state: 0,
        local: sa(local),
        remote: sa(remote),
        comm,
    }
}

pub(super) fn data<'a>(
    cookie: u64,
    seq: u64,
    ts: u64,
    dir: Direction,
    payload: &'a [u8],
) -> DataEvent<'a> {
    DataEvent {
        cookie,
        ts_ns: ts,
        start_ns: ts,
        seq,
        len: payload.len() as u64,
        cgroup_id: cookie * 10,
        tgid: cookie as u32 * 100,
        tid: cookie as u32 * 100,
        fd: 3,
        dir,
        syscall: match dir {
            Direction::Egress => Syscall::Write,
            Direction::Ingress => Syscall::Read,
        },
        flags: 0,
        comm: [0; 16],
        payload,
    }
}
