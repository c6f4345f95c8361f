//! The one place that reads `/proc` for process attribution, with bounded caches.

use std::collections::HashMap;
use std::path::PathBuf;

use super::cgroup;

/// Most entries kept per cache before it is cleared (memory stays bounded).
const CACHE_MAX: usize = 16_384;

/// Looks up the container of a process, caching by cgroup id (stable for the life of a
/// cgroup) so that `/proc` is read once per container, not once per event.
#[derive(Debug)]
pub struct ProcResolver {
    proc_root: PathBuf,
    by_cgroup: HashMap<u64, Option<String>>,
}

impl ProcResolver {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            by_cgroup: HashMap::new(),
        }
    }

    /// The container id of `pid`, whose cgroup v2 id is `cgroup_id`. Misses are cached too.
    pub fn container_id(&mut self, pid: u32, cgroup_id: u64) -> Option<String> {
        if let Some(hit) = self.by_cgroup.get(&cgroup_id) {
            return hit.clone();
        }
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // The process is gone: do not cache, another pid of the cgroup may answer.
            Err(_) => return None,
        };
        let id = cgroup::container_id(&text);
        if self.by_cgroup.len() >= CACHE_MAX {
            self.by_cgroup.clear();
        }
        self.by_cgroup.insert(cgroup_id, id.clone());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_caches_from_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let cid = "a".repeat(64);
        std::fs::create_dir_all(dir.path().join("42")).unwrap();
        std::fs::write(
            dir.path().join("42/cgroup"),
            format!("0::/kubepods/besteffort/podx/{cid}\n"),
        )
        .unwrap();
        let mut r = ProcResolver::new(dir.path());
        assert_eq!(r.container_id(42, 7).as_deref(), Some(cid.as_str()));
        // Cached by cgroup id: answers even after the process is gone.
        std::fs::remove_dir_all(dir.path().join("42")).unwrap();
        assert_eq!(r.container_id(42, 7).as_deref(), Some(cid.as_str()));
        assert_eq!(r.container_id(43, 8), None);
    }
}
