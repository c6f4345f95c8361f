//! Counters that appear in `stats` records: the BPF programs' (summed over CPUs), TLS
//! probe attachment's and attribution's. Plain data, filled in by `capture` and
//! `resolve`; pure.

use serde::{Deserialize, Serialize};

/// Counters kept by the BPF programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    pub data_events: u64,
    pub conn_events: u64,
    pub drop_data_ringbuf: u64,
    pub drop_conn_ringbuf: u64,
    pub storage_fail: u64,
    pub filtered: u64,
    pub payload_skipped: u64,
    pub read_fault: u64,
    pub self_calls: u64,
    pub wakeups: u64,
    /// TLS plaintext events written (also counted in `data_events`).
    pub tls_plaintext: u64,
    /// TLS plaintext whose socket could not be found: counted, event dropped.
    pub tls_unattributed: u64,
    /// Exec notifications lost (ring buffer full): a new binary's TLS code may go unprobed.
    #[serde(default)]
    pub drop_exec_ringbuf: u64,
    /// Reads after a socket closed whose state was no longer held: not recorded.
    #[serde(default)]
    pub late_untracked: u64,
    /// Drains of the ring buffer that stopped at their bound with records still waiting:
    /// the event thread was saturated (ticks, stats and stop went on regardless). Kept in
    /// user space, reported beside the kernel's counters.
    #[serde(default)]
    pub ring_drains_bounded: u64,
}

/// Counters of TLS probe attachment, for stats records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsAttachStats {
    /// Shared libraries with an OpenSSL-like API (libssl) probed.
    pub libraries_attached: u64,
    /// Executables with OpenSSL/BoringSSL linked in probed.
    pub binaries_attached: u64,
    /// Go executables probed (crypto/tls).
    pub go_binaries_attached: u64,
    /// Files with TLS code that could not be probed (each logged once).
    pub attach_failures: u64,
    /// Files whose inspection stopped at a limit on the bytes read, the work done or the
    /// time spent (each logged once).
    #[serde(default)]
    pub inspections_over_budget: u64,
    /// Files with TLS code left unprobed, whole or in part, by a bound: probes per file,
    /// per process or in all.
    #[serde(default)]
    pub files_refused: u64,
    /// Probes those bounds left unattached, where known (a file with too many RETs is
    /// refused before they are all counted).
    #[serde(default)]
    pub probes_refused: u64,
    /// Probed files detached because no process maps them any more and their path no
    /// longer leads to them.
    #[serde(default)]
    pub files_detached: u64,
    /// Probes attached now.
    #[serde(default)]
    pub probes_attached: u64,
    /// Exec notifications the TLS worker's queue had no room for: those processes are
    /// left to the periodic rescan (every 60 s).
    #[serde(default)]
    pub exec_notes_dropped: u64,
    /// Probe links (descriptors: one per probe, or one per group of probes of a file
    /// where the kernel has `uprobe_multi`) of files gone, waiting to be closed now.
    #[serde(default)]
    pub links_detaching: u64,
    /// Probe links closed in all.
    #[serde(default)]
    pub links_detached: u64,
    /// Probe links (descriptors) held now for the probes attached.
    #[serde(default)]
    pub links_attached: u64,
}

/// What attribution did and could not do, for `stats` records. Counts of ends are per
/// record end (a connection with three HTTP exchanges and its connection record counts
/// four times); the `*_known` figures are the current sizes of what is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResolveStats {
    /// Ends attributed from their own process.
    pub process_ends: u64,
    /// ... of which in a pod the sources name.
    pub process_ends_in_pods: u64,
    /// ... of which in a pod cgroup that no source names (yet).
    pub process_ends_unknown_pod: u64,
    /// Address-only ends that are a pod IP.
    pub remote_pod_ip: u64,
    /// Address-only ends that are a Service IP whose backend conntrack did not give.
    pub remote_service_ip: u64,
    /// Address-only ends translated (DNAT) to their real backend through conntrack.
    pub remote_conntrack: u64,
    /// Address-only loopback ends: the same pod (network namespace) as the other end.
    pub remote_loopback: u64,
    /// Address-only ends nothing could name (`resolved_by: "unresolved"`).
    pub unresolved_remotes: u64,
    /// Connections inside one pod (app to sidecar): no relation is derived from them.
    pub intra_pod_connections: u64,
    pub conntrack_lookups: u64,
    pub conntrack_errors: u64,
    /// CRI calls that failed (socket absent is not an error).
    pub cri_errors: u64,
    /// Kubernetes API requests that failed.
    pub api_errors: u64,
    /// Snapshots of the node built so far.
    pub refreshes: u64,
    pub pods_known: u64,
    pub containers_known: u64,
    pub services_known: u64,
    pub pod_ips_known: u64,
    pub cgroups_known: u64,
    /// Entries in the per-cgroup cache of `/proc` answers.
    pub cgroup_cache: u64,
    /// Entries in the conntrack answer cache.
    pub conntrack_cache: u64,
}
