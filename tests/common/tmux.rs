//! A program in a real terminal: tmux with a server of its own, driven by send-keys and
//! read by capture-pane.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of its own (own socket), killed on drop.
pub struct Tmux {
    socket: String,
    session: String,
    /// The program's exit status is written here (tmux reaps lazily, so
    /// `#{pane_dead_status}` may stay empty for a while).
    exit_file: PathBuf,
}

impl Tmux {
    pub fn start(cmd: &[String], w: u16, h: u16) -> Self {
        // A socket per session: a server being killed is never reused.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let t = Self {
            socket: format!("alogtop-{}-{n}", std::process::id()),
            session: "top".into(),
            exit_file: std::env::temp_dir()
                .join(format!("alogtop-{}-{n}.exit", std::process::id())),
        };
        let _ = std::fs::remove_file(&t.exit_file);
        let wrapper = format!("\"$0\" \"$@\"; echo $? > {}", t.exit_file.display());
        let out = Command::new("tmux")
            .args(["-L", &t.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-s", &t.session, "-x", &w.to_string(), "-y", &h.to_string()])
            .args(["sh", "-c", &wrapper])
            .args(cmd)
            .env("TERM", "xterm-256color")
            .output()
            .expect("running tmux (scripts/deps.sh installs it)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Keep the pane after the program exits, to read its exit status.
        t.tmux(&["set-option", "-t", "top", "remain-on-exit", "on"]);
        t
    }

    pub fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.tmux(&["send-keys", "-t", "top", k]);
        }
    }

    /// Type text literally.
    pub fn type_text(&self, s: &str) {
        self.tmux(&["send-keys", "-t", "top", "-l", s]);
    }

    /// Wait until the screen satisfies `pred` (or fail with the screen).
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if t0.elapsed() > timeout {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status once the program has ended.
    pub fn pane_dead(&self) -> Option<i32> {
        std::fs::read_to_string(&self.exit_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.exit_file);
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

pub fn have_tmux() -> bool {
    Command::new("tmux").arg("-V").output().is_ok()
}
