//! `K8sAttribution`: pod, namespace, container and service on both ends of every record,
//! from whatever the node offers, best first: the CRI socket (containerd, CRI-O), the
//! runtime's task bundles, the kubelet's log layout, the cgroup tree and `/proc`, and,
//! when credentials are given, the Kubernetes API (Services, cluster-wide pod IPs).
//! Service-IP connections are followed to their backend through conntrack.
//!
//! One background thread gathers and merges the sources into an immutable `Snapshot`
//! and swaps it in; the capture thread only reads the current snapshot, its caches,
//! `/proc/<pid>/cgroup` and the conntrack netlink socket (a kernel query, bounded by a
//! short timeout and cached). It never waits for the runtime or the API.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;
use tonic::transport::Channel;

use super::api::{ApiClient, ApiData, ApiSettings};
use super::bundles::BundleReader;
use super::conntrack::{Conntrack, Tuple};
use super::cri::{self, RuntimeServiceClient};
use super::meta::{Naming, PodView, Snapshot, SnapshotBuilder};
use super::procs::ProcResolver;
use super::{kubelet, node, Attribution, ResolveStats};
use crate::model::{Endpoint, ServiceAddr};

/// CRI sockets tried when none is given: containerd, CRI-O, cri-dockerd.
pub const DEFAULT_CRI_SOCKETS: [&str; 3] = [
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
];
pub const DEFAULT_CONTAINERD_STATE: &str = "/run/containerd/io.containerd.runtime.v2.task/k8s.io";
pub const DEFAULT_KUBELET_PODS: &str = "/var/log/pods";

/// Where to look. Every path is a path on the host, looked up below `host_root` (so
/// that the tool can run in a container with the host's `/` mounted at, say, `/host`).
#[derive(Debug, Clone)]
pub struct K8sConfig {
    /// Where the host's root is mounted (`/` when running on the host).
    pub host_root: PathBuf,
    /// The host's `/proc`; default `<host_root>/proc`.
    pub proc_root: Option<PathBuf>,
    /// The cgroup v2 mount; default: found in `/proc/self/mountinfo`.
    pub cgroup_root: Option<PathBuf>,
    /// CRI sockets to use; empty: probe `DEFAULT_CRI_SOCKETS` (those present).
    pub cri_sockets: Vec<PathBuf>,
    pub containerd_state_dir: PathBuf,
    /// The kubelet's `/var/log/pods`.
    pub kubelet_pods_dir: PathBuf,
    /// The kubelet's `/var/log/containers`; default: `containers` beside the pods dir.
    pub kubelet_containers_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    /// Use the in-cluster service account (token and CA under
    /// /var/run/secrets/kubernetes.io/serviceaccount, `KUBERNETES_SERVICE_HOST`).
    pub in_cluster: bool,
    /// API server URL; overrides the kubeconfig's or in-cluster one, or alone (plain
    /// HTTP, e.g. `kubectl proxy`).
    pub api_server: Option<String>,
    /// Prefix service names with `<cluster>::`.
    pub cluster_name: Option<String>,
    /// This node's name (static pod names; which API pods are local).
    pub node_name: Option<String>,
    /// How often node-local sources (and the CRI) are read.
    pub refresh: Duration,
    /// How often the API is listed.
    pub api_refresh: Duration,
    /// Follow Service-IP connections to their backend through conntrack.
    pub conntrack: bool,
    /// How long `start` waits for the first snapshot.
    pub first_snapshot_wait: Duration,
}

impl Default for K8sConfig {
    fn default() -> Self {
        Self {
            host_root: PathBuf::from("/"),
            proc_root: None,
            cgroup_root: None,
            cri_sockets: Vec::new(),
            containerd_state_dir: PathBuf::from(DEFAULT_CONTAINERD_STATE),
            kubelet_pods_dir: PathBuf::from(DEFAULT_KUBELET_PODS),
            kubelet_containers_dir: None,
            kubeconfig: None,
            in_cluster: in_cluster_available(),
            api_server: None,
            cluster_name: None,
            node_name: None,
            refresh: Duration::from_secs(2),
            api_refresh: Duration::from_secs(30),
            conntrack: true,
            first_snapshot_wait: Duration::from_secs(5),
        }
    }
}

/// True inside a pod that has a service account token mounted.
pub fn in_cluster_available() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
}

/// The config's paths made concrete.
#[derive(Debug, Clone)]
struct Paths {
    proc_root: PathBuf,
    cgroup_root: Option<PathBuf>,
    /// Empty with `probe`: try the defaults each round.
    cri_sockets: Vec<PathBuf>,
    probe_cri: bool,
    containerd_state: PathBuf,
    kubelet_pods: PathBuf,
    kubelet_containers: PathBuf,
}

impl K8sConfig {
    /// A host path below `host_root`.
    pub fn host_path(&self, p: &Path) -> PathBuf {
        if self.host_root == Path::new("/") || p.starts_with(&self.host_root) {
            return p.to_path_buf();
        }
        self.host_root.join(p.strip_prefix("/").unwrap_or(p))
    }

    fn paths(&self) -> Paths {
        let proc_root = self
            .proc_root
            .clone()
            .unwrap_or_else(|| self.host_path(Path::new("/proc")));
        let cgroup_root = self.cgroup_root.clone().or_else(|| {
            let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            node::cgroup2_mount(&mi, &self.host_root)
        });
        let probe_cri = self.cri_sockets.is_empty();
        let cri_sockets = if probe_cri {
            DEFAULT_CRI_SOCKETS
                .iter()
                .map(|s| self.host_path(Path::new(s)))
                .collect()
        } else {
            self.cri_sockets.iter().map(|s| self.host_path(s)).collect()
        };
        let kubelet_pods = self.host_path(&self.kubelet_pods_dir);
        let kubelet_containers = match &self.kubelet_containers_dir {
            Some(d) => self.host_path(d),
            None => kubelet_pods
                .parent()
                .map(|p| p.join("containers"))
                .unwrap_or_else(|| PathBuf::from("/var/log/containers")),
        };
        Paths {
            proc_root,
            cgroup_root,
            cri_sockets,
            probe_cri,
            containerd_state: self.host_path(&self.containerd_state_dir),
            kubelet_pods,
            kubelet_containers,
        }
    }
}

/// Counters shared between the capture thread, the background thread and readers.
#[derive(Debug, Default)]
struct Counters {
    process_ends: AtomicU64,
    process_ends_in_pods: AtomicU64,
    process_ends_unknown_pod: AtomicU64,
    remote_pod_ip: AtomicU64,
    remote_service_ip: AtomicU64,
    remote_conntrack: AtomicU64,
    remote_loopback: AtomicU64,
    unresolved_remotes: AtomicU64,
    intra_pod_connections: AtomicU64,
    conntrack_lookups: AtomicU64,
    conntrack_errors: AtomicU64,
    cri_errors: AtomicU64,
    api_errors: AtomicU64,
    refreshes: AtomicU64,
    pods_known: AtomicU64,
    containers_known: AtomicU64,
    services_known: AtomicU64,
    pod_ips_known: AtomicU64,
    cgroups_known: AtomicU64,
    cgroup_cache: AtomicU64,
    conntrack_cache: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn set(c: &AtomicU64, v: usize) {
    c.store(v as u64, Ordering::Relaxed);
}

impl Counters {
    fn get(&self) -> ResolveStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ResolveStats {
            process_ends: g(&self.process_ends),
            process_ends_in_pods: g(&self.process_ends_in_pods),
            process_ends_unknown_pod: g(&self.process_ends_unknown_pod),
            remote_pod_ip: g(&self.remote_pod_ip),
            remote_service_ip: g(&self.remote_service_ip),
            remote_conntrack: g(&self.remote_conntrack),
            remote_loopback: g(&self.remote_loopback),
            unresolved_remotes: g(&self.unresolved_remotes),
            intra_pod_connections: g(&self.intra_pod_connections),
            conntrack_lookups: g(&self.conntrack_lookups),
            conntrack_errors: g(&self.conntrack_errors),
            cri_errors: g(&self.cri_errors),
            api_errors: g(&self.api_errors),
            refreshes: g(&self.refreshes),
            pods_known: g(&self.pods_known),
            containers_known: g(&self.containers_known),
            services_known: g(&self.services_known),
            pod_ips_known: g(&self.pod_ips_known),
            cgroups_known: g(&self.cgroups_known),
            cgroup_cache: g(&self.cgroup_cache),
            conntrack_cache: g(&self.conntrack_cache),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    snapshot: Mutex<Arc<Snapshot>>,
    generation: AtomicU64,
    stop: AtomicBool,
    /// Wakes the background thread: a refresh is wanted, or it must stop.
    wake: Notify,
    api_data: Mutex<Option<Arc<ApiData>>>,
    counters: Counters,
}

/// Reads the counters of a running `K8sAttribution` from any thread.
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Shared>);

impl StatsHandle {
    pub fn get(&self) -> ResolveStats {
        self.0.counters.get()
    }
}

/// How long a conntrack answer is trusted: entries live at least this long after a
/// connection closes (TIME_WAIT), and a translation never changes for a tuple.
const CT_HIT_TTL: Duration = Duration::from_secs(120);
/// A miss is retried after this (the entry may appear with the next packet).
const CT_MISS_TTL: Duration = Duration::from_secs(3);
const CT_CACHE_MAX: usize = 65_536;
const INTRA_SEEN_MAX: usize = 65_536;

/// Pod, namespace, container and service attribution (see the module doc).
pub struct K8sAttribution {
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    snap_gen: u64,
    procs: ProcResolver,
    conntrack: Option<Conntrack>,
    ct_cache: HashMap<(SocketAddr, SocketAddr), (Option<SocketAddr>, Instant)>,
    /// (pod UID, address) in a pod with several containers -> the container holding the
    /// socket (the UID: loopback addresses repeat in every pod).
    owner_cache: HashMap<(String, SocketAddr), (Option<String>, Instant)>,
    /// The last process end attributed (its address and pod): the engine fills the
    /// local end of a record before the remote one, so an address-only remote whose
    /// `peer` is this address belongs to the same record.
    last_process: Option<(SocketAddr, Option<Arc<PodView>>)>,
    ephemeral: (u16, u16),
    intra_seen: HashSet<(String, u16)>,
    last_wake: Option<Instant>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for K8sAttribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sAttribution")
            .field("generation", &self.snap_gen)
            .field("pods", &self.snap.pods.len())
            .finish_non_exhaustive()
    }
}

impl K8sAttribution {
    /// Start the background thread and wait (at most `first_snapshot_wait`) for the
    /// first snapshot. Fails only on settings that cannot work (e.g. an unreadable
    /// kubeconfig that was asked for); missing sources are simply not used.
    pub fn start(cfg: K8sConfig) -> anyhow::Result<Self> {
        let paths = cfg.paths();
        let api = ApiClient::from_settings(&ApiSettings {
            kubeconfig: cfg.kubeconfig.clone(),
            in_cluster: cfg.in_cluster,
            api_server: cfg.api_server.clone(),
            timeout: Duration::from_secs(30),
        })
        .context("Kubernetes API settings")?;
        let naming = Naming {
            cluster: cfg.cluster_name.clone().filter(|c| !c.is_empty()),
            node_name: cfg.node_name.clone().filter(|n| !n.is_empty()),
        };
        let conntrack = if cfg.conntrack {
            match Conntrack::open(Duration::from_millis(50)) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("conntrack look-ups disabled ({e}): connections to Service IPs will name the Service, not the backend pod");
                    None
                }
            }
        } else {
            None
        };
        tracing::info!(
            "kubernetes attribution: cgroup v2 at {}, CRI {}, containerd state {}, kubelet pods {}, API {}",
            paths.cgroup_root.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into()),
            if paths.probe_cri { "probing defaults".to_string() } else { format!("{:?}", paths.cri_sockets) },
            paths.containerd_state.display(),
            paths.kubelet_pods.display(),
            api.as_ref().map(|a| format!("{a:?}")).unwrap_or_else(|| "none".into()),
        );
        let shared = Arc::new(Shared::default());
        let ephemeral =
            std::fs::read_to_string(paths.proc_root.join("sys/net/ipv4/ip_local_port_range"))
                .ok()
                .and_then(|s| {
                    let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
                    Some((it.next()??, it.next()??))
                })
                .unwrap_or((32768, 60999));
        let mut worker = Worker {
            paths: paths.clone(),
            naming,
            shared: Arc::clone(&shared),
            bundles: BundleReader::default(),
            cri: HashMap::new(),
            cri_warned: HashSet::new(),
            host_netns: node::netns_of(&paths.proc_root, 1),
            refresh: cfg.refresh.max(Duration::from_millis(100)),
        };
        let api_refresh = cfg.api_refresh.max(Duration::from_secs(1));
        let handle = std::thread::Builder::new()
            .name("k8s-meta".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("kubernetes metadata thread: no runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    if let Some(api) = api {
                        tokio::spawn(api_loop(
                            api,
                            worker.naming.clone(),
                            Arc::clone(&worker.shared),
                            api_refresh,
                        ));
                    }
                    worker.run().await;
                });
            })
            .context("starting the kubernetes metadata thread")?;
        let deadline = Instant::now() + cfg.first_snapshot_wait;
        while shared.generation.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut me = Self {
            snap: Arc::new(Snapshot::default()),
            snap_gen: 0,
            shared,
            procs: ProcResolver::new(paths.proc_root.clone()),
            conntrack,
            ct_cache: HashMap::new(),
            owner_cache: HashMap::new(),
            last_process: None,
            ephemeral,
            intra_seen: HashSet::new(),
            last_wake: None,
            worker: Some(handle),
        };
        me.refresh_snapshot();
        Ok(me)
    }

    /// Current counters.
    pub fn stats(&self) -> ResolveStats {
        self.shared.counters.get()
    }

    /// A handle to read the counters from another thread.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.shared))
    }

    /// The snapshot in use now (tests, `top`).
    pub fn snapshot(&mut self) -> Arc<Snapshot> {
        self.refresh_snapshot();
        Arc::clone(&self.snap)
    }

    /// Ask for a refresh now and wait (bounded) until a snapshot newer than the current
    /// one is in use. Blocks: not for the capture thread.
    pub fn refresh_blocking(&mut self, timeout: Duration) -> bool {
        let start = self.shared.generation.load(Ordering::Acquire);
        self.shared.wake.notify_one();
        let deadline = Instant::now() + timeout;
        // Two generations: the one running when asked may have started before the change.
        while self.shared.generation.load(Ordering::Acquire) < start + 2 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.refresh_snapshot();
        true
    }

    fn refresh_snapshot(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.snap_gen {
            if let Ok(s) = self.shared.snapshot.lock() {
                self.snap = Arc::clone(&s);
            }
            self.snap_gen = g;
        }
    }

    /// A pod cgroup no source names yet: ask the background thread for a refresh
    /// (at most once a second; never waits).
    fn want_refresh(&mut self) {
        let now = Instant::now();
        if self
            .last_wake
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_wake = Some(now);
            self.shared.wake.notify_one();
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Count a connection inside one pod once, by its ephemeral-port end.
    fn count_intra(&mut self, uid: &str, ports: &[u16]) {
        let (lo, hi) = self.ephemeral;
        let Some(p) = ports
            .iter()
            .copied()
            .find(|p| (lo..=hi).contains(p))
            .or_else(|| ports.iter().copied().max())
        else {
            return;
        };
        if self.intra_seen.len() >= INTRA_SEEN_MAX {
            self.intra_seen.clear();
        }
        if self.intra_seen.insert((uid.to_string(), p)) {
            inc(&self.counters().intra_pod_connections);
        }
    }

    /// The container of pod `p` behind `addr` (an address of `p`): the only container,
    /// the one listening on the port, or, in a pod on this node with several, the one
    /// whose process holds the socket (a `/proc` look-up, cached per address).
    fn container_of(&mut self, p: &PodView, addr: SocketAddr) -> Option<String> {
        if let Some(c) = p.container_for_port(addr.port()) {
            return Some(c.to_string());
        }
        if p.container_dirs.is_empty() {
            return None;
        }
        let now = Instant::now();
        let key = (p.uid.clone(), addr);
        if let Some((c, until)) = self.owner_cache.get(&key) {
            if *until > now {
                return c.clone();
            }
        }
        let c = node::socket_owner(self.procs.proc_root(), &p.container_dirs, addr);
        if self.owner_cache.len() >= CT_CACHE_MAX {
            self.owner_cache.clear();
        }
        // A found owner stays right for the life of the connection; a miss may be a
        // socket not yet visible or already gone.
        let ttl = if c.is_some() { CT_HIT_TTL } else { CT_MISS_TTL };
        self.owner_cache.insert(key, (c.clone(), now + ttl));
        c
    }

    /// Where a connection from `local` to `remote` really goes, if NAT changed it.
    fn real_destination(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<SocketAddr> {
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        if local.is_ipv4() != remote.is_ipv4() {
            return None;
        }
        let now = Instant::now();
        if let Some((ans, until)) = self.ct_cache.get(&(local, remote)) {
            if *until > now {
                return *ans;
            }
        }
        let ct = self.conntrack.as_mut()?;
        inc(&self.shared.counters.conntrack_lookups);
        let q = Tuple {
            src: local,
            dst: remote,
        };
        let ans = match ct.lookup_tcp(&q) {
            Ok(e) => e.and_then(|e| e.real_destination(&q)),
            Err(e) => {
                inc(&self.shared.counters.conntrack_errors);
                tracing::debug!("conntrack look-up {local} -> {remote}: {e}");
                None
            }
        };
        if self.ct_cache.len() >= CT_CACHE_MAX {
            self.ct_cache.clear();
        }
        let ttl = if ans.is_some() {
            CT_HIT_TTL
        } else {
            CT_MISS_TTL
        };
        self.ct_cache.insert((local, remote), (ans, now + ttl));
        ans
    }
}

fn fill_pod(ep: &mut Endpoint, p: &PodView) {
    ep.pod = Some(p.name.clone());
    ep.namespace = Some(p.namespace.clone());
    ep.service = Some(p.service.clone());
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

impl Attribution for K8sAttribution {
    fn attribute_process(&mut self, ep: &mut Endpoint) {
        self.refresh_snapshot();
        ep.resolved_by = Some("process".to_string());
        inc(&self.counters().process_ends);
        self.last_process = None;
        let Some(pid) = ep.pid else { return };
        let snap = Arc::clone(&self.snap);
        let info = self
            .procs
            .cgroup_info(pid, ep.cgroup_id.unwrap_or(0), |id| {
                snap.cgroups.get(&id).cloned()
            });
        if info.container_id.is_some() {
            ep.container_id = info.container_id.clone();
        }
        let cmeta = info
            .container_id
            .as_ref()
            .and_then(|c| snap.containers.get(c));
        let uid = cmeta
            .map(|c| c.pod_uid.as_str())
            .or(info.pod_uid.as_deref());
        let pod = uid.and_then(|u| snap.pods.get(u)).cloned();
        match &pod {
            Some(p) => {
                inc(&self.counters().process_ends_in_pods);
                fill_pod(ep, p);
                ep.container = cmeta.filter(|c| !c.sandbox).and_then(|c| c.name.clone());
                if ep.addr.is_some_and(is_loopback) {
                    let uid = p.uid.clone();
                    self.count_intra(&uid, &[ep.port]);
                }
            }
            None if uid.is_some() => {
                inc(&self.counters().process_ends_unknown_pod);
                self.want_refresh();
            }
            None => {}
        }
        if let Some(a) = ep.addr {
            self.last_process = Some((SocketAddr::new(a, ep.port), pod));
        }
    }

    fn attribute_address(&mut self, ep: &mut Endpoint, peer: Option<SocketAddr>) {
        self.refresh_snapshot();
        let local_pod = self
            .last_process
            .take()
            .filter(|(sa, _)| Some(*sa) == peer)
            .and_then(|(_, p)| p);
        let Some(addr) = ep.addr.map(|a| a.to_canonical()) else {
            ep.resolved_by = Some("unresolved".to_string());
            inc(&self.counters().unresolved_remotes);
            return;
        };
        let snap = Arc::clone(&self.snap);
        let peer_port = peer.map(|p| p.port());
        if is_loopback(addr) {
            // Same network namespace as the other end: the same pod.
            if let Some(p) = local_pod {
                fill_pod(ep, &p);
                ep.container = self.container_of(&p, SocketAddr::new(addr, ep.port));
                ep.resolved_by = Some("loopback".to_string());
                inc(&self.counters().remote_loopback);
                self.count_intra(&p.uid, &[ep.port, peer_port.unwrap_or(0)]);
            } else {
                ep.resolved_by = Some("unresolved".to_string());
                inc(&self.counters().unresolved_remotes);
            }
            return;
        }
        if let Some(p) = snap.pod_by_ip.get(&addr) {
            fill_pod(ep, p);
            ep.container = self.container_of(p, SocketAddr::new(addr, ep.port));
            ep.resolved_by = Some("pod_ip".to_string());
            inc(&self.counters().remote_pod_ip);
            if local_pod.as_ref().is_some_and(|l| l.uid == p.uid) {
                self.count_intra(&p.uid, &[ep.port, peer_port.unwrap_or(0)]);
            }
            return;
        }
        let svc = snap.service_by_ip.get(&addr).cloned();
        let real = peer.and_then(|pr| self.real_destination(pr, SocketAddr::new(addr, ep.port)));
        if let Some(real) = real {
            ep.via = Some(ServiceAddr {
                addr: Some(addr),
                port: ep.port,
                service: svc.as_ref().map(|s| s.full.clone()),
            });
            ep.addr = Some(real.ip());
            ep.port = real.port();
            if let Some(p) = snap.pod_by_ip.get(&real.ip().to_canonical()) {
                fill_pod(ep, p);
                ep.container = self.container_of(p, real);
            } else if let Some(s) = &svc {
                ep.service = Some(s.full.clone());
            }
            ep.resolved_by = Some("conntrack".to_string());
            inc(&self.counters().remote_conntrack);
            return;
        }
        if let Some(s) = svc {
            ep.service = Some(s.full.clone());
            ep.resolved_by = Some("service_ip".to_string());
            inc(&self.counters().remote_service_ip);
            return;
        }
        ep.resolved_by = Some("unresolved".to_string());
        inc(&self.counters().unresolved_remotes);
    }

    fn tick(&mut self, now_ns: u64) {
        self.refresh_snapshot();
        self.procs.prune_if_due(now_ns);
        if self.ct_cache.len() > CT_CACHE_MAX / 2 || self.owner_cache.len() > CT_CACHE_MAX / 2 {
            let now = Instant::now();
            self.ct_cache.retain(|_, (_, until)| *until > now);
            self.owner_cache.retain(|_, (_, until)| *until > now);
        }
        set(&self.counters().cgroup_cache, self.procs.len());
        set(&self.counters().conntrack_cache, self.ct_cache.len());
    }

    fn nat_destination(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<SocketAddr> {
        self.real_destination(local, remote)
    }

    fn service_at(&mut self, addr: SocketAddr) -> Option<String> {
        self.refresh_snapshot();
        self.snap
            .service_by_ip
            .get(&addr.ip().to_canonical())
            .map(|s| s.full.clone())
    }

    fn stats(&self) -> Option<ResolveStats> {
        Some(self.shared.counters.get())
    }
}

impl Drop for K8sAttribution {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

/// The background thread's state.
struct Worker {
    paths: Paths,
    naming: Naming,
    shared: Arc<Shared>,
    bundles: BundleReader,
    cri: HashMap<PathBuf, RuntimeServiceClient<Channel>>,
    cri_warned: HashSet<PathBuf>,
    host_netns: Option<String>,
    refresh: Duration,
}

impl Worker {
    async fn run(&mut self) {
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            let t0 = Instant::now();
            self.round().await;
            tracing::trace!("kubernetes metadata refreshed in {:?}", t0.elapsed());
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.refresh) => {}
                _ = self.shared.wake.notified() => {
                    // Requests in a burst are served by one round.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn round(&mut self) {
        let mut b = SnapshotBuilder::default();
        let p = self.paths.clone();
        kubelet::read_layout(&p.kubelet_pods, &p.kubelet_containers, &mut b);
        self.bundles.read(&p.containerd_state, &mut b);
        for sock in &p.cri_sockets {
            if !sock.exists() {
                self.cri.remove(sock);
                continue;
            }
            self.cri_round(sock, &mut b).await;
        }
        let api = self.shared.api_data.lock().ok().and_then(|d| d.clone());
        if let Some(d) = api {
            d.apply(&mut b);
        }
        self.node_round(&mut b);
        let snap = b.build(&self.naming);
        let c = &self.shared.counters;
        set(&c.pods_known, snap.pods.len());
        set(&c.containers_known, snap.containers.len());
        set(&c.services_known, snap.service_by_ip.len());
        set(&c.pod_ips_known, snap.pod_by_ip.len());
        set(&c.cgroups_known, snap.cgroups.len());
        inc(&c.refreshes);
        if let Ok(mut s) = self.shared.snapshot.lock() {
            *s = Arc::new(snap);
        }
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    async fn cri_round(&mut self, sock: &Path, b: &mut SnapshotBuilder) {
        let timeout = Duration::from_secs(2);
        if !self.cri.contains_key(sock) {
            match cri::connect(sock, timeout).await {
                Ok(ch) => {
                    self.cri
                        .insert(sock.to_path_buf(), RuntimeServiceClient::new(ch));
                }
                Err(e) => {
                    inc(&self.shared.counters.cri_errors);
                    if self.cri_warned.insert(sock.to_path_buf()) {
                        tracing::warn!("CRI socket {}: cannot connect: {e}", sock.display());
                    }
                    return;
                }
            }
        }
        let Some(client) = self.cri.get_mut(sock) else {
            return;
        };
        match cri::fill(client, b).await {
            Ok(n) => {
                if self.cri_warned.remove(sock)
                    || self.shared.counters.refreshes.load(Ordering::Relaxed) == 0
                {
                    tracing::info!(
                        "CRI socket {}: {} pods, {} containers",
                        sock.display(),
                        n.pods,
                        n.containers
                    );
                }
            }
            Err(e) => {
                inc(&self.shared.counters.cri_errors);
                if self.cri_warned.insert(sock.to_path_buf()) {
                    tracing::warn!("CRI socket {}: {e}", sock.display());
                }
                // Reconnect next round.
                self.cri.remove(sock);
            }
        }
    }

    /// The cgroup tree: ids of every pod and container cgroup, and, through a process
    /// in each pod, its IPs (when no source gave them) and which container listens on
    /// which port (pods with several containers).
    fn node_round(&mut self, b: &mut SnapshotBuilder) {
        let Some(root) = self.paths.cgroup_root.clone() else {
            return;
        };
        let proc_root = self.paths.proc_root.clone();
        let cgs = node::walk_kube_cgroups(&root);
        let mut by_pod: HashMap<String, Vec<&node::KubeCgroup>> = HashMap::new();
        for cg in &cgs {
            b.cgroups.insert(cg.id, cg.info.clone());
            if let Some(uid) = &cg.info.pod_uid {
                by_pod.entry(uid.clone()).or_default().push(cg);
            }
        }
        for (uid, list) in by_pod {
            if !b.has_pod(&uid) {
                continue;
            }
            let with_procs: Vec<(&node::KubeCgroup, Vec<u32>)> = list
                .iter()
                .map(|cg| (*cg, node::procs_of(&cg.dir)))
                .filter(|(_, p)| !p.is_empty())
                .collect();
            if !b.pod_has_ips(&uid) {
                if let Some(pid) = with_procs.iter().find_map(|(_, p)| p.first().copied()) {
                    match (node::netns_of(&proc_root, pid), &self.host_netns) {
                        (Some(ns), Some(host)) if ns == *host => b.mark_host_network(&uid),
                        (Some(_), _) => b.add_pod_ips(&uid, &node::netns_ips(&proc_root, pid)),
                        _ => {}
                    }
                }
            }
            let apps: Vec<(String, Vec<u32>)> = with_procs
                .iter()
                .filter_map(|(cg, pids)| {
                    let m = b.container(cg.info.container_id.as_deref()?)?;
                    (!m.sandbox).then(|| Some((m.name.clone()?, pids.clone())))?
                })
                .collect();
            // Only pods with several containers need it (one container listens on all).
            if b.app_containers_of(&uid) >= 2 {
                if !apps.is_empty() {
                    b.set_listen_ports(&uid, node::listen_ports(&proc_root, &apps));
                }
                let dirs = list
                    .iter()
                    .filter_map(|cg| {
                        let m = b.container(cg.info.container_id.as_deref()?)?;
                        (!m.sandbox).then(|| Some((m.name.clone()?, cg.dir.clone())))?
                    })
                    .collect();
                b.set_container_dirs(&uid, dirs);
            }
        }
    }
}

/// Lists the API every `every`; results go to `shared.api_data` and wake the worker.
async fn api_loop(api: ApiClient, naming: Naming, shared: Arc<Shared>, every: Duration) {
    let mut failing = false;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match api.fetch(&naming).await {
            Ok(d) => {
                if failing || shared.api_data.lock().map(|d| d.is_none()).unwrap_or(false) {
                    tracing::info!(
                        "Kubernetes API: {} pods, {} services, {} endpoint addresses",
                        d.pods.len(),
                        d.services.len(),
                        d.endpoints.len()
                    );
                }
                failing = false;
                if let Ok(mut s) = shared.api_data.lock() {
                    *s = Some(Arc::new(d));
                }
                shared.wake.notify_one();
            }
            Err(e) => {
                inc(&shared.counters.api_errors);
                if !failing {
                    tracing::warn!("Kubernetes API: {e:#} (retrying every {every:?}; node-local sources still used)");
                }
                failing = true;
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths() {
        let mut c = K8sConfig::default();
        assert_eq!(
            c.host_path(Path::new("/var/log/pods")),
            PathBuf::from("/var/log/pods")
        );
        c.host_root = PathBuf::from("/host");
        assert_eq!(
            c.host_path(Path::new("/var/log/pods")),
            PathBuf::from("/host/var/log/pods")
        );
        assert_eq!(c.host_path(Path::new("/host/x")), PathBuf::from("/host/x"));
        let p = c.paths();
        assert_eq!(p.proc_root, PathBuf::from("/host/proc"));
        assert_eq!(
            p.kubelet_containers,
            PathBuf::from("/host/var/log/containers")
        );
        assert!(p.probe_cri);
        assert_eq!(
            p.cri_sockets[0],
            PathBuf::from("/host/run/containerd/containerd.sock")
        );
    }
}
