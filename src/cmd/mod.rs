//! Subcommands: wiring only.

pub mod doctor;
pub mod generate;
pub mod live;
pub mod oap;
pub mod push;
pub mod record;
pub mod top;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Set on SIGINT or SIGTERM; every capturing command stops cleanly when it is.
pub fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}
