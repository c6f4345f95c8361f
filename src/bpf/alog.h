/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * alog.h: the one contract between the BPF programs and user space.
 *
 * Every struct that crosses the ring buffer is declared here; the Rust side
 * gets these types from the generated skeleton (never written twice).
 */
#ifndef ALOG_H
#define ALOG_H

/* Limits shared with user space (an enum, not macros, so that the skeleton carries
 * them to Rust). */
enum alog_limits {
	/* Largest payload prefix a single data event can carry (power of two). */
	ALOG_MAX_CAPTURE = 8192,
	/* iovec segments walked per call when copying a payload prefix. */
	ALOG_MAX_IOV = 16,
};

enum alog_event_kind {
	ALOG_EV_DATA = 1,
	ALOG_EV_CONN = 2,
	/* A process called execve(): user space looks for TLS libraries in it.
	 * Consumed by the capture layer itself, never handed to the engine. */
	ALOG_EV_EXEC = 3,
};

/* What happened to a connection (alog_conn_event.type). */
enum alog_conn_type {
	/* Active open finished its handshake (SYN_SENT -> ESTABLISHED). */
	ALOG_CONN_CONNECTED = 1,
	/* Active open failed (SYN_SENT -> CLOSE: refused, timed out, reset). */
	ALOG_CONN_CONNECT_FAILED = 2,
	/* Passive open: sent at the first use of an accepted socket, once its owner is
	 * known (the handshake completes in softirq context, owner unknown), so that
	 * pid and cgroup filters apply to it. */
	ALOG_CONN_ACCEPTED = 3,
	/* First sight of a connection that was open before capture began. */
	ALOG_CONN_DISCOVERED = 4,
	/* The socket reached TCP_CLOSE: final figures. */
	ALOG_CONN_CLOSED = 5,
};

/* Role of the local socket. */
enum alog_role {
	ALOG_ROLE_UNKNOWN = 0,
	ALOG_ROLE_CLIENT = 1,
	ALOG_ROLE_SERVER = 2,
};

/* alog_conn_event.flags and conn_state.flags */
enum alog_conn_flags {
	ALOG_F_PREEXISTING = 1 << 0,   /* open before capture began */
	ALOG_F_RST_SENT = 1 << 1,      /* we sent a reset */
	ALOG_F_RST_RECV = 1 << 2,      /* the peer reset us */
	ALOG_F_CLOSED_LOCAL = 1 << 3,  /* local side sent FIN first */
	ALOG_F_CLOSED_PEER = 1 << 4,   /* peer sent FIN first */
	ALOG_F_OWNER_KNOWN = 1 << 5,   /* tgid/comm/cgroup are valid */
	ALOG_F_IGNORED = 1 << 6,       /* filtered out: no events */
	ALOG_F_DATA_LOST = 1 << 7,     /* a data event of this socket was dropped */
	ALOG_F_ANNOUNCED = 1 << 8,     /* user space has had an opening event for it */
	ALOG_F_TLS = 1 << 9,           /* socket seen carrying TLS (a TLS library call used it) */
};

/* alog_data_event.flags */
enum alog_data_flags {
	/* Plaintext from a TLS library call (SSL_read/SSL_write, Go crypto/tls): the
	 * payload is the application's bytes; cookie is the TCP socket underneath. */
	ALOG_DATA_TLS = 1,
	/* Bytes of a socket call on a connection known to carry TLS: no payload copied
	 * (cap_len 0); user space must not parse it. */
	ALOG_DATA_CIPHER = 2,
};

/* Direction of a data event. */
enum alog_dir {
	ALOG_DIR_EGRESS = 1,  /* local process sent */
	ALOG_DIR_INGRESS = 2, /* local process received */
};

/* Syscall that carried a data event (alog_data_event.syscall). */
enum alog_syscall {
	ALOG_SYS_OTHER = 0,
	ALOG_SYS_READ = 1,
	ALOG_SYS_WRITE = 2,
	ALOG_SYS_READV = 3,
	ALOG_SYS_WRITEV = 4,
	ALOG_SYS_RECVFROM = 5,
	ALOG_SYS_SENDTO = 6,
	ALOG_SYS_RECVMSG = 7,
	ALOG_SYS_SENDMSG = 8,
	ALOG_SYS_RECVMMSG = 9,
	ALOG_SYS_SENDMMSG = 10,
	ALOG_SYS_SENDFILE = 11,
	ALOG_SYS_SPLICE = 12,
	ALOG_SYS_PREADV2 = 13,
	ALOG_SYS_PWRITEV2 = 14,
	/* TLS library calls (plaintext events, ALOG_DATA_TLS) */
	ALOG_SYS_SSL_READ = 20,      /* SSL_read, SSL_read_ex */
	ALOG_SYS_SSL_WRITE = 21,     /* SSL_write, SSL_write_ex, SSL_sendfile */
	ALOG_SYS_GO_TLS_READ = 22,   /* crypto/tls.(*Conn).Read */
	ALOG_SYS_GO_TLS_WRITE = 23,  /* crypto/tls.(*Conn).Write */
};

/* Indexes into the per-CPU counter array `counters`. */
enum alog_counter {
	ALOG_CNT_DATA_EVENTS = 0,      /* data events written to the ring */
	ALOG_CNT_CONN_EVENTS = 1,      /* connection events written */
	ALOG_CNT_DROP_DATA = 2,        /* data events lost: ring buffer full */
	ALOG_CNT_DROP_CONN = 3,        /* connection events lost: ring buffer full */
	ALOG_CNT_STORAGE_FAIL = 4,     /* per-socket state could not be allocated */
	ALOG_CNT_FILTERED = 5,         /* socket calls skipped by pid/cgroup/port filters */
	ALOG_CNT_PAYLOAD_SKIPPED = 6,  /* data events without payload (sendfile, mmsg, kthread) */
	ALOG_CNT_READ_FAULT = 7,       /* payload could not be read from user memory */
	ALOG_CNT_SELF = 8,             /* socket calls of this tool itself, skipped */
	ALOG_CNT_WAKEUPS = 9,          /* forced ring-buffer wake-ups */
	ALOG_CNT_TLS_UNATTRIBUTED = 10, /* TLS plaintext whose socket could not be found: dropped */
	ALOG_CNT_TLS_PLAINTEXT = 11,   /* TLS plaintext events written (also in DATA_EVENTS) */
	ALOG_CNT_DROP_EXEC = 12,       /* exec notifications lost: ring buffer full */
	ALOG_CNT_LATE_UNTRACKED = 13,  /* data read after TCP_CLOSE of an untracked socket: dropped */
	ALOG_CNT_MAX = 16,
};

/* Header shared by every ring-buffer record. */
struct alog_hdr {
	__u8 kind;     /* enum alog_event_kind */
	__u8 pad[7];
};

struct alog_data_event {
	struct alog_hdr hdr;
	__u64 cookie;      /* socket cookie: connection identity, never reused */
	__u64 ts_ns;       /* CLOCK_MONOTONIC at the end of the call */
	__u64 start_ns;    /* start of the call for TCP sends (first tcp_sendmsg_locked);
			    * equal to ts_ns for receives, whose start is only waiting;
			    * entry of the library call for TLS plaintext */
	__u64 seq;         /* per-socket data event number, from 0: one sequence for
			    * socket calls and TLS plaintext of the same socket */
	__s64 ret;         /* bytes moved by the call (plaintext bytes for TLS) */
	__u64 cgroup_id;
	__u32 tgid;
	__u32 tid;
	__s32 fd;          /* fd argument of the syscall, -1 when not known */
	__u32 cap_len;     /* bytes of payload that follow */
	__u8 dir;          /* enum alog_dir */
	__u8 syscall;      /* enum alog_syscall */
	__u8 flags;        /* enum alog_data_flags */
	__u8 pad[5];
	char comm[16];
	__u8 payload[0];
};

struct alog_conn_event {
	struct alog_hdr hdr;
	__u64 cookie;
	__u64 ts_ns;            /* when this transition happened */
	__u64 connect_start_ns; /* SYN_SENT, active opens only */
	__u64 established_ns;   /* handshake done, 0 if never */
	__u64 close_start_ns;   /* first FIN (either side), 0 if none */
	__u64 cgroup_id;
	__u64 netns;            /* network namespace inode */
	__u64 bytes_sent;       /* payload bytes the local side sent, by socket calls */
	__u64 bytes_recv;       /* payload bytes the local side received */
	__u64 send_calls;
	__u64 recv_calls;
	__u64 data_events;      /* data events emitted (seq of the next one) */
	__u64 tcp_bytes_acked;  /* from tcp_sock at close */
	__u64 tcp_bytes_received;
	__u32 srtt_us;          /* smoothed RTT, us */
	__u32 total_retrans;    /* retransmitted segments */
	__u32 segs_out;
	__u32 segs_in;
	__u32 tgid;
	__u32 flags;            /* enum alog_conn_flags */
	__u16 family;           /* AF_INET / AF_INET6 */
	__u16 sport;            /* local port, host order */
	__u16 dport;            /* remote port, host order */
	__u8 type;              /* enum alog_conn_type */
	__u8 role;              /* enum alog_role */
	__u8 old_state;
	__u8 new_state;
	__u8 pad[6];
	__u8 saddr[16];         /* local address (IPv4 in the first 4 bytes) */
	__u8 daddr[16];         /* remote address */
	char comm[16];
};

/* Bytes of the execve path carried by an exec event. */
#define ALOG_EXEC_PATH 256

/* A process image was replaced (execve): sent so that user space can attach TLS
 * probes to new binaries and libraries. */
struct alog_exec_event {
	struct alog_hdr hdr;
	__u64 ts_ns;
	__u64 cgroup_id;
	__u64 ino;              /* inode of the executable */
	__u32 dev;              /* its device, kernel encoding (major << 20 | minor) */
	__u32 pid;              /* tgid after the exec */
	__u32 old_pid;          /* thread that called execve */
	__u32 pad;
	char comm[16];
	char filename[ALOG_EXEC_PATH]; /* path given to execve (process's view) */
};

#endif /* ALOG_H */
