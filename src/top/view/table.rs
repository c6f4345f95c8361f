//! A view's table: column headers with the sort marker, right-aligned figures, the
//! selected row highlighted and kept in sight.

use ratatui::layout::{Alignment, Constraint, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Row, Table, TableState};
use ratatui::Frame;

use super::{theme, tone_style};
use crate::top::app::App;
use crate::top::rows::ViewKind;

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    draw_rows(f, area, app, app.view);
}

pub fn draw_rows(f: &mut Frame, area: Rect, app: &App, view: ViewKind) {
    let cols = view.columns();
    let (sort_col, desc) = app.sort[ViewKind::ALL.iter().position(|v| *v == view).unwrap_or(0)];
    let header = Row::new(cols.iter().enumerate().map(|(i, (name, w))| {
        let mark = if i == sort_col {
            if desc {
                "▼"
            } else {
                "▲"
            }
        } else {
            ""
        };
        let line = Line::from(format!("{name}{mark}"));
        Cell::from(if *w == 0 {
            line
        } else {
            line.alignment(Alignment::Right)
        })
    }))
    .style(theme::column_header());
    let widths: Vec<Constraint> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, w))| {
            if *w == 0 {
                Constraint::Fill(view.fill_weight(i))
            } else {
                Constraint::Length(*w)
            }
        })
        .collect();
    let rows = app.rows.iter().map(|r| {
        Row::new(r.cells.iter().zip(cols).map(|(c, (_, w))| {
            let line = Line::styled(c.text.clone(), tone_style(c.tone));
            Cell::from(if *w == 0 {
                line
            } else {
                line.alignment(Alignment::Right)
            })
        }))
    });
    let empty = app.rows.is_empty();
    let t = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(theme::selected());
    let mut state = TableState::default();
    if !empty {
        state.select(Some(app.selected()));
    }
    f.render_stateful_widget(t, area, &mut state);
    if empty && area.height > 2 {
        let msg = if app.filter.is_empty() {
            "  nothing in this window yet"
        } else {
            "  no row matches the filter (c clears it)"
        };
        let r = Rect::new(area.x, area.y + 1, area.width, 1);
        f.render_widget(
            ratatui::widgets::Paragraph::new(msg).style(theme::label()),
            r,
        );
    }
}
