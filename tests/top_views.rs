//! Snapshot tests of every `top` view, drawn on ratatui's `TestBackend` from a recorded
//! session: tests/fixtures/top/session.jsonl, real traffic on the simulated node
//! captured by `k8s-alog record` (made by scripts/top-fixture.sh). The screens are
//! compared with the committed text files in tests/snapshots/top/, clock times
//! redacted. `K8S_ALOG_BLESS=1` rewrites the files instead (review the diff).
//!
//! The tool's own cost (CPU, RSS, BPF time) is a stand-in here: fixed figures, since
//! they are of this test process, not of the recording.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use k8s_alog::model::Record;
use k8s_alog::top::app::{App, Outside};
use k8s_alog::top::rows::ViewKind;
use k8s_alog::top::state::{Limits, State};
use k8s_alog::top::window::Window;
use k8s_alog::top::{run_loop, view, Inputs, LoopOptions, Msg};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/top/session.jsonl")
}

fn records() -> Vec<Record> {
    k8s_alog::sink::jsonl::read_records(&fixture())
        .expect("the recorded session")
        .map(|r| r.expect("a record"))
        .collect()
}

/// Stand-in for the figures of the process that shows the dashboard.
fn outside() -> Outside {
    Outside {
        node: "sim-node".into(),
        mode: "replay".into(),
        queue_dropped: 0,
        cpu_pct: Some(1.5),
        rss_bytes: Some(24 << 20),
        bpf_cpu_pct: Some(0.2),
        bpf_note: None,
    }
}

fn loaded() -> State {
    let mut st = State::new(Limits::default());
    for r in records() {
        st.apply(&r);
    }
    st.flush_pending();
    let now = st.now_ns;
    st.tick(now);
    st
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

/// Screen text; every wall-clock time (hh:mm:ss.mmm) redacted.
fn screen(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| view::draw(f, app)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(&redact(line.trim_end()));
        out.push('\n');
    }
    out
}

fn redact(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let d = |c: char| c.is_ascii_digit();
    while i < b.len() {
        if i + 12 <= b.len()
            && d(b[i])
            && d(b[i + 1])
            && b[i + 2] == ':'
            && d(b[i + 3])
            && d(b[i + 4])
            && b[i + 5] == ':'
            && d(b[i + 6])
            && d(b[i + 7])
            && b[i + 8] == '.'
            && b[i + 9..i + 12].iter().all(|c| d(*c))
        {
            out.push_str("hh:mm:ss.mmm");
            i += 12;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn check(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots/top")
        .join(format!("{name}.txt"));
    if std::env::var_os("K8S_ALOG_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        eprintln!("blessed {}", path.display());
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with K8S_ALOG_BLESS=1 to write it. Screen:\n{text}",
            path.display()
        )
    });
    assert_eq!(
        text,
        want,
        "{name} differs from {} (K8S_ALOG_BLESS=1 rewrites it):\n{text}",
        path.display()
    );
}

fn app_on(st: &State, keys: &[KeyCode]) -> App {
    let mut app = App::new(Window::M1);
    app.refresh(st, &outside());
    for k in keys {
        app.key(key(*k), st);
    }
    app
}

#[test]
fn every_view_at_80x24() {
    let st = loaded();
    let views = [
        ("services", '1'),
        ("pods", '2'),
        ("endpoints", '3'),
        ("topology", '4'),
        ("connections", '5'),
        ("tail", '6'),
    ];
    for (name, k) in views {
        let app = app_on(&st, &[KeyCode::Char(k)]);
        check(&format!("{name}_80x24"), &screen(&app, 80, 24));
    }
}

#[test]
fn topology_graph_where_it_fits() {
    let st = loaded();
    let app = app_on(&st, &[KeyCode::Char('4')]);
    let big = screen(&app, 110, 30);
    assert!(big.contains("─▶"), "graph drawn at 110x30:\n{big}");
    check("topology_110x30", &big);
}

#[test]
fn detail_help_filter_and_sort() {
    let st = loaded();
    // Services sorted by error %, the first row's detail.
    let app = app_on(&st, &[KeyCode::Char('s'), KeyCode::Enter]);
    check("services_by_error_detail", &screen(&app, 80, 24));
    let app = app_on(&st, &[KeyCode::Char('?')]);
    check("help", &screen(&app, 80, 24));
    // Tail filtered on 5xx.
    let mut keys = vec![KeyCode::Char('6'), KeyCode::Char('/')];
    keys.extend("status=5xx".chars().map(KeyCode::Char));
    keys.push(KeyCode::Enter);
    let app = app_on(&st, &keys);
    let s = screen(&app, 80, 24);
    check("tail_5xx", &s);
    // A filter being typed with an error.
    let mut keys = vec![KeyCode::Char('/')];
    keys.extend("port=web".chars().map(KeyCode::Char));
    keys.push(KeyCode::Enter);
    let app = app_on(&st, &keys);
    check("filter_error", &screen(&app, 80, 24));
}

/// What the recording holds, as the screens must show it (the traffic made by
/// scripts/top-fixture.sh: 6 rounds).
#[test]
fn figures_match_the_recorded_traffic() {
    let st = loaded();
    let w = Window::M1;
    let now = st.now_ns;
    let c = st.services.map["payment.pay"].w.counts(w, now);
    // 6 200s and 3 503s, each seen by both sockets (through the Service IP), counted once.
    assert_eq!((c.requests, c.s5xx, c.errors), (9, 3, 3), "{c:?}");
    let cart = st.services.map["cart.shop"].w.counts(w, now);
    // Pod IP: 6 x (9 x 200 + 1 x 500); Service IP: 6 x (200 + 404); loopback: 6; gRPC.
    assert_eq!(cart.s5xx, 6, "{cart:?}");
    assert_eq!(cart.s4xx, 6, "{cart:?}");
    let web = st.services.map["web.shop"].w.counts(w, now);
    assert_eq!(web.out_requests, 72, "{web:?}");
    // The refused connections to port 9999.
    let refused: u64 = st
        .flows
        .map
        .iter()
        .filter(|((_, _, port), _)| *port == 9999)
        .map(|(_, a)| a.w.counts(w, now).connect_failed)
        .sum();
    assert_eq!(refused, 6);
    // gRPC methods are endpoints of cart.shop.
    assert!(
        st.endpoints
            .map
            .keys()
            .any(|(s, e)| s == "cart.shop" && e.starts_with("POST:/alogtest.v1.Echo/")),
        "{:?}",
        st.endpoints.map.keys().collect::<Vec<_>>()
    );
    assert_eq!(st.evicted(), 0);
}

/// The whole loop on the test backend with scripted keys and the recording through
/// the channel: it switches views, quits on `q`, and what it drew is the last view.
#[test]
fn loop_runs_on_stand_in_inputs() {
    let (tx, rx) = sync_channel(16);
    let recs = records();
    let n_http = recs.iter().filter(|r| matches!(r, Record::Http(_))).count() as u64;
    let all_sent = Arc::new(AtomicBool::new(false));
    let sent = all_sent.clone();
    std::thread::spawn(move || {
        for r in recs {
            if tx.send(Msg::Record(Box::new(r))).is_err() {
                return;
            }
        }
        sent.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = tx.send(Msg::Done(None));
    });
    let mut keys: VecDeque<Event> = [
        KeyCode::Char('2'),
        KeyCode::Char('w'),
        KeyCode::Char('s'),
        KeyCode::Char('4'),
        KeyCode::Char('q'),
    ]
    .into_iter()
    .map(|k| Event::Key(key(k)))
    .collect();
    let mut inputs = Inputs {
        records: rx,
        events: Box::new(move |_| {
            // Keys only once every record is in the channel (a key drains it first).
            if !all_sent.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
                return Ok(None);
            }
            Ok(keys.pop_front())
        }),
        clock: Box::new(|| None),
        outside: Box::new(|_| outside()),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let opts = LoopOptions {
        tick: Duration::from_millis(50),
        window: Window::S10,
        limits: Limits::default(),
        exit_on_done: false,
    };
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let (perf, app, st) = run_loop(&mut term, &mut inputs, &opts).unwrap();
    assert!(app.quit);
    assert_eq!(app.view, ViewKind::Topology);
    assert_eq!(app.window, Window::M1);
    assert_eq!(app.sort[1], (3, true), "pods sorted on their 4th column");
    assert_eq!(perf.records, records().len() as u64);
    assert_eq!(st.counters.http, n_http);
    let buf = term.backend().buffer().clone();
    let top: String = (0..80).map(|x| buf[(x, 3)].symbol().to_string()).collect();
    assert!(top.contains("4:Topo"), "{top}");
    eprintln!("{}", perf.summary());
}
