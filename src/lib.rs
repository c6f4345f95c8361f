//! k8s-alog: Kubernetes access logs from eBPF.
//!
//! Data flows one way: kernel events (`capture`) -> L7 parsing (`protocol`) ->
//! connection state and attribution (`engine`, `resolve`) -> records (`model`) ->
//! sinks (`sink`).

pub mod capture;
pub mod cli;
pub mod cmd;
pub mod doctor;
pub mod engine;
pub mod entities;
pub mod exit;
pub mod flow;
pub mod fsutil;
pub mod model;
pub mod netaddr;
pub mod protocol;
pub mod resolve;
pub mod sink;
pub mod tls;
pub mod top;

/// Logs go to stderr, never to stdout (which may carry JSONL). `plain` turns colours off
/// even on a terminal (the dashboard sends stderr to a log file once it starts).
/// Keep freed memory from staying with the process (glibc's allocator). Large buffers
/// (TLS inspection reads pieces of binaries of up to tens of MiB) are always mapped and
/// unmapped, instead of glibc raising its mapping threshold after the first one and
/// keeping later ones on a heap that does not shrink (measured: a one-time step of about
/// 24 MB of RSS that stayed for good); and threads share a few arenas, so the short-lived
/// threads that detach probes do not each keep one.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

pub fn init_logging(level: &str, plain: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!plain && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
    // libbpf's own messages (including the verifier's log when a program is refused) go
    // through the same logger, at debug level, instead of straight to stderr.
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_log)));
}

fn libbpf_log(level: libbpf_rs::PrintLevel, msg: String) {
    let msg = msg.trim_end();
    match level {
        libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
        _ => tracing::debug!(target: "libbpf", "{msg}"),
    }
}

#[cfg(test)]
mod layering_tests;
