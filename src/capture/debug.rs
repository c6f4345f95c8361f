//! Debug switch: with `K8S_ALOG_DEBUG_EVENTS=PATH` set, capture also appends one JSON line
//! per decoded kernel event (and per TLS probe attach) to PATH, to check the capture layer
//! on its own, independently of the engine. Data events carry the first payload bytes
//! (plaintext of TLS included), so the file is private (0600, `crate::fsutil`) and stops
//! growing at a size cap, with one last line saying so.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{json, Value};

use super::comm_str;
use super::event::{ConnKind, Event, ExecEvent};
use super::tls::AttachNote;
use crate::flow::{Direction, Role};

/// The environment variable that names the debug file.
pub const ENV: &str = "K8S_ALOG_DEBUG_EVENTS";

/// Payload bytes shown per data event.
const SHOWN: usize = 64;

/// The file is not written past this size (bytes, what it held before included).
pub const SIZE_CAP: u64 = 64 << 20;

pub struct DebugLog {
    out: BufWriter<File>,
    /// Stopped: a write failed, or the cap was reached.
    failed: bool,
    /// Size of the file, as far as this log knows.
    size: u64,
    cap: u64,
    line: Vec<u8>,
}

impl DebugLog {
    /// The log named by `K8S_ALOG_DEBUG_EVENTS`, if set (a file that cannot be opened is
    /// reported and ignored).
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os(ENV)?;
        if path.is_empty() {
            return None;
        }
        match Self::open(Path::new(&path)) {
            Ok(l) => {
                tracing::info!(
                    "debug: writing every kernel event to {}",
                    Path::new(&path).display()
                );
                Some(l)
            }
            Err(e) => {
                tracing::warn!("{ENV}: not writing the debug log: {e}");
                None
            }
        }
    }

    pub fn open(path: &Path) -> Result<Self, crate::fsutil::FileError> {
        Self::open_capped(path, SIZE_CAP)
    }

    /// With a size cap other than `SIZE_CAP`.
    pub fn open_capped(path: &Path, cap: u64) -> Result<Self, crate::fsutil::FileError> {
        let f = crate::fsutil::open_append(path)?;
        let size = f.metadata().map_or(0, |m| m.len());
        Ok(Self {
            out: BufWriter::new(f),
            failed: false,
            size,
            cap,
            line: Vec::with_capacity(512),
        })
    }

    fn line(&mut self, v: &Value) {
        if self.failed {
            return;
        }
        self.line.clear();
        // Into a Vec: cannot fail.
        let _ = serde_json::to_writer(&mut self.line, v);
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if self.size.saturating_add(len) > self.cap {
            self.failed = true;
            let last = format!(
                "{{\"kind\":\"capped\",\"cap_bytes\":{},\"note\":\"size cap reached: nothing more is written\"}}\n",
                self.cap
            );
            let _ = self.out.write_all(last.as_bytes());
            let _ = self.out.flush();
            tracing::warn!(
                "{ENV}: the debug log reached its size cap ({} bytes): nothing more is written to it",
                self.cap
            );
            return;
        }
        if let Err(e) = self.out.write_all(&self.line) {
            tracing::warn!("{ENV}: write failed, debug log stopped: {e}");
            self.failed = true;
            return;
        }
        self.size += len;
    }

    pub fn event(&mut self, ev: &Event<'_>) {
        let v = match ev {
            Event::Data(d) => {
                let shown = &d.payload[..d.payload.len().min(SHOWN)];
                json!({
                    "kind": "data",
                    "cookie": d.cookie,
                    "seq": d.seq,
                    "dir": dir_name(d.dir),
                    "syscall": d.syscall.name(),
                    "flags": d.flags,
                    "tls": d.is_tls_plaintext(),
                    "cipher": d.is_ciphertext(),
                    "len": d.len,
                    "cap": d.payload.len(),
                    "tgid": d.tgid,
                    "tid": d.tid,
                    "fd": d.fd,
                    "comm": comm_str(&d.comm),
                    "start_ns": d.start_ns,
                    "ts_ns": d.ts_ns,
                    "payload": shown.escape_ascii().to_string(),
                })
            }
            Event::Conn(c) => json!({
                "kind": "conn",
                "type": conn_kind_name(c.kind),
                "cookie": c.cookie,
                "flags": c.flags.bits(),
                "tls": c.flags.tls(),
                "role": match c.role {
                    Role::Client => "client",
                    Role::Server => "server",
                    Role::Unknown => "unknown",
                },
                "local": c.local.to_string(),
                "remote": c.remote.to_string(),
                "tgid": c.tgid,
                "comm": comm_str(&c.comm),
                "data_events": c.data_events,
                "ts_ns": c.ts_ns,
            }),
        };
        self.line(&v);
    }

    pub fn exec(&mut self, e: &ExecEvent) {
        self.line(&json!({
            "kind": "exec",
            "pid": e.pid,
            "old_pid": e.old_pid,
            "comm": comm_str(&e.comm),
            "filename": e.filename,
            "ts_ns": e.ts_ns,
        }));
    }

    pub(crate) fn attach(&mut self, n: &AttachNote<'_>) {
        self.line(&json!({
            "kind": "attach",
            "path": n.path,
            "flavor": n.flavor,
            "origin": n.origin,
            "probes": n.probes,
            "error": n.error,
            "ts_ns": super::monotonic_ns(),
        }));
    }

    pub fn flush(&mut self) {
        if !self.failed && self.out.flush().is_err() {
            self.failed = true;
        }
    }

    /// Nothing more is written (a write failed, or the size cap was reached).
    pub fn stopped(&self) -> bool {
        self.failed
    }
}

impl Drop for DebugLog {
    fn drop(&mut self) {
        self.flush();
    }
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    }
}

fn conn_kind_name(k: ConnKind) -> &'static str {
    match k {
        ConnKind::Connected => "connected",
        ConnKind::ConnectFailed => "connect_failed",
        ConnKind::Accepted => "accepted",
        ConnKind::Discovered => "discovered",
        ConnKind::Closed => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::{decode, DataEvent};
    use crate::capture::Syscall;

    #[test]
    fn data_lines_escape_payload() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let mut log = DebugLog::open(&p).unwrap();
        let d = DataEvent {
            cookie: 7,
            ts_ns: 2,
            start_ns: 1,
            seq: 3,
            len: 100,
            cgroup_id: 0,
            tgid: 10,
            tid: 11,
            fd: 5,
            dir: Direction::Egress,
            syscall: Syscall::SslWrite,
            flags: 1,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            payload: b"GET / HTTP/1.1\r\n\x16\x03",
        };
        log.event(&Event::Data(d));
        log.exec(&ExecEvent {
            ts_ns: 1,
            cgroup_id: 0,
            pid: 9,
            old_pid: 9,
            ino: 1,
            dev: 2,
            filename: "/bin/true".into(),
            comm: [0; 16],
        });
        drop(log);
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["payload"], "GET / HTTP/1.1\\r\\n\\x16\\x03");
        assert_eq!(lines[0]["syscall"], "ssl_write");
        assert_eq!(lines[0]["tls"], true);
        assert_eq!(lines[0]["cipher"], false);
        assert_eq!(lines[0]["comm"], "curl");
        assert_eq!(lines[1]["kind"], "exec");
        assert!(decode(&[]).is_err());
    }

    fn exec_event(n: u32) -> ExecEvent {
        ExecEvent {
            ts_ns: 1,
            cgroup_id: 0,
            pid: n,
            old_pid: n,
            ino: 1,
            dev: 2,
            filename: "/bin/true".into(),
            comm: [0; 16],
        }
    }

    #[test]
    fn the_file_stops_at_its_size_cap_with_a_last_line_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "earlier\n").unwrap();
        let cap = 4096;
        let mut log = DebugLog::open_capped(&p, cap).unwrap();
        for i in 0..1000 {
            log.exec(&exec_event(i));
        }
        assert!(log.stopped());
        drop(log);
        let text = std::fs::read_to_string(&p).unwrap();
        let last = text.lines().last().unwrap();
        let v: Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["kind"], "capped", "{last}");
        let before_last = text.len() - last.len() - 1;
        assert!(
            before_last as u64 <= cap,
            "{before_last} bytes before the last line"
        );
        assert!(text.len() < 4096 + 200, "{} bytes", text.len());
        assert!(text.starts_with("earlier\n"));
        // The default cap is the documented one.
        assert_eq!(SIZE_CAP, 64 << 20);
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let p = dir.path().join("d.jsonl");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        assert!(DebugLog::open(&p).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    }
}
