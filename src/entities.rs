//! SkyWalking entities and relations (SWIP-2) derived from access-log records: services,
//! instances (pods), endpoints (`METHOD:path`), service and instance relations. Pure: it
//! only folds `model::Record`s, so `top` and `push` show and send the same thing.
//!
//! Rules (SWIP-2, and what the OAP does with Rover's data):
//! - service: `name` = `svc.ns` (or `cluster::svc.ns`), `short_name` = name,
//!   `service_id` = base64(name) + ".1", `group` empty, layer KUBERNETES;
//! - instance: the pod, in its service; `last_ping` = time of its last record (ms);
//! - endpoint: `METHOD:path` of HTTP exchanges seen by the server (as the OAP does);
//! - relations go from client to server; a remote with no service is named by its IP
//!   (service relation) and a remote with no pod by its IP (instance relation);
//! - traffic inside one pod (app to sidecar) makes no relation, only a count; neither
//!   does traffic between two instances of one service (the OAP drops it);
//! - a Service IP whose backend was not found keeps its service relation, and its
//!   instance relation is dropped and counted.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::model::{Clock, Endpoint, ObservedBy, Record};

/// Layer of every service made here.
pub const LAYER: &str = "KUBERNETES";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// `base64(name).1`.
pub fn service_id(name: &str) -> String {
    format!("{}.1", b64(name))
}

/// `service_id + "_" + base64(pod)`.
pub fn instance_id(service: &str, pod: &str) -> String {
    format!("{}_{}", service_id(service), b64(pod))
}

/// `service_id + "_" + base64(endpoint)`.
pub fn endpoint_id(service: &str, endpoint: &str) -> String {
    format!("{}_{}", service_id(service), b64(endpoint))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub short_name: String,
    pub service_id: String,
    pub group: String,
    pub layer: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub service_id: String,
    /// Pod name.
    pub name: String,
    /// Time of the last record naming it, ms since the epoch.
    pub last_ping: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointEntity {
    pub service_id: String,
    /// `METHOD:path`.
    pub name: String,
}

/// One side of a relation: a named entity, or only an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Party {
    Service(String),
    /// (service, pod).
    Instance(String, String),
    Ip(String),
}

/// Which side saw the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectPoint {
    Client,
    Server,
}

/// What flowed along one relation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelationStats {
    pub http_calls: u64,
    /// Failed exchanges (`error`: 5xx, gRPC status not OK, reset, no response).
    pub http_errors: u64,
    pub http_duration_ns: u64,
    pub connections: u64,
    pub bytes: u64,
    pub last_ms: i64,
}

/// Key of a relation: source (client side), destination (server side), detect point.
pub type RelationKey = (Party, Party, DetectPoint);

/// Why records made no relation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EntityCounters {
    pub records: u64,
    /// Both ends in one pod.
    pub intra_pod: u64,
    /// Both ends in one service (different pods).
    pub same_service: u64,
    /// Neither end has a service.
    pub no_service: u64,
    /// Instance relations dropped: the remote was a Service IP with no known backend.
    pub instance_relations_dropped: u64,
}

/// Entities and relations accumulated from records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Entities {
    pub services: BTreeMap<String, Service>,
    /// By (service, pod).
    pub instances: BTreeMap<(String, String), Instance>,
    /// By (service, endpoint name).
    pub endpoints: BTreeMap<(String, String), EndpointEntity>,
    #[serde(skip)]
    pub service_relations: BTreeMap<RelationKey, RelationStats>,
    #[serde(skip)]
    pub instance_relations: BTreeMap<RelationKey, RelationStats>,
    pub counters: EntityCounters,
}

/// ms since the epoch of a monotonic timestamp.
fn epoch_ms(clock: &Clock, mono_ns: u64) -> i64 {
    (clock.wall_ns(mono_ns) / 1_000_000) as i64
}

fn ip_name(ep: &Endpoint) -> String {
    ep.addr.map(|a| a.to_string()).unwrap_or_default()
}

fn same_pod(a: &Endpoint, b: &Endpoint) -> bool {
    match (&a.pod, &b.pod) {
        (Some(pa), Some(pb)) => pa == pb && a.namespace == b.namespace,
        _ => false,
    }
}

impl Entities {
    pub fn new() -> Self {
        Self::default()
    }

    fn service(&mut self, name: &str) {
        if !self.services.contains_key(name) {
            self.services.insert(
                name.to_string(),
                Service {
                    name: name.to_string(),
                    short_name: name.to_string(),
                    service_id: service_id(name),
                    group: String::new(),
                    layer: LAYER,
                },
            );
        }
    }

    fn instance(&mut self, svc: &str, pod: &str, ms: i64) {
        let e = self
            .instances
            .entry((svc.to_string(), pod.to_string()))
            .or_insert_with(|| Instance {
                service_id: service_id(svc),
                name: pod.to_string(),
                last_ping: ms,
            });
        e.last_ping = e.last_ping.max(ms);
    }

    /// Fold one record in.
    pub fn observe(&mut self, rec: &Record, clock: &Clock) {
        let (client, server, observed_by) = match rec {
            Record::Http(h) => (&h.client, &h.server, h.observed_by),
            Record::Connection(c) => (&c.client, &c.server, c.observed_by),
            Record::Stats(_) => return,
        };
        self.counters.records += 1;
        let mono = match rec {
            Record::Http(h) if h.end_mono_ns == 0 => h.start_mono_ns,
            _ => rec.mono_ns(),
        };
        let ms = epoch_ms(clock, mono);
        for ep in [client, server] {
            if let Some(svc) = &ep.service {
                self.service(svc);
                if let Some(pod) = &ep.pod {
                    self.instance(svc, pod, ms);
                }
            }
        }
        if let (Record::Http(h), Some(svc)) = (rec, &server.service) {
            if let (ObservedBy::Server | ObservedBy::Both, Some(m), Some(p)) =
                (observed_by, &h.method, &h.path)
            {
                let name = format!("{m}:{p}");
                self.endpoints
                    .entry((svc.clone(), name.clone()))
                    .or_insert_with(|| EndpointEntity {
                        service_id: service_id(svc),
                        name,
                    });
            }
        }
        if same_pod(client, server) {
            self.counters.intra_pod += 1;
            return;
        }
        if client.service.is_none() && server.service.is_none() {
            self.counters.no_service += 1;
            return;
        }
        if client.service.is_some() && client.service == server.service {
            self.counters.same_service += 1;
            return;
        }
        let detect = if observed_by == ObservedBy::Client {
            DetectPoint::Client
        } else {
            DetectPoint::Server
        };
        let svc_party = |ep: &Endpoint| match &ep.service {
            Some(s) => Party::Service(s.clone()),
            None => Party::Ip(ip_name(ep)),
        };
        let inst_party = |ep: &Endpoint| match (&ep.service, &ep.pod) {
            (Some(s), Some(p)) => Party::Instance(s.clone(), p.clone()),
            _ => Party::Ip(ip_name(ep)),
        };
        let add = |stats: &mut RelationStats| {
            match rec {
                Record::Http(h) => {
                    stats.http_calls += 1;
                    stats.http_errors += u64::from(h.error);
                    stats.http_duration_ns += h.duration_ns;
                }
                Record::Connection(c) => {
                    stats.connections += 1;
                    stats.bytes += c.bytes_client_to_server + c.bytes_server_to_client;
                }
                Record::Stats(_) => {}
            }
            stats.last_ms = stats.last_ms.max(ms);
        };
        add(self
            .service_relations
            .entry((svc_party(client), svc_party(server), detect))
            .or_default());
        // A Service IP with no backend: which instance served is unknown.
        let unresolved_backend = |ep: &Endpoint| ep.resolved_by.as_deref() == Some("service_ip");
        if unresolved_backend(client) || unresolved_backend(server) {
            self.counters.instance_relations_dropped += 1;
            return;
        }
        add(self
            .instance_relations
            .entry((inst_party(client), inst_party(server), detect))
            .or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, port: u16, pod: Option<&str>, ns: &str, svc: Option<&str>) -> Endpoint {
        Endpoint {
            addr: Some(addr.parse().unwrap()),
            port,
            pod: pod.map(str::to_string),
            namespace: pod.map(|_| ns.to_string()),
            service: svc.map(str::to_string),
            ..Endpoint::default()
        }
    }

    // Built from JSON so that fields added to the schema later do not break these tests.
    fn http(
        client: Endpoint,
        server: Endpoint,
        by: ObservedBy,
        status: u16,
        end_ms: u64,
    ) -> Record {
        serde_json::from_value(serde_json::json!({
            "kind": "http", "v": 1, "time": "", "conn_id": 1, "observed_by": by,
            "client": client, "server": server, "protocol": "HTTP/1.1", "tls": false,
            "method": "GET", "path": "/api/items", "status": status,
            "request": {"header_bytes": 0, "body_bytes": 0}, "response": {"header_bytes": 0, "body_bytes": 0},
            "start_mono_ns": (end_ms * 1_000_000).saturating_sub(5_000_000), "end_mono_ns": end_ms * 1_000_000,
            "start_time": "", "duration_ns": 5_000_000, "error": status >= 500,
            "complete": true, "partial": false,
        }))
        .expect("an http record")
    }

    fn conn(client: Endpoint, server: Endpoint) -> Record {
        serde_json::from_value(serde_json::json!({
            "kind": "connection", "v": 1, "time": "", "mono_ns": 9_000_000_000u64, "conn_id": 1,
            "observed_by": "both", "role_source": "handshake", "client": client, "server": server,
            "protocol": "http1", "tls": false, "preexisting": false, "handshake": {"success": true},
            "bytes_client_to_server": 100, "bytes_server_to_client": 200,
            "calls_client_to_server": 1, "calls_server_to_client": 1,
            "tcp": {"srtt_us": 0, "retransmits": 0, "segs_in": 0, "segs_out": 0},
            "closed_by": "client", "reset_sent": false, "reset_received": false,
            "close_reason": "fin", "open_mono_ns": 0, "duration_ns": 0, "exchanges": 1, "data_lost": false,
        }))
        .expect("a connection record")
    }

    #[test]
    fn ids_are_base64_like_the_oap() {
        assert_eq!(service_id("cart.shop"), "Y2FydC5zaG9w.1");
        assert_eq!(
            instance_id("cart.shop", "cart-0"),
            "Y2FydC5zaG9w.1_Y2FydC0w"
        );
        assert_eq!(endpoint_id("cart.shop", "GET:/"), "Y2FydC5zaG9w.1_R0VUOi8=");
    }

    #[test]
    fn pod_to_pod_makes_entities_and_relations() {
        let clock = Clock::with_offset(1_700_000_000_000_000_000);
        let mut e = Entities::new();
        let web = ep(
            "198.18.7.11",
            40000,
            Some("web-7d4b9c8f6d-x2x9k"),
            "shop",
            Some("web.shop"),
        );
        let cart = ep(
            "198.18.7.12",
            8080,
            Some("cart-0"),
            "shop",
            Some("cart.shop"),
        );
        e.observe(
            &http(web.clone(), cart.clone(), ObservedBy::Both, 200, 1000),
            &clock,
        );
        e.observe(
            &http(web.clone(), cart.clone(), ObservedBy::Both, 503, 2000),
            &clock,
        );
        e.observe(&conn(web.clone(), cart.clone()), &clock);
        assert_eq!(e.services.len(), 2);
        let s = &e.services["cart.shop"];
        assert_eq!(
            (s.short_name.as_str(), s.group.as_str(), s.layer),
            ("cart.shop", "", "KUBERNETES")
        );
        assert_eq!(s.service_id, "Y2FydC5zaG9w.1");
        let i = &e.instances[&("cart.shop".to_string(), "cart-0".to_string())];
        assert_eq!(
            i.last_ping, 1_700_000_009_000,
            "the connection record at 9 s is the last"
        );
        assert_eq!(e.endpoints.len(), 1);
        assert_eq!(e.endpoints.values().next().unwrap().name, "GET:/api/items");
        let key = (
            Party::Service("web.shop".into()),
            Party::Service("cart.shop".into()),
            DetectPoint::Server,
        );
        let r = &e.service_relations[&key];
        assert_eq!(
            (r.http_calls, r.http_errors, r.connections, r.bytes),
            (2, 1, 1, 300)
        );
        let ikey = (
            Party::Instance("web.shop".into(), "web-7d4b9c8f6d-x2x9k".into()),
            Party::Instance("cart.shop".into(), "cart-0".into()),
            DetectPoint::Server,
        );
        assert_eq!(e.instance_relations[&ikey].http_calls, 2);
    }

    #[test]
    fn remote_ip_intra_pod_and_dropped_instance_relations() {
        let clock = Clock::with_offset(0);
        let mut e = Entities::new();
        let web = ep(
            "198.18.7.11",
            40000,
            Some("web-0"),
            "shop",
            Some("web.shop"),
        );
        // External server: named by IP; no endpoint because only the client saw it.
        let ext = ep("198.18.200.1", 443, None, "", None);
        e.observe(&http(web.clone(), ext, ObservedBy::Client, 200, 1), &clock);
        assert!(e.endpoints.is_empty());
        let key = (
            Party::Service("web.shop".into()),
            Party::Ip("198.18.200.1".into()),
            DetectPoint::Client,
        );
        assert_eq!(e.service_relations[&key].http_calls, 1);
        // App to sidecar in one pod: no relation, counted.
        let sidecar = ep("127.0.0.1", 15001, Some("web-0"), "shop", Some("web.shop"));
        let app = ep("127.0.0.1", 50000, Some("web-0"), "shop", Some("web.shop"));
        e.observe(&conn(app, sidecar), &clock);
        assert_eq!(e.counters.intra_pod, 1);
        // A Service IP whose backend is unknown: service relation kept, instance dropped.
        let mut svc = ep("198.19.7.10", 80, None, "", Some("cart.shop"));
        svc.resolved_by = Some("service_ip".into());
        e.observe(&http(web, svc, ObservedBy::Client, 200, 2), &clock);
        let key = (
            Party::Service("web.shop".into()),
            Party::Service("cart.shop".into()),
            DetectPoint::Client,
        );
        assert_eq!(e.service_relations[&key].http_calls, 1);
        assert_eq!(e.counters.instance_relations_dropped, 1);
        assert_eq!(e.instance_relations.len(), 1, "only the external one");
        // Two instances of one service: no relation either.
        let a = ep(
            "198.18.7.21",
            40000,
            Some("cart-0"),
            "shop",
            Some("cart.shop"),
        );
        let b = ep(
            "198.18.7.22",
            8080,
            Some("cart-1"),
            "shop",
            Some("cart.shop"),
        );
        e.observe(&conn(a, b), &clock);
        assert_eq!(e.counters.same_service, 1);
    }
}
