//! Pure parsing of `/proc/<pid>/cgroup` contents into a container id.

/// The container id in one cgroup path, if its last components name a container.
///
/// Handles the shapes the common runtimes write: a bare 64-hex id (cgroupfs driver:
/// containerd, Docker), `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope` (systemd driver) and `libpod-<id>.scope` (Podman).
pub fn container_id_from_path(path: &str) -> Option<String> {
    for comp in path.rsplit('/') {
        let comp = comp.strip_suffix(".scope").unwrap_or(comp);
        let id = comp.rsplit(['-', ':']).next().unwrap_or(comp);
        if is_container_id(id) {
            return Some(id.to_string());
        }
        if comp.is_empty() || comp == "container" {
            continue;
        }
        // Only the leaf (or the leaf below a "container" sub-cgroup) names the container.
        break;
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The container id of a process, from the whole text of `/proc/<pid>/cgroup`.
/// The unified (v2, `0::`) line is preferred; any v1 line naming a container will do.
pub fn container_id(proc_cgroup: &str) -> Option<String> {
    let mut fallback = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(_ctrl), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Some(id) = container_id_from_path(path) {
            if hier == "0" {
                return Some(id);
            }
            fallback.get_or_insert(id);
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f1c2b6a9d8e7f60123456789abcdef0123456789abcdef0123456789abcdef0";

    #[test]
    fn containerd_cgroupfs_hybrid() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod7d3e/{CID}\n1:name=systemd:/kubepods/besteffort/pod7d3e/{CID}\n0::/kubepods/besteffort/pod7d3e/{CID}\n"
        );
        assert_eq!(container_id(&text).as_deref(), Some(CID));
    }

    #[test]
    fn systemd_driver_shapes() {
        for leaf in [
            format!("cri-containerd-{CID}.scope"),
            format!("crio-{CID}.scope"),
            format!("docker-{CID}.scope"),
            format!("libpod-{CID}.scope"),
        ] {
            let text = format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/{leaf}\n"
            );
            assert_eq!(container_id(&text).as_deref(), Some(CID), "{leaf}");
        }
    }

    #[test]
    fn crio_container_subcgroup_and_docker_plain() {
        let text = format!("0::/kubepods.slice/crio-{CID}.scope/container\n");
        assert_eq!(container_id(&text).as_deref(), Some(CID));
        let text = format!("11:memory:/docker/{CID}\n0::/\n");
        assert_eq!(container_id(&text).as_deref(), Some(CID));
    }

    #[test]
    fn host_processes_have_none() {
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/\n",
            "0::/system.slice/containerd.service\n",
            "garbage without colons\n",
            "",
            "0::/kubepods/besteffort/pod7d3e\n",
        ] {
            assert_eq!(container_id(text), None, "{text}");
        }
    }
}
