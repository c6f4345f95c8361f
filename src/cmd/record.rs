//! `k8s-alog record`: capture and write JSON Lines (and forward to the OAP with `--oap`).

use super::live::{self, LiveOptions};
use crate::cli::RecordArgs;
use crate::sink::jsonl::JsonlSink;
use crate::sink::Fanout;

pub fn run(args: &RecordArgs) -> anyhow::Result<()> {
    let mut sink = JsonlSink::open(&args.out)?;
    let mut oap = super::oap::sink(&args.oap, &args.k8s)?;
    let mut what = format!("writing {}", args.out.display());
    if oap.is_some() {
        what.push_str(&format!(" and pushing to {}", args.oap.oap.join(",")));
    }
    let opts = LiveOptions {
        duration: args.duration,
        stats_interval: args.stats_interval,
        what,
    };
    let res = match &mut oap {
        // Borrowed, not moved: the file's record count and the OAP's counters are read
        // after the capture.
        Some(o) => live::run(
            &args.capture,
            &args.k8s,
            &opts,
            &mut Fanout(vec![Box::new(&mut sink), Box::new(o)]),
        ),
        None => live::run(&args.capture, &args.k8s, &opts, &mut sink),
    };
    if let Some(o) = &mut oap {
        let st = o.finish();
        eprintln!("k8s-alog: push to {}: {st}", args.oap.oap.join(","));
        eprintln!("k8s-alog: push counters: {}", st.kv());
    }
    let s = res?;
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
