//! Attribution of connection ends to processes, containers, pods and services.
//!
//! The engine asks an `Attribution` to fill in the ends of every record; what it can
//! fill depends on what the node offers (see the implementations): `ProcResolver`
//! gives container ids from `/proc` only; `k8s::K8sAttribution` adds pods, namespaces,
//! containers, services, Service-IP backends, from whatever sources the node has.

pub mod api;
pub mod bundles;
pub mod cgroup;
pub mod conntrack;
pub mod cri;
pub mod k8s;
pub mod kubelet;
pub mod meta;
pub mod node;
pub mod procs;

use std::net::SocketAddr;

use crate::model::Endpoint;

/// Fills in who an end of a connection is.
pub trait Attribution: Send {
    /// An end whose process was seen: `ep.pid` and `ep.cgroup_id` are set. Fill its
    /// container and Kubernetes fields.
    fn attribute_process(&mut self, ep: &mut Endpoint);
    /// An end known only by address (its socket is not on this node, or was not seen).
    /// `peer` is the other end's address, for NAT look-ups.
    fn attribute_address(&mut self, ep: &mut Endpoint, peer: Option<SocketAddr>);
    /// Called about twice a second from the capture thread; must not block.
    fn tick(&mut self, _now_ns: u64) {}
    /// Where a connection from `local` to `remote` really goes when address translation
    /// changed it (a Service IP's backend, through conntrack); None when it did not or
    /// nothing knows. For the engine to link the two sockets of one connection when both
    /// ends are on this node (client to Service IP, backend from the client's pod IP):
    /// they would otherwise be written twice, and the backend's view of the client knows
    /// only its address. Must not block for long (a cached kernel query).
    fn nat_destination(&mut self, _local: SocketAddr, _remote: SocketAddr) -> Option<SocketAddr> {
        None
    }
    /// The Service whose cluster IP and port this is (`svc.ns`), when known.
    fn service_at(&mut self, _addr: SocketAddr) -> Option<String> {
        None
    }
    /// Counters for `stats` records; None when the implementation keeps none.
    fn stats(&self) -> Option<ResolveStats> {
        None
    }
}

pub use crate::model::counters::ResolveStats;

/// Attribution with no Kubernetes knowledge: container ids from `/proc` only.
impl Attribution for procs::ProcResolver {
    fn attribute_process(&mut self, ep: &mut Endpoint) {
        if let Some(pid) = ep.pid {
            ep.container_id = self.container_id(pid, ep.cgroup_id.unwrap_or(0));
        }
        ep.resolved_by = Some("process".to_string());
    }

    fn attribute_address(&mut self, _ep: &mut Endpoint, _peer: Option<SocketAddr>) {}

    fn tick(&mut self, now_ns: u64) {
        self.prune_if_due(now_ns);
    }

    fn stats(&self) -> Option<ResolveStats> {
        Some(ResolveStats {
            cgroup_cache: self.len() as u64,
            ..ResolveStats::default()
        })
    }
}
