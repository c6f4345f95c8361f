//! Mutation fuzzing of everything else k8s-alog reads that a pod, the node or a file can
//! shape: spool files (bytes, and whole tampered spool directories), recordings
//! (`read_records`) and their RFC 3339 times, kernel event records, conntrack answers, DNS
//! answers, resolv.conf and hosts text, cgroup paths, OCI bundle `config.json`, kubelet
//! directory names and Kubernetes API lists.
//!
//! Each target starts from real or realistic seeds and mutates them (bit flips, interesting
//! bytes, inserted, deleted, duplicated and repeated ranges, splices, truncation). Every
//! input must be handled without a panic, allocating at most `ALLOC_PER_BYTE` bytes per
//! input byte (plus `ALLOC_FLOOR`) and never holding more than `PEAK_PER_BYTE` per input
//! byte at once (a counting allocator measures both). An input that takes more than
//! `HANG` is reported as a hang. Worst time per input and per byte are printed, not
//! asserted (the machines are shared). A failing input is left in `target/fuzz-crashes/`.
//!
//! Time: `K8S_ALOG_FUZZ_SECONDS` (default 15) shared by the targets; seed:
//! `K8S_ALOG_FUZZ_SEED`.

#[path = "common/alloc.rs"]
mod counting;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_alog::capture::event;
use k8s_alog::netaddr;
use k8s_alog::resolve::api::ApiData;
use k8s_alog::resolve::meta::Naming;
use k8s_alog::resolve::{bundles, cgroup, conntrack, kubelet};
use k8s_alog::sink::jsonl;
use k8s_alog::sink::oap::mapping::parse_rfc3339_ns;
use k8s_alog::sink::oap::pb;
use k8s_alog::sink::oap::spool::{self, Spool};

/// Bytes a target may allocate per input byte, beyond `ALLOC_FLOOR` per input.
const ALLOC_PER_BYTE: u64 = 200;
const ALLOC_FLOOR: u64 = 256 * 1024;
/// Bytes a target may hold at once per input byte, beyond `ALLOC_FLOOR`.
const PEAK_PER_BYTE: u64 = 64;
/// One input taking this long is a hang.
const HANG: Duration = Duration::from_secs(10);

const INTERESTING: [u8; 16] = [
    0, 1, 0x7f, 0x80, 0xff, b'\n', b'"', b'\\', b'{', b'}', b'[', b':', b'/', b'-', b'_', b'.',
];

/// One mutation round or more of `base`, sometimes with a splice from another seed.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(5) {
        let len = b.len();
        match rng.below(10) {
            0 if len > 0 => {
                let p = rng.below(len);
                b[p] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let p = rng.below(len);
                b[p] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let p = rng.below(len + 1);
                let ins: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                b.splice(p..p, ins);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let e = (a + 1 + rng.below(64)).min(len);
                b.drain(a..e);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let e = (a + 1 + rng.below(256)).min(len);
                let dup = b[a..e].to_vec();
                b.splice(e..e, dup);
            }
            5 if len > 0 => {
                // A range repeated many times: long names, deep nesting, big counts.
                let a = rng.below(len);
                let e = (a + 1 + rng.below(8)).min(len);
                let unit = b[a..e].to_vec();
                let times = 1 + rng.below(4096);
                let rep: Vec<u8> = unit
                    .iter()
                    .copied()
                    .cycle()
                    .take(unit.len() * times)
                    .collect();
                b.splice(e..e, rep);
            }
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let e = (a + 1 + rng.below(512)).min(other.len());
                    let p = rng.below(len + 1);
                    b.splice(p..p, other[a..e].iter().copied());
                }
            }
            7 => b.truncate(rng.below(len + 1)),
            8 if len >= 4 => {
                // A 32-bit field set to an extreme.
                let p = rng.below(len - 3);
                let v: u32 = [0, 1, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000][rng.below(5)];
                b[p..p + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    b
}

/// A target: its name, its seeds, and what it feeds each input to.
type Target<'a> = (&'a str, Vec<Vec<u8>>, &'a dyn Fn(&[u8]));

/// Worst figures of one target.
#[derive(Default)]
struct Figures {
    inputs: u64,
    bytes: u64,
    worst_alloc_per_byte: f64,
    worst_peak: isize,
    worst_time: Duration,
    worst_ns_per_byte: f64,
}

/// The watchdog's view: inputs started and when the current one started.
struct Watch {
    /// The fuzzing is over: the watchdog ends.
    done: std::sync::atomic::AtomicBool,
    started: AtomicU64,
    since_ms: AtomicU64,
    epoch: Instant,
}

/// Run `f` on `input`, checking the bounds; a failure panics with `why` and saves the input.
fn check(target: &str, input: &[u8], fig: &mut Figures, watch: &Watch, f: &dyn Fn(&[u8])) {
    watch.started.fetch_add(1, Ordering::Relaxed);
    watch
        .since_ms
        .store(watch.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    let alloc0 = counting::allocated();
    counting::reset_peak();
    let base = counting::live();
    let t0 = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| f(input)));
    let spent = t0.elapsed();
    let alloc = counting::allocated() - alloc0;
    let peak = counting::peak() - base;
    let n = input.len() as u64;
    let fail = |why: String| -> ! {
        let p = save(target, input);
        panic!("{target}: {why}; input saved to {}", p.display());
    };
    if let Err(e) = r {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        fail(format!("panicked: {why}"));
    }
    if alloc > ALLOC_FLOOR + ALLOC_PER_BYTE * n {
        fail(format!("allocated {alloc} bytes for {n} input bytes"));
    }
    if peak > (ALLOC_FLOOR + PEAK_PER_BYTE * n) as isize {
        fail(format!("held {peak} bytes at once for {n} input bytes"));
    }
    if spent > HANG {
        fail(format!("took {spent:?}"));
    }
    fig.inputs += 1;
    fig.bytes += n;
    fig.worst_peak = fig.worst_peak.max(peak);
    fig.worst_time = fig.worst_time.max(spent);
    if n >= 256 {
        fig.worst_alloc_per_byte = fig.worst_alloc_per_byte.max(alloc as f64 / n as f64);
        fig.worst_ns_per_byte = fig
            .worst_ns_per_byte
            .max(spent.as_nanos() as f64 / n as f64);
    }
}

fn save(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{target}-{}.bin", std::process::id()));
    let _ = std::fs::write(&p, input);
    p
}

/// Mutate `seeds` for `budget`, feeding each input to `f` within the bounds.
fn fuzz(
    target: &str,
    seeds: &[Vec<u8>],
    budget: Duration,
    rng: &mut Rng,
    watch: &Watch,
    f: &dyn Fn(&[u8]),
) {
    assert!(!seeds.is_empty(), "{target}: no seeds");
    let mut fig = Figures::default();
    for s in seeds {
        check(target, s, &mut fig, watch, f);
    }
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline {
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate(rng, seeds, base);
        check(target, &input, &mut fig, watch, f);
    }
    eprintln!(
        "fuzz {target}: {} inputs, {} bytes; worst {:?} per input, {:.0} ns and {:.1} bytes \
         allocated per input byte, {} bytes held at once",
        fig.inputs,
        fig.bytes,
        fig.worst_time,
        fig.worst_ns_per_byte,
        fig.worst_alloc_per_byte,
        fig.worst_peak
    );
}

fn fixture(rel: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// --- seeds ---------------------------------------------------------------------------------

fn messages(n: usize, tag: &str) -> Vec<pb::EbpfAccessLogMessage> {
    (0..n)
        .map(|i| pb::EbpfAccessLogMessage {
            node: (i == 0).then(|| pb::EbpfAccessLogNodeInfo {
                name: format!("{tag}-node"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A spool file whose header describes `payload` (so mutations reach the decoder).
fn respool(count: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = b"ALOGSPL1".to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn conntrack_seeds() -> Vec<Vec<u8>> {
    let q = |s: &str, d: &str| conntrack::Tuple {
        src: s.parse().unwrap(),
        dst: d.parse().unwrap(),
    };
    let mut seeds = Vec::new();
    for (seq, t) in [
        (7u32, q("198.18.7.11:40000", "198.18.100.10:80")),
        (9, q("[fd00::1]:40000", "[fd00::2]:443")),
    ] {
        // The kernel answers with the request's tuple as CTA_TUPLE_ORIG and the reply's
        // as CTA_TUPLE_REPLY, in an IPCTNL_MSG_CT_NEW message.
        let get = conntrack::build_get(&t, seq).unwrap();
        let mut m = get.clone();
        m[4..6].copy_from_slice(&0x100u16.to_ne_bytes());
        m[6..8].copy_from_slice(&0u16.to_ne_bytes());
        let mut reply = get[20..].to_vec();
        reply[2..4].copy_from_slice(&(0x8000u16 | 2).to_ne_bytes());
        m.extend_from_slice(&reply);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        seeds.push(m);
        // An error answer (ENOENT) and DONE.
        let mut e = get[..16].to_vec();
        e[4..6].copy_from_slice(&2u16.to_ne_bytes());
        e.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        e.extend_from_slice(&get[..16]);
        let len = e.len() as u32;
        e[0..4].copy_from_slice(&len.to_ne_bytes());
        seeds.push(e);
    }
    seeds
}

/// A DNS response to `build_query`: answers for `name`, a CNAME first when `cname`.
fn dns_response(id: u16, name: &str, qtype: u16, cname: bool) -> Vec<u8> {
    let mut r = netaddr::build_query(id, name, qtype).unwrap();
    r[2] = 0x81; // QR, RD
    r[3] = 0x80; // RA
    let answers: u16 = if cname { 3 } else { 2 };
    r[6..8].copy_from_slice(&answers.to_be_bytes());
    let rr = |r: &mut Vec<u8>, name_ptr: u16, ty: u16, data: &[u8]| {
        r.extend_from_slice(&name_ptr.to_be_bytes());
        r.extend_from_slice(&ty.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&300u32.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(data);
    };
    let mut owner = 0xc00cu16;
    if cname {
        let at = r.len() as u16 + 12;
        rr(&mut r, owner, 5, b"\x05alias\xc0\x0c");
        owner = 0xc000 | at;
    }
    let data: Vec<u8> = if qtype == netaddr::TYPE_AAAA {
        "fd00::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec()
    } else {
        vec![198, 18, 0, 7]
    };
    rr(&mut r, owner, qtype, &data);
    rr(&mut r, owner, qtype, &data);
    r
}

fn event_seeds() -> Vec<Vec<u8>> {
    // Records of each kind, of the sizes the kernel writes and around them.
    let mut seeds = Vec::new();
    for kind in [1u8, 2, 3, 4, 0] {
        for len in [8usize, 64, 120, 160, 200, 256, 320, 600] {
            let mut b = vec![0u8; len];
            b[0] = kind;
            for (i, x) in b.iter_mut().enumerate().skip(8) {
                *x = (i * 7) as u8;
            }
            seeds.push(b);
        }
    }
    seeds
}

fn recording_seeds() -> Vec<Vec<u8>> {
    let all = fixture("top/session.jsonl");
    let lines: Vec<&[u8]> = all
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    // Single records of each kind, and runs of a few.
    let mut seeds: Vec<Vec<u8>> = lines
        .iter()
        .step_by(9)
        .map(|l| [*l, b"\n"].concat())
        .collect();
    for w in lines.chunks(5).step_by(11) {
        seeds.push(w.join(&b'\n'));
    }
    seeds
}

const CGROUPS: &[&str] = &[
    "0::/kubepods/besteffort/pod0b5a4f3c-1d2e-4f6a-8b9c-0d1e2f3a4b5c/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b5a4f3c_1d2e_4f6a_8b9c_0d1e2f3a4b5c.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
    "0::/kubepods.slice/kubepods-pod0b5a4f3c_1d2e_4f6a_8b9c_0d1e2f3a4b5c.slice/crio-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
    "12:memory:/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n0::/system.slice/docker.service",
    "0::/user.slice/user-0.slice/session-1.scope",
];

const KUBELET_NAMES: &[&str] = &[
    "shop_cart-0_0b5a4f3c-1d2e-4f6a-8b9c-0d1e2f3a4b5c",
    "cart-0_shop_app-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log",
    "kube-system_coredns-5d78c9869d-abcde_11111111-2222-3333-4444-555555555555",
];

const BUNDLE: &str = r#"{"ociVersion":"1.0.2","process":{"args":["/pause"],"env":["PATH=/bin"]},
"annotations":{"io.kubernetes.cri.container-type":"container",
"io.kubernetes.cri.container-name":"cart","io.kubernetes.cri.image-name":"local/app:1",
"io.kubernetes.cri.sandbox-id":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
"io.kubernetes.cri.sandbox-name":"cart-0","io.kubernetes.cri.sandbox-namespace":"shop",
"io.kubernetes.cri.sandbox-uid":"0b5a4f3c-1d2e-4f6a-8b9c-0d1e2f3a4b5c"},
"linux":{"cgroupsPath":"/kubepods/besteffort/pod0b5a4f3c/0123"}}"#;

const RESOLV: &str = "# generated\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n\
nameserver 198.18.0.10\nnameserver fd00::10\noptions ndots:5 timeout:1 attempts:2\n";

const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n\
198.18.0.5 oap.example oap # the collector\n";

// --- targets -------------------------------------------------------------------------------

fn spool_bytes(input: &[u8]) {
    if let Ok(msgs) = spool::decode(input) {
        assert!(msgs.len() <= input.len());
    }
}

/// The payload of a spool file mutated and its header made to fit, so the decoder sees it.
fn spool_payload(input: &[u8]) {
    let count = input.first().map_or(0, |&c| u32::from(c % 8));
    let file = respool(count, input.get(1..).unwrap_or_default());
    spool_bytes(&file);
}

fn recording(input: &[u8]) {
    let mut n = 0usize;
    for r in jsonl::records_from(input, "fuzz") {
        n += 1;
        if r.is_err() {
            break;
        }
    }
    assert!(n <= input.len() + 1);
}

fn times(input: &[u8]) {
    if let Ok(s) = std::str::from_utf8(input) {
        let _ = parse_rfc3339_ns(s);
    }
}

fn kernel_event(input: &[u8]) {
    if let Ok(event::Record::Event(event::Event::Data(d))) = event::decode_record(input) {
        assert!(d.payload.len() <= input.len());
    }
}

fn conntrack_answer(input: &[u8]) {
    let seq = input
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()));
    let _ = conntrack::parse_answer(input, seq);
    let _ = conntrack::parse_answer(input, seq.wrapping_add(1));
}

fn dns_answer(input: &[u8]) {
    let id = input
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    for qtype in [netaddr::TYPE_A, netaddr::TYPE_AAAA] {
        if let Ok(a) = netaddr::parse_response(input, id, qtype) {
            assert!(a.addrs.len() <= input.len() / 4);
        }
    }
}

fn resolver_text(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let conf = netaddr::parse_resolv_conf(&text);
    let _ = netaddr::search_candidates("cart.shop", &conf);
    let _ = netaddr::hosts_lookup(&text, "oap.example");
    let _ = netaddr::split_host_port(&text);
}

fn cgroup_text(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = cgroup::parse(&text);
    let _ = cgroup::container_id(&text);
    let _ = cgroup::parse_path(&text);
    let _ = cgroup::container_id_from_path(&text);
}

fn bundle_spec(input: &[u8]) {
    let _ = bundles::parse_spec(&String::from_utf8_lossy(input));
}

fn kubelet_name(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = kubelet::parse_pod_dir(&text);
    let _ = kubelet::parse_container_log(&text);
}

fn api_lists(input: &[u8]) {
    let mut d = ApiData::default();
    let naming = Naming {
        cluster: None,
        node_name: Some("node-a".into()),
    };
    let _ = d.add_pods(input, &naming);
    let _ = d.add_services(input);
    let _ = d.add_endpoint_slices(input);
    let _ = d.add_endpoints(input);
}

#[test]
fn fuzz_node_inputs() {
    let secs: f64 = std::env::var("K8S_ALOG_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15.0);
    let seed: u64 = std::env::var("K8S_ALOG_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0bad_f00d_0001);
    let watch = Arc::new(Watch {
        done: std::sync::atomic::AtomicBool::new(false),
        started: AtomicU64::new(0),
        since_ms: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    {
        // An input that never returns would hang the suite: say so and end it instead.
        let w = Arc::clone(&watch);
        std::thread::spawn(move || loop {
            let seen = w.started.load(Ordering::Relaxed);
            std::thread::sleep(HANG * 3);
            if w.done.load(Ordering::Relaxed) {
                return;
            }
            let since = w.since_ms.load(Ordering::Relaxed);
            let now = w.epoch.elapsed().as_millis() as u64;
            if w.started.load(Ordering::Relaxed) == seen
                && now - since > HANG.as_millis() as u64 * 3
            {
                eprintln!("fuzz: one input has run for over {:?}: a hang", HANG * 3);
                std::process::abort();
            }
        });
    }
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(seed | 1);

    let spool_seeds: Vec<Vec<u8>> = vec![
        spool::encode(&messages(1, "a")),
        spool::encode(&messages(5, "b")),
        spool::encode(&messages(40, "c")),
    ];
    let payload_seeds: Vec<Vec<u8>> = spool_seeds
        .iter()
        .map(|f| [&[f[8]][..], &f[28..]].concat())
        .collect();
    let api_seeds = vec![
        fixture("k8s/api/pods.json"),
        fixture("k8s/api/services.json"),
        fixture("k8s/api/endpointslices.json"),
        br#"{"kind":"EndpointsList","items":[{"metadata":{"name":"cart","namespace":"shop"},
"subsets":[{"addresses":[{"ip":"198.18.1.5"}],"notReadyAddresses":[{"ip":"198.18.1.6"}]}]}]}"#
            .to_vec(),
    ];
    let dns_seeds = vec![
        dns_response(
            0x1234,
            "oap.observability.svc.cluster.local",
            netaddr::TYPE_A,
            false,
        ),
        dns_response(0x4321, "oap.example", netaddr::TYPE_AAAA, true),
    ];
    let times_seeds: Vec<Vec<u8>> = [
        "2026-11-25T22:37:15.251551687Z",
        "1970-01-01T00:00:00Z",
        "2262-04-11T23:47:16.854775807+02:00",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let text = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();

    let targets: Vec<Target> = vec![
        ("spool-file", spool_seeds, &spool_bytes),
        ("spool-payload", payload_seeds, &spool_payload),
        ("recording", recording_seeds(), &recording),
        ("rfc3339", times_seeds, &times),
        ("kernel-event", event_seeds(), &kernel_event),
        ("conntrack", conntrack_seeds(), &conntrack_answer),
        ("dns", dns_seeds, &dns_answer),
        ("resolver-files", text(&[RESOLV, HOSTS]), &resolver_text),
        ("cgroup", text(CGROUPS), &cgroup_text),
        ("bundle-config", text(&[BUNDLE]), &bundle_spec),
        ("kubelet-names", text(KUBELET_NAMES), &kubelet_name),
        ("api-json", api_seeds, &api_lists),
    ];
    let each = Duration::from_secs_f64(secs / targets.len() as f64);
    let r = catch_unwind(AssertUnwindSafe(|| {
        for (name, seeds, f) in &targets {
            fuzz(name, seeds, each, &mut rng, &watch, *f);
        }
    }));
    watch.done.store(true, Ordering::Relaxed);
    std::panic::set_hook(prev);
    if let Err(e) = r {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "panic".into());
        panic!("{why} (seed {seed:#x})");
    }
}

// --- tampered spool directories ------------------------------------------------------------

/// What can be done to a spool directory between two runs.
fn tamper(rng: &mut Rng, dir: &Path, files: &[PathBuf]) -> String {
    // A file an earlier tampering made a link, FIFO or directory is left as it is.
    let regular = |f: &Path| f.symlink_metadata().is_ok_and(|m| m.is_file());
    let f = files[rng.below(files.len())].clone();
    if !regular(&f) {
        return format!("{} left as it is", f.display());
    }
    let pick = |_: &mut Rng| f.clone();
    let batch = |n: u64| dir.join(format!("{n:020}.batch"));
    match rng.below(12) {
        0 => {
            let f = pick(rng);
            let b = std::fs::read(&f).unwrap();
            let seeds = [b.clone()];
            std::fs::write(&f, mutate(rng, &seeds, &b)).unwrap();
            format!("mutated {}", f.display())
        }
        1 => {
            let f = pick(rng);
            let b = std::fs::read(&f).unwrap();
            let seeds = [b.clone()];
            let m = mutate(rng, &seeds, &b[28.min(b.len())..]);
            std::fs::write(&f, respool(rng.below(50) as u32, &m)).unwrap();
            format!("payload of {} mutated, header fitted", f.display())
        }
        2 => {
            let f = pick(rng);
            let len = std::fs::metadata(&f).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.set_len(rng.below(len as usize + 1) as u64).unwrap();
            format!("truncated {}", f.display())
        }
        3 => {
            let f = pick(rng);
            std::fs::remove_file(&f).unwrap();
            std::os::unix::fs::symlink("/dev/zero", &f).unwrap();
            format!("{} is a link to /dev/zero", f.display())
        }
        4 => {
            let f = batch(rng.below(100) as u64 + 1);
            let _ = std::fs::remove_file(&f);
            let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
            // SAFETY: a valid C string.
            unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
            format!("{} is a FIFO", f.display())
        }
        5 => {
            let f = batch(rng.below(100) as u64 + 1);
            let _ = std::fs::remove_file(&f);
            let _ = std::fs::create_dir(&f);
            format!("{} is a directory", f.display())
        }
        6 => {
            let mut h = b"ALOGSPL1".to_vec();
            h.extend_from_slice(&u32::MAX.to_le_bytes());
            h.extend_from_slice(&u64::MAX.to_le_bytes());
            h.extend_from_slice(&[0; 8]);
            std::fs::write(batch(3), &h).unwrap();
            "a header claiming 2^32 messages and 2^64 bytes".into()
        }
        7 => {
            std::fs::write(dir.join("99999999999999999999.batch"), b"x").unwrap();
            std::fs::write(dir.join("18446744073709551615.batch"), b"x").unwrap();
            "batch names past the sequence bound".into()
        }
        8 => {
            use std::os::unix::ffi::OsStrExt;
            let odd = std::ffi::OsStr::from_bytes(b"\xff\xfe.batch");
            std::fs::write(dir.join(odd), b"junk").unwrap();
            std::fs::write(dir.join("00000000000000000001.batch.tmp"), b"junk").unwrap();
            "files with other names".into()
        }
        9 => {
            use std::os::unix::fs::PermissionsExt;
            let f = pick(rng);
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
            format!("{} writable by all", f.display())
        }
        10 => {
            let f = pick(rng);
            std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
            format!("{} owned by nobody", f.display())
        }
        _ => {
            let f = pick(rng);
            let mut b = std::fs::read(&f).unwrap();
            let big = b.len() * 4096;
            b.resize(big.min(8 << 20), 0);
            std::fs::write(&f, &b).unwrap();
            format!("{} grown to {} bytes", f.display(), b.len())
        }
    }
}

/// A spool directory tampered with between runs never stops the next run: it opens, every
/// batch it hands out decodes, damaged files are set aside and counted, and what it reads
/// stays within its bound.
#[test]
fn tampered_spool_directories_open() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: tampered_spool_directories_open changes file owners: run as root");
        return;
    }
    let secs: f64 = std::env::var("K8S_ALOG_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15.0)
        / 3.0;
    let mut rng = Rng(0x5eed_5b00_1234_0001);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (mut runs, mut set_aside, mut delivered) = (0u64, 0u64, 0u64);
    let mut worst = Duration::ZERO;
    let bound = 1u64 << 20;
    while Instant::now() < deadline || runs < 50 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let mut s = Spool::open(&dir, bound).unwrap();
        for k in 0..4 {
            s.push(&messages(1 + k * 7, "t")).unwrap();
        }
        drop(s);
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "batch"))
            .collect();
        let mut what = Vec::new();
        for _ in 0..1 + rng.below(3) {
            what.push(tamper(&mut rng, &dir, &files));
        }
        let t0 = Instant::now();
        let live0 = counting::live();
        counting::reset_peak();
        let mut s = Spool::open(&dir, bound)
            .unwrap_or_else(|e| panic!("after {what:?}: the spool did not open: {e}"));
        let mut handed = 0;
        while let Some(r) = s.front() {
            handed += 1;
            assert!(handed <= 200, "after {what:?}: front() never ends");
            // A damaged batch has already left the spool; a good one leaves when delivered.
            match r {
                Ok(batch) => {
                    delivered += batch.len() as u64;
                    s.pop();
                }
                Err(spool::SpoolError::Corrupt(..)) => {}
                Err(e) => panic!("after {what:?}: {e}"),
            }
        }
        let peak = counting::peak() - live0;
        assert!(
            peak < (4 * bound) as isize,
            "after {what:?}: held {peak} bytes reading a spool bounded to {bound}"
        );
        set_aside += s.corrupt_files;
        drop(s);
        worst = worst.max(t0.elapsed());
        runs += 1;
    }
    eprintln!(
        "fuzz spool-dirs: {runs} tampered directories opened and drained; {set_aside} files \
         set aside as damaged, {delivered} messages delivered; worst {worst:?} per run"
    );
}
