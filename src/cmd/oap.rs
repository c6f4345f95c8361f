//! The OAP sink's settings from the command line (`--oap...` and the Kubernetes flags it
//! takes names from): checked here, at the edge, so that `sink::oap` knows nothing of
//! the CLI.

use std::time::Duration;

use anyhow::Context;

use crate::cli::{K8sArgs, OapArgs};
use crate::exit::usage;
use crate::sink::oap::{
    net_interfaces, parse_size, NodeConfig, OapConfig, OapSink, TlsSettings, MAX_BATCH_SIZE,
};

/// `return Err(usage(format!(...)))`: a flag value that cannot be used.
macro_rules! bail_usage {
    ($($t:tt)*) => {
        return Err(usage(format!($($t)*)))
    };
}

/// The sink for `--oap ...`, or None when no address was given (so `top` and `record`
/// can take the flags as optional).
pub fn sink(a: &OapArgs, k8s: &K8sArgs) -> anyhow::Result<Option<OapSink>> {
    match config(a, k8s)? {
        Some(cfg) => Ok(Some(OapSink::start(cfg)?)),
        None => Ok(None),
    }
}

/// From the command line; None when no `--oap` address was given.
pub fn config(a: &OapArgs, k8s: &K8sArgs) -> anyhow::Result<Option<OapConfig>> {
    let addresses: Vec<String> = a
        .oap
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if addresses.is_empty() {
        return Ok(None);
    }
    for addr in &addresses {
        if addr.contains("://") {
            bail_usage!("--oap {addr:?}: give host:port, without a scheme (TLS is --oap-ca)");
        }
        match addr.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
            _ => {
                bail_usage!("--oap {addr:?}: expected host:port (e.g. oap.skywalking:11800)")
            }
        }
    }
    let tls = match (&a.oap_ca, &a.oap_cert, &a.oap_key) {
        (None, None, None) => None,
        (None, _, _) => bail_usage!("--oap-cert/--oap-key need --oap-ca (TLS to the OAP)"),
        (Some(ca), cert, key) => {
            let identity = match (cert, key) {
                (Some(c), Some(k)) => Some((
                    read_file(c, "client certificate")?,
                    read_file(k, "client key")?,
                )),
                (None, None) => None,
                _ => bail_usage!("--oap-cert and --oap-key go together"),
            };
            Some(TlsSettings {
                ca_pem: read_file(ca, "OAP CA certificate")?,
                identity,
            })
        }
    };
    if a.oap_batch_size == 0 || a.oap_batch_size > MAX_BATCH_SIZE {
        bail_usage!("--oap-batch-size must be between 1 and {MAX_BATCH_SIZE}");
    }
    if !(a.oap_batch_period > 0.0 && a.oap_batch_period.is_finite()) {
        bail_usage!("--oap-batch-period must be a positive number of seconds");
    }
    let spool_max_bytes =
        parse_size(&a.oap_spool_max).map_err(|e| usage(format!("--oap-spool-max {e}")))?;
    let name = a
        .oap_node_name
        .clone()
        .or_else(|| k8s.node_name.clone())
        .unwrap_or_else(hostname);
    Ok(Some(OapConfig {
        addresses,
        tls,
        token: a.oap_token.clone().filter(|t| !t.is_empty()),
        batch_size: a.oap_batch_size,
        batch_period: Duration::from_secs_f64(a.oap_batch_period),
        spool_dir: a.oap_spool_dir.clone(),
        spool_max_bytes,
        node: NodeConfig {
            name,
            interfaces: net_interfaces(),
            cluster: a
                .oap_cluster
                .clone()
                .or_else(|| k8s.cluster.clone())
                .unwrap_or_default(),
            exclude_namespaces: a.oap_exclude_namespaces.clone(),
        },
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs_f64(a.oap_backoff_max.max(0.5)),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        flush_timeout: Duration::from_secs_f64(a.oap_flush_timeout.max(0.0)),
        log_every: Duration::from_secs_f64(a.oap_log_interval.max(0.0)),
    }))
}

fn read_file(p: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
