// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * probe.bpf.c: tiny programs with which `k8s-alog doctor` finds out, for real,
 * which BPF program types this kernel loads and attaches. User space loads one
 * program at a time (a refused one must not take the others down), attaches it,
 * makes it fire (a loopback TCP connect, a call to a function of its own), and
 * looks for the hit it left in `hits` (or, for the ring buffer, for the record
 * it submitted).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Indices into hits; the same order as doctor's probe list. */
#define PROBE_TRACEPOINT 0
#define PROBE_RAW_TP 1
#define PROBE_TP_BTF 2
#define PROBE_UPROBE 3
#define PROBE_RINGBUF 4
#define PROBE_FENTRY 5
#define PROBE_KPROBE 6
#define PROBE_COUNT 8

/* The process doctor runs in: only its own triggers count. */
const volatile __u32 target_tgid = 0;

__u64 hits[PROBE_COUNT] = {};

struct probe_record {
	__u32 tgid;
	__u32 magic;
};
/* Dummy instance: the record's type in BTF, for the skeleton. */
struct probe_record _probe_record = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ring SEC(".maps");

static __always_inline int hit(int probe)
{
	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	if (probe >= 0 && probe < PROBE_COUNT)
		__sync_fetch_and_add(&hits[probe], 1);
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int p_tracepoint(void *ctx)
{
	return hit(PROBE_TRACEPOINT);
}

SEC("raw_tp/inet_sock_set_state")
int p_raw_tp(void *ctx)
{
	return hit(PROBE_RAW_TP);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(p_tp_btf, const struct sock *sk, int oldstate, int newstate)
{
	return hit(PROBE_TP_BTF);
}

SEC("uprobe")
int p_uprobe(struct pt_regs *ctx)
{
	return hit(PROBE_UPROBE);
}

/* The ring buffer, from the most widely available attach point. */
SEC("raw_tp/inet_sock_set_state")
int p_ringbuf(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct probe_record *r;

	if (tgid != target_tgid)
		return 0;
	r = bpf_ringbuf_reserve(&probe_ring, sizeof(*r), 0);
	if (!r)
		return 0;
	r->tgid = tgid;
	r->magic = 0xa10c;
	bpf_ringbuf_submit(r, 0);
	return hit(PROBE_RINGBUF);
}

SEC("fentry/tcp_v4_connect")
int BPF_PROG(p_fentry, struct sock *sk)
{
	return hit(PROBE_FENTRY);
}

SEC("kprobe/tcp_v4_connect")
int p_kprobe(struct pt_regs *ctx)
{
	return hit(PROBE_KPROBE);
}
