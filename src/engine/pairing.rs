//! Pairing the two views of one connection whose both sockets are on this node: the
//! tuple and NAT indexes that find the other view, linking the two, and deciding which
//! view writes a record. Engine state only; the NAT lookup goes through the injected
//! attribution.

use std::net::SocketAddr;

use super::{Conn, Engine, Owner};
use crate::model::{ObservedBy, RoleSource};
use crate::protocol::Role;

/// A client's socket whose server end may be a socket on this node that has not been
/// used yet (an accepted socket is announced at its first use) is not made to write its
/// exchanges early for this long after it opened: they would be written by both ends.
pub(super) const LINK_WAIT_NS: u64 = 1_000_000_000;

/// What a socket's linked local peer looked like, kept after the peer closed.
#[derive(Debug, Clone, Default)]
pub(super) struct PeerView {
    pub(super) owner: Option<Owner>,
    pub(super) role: Option<Role>,
    pub(super) http: bool,
    /// Responses its parser sent or received with no request to pair them with (its
    /// view missed the request: a read in flight when capture attached, on the hook rungs
    /// that see a call only from its entry), not yet taken over by the linked client.
    pub(super) unanswered: u64,
    /// Its socket's byte counts so far (a call in flight when capture attached is missing
    /// from one end's counts on some hook rungs, never from both).
    pub(super) bytes_sent: u64,
    pub(super) bytes_recv: u64,
    pub(super) connect_start_ns: u64,
    pub(super) established_ns: u64,
}

impl Conn {
    fn view(&self) -> PeerView {
        PeerView {
            owner: self.owner.clone(),
            role: Some(self.role),
            http: self.http.is_some(),
            unanswered: self
                .http
                .as_ref()
                .and_then(|h| h.http1_stats())
                .map_or(0, |s| s.unmatched_responses.saturating_sub(self.taken_over)),
            bytes_sent: self.bytes_sent,
            bytes_recv: self.bytes_recv,
            connect_start_ns: self.connect_start_ns,
            established_ns: self.established_ns,
        }
    }
}

impl Engine {
    /// Index a socket by its tuple, and link it to the socket with the mirrored tuple
    /// (the other end of the connection, when that is on this node too).
    pub(super) fn link(&mut self, cookie: u64, local: SocketAddr, remote: SocketAddr) {
        self.by_tuple.insert((local, remote), cookie);
        if let Some(&peer) = self.by_tuple.get(&(remote, local)) {
            if peer != cookie && self.conns.contains_key(&peer) {
                if let Some(c) = self.conns.get_mut(&cookie) {
                    c.peer = Some(peer);
                }
                if let Some(p) = self.conns.get_mut(&peer) {
                    p.peer = Some(cookie);
                }
            }
        }
    }

    /// Link the two local sockets of a connection whose destination was translated on
    /// the way (a client dialled a Service IP; the backend accepted from the client's
    /// address): the client's local address is the server's remote, and the kernel's
    /// NAT table says the client's destination became the server's local address.
    pub(super) fn link_translated(
        &mut self,
        cookie: u64,
        local: SocketAddr,
        remote: SocketAddr,
        role: Role,
    ) {
        let (client, server) = match role {
            Role::Client => {
                self.clients_by_local.insert(local, cookie);
                match self.servers_by_remote.get(&local) {
                    Some(&s) => (cookie, s),
                    None => return,
                }
            }
            Role::Server => {
                self.servers_by_remote.insert(remote, cookie);
                match self.clients_by_local.get(&remote) {
                    Some(&c) => (c, cookie),
                    None => return,
                }
            }
            Role::Unknown => return,
        };
        if client == server {
            return;
        }
        let (Some(c), Some(s)) = (self.conns.get(&client), self.conns.get(&server)) else {
            return;
        };
        if c.peer.is_some() || s.peer.is_some() {
            return;
        }
        let (Some(cl), Some(cr), Some(sl)) = (c.local, c.remote, s.local) else {
            return;
        };
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        if canon(cr) == canon(sl) {
            return; // not translated: the mirrored tuple links these
        }
        let Some(dest) = self.attrib.as_mut().and_then(|a| a.nat_destination(cl, cr)) else {
            return;
        };
        if canon(dest) != canon(sl) {
            return;
        }
        if let Some(c) = self.conns.get_mut(&client) {
            c.peer = Some(server);
        }
        if let Some(s) = self.conns.get_mut(&server) {
            s.peer = Some(client);
            s.nat_via = Some(cr);
        }
        self.user.nat_linked += 1;
    }

    /// Take a finished connection out of the indexes (where no newer socket took its
    /// place).
    pub(super) fn unindex(&mut self, c: &Conn) {
        if let (Some(l), Some(r)) = (c.local, c.remote) {
            if self.by_tuple.get(&(l, r)) == Some(&c.cookie) {
                self.by_tuple.remove(&(l, r));
            }
            if self.clients_by_local.get(&l) == Some(&c.cookie) {
                self.clients_by_local.remove(&l);
            }
            if self.servers_by_remote.get(&r) == Some(&c.cookie) {
                self.servers_by_remote.remove(&r);
            }
        }
    }

    pub(super) fn peer_view(&self, c: &Conn) -> Option<PeerView> {
        let peer = c.peer?;
        self.conns
            .get(&peer)
            .map(Conn::view)
            .or_else(|| self.closed_peers.get(&peer).cloned())
    }

    /// A finished connection's view is kept for its linked peer while that is open; the
    /// peer's kept view is dropped once both are finished.
    pub(super) fn keep_view_for_peer(&mut self, c: &Conn) {
        if let Some(p) = c.peer {
            if self.conns.contains_key(&p) {
                self.closed_peers.insert(c.cookie, c.view());
            } else {
                self.closed_peers.remove(&p);
            }
        }
    }

    pub(super) fn effective_role(&self, c: &Conn) -> (Role, RoleSource) {
        if c.role != Role::Unknown {
            return (c.role, c.role_source);
        }
        // Nothing told: the end with an ephemeral port is the client.
        let (lo, hi) = self.opts.ephemeral_ports;
        let eph = |p: u16| p >= lo && p <= hi;
        match (c.local, c.remote) {
            (Some(l), Some(r)) if eph(l.port()) && !eph(r.port()) => {
                (Role::Client, RoleSource::Port)
            }
            (Some(l), Some(r)) if !eph(l.port()) && eph(r.port()) => {
                (Role::Server, RoleSource::Port)
            }
            (Some(l), Some(r)) if l.port() > r.port() => (Role::Client, RoleSource::Port),
            _ => (Role::Server, RoleSource::Port),
        }
    }

    /// Which side writes the record of this socket, or None when the peer's view is
    /// written instead.
    pub(super) fn observed_by(
        &self,
        c: &Conn,
        role: Role,
        peer: Option<&PeerView>,
    ) -> Option<ObservedBy> {
        match (role, peer) {
            (Role::Server, Some(_)) => Some(ObservedBy::Both),
            (Role::Server, _) => Some(ObservedBy::Server),
            (_, Some(p)) => {
                let peer_is_server = match p.role {
                    Some(Role::Server) => true,
                    Some(Role::Unknown) | None => {
                        // Both ends unsure: the ephemeral-port end is the client.
                        self.effective_role(c).0 == Role::Client
                    }
                    Some(Role::Client) => false,
                };
                if peer_is_server {
                    None
                } else {
                    Some(ObservedBy::Client)
                }
            }
            _ => Some(ObservedBy::Client),
        }
    }

    /// Which side writes an exchange of this socket, or None when the linked peer's view
    /// writes it instead.
    pub(super) fn exchange_observed_by(
        &mut self,
        c: &Conn,
        role: Role,
        peer: Option<&PeerView>,
    ) -> Option<ObservedBy> {
        // A linked peer that parses the same traffic writes the exchange if it is the
        // server. The server's view says `both` whenever the client's socket is linked,
        // whether or not the client's bytes were parsed by then (TLS plaintext of the
        // client's write can arrive after the server answered: the client's side then
        // drops its duplicate as usual).
        let peer_http = if role == Role::Server {
            peer
        } else {
            peer.filter(|p| p.http)
        };
        match self.observed_by(c, role, peer_http) {
            Some(o) => Some(o),
            // The server's view could not pair this exchange's response with a request
            // (it missed the request): the client's view writes it, once.
            None if peer_http.is_some_and(|p| p.unanswered > 0) => {
                if let Some(p) = c.peer.and_then(|p| self.conns.get_mut(&p)) {
                    p.taken_over += 1;
                }
                Some(ObservedBy::Both)
            }
            None => None,
        }
    }

    /// A client's view that may still be linked to a server's view on this node: its
    /// exchanges must not be written yet (the server's view writes them once linked).
    pub(super) fn may_be_linked_yet(&self, c: &Conn, now: u64) -> bool {
        c.peer.is_none() && c.role != Role::Server && now.saturating_sub(c.open_ns) < LINK_WAIT_NS
    }
}

#[cfg(test)]
mod tests {
    use crate::capture::ConnKind;
    use crate::engine::test_util::{conn, data, sa, Nat};
    use crate::engine::{Engine, EngineOptions};
    use crate::model::{Clock, ConnectionRecord, HttpRecord, ObservedBy, Record};
    use crate::protocol::{Direction, Role};

    /// Client 198.18.7.11 dials the Service 198.19.7.10:80; the backend 198.18.7.12:8080
    /// accepts from the client's own address. Both sockets are on this node: one record
    /// per exchange and per connection, with both processes and the Service address.
    #[test]
    fn translated_connection_between_local_sockets_is_written_once() {
        let (client, service, backend) =
            ("198.18.7.11:40000", "198.19.7.10:80", "198.18.7.12:8080");
        let lookups = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let nat = Nat {
            client: sa(client),
            service: sa(service),
            backend: sa(backend),
            lookups: lookups.clone(),
        };
        let mut e = Engine::new(
            EngineOptions::default(),
            Clock::now(),
            Some(Box::new(nat)),
            0,
        );
        let req = b"GET /x HTTP/1.1\r\nHost: cart\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        e.on_conn(&conn(
            ConnKind::Connected,
            1,
            1_000,
            client,
            service,
            Role::Client,
        ));
        e.on_data(&data(1, 0, 2_000, Direction::Egress, req));
        // The accepted socket is announced at its first data.
        e.on_conn(&conn(
            ConnKind::Accepted,
            2,
            2_500,
            backend,
            client,
            Role::Server,
        ));
        e.on_data(&data(2, 0, 3_000, Direction::Ingress, req));
        e.on_data(&data(2, 1, 4_000, Direction::Egress, resp));
        e.on_data(&data(1, 1, 5_000, Direction::Ingress, resp));
        e.on_conn(&conn(
            ConnKind::Closed,
            1,
            6_000,
            client,
            service,
            Role::Client,
        ));
        e.on_conn(&conn(
            ConnKind::Closed,
            2,
            6_100,
            backend,
            client,
            Role::Server,
        ));
        e.finish_all(1_000_000_000);
        let http: Vec<&HttpRecord> = e
            .out
            .iter()
            .filter_map(|r| match r {
                Record::Http(h) => Some(h),
                _ => None,
            })
            .collect();
        let conns: Vec<&ConnectionRecord> = e
            .out
            .iter()
            .filter_map(|r| match r {
                Record::Connection(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(http.len(), 1, "{:#?}", e.out);
        assert_eq!(conns.len(), 1, "{:#?}", e.out);
        assert_eq!(e.user_counters().nat_linked, 1);
        for (ob, cl, sv) in [
            (http[0].observed_by, &http[0].client, &http[0].server),
            (conns[0].observed_by, &conns[0].client, &conns[0].server),
        ] {
            assert_eq!(ob, ObservedBy::Both);
            assert_eq!(cl.pid, Some(100));
            assert_eq!(sv.pid, Some(200));
            assert_eq!(sv.port, 8080);
            let via = sv.via.as_ref().expect("the Service address is kept");
            assert_eq!(via.addr, Some(sa(service).ip()));
            assert_eq!(via.port, 80);
            assert_eq!(via.service.as_deref(), Some("cart.shop"));
        }
        assert_eq!(lookups.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// A server whose remote happens to be a local client's address, but the kernel's
    /// NAT table does not send that client to it: not linked.
    #[test]
    fn untranslated_coincidence_is_not_linked() {
        let nat = Nat {
            client: sa("198.18.7.11:40000"),
            service: sa("198.19.7.10:80"),
            backend: sa("198.18.7.13:8080"),
            lookups: Default::default(),
        };
        let mut e = Engine::new(
            EngineOptions::default(),
            Clock::now(),
            Some(Box::new(nat)),
            0,
        );
        e.on_conn(&conn(
            ConnKind::Connected,
            1,
            1,
            "198.18.7.11:40000",
            "198.19.7.10:80",
            Role::Client,
        ));
        e.on_conn(&conn(
            ConnKind::Accepted,
            2,
            2,
            "198.18.7.12:8080",
            "198.18.7.11:40000",
            Role::Server,
        ));
        e.finish_all(1_000_000_000);
        assert_eq!(e.user_counters().nat_linked, 0);
        let n = e
            .out
            .iter()
            .filter(|r| matches!(r, Record::Connection(_)))
            .count();
        assert_eq!(n, 2);
    }
}
