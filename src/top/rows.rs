//! Tables of the views, computed from the state for one window at one instant: every
//! cell has its text and a sort key, every row its filter attributes and detail lines.
//! Pure: reads the state, changes nothing.

use std::cmp::Ordering;

use hdrhistogram::Histogram;

use super::filter::Filter;
use super::state::{party_name, Agg, Attrs, State, PROTO_GRPC, PROTO_HTTP1, PROTO_HTTP2};
use super::window::{new_hist, Counts, Window};

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViewKind {
    #[default]
    Services,
    Pods,
    Endpoints,
    Topology,
    Connections,
    Tail,
}

impl ViewKind {
    pub const ALL: [ViewKind; 6] = [
        ViewKind::Services,
        ViewKind::Pods,
        ViewKind::Endpoints,
        ViewKind::Topology,
        ViewKind::Connections,
        ViewKind::Tail,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Self::Services => "Services",
            Self::Pods => "Pods",
            Self::Endpoints => "Endpoints",
            Self::Topology => "Topology",
            Self::Connections => "Connections",
            Self::Tail => "Tail",
        }
    }

    /// Column headers and widths (0: takes the rest, shared).
    pub fn columns(self) -> &'static [(&'static str, u16)] {
        match self {
            Self::Services => &[
                ("SERVICE", 0),
                ("REQ/S", 7),
                ("ERR%", 6),
                ("P50", 7),
                ("P90", 7),
                ("P99", 7),
                ("BYTES/S", 8),
                ("OUT/S", 7),
            ],
            Self::Pods => &[
                ("POD", 0),
                ("SERVICE", 0),
                ("REQ/S", 7),
                ("ERR%", 6),
                ("P50", 7),
                ("P99", 7),
                ("OUT/S", 7),
            ],
            Self::Endpoints => &[
                ("SERVICE", 0),
                ("ENDPOINT", 0),
                ("PROTO", 5),
                ("REQ/S", 7),
                ("ERR%", 6),
                ("P50", 7),
                ("P99", 7),
            ],
            Self::Topology => &[
                ("CLIENT", 0),
                ("SERVER", 0),
                ("REQ/S", 7),
                ("ERR%", 6),
                ("P50", 7),
                ("P99", 7),
                ("CONN/S", 7),
            ],
            Self::Connections => &[
                ("CLIENT", 0),
                ("SERVER:PORT", 0),
                ("CONN/S", 7),
                ("TX/S", 7),
                ("RX/S", 7),
                ("RTT", 7),
                ("RETX", 5),
                ("RST", 4),
            ],
            Self::Tail => &[
                ("TIME", 12),
                ("CLIENT", 0),
                ("SERVER", 0),
                ("REQUEST", 0),
                ("ST", 4),
                ("DUR", 7),
            ],
        }
    }
}

impl ViewKind {
    /// Share of the free width a flexible column takes (the name that matters most
    /// gets more).
    pub fn fill_weight(self, col: usize) -> u16 {
        match (self, col) {
            (Self::Pods, 0) | (Self::Endpoints, 1) | (Self::Tail, 2) | (Self::Tail, 3) => 3,
            (Self::Pods, _) | (Self::Endpoints, _) | (Self::Tail, _) => 2,
            _ => 1,
        }
    }
}

/// How a cell sorts.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Num(f64),
    Text(String),
}

impl SortKey {
    fn cmp(&self, o: &SortKey) -> Ordering {
        match (self, o) {
            (SortKey::Num(a), SortKey::Num(b)) => a.total_cmp(b),
            (SortKey::Text(a), SortKey::Text(b)) => a.cmp(b),
            (SortKey::Num(_), SortKey::Text(_)) => Ordering::Less,
            (SortKey::Text(_), SortKey::Num(_)) => Ordering::Greater,
        }
    }
}

/// Emphasis of a cell, mapped to colours by the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tone {
    #[default]
    Normal,
    Dim,
    Warn,
    Bad,
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub key: SortKey,
    pub tone: Tone,
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Self {
        let s = s.into();
        Self {
            key: SortKey::Text(s.clone()),
            text: s,
            tone: Tone::Normal,
        }
    }

    pub fn num(text: String, v: f64) -> Self {
        Self {
            text,
            key: SortKey::Num(v),
            tone: Tone::Normal,
        }
    }

    fn tone(mut self, t: Tone) -> Self {
        self.tone = t;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    /// Identity kept across refreshes, so the selection follows the row.
    pub id: String,
    pub cells: Vec<Cell>,
    pub detail: Vec<(String, String)>,
    /// Edges only: (client, server) for the graph.
    pub edge: Option<(String, String)>,
}

/// Rate with a unit that fits in 7 columns.
pub fn fmt_rate(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else if v < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{:.1}M", v / 1e6)
    }
}

pub fn fmt_bytes(v: f64) -> String {
    if v < 1024.0 {
        format!("{v:.0}")
    } else if v < 1024.0 * 1024.0 {
        format!("{:.1}K", v / 1024.0)
    } else if v < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1}M", v / 1048576.0)
    } else {
        format!("{:.1}G", v / 1073741824.0)
    }
}

pub fn fmt_dur_ns(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{}µs", ns / 1000)
    } else if ns < 10_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else if ns < 1_000_000_000 {
        format!("{:.0}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

fn pct_cell(c: &Counts) -> Cell {
    let p = c.error_pct();
    let tone = if c.errors == 0 {
        Tone::Normal
    } else if p >= 5.0 {
        Tone::Bad
    } else {
        Tone::Warn
    };
    let text = if c.requests == 0 {
        "-".into()
    } else {
        format!("{p:.1}")
    };
    Cell::num(text, p).tone(tone)
}

fn lat_cell(v: Option<u64>) -> Cell {
    match v {
        Some(ns) => Cell::num(fmt_dur_ns(ns), ns as f64),
        None => Cell::num("-".into(), -1.0).tone(Tone::Dim),
    }
}

fn rate_cell(n: u64, span: f64) -> Cell {
    let r = n as f64 / span;
    let c = Cell::num(fmt_rate(r), r);
    if n == 0 {
        c.tone(Tone::Dim)
    } else {
        c
    }
}

fn bytes_rate_cell(n: u64, span: f64) -> Cell {
    let r = n as f64 / span;
    Cell::num(fmt_bytes(r), r)
}

fn proto_text(p: u8) -> &'static str {
    if p & PROTO_GRPC != 0 {
        "gRPC"
    } else if p & PROTO_HTTP2 != 0 {
        "h2"
    } else if p & PROTO_HTTP1 != 0 {
        "http"
    } else {
        "tcp"
    }
}

/// An endpoint as shown: gRPC calls (`POST:/pkg.Service/Method`) as `Service/Method`,
/// which fits; the full name is in the detail pane.
pub fn short_endpoint(ep: &str) -> String {
    if let Some(rest) = ep
        .strip_prefix("POST:/")
        .or_else(|| ep.strip_prefix("POST /"))
    {
        if let Some((svc, method)) = rest.split_once('/') {
            if svc.contains('.') && !method.contains('/') {
                let short = svc.rsplit('.').next().unwrap_or(svc);
                return format!("{short}/{method}");
            }
        }
    }
    ep.to_string()
}

/// Figures of one aggregate over the window.
struct Fig {
    c: Counts,
    p: Option<Vec<u64>>,
}

fn figures(a: &Agg, w: Window, now: u64, scratch: &mut Histogram<u32>) -> Fig {
    Fig {
        c: a.w.counts(w, now),
        p: a.w.percentiles(w, now, &[0.5, 0.9, 0.99], scratch),
    }
}

fn common_detail(f: &Fig, a: &Agg, span: f64) -> Vec<(String, String)> {
    let c = &f.c;
    let mut d = vec![
        (
            "requests".into(),
            format!(
                "{} in window ({}/s), {} errors; since first seen {} ({} errors)",
                c.requests,
                fmt_rate(c.requests as f64 / span),
                c.errors,
                a.total.requests,
                a.total.errors
            ),
        ),
        (
            "status".into(),
            format!(
                "1xx {}  2xx {}  3xx {}  4xx {}  5xx {}  none {}",
                c.s1xx, c.s2xx, c.s3xx, c.s4xx, c.s5xx, c.no_response
            ),
        ),
    ];
    if let Some(p) = &f.p {
        let mean = c.latency_sum_ns.checked_div(c.requests).unwrap_or(0);
        d.push((
            "latency".into(),
            format!(
                "p50 {}  p90 {}  p99 {}  mean {}",
                fmt_dur_ns(p[0]),
                fmt_dur_ns(p[1]),
                fmt_dur_ns(p[2]),
                fmt_dur_ns(mean)
            ),
        ));
    }
    if c.out_requests > 0 {
        d.push((
            "outbound".into(),
            format!(
                "{} requests ({}/s), {} errors",
                c.out_requests,
                fmt_rate(c.out_requests as f64 / span),
                c.out_errors
            ),
        ));
    }
    if c.conns > 0 {
        d.push((
            "connections".into(),
            format!(
                "{} closed, {} up / {} down",
                c.conns,
                fmt_bytes(c.conn_bytes_c2s as f64),
                fmt_bytes(c.conn_bytes_s2c as f64)
            ),
        ));
    }
    if let Some(e) = &a.last_error {
        d.push(("last error".into(), e.clone()));
    }
    d.push(("seen".into(), attrs_text(&a.attrs)));
    d
}

fn attrs_text(a: &Attrs) -> String {
    let ports: Vec<String> = a.ports.iter().map(|p| p.to_string()).collect();
    format!(
        "ns [{}] pods [{}] ports [{}] {}",
        a.namespaces.join(","),
        a.pods.join(","),
        ports.join(","),
        proto_text(a.protos)
    )
}

/// The rows of `view` in `w` at the state's current time, filtered and sorted.
pub fn rows(
    st: &State,
    view: ViewKind,
    w: Window,
    filter: &Filter,
    sort: (usize, bool),
) -> Vec<Row> {
    let now = st.now_ns;
    let span = st.span_s(w);
    let mut scratch = new_hist();
    let mut out = Vec::new();
    match view {
        ViewKind::Services => {
            for (name, a) in &st.services.map {
                let f = figures(a, w, now, &mut scratch);
                if !filter.matches(&a.attrs, f.c.status_mask(), Some(name)) {
                    continue;
                }
                let p = f.p.as_deref();
                out.push(Row {
                    id: name.clone(),
                    cells: vec![
                        Cell::text(name.clone()),
                        rate_cell(f.c.requests, span),
                        pct_cell(&f.c),
                        lat_cell(p.map(|p| p[0])),
                        lat_cell(p.map(|p| p[1])),
                        lat_cell(p.map(|p| p[2])),
                        bytes_rate_cell(f.c.bytes, span),
                        rate_cell(f.c.out_requests, span),
                    ],
                    detail: common_detail(&f, a, span),
                    edge: None,
                });
            }
        }
        ViewKind::Pods => {
            for ((ns, pod), a) in &st.pods.map {
                let f = figures(a, w, now, &mut scratch);
                if !filter.matches(&a.attrs, f.c.status_mask(), Some(pod)) {
                    continue;
                }
                let p = f.p.as_deref();
                let svc = a
                    .attrs
                    .services
                    .iter()
                    .find(|s| s.ends_with(&format!(".{ns}")))
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                out.push(Row {
                    id: format!("{ns}/{pod}"),
                    cells: vec![
                        Cell::text(format!("{ns}/{pod}")),
                        Cell::text(svc),
                        rate_cell(f.c.requests, span),
                        pct_cell(&f.c),
                        lat_cell(p.map(|p| p[0])),
                        lat_cell(p.map(|p| p[2])),
                        rate_cell(f.c.out_requests, span),
                    ],
                    detail: common_detail(&f, a, span),
                    edge: None,
                });
            }
        }
        ViewKind::Endpoints => {
            for ((svc, ep), a) in &st.endpoints.map {
                let f = figures(a, w, now, &mut scratch);
                if !filter.matches(&a.attrs, f.c.status_mask(), Some(ep)) {
                    continue;
                }
                let p = f.p.as_deref();
                let mut detail = vec![("endpoint".to_string(), ep.clone())];
                detail.extend(common_detail(&f, a, span));
                out.push(Row {
                    id: format!("{svc} {ep}"),
                    cells: vec![
                        Cell::text(svc.clone()),
                        Cell::text(if a.attrs.protos & PROTO_GRPC != 0 {
                            short_endpoint(ep)
                        } else {
                            ep.clone()
                        }),
                        Cell::text(proto_text(a.attrs.protos)),
                        rate_cell(f.c.requests, span),
                        pct_cell(&f.c),
                        lat_cell(p.map(|p| p[0])),
                        lat_cell(p.map(|p| p[2])),
                    ],
                    detail,
                    edge: None,
                });
            }
        }
        ViewKind::Topology => {
            for ((c, s), a) in &st.edges.map {
                let f = figures(a, w, now, &mut scratch);
                let (cn, sn) = (party_name(c), party_name(s));
                if !filter.matches(&a.attrs, f.c.status_mask(), Some(&format!("{cn} {sn}"))) {
                    continue;
                }
                let p = f.p.as_deref();
                out.push(Row {
                    id: format!("{cn} -> {sn}"),
                    cells: vec![
                        Cell::text(cn),
                        Cell::text(sn),
                        rate_cell(f.c.requests, span),
                        pct_cell(&f.c),
                        lat_cell(p.map(|p| p[0])),
                        lat_cell(p.map(|p| p[2])),
                        rate_cell(f.c.conns, span),
                    ],
                    detail: common_detail(&f, a, span),
                    edge: Some((cn.to_string(), sn.to_string())),
                });
            }
        }
        ViewKind::Connections => {
            for ((c, s, port), a) in &st.flows.map {
                let f = figures(a, w, now, &mut scratch);
                let (cn, sn) = (party_name(c), format!("{}:{port}", party_name(s)));
                if !filter.matches(&a.attrs, f.c.status_mask(), Some(&format!("{cn} {sn}"))) {
                    continue;
                }
                let k = &f.c;
                let rtt = k.rtt_sum_us.checked_div(k.rtt_samples);
                let mut detail = vec![
                    (
                        "connections".into(),
                        format!(
                            "{} closed in window ({}/s); since first seen {}",
                            k.conns,
                            fmt_rate(k.conns as f64 / span),
                            a.total.conns
                        ),
                    ),
                    (
                        "bytes".into(),
                        format!(
                            "client to server {}, server to client {}",
                            fmt_bytes(k.conn_bytes_c2s as f64),
                            fmt_bytes(k.conn_bytes_s2c as f64)
                        ),
                    ),
                    (
                        "rtt".into(),
                        match rtt {
                            Some(r) => format!(
                                "mean {}  max {} ({} samples)",
                                fmt_dur_ns(r * 1000),
                                fmt_dur_ns(k.rtt_max_us * 1000),
                                k.rtt_samples
                            ),
                            None => "-".into(),
                        },
                    ),
                    (
                        "tcp".into(),
                        format!(
                            "{} retransmits, {} reset, {} connect failed",
                            k.retransmits, k.resets, k.connect_failed
                        ),
                    ),
                ];
                if let Some(e) = &a.last_error {
                    detail.push(("last error".into(), e.clone()));
                }
                detail.push(("seen".into(), attrs_text(&a.attrs)));
                let bad = |n: u64| if n > 0 { Tone::Warn } else { Tone::Normal };
                out.push(Row {
                    id: format!("{cn} -> {sn}"),
                    cells: vec![
                        Cell::text(cn),
                        Cell::text(sn),
                        rate_cell(k.conns, span),
                        bytes_rate_cell(k.conn_bytes_c2s, span),
                        bytes_rate_cell(k.conn_bytes_s2c, span),
                        match rtt {
                            Some(r) => Cell::num(fmt_dur_ns(r * 1000), r as f64),
                            None => Cell::num("-".into(), -1.0).tone(Tone::Dim),
                        },
                        Cell::num(k.retransmits.to_string(), k.retransmits as f64)
                            .tone(bad(k.retransmits)),
                        Cell::num(
                            (k.resets + k.connect_failed).to_string(),
                            (k.resets + k.connect_failed) as f64,
                        )
                        .tone(bad(k.resets + k.connect_failed)),
                    ],
                    detail,
                    edge: None,
                });
            }
        }
        ViewKind::Tail => {
            for (i, t) in st.tail.iter().enumerate() {
                let req = format!("{} {}", t.method, t.path);
                if !filter.matches(&t.attrs, t.status_mask, Some(&req)) {
                    continue;
                }
                let shown = if t.protocol == "gRPC" {
                    short_endpoint(&req)
                } else {
                    req.clone()
                };
                let st_text = match (&t.grpc_status, t.status) {
                    (Some(g), _) if g != "OK" => g.chars().take(4).collect(),
                    (_, Some(s)) => s.to_string(),
                    (_, None) => "-".into(),
                };
                let tone = if t.error { Tone::Bad } else { Tone::Normal };
                let clock = t.time.get(11..23).unwrap_or(&t.time).to_string();
                out.push(Row {
                    id: format!("{}#{i}", t.mono_ns),
                    cells: vec![
                        Cell::num(clock, t.mono_ns as f64),
                        Cell::text(t.client.clone()),
                        Cell::text(format!("{}:{}", t.server, t.server_port)),
                        Cell::text(shown),
                        Cell::num(st_text, f64::from(t.status.unwrap_or(0))).tone(tone),
                        Cell::num(fmt_dur_ns(t.duration_ns), t.duration_ns as f64),
                    ],
                    detail: vec![
                        ("time".into(), t.time.clone()),
                        ("request".into(), req),
                        (
                            "status".into(),
                            format!(
                                "{} {}",
                                t.status.map(|s| s.to_string()).unwrap_or("-".into()),
                                t.grpc_status.clone().unwrap_or_default()
                            ),
                        ),
                        ("protocol".into(), t.protocol.clone()),
                        ("duration".into(), fmt_dur_ns(t.duration_ns)),
                        ("bytes".into(), t.bytes.to_string()),
                        (
                            "observed by".into(),
                            format!("{:?}", t.observed_by).to_lowercase(),
                        ),
                        ("seen".into(), attrs_text(&t.attrs)),
                    ],
                    edge: None,
                });
            }
        }
    }
    sort_rows(&mut out, sort);
    out
}

/// Sort on column `col`, descending when `desc`; ties by the row's identity.
pub fn sort_rows(rows: &mut [Row], (col, desc): (usize, bool)) {
    rows.sort_by(|a, b| {
        let o = match (a.cells.get(col), b.cells.get(col)) {
            (Some(x), Some(y)) => x.key.cmp(&y.key),
            _ => Ordering::Equal,
        };
        let o = if desc { o.reverse() } else { o };
        o.then_with(|| a.id.cmp(&b.id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fit_their_columns() {
        for v in [0.0, 0.5, 9.99, 12.3, 999.9, 20_000.0, 3.4e6] {
            assert!(fmt_rate(v).chars().count() <= 7, "{v}");
        }
        assert_eq!(fmt_dur_ns(999), "0µs");
        assert_eq!(fmt_dur_ns(1_500_000), "1.50ms");
        assert_eq!(fmt_dur_ns(250_000_000), "250ms");
        assert_eq!(fmt_bytes(2048.0), "2.0K");
    }

    #[test]
    fn grpc_endpoints_shortened() {
        assert_eq!(short_endpoint("POST:/alogtest.v1.Echo/Unary"), "Echo/Unary");
        assert_eq!(short_endpoint("POST /alogtest.v1.Echo/Unary"), "Echo/Unary");
        assert_eq!(short_endpoint("POST:/upload"), "POST:/upload");
        assert_eq!(short_endpoint("GET:/a.b/c"), "GET:/a.b/c");
    }

    #[test]
    fn sorting_numbers_and_text_both_ways() {
        let mk = |id: &str, n: f64| Row {
            id: id.into(),
            cells: vec![Cell::text(id), Cell::num(n.to_string(), n)],
            detail: vec![],
            edge: None,
        };
        let mut r = vec![mk("b", 2.0), mk("a", 10.0), mk("c", 1.0)];
        sort_rows(&mut r, (1, true));
        assert_eq!(
            r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        sort_rows(&mut r, (1, false));
        assert_eq!(
            r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        sort_rows(&mut r, (0, false));
        assert_eq!(
            r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
