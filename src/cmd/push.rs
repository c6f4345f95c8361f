//! `k8s-alog push`: capture live (or replay a recording) and stream to the OAP.

use std::sync::atomic::Ordering;

use super::live::{self, LiveOptions};
use crate::cli::PushArgs;
use crate::exit::usage;
use crate::sink::jsonl::read_records;
use crate::sink::oap::OapSink;
use crate::sink::Sink;

pub fn run(args: &PushArgs) -> anyhow::Result<()> {
    // A recording that cannot be read is an error before anything is connected or spooled.
    let records = args.from.as_deref().map(read_records).transpose()?;
    let Some(mut sink) = super::oap::sink(&args.oap, &args.k8s)? else {
        return Err(usage("push needs --oap host:port (or K8S_ALOG_OAP)"));
    };
    let to = args.oap.oap.join(",");
    let res = match (records, &args.from) {
        (Some(records), Some(path)) => replay(path, records, &mut sink),
        _ => {
            let opts = LiveOptions {
                duration: args.duration,
                stats_interval: 10.0,
                what: format!("pushing to {to}"),
            };
            live::run(&args.capture, &args.k8s, &opts, &mut sink).map(|s| {
                eprintln!(
                    "k8s-alog: captured {} http and {} connection records in {:.1} s; lost: {} data events, {} connection events, {} sequence gaps, {} undecodable, {} evicted",
                    s.user.http_records,
                    s.user.connection_records,
                    s.elapsed.as_secs_f64(),
                    s.loss.ringbuf_data_events,
                    s.loss.ringbuf_conn_events,
                    s.loss.sequence_gaps,
                    s.loss.bad_records,
                    s.loss.evicted_connections,
                );
            })
        }
    };
    // Deliver (or spool) what is left, within the flush timeout, whatever happened above.
    let st = sink.finish();
    eprintln!("k8s-alog: push to {to}: {st}");
    eprintln!("k8s-alog: push counters: {}", st.kv());
    res
}

/// Every record of a recording, as fast as the OAP takes them (the queue waits for the
/// delivery thread instead of spilling into the spool). SIGINT/SIGTERM stop it.
fn replay(
    path: &std::path::Path,
    records: impl Iterator<Item = anyhow::Result<crate::model::Record>>,
    sink: &mut OapSink,
) -> anyhow::Result<()> {
    let stop = super::stop_flag()?;
    sink.set_backpressure(true);
    let mut n = 0u64;
    for rec in records {
        if stop.load(Ordering::Relaxed) {
            tracing::info!("stopped after {n} records of {}", path.display());
            break;
        }
        sink.write(&rec?)?;
        n += 1;
    }
    sink.flush()?;
    tracing::info!("read {n} records from {}", path.display());
    Ok(())
}
