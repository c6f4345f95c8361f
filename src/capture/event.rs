//! Decoding of ring-buffer records into typed events (the layouts come from the skeleton).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::skel::types;
use crate::flow::{Direction, Role};

/// A socket call that moved bytes.
#[derive(Debug, Clone)]
pub struct DataEvent<'a> {
    pub cookie: u64,
    pub ts_ns: u64,
    /// Start of the call (sends); equal to `ts_ns` for receives.
    pub start_ns: u64,
    pub seq: u64,
    pub len: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub dir: Direction,
    pub syscall: Syscall,
    /// `alog_data_flags`: ALOG_DATA_TLS (plaintext of a TLS library call) or
    /// ALOG_DATA_CIPHER (socket call of a TLS connection, no payload).
    pub flags: u8,
    pub comm: [u8; 16],
    pub payload: &'a [u8],
}

impl DataEvent<'_> {
    /// Plaintext of a TLS library call (SSL_read/SSL_write, Go crypto/tls): `cookie` is the
    /// TCP socket underneath, `payload` the application's bytes.
    pub fn is_tls_plaintext(&self) -> bool {
        u32::from(self.flags) & types::alog_data_flags::ALOG_DATA_TLS.0 != 0
    }

    /// A socket call of a connection known to carry TLS: `len` bytes of ciphertext moved,
    /// no payload copied. Must not be parsed.
    pub fn is_ciphertext(&self) -> bool {
        u32::from(self.flags) & types::alog_data_flags::ALOG_DATA_CIPHER.0 != 0
    }
}

/// A process replaced its image (execve). Consumed by the capture layer (TLS probes).
#[derive(Debug, Clone)]
pub struct ExecEvent {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub old_pid: u32,
    /// Inode and device (user-space `st_dev` encoding) of the executable.
    pub ino: u64,
    pub dev: u64,
    /// The path given to execve, as the process saw it (its mount namespace, maybe relative).
    pub filename: String,
    pub comm: [u8; 16],
}

/// A kernel device number (MKDEV: major << 20 | minor) in user space's `st_dev` encoding.
pub fn user_dev(kdev: u32) -> u64 {
    let (major, minor) = (u64::from(kdev >> 20), u64::from(kdev & 0xf_ffff));
    ((major & 0xfff) << 8) | (minor & 0xff) | ((major & !0xfff) << 32) | ((minor & !0xff) << 12)
}

/// Any ring-buffer record: events for the handler, and the capture layer's own.
#[derive(Debug, Clone)]
pub enum Record<'a> {
    Event(Event<'a>),
    Exec(ExecEvent),
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Connected,
    ConnectFailed,
    Accepted,
    Discovered,
    Closed,
}

/// A connection lifecycle event, with the figures the kernel had at that point.
#[derive(Debug, Clone)]
pub struct ConnEvent {
    pub kind: ConnKind,
    pub cookie: u64,
    pub ts_ns: u64,
    pub connect_start_ns: u64,
    pub established_ns: u64,
    pub close_start_ns: u64,
    pub cgroup_id: u64,
    pub netns: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub send_calls: u64,
    pub recv_calls: u64,
    pub data_events: u64,
    pub tcp_bytes_acked: u64,
    pub tcp_bytes_received: u64,
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub segs_out: u32,
    pub segs_in: u32,
    pub tgid: u32,
    pub flags: ConnFlags,
    pub role: Role,
    pub old_state: u8,
    pub new_state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub comm: [u8; 16],
}

/// The flags of a connection event (`alog_conn_flags`), decoded: what the kernel knew
/// about the socket when it wrote the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnFlags(u32);

impl ConnFlags {
    pub const PREEXISTING: Self = Self(types::alog_conn_flags::ALOG_F_PREEXISTING.0);
    pub const RST_SENT: Self = Self(types::alog_conn_flags::ALOG_F_RST_SENT.0);
    pub const RST_RECV: Self = Self(types::alog_conn_flags::ALOG_F_RST_RECV.0);
    pub const CLOSED_LOCAL: Self = Self(types::alog_conn_flags::ALOG_F_CLOSED_LOCAL.0);
    pub const CLOSED_PEER: Self = Self(types::alog_conn_flags::ALOG_F_CLOSED_PEER.0);
    pub const OWNER_KNOWN: Self = Self(types::alog_conn_flags::ALOG_F_OWNER_KNOWN.0);
    pub const IGNORED: Self = Self(types::alog_conn_flags::ALOG_F_IGNORED.0);
    pub const DATA_LOST: Self = Self(types::alog_conn_flags::ALOG_F_DATA_LOST.0);
    pub const ANNOUNCED: Self = Self(types::alog_conn_flags::ALOG_F_ANNOUNCED.0);
    pub const TLS: Self = Self(types::alog_conn_flags::ALOG_F_TLS.0);

    /// The flags as the kernel wrote them.
    pub fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The raw bits (for the debug log).
    pub fn bits(self) -> u32 {
        self.0
    }

    fn has(self, flag: Self) -> bool {
        self.0 & flag.0 != 0
    }

    /// Open before capture began.
    pub fn preexisting(self) -> bool {
        self.has(Self::PREEXISTING)
    }

    /// This end sent a reset.
    pub fn rst_sent(self) -> bool {
        self.has(Self::RST_SENT)
    }

    /// The peer reset this end.
    pub fn rst_recv(self) -> bool {
        self.has(Self::RST_RECV)
    }

    /// This end sent FIN first.
    pub fn closed_local(self) -> bool {
        self.has(Self::CLOSED_LOCAL)
    }

    /// The peer sent FIN first.
    pub fn closed_peer(self) -> bool {
        self.has(Self::CLOSED_PEER)
    }

    /// The event's process fields (tgid, comm, cgroup) are valid.
    pub fn owner_known(self) -> bool {
        self.has(Self::OWNER_KNOWN)
    }

    /// Filtered out: no events.
    pub fn ignored(self) -> bool {
        self.has(Self::IGNORED)
    }

    /// A data event of this socket was dropped.
    pub fn data_lost(self) -> bool {
        self.has(Self::DATA_LOST)
    }

    /// User space has had an opening event for it.
    pub fn announced(self) -> bool {
        self.has(Self::ANNOUNCED)
    }

    /// Seen carrying TLS (a TLS library call used it).
    pub fn tls(self) -> bool {
        self.has(Self::TLS)
    }
}

impl std::ops::BitOr for ConnFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A decoded ring-buffer record.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    Data(DataEvent<'a>),
    Conn(ConnEvent),
}

/// The syscall that carried a data event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Syscall {
    Other,
    Read,
    Write,
    Readv,
    Writev,
    Recvfrom,
    Sendto,
    Recvmsg,
    Sendmsg,
    Recvmmsg,
    Sendmmsg,
    Sendfile,
    Splice,
    Preadv2,
    Pwritev2,
    /// SSL_read, SSL_read_ex (plaintext)
    #[serde(rename = "ssl_read")]
    SslRead,
    /// SSL_write, SSL_write_ex, SSL_sendfile (plaintext)
    #[serde(rename = "ssl_write")]
    SslWrite,
    /// crypto/tls.(*Conn).Read (plaintext)
    #[serde(rename = "go_tls_read")]
    GoTlsRead,
    /// crypto/tls.(*Conn).Write (plaintext)
    #[serde(rename = "go_tls_write")]
    GoTlsWrite,
}

impl Syscall {
    fn from_raw(v: u8) -> Self {
        use types::alog_syscall as S;
        match types::alog_syscall(u32::from(v)) {
            S::ALOG_SYS_READ => Self::Read,
            S::ALOG_SYS_WRITE => Self::Write,
            S::ALOG_SYS_READV => Self::Readv,
            S::ALOG_SYS_WRITEV => Self::Writev,
            S::ALOG_SYS_RECVFROM => Self::Recvfrom,
            S::ALOG_SYS_SENDTO => Self::Sendto,
            S::ALOG_SYS_RECVMSG => Self::Recvmsg,
            S::ALOG_SYS_SENDMSG => Self::Sendmsg,
            S::ALOG_SYS_RECVMMSG => Self::Recvmmsg,
            S::ALOG_SYS_SENDMMSG => Self::Sendmmsg,
            S::ALOG_SYS_SENDFILE => Self::Sendfile,
            S::ALOG_SYS_SPLICE => Self::Splice,
            S::ALOG_SYS_PREADV2 => Self::Preadv2,
            S::ALOG_SYS_PWRITEV2 => Self::Pwritev2,
            S::ALOG_SYS_SSL_READ => Self::SslRead,
            S::ALOG_SYS_SSL_WRITE => Self::SslWrite,
            S::ALOG_SYS_GO_TLS_READ => Self::GoTlsRead,
            S::ALOG_SYS_GO_TLS_WRITE => Self::GoTlsWrite,
            _ => Self::Other,
        }
    }

    /// True for the TLS library calls (plaintext events).
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Self::SslRead | Self::SslWrite | Self::GoTlsRead | Self::GoTlsWrite
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Other => "other",
            Self::Read => "read",
            Self::Write => "write",
            Self::Readv => "readv",
            Self::Writev => "writev",
            Self::Recvfrom => "recvfrom",
            Self::Sendto => "sendto",
            Self::Recvmsg => "recvmsg",
            Self::Sendmsg => "sendmsg",
            Self::Recvmmsg => "recvmmsg",
            Self::Sendmmsg => "sendmmsg",
            Self::Sendfile => "sendfile",
            Self::Splice => "splice",
            Self::Preadv2 => "preadv2",
            Self::Pwritev2 => "pwritev2",
            Self::SslRead => "ssl_read",
            Self::SslWrite => "ssl_write",
            Self::GoTlsRead => "go_tls_read",
            Self::GoTlsWrite => "go_tls_write",
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Short,
    UnknownKind(u8),
}

fn read_struct<T: Copy>(data: &[u8]) -> Result<T, DecodeError> {
    if data.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Short);
    }
    // SAFETY: the length was checked; T is a plain-old-data struct generated from the
    // shared C header (integers and byte arrays only), valid for any bit pattern, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

fn comm_bytes(c: [i8; 16]) -> [u8; 16] {
    c.map(|b| b as u8)
}

/// Bytes of a NUL-terminated kernel string field.
fn comm_bytes_n(c: &[i8]) -> Vec<u8> {
    c.iter().map(|&b| b as u8).take_while(|&b| b != 0).collect()
}

/// The process name in a kernel `comm` field.
pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

const AF_INET: u16 = 2;

fn addr(family: u16, raw: [u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(raw);
        // A v4-mapped peer of an IPv6 socket is an IPv4 peer.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    };
    SocketAddr::new(ip, port)
}

/// Decode one ring-buffer record meant for the event handler (data and connection
/// events); exec notifications are the capture layer's own (see `decode_record`).
pub fn decode(data: &[u8]) -> Result<Event<'_>, DecodeError> {
    match decode_record(data)? {
        Record::Event(e) => Ok(e),
        Record::Exec(_) => Err(DecodeError::UnknownKind(
            types::alog_event_kind::ALOG_EV_EXEC.0 as u8,
        )),
    }
}

/// Decode any ring-buffer record.
pub fn decode_record(data: &[u8]) -> Result<Record<'_>, DecodeError> {
    let hdr: types::alog_hdr = read_struct(data)?;
    if types::alog_event_kind(u32::from(hdr.kind)) == types::alog_event_kind::ALOG_EV_EXEC {
        let e: types::alog_exec_event = read_struct(data)?;
        let name = comm_bytes_n(&e.filename);
        return Ok(Record::Exec(ExecEvent {
            ts_ns: e.ts_ns,
            cgroup_id: e.cgroup_id,
            pid: e.pid,
            old_pid: e.old_pid,
            ino: e.ino,
            dev: user_dev(e.dev),
            filename: String::from_utf8_lossy(&name).into_owned(),
            comm: comm_bytes(e.comm),
        }));
    }
    decode_event(data, hdr).map(Record::Event)
}

fn decode_event(data: &[u8], hdr: types::alog_hdr) -> Result<Event<'_>, DecodeError> {
    match types::alog_event_kind(u32::from(hdr.kind)) {
        types::alog_event_kind::ALOG_EV_DATA => {
            let e: types::alog_data_event = read_struct(data)?;
            let start = std::mem::size_of::<types::alog_data_event>();
            let end = start.saturating_add(e.cap_len as usize).min(data.len());
            let dir = if e.dir == types::alog_dir::ALOG_DIR_EGRESS.0 as u8 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            Ok(Event::Data(DataEvent {
                cookie: e.cookie,
                ts_ns: e.ts_ns,
                start_ns: if e.start_ns == 0 || e.start_ns > e.ts_ns {
                    e.ts_ns
                } else {
                    e.start_ns
                },
                seq: e.seq,
                len: e.ret.max(0) as u64,
                cgroup_id: e.cgroup_id,
                tgid: e.tgid,
                tid: e.tid,
                fd: e.fd,
                dir,
                syscall: Syscall::from_raw(e.syscall),
                flags: e.flags,
                comm: comm_bytes(e.comm),
                payload: &data[start.min(end)..end],
            }))
        }
        types::alog_event_kind::ALOG_EV_CONN => {
            let e: types::alog_conn_event = read_struct(data)?;
            use types::alog_conn_type as T;
            let kind = match types::alog_conn_type(u32::from(e.r#type)) {
                T::ALOG_CONN_CONNECTED => ConnKind::Connected,
                T::ALOG_CONN_CONNECT_FAILED => ConnKind::ConnectFailed,
                T::ALOG_CONN_ACCEPTED => ConnKind::Accepted,
                T::ALOG_CONN_DISCOVERED => ConnKind::Discovered,
                _ => ConnKind::Closed,
            };
            let role = match types::alog_role(u32::from(e.role)) {
                types::alog_role::ALOG_ROLE_CLIENT => Role::Client,
                types::alog_role::ALOG_ROLE_SERVER => Role::Server,
                _ => Role::Unknown,
            };
            Ok(Event::Conn(ConnEvent {
                kind,
                cookie: e.cookie,
                ts_ns: e.ts_ns,
                connect_start_ns: e.connect_start_ns,
                established_ns: e.established_ns,
                close_start_ns: e.close_start_ns,
                cgroup_id: e.cgroup_id,
                netns: e.netns,
                bytes_sent: e.bytes_sent,
                bytes_recv: e.bytes_recv,
                send_calls: e.send_calls,
                recv_calls: e.recv_calls,
                data_events: e.data_events,
                tcp_bytes_acked: e.tcp_bytes_acked,
                tcp_bytes_received: e.tcp_bytes_received,
                srtt_us: e.srtt_us,
                total_retrans: e.total_retrans,
                segs_out: e.segs_out,
                segs_in: e.segs_in,
                tgid: e.tgid,
                flags: ConnFlags::from_bits(e.flags),
                role,
                old_state: e.old_state,
                new_state: e.new_state,
                local: addr(e.family, e.saddr, e.sport),
                remote: addr(e.family, e.daddr, e.dport),
                comm: comm_bytes(e.comm),
            }))
        }
        _ => Err(DecodeError::UnknownKind(hdr.kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a plain-old-data struct from the skeleton.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
                .to_vec()
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Short);
        assert_eq!(decode(&[1, 0, 0]).unwrap_err(), DecodeError::Short);
        assert_eq!(decode(&[9; 8]).unwrap_err(), DecodeError::UnknownKind(9));
    }

    #[test]
    fn data_event_payload_is_bounded_by_record_length() {
        let mut e = types::alog_data_event::default();
        e.hdr.kind = 1;
        e.ret = 100;
        e.cap_len = 50; // claims more than the record holds
        e.dir = 2;
        e.syscall = 1;
        let mut b = bytes_of(&e);
        b.extend_from_slice(b"GET / HTTP/1.1\r\n");
        match decode(&b).unwrap() {
            Event::Data(d) => {
                assert_eq!(d.payload, b"GET / HTTP/1.1\r\n");
                assert_eq!(d.len, 100);
                assert_eq!(d.dir, Direction::Ingress);
                assert_eq!(d.syscall, Syscall::Read);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tls_flags_and_syscalls() {
        let mut e = types::alog_data_event::default();
        e.hdr.kind = 1;
        e.ret = 5;
        e.cap_len = 5;
        e.dir = 1;
        e.syscall = 21;
        e.flags = 1;
        let mut b = bytes_of(&e);
        b.extend_from_slice(b"GET /");
        match decode(&b).unwrap() {
            Event::Data(d) => {
                assert!(d.is_tls_plaintext());
                assert!(!d.is_ciphertext());
                assert_eq!(d.syscall, Syscall::SslWrite);
                assert_eq!(d.syscall.name(), "ssl_write");
                assert!(d.syscall.is_tls());
                assert_eq!(d.payload, b"GET /");
            }
            other => panic!("unexpected {other:?}"),
        }
        for (raw, name) in [
            (20u8, "ssl_read"),
            (21, "ssl_write"),
            (22, "go_tls_read"),
            (23, "go_tls_write"),
        ] {
            let s = Syscall::from_raw(raw);
            assert_eq!(s.name(), name);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{name}\""));
        }
        e.flags = 2;
        e.syscall = 1;
        e.cap_len = 0;
        match decode(&bytes_of(&e)).unwrap() {
            Event::Data(d) => {
                assert!(d.is_ciphertext());
                assert!(!d.is_tls_plaintext());
                assert!(d.payload.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn exec_records_are_not_handler_events() {
        let mut e = types::alog_exec_event::default();
        e.hdr.kind = 3;
        e.pid = 4242;
        e.comm[..4].copy_from_slice(&[b'c' as i8, b'u' as i8, b'r' as i8, b'l' as i8]);
        let b = bytes_of(&e);
        assert_eq!(decode(&b).unwrap_err(), DecodeError::UnknownKind(3));
        match decode_record(&b).unwrap() {
            Record::Exec(x) => {
                assert_eq!(x.pid, 4242);
                assert_eq!(comm_str(&x.comm), "curl");
                assert_eq!(x.filename, "");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn device_numbers() {
        // 8:1 (sda1) and 259:65536 (a large minor)
        assert_eq!(user_dev((8 << 20) | 1), libc::makedev(8, 1));
        assert_eq!(user_dev((259 << 20) | 65536), libc::makedev(259, 65536));
    }

    #[test]
    fn conn_event_addresses() {
        let mut e = types::alog_conn_event::default();
        e.hdr.kind = 2;
        e.r#type = 1;
        e.family = 10;
        e.sport = 40000;
        e.dport = 80;
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        e.daddr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        match decode(&bytes_of(&e)).unwrap() {
            Event::Conn(c) => {
                assert_eq!(c.kind, ConnKind::Connected);
                assert_eq!(c.local, "[::1]:40000".parse().unwrap());
                assert_eq!(c.remote, "127.0.0.1:80".parse().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn conn_event_flags_are_decoded_by_name() {
        let mut e = types::alog_conn_event::default();
        e.hdr.kind = 2;
        e.r#type = 5;
        e.flags = types::alog_conn_flags::ALOG_F_OWNER_KNOWN.0
            | types::alog_conn_flags::ALOG_F_RST_RECV.0
            | types::alog_conn_flags::ALOG_F_TLS.0;
        match decode(&bytes_of(&e)).unwrap() {
            Event::Conn(c) => {
                let f = c.flags;
                assert_eq!(f.bits(), e.flags);
                assert!(f.owner_known() && f.rst_recv() && f.tls());
                assert!(!f.preexisting() && !f.rst_sent() && !f.data_lost());
                assert!(!f.closed_local() && !f.closed_peer());
                assert!(!f.ignored() && !f.announced());
                assert_eq!(
                    f,
                    ConnFlags::OWNER_KNOWN | ConnFlags::RST_RECV | ConnFlags::TLS
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
