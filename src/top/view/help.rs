//! `?`: the keys, the views and what the header means.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;

use super::theme;
use crate::top::app::App;

const KEYS: &[(&str, &str)] = &[
    (
        "1..6 Tab",
        "services pods endpoints topology connections tail",
    ),
    ("s S ← →", "sort on the next / previous column"),
    ("r", "reverse the sort"),
    ("/ f", "filter: ns= pod= svc= port= proto= status= words"),
    ("c", "clear the filter"),
    ("w", "window 10s -> 1m -> 5m"),
    ("p space", "pause (tables freeze, capture goes on)"),
    ("↑↓ j k PgUp PgDn", "select a row"),
    ("Enter d", "detail pane of the selected row"),
    ("Esc", "close help / detail"),
    ("q Ctrl-C", "quit"),
];

const NOTES: &[&str] = &[
    "Rates are per second over the window; latency percentiles from",
    "histograms (2 significant figures), server side when seen.",
    "drops ring: events the kernel could not queue; queue: records the",
    "screen could not take in time. unresolved: remote ends nothing named.",
    "TLS unseen: processes doing TLS with no probe for their library.",
];

pub fn draw(f: &mut Frame, area: Rect, _app: &App) {
    let w = area.width.min(76);
    let h = area.height.min((KEYS.len() + NOTES.len() + 3) as u16);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:>16}  "), theme::title()),
                Span::raw(*v),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.extend(NOTES.iter().map(|n| Line::styled(*n, theme::label())));
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(Span::styled(" help (Esc closes) ", theme::title())),
        ),
        r,
    );
}
