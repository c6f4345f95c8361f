//! Kubernetes attribution with the API: a STAND-IN API server (a small HTTP server in
//! this test, not a real API server) serves recorded-style list responses
//! (tests/fixtures/k8s/api/) for the simulated node's pods, a pod on another node, and
//! the Services selecting them. Checks that Services name pods (selector and
//! EndpointSlice), that Service IPs name their Service, that pod IPs of other nodes are
//! known, that `--cluster` prefixes names, and that API failures are counted while the
//! node-local sources keep working.
//!
//! Root only (the simulated node). Run: `cargo test --release --test k8s_api -- --test-threads=1`.

mod common;
mod sim;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_alog::resolve::k8s::{K8sAttribution, K8sConfig};
use k8s_alog::resolve::Attribution;
use serde_json::Value;

use common::*;
use sim::SimNode;

const TOKEN: &str = "stand-in-token-1";

/// The stand-in API server: GET of the three list paths, bearer token checked.
struct StandInApi {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Answer 500 to everything (an API outage).
    failing: Arc<AtomicBool>,
    /// (path, authorised) of every request.
    requests: Arc<Mutex<Vec<(String, bool)>>>,
    handle: Option<JoinHandle<()>>,
}

impl StandInApi {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let failing = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, f, r) = (
            Arc::clone(&stop),
            Arc::clone(&failing),
            Arc::clone(&requests),
        );
        let handle = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = conn {
                    serve(c, &f, &r);
                }
            }
        });
        Self {
            addr,
            stop,
            failing,
            requests,
            handle: Some(handle),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<(String, bool)> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(c: TcpStream, failing: &AtomicBool, log: &Mutex<Vec<(String, bool)>>) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut auth = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if h.to_ascii_lowercase().starts_with("authorization:") {
            auth = h.trim_end().ends_with(&format!("Bearer {TOKEN}"));
        }
    }
    log.lock().unwrap().push((path.clone(), auth));
    let file = match path.split('?').next().unwrap_or("") {
        "/api/v1/pods" => Some("pods.json"),
        "/api/v1/services" => Some("services.json"),
        "/apis/discovery.k8s.io/v1/endpointslices" => Some("endpointslices.json"),
        _ => None,
    };
    let (status, body) = if failing.load(Ordering::Relaxed) {
        (
            "500 Internal Server Error",
            r#"{"kind":"Status","status":"Failure","code":500}"#.to_string(),
        )
    } else if !auth {
        (
            "401 Unauthorized",
            r#"{"kind":"Status","status":"Failure","reason":"Unauthorized","code":401}"#
                .to_string(),
        )
    } else if let Some(f) = file {
        (
            "200 OK",
            std::fs::read_to_string(fixture(&format!("k8s/api/{f}"))).unwrap(),
        )
    } else {
        (
            "404 Not Found",
            r#"{"kind":"Status","status":"Failure","reason":"NotFound","code":404}"#.to_string(),
        )
    };
    let mut c = c;
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Drop for StandInApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A kubeconfig pointing at the stand-in, with a token file.
fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: sim\nclusters:\n- name: sim\n  cluster:\n    server: {server}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: agent\nusers:\n- name: agent\n  user:\n    tokenFile: token\n"
        )
        .replace("tokenFile", "token-file"),
    )
    .unwrap();
    p
}

fn sim_config(node: &SimNode) -> K8sConfig {
    let none = node.desc.root.join("absent");
    K8sConfig {
        kubelet_pods_dir: node.desc.kubelet_pods_dir.clone(),
        cri_sockets: vec![none.join("cri.sock")],
        containerd_state_dir: none,
        in_cluster: false,
        refresh: Duration::from_millis(200),
        api_refresh: Duration::from_secs(1),
        ..K8sConfig::default()
    }
}

/// Wait until the resolver's snapshot holds the API's Services.
fn wait_services(k: &mut K8sAttribution, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while k.stats().services_known < n {
        assert!(
            Instant::now() < deadline,
            "API data never arrived: {:?}",
            k.stats()
        );
        k.refresh_blocking(Duration::from_secs(2));
    }
}

#[test]
fn api_services_name_pods_and_service_ips() {
    if !require_root() {
        return;
    }
    let node = SimNode::up();
    let cart = node.start_server("cart", "cart", 8080);
    let pay = node.start_server("pay", "payment", 8080);
    let api = StandInApi::start();
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), &api.url());
    let mut k = K8sAttribution::start(K8sConfig {
        kubeconfig: Some(kc),
        cluster_name: Some("prod".into()),
        node_name: Some("sim-node".into()),
        ..sim_config(&node)
    })
    .unwrap();
    wait_services(&mut k, 4);

    // Selector: cart-0 is in Service cart-svc (not "cart", the workload name).
    let mut ep = sim::process_end(&node, "cart", "cart", cart.pid(), 8080);
    k.attribute_process(&mut ep);
    assert_eq!(ep.service.as_deref(), Some("prod::cart-svc.shop"), "{ep:?}");
    assert_eq!(
        (ep.pod.as_deref(), ep.container.as_deref()),
        (Some("cart-0"), Some("cart"))
    );
    // EndpointSlice only (the Service has no selector).
    let mut ep = sim::process_end(&node, "pay", "payment", pay.pid(), 8080);
    k.attribute_process(&mut ep);
    assert_eq!(ep.service.as_deref(), Some("prod::payments.pay"), "{ep:?}");
    // No Service selects web: its app.kubernetes.io/name label (from the API) names it.
    let gone = node.run_and_exit("web", "web");
    let mut ep = sim::process_end(&node, "web", "web", gone, 40000);
    k.attribute_process(&mut ep);
    assert_eq!(
        ep.service.as_deref(),
        Some("prod::storefront.shop"),
        "{ep:?}"
    );

    // Through the Service IP: backend by conntrack, the Service named in `via`.
    let svc = node.service("cart");
    let (_, port, code) = node.curl(
        "web",
        "web",
        &format!("http://{}:{}/bytes/3", svc.ip, svc.port),
    );
    assert_eq!(code, 200);
    let mut ep = sim::address_end(&svc.ip, svc.port);
    k.attribute_address(&mut ep, Some(node.addr("web", port)));
    assert_eq!(ep.resolved_by.as_deref(), Some("conntrack"), "{ep:?}");
    assert_eq!(
        (ep.pod.as_deref(), ep.service.as_deref()),
        (Some("cart-0"), Some("prod::cart-svc.shop"))
    );
    let via = ep.via.clone().unwrap();
    assert_eq!(via.service.as_deref(), Some("prod::cart-svc.shop"));
    assert_eq!(via.addr, Some(svc.ip.parse().unwrap()));

    // A Service IP nothing was sent to (no conntrack entry): the Service, no backend.
    let mut ep = sim::address_end("198.19.7.12", 80);
    k.attribute_address(&mut ep, Some(node.addr("web", 45678)));
    assert_eq!(ep.resolved_by.as_deref(), Some("service_ip"));
    assert_eq!(ep.service.as_deref(), Some("prod::catalog.shop"));
    assert!(ep.pod.is_none());
    // A pod on another node, by its IP.
    let mut ep = sim::address_end("198.18.8.20", 8080);
    k.attribute_address(&mut ep, None);
    assert_eq!(ep.resolved_by.as_deref(), Some("pod_ip"));
    assert_eq!(ep.pod.as_deref(), Some("catalog-5c9d8f7b6c-m4n8p"));
    assert_eq!(ep.service.as_deref(), Some("prod::catalog.shop"));
    // A finished Job's IP is not a pod any more.
    let mut ep = sim::address_end("198.18.7.14", 8080);
    k.attribute_address(&mut ep, Some(node.addr("web", 45679)));
    assert_eq!(ep.resolved_by.as_deref(), Some("unresolved"));

    let reqs = api.requests();
    assert!(
        reqs.iter().all(|(_, auth)| *auth),
        "token sent on every request: {reqs:?}"
    );
    for p in [
        "/api/v1/pods?resourceVersion=0",
        "/api/v1/services?resourceVersion=0",
        "/apis/discovery.k8s.io/v1/endpointslices?resourceVersion=0",
    ] {
        assert!(
            reqs.iter().any(|(q, _)| q == p),
            "{p} not requested: {reqs:?}"
        );
    }
    assert_eq!(k.stats().api_errors, 0);

    // An API outage: counted; what is known stays, the node-local sources go on.
    api.failing.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while k.stats().api_errors == 0 {
        assert!(Instant::now() < deadline, "API errors not counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    k.refresh_blocking(Duration::from_secs(5));
    let mut ep = sim::process_end(&node, "cart", "cart", cart.pid(), 8080);
    k.attribute_process(&mut ep);
    assert_eq!(ep.service.as_deref(), Some("prod::cart-svc.shop"));
    eprintln!("resolver stats: {:?}", k.stats());
    drop(k);

    // Wrong credentials: errors counted, and attribution still works from the node.
    std::fs::write(dir.path().join("token"), "wrong\n").unwrap();
    api.failing.store(false, Ordering::Relaxed);
    let mut k = K8sAttribution::start(K8sConfig {
        kubeconfig: Some(dir.path().join("kubeconfig")),
        ..sim_config(&node)
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while k.stats().api_errors == 0 {
        assert!(Instant::now() < deadline, "401 not counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ep = sim::process_end(&node, "cart", "cart", cart.pid(), 8080);
    k.attribute_process(&mut ep);
    assert_eq!(
        ep.service.as_deref(),
        Some("cart.shop"),
        "workload name without the API"
    );
}

/// `k8s-alog record --kubeconfig ... --cluster prod`: Service names in the records.
#[test]
fn record_names_services_from_the_api() {
    if !require_root() {
        return;
    }
    let node = SimNode::up();
    let _cart = node.start_server("cart", "cart", 8080);
    let api = StandInApi::start();
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), &api.url());
    let pods_dir = node.desc.kubelet_pods_dir.to_string_lossy().into_owned();
    let absent = node.desc.root.join("absent").to_string_lossy().into_owned();
    let rec = Recorder::start(
        &[],
        &[
            "--kubelet-pods-dir",
            &pods_dir,
            "--containerd-state",
            &absent,
            "--cri-socket",
            &format!("{absent}/cri.sock"),
            "--kubeconfig",
            &kc.to_string_lossy(),
            "--cluster",
            "prod",
            "--node-name",
            "sim-node",
        ],
    );
    // Give the first API listing time to land (it is asynchronous to capture).
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.requests().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let svc = node.service("cart");
    let (_, port, code) = node.curl(
        "web",
        "web",
        &format!("http://{}:{}/bytes/5", svc.ip, svc.port),
    );
    assert_eq!(code, 200);
    wait_port_idle(8080, Duration::from_secs(10));
    let out = rec.stop();
    assert!(
        out.stderr
            .iter()
            .any(|l| l.contains("kubernetes attribution:")),
        "record did not start Kubernetes attribution: {:?}",
        out.stderr
    );
    let http: Vec<&Value> = out
        .of_kind("http")
        .into_iter()
        .filter(|r| r["client"]["port"] == port)
        .collect();
    // Both sockets are on this node: one record, the client's and the backend's
    // sockets paired through the NAT table.
    assert_eq!(http.len(), 1, "one record:\n{}", dump(&out.of_kind("http")));
    for r in &http {
        assert_eq!(r["client"]["service"], "prod::storefront.shop", "{r}");
        assert_eq!(r["server"]["service"], "prod::cart-svc.shop", "{r}");
        assert_eq!(r["server"]["pod"], "cart-0", "{r}");
    }
    let r = http[0];
    assert_eq!(r["observed_by"], "both", "{r}");
    assert_eq!(r["server"]["via"]["service"], "prod::cart-svc.shop", "{r}");
    assert_eq!(r["server"]["resolved_by"], "process", "{r}");
}
