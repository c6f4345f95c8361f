//! Where records go: a JSONL file, the dashboard, the OAP; all share the same records.

pub mod jsonl;
pub mod oap;

use crate::model::Record;

/// The reader of the output has gone (a closed pipe, as in `record --out - | head`): the
/// run ends, successfully, as other Unix tools do.
#[derive(Debug, thiserror::Error)]
#[error("the reader of the output has gone (closed pipe)")]
pub struct OutputClosed;

/// A destination for records.
pub trait Sink {
    fn write(&mut self, rec: &Record) -> anyhow::Result<()>;
    fn flush(&mut self) -> anyhow::Result<()>;
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write(&mut self, rec: &Record) -> anyhow::Result<()> {
        (**self).write(rec)
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        (**self).flush()
    }
}

/// Every record to each of several sinks (e.g. a JSONL file and the OAP).
#[derive(Default)]
pub struct Fanout<'a>(pub Vec<Box<dyn Sink + 'a>>);

impl Sink for Fanout<'_> {
    fn write(&mut self, rec: &Record) -> anyhow::Result<()> {
        for s in &mut self.0 {
            s.write(rec)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        for s in &mut self.0 {
            s.flush()?;
        }
        Ok(())
    }
}
