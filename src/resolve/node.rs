//! What the node itself shows without any runtime or API: the cgroup v2 tree (container
//! and pod cgroups with their ids), the processes in them, and each pod's network
//! namespace (its IPs, its listening ports). Parsers are pure; the walkers read only
//! the cgroup filesystem and `/proc`. Runs on the background thread, never on the
//! capture thread.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::cgroup::{self, CgroupInfo};

/// The cgroup v2 mount point in a `/proc/self/mountinfo` text. With a host root other
/// than `/`, a mount below it (the host's hierarchy, bind-mounted into our container) is
/// preferred.
pub fn cgroup2_mount(mountinfo: &str, host_root: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <src> <opts>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        // Only the whole hierarchy (root "/") shows every pod.
        if fields.len() >= 5 && fields[3] == "/" {
            found.push(PathBuf::from(unescape_mount(fields[4])));
        }
    }
    if host_root != Path::new("/") {
        if let Some(p) = found.iter().find(|p| p.starts_with(host_root)) {
            return Some(p.clone());
        }
    }
    found.into_iter().next()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A pod or container cgroup found under the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeCgroup {
    /// cgroup id: the directory's inode, what `bpf_get_current_cgroup_id()` returns.
    pub id: u64,
    pub dir: PathBuf,
    pub info: CgroupInfo,
}

/// Every cgroup below a `kubepods` level (wherever it hangs: `/kubepods`,
/// `/kubepods.slice`, `/kubelet.slice/kubelet-kubepods.slice`, ...).
pub fn walk_kube_cgroups(root: &Path) -> Vec<KubeCgroup> {
    let mut out = Vec::new();
    walk(root, root, 0, false, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, depth: usize, in_kube: bool, out: &mut Vec<KubeCgroup>) {
    // Above kubepods only a few levels are searched; below it, pod/container(/sub) levels.
    if depth > 9 || (!in_kube && depth > 3) {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let name = e.file_name();
        let name = name.to_string_lossy();
        let kube = in_kube || name.contains("kubepods");
        let path = e.path();
        if kube {
            if let Ok(rel) = path.strip_prefix(root) {
                let info = cgroup::parse_path(&rel.to_string_lossy());
                if !info.is_empty() {
                    if let Ok(md) = e.metadata() {
                        out.push(KubeCgroup {
                            id: md.ino(),
                            dir: path.clone(),
                            info,
                        });
                    }
                }
            }
        }
        walk(root, &path, depth + 1, kube, out);
    }
}

/// Processes in one cgroup (not its children).
pub fn procs_of(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Identity of a process's network namespace (`net:[4026531840]`), if readable.
pub fn netns_of(proc_root: &Path, pid: u32) -> Option<String> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("ns/net"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The non-loopback addresses of the network namespace `pid` is in.
pub fn netns_ips(proc_root: &Path, pid: u32) -> Vec<IpAddr> {
    let base = proc_root.join(pid.to_string()).join("net");
    let mut ips =
        parse_fib_trie_local(&std::fs::read_to_string(base.join("fib_trie")).unwrap_or_default());
    for ip in parse_if_inet6(&std::fs::read_to_string(base.join("if_inet6")).unwrap_or_default()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// Local (host-scope LOCAL) IPv4 addresses from `/proc/<pid>/net/fib_trie`, loopback
/// excluded.
pub fn parse_fib_trie_local(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                let ip = IpAddr::V4(ip);
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// Global-scope IPv6 addresses from `/proc/<pid>/net/if_inet6`.
pub fn parse_if_inet6(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0].len() != 32 || f[3] != "00" {
            continue;
        }
        let Ok(v) = u128::from_str_radix(f[0], 16) else {
            continue;
        };
        let ip = IpAddr::V6(Ipv6Addr::from(v));
        if !ip.is_loopback() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// (port, socket inode) of listening TCP sockets in a `/proc/<pid>/net/tcp{,6}` text.
pub fn parse_tcp_listeners(text: &str) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let port = f[1]
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if let (Some(port), Ok(ino)) = (port, f[9].parse::<u64>()) {
            out.push((port, ino));
        }
    }
    out
}

/// How `/proc/net/tcp{,6}` writes an address: each 32-bit word in host (little-endian
/// on the supported targets) order, upper-case hex; IPv4 in `tcp6` is v4-mapped.
fn proc_net_addr(sa: SocketAddr, v6_table: bool) -> String {
    let words: Vec<[u8; 4]> = match (sa.ip(), v6_table) {
        (IpAddr::V4(v4), false) => vec![v4.octets()],
        (IpAddr::V4(v4), true) => {
            let o = v4.to_ipv6_mapped().octets();
            o.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
        }
        (IpAddr::V6(v6), true) => v6
            .octets()
            .chunks(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
        (IpAddr::V6(_), false) => return String::new(),
    };
    let mut out: String = words
        .iter()
        .map(|w| format!("{:08X}", u32::from_le_bytes(*w)))
        .collect();
    out.push_str(&format!(":{:04X}", sa.port()));
    out
}

/// The inode of the TCP socket whose local address is `local`, in a
/// `/proc/<pid>/net/tcp` (or `tcp6`, `v6_table`) text; 0 (TIME_WAIT) is no socket.
pub fn tcp_socket_inode(text: &str, local: SocketAddr, v6_table: bool) -> Option<u64> {
    let want = proc_net_addr(local, v6_table);
    if want.is_empty() {
        return None;
    }
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 10 && f[1] == want)
            .then(|| f[9].parse::<u64>().ok())
            .flatten()
            .filter(|ino| *ino != 0)
    })
}

/// Which container of a pod holds the TCP socket bound to `local`: the socket's inode
/// from the pod's network namespace, then the container whose processes have it open.
/// `containers` are (name, cgroup dir). Reads `/proc` and cgroupfs only.
pub fn socket_owner(
    proc_root: &Path,
    containers: &[(String, PathBuf)],
    local: SocketAddr,
) -> Option<String> {
    let with_pids: Vec<(&String, Vec<u32>)> = containers
        .iter()
        .map(|(n, d)| (n, procs_of(d)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let any = with_pids.iter().find_map(|(_, p)| p.first())?;
    let net = proc_root.join(any.to_string()).join("net");
    let ino = [("tcp", false), ("tcp6", true)]
        .iter()
        .find_map(|(f, v6)| {
            tcp_socket_inode(&std::fs::read_to_string(net.join(f)).ok()?, local, *v6)
        })?;
    with_pids.iter().find_map(|(name, pids)| {
        pids.iter()
            .take(64)
            .any(|pid| socket_inodes(proc_root, *pid, 4096).contains(&ino))
            .then(|| (*name).clone())
    })
}

/// Socket inodes among a process's open files (bounded: a process with a huge fd
/// table is sampled, not read whole).
pub fn socket_inodes(proc_root: &Path, pid: u32, limit: usize) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(rd) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return out;
    };
    for e in rd.flatten().take(limit) {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(ino) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                if let Ok(ino) = ino.parse() {
                    out.insert(ino);
                }
            }
        }
    }
    out
}

/// Listening port -> container name in one pod: which container's processes hold each
/// listening socket of the pod's network namespace. `containers` are (name, pids).
pub fn listen_ports(proc_root: &Path, containers: &[(String, Vec<u32>)]) -> HashMap<u16, String> {
    let mut out = HashMap::new();
    let Some(any) = containers.iter().flat_map(|(_, p)| p.first()).next() else {
        return out;
    };
    let net = proc_root.join(any.to_string()).join("net");
    let mut listeners = Vec::new();
    for f in ["tcp", "tcp6"] {
        listeners.extend(parse_tcp_listeners(
            &std::fs::read_to_string(net.join(f)).unwrap_or_default(),
        ));
    }
    if listeners.is_empty() {
        return out;
    }
    for (name, pids) in containers {
        let mut inodes = HashSet::new();
        for pid in pids.iter().take(64) {
            inodes.extend(socket_inodes(proc_root, *pid, 4096));
        }
        for (port, ino) in &listeners {
            if inodes.contains(ino) {
                out.entry(*port).or_insert_with(|| name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mi, Path::new("/")),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let mi2 =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
                   90 80 0:26 / /host/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                   91 80 0:26 /kubepods /mnt/x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mi2, Path::new("/")),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount(mi2, Path::new("/host")),
            Some(PathBuf::from("/host/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("", Path::new("/")), None);
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }

    #[test]
    fn fib_trie_local_addresses() {
        // Abridged from a pod network namespace.
        let t = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     |-- 198.18.7.0\n        /24 link UNICAST\n\
                 Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 198.18.7.11\n        /32 host LOCAL\n     |-- 198.18.7.255\n        /32 link BROADCAST\n";
        assert_eq!(
            parse_fib_trie_local(t),
            vec!["198.18.7.11".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn if_inet6_global_only() {
        let t = "00000000000000000000000000000001 01 80 10 80       lo\n\
                 fe800000000000000000000000000001 02 40 20 80     eth0\n\
                 fd000000000000000000000000000011 02 40 00 80     eth0\n";
        assert_eq!(
            parse_if_inet6(t),
            vec!["fd00::11".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn socket_inode_by_local_address() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0C0712C6:BF40 0D0712C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 5555 1 0\n\
   1: 0C0712C6:BF41 0D0712C6:1F90 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0\n";
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            tcp_socket_inode(t, sa("198.18.7.12:48960"), false),
            Some(5555)
        );
        assert_eq!(
            tcp_socket_inode(t, sa("198.18.7.12:48961"), false),
            None,
            "TIME_WAIT"
        );
        assert_eq!(
            proc_net_addr(sa("198.18.7.12:8080"), true),
            "0000000000000000FFFF00000C0712C6:1F90"
        );
        assert_eq!(
            proc_net_addr(sa("[::1]:80"), true),
            "00000000000000000000000001000000:0050"
        );
    }

    #[test]
    fn tcp_listeners() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n\
   1: 0B0712C6:9C40 0C0712C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 123457 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_tcp_listeners(t), vec![(8080, 123456)]);
    }
}
