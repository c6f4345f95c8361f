//! A small read-only Kubernetes API client: lists Pods, Services and EndpointSlices (or
//! Endpoints) so that pod IPs anywhere in the cluster, Service cluster IPs and the
//! Service selecting each pod are known.
//!
//! Credentials from a kubeconfig (token, token file, client certificate; CA file or
//! data; insecure-skip-tls-verify) or the in-cluster service account. HTTP/1.1 over
//! hyper, TLS with rustls (ring); one connection per request, lists served from the
//! API server's cache (`resourceVersion=0`). Exec credential plugins are not supported.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::meta::{Naming, PodMeta, ServiceMeta, SnapshotBuilder};

/// Largest list response accepted (a big cluster's pod list is tens of MiB).
const MAX_BODY: usize = 512 << 20;
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where the API is and how to authenticate.
#[derive(Clone)]
pub struct ApiClient {
    scheme_https: bool,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: Auth,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        write!(
            f,
            "ApiClient({}://{}:{})",
            if self.scheme_https { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

#[derive(Clone)]
enum Auth {
    None,
    Token(String),
    /// Re-read on every request: projected service-account tokens rotate.
    TokenFile(PathBuf),
}

// --- kubeconfig (only the fields used) ---

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct KubeConfig {
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<Context_>>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: Option<T>,
}

#[derive(Debug, Deserialize, Default)]
struct Context_ {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default)]
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
}

/// How to reach the API: any of these may be absent.
#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    pub kubeconfig: Option<PathBuf>,
    pub in_cluster: bool,
    /// Overrides the server URL of the kubeconfig / in-cluster settings, or alone (for
    /// a plain-HTTP proxy such as `kubectl proxy`).
    pub api_server: Option<String>,
    pub timeout: Duration,
}

/// Read `p`, relative to the kubeconfig's directory when not absolute.
fn read_rel(base: &Path, p: &str) -> anyhow::Result<Vec<u8>> {
    let path = if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        base.join(p)
    };
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

fn b64(s: &str) -> anyhow::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .context("bad base64 in kubeconfig")
}

/// TLS material gathered from the settings.
#[derive(Default)]
struct TlsMaterial {
    ca_pem: Option<Vec<u8>>,
    insecure: bool,
    client_cert_pem: Option<Vec<u8>>,
    client_key_pem: Option<Vec<u8>>,
}

impl ApiClient {
    /// A client from the settings; `Ok(None)` when no API is configured.
    pub fn from_settings(s: &ApiSettings) -> anyhow::Result<Option<Self>> {
        let timeout = if s.timeout.is_zero() {
            Duration::from_secs(30)
        } else {
            s.timeout
        };
        let (mut server, mut tls, mut auth) = (None, TlsMaterial::default(), Auth::None);
        if let Some(kc) = &s.kubeconfig {
            let text = std::fs::read_to_string(kc)
                .with_context(|| format!("reading kubeconfig {}", kc.display()))?;
            let cfg: KubeConfig = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("parsing kubeconfig {}", kc.display()))?;
            let base = kc.parent().unwrap_or(Path::new("."));
            let ctx = cfg
                .contexts
                .iter()
                .find(|c| c.name == cfg.current_context)
                .or(cfg.contexts.first())
                .and_then(|c| c.value.as_ref())
                .ok_or_else(|| anyhow!("kubeconfig {} has no context", kc.display()))?;
            let cluster = cfg
                .clusters
                .iter()
                .find(|c| c.name == ctx.cluster)
                .and_then(|c| c.value.as_ref())
                .ok_or_else(|| {
                    anyhow!("kubeconfig {}: no cluster {:?}", kc.display(), ctx.cluster)
                })?;
            server = Some(cluster.server.clone());
            tls.insecure = cluster.insecure_skip_tls_verify;
            if let Some(d) = &cluster.certificate_authority_data {
                tls.ca_pem = Some(b64(d)?);
            } else if let Some(p) = &cluster.certificate_authority {
                tls.ca_pem = Some(read_rel(base, p)?);
            }
            let _ = &cluster.tls_server_name;
            if let Some(u) = cfg
                .users
                .iter()
                .find(|u| u.name == ctx.user)
                .and_then(|u| u.value.as_ref())
            {
                if let Some(t) = &u.token {
                    auth = Auth::Token(t.clone());
                } else if let Some(f) = &u.token_file {
                    auth = Auth::TokenFile(if Path::new(f).is_absolute() {
                        f.into()
                    } else {
                        base.join(f)
                    });
                } else if u.exec.is_some() {
                    tracing::warn!("kubeconfig {}: exec credential plugins are not supported; calling the API without credentials", kc.display());
                }
                if let Some(d) = &u.client_certificate_data {
                    tls.client_cert_pem = Some(b64(d)?);
                } else if let Some(p) = &u.client_certificate {
                    tls.client_cert_pem = Some(read_rel(base, p)?);
                }
                if let Some(d) = &u.client_key_data {
                    tls.client_key_pem = Some(b64(d)?);
                } else if let Some(p) = &u.client_key {
                    tls.client_key_pem = Some(read_rel(base, p)?);
                }
            }
        } else if s.in_cluster {
            let host = std::env::var("KUBERNETES_SERVICE_HOST")
                .context("in-cluster: KUBERNETES_SERVICE_HOST is not set")?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            server = Some(format!("https://{host}:{port}"));
            let sa = Path::new(SA_DIR);
            tls.ca_pem = Some(
                std::fs::read(sa.join("ca.crt"))
                    .with_context(|| format!("reading {SA_DIR}/ca.crt"))?,
            );
            auth = Auth::TokenFile(sa.join("token"));
        }
        if let Some(url) = &s.api_server {
            server = Some(url.clone());
        }
        let Some(server) = server else {
            return Ok(None);
        };
        let uri: Uri = server
            .parse()
            .with_context(|| format!("bad API server URL {server:?}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => bail!("API server URL {server:?}: scheme {other:?} is not http or https"),
        };
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("API server URL {server:?} has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(Arc::new(tls_config(&tls)?))
        } else {
            None
        };
        Ok(Some(Self {
            scheme_https: https,
            host,
            port,
            tls,
            auth,
            timeout,
        }))
    }

    /// GET `path_and_query`, returning status and body.
    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(self.timeout, self.get_inner(path_and_query))
            .await
            .map_err(|_| anyhow!("GET {path_and_query}: no answer within {:?}", self.timeout))?
    }

    async fn get_inner(&self, path_and_query: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        // Host names through the project's own resolver: the static binary's libc cannot.
        let addrs: Vec<std::net::SocketAddr> = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![std::net::SocketAddr::new(ip, self.port)],
            Err(_) => {
                let hp = format!("{}:{}", self.host, self.port);
                tokio::task::spawn_blocking(move || crate::netaddr::resolve(&hp))
                    .await
                    .context("resolver task")??
            }
        };
        let tcp = tokio::net::TcpStream::connect(addrs.as_slice())
            .await
            .with_context(|| format!("connecting to the API server {}:{}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut req = Request::get(path_and_query)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("k8s-alog/", env!("CARGO_PKG_VERSION")),
            );
        let token = match &self.auth {
            Auth::None => None,
            Auth::Token(t) => Some(t.clone()),
            Auth::TokenFile(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading token {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
        };
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new())?;
        match &self.tls {
            None => send(tcp, req).await,
            Some(cfg) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| anyhow!("API server name {:?}: {e}", self.host))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(cfg))
                    .connect(name, tcp)
                    .await
                    .with_context(|| {
                        format!("TLS with the API server {}:{}", self.host, self.port)
                    })?;
                send(stream, req).await
            }
        }
    }

    /// GET and decode JSON; a non-2xx status is an error (with the start of the body).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.get_ok(path).await?;
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: bad JSON"))
    }

    /// GET a body; a non-2xx status is an error (with the start of the body).
    async fn get_ok(&self, path: &str) -> anyhow::Result<Bytes> {
        let (st, body) = self.get(path).await?;
        if !st.is_success() {
            let head = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            bail!("GET {path}: HTTP {st}: {head}");
        }
        Ok(body)
    }

    /// Fetch pods, Services and endpoints.
    pub async fn fetch(&self, naming: &Naming) -> anyhow::Result<ApiData> {
        let mut data = ApiData::default();
        let path = "/api/v1/pods?resourceVersion=0";
        data.add_pods(&self.get_ok(path).await?, naming)
            .with_context(|| format!("GET {path}"))?;
        let path = "/api/v1/services?resourceVersion=0";
        data.add_services(&self.get_ok(path).await?)
            .with_context(|| format!("GET {path}"))?;
        // EndpointSlices (v1 since Kubernetes 1.21); Endpoints on older servers.
        let path = "/apis/discovery.k8s.io/v1/endpointslices?resourceVersion=0";
        let slices = match self.get_ok(path).await {
            Ok(body) => data.add_endpoint_slices(&body),
            Err(e) => Err(e),
        };
        if let Err(e) = slices {
            tracing::debug!("EndpointSlices unavailable ({e:#}); reading Endpoints");
            let path = "/api/v1/endpoints?resourceVersion=0";
            data.add_endpoints(&self.get_ok(path).await?)
                .with_context(|| format!("GET {path}"))?;
        }
        Ok(data)
    }
}

async fn send<T>(io: T, req: Request<Empty<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the API response: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

fn tls_config(m: &TlsMaterial) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = if m.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let pem = m.ca_pem.as_ref().ok_or_else(|| {
            anyhow!("https API server without a CA (set certificate-authority in the kubeconfig)")
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(c.context("bad CA certificate PEM")?)
                .context("adding the CA certificate")?;
        }
        if roots.is_empty() {
            bail!("no certificate in the CA PEM");
        }
        builder.with_root_certificates(roots)
    };
    match (&m.client_cert_pem, &m.client_key_pem) {
        (Some(c), Some(k)) => {
            let certs = CertificateDer::pem_slice_iter(c)
                .collect::<Result<Vec<_>, _>>()
                .context("bad client certificate PEM")?;
            let key = PrivateKeyDer::from_pem_slice(k).context("bad client key PEM")?;
            builder
                .with_client_auth_cert(certs, key)
                .context("client certificate")
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `insecure-skip-tls-verify: true`: signatures are still checked, the chain is not.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the API said, kept between API refreshes and added to every snapshot.
#[derive(Debug, Clone, Default)]
pub struct ApiData {
    pub pods: Vec<PodMeta>,
    pub services: Vec<ServiceMeta>,
    /// (address, namespace, service) from EndpointSlices / Endpoints.
    pub endpoints: Vec<(IpAddr, String, String)>,
}

impl ApiData {
    /// Add the pods of a `/api/v1/pods` list (JSON), leaving out those that ended. A body
    /// that is not such a list adds nothing and is an error.
    pub fn add_pods(&mut self, body: &[u8], naming: &Naming) -> anyhow::Result<()> {
        let pods: List<Pod> = serde_json::from_slice(body).context("bad JSON")?;
        for p in pods.items {
            if matches!(p.status.phase.as_str(), "Succeeded" | "Failed") {
                continue;
            }
            let mut ips: Vec<IpAddr> = p
                .status
                .pod_ips
                .iter()
                .filter_map(|i| i.ip.parse().ok())
                .collect();
            if let Ok(ip) = p.status.pod_ip.parse::<IpAddr>() {
                if !ips.contains(&ip) {
                    ips.insert(0, ip);
                }
            }
            let owner = p
                .metadata
                .owner_references
                .iter()
                .find(|o| o.controller.unwrap_or(false))
                .or(p.metadata.owner_references.first())
                .map(|o| (o.kind.clone(), o.name.clone()));
            let local = naming
                .node_name
                .as_deref()
                .is_some_and(|n| n == p.spec.node_name);
            self.pods.push(PodMeta {
                uid: p.metadata.uid,
                name: p.metadata.name,
                namespace: p.metadata.namespace,
                labels: p.metadata.labels,
                ips,
                host_network: p.spec.host_network,
                owner,
                local,
            });
        }
        Ok(())
    }

    /// Add the Services of a `/api/v1/services` list (JSON).
    pub fn add_services(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let services: List<Service> = serde_json::from_slice(body).context("bad JSON")?;
        for s in services.items {
            let mut ips: Vec<IpAddr> = s
                .spec
                .cluster_ips
                .iter()
                .filter_map(|i| i.parse().ok())
                .collect();
            if let Ok(ip) = s.spec.cluster_ip.parse::<IpAddr>() {
                if !ips.contains(&ip) {
                    ips.insert(0, ip);
                }
            }
            self.services.push(ServiceMeta {
                name: s.metadata.name,
                namespace: s.metadata.namespace,
                cluster_ips: ips,
                selector: s.spec.selector.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Add the addresses of a `discovery.k8s.io/v1` EndpointSlice list (JSON).
    pub fn add_endpoint_slices(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let slices: List<EndpointSlice> = serde_json::from_slice(body).context("bad JSON")?;
        for sl in slices.items {
            let Some(svc) = sl.metadata.labels.get("kubernetes.io/service-name") else {
                continue;
            };
            for ep in &sl.endpoints {
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse() {
                        self.endpoints
                            .push((ip, sl.metadata.namespace.clone(), svc.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Add the addresses of a `/api/v1/endpoints` list (JSON), ready or not.
    pub fn add_endpoints(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let eps: List<Endpoints> = serde_json::from_slice(body).context("bad JSON")?;
        for e in eps.items {
            for ss in &e.subsets {
                for a in ss.addresses.iter().chain(&ss.not_ready_addresses) {
                    if let Ok(ip) = a.ip.parse() {
                        self.endpoints.push((
                            ip,
                            e.metadata.namespace.clone(),
                            e.metadata.name.clone(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn apply(&self, b: &mut SnapshotBuilder) {
        for p in &self.pods {
            b.add_pod(p.clone());
        }
        for s in &self.services {
            b.add_service(s.clone());
        }
        for (ip, ns, svc) in &self.endpoints {
            b.add_endpoint(*ip, ns, svc);
        }
    }
}

// --- API objects (only the fields used; unknown ones are ignored) ---

#[derive(Debug, Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ObjectMeta {
    name: String,
    namespace: String,
    uid: String,
    labels: BTreeMap<String, String>,
    owner_references: Vec<OwnerRef>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct OwnerRef {
    kind: String,
    name: String,
    controller: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Pod {
    metadata: ObjectMeta,
    spec: PodSpec,
    status: PodStatus,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodSpec {
    node_name: String,
    host_network: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodStatus {
    phase: String,
    #[serde(rename = "podIP")]
    pod_ip: String,
    #[serde(rename = "podIPs")]
    pod_ips: Vec<PodIp>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct PodIp {
    ip: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Service {
    metadata: ObjectMeta,
    spec: ServiceSpec,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: String,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Vec<String>,
    selector: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct EndpointSlice {
    metadata: ObjectMeta,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct SliceEndpoint {
    addresses: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Endpoints {
    metadata: ObjectMeta,
    subsets: Vec<Subset>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Subset {
    addresses: Vec<PodIp>,
    not_ready_addresses: Vec<PodIp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_with_token_file_and_ca_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("token"), "abc\n").unwrap();
        std::fs::write(d.path().join("ca.crt"), "not used for http").unwrap();
        let kc = d.path().join("config");
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\ncurrent-context: b\ncontexts:\n- name: a\n  context: {cluster: x, user: x}\n- name: b\n  context:\n    cluster: c1\n    user: u1\nclusters:\n- name: c1\n  cluster:\n    server: http://127.0.0.1:6443\n    certificate-authority: ca.crt\nusers:\n- name: u1\n  user:\n    token-file: token\n",
        )
        .unwrap();
        let c = ApiClient::from_settings(&ApiSettings {
            kubeconfig: Some(kc),
            ..ApiSettings::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.scheme_https),
            ("127.0.0.1", 6443, false)
        );
        assert!(matches!(&c.auth, Auth::TokenFile(p) if p.ends_with("token")));
        assert!(!format!("{c:?}").contains("abc"));
    }

    #[test]
    fn nothing_configured_is_none_and_bad_urls_fail() {
        assert!(ApiClient::from_settings(&ApiSettings::default())
            .unwrap()
            .is_none());
        let bad = ApiSettings {
            api_server: Some("ftp://x".into()),
            ..ApiSettings::default()
        };
        assert!(ApiClient::from_settings(&bad).is_err());
        // https needs a CA (or an explicit insecure flag from a kubeconfig).
        let tls = ApiSettings {
            api_server: Some("https://127.0.0.1:6443".into()),
            ..ApiSettings::default()
        };
        assert!(ApiClient::from_settings(&tls).is_err());
        let v6 = ApiSettings {
            api_server: Some("http://[fd00::1]:8080".into()),
            ..ApiSettings::default()
        };
        let c = ApiClient::from_settings(&v6).unwrap().unwrap();
        assert_eq!((c.host.as_str(), c.port), ("fd00::1", 8080));
    }

    #[test]
    fn decodes_api_objects() {
        let pods: List<Pod> = serde_json::from_str(
            r#"{"kind":"PodList","items":[{"metadata":{"name":"cart-0","namespace":"shop","uid":"u1","labels":{"app":"cart"},
            "ownerReferences":[{"kind":"StatefulSet","name":"cart","controller":true}]},
            "spec":{"nodeName":"n1","containers":[{"name":"cart"}]},
            "status":{"phase":"Running","podIP":"198.18.7.12","podIPs":[{"ip":"198.18.7.12"}]}}]}"#,
        )
        .unwrap();
        let p = &pods.items[0];
        assert_eq!(
            (p.metadata.name.as_str(), p.status.pod_ip.as_str()),
            ("cart-0", "198.18.7.12")
        );
        assert_eq!(p.metadata.owner_references[0].kind, "StatefulSet");
        let svc: List<Service> = serde_json::from_str(
            r#"{"items":[{"metadata":{"name":"cart","namespace":"shop"},"spec":{"clusterIP":"198.19.7.10","clusterIPs":["198.19.7.10"],"selector":{"app":"cart"}}},
                         {"metadata":{"name":"ext","namespace":"shop"},"spec":{"type":"ExternalName","externalName":"x.example"}}]}"#,
        )
        .unwrap();
        assert_eq!(svc.items[0].spec.cluster_ip, "198.19.7.10");
        assert!(svc.items[1].spec.selector.is_none());
    }
}
