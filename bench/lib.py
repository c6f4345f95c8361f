#!/usr/bin/env python3
"""Helpers for bench/run.sh: snapshots of /proc and BPF program statistics, parsing of each
arm's outputs, and the final report. Standard library only.

Subcommands (each prints one JSON object unless noted):
  proc PID                  CPU (utime+stime, ms) and VmHWM/VmRSS (KiB) of PID and its descendants
  bpf PID NAMES             run_time_ns/run_cnt summed over the BPF programs PID holds open whose
                            name is in NAMES (comma-separated, names longer than the kernel's 15
                            characters match their cut; * for all of them), by name;
                            needs kernel.bpf_stats_enabled=1
  snap PHASE PID NAMES NGINX_PID  start/end-of-load snapshot (see cmd_snap)
  wrk FILE                  the JSON line printed by bench/wrk.lua's done()
  alog FILE                 k8s-alog JSONL: http records with a status, lost counters, ...
  tshark OUT ERR            decoded requests/responses in tshark's field output
  arm DIR                   merge an arm's snapshot files into DIR/result.json
  errline FILE              the first line of FILE that reads as an error (text, not JSON)
  report RESULTS_DIR OUT    print the table and the goals; write them to OUT too (raw results: OUT.json)
  rereport OUT.json OUT2    the same report again from saved raw results
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
BPF_OBJ_NAME = 15  # characters of a BPF program's name the kernel keeps


# --------------------------------------------------------------------------- snapshots

def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # comm may hold spaces or parentheses: split after the last ')'.
    rest = s[s.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14, stime 15, ppid field 4.
    return int(rest[1]), int(rest[11]) + int(rest[12])


def _status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid, _ = _stat(d)
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [int(pid)]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cmd_proc(pid):
    cpu = hwm = rss = 0
    pids = []
    for p in tree(pid):
        try:
            _, ticks = _stat(p)
        except (OSError, ValueError):
            continue
        pids.append(p)
        cpu += ticks
        hwm += _status_kb(p, "VmHWM")
        rss += _status_kb(p, "VmRSS")
    return {"cpu_ms": cpu * 1000.0 / CLK_TCK, "hwm_kb": hwm, "rss_kb": rss, "pids": pids}


def prog_ids(pid):
    ids = set()
    for p in tree(pid):
        d = f"/proc/{p}/fdinfo"
        try:
            fds = os.listdir(d)
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"{d}/{fd}") as f:
                    for line in f:
                        if line.startswith("prog_id:"):
                            ids.add(int(line.split()[1]))
            except OSError:
                pass
    return ids


def cmd_bpf(pid, names):
    names = None if names in ("*", "all") else {m for n in names.split(",") for m in (n, n[:BPF_OBJ_NAME])}
    ids = prog_ids(pid)
    progs = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], check=True,
                                      capture_output=True, text=True).stdout)
    rt = cnt = 0
    found = {}
    for p in progs:
        if p.get("id") in ids and (names is None or p.get("name") in names):
            rt += p.get("run_time_ns", 0)
            cnt += p.get("run_cnt", 0)
            f = found.setdefault(p.get("name", str(p["id"])), {"run_time_ns": 0, "run_cnt": 0})
            f["run_time_ns"] += p.get("run_time_ns", 0)
            f["run_cnt"] += p.get("run_cnt", 0)
    return {"run_time_ns": rt, "run_cnt": cnt, "progs": found}


def proc_stat():
    """Machine-wide CPU time from /proc/stat, ms: busy (everything but idle/iowait) and steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    k = 1000.0 / CLK_TCK
    return {"busy_ms": (user + nice + system + irq + softirq) * k, "steal_ms": steal * k,
            "idle_ms": (idle + iowait) * k}


def cpu_ms(pid):
    try:
        return cmd_proc(pid)["cpu_ms"] if pid else 0.0
    except OSError:
        return 0.0


def cmd_snap(phase, pid, names, nginx_pid, outfile=""):
    """Snapshot around the load. start: capture process, BPF, machine CPU (in that order, so the
    machine-wide figures are the closest to the load). end: machine CPU, nginx and capture CPU
    and BPF first (the load window), then wait (at most 3 s) until the capture process stops
    using CPU (it finishes what the load queued; tshark lags) and take its CPU and RSS."""
    pid = int(pid) if pid not in ("", "0", "-") else 0
    r = {"phase": phase}
    if phase == "start":
        if pid:
            r["proc"] = cmd_proc(pid)
            if names:
                r["bpf"] = cmd_bpf(pid, names)
        r["nginx_cpu_ms"] = cpu_ms(nginx_pid)
        r["t"] = time.monotonic()
        r["stat"] = proc_stat()
        return r
    r["t"] = time.monotonic()
    r["stat"] = proc_stat()
    r["nginx_cpu_ms"] = cpu_ms(nginx_pid)
    if pid:
        r["proc_load_end"] = cmd_proc(pid)
        if names:
            r["bpf"] = cmd_bpf(pid, names)
        a = r["proc_load_end"]["cpu_ms"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            time.sleep(0.25)
            b = cpu_ms(pid)
            if b - a <= 10:
                break
            a = b
        r["settle_s"] = time.monotonic() - t0
        r["proc"] = cmd_proc(pid)
        # what the capture had written by now (its timely records), before it is stopped
        if outfile.endswith(".jsonl") and os.path.exists(outfile):
            r["timely_records"] = cmd_alog(outfile)["records"]
        elif outfile and os.path.exists(outfile):
            r["timely_records"] = cmd_tshark(outfile, "/dev/null")["records"]
    return r


def children_cpu_ms(path):
    """The children line of bash's `times` output (user and system), ms."""
    with open(path) as f:
        lines = f.read().split("\n")
    tot = 0.0
    for m in re.finditer(r"(\d+)m([\d.]+)s", lines[1] if len(lines) > 1 else ""):
        tot += (int(m.group(1)) * 60 + float(m.group(2))) * 1000
    return tot


# --------------------------------------------------------------------------- outputs

def cmd_wrk(path):
    res = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{") and '"requests"' in line:
                res = json.loads(line)
    if res is None:
        raise SystemExit(f"no wrk summary in {path}")
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    return res


LOST_KEYS = ["ringbuf_data_events", "ringbuf_conn_events", "kernel_storage", "bad_records",
             "sequence_gaps", "evicted_connections"]


def cmd_alog(path):
    http = with_status = partial = conns = bad = tls_conns = 0
    no_status_notes = {}
    last_stats = None
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b'{"kind":"http"'):
                http += 1
                if b'"status":' in line:
                    with_status += 1
                else:
                    m = re.search(rb'"notes":\[([^\]]*)\]', line)
                    k = m.group(1).decode() if m else "none"
                    no_status_notes[k] = no_status_notes.get(k, 0) + 1
                if b'"partial":true' in line:
                    partial += 1
            elif line.startswith(b'{"kind":"connection"'):
                conns += 1
                if b'"tls":true' in line:
                    tls_conns += 1
            elif line.startswith(b'{"kind":"stats"'):
                last_stats = line
            elif line.strip():
                bad += 1
    out = {"http": http, "records": with_status, "partial": partial, "connections": conns,
           "bad_lines": bad, "stats_found": last_stats is not None, "lost": 0, "lost_by": {},
           "tls_connections": tls_conns, "no_status_notes": no_status_notes}
    if last_stats is not None:
        st = json.loads(last_stats)
        lost = st.get("lost", {})
        out["lost_by"] = lost
        out["lost"] = sum(v for v in lost.values() if isinstance(v, (int, float)))
        out["kernel"] = st.get("kernel", {})
        out["user"] = st.get("user", {})
        out["hooks"] = st.get("hooks")
    return out


def cmd_tshark(out, err):
    req = resp = 0
    with open(out, errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts and parts[0].strip():
                req += 1
            if len(parts) > 1 and parts[1].strip():
                resp += 1
    dropped = None
    try:
        with open(err, errors="replace") as f:
            for m in re.finditer(r"(\d+) packets? dropped", f.read()):
                dropped = (dropped or 0) + int(m.group(1))
    except OSError:
        pass
    return {"requests_decoded": req, "responses_decoded": resp,
            "records": min(req, resp), "lost": dropped}


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cmd_arm(d):
    """Merge the snapshot files an arm left in d into d/result.json."""
    meta = {}
    with open(os.path.join(d, "meta")) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    r = {"workload": meta["workload"], "arm": meta["arm"], "round": int(meta["round"]),
         "error": meta.get("error", "")}
    if meta.get("unavailable") is not None:
        # the kernel refused it (e.g. a k8s-alog rung this kernel does not allow): not run
        r["unavailable"] = meta["unavailable"]
        r["exit_code"] = int(meta["exit_code"]) if meta.get("exit_code", "").isdigit() else None
        with open(os.path.join(d, "result.json"), "w") as f:
            json.dump(r, f)
        return r

    for k in ("made", "made_other", "attach_ms", "exit_code", "attach_ms_self", "drain_ms"):
        if meta.get(k, "") != "":
            r[k] = float(meta[k]) if "." in meta[k] else int(meta[k])
    try:
        w = cmd_wrk(os.path.join(d, "wrk.out"))
        r.update({"rps": w["rps"], "p99_us": w["p99_us"], "p50_us": w["p50_us"],
                  "wrk_requests": w["requests"], "wrk_errors": w["errors"]})
    except (OSError, SystemExit) as e:
        r["error"] = (r["error"] + " " if r["error"] else "") + f"wrk: {e}"
    s0, s1 = _load(os.path.join(d, "snap0.json")), _load(os.path.join(d, "snap1.json"))
    if s0 and s1:
        wall = s1["t"] - s0["t"]
        ncpu = os.cpu_count() or 1
        busy = s1["stat"]["busy_ms"] - s0["stat"]["busy_ms"]
        ours = s1["nginx_cpu_ms"] - s0["nginx_cpu_ms"]
        try:
            wrk_ms = children_cpu_ms(os.path.join(d, "times1")) - children_cpu_ms(os.path.join(d, "times0"))
        except OSError:
            wrk_ms = 0.0
        ours += wrk_ms
        if "proc" in s0 and "proc_load_end" in s1:
            ours += s1["proc_load_end"]["cpu_ms"] - s0["proc"]["cpu_ms"]
        r["wall_s"] = wall
        r["nginx_cores"] = (s1["nginx_cpu_ms"] - s0["nginx_cpu_ms"]) / 1000 / wall if wall > 0 else None
        r["wrk_cores"] = wrk_ms / 1000 / wall if wall > 0 else None
        # CPU used by anything else on the machine during the load (other users, kernel threads)
        r["other_pct"] = max(0.0, busy - ours) / (wall * 1000 * ncpu) * 100 if wall > 0 else None
        r["steal_pct"] = (s1["stat"]["steal_ms"] - s0["stat"]["steal_ms"]) / (wall * 1000 * ncpu) * 100 if wall > 0 else None
        if "proc" in s0 and "proc" in s1:
            # CPU of the capture tree from the start of the load until it exited (the wrapper's
            # `times`: includes what it did after SIGINT, e.g. tshark draining its backlog);
            # without that file, until it went idle after the load (at most 3 s)
            r["cpu_ms_settled"] = s1["proc"]["cpu_ms"] - s0["proc"]["cpu_ms"]
            r["cpu_ms_load"] = s1["proc_load_end"]["cpu_ms"] - s0["proc"]["cpu_ms"]
            r["cpu_ms"] = r["cpu_ms_settled"]
            try:
                total = children_cpu_ms(os.path.join(d, "cap.times"))
                if total > 0:
                    r["cpu_ms_lifetime"] = total
                    r["cpu_ms"] = total - s0["proc"]["cpu_ms"]
            except OSError:
                pass
            r["hwm_kb"] = s1["proc"]["hwm_kb"]
            r["settle_s"] = s1.get("settle_s")
            if "timely_records" in s1:
                r["timely_records"] = s1["timely_records"]
    b0, b1 = (s0 or {}).get("bpf"), (s1 or {}).get("bpf")
    if b0 and b1 and b1["progs"]:
        r["bpf_ns"] = b1["run_time_ns"] - b0["run_time_ns"]
        r["bpf_cnt"] = b1["run_cnt"] - b0["run_cnt"]
        r["bpf_progs"] = sorted(b1["progs"])
        r["bpf_by_prog"] = {n: {"ns": b1["progs"][n]["run_time_ns"] - b0["progs"].get(n, {}).get("run_time_ns", 0),
                                "cnt": b1["progs"][n]["run_cnt"] - b0["progs"].get(n, {}).get("run_cnt", 0)}
                            for n in b1["progs"]}
    if is_alog(meta["arm"]) and os.path.exists(os.path.join(d, "out.jsonl")):
        a = cmd_alog(os.path.join(d, "out.jsonl"))
        r.update({"records": a["records"], "lost": a["lost"], "lost_by": a["lost_by"],
                  "http": a["http"], "partial": a["partial"], "stats_found": a["stats_found"],
                  "connections": a["connections"], "bad_lines": a["bad_lines"],
                  "tls_connections": a["tls_connections"], "no_status_notes": a["no_status_notes"],
                  "kernel": a.get("kernel", {}), "user": a.get("user", {}), "hooks": a.get("hooks")})
    if meta["arm"] == "tshark" and os.path.exists(os.path.join(d, "ts.out")):
        t = cmd_tshark(os.path.join(d, "ts.out"), os.path.join(d, "err"))
        r.update({"records": t["records"], "lost": t["lost"],
                  "requests_decoded": t["requests_decoded"],
                  "responses_decoded": t["responses_decoded"]})
    with open(os.path.join(d, "result.json"), "w") as f:
        json.dump(r, f)
    return r


def cmd_errline(path):
    """The first line of an arm's stderr that reads as its error: k8s-alog's 'k8s-alog: ...'
    or an 'error' line (bpftrace's RLIMIT_MEMLOCK warning and log lines skipped); failing
    that, its last line."""
    with open(path, errors="replace") as f:
        lines = [l.strip() for l in f if l.strip()]
    for l in lines:
        if "RLIMIT_MEMLOCK" in l:
            continue
        if l.startswith("k8s-alog:") or re.match(r"(?i)(fatal|error)\b", l):
            return l
    return lines[-1] if lines else "(no message)"


def is_alog(arm):
    return arm == "k8s-alog" or arm.startswith("k8s-alog:")


def arm_line(r):
    """One human line for the progress log."""
    s = "%-10s r%d %-19s" % (r["workload"], r["round"], r["arm"])
    if r.get("unavailable"):
        return s + " skipped: not available on this kernel: " + r["unavailable"]
    if r.get("rps"):
        s += " %7.0f req/s p99 %6.2f ms" % (r["rps"], r["p99_us"] / 1000)
    if r.get("attach_ms") is not None:
        s += " | ready %d ms" % r["attach_ms"]
    if r.get("cpu_ms") is not None and r.get("made"):
        s += " cpu %.2f us/req" % (r["cpu_ms"] / r["made"] * 1000)
    if r.get("bpf_ns") is not None and r.get("made"):
        s += " bpf %.2f us/req" % (r["bpf_ns"] / r["made"] / 1000)
    if r.get("hwm_kb"):
        s += " hwm %.1f MiB" % (r["hwm_kb"] / 1024)
    if is_alog(r["arm"]) or r["arm"] == "tshark":
        s += " | made %s records %s lost %s" % (r.get("made"), r.get("records"), r.get("lost"))
        if is_alog(r["arm"]):
            c = check_completeness(r)
            s += " " + ("*** MISMATCH ***" if c == "MISMATCH" else c)
            if r.get("hooks"):
                s += " hooks " + hooks_text(r["hooks"])
    if r.get("error"):
        s += " | ERROR " + r["error"]
    return s


# --------------------------------------------------------------------------- report

ARMS = ["baseline", "floor:syscalls", "floor:tracepoint", "floor:syscall", "k8s-alog",
        "k8s-alog:tracepoint", "k8s-alog:fentry", "k8s-alog:kprobe", "k8s-alog:syscall", "tshark"]
ARM_TITLES = {
    "baseline": "no capture",
    "floor:syscalls": "bpftrace, empty programs on raw_syscalls:sys_enter+sys_exit",
    "floor:tracepoint": "bpftrace, empty programs on sock:sock_send_length, sock:sock_recv_length, "
                        "sock:inet_sock_set_state, tcp:tcp_sendmsg_locked, tcp:tcp_send_reset, tcp:tcp_receive_reset",
    "floor:syscall": "bpftrace, empty programs on raw_syscalls:sys_exit, sock:inet_sock_set_state, "
                     "tcp:tcp_send_reset, tcp:tcp_receive_reset",
    "k8s-alog": "record --port, hooks chosen by k8s-alog (auto)",
    "tshark": "-i lo, -Y http, fields",
}
RUNGS = ["tracepoint", "fentry", "kprobe", "syscall"]  # k8s-alog's rungs, in the order auto tries them
RUNG_FLOOR = {"tracepoint": "floor:tracepoint", "syscall": "floor:syscall"}  # same-hook floors
WORKLOAD_TITLES = {
    "saturation": "keep-alive, saturation (wrk -t2 -c32)",
    "rate5k": "keep-alive, fixed 5,000 req/s",
    "rate20k": "keep-alive, fixed 20,000 req/s",
    "churn": "connection churn (Connection: close)",
    "https": "HTTPS keep-alive, saturation",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec="{:.2f}", none="-"):
    return none if x is None else spec.format(x)


def hooks_text(h):
    """A stats record's "hooks" as k8s-alog says it: one rung, or each hook's."""
    if not h:
        return "-"
    name = lambda v: v or "none"
    if h.get("send") == h.get("recv") == h.get("send_start"):
        return name(h.get("send"))
    return "send %s, recv %s, start %s" % (name(h.get("send")), name(h.get("recv")), name(h.get("send_start")))


def arm_title(arm):
    if arm.startswith("k8s-alog:"):
        return "record --port, K8S_ALOG_HOOKS=%s" % arm.split(":", 1)[1]
    return ARM_TITLES.get(arm, "")


def floor_of(arm, run=None, have=()):
    """The floor an arm's /floor ratios are against: a k8s-alog rung's same-hook floor (auto:
    that of the rung its run reports for send, when that floor is among the arms in HAVE); the
    raw_syscalls floor for the others."""
    if arm.startswith("k8s-alog:"):
        return RUNG_FLOOR.get(arm.split(":", 1)[1])
    if arm == "k8s-alog" and run and run.get("hooks"):
        f = RUNG_FLOOR.get(run["hooks"].get("send"))
        if f in have:
            return f
    return "floor:syscalls"


def check_completeness(r):
    """'OK', 'LOSS counted', or 'MISMATCH' for one k8s-alog arm."""
    made, rec, lost = r.get("made"), r.get("records"), r.get("lost")
    if made is None or rec is None:
        return "MISMATCH"
    if not r.get("stats_found", False):
        return "MISMATCH"
    if rec == made:
        return "OK"
    if rec < made and lost and made - rec <= lost:
        return "LOSS counted"
    return "MISMATCH"


def report(results_dir, out_path, meta, rs=None):
    if rs is None:
        rs = load_results(results_dir)
    _report(rs, out_path, meta)


def load_results(results_dir):
    rs = []
    for name in sorted(os.listdir(results_dir)):
        j = _load(os.path.join(results_dir, name, "result.json"))
        if j:
            try:
                with open(os.path.join(results_dir, name, "meta")) as f:
                    for line in f:
                        if line.startswith("phase_s="):
                            j["phase_ms"] = [int(x) for x in line.split("=", 1)[1].split()]
            except OSError:
                pass
            rs.append(j)
    return rs


def alog_detail(k, arm, r):
    """The per-round detail line of a k8s-alog arm: completeness, losses by cause, BPF per program."""
    extra = ""
    if r.get("lost_by"):
        nz = {k2: v for k2, v in r["lost_by"].items() if v}
        if nz:
            extra = " lost by cause %s" % json.dumps(nz)
    if r.get("partial"):
        extra += " partial %d" % r["partial"]
    if r.get("http", 0) != r.get("records", 0):
        extra += " http records without status %d (notes: %s)" % (
            r.get("http", 0) - r.get("records", 0),
            ", ".join("%s x%d" % (k2, v) for k2, v in sorted(r.get("no_status_notes", {}).items())))
    if r.get("tls_connections"):
        extra += " connections with tls=true %d of %d" % (r["tls_connections"], r.get("connections", 0))
    kn = r.get("kernel", {})
    if kn.get("drop_data_ringbuf") or kn.get("drop_conn_ringbuf"):
        extra += " kernel ringbuf drops data %s conn %s" % (kn.get("drop_data_ringbuf"), kn.get("drop_conn_ringbuf"))
    if r.get("exit_code", 0) != 0:
        extra += " EXIT CODE %s" % r.get("exit_code")
    if r.get("hooks"):
        extra += " hooks %s" % hooks_text(r["hooks"])
    bp = r.get("bpf_by_prog")
    bps = ""
    if bp and r.get("made"):
        bps = " bpf/req " + " ".join("%s=%.2fus(%.1f/req)" % (n, v["ns"] / r["made"] / 1000, v["cnt"] / r["made"])
                                    for n, v in sorted(bp.items()) if v["cnt"])
    if kn and r.get("made"):
        bps += " | kernel events/req: data %.2f conn %.2f" % (
            kn.get("data_events", 0) / r["made"], kn.get("conn_events", 0) / r["made"])
    return "          round %d %s: made %s records %s lost %s -> %s%s%s" % (
        k, arm, r.get("made"), r.get("records"), r.get("lost"), check_completeness(r), extra, bps)


def rung_table(p, w, summary):
    """Per rung: the k8s-alog:RUNG arm next to its same-hook floor (and k8s-alog, auto, last)."""
    rows = [(g, "k8s-alog:" + g) for g in RUNGS] + [("auto", "k8s-alog")]
    rows = [(g, arm) for g, arm in rows if (w, arm) in summary]
    if not rows:
        return
    RR = "  {:<10} {:<16} {:>5} {:>6} {:>10} {:>6} {:>8} {:>9} {:>8} {:>7} {:>6}  {}"
    p("")
    p("  per rung: k8s-alog with that rung's hooks next to its same-hook floor")
    p(RR.format("rung", "floor", "runs", "/base", "floor/base", "/floor", "bpf us/r", "floor bpf", "cpu us/r",
                "RSS MiB", "lost", "hooks"))
    for g, arm in rows:
        s = summary[(w, arm)]
        if s.get("unavailable"):
            p("  {:<10} not available on this kernel: {}".format(g, s["unavailable"]))
            continue
        fl = s.get("floor")
        f = summary.get((w, fl), {}) if fl else {}
        p(RR.format(
            g, fl or "-", "%d/%d" % (s["ok"], s["runs"]), fmt(s["rps_base"]), fmt(f.get("rps_base")),
            fmt(s["rps_floor"]), fmt(s["bpf_us"]), fmt(f.get("bpf_us")), fmt(s["cpu_per_1k"]),
            fmt(s["rss_kb"] / 1024 if s["rss_kb"] else None, "{:.1f}"), fmt(s["lost"], "{}"),
            " / ".join(s["hooks"]) or "-"))


def _report(rs, out_path, meta):
    for r in rs:
        if r["arm"] == "floor":  # results saved before the floors were split
            r["arm"] = "floor:syscalls"
    workloads = [w for w in meta.get("workloads", WORKLOAD_TITLES) if any(r["workload"] == w for r in rs)]
    lines = []
    p = lines.append
    summary = {}  # (workload, arm) -> aggregates

    p("k8s-alog benchmark: %s" % meta.get("when", ""))
    p("binary: %s" % meta.get("binary", "?"))
    p("machine: %s; kernel %s; %s" % (meta.get("cpus", "?") + " CPUs", meta.get("kernel", "?"), meta.get("note", "")))
    p("arms per round, in rotating order:")
    for arm in ARMS:
        if any(r["arm"] == arm for r in rs):
            p("  %-19s %s" % (arm, arm_title(arm)))
    p("figures are medians over rounds; ratios are medians of per-round ratios (arms of one round run back to back); "
      "kernel.bpf_stats_enabled=1 during the whole run (every BPF arm pays its accounting)")
    p("/floor: against the arm's same-hook floor (k8s-alog:tracepoint -> floor:tracepoint, k8s-alog:syscall -> "
      "floor:syscall, k8s-alog -> that of the rung it ran on), else against floor:syscalls")
    p("")
    ROW = "{:<19} {:>5} {:>9} {:>6} {:>6} {:>8} {:>6} {:>6} {:>9} {:>8} {:>7} {:>7} {:>9} {:>9} {:>8} {:>7} {:>7} {:>6} {:>13}"
    hdr = ROW.format("arm", "runs", "req/s", "/base", "/floor", "p99 ms", "/base", "/floor", "cpu ms/1k",
                     "bpf us/r", "RSS MiB", "att. ms", "made", "records", "lost", "compl.", "in time", "other", "check")
    mismatches = []
    for w in workloads:
        p("== %s: %s" % (w, WORKLOAD_TITLES.get(w, w)))
        p(hdr)
        by_round = {}
        for r in rs:
            if r["workload"] == w:
                by_round.setdefault(r["round"], {})[r["arm"]] = r
        have = {r["arm"] for r in rs if r["workload"] == w and not r.get("unavailable")}
        for arm in ARMS:
            runs = [by_round[k][arm] for k in sorted(by_round) if arm in by_round[k]]
            if not runs:
                continue
            if all(r.get("unavailable") for r in runs):
                summary[(w, arm)] = dict(unavailable=runs[0]["unavailable"], runs=len(runs))
                p("{:<19} not available on this kernel: {}".format(arm, runs[0]["unavailable"]))
                continue
            runs = [r for r in runs if not r.get("unavailable")]
            ok = [r for r in runs if not r.get("error") and r.get("rps")]
            def ratio(key, ref):
                """ref: an arm, or None for each round's floor of this arm"""
                vals = []
                for k in sorted(by_round):
                    a = by_round[k].get(arm)
                    b = by_round[k].get(ref or floor_of(arm, a, have))
                    if a and b and a.get(key) and b.get(key) and not a.get("error") and not b.get("error"):
                        vals.append(a[key] / b[key])
                return med(vals)
            rps = med([r.get("rps") for r in ok])
            p99 = med([r.get("p99_us") for r in ok])
            cpu_per_1k = med([r["cpu_ms"] / r["made"] * 1000 for r in ok
                              if r.get("cpu_ms") is not None and r.get("made")])
            bpf_us = med([r["bpf_ns"] / r["made"] / 1000 for r in ok if r.get("bpf_ns") is not None and r.get("made")])
            rss = max([r["hwm_kb"] for r in ok if r.get("hwm_kb")], default=None)
            att = med([r.get("attach_ms") for r in ok])
            att_max = max([r["attach_ms"] for r in ok if r.get("attach_ms") is not None], default=None)
            made = sum(r.get("made", 0) for r in runs)
            records = lost = None
            compl = timely = None
            check = ""
            if is_alog(arm) or arm == "tshark":
                records = sum(r.get("records", 0) or 0 for r in runs)
                lost_vals = [r.get("lost") for r in runs]
                lost = None if all(v is None for v in lost_vals) else sum(v or 0 for v in lost_vals)
                compl = records / made if made else None
                timely = sum(r.get("timely_records", 0) or 0 for r in runs)
                timely = timely / made if made and any("timely_records" in r for r in runs) else None
                if is_alog(arm):
                    checks = [check_completeness(r) for r in runs]
                    check = "MISMATCH" if "MISMATCH" in checks else ("LOSS counted" if "LOSS counted" in checks else "OK")
                    if check == "MISMATCH":
                        mismatches.append((w, arm, runs))
            errors = [r["error"] for r in runs if r.get("error")]
            floors = [floor_of(arm, r, have) for r in runs]
            summary[(w, arm)] = dict(other=med([r.get("other_pct") for r in runs]), rps=rps, p99=p99, rps_base=ratio("rps", "baseline"),
                                     rps_floor=ratio("rps", None), p99_base=ratio("p99_us", "baseline"),
                                     p99_floor=ratio("p99_us", None), cpu_per_1k=cpu_per_1k, bpf_us=bpf_us,
                                     rss_kb=rss, attach_ms=att, attach_max=att_max, made=made, records=records,
                                     lost=lost, compl=compl, timely=timely, check=check, runs=len(runs), ok=len(ok),
                                     errors=errors, floor=max(set(floors), key=floors.count),
                                     hooks=sorted({hooks_text(r.get("hooks")) for r in runs if r.get("hooks")}))
            s = summary[(w, arm)]
            other = med([r.get("other_pct") for r in runs])
            p(ROW.format(
                arm, "%d/%d" % (len(ok), len(runs)), fmt(rps, "{:.0f}"),
                fmt(s["rps_base"]), fmt(s["rps_floor"]), fmt(p99 / 1000 if p99 else None, "{:.3f}"),
                fmt(s["p99_base"]), fmt(s["p99_floor"]), fmt(cpu_per_1k, "{:.1f}"), fmt(bpf_us, "{:.2f}"),
                fmt(rss / 1024 if rss else None, "{:.1f}"), fmt(att, "{:.0f}"),
                made, fmt(records, "{}"), fmt(lost, "{}"),
                fmt(compl * 100 if compl is not None else None, "{:.1f}%"),
                fmt(timely * 100 if timely is not None else None, "{:.1f}%"),
                fmt(other, "{:.0f}%"),
                ("*** MISMATCH ***" if check == "MISMATCH" else check) or "-"))
            for e in errors:
                p("          error: %s" % e)
        # per-round detail of the k8s-alog arms' completeness
        for k in sorted(by_round):
            for arm in [a for a in ARMS if is_alog(a)]:
                r = by_round[k].get(arm)
                if r and not r.get("unavailable"):
                    p(alog_detail(k, arm, r))
            t = by_round[k].get("tshark")
            if t and t.get("made"):
                p("          round %d tshark: decoded %s requests, %s responses; exited %.1f s after the load ended "
                  "(SIGINT at most 3 s after it); CPU during the load %.0f ms of %.0f ms%s" % (
                      k, t.get("requests_decoded"), t.get("responses_decoded"), (t.get("drain_ms") or 0) / 1000,
                      t.get("cpu_ms_load") or 0, t.get("cpu_ms") or 0,
                      "; dumpcap dropped %s packets" % t["lost"] if t.get("lost") else ""))
            for arm in [a for a in ARMS if a.startswith("floor:")]:
                f = by_round[k].get(arm)
                if f and f.get("bpf_cnt") and f.get("made"):
                    p("          round %d %s: %.1f program runs per request, %.0f ns per run (runs from every "
                      "process on the machine count)" % (k, arm, f["bpf_cnt"] / f["made"], f["bpf_ns"] / f["bpf_cnt"]))
        rung_table(p, w, summary)
        p("")

    if mismatches:
        p("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!")
        for w, arm, runs in mismatches:
            p("!!! MISMATCH in %s, %s: requests made (nginx log) != http records with status + counted losses" % (w, arm))
            for r in runs:
                p("!!!   round %d: made %s, records %s, lost %s, stats record %s" % (
                    r["round"], r.get("made"), r.get("records"), r.get("lost"),
                    "present" if r.get("stats_found") else "MISSING"))
        p("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!")
        p("")

    # ----------------------------------------------------------------- goals
    # judged on the k8s-alog arm (auto) when it ran, else on the first rung auto would take
    # among those measured; "floor" is that arm's same-hook floor
    measured = lambda arm: any((w, arm) in summary and not summary[(w, arm)].get("unavailable") for w in workloads)
    GA = next((a for a in ["k8s-alog"] + ["k8s-alog:" + g for g in RUNGS] if measured(a)), "k8s-alog")
    A = lambda w: summary.get((w, GA), {})
    T = lambda w: summary.get((w, "tshark"), {})
    F = lambda w: summary.get((w, A(w).get("floor")), {})
    p("Goals (arm %s; floor: %s)" % (GA, ", ".join(sorted({A(w)["floor"] for w in workloads if A(w).get("floor")})) or "-"))

    def goal(text, value, met):
        state = "n/a" if met is None else ("MET" if met else "MISSED")
        p("  %-7s %-62s %s" % (state, text, value))

    def rounds(w, key, ref):
        """per-round ratios of the goals' arm to REF (None: its floor), as text"""
        by = {}
        for r in rs:
            if r["workload"] == w and not r.get("error") and not r.get("unavailable"):
                by.setdefault(r["round"], {})[r["arm"]] = r
        have = {r["arm"] for r in rs if r["workload"] == w and not r.get("unavailable")}
        v = []
        for _, b in sorted(by.items()):
            a = b.get(GA)
            rf = b.get(ref or floor_of(GA, a, have))
            if a and rf and a.get(key) and rf.get(key):
                v.append("%.2f" % (a[key] / rf[key]))
        return "per round " + ", ".join(v) if v else ""

    s = A("saturation")
    v = s.get("rps_floor")
    goal("saturation throughput >= 0.95 of floor", "%s/floor = %s (%s)" % (GA, fmt(v), rounds("saturation", "rps", None)),
         None if v is None else v >= 0.95)
    s = A("rate5k")
    v1, v2 = s.get("rps_base"), s.get("p99_base")
    goal("5k req/s: no throughput loss (>= 0.99 of baseline's rate)", "rate/baseline = %s (%s req/s; %s)" % (
        fmt(v1, "{:.3f}"), fmt(s.get("rps"), "{:.0f}"), rounds("rate5k", "rps", "baseline")),
         None if v1 is None else v1 >= 0.99)
    goal("5k req/s: p99 within 5% of baseline", "p99/baseline = %s (%s; medians %s ms vs %s ms)" % (
        fmt(v2), rounds("rate5k", "p99_us", "baseline"), fmt(s.get("p99") / 1000 if s.get("p99") else None, "{:.3f}"),
        fmt(summary.get(("rate5k", "baseline"), {}).get("p99", 0) / 1000 if summary.get(("rate5k", "baseline"), {}).get("p99") else None, "{:.3f}")),
         None if v2 is None else v2 <= 1.05)
    s = A("rate20k")
    if s.get("made"):
        goal("20k req/s: 100% completeness", "%s of %s requests recorded (%s), lost %s" % (
            s["records"], s["made"], fmt(s["compl"] * 100, "{:.3f}%"), s["lost"]),
             s["records"] == s["made"] and not s["lost"])
    else:
        goal("20k req/s: 100% completeness", "not measured", None)
    cpus = [(w, A(w)["cpu_per_1k"]) for w in workloads if A(w).get("cpu_per_1k") is not None]
    if cpus:
        worst = max(cpus, key=lambda x: x[1])
        goal("user-space CPU <= 5 us per request (every workload)", "worst %.2f us (%s); %s" % (
            worst[1], worst[0], ", ".join("%s %.2f" % c for c in cpus)), worst[1] <= 5.0)
    rat = [(w, A(w)["bpf_us"] / F(w)["bpf_us"]) for w in workloads
           if A(w).get("bpf_us") and F(w).get("bpf_us")]
    if rat:
        worst = max(rat, key=lambda x: x[1])
        goal("BPF time per request <= 2x floor's (every workload)", "worst %.2fx (%s: %.2f vs %.2f us); %s" % (
            worst[1], worst[0], A(worst[0])["bpf_us"], F(worst[0])["bpf_us"],
            ", ".join("%s %.2fx" % c for c in rat)), worst[1] <= 2.0)
    rss = [(w, A(w)["rss_kb"]) for w in workloads if A(w).get("rss_kb")]
    if rss:
        worst = max(rss, key=lambda x: x[1])
        goal("peak RSS <= 64 MiB", "max %.1f MiB (%s)" % (worst[1] / 1024, worst[0]), worst[1] <= 64 * 1024)
    att = [(w, A(w)["attach_max"]) for w in workloads if A(w).get("attach_max") is not None]
    if att:
        worst = max(att, key=lambda x: x[1])
        goal("attached <= 1 s (exec to 'capturing:')", "max %.0f ms (%s), median %s ms" % (
            worst[1], worst[0], fmt(med([A(w)["attach_ms"] for w in workloads if A(w).get("attach_ms") is not None]), "{:.0f}")),
             worst[1] <= 1000)
    cmp_ = []
    for w in workloads:
        a, t = A(w), T(w)
        if a.get("cpu_per_1k") and t.get("cpu_per_1k"):
            cmp_.append((w, t["cpu_per_1k"] / a["cpu_per_1k"], a.get("compl"), t.get("compl"),
                         a.get("timely"), t.get("timely")))
    plain = [c for c in cmp_ if c[0] != "https"]
    pc = lambda x: fmt(x * 100 if x is not None else None, "{:.1f}%")
    if plain:
        worst = min(plain, key=lambda x: x[1])
        # "more complete": never less complete, at exit and within 3 s of the load's end
        # (both reach 100 % when nothing is lost, so strictly more cannot be asked for)
        complete_enough = all((c[2] or 0) >= (c[3] or 0) and (c[4] or 0) >= (c[5] or 0) for c in plain)
        strictly = [c[0] for c in plain if (c[2] or 0) > (c[3] or 0) or (c[4] or 0) > (c[5] or 0)]
        goal(">= 10x cheaper than tshark in CPU/request, more complete",
             "worst %.1fx (%s); more complete than tshark in: %s" % (
                 worst[1], worst[0], ", ".join(strictly) or "none (equal elsewhere)"),
             worst[1] >= 10 and complete_enough)
        for c in cmp_:
            p("  %-7s   %-10s tshark/k8s-alog CPU per request %.1fx; completeness at exit %s vs %s, in time %s vs %s" % (
                "", c[0], c[1], pc(c[2]), pc(c[3]), pc(c[4]), pc(c[5])))
    p("")
    ph = [r["phase_ms"] for r in rs if r.get("phase_ms")]
    if ph:
        tot = [sum(x[i] for x in ph) / 1000 for i in range(5)]
        p("time spent over %d arm runs (s): start-up to load %.0f, load %.0f, snapshots and settling %.0f, "
          "stopping %.0f, parsing %.0f, gaps %.0f" % (len(ph), tot[0], tot[1], tot[2], tot[3], tot[4], 0.5 * len(ph)))
    others = [r.get("other_pct") for r in rs if r.get("other_pct") is not None]
    if others:
        p("noise: other processes used a median %.0f%% (max %.0f%%) of the machine during loads; "
          "median steal %.1f%%" % (med(others), max(others), med([r.get("steal_pct") or 0 for r in rs])))
    p("total runtime: %s s" % meta.get("runtime_s", "?"))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(out_path, "w") as f:
        f.write(text)
    with open(out_path + ".json", "w") as f:
        json.dump({"meta": meta, "results": rs}, f, indent=1)


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    c = argv[1]
    if c == "snap":
        print(json.dumps(cmd_snap(argv[2], argv[3], argv[4], argv[5], argv[6] if len(argv) > 6 else "")))
    elif c == "proc":
        print(json.dumps(cmd_proc(argv[2])))
    elif c == "bpf":
        print(json.dumps(cmd_bpf(argv[2], argv[3])))
    elif c == "wrk":
        print(json.dumps(cmd_wrk(argv[2])))
    elif c == "alog":
        print(json.dumps(cmd_alog(argv[2])))
    elif c == "tshark":
        print(json.dumps(cmd_tshark(argv[2], argv[3])))
    elif c == "arm":
        print(arm_line(cmd_arm(argv[2])))
    elif c == "errline":
        print(cmd_errline(argv[2]))
    elif c == "report":
        meta = json.loads(argv[4]) if len(argv) > 4 else {}
        report(argv[2], argv[3], meta)
    elif c == "rereport":
        # print the report again from a saved <report>.json (e.g. after changing the report)
        with open(argv[2]) as f:
            saved = json.load(f)
        if isinstance(saved, list):
            saved = {"meta": json.loads(argv[4]) if len(argv) > 4 else {}, "results": saved}
        _report(saved["results"], argv[3], saved["meta"])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
