//! The stand-in OAP collector shared by the tests that push: a tonic server implementing
//! SkyWalking's `EBPFAccessLogService` from the project's own proto files (a real OAP, a
//! Java server with storage, cannot run here). It only records what it receives, stream by
//! stream, and answers as the OAP does; the readers below check the stream rules and pick
//! out what a test asserts on.

#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_alog::sink::oap::pb;
use pb::access_log_kernel_log::Operation as Op;
use pb::connection_address::Address;
use pb::ebpf_access_log_service_server::{EbpfAccessLogService, EbpfAccessLogServiceServer};
use pb::EbpfAccessLogMessage as Msg;
use prost::Message;

// ---------------------------------------------------------------------------------------
// The stand-in OAP collector.

/// One `collect` stream as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Stream {
    pub messages: Vec<Msg>,
    /// The `authentication` metadata of the call.
    pub token: Option<String>,
}

pub type Streams = Arc<Mutex<Vec<Stream>>>;

pub struct StandInService {
    streams: Streams,
}

#[tonic::async_trait]
impl EbpfAccessLogService for StandInService {
    async fn collect(
        &self,
        req: tonic::Request<tonic::Streaming<Msg>>,
    ) -> Result<tonic::Response<pb::EbpfAccessLogDownstream>, tonic::Status> {
        let token = req
            .metadata()
            .get("authentication")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut s = req.into_inner();
        let mut messages = Vec::new();
        while let Some(m) = s.message().await? {
            messages.push(m);
        }
        // Kept only once the whole stream arrived, as the reply says it was taken.
        self.streams
            .lock()
            .unwrap()
            .push(Stream { messages, token });
        Ok(tonic::Response::new(pb::EbpfAccessLogDownstream {}))
    }
}

/// The stand-in OAP collector: a tonic server on 127.0.0.1:port, in its own thread;
/// `stop` shuts it down gracefully (in-flight streams finish). What it received stays in
/// `streams`, which a restarted stand-in shares.
pub struct StandIn {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// TLS identity of the stand-in: (cert PEM, key PEM), and the client CA that it requires.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Vec<u8>,
}

impl StandIn {
    pub fn start(port: u16, streams: Streams, tls: Option<ServerTls>) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = (|| {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.set_reuseaddr(true)?;
                    sock.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
                    sock.listen(128)
                })();
                let listener = match listener {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let mut b = tonic::transport::Server::builder();
                if let Some(t) = tls {
                    b = b
                        .tls_config(
                            tonic::transport::ServerTlsConfig::new()
                                .identity(tonic::transport::Identity::from_pem(t.cert, t.key))
                                .client_ca_root(tonic::transport::Certificate::from_pem(
                                    t.client_ca,
                                )),
                        )
                        .unwrap();
                }
                let _ = ready_tx.send(Ok(()));
                let res = b
                    .add_service(EbpfAccessLogServiceServer::new(StandInService { streams }))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = rx.await;
                        },
                    )
                    .await;
                if let Err(e) = res {
                    eprintln!("stand-in OAP collector: {e}");
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stand-in started")
            .unwrap_or_else(|e| panic!("stand-in OAP collector cannot listen on {port}: {e}"));
        Self {
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------------------------------
// Reading what the stand-in received.

pub fn ts(t: &Option<pb::EbpfTimestamp>) -> u64 {
    match t.as_ref().and_then(|t| t.timestamp.as_ref()) {
        Some(pb::ebpf_timestamp::Timestamp::Offset(o)) => o.offset,
        None => 0,
    }
}

pub fn http(m: &Msg) -> Option<&pb::AccessLogHttpProtocol> {
    match m.protocol_log.as_ref()?.protocol.as_ref()? {
        pb::access_log_protocol_logs::Protocol::Http(h) => Some(h),
    }
}

pub fn k8s(a: &Option<pb::ConnectionAddress>) -> Option<&pb::KubernetesProcessAddress> {
    match a.as_ref()?.address.as_ref()? {
        Address::Kubernetes(k) => Some(k),
        Address::Ip(_) => None,
    }
}

pub fn port_of(a: &Option<pb::ConnectionAddress>) -> i32 {
    match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(Address::Kubernetes(k)) => k.port,
        Some(Address::Ip(i)) => i.port,
        None => -1,
    }
}

/// Every message with the connection in force for it (the last one seen in its stream),
/// after checking the stream rules: node on the first message and only there; connection
/// on the first message; one group per connection in a stream (contiguous).
pub fn with_connections(streams: &[Stream]) -> Vec<(pb::AccessLogConnection, Msg)> {
    let mut out = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        assert!(!s.messages.is_empty(), "stream {i} is empty");
        assert!(
            s.messages[0].node.is_some(),
            "stream {i}: no node on the first message"
        );
        assert!(
            s.messages[1..].iter().all(|m| m.node.is_none()),
            "stream {i}: node after the first message"
        );
        assert!(
            s.messages[0].connection.is_some(),
            "stream {i}: no connection on the first message"
        );
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut cur: Option<pb::AccessLogConnection> = None;
        for m in &s.messages {
            if let Some(c) = &m.connection {
                let key = c.encode_to_vec();
                assert!(
                    !seen.contains(&key),
                    "stream {i}: a connection's messages are not contiguous: {c:?}"
                );
                seen.push(key);
                cur = Some(c.clone());
            }
            out.push((cur.clone().unwrap(), m.clone()));
        }
    }
    out
}

/// The messages of the view of the connection with this client port, by role.
pub fn of_client_port(
    msgs: &[(pb::AccessLogConnection, Msg)],
    client_port: u16,
    role: pb::DetectPoint,
) -> Vec<&(pb::AccessLogConnection, Msg)> {
    msgs.iter()
        .filter(|(c, _)| {
            c.role == role as i32
                && match role {
                    pb::DetectPoint::Server => port_of(&c.remote) == i32::from(client_port),
                    _ => port_of(&c.local) == i32::from(client_port),
                }
        })
        .collect()
}

pub fn exchanges<'a>(
    msgs: &[&'a (pb::AccessLogConnection, Msg)],
) -> Vec<&'a pb::AccessLogHttpProtocol> {
    msgs.iter().filter_map(|(_, m)| http(m)).collect()
}

pub fn kernel_ops<'a>(msgs: &[&'a (pb::AccessLogConnection, Msg)]) -> Vec<&'a Op> {
    msgs.iter()
        .filter(|(_, m)| m.protocol_log.is_none())
        .flat_map(|(_, m)| m.kernel_logs.iter().filter_map(|l| l.operation.as_ref()))
        .collect()
}

pub fn snapshot(streams: &Streams) -> Vec<Stream> {
    streams.lock().unwrap().clone()
}

/// Wait until the stand-in holds a server-view exchange for every one of these client
/// ports (a generous bound: only a hang fails).
pub fn wait_delivered(streams: &Streams, ports: &[u16], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let msgs = with_connections(&snapshot(streams));
        let missing: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| exchanges(&of_client_port(&msgs, *p, pb::DetectPoint::Server)).is_empty())
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "exchanges of client ports {missing:?} did not arrive within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
