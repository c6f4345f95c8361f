//! containerd's on-disk task bundles: each running task (pod sandbox or container) has
//! `<state dir>/<id>/config.json`, an OCI runtime spec whose annotations the CRI plugin
//! fills (`io.kubernetes.cri.*`). Pod name, namespace, UID and container name with no
//! socket and no API. CRI-O's `io.kubernetes.pod.*` / `io.kubernetes.container.name`
//! annotations are read too when a bundle carries them.
//!
//! A bundle never changes once written, so each is parsed once (cached by id).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::meta::{ContainerMeta, PodMeta, SnapshotBuilder};

/// What one bundle says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bundle {
    pub sandbox: bool,
    pub container_name: Option<String>,
    pub sandbox_id: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    /// The task's first process (`init.pid` beside the spec).
    pub pid: Option<u32>,
}

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Parse a bundle's `config.json` text.
pub fn parse_spec(json: &str) -> Option<Bundle> {
    let spec: Spec = serde_json::from_str(json).ok()?;
    let a = &spec.annotations;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| a.get(*k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let ctype = get(&[
        "io.kubernetes.cri.container-type",
        "io.kubernetes.cri-o.ContainerType",
    ]);
    let b = Bundle {
        sandbox: ctype.as_deref() == Some("sandbox"),
        container_name: get(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]),
        sandbox_id: get(&[
            "io.kubernetes.cri.sandbox-id",
            "io.kubernetes.cri-o.SandboxID",
        ]),
        pod_name: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        pod_namespace: get(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        pod_uid: get(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]),
        pid: None,
    };
    (b.pod_uid.is_some() || b.sandbox_id.is_some()).then_some(b)
}

/// Largest `config.json` read: a spec with every annotation and mount a pod can have is far
/// smaller.
const MAX_SPEC: u64 = 8 << 20;

/// A bundle file as text: a regular file of root's (never through a symbolic link), at
/// most `max` bytes.
fn read_text(path: &Path, max: u64) -> Option<String> {
    let bytes = crate::fsutil::read_bounded(path, max).ok()?;
    String::from_utf8(bytes).ok()
}

/// Reads the bundles of a state directory, remembering those already parsed.
#[derive(Debug, Default)]
pub struct BundleReader {
    cache: HashMap<String, Option<Bundle>>,
}

impl BundleReader {
    /// Add every bundle under `state_dir` to `b`; returns how many tasks were found
    /// (0 when the directory is absent).
    pub fn read(&mut self, state_dir: &Path, b: &mut SnapshotBuilder) -> usize {
        let Ok(rd) = std::fs::read_dir(state_dir) else {
            self.cache.clear();
            return 0;
        };
        let mut seen = HashMap::new();
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let bundle = match self.cache.remove(&id) {
                Some(hit) => hit,
                None => read_text(&e.path().join("config.json"), MAX_SPEC)
                    .and_then(|t| parse_spec(&t))
                    .map(|mut bd| {
                        bd.pid = read_text(&e.path().join("init.pid"), 64)
                            .and_then(|p| p.trim().parse().ok());
                        bd
                    }),
            };
            seen.insert(id, bundle);
        }
        // Bundles of tasks that are gone are forgotten.
        self.cache = seen;
        // Sandboxes first: containers find their pod's UID through the sandbox id.
        let mut uid_of_sandbox = HashMap::new();
        for (id, bd) in &self.cache {
            if let Some(bd) = bd.as_ref().filter(|bd| bd.sandbox) {
                if let Some(uid) = &bd.pod_uid {
                    uid_of_sandbox.insert(id.clone(), uid.clone());
                }
            }
        }
        let mut n = 0;
        for (id, bd) in &self.cache {
            let Some(bd) = bd else { continue };
            let uid = bd.pod_uid.clone().or_else(|| {
                bd.sandbox_id
                    .as_ref()
                    .and_then(|s| uid_of_sandbox.get(s).cloned())
            });
            let Some(uid) = uid else { continue };
            n += 1;
            b.add_pod(PodMeta {
                uid: uid.clone(),
                name: bd.pod_name.clone().unwrap_or_default(),
                namespace: bd.pod_namespace.clone().unwrap_or_default(),
                local: true,
                ..PodMeta::default()
            });
            b.add_container(
                id,
                ContainerMeta {
                    pod_uid: uid,
                    name: if bd.sandbox {
                        None
                    } else {
                        bd.container_name.clone()
                    },
                    sandbox: bd.sandbox,
                },
            );
        }
        n
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::meta::Naming;

    const SANDBOX: &str = r#"{"ociVersion":"1.0.2-dev","process":{"args":["/pause"]},
      "annotations":{"io.kubernetes.cri.container-type":"sandbox",
        "io.kubernetes.cri.sandbox-id":"SBX","io.kubernetes.cri.sandbox-log-directory":"/var/log/pods/shop_cart-0_U",
        "io.kubernetes.cri.sandbox-name":"cart-0","io.kubernetes.cri.sandbox-namespace":"shop",
        "io.kubernetes.cri.sandbox-uid":"U"},
      "linux":{"cgroupsPath":"/kubepods/besteffort/podU/SBX"}}"#;
    const CONTAINER: &str = r#"{"annotations":{"io.kubernetes.cri.container-type":"container",
        "io.kubernetes.cri.container-name":"cart","io.kubernetes.cri.image-name":"local/app:1",
        "io.kubernetes.cri.sandbox-id":"SBX","io.kubernetes.cri.sandbox-name":"cart-0",
        "io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"U"}}"#;

    #[test]
    fn parses_cri_annotations() {
        let s = parse_spec(SANDBOX).unwrap();
        assert!(s.sandbox);
        assert_eq!(s.pod_name.as_deref(), Some("cart-0"));
        let c = parse_spec(CONTAINER).unwrap();
        assert!(!c.sandbox);
        assert_eq!(c.container_name.as_deref(), Some("cart"));
        assert_eq!(parse_spec(r#"{"annotations":{}}"#), None);
        assert_eq!(parse_spec("not json"), None);
    }

    #[test]
    fn reads_a_state_dir_and_forgets_gone_tasks() {
        let d = tempfile::tempdir().unwrap();
        for (id, spec) in [("SBX", SANDBOX), ("CTR", CONTAINER)] {
            std::fs::create_dir_all(d.path().join(id)).unwrap();
            std::fs::write(d.path().join(id).join("config.json"), spec).unwrap();
        }
        std::fs::write(d.path().join("CTR/init.pid"), "4242\n").unwrap();
        let mut r = BundleReader::default();
        let mut b = SnapshotBuilder::default();
        assert_eq!(r.read(d.path(), &mut b), 2);
        let s = b.build(&Naming::default());
        assert_eq!(s.pods["U"].name, "cart-0");
        assert_eq!(s.containers["CTR"].name.as_deref(), Some("cart"));
        assert!(s.containers["SBX"].sandbox);
        std::fs::remove_dir_all(d.path().join("CTR")).unwrap();
        let mut b = SnapshotBuilder::default();
        assert_eq!(r.read(d.path(), &mut b), 1);
        assert_eq!(r.cached(), 1);
    }
}
