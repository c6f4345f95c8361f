//! CRI `runtime.v1` client over the runtime's unix socket (containerd, CRI-O): pods with
//! their labels and IPs, containers with their names. The messages are the subset in
//! `proto/cri.proto`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::meta::{ContainerMeta, PodMeta, SnapshotBuilder};

/// Generated CRI types and the RuntimeService client (and server, for tests).
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("runtime.v1");
}

pub use pb::runtime_service_client::RuntimeServiceClient;

/// A gRPC channel to the CRI socket at `path`. Every call is bounded by `timeout`.
pub async fn connect(path: &Path, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://cri.sock")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
}

/// What one CRI refresh found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CriCounts {
    pub pods: usize,
    pub containers: usize,
}

/// Add every pod sandbox and container the runtime knows to `b`.
pub async fn fill(
    client: &mut RuntimeServiceClient<Channel>,
    b: &mut SnapshotBuilder,
) -> Result<CriCounts, tonic::Status> {
    let mut counts = CriCounts::default();
    let sandboxes = client
        .list_pod_sandbox(pb::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let mut uid_of_sandbox = HashMap::new();
    for sb in &sandboxes {
        let Some(md) = &sb.metadata else { continue };
        uid_of_sandbox.insert(sb.id.clone(), md.uid.clone());
        let ready = sb.state == pb::PodSandboxState::SandboxReady as i32;
        let mut pod = PodMeta {
            uid: md.uid.clone(),
            name: md.name.clone(),
            namespace: md.namespace.clone(),
            labels: sb.labels.clone().into_iter().collect(),
            local: true,
            ..PodMeta::default()
        };
        // The IP only of live sandboxes: a stopped one's address may be reused already.
        if ready {
            let st = client
                .pod_sandbox_status(pb::PodSandboxStatusRequest {
                    pod_sandbox_id: sb.id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner();
            if let Some(st) = st.status {
                if let Some(net) = &st.network {
                    pod.ips = std::iter::once(net.ip.as_str())
                        .chain(net.additional_ips.iter().map(|p| p.ip.as_str()))
                        .filter_map(|s| s.parse::<IpAddr>().ok())
                        .collect();
                }
                let host_net = st
                    .linux
                    .as_ref()
                    .and_then(|l| l.namespaces.as_ref())
                    .and_then(|n| n.options.as_ref())
                    .is_some_and(|o| o.network == pb::NamespaceMode::Node as i32);
                pod.host_network = host_net;
            }
        }
        counts.pods += 1;
        b.add_pod(pod);
        b.add_container(
            &sb.id,
            ContainerMeta {
                pod_uid: md.uid.clone(),
                name: None,
                sandbox: true,
            },
        );
    }
    let containers = client
        .list_containers(pb::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    for c in containers {
        let uid = uid_of_sandbox
            .get(&c.pod_sandbox_id)
            .cloned()
            .or_else(|| c.labels.get("io.kubernetes.pod.uid").cloned());
        let Some(uid) = uid else { continue };
        let name = c
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .or_else(|| c.labels.get("io.kubernetes.container.name").cloned())
            .filter(|n| !n.is_empty());
        counts.containers += 1;
        b.add_container(
            &c.id,
            ContainerMeta {
                pod_uid: uid,
                name,
                sandbox: false,
            },
        );
    }
    Ok(counts)
}
