//! Command-line interface (clap derive only; the work is in `cmd/`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::capture::HookMode;

/// Who talks to whom on this Kubernetes node, and how fast: every TCP connection and
/// HTTP exchange, captured with eBPF.
#[derive(Debug, Parser)]
#[command(name = "k8s-alog", version, propagate_version = true, after_help = TOP_HELP)]
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
    #[command(after_help = PUSH_EXAMPLES)]
    Push(Box<PushArgs>),
    /// What this node can do and why: kernel, BTF, program types, runtime, kubelet, API.
    #[command(after_help = DOCTOR_EXAMPLES)]
    Doctor(Box<DoctorArgs>),
    /// Write shell completions and man pages generated from this CLI (packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
    /// Resolve host:port as the OAP client does (/etc/hosts, then DNS), without libc.
    #[command(hide = true)]
    Resolve(ResolveArgs),
}

const TOP_HELP: &str = "\
Start with `sudo k8s-alog doctor`: it says what this node supports and what will work.

Examples:
  sudo k8s-alog doctor                               # can capture run here? (exit code says)
  sudo k8s-alog record --out - | jq .                # every exchange as JSON, to stdout
  sudo k8s-alog top                                  # live dashboard
  sudo k8s-alog push --oap oap.skywalking:11800      # to Apache SkyWalking OAP

Every flag can also be set by an environment variable K8S_ALOG_<FLAG> (shown in each
subcommand's --help), as a DaemonSet does.

Exit codes: 0 done; 1 error; 2 bad usage; 3 not permitted (run as root, or grant
CAP_BPF and CAP_PERFMON); 4 kernel without BTF; 5 kernel refused a BPF program;
doctor also: 6 capture runs degraded; 7 the --oap address is unreachable.";

const DOCTOR_EXAMPLES: &str = "\
Examples:
  sudo k8s-alog doctor                              # table and verdict
  sudo k8s-alog doctor --json | jq .verdict         # for scripts
  sudo k8s-alog doctor --oap oap.skywalking:11800   # can push reach the OAP?
  sudo k8s-alog doctor --host-root /host            # in a pod with the host's / at /host

The BPF program types are tried for real: each is loaded, attached and triggered
(a loopback TCP connect, a call into this binary), then k8s-alog's own capture
programs are loaded and attached once. Nothing is captured.

Exit codes: 0 capture runs fully; 6 capture runs degraded (the verdict says what is
missing); 7 capture runs but the --oap address does not resolve or answer;
3 not permitted (run as root, or grant CAP_BPF and CAP_PERFMON); 4 kernel without
BTF; 5 the kernel refused the capture programs; 1 doctor failed; 2 bad usage.";

const RECORD_EXAMPLES: &str = "\
Examples:
  sudo k8s-alog record --out access.jsonl          # until Ctrl-C
  sudo k8s-alog record --out - --port 8080 | jq .  # one port, to stdout
  sudo k8s-alog record --out f.jsonl --duration 60 --pid 4242

An existing --out file is appended to only if it is this user's alone (not a symbolic
link, not writable by others); a new one is created with mode 0600.

Exit codes: 0 done (also when the output's reader goes away, as with `| head`); 1 error
(a write error on the output included); 2 bad usage; 3 not permitted (run as root, or grant
CAP_BPF and CAP_PERFMON); 4 kernel without BTF; 5 kernel refused a BPF program.";

/// What to capture, shared by every capturing subcommand.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Payload bytes copied per socket call for protocol parsing (max 8192).
    #[arg(long, env = "K8S_ALOG_CAPTURE_BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::capture::MAX_CAPTURE)))]
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

    /// Most memory, in MiB, the protocol parsers of all connections may hold together;
    /// beyond it the parsers holding the most start over (their exchanges in flight are
    /// written out incomplete, note memory_budget) and `parsers_shed_memory` counts it.
    #[arg(long, env = "K8S_ALOG_MAX_PARSER_MEMORY",
          default_value_t = (crate::engine::DEFAULT_PARSER_BYTES >> 20) as u32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_parser_memory: u32,

    /// Kernel hooks for socket data: auto (the cheapest this kernel has and accepts, per
    /// hook), or one rung for all: tracepoint, fentry, kprobe, syscall.
    #[arg(long, env = "K8S_ALOG_HOOKS", default_value = "auto",
          value_parser = parse_hook_mode)]
    pub hooks: HookMode,
}

fn parse_hook_mode(s: &str) -> Result<HookMode, String> {
    s.parse()
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

    /// Forward to the OAP while recording (with `--oap`).
    #[command(flatten)]
    pub oap: OapArgs,
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

    /// Forward to SkyWalking OAP while the dashboard runs (live capture only).
    #[command(flatten)]
    pub oap: OapArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Replay a recording to the OAP instead of capturing live.
    #[arg(long, env = "K8S_ALOG_FROM")]
    pub from: Option<PathBuf>,

    /// Stop after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long, env = "K8S_ALOG_DURATION")]
    pub duration: Option<f64>,

    #[command(flatten)]
    pub capture: CaptureArgs,

    #[command(flatten)]
    pub k8s: K8sArgs,

    /// Where to send, and how (`--oap` is required here).
    #[command(flatten)]
    pub oap: OapArgs,
}

const PUSH_EXAMPLES: &str = "\
Examples:
  sudo k8s-alog push --oap oap.skywalking:11800
  sudo k8s-alog push --oap oap-0:11800,oap-1:11800 --oap-token s3cret \\
       --oap-ca /etc/oap/ca.pem --oap-cluster prod --oap-exclude-namespace kube-system
  k8s-alog push --oap oap.skywalking:11800 --from access.jsonl   # deliver a recording
  sudo k8s-alog record --out access.jsonl --oap oap.skywalking:11800   # record and forward

While the OAP is unreachable, batches wait in --oap-spool-dir (at most --oap-spool-max);
beyond that they are dropped and counted. On SIGINT/SIGTERM, what is left is delivered
within --oap-flush-timeout or stays spooled for the next run. A spool directory that
cannot be used does not stop push: batches then wait in memory only (one warning, and
spool_memory_only=1 in the counters), and what is left at exit is lost.

Exit codes: 0 done; 1 error; 2 bad usage; 3 not permitted (run as root, or grant
CAP_BPF and CAP_PERFMON); 4 kernel without BTF; 5 kernel refused a BPF program.";

/// Apache SkyWalking OAP delivery, for every subcommand that can forward records.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "SkyWalking OAP")]
pub struct OapArgs {
    /// OAP gRPC address(es), host:port (repeatable or comma-separated; tried in turn).
    #[arg(long, env = "K8S_ALOG_OAP", value_delimiter = ',')]
    pub oap: Vec<String>,

    /// CA certificate (PEM) to verify the OAP: turns TLS on (server name = the host in --oap).
    #[arg(long, env = "K8S_ALOG_OAP_CA")]
    pub oap_ca: Option<PathBuf>,

    /// Client certificate (PEM), for an OAP that asks for one (with --oap-key).
    #[arg(long, env = "K8S_ALOG_OAP_CERT")]
    pub oap_cert: Option<PathBuf>,

    /// Client private key (PEM).
    #[arg(long, env = "K8S_ALOG_OAP_KEY")]
    pub oap_key: Option<PathBuf>,

    /// Token sent as the `authentication` metadata (the OAP's `authentication` setting).
    #[arg(long, env = "K8S_ALOG_OAP_TOKEN", hide_env_values = true)]
    pub oap_token: Option<String>,

    /// Records per batch (one gRPC stream each; at most 100000).
    #[arg(long, env = "K8S_ALOG_OAP_BATCH_SIZE", default_value_t = 2000)]
    pub oap_batch_size: usize,

    /// Seconds between batches at most.
    #[arg(long, env = "K8S_ALOG_OAP_BATCH_PERIOD", default_value_t = 1.0)]
    pub oap_batch_period: f64,

    /// Directory of the spool that keeps batches while the OAP is unreachable.
    #[arg(
        long,
        env = "K8S_ALOG_OAP_SPOOL_DIR",
        default_value = "/var/lib/k8s-alog/spool"
    )]
    pub oap_spool_dir: PathBuf,

    /// Largest spool size (K, M, G suffixes); beyond it batches are dropped and counted.
    #[arg(long, env = "K8S_ALOG_OAP_SPOOL_MAX", default_value = "256M")]
    pub oap_spool_max: String,

    /// Node name sent to the OAP (default: --node-name, else the host name).
    #[arg(long, env = "K8S_ALOG_OAP_NODE_NAME")]
    pub oap_node_name: Option<String>,

    /// Cluster name sent to the OAP (default: --cluster).
    #[arg(long, env = "K8S_ALOG_OAP_CLUSTER")]
    pub oap_cluster: Option<String>,

    /// Namespaces not reported (repeatable or comma-separated); also sent as the policy.
    #[arg(
        long = "oap-exclude-namespace",
        env = "K8S_ALOG_OAP_EXCLUDE_NAMESPACES",
        value_delimiter = ','
    )]
    pub oap_exclude_namespaces: Vec<String>,

    /// Longest wait between reconnection attempts, seconds (the backoff doubles up to it).
    #[arg(long, env = "K8S_ALOG_OAP_BACKOFF_MAX", default_value_t = 30.0)]
    pub oap_backoff_max: f64,

    /// Seconds allowed at exit to deliver what is left (the rest stays spooled).
    #[arg(long, env = "K8S_ALOG_OAP_FLUSH_TIMEOUT", default_value_t = 10.0)]
    pub oap_flush_timeout: f64,

    /// Seconds between delivery progress lines on stderr (0: none).
    #[arg(long, env = "K8S_ALOG_OAP_LOG_INTERVAL", default_value_t = 60.0)]
    pub oap_log_interval: f64,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON (checks, facts, verdict).
    #[arg(long, env = "K8S_ALOG_JSON")]
    pub json: bool,

    /// Also check that these OAP addresses (host:port, repeatable) resolve and accept
    /// connections.
    #[arg(long, env = "K8S_ALOG_OAP", value_delimiter = ',')]
    pub oap: Vec<String>,

    /// Seconds each network check (CRI socket, API, OAP) may take.
    #[arg(long, env = "K8S_ALOG_DOCTOR_TIMEOUT", default_value_t = 3.0)]
    pub timeout: f64,

    /// Kernel hooks to check the capture programs with (as `record --hooks`).
    #[arg(long, env = "K8S_ALOG_HOOKS", default_value = "auto",
          value_parser = parse_hook_mode)]
    pub hooks: HookMode,

    #[command(flatten)]
    pub k8s: K8sArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Directory that receives completions/ and man/ (the repository root for the
    /// committed copies).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ResolveArgs {
    /// host:port to resolve.
    pub host_port: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capture size flag's bound and its help text follow the one constant.
    #[test]
    fn capture_size_bound_is_the_kernel_one() {
        use crate::capture::MAX_CAPTURE;
        use clap::CommandFactory;
        assert_eq!(MAX_CAPTURE, 8192);
        let cmd = Cli::command();
        let record = cmd.find_subcommand("record").expect("record");
        let arg = record
            .get_arguments()
            .find(|a| a.get_id() == "capture_bytes")
            .expect("--capture-bytes");
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.contains(&MAX_CAPTURE.to_string()), "{help}");
        assert!(record
            .clone()
            .try_get_matches_from([
                "record",
                "--out",
                "-",
                "--capture-bytes",
                &(MAX_CAPTURE + 1).to_string()
            ])
            .is_err());
        assert!(record
            .clone()
            .try_get_matches_from([
                "record",
                "--out",
                "-",
                "--capture-bytes",
                &MAX_CAPTURE.to_string()
            ])
            .is_ok());
    }
}
