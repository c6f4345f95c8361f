//! The detail pane: every figure of the selected row.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use super::theme;
use crate::top::app::App;

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let (title, lines) = match app.selected_row() {
        Some(r) => (
            r.id.clone(),
            r.detail
                .iter()
                .map(|(k, v)| {
                    Line::from(vec![
                        Span::styled(format!("{k:>12} "), theme::label()),
                        Span::raw(v.clone()),
                    ])
                })
                .collect(),
        ),
        None => (String::new(), vec![Line::from("no row selected")]),
    };
    let block = Block::default()
        .borders(Borders::TOP)
        .title(Span::styled(format!(" {title} "), theme::title()));
    f.render_widget(
        Paragraph::new(lines).block(block).wrap(Wrap { trim: true }),
        area,
    );
}
