//! Command-line interface (clap derive only; the work is in `cmd/`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Who talks to whom on this Kubernetes node, and how fast: every TCP connection and
/// HTTP exchange, captured with eBPF.
#[derive(Debug, Parser)]
#[command(name = "k8s-alog", version, propagate_version = true)]
pub struct Cli {
    /// Log level for messages on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "K8S_ALOG_LOG", default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write one JSON object per access-log record (HTTP exchange, connection, statistics).
    #[command(after_help = RECORD_EXAMPLES)]
    Record(Box<RecordArgs>),
    /// Live dashboard: service topology, request rates, latency, errors, access-log tail.
    #[command(after_help = TOP_EXAMPLES)]
    Top(Box<TopArgs>),
    /// Stream access logs to Apache SkyWalking OAP (its eBPF access-log protocol).
    Push(Box<PushArgs>),
    /// What this node can do and why: kernel, BTF, program types, runtime, kubelet, API.
    Doctor(DoctorArgs),
}

const RECORD_EXAMPLES: &str = "\
Examples:
  sudo k8s-alog record --out access.jsonl          # until Ctrl-C
  sudo k8s-alog record --out - --port 8080 | jq .  # one port, to stdout
  sudo k8s-alog record --out f.jsonl --duration 60 --pid 4242

Exit codes: 0 done; 1 error; 2 bad usage; 3 not permitted (run as root, or grant
CAP_BPF and CAP_PERFMON); 4 kernel without BTF; 5 kernel refused a BPF program.";

/// What to capture, shared by every capturing subcommand.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Payload bytes copied per socket call for protocol parsing (max 8192).
    #[arg(long, env = "K8S_ALOG_CAPTURE_BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(0..=8192))]
    pub capture_bytes: u32,

    /// Ring-buffer size in MiB (a power of two).
    #[arg(long, env = "K8S_ALOG_RING_MB", default_value_t = 16)]
    pub ring_mb: u32,

    /// Only these processes (repeatable).
    #[arg(long = "pid", env = "K8S_ALOG_PIDS", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Only these cgroup v2 ids (repeatable; the inode number of the cgroup directory).
    #[arg(long = "cgroup", env = "K8S_ALOG_CGROUPS", value_delimiter = ',')]
    pub cgroups: Vec<u64>,

    /// Only connections with this port at either end (repeatable).
    #[arg(long = "port", env = "K8S_ALOG_PORTS", value_delimiter = ',')]
    pub ports: Vec<u16>,

    /// Keep query strings in paths (dropped by default: they often carry secrets).
    #[arg(long, env = "K8S_ALOG_KEEP_QUERY")]
    pub keep_query: bool,

    /// Most connections tracked at once; beyond it the least active are written out and counted.
    #[arg(long, env = "K8S_ALOG_MAX_CONNECTIONS", default_value_t = 262_144)]
    pub max_connections: usize,
}

/// Where Kubernetes metadata comes from. Whatever is present is used, best first: the
/// CRI socket, containerd's task bundles, the kubelet's pod directories, the API.
#[derive(Debug, Clone, Args)]
pub struct K8sArgs {
    /// Root of the host's filesystem (when running in a container with it mounted).
    #[arg(long, env = "K8S_ALOG_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,

    /// CRI socket of the container runtime (repeatable; default: probe containerd's and CRI-O's).
    #[arg(
        long = "cri-socket",
        env = "K8S_ALOG_CRI_SOCKETS",
        value_delimiter = ','
    )]
    pub cri_sockets: Vec<PathBuf>,

    /// containerd's task-bundle directory for the k8s.io namespace.
    #[arg(
        long,
        env = "K8S_ALOG_CONTAINERD_STATE",
        default_value = "/run/containerd/io.containerd.runtime.v2.task/k8s.io"
    )]
    pub containerd_state: PathBuf,

    /// The kubelet's pod log directory (`<namespace>_<pod>_<uid>/<container>/`).
    #[arg(
        long,
        env = "K8S_ALOG_KUBELET_PODS_DIR",
        default_value = "/var/log/pods"
    )]
    pub kubelet_pods_dir: PathBuf,

    /// kubeconfig for the optional Kubernetes API (in-cluster credentials are used when present).
    #[arg(long, env = "K8S_ALOG_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubernetes API server URL (overrides the kubeconfig's).
    #[arg(long, env = "K8S_ALOG_API_SERVER")]
    pub api_server: Option<String>,

    /// Cluster name: services are written `cluster::svc.ns`.
    #[arg(long, env = "K8S_ALOG_CLUSTER")]
    pub cluster: Option<String>,

    /// This node's name (default: the host name).
    #[arg(long, env = "K8S_ALOG_NODE_NAME")]
    pub node_name: Option<String>,

    /// No Kubernetes attribution: container ids only.
    #[arg(long, env = "K8S_ALOG_NO_K8S")]
    pub no_k8s: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Output file (JSON Lines, created with mode 0600); `-` for stdout.
    #[arg(long, short, env = "K8S_ALOG_OUT")]
    pub out: PathBuf,

    /// Stop after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long, env = "K8S_ALOG_DURATION")]
    pub duration: Option<f64>,

    /// Seconds between capture-statistics records (0: only at exit).
    #[arg(long, env = "K8S_ALOG_STATS_INTERVAL", default_value_t = 10.0)]
    pub stats_interval: f64,

    #[command(flatten)]
    pub capture: CaptureArgs,

    #[command(flatten)]
    pub k8s: K8sArgs,
}

const TOP_EXAMPLES: &str = "\
Examples:
  sudo k8s-alog top                               # this node, live
  sudo k8s-alog top --port 8080 --window 1m       # one port, 1-minute figures
  k8s-alog top --from access.jsonl --speed 10     # replay a recording 10x faster
  k8s-alog top --from access.jsonl --speed 0      # replay at once, then study it
  sudo k8s-alog top --log-file /tmp/top.log --log-level debug

Keys: 1-6/Tab views (services, pods, endpoints, topology, connections, tail);
s/S sort column, r reverse; / filter (ns= pod= svc= port= proto= status=), c clear;
w window; p pause; Enter detail; ? help; q or Ctrl-C quit.";

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Replay a recording instead of capturing live.
    #[arg(long, env = "K8S_ALOG_FROM")]
    pub from: Option<PathBuf>,

    /// Replay speed: 1 as recorded, 10 ten times faster, 0 all at once.
    #[arg(long, env = "K8S_ALOG_SPEED", default_value_t = 1.0)]
    pub speed: f64,

    /// Time window of rates and percentiles at start (10s, 1m, 5m; `w` switches).
    #[arg(long, env = "K8S_ALOG_WINDOW", default_value = "10s",
          value_parser = ["10s", "1m", "5m"])]
    pub window: String,

    /// Seconds between screen refreshes.
    #[arg(long, env = "K8S_ALOG_TICK", default_value_t = 1.0)]
    pub tick: f64,

    /// Records queued between capture and screen; beyond it they are dropped and counted.
    #[arg(long, env = "K8S_ALOG_QUEUE", default_value_t = 65_536)]
    pub queue: usize,

    /// Where log messages go while the dashboard runs (default: discarded).
    #[arg(long, env = "K8S_ALOG_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Print responsiveness figures (input-to-frame, frame times, tick lateness) on exit.
    #[arg(long, env = "K8S_ALOG_PERF")]
    pub perf: bool,

    #[command(flatten)]
    pub capture: CaptureArgs,

    #[command(flatten)]
    pub k8s: K8sArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// OAP gRPC address(es), host:port (repeatable).
    #[arg(long, env = "K8S_ALOG_OAP", value_delimiter = ',')]
    pub oap: Vec<String>,

    /// Replay a recording to the OAP instead of capturing live.
    #[arg(long, env = "K8S_ALOG_FROM")]
    pub from: Option<PathBuf>,

    #[command(flatten)]
    pub capture: CaptureArgs,

    #[command(flatten)]
    pub k8s: K8sArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub k8s: K8sArgs,
}
