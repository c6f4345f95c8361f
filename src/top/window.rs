//! Sliding-window counters and latency histograms for one aggregate (a service, a pod,
//! an endpoint, an edge, an L4 flow). Pure: time is passed in (monotonic ns).
//!
//! Each window (10 s, 1 min, 5 min) is a ring of a few slots; a slot holds counters and a
//! latency histogram allocated only when something lands in it and reused after. A window
//! therefore covers between `(n-1)/n` of its length and all of it, and its rate is
//! divided by the time actually covered. Memory per aggregate is fixed: 16 slots.

use hdrhistogram::Histogram;

/// A time window the dashboard shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Window {
    #[default]
    S10,
    M1,
    M5,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::S10, Window::M1, Window::M5];

    pub fn index(self) -> usize {
        match self {
            Self::S10 => 0,
            Self::M1 => 1,
            Self::M5 => 2,
        }
    }

    pub fn secs(self) -> u64 {
        match self {
            Self::S10 => 10,
            Self::M1 => 60,
            Self::M5 => 300,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::S10 => "10s",
            Self::M1 => "1m",
            Self::M5 => "5m",
        }
    }

    pub fn next(self) -> Self {
        match self {
            Self::S10 => Self::M1,
            Self::M1 => Self::M5,
            Self::M5 => Self::S10,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "10s" | "10" => Some(Self::S10),
            "1m" | "60s" | "60" => Some(Self::M1),
            "5m" | "300s" | "300" => Some(Self::M5),
            _ => None,
        }
    }

    /// (slot width ns, slot count).
    fn layout(self) -> (u64, usize) {
        match self {
            Self::S10 => (2_000_000_000, 5),
            Self::M1 => (10_000_000_000, 6),
            Self::M5 => (60_000_000_000, 5),
        }
    }
}

/// Everything counted per slot; one struct for every kind of aggregate (the unused
/// fields of a kind stay zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests served (inbound, server side).
    pub requests: u64,
    pub errors: u64,
    pub s1xx: u64,
    pub s2xx: u64,
    pub s3xx: u64,
    pub s4xx: u64,
    pub s5xx: u64,
    /// No response seen.
    pub no_response: u64,
    /// Request plus response bytes (headers and bodies).
    pub bytes: u64,
    pub latency_sum_ns: u64,
    /// Requests made (outbound, client side).
    pub out_requests: u64,
    pub out_errors: u64,
    /// Connections closed in the slot.
    pub conns: u64,
    pub conn_bytes_c2s: u64,
    pub conn_bytes_s2c: u64,
    pub rtt_sum_us: u64,
    pub rtt_samples: u64,
    pub rtt_max_us: u64,
    pub retransmits: u64,
    pub resets: u64,
    pub connect_failed: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.s1xx += o.s1xx;
        self.s2xx += o.s2xx;
        self.s3xx += o.s3xx;
        self.s4xx += o.s4xx;
        self.s5xx += o.s5xx;
        self.no_response += o.no_response;
        self.bytes += o.bytes;
        self.latency_sum_ns += o.latency_sum_ns;
        self.out_requests += o.out_requests;
        self.out_errors += o.out_errors;
        self.conns += o.conns;
        self.conn_bytes_c2s += o.conn_bytes_c2s;
        self.conn_bytes_s2c += o.conn_bytes_s2c;
        self.rtt_sum_us += o.rtt_sum_us;
        self.rtt_samples += o.rtt_samples;
        self.rtt_max_us = self.rtt_max_us.max(o.rtt_max_us);
        self.retransmits += o.retransmits;
        self.resets += o.resets;
        self.connect_failed += o.connect_failed;
    }

    pub fn error_pct(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            100.0 * self.errors as f64 / self.requests as f64
        }
    }

    /// Which status classes occurred: bit 1..5 for 1xx..5xx, bit 0 for no response.
    pub fn status_mask(&self) -> u8 {
        let mut m = 0u8;
        for (bit, n) in [
            (0, self.no_response),
            (1, self.s1xx),
            (2, self.s2xx),
            (3, self.s3xx),
            (4, self.s4xx),
            (5, self.s5xx),
        ] {
            if n > 0 {
                m |= 1 << bit;
            }
        }
        m
    }
}

/// Latency histograms are in microseconds, 1 µs to 10 min, two significant figures.
pub const HIST_MAX_US: u64 = 600_000_000;

pub fn new_hist() -> Histogram<u32> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("valid histogram bounds")
}

#[derive(Debug, Clone)]
struct Slot {
    /// Slot number (time / width) this slot currently holds; u64::MAX when empty.
    epoch: u64,
    counts: Counts,
    hist: Option<Box<Histogram<u32>>>,
    hist_used: bool,
}

impl Slot {
    fn empty() -> Self {
        Self {
            epoch: u64::MAX,
            counts: Counts::default(),
            hist: None,
            hist_used: false,
        }
    }

    fn claim(&mut self, epoch: u64) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.counts = Counts::default();
            if self.hist_used {
                if let Some(h) = &mut self.hist {
                    h.reset();
                }
                self.hist_used = false;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Ring {
    width_ns: u64,
    slots: Vec<Slot>,
}

impl Ring {
    fn new(w: Window) -> Self {
        let (width_ns, n) = w.layout();
        Self {
            width_ns,
            slots: (0..n).map(|_| Slot::empty()).collect(),
        }
    }

    fn slot_at(&mut self, t_ns: u64, now_ns: u64) -> Option<&mut Slot> {
        let e = t_ns / self.width_ns;
        let now_e = now_ns.max(t_ns) / self.width_ns;
        let n = self.slots.len() as u64;
        if e + n <= now_e {
            return None; // older than the window
        }
        let s = &mut self.slots[(e % n) as usize];
        if s.epoch != u64::MAX && s.epoch > e {
            return None; // the slot already holds a later time
        }
        s.claim(e);
        Some(s)
    }

    fn live(&self, now_ns: u64) -> impl Iterator<Item = &Slot> {
        let now_e = now_ns / self.width_ns;
        let n = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |s| s.epoch != u64::MAX && s.epoch <= now_e && s.epoch + n > now_e)
    }

    /// Start of the oldest time this ring can cover at `now`.
    fn covered_from(&self, now_ns: u64) -> u64 {
        let now_e = now_ns / self.width_ns;
        let n = self.slots.len() as u64;
        now_e.saturating_sub(n - 1) * self.width_ns
    }
}

/// Counters and latency over the three windows.
#[derive(Debug, Clone)]
pub struct Windowed {
    rings: [Ring; 3],
    /// Monotonic ns of the last thing added.
    pub last_ns: u64,
}

impl Default for Windowed {
    fn default() -> Self {
        Self::new()
    }
}

impl Windowed {
    pub fn new() -> Self {
        Self {
            rings: [
                Ring::new(Window::S10),
                Ring::new(Window::M1),
                Ring::new(Window::M5),
            ],
            last_ns: 0,
        }
    }

    /// Add counts (and optionally one latency) at time `t_ns`, seen at `now_ns`.
    pub fn add(&mut self, t_ns: u64, now_ns: u64, c: &Counts, latency_ns: Option<u64>) {
        self.last_ns = self.last_ns.max(t_ns);
        for r in &mut self.rings {
            if let Some(s) = r.slot_at(t_ns, now_ns) {
                s.counts.add(c);
                if let Some(ns) = latency_ns {
                    let us = (ns / 1000).clamp(1, HIST_MAX_US);
                    let h = s.hist.get_or_insert_with(|| Box::new(new_hist()));
                    h.saturating_record(us);
                    s.hist_used = true;
                }
            }
        }
    }

    /// Sum of the window's slots.
    pub fn counts(&self, w: Window, now_ns: u64) -> Counts {
        let mut c = Counts::default();
        for s in self.rings[w.index()].live(now_ns) {
            c.add(&s.counts);
        }
        c
    }

    /// Latency percentiles (ns) over the window into `scratch`; None without samples.
    pub fn percentiles(
        &self,
        w: Window,
        now_ns: u64,
        qs: &[f64],
        scratch: &mut Histogram<u32>,
    ) -> Option<Vec<u64>> {
        scratch.reset();
        for s in self.rings[w.index()].live(now_ns) {
            if let (true, Some(h)) = (s.hist_used, &s.hist) {
                let _ = scratch.add(h.as_ref());
            }
        }
        if scratch.is_empty() {
            return None;
        }
        Some(
            qs.iter()
                .map(|q| scratch.value_at_quantile(*q) * 1000)
                .collect(),
        )
    }

    /// Seconds the window covers at `now`, not counting time before `since_ns` (when
    /// the data began), at least 1 s.
    pub fn span_s(w: Window, now_ns: u64, since_ns: u64) -> f64 {
        let r = Ring::new(w);
        let from = r.covered_from(now_ns).max(since_ns);
        (now_ns.saturating_sub(from) as f64 / 1e9).max(1.0)
    }

    /// Nothing in any window at `now`.
    pub fn idle(&self, now_ns: u64) -> bool {
        self.last_ns + Window::M5.secs() * 1_000_000_000 < now_ns
    }

    /// Histograms allocated (for the memory figure in the help screen).
    pub fn hists_allocated(&self) -> usize {
        self.rings
            .iter()
            .flat_map(|r| r.slots.iter())
            .filter(|s| s.hist.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn req(err: bool) -> Counts {
        Counts {
            requests: 1,
            errors: u64::from(err),
            ..Counts::default()
        }
    }

    #[test]
    fn counts_slide_out_of_each_window() {
        let mut w = Windowed::new();
        let t0 = 1000 * S;
        for i in 0..10 {
            w.add(t0 + i * S / 10, t0, &req(i == 0), Some((i + 1) * 1_000_000));
        }
        let now = t0 + S;
        assert_eq!(w.counts(Window::S10, now).requests, 10);
        assert_eq!(w.counts(Window::S10, now).errors, 1);
        assert_eq!(w.counts(Window::M5, now).requests, 10);
        // 12 s later the 10 s window is empty; 1 min and 5 min still hold them.
        let later = t0 + 12 * S;
        assert_eq!(w.counts(Window::S10, later).requests, 0);
        assert_eq!(w.counts(Window::M1, later).requests, 10);
        // After 6 min nothing is left.
        assert_eq!(w.counts(Window::M5, t0 + 360 * S).requests, 0);
        assert!(w.idle(t0 + 360 * S));
    }

    #[test]
    fn percentiles_from_the_histogram() {
        let mut w = Windowed::new();
        let t0 = 50 * S;
        for ms in 1..=100u64 {
            w.add(t0, t0, &req(false), Some(ms * 1_000_000));
        }
        let mut scratch = new_hist();
        let p = w
            .percentiles(Window::S10, t0, &[0.5, 0.9, 0.99], &mut scratch)
            .unwrap();
        // Two significant figures: within 1 %.
        for (got, want) in p.iter().zip([50_000_000u64, 90_000_000, 99_000_000]) {
            let err = (*got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.01, "{got} vs {want}");
        }
        assert!(w
            .percentiles(Window::S10, t0 + 20 * S, &[0.5], &mut scratch)
            .is_none());
    }

    #[test]
    fn slots_are_reused_not_grown() {
        let mut w = Windowed::new();
        for i in 0..10_000u64 {
            w.add(i * S, i * S, &req(false), Some(1_000_000));
        }
        assert_eq!(
            w.hists_allocated(),
            16,
            "5 + 6 + 5 slots, each one histogram"
        );
        assert_eq!(
            w.counts(Window::S10, 9_999 * S).requests,
            10,
            "9990..=9999 s"
        );
    }

    #[test]
    fn late_records_land_in_their_own_slot_or_nowhere() {
        let mut w = Windowed::new();
        let now = 1000 * S;
        w.add(now - 3 * S, now, &req(false), None);
        assert_eq!(w.counts(Window::S10, now).requests, 1);
        // Older than every window: dropped silently (it is outside all of them).
        w.add(now - 400 * S, now, &req(false), None);
        assert_eq!(w.counts(Window::M5, now).requests, 1);
    }

    #[test]
    fn span_counts_only_time_covered() {
        // Data since 3 s ago: a 10 s window covers 3 s.
        assert_eq!(Windowed::span_s(Window::S10, 100 * S, 97 * S), 3.0);
        // Long running: between 8 and 10 s.
        let s = Windowed::span_s(Window::S10, 101 * S, 0);
        assert!((8.0..=10.0).contains(&s), "{s}");
    }
}
