//! Drawing: reads the `App`, changes nothing. One file per part of the screen.

mod detail;
mod header;
mod help;
mod table;
mod topology;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::app::App;
use super::rows::{Tone, ViewKind};

/// Styles that read on light and dark terminals alike: the terminal's own colours,
/// modifiers for emphasis, and only red for trouble.
pub mod theme {
    use ratatui::style::{Color, Modifier, Style};

    pub fn title() -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    pub fn label() -> Style {
        Style::default().add_modifier(Modifier::DIM)
    }
    pub fn selected() -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    pub fn column_header() -> Style {
        Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    }
    pub fn warn() -> Style {
        Style::default().fg(Color::Red)
    }
    pub fn bad() -> Style {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    pub fn ok() -> Style {
        Style::default()
    }
}

pub(crate) fn tone_style(t: Tone) -> Style {
    match t {
        Tone::Normal => Style::default(),
        Tone::Dim => theme::label(),
        Tone::Warn => theme::warn(),
        Tone::Bad => theme::bad(),
    }
}

/// Rows the table shows in an area of this height (for paging).
pub fn table_page(area_height: u16) -> usize {
    usize::from(area_height.saturating_sub(1)).max(1)
}

/// Draw the whole screen.
pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let detail_h: u16 = if app.detail && area.height >= 18 {
        8
    } else {
        0
    };
    let chunks = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(detail_h),
        Constraint::Length(1),
    ])
    .split(area);
    header::draw(f, chunks[0], app);
    tabs(f, chunks[1], app);
    match app.view {
        ViewKind::Topology => topology::draw(f, chunks[2], app),
        _ => table::draw(f, chunks[2], app),
    }
    if detail_h > 0 {
        detail::draw(f, chunks[3], app);
    }
    footer(f, chunks[4], app);
    if app.help {
        help::draw(f, area, app);
    }
}

fn tabs(f: &mut Frame, area: Rect, app: &App) {
    let mut spans = Vec::new();
    for (i, v) in ViewKind::ALL.iter().enumerate() {
        let style = if *v == app.view {
            theme::selected().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        // Short names when the terminal is narrow.
        let name = if area.width < 90 {
            &v.title()[..4.min(v.title().len())]
        } else {
            v.title()
        };
        spans.push(Span::styled(format!("{}:{}", i + 1, name), style));
        spans.push(Span::raw(" "));
    }
    spans.push(Span::styled(
        format!("win {}", app.window.label()),
        theme::title(),
    ));
    if app.paused {
        spans.push(Span::raw(" "));
        spans.push(Span::styled("PAUSED", theme::selected()));
    }
    if !app.filter.is_empty() {
        spans.push(Span::styled(" filter:", theme::label()));
        spans.push(Span::raw(app.filter.text.clone()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn footer(f: &mut Frame, area: Rect, app: &App) {
    let line = if let Some(ed) = &app.editing {
        let mut s = vec![
            Span::styled("filter> ", theme::title()),
            Span::raw(ed.text.clone()),
            Span::styled("_", theme::selected()),
        ];
        if let Some(e) = &ed.error {
            s.push(Span::raw("  "));
            s.push(Span::styled(e.clone(), theme::bad()));
        } else {
            s.push(Span::styled(
                "  ns= pod= svc= port= proto= status=  Enter apply, Esc cancel",
                theme::label(),
            ));
        }
        Line::from(s)
    } else {
        let n = app.rows.len();
        let pos = if n == 0 { 0 } else { app.selected() + 1 };
        let keys = [
            ("q", "quit"),
            ("?", "help"),
            ("/", "filter"),
            ("s", "sort"),
            ("r", "rev"),
            ("w", "window"),
            ("p", "pause"),
            ("⏎", "detail"),
        ];
        let mut s = Vec::new();
        for (k, what) in keys {
            s.push(Span::styled(k, theme::title()));
            s.push(Span::raw(format!(" {what} ")));
        }
        s.push(Span::styled(format!(" {pos}/{n}"), theme::label()));
        Line::from(s)
    };
    f.render_widget(Paragraph::new(line), area);
}
