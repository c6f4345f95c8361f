//! Where records go: JSONL files now; the OAP and the dashboard share the same records.

pub mod jsonl;

use crate::model::Record;

/// A destination for records.
pub trait Sink {
    fn write(&mut self, rec: &Record) -> anyhow::Result<()>;
    fn flush(&mut self) -> anyhow::Result<()>;
}
