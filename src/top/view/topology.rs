//! Topology: the service graph drawn as a tree of callers and callees where it fits,
//! above the relation table, which is always shown.

use std::collections::BTreeMap;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{table, theme, tone_style};
use crate::top::app::App;
use crate::top::rows::ViewKind;

/// Graph lines: each client once, its servers below it.
fn graph_lines(app: &App, width: u16) -> Vec<Line<'static>> {
    // client -> [(server, req/s text, err text, err tone, p99 text)]
    let mut by_client: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in app.rows.iter().enumerate() {
        if let Some((c, _)) = &r.edge {
            by_client.entry(c.as_str()).or_default().push(i);
        }
    }
    let cw = by_client
        .keys()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0)
        .min(24);
    let mut out = Vec::new();
    for (client, idx) in by_client {
        for (j, i) in idx.iter().enumerate() {
            let r = &app.rows[*i];
            let server = r.edge.as_ref().map(|e| e.1.as_str()).unwrap_or("");
            let name: String = if j == 0 {
                client.chars().take(cw).collect()
            } else {
                String::new()
            };
            let branch = match (idx.len(), j) {
                (1, _) => "───▶ ",
                (_, 0) => "─┬─▶ ",
                (n, j) if j + 1 == n => " └─▶ ",
                _ => " ├─▶ ",
            };
            let err = &r.cells[3];
            let mut spans = vec![
                Span::styled(format!("{name:<cw$} "), theme::title()),
                Span::styled(branch, theme::label()),
                Span::raw(format!("{server:<20} ")),
                Span::raw(format!("{:>7}/s ", r.cells[2].text)),
                Span::styled(format!("err {:>5}% ", err.text), tone_style(err.tone)),
                Span::raw(format!("p99 {}", r.cells[5].text)),
            ];
            let total: usize = spans.iter().map(|s| s.content.chars().count()).sum();
            if total > usize::from(width) {
                spans.truncate(4);
            }
            out.push(Line::from(spans));
        }
    }
    out
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let lines = graph_lines(app, area.width);
    let table_min = (app.rows.len() as u16 + 1).min(6);
    // The graph only where it fits whole, with room left for the table.
    let fits =
        !lines.is_empty() && area.width >= 60 && lines.len() as u16 + 1 + table_min < area.height;
    if !fits {
        table::draw_rows(f, area, app, ViewKind::Topology);
        return;
    }
    let g_h = lines.len() as u16 + 1;
    let parts = Layout::vertical([Constraint::Length(g_h), Constraint::Min(1)]).split(area);
    f.render_widget(Paragraph::new(lines), parts[0]);
    table::draw_rows(f, parts[1], app, ViewKind::Topology);
}
