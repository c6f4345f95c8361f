//! `k8s-alog doctor`.

use crate::cli::DoctorArgs;

pub fn run(_args: &DoctorArgs) -> anyhow::Result<()> {
    anyhow::bail!("`doctor` is not available yet; use `record`")
}
