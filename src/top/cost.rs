//! The tool's own cost, from `/proc`: CPU and RSS of this process, and the in-kernel
//! run time of its BPF programs (the kernel's BPF run-time statistics, read from
//! `/proc/self/fdinfo` of our own program descriptors). The only file of `top` that
//! reads `/proc` or writes a sysctl.

use std::path::Path;
use std::time::Instant;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's BPF run-time statistics on while it lives, and back off when
/// dropped if they were off before (they cost a little on every program run).
pub struct BpfStatsGuard {
    restore: bool,
    /// Why statistics are not available, when they are not.
    pub note: Option<String>,
}

impl BpfStatsGuard {
    pub fn enable() -> Self {
        match std::fs::read_to_string(BPF_STATS_SYSCTL) {
            Ok(s) if s.trim() == "1" => Self {
                restore: false,
                note: None,
            },
            Ok(_) => match std::fs::write(BPF_STATS_SYSCTL, "1") {
                Ok(()) => Self {
                    restore: true,
                    note: None,
                },
                Err(e) => {
                    tracing::info!("BPF run-time statistics not enabled: {BPF_STATS_SYSCTL}: {e}");
                    Self {
                        restore: false,
                        note: Some("stats off".into()),
                    }
                }
            },
            Err(e) => {
                tracing::info!("BPF run-time statistics unavailable: {BPF_STATS_SYSCTL}: {e}");
                Self {
                    restore: false,
                    note: Some("no stats".into()),
                }
            }
        }
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        if self.restore {
            if let Err(e) = std::fs::write(BPF_STATS_SYSCTL, "0") {
                tracing::warn!("restoring {BPF_STATS_SYSCTL} to 0: {e}");
            }
        }
    }
}

/// Run time and run count summed over our BPF programs.
pub fn bpf_run_totals(proc_self: &Path) -> Option<(u64, u64)> {
    let mut time = 0u64;
    let mut cnt = 0u64;
    let mut progs = 0;
    for e in std::fs::read_dir(proc_self.join("fd")).ok()?.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(proc_self.join("fdinfo").join(e.file_name())) else {
            continue;
        };
        let (t, c) = parse_fdinfo(&info);
        time += t;
        cnt += c;
        progs += 1;
    }
    (progs > 0).then_some((time, cnt))
}

/// `run_time_ns` and `run_cnt` of a BPF program's fdinfo.
pub fn parse_fdinfo(s: &str) -> (u64, u64) {
    let mut t = 0;
    let mut c = 0;
    for line in s.lines() {
        let mut it = line.splitn(2, ':');
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v = v.trim().parse().unwrap_or(0);
        match k.trim() {
            "run_time_ns" => t = v,
            "run_cnt" => c = v,
            _ => {}
        }
    }
    (t, c)
}

/// (utime + stime in clock ticks, RSS bytes) of this process.
fn cpu_and_rss(proc_self: &Path) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(proc_self.join("stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let statm = std::fs::read_to_string(proc_self.join("statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no side effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some((ticks, pages * page))
}

type Sample = (Instant, u64, Option<(u64, u64)>);

/// Samples CPU, RSS and BPF run time; each call gives figures since the previous one.
pub struct CostProbe {
    proc_self: std::path::PathBuf,
    clk_tck: f64,
    /// (when, CPU ticks, BPF run totals) of the previous sample.
    last: Option<Sample>,
}

/// One sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub cpu_pct: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub bpf_cpu_pct: Option<f64>,
}

impl Default for CostProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl CostProbe {
    pub fn new() -> Self {
        // SAFETY: sysconf has no side effects.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            proc_self: "/proc/self".into(),
            clk_tck: if tck > 0 { tck as f64 } else { 100.0 },
            last: None,
        }
    }

    pub fn sample(&mut self) -> Cost {
        let now = Instant::now();
        let cr = cpu_and_rss(&self.proc_self);
        let bpf = bpf_run_totals(&self.proc_self);
        let mut c = Cost {
            rss_bytes: cr.map(|x| x.1),
            ..Cost::default()
        };
        if let (Some((t0, ticks0, bpf0)), Some((ticks, _))) = (self.last, cr) {
            let dt = now.duration_since(t0).as_secs_f64();
            if dt > 0.0 {
                c.cpu_pct = Some(100.0 * (ticks.saturating_sub(ticks0)) as f64 / self.clk_tck / dt);
                if let (Some((b0, _)), Some((b, _))) = (bpf0, bpf) {
                    c.bpf_cpu_pct = Some(100.0 * b.saturating_sub(b0) as f64 / 1e9 / dt);
                }
            }
        }
        if let Some((ticks, _)) = cr {
            self.last = Some((now, ticks, bpf));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_bpf_program() {
        // As /proc/<pid>/fdinfo/<fd> shows it for a program (kernel 6.x).
        let s = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t10327\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\t2a5b0ab3e2cd9b1c\nmemlock:\t4096\nprog_id:\t512\nrun_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t0\nverified_insns:\t1040\n";
        assert_eq!(parse_fdinfo(s), (123_456, 789));
        assert_eq!(parse_fdinfo("pos: 0\n"), (0, 0));
    }

    #[test]
    fn own_cpu_and_rss_are_read() {
        let mut p = CostProbe::new();
        let first = p.sample();
        assert!(first.rss_bytes.unwrap() > 1 << 20);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let second = p.sample();
        assert!(second.cpu_pct.is_some());
        assert!(
            bpf_run_totals(Path::new("/proc/self")).is_none(),
            "no BPF programs here"
        );
    }
}
