//! Exact counts every time: the same workload repeated, on both CPUs at once, with and without
//! another tracer (bpftrace) on the same tracepoints, each round compared with nstat.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    common::{
        can_run_kernel_tests,
        netns::{delta, enter_current_thread, TestNetns},
        tracer::Tracer,
        workload,
    },
    report, KERNEL,
};

const ROUNDS: usize = 6;
const REFUSED: usize = 600;
const ABORTS: usize = 150;
const HEALTHY: usize = 300;

/// bpftrace counting hits of the tracepoints linkprobe uses, until dropped.
struct Bpftrace(Child);

impl Bpftrace {
    fn attach() -> Bpftrace {
        let script = "tracepoint:tcp:tcp_send_reset, tracepoint:tcp:tcp_receive_reset, \
                      tracepoint:tcp:tcp_retransmit_skb, tracepoint:sock:inet_sock_set_state \
                      { @[probe] = count(); }";
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bpftrace (installed by cargo xtask setup)");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !line.contains("Attaching") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap_or(0) > 0 && Instant::now() < deadline,
                "bpftrace did not attach"
            );
        }
        // Keep its pipe drained so it never blocks.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Bpftrace(child)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One worker's share: refused connects, aborts and healthy connections.
fn worker(ns: String) {
    enter_current_thread(&ns);
    workload::refused_connects(9, REFUSED);
    workload::linger_zero_aborts(ABORTS);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    for _ in 0..HEALTHY {
        let (mut client, _, mut server, _) = workload::connected_pair(&listener);
        workload::transfer(&mut client, &mut server, b"x");
    }
}

#[test]
fn counts_equal_nstat_every_round_on_both_cpus_with_another_tracer_attached() {
    if !can_run_kernel_tests("exactness") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("exact");
    for round in 0..ROUNDS {
        let other = (round % 2 == 1).then(Bpftrace::attach);
        let tracer = Tracer::start(&ns.name, &["--detail", "off", "--no-events"]);
        let before = ns.nstat();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let name = ns.name.clone();
                std::thread::spawn(move || worker(name))
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        let after = ns.nstat();
        let trace = tracer.stop();
        drop(other);
        trace.assert_nothing_lost();
        let d = |k: &str| delta(&before, &after, k);
        let ev = |k: &str| trace.kernel("events", k);
        let flows_ended = ev("flow_end");
        let records: u64 = trace.counters["records"]
            .as_object()
            .expect("records")
            .values()
            .filter_map(Value::as_u64)
            .sum();
        let figures = [
            ("rst_sent vs TcpOutRsts", ev("rst_sent"), d("TcpOutRsts")),
            (
                "connect vs TcpActiveOpens",
                ev("connect"),
                d("TcpActiveOpens"),
            ),
            (
                "passive_established vs TcpPassiveOpens",
                ev("passive_established"),
                d("TcpPassiveOpens"),
            ),
            (
                "connect_failed vs TcpAttemptFails",
                trace.misc("connect_failed"),
                d("TcpAttemptFails"),
            ),
            (
                "flows ended vs active + passive opens",
                flows_ended,
                d("TcpActiveOpens") + d("TcpPassiveOpens"),
            ),
            (
                "rst_received vs refused + aborts",
                ev("rst_received"),
                2 * (REFUSED + ABORTS) as u64,
            ),
        ];
        report(
            &format!(
                "round {round}: 2 workers{}, {records} records",
                if round % 2 == 1 {
                    ", bpftrace attached"
                } else {
                    ""
                }
            ),
            &figures,
        );
        for (what, ours, oracle) in figures {
            assert_eq!(ours, oracle, "round {round}: {what}");
        }
        // Each RST was counted in the kernel before anything could return: every kernel skip
        // of our programs would show here.
        assert_eq!(trace.misc("scope_unknown"), 0, "round {round}");
    }
}
