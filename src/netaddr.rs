//! Host names to socket addresses without the C library: `/etc/hosts`, then DNS as
//! `/etc/resolv.conf` says (nameservers, search list, ndots, timeout, attempts).
//!
//! The static binary links glibc statically, and a static glibc's `getaddrinfo` needs the
//! NSS modules of the glibc it was built with at run time: on a node they are missing or
//! of another version, and `push --oap oap.example:11800` would fail to resolve. This
//! module is what every network client of k8s-alog uses instead. Parsers and the DNS
//! wire format are pure and unit-tested; `query_*` are the only network I/O.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// Where the resolver reads its configuration.
#[derive(Debug, Clone)]
pub struct ResolverFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

impl Default for ResolverFiles {
    fn default() -> Self {
        Self {
            hosts: PathBuf::from("/etc/hosts"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// `host:port` (or `[v6]:port`, or an address literal with a port) to socket addresses,
/// IPv4 first. Looks in `/etc/hosts`, then asks the nameservers of `/etc/resolv.conf`.
pub fn resolve(host_port: &str) -> anyhow::Result<Vec<SocketAddr>> {
    resolve_with(host_port, &ResolverFiles::default())
}

/// [`resolve`] with other configuration files (tests, a host root).
pub fn resolve_with(host_port: &str, files: &ResolverFiles) -> anyhow::Result<Vec<SocketAddr>> {
    let (host, port) = split_host_port(host_port)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    validate_name(host)?;
    let ips = lookup_host(host, files)?;
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// Addresses of `host` (a name, not a literal), IPv4 first.
fn lookup_host(host: &str, files: &ResolverFiles) -> anyhow::Result<Vec<IpAddr>> {
    // /etc/hosts first, as glibc's default `hosts: files dns` does.
    if let Ok(text) = std::fs::read_to_string(&files.hosts) {
        let found = hosts_lookup(&text, host);
        if !found.is_empty() {
            return Ok(sorted(found));
        }
    }
    let conf = match std::fs::read_to_string(&files.resolv_conf) {
        Ok(t) => parse_resolv_conf(&t),
        // glibc's behaviour without the file: a nameserver on this host.
        Err(_) => ResolvConf::default(),
    };
    let mut last_err: Option<anyhow::Error> = None;
    for name in search_candidates(host, &conf) {
        match dns_lookup(&name, &conf) {
            Ok(ips) if !ips.is_empty() => return Ok(sorted(ips)),
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e.context(format!("resolving {host}"))),
        None => bail!(
            "{host}: no such host (not in {}, and nameservers {} know no address for it)",
            files.hosts.display(),
            conf.nameservers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn sorted(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    // IPv4 first (stable: the order within a family is kept), duplicates removed.
    ips.sort_by_key(|ip| ip.is_ipv6());
    let mut seen = Vec::new();
    ips.retain(|ip| {
        if seen.contains(ip) {
            false
        } else {
            seen.push(*ip);
            true
        }
    });
    ips
}

/// Split `host:port`, `[v6]:port` or `v4:port`. The port is required.
pub fn split_host_port(s: &str) -> anyhow::Result<(&str, u16)> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| anyhow!("{s:?}: missing ']' after an IPv6 address"))?;
        let p = p
            .strip_prefix(':')
            .ok_or_else(|| anyhow!("{s:?}: expected [address]:port"))?;
        (h, p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("{s:?}: expected host:port (e.g. oap.example:11800)"))?;
        if h.contains(':') {
            bail!("{s:?}: write IPv6 addresses in brackets, e.g. [::1]:11800");
        }
        (h, p)
    };
    if host.is_empty() {
        bail!("{s:?}: empty host name");
    }
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("{s:?}: {port:?} is not a port number"))?;
    if port == 0 {
        bail!("{s:?}: port 0 cannot be connected to");
    }
    Ok((host, port))
}

/// A DNS name must be at most 253 bytes, labels 1-63 bytes.
fn validate_name(name: &str) -> anyhow::Result<()> {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() || n.len() > 253 {
        bail!("{name:?} is not a valid host name (length)");
    }
    for label in n.split('.') {
        if label.is_empty() || label.len() > 63 {
            bail!("{name:?} is not a valid host name (empty or overlong label)");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("{name:?} is not a valid host name (characters other than letters, digits, '-', '_')");
        }
    }
    Ok(())
}

/// Every address `/etc/hosts` gives `name` (canonical name or alias, case-insensitive).
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let want = name.trim_end_matches('.');
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(addr) = fields.next() else { continue };
        // Zone ids (fe80::1%eth0) cannot be represented here: such lines are skipped.
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        if fields.any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(want)) {
            out.push(ip);
        }
    }
    out
}

/// What `/etc/resolv.conf` says (the parts a stub resolver uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: u32,
}

impl Default for ResolvConf {
    fn default() -> Self {
        Self {
            nameservers: vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, 53)),
            ],
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Parse resolv.conf as glibc does: up to 3 nameservers, the last `search` or `domain`
/// line wins, `options ndots:N timeout:N attempts:N` (capped as glibc caps them).
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut c = ResolvConf {
        nameservers: Vec::new(),
        ..ResolvConf::default()
    };
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => {
                if let Some(a) = f.next() {
                    // Link-local v6 with a zone id is skipped (no scope here).
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        if c.nameservers.len() < 3 {
                            c.nameservers.push(SocketAddr::new(ip, 53));
                        }
                    }
                }
            }
            Some("search") | Some("domain") => {
                c.search = f
                    .map(|d| d.trim_end_matches('.').to_string())
                    .filter(|d| !d.is_empty())
                    .take(6)
                    .collect();
            }
            Some("options") => {
                for o in f {
                    let num = |p: &str| o.strip_prefix(p).and_then(|v| v.parse::<u64>().ok());
                    if let Some(n) = num("ndots:") {
                        c.ndots = n.min(15) as usize;
                    } else if let Some(n) = num("timeout:") {
                        c.timeout = Duration::from_secs(n.clamp(1, 30));
                    } else if let Some(n) = num("attempts:") {
                        c.attempts = n.clamp(1, 5) as u32;
                    }
                }
            }
            _ => {}
        }
    }
    if c.nameservers.is_empty() {
        c.nameservers = ResolvConf::default().nameservers;
    }
    c
}

/// The names to try, in order: a name with a trailing dot is absolute; one with at least
/// `ndots` dots is tried as is first, then with each search domain; one with fewer dots
/// gets the search domains first.
pub fn search_candidates(name: &str, conf: &ResolvConf) -> Vec<String> {
    if let Some(abs) = name.strip_suffix('.') {
        return vec![abs.to_string()];
    }
    let dots = name.matches('.').count();
    let searched: Vec<String> = conf.search.iter().map(|d| format!("{name}.{d}")).collect();
    let mut out = Vec::new();
    if dots >= conf.ndots {
        out.push(name.to_string());
        out.extend(searched);
    } else {
        out.extend(searched);
        out.push(name.to_string());
    }
    out
}

/// DNS record types asked for.
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// A query for `name` of type `qtype` (recursion desired).
pub fn build_query(id: u16, name: &str, qtype: u16) -> anyhow::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&[0; 6]); // AN, NS, AR
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            bail!("{name:?}: bad label");
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

/// What a response said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// Response code: 0 no error, 3 NXDOMAIN, others are server trouble.
    pub rcode: u8,
    /// The response was truncated (retry over TCP).
    pub truncated: bool,
    /// Addresses of the asked type in the answer section (CNAME chains followed by the
    /// server are included as it listed them).
    pub addrs: Vec<IpAddr>,
}

fn be16(b: &[u8], at: usize) -> anyhow::Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| anyhow!("DNS response cut short at byte {at}"))
}

/// Skip a (possibly compressed) name starting at `at`; returns the offset after it.
fn skip_name(b: &[u8], mut at: usize) -> anyhow::Result<usize> {
    // A name is at most 255 bytes: more than 128 labels means a loop or garbage.
    for _ in 0..128 {
        let len = *b
            .get(at)
            .ok_or_else(|| anyhow!("DNS response cut short in a name"))?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xC0 == 0xC0 => {
                // A pointer ends the name in this place.
                b.get(at + 1)
                    .ok_or_else(|| anyhow!("DNS response cut short in a pointer"))?;
                return Ok(at + 2);
            }
            l if l & 0xC0 == 0 => at += 1 + l as usize,
            _ => bail!("DNS response has an unknown label type"),
        }
    }
    bail!("DNS response has an overlong name")
}

/// Parse a response to query `id` of type `qtype`.
pub fn parse_response(b: &[u8], id: u16, qtype: u16) -> anyhow::Result<DnsAnswer> {
    if b.len() < 12 {
        bail!("DNS response of {} bytes is shorter than a header", b.len());
    }
    if be16(b, 0)? != id {
        bail!("DNS response id does not match the query");
    }
    let flags = be16(b, 2)?;
    if flags & 0x8000 == 0 {
        bail!("DNS message is not a response");
    }
    let truncated = flags & 0x0200 != 0;
    let rcode = (flags & 0x000F) as u8;
    let qd = be16(b, 4)? as usize;
    let an = be16(b, 6)? as usize;
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(b, at)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        if at > b.len() {
            break;
        }
        at = skip_name(b, at)?;
        let rtype = be16(b, at)?;
        let class = be16(b, at + 2)?;
        let rdlen = be16(b, at + 8)? as usize;
        let rdata = b
            .get(at + 10..at + 10 + rdlen)
            .ok_or_else(|| anyhow!("DNS response cut short in record data"))?;
        at += 10 + rdlen;
        if class != CLASS_IN || rtype != qtype {
            continue;
        }
        match (rtype, rdata.len()) {
            (TYPE_A, 4) => addrs.push(IpAddr::from([rdata[0], rdata[1], rdata[2], rdata[3]])),
            (TYPE_AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(rdata);
                addrs.push(IpAddr::from(o));
            }
            _ => bail!(
                "DNS record of type {rtype} has {} bytes of data",
                rdata.len()
            ),
        }
    }
    Ok(DnsAnswer {
        rcode,
        truncated,
        addrs,
    })
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 2 {
        u16::from_ne_bytes(b)
    } else {
        // Only an id: unpredictability matters little for a client on the node.
        (std::process::id() as u16) ^ (Instant::now().elapsed().subsec_nanos() as u16)
    }
}

/// A and AAAA for `name` from the configured nameservers (each tried `attempts` times).
/// A failed AAAA question does not spoil a good A answer (some servers refuse AAAA for
/// names they only hold IPv4 addresses for); only when both fail is it an error.
fn dns_lookup(name: &str, conf: &ResolvConf) -> anyhow::Result<Vec<IpAddr>> {
    let v4 = match ask(name, TYPE_A, conf) {
        // NXDOMAIN: the name does not exist at all, no need to ask for AAAA.
        Ok(None) => return Ok(Vec::new()),
        other => other,
    };
    let v6 = ask(name, TYPE_AAAA, conf);
    let mut addrs = Vec::new();
    let mut errors = Vec::new();
    for r in [v4, v6] {
        match r {
            Ok(Some(a)) => addrs.extend(a),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if addrs.is_empty() {
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
    }
    Ok(addrs)
}

/// One question to the nameservers in turn; `None` for NXDOMAIN.
fn ask(name: &str, qtype: u16, conf: &ResolvConf) -> anyhow::Result<Option<Vec<IpAddr>>> {
    let mut errors = Vec::new();
    for _ in 0..conf.attempts {
        for ns in &conf.nameservers {
            let id = random_id();
            let q = build_query(id, name, qtype)?;
            let res = query_udp(*ns, &q, conf.timeout).and_then(|r| {
                let a = parse_response(&r, id, qtype)?;
                if a.truncated {
                    let r = query_tcp(*ns, &q, conf.timeout)?;
                    parse_response(&r, id, qtype)
                } else {
                    Ok(a)
                }
            });
            match res {
                Ok(a) if a.rcode == 0 => return Ok(Some(a.addrs)),
                Ok(a) if a.rcode == 3 => return Ok(None),
                Ok(a) => errors.push(format!("{ns}: response code {}", a.rcode)),
                Err(e) => errors.push(format!("{ns}: {e:#}")),
            }
        }
    }
    bail!("no nameserver answered for {name}: {}", errors.join("; "))
}

/// One UDP exchange with `ns` (a connected socket: answers from elsewhere are ignored).
pub fn query_udp(ns: SocketAddr, q: &[u8], timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let bind: SocketAddr = if ns.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).context("binding a UDP socket")?;
    s.connect(ns)
        .with_context(|| format!("connecting to {ns}"))?;
    s.send(q).with_context(|| format!("sending to {ns}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer within {timeout:?}");
        }
        s.set_read_timeout(Some(left))?;
        match s.recv(&mut buf) {
            Ok(n) if n >= 2 && buf[..2] == q[..2] => {
                buf.truncate(n);
                return Ok(buf);
            }
            // A stray datagram (an old answer): keep waiting for ours.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("no answer within {timeout:?}")
            }
            Err(e) => return Err(e).with_context(|| format!("receiving from {ns}")),
        }
    }
}

/// One TCP exchange with `ns` (for truncated answers).
pub fn query_tcp(ns: SocketAddr, q: &[u8], timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&ns, timeout)
        .with_context(|| format!("connecting to {ns} over TCP"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut msg = Vec::with_capacity(q.len() + 2);
    msg.extend_from_slice(&(q.len() as u16).to_be_bytes());
    msg.extend_from_slice(q);
    s.write_all(&msg)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// The resolver's files below a host root (when running in a container with the host's
/// `/` mounted elsewhere, the container's own files are the right ones: this is for
/// tools that want the host's view).
pub fn files_below(root: &Path) -> ResolverFiles {
    ResolverFiles {
        hosts: root.join("etc/hosts"),
        resolv_conf: root.join("etc/resolv.conf"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("oap:11800").unwrap(), ("oap", 11800));
        assert_eq!(
            split_host_port("oap.example.com:80").unwrap(),
            ("oap.example.com", 80)
        );
        assert_eq!(split_host_port("[::1]:11800").unwrap(), ("::1", 11800));
        assert_eq!(split_host_port("10.0.0.1:1").unwrap(), ("10.0.0.1", 1));
        for bad in [
            "oap",
            "oap:",
            ":80",
            "oap:x",
            "oap:70000",
            "::1:80",
            "[::1]80",
            "[::1",
            "h:0",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn literals_need_no_lookup() {
        let files = ResolverFiles {
            hosts: "/nonexistent/hosts".into(),
            resolv_conf: "/nonexistent/resolv.conf".into(),
        };
        assert_eq!(
            resolve_with("127.0.0.1:11800", &files).unwrap(),
            vec!["127.0.0.1:11800".parse().unwrap()]
        );
        assert_eq!(
            resolve_with("[::1]:11800", &files).unwrap(),
            vec!["[::1]:11800".parse().unwrap()]
        );
    }

    #[test]
    fn bad_names_are_refused_before_any_query() {
        for bad in ["a..b:1", "a b:1", "-:1x", "ünicode:1"] {
            assert!(resolve(bad).is_err(), "{bad} accepted");
        }
        let long = format!("{}:1", "a".repeat(64));
        assert!(resolve(&long).is_err());
    }

    #[test]
    fn hosts_file() {
        let text = "127.0.0.1 localhost\n\
                    # 10.0.0.9 commented\n\
                    198.18.0.5   oap.alog.test oap   # trailing comment\n\
                    fd00::5 oap.alog.test\n\
                    fe80::1%eth0 oap\n\
                    garbage line\n";
        assert_eq!(
            hosts_lookup(text, "OAP.alog.test."),
            vec![
                "198.18.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(
            hosts_lookup(text, "oap"),
            vec!["198.18.0.5".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_lookup(text, "commented").is_empty());
        assert!(hosts_lookup(text, "10.0.0.9").is_empty());
    }

    #[test]
    fn resolv_conf_as_glibc_reads_it() {
        let c = parse_resolv_conf(
            "# generated\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\n\
             nameserver 1.1.1.1\nnameserver 8.8.8.8\ndomain ignored.example\n\
             search svc.cluster.local cluster.local.\noptions ndots:5 timeout:1 attempts:9 rotate\n",
        );
        assert_eq!(
            c.nameservers,
            vec![
                "10.96.0.10:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "1.1.1.1:53".parse().unwrap()
            ]
        );
        assert_eq!(c.search, vec!["svc.cluster.local", "cluster.local"]);
        assert_eq!(c.ndots, 5);
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.attempts, 5);
        let empty = parse_resolv_conf("");
        assert_eq!(empty, ResolvConf::default());
    }

    #[test]
    fn search_list_order() {
        let c = ResolvConf {
            search: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            ndots: 5,
            ..ResolvConf::default()
        };
        assert_eq!(
            search_candidates("oap.skywalking", &c),
            vec![
                "oap.skywalking.ns.svc.cluster.local",
                "oap.skywalking.cluster.local",
                "oap.skywalking"
            ]
        );
        assert_eq!(search_candidates("oap.example.", &c), vec!["oap.example"]);
        let c1 = ResolvConf { ndots: 1, ..c };
        assert_eq!(
            search_candidates("oap.example", &c1),
            vec![
                "oap.example",
                "oap.example.ns.svc.cluster.local",
                "oap.example.cluster.local"
            ]
        );
    }

    #[test]
    fn query_wire_format() {
        let q = build_query(0xBEEF, "oap.example", TYPE_A).unwrap();
        let want: Vec<u8> = [
            &[0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
            &[3, b'o', b'a', b'p', 7],
            b"example",
            &[0, 0, 1, 0, 1],
        ]
        .concat();
        assert_eq!(q, want);
    }

    /// A response as a server writes it: the question, then a CNAME and two A records
    /// whose owner names are compression pointers.
    fn response(id: u16, flags: u16) -> Vec<u8> {
        let mut r = build_query(id, "oap.example", TYPE_A).unwrap();
        r[2..4].copy_from_slice(&flags.to_be_bytes());
        r[6..8].copy_from_slice(&3u16.to_be_bytes());
        // CNAME oap.example -> x.example (pointer to "example" at offset 16)
        r.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'x', 0xC0, 16]);
        for last in [7u8, 8] {
            r.extend_from_slice(&[0xC0, 41, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, last]);
        }
        r
    }

    #[test]
    fn answers_with_compression_and_cname() {
        let a = parse_response(&response(7, 0x8180), 7, TYPE_A).unwrap();
        assert_eq!(a.rcode, 0);
        assert!(!a.truncated);
        assert_eq!(
            a.addrs,
            vec![
                "198.18.0.7".parse::<IpAddr>().unwrap(),
                "198.18.0.8".parse().unwrap()
            ]
        );
        let nx = parse_response(&response(7, 0x8183), 7, TYPE_A).unwrap();
        assert_eq!(nx.rcode, 3);
        let tc = parse_response(&response(7, 0x8380), 7, TYPE_A).unwrap();
        assert!(tc.truncated);
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        let good = response(7, 0x8180);
        assert!(parse_response(&good, 8, TYPE_A).is_err(), "wrong id");
        assert!(
            parse_response(&response(7, 0x0100), 7, TYPE_A).is_err(),
            "a query"
        );
        for cut in 0..good.len() {
            let _ = parse_response(&good[..cut], 7, TYPE_A);
        }
        // A pointer loop in the question.
        let mut looped = good.clone();
        looped[12] = 0xC0;
        looped[13] = 12;
        let _ = parse_response(&looped, 7, TYPE_A);
        // Every single-byte corruption.
        for i in 0..good.len() {
            for v in [0u8, 0x3F, 0xC0, 0xFF] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse_response(&b, 7, TYPE_A);
            }
        }
    }

    #[test]
    fn ordering_puts_ipv4_first_without_duplicates() {
        let ips: Vec<IpAddr> = ["fd00::1", "10.0.0.1", "fd00::1", "10.0.0.2", "10.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s: Vec<String> = sorted(ips).iter().map(|i| i.to_string()).collect();
        assert_eq!(s, vec!["10.0.0.1", "10.0.0.2", "fd00::1"]);
    }

    /// A real UDP exchange with a stand-in nameserver on loopback (a thread answering one
    /// query with the canned response), through the public entry point.
    #[test]
    fn udp_lookup_against_a_loopback_stand_in_nameserver() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (n, peer) = server.recv_from(&mut buf).unwrap();
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let qtype = u16::from_be_bytes([buf[n - 4], buf[n - 3]]);
                let mut r = response(id, 0x8180);
                if qtype == TYPE_AAAA {
                    // No AAAA records: an empty answer section.
                    r.truncate(n);
                    r[2..4].copy_from_slice(&0x8180u16.to_be_bytes());
                    r[6..8].copy_from_slice(&0u16.to_be_bytes());
                }
                server.send_to(&r, peer).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let files = ResolverFiles {
            hosts: dir.path().join("hosts"),
            resolv_conf: dir.path().join("resolv.conf"),
        };
        std::fs::write(&files.hosts, "127.0.0.1 localhost\n").unwrap();
        // resolv.conf cannot name a port: the stand-in's is set through the parsed config.
        std::fs::write(&files.resolv_conf, "nameserver 127.0.0.1\n").unwrap();
        let mut conf = parse_resolv_conf(&std::fs::read_to_string(&files.resolv_conf).unwrap());
        conf.nameservers = vec![addr];
        conf.timeout = Duration::from_secs(10);
        let ips = dns_lookup("oap.example", &conf).unwrap();
        t.join().unwrap();
        assert_eq!(
            ips,
            vec![
                "198.18.0.7".parse::<IpAddr>().unwrap(),
                "198.18.0.8".parse().unwrap()
            ]
        );
    }
}
