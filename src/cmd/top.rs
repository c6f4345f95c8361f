//! `k8s-alog top`.

use crate::cli::TopArgs;

pub fn run(_args: &TopArgs) -> anyhow::Result<()> {
    anyhow::bail!("`top` is not available yet; use `record`")
}
