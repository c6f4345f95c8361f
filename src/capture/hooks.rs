//! Which kernel hook carries each part of capture on this kernel.
//!
//! The lifecycle programs (`inet_sock_set_state`, the reset tracepoints, `sched_process_exec`)
//! exist on every kernel k8s-alog supports. The data hooks do not: the socket tracepoints that
//! see every send and receive are recent (Linux 6.3), and a locked-down kernel refuses BPF
//! trampolines (fentry), some kernels have no kprobes. So each data hook climbs down a ladder
//! of rungs until one is there and accepted:
//!
//! 1. `tracepoint`: `sock_send_length` / `sock_recv_length` / `tcp_sendmsg_locked` (tp_btf);
//! 2. `fentry`: fexit on `tcp_sendmsg` (+ `tcp_sendpage` where it exists), `inet_recvmsg`,
//!    `inet6_recvmsg`; fentry on `tcp_sendmsg_locked`;
//! 3. `kprobe`: kprobes and kretprobes on the same functions;
//! 4. `syscall`: the raw `sys_exit` tracepoint, the socket found from the fd (send and
//!    receive only: a send's start is not seen there, its end stands for it).
//!
//! This file is pure: what the kernel has comes in through [`KernelHas`], so the planning
//! is unit-tested without a kernel; `capture::start` loads what the plan names and feeds
//! refusals back as exclusions.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// One way of hooking a part of capture, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rung {
    Tracepoint,
    Fentry,
    Kprobe,
    Syscall,
}

impl Rung {
    /// Every rung, in the order they are tried.
    pub const ALL: [Rung; 4] = [Rung::Tracepoint, Rung::Fentry, Rung::Kprobe, Rung::Syscall];

    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Tracepoint => "tracepoint",
            Rung::Fentry => "fentry",
            Rung::Kprobe => "kprobe",
            Rung::Syscall => "syscall",
        }
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Rung {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rung::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                format!("unknown hook rung {s:?} (expected tracepoint, fentry, kprobe or syscall)")
            })
    }
}

/// How rungs are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookMode {
    /// The cheapest rung this kernel has and accepts, per hook.
    #[default]
    Auto,
    /// This rung for every data hook, or capture does not start.
    Force(Rung),
}

impl FromStr for HookMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(HookMode::Auto)
        } else {
            s.parse().map(HookMode::Force)
        }
    }
}

/// A part of capture whose hook is chosen on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// Bytes sent by a socket call (and its payload prefix).
    Send,
    /// Bytes received by a socket call.
    Recv,
    /// The start of a TCP send (times sends that block on a full buffer).
    SendStart,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Send, Hook::Recv, Hook::SendStart];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Send => "send",
            Hook::Recv => "recv",
            Hook::SendStart => "send_start",
        }
    }

    /// Whether capture can run without it (its figures are then approximated, and said so).
    fn optional(self) -> bool {
        matches!(self, Hook::SendStart)
    }
}

/// What a BPF program of a rung attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A tracepoint, by its name (tp_btf: needs `btf_trace_<name>` in the kernel's BTF).
    Tracepoint(&'static str),
    /// A kernel function (fentry/fexit and kprobes: must be in the kernel's BTF).
    Function(&'static str),
}

/// One BPF program of `alog.bpf.c` that carries a hook on a rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prog {
    /// Its name in the BPF object.
    pub name: &'static str,
    pub target: Target,
    /// Loaded only where its target exists; the rung stands without it
    /// (`tcp_sendpage`: sendfile and splice before 6.5, gone since).
    pub optional: bool,
}

const fn prog(name: &'static str, target: Target) -> Prog {
    Prog {
        name,
        target,
        optional: false,
    }
}

const fn extra(name: &'static str, target: Target) -> Prog {
    Prog {
        name,
        target,
        optional: true,
    }
}

use Target::{Function as F, Tracepoint as T};

/// The programs that carry `hook` on `rung` (empty: that rung cannot carry it).
pub fn programs(hook: Hook, rung: Rung) -> &'static [Prog] {
    const SEND_TP: &[Prog] = &[prog("on_send", T("sock_send_length"))];
    const RECV_TP: &[Prog] = &[prog("on_recv", T("sock_recv_length"))];
    const START_TP: &[Prog] = &[prog("on_sendmsg_locked", T("tcp_sendmsg_locked"))];
    const SEND_FE: &[Prog] = &[
        prog("fx_send", F("tcp_sendmsg")),
        extra("fx_sendpage", F("tcp_sendpage")),
    ];
    const RECV_FE: &[Prog] = &[
        prog("fx_recv", F("inet_recvmsg")),
        extra("fx_recv6", F("inet6_recvmsg")),
    ];
    const START_FE: &[Prog] = &[prog("fe_sendmsg_locked", F("tcp_sendmsg_locked"))];
    const SEND_KP: &[Prog] = &[
        prog("kp_send", F("tcp_sendmsg")),
        prog("kr_send", F("tcp_sendmsg")),
        extra("kp_sendpage", F("tcp_sendpage")),
        extra("kr_sendpage", F("tcp_sendpage")),
    ];
    const RECV_KP: &[Prog] = &[
        prog("kp_recv", F("inet_recvmsg")),
        prog("kr_recv", F("inet_recvmsg")),
        extra("kp_recv6", F("inet6_recvmsg")),
        extra("kr_recv6", F("inet6_recvmsg")),
    ];
    const START_KP: &[Prog] = &[prog("kp_sendmsg_locked", F("tcp_sendmsg_locked"))];
    const SYSCALL: &[Prog] = &[prog("sc_exit", T("sys_exit"))];
    match (hook, rung) {
        (Hook::Send, Rung::Tracepoint) => SEND_TP,
        (Hook::Recv, Rung::Tracepoint) => RECV_TP,
        (Hook::SendStart, Rung::Tracepoint) => START_TP,
        (Hook::Send, Rung::Fentry) => SEND_FE,
        (Hook::Recv, Rung::Fentry) => RECV_FE,
        (Hook::SendStart, Rung::Fentry) => START_FE,
        (Hook::Send, Rung::Kprobe) => SEND_KP,
        (Hook::Recv, Rung::Kprobe) => RECV_KP,
        (Hook::SendStart, Rung::Kprobe) => START_KP,
        (Hook::Send | Hook::Recv, Rung::Syscall) => SYSCALL,
        (Hook::SendStart, Rung::Syscall) => &[],
    }
}

/// Every program name that belongs to some rung (all others are always loaded).
pub fn all_rung_programs() -> BTreeSet<&'static str> {
    Hook::ALL
        .into_iter()
        .flat_map(|h| Rung::ALL.into_iter().map(move |r| programs(h, r)))
        .flatten()
        .map(|p| p.name)
        .collect()
}

/// What the running kernel has, as far as can be told without loading anything.
pub trait KernelHas {
    fn tracepoint(&self, name: &str) -> bool;
    fn function(&self, name: &str) -> bool;
}

/// The rung chosen for one hook, and why the cheaper ones were passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// None: no rung carries it here (optional hooks only).
    pub rung: Option<Rung>,
    /// One line per rung passed over: "fentry: refused at load (...)".
    pub passed_over: Vec<String>,
}

impl Choice {
    /// One line: the rung, then why not the cheaper ones.
    pub fn describe(&self) -> String {
        let head = match self.rung {
            Some(r) => r.as_str().to_string(),
            None => "none".to_string(),
        };
        if self.passed_over.is_empty() {
            head
        } else {
            format!("{head} ({})", self.passed_over.join("; "))
        }
    }
}

/// The rung of every hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub send: Choice,
    pub recv: Choice,
    pub send_start: Choice,
}

impl Plan {
    pub fn get(&self, h: Hook) -> &Choice {
        match h {
            Hook::Send => &self.send,
            Hook::Recv => &self.recv,
            Hook::SendStart => &self.send_start,
        }
    }

    fn get_mut(&mut self, h: Hook) -> &mut Choice {
        match h {
            Hook::Send => &mut self.send,
            Hook::Recv => &mut self.recv,
            Hook::SendStart => &mut self.send_start,
        }
    }

    /// The programs to load, with the hook and rung each one serves.
    pub fn programs(&self) -> Vec<(Hook, Rung, Prog)> {
        let mut out: Vec<(Hook, Rung, Prog)> = Vec::new();
        for h in Hook::ALL {
            if let Some(r) = self.get(h).rung {
                for p in programs(h, r) {
                    if !out.iter().any(|(_, _, q)| q.name == p.name) {
                        out.push((h, r, *p));
                    }
                }
            }
        }
        out
    }

    /// The hooks a program serves (the syscall program serves send and receive).
    pub fn hooks_of(&self, prog: &str) -> Vec<(Hook, Rung)> {
        Hook::ALL
            .into_iter()
            .filter_map(|h| {
                let r = self.get(h).rung?;
                programs(h, r)
                    .iter()
                    .any(|p| p.name == prog)
                    .then_some((h, r))
            })
            .collect()
    }
}

/// Rungs already tried and refused, with the reason (from the load or attach).
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    refused: Vec<(Hook, Rung, String)>,
}

impl Refusals {
    pub fn add(&mut self, hook: Hook, rung: Rung, why: impl Into<String>) {
        if !self.is_refused(hook, rung) {
            self.refused.push((hook, rung, why.into()));
        }
    }

    pub fn is_refused(&self, hook: Hook, rung: Rung) -> bool {
        self.refused
            .iter()
            .any(|(h, r, _)| *h == hook && *r == rung)
    }

    fn why(&self, hook: Hook, rung: Rung) -> Option<&str> {
        self.refused
            .iter()
            .find(|(h, r, _)| *h == hook && *r == rung)
            .map(|(_, _, w)| w.as_str())
    }
}

/// Why a rung cannot carry a hook here, as far as the kernel's BTF tells (None: it can).
fn missing(kernel: &dyn KernelHas, hook: Hook, rung: Rung) -> Option<String> {
    let progs = programs(hook, rung);
    if progs.is_empty() {
        return Some("not available on this rung".to_string());
    }
    for p in progs.iter().filter(|p| !p.optional) {
        match p.target {
            Target::Tracepoint(t) if !kernel.tracepoint(t) => {
                return Some(format!("no {t} tracepoint in this kernel"));
            }
            Target::Function(f) if !kernel.function(f) => {
                return Some(format!("no {f} function in this kernel's BTF"));
            }
            _ => {}
        }
    }
    None
}

/// Whether an optional program's target exists here.
pub fn target_present(kernel: &dyn KernelHas, p: &Prog) -> bool {
    match p.target {
        Target::Tracepoint(t) => kernel.tracepoint(t),
        Target::Function(f) => kernel.function(f),
    }
}

/// The cheapest rung of each hook that exists here and was not refused.
/// Err: a hook capture cannot run without has no rung left (the message says why).
pub fn plan(kernel: &dyn KernelHas, mode: HookMode, refused: &Refusals) -> Result<Plan, String> {
    let mut plan = Plan {
        send: Choice {
            rung: None,
            passed_over: Vec::new(),
        },
        recv: Choice {
            rung: None,
            passed_over: Vec::new(),
        },
        send_start: Choice {
            rung: None,
            passed_over: Vec::new(),
        },
    };
    for hook in Hook::ALL {
        let rungs: Vec<Rung> = match mode {
            HookMode::Auto => Rung::ALL.to_vec(),
            HookMode::Force(r) => vec![r],
        };
        let choice = plan.get_mut(hook);
        for r in rungs {
            let why = if let Some(w) = refused.why(hook, r) {
                Some(w.to_string())
            } else {
                missing(kernel, hook, r)
            };
            match why {
                None => {
                    choice.rung = Some(r);
                    break;
                }
                Some(w) => choice.passed_over.push(format!("{r}: {w}")),
            }
        }
        if choice.rung.is_none() && !hook.optional() {
            let forced = match mode {
                HookMode::Force(r) => format!(" (hooks forced to {r})"),
                HookMode::Auto => String::new(),
            };
            return Err(format!(
                "no hook for {} here{forced}: {}",
                hook.as_str(),
                choice.passed_over.join("; ")
            ));
        }
    }
    Ok(plan)
}

/// The program names libbpf's failure messages blame (`prog 'NAME': ... failed ...`);
/// its other messages name every program and blame none.
pub fn blamed_programs(log: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in log.iter().filter(|l| l.contains("fail")) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("prog '") {
            rest = &rest[i + 6..];
            if let Some(end) = rest.find('\'') {
                out.insert(rest[..end].to_string());
                rest = &rest[end..];
            } else {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Kernel {
        tps: &'static [&'static str],
        funcs: &'static [&'static str],
    }

    impl KernelHas for Kernel {
        fn tracepoint(&self, name: &str) -> bool {
            self.tps.contains(&name)
        }
        fn function(&self, name: &str) -> bool {
            self.funcs.contains(&name)
        }
    }

    const FUNCS: &[&str] = &[
        "tcp_sendmsg",
        "tcp_sendmsg_locked",
        "inet_recvmsg",
        "inet6_recvmsg",
    ];

    /// Linux 6.18: every tracepoint.
    const NEW: Kernel = Kernel {
        tps: &[
            "sock_send_length",
            "sock_recv_length",
            "tcp_sendmsg_locked",
            "sys_exit",
        ],
        funcs: FUNCS,
    };
    /// Linux 6.1: no socket tracepoints.
    const OLD: Kernel = Kernel {
        tps: &["sys_exit"],
        funcs: FUNCS,
    };

    #[test]
    fn newest_kernel_uses_tracepoints_everywhere() {
        let p = plan(&NEW, HookMode::Auto, &Refusals::default()).unwrap();
        for h in Hook::ALL {
            assert_eq!(p.get(h).rung, Some(Rung::Tracepoint), "{h:?}");
        }
        let names: Vec<&str> = p.programs().iter().map(|(_, _, q)| q.name).collect();
        assert_eq!(names, ["on_send", "on_recv", "on_sendmsg_locked"]);
    }

    #[test]
    fn old_kernel_climbs_down_and_says_why() {
        let p = plan(&OLD, HookMode::Auto, &Refusals::default()).unwrap();
        assert_eq!(p.send.rung, Some(Rung::Fentry));
        assert_eq!(
            p.send.describe(),
            "fentry (tracepoint: no sock_send_length tracepoint in this kernel)"
        );
        let mut refused = Refusals::default();
        for h in Hook::ALL {
            refused.add(h, Rung::Fentry, "refused at load (Operation not permitted)");
        }
        let p = plan(&OLD, HookMode::Auto, &refused).unwrap();
        assert_eq!(p.recv.rung, Some(Rung::Kprobe));
        for h in Hook::ALL {
            refused.add(h, Rung::Kprobe, "attach failed");
        }
        let p = plan(&OLD, HookMode::Auto, &refused).unwrap();
        assert_eq!(p.send.rung, Some(Rung::Syscall));
        assert_eq!(p.recv.rung, Some(Rung::Syscall));
        // The start of a send has no syscall rung: absent, capture still runs.
        assert_eq!(p.send_start.rung, None);
        // One program serves both directions on the syscall rung.
        let names: Vec<&str> = p.programs().iter().map(|(_, _, q)| q.name).collect();
        assert_eq!(names, ["sc_exit"]);
        assert_eq!(p.hooks_of("sc_exit").len(), 2);
    }

    #[test]
    fn forced_rung_is_that_rung_or_an_error() {
        let p = plan(&NEW, HookMode::Force(Rung::Syscall), &Refusals::default()).unwrap();
        assert_eq!(p.send.rung, Some(Rung::Syscall));
        assert_eq!(p.send_start.rung, None);
        let e = plan(
            &OLD,
            HookMode::Force(Rung::Tracepoint),
            &Refusals::default(),
        )
        .unwrap_err();
        assert!(e.contains("no sock_send_length tracepoint"), "{e}");
        assert!(e.contains("forced to tracepoint"), "{e}");
    }

    #[test]
    fn mixed_rungs_per_hook() {
        // Linux 6.12: socket tracepoints, but no tcp_sendmsg_locked tracepoint.
        const K: Kernel = Kernel {
            tps: &["sock_send_length", "sock_recv_length", "sys_exit"],
            funcs: FUNCS,
        };
        let p = plan(&K, HookMode::Auto, &Refusals::default()).unwrap();
        assert_eq!(p.send.rung, Some(Rung::Tracepoint));
        assert_eq!(p.send_start.rung, Some(Rung::Fentry));
    }

    #[test]
    fn libbpf_messages_name_the_refused_program() {
        let log = vec![
            "libbpf: prog 'on_state': relo #3: patched insn #12 (LDX/ST/STX) off 16 -> 16"
                .to_string(),
            "libbpf: prog 'fx_send': BPF program load failed: Operation not permitted".to_string(),
            "libbpf: prog 'fx_send': -- BEGIN PROG LOAD LOG --".to_string(),
            "libbpf: failed to load object 'alog_bpf'".to_string(),
        ];
        let b = blamed_programs(&log);
        assert_eq!(b.into_iter().collect::<Vec<_>>(), ["fx_send"]);
    }

    #[test]
    fn rung_names_parse() {
        assert_eq!("kprobe".parse::<Rung>(), Ok(Rung::Kprobe));
        assert_eq!("auto".parse::<HookMode>(), Ok(HookMode::Auto));
        assert_eq!(
            "Syscall".parse::<HookMode>(),
            Ok(HookMode::Force(Rung::Syscall))
        );
        assert!("perf".parse::<HookMode>().is_err());
    }
}
