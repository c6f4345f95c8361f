//! Pure parsing of cgroup paths (`/proc/<pid>/cgroup`, or a directory under the cgroup
//! v2 mount) into what a kubelet and its runtime encode there: container id, pod UID and
//! QoS class.
//!
//! Shapes handled, for cgroup v1 and v2 alike (the path is the same in every hierarchy):
//! - cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>` (containerd, cri-dockerd: bare
//!   64-hex id; CRI-O: `crio-<id>`), Guaranteed pods without the `<qos>` level;
//! - systemd driver: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/`
//!   then `cri-containerd-<id>.scope`, `crio-<id>.scope` (optionally `/container` below
//!   it), `docker-<id>.scope`;
//! - nested nodes (kind, k3d): the same below a prefix such as `/kubelet.slice/kubelet-kubepods.slice/...`;
//! - plain Docker / Podman containers: `/docker/<id>`, `docker-<id>.scope`, `libpod-<id>.scope`.

/// Kubernetes QoS class of a pod, from the cgroup level the kubelet puts it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

/// Which runtime named the container cgroup (from its prefix; a bare id says nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
    Podman,
}

/// What one cgroup path says about its processes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct CgroupInfo {
    /// 64-hex id of the container (or of the pod sandbox, for the pause process).
    pub container_id: Option<String>,
    /// Pod UID in its API form (dashes, lower case).
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
    pub runtime: Option<Runtime>,
}

impl CgroupInfo {
    /// Nothing Kubernetes- or container-related in the path.
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

/// Parse one cgroup path (relative to the hierarchy's root).
pub fn parse_path(path: &str) -> CgroupInfo {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut info = CgroupInfo::default();
    // The pod level, and the QoS level above it, if this is a kubelet-made path.
    let mut pod_at = None;
    let mut in_kubepods = false;
    for (i, comp) in comps.iter().enumerate() {
        let c = comp.strip_suffix(".slice").unwrap_or(comp);
        if c == "kubepods" || c.ends_with("-kubepods") {
            in_kubepods = true;
            continue;
        }
        if !in_kubepods {
            continue;
        }
        if let Some(uid) = pod_uid_of(c) {
            info.pod_uid = Some(uid);
            pod_at = Some(i);
            // The QoS level is above the pod (cgroupfs) or in the pod slice's name (systemd);
            // neither means Guaranteed.
            info.qos = qos_of(c).or(info.qos).or(Some(Qos::Guaranteed));
            break;
        }
        if let Some(q) = qos_of(c) {
            info.qos = Some(q);
        }
    }
    if pod_at.is_none() {
        info.qos = None;
    }
    // The container is the level below the pod; outside Kubernetes, the leaf (or the leaf
    // below a "container" sub-cgroup, as CRI-O and some runtimes make).
    let candidates: Vec<&str> = match pod_at {
        Some(i) => comps.get(i + 1).copied().into_iter().collect(),
        None => {
            let mut v = Vec::new();
            for comp in comps.iter().rev() {
                v.push(*comp);
                if *comp != "container" {
                    break;
                }
            }
            v
        }
    };
    for comp in candidates {
        if let Some((id, rt)) = container_of(comp) {
            info.container_id = Some(id);
            info.runtime = rt;
            break;
        }
    }
    info
}

/// `pod<uid>` (cgroupfs) or `...-pod<uid_with_underscores>` (systemd, `.slice` stripped).
fn pod_uid_of(c: &str) -> Option<String> {
    let raw = if let Some(rest) = c.strip_prefix("pod") {
        rest
    } else {
        &c[c.rfind("-pod")? + 4..]
    };
    let hex = raw.bytes().filter(u8::is_ascii_hexdigit).count();
    let ok = hex >= 32
        && raw
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    ok.then(|| raw.replace('_', "-").to_ascii_lowercase())
}

fn qos_of(c: &str) -> Option<Qos> {
    let tokens = c.split('-');
    let mut found = None;
    for t in tokens {
        match t {
            "besteffort" => found = Some(Qos::BestEffort),
            "burstable" => found = Some(Qos::Burstable),
            _ => {}
        }
    }
    found
}

/// The container id (and runtime) one path component names, if any.
fn container_of(comp: &str) -> Option<(String, Option<Runtime>)> {
    let c = comp.strip_suffix(".scope").unwrap_or(comp);
    // conmon (CRI-O's monitor) is not the container; its traffic is not the app's.
    if c.starts_with("crio-conmon-") {
        return None;
    }
    let prefixes: [(&str, Option<Runtime>); 6] = [
        ("cri-containerd-", Some(Runtime::Containerd)),
        ("containerd-", Some(Runtime::Containerd)),
        ("crio-", Some(Runtime::Crio)),
        ("docker-", Some(Runtime::Docker)),
        ("libpod-", Some(Runtime::Podman)),
        ("", None),
    ];
    for (p, rt) in prefixes {
        if let Some(id) = c.strip_prefix(p) {
            if is_container_id(id) {
                return Some((id.to_string(), rt));
            }
        }
    }
    None
}

pub fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The container id in one cgroup path, if it names a container.
pub fn container_id_from_path(path: &str) -> Option<String> {
    parse_path(path).container_id
}

/// What the whole text of `/proc/<pid>/cgroup` says. The unified (v2, `0::`) line is
/// preferred; otherwise the v1 line that says the most (hybrid nodes where only the v1
/// hierarchies were moved, e.g. by an old runtime).
pub fn parse(proc_cgroup: &str) -> CgroupInfo {
    let mut best = CgroupInfo::default();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(_ctrl), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let info = parse_path(path);
        if info.is_empty() {
            continue;
        }
        if hier == "0" {
            return info;
        }
        let score =
            |i: &CgroupInfo| u8::from(i.container_id.is_some()) * 2 + u8::from(i.pod_uid.is_some());
        if score(&info) > score(&best) {
            best = info;
        }
    }
    best
}

/// The container id of a process, from the whole text of `/proc/<pid>/cgroup`.
pub fn container_id(proc_cgroup: &str) -> Option<String> {
    parse(proc_cgroup).container_id
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f1c2b6a9d8e7f60123456789abcdef0123456789abcdef0123456789abcdef0";
    const UID: &str = "7d3e4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    const UID_: &str = "7d3e4f5a_1b2c_4d5e_8f90_a1b2c3d4e5f6";

    fn info(
        cid: Option<&str>,
        uid: Option<&str>,
        qos: Option<Qos>,
    ) -> (Option<String>, Option<String>, Option<Qos>) {
        (cid.map(str::to_string), uid.map(str::to_string), qos)
    }

    fn got(text: &str) -> (Option<String>, Option<String>, Option<Qos>) {
        let i = parse(text);
        (i.container_id, i.pod_uid, i.qos)
    }

    #[test]
    fn containerd_cgroupfs_hybrid_as_seen_on_the_cri_rig() {
        // The real file of a container process under containerd 1.6 with the cgroupfs
        // driver on a hybrid-layout host (tests/fixtures/k8s/proc-cgroup-containerd.txt
        // holds a full capture).
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{CID}\n4:memory:/kubepods/besteffort/pod{UID}/{CID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}\n0::/kubepods/besteffort/pod{UID}/{CID}\n"
        );
        assert_eq!(
            got(&text),
            info(Some(CID), Some(UID), Some(Qos::BestEffort))
        );
    }

    #[test]
    fn fixture_captured_from_real_containerd() {
        let text = include_str!("../../tests/fixtures/k8s/proc-cgroup-containerd.txt");
        let i = parse(text);
        assert_eq!(i.qos, Some(Qos::BestEffort));
        assert!(
            i.container_id.as_deref().is_some_and(is_container_id),
            "{i:?}"
        );
        assert_eq!(i.pod_uid.as_deref().map(str::len), Some(36), "{i:?}");
    }

    #[test]
    fn guaranteed_and_burstable_cgroupfs() {
        let text = format!("0::/kubepods/pod{UID}/{CID}\n");
        assert_eq!(
            got(&text),
            info(Some(CID), Some(UID), Some(Qos::Guaranteed))
        );
        let text = format!("0::/kubepods/burstable/pod{UID}/crio-{CID}\n");
        assert_eq!(got(&text), info(Some(CID), Some(UID), Some(Qos::Burstable)));
        assert_eq!(parse(&text).runtime, Some(Runtime::Crio));
    }

    #[test]
    fn systemd_driver_shapes() {
        for (leaf, rt) in [
            (format!("cri-containerd-{CID}.scope"), Runtime::Containerd),
            (format!("crio-{CID}.scope"), Runtime::Crio),
            (format!("docker-{CID}.scope"), Runtime::Docker),
        ] {
            let text = format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/{leaf}\n"
            );
            assert_eq!(
                got(&text),
                info(Some(CID), Some(UID), Some(Qos::Burstable)),
                "{leaf}"
            );
            assert_eq!(parse(&text).runtime, Some(rt));
        }
        // Guaranteed: no QoS slice.
        let text =
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n");
        assert_eq!(
            got(&text),
            info(Some(CID), Some(UID), Some(Qos::Guaranteed))
        );
        // CRI-O's sub-cgroup below the scope.
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope/container\n"
        );
        assert_eq!(
            got(&text),
            info(Some(CID), Some(UID), Some(Qos::BestEffort))
        );
    }

    #[test]
    fn kind_node_nested_below_the_kubelet_slice() {
        let text = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        );
        assert_eq!(
            got(&text),
            info(Some(CID), Some(UID), Some(Qos::BestEffort))
        );
        // Docker-in-Docker style prefix with cgroupfs below it.
        let text = format!(
            "0::/docker/{}/kubepods/burstable/pod{UID}/{CID}\n",
            "e".repeat(64)
        );
        assert_eq!(got(&text), info(Some(CID), Some(UID), Some(Qos::Burstable)));
    }

    #[test]
    fn static_pod_uid_is_an_md5() {
        let md5 = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let text = format!("0::/kubepods/burstable/pod{md5}/{CID}\n");
        assert_eq!(got(&text), info(Some(CID), Some(md5), Some(Qos::Burstable)));
    }

    #[test]
    fn pod_level_and_conmon_have_no_container() {
        let text = format!("0::/kubepods/besteffort/pod{UID}\n");
        assert_eq!(got(&text), info(None, Some(UID), Some(Qos::BestEffort)));
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope\n"
        );
        assert_eq!(got(&text), info(None, Some(UID), Some(Qos::BestEffort)));
    }

    #[test]
    fn plain_docker_and_podman() {
        let text = format!("11:memory:/docker/{CID}\n0::/\n");
        assert_eq!(got(&text), info(Some(CID), None, None));
        let text = format!("0::/system.slice/docker-{CID}.scope\n");
        assert_eq!(got(&text), info(Some(CID), None, None));
        let text = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/libpod-{CID}.scope/container\n"
        );
        assert_eq!(got(&text), info(Some(CID), None, None));
        assert_eq!(container_id(&text).as_deref(), Some(CID));
    }

    #[test]
    fn v1_line_used_when_v2_says_nothing() {
        let text =
            format!("4:memory:/kubepods/besteffort/pod{UID}/{CID}\n1:name=systemd:/\n0::/\n");
        assert_eq!(
            got(&text),
            info(Some(CID), Some(UID), Some(Qos::BestEffort))
        );
    }

    #[test]
    fn host_processes_have_none() {
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/\n",
            "0::/system.slice/containerd.service\n",
            "0::/kubepods.slice\n",
            "0::/kubepods/besteffort\n",
            "0::/podcast/xyz\n",
            "garbage without colons\n",
            "",
        ] {
            assert!(parse(text).is_empty(), "{text}");
        }
    }
}
