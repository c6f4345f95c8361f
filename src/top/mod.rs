//! `top`: the live dashboard. `state` folds records (pure), `rows` and `app` make the
//! screen model (pure), `view` draws it (reads only); this file is the one loop that
//! owns them: records from a bounded channel, keys, ticks, and the terminal, which is
//! restored on exit, on Ctrl-C and on panic. While the dashboard runs nothing but it
//! writes to the terminal: stderr (logs, library messages) goes to a file or nowhere.
//!
//! Every input the loop has comes through [`Inputs`], so it runs against stand-ins in
//! tests (ratatui's `TestBackend`, scripted keys, a fixed clock).

pub mod app;
pub mod cost;
pub mod filter;
pub mod rows;
pub mod state;
pub mod view;
pub mod window;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyEventKind};
use hdrhistogram::Histogram;
use ratatui::backend::Backend;
use ratatui::Terminal;

use crate::model::Record;
use app::{App, Outside};
use state::{Limits, State};
use window::Window;

/// What the feeding thread sends.
#[derive(Debug)]
pub enum Msg {
    Record(Box<Record>),
    /// The source ended (replay finished, or capture stopped), with its error if any.
    Done(Option<String>),
}

/// Everything the loop reads from outside.
pub struct Inputs {
    pub records: Receiver<Msg>,
    /// Wait up to the given time for a terminal event.
    pub events: Box<dyn FnMut(Duration) -> std::io::Result<Option<Event>>>,
    /// Monotonic ns now, in the records' time base (None: the records' own time).
    pub clock: Box<dyn Fn() -> Option<u64>>,
    /// Header figures from outside the records, sampled once a tick; its argument says
    /// that the record source has ended and all it sent has been applied.
    pub outside: Box<dyn FnMut(bool) -> Outside>,
    /// Set from outside (SIGINT, SIGTERM) to end the loop.
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, Clone)]
pub struct LoopOptions {
    pub tick: Duration,
    pub window: Window,
    pub limits: Limits,
    /// Quit when the source ends (tests).
    pub exit_on_done: bool,
}

/// How responsive the loop was.
pub struct Perf {
    /// Key read to frame drawn, µs.
    pub input_to_frame_us: Histogram<u64>,
    /// Time to refresh rows and draw one frame, µs.
    pub frame_us: Histogram<u64>,
    /// How late each tick's frame was against its schedule, µs.
    pub tick_late_us: Histogram<u64>,
    /// Work between two waits for keys (draining, refreshing, drawing), µs: the most a
    /// key can wait before it is read.
    pub busy_us: Histogram<u64>,
    pub ticks: u64,
    /// Ticks whose frame came more than one tick late.
    pub ticks_missed: u64,
    pub records: u64,
    /// Most records taken in one drain.
    pub max_drain: u64,
    pub source_error: Option<String>,
}

impl Perf {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 2).expect("bounds");
        Self {
            input_to_frame_us: h(),
            frame_us: h(),
            tick_late_us: h(),
            busy_us: h(),
            ticks: 0,
            ticks_missed: 0,
            records: 0,
            max_drain: 0,
            source_error: None,
        }
    }

    pub fn summary(&self) -> String {
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        format!(
            "input-to-frame: n={} p50={:.1}ms p99={:.1}ms max={:.1}ms\n\
             frame (refresh+draw): n={} p50={:.1}ms p99={:.1}ms max={:.1}ms\n\
             tick lateness: ticks={} p50={:.1}ms p99={:.1}ms max={:.1}ms, later than one tick: {}\n\
             busy between key polls: p50={:.1}ms p99={:.1}ms max={:.1}ms\n\
             records: {} (most in one drain {})",
            self.input_to_frame_us.len(),
            q(&self.input_to_frame_us, 0.5),
            q(&self.input_to_frame_us, 0.99),
            self.input_to_frame_us.max() as f64 / 1000.0,
            self.frame_us.len(),
            q(&self.frame_us, 0.5),
            q(&self.frame_us, 0.99),
            self.frame_us.max() as f64 / 1000.0,
            self.ticks,
            q(&self.tick_late_us, 0.5),
            q(&self.tick_late_us, 0.99),
            self.tick_late_us.max() as f64 / 1000.0,
            self.ticks_missed,
            q(&self.busy_us, 0.5),
            q(&self.busy_us, 0.99),
            self.busy_us.max() as f64 / 1000.0,
            self.records,
            self.max_drain,
        )
    }
}

/// Records are taken from the channel in slices of at most this long, so a key never
/// waits behind a flood.
const DRAIN_BUDGET: Duration = Duration::from_millis(15);
/// Keys are waited for at most this long between drains.
const POLL_SLICE: Duration = Duration::from_millis(40);

fn us(d: Duration) -> u64 {
    d.as_micros().clamp(1, 60_000_000) as u64
}

/// Take what the channel holds, within the budget; true when more is waiting.
fn drain(st: &mut State, inputs: &Inputs, perf: &mut Perf, done: &mut bool) -> bool {
    let mut more = false;
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        match inputs.records.try_recv() {
            Ok(Msg::Record(r)) => {
                st.apply(&r);
                n += 1;
                if n.is_multiple_of(256) && t0.elapsed() > DRAIN_BUDGET {
                    more = true;
                    break;
                }
            }
            Ok(Msg::Done(e)) => {
                *done = true;
                // Nothing more will come to settle what waits.
                st.flush_pending();
                if e.is_some() {
                    perf.source_error = e;
                }
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => {
                *done = true;
                break;
            }
        }
    }
    perf.records += n;
    perf.max_drain = perf.max_drain.max(n);
    more
}

/// The dashboard loop, on any backend. Returns when the user quits, `stop` is set, or
/// (with `exit_on_done`) the source ends.
pub fn run_loop<B: Backend>(
    term: &mut Terminal<B>,
    inputs: &mut Inputs,
    opts: &LoopOptions,
) -> anyhow::Result<(Perf, App, State)> {
    let mut st = State::new(opts.limits);
    let mut app = App::new(opts.window);
    let mut perf = Perf::new();
    let mut done = false;
    let mut out = (inputs.outside)(false);
    let mut next_tick = Instant::now();
    loop {
        let busy_from = Instant::now();
        let more = drain(&mut st, inputs, &mut perf, &mut done);
        let now = Instant::now();
        if now >= next_tick {
            let late = now.duration_since(next_tick);
            perf.ticks += 1;
            perf.tick_late_us.saturating_record(us(late));
            if late > opts.tick {
                perf.ticks_missed += 1;
            }
            let t0 = Instant::now();
            if let Some(c) = (inputs.clock)() {
                st.tick(c);
            }
            out = (inputs.outside)(done);
            app.refresh(&st, &out);
            term.draw(|f| {
                app.page = view::table_page(f.area().height.saturating_sub(6));
                view::draw(f, &app)
            })?;
            perf.frame_us.saturating_record(us(t0.elapsed()));
            next_tick += opts.tick;
            if next_tick < Instant::now() {
                next_tick = Instant::now() + opts.tick;
            }
        }
        if app.quit || inputs.stop.load(Ordering::Relaxed) || (done && opts.exit_on_done) {
            break;
        }
        perf.busy_us.saturating_record(us(busy_from.elapsed()));
        // With records still waiting, only look for keys and go on draining.
        let wait = if more {
            Duration::ZERO
        } else {
            next_tick
                .saturating_duration_since(Instant::now())
                .min(POLL_SLICE)
        };
        if let Some(ev) = (inputs.events)(wait)? {
            let t_in = Instant::now();
            let draw_now = match ev {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    app.key(k, &st);
                    app.header = app::header(&st, &out);
                    true
                }
                Event::Resize(_, _) => true,
                _ => false,
            };
            if app.quit {
                break;
            }
            if draw_now {
                term.draw(|f| view::draw(f, &app))?;
                perf.input_to_frame_us.saturating_record(us(t_in.elapsed()));
            }
        }
    }
    Ok((perf, app, st))
}

// ---- the real terminal ----

/// stderr's descriptor before it was sent away, for the panic hook (-1: not saved).
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
static TERMINAL_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Leave raw mode and the alternate screen. Idempotent; called by the guard's `Drop`
/// and by the panic hook.
fn restore_terminal() {
    if TERMINAL_ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = crossterm::terminal::disable_raw_mode();
        let mut so = std::io::stdout();
        let _ = crossterm::execute!(
            so,
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = so.flush();
    }
}

/// Give stderr back. Idempotent.
fn restore_stderr() {
    let fd = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is the duplicate of stderr made in `StderrGuard::redirect`, owned here.
        unsafe {
            libc::dup2(fd, 2);
            libc::close(fd);
        }
    }
}

/// stderr (logs, and whatever libraries print) goes to a file or nowhere while it
/// lives, so that nothing lands on the dashboard; dropping it gives stderr back.
pub struct StderrGuard {
    _private: (),
}

impl StderrGuard {
    /// Send stderr to `log_file` (appended; created 0600; a symbolic link or a file that
    /// is not ours alone is refused, see `crate::fsutil`), or to /dev/null.
    pub fn redirect(log_file: Option<&Path>) -> anyhow::Result<Self> {
        let target = match log_file {
            Some(p) => crate::fsutil::open_append(p)
                .map_err(|e| anyhow::anyhow!("cannot open the log file: {e}"))?,
            None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
        };
        // SAFETY: dup of a descriptor this process has open.
        let saved = unsafe { libc::dup(2) };
        if saved < 0 {
            anyhow::bail!("dup(stderr): {}", std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors are open; 2 now writes to the log target.
        unsafe {
            libc::dup2(target.as_raw_fd(), 2);
        }
        let old = SAVED_STDERR.swap(saved, Ordering::SeqCst);
        if old >= 0 {
            // SAFETY: a previous redirection's saved descriptor, no longer referenced.
            unsafe { libc::close(old) };
        }
        Ok(Self { _private: () })
    }
}

impl Drop for StderrGuard {
    fn drop(&mut self) {
        restore_stderr();
    }
}

/// The terminal in dashboard mode while it lives; dropping it (also when unwinding)
/// restores it. A panic restores the terminal and stderr before its message prints.
pub struct TerminalGuard {
    _private: (),
}

impl TerminalGuard {
    /// Raw mode and the alternate screen.
    pub fn enter() -> anyhow::Result<Self> {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            restore_stderr();
            prev(info);
        }));
        let g = Self { _private: () };
        crossterm::terminal::enable_raw_mode()?;
        TERMINAL_ACTIVE.store(true, Ordering::SeqCst);
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(g)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// stderr as it was (for messages after the dashboard), when it was sent away.
pub fn original_stderr() -> Option<std::fs::File> {
    let fd = SAVED_STDERR.load(Ordering::SeqCst);
    if fd < 0 {
        return None;
    }
    // SAFETY: duplicate, owned by the returned file.
    let d = unsafe { libc::dup(fd) };
    (d >= 0).then(|| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(d) }))
}

/// Terminal events from crossterm.
pub fn crossterm_events() -> Box<dyn FnMut(Duration) -> std::io::Result<Option<Event>>> {
    Box::new(|timeout| {
        if crossterm::event::poll(timeout)? {
            Ok(Some(crossterm::event::read()?))
        } else {
            Ok(None)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_log_file_is_private_and_never_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let link = dir.path().join("top.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = StderrGuard::redirect(Some(&link)).err().expect("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
        let fresh = dir.path().join("fresh.log");
        drop(StderrGuard::redirect(Some(&fresh)).unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
