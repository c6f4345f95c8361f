//! `k8s-alog record`: capture and write JSON Lines.

use super::live::{self, LiveOptions};
use crate::cli::RecordArgs;
use crate::sink::jsonl::JsonlSink;

pub fn run(args: &RecordArgs) -> anyhow::Result<()> {
    let mut sink = JsonlSink::open(&args.out)?;
    let opts = LiveOptions {
        duration: args.duration,
        stats_interval: args.stats_interval,
        what: format!("writing {}", args.out.display()),
    };
    let s = live::run(&args.capture, &args.k8s, &opts, &mut sink)?;
    eprintln!(
        "k8s-alog: {} records ({} http, {} connections) in {:.1} s; kernel events {} data + {} connection; lost: {} data events, {} connection events, {} sequence gaps, {} undecodable, {} evicted",
        sink.records(),
        s.user.http_records,
        s.user.connection_records,
        s.elapsed.as_secs_f64(),
        s.kernel.data_events,
        s.kernel.conn_events,
        s.loss.ringbuf_data_events,
        s.loss.ringbuf_conn_events,
        s.loss.sequence_gaps,
        s.loss.bad_records,
        s.loss.evicted_connections,
    );
    Ok(())
}
