//! k8s-alog: Kubernetes access logs from eBPF.
//!
//! Data flows one way: kernel events (`capture`) -> L7 parsing (`protocol`) ->
//! connection state and attribution (`engine`, `resolve`) -> records (`model`) ->
//! sinks (`sink`).

pub mod capture;
pub mod cli;
pub mod cmd;
pub mod engine;
pub mod model;
pub mod protocol;
pub mod resolve;
pub mod sink;

/// Logs go to stderr, never to stdout (which may carry JSONL).
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
