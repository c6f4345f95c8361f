//! What the user looks at and how keys change it: the view, window, sort, filter,
//! selection, pause, help and detail pane, and the figures of the header. Pure: keys
//! and state in, a new screen model out; drawing (in `view`) only reads it.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::filter::Filter;
use super::rows::{rows, Row, ViewKind};
use super::state::State;
use super::window::Window;

/// What the header shows besides the state: figures from outside the record stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outside {
    /// Node name, or what is replayed.
    pub node: String,
    /// "live", "replay x4", "replay done".
    pub mode: String,
    /// Records the dashboard could not take in time (bounded queue full).
    pub queue_dropped: u64,
    /// The tool's own CPU use, % of one core, over the last tick.
    pub cpu_pct: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// In-kernel run time of our BPF programs, % of one core, over the last tick.
    pub bpf_cpu_pct: Option<f64>,
    /// Why BPF run time is not shown (statistics off and not enabled).
    pub bpf_note: Option<String>,
}

/// The header's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub out: Outside,
    pub uptime_s: f64,
    pub events_per_s: f64,
    pub records_per_s: f64,
    pub ring_drops: u64,
    pub other_losses: u64,
    pub unresolved: u64,
    pub tls_not_visible: Vec<String>,
    /// The kernel hooks capture runs on ("tracepoint", or per hook when they differ).
    pub hooks: Option<String>,
    pub evicted: u64,
    pub connections_open: u64,
    /// Kernel events (data + connection) per second, from the last two statistics.
    pub kernel_events_per_s: f64,
    /// In-kernel BPF run time per kernel event, ns.
    pub bpf_ns_per_event: Option<f64>,
}

/// Filter being typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterEdit {
    pub text: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct App {
    pub view: ViewKind,
    pub window: Window,
    /// (column, descending) per view.
    pub sort: [(usize, bool); 6],
    /// Selected row index per view, and the id it had.
    pub selected: [usize; 6],
    selected_id: [Option<String>; 6],
    pub filter: Filter,
    pub editing: Option<FilterEdit>,
    pub paused: bool,
    pub help: bool,
    pub detail: bool,
    pub quit: bool,
    pub rows: Vec<Row>,
    pub header: Header,
    /// Rows shown the last time the table was drawn (for paging), set by the loop.
    pub page: usize,
}

fn view_index(v: ViewKind) -> usize {
    ViewKind::ALL.iter().position(|x| *x == v).unwrap_or(0)
}

impl App {
    pub fn new(window: Window) -> Self {
        Self {
            view: ViewKind::Services,
            window,
            sort: [
                (1, true),
                (2, true),
                (3, true),
                (2, true),
                (2, true),
                (0, true),
            ],
            selected: [0; 6],
            selected_id: Default::default(),
            filter: Filter::default(),
            editing: None,
            paused: false,
            help: false,
            detail: false,
            quit: false,
            rows: Vec::new(),
            header: Header::default(),
            page: 10,
        }
    }

    fn vi(&self) -> usize {
        view_index(self.view)
    }

    pub fn selected(&self) -> usize {
        self.selected[self.vi()]
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.rows.get(self.selected())
    }

    /// Recompute the header and (unless paused) the current view's rows.
    pub fn refresh(&mut self, st: &State, out: &Outside) {
        self.header = header(st, out);
        if !self.paused {
            self.rebuild(st);
        }
    }

    fn rebuild(&mut self, st: &State) {
        let vi = self.vi();
        self.rows = rows(st, self.view, self.window, &self.filter, self.sort[vi]);
        // The selection follows its row when it is still there.
        if let Some(id) = &self.selected_id[vi] {
            if let Some(i) = self.rows.iter().position(|r| &r.id == id) {
                self.selected[vi] = i;
            }
        }
        self.clamp();
    }

    fn clamp(&mut self) {
        let vi = self.vi();
        let n = self.rows.len();
        self.selected[vi] = self.selected[vi].min(n.saturating_sub(1));
        self.selected_id[vi] = self.rows.get(self.selected[vi]).map(|r| r.id.clone());
    }

    fn move_sel(&mut self, delta: isize) {
        let vi = self.vi();
        let n = self.rows.len() as isize;
        let i = (self.selected[vi] as isize + delta).clamp(0, (n - 1).max(0));
        self.selected[vi] = i as usize;
        self.selected_id[vi] = self.rows.get(i as usize).map(|r| r.id.clone());
    }

    /// One key. The state is needed to recompute rows when the key changes them (also
    /// when paused: sorting or filtering a frozen table re-reads the state).
    pub fn key(&mut self, k: KeyEvent, st: &State) {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some(ed) = &mut self.editing {
            match k.code {
                KeyCode::Esc => self.editing = None,
                KeyCode::Enter => match Filter::parse(&ed.text) {
                    Ok(f) => {
                        self.filter = f;
                        self.editing = None;
                        self.rebuild(st);
                    }
                    Err(e) => ed.error = Some(e),
                },
                KeyCode::Backspace => {
                    ed.text.pop();
                    ed.error = None;
                }
                KeyCode::Char(c) => {
                    if ed.text.len() < 200 {
                        ed.text.push(c);
                    }
                    ed.error = None;
                }
                _ => {}
            }
            return;
        }
        let vi = self.vi();
        let ncols = self.view.columns().len();
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') | KeyCode::F(1) => self.help = !self.help,
            KeyCode::Esc => {
                if self.help {
                    self.help = false;
                } else {
                    self.detail = false;
                }
            }
            KeyCode::Char(c @ '1'..='6') => {
                self.view = ViewKind::ALL[(c as u8 - b'1') as usize];
                self.rebuild(st);
            }
            KeyCode::Tab => {
                self.view = ViewKind::ALL[(vi + 1) % 6];
                self.rebuild(st);
            }
            KeyCode::BackTab => {
                self.view = ViewKind::ALL[(vi + 5) % 6];
                self.rebuild(st);
            }
            KeyCode::Char('s') | KeyCode::Right | KeyCode::Char('>') => {
                let (c, _) = self.sort[vi];
                let c = (c + 1) % ncols;
                // Text columns start ascending, figures descending.
                self.sort[vi] = (c, c != 0 && self.view.columns()[c].1 != 0);
                self.rebuild(st);
            }
            KeyCode::Char('S') | KeyCode::Left | KeyCode::Char('<') => {
                let (c, _) = self.sort[vi];
                let c = (c + ncols - 1) % ncols;
                self.sort[vi] = (c, c != 0 && self.view.columns()[c].1 != 0);
                self.rebuild(st);
            }
            KeyCode::Char('r') => {
                self.sort[vi].1 = !self.sort[vi].1;
                self.rebuild(st);
            }
            KeyCode::Char('w') => {
                self.window = self.window.next();
                self.rebuild(st);
            }
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.paused = !self.paused;
                if !self.paused {
                    self.rebuild(st);
                }
            }
            KeyCode::Char('/') | KeyCode::Char('f') => {
                self.editing = Some(FilterEdit {
                    text: self.filter.text.clone(),
                    error: None,
                })
            }
            KeyCode::Char('c') => {
                self.filter = Filter::default();
                self.rebuild(st);
            }
            KeyCode::Enter | KeyCode::Char('d') => self.detail = !self.detail,
            KeyCode::Down | KeyCode::Char('j') => self.move_sel(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_sel(-1),
            KeyCode::PageDown => self.move_sel(self.page.max(1) as isize),
            KeyCode::PageUp => self.move_sel(-(self.page.max(1) as isize)),
            KeyCode::Home | KeyCode::Char('g') => self.move_sel(-(self.rows.len() as isize)),
            KeyCode::End | KeyCode::Char('G') => self.move_sel(self.rows.len() as isize),
            _ => {}
        }
    }
}

/// Header figures from the state's latest statistics and the outside figures.
pub fn header(st: &State, out: &Outside) -> Header {
    let mut h = Header {
        out: out.clone(),
        evicted: st.evicted(),
        ..Header::default()
    };
    let span = st.span_s(Window::S10);
    h.records_per_s = st.totals.counts(Window::S10, st.now_ns).requests as f64 / span;
    if let Some(s) = &st.stats {
        h.uptime_s = s.uptime_s;
        h.ring_drops = s.lost.ringbuf_data_events + s.lost.ringbuf_conn_events;
        h.other_losses = s.lost.total() - h.ring_drops;
        h.unresolved = s.attribution.as_ref().map_or(0, |a| a.unresolved_remotes);
        h.tls_not_visible = s.tls_not_visible.clone();
        h.hooks = s.hooks.as_ref().map(|r| r.summary());
        h.connections_open = s.user.connections_open;
        if let Some(p) = &st.prev_stats {
            let dt = s.uptime_s - p.uptime_s;
            if dt > 0.0 {
                h.events_per_s = s.user.events.saturating_sub(p.user.events) as f64 / dt;
                let k = |c: &crate::model::KernelCounters| c.data_events + c.conn_events;
                h.kernel_events_per_s = k(&s.kernel).saturating_sub(k(&p.kernel)) as f64 / dt;
            }
        }
    }
    if let Some(pct) = out.bpf_cpu_pct {
        if h.kernel_events_per_s > 0.0 {
            h.bpf_ns_per_event = Some(pct / 100.0 * 1e9 / h.kernel_events_per_s);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyEvent;

    fn k(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn keys_switch_sort_filter_pause_and_quit() {
        let st = State::new(Default::default());
        let mut a = App::new(Window::S10);
        a.key(k(KeyCode::Char('3')), &st);
        assert_eq!(a.view, ViewKind::Endpoints);
        a.key(k(KeyCode::Tab), &st);
        assert_eq!(a.view, ViewKind::Topology);
        a.key(k(KeyCode::BackTab), &st);
        a.key(k(KeyCode::BackTab), &st);
        assert_eq!(a.view, ViewKind::Pods);
        assert_eq!(a.sort[1], (2, true));
        a.key(k(KeyCode::Char('s')), &st);
        assert_eq!(a.sort[1], (3, true));
        a.key(k(KeyCode::Char('r')), &st);
        assert_eq!(a.sort[1], (3, false));
        a.key(k(KeyCode::Char('S')), &st);
        a.key(k(KeyCode::Char('S')), &st);
        assert_eq!(a.sort[1], (1, false), "text columns ascend");
        a.key(k(KeyCode::Char('w')), &st);
        assert_eq!(a.window, Window::M1);
        a.key(k(KeyCode::Char('p')), &st);
        assert!(a.paused);
        a.key(k(KeyCode::Char('/')), &st);
        for c in "port=x".chars() {
            a.key(k(KeyCode::Char(c)), &st);
        }
        a.key(k(KeyCode::Enter), &st);
        assert!(
            a.editing.as_ref().unwrap().error.is_some(),
            "bad filter kept for editing"
        );
        for _ in 0..1 {
            a.key(k(KeyCode::Backspace), &st);
        }
        a.key(k(KeyCode::Char('8')), &st);
        a.key(k(KeyCode::Enter), &st);
        assert!(a.editing.is_none());
        assert_eq!(a.filter.text, "port=8");
        // While editing, letters are text, not commands.
        a.key(k(KeyCode::Char('/')), &st);
        a.key(k(KeyCode::Char('q')), &st);
        assert!(!a.quit);
        a.key(k(KeyCode::Esc), &st);
        a.key(k(KeyCode::Char('c')), &st);
        assert!(a.filter.is_empty());
        a.key(k(KeyCode::Char('?')), &st);
        assert!(a.help);
        a.key(k(KeyCode::Esc), &st);
        assert!(!a.help);
        a.key(
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            &st,
        );
        assert!(a.quit);
    }
}
