//! The OAP sink: records to Apache SkyWalking OAP over its eBPF access-log protocol
//! (`/skywalking.v3.EBPFAccessLogService/collect`, one client stream per batch).
//!
//! The capture thread only collects records and, every batch (by count or period), maps
//! them to messages (`mapping`, pure) and hands the batch to a delivery thread through a
//! bounded queue; when that queue is full the batch goes to the on-disk spool at once, so
//! a slow or dead OAP never blocks capture. The delivery thread runs a small tokio
//! runtime and one state machine: `Connected` (send queued batches, oldest spooled ones
//! first) or `Disconnected` (spool everything, retry after a capped exponential backoff,
//! trying every configured address in turn). At the end, what can be delivered within
//! the flush timeout is, and the rest stays in the spool for the next run.

pub mod mapping;
pub mod spool;

/// Generated from `proto/skywalking_*.proto` (package `skywalking.v3`).
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("skywalking.v3");
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

pub use self::mapping::NodeConfig;
use self::mapping::{Mapper, NetInterface};
use self::pb::ebpf_access_log_service_client::EbpfAccessLogServiceClient as Client;
use self::pb::EbpfAccessLogMessage;
use self::spool::{Pushed, Spool};
use super::Sink;
use crate::model::Record;

type Batch = Vec<EbpfAccessLogMessage>;

/// Bytes of batches kept in memory when the spool directory cannot be used.
pub const MEMORY_SPOOL_MAX: u64 = 32 << 20;

/// Largest `--oap-batch-size`: keeps every batch far below what one spool file may hold
/// (`spool::MAX_FILE_MESSAGES`).
pub const MAX_BATCH_SIZE: usize = 100_000;

/// Resolve an OAP address (`host:port`, `[v6]:port`) to socket addresses: /etc/hosts,
/// then DNS, without the C library's resolver (the static binary has none that works).
pub fn resolve(host_port: &str) -> anyhow::Result<Vec<SocketAddr>> {
    crate::netaddr::resolve(host_port)
}

/// The host part of `host:port` (the TLS server name).
pub fn host_of(host_port: &str) -> &str {
    let h = match host_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    };
    h.trim_start_matches('[').trim_end_matches(']')
}

/// TLS to the OAP.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub ca_pem: Vec<u8>,
    /// Client certificate and key (PEM), for OAPs that ask for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Everything the sink needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct OapConfig {
    pub addresses: Vec<String>,
    pub tls: Option<TlsSettings>,
    /// Sent as the `authentication` metadata on every call.
    pub token: Option<String>,
    /// Records per batch (one stream each).
    pub batch_size: usize,
    /// A batch is sent at least this often.
    pub batch_period: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub node: NodeConfig,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How long the end of a run may spend delivering what is left.
    pub flush_timeout: Duration,
    /// Seconds between progress lines on stderr (0: none).
    pub log_every: Duration,
}

/// Delivery counters, shared by the capture and delivery threads.
#[derive(Debug, Default)]
pub struct OapCounters {
    pub records: AtomicU64,
    pub messages_mapped: AtomicU64,
    pub batches_mapped: AtomicU64,
    pub messages_sent: AtomicU64,
    pub batches_sent: AtomicU64,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub send_failures: AtomicU64,
    pub spooled_batches: AtomicU64,
    pub spooled_messages: AtomicU64,
    pub spool_delivered_batches: AtomicU64,
    pub spool_delivered_messages: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub dropped_messages: AtomicU64,
    pub spool_corrupt_files: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_peak_bytes: AtomicU64,
    pub spool_waiting_messages: AtomicU64,
    /// 1 when the spool directory could not be used and batches wait in memory only.
    pub spool_memory_only: AtomicU64,
    pub excluded_views: AtomicU64,
    pub exchanges_without_protocol_log: AtomicU64,
}

/// A snapshot of [`OapCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OapStats {
    pub records: u64,
    pub messages_mapped: u64,
    pub batches_mapped: u64,
    pub messages_sent: u64,
    pub batches_sent: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub send_failures: u64,
    pub spooled_batches: u64,
    pub spooled_messages: u64,
    pub spool_delivered_batches: u64,
    pub spool_delivered_messages: u64,
    pub dropped_batches: u64,
    pub dropped_messages: u64,
    pub spool_corrupt_files: u64,
    pub spool_bytes: u64,
    pub spool_peak_bytes: u64,
    pub spool_waiting_messages: u64,
    pub spool_memory_only: u64,
    pub excluded_views: u64,
    pub exchanges_without_protocol_log: u64,
}

impl OapCounters {
    pub fn snapshot(&self) -> OapStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OapStats {
            records: g(&self.records),
            messages_mapped: g(&self.messages_mapped),
            batches_mapped: g(&self.batches_mapped),
            messages_sent: g(&self.messages_sent),
            batches_sent: g(&self.batches_sent),
            connects: g(&self.connects),
            reconnects: g(&self.reconnects),
            connect_failures: g(&self.connect_failures),
            send_failures: g(&self.send_failures),
            spooled_batches: g(&self.spooled_batches),
            spooled_messages: g(&self.spooled_messages),
            spool_delivered_batches: g(&self.spool_delivered_batches),
            spool_delivered_messages: g(&self.spool_delivered_messages),
            dropped_batches: g(&self.dropped_batches),
            dropped_messages: g(&self.dropped_messages),
            spool_corrupt_files: g(&self.spool_corrupt_files),
            spool_bytes: g(&self.spool_bytes),
            spool_peak_bytes: g(&self.spool_peak_bytes),
            spool_waiting_messages: g(&self.spool_waiting_messages),
            spool_memory_only: g(&self.spool_memory_only),
            excluded_views: g(&self.excluded_views),
            exchanges_without_protocol_log: g(&self.exchanges_without_protocol_log),
        }
    }
}

impl OapStats {
    /// `name=value` pairs, one space apart (for scripts and log search).
    pub fn kv(&self) -> String {
        let f = [
            ("records", self.records),
            ("messages_mapped", self.messages_mapped),
            ("batches_mapped", self.batches_mapped),
            ("messages_sent", self.messages_sent),
            ("batches_sent", self.batches_sent),
            ("connects", self.connects),
            ("reconnects", self.reconnects),
            ("connect_failures", self.connect_failures),
            ("send_failures", self.send_failures),
            ("spooled_batches", self.spooled_batches),
            ("spooled_messages", self.spooled_messages),
            ("spool_delivered_batches", self.spool_delivered_batches),
            ("spool_delivered_messages", self.spool_delivered_messages),
            ("dropped_batches", self.dropped_batches),
            ("dropped_messages", self.dropped_messages),
            ("spool_corrupt_files", self.spool_corrupt_files),
            ("spool_bytes", self.spool_bytes),
            ("spool_peak_bytes", self.spool_peak_bytes),
            ("spool_waiting_messages", self.spool_waiting_messages),
            ("spool_memory_only", self.spool_memory_only),
            ("excluded_views", self.excluded_views),
            (
                "exchanges_without_protocol_log",
                self.exchanges_without_protocol_log,
            ),
        ];
        f.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl std::fmt::Display for OapStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (where_, why_dropped) = if self.spool_memory_only > 0 {
            (
                " IN MEMORY ONLY (the spool directory was unusable)",
                "spool full, or in memory at exit",
            )
        } else {
            ("", "spool full")
        };
        write!(
            f,
            "{} records -> {} messages in {} batches; sent {} messages in {} batches \
             ({} from the spool); {} connects, {} reconnects, {} failed connects, {} failed sends; \
             spooled{where_} {} messages in {} batches (now {} messages, {} bytes; peak {} bytes); \
             dropped {} messages in {} batches ({why_dropped}); {} damaged spool files; \
             {} views excluded, {} exchanges without protocol log",
            self.records,
            self.messages_mapped,
            self.batches_mapped,
            self.messages_sent,
            self.batches_sent,
            self.spool_delivered_messages,
            self.connects,
            self.reconnects,
            self.connect_failures,
            self.send_failures,
            self.spooled_messages,
            self.spooled_batches,
            self.spool_waiting_messages,
            self.spool_bytes,
            self.spool_peak_bytes,
            self.dropped_messages,
            self.dropped_batches,
            self.spool_corrupt_files,
            self.excluded_views,
            self.exchanges_without_protocol_log,
        )
    }
}

struct Shared {
    counters: OapCounters,
    spool: Mutex<Spool>,
    /// A spool-full episode is logged once, when it starts.
    spool_full_logged: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn update_spool_gauges(&self, s: &Spool) {
        let c = &self.counters;
        c.spool_bytes.store(s.bytes(), Ordering::Relaxed);
        c.spool_peak_bytes.store(s.peak_bytes, Ordering::Relaxed);
        c.spool_waiting_messages
            .store(s.messages(), Ordering::Relaxed);
        c.spool_corrupt_files
            .store(s.corrupt_files, Ordering::Relaxed);
    }

    /// Into the spool, or dropped and counted when it is full (or cannot be written).
    fn spool_or_drop(&self, batch: &Batch) {
        let c = &self.counters;
        let n = batch.len() as u64;
        let mut s = match self.spool.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        match s.push(batch) {
            Ok(Pushed::Spooled) => {
                c.spooled_batches.fetch_add(1, Ordering::Relaxed);
                c.spooled_messages.fetch_add(n, Ordering::Relaxed);
                self.spool_full_logged.store(false, Ordering::Relaxed);
            }
            Ok(Pushed::Full) => {
                c.dropped_batches.fetch_add(1, Ordering::Relaxed);
                c.dropped_messages.fetch_add(n, Ordering::Relaxed);
                if !self.spool_full_logged.swap(true, Ordering::Relaxed) {
                    let place = if s.is_memory() {
                        "memory".to_string()
                    } else {
                        s.dir().display().to_string()
                    };
                    tracing::warn!(
                        "oap: spool full ({} of {} bytes in {place}): dropping batches until it drains (counted)",
                        s.bytes(),
                        s.max_bytes(),
                    );
                }
            }
            Err(e) => {
                c.dropped_batches.fetch_add(1, Ordering::Relaxed);
                c.dropped_messages.fetch_add(n, Ordering::Relaxed);
                tracing::warn!("oap: cannot spool a batch of {n} messages (dropped): {e}");
            }
        }
        self.update_spool_gauges(&s);
    }
}

/// Records to the OAP; see the module documentation.
pub struct OapSink {
    mapper: Mapper,
    pending: Vec<Record>,
    batch_size: usize,
    batch_period: Duration,
    last_cut: Instant,
    tx: Option<mpsc::Sender<Batch>>,
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// Wait for room in the queue instead of spooling (replay: the producer can wait).
    backpressure: bool,
}

/// A handle to read the counters after the sink has been moved into a `Fanout`.
#[derive(Clone)]
pub struct OapStatsHandle(Arc<Shared>);

impl OapStatsHandle {
    pub fn snapshot(&self) -> OapStats {
        self.0.counters.snapshot()
    }
}

/// This node's network interfaces (index, MTU, name) from /sys/class/net.
pub fn net_interfaces() -> Vec<NetInterface> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return v;
    };
    for e in rd.flatten() {
        let p = e.path();
        let num = |f: &str| -> Option<i32> {
            std::fs::read_to_string(p.join(f)).ok()?.trim().parse().ok()
        };
        if let (Some(index), Some(mtu)) = (num("ifindex"), num("mtu")) {
            v.push(NetInterface {
                index,
                mtu,
                name: e.file_name().to_string_lossy().into_owned(),
            });
        }
    }
    v.sort_by_key(|i| i.index);
    v
}

/// `1048576`, `64K`, `256M`, `1G` (powers of 1024) to bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{s:?}: unknown unit (K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 256M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl OapSink {
    /// Open the spool and start the delivery thread. A spool directory that cannot be
    /// used (read-only file system, not ours, locked, ...) is not fatal: batches then
    /// wait in memory, within `MEMORY_SPOOL_MAX`, and this is said loudly once and in
    /// the counters (`spool_memory_only`).
    pub fn start(cfg: OapConfig) -> anyhow::Result<Self> {
        let (spool, memory_only) = match Spool::open(&cfg.spool_dir, cfg.spool_max_bytes) {
            Ok(s) => (s, false),
            Err(e) => {
                let max = cfg.spool_max_bytes.min(MEMORY_SPOOL_MAX);
                tracing::warn!(
                    "oap: NO SPOOL ON DISK: {e}; batches wait in memory only while the OAP is away \
                     (at most {max} bytes; what is not delivered by exit is lost). Give a writable \
                     --oap-spool-dir (in Kubernetes, a volume mounted there) to keep them across restarts"
                );
                (Spool::in_memory(&cfg.spool_dir, max), true)
            }
        };
        if !spool.is_empty() {
            tracing::info!(
                "oap: {} batches ({} messages, {} bytes) waiting in {} from an earlier run; they go first",
                spool.batches(),
                spool.messages(),
                spool.bytes(),
                spool.dir().display()
            );
        }
        let shared = Arc::new(Shared {
            counters: OapCounters::default(),
            spool: Mutex::new(spool),
            spool_full_logged: false.into(),
        });
        shared
            .counters
            .spool_memory_only
            .store(u64::from(memory_only), Ordering::Relaxed);
        if let Ok(s) = shared.spool.lock() {
            shared.update_spool_gauges(&s);
        }
        let (tx, rx) = mpsc::channel::<Batch>(16);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the OAP delivery runtime")?;
        let sh = Arc::clone(&shared);
        let mapper = Mapper::new(cfg.node.clone());
        let (batch_size, batch_period) = (cfg.batch_size, cfg.batch_period);
        let worker = std::thread::Builder::new()
            .name("oap-delivery".into())
            .spawn(move || rt.block_on(Delivery::new(cfg, sh).run(rx)))
            .context("starting the OAP delivery thread")?;
        Ok(Self {
            mapper,
            pending: Vec::new(),
            batch_size,
            batch_period,
            last_cut: Instant::now(),
            tx: Some(tx),
            shared,
            worker: Some(worker),
            backpressure: false,
        })
    }

    /// When on, a full queue makes `write` wait for the delivery thread (which spools
    /// itself while the OAP is away) instead of spooling at once: for replays, where
    /// nothing is lost by waiting. Live capture leaves it off.
    pub fn set_backpressure(&mut self, on: bool) {
        self.backpressure = on;
    }

    pub fn stats_handle(&self) -> OapStatsHandle {
        OapStatsHandle(Arc::clone(&self.shared))
    }

    pub fn stats(&self) -> OapStats {
        self.shared.counters.snapshot()
    }

    /// Map what is pending into one batch and queue it (or spool it if the queue is full).
    fn cut(&mut self) {
        self.last_cut = Instant::now();
        if self.pending.is_empty() {
            return;
        }
        let batch = self.mapper.batch(&self.pending);
        self.pending.clear();
        let c = &self.shared.counters;
        let after = self.mapper.counters;
        c.excluded_views
            .store(after.excluded_views, Ordering::Relaxed);
        c.exchanges_without_protocol_log
            .store(after.exchanges_without_protocol_log, Ordering::Relaxed);
        if batch.is_empty() {
            return;
        }
        c.batches_mapped.fetch_add(1, Ordering::Relaxed);
        c.messages_mapped
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let Some(tx) = &self.tx else {
            self.shared.spool_or_drop(&batch);
            return;
        };
        if self.backpressure {
            if let Err(mpsc::error::SendError(b)) = tx.blocking_send(batch) {
                self.shared.spool_or_drop(&b);
            }
            return;
        }
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                self.shared.spool_or_drop(&b)
            }
        }
    }

    /// Send what is pending, then give the delivery thread up to the flush timeout to
    /// deliver (what it cannot stays spooled); returns the final counters.
    pub fn finish(&mut self) -> OapStats {
        self.cut();
        self.tx = None;
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                tracing::error!("oap: the delivery thread panicked");
            }
        }
        self.stats()
    }
}

impl Drop for OapSink {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.finish();
        }
    }
}

impl Sink for OapSink {
    fn write(&mut self, rec: &Record) -> anyhow::Result<()> {
        self.shared.counters.records.fetch_add(1, Ordering::Relaxed);
        if matches!(rec, Record::Stats(_)) && self.mapper.boot_epoch_ns().is_some() {
            // Statistics have no message; only needed to learn the boot time.
            return Ok(());
        }
        self.pending.push(rec.clone());
        if self.pending.len() >= self.batch_size {
            self.cut();
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.last_cut.elapsed() >= self.batch_period {
            self.cut();
        }
        Ok(())
    }
}

/// The link to the OAP.
enum Link {
    Connected {
        client: Client<tonic::transport::Channel>,
        addr: String,
    },
    Disconnected {
        backoff: Duration,
        retry_at: tokio::time::Instant,
    },
}

struct Delivery {
    cfg: OapConfig,
    shared: Arc<Shared>,
    link: Link,
    ever_connected: bool,
    /// Next address to try first.
    next_addr: usize,
    /// The current outage was logged.
    outage_logged: bool,
}

/// Between half and all of `d`, so that many nodes do not reconnect in step after an
/// OAP outage.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl Delivery {
    fn new(cfg: OapConfig, shared: Arc<Shared>) -> Self {
        Self {
            link: Link::Disconnected {
                backoff: cfg.backoff_initial,
                retry_at: tokio::time::Instant::now(),
            },
            cfg,
            shared,
            ever_connected: false,
            next_addr: 0,
            outage_logged: false,
        }
    }

    async fn connect_one(&self, addr: &str) -> anyhow::Result<Client<tonic::transport::Channel>> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let host = host_of(addr).to_string();
        let a = addr.to_string();
        let addrs = tokio::task::spawn_blocking(move || resolve(&a))
            .await
            .context("resolver task")?
            .with_context(|| format!("cannot resolve {addr}"))?;
        let mut last = anyhow::anyhow!("{addr} resolves to no address");
        for sa in addrs {
            let scheme = if self.cfg.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let mut ep = Endpoint::from_shared(format!("{scheme}://{sa}"))
                .context("OAP endpoint")?
                .connect_timeout(self.cfg.connect_timeout)
                .timeout(self.cfg.request_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
            if let Some(t) = &self.cfg.tls {
                let mut tc = ClientTlsConfig::new()
                    .domain_name(host.clone())
                    .ca_certificate(Certificate::from_pem(&t.ca_pem));
                if let Some((cert, key)) = &t.identity {
                    tc = tc.identity(Identity::from_pem(cert, key));
                }
                ep = ep.tls_config(tc).context("TLS settings for the OAP")?;
            }
            match ep.connect().await {
                Ok(ch) => {
                    return Ok(Client::new(ch).max_decoding_message_size(50 << 20));
                }
                Err(e) => last = anyhow::Error::new(e).context(format!("{addr} ({sa})")),
            }
        }
        Err(last)
    }

    /// One round over every address; Connected, or Disconnected with a longer backoff.
    async fn try_connect(&mut self) {
        let n = self.cfg.addresses.len();
        let mut errors = Vec::new();
        for i in 0..n {
            let addr = self.cfg.addresses[(self.next_addr + i) % n].clone();
            match self.connect_one(&addr).await {
                Ok(client) => {
                    add(&self.shared.counters.connects, 1);
                    if self.ever_connected {
                        add(&self.shared.counters.reconnects, 1);
                    }
                    self.ever_connected = true;
                    self.outage_logged = false;
                    self.next_addr = (self.next_addr + i) % n;
                    tracing::info!("oap: connected to {addr}");
                    self.link = Link::Connected { client, addr };
                    return;
                }
                Err(e) => {
                    add(&self.shared.counters.connect_failures, 1);
                    errors.push(format!("{e:#}"));
                }
            }
        }
        let backoff = match &self.link {
            Link::Disconnected { backoff, .. } => *backoff,
            Link::Connected { .. } => self.cfg.backoff_initial,
        };
        if !self.outage_logged {
            self.outage_logged = true;
            let place = if self
                .shared
                .counters
                .spool_memory_only
                .load(Ordering::Relaxed)
                > 0
            {
                "memory".to_string()
            } else {
                self.cfg.spool_dir.display().to_string()
            };
            tracing::warn!(
                "oap: unreachable ({}); spooling to {place}, retrying with backoff up to {:?}",
                errors.join("; "),
                self.cfg.backoff_max
            );
        } else {
            tracing::debug!("oap: still unreachable: {}", errors.join("; "));
        }
        self.link = Link::Disconnected {
            backoff: (backoff * 2).min(self.cfg.backoff_max),
            retry_at: tokio::time::Instant::now() + jitter(backoff),
        };
    }

    fn disconnect(&mut self, why: &str) {
        if let Link::Connected { addr, .. } = &self.link {
            tracing::warn!("oap: lost {addr}: {why}; spooling until it is back");
            self.outage_logged = true;
        }
        self.next_addr = (self.next_addr + 1) % self.cfg.addresses.len().max(1);
        self.link = Link::Disconnected {
            backoff: self.cfg.backoff_initial,
            retry_at: tokio::time::Instant::now() + self.cfg.backoff_initial,
        };
    }

    /// One `collect` stream with this batch; Err on any failure.
    async fn send(
        &mut self,
        batch: &Batch,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), String> {
        let Link::Connected { client, .. } = &mut self.link else {
            return Err("not connected".into());
        };
        let mut req = tonic::Request::new(tokio_stream::iter(batch.clone()));
        if let Some(t) = &self.cfg.token {
            let v = t
                .parse()
                .map_err(|_| "the authentication token is not a valid header value".to_string())?;
            req.metadata_mut().insert("authentication", v);
        }
        let fut = client.collect(req);
        let res = match deadline {
            Some(d) => match tokio::time::timeout_at(d, fut).await {
                Ok(r) => r,
                Err(_) => return Err("flush timeout".into()),
            },
            None => fut.await,
        };
        match res {
            Ok(_) => {
                add(&self.shared.counters.batches_sent, 1);
                add(&self.shared.counters.messages_sent, batch.len() as u64);
                Ok(())
            }
            Err(s) => {
                add(&self.shared.counters.send_failures, 1);
                Err(format!("{}: {}", s.code(), s.message()))
            }
        }
    }

    fn connected(&self) -> bool {
        matches!(self.link, Link::Connected { .. })
    }

    /// Deliver spooled batches, oldest first, while connected (and before `deadline`).
    async fn drain_spool(&mut self, deadline: Option<tokio::time::Instant>) {
        let mut delivered = (0u64, 0u64);
        while self.connected() && deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
            let front = {
                let mut s = match self.shared.spool.lock() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                let f = s.front();
                self.shared.update_spool_gauges(&s);
                f
            };
            let batch = match front {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!("oap: {e}");
                    continue;
                }
                Some(Ok(b)) => b,
            };
            match self.send(&batch, deadline).await {
                Ok(()) => {
                    let mut s = match self.shared.spool.lock() {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    };
                    s.pop();
                    self.shared.update_spool_gauges(&s);
                    delivered.0 += 1;
                    delivered.1 += batch.len() as u64;
                    add(&self.shared.counters.spool_delivered_batches, 1);
                    add(
                        &self.shared.counters.spool_delivered_messages,
                        batch.len() as u64,
                    );
                }
                Err(e) => {
                    self.disconnect(&e);
                    break;
                }
            }
        }
        if delivered.0 > 0 {
            let left = self
                .shared
                .counters
                .spool_waiting_messages
                .load(Ordering::Relaxed);
            tracing::info!(
                "oap: delivered {} spooled batches ({} messages); {} messages still spooled",
                delivered.0,
                delivered.1,
                left
            );
        }
    }

    async fn deliver(&mut self, batch: Batch, deadline: Option<tokio::time::Instant>) {
        if self.connected() {
            match self.send(&batch, deadline).await {
                Ok(()) => return,
                Err(e) => self.disconnect(&e),
            }
        }
        self.shared.spool_or_drop(&batch);
    }

    fn log_progress(&self) {
        tracing::info!("oap: {}", self.shared.counters.snapshot());
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Batch>) {
        let mut next_log = (!self.cfg.log_every.is_zero())
            .then(|| tokio::time::Instant::now() + self.cfg.log_every);
        // Running: until the sink closes the queue.
        loop {
            if let Link::Disconnected { retry_at, .. } = self.link {
                if tokio::time::Instant::now() >= retry_at {
                    self.try_connect().await;
                }
            }
            self.drain_spool(None).await;
            let wake = match self.link {
                Link::Disconnected { retry_at, .. } => retry_at,
                Link::Connected { .. } => tokio::time::Instant::now() + Duration::from_secs(1),
            };
            let wake = next_log.map_or(wake, |l| l.min(wake));
            tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => self.deliver(b, None).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            if let Some(l) = next_log {
                if tokio::time::Instant::now() >= l {
                    self.log_progress();
                    next_log = Some(l + self.cfg.log_every);
                }
            }
        }
        // Closing: one more try if the OAP is away, then deliver what is left within the
        // flush timeout; what is not delivered stays in the spool.
        let deadline = tokio::time::Instant::now() + self.cfg.flush_timeout;
        if !self.connected()
            && tokio::time::timeout_at(deadline, self.try_connect())
                .await
                .is_err()
        {
            tracing::warn!("oap: no connection within the flush timeout");
        }
        self.drain_spool(Some(deadline)).await;
        while let Ok(b) = rx.try_recv() {
            if tokio::time::Instant::now() < deadline {
                self.deliver(b, Some(deadline)).await;
            } else {
                self.shared.spool_or_drop(&b);
            }
        }
        let s = self.shared.counters.snapshot();
        if s.spool_waiting_messages > 0 && s.spool_memory_only > 0 {
            // Nothing outlives the process: what waits in memory is dropped, and counted so.
            let mut sp = match self.shared.spool.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            let c = &self.shared.counters;
            add(&c.dropped_batches, sp.batches() as u64);
            add(&c.dropped_messages, sp.messages());
            while !sp.is_empty() {
                sp.pop();
            }
            self.shared.update_spool_gauges(&sp);
            tracing::warn!(
                "oap: {} messages ({} bytes) waiting in memory are lost (no spool on disk)",
                s.spool_waiting_messages,
                s.spool_bytes
            );
        } else if s.spool_waiting_messages > 0 {
            tracing::warn!(
                "oap: {} messages ({} bytes) left in the spool {}; the next run delivers them",
                s.spool_waiting_messages,
                s.spool_bytes,
                self.cfg.spool_dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_for_tls() {
        assert_eq!(host_of("oap.skywalking:11800"), "oap.skywalking");
        assert_eq!(host_of("[::1]:11800"), "::1");
        assert_eq!(host_of("10.0.0.1:11800"), "10.0.0.1");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn resolves_literal_addresses() {
        assert_eq!(
            resolve("127.0.0.1:11800").unwrap(),
            vec!["127.0.0.1:11800".parse::<SocketAddr>().unwrap()]
        );
    }
}
