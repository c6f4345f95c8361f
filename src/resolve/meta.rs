//! Pod, container and Service metadata gathered from the node and the API, merged into
//! one immutable `Snapshot`, and the pure naming rules: which service a pod belongs to,
//! and the workload a pod name was generated from.
//!
//! Sources fill a `SnapshotBuilder` from the least to the most informative (kubelet
//! layout, containerd bundles, CRI, API); a later source's non-empty fields win.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::cgroup::CgroupInfo;

/// One pod as the sources describe it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// Controller that owns the pod (API `ownerReferences`): kind and name.
    pub owner: Option<(String, String)>,
    /// Running on this node (seen in a node-local source, not only in the API).
    pub local: bool,
}

/// One container (or pod sandbox) of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    pub pod_uid: String,
    /// Container name in the pod spec; None for the sandbox (pause) and when unknown.
    pub name: Option<String>,
    pub sandbox: bool,
}

/// One Service from the API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceMeta {
    pub name: String,
    pub namespace: String,
    pub cluster_ips: Vec<IpAddr>,
    pub selector: BTreeMap<String, String>,
}

/// A pod with its derived names, as the resolver hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// `svc.ns` (with `cluster::` when configured).
    pub service: String,
    /// How the service name was found: "service", "label", "owner", "pod_name".
    pub service_from: &'static str,
    pub ips: Vec<IpAddr>,
    pub local: bool,
    /// Names of its app containers (sandbox excluded), sorted.
    pub containers: Vec<String>,
    /// Listening TCP port -> container, for pods with several containers.
    pub listen_ports: HashMap<u16, String>,
    /// (container name, cgroup directory) of its app containers on this node, for pods
    /// with several containers: to find which one holds a given socket.
    pub container_dirs: Vec<(String, std::path::PathBuf)>,
}

impl PodView {
    /// The container behind `port` of this pod when an address alone tells: the one
    /// listening there, or the only container.
    pub fn container_for_port(&self, port: u16) -> Option<&str> {
        if let Some(c) = self.listen_ports.get(&port) {
            return Some(c);
        }
        match self.containers.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

/// A Service cluster IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub name: String,
    pub namespace: String,
    /// `svc.ns` (with `cluster::` when configured).
    pub full: String,
}

/// How names are written.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    /// Prefix service names with `cluster::`.
    pub cluster: Option<String>,
    /// This node's name, to recognise static pods (`<name>-<node>`).
    pub node_name: Option<String>,
}

impl Naming {
    pub fn service(&self, svc: &str, ns: &str) -> String {
        match &self.cluster {
            Some(c) if !c.is_empty() => format!("{c}::{svc}.{ns}"),
            _ => format!("{svc}.{ns}"),
        }
    }
}

/// Everything the resolver knows at one moment; built off the capture thread, then
/// shared read-only.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pods: HashMap<String, Arc<PodView>>,
    pub containers: HashMap<String, ContainerMeta>,
    pub pod_by_ip: HashMap<IpAddr, Arc<PodView>>,
    pub service_by_ip: HashMap<IpAddr, Arc<ServiceView>>,
    /// cgroup v2 id (directory inode) -> what its path says, for every container and
    /// pod cgroup on the node: answers for processes that have already exited.
    pub cgroups: HashMap<u64, CgroupInfo>,
}

impl Snapshot {
    pub fn pod(&self, uid: &str) -> Option<&Arc<PodView>> {
        self.pods.get(uid)
    }
}

/// Collects what the sources say; `build` derives the names.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    pods: HashMap<String, PodMeta>,
    containers: HashMap<String, ContainerMeta>,
    services: Vec<ServiceMeta>,
    /// Endpoint address -> (namespace, service name), from Endpoints / EndpointSlices.
    endpoints: HashMap<IpAddr, Vec<(String, String)>>,
    listen_ports: HashMap<String, HashMap<u16, String>>,
    container_dirs: HashMap<String, Vec<(String, std::path::PathBuf)>>,
    pub cgroups: HashMap<u64, CgroupInfo>,
}

impl SnapshotBuilder {
    /// Merge a pod (by UID): non-empty fields override, labels and IPs are merged.
    pub fn add_pod(&mut self, p: PodMeta) {
        if p.uid.is_empty() {
            return;
        }
        let e = self.pods.entry(p.uid.clone()).or_insert_with(|| PodMeta {
            uid: p.uid.clone(),
            ..PodMeta::default()
        });
        if !p.name.is_empty() {
            e.name = p.name;
        }
        if !p.namespace.is_empty() {
            e.namespace = p.namespace;
        }
        e.labels.extend(p.labels);
        for ip in p.ips {
            if !e.ips.contains(&ip) {
                e.ips.push(ip);
            }
        }
        e.host_network |= p.host_network;
        if p.owner.is_some() {
            e.owner = p.owner;
        }
        e.local |= p.local;
    }

    /// Add the IPs of a pod already known (from its network namespace).
    pub fn add_pod_ips(&mut self, uid: &str, ips: &[IpAddr]) {
        if let Some(p) = self.pods.get_mut(uid) {
            for ip in ips {
                if !p.ips.contains(ip) {
                    p.ips.push(*ip);
                }
            }
        }
    }

    pub fn has_pod(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    pub fn pod_has_ips(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| !p.ips.is_empty())
    }

    pub fn mark_host_network(&mut self, uid: &str) {
        if let Some(p) = self.pods.get_mut(uid) {
            p.host_network = true;
        }
    }

    /// Merge a container: a known name is never replaced by an unknown one.
    pub fn add_container(&mut self, id: &str, c: ContainerMeta) {
        if id.is_empty() || c.pod_uid.is_empty() {
            return;
        }
        match self.containers.get_mut(id) {
            Some(e) => {
                if c.name.is_some() {
                    e.name = c.name;
                }
                e.sandbox |= c.sandbox;
                e.pod_uid = c.pod_uid;
            }
            None => {
                self.containers.insert(id.to_string(), c);
            }
        }
    }

    pub fn container(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers.get(id)
    }

    /// How many named app containers (sandbox excluded) a pod has.
    pub fn app_containers_of(&self, uid: &str) -> usize {
        self.containers
            .values()
            .filter(|c| c.pod_uid == uid && !c.sandbox && c.name.is_some())
            .count()
    }

    pub fn add_service(&mut self, s: ServiceMeta) {
        self.services.push(s);
    }

    pub fn add_endpoint(&mut self, ip: IpAddr, namespace: &str, service: &str) {
        let v = self.endpoints.entry(ip).or_default();
        let k = (namespace.to_string(), service.to_string());
        if !v.contains(&k) {
            v.push(k);
        }
    }

    pub fn set_listen_ports(&mut self, uid: &str, ports: HashMap<u16, String>) {
        self.listen_ports.insert(uid.to_string(), ports);
    }

    pub fn set_container_dirs(&mut self, uid: &str, dirs: Vec<(String, std::path::PathBuf)>) {
        self.container_dirs.insert(uid.to_string(), dirs);
    }

    /// Local pods (UID) and, for each, one container id that has processes, as far as
    /// the builder knows: used to find pod IPs and listening ports.
    pub fn pods(&self) -> impl Iterator<Item = &PodMeta> {
        self.pods.values()
    }

    pub fn containers(&self) -> impl Iterator<Item = (&String, &ContainerMeta)> {
        self.containers.iter()
    }

    pub fn build(self, naming: &Naming) -> Snapshot {
        let mut snap = Snapshot {
            containers: self.containers,
            cgroups: self.cgroups,
            ..Snapshot::default()
        };
        let mut names_by_pod: HashMap<&str, Vec<String>> = HashMap::new();
        for c in snap.containers.values() {
            if let (false, Some(n)) = (c.sandbox, &c.name) {
                let v = names_by_pod.entry(c.pod_uid.as_str()).or_default();
                if !v.contains(n) {
                    v.push(n.clone());
                }
            }
        }
        // Local pods first, so that their IPs win over a stale API entry.
        let mut pods: Vec<&PodMeta> = self.pods.values().collect();
        pods.sort_by(|a, b| b.local.cmp(&a.local).then(a.uid.cmp(&b.uid)));
        for p in pods {
            if p.name.is_empty() || p.namespace.is_empty() {
                continue;
            }
            let (svc, from) = service_of(p, &self.services, &self.endpoints, naming);
            let mut containers = names_by_pod.remove(p.uid.as_str()).unwrap_or_default();
            containers.sort();
            let view = Arc::new(PodView {
                uid: p.uid.clone(),
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                service: naming.service(&svc, &p.namespace),
                service_from: from,
                ips: p.ips.clone(),
                local: p.local,
                containers,
                listen_ports: self.listen_ports.get(&p.uid).cloned().unwrap_or_default(),
                container_dirs: self.container_dirs.get(&p.uid).cloned().unwrap_or_default(),
            });
            if !p.host_network {
                for ip in &p.ips {
                    snap.pod_by_ip
                        .entry(*ip)
                        .or_insert_with(|| Arc::clone(&view));
                }
            }
            snap.pods.insert(p.uid.clone(), view);
        }
        for s in &self.services {
            let view = Arc::new(ServiceView {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                full: naming.service(&s.name, &s.namespace),
            });
            for ip in &s.cluster_ips {
                snap.service_by_ip
                    .entry(*ip)
                    .or_insert_with(|| Arc::clone(&view));
            }
        }
        snap
    }
}

/// The service name of a pod (without namespace) and where it came from.
fn service_of(
    p: &PodMeta,
    services: &[ServiceMeta],
    endpoints: &HashMap<IpAddr, Vec<(String, String)>>,
    naming: &Naming,
) -> (String, &'static str) {
    // A Service that selects it, or lists it among its endpoints.
    let mut found: Vec<&str> = services
        .iter()
        .filter(|s| s.namespace == p.namespace && selects(&s.selector, &p.labels))
        .map(|s| s.name.as_str())
        .collect();
    if !p.host_network {
        for ip in &p.ips {
            for (ns, svc) in endpoints.get(ip).map(Vec::as_slice).unwrap_or_default() {
                if *ns == p.namespace {
                    found.push(svc);
                }
            }
        }
    }
    // Several Services may select one pod; the choice must not change between runs.
    if let Some(s) = found.into_iter().min() {
        return (s.to_string(), "service");
    }
    for key in ["app.kubernetes.io/name", "app"] {
        if let Some(v) = p.labels.get(key).filter(|v| !v.is_empty()) {
            return (v.clone(), "label");
        }
    }
    if let Some((kind, name)) = &p.owner {
        let w = match kind.as_str() {
            // A ReplicaSet made by a Deployment is `<deployment>-<pod-template-hash>`.
            "ReplicaSet" => strip_template_hash(name, p.labels.get("pod-template-hash")),
            // A Job made by a CronJob is `<cronjob>-<scheduled minute>`.
            "Job" => strip_numeric(name).to_string(),
            // A static pod's mirror is owned by the Node: the name carries the node.
            "Node" => strip_node(&p.name, Some(name)).to_string(),
            _ => name.clone(),
        };
        return (w, "owner");
    }
    (
        workload_from_pod_name(&p.name, &p.labels, naming.node_name.as_deref()),
        "pod_name",
    )
}

/// A Service selector picks a pod when it is not empty and all its pairs are labels.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Characters of the random suffix the API server appends to `generateName`
/// (Kubernetes' "safe" alphabet: no vowels, no look-alike digits).
const GENERATE_ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";

fn is_generated_suffix(s: &str) -> bool {
    s.len() == 5 && s.chars().all(|c| GENERATE_ALPHABET.contains(c))
}

/// A pod-template-hash: the decimal hash text mapped through the same safe alphabet,
/// which sends the digits 0-9 to `4 5 6 7 8 9 b c d f`; very old clusters used the
/// decimal text itself.
fn is_template_hash(s: &str) -> bool {
    (6..=10).contains(&s.len()) && s.chars().all(|c| "0123456789bcdf".contains(c))
}

fn strip_template_hash(rs: &str, label: Option<&String>) -> String {
    if let Some(h) = label {
        if let Some(base) = rs
            .strip_suffix(h.as_str())
            .and_then(|b| b.strip_suffix('-'))
        {
            return base.to_string();
        }
    }
    match rs.rsplit_once('-') {
        Some((base, h)) if is_template_hash(h) && !base.is_empty() => base.to_string(),
        _ => rs.to_string(),
    }
}

fn strip_numeric(s: &str) -> &str {
    match s.rsplit_once('-') {
        Some((base, n))
            if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => s,
    }
}

fn strip_node<'a>(pod: &'a str, node: Option<&str>) -> &'a str {
    match node {
        Some(n) if !n.is_empty() => pod
            .strip_suffix(n)
            .and_then(|b| b.strip_suffix('-'))
            .filter(|b| !b.is_empty())
            .unwrap_or(pod),
        _ => pod,
    }
}

/// The workload (Deployment, StatefulSet, DaemonSet, Job, ReplicaSet, static pod) a pod
/// name was generated from, when nothing better is known:
/// - Deployment `name-<pod-template-hash>-<5>` (the hash label, when present, says exactly);
/// - DaemonSet, Job, ReplicaSet `name-<5>`; CronJob `name-<minute>-<5>`;
/// - StatefulSet `name-<ordinal>`;
/// - static pod `name-<node>`;
/// - anything else: the pod name itself.
pub fn workload_from_pod_name(
    pod: &str,
    labels: &BTreeMap<String, String>,
    node: Option<&str>,
) -> String {
    if let Some(h) = labels.get("pod-template-hash").filter(|h| !h.is_empty()) {
        if let Some((rs, sfx)) = pod.rsplit_once('-') {
            if is_generated_suffix(sfx) {
                if let Some(base) = rs
                    .strip_suffix(h.as_str())
                    .and_then(|b| b.strip_suffix('-'))
                {
                    if !base.is_empty() {
                        return base.to_string();
                    }
                }
            }
        }
    }
    if labels.contains_key("statefulset.kubernetes.io/pod-name") {
        return strip_numeric(pod).to_string();
    }
    let unnoded = strip_node(pod, node);
    if unnoded != pod {
        return unnoded.to_string();
    }
    if let Some((rest, sfx)) = pod.rsplit_once('-') {
        if is_generated_suffix(sfx) && !rest.is_empty() {
            if let Some((base, h)) = rest.rsplit_once('-') {
                if !base.is_empty() && is_template_hash(h) {
                    return base.to_string();
                }
            }
            return rest.to_string();
        }
    }
    strip_numeric(pod).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn workloads_from_pod_names() {
        let none = BTreeMap::new();
        for (pod, want) in [
            ("frontend-7d4b9c8f6d-x2x9k", "frontend"),
            ("my-app-frontend-5f8b9c7d44-q2w7z", "my-app-frontend"),
            ("coredns-5dd5756b68-7xk2p", "coredns"),
            ("cart-0", "cart"),
            ("redis-master-12", "redis-master"),
            ("fluent-bit-x7k2p", "fluent-bit"),
            ("backup-28112345-x2x9k", "backup"),
            ("nginx", "nginx"),
            ("my-app-v2", "my-app-v2"),
            ("api-gateway", "api-gateway"),
        ] {
            assert_eq!(workload_from_pod_name(pod, &none, None), want, "{pod}");
        }
        // Static pods carry the node's name.
        assert_eq!(
            workload_from_pod_name("kube-apiserver-node-1", &none, Some("node-1")),
            "kube-apiserver"
        );
        // The hash label settles names the heuristics cannot.
        assert_eq!(
            workload_from_pod_name(
                "web-abc12-x2x9k",
                &labels(&[("pod-template-hash", "abc12")]),
                None
            ),
            "web"
        );
        assert_eq!(
            workload_from_pod_name(
                "db-3",
                &labels(&[("statefulset.kubernetes.io/pod-name", "db-3")]),
                None
            ),
            "db"
        );
    }

    #[test]
    fn selectors() {
        let l = labels(&[("app", "cart"), ("tier", "backend")]);
        assert!(selects(&labels(&[("app", "cart")]), &l));
        assert!(!selects(&labels(&[("app", "web")]), &l));
        assert!(
            !selects(&BTreeMap::new(), &l),
            "an empty selector selects nothing"
        );
    }

    fn pod(uid: &str, name: &str, ns: &str, l: &[(&str, &str)], ip: &str) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: name.into(),
            namespace: ns.into(),
            labels: labels(l),
            ips: vec![ip.parse().unwrap()],
            local: true,
            ..PodMeta::default()
        }
    }

    #[test]
    fn service_name_order_service_then_label_then_owner_then_name() {
        let naming = Naming::default();
        let mut b = SnapshotBuilder::default();
        b.add_pod(pod(
            "u1",
            "cart-0",
            "shop",
            &[("app", "cart")],
            "198.18.1.1",
        ));
        b.add_pod(pod(
            "u2",
            "web-7d4b9c8f6d-x2x9k",
            "shop",
            &[("app.kubernetes.io/name", "storefront"), ("app", "web")],
            "198.18.1.2",
        ));
        b.add_pod(pod("u3", "pay-5f8b9c7d44-q2w7z", "pay", &[], "198.18.1.3"));
        let mut p4 = pod("u4", "agent-x7k2p", "ops", &[], "198.18.1.4");
        p4.owner = Some(("DaemonSet".into(), "node-agent".into()));
        b.add_pod(p4);
        b.add_service(ServiceMeta {
            name: "cart-svc".into(),
            namespace: "shop".into(),
            cluster_ips: vec!["198.19.0.10".parse().unwrap()],
            selector: labels(&[("app", "cart")]),
        });
        // Same selector, other namespace: must not match.
        b.add_service(ServiceMeta {
            name: "other".into(),
            namespace: "pay".into(),
            cluster_ips: vec![],
            selector: labels(&[("app", "cart")]),
        });
        let s = b.build(&naming);
        let svc = |uid: &str| (s.pods[uid].service.clone(), s.pods[uid].service_from);
        assert_eq!(svc("u1"), ("cart-svc.shop".into(), "service"));
        assert_eq!(svc("u2"), ("storefront.shop".into(), "label"));
        assert_eq!(svc("u3"), ("pay.pay".into(), "pod_name"));
        assert_eq!(svc("u4"), ("node-agent.ops".into(), "owner"));
        let ip: IpAddr = "198.18.1.1".parse().unwrap();
        assert_eq!(s.pod_by_ip[&ip].name, "cart-0");
        let cip: IpAddr = "198.19.0.10".parse().unwrap();
        assert_eq!(s.service_by_ip[&cip].full, "cart-svc.shop");
    }

    #[test]
    fn endpoints_name_the_service_and_cluster_prefix() {
        let naming = Naming {
            cluster: Some("prod".into()),
            node_name: None,
        };
        let mut b = SnapshotBuilder::default();
        b.add_pod(pod("u1", "db-0", "data", &[], "198.18.2.1"));
        b.add_endpoint("198.18.2.1".parse().unwrap(), "data", "postgres");
        let s = b.build(&naming);
        assert_eq!(s.pods["u1"].service, "prod::postgres.data");
    }

    #[test]
    fn merge_keeps_names_and_unions_labels_and_ips() {
        let mut b = SnapshotBuilder::default();
        b.add_pod(PodMeta {
            uid: "u".into(),
            name: "a-0".into(),
            namespace: "n".into(),
            local: true,
            ..PodMeta::default()
        });
        b.add_pod(pod("u", "", "", &[("app", "x")], "198.18.3.1"));
        b.add_container(
            "c1",
            ContainerMeta {
                pod_uid: "u".into(),
                name: Some("main".into()),
                sandbox: false,
            },
        );
        b.add_container(
            "c1",
            ContainerMeta {
                pod_uid: "u".into(),
                name: None,
                sandbox: false,
            },
        );
        b.add_container(
            "s1",
            ContainerMeta {
                pod_uid: "u".into(),
                name: None,
                sandbox: true,
            },
        );
        let s = b.build(&Naming::default());
        let p = &s.pods["u"];
        assert_eq!(
            (p.name.as_str(), p.namespace.as_str(), p.service.as_str()),
            ("a-0", "n", "x.n")
        );
        assert_eq!(p.containers, vec!["main".to_string()]);
        assert_eq!(p.container_for_port(80), Some("main"));
        assert_eq!(s.containers["c1"].name.as_deref(), Some("main"));
    }

    #[test]
    fn host_network_pods_do_not_claim_node_ips() {
        let mut b = SnapshotBuilder::default();
        let mut p = pod("u", "kube-proxy-x7k2p", "kube-system", &[], "198.18.9.9");
        p.host_network = true;
        b.add_pod(p);
        let s = b.build(&Naming::default());
        assert!(s.pod_by_ip.is_empty());
        assert!(s.pods.contains_key("u"));
    }
}
