//! Conntrack look-ups over raw netlink (NETLINK_NETFILTER, `IPCTNL_MSG_CT_GET` by tuple):
//! where a connection to a Service IP really went after kube-proxy's DNAT.
//!
//! One request and one answer per look-up, in this process's network namespace (the
//! node's, where kube-proxy's rules and so the NAT entries live). Message building and
//! parsing are pure and unit-tested; the socket is the only I/O.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

// Netlink and ctnetlink constants (linux/netlink.h, linux/netfilter/nfnetlink.h,
// linux/netfilter/nfnetlink_conntrack.h).
const NETLINK_NETFILTER: libc::c_int = 12;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NFNETLINK_V0: u8 = 0;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// One direction of a connection as conntrack writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A conntrack entry: the tuple of the first packet, and the tuple replies come with.
/// With DNAT, `reply.src` is the real destination (the backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
}

impl Entry {
    /// Where traffic from `q.src` to `q.dst` really went, if an address translation
    /// changed it. The query may match either direction of the entry.
    pub fn real_destination(&self, q: &Tuple) -> Option<SocketAddr> {
        if self.orig == *q {
            // Our packets are the original direction: replies come from the real peer.
            (self.reply.src != q.dst).then_some(self.reply.src)
        } else if self.reply == *q {
            // Our packets are the reply direction (we are the translated end).
            (self.orig.src != q.dst).then_some(self.orig.src)
        } else {
            None
        }
    }
}

/// A netlink socket for conntrack queries.
#[derive(Debug)]
pub struct Conntrack {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    /// Open the socket; answers wait at most `timeout` (the caller is a capture thread).
    pub fn open(timeout: Duration) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid (pid 0: the kernel assigns one).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            seq: 1,
            buf: vec![0u8; 16 * 1024],
        })
    }

    /// The TCP conntrack entry that `q` belongs to (either direction), if any.
    pub fn lookup_tcp(&mut self, q: &Tuple) -> io::Result<Option<Entry>> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let msg = build_get(q, self.seq)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "mixed address families"))?;
        // SAFETY: msg is a valid buffer; the kernel is the default destination.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match parse_answer(&self.buf[..n as usize], self.seq) {
                // An answer to an earlier request that timed out: keep reading.
                Answer::Other => continue,
                Answer::Entry(e) => return Ok(Some(e)),
                Answer::NotFound => return Ok(None),
                Answer::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }
}

fn push_attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn nested(ty: u16, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    push_attr(&mut out, ty | NLA_F_NESTED, &body);
    out
}

fn tuple_attrs(t: &Tuple) -> Option<Vec<u8>> {
    let mut ip = Vec::new();
    match (t.src.ip(), t.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            push_attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
            push_attr(&mut ip, CTA_IP_V4_DST, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            push_attr(&mut ip, CTA_IP_V6_SRC, &s.octets());
            push_attr(&mut ip, CTA_IP_V6_DST, &d.octets());
        }
        _ => return None,
    }
    let mut proto = Vec::new();
    push_attr(&mut proto, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
    push_attr(&mut proto, CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes());
    push_attr(&mut proto, CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes());
    let mut body = nested(CTA_TUPLE_IP, ip);
    body.extend(nested(CTA_TUPLE_PROTO, proto));
    Some(body)
}

/// An `IPCTNL_MSG_CT_GET` request for the entry holding `q`.
pub fn build_get(q: &Tuple, seq: u32) -> Option<Vec<u8>> {
    let family = match q.src {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    } as u8;
    let attrs = nested(CTA_TUPLE_ORIG, tuple_attrs(q)?);
    let len = NLMSG_HDRLEN + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
    m.extend_from_slice(&attrs);
    Some(m)
}

/// What one datagram from the kernel said about request `seq`.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Entry(Entry),
    NotFound,
    Error(i32),
    /// Nothing about this request.
    Other,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Iterate (type without flags, payload) over netlink attributes.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let ty = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        let adv = (len + 3) & !3;
        b = b.get(adv..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

fn parse_tuple(b: &[u8]) -> Option<Tuple> {
    let (mut src_ip, mut dst_ip, mut sport, mut dport) = (None, None, None, None);
    for (ty, p) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (t, v) in attrs(p) {
                    let ip = match (t, v.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))
                        }
                        _ => continue,
                    };
                    if t == CTA_IP_V4_SRC || t == CTA_IP_V6_SRC {
                        src_ip = Some(ip);
                    } else {
                        dst_ip = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (t, v) in attrs(p) {
                    let port = || Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?));
                    match t {
                        CTA_PROTO_SRC_PORT => sport = port(),
                        CTA_PROTO_DST_PORT => dport = port(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: SocketAddr::new(src_ip?, sport?),
        dst: SocketAddr::new(dst_ip?, dport?),
    })
}

/// Parse a datagram (possibly several messages) answering request `seq`.
pub fn parse_answer(mut b: &[u8], seq: u32) -> Answer {
    while b.len() >= NLMSG_HDRLEN {
        let Some(len) = u32_at(b, 0).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        let ty = u16_at(b, 4).unwrap_or(0);
        let mseq = u32_at(b, 8).unwrap_or(0);
        let body = &b[NLMSG_HDRLEN..len];
        if mseq == seq {
            match ty {
                NLMSG_ERROR => {
                    let err = u32_at(body, 0).map(|e| e as i32).unwrap_or(-libc::EIO);
                    // A negative errno; i32::MIN has no positive and is no errno.
                    return match err.checked_neg() {
                        Some(0) => Answer::Other,
                        Some(libc::ENOENT) => Answer::NotFound,
                        Some(e) => Answer::Error(e),
                        None => Answer::Error(libc::EIO),
                    };
                }
                NLMSG_DONE => return Answer::NotFound,
                t if t == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                    let (mut orig, mut reply) = (None, None);
                    for (at, p) in attrs(body.get(4..).unwrap_or(&[])) {
                        match at {
                            CTA_TUPLE_ORIG => orig = parse_tuple(p),
                            CTA_TUPLE_REPLY => reply = parse_tuple(p),
                            _ => {}
                        }
                    }
                    if let (Some(orig), Some(reply)) = (orig, reply) {
                        return Answer::Entry(Entry { orig, reply });
                    }
                    return Answer::Error(libc::EBADMSG);
                }
                _ => {}
            }
        }
        b = b.get(((len + 3) & !3)..).unwrap_or(&[]);
    }
    Answer::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The kernel's answer for a DNAT'ed connection, built the way ctnetlink lays it out.
    fn answer(seq: u32, orig: &Tuple, reply: &Tuple) -> Vec<u8> {
        let mut attrs = nested(CTA_TUPLE_ORIG, tuple_attrs(orig).unwrap());
        attrs.extend(nested(CTA_TUPLE_REPLY, tuple_attrs(reply).unwrap()));
        // An attribute the parser must skip (CTA_STATUS).
        push_attr(&mut attrs, 3, &0x1b6u32.to_be_bytes());
        let len = NLMSG_HDRLEN + 4 + attrs.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn request_layout() {
        let q = Tuple {
            src: sa("198.18.7.11:40000"),
            dst: sa("198.19.7.10:80"),
        };
        let m = build_get(&q, 7).unwrap();
        assert_eq!(u32_at(&m, 0).unwrap() as usize, m.len());
        assert_eq!(u16_at(&m, 4), Some(0x0101));
        assert_eq!(u32_at(&m, 8), Some(7));
        assert_eq!(m[16], libc::AF_INET as u8);
        // The request's own tuple parses back.
        let (ty, p) = attrs(&m[20..]).next().unwrap();
        assert_eq!(ty, CTA_TUPLE_ORIG);
        assert_eq!(parse_tuple(p), Some(q));
        let q6 = Tuple {
            src: sa("[fd00::1]:1"),
            dst: sa("[fd00::2]:2"),
        };
        let m6 = build_get(&q6, 1).unwrap();
        assert_eq!(parse_tuple(attrs(&m6[20..]).next().unwrap().1), Some(q6));
        assert!(build_get(
            &Tuple {
                src: sa("1.2.3.4:1"),
                dst: sa("[::1]:2")
            },
            1
        )
        .is_none());
    }

    #[test]
    fn dnat_answer_gives_the_backend() {
        let q = Tuple {
            src: sa("198.18.7.11:40000"),
            dst: sa("198.19.7.10:80"),
        };
        let reply = Tuple {
            src: sa("198.18.7.12:8080"),
            dst: sa("198.18.7.11:40000"),
        };
        let a = parse_answer(&answer(9, &q, &reply), 9);
        let Answer::Entry(e) = a else { panic!("{a:?}") };
        assert_eq!(e.real_destination(&q), Some(sa("198.18.7.12:8080")));
        // From the backend's side the query is the reply tuple: the real peer is the client.
        let from_backend = Tuple {
            src: reply.src,
            dst: reply.dst,
        };
        assert_eq!(
            e.real_destination(&from_backend),
            None,
            "no translation of the client"
        );
        // Stale answers (other seq) are skipped.
        assert_eq!(parse_answer(&answer(8, &q, &reply), 9), Answer::Other);
    }

    #[test]
    fn untranslated_and_errors() {
        let q = Tuple {
            src: sa("198.18.7.11:40000"),
            dst: sa("198.18.7.12:8080"),
        };
        let reply = Tuple {
            src: q.dst,
            dst: q.src,
        };
        let Answer::Entry(e) = parse_answer(&answer(1, &q, &reply), 1) else {
            panic!()
        };
        assert_eq!(e.real_destination(&q), None);
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&0u16.to_ne_bytes());
        err.extend_from_slice(&1u32.to_ne_bytes());
        err.extend_from_slice(&0u32.to_ne_bytes());
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        err.extend_from_slice(&[0u8; 16]);
        assert_eq!(parse_answer(&err, 1), Answer::NotFound);
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_answer(&err, 1), Answer::Error(libc::EPERM));
        // No errno: an error, not an overflow (found by fuzzing with overflow checks).
        err[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(parse_answer(&err, 1), Answer::Error(libc::EIO));
    }
}
