//! Debug switch: with `K8S_ALOG_DEBUG_EVENTS=PATH` set, capture also appends one JSON line
//! per decoded kernel event (and per TLS probe attach) to PATH, to check the capture layer
//! on its own, independently of the engine.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::{json, Value};

use super::comm_str;
use super::event::{ConnKind, Event, ExecEvent};
use super::tls::AttachNote;
use crate::protocol::{Direction, Role};

/// The environment variable that names the debug file.
pub const ENV: &str = "K8S_ALOG_DEBUG_EVENTS";

/// Payload bytes shown per data event.
const SHOWN: usize = 64;

pub struct DebugLog {
    out: BufWriter<File>,
    failed: bool,
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
                tracing::warn!("{ENV}: cannot open {}: {e}", Path::new(&path).display());
                None
            }
        }
    }

    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            out: BufWriter::new(f),
            failed: false,
        })
    }

    fn line(&mut self, v: &Value) {
        if self.failed {
            return;
        }
        let r = serde_json::to_writer(&mut self.out, v)
            .and_then(|()| self.out.write_all(b"\n").map_err(serde_json::Error::io));
        if let Err(e) = r {
            tracing::warn!("{ENV}: write failed, debug log stopped: {e}");
            self.failed = true;
        }
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
                "flags": c.flags,
                "tls": c.has(super::skel::types::alog_conn_flags::ALOG_F_TLS),
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
}
