//! Attribution of connection ends to processes, containers, pods and services.
//!
//! The engine asks an `Attribution` to fill in the ends of every record; what it can
//! fill depends on what the node offers (see the implementations).

pub mod cgroup;
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
}

/// Attribution with no Kubernetes knowledge: container ids from `/proc` only.
impl Attribution for procs::ProcResolver {
    fn attribute_process(&mut self, ep: &mut Endpoint) {
        if let (Some(pid), Some(cg)) = (ep.pid, ep.cgroup_id) {
            ep.container_id = self.container_id(pid, cg);
        }
        ep.resolved_by = Some("process".to_string());
    }

    fn attribute_address(&mut self, _ep: &mut Endpoint, _peer: Option<SocketAddr>) {}
}
