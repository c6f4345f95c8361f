//! `k8s-alog push`.

use crate::cli::PushArgs;

pub fn run(_args: &PushArgs) -> anyhow::Result<()> {
    anyhow::bail!("`push` is not available yet; use `record`")
}
