//! Tests that drive whole connections: frames cut at every byte, control frames, resets,
//! pushes, gRPC, uncaptured bytes and gaps, joins mid-stream, h2c, the caps and the memory
//! budget, and random input.

use super::frame::{
    ACK, CONTINUATION, DATA, DEFAULT_MAX_FRAME, END_HEADERS, END_STREAM, FRAME_HEADER, GOAWAY,
    HEADERS, PADDED, PING, PRIORITY, PRIORITY_FLAG, PUSH_PROMISE, RST_STREAM, SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE, WINDOW_UPDATE,
};
use super::hpack::TABLE_SIZE_CAP;
use super::test_util::*;
use super::*;
use Direction::{Egress as E, Ingress as I};

fn simple_exchange(t: &mut T) -> (u64, u64, u64, u64) {
    let req = t.req(1, &get("/hello"), true);
    let t1 = t.send(E, &req);
    let mut r = t.resp(
        1,
        &[(":status", "200"), ("content-type", "text/plain")],
        false,
    );
    let t2 = t.send(I, &r);
    r.clear();
    r.extend(data(1, b"hello ", false));
    r.extend(data(1, b"world", true));
    let t3 = t.send(I, &r);
    (t1, t2, t3, req.len() as u64 - 9)
}

#[test]
fn simple_get() {
    let mut t = T::new();
    let (t1, t2, t3, req_block) = simple_exchange(&mut t);
    let ex = t.only();
    assert_eq!(ex.stream_id, 1);
    assert_eq!(ex.method.as_deref(), Some("GET"));
    assert_eq!(ex.path.as_deref(), Some("/hello"));
    assert_eq!(ex.authority.as_deref(), Some("svc.local"));
    assert_eq!(ex.scheme.as_deref(), Some("http"));
    assert_eq!(ex.user_agent.as_deref(), Some("test/1"));
    assert_eq!(ex.status, Some(200));
    assert!(!ex.grpc && ex.complete && !ex.partial, "{ex:?}");
    assert!(ex.notes.is_empty());
    assert_eq!(ex.req_header_bytes, req_block);
    assert_eq!((ex.req_body_bytes, ex.resp_body_bytes), (0, 11));
    assert!(ex.resp_header_bytes > 0);
    assert_eq!((ex.req_start_ns, ex.req_end_ns), (t1, t1));
    assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t2, t3));
    assert_eq!(ex.reset_code, None);
    assert_eq!(t.c.role(), Role::Client);
    let s = t.c.stats();
    assert_eq!(
        (s.streams, s.resyncs, s.parse_errors, s.hpack_errors),
        (1, 0, 0, 0)
    );
    // Opening: 4 frames; request HEADERS; response HEADERS and two DATA.
    assert_eq!(s.frames, 8);
    assert_eq!(t.c.buffered_bytes(), 0);
}

/// The same conversation cut into two calls per direction at every possible point.
#[test]
fn frames_split_at_every_byte() {
    let mut reference = T::new();
    let mut cl = PREFACE.to_vec();
    cl.extend(settings(&[(4, 65535)]));
    let mut req = grpc_req("/pkg.Svc/Get");
    req.push(("sw8", "1-dHJhY2U=-c2Vn-3-c3Zj-aW5z-ZXA=-YWRkcg==".into()));
    let block = reference.cl.block(&as_refs(&req));
    cl.extend(split_block(1, &block, false, 20));
    cl.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]));
    cl.extend(data(1, &grpc_msgs(&[3, 0, 7]), true));
    let mut sv = settings(&[(3, 100)]);
    sv.extend(frame(SETTINGS, ACK, 0, &[]));
    let rb = reference
        .sv
        .block(&[(":status", "200"), ("content-type", "application/grpc")]);
    sv.extend(split_block(1, &rb, false, usize::MAX));
    sv.extend(frame(PING, 0, 0, &[1; 8]));
    sv.extend(data(1, &grpc_msgs(&[4, 9]), false));
    let tb = reference
        .sv
        .block(&[("grpc-status", "0"), ("grpc-message", "ok")]);
    sv.extend(split_block(1, &tb, true, 3));

    let run = |a: usize, b: usize| -> (Vec<H2Exchange>, H2Stats) {
        let mut t = T::with(H2Conn::new(Role::Client, H2Limits::default()));
        t.send(E, &cl[..a]);
        t.send(E, &cl[a..]);
        t.send(I, &sv[..b]);
        t.send(I, &sv[b..]);
        t.close();
        (t.out, t.c.stats().clone())
    };
    let (want, want_stats) = run(0, 0);
    assert_eq!(want.len(), 1);
    let ex = &want[0];
    assert!(ex.complete && !ex.partial && ex.grpc, "{ex:?}");
    assert_eq!((ex.req_messages, ex.resp_messages), (3, 2));
    assert_eq!(ex.grpc_status, Some(0));
    assert_eq!(ex.grpc_message.as_deref(), Some("ok"));
    assert_eq!(ex.path.as_deref(), Some("/pkg.Svc/Get"));
    assert_eq!(
        ex.trace.as_ref().map(|t| t.trace_id.as_str()),
        Some("trace")
    );
    assert_eq!(ex.req_header_bytes, block.len() as u64);
    assert_eq!(ex.resp_header_bytes, (rb.len() + tb.len()) as u64);
    assert_eq!(ex.req_body_bytes, 3 * 5 + 10);
    for a in 0..=cl.len() {
        let (got, stats) = run(a, 0);
        assert_eq!(got.len(), 1, "client split {a}");
        assert_eq!(
            (
                &got[0].path,
                got[0].req_messages,
                got[0].req_body_bytes,
                &got[0].trace
            ),
            (&ex.path, ex.req_messages, ex.req_body_bytes, &ex.trace),
            "client split {a}"
        );
        assert_eq!(stats.frames, want_stats.frames, "client split {a}");
    }
    for b in 0..=sv.len() {
        let (got, stats) = run(cl.len(), b);
        assert_eq!(got.len(), 1, "server split {b}");
        let g = &got[0];
        assert!(g.complete && !g.partial, "server split {b}: {g:?}");
        assert_eq!(
            (
                g.status,
                g.grpc_status,
                &g.grpc_message,
                g.resp_messages,
                g.resp_body_bytes
            ),
            (
                ex.status,
                ex.grpc_status,
                &ex.grpc_message,
                ex.resp_messages,
                ex.resp_body_bytes
            ),
            "server split {b}"
        );
        assert_eq!(g.resp_header_bytes, ex.resp_header_bytes);
        assert_eq!(stats, want_stats, "server split {b}");
    }
    // And one byte per call.
    let mut t = T::with(H2Conn::new(Role::Client, H2Limits::default()));
    t.trickle(E, &cl, 1);
    t.trickle(I, &sv, 1);
    assert_eq!(t.out.len(), 1);
    assert_eq!(t.out[0].resp_messages, 2);
    assert_eq!(t.out[0].req_messages, 3);
    assert_eq!(t.out[0].grpc_status, Some(0));
}

#[test]
fn padding_and_priority_are_not_counted() {
    let mut t = T::new();
    let block = t.cl.block(&as_refs(&get("/p")));
    // HEADERS with PADDED and PRIORITY: pad length, dependency + weight, block, padding.
    let mut p = vec![7u8];
    p.extend_from_slice(&[0x80, 0, 0, 0, 16]);
    p.extend_from_slice(&block);
    p.extend_from_slice(&[0; 7]);
    let h = frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, &p);
    t.send(E, &h);
    // Padded DATA: 3 body bytes, 4 padding.
    let mut d = vec![4u8];
    d.extend_from_slice(b"abc");
    d.extend_from_slice(&[0; 4]);
    t.send(E, &frame(DATA, END_STREAM | PADDED, 1, &d));
    let rb = t.sv.block(&[(":status", "204")]);
    let mut rp = vec![2u8];
    rp.extend_from_slice(&rb);
    rp.extend_from_slice(&[0, 0]);
    let mut r = frame(HEADERS, END_HEADERS | PADDED, 1, &rp);
    // Padding only: no body.
    r.extend(frame(DATA, END_STREAM | PADDED, 1, &[5, 0, 0, 0, 0, 0]));
    t.trickle(I, &r, 2);
    let ex = t.only();
    assert_eq!(ex.path.as_deref(), Some("/p"));
    assert_eq!(ex.status, Some(204));
    assert_eq!(ex.req_header_bytes, block.len() as u64);
    assert_eq!(ex.resp_header_bytes, rb.len() as u64);
    assert_eq!((ex.req_body_bytes, ex.resp_body_bytes), (3, 0));
    assert!(ex.complete && !ex.partial);
    // A padded frame whose padding length was not captured: counted, marked.
    let r = t.req(3, &get("/q"), true);
    t.send(E, &r);
    let r = t.resp(3, &[(":status", "200")], false);
    let mut s = r.clone();
    s.extend(frame(DATA, END_STREAM | PADDED, 3, &[2, b'a', b'b', 0, 0]));
    t.send_len(I, &s[..s.len() - 5], s.len() as u64);
    let ex = &t.out[1];
    assert!(ex.complete && ex.partial && ex.notes == ["padding_unknown"]);
    assert_eq!(ex.resp_body_bytes, 4);
    // Padding longer than the payload breaks the frame: sync is lost, not a panic.
    t.send(E, &frame(DATA, PADDED, 1, &[9, 1, 2]));
    assert_eq!(t.c.stats().parse_errors, 1);
    assert_eq!(t.c.stats().resyncs, 1);
}

#[test]
fn continuation_over_many_frames_and_calls() {
    let mut t = T::new();
    let mut h = get("/long");
    let big = "v".repeat(300);
    h.push(("x-big", big.clone()));
    h.push((
        "b3",
        "463ac35c9f6413ad48485a3953bb6124-0020000000000001-1".into(),
    ));
    let block = t.cl.block(&as_refs(&h));
    let frames = split_block(3, &block, true, 7);
    assert!(frames.len() > 40 * 9);
    t.trickle(E, &frames, 5);
    // Several frames per call.
    let mut r = t.resp(3, &[(":status", "200")], false);
    r.extend(data(3, b"x", false));
    r.extend(data(3, b"yz", true));
    t.send(I, &r);
    let ex = t.only();
    assert_eq!(ex.stream_id, 3);
    assert_eq!(ex.path.as_deref(), Some("/long"));
    assert_eq!(ex.req_header_bytes, block.len() as u64);
    assert_eq!(ex.resp_body_bytes, 3);
    let tr = ex.trace.as_ref().unwrap();
    assert_eq!(tr.provider, "zipkin");
    assert_eq!(tr.trace_id, "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(tr.span_id.as_deref(), Some("0020000000000001"));
    assert!(ex.complete && !ex.partial);
    // CONTINUATION interrupted by another frame is a protocol error: resync.
    let b = t.cl.block(&as_refs(&get("/x")));
    let mut bad = split_block(5, &b, true, 4);
    bad.truncate(9 + 4);
    bad.extend(data(5, b"zz", true));
    t.send(E, &bad);
    assert_eq!(t.c.stats().parse_errors, 1);
}

#[test]
fn control_frames_and_unknown_types_are_skipped() {
    let mut t = T::new();
    let mut c = t.req(1, &get("/c"), true);
    c.extend(frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 9]));
    c.extend(frame(PING, 0, 0, &[7; 8]));
    c.extend(frame(0x10, 0, 1, &[0, 0, 1, 2, 3])); // PRIORITY_UPDATE
    c.extend(frame(0xfa, 0xff, 0, b"extension payload"));
    c.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 1, 0, 0]));
    t.send(E, &c);
    let mut s = frame(PING, ACK, 0, &[7; 8]);
    s.extend(settings(&[(1, 8192), (5, 32768)]));
    s.extend(t.resp(1, &[(":status", "404")], true));
    s.extend(frame(SETTINGS, ACK, 0, &[]));
    t.send(I, &s);
    let ex = t.only();
    assert_eq!(ex.status, Some(404));
    assert!(ex.complete && !ex.partial);
    assert_eq!(t.c.stats().parse_errors, 0);
    // The client's frames may now be 32 KiB; the server's still 16 KiB.
    assert_eq!(t.c.dirs[di(I)].max_frame, DEFAULT_MAX_FRAME);
    assert_eq!(t.c.dirs[di(E)].max_frame, 32768);
    assert_eq!(t.c.dirs[di(E)].hpack.announced, 8192);
}

#[test]
fn rst_stream_completes_with_code() {
    let mut t = T::new();
    let r = t.req(1, &grpc_req("/a.B/C"), false);
    t.send(E, &r);
    t.send(E, &data(1, &grpc_msgs(&[2]), false));
    let tr = t.send(I, &frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    let ex = t.only();
    assert_eq!(ex.reset_code, Some(8));
    assert!(ex.complete);
    assert_eq!(ex.status, None);
    assert_eq!(ex.req_messages, 1);
    assert_eq!(ex.resp_end_ns, 0);
    assert!(ex.req_end_ns < tr);
    assert_eq!(t.c.stats().rst_streams, 1);
    // Late frames of the reset stream are ignored.
    t.send(E, &data(1, b"late", true));
    t.close();
    assert_eq!(t.out.len(), 1);
}

#[test]
fn goaway_closes_streams_above_last_id() {
    let mut t = T::new();
    for id in [1, 3, 5] {
        let r = t.req(id, &get("/g"), true);
        t.send(E, &r);
    }
    let mut g = 1u32.to_be_bytes().to_vec();
    g.extend_from_slice(&0u32.to_be_bytes());
    g.extend_from_slice(b"bye");
    t.send(I, &frame(GOAWAY, 0, 0, &g));
    assert_eq!(t.out.len(), 2);
    assert!(t
        .out
        .iter()
        .all(|e| !e.complete && e.notes == ["goaway_not_processed"]));
    assert_eq!(
        t.out.iter().map(|e| e.stream_id).collect::<Vec<_>>(),
        vec![3, 5]
    );
    let r = t.resp(1, &[(":status", "200")], true);
    t.send(I, &r);
    assert_eq!(t.out.len(), 3);
    assert!(t.out[2].complete && t.out[2].stream_id == 1);
    assert_eq!(t.c.stats().goaways, 1);
    // A client's GOAWAY says nothing about client streams.
    let r = t.req(7, &get("/g"), true);
    t.send(E, &r);
    t.send(E, &frame(GOAWAY, 0, 0, &[0; 8]));
    assert_eq!(t.out.len(), 3);
    assert_eq!(t.c.open_streams(), 1);
}

#[test]
fn push_promise_keeps_hpack_in_sync_and_pushed_streams_are_ignored() {
    let mut t = T::new();
    let r = t.req(1, &get("/index"), true);
    t.send(E, &r);
    let pb = t.sv.block(&[
        (":method", "GET"),
        (":path", "/style.css"),
        ("grpc-message", "pushed"),
    ]);
    let mut pp = 2u32.to_be_bytes().to_vec();
    pp.extend_from_slice(&pb[..4]);
    let mut s = frame(PUSH_PROMISE, 0, 1, &pp);
    s.extend(frame(CONTINUATION, END_HEADERS, 1, &pb[4..]));
    // The response refers to the entry the promise added to the table.
    let rb =
        t.sv.block(&[(":status", "200"), ("grpc-message", "pushed")]);
    assert!(rb.len() <= 3, "expected indexed references: {rb:?}");
    s.extend(split_block(1, &rb, false, 100));
    s.extend(t.resp(
        2,
        &[(":status", "200"), ("content-type", "text/css")],
        false,
    ));
    s.extend(data(2, b"body{}", true));
    s.extend(data(1, b"<html>", true));
    t.send(I, &s);
    let ex = t.only();
    assert_eq!(ex.stream_id, 1);
    assert_eq!(ex.grpc_message.as_deref(), Some("pushed"));
    assert_eq!(ex.resp_body_bytes, 6);
    assert!(ex.complete && !ex.partial);
    let st = t.c.stats();
    assert_eq!(
        (st.push_promises_ignored, st.hpack_errors, st.streams),
        (1, 0, 1)
    );
}

#[test]
fn dynamic_table_size_updates() {
    let mut t = T::new();
    // Insert an entry, then shrink the table to 0 (evicting it) and grow it back.
    let mut b1 = vec![0x40, 5];
    b1.extend_from_slice(b"x-one");
    b1.extend_from_slice(&[1, b'1']);
    b1.extend(t.cl.block(&as_refs(&get("/1"))));
    t.send(E, &split_block(1, &b1, true, usize::MAX));
    let mut b2 = vec![0x20, 0x3f, 0xe1, 0x1f]; // size 0, then 4096
    b2.extend_from_slice(&[0x82, 0x86, 0x84]); // GET http /
    b2.extend_from_slice(&[0x40, 3, b'x', b'-', b'2', 1, b'2']);
    t.send(E, &split_block(3, &b2, true, usize::MAX));
    // Index 62 is now x-2; 63 does not exist any more.
    let b3 = [0x82, 0x86, 0x84, 0xbe];
    t.send(E, &split_block(5, &b3, true, usize::MAX));
    assert_eq!(t.c.stats().hpack_errors, 0);
    let b4 = [0x82, 0x86, 0x84, 0xbf];
    t.send(E, &split_block(7, &b4, true, usize::MAX));
    assert_eq!(t.c.stats().hpack_errors, 1);
    assert_eq!(t.c.stats().hpack_downgrades, 1);
    // A table larger than we keep: exact until an entry we dropped could still be there.
    let mut t = T::new();
    let mut b = vec![0x3f, 0xe1, 0xff, 0x7f, 0x82, 0x86, 0x84]; // 2 MiB
    b.extend_from_slice(&[0x40, 3, b'x', b'-', b'a', 1, b'1']);
    t.send(E, &split_block(1, &b, true, usize::MAX));
    for id in [3, 5, 7, 9] {
        let mut b = vec![0x82, 0x86, 0x84, 0xbe];
        for _ in 0..10 {
            b.extend_from_slice(&[0x40, 3, b'x', b'-', b'b', 0x7f, 0xe9, 0x0e]); // 2024 bytes
            b.extend(std::iter::repeat_n(b'v', 2024));
        }
        t.send(E, &split_block(id, &b, true, 16_000));
        // 62 is x-a only in the first of them.
        assert_eq!(t.c.stats().hpack_errors, 0);
        let downgraded = t.c.stats().hpack_downgrades;
        assert_eq!(downgraded, u64::from(id == 9), "stream {id}");
    }
    let st = t.c.stats();
    assert_eq!(
        (st.header_blocks_cut, st.hpack_fields_unknown, st.resyncs),
        (0, 0, 0)
    );
    assert!(t.c.dirs[di(E)].hpack.size <= TABLE_SIZE_CAP);
}

#[test]
fn hpack_error_turns_tolerant_and_marks_the_stream() {
    let mut t = T::new();
    let r = t.req(1, &get("/a"), true);
    t.send(E, &r);
    // Index 70 does not exist: the response block cannot be decoded.
    let mut s = split_block(1, &[0x88, 0xc6], false, usize::MAX);
    s.extend(data(1, b"ok", true));
    t.send(I, &s);
    let ex = t.only();
    assert!(ex.complete && ex.partial);
    assert!(ex.notes.contains(&"hpack_error"), "{:?}", ex.notes);
    // Fields decoded before the error are kept.
    assert_eq!(ex.status, Some(200));
    let st = t.c.stats();
    assert_eq!((st.hpack_errors, st.hpack_downgrades), (1, 1));
    // Later blocks still decode static and literal fields.
    t.out.clear();
    let r = t.req(3, &get("/b"), true);
    t.send(E, &r);
    let mut lit = vec![0x88, 0x0f, 0x10, 16]; // content-type, without indexing
    lit.extend_from_slice(b"application/json");
    t.send(I, &split_block(3, &lit, true, usize::MAX));
    let ex = t.only();
    assert_eq!(ex.status, Some(200));
    assert!(ex.complete && !ex.partial, "{ex:?}");
}

#[test]
fn interim_responses_are_ignored() {
    let mut t = T::new();
    let mut h = get("/up");
    h[0].1 = "PUT".into();
    h.push(("expect", "100-continue".into()));
    let r = t.req(1, &h, false);
    t.send(E, &r);
    let r = t.resp(1, &[(":status", "100")], false);
    t.send(I, &r);
    t.send(E, &data(1, b"payload", true));
    let r = t.resp(1, &[(":status", "103"), ("link", "</a>")], false);
    t.send(I, &r);
    let r = t.resp(1, &[(":status", "201")], false);
    let t3 = t.send(I, &r);
    let t4 = t.send(I, &data(1, b"", true));
    let ex = t.only();
    assert_eq!(ex.status, Some(201));
    assert_eq!(ex.method.as_deref(), Some("PUT"));
    assert_eq!((ex.resp_start_ns, ex.resp_end_ns), (t3, t4));
    assert_eq!(ex.req_body_bytes, 7);
    assert!(ex.complete && !ex.partial);
}

#[test]
fn hundred_interleaved_streams() {
    let mut t = T::new();
    let ids: Vec<u32> = (0..100).map(|k| 2 * k + 1).collect();
    let mut c = Vec::new();
    for &id in &ids {
        let mut h = grpc_req(&format!("/svc.S/M{id}"));
        h.push(("x-id", id.to_string()));
        c.extend(t.req(id, &h, false));
    }
    // Request bodies interleaved, three messages each across frames.
    for k in 0..3 {
        for &id in &ids {
            let m = grpc_msgs(&[id as usize % 13 + k]);
            c.extend(data(id, &m[..2], false));
            c.extend(data(id, &m[2..], k == 2));
        }
    }
    t.trickle(E, &c, 1000);
    let mut rng = XorShift(7);
    let mut order = ids.clone();
    rng.shuffle(&mut order);
    let mut s = Vec::new();
    for &id in &order {
        s.extend(t.resp(
            id,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        ));
    }
    rng.shuffle(&mut order);
    for &id in &order {
        for _ in 0..id_msgs(id) {
            s.extend(data(id, &grpc_msgs(&[5]), false));
        }
    }
    rng.shuffle(&mut order);
    for &id in &order {
        let status = (id % 17).to_string();
        s.extend(t.resp(id, &[("grpc-status", &status)], true));
    }
    t.trickle(I, &s, 777);
    assert_eq!(t.out.len(), 100);
    let mut seen: Vec<u32> = t.out.iter().map(|e| e.stream_id).collect();
    seen.sort_unstable();
    assert_eq!(seen, ids);
    for ex in &t.out {
        let id = ex.stream_id;
        assert!(ex.complete && !ex.partial && ex.grpc, "{ex:?}");
        assert_eq!(ex.path, Some(format!("/svc.S/M{id}")));
        assert_eq!(ex.req_messages, 3);
        assert_eq!(ex.resp_messages, id_msgs(id));
        assert_eq!(ex.resp_body_bytes, 10 * id_msgs(id));
        assert_eq!(ex.grpc_status, Some(id % 17));
        assert_eq!(ex.status, Some(200));
    }
    assert_eq!(t.c.stats().streams, 100);
}

fn id_msgs(id: u32) -> u64 {
    u64::from(id % 4)
}

#[test]
fn grpc_unary_and_trailers_only() {
    let mut t = T::new();
    let mut c = t.req(1, &grpc_req("/helloworld.Greeter/SayHello"), false);
    c.extend(data(1, &grpc_msgs(&[12]), true));
    let t1 = t.send(E, &c);
    let mut s = t.resp(
        1,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.extend(data(1, &grpc_msgs(&[30]), false));
    t.send(I, &s);
    let r = t.resp(1, &[("grpc-status", "0")], true);
    let t3 = t.send(I, &r);
    let ex = &t.out[0];
    assert!(ex.grpc && ex.complete && !ex.partial && !ex.trailers_only);
    assert_eq!(ex.content_type.as_deref(), Some("application/grpc"));
    assert_eq!((ex.req_messages, ex.resp_messages), (1, 1));
    assert_eq!((ex.req_body_bytes, ex.resp_body_bytes), (17, 35));
    assert_eq!(ex.grpc_status, Some(0));
    assert_eq!(
        (ex.req_start_ns, ex.req_end_ns, ex.resp_end_ns),
        (t1, t1, t3)
    );
    // Trailers-only: an error without a body.
    let mut c = t.req(3, &grpc_req("/helloworld.Greeter/Nope"), false);
    c.extend(data(3, &grpc_msgs(&[1]), true));
    t.send(E, &c);
    let r = t.resp(
        3,
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "12"),
            (
                "grpc-message",
                "unknown method %22Nope%22: 100%25 caf%C3%A9 %zz",
            ),
        ],
        true,
    );
    t.send(I, &r);
    let ex = &t.out[1];
    assert!(ex.trailers_only && ex.complete && !ex.partial);
    assert_eq!(ex.grpc_status, Some(12));
    assert_eq!(
        ex.grpc_message.as_deref(),
        Some("unknown method \"Nope\": 100% café %zz")
    );
    assert_eq!(ex.resp_messages, 0);
    assert_eq!(ex.status, Some(200));
}

#[test]
fn grpc_streaming_kinds() {
    let mut t = T::new();
    // Server streaming: many messages, frames cutting through prefixes, tiny calls.
    let c = [
        t.req(1, &grpc_req("/s.S/Server"), false),
        data(1, &grpc_msgs(&[4]), true),
    ]
    .concat();
    t.send(E, &c);
    let sizes: Vec<usize> = (0..50).map(|k| k * 7 % 23).collect();
    let body = grpc_msgs(&sizes);
    let mut s = t.resp(
        1,
        &[
            (":status", "200"),
            ("content-type", "application/grpc+proto"),
        ],
        false,
    );
    for piece in body.chunks(7) {
        s.extend(data(1, piece, false));
    }
    s.extend(t.resp(1, &[("grpc-status", "0")], true));
    t.trickle(I, &s, 3);
    let ex = &t.out[0];
    assert_eq!((ex.req_messages, ex.resp_messages), (1, 50));
    assert_eq!(ex.resp_body_bytes, body.len() as u64);
    assert!(ex.complete && !ex.partial, "{ex:?}");
    // Client streaming: END_STREAM on an empty DATA frame.
    let mut c = t.req(3, &grpc_req("/s.S/Client"), false);
    for k in 0..20 {
        c.extend(data(3, &grpc_msgs(&[k, 1]), false));
    }
    c.extend(data(3, b"", true));
    t.trickle(E, &c, 11);
    let mut s = t.resp(
        3,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.extend(data(3, &grpc_msgs(&[8]), false));
    s.extend(t.resp(3, &[("grpc-status", "0")], true));
    t.send(I, &s);
    let ex = &t.out[1];
    assert_eq!((ex.req_messages, ex.resp_messages), (40, 1));
    // Bidi: both sides interleaved.
    let r = t.req(5, &grpc_req("/s.S/Bidi"), false);
    t.send(E, &r);
    let r = t.resp(
        5,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    t.send(I, &r);
    for k in 0..10 {
        t.send(E, &data(5, &grpc_msgs(&[k]), k == 9));
        t.send(I, &data(5, &grpc_msgs(&[k, k]), false));
    }
    let r = t.resp(5, &[("grpc-status", "0")], true);
    t.send(I, &r);
    let ex = &t.out[2];
    assert_eq!((ex.req_messages, ex.resp_messages), (10, 20));
    assert!(ex.complete && !ex.partial);
}

#[test]
fn grpc_framing_with_uncaptured_body() {
    let mut t = T::new();
    let c = [
        t.req(1, &grpc_req("/s.S/Big"), false),
        data(1, &grpc_msgs(&[1]), true),
    ]
    .concat();
    t.send(E, &c);
    let h = t.resp(
        1,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    t.send(I, &h);
    // One 10000-byte message in a frame cut at 4096 bytes: the lost bytes are inside the
    // message, counting goes on.
    let big = data(1, &grpc_msgs(&[10_000]), false);
    t.send_len(I, &big[..4096], big.len() as u64);
    let tr = t.resp(1, &[("grpc-status", "0")], true);
    t.send(I, &tr);
    let ex = &t.out[0];
    assert_eq!(ex.resp_messages, 1);
    assert_eq!(ex.resp_body_bytes, 10_005);
    assert!(ex.complete && !ex.partial, "{ex:?}");
    assert_eq!(t.c.stats().resyncs, 0);
    // Three messages in a frame cut at 4096: the third prefix is not seen.
    let c = [
        t.req(3, &grpc_req("/s.S/Big"), false),
        data(3, &grpc_msgs(&[1]), true),
    ]
    .concat();
    t.send(E, &c);
    let mut s = t.resp(
        3,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.extend(data(3, &grpc_msgs(&[3000, 3000, 3000]), false));
    let cut = s.len() - 9015 + 4096;
    t.send_len(I, &s[..cut], s.len() as u64);
    let tr = t.resp(3, &[("grpc-status", "0")], true);
    t.send(I, &tr);
    let ex = &t.out[1];
    assert!(ex.complete && ex.partial);
    assert_eq!(ex.notes, ["grpc_framing_lost"]);
    assert_eq!(ex.resp_body_bytes, 9015);
    assert_eq!(ex.grpc_status, Some(0));
}

#[test]
fn uncaptured_tail_resyncs_at_next_call() {
    let mut t = T::new();
    let mut c = t.req(1, &grpc_req("/s.S/A"), false);
    c.extend(data(1, &grpc_msgs(&[1]), true));
    c.extend(t.req(3, &grpc_req("/s.S/A"), false));
    c.extend(data(3, &grpc_msgs(&[1]), true));
    t.send(E, &c);
    // One big write: headers, 8000 bytes of DATA, trailers; only 4096 bytes captured.
    let mut s = t.resp(
        1,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.extend(data(1, &grpc_msgs(&[3000]), false));
    s.extend(data(1, &grpc_msgs(&[5000]), false));
    s.extend(t.resp(1, &[("grpc-status", "0")], true));
    t.send_len(I, &s[..4096], s.len() as u64);
    assert_eq!(t.c.stats().resyncs, 1);
    assert!(t.c.stats().bytes_skipped > 0);
    assert!(t.out.is_empty());
    // A call that starts mid-frame is refused; the next one starts at a frame.
    t.send(I, &[0x42; 100]);
    let mut s = t.resp(
        3,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.extend(data(3, &grpc_msgs(&[10]), false));
    s.extend(t.resp(3, &[("grpc-status", "0")], true));
    t.send(I, &s);
    let ex = t.only().clone();
    assert_eq!(ex.stream_id, 3);
    assert_eq!(ex.status, Some(200));
    // grpc-status: 0 refers to the table entry added by the lost trailers of stream 1.
    assert!(ex.partial && ex.complete);
    // Its response started after the loss: no frame of it was lost.
    assert_eq!(ex.notes, ["hpack_state_lost"]);
    assert_eq!(ex.grpc_status, None);
    let st = t.c.stats();
    assert_eq!((st.resyncs, st.hpack_downgrades), (1, 1));
    assert_eq!(st.hpack_fields_unknown, 1);
    t.close();
    let ex1 = &t.out[1];
    assert_eq!(ex1.stream_id, 1);
    assert!(!ex1.complete && ex1.partial);
    assert!(ex1.notes.contains(&"frames_lost") && ex1.notes.contains(&"closed_before_complete"));
    assert!(ex1.notes.contains(&"grpc_framing_lost"));
}

#[test]
fn frame_ending_exactly_at_capture_end_keeps_sync() {
    let mut t = T::new();
    let r = t.req(1, &get("/dl"), true);
    t.send(E, &r);
    let r = t.resp(1, &[(":status", "200")], false);
    t.send(I, &r);
    let d = data(1, &[7; 9000], false);
    t.send_len(I, &d[..4096], d.len() as u64);
    t.send(I, &data(1, b"end", true));
    let ex = t.only();
    assert_eq!(ex.resp_body_bytes, 9003);
    assert!(ex.complete && !ex.partial);
    assert_eq!(t.c.stats().resyncs, 0);
    // Uncaptured bytes inside a header block: decoded as far as captured, then tolerant.
    let mut h = get("/cut");
    h.push(("x-pad", "p".repeat(200)));
    let r = t.req(3, &h, true);
    t.send_len(E, &r[..60], r.len() as u64);
    let r = t.resp(3, &[(":status", "200")], true);
    t.send(I, &r);
    let ex = &t.out[1];
    assert_eq!(ex.path.as_deref(), Some("/cut"));
    assert!(ex.complete && ex.partial);
    assert!(ex.notes.contains(&"header_block_cut"));
    assert_eq!(t.c.stats().header_blocks_cut, 1);
    assert_eq!(t.c.stats().hpack_downgrades, 1);
}

#[test]
fn midstream_join_decodes_what_hpack_allows() {
    let mut cl = Peer::new();
    let mut sv = Peer::new();
    // Before we joined: table entries we never see.
    let _ = cl.block(&[("x-old", "1"), ("grpc-timeout", "5S")]);
    let _ = sv.block(&[("x-a", "1"), ("x-b", "2")]);
    let mut t = T::with(H2Conn::new_midstream(Role::Server, H2Limits::default()));
    t.cl = cl;
    t.sv = sv;
    // The first calls start mid-frame: skipped.
    t.send(I, b"\x00\x01garbage that is not a frame");
    assert_eq!(t.c.stats().bytes_skipped, 29);
    // A stream that started before we joined: only its response is seen (server: Egress).
    let mut s = t.resp(
        1,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.extend(data(1, &grpc_msgs(&[4]), false));
    s.extend(t.resp(1, &[("grpc-status", "0")], true));
    let t1 = t.send(E, &s);
    let ex = t.only().clone();
    assert_eq!(
        (ex.stream_id, ex.method.as_deref(), ex.path.as_deref()),
        (1, None, None)
    );
    assert!(ex.complete && ex.partial && ex.grpc);
    assert!(ex.notes.contains(&"request_unseen"), "{:?}", ex.notes);
    assert_eq!(ex.grpc_status, Some(0));
    assert_eq!(ex.resp_messages, 1);
    assert_eq!(ex.resp_end_ns, t1);
    // A new stream: static and literal fields decode, the old entry does not.
    let r = t.req(
        3,
        &[
            (":method", "POST".into()),
            (":path", "/n.S/M".into()),
            ("x-old", "1".into()),
        ],
        true,
    );
    t.send(I, &r);
    // grpc-status: 0 is now a known entry in front of the two unknown ones.
    let r = t.resp(
        3,
        &[(":status", "200"), ("grpc-status", "0"), ("x-a", "1")],
        true,
    );
    t.send(E, &r);
    let ex = &t.out[1];
    assert_eq!(ex.method.as_deref(), Some("POST"));
    assert_eq!(ex.path.as_deref(), Some("/n.S/M"));
    assert_eq!(ex.grpc_status, Some(0));
    assert!(ex.partial && ex.notes == ["hpack_state_lost"], "{ex:?}");
    assert_eq!(t.c.stats().hpack_fields_unknown, 2);
    assert_eq!(t.c.stats().hpack_errors, 0);
    // A late frame of the finished pre-join stream does not revive it.
    t.send(E, &data(1, b"x", true));
    t.close();
    assert_eq!(t.out.len(), 2);
    assert_eq!(t.c.role(), Role::Server);
}

#[test]
fn midstream_role_learned_from_pseudo_headers() {
    let mut t = T::with(H2Conn::new_midstream(Role::Unknown, H2Limits::default()));
    let r = t.req(9, &get("/x"), true);
    t.send(E, &r);
    let r = t.resp(9, &[(":status", "302")], true);
    t.send(I, &r);
    assert_eq!(t.c.role(), Role::Client);
    let ex = t.only();
    assert_eq!((ex.method.as_deref(), ex.status), (Some("GET"), Some(302)));
    assert!(ex.complete && !ex.partial);
}

#[test]
fn unknown_role_learned_from_preface() {
    let mut t = T::with(H2Conn::new(Role::Unknown, H2Limits::default()));
    t.send(E, &settings(&[]));
    let mut c = PREFACE.to_vec();
    c.extend(settings(&[]));
    c.extend(t.req(1, &get("/u"), true));
    t.send(I, &c);
    assert_eq!(t.c.role(), Role::Server);
    let r = t.resp(1, &[(":status", "200")], true);
    t.send(E, &r);
    let ex = t.only();
    assert_eq!(ex.path.as_deref(), Some("/u"));
    assert!(ex.complete);
}

#[test]
fn gap_turns_hpack_tolerant_and_marks_streams() {
    let mut t = T::new();
    let r = t.req(1, &get("/one"), true);
    t.send(E, &r);
    let r = t.req(3, &get("/three"), true);
    t.send(E, &r);
    let r = t.resp(1, &[(":status", "200")], false);
    t.send(I, &r);
    t.c.gap(I);
    assert_eq!(t.c.stats().resyncs, 1);
    assert_eq!(t.c.stats().hpack_downgrades, 1);
    // Stream 3's response starts after the gap: it is whole.
    let mut s = t.resp(3, &[(":status", "200")], false);
    s.extend(data(3, b"three", true));
    t.send(I, &s);
    let ex = t.only();
    assert_eq!(ex.stream_id, 3);
    assert!(ex.complete && !ex.partial, "{ex:?}");
    t.close();
    let ex = &t.out[1];
    assert_eq!(ex.stream_id, 1);
    assert!(!ex.complete && ex.partial);
    assert_eq!(ex.notes, ["gap", "closed_before_complete"]);
}

#[test]
fn gap_in_middle_of_header_block() {
    let mut t = T::new();
    let r = t.req(1, &get("/before"), false);
    t.send(E, &r[..r.len() - 3]);
    t.c.gap(E);
    let r = t.req(3, &get("/after"), true);
    t.send(E, &r);
    t.close();
    assert_eq!(t.out.len(), 2);
    let ex1 = &t.out[0];
    assert_eq!(ex1.stream_id, 1);
    assert!(ex1.notes.contains(&"header_block_cut"));
    let ex3 = &t.out[1];
    assert_eq!(ex3.stream_id, 3);
    assert_eq!(ex3.method.as_deref(), Some("GET"));
}

#[test]
fn close_reports_open_streams() {
    let mut t = T::new();
    let r = t.req(1, &get("/slow"), true);
    t.send(E, &r);
    let r = t.resp(1, &[(":status", "200")], false);
    let t2 = t.send(I, &r);
    t.send(I, &data(1, b"part", false));
    t.close();
    let ex = t.only();
    assert!(!ex.complete && !ex.partial);
    assert_eq!(ex.notes, ["closed_before_complete"]);
    assert_eq!(ex.status, Some(200));
    assert_eq!(ex.resp_start_ns, t2);
    assert_eq!(ex.resp_body_bytes, 4);
    // Nothing after close.
    t.send(E, &data(1, b"x", true));
    t.close();
    assert_eq!(t.out.len(), 1);
}

#[test]
fn stream_cap_and_header_block_cap() {
    let mut t = T::limits(H2Limits {
        max_streams: 2,
        ..H2Limits::default()
    });
    for id in [1, 3, 5] {
        let r = t.req(id, &get("/s"), true);
        t.send(E, &r);
    }
    assert_eq!(t.c.stats().streams_cut, 1);
    assert_eq!(t.c.open_streams(), 2);
    for id in [5, 3, 1] {
        let r = t.resp(id, &[(":status", "200")], true);
        t.send(I, &r);
    }
    assert_eq!(
        t.out.iter().map(|e| e.stream_id).collect::<Vec<_>>(),
        vec![3, 1]
    );

    let mut t = T::limits(H2Limits {
        max_header_block: 64,
        ..H2Limits::default()
    });
    let mut h = get("/big");
    h.push(("x-big", "b".repeat(500)));
    let r = t.req(1, &h, true);
    t.trickle(E, &r, 50);
    assert!(t.c.frame_bytes() <= 64);
    let r = t.resp(1, &[(":status", "200")], true);
    t.send(I, &r);
    let ex = &t.out[0];
    assert_eq!(ex.path.as_deref(), Some("/big"));
    assert!(ex.req_header_bytes > 500);
    assert!(ex.partial && ex.notes.contains(&"header_block_cut"));
    let st = t.c.stats();
    assert_eq!((st.header_blocks_cut, st.hpack_downgrades), (1, 1));
    // The next request still decodes its literal fields.
    let r = t.req(3, &get("/next"), true);
    t.send(E, &r);
    let r = t.resp(3, &[(":status", "200")], true);
    t.send(I, &r);
    assert_eq!(t.out[1].path.as_deref(), Some("/next"));
}

#[test]
fn data_is_never_buffered() {
    let mut t = T::new();
    let r = t.req(1, &get("/big"), true);
    // The client accepts frames of up to 1 MiB.
    t.send(E, &[settings(&[(5, 1 << 20)]), r].concat());
    let r = t.resp(1, &[(":status", "200")], false);
    t.send(I, &r);
    let d = data(1, &vec![1u8; 200_000], true);
    for c in d.chunks(997) {
        t.send(I, c);
        assert!(t.c.frame_bytes() <= FRAME_HEADER);
    }
    assert_eq!(t.only().resp_body_bytes, 200_000);
}

#[test]
fn h2c_upgrade_stream_one() {
    let c = H2Conn::after_h2c_upgrade(
        Role::Server,
        H2Limits::default(),
        "GET".into(),
        "/up".into(),
        Some("h.local".into()),
        500,
        80,
    );
    let mut t = T::with(c);
    let mut c = PREFACE.to_vec();
    c.extend(settings(&[]));
    t.send(I, &c);
    let mut s = settings(&[]);
    s.extend(t.resp(
        1,
        &[(":status", "200"), ("content-type", "text/plain")],
        false,
    ));
    s.extend(data(1, b"upgraded", true));
    let t2 = t.send(E, &s);
    let ex = t.only();
    assert_eq!(ex.method.as_deref(), Some("GET"));
    assert_eq!(ex.path.as_deref(), Some("/up"));
    assert_eq!(ex.authority.as_deref(), Some("h.local"));
    assert_eq!((ex.req_start_ns, ex.req_header_bytes), (500, 80));
    assert_eq!(
        (ex.status, ex.resp_body_bytes, ex.resp_end_ns),
        (Some(200), 8, t2)
    );
    assert!(ex.complete && !ex.partial, "{ex:?}");
    // Unknown role: the response side is the one with frames.
    let c = H2Conn::after_h2c_upgrade(
        Role::Unknown,
        H2Limits::default(),
        "GET".into(),
        "/".into(),
        None,
        1,
        10,
    );
    let mut t = T::with(c);
    let s = [settings(&[]), data(1, b"x", true)].concat();
    t.send(I, &s);
    assert_eq!(t.only().resp_body_bytes, 1);
}

#[test]
fn sw8_trace_context() {
    let mut t = T::new();
    let mut h = get("/t");
    // trace "abc", segment "seg", span 5, service "svc", instance "i", endpoint "/e", peer "p:1"
    h.push(("sw8", "1-YWJj-c2Vn-5-c3Zj-aQ==-L2U=-cDox".into()));
    let r = t.req(1, &h, true);
    t.send(E, &r);
    let r = t.resp(1, &[(":status", "200")], true);
    t.send(I, &r);
    let tr = t.only().trace.clone().unwrap();
    assert_eq!(tr.provider, "skywalking");
    assert_eq!(tr.trace_id, "abc");
    assert_eq!(tr.segment_id.as_deref(), Some("seg"));
    assert_eq!(tr.span_id.as_deref(), Some("5"));
    assert_eq!(tr.parent_service.as_deref(), Some("svc"));
}

#[test]
fn expire_lost_reports_stale_suspects() {
    let mut t = T::new();
    let r = t.req(1, &get("/z"), true);
    t.send(E, &r);
    let r = t.resp(1, &[(":status", "200")], false);
    t.send(I, &r);
    let mut s = data(1, &[0; 5000], false);
    s.extend(data(1, b"", true));
    t.send_len(I, &s[..100], s.len() as u64);
    let mut out = Vec::new();
    t.c.expire_lost(t.ts + 10, 1_000, &mut out);
    assert!(out.is_empty());
    t.c.expire_lost(t.ts + 2_000, 1_000, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].notes.contains(&"expired_after_loss"));
}

/// A plausible conversation: (client bytes, server bytes).
fn traffic(rng: &mut XorShift) -> (Vec<u8>, Vec<u8>) {
    let mut cl = Peer::new();
    let mut sv = Peer::new();
    let mut c = PREFACE.to_vec();
    c.extend(settings(&[(1, 4096), (4, 65535)]));
    let mut s = settings(&[(3, 100), (5, 32768)]);
    for k in 0..(1 + rng.below(12) as u32) {
        let id = 2 * k + 1;
        let grpc = rng.below(2) == 0;
        let h = if grpc {
            grpc_req("/f.S/M")
        } else {
            get(&format!("/p{}", rng.below(5)))
        };
        let b = cl.block(&as_refs(&h));
        c.extend(split_block(id, &b, !grpc, 1 + rng.below(40) as usize));
        if grpc {
            let n = rng.below(4) as usize;
            let sizes: Vec<usize> = (0..n).map(|_| rng.below(300) as usize).collect();
            c.extend(data(id, &grpc_msgs(&sizes), true));
        }
        if rng.below(5) == 0 {
            s.extend(frame(RST_STREAM, 0, id, &[0, 0, 0, 8]));
            continue;
        }
        let ct = if grpc {
            "application/grpc"
        } else {
            "text/html"
        };
        let b = sv.block(&[(":status", "200"), ("content-type", ct)]);
        s.extend(split_block(id, &b, false, 1 + rng.below(40) as usize));
        s.extend(data(id, &vec![3; rng.below(5000) as usize], !grpc));
        if grpc {
            let b = sv.block(&[("grpc-status", "0")]);
            s.extend(split_block(id, &b, true, 100));
        }
    }
    (c, s)
}

/// Random calls: cut traffic, mutated traffic, random bytes, truncated captures, gaps.
#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let limits = H2Limits {
        max_streams: 16,
        max_header_block: 512,
        max_buffered: 1024,
        max_retained: 16 * 1024,
    };
    let mut chunks = 0;
    let mut exchanges = 0;
    for round in 0..300 {
        let mut c = match round % 4 {
            0 => H2Conn::new(Role::Client, limits),
            1 => H2Conn::new_midstream(Role::Unknown, limits),
            2 => H2Conn::new(Role::Unknown, limits),
            _ => H2Conn::after_h2c_upgrade(
                Role::Server,
                limits,
                "GET".into(),
                "/".into(),
                None,
                0,
                0,
            ),
        };
        let (mut cb, mut sb) = traffic(&mut rng);
        let mutate = round % 3 != 0;
        for buf in [&mut cb, &mut sb] {
            if mutate {
                for _ in 0..rng.below(8) {
                    let at = rng.below(buf.len() as u64) as usize;
                    buf[at] = rng.next() as u8;
                }
            }
        }
        let mut pos = [0usize, 0usize];
        let mut out = Vec::new();
        let mut ts = 0;
        while pos[0] < cb.len() || pos[1] < sb.len() {
            ts += 1;
            let k = rng.below(2) as usize;
            let buf = if k == 0 { &cb } else { &sb };
            let dir = DIRS[k];
            let roll = rng.below(100);
            if roll < 3 {
                c.gap(dir);
                continue;
            }
            let noise: Vec<u8>;
            let (bytes, len) = if roll < 8 {
                let n = rng.below(64) as usize;
                noise = (0..n).map(|_| rng.next() as u8).collect();
                (&noise[..], n as u64 + rng.below(3) * rng.below(100_000))
            } else {
                let p = pos[k];
                let n = (1 + rng.below(3000) as usize).min(buf.len() - p);
                pos[k] += n;
                let cap = if rng.below(4) == 0 {
                    rng.below(n as u64 + 1) as usize
                } else {
                    n
                };
                (&buf[p..p + cap], n as u64)
            };
            c.feed(
                &Chunk {
                    dir,
                    start_ns: ts,
                    end_ns: ts,
                    len,
                    data: bytes,
                },
                &mut out,
            );
            chunks += 1;
            let tables: usize = c.dirs.iter().map(|d| d.hpack.held()).sum();
            assert!(c.buffered_bytes() - tables - c.kept <= 2 * (limits.max_buffered + 32));
            assert!(c.kept <= limits.max_retained);
            assert!(tables <= 2 * TABLE_SIZE_CAP);
            assert!(c.open_streams() <= limits.max_streams);
        }
        c.close(ts + 1, &mut out);
        assert_eq!(c.open_streams(), 0);
        exchanges += out.len();
        for ex in &out {
            assert!(ex.req_messages < 1000 && ex.resp_messages < 1000);
        }
    }
    assert!(chunks > 3000, "{chunks}");
    assert!(exchanges > 100, "{exchanges}");
    // Pure noise, all connection kinds.
    for round in 0..200 {
        let mut c = if round % 2 == 0 {
            H2Conn::new(Role::Unknown, limits)
        } else {
            H2Conn::new_midstream(Role::Client, limits)
        };
        let mut out = Vec::new();
        for ts in 0..20 {
            let n = rng.below(200) as usize;
            let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            if rng.below(3) == 0 && b.len() >= 9 {
                // A frame header that claims to be valid.
                b[..9].copy_from_slice(&frame(rng.below(10) as u8, 0, 1, &[])[..9]);
                b[2] = rng.next() as u8;
            }
            let len = n as u64 + rng.below(2) * rng.below(1 << 20);
            let ch = Chunk {
                dir: DIRS[rng.below(2) as usize],
                start_ns: ts,
                end_ns: ts,
                len,
                data: &b,
            };
            c.feed(&ch, &mut out);
            let tables: usize = c.dirs.iter().map(|d| d.hpack.held()).sum();
            assert!(c.buffered_bytes() - tables - c.kept <= 2 * (limits.max_buffered + 32));
            assert!(c.kept <= limits.max_retained);
            assert!(tables <= 2 * TABLE_SIZE_CAP);
        }
        c.close(100, &mut out);
    }
}

/// RFC 7541 §5.1 integer: `flags` in the first byte's high bits.
fn hint(v: usize, prefix: u8, flags: u8) -> Vec<u8> {
    let max = (1usize << prefix) - 1;
    if v < max {
        return vec![flags | v as u8];
    }
    let mut out = vec![flags | max as u8];
    let mut rest = v - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// A raw (not Huffman-coded) string literal.
fn hstr(b: &[u8]) -> Vec<u8> {
    let mut out = hint(b.len(), 7, 0);
    out.extend_from_slice(b);
    out
}

/// A literal field with a new name, added to the table.
fn lit_insert(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    out.extend(hstr(name));
    out.extend(hstr(value));
    out
}

/// Preface, SETTINGS with a 64 KiB table for the client's blocks, and a first block
/// on stream 1 filling the table with the fields a record keeps, 4000 bytes each.
fn hostile_open(l: H2Limits) -> T {
    let mut t = T::with(H2Conn::new(Role::Client, l));
    let mut c = PREFACE.to_vec();
    c.extend(settings(&[]));
    t.send(E, &c);
    let mut sv = settings(&[(SETTINGS_HEADER_TABLE_SIZE, 65_536)]);
    sv.extend(frame(SETTINGS, ACK, 0, &[]));
    t.send(I, &sv);
    let mut block = hint(65_536, 5, 0x20);
    block.push(0x82); // :method GET
    for name in KEPT {
        block.extend(lit_insert(name.as_bytes(), &[b'v'; 4000]));
    }
    t.send(E, &split_block(1, &block, true, 16_000));
    t
}

const KEPT: [&str; 8] = [
    ":path",
    ":authority",
    "user-agent",
    "content-type",
    "sw8",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
];

/// A 21-byte HEADERS frame naming every kept field of the table: before the budget,
/// each such stream held 2 x 4000 x 8 bytes until it ended.
fn indexed_request(stream: u32) -> Vec<u8> {
    let mut block = vec![0x82];
    // Oldest entry (`:path`) first: the table lists the newest first, from 62.
    block.extend((0..KEPT.len()).rev().map(|k| 0x80 | (62 + k) as u8));
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
}

/// Streams that never end, each asking to keep 32 KB of header values from 17 bytes
/// of indexes, are held to the connection's budget: the stalest are reported early,
/// marked and counted, and `buffered_bytes` counts what is kept.
#[test]
fn shed_reports_open_streams_and_keeps_the_tables() {
    let l = H2Limits::default();
    let mut t = hostile_open(l);
    for k in 1..20u32 {
        t.send(E, &indexed_request(2 * k + 1));
    }
    let before = t.out.len();
    let held = t.c.buffered_bytes();
    let mut out = Vec::new();
    t.c.shed(&mut out);
    assert!(t.out.len() == before && out.len() >= 19, "{}", out.len());
    assert!(out
        .iter()
        .all(|x| !x.complete && x.notes.contains(&"memory_budget")));
    assert_eq!(t.c.stats().streams_evicted_memory, out.len() as u64);
    // Only the header tables (and frame buffers) are left; they still decode.
    assert_eq!(t.c.buffered_bytes(), held_tables(&t.c));
    assert!(t.c.buffered_bytes() < held);
    t.send(E, &indexed_request(101));
    t.close();
    let last = t.out.last().expect("the stream after the shed is reported");
    assert_eq!(last.path.as_ref().map(String::len), Some(4000));
}

#[test]
fn idle_streams_are_held_to_the_memory_budget() {
    let l = H2Limits::default();
    let mut t = hostile_open(l);
    let mut most = 0;
    for k in 1..3000u32 {
        t.send(E, &indexed_request(2 * k + 1));
        most = most.max(t.c.buffered_bytes());
    }
    let slack = 2 * (TABLE_SIZE_CAP + l.max_buffered + l.max_header_block);
    assert!(most <= l.max_retained + slack, "held {most}");
    assert!(most >= l.max_retained / 2, "held only {most}");
    let st = t.c.stats().clone();
    assert!(st.streams_evicted_memory > 1000, "{st:?}");
    let early: Vec<_> = t
        .out
        .iter()
        .filter(|x| x.notes.contains(&"memory_budget"))
        .collect();
    assert_eq!(early.len() as u64, st.streams_evicted_memory);
    for x in &early {
        assert!(!x.complete);
        assert_eq!(x.method.as_deref(), Some("GET"));
        // Each value is kept whole while the head's total allows.
        assert_eq!(x.path.as_ref().map(String::len), Some(4000));
    }
    // A stream's head keeps at most MAX_HEAD_KEPT bytes: the rest is marked.
    assert!(early
        .iter()
        .all(|x| x.partial && x.notes.contains(&"header_value_truncated")));
    t.close();
    assert_eq!(t.c.buffered_bytes() - held_tables(&t.c), 0);
}

fn held_tables(c: &H2Conn) -> usize {
    c.dirs.iter().map(|d| d.hpack.held()).sum()
}

/// A block repeating one field, and literals reusing a 60 KB name from the table, cost
/// no more copies than the record keeps; a block with more fields than are looked at
/// is marked and counted, and the table stays in step after it.
#[test]
fn hostile_blocks_do_not_multiply_copies() {
    let mut t = hostile_open(H2Limits::default());
    // 30,000 copies of :path (4000 bytes in the table, the oldest entry), 1 byte each.
    let path_index = 0x80 | (62 + KEPT.len() - 1) as u8;
    let mut block = vec![0x82];
    block.extend(std::iter::repeat_n(path_index, 30_000));
    t.send(E, &split_block(3, &block, true, 16_000));
    let r = t.resp(3, &[(":status", "200")], true);
    t.send(I, &r);
    let x = t.out.last().unwrap().clone();
    assert_eq!(x.stream_id, 3);
    assert_eq!(x.path.as_ref().map(String::len), Some(4000));
    assert!(x.notes.contains(&"header_block_too_many_fields"), "{x:?}");
    assert_eq!(t.c.stats().hpack_blocks_overworked, 1);
    // The table is still right: stream 5 names every field.
    t.send(E, &indexed_request(5));
    let r = t.resp(5, &[(":status", "204")], true);
    t.send(I, &r);
    let x = t.out.last().unwrap().clone();
    assert_eq!(x.stream_id, 5);
    assert_eq!(x.status, Some(204));
    assert_eq!(x.path.as_ref().map(String::len), Some(4000));
    assert_eq!(x.authority.as_ref().map(String::len), Some(4000));
    assert!(!x.notes.contains(&"hpack_error"), "{x:?}");
}

/// The first value of a repeated kept field is the one reported.
#[test]
fn first_of_each_kept_field_wins() {
    let mut t = T::new();
    let h = vec![
        (":method", "GET".to_string()),
        (":scheme", "http".into()),
        (":path", "/first".into()),
        (":path", "/second".into()),
        (":authority", "a.example".into()),
        ("user-agent", "one".into()),
        ("user-agent", "two".into()),
    ];
    let b = t.req(1, &h, true);
    t.send(E, &b);
    let r = t.resp(1, &[(":status", "200"), (":status", "500")], true);
    t.send(I, &r);
    let x = t.out.last().unwrap();
    assert_eq!(x.path.as_deref(), Some("/first"));
    assert_eq!(x.user_agent.as_deref(), Some("one"));
    assert_eq!(x.status, Some(200));
}
