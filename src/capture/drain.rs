//! Bounded draining of the ring buffer. Pure: the ring is reached through a closure.
//!
//! libbpf's own poll and consume keep reading while records arrive, so under a constant
//! overload they never return: ticks stop (no `stats` records exactly when losses happen),
//! closed connections are never flushed, new TLS code is never attached and a stop request
//! is never seen. Every drain here stops after a number of records or a stretch of time,
//! whichever comes first, and says whether it left records behind.

use std::time::{Duration, Instant};

/// How much one drain may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainBound {
    /// Records asked of the ring at once.
    pub batch: usize,
    /// Records in all.
    pub records: u64,
    /// Wall-clock time.
    pub time: Duration,
}

impl DrainBound {
    /// Between ticks: ~50 ms of work keeps the loop's other duties (ticks every 100 or
    /// 500 ms, TLS attach, stop) on time while costing nothing when the ring keeps up.
    pub const STEADY: Self = Self {
        batch: 1024,
        records: 1 << 16,
        time: Duration::from_millis(50),
    };
    /// At stop: what is in the ring then, within a second, so a stop under overload
    /// still ends promptly.
    pub const FINAL: Self = Self {
        batch: 1024,
        records: 1 << 22,
        time: Duration::from_secs(1),
    };
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The ring was found empty after this many records.
    Empty(u64),
    /// The bound was reached after this many records; more may be waiting.
    Bounded(u64),
}

impl Drained {
    /// Records consumed.
    pub fn records(self) -> u64 {
        match self {
            Self::Empty(n) | Self::Bounded(n) => n,
        }
    }
}

/// Drain with `consume_n(n)`, which consumes at most `n` records and returns how many it
/// did (or a negative errno), until it comes back short or `bound` is reached.
pub fn drain(
    bound: DrainBound,
    mut consume_n: impl FnMut(usize) -> i32,
    now: impl Fn() -> Instant,
) -> Result<Drained, i32> {
    let start = now();
    let batch = bound.batch.max(1);
    let mut total: u64 = 0;
    loop {
        let got = consume_n(batch);
        if got < 0 {
            return Err(got);
        }
        let got = got.unsigned_abs() as usize;
        total = total.saturating_add(got as u64);
        if got < batch {
            return Ok(Drained::Empty(total));
        }
        if total >= bound.records || now().saturating_duration_since(start) >= bound.time {
            return Ok(Drained::Bounded(total));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A ring that never empties (a producer faster than the consumer): the drain must
    /// still return, by count, and say records were left.
    #[test]
    fn a_ring_that_never_empties_is_left_at_the_record_bound() {
        let calls = Cell::new(0u64);
        let bound = DrainBound {
            batch: 100,
            records: 1000,
            time: Duration::from_secs(3600),
        };
        let r = drain(
            bound,
            |n| {
                calls.set(calls.get() + 1);
                n as i32
            },
            Instant::now,
        );
        assert_eq!(r, Ok(Drained::Bounded(1000)));
        assert_eq!(calls.get(), 10);
    }

    /// Slow records: the time bound ends the drain even when the count is far off.
    #[test]
    fn slow_records_are_left_at_the_time_bound() {
        let t0 = Instant::now();
        let clock = Cell::new(t0);
        let bound = DrainBound {
            batch: 10,
            records: u64::MAX,
            time: Duration::from_millis(50),
        };
        let r = drain(
            bound,
            |n| {
                clock.set(clock.get() + Duration::from_millis(20));
                n as i32
            },
            || clock.get(),
        )
        .unwrap();
        assert_eq!(r, Drained::Bounded(30));
    }

    #[test]
    fn a_short_batch_means_empty_and_errors_pass_through() {
        let mut left = 25;
        let r = drain(
            DrainBound::STEADY,
            |n| {
                let k = left.min(n);
                left -= k;
                k as i32
            },
            Instant::now,
        );
        assert_eq!(r, Ok(Drained::Empty(25)));
        assert_eq!(drain(DrainBound::STEADY, |_| -4, Instant::now), Err(-4));
        assert_eq!(
            drain(DrainBound::STEADY, |_| 0, Instant::now),
            Ok(Drained::Empty(0))
        );
    }

    #[test]
    fn a_zero_batch_is_treated_as_one() {
        let b = DrainBound {
            batch: 0,
            records: 3,
            time: Duration::from_secs(1),
        };
        assert_eq!(
            drain(b, |n| n as i32, Instant::now),
            Ok(Drained::Bounded(3))
        );
    }
}
