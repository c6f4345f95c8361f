//! `k8s-alog doctor`: what this node can do and why. This module is the pure part: the
//! facts gathered (`Facts`), the verdict drawn from them, the table and the JSON. The
//! gathering is in `gather` (files, sockets, the API) and `probe` (BPF programs loaded,
//! attached and fired for real).

pub mod gather;
pub mod probe;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

/// Exit codes of `doctor`, by what they mean to it (the codes are `crate::exit`'s).
pub mod exit {
    pub use crate::exit::{DEGRADED, ERROR, NOT_PERMITTED, NO_BTF, OAP_UNREACHABLE, REFUSED};
    /// Capture runs fully here.
    pub const FULL: u8 = crate::exit::DONE;
}

/// The BPF program types doctor tries, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Tracepoint,
    RawTracepoint,
    TpBtf,
    Uprobe,
    RingBuffer,
    Fentry,
    Kprobe,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 7] = [
        ProbeKind::Tracepoint,
        ProbeKind::RawTracepoint,
        ProbeKind::TpBtf,
        ProbeKind::Uprobe,
        ProbeKind::RingBuffer,
        ProbeKind::Fentry,
        ProbeKind::Kprobe,
    ];

    /// Short name, as in the table and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Tracepoint => "tracepoint",
            ProbeKind::RawTracepoint => "raw tracepoint",
            ProbeKind::TpBtf => "tp_btf",
            ProbeKind::Uprobe => "uprobe",
            ProbeKind::RingBuffer => "ring buffer",
            ProbeKind::Fentry => "fentry",
            ProbeKind::Kprobe => "kprobe",
        }
    }

    /// What the probe hooks.
    pub fn hook(self) -> &'static str {
        match self {
            ProbeKind::Tracepoint => "tracepoint/sock/inet_sock_set_state",
            ProbeKind::RawTracepoint => "raw_tp/inet_sock_set_state",
            ProbeKind::TpBtf => "tp_btf/inet_sock_set_state",
            ProbeKind::Uprobe => "uprobe on a function of this binary",
            ProbeKind::RingBuffer => "BPF_MAP_TYPE_RINGBUF from raw_tp",
            ProbeKind::Fentry => "fentry/tcp_v4_connect",
            ProbeKind::Kprobe => "kprobe/tcp_v4_connect",
        }
    }

    /// What k8s-alog uses it for (None: not used).
    pub fn used_for(self) -> Option<&'static str> {
        match self {
            ProbeKind::TpBtf => Some("the capture core (connections, payload)"),
            ProbeKind::RingBuffer => Some("every event to user space"),
            ProbeKind::Uprobe => Some("TLS plaintext (OpenSSL, Go)"),
            ProbeKind::Fentry => Some("data hooks where the socket tracepoints are missing"),
            ProbeKind::Kprobe => Some("data hooks where tracepoints and fentry are not to be had"),
            ProbeKind::Tracepoint | ProbeKind::RawTracepoint => None,
        }
    }
}

/// Why an operation failed, as far as the verdict cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    PermissionDenied,
    NotFound,
    Other,
}

/// The outcome of loading, attaching and triggering one program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ProbeResult {
    /// Loaded, attached, and it fired when triggered.
    Works,
    /// The kernel refused to load it.
    LoadRefused { kind: FailKind, error: String },
    /// Loaded, but the kernel refused to attach it.
    AttachRefused { kind: FailKind, error: String },
    /// Attached, but the trigger left no trace.
    DidNotFire,
    /// Not tried (and why).
    NotTried { why: String },
}

impl ProbeResult {
    pub fn works(&self) -> bool {
        matches!(self, ProbeResult::Works)
    }
}

/// What a CRI socket did when asked for its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RuntimeState {
    Absent,
    NotASocket,
    Answered {
        runtime: String,
        version: String,
        api: String,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeSocket {
    pub path: PathBuf,
    pub state: RuntimeState,
}

/// How the optional Kubernetes API can be reached, and what it said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApiFacts {
    /// "in-cluster service account", "kubeconfig PATH", "--api-server URL"; None: no API.
    pub source: Option<String>,
    /// The settings could not be used (e.g. an unreadable kubeconfig).
    pub config_error: Option<String>,
    /// `/version` answer: Ok(gitVersion) or the error.
    pub version: Option<Result<String, String>>,
    /// Per resource k8s-alog lists: Ok(()) or why not (e.g. "403 Forbidden").
    pub access: Vec<(String, Result<(), String>)>,
}

/// The process's identity and capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Privileges {
    pub uid: u32,
    /// CapEff from /proc/self/status.
    pub cap_eff: u64,
}

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

impl Privileges {
    pub fn has(&self, cap: u32) -> bool {
        cap < 64 && self.cap_eff & (1u64 << cap) != 0
    }

    /// Enough to load and attach tracing programs: CAP_BPF + CAP_PERFMON (5.8+), or
    /// CAP_SYS_ADMIN.
    pub fn can_trace(&self) -> bool {
        (self.has(CAP_BPF) && self.has(CAP_PERFMON)) || self.has(CAP_SYS_ADMIN)
    }

    /// The capabilities that matter here, present or not.
    pub fn listing(&self) -> String {
        [
            ("CAP_BPF", CAP_BPF),
            ("CAP_PERFMON", CAP_PERFMON),
            ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
            ("CAP_SYS_PTRACE", CAP_SYS_PTRACE),
            ("CAP_SYS_RESOURCE", CAP_SYS_RESOURCE),
            ("CAP_NET_ADMIN", CAP_NET_ADMIN),
            ("CAP_DAC_READ_SEARCH", CAP_DAC_READ_SEARCH),
        ]
        .iter()
        .map(|(n, c)| format!("{}{n}", if self.has(*c) { "+" } else { "-" }))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// Parse the CapEff line of `/proc/self/status`.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The mode in force from `/sys/kernel/security/lockdown` ("none [integrity] confidentiality").
pub fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}

/// `major.minor` of a kernel release string ("6.18.0-1-amd64").
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `--oap` check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OapFacts {
    pub addr: String,
    pub resolved: Result<Vec<SocketAddr>, String>,
    /// The first address that accepted a TCP connection, or why none did.
    pub connect: Option<Result<SocketAddr, String>>,
}

/// A pseudo filesystem some checks need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MountState {
    /// Mounted on the host.
    Host,
    /// Not mounted on the host: doctor mounted it in its own mount namespace.
    Private,
    /// Not mounted, and doctor could not mount it.
    Missing { why: String },
    #[default]
    Unknown,
}

/// True when `mountinfo` has a `fstype` mount at `point`.
pub fn is_mounted(mountinfo: &str, point: &str, fstype: &str) -> bool {
    mountinfo.lines().any(|l| {
        let Some((left, right)) = l.split_once(" - ") else {
            return false;
        };
        left.split_whitespace().nth(4) == Some(point)
            && right.split_whitespace().next() == Some(fstype)
    })
}

/// The hook rung capture chose for one of its data hooks, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HookFact {
    /// "send", "recv", "send_start".
    pub hook: String,
    /// "tracepoint", "fentry", "kprobe", "syscall"; None: not hooked here.
    pub rung: Option<String>,
    /// Cheaper rungs passed over, each with its reason.
    pub passed_over: Vec<String>,
}

impl Facts {
    /// "send: tracepoint, recv: tracepoint, send_start: fentry".
    pub fn hooks_summary(&self) -> String {
        self.hooks
            .iter()
            .map(|h| format!("{}: {}", h.hook, h.rung.as_deref().unwrap_or("none")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn rung_used(&self, rung: &str) -> bool {
        self.hooks.iter().any(|h| h.rung.as_deref() == Some(rung))
    }
}

/// Everything doctor found out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    pub kernel_release: String,
    pub machine: String,
    /// Size of /sys/kernel/btf/vmlinux; None when missing.
    pub btf_bytes: Option<u64>,
    /// Lockdown mode in force; None when the file is missing (no lockdown LSM).
    pub lockdown: Option<String>,
    /// tracefs (classic tracepoints need it) and securityfs (the lockdown file).
    pub tracefs: MountState,
    pub securityfs: MountState,
    pub probes: Vec<(ProbeKind, ProbeResult)>,
    /// The real capture programs, loaded and attached (not polled).
    pub capture: Option<ProbeResult>,
    /// The rung each data hook runs on (when the capture programs loaded).
    pub hooks: Vec<HookFact>,
    pub cgroup2: Option<PathBuf>,
    /// A kubepods cgroup exists below the cgroup v2 mount.
    pub kubepods_cgroup: bool,
    pub runtimes: Vec<RuntimeSocket>,
    pub containerd_state: PathBuf,
    /// Task bundles in the containerd state directory; None when it is missing.
    pub containerd_bundles: Option<usize>,
    pub kubelet_pods_dir: PathBuf,
    /// Pod directories there; None when it is missing.
    pub kubelet_pods: Option<usize>,
    pub api: ApiFacts,
    pub privileges: Privileges,
    pub oap: Vec<OapFacts>,
}

impl Facts {
    pub fn probe(&self, k: ProbeKind) -> Option<&ProbeResult> {
        self.probes.iter().find(|(p, _)| *p == k).map(|(_, r)| r)
    }

    fn probe_works(&self, k: ProbeKind) -> bool {
        self.probe(k).is_some_and(ProbeResult::works)
    }
}

/// How capture will run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureVerdict {
    Full,
    Degraded,
    CannotRun,
}

/// The conclusion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub capture: CaptureVerdict,
    /// One line: "capture runs fully", ...
    pub headline: String,
    pub works: Vec<String>,
    pub degrades: Vec<String>,
    pub blocks: Vec<String>,
    pub exit_code: u8,
}

/// A short hint for a refused program, from how it failed.
pub fn explain(kind: ProbeKind, r: &ProbeResult, lockdown: Option<&str>) -> String {
    let locked = lockdown.is_some_and(|m| m != "none");
    match (kind, r) {
        (_, ProbeResult::Works) => "loaded, attached, fired".into(),
        (
            ProbeKind::Fentry,
            ProbeResult::LoadRefused {
                kind: FailKind::PermissionDenied,
                ..
            },
        ) if locked => "load refused (EPERM): kernel lockdown blocks ftrace-based BPF hooks".into(),
        (
            ProbeKind::Kprobe,
            ProbeResult::AttachRefused {
                kind: FailKind::NotFound,
                ..
            },
        ) => "attach refused (ENOENT): no kprobe support (CONFIG_KPROBES off)".into(),
        (
            _,
            ProbeResult::LoadRefused {
                kind: FailKind::PermissionDenied,
                ..
            },
        ) => "load refused (EPERM): missing privileges or lockdown".into(),
        (
            _,
            ProbeResult::AttachRefused {
                kind: FailKind::NotFound,
                ..
            },
        ) => "attach refused (ENOENT): hook not present in this kernel (or tracefs not mounted)"
            .into(),
        (_, ProbeResult::LoadRefused { error, .. }) => format!("load refused: {error}"),
        (_, ProbeResult::AttachRefused { error, .. }) => format!("attach refused: {error}"),
        (_, ProbeResult::DidNotFire) => "attached, but did not fire when triggered".into(),
        (_, ProbeResult::NotTried { why }) => format!("not tried: {why}"),
    }
}

/// Draw the verdict from the facts.
pub fn verdict(f: &Facts) -> Verdict {
    let mut works = Vec::new();
    let mut degrades = Vec::new();
    let mut blocks = Vec::new();

    // The capture core: the real programs, if they were tried; else what the probes say.
    let core_ok = match &f.capture {
        Some(r) => r.works(),
        None => f.probe_works(ProbeKind::TpBtf) && f.probe_works(ProbeKind::RingBuffer),
    };
    let privileged = f.privileges.uid == 0 || f.privileges.can_trace();
    let mut code = exit::FULL;
    if !core_ok {
        let (c, why) = if f.btf_bytes.is_none() {
            (
                exit::NO_BTF,
                "no BTF (/sys/kernel/btf/vmlinux): a kernel >= 5.15 built with CONFIG_DEBUG_INFO_BTF=y is needed".to_string(),
            )
        } else if !privileged {
            (
                exit::NOT_PERMITTED,
                "not permitted to load BPF programs: run as root, or grant CAP_BPF and CAP_PERFMON"
                    .to_string(),
            )
        } else {
            let detail = match &f.capture {
                Some(r) => explain(ProbeKind::TpBtf, r, f.lockdown.as_deref()),
                None => "tp_btf or ring buffer unavailable".into(),
            };
            let old = kernel_version(&f.kernel_release).is_some_and(|v| v < (5, 15));
            (
                exit::REFUSED,
                format!(
                    "the kernel refused the capture programs ({detail}){}",
                    if old {
                        "; this kernel is older than 5.15"
                    } else {
                        ""
                    }
                ),
            )
        };
        code = c;
        blocks.push(why);
    } else {
        let hooks = if f.hooks.is_empty() {
            "socket hooks".to_string()
        } else {
            format!("hooks {}", f.hooks_summary())
        };
        works.push(format!(
            "capture: every TCP connection and HTTP/1, HTTP/2, gRPC exchange ({hooks}; ring buffer)"
        ));
        if f.hooks
            .iter()
            .any(|h| h.hook == "send_start" && h.rung.is_none())
        {
            degrades.push("the start of a send is not hooked here: a request's duration begins when its write returns, not when it began (writes blocked on a slow reader look shorter)".into());
        }
        if f.probe_works(ProbeKind::Uprobe) {
            works.push("TLS plaintext from OpenSSL and Go (uprobes)".into());
        } else {
            let why = if f.privileges.has(CAP_SYS_ADMIN) {
                ""
            } else {
                " (the kernel creates uprobe events only for CAP_SYS_ADMIN; CAP_PERFMON is not enough)"
            };
            degrades.push(format!(
                "no uprobes: TLS traffic is seen as connections only, without HTTP detail{why}"
            ));
            code = exit::DEGRADED;
        }
    }
    let unused: Vec<&str> = [ProbeKind::Fentry, ProbeKind::Kprobe]
        .iter()
        .filter(|k| !f.probe_works(**k) && !f.rung_used(k.name()))
        .map(|k| k.name())
        .collect();
    if !unused.is_empty() && core_ok {
        works.push(format!(
            "{} unavailable here: not needed, other hooks carry capture",
            unused.join(" and ")
        ));
    }

    // Attribution: never changes whether capture runs, but says what records will name.
    let cri = f.runtimes.iter().find_map(|r| match &r.state {
        RuntimeState::Answered { runtime, .. } => Some(format!("{runtime} ({})", r.path.display())),
        _ => None,
    });
    if f.cgroup2.is_none() {
        degrades.push(
            "no cgroup v2 mount found: containers are told apart by /proc/<pid>/cgroup only".into(),
        );
    }
    if let Some(rt) = cri {
        works.push(format!(
            "pods and containers from the CRI of {rt}: names, namespaces, labels, IPs"
        ));
    } else if f.containerd_bundles.is_some_and(|n| n > 0) {
        degrades.push("no CRI answer: pod names, namespaces and container names from containerd's task bundles (no labels, no pod IPs)".into());
    } else if f.kubelet_pods.is_some_and(|n| n > 0) {
        degrades.push("no CRI answer: pod names and namespaces from the kubelet's pod directories (no labels, no pod IPs)".into());
    } else {
        degrades.push(
            "no container runtime or kubelet directories: records name processes and container ids only (no pods)".into(),
        );
    }
    match (&f.api.source, &f.api.version) {
        (Some(src), Some(Ok(v))) => {
            let denied: Vec<&str> = f
                .api
                .access
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(n, _)| n.as_str())
                .collect();
            if denied.is_empty() {
                works.push(format!("Kubernetes API {v} via {src}: Service names, pods on other nodes"));
            } else {
                degrades.push(format!(
                    "Kubernetes API {v} via {src} cannot list {}: grant the ClusterRole in deploy/rbac.yaml",
                    denied.join(", ")
                ));
            }
        }
        (Some(src), Some(Err(e))) => degrades.push(format!(
            "Kubernetes API via {src} does not answer ({e}): no Service names, no pods of other nodes"
        )),
        (Some(src), None) => degrades.push(format!(
            "Kubernetes API via {src} unusable ({}): no Service names, no pods of other nodes",
            f.api.config_error.as_deref().unwrap_or("not tried")
        )),
        (None, _) => degrades.push(
            "no Kubernetes API (no in-cluster token, no --kubeconfig): no Service names, no pods of other nodes".into(),
        ),
    }

    for o in &f.oap {
        match (&o.resolved, &o.connect) {
            (Ok(_), Some(Ok(a))) => works.push(format!("OAP {} answers at {a}", o.addr)),
            (Err(e), _) => {
                blocks.push(format!("OAP {} does not resolve: {e}", o.addr));
                if code == exit::FULL || code == exit::DEGRADED {
                    code = exit::OAP_UNREACHABLE;
                }
            }
            (Ok(_), c) => {
                let why = match c {
                    Some(Err(e)) => e.clone(),
                    _ => "not tried".into(),
                };
                blocks.push(format!(
                    "OAP {} resolves but does not accept connections: {why}",
                    o.addr
                ));
                if code == exit::FULL || code == exit::DEGRADED {
                    code = exit::OAP_UNREACHABLE;
                }
            }
        }
    }

    let capture = if !core_ok {
        CaptureVerdict::CannotRun
    } else if code == exit::DEGRADED || degrades_capture(&degrades) {
        CaptureVerdict::Degraded
    } else {
        CaptureVerdict::Full
    };
    let headline = match capture {
        CaptureVerdict::Full => "capture runs fully".to_string(),
        CaptureVerdict::Degraded => "capture runs, degraded".to_string(),
        CaptureVerdict::CannotRun => "capture cannot run".to_string(),
    };
    Verdict {
        capture,
        headline,
        works,
        degrades,
        blocks,
        exit_code: code,
    }
}

fn degrades_capture(degrades: &[String]) -> bool {
    degrades.iter().any(|d| d.starts_with("no uprobes"))
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub area: &'static str,
    pub check: String,
    pub status: String,
    pub detail: String,
}

fn row(
    area: &'static str,
    check: impl Into<String>,
    status: &str,
    detail: impl Into<String>,
) -> Row {
    Row {
        area,
        check: check.into(),
        status: status.to_string(),
        detail: detail.into(),
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// The table rows, in order.
pub fn rows(f: &Facts) -> Vec<Row> {
    let mut out = Vec::new();
    let kv = kernel_version(&f.kernel_release);
    let kstatus = match kv {
        Some(v) if v >= (5, 15) => "ok",
        Some(_) => "too old",
        None => "unknown",
    };
    out.push(row(
        "kernel",
        "version",
        kstatus,
        format!("{} {} (needs >= 5.15)", f.kernel_release, f.machine),
    ));
    out.push(match f.btf_bytes {
        Some(n) => row(
            "kernel",
            "BTF",
            "ok",
            format!("/sys/kernel/btf/vmlinux, {}", human_bytes(n)),
        ),
        None => row(
            "kernel",
            "BTF",
            "missing",
            "/sys/kernel/btf/vmlinux: needs CONFIG_DEBUG_INFO_BTF=y",
        ),
    });
    out.push(match f.lockdown.as_deref() {
        Some("none") => row("kernel", "lockdown", "none", "no lockdown"),
        Some(m) => row(
            "kernel",
            "lockdown",
            m,
            "kernel locked down: fentry/fexit, kprobe writes and raw kernel reads may be refused",
        ),
        None => row(
            "kernel",
            "lockdown",
            "n/a",
            match &f.securityfs {
                MountState::Missing { why } => {
                    format!("securityfs not mounted and not mountable ({why})")
                }
                _ => "no lockdown LSM (/sys/kernel/security/lockdown)".into(),
            },
        ),
    });
    out.push(match &f.tracefs {
        MountState::Host => row(
            "kernel",
            "tracefs",
            "ok",
            "mounted (classic tracepoints can attach)",
        ),
        MountState::Private => row(
            "kernel",
            "tracefs",
            "not mounted",
            "mounted privately for these checks; k8s-alog does not need it (tp_btf)",
        ),
        MountState::Missing { why } => row(
            "kernel",
            "tracefs",
            "missing",
            format!("cannot mount: {why}; classic tracepoints cannot attach"),
        ),
        MountState::Unknown => row("kernel", "tracefs", "unknown", ""),
    });
    for (k, r) in &f.probes {
        let status = match r {
            ProbeResult::Works => "works",
            ProbeResult::NotTried { .. } => "not tried",
            _ => "unavailable",
        };
        let used = match k.used_for() {
            Some(u) => format!("; used for {u}"),
            None => "; not used by k8s-alog".into(),
        };
        out.push(row(
            "bpf",
            k.name(),
            status,
            format!(
                "{}: {}{used}",
                k.hook(),
                explain(*k, r, f.lockdown.as_deref())
            ),
        ));
    }
    if let Some(c) = &f.capture {
        let status = if c.works() { "works" } else { "refused" };
        let detail = match c {
            ProbeResult::Works => {
                "k8s-alog's own programs load and attach (socket hooks, ring buffer)".to_string()
            }
            other => explain(ProbeKind::TpBtf, other, f.lockdown.as_deref()),
        };
        out.push(row("bpf", "capture programs", status, detail));
    }
    for h in &f.hooks {
        let detail = if h.passed_over.is_empty() {
            "the cheapest rung".to_string()
        } else {
            format!("passed over: {}", h.passed_over.join("; "))
        };
        out.push(row(
            "hooks",
            &h.hook,
            h.rung.as_deref().unwrap_or("none"),
            detail,
        ));
    }
    out.push(match &f.cgroup2 {
        Some(p) => row(
            "node",
            "cgroup v2",
            "ok",
            format!(
                "{}{}",
                p.display(),
                if f.kubepods_cgroup {
                    ", kubepods present"
                } else {
                    ", no kubepods cgroup (not a kubelet node?)"
                }
            ),
        ),
        None => row(
            "node",
            "cgroup v2",
            "missing",
            "no cgroup2 mount in /proc/self/mountinfo",
        ),
    });
    for r in &f.runtimes {
        let (status, detail) = match &r.state {
            RuntimeState::Absent => ("absent", "no socket".to_string()),
            RuntimeState::NotASocket => ("bad", "exists but is not a socket".to_string()),
            RuntimeState::Answered {
                runtime,
                version,
                api,
            } => ("ok", format!("CRI Version: {runtime} {version}, API {api}")),
            RuntimeState::Failed { error } => ("no answer", format!("CRI Version failed: {error}")),
        };
        out.push(row("runtime", r.path.display().to_string(), status, detail));
    }
    out.push(match f.containerd_bundles {
        Some(n) => row(
            "runtime",
            "containerd bundles",
            "ok",
            format!("{}: {n} tasks", f.containerd_state.display()),
        ),
        None => row(
            "runtime",
            "containerd bundles",
            "absent",
            f.containerd_state.display().to_string(),
        ),
    });
    out.push(match f.kubelet_pods {
        Some(n) => row(
            "kubelet",
            "pod directories",
            "ok",
            format!("{}: {n} pods", f.kubelet_pods_dir.display()),
        ),
        None => row(
            "kubelet",
            "pod directories",
            "absent",
            f.kubelet_pods_dir.display().to_string(),
        ),
    });
    match &f.api.source {
        None => out.push(row(
            "api",
            "Kubernetes API",
            "none",
            "no in-cluster token, no --kubeconfig, no --api-server",
        )),
        Some(src) => {
            let (status, detail) = match (&f.api.version, &f.api.config_error) {
                (Some(Ok(v)), _) => ("ok", format!("{src}: {v}")),
                (Some(Err(e)), _) => ("no answer", format!("{src}: {e}")),
                (None, Some(e)) => ("bad config", format!("{src}: {e}")),
                (None, None) => ("not tried", src.clone()),
            };
            out.push(row("api", "Kubernetes API", status, detail));
            for (res, r) in &f.api.access {
                out.push(match r {
                    Ok(()) => row("api", format!("list {res}"), "ok", "allowed"),
                    Err(e) => row("api", format!("list {res}"), "denied", e.clone()),
                });
            }
        }
    }
    let p = &f.privileges;
    out.push(row(
        "privileges",
        "uid / capabilities",
        if p.uid == 0 || p.can_trace() {
            "ok"
        } else {
            "missing"
        },
        format!("uid {}; {}", p.uid, p.listing()),
    ));
    for o in &f.oap {
        out.push(match &o.resolved {
            Ok(a) => row(
                "oap",
                format!("resolve {}", o.addr),
                "ok",
                a.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Err(e) => row("oap", format!("resolve {}", o.addr), "failed", e.clone()),
        });
        if let Some(c) = &o.connect {
            out.push(match c {
                Ok(a) => row(
                    "oap",
                    "TCP connect",
                    "ok",
                    format!("{a} accepts connections"),
                ),
                Err(e) => row("oap", "TCP connect", "failed", e.clone()),
            });
        }
    }
    out
}

/// The table and the verdict, for a terminal.
pub fn render_text(f: &Facts, v: &Verdict) -> String {
    let rows = rows(f);
    let w_area = rows.iter().map(|r| r.area.len()).max().unwrap_or(4).max(4);
    let w_check = rows.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
    let w_status = rows
        .iter()
        .map(|r| r.status.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:w_area$}  {:w_check$}  {:w_status$}  DETAIL",
        "AREA", "CHECK", "STATUS"
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "{:w_area$}  {:w_check$}  {:w_status$}  {}",
            r.area, r.check, r.status, r.detail
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Verdict: {}.", v.headline);
    for (label, lines) in [
        ("works", &v.works),
        ("degrades", &v.degrades),
        ("blocks", &v.blocks),
    ] {
        for l in lines.iter() {
            let _ = writeln!(s, "  {label:<9} {l}");
        }
    }
    let _ = writeln!(
        s,
        "Exit code {} (0 runs fully, 6 runs degraded, 7 OAP unreachable, 3 not permitted, 4 no BTF, 5 kernel refused).",
        v.exit_code
    );
    s
}

/// The whole report as JSON.
pub fn render_json(f: &Facts, v: &Verdict) -> String {
    #[derive(Serialize)]
    struct Report<'a> {
        checks: Vec<Row>,
        facts: &'a Facts,
        verdict: &'a Verdict,
    }
    serde_json::to_string_pretty(&Report {
        checks: rows(f),
        facts: f,
        verdict: v,
    })
    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The facts of the project's machines (see the kernel facts): locked down, no
    /// kprobes, root with every capability; no runtime, no kubelet, no API.
    fn this_kind_of_machine() -> Facts {
        Facts {
            kernel_release: "6.18.0".into(),
            machine: "x86_64".into(),
            btf_bytes: Some(6 << 20),
            lockdown: Some("integrity".into()),
            probes: vec![
                (ProbeKind::Tracepoint, ProbeResult::Works),
                (ProbeKind::RawTracepoint, ProbeResult::Works),
                (ProbeKind::TpBtf, ProbeResult::Works),
                (ProbeKind::Uprobe, ProbeResult::Works),
                (ProbeKind::RingBuffer, ProbeResult::Works),
                (
                    ProbeKind::Fentry,
                    ProbeResult::LoadRefused {
                        kind: FailKind::PermissionDenied,
                        error: "Operation not permitted".into(),
                    },
                ),
                (
                    ProbeKind::Kprobe,
                    ProbeResult::AttachRefused {
                        kind: FailKind::NotFound,
                        error: "No such file or directory".into(),
                    },
                ),
            ],
            capture: Some(ProbeResult::Works),
            cgroup2: Some("/sys/fs/cgroup/unified".into()),
            privileges: Privileges {
                uid: 0,
                cap_eff: 0x1ff_ffff_ffff,
            },
            ..Facts::default()
        }
    }

    #[test]
    fn locked_down_kernel_without_kprobes_runs_fully() {
        let f = this_kind_of_machine();
        let v = verdict(&f);
        assert_eq!(v.capture, CaptureVerdict::Full);
        assert_eq!(v.exit_code, exit::FULL);
        assert_eq!(v.headline, "capture runs fully");
        assert!(v.blocks.is_empty());
        assert!(v
            .works
            .iter()
            .any(|w| w.contains("fentry and kprobe unavailable")));
        // No runtime and no API: attribution degrades, capture does not.
        assert!(v
            .degrades
            .iter()
            .any(|d| d.contains("processes and container ids only")));
        assert!(v.degrades.iter().any(|d| d.contains("no Kubernetes API")));
        let text = render_text(&f, &v);
        assert!(text.contains("Verdict: capture runs fully."), "{text}");
        let fentry = rows(&f).into_iter().find(|r| r.check == "fentry").unwrap();
        assert_eq!(fentry.status, "unavailable");
        assert!(fentry.detail.contains("lockdown"), "{}", fentry.detail);
        let kprobe = rows(&f).into_iter().find(|r| r.check == "kprobe").unwrap();
        assert!(
            kprobe.detail.contains("CONFIG_KPROBES"),
            "{}",
            kprobe.detail
        );
    }

    #[test]
    fn no_uprobes_degrades_with_its_own_code() {
        let mut f = this_kind_of_machine();
        f.probes[3].1 = ProbeResult::AttachRefused {
            kind: FailKind::NotFound,
            error: "x".into(),
        };
        let v = verdict(&f);
        assert_eq!(v.capture, CaptureVerdict::Degraded);
        assert_eq!(v.exit_code, exit::DEGRADED);
        assert!(v.degrades.iter().any(|d| d.contains("TLS")));
    }

    #[test]
    fn cannot_run_reasons_map_to_record_exit_codes() {
        let refused = ProbeResult::LoadRefused {
            kind: FailKind::PermissionDenied,
            error: "Operation not permitted".into(),
        };
        let mut f = this_kind_of_machine();
        f.capture = Some(refused.clone());
        f.privileges = Privileges {
            uid: 1000,
            cap_eff: 0,
        };
        let v = verdict(&f);
        assert_eq!(
            (v.capture, v.exit_code),
            (CaptureVerdict::CannotRun, exit::NOT_PERMITTED)
        );
        assert!(v.blocks[0].contains("CAP_BPF"));

        f.btf_bytes = None;
        assert_eq!(verdict(&f).exit_code, exit::NO_BTF);

        let mut f = this_kind_of_machine();
        f.capture = Some(refused);
        f.kernel_release = "5.4.0-150-generic".into();
        let v = verdict(&f);
        assert_eq!(v.exit_code, exit::REFUSED);
        assert!(v.blocks[0].contains("older than 5.15"), "{:?}", v.blocks);
        assert_eq!(v.headline, "capture cannot run");
    }

    #[test]
    fn capabilities_without_root_are_enough() {
        let p = Privileges {
            uid: 1000,
            cap_eff: (1 << CAP_BPF) | (1 << CAP_PERFMON),
        };
        assert!(p.can_trace());
        assert!(p.listing().contains("+CAP_BPF +CAP_PERFMON -CAP_SYS_ADMIN"));
        let mut f = this_kind_of_machine();
        f.privileges = p;
        assert_eq!(verdict(&f).exit_code, exit::FULL);
    }

    #[test]
    fn oap_problems_have_their_own_code() {
        let mut f = this_kind_of_machine();
        f.oap = vec![OapFacts {
            addr: "oap.example:11800".into(),
            resolved: Err("no such host".into()),
            connect: None,
        }];
        let v = verdict(&f);
        assert_eq!(v.exit_code, exit::OAP_UNREACHABLE);
        assert_eq!(v.capture, CaptureVerdict::Full);
        f.oap = vec![OapFacts {
            addr: "oap.example:11800".into(),
            resolved: Ok(vec!["198.18.0.1:11800".parse().unwrap()]),
            connect: Some(Ok("198.18.0.1:11800".parse().unwrap())),
        }];
        let v = verdict(&f);
        assert_eq!(v.exit_code, exit::FULL);
        assert!(v
            .works
            .iter()
            .any(|w| w.contains("OAP oap.example:11800 answers")));
    }

    #[test]
    fn attribution_sources_best_first() {
        let mut f = this_kind_of_machine();
        f.kubelet_pods = Some(3);
        assert!(verdict(&f)
            .degrades
            .iter()
            .any(|d| d.contains("kubelet's pod directories")));
        f.containerd_bundles = Some(4);
        assert!(verdict(&f)
            .degrades
            .iter()
            .any(|d| d.contains("task bundles")));
        f.runtimes = vec![RuntimeSocket {
            path: "/run/containerd/containerd.sock".into(),
            state: RuntimeState::Answered {
                runtime: "containerd".into(),
                version: "1.6.20".into(),
                api: "v1".into(),
            },
        }];
        let v = verdict(&f);
        assert!(v.works.iter().any(|w| w.contains("CRI of containerd")));
        f.api = ApiFacts {
            source: Some("in-cluster service account".into()),
            version: Some(Ok("v1.30.2".into())),
            access: vec![
                ("pods".into(), Ok(())),
                ("services".into(), Err("403 Forbidden".into())),
            ],
            ..ApiFacts::default()
        };
        let v = verdict(&f);
        assert!(
            v.degrades
                .iter()
                .any(|d| d.contains("cannot list services")),
            "{:?}",
            v.degrades
        );
        assert_eq!(v.exit_code, exit::FULL);
    }

    #[test]
    fn mounts_from_mountinfo() {
        let mi = "36 25 0:31 / /sys/kernel/tracing rw,nosuid - tracefs nodev rw\n\
                  40 25 0:35 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert!(is_mounted(mi, "/sys/kernel/tracing", "tracefs"));
        assert!(!is_mounted(mi, "/sys/kernel/security", "securityfs"));
        assert!(!is_mounted(mi, "/sys/fs/cgroup/unified", "tracefs"));
    }

    #[test]
    fn parsers() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown("garbage"), None);
        assert_eq!(kernel_version("6.18.0-rc1+"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(kernel_version("x"), None);
        let st = "Name:\tk8s-alog\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(st), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("CapEff: zz"), None);
    }

    #[test]
    fn json_has_rows_facts_and_verdict() {
        let f = this_kind_of_machine();
        let v = verdict(&f);
        let j: serde_json::Value = serde_json::from_str(&render_json(&f, &v)).unwrap();
        assert_eq!(j["verdict"]["capture"], "full");
        assert_eq!(j["verdict"]["exit_code"], 0);
        let probes = j["facts"]["probes"].as_array().unwrap();
        assert_eq!(probes[5][0], "fentry");
        assert_eq!(probes[5][1]["result"], "load_refused");
        assert!(j["checks"].as_array().unwrap().len() > 10);
    }
}
