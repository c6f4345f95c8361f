//! The parsers' shared memory budget: what every connection's parser holds is counted,
//! and past the budget the parsers holding the most write out early what waits for an
//! answer, or start over. Engine state only (the records it writes go through the
//! engine's usual path).

use super::{Conn, Engine};
use crate::protocol::l7::Parser;
use crate::protocol::Direction;

/// The parsers' shared budget by default: 128 MiB (a connection's parser holds at most
/// about 1.1 MiB: HTTP/2 streams 1 MiB plus frame buffers and HPACK tables; HTTP/1 two
/// heads plus 1 MiB of requests waiting).
pub const DEFAULT_PARSER_BYTES: usize = 128 << 20;

impl Engine {
    /// Count what every parser holds (parsers also shrink between calls).
    pub(super) fn recount_parser_bytes(&mut self) {
        let mut total = 0usize;
        for c in self.conns.values_mut() {
            c.mem = c.http.as_ref().map_or(0, Parser::buffered_bytes);
            total = total.saturating_add(c.mem);
        }
        self.parser_bytes = total;
    }

    /// A connection's parser holds `mem` bytes now.
    pub(super) fn set_mem(&mut self, c: &mut Conn, mem: usize) {
        self.parser_bytes = self.parser_bytes.saturating_sub(c.mem).saturating_add(mem);
        c.mem = mem;
    }

    /// Over the shared budget: bring the parsers that hold the most down until all hold
    /// at most three quarters of it (so that parsers held at the budget do not sort on
    /// every call). First what waits for an answer is written out early (nothing is
    /// lost, the parsers stay in step); only if that is not enough are parsers started
    /// over (their partial heads, frames and tables are lost, counted).
    pub(super) fn enforce_parser_budget(&mut self, now: u64) {
        if self.parser_bytes <= self.opts.max_parser_bytes {
            return;
        }
        let goal = self.opts.max_parser_bytes / 4 * 3;
        for restart in [false, true] {
            let mut held: Vec<(usize, u64)> = self
                .conns
                .values()
                .filter(|c| c.mem > 0 && !self.may_be_linked_yet(c, now))
                .map(|c| (c.mem, c.cookie))
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            for (_, cookie) in held {
                if self.parser_bytes <= goal {
                    return;
                }
                if let Some(mut c) = self.conns.remove(&cookie) {
                    if restart {
                        self.restart_parser(&mut c, now);
                    } else {
                        self.shed_waiting(&mut c);
                    }
                    self.conns.insert(cookie, c);
                }
            }
        }
    }

    /// Write out early what a connection's parser holds waiting for an answer.
    fn shed_waiting(&mut self, c: &mut Conn) {
        let Some(mut h) = c.http.take() else {
            return;
        };
        let mut done = std::mem::take(&mut self.scratch);
        h.shed(&mut done);
        let any = !done.is_empty();
        for x in done.drain(..) {
            self.emit_http(c, x);
        }
        self.scratch = done;
        let mem = h.buffered_bytes();
        c.http = Some(h);
        self.set_mem(c, mem);
        if any {
            self.user.parsers_shed_memory += 1;
        }
    }

    /// Start a connection's parser over: what it has in flight is written out,
    /// incomplete, note `memory_budget`; what follows is parsed as if joined mid-stream,
    /// and the connection is marked as having lost data.
    fn restart_parser(&mut self, c: &mut Conn, now: u64) {
        let Some(mut h) = c.http.take() else {
            return;
        };
        self.close_parser(c, &mut h, now, Some("memory_budget"));
        let mut fresh = if h.is_http2() {
            Parser::http2(c.role, false)
        } else {
            Parser::http1(c.role, self.opts.max_header_bytes)
        };
        // Bytes were skipped: pairing is only trusted again from a fresh start.
        fresh.gap(Direction::Egress);
        fresh.gap(Direction::Ingress);
        c.http = Some(fresh);
        let mem = c.http.as_ref().map_or(0, Parser::buffered_bytes);
        self.set_mem(c, mem);
        c.data_lost = true;
        self.user.parsers_restarted_memory += 1;
    }
}

#[cfg(test)]
mod tests {
    use crate::capture::ConnKind;
    use crate::engine::pairing::LINK_WAIT_NS;
    use crate::engine::test_util::{conn, data};
    use crate::engine::{Engine, EngineOptions};
    use crate::model::{Clock, HttpRecord, Record};
    use crate::protocol::{Direction, Role};

    /// Clients that pipeline requests no one answers make every parser hold up to its own
    /// bound; together they are held to the shared budget: the parsers holding the most
    /// start over, their requests are written out (incomplete, `memory_budget`), none is
    /// lost, and parsing goes on.
    #[test]
    fn parsers_are_held_to_one_shared_budget() {
        let budget = 256 * 1024;
        let opts = EngineOptions {
            max_parser_bytes: budget,
            ..EngineOptions::default()
        };
        let mut e = Engine::new(opts, Clock::now(), None, 0);
        let long = "a".repeat(1000);
        let mut sent = 0u64;
        let mut peak = 0;
        for cookie in 1..=40u64 {
            e.on_conn(&conn(
                ConnKind::Connected,
                cookie,
                cookie,
                &format!("127.0.0.1:{}", 40000 + cookie),
                "127.0.0.2:8080",
                Role::Client,
            ));
            for seq in 0..50u64 {
                let req = format!("GET /{long}/{seq} HTTP/1.1\r\nHost: x\r\n\r\n");
                // Past the wait for a server's view on this node to be linked.
                let ts = LINK_WAIT_NS + 1000 + seq;
                e.on_data(&data(cookie, seq, ts, Direction::Egress, req.as_bytes()));
                sent += 1;
                peak = peak.max(e.user_counters().parser_bytes);
            }
        }
        let u = e.user_counters();
        assert!(peak <= budget as u64 + 64 * 1024, "peak {peak}");
        assert!(u.parsers_shed_memory >= 4, "{u:?}");
        // A client's view younger than the wait, with no server's view linked yet, is
        // not made to write early: the server's view may still come and write it.
        let mut young = Engine::new(
            EngineOptions {
                max_parser_bytes: 16 * 1024,
                ..EngineOptions::default()
            },
            Clock::now(),
            None,
            0,
        );
        young.on_conn(&conn(
            ConnKind::Connected,
            1,
            1,
            "127.0.0.1:40001",
            "127.0.0.2:8080",
            Role::Client,
        ));
        for seq in 0..50u64 {
            let req = format!("GET /{long}/{seq} HTTP/1.1\r\nHost: x\r\n\r\n");
            young.on_data(&data(1, seq, 1000 + seq, Direction::Egress, req.as_bytes()));
        }
        assert_eq!(young.user_counters().parsers_shed_memory, 0);
        young.tick(LINK_WAIT_NS + 10);
        assert_eq!(young.user_counters().parsers_shed_memory, 1);
        assert!(young.user_counters().parser_bytes <= 16 * 1024);
        // Held back without the budget: 40 x 50 requests of about 1.1 KB.
        e.finish_all(LINK_WAIT_NS + 1_000_000);
        let http: Vec<&HttpRecord> = e
            .out
            .iter()
            .filter_map(|r| match r {
                Record::Http(h) => Some(h),
                _ => None,
            })
            .collect();
        assert_eq!(http.len() as u64, sent, "every request written once");
        let shed = http
            .iter()
            .filter(|h| h.notes.iter().any(|n| n == "memory_budget"))
            .count();
        assert!(shed >= 100, "{shed} written early");
        assert_eq!(e.user_counters().parser_bytes, 0);
    }
}
