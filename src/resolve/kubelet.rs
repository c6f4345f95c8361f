//! The kubelet's on-disk pod layout, readable with no runtime socket and no API:
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` names every pod on the
//! node and its containers; `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//! links tie container ids to them.
//!
//! Names and namespaces are DNS labels (no `_`), so `_` separates fields safely.

use std::path::Path;

use super::cgroup::is_container_id;
use super::meta::{ContainerMeta, PodMeta, SnapshotBuilder};

/// `<namespace>_<pod>_<uid>` -> (namespace, pod, uid).
pub fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut it = name.splitn(3, '_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    (!ns.is_empty() && !pod.is_empty() && uid.len() >= 32).then_some((ns, pod, uid))
}

/// `<pod>_<namespace>_<container>-<64-hex id>.log` -> (pod, namespace, container, id).
pub fn parse_container_log(name: &str) -> Option<(&str, &str, &str, &str)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if !is_container_id(id) {
        return None;
    }
    let mut it = rest.splitn(3, '_');
    let (pod, ns, ctr) = (it.next()?, it.next()?, it.next()?);
    (!pod.is_empty() && !ns.is_empty() && !ctr.is_empty()).then_some((pod, ns, ctr, id))
}

/// Add what the kubelet layout under `pods_dir` (and the links in `containers_dir`)
/// says. Returns the number of pods found; 0 when the directories are absent.
pub fn read_layout(pods_dir: &Path, containers_dir: &Path, b: &mut SnapshotBuilder) -> usize {
    let mut pods = 0;
    // (namespace, pod) -> uid, to place links whose targets cannot be read.
    let mut uid_of = std::collections::HashMap::new();
    if let Ok(rd) = std::fs::read_dir(pods_dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some((ns, pod, uid)) = parse_pod_dir(&name.to_string_lossy())
                .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            else {
                continue;
            };
            pods += 1;
            uid_of.insert((ns.clone(), pod.clone()), uid.clone());
            b.add_pod(PodMeta {
                uid,
                name: pod,
                namespace: ns,
                local: true,
                ..PodMeta::default()
            });
        }
    }
    if let Ok(rd) = std::fs::read_dir(containers_dir) {
        for e in rd.flatten() {
            let fname = e.file_name();
            let fname = fname.to_string_lossy();
            let Some((pod, ns, ctr, id)) = parse_container_log(&fname) else {
                continue;
            };
            // The link's target names the pod directory, and so the UID.
            let uid = std::fs::read_link(e.path())
                .ok()
                .and_then(|t| {
                    t.iter()
                        .filter_map(|c| c.to_str())
                        .find_map(|c| parse_pod_dir(c).map(|(_, _, u)| u.to_string()))
                })
                .or_else(|| uid_of.get(&(ns.to_string(), pod.to_string())).cloned());
            let Some(uid) = uid else { continue };
            b.add_container(
                id,
                ContainerMeta {
                    pod_uid: uid,
                    name: Some(ctr.to_string()),
                    sandbox: false,
                },
            );
        }
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::meta::Naming;

    #[test]
    fn names() {
        assert_eq!(
            parse_pod_dir("shop_cart-0_0b6f3c1e-2a4d-4e8f-9c7b-5d1a2e3f4a5b"),
            Some(("shop", "cart-0", "0b6f3c1e-2a4d-4e8f-9c7b-5d1a2e3f4a5b"))
        );
        assert_eq!(parse_pod_dir("garbage"), None);
        let id = "a".repeat(64);
        let f = format!("cart-0_shop_proxy-sidecar-{id}.log");
        assert_eq!(
            parse_container_log(&f),
            Some(("cart-0", "shop", "proxy-sidecar", id.as_str()))
        );
        assert_eq!(parse_container_log("x_y_z-1234.log"), None);
    }

    #[test]
    fn reads_a_layout() {
        let d = tempfile::tempdir().unwrap();
        let uid = "0b6f3c1e-2a4d-4e8f-9c7b-5d1a2e3f4a5b";
        let id = "b".repeat(64);
        let pod_dir = d.path().join(format!("pods/shop_cart-0_{uid}"));
        std::fs::create_dir_all(pod_dir.join("cart")).unwrap();
        std::fs::write(pod_dir.join("cart/0.log"), "").unwrap();
        std::fs::create_dir_all(d.path().join("containers")).unwrap();
        std::os::unix::fs::symlink(
            pod_dir.join("cart/0.log"),
            d.path()
                .join(format!("containers/cart-0_shop_cart-{id}.log")),
        )
        .unwrap();
        let mut b = SnapshotBuilder::default();
        assert_eq!(
            read_layout(&d.path().join("pods"), &d.path().join("containers"), &mut b),
            1
        );
        let s = b.build(&Naming::default());
        assert_eq!(s.pods[uid].name, "cart-0");
        assert_eq!(s.pods[uid].service, "cart.shop");
        assert_eq!(s.containers[&id].name.as_deref(), Some("cart"));
        assert_eq!(s.containers[&id].pod_uid, uid);
    }
}
