//! The one place that reads `/proc/<pid>/cgroup` for process attribution, with a bounded
//! cache of hits and misses that forgets processes once they exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cgroup::{self, CgroupInfo};

/// Most entries kept before the cache is cleared (memory stays bounded whatever happens).
const CACHE_MAX: usize = 16_384;

#[derive(Debug)]
struct Entry {
    info: Arc<CgroupInfo>,
    /// A process seen in this cgroup: when it is gone the entry is dropped at the next
    /// prune (another process of the cgroup will bring it back on demand).
    pid: u32,
}

/// Looks up what the cgroup of a process says, caching by cgroup id (stable for the
/// life of a cgroup) so that `/proc` is read once per container, not once per event.
#[derive(Debug)]
pub struct ProcResolver {
    proc_root: PathBuf,
    by_cgroup: HashMap<u64, Entry>,
    lookups: u64,
    reads: u64,
    /// `now_ns / PRUNE_EVERY_NS` at the last prune.
    pruned_epoch: u64,
}

/// How often exited processes are looked for.
const PRUNE_EVERY_NS: u64 = 10_000_000_000;

impl ProcResolver {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            by_cgroup: HashMap::new(),
            lookups: 0,
            reads: 0,
            pruned_epoch: 0,
        }
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// What the cgroup of `pid` (cgroup v2 id `cgroup_id`, 0 if unknown) says. `known`
    /// answers from elsewhere without I/O (e.g. a walk of the cgroup tree), for
    /// processes that have already exited. Misses (host processes) are cached too.
    pub fn cgroup_info(
        &mut self,
        pid: u32,
        cgroup_id: u64,
        known: impl FnOnce(u64) -> Option<CgroupInfo>,
    ) -> Arc<CgroupInfo> {
        self.lookups += 1;
        if cgroup_id != 0 {
            if let Some(hit) = self.by_cgroup.get(&cgroup_id) {
                return Arc::clone(&hit.info);
            }
        }
        let info = match known(cgroup_id).filter(|_| cgroup_id != 0) {
            Some(i) => Arc::new(i),
            None => {
                self.reads += 1;
                let path = self.proc_root.join(pid.to_string()).join("cgroup");
                match std::fs::read_to_string(&path) {
                    Ok(t) => Arc::new(cgroup::parse(&t)),
                    // The process is gone: do not cache, another pid of the cgroup may answer.
                    Err(_) => return Arc::new(CgroupInfo::default()),
                }
            }
        };
        if cgroup_id != 0 {
            if self.by_cgroup.len() >= CACHE_MAX {
                self.by_cgroup.clear();
            }
            self.by_cgroup.insert(
                cgroup_id,
                Entry {
                    info: Arc::clone(&info),
                    pid,
                },
            );
        }
        info
    }

    /// The container id of `pid`, whose cgroup v2 id is `cgroup_id`.
    pub fn container_id(&mut self, pid: u32, cgroup_id: u64) -> Option<String> {
        self.cgroup_info(pid, cgroup_id, |_| None)
            .container_id
            .clone()
    }

    /// Forget entries whose process has exited; returns how many were dropped.
    pub fn prune(&mut self) -> usize {
        let before = self.by_cgroup.len();
        let root = self.proc_root.clone();
        self.by_cgroup
            .retain(|_, e| root.join(e.pid.to_string()).exists());
        before - self.by_cgroup.len()
    }

    /// Prune if the last prune was more than about 10 s ago (`now_ns`: any monotonic clock).
    pub fn prune_if_due(&mut self, now_ns: u64) -> usize {
        let epoch = now_ns / PRUNE_EVERY_NS;
        if epoch == self.pruned_epoch {
            return 0;
        }
        self.pruned_epoch = epoch;
        self.prune()
    }

    pub fn len(&self) -> usize {
        self.by_cgroup.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cgroup.is_empty()
    }

    /// (look-ups, `/proc` reads) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.lookups, self.reads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_proc(dir: &Path, pid: u32, text: &str) {
        std::fs::create_dir_all(dir.join(pid.to_string())).unwrap();
        std::fs::write(dir.join(pid.to_string()).join("cgroup"), text).unwrap();
    }

    #[test]
    fn reads_caches_and_forgets_exited_processes() {
        let dir = tempfile::tempdir().unwrap();
        let cid = "a".repeat(64);
        write_proc(
            dir.path(),
            42,
            &format!("0::/kubepods/besteffort/pod{}/{cid}\n", "1".repeat(32)),
        );
        write_proc(dir.path(), 43, "0::/user.slice\n");
        let mut r = ProcResolver::new(dir.path());
        assert_eq!(r.container_id(42, 7).as_deref(), Some(cid.as_str()));
        // A miss (host process) is cached too.
        assert_eq!(r.container_id(43, 8), None);
        assert_eq!(r.counts(), (2, 2));
        // Cached by cgroup id: answers even after the process is gone, until a prune.
        std::fs::remove_dir_all(dir.path().join("42")).unwrap();
        assert_eq!(r.container_id(42, 7).as_deref(), Some(cid.as_str()));
        assert_eq!(r.counts(), (3, 2));
        assert_eq!(r.prune(), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r.container_id(42, 7), None, "gone and not cached");
        // An answer from elsewhere (the cgroup tree) needs no /proc read.
        let known = cgroup::parse_path(&format!("/kubepods/pod{}/{cid}", "2".repeat(32)));
        let got = r.cgroup_info(99, 9, |id| (id == 9).then(|| known.clone()));
        assert_eq!(*got, known);
        assert_eq!(r.counts().1, 3);
    }
}
