//! The header: node, uptime, event rate, capture health and the tool's own cost.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::theme;
use crate::top::app::App;
use crate::top::rows::{fmt_bytes, fmt_rate};

pub fn fmt_uptime(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn figure(label: &str, value: String, bad: bool) -> [Span<'static>; 2] {
    [
        Span::styled(format!("{label} "), theme::label()),
        Span::styled(value, if bad { theme::bad() } else { theme::ok() }),
    ]
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let h = &app.header;
    let sep = || Span::styled(" │ ", theme::label());
    let mut l1 = vec![
        Span::styled("k8s-alog top ", theme::title()),
        Span::raw(h.out.node.clone()),
        sep(),
        Span::raw(h.out.mode.clone()),
        sep(),
    ];
    l1.extend(figure("up", fmt_uptime(h.uptime_s), false));
    l1.push(sep());
    l1.extend(figure("ev/s", fmt_rate(h.events_per_s), false));
    l1.push(sep());
    l1.extend(figure("req/s", fmt_rate(h.records_per_s), false));

    let mut l2 = Vec::new();
    l2.extend(figure(
        "drops: ring",
        h.ring_drops.to_string(),
        h.ring_drops > 0,
    ));
    l2.push(Span::raw(" "));
    l2.extend(figure(
        "queue",
        h.out.queue_dropped.to_string(),
        h.out.queue_dropped > 0,
    ));
    if h.other_losses > 0 {
        l2.push(Span::raw(" "));
        l2.extend(figure("other", h.other_losses.to_string(), true));
    }
    l2.push(sep());
    l2.extend(figure("unresolved", h.unresolved.to_string(), false));
    l2.push(sep());
    let tls = if h.tls_not_visible.is_empty() {
        "0".to_string()
    } else {
        format!(
            "{} ({})",
            h.tls_not_visible.len(),
            h.tls_not_visible.join(",")
        )
    };
    l2.extend(figure("TLS unseen", tls, !h.tls_not_visible.is_empty()));
    if h.evicted > 0 {
        l2.push(sep());
        l2.extend(figure("evicted", h.evicted.to_string(), true));
    }

    let mut l3 = Vec::new();
    l3.extend(figure(
        "cost: cpu",
        h.out.cpu_pct.map_or("-".into(), |c| format!("{c:.1}%")),
        false,
    ));
    l3.push(Span::raw(" "));
    l3.extend(figure(
        "rss",
        h.out.rss_bytes.map_or("-".into(), |r| fmt_bytes(r as f64)),
        false,
    ));
    l3.push(Span::raw(" "));
    let bpf = match (h.bpf_ns_per_event, h.out.bpf_cpu_pct, &h.out.bpf_note) {
        (Some(ns), Some(pct), _) => format!("{ns:.0}ns/ev ({pct:.1}% cpu)"),
        (None, Some(pct), _) => format!("{pct:.1}% cpu"),
        (None, _, Some(n)) => n.clone(),
        _ => "-".into(),
    };
    l3.extend(figure("bpf", bpf, false));
    l3.push(sep());
    l3.extend(figure("open conns", h.connections_open.to_string(), false));
    if let Some(hk) = &h.hooks {
        l3.push(sep());
        l3.extend(figure("hooks", hk.clone(), false));
    }

    let p = Paragraph::new(vec![Line::from(l1), Line::from(l2), Line::from(l3)]);
    f.render_widget(p, area);
}
