// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * alog.bpf.c: the in-kernel half of k8s-alog.
 *
 * Design, driven by what these kernels allow and what they charge:
 * - Syscall tracepoints only as the last rung. Enabling any of them puts every
 *   syscall on the node on the slow path. Data is seen at the socket layer
 *   instead wherever the kernel allows, which fires only for sockets: file
 *   I/O never reaches these programs, so it is filtered for free.
 * - The syscall number and arguments (for the payload prefix and the fd) are
 *   read back from the task's saved user registers.
 * - Per-connection state lives in a hash map keyed by the socket's kernel
 *   address, so that every hook rung below can reach it (socket local storage
 *   cannot be reached from kprobes or syscall hooks). It is created on first
 *   sight and deleted when the socket reaches TCP_CLOSE; its identity is the
 *   socket cookie, which is never reused (fd reuse is irrelevant).
 * - The data hooks come in rungs, chosen per hook by user space at start-up
 *   (the newest kernels have them all; older or locked-down kernels only
 *   some): socket tracepoints (sock_send_length / sock_recv_length), fexit on
 *   the TCP send and inet receive functions, kprobes on the same functions,
 *   and last the raw syscall exit tracepoint (fd -> socket through the task's
 *   file table). Every rung feeds the same on_data(); only the programs of
 *   the chosen rungs are loaded.
 * - Lifecycle (connect, accept, close, with real handshake times) comes from
 *   inet_sock_set_state; final TCP figures are read from tcp_sock at close.
 * - Ring-buffer records are submitted without a wake-up unless the ring is
 *   filling; user space drains it on a short timer.
 * - TLS plaintext comes from uprobes on TLS library calls (OpenSSL/BoringSSL
 *   SSL_read/SSL_write and friends, Go crypto/tls.(*Conn).Read/Write). A call
 *   in flight is remembered per thread (per goroutine for Go); the socket
 *   call the library makes inside it ties the call to its socket, marks the
 *   socket as TLS, and is itself sent as ciphertext without payload. Reads
 *   served from the library's own buffer make no socket call: the socket is
 *   then found from the SSL object (Go: the tls.Conn) it was last seen with.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "alog.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define MSG_PEEK 2
#define PF_KTHREAD 0x00200000

/* Set by user space before load. */
const volatile __u32 self_tgid = 0;
const volatile __u32 capture_bytes = 4096;
const volatile __u64 wakeup_bytes = 1 << 20;
const volatile bool filter_pid = false;
const volatile bool filter_cgroup = false;
const volatile bool filter_port = false;
/* Which directions the syscall rung (sc_exit) handles: only those whose
 * hook runs on that rung. */
const volatile bool sc_send = false;
const volatile bool sc_recv = false;

/* Dummy instances put the event structs into BTF for the skeleton's types. */
struct alog_data_event _alog_data_event = {};
struct alog_conn_event _alog_conn_event = {};
enum alog_event_kind _alog_event_kind = 0;
enum alog_conn_type _alog_conn_type = 0;
enum alog_role _alog_role = 0;
enum alog_conn_flags _alog_conn_flags = 0;
enum alog_dir _alog_dir = 0;
enum alog_syscall _alog_syscall = 0;
enum alog_counter _alog_counter = 0;
enum alog_data_flags _alog_data_flags = 0;
enum alog_limits _alog_limits = 0;
struct alog_exec_event _alog_exec_event = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

struct conn_state {
	__u64 cookie;
	__u64 connect_start_ns;
	__u64 established_ns;
	__u64 close_start_ns;
	__u64 cgroup_id;
	__u64 bytes_sent;
	__u64 bytes_recv;
	__u64 send_calls;
	__u64 recv_calls;
	__u64 seq;
	__u64 send_start_ns;
	__u32 tgid;
	__u32 flags;
	__u8 role;
	__u8 pad[7];
	char comm[16];
};

/* Sized by user space (--max-connections and then some); a socket that finds
 * it full is counted in ALOG_CNT_STORAGE_FAIL and not tracked. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20);
	__type(key, __u64);
	__type(value, struct conn_state);
} conns SEC(".maps");

/* The state of sockets that reached TCP_CLOSE while a process still held them
 * (the peer's FIN after our shutdown(), or a reset): that process may still
 * read what was queued before, and those reads keep the connection's id and
 * event sequence. Bounded; the oldest go first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct conn_state);
} closed_held SEC(".maps");

/* Per-CPU counter behind the connection ids made for sockets whose kernel
 * cookie cannot be had where they are first seen (kprobe and syscall rungs). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} synth_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ALOG_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} pid_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} cgroup_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} port_filter SEC(".maps");

/* Room for one data event and a payload copy; twice the cap so that the
 * verifier can prove every partial copy stays inside. */
#define SCRATCH_SIZE (sizeof(struct alog_data_event) + 2 * ALOG_MAX_CAPTURE)
struct scratch {
	__u8 buf[SCRATCH_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/*
 * TLS state.
 *
 * tls_calls: library calls in flight, by thread (OpenSSL: the thread that
 * entered the call returns from it) or by goroutine (Go: goroutines move
 * between threads, so the key is the g pointer, which the register ABI keeps
 * in R14). An LRU map, so entries of calls that never returned (thread killed
 * mid-call) age out instead of filling it.
 */
enum tls_key_kind {
	TLS_KEY_THREAD = 0,
	TLS_KEY_GOROUTINE = 1,
};

enum tls_op {
	TLS_OP_RW = 1, /* read or write: plaintext at return */
	TLS_OP_HS = 2, /* handshake: only learns the socket */
};

struct tls_key {
	__u32 tgid;
	__u32 kind; /* enum tls_key_kind */
	__u64 id;   /* tid, or goroutine (g) pointer */
};

struct tls_call {
	__u64 ssl;      /* SSL * (Go: *tls.Conn) */
	__u64 buf;      /* caller's buffer */
	__u64 num;      /* requested length */
	__u64 arg4;     /* SSL_read_ex / SSL_write_ex: size_t *processed */
	__u64 start_ns;
	__u64 cookie;   /* socket the call used, 0 until a socket call shows it */
	__s32 fd;
	__u8 op;        /* enum tls_op */
	__u8 ignored;   /* that socket is filtered out */
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tls_key);
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/* The socket an SSL object (Go: tls.Conn) was last seen using, for calls that
 * make no socket call of their own. Stale entries (object freed, address
 * reused) are overwritten by the new object's first call, which always makes
 * a socket call (its handshake). */
struct ssl_key {
	__u32 tgid;
	__u32 pad;
	__u64 ptr;
};

struct ssl_sock {
	__u64 cookie;
	__s32 fd;
	__u8 ignored;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ssl_key);
	__type(value, struct ssl_sock);
} ssl_socks SEC(".maps");

/* Sockets known to carry TLS, by cookie: holds the socket's data event
 * counter from the moment it is known as TLS, so that plaintext events (made
 * in uprobes, which cannot reach socket storage) and socket-call events share
 * one sequence. Deleted when the socket closes. */
struct tls_sock {
	__u64 seq;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct tls_sock);
} tls_socks SEC(".maps");

/* Processes in which a Go crypto/tls call was seen: only their socket calls
 * look for an in-flight call by goroutine. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} go_procs SEC(".maps");

/* Set once any Go crypto/tls call was seen: spares every other socket call a lookup. */
__u32 go_tls_seen = 0;

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline __u64 rb_flags(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes) {
		count(ALOG_CNT_WAKEUPS);
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

/* `sk` is a BTF pointer on the tracepoint and fentry rungs but a plain kernel
 * address on the kprobe and syscall rungs: CO-RE reads serve both. */
static __always_inline bool is_tcp(const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family != AF_INET && family != AF_INET6)
		return false;
	return BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP &&
	       BPF_CORE_READ(sk, sk_type) == SOCK_STREAM;
}

static __always_inline struct conn_state *conn_get(const struct sock *sk)
{
	__u64 k = (__u64)sk;

	return bpf_map_lookup_elem(&conns, &k);
}

static __always_inline void conn_forget(const struct sock *sk)
{
	__u64 k = (__u64)sk;

	bpf_map_delete_elem(&conns, &k);
}

/* Identity of a socket first seen in a data hook: its kernel cookie if one was
 * made already, else an id of our own (bit 62 set, CPU in bits 48-61: never
 * equal to a kernel cookie, which counts up from 1). */
static __always_inline __u64 data_cookie(const struct sock *sk)
{
	__u64 c = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	__u32 zero = 0;
	__u64 *n;

	if (c)
		return c;
	n = bpf_map_lookup_elem(&synth_ids, &zero);
	if (!n)
		return 0;
	*n += 1;
	return (1ULL << 62) | ((__u64)(bpf_get_smp_processor_id() & 0x3fff) << 48) |
	       (*n & ((1ULL << 48) - 1));
}

static __always_inline bool port_allowed(const struct sock *sk)
{
	__u16 lport, rport;

	if (!filter_port)
		return true;
	/* inet_sport, not skc_num: the latter is 0 once the socket is unhashed at close. */
	lport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return bpf_map_lookup_elem(&port_filter, &lport) ||
	       bpf_map_lookup_elem(&port_filter, &rport);
}

static __always_inline bool cgroup_allowed(__u64 cg)
{
	return !filter_cgroup || bpf_map_lookup_elem(&cgroup_filter, &cg);
}

static __always_inline bool pid_allowed(__u32 tgid)
{
	return !filter_pid || bpf_map_lookup_elem(&pid_filter, &tgid);
}

/* The process's name (its group leader's comm), not the calling thread's: threads
 * rename themselves (grpcio's "event_engine", worker pools). */
static __always_inline void process_comm(char *dst)
{
	struct task_struct *task = bpf_get_current_task_btf();

	bpf_probe_read_kernel_str(dst, 16, task->group_leader->comm);
}

static __always_inline void set_owner(struct conn_state *st)
{
	st->tgid = bpf_get_current_pid_tgid() >> 32;
	st->cgroup_id = bpf_get_current_cgroup_id();
	process_comm(st->comm);
	st->flags |= ALOG_F_OWNER_KNOWN;
}

static __always_inline void fill_tuple(struct alog_conn_event *e, const struct sock *sk)
{
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	/* inet_sport survives unhashing at close; skc_num does not. */
	e->sport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (e->family == AF_INET) {
		__u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memcpy(e->saddr, &s, 4);
		__builtin_memcpy(e->daddr, &d, 4);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* Number of the next data event of a socket (see tls_socks). */
static __always_inline __u64 cur_seq(const struct conn_state *st)
{
	if (st->flags & ALOG_F_TLS) {
		struct tls_sock *ts = bpf_map_lookup_elem(&tls_socks, &st->cookie);

		if (ts)
			return ts->seq;
	}
	return st->seq;
}

/* Take the next data event number of a socket. */
static __always_inline __u64 next_seq(struct conn_state *st)
{
	if (st->flags & ALOG_F_TLS) {
		struct tls_sock *ts = bpf_map_lookup_elem(&tls_socks, &st->cookie);

		if (ts)
			return ts->seq++;
	}
	return st->seq++;
}

/* Emit a connection event. `st` may be NULL (a socket we never tracked): its
 * id is then `cookie`. */
static __always_inline void emit_conn(const struct sock *sk, struct conn_state *st, __u64 cookie,
				      __u8 type, int oldstate, int newstate, __u64 now)
{
	struct alog_conn_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(ALOG_CNT_DROP_CONN);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.kind = ALOG_EV_CONN;
	e->type = type;
	e->ts_ns = now;
	e->old_state = oldstate;
	e->new_state = newstate;
	fill_tuple(e, sk);
	if (st) {
		e->cookie = st->cookie;
		e->connect_start_ns = st->connect_start_ns;
		e->established_ns = st->established_ns;
		e->close_start_ns = st->close_start_ns;
		e->cgroup_id = st->cgroup_id;
		e->bytes_sent = st->bytes_sent;
		e->bytes_recv = st->bytes_recv;
		e->send_calls = st->send_calls;
		e->recv_calls = st->recv_calls;
		e->data_events = cur_seq(st);
		e->tgid = st->tgid;
		e->flags = st->flags;
		e->role = st->role;
		__builtin_memcpy(e->comm, st->comm, sizeof(e->comm));
	} else {
		e->cookie = cookie;
		e->flags = ALOG_F_PREEXISTING;
	}
	if (type == ALOG_CONN_CLOSED || type == ALOG_CONN_CONNECT_FAILED) {
		const struct tcp_sock *tp = (const struct tcp_sock *)sk;

		e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
		e->total_retrans = BPF_CORE_READ(tp, total_retrans);
		e->segs_out = BPF_CORE_READ(tp, segs_out);
		e->segs_in = BPF_CORE_READ(tp, segs_in);
		e->tcp_bytes_acked = BPF_CORE_READ(tp, bytes_acked);
		e->tcp_bytes_received = BPF_CORE_READ(tp, bytes_received);
	}
	bpf_ringbuf_submit(e, rb_flags());
	count(ALOG_CNT_CONN_EVENTS);
}

/* Create the state of a socket seen for the first time (replacing any left by
 * an earlier socket at the same address whose close went unseen). */
static __always_inline struct conn_state *new_state(const struct sock *sk, __u64 cookie, __u8 role,
						    __u32 flags)
{
	struct conn_state init = {};
	__u64 k = (__u64)sk;
	struct conn_state *st;

	init.cookie = cookie;
	init.role = role;
	init.flags = flags;
	if (!port_allowed(sk))
		init.flags |= ALOG_F_IGNORED;
	if (bpf_map_update_elem(&conns, &k, &init, BPF_ANY)) {
		count(ALOG_CNT_STORAGE_FAIL);
		return 0;
	}
	st = bpf_map_lookup_elem(&conns, &k);
	if (!st)
		count(ALOG_CNT_STORAGE_FAIL);
	return st;
}

/* A socket reached TCP_CLOSE: its final event, unless it was filtered out. */
static __always_inline void close_conn(const struct sock *sk, struct conn_state *st, int oldstate,
				       int newstate, __u64 now)
{
	if (st && (st->flags & ALOG_F_IGNORED))
		return;
	if (!st && (filter_pid || filter_cgroup || !port_allowed(sk)))
		return;
	if (st && !(st->flags & ALOG_F_ANNOUNCED) && (filter_pid || filter_cgroup)) {
		/* Never used by a process we were asked to watch. */
		if (!(st->flags & ALOG_F_OWNER_KNOWN) || !pid_allowed(st->tgid) ||
		    !cgroup_allowed(st->cgroup_id))
			return;
	}
	if (st && !(st->flags & ALOG_F_OWNER_KNOWN) && oldstate == TCP_ESTABLISHED) {
		/* An abortive close() from an established state runs in process
		 * context too; a reset received does not, so only a local reset
		 * counts here. */
		if (st->flags & ALOG_F_RST_SENT)
			set_owner(st);
	}
	emit_conn(sk, st, st ? 0 : bpf_get_socket_cookie((void *)sk),
		  oldstate == TCP_SYN_SENT ? ALOG_CONN_CONNECT_FAILED : ALOG_CONN_CLOSED, oldstate,
		  newstate, now);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, int oldstate, int newstate)
{
	struct conn_state *st;
	__u64 now;

	if (!is_tcp(sk))
		return 0;
	now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT) {
		/* connect(): process context, so the owner is the current task. */
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;

		st = new_state(sk, bpf_get_socket_cookie((void *)sk), ALOG_ROLE_CLIENT, 0);
		if (!st)
			return 0;
		st->connect_start_ns = now;
		set_owner(st);
		if (tgid == self_tgid)
			st->flags |= ALOG_F_IGNORED;
		else if (!pid_allowed(tgid) || !cgroup_allowed(st->cgroup_id))
			st->flags |= ALOG_F_IGNORED;
		return 0;
	}

	if (newstate == TCP_ESTABLISHED) {
		if (oldstate == TCP_SYN_SENT) {
			st = conn_get(sk);
			if (!st) {
				/* connect() began before capture did. */
				st = new_state(sk, bpf_get_socket_cookie((void *)sk), ALOG_ROLE_CLIENT,
					       ALOG_F_PREEXISTING);
				if (!st)
					return 0;
			}
			st->established_ns = now;
			if (!(st->flags & ALOG_F_IGNORED)) {
				st->flags |= ALOG_F_ANNOUNCED;
				emit_conn(sk, st, 0, ALOG_CONN_CONNECTED, oldstate, newstate, now);
			}
		} else if (oldstate == TCP_SYN_RECV) {
			/* Softirq context: the owner is not known until the socket is
			 * used, so it is announced then (see on_data). */
			st = new_state(sk, bpf_get_socket_cookie((void *)sk), ALOG_ROLE_SERVER, 0);
			if (!st)
				return 0;
			st->established_ns = now;
		}
		return 0;
	}

	if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK || newstate == TCP_CLOSE_WAIT) {
		st = conn_get(sk);
		if (!st) {
			/* Open before capture and idle since: track it from here, so that
			 * its close says who closed first. */
			if (filter_pid || filter_cgroup)
				return 0;
			st = new_state(sk, bpf_get_socket_cookie((void *)sk), ALOG_ROLE_UNKNOWN,
				       ALOG_F_PREEXISTING);
			if (!st)
				return 0;
		}
		if (st->flags & ALOG_F_IGNORED)
			return 0;
		if (!st->close_start_ns)
			st->close_start_ns = now;
		if (newstate == TCP_CLOSE_WAIT) {
			if (!(st->flags & ALOG_F_CLOSED_LOCAL))
				st->flags |= ALOG_F_CLOSED_PEER;
		} else {
			/* close()/shutdown(): process context, the owner is current. */
			if (!(st->flags & ALOG_F_CLOSED_PEER))
				st->flags |= ALOG_F_CLOSED_LOCAL;
			if (!(st->flags & ALOG_F_OWNER_KNOWN))
				set_owner(st);
		}
		return 0;
	}

	if (newstate == TCP_CLOSE) {
		st = conn_get(sk);
		if (oldstate == TCP_LISTEN || oldstate == TCP_SYN_RECV || oldstate == TCP_CLOSE ||
		    oldstate == TCP_NEW_SYN_RECV) {
			if (st)
				conn_forget(sk);
			return 0;
		}
		if (st && (st->flags & ALOG_F_TLS)) {
			/* The socket's counter comes home; its TLS entry is freed. */
			st->seq = cur_seq(st);
			bpf_map_delete_elem(&tls_socks, &st->cookie);
		}
		close_conn(sk, st, oldstate, newstate, now);
		if (st) {
			if (BPF_CORE_READ(sk, sk_socket)) {
				__u64 k = (__u64)sk;

				bpf_map_update_elem(&closed_held, &k, st, BPF_ANY);
			}
			conn_forget(sk);
		}
	}
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(on_send_reset, const struct sock *sk)
{
	struct conn_state *st;

	if (!sk)
		return 0;
	st = conn_get(sk);
	if (st)
		st->flags |= ALOG_F_RST_SENT;
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(on_receive_reset, struct sock *sk)
{
	struct conn_state *st;

	if (!sk)
		return 0;
	st = conn_get(sk);
	if (st)
		st->flags |= ALOG_F_RST_RECV;
	return 0;
}

/* x86-64 syscall numbers of the calls that move socket payload. */
#define NR_READ 0
#define NR_WRITE 1
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDFILE 40
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
#define NR_SPLICE 275
#define NR_RECVMMSG 299
#define NR_SENDMMSG 307
#define NR_PREADV2 327
#define NR_PWRITEV2 328

/* Copy up to `want` bytes from a user iovec array into dst. */
static __always_inline __u32 copy_iov(__u8 *dst, const struct iovec *iovp, __u64 iovcnt, __u32 want)
{
	__u32 off = 0;

#pragma unroll
	for (int i = 0; i < ALOG_MAX_IOV; i++) {
		struct iovec iov;
		long n;

		if (i >= iovcnt || off >= want)
			break;
		if (bpf_probe_read_user(&iov, sizeof(iov), iovp + i)) {
			count(ALOG_CNT_READ_FAULT);
			break;
		}
		n = want - off;
		if (n > (long)iov.iov_len)
			n = iov.iov_len;
		off &= ALOG_MAX_CAPTURE - 1;
		barrier_var(n);
		if (n <= 0 || n > ALOG_MAX_CAPTURE)
			continue;
		/* Bounds the verifier can see at the call itself: older verifiers (6.1)
		 * lose the check above when the compiler spills n to the stack. */
		barrier_var(n);
		n = ((n - 1) & (ALOG_MAX_CAPTURE - 1)) + 1;
		if (bpf_probe_read_user(dst + off, n, iov.iov_base)) {
			count(ALOG_CNT_READ_FAULT);
			break;
		}
		off += n;
	}
	return off;
}

static __always_inline __u32 copy_msghdr(__u8 *dst, const struct user_msghdr *msgp, __u32 want)
{
	struct user_msghdr msg;

	if (!want)
		return 0;
	if (bpf_probe_read_user(&msg, sizeof(msg), msgp)) {
		count(ALOG_CNT_READ_FAULT);
		return 0;
	}
	return copy_iov(dst, msg.msg_iov, msg.msg_iovlen, want);
}

/*
 * Identify the syscall that is moving these bytes and copy a prefix of its
 * payload (none when `copy` is false). Returns the number of bytes copied.
 */
static __always_inline __u32 copy_payload(__u8 *dst, __s64 ret, __u8 *sys, __s32 *fd, bool copy)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs;
	unsigned long a0, a1, a2;
	long nr, want;

	*sys = ALOG_SYS_OTHER;
	*fd = -1;
	if (task->flags & PF_KTHREAD)
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
#if defined(__TARGET_ARCH_x86)
	/* bpf_task_pt_regs gives a BTF pointer: plain loads, no helper calls. */
	nr = regs->orig_ax;
	a0 = regs->di;
	a1 = regs->si;
	a2 = regs->dx;
#else
	/* Other architectures: lengths and counters only, no payload yet. */
	return 0;
#endif
	want = ret < capture_bytes ? ret : capture_bytes;
	barrier_var(want);
	if (!copy || want <= 0 || want > ALOG_MAX_CAPTURE)
		want = 0;
	*fd = (__s32)a0;

	switch (nr) {
	case NR_READ:
	case NR_WRITE:
	case NR_SENDTO:
	case NR_RECVFROM:
		*sys = nr == NR_READ ? ALOG_SYS_READ :
		       nr == NR_WRITE ? ALOG_SYS_WRITE :
		       nr == NR_SENDTO ? ALOG_SYS_SENDTO : ALOG_SYS_RECVFROM;
		if (want > 0 && want <= ALOG_MAX_CAPTURE) {
			barrier_var(want);
			want = ((want - 1) & (ALOG_MAX_CAPTURE - 1)) + 1;
			if (bpf_probe_read_user(dst, want, (void *)a1)) {
				count(ALOG_CNT_READ_FAULT);
				return 0;
			}
			return want;
		}
		return 0;
	case NR_READV:
	case NR_WRITEV:
	case NR_PREADV2:
	case NR_PWRITEV2:
		*sys = nr == NR_READV ? ALOG_SYS_READV :
		       nr == NR_WRITEV ? ALOG_SYS_WRITEV :
		       nr == NR_PREADV2 ? ALOG_SYS_PREADV2 : ALOG_SYS_PWRITEV2;
		return copy_iov(dst, (const struct iovec *)a1, a2, want);
	case NR_SENDMSG:
	case NR_RECVMSG:
		*sys = nr == NR_SENDMSG ? ALOG_SYS_SENDMSG : ALOG_SYS_RECVMSG;
		return copy_msghdr(dst, (const struct user_msghdr *)a1, want);
	case NR_SENDMMSG:
	case NR_RECVMMSG:
		*sys = nr == NR_SENDMMSG ? ALOG_SYS_SENDMMSG : ALOG_SYS_RECVMMSG;
		/* Which of several messages this call is cannot be told here. */
		if (a2 != 1) {
			if (copy)
				count(ALOG_CNT_PAYLOAD_SKIPPED);
			return 0;
		}
		return copy_msghdr(dst, (const struct user_msghdr *)a1, want);
	case NR_SENDFILE:
		*sys = ALOG_SYS_SENDFILE;
		*fd = (__s32)a0; /* out_fd */
		if (copy)
			count(ALOG_CNT_PAYLOAD_SKIPPED);
		return 0;
	case NR_SPLICE:
		*sys = ALOG_SYS_SPLICE;
		*fd = -1;
		if (copy)
			count(ALOG_CNT_PAYLOAD_SKIPPED);
		return 0;
	default:
		*fd = -1;
		if (copy)
			count(ALOG_CNT_PAYLOAD_SKIPPED);
		return 0;
	}
}

/* The TLS library call the current thread (or goroutine) is inside, if any. */
static __always_inline struct tls_call *tls_current(__u64 pid_tgid)
{
	struct tls_key k = {};
	struct tls_call *c;
	struct pt_regs *regs;

	k.tgid = pid_tgid >> 32;
	k.kind = TLS_KEY_THREAD;
	k.id = (__u32)pid_tgid;
	c = bpf_map_lookup_elem(&tls_calls, &k);
	if (c || !go_tls_seen)
		return c;
	if (!bpf_map_lookup_elem(&go_procs, &k.tgid))
		return 0;
#if defined(__TARGET_ARCH_x86)
	/* Go's syscall stubs leave the goroutine pointer in R14 (register ABI). */
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return 0;
	k.kind = TLS_KEY_GOROUTINE;
	k.id = BPF_CORE_READ(regs, r14);
	return bpf_map_lookup_elem(&tls_calls, &k);
#else
	return 0;
#endif
}

/* A socket is first seen carrying TLS: its data event counter moves to tls_socks. */
static __always_inline void mark_tls(struct conn_state *st)
{
	struct tls_sock ts = {};

	ts.seq = st->seq;
	bpf_map_update_elem(&tls_socks, &st->cookie, &ts, BPF_NOEXIST);
	/* Without an entry (map full) the socket stays plain; its plaintext is
	 * then counted as unattributed. */
	if (bpf_map_lookup_elem(&tls_socks, &st->cookie))
		st->flags |= ALOG_F_TLS;
}

static __always_inline int on_data(const struct sock *sk, long ret, int flags, __u8 dir)
{
	struct alog_data_event *e;
	struct conn_state *st;
	struct tls_call *tls;
	struct scratch *s;
	__u32 zero = 0, tgid, cap;
	__u64 pid_tgid, cg, now;
	bool cipher;
	__u8 sys;
	__s32 fd;

	if (ret <= 0)
		return 0;
	if (dir == ALOG_DIR_INGRESS && (flags & MSG_PEEK))
		return 0;
	if (!is_tcp(sk))
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tgid = pid_tgid >> 32;
	if (tgid == self_tgid) {
		count(ALOG_CNT_SELF);
		return 0;
	}
	cg = bpf_get_current_cgroup_id();
	if (!pid_allowed(tgid) || !cgroup_allowed(cg)) {
		count(ALOG_CNT_FILTERED);
		return 0;
	}
	now = bpf_ktime_get_ns();

	st = conn_get(sk);
	if (!st && BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_CLOSE) {
		/* Read after close: the connection's record is written already. */
		__u64 k = (__u64)sk;

		st = bpf_map_lookup_elem(&closed_held, &k);
		if (!st) {
			count(ALOG_CNT_LATE_UNTRACKED);
			return 0;
		}
	} else if (!st) {
		st = new_state(sk, data_cookie(sk), ALOG_ROLE_UNKNOWN, ALOG_F_PREEXISTING);
		if (!st)
			return 0;
	}
	tls = tls_current(pid_tgid);
	/* A call already tied to another socket (a library making an unrelated
	 * socket call of its own inside it) says nothing about this one. */
	if (tls && tls->cookie && tls->cookie != st->cookie)
		tls = 0;
	if (st->flags & ALOG_F_IGNORED) {
		if (tls) {
			tls->cookie = st->cookie;
			tls->ignored = 1;
		}
		count(ALOG_CNT_FILTERED);
		return 0;
	}
	if (!(st->flags & ALOG_F_ANNOUNCED)) {
		/* First use of an accepted socket, or of one open before capture. */
		set_owner(st);
		st->flags |= ALOG_F_ANNOUNCED;
		emit_conn(sk, st, 0,
			  (st->flags & ALOG_F_PREEXISTING) ? ALOG_CONN_DISCOVERED : ALOG_CONN_ACCEPTED,
			  0, 0, now);
	} else if (!(st->flags & ALOG_F_OWNER_KNOWN)) {
		set_owner(st);
	}
	if (dir == ALOG_DIR_EGRESS) {
		st->bytes_sent += ret;
		st->send_calls += 1;
	} else {
		st->bytes_recv += ret;
		st->recv_calls += 1;
	}

	if (tls) {
		tls->cookie = st->cookie;
		if (!(st->flags & ALOG_F_TLS))
			mark_tls(st);
	}
	/* Ciphertext is never copied: user space must not parse it. */
	cipher = st->flags & ALOG_F_TLS;

	s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	e = (struct alog_data_event *)s->buf;
	cap = copy_payload(s->buf + sizeof(*e), ret, &sys, &fd, !cipher);
	if (tls)
		tls->fd = fd;
	e->hdr.kind = ALOG_EV_DATA;
	e->cookie = st->cookie;
	e->ts_ns = now;
	e->start_ns = now;
	if (dir == ALOG_DIR_EGRESS && st->send_start_ns && st->send_start_ns <= now)
		e->start_ns = st->send_start_ns;
	if (dir == ALOG_DIR_EGRESS)
		st->send_start_ns = 0;
	e->seq = next_seq(st);
	e->ret = ret;
	e->cgroup_id = cg;
	e->tgid = tgid;
	e->tid = (__u32)pid_tgid;
	e->fd = fd;
	e->dir = dir;
	e->syscall = sys;
	e->flags = cipher ? ALOG_DATA_CIPHER : 0;
	process_comm(e->comm);
	if (cap > ALOG_MAX_CAPTURE)
		cap = ALOG_MAX_CAPTURE;
	e->cap_len = cap;
	if (bpf_ringbuf_output(&events, e, sizeof(*e) + cap, rb_flags())) {
		count(ALOG_CNT_DROP_DATA);
		st->flags |= ALOG_F_DATA_LOST;
		return 0;
	}
	count(ALOG_CNT_DATA_EVENTS);
	return 0;
}

/* Start of a TCP send. It times writes that block on a full send buffer (a slow
 * reader) from their real start. */
static __always_inline void send_started(const struct sock *sk)
{
	struct conn_state *st = conn_get(sk);

	if (st && !st->send_start_ns && !(st->flags & ALOG_F_IGNORED))
		st->send_start_ns = bpf_ktime_get_ns();
}

/* ---------------------------------------------------------------------------
 * Data hooks, one rung each; user space loads the programs of the rung it
 * chose for each hook (see src/capture/hooks.rs).
 * ------------------------------------------------------------------------- */

/* Rung "tracepoint": socket-layer tracepoints (Linux >= 6.3), where every socket
 * send and receive reports its socket and byte count (sendfile and splice
 * included from 6.5). */
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(on_sendmsg_locked, const struct sock *sk)
{
	send_started(sk);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_send, struct sock *sk, int ret, int flags)
{
	return on_data(sk, ret, flags, ALOG_DIR_EGRESS);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv, struct sock *sk, int ret, int flags)
{
	return on_data(sk, ret, flags, ALOG_DIR_INGRESS);
}

/* Rung "fentry": fexit on the functions those tracepoints sit behind, where BPF
 * trampolines are allowed (not under lockdown). tcp_sendmsg has the socket and
 * the byte count; receives are taken at inet_recvmsg / inet6_recvmsg, whose
 * signature is the same on every kernel (tcp_recvmsg's is not). */
SEC("fentry/tcp_sendmsg_locked")
int BPF_PROG(fe_sendmsg_locked, struct sock *sk)
{
	send_started(sk);
	return 0;
}

SEC("fexit/tcp_sendmsg")
int BPF_PROG(fx_send, struct sock *sk, struct msghdr *msg, size_t size, int ret)
{
	return on_data(sk, ret, 0, ALOG_DIR_EGRESS);
}

/* sendfile() and splice() to a TCP socket before 6.5 (absent since). */
SEC("fexit/tcp_sendpage")
int BPF_PROG(fx_sendpage, struct sock *sk, struct page *page, int offset, size_t size, int flags,
	     int ret)
{
	return on_data(sk, ret, 0, ALOG_DIR_EGRESS);
}

SEC("fexit/inet_recvmsg")
int BPF_PROG(fx_recv, struct socket *sock, struct msghdr *msg, size_t size, int flags, int ret)
{
	return on_data(BPF_CORE_READ(sock, sk), ret, flags, ALOG_DIR_INGRESS);
}

SEC("fexit/inet6_recvmsg")
int BPF_PROG(fx_recv6, struct socket *sock, struct msghdr *msg, size_t size, int flags, int ret)
{
	return on_data(BPF_CORE_READ(sock, sk), ret, flags, ALOG_DIR_INGRESS);
}

/* Rung "kprobe": the same functions through kprobes, where trampolines are
 * refused but kprobes are not. The entry's socket (and receive flags) wait for
 * the return in a per-thread slot. */
struct kp_call {
	__u64 sk;
	__s32 flags;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct kp_call);
} kp_calls SEC(".maps");

static __always_inline void kp_enter(const void *sk, int flags)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct kp_call c = {};

	if ((id >> 32) == self_tgid)
		return;
	c.sk = (__u64)sk;
	c.flags = flags;
	bpf_map_update_elem(&kp_calls, &id, &c, BPF_ANY);
}

static __always_inline int kp_return(long ret, __u8 dir)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct kp_call *c = bpf_map_lookup_elem(&kp_calls, &id);
	const struct sock *sk;
	int flags;

	if (!c)
		return 0;
	sk = (const struct sock *)c->sk;
	flags = c->flags;
	bpf_map_delete_elem(&kp_calls, &id);
	return on_data(sk, ret, flags, dir);
}

SEC("kprobe/tcp_sendmsg_locked")
int BPF_KPROBE(kp_sendmsg_locked, struct sock *sk)
{
	send_started(sk);
	return 0;
}

SEC("kprobe/tcp_sendmsg")
int BPF_KPROBE(kp_send, struct sock *sk)
{
	kp_enter(sk, 0);
	return 0;
}

SEC("kretprobe/tcp_sendmsg")
int BPF_KRETPROBE(kr_send, int ret)
{
	return kp_return(ret, ALOG_DIR_EGRESS);
}

SEC("kprobe/tcp_sendpage")
int BPF_KPROBE(kp_sendpage, struct sock *sk)
{
	kp_enter(sk, 0);
	return 0;
}

SEC("kretprobe/tcp_sendpage")
int BPF_KRETPROBE(kr_sendpage, int ret)
{
	return kp_return(ret, ALOG_DIR_EGRESS);
}

SEC("kprobe/inet_recvmsg")
int BPF_KPROBE(kp_recv, struct socket *sock, struct msghdr *msg, size_t size, int flags)
{
	kp_enter(BPF_CORE_READ(sock, sk), flags);
	return 0;
}

SEC("kretprobe/inet_recvmsg")
int BPF_KRETPROBE(kr_recv, int ret)
{
	return kp_return(ret, ALOG_DIR_INGRESS);
}

SEC("kprobe/inet6_recvmsg")
int BPF_KPROBE(kp_recv6, struct socket *sock, struct msghdr *msg, size_t size, int flags)
{
	kp_enter(BPF_CORE_READ(sock, sk), flags);
	return 0;
}

SEC("kretprobe/inet6_recvmsg")
int BPF_KRETPROBE(kr_recv6, int ret)
{
	return kp_return(ret, ALOG_DIR_INGRESS);
}

/* Rung "syscall": the raw syscall exit tracepoint, where nothing above is
 * allowed (a locked-down kernel without kprobes and without the socket
 * tracepoints). Every syscall on the node passes here, so the calls that do
 * not move socket bytes leave at the first test. The socket comes from the
 * fd through the task's file table. Not seen on this rung: sendmmsg/recvmmsg
 * (their return value counts messages, not bytes) and 32-bit syscalls. */
#define S_IFMT 00170000
#define S_IFSOCK 0140000

static __always_inline const struct sock *fd_sock(long fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt;
	struct file **fds;
	struct file *f = 0;
	struct socket *so;
	unsigned int max;

	if (fd < 0 || fd > 0x7fffffff)
		return 0;
	fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return 0;
	max = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned long)fd >= max)
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (!fds || bpf_probe_read_kernel(&f, sizeof(f), fds + fd) || !f)
		return 0;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	so = BPF_CORE_READ(f, private_data);
	if (!so)
		return 0;
	return BPF_CORE_READ(so, sk);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sc_exit, struct pt_regs *regs, long ret)
{
	long nr, fd, flags = 0;
	const struct sock *sk;
	__u8 dir;

	if (ret <= 0)
		return 0;
#if defined(__TARGET_ARCH_x86)
	nr = regs->orig_ax;
	fd = regs->di;
	switch (nr) {
	case NR_WRITE:
	case NR_WRITEV:
	case NR_SENDTO:
	case NR_SENDMSG:
	case NR_PWRITEV2:
	case NR_SENDFILE:
		if (!sc_send)
			return 0;
		dir = ALOG_DIR_EGRESS;
		break;
	case NR_READ:
	case NR_READV:
	case NR_PREADV2:
		if (!sc_recv)
			return 0;
		dir = ALOG_DIR_INGRESS;
		break;
	case NR_RECVFROM:
		if (!sc_recv)
			return 0;
		dir = ALOG_DIR_INGRESS;
		flags = regs->r10;
		break;
	case NR_RECVMSG:
		if (!sc_recv)
			return 0;
		dir = ALOG_DIR_INGRESS;
		flags = regs->dx;
		break;
	case NR_SPLICE:
		/* splice(fd_in, off_in, fd_out, off_out, len, flags): the socket end. */
		sk = sc_send ? fd_sock(regs->dx) : 0;
		if (sk)
			return on_data(sk, ret, 0, ALOG_DIR_EGRESS);
		sk = sc_recv ? fd_sock(regs->di) : 0;
		if (sk)
			return on_data(sk, ret, 0, ALOG_DIR_INGRESS);
		return 0;
	default:
		return 0;
	}
	sk = fd_sock(fd);
	if (!sk)
		return 0;
	return on_data(sk, ret, flags, dir);
#else
	return 0;
#endif
}

/* ---------------------------------------------------------------------------
 * TLS library calls (uprobes). Attached by user space to every OpenSSL-like
 * library or binary and every Go binary it finds (see src/capture/tls.rs).
 * ------------------------------------------------------------------------- */

/* Plaintext is copied straight into a ring-buffer reservation: uprobe programs
 * can be preempted, so they must not share the per-CPU scratch buffer with the
 * socket-layer programs. Reservations come in a few sizes to waste little room. */
struct tls_emit {
	__u64 cookie;
	__u64 start_ns;
	__u64 now;
	__u64 seq;
	__u64 buf;
	__s64 n;
	__s64 want;
	__s32 fd;
	__u8 dir;
	__u8 sys;
};

static __always_inline bool tls_allowed(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;

	if (tgid == self_tgid)
		return false;
	if (!pid_allowed(tgid))
		return false;
	if (filter_cgroup && !cgroup_allowed(bpf_get_current_cgroup_id()))
		return false;
	return true;
}

static __always_inline int emit_plain_room(const struct tls_emit *x, const __u32 room)
{
	struct alog_data_event *e;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	long n;

	e = bpf_ringbuf_reserve(&events, sizeof(*e) + room, 0);
	if (!e)
		return -1;
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.kind = ALOG_EV_DATA;
	e->cookie = x->cookie;
	e->ts_ns = x->now;
	e->start_ns = x->start_ns;
	e->seq = x->seq;
	e->ret = x->n;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->tgid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->fd = x->fd;
	e->dir = x->dir;
	e->syscall = x->sys;
	e->flags = ALOG_DATA_TLS;
	process_comm(e->comm);
	n = x->want;
	if (n > room)
		n = room;
	barrier_var(n);
	if (n > 0 && n <= room) {
		if (bpf_probe_read_user(e->payload, n, (const void *)x->buf)) {
			count(ALOG_CNT_READ_FAULT);
			n = 0;
		}
	} else {
		n = 0;
	}
	e->cap_len = n;
	bpf_ringbuf_submit(e, rb_flags());
	return 0;
}

static __always_inline void emit_plain(const struct tls_emit *x)
{
	int err;

	if (x->want <= 256)
		err = emit_plain_room(x, 256);
	else if (x->want <= 1024)
		err = emit_plain_room(x, 1024);
	else if (x->want <= 4096)
		err = emit_plain_room(x, 4096);
	else
		err = emit_plain_room(x, ALOG_MAX_CAPTURE);
	if (err) {
		count(ALOG_CNT_DROP_DATA);
		return;
	}
	count(ALOG_CNT_DATA_EVENTS);
	count(ALOG_CNT_TLS_PLAINTEXT);
}

/* Remember the socket an SSL object (or tls.Conn) uses. */
static __always_inline void learn_socket(__u32 tgid, const struct tls_call *c)
{
	struct ssl_key k = {};
	struct ssl_sock v = {};
	struct ssl_sock *old;

	k.tgid = tgid;
	k.ptr = c->ssl;
	old = bpf_map_lookup_elem(&ssl_socks, &k);
	if (old && old->cookie == c->cookie && old->fd == c->fd && old->ignored == c->ignored)
		return;
	v.cookie = c->cookie;
	v.fd = c->fd;
	v.ignored = c->ignored;
	bpf_map_update_elem(&ssl_socks, &k, &v, BPF_ANY);
}

static __always_inline void tls_enter(const struct tls_key *k, __u64 ssl, __u64 buf, __u64 num,
				      __u64 arg4, __u8 op)
{
	struct tls_call c = {};

	c.ssl = ssl;
	c.buf = buf;
	c.num = num;
	c.arg4 = arg4;
	c.start_ns = bpf_ktime_get_ns();
	c.fd = -1;
	c.op = op;
	/* A handshake run inside a read or write belongs to that call. */
	bpf_map_update_elem(&tls_calls, k, &c, op == TLS_OP_HS ? BPF_NOEXIST : BPF_ANY);
}

static __always_inline void tls_hs_return(const struct tls_key *k)
{
	struct tls_call *c = bpf_map_lookup_elem(&tls_calls, k);

	if (!c || c->op != TLS_OP_HS)
		return;
	if (c->cookie)
		learn_socket(k->tgid, c);
	bpf_map_delete_elem(&tls_calls, k);
}

/* How a call reports the bytes it moved. */
enum tls_ret_mode {
	TLS_RET_COUNT = 0,    /* the return value is the byte count */
	TLS_RET_EX = 1,       /* returns > 0, count through the size_t * in arg4 */
	TLS_RET_SENDFILE = 2, /* byte count, plaintext came from a file: no payload */
};

static __always_inline void tls_return(const struct tls_key *k, __s64 ret, __u8 mode, __u8 dir,
				       __u8 sys)
{
	struct tls_call *cp = bpf_map_lookup_elem(&tls_calls, k);
	struct tls_emit x = {};
	struct tls_sock *ts;
	struct tls_call c;
	__s64 n = ret;

	if (!cp || cp->op != TLS_OP_RW)
		return;
	c = *cp;
	bpf_map_delete_elem(&tls_calls, k);

	if (mode == TLS_RET_EX) {
		__u64 done = 0;

		n = 0;
		/* The _ex wrappers return 1, the internal functions any positive value. */
		if (ret > 0) {
			if (c.arg4 && !bpf_probe_read_user(&done, sizeof(done), (const void *)c.arg4))
				n = done;
			else if (dir == ALOG_DIR_EGRESS)
				n = c.num; /* SSL_write_ex succeeds only whole */
		}
	}

	if (c.cookie) {
		learn_socket(k->tgid, &c);
	} else {
		/* Served from the library's buffer: no socket call in this one. */
		struct ssl_key sk = {};
		struct ssl_sock *m;

		sk.tgid = k->tgid;
		sk.ptr = c.ssl;
		m = bpf_map_lookup_elem(&ssl_socks, &sk);
		if (m) {
			c.cookie = m->cookie;
			c.fd = m->fd;
			c.ignored = m->ignored;
		}
	}
	if (n <= 0)
		return;
	if (c.ignored) {
		count(ALOG_CNT_FILTERED);
		return;
	}
	ts = c.cookie ? bpf_map_lookup_elem(&tls_socks, &c.cookie) : 0;
	if (!ts) {
		count(ALOG_CNT_TLS_UNATTRIBUTED);
		return;
	}
	x.cookie = c.cookie;
	x.start_ns = c.start_ns;
	x.now = bpf_ktime_get_ns();
	x.seq = ts->seq++;
	x.buf = c.buf;
	x.n = n;
	x.want = mode == TLS_RET_SENDFILE ? 0 : (n < capture_bytes ? n : capture_bytes);
	x.fd = c.fd;
	x.dir = dir;
	x.sys = sys;
	emit_plain(&x);
}

static __always_inline void thread_key(struct tls_key *k, __u64 pid_tgid)
{
	k->tgid = pid_tgid >> 32;
	k->kind = TLS_KEY_THREAD;
	k->id = (__u32)pid_tgid;
}

/* OpenSSL / BoringSSL / LibreSSL: SSL_read, SSL_write (ssl, buf, num),
 * SSL_read_ex, SSL_write_ex (ssl, buf, num, size_t *processed), SSL_sendfile. */
SEC("uprobe")
int BPF_KPROBE(ssl_enter, void *ssl, void *buf, __u64 num, void *arg4)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_key k = {};

	if (!tls_allowed(pid_tgid))
		return 0;
	thread_key(&k, pid_tgid);
	tls_enter(&k, (__u64)ssl, (__u64)buf, num, (__u64)arg4, TLS_OP_RW);
	return 0;
}

/* SSL_do_handshake (SSL_connect and SSL_accept run it): ties the SSL object to
 * its socket and marks the socket TLS before any application data. */
SEC("uprobe")
int BPF_KPROBE(ssl_hs_enter, void *ssl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_key k = {};

	if (!tls_allowed(pid_tgid))
		return 0;
	thread_key(&k, pid_tgid);
	tls_enter(&k, (__u64)ssl, 0, 0, 0, TLS_OP_HS);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_hs_ret)
{
	struct tls_key k = {};

	thread_key(&k, bpf_get_current_pid_tgid());
	tls_hs_return(&k);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_read_ret, int ret)
{
	struct tls_key k = {};

	thread_key(&k, bpf_get_current_pid_tgid());
	tls_return(&k, ret, TLS_RET_COUNT, ALOG_DIR_INGRESS, ALOG_SYS_SSL_READ);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_read_ex_ret, int ret)
{
	struct tls_key k = {};

	thread_key(&k, bpf_get_current_pid_tgid());
	tls_return(&k, ret, TLS_RET_EX, ALOG_DIR_INGRESS, ALOG_SYS_SSL_READ);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_write_ret, int ret)
{
	struct tls_key k = {};

	thread_key(&k, bpf_get_current_pid_tgid());
	tls_return(&k, ret, TLS_RET_COUNT, ALOG_DIR_EGRESS, ALOG_SYS_SSL_WRITE);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_write_ex_ret, int ret)
{
	struct tls_key k = {};

	thread_key(&k, bpf_get_current_pid_tgid());
	tls_return(&k, ret, TLS_RET_EX, ALOG_DIR_EGRESS, ALOG_SYS_SSL_WRITE);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_sendfile_ret, long ret)
{
	struct tls_key k = {};

	thread_key(&k, bpf_get_current_pid_tgid());
	tls_return(&k, ret, TLS_RET_SENDFILE, ALOG_DIR_EGRESS, ALOG_SYS_SSL_WRITE);
	return 0;
}

/*
 * Go crypto/tls, register ABI (Go >= 1.17, amd64): on entry RAX = *Conn,
 * RBX = b.ptr, RCX = b.len; at return RAX = n. R14 = current goroutine (g).
 * Returns are uprobes on each RET instruction (uretprobes break Go's movable
 * stacks).
 */
static __always_inline void go_key(struct tls_key *k, const struct pt_regs *ctx)
{
	k->tgid = bpf_get_current_pid_tgid() >> 32;
	k->kind = TLS_KEY_GOROUTINE;
#if defined(__TARGET_ARCH_x86)
	k->id = ctx->r14;
#else
	k->id = 0; /* other architectures: not probed (user space attaches x86-64 only) */
#endif
}

/* Go register ABI arguments and results (x86-64). */
#if defined(__TARGET_ARCH_x86)
#define GO_ARG1(ctx) ((ctx)->ax)
#define GO_ARG2(ctx) ((ctx)->bx)
#define GO_ARG3(ctx) ((ctx)->cx)
#define GO_RET1(ctx) ((ctx)->ax)
#else
#define GO_ARG1(ctx) 0
#define GO_ARG2(ctx) 0
#define GO_ARG3(ctx) 0
#define GO_RET1(ctx) 0
#endif

static __always_inline void go_enter(const struct pt_regs *ctx, __u8 op)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_key k = {};
	__u32 tgid = pid_tgid >> 32;
	__u8 one = 1;

	if (!tls_allowed(pid_tgid))
		return;
	go_key(&k, ctx);
	if (!k.id)
		return;
	if (!go_tls_seen)
		go_tls_seen = 1;
	if (!bpf_map_lookup_elem(&go_procs, &tgid))
		bpf_map_update_elem(&go_procs, &tgid, &one, BPF_ANY);
	tls_enter(&k, GO_ARG1(ctx), GO_ARG2(ctx), GO_ARG3(ctx), 0, op);
}

SEC("uprobe")
int go_tls_enter(struct pt_regs *ctx)
{
	go_enter(ctx, TLS_OP_RW);
	return 0;
}

SEC("uprobe")
int go_tls_hs_enter(struct pt_regs *ctx)
{
	go_enter(ctx, TLS_OP_HS);
	return 0;
}

SEC("uprobe")
int go_tls_hs_ret(struct pt_regs *ctx)
{
	struct tls_key k = {};

	go_key(&k, ctx);
	tls_hs_return(&k);
	return 0;
}

SEC("uprobe")
int go_tls_read_ret(struct pt_regs *ctx)
{
	struct tls_key k = {};

	go_key(&k, ctx);
	tls_return(&k, (__s64)GO_RET1(ctx), TLS_RET_COUNT, ALOG_DIR_INGRESS, ALOG_SYS_GO_TLS_READ);
	return 0;
}

SEC("uprobe")
int go_tls_write_ret(struct pt_regs *ctx)
{
	struct tls_key k = {};

	go_key(&k, ctx);
	tls_return(&k, (__s64)GO_RET1(ctx), TLS_RET_COUNT, ALOG_DIR_EGRESS, ALOG_SYS_GO_TLS_WRITE);
	return 0;
}

/* A new program image: user space looks for TLS code in it. Rare enough to wake
 * the reader at once, which shortens the time a new binary runs unprobed. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct alog_exec_event *e;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u64 cg;

	if (tgid == self_tgid || !pid_allowed(tgid))
		return 0;
	cg = bpf_get_current_cgroup_id();
	if (!cgroup_allowed(cg))
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(ALOG_CNT_DROP_EXEC);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.kind = ALOG_EV_EXEC;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = cg;
	e->pid = tgid;
	e->old_pid = old_pid;
	/* Identity and path of the executable: a process that exits before user space
	 * looks at /proc/PID can still have its binary found and probed. */
	e->ino = BPF_CORE_READ(bprm, file, f_inode, i_ino);
	e->dev = BPF_CORE_READ(bprm, file, f_inode, i_sb, s_dev);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	process_comm(e->comm);
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}
