//! Retransmits under the connect cookie: SYNs dropped until the connect times out, and data
//! dropped for a window on an established connection.
use super::*;

#[test]
fn dropped_syns_retransmit_per_cookie_then_time_out() {
    if !can_run_kernel_tests("dropped_syns") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const N: usize = 4;
    const SYN_RETRIES: u32 = 2;
    let ns = TestNetns::new("syndrop");
    ns.nft(
        "table inet lptest {\n chain input {\n type filter hook input priority 0;\n \
         tcp dport 7777 tcp flags & (syn | ack) == syn drop\n }\n}\n",
    );
    let tracer = Tracer::start(&ns.name, &[]);
    let before = ns.nstat();
    let cookies = ns.enter(|| workload::syn_timeouts(7777, N, SYN_RETRIES));
    let after = ns.nstat();
    let trace = tracer.stop();
    trace.assert_nothing_lost();

    let retrans_segs = delta(&before, &after, "TcpRetransSegs");
    // The kernel counts RetransSegs before handing the segment to the device, and a failed
    // hand-over also in TCPRetransFail; the tracepoint reports that one with err != 0.
    let retrans_sent = retrans_segs - delta(&before, &after, "TcpExtTCPRetransFail");
    let attempt_fails = delta(&before, &after, "TcpAttemptFails");
    let sent_ok: Vec<u64> = trace
        .of_kind("retransmit")
        .filter(|e| e["err"].as_i64().unwrap_or(0) == 0)
        .filter_map(|e| e["cookie"].as_u64())
        .collect();
    report(
        "dropped SYNs",
        &[
            (
                "retransmits (err=0) vs RetransSegs-Fail",
                sent_ok.len() as u64,
                retrans_sent,
            ),
            (
                "connect_failed vs TcpAttemptFails",
                trace.misc("connect_failed"),
                attempt_fails,
            ),
        ],
    );
    // The oracle is the namespace's own count: how many SYN retransmits TCP_SYNCNT allows
    // depends on the kernel (linear SYN timeouts since 6.5), so only its lower bound is ours.
    assert!(
        retrans_segs >= N as u64 * u64::from(SYN_RETRIES),
        "{retrans_segs}"
    );
    // Every SYN retransmit is reported. The retransmit timer fires in softirq, often on a CPU
    // where a tracing program runs in process context (another test's tracer, any tool's); the
    // kernel skips a regular tracepoint program then, so every hook is a BTF tracepoint, which
    // only the same program recursing can skip.
    assert_eq!(
        sent_ok.len() as u64,
        retrans_sent,
        "kernel counters: {}",
        trace.counters
    );
    let mut per_cookie = BTreeSet::new();
    for c in &cookies {
        let flow = trace.flow(*c);
        let syn_retrans = flow
            .iter()
            .filter(|e| e["kind"] == "retransmit" && e["state"] == "SYN_SENT")
            .count() as u64;
        assert!(
            syn_retrans >= u64::from(SYN_RETRIES),
            "SYN retransmits of cookie {c}"
        );
        per_cookie.insert(syn_retrans);
        let end = flow
            .iter()
            .find(|e| e["kind"] == "flow_end" && e["old_state"] == "SYN_SENT")
            .unwrap_or_else(|| {
                panic!(
                    "cookie {c} never left SYN_SENT; its records: {flow:#?}; kernel counters: {}",
                    trace.counters
                )
            });
        assert_eq!(
            end["sk_err"], 110,
            "cookie {c}: the kernel's error is ETIMEDOUT"
        );
        // The summary counts what the stream showed.
        assert_eq!(
            end["flow"]["syn_retrans"].as_u64(),
            Some(syn_retrans),
            "{end}"
        );
        assert!(end["flow"]["rtos"].as_u64() >= Some(syn_retrans), "{end}");
        assert!(
            flow.iter().all(|e| e["kind"] != "rst_received"),
            "a timeout is not a reset"
        );
        // The retransmissions are spaced by the RTO (1 s initially, then doubling).
        let times: Vec<u64> = flow
            .iter()
            .filter(|e| e["kind"] == "retransmit")
            .filter_map(|e| e["ts_ns"].as_u64())
            .collect();
        assert!(
            times.windows(2).all(|w| w[1] - w[0] >= 900_000_000),
            "{times:?}"
        );
    }
    assert_eq!(
        per_cookie.len(),
        1,
        "every socket retried alike: {per_cookie:?}"
    );
    assert_eq!(per_cookie.iter().sum::<u64>() * N as u64, retrans_segs);
    assert_eq!(trace.misc("connect_failed"), attempt_fails);
    assert_eq!(attempt_fails, N as u64);
}

#[test]
fn data_dropped_for_a_window_retransmits_under_the_connect_cookie() {
    if !can_run_kernel_tests("data_drop") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("datadrop");
    let tracer = Tracer::start(&ns.name, &[]);
    let before = ns.nstat();
    let ns_name = ns.name.clone();
    let (client_cookie, server_cookie) = ns.enter(move || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (mut client, cc, mut server, sc) = workload::connected_pair(&listener);
        workload::transfer(&mut client, &mut server, b"warm-up");
        // Drop segments carrying data to the server for ~1.5 s; ACKs (no payload) pass.
        let add = format!(
            "table inet lpdata {{\n chain input {{\n type filter hook input priority 0;\n \
             tcp dport {port} meta length > 100 drop\n }}\n}}\n"
        );
        nft(&ns_name, &add);
        let sender = std::thread::spawn(move || {
            use std::io::Write as _;
            client.write_all(&[7u8; 600]).expect("write");
            client
        });
        std::thread::sleep(Duration::from_millis(1500));
        nft(&ns_name, "delete table inet lpdata\n");
        let mut client = sender.join().expect("sender");
        let mut got = vec![0u8; 600];
        use std::io::Read as _;
        server
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        server
            .read_exact(&mut got)
            .expect("data arrives after the window");
        workload::transfer(&mut client, &mut server, b"after");
        (cc, sc)
    });
    let after = ns.nstat();
    let trace = tracer.stop();
    trace.assert_nothing_lost();

    let retrans_segs = delta(&before, &after, "TcpRetransSegs");
    // Failed hand-overs to the device are in RetransSegs too (see the dropped-SYN test).
    let retrans_sent = retrans_segs - delta(&before, &after, "TcpExtTCPRetransFail");
    let ours: Vec<&serde_json::Value> = trace
        .of_kind("retransmit")
        .filter(|e| e["err"].as_i64().unwrap_or(0) == 0)
        .collect();
    report(
        "data dropped for 1.5 s",
        &[(
            "retransmits (err=0) vs RetransSegs-Fail",
            ours.len() as u64,
            retrans_sent,
        )],
    );
    assert!(
        retrans_segs >= 2,
        "the window should force retransmits, got {retrans_segs}"
    );
    assert_eq!(ours.len() as u64, retrans_sent);
    assert!(ours
        .iter()
        .all(|e| e["cookie"].as_u64() == Some(client_cookie)));
    let connect = trace.cookies("connect");
    assert_eq!(
        connect,
        vec![client_cookie],
        "connect event carries the same cookie"
    );
    assert!(trace
        .cookies("passive_established")
        .contains(&server_cookie));
    // The RTO fired on the same flow (sock_ops reports it, or the kernel's own per-socket RTO
    // count where it keeps one), and its summary counts every retransmit.
    let flow = trace.flow(client_cookie);
    let end = flow
        .iter()
        .find(|e| e["kind"] == "flow_end")
        .expect("the client's flow_end");
    assert_eq!(
        end["flow"]["data_retrans"].as_u64(),
        Some(ours.len() as u64),
        "{end}"
    );
    let rto_records = flow.iter().filter(|e| e["kind"] == "rto").count() as u64;
    let rtos = end["flow"]["rtos"].as_u64().unwrap_or(0);
    assert!(rtos >= 1, "{end}");
    assert!(
        rto_records == 0 || rto_records == rtos,
        "{rto_records} vs {end}"
    );
}
