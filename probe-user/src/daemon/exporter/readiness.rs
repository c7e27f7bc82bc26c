//! `/readyz`: ready means "serving what this kernel allows": the event loop publishes (drains
//! the ring) and every probe the kernel could take is attached; a probe the kernel lacks is
//! off with its reason, named in the body (and `linkprobe_probe_attached` 0), but does not
//! hold a rollout back: no restart can attach it.
use crate::daemon::exporter::published::Snapshot;

/// Not ready when the event loop has not published for this long.
pub const STALE_NS: u64 = 5_000_000_000;

/// Whether ready, and the body that says why (or why not).
pub fn readiness(s: &Snapshot, now_ns: u64) -> (bool, String) {
    if s.published_ns == 0 {
        return (false, "not ready: starting, no data published yet\n".into());
    }
    let age = now_ns.saturating_sub(s.published_ns);
    if age > STALE_NS {
        return (
            false,
            format!(
                "not ready: the ring buffer was last drained {:.1} s ago (event loop stalled)\n",
                age as f64 / 1e9
            ),
        );
    }
    let serving = s.probes_total.saturating_sub(s.probes_down.len());
    let (head, off) = if s.probes_down.is_empty() {
        ("ready", String::new())
    } else {
        (
            "ready (degraded)",
            format!("; off on this kernel: {}", s.probes_down.join("; ")),
        )
    };
    (
        true,
        format!(
            "{head}: {serving} of {} probes serving, ring buffer drained {:.1} s ago{off}\n",
            s.probes_total,
            age as f64 / 1e9
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_with_every_probe_serving() {
        let mut s = Snapshot {
            probes_total: 7,
            ..Snapshot::default()
        };
        assert!(readiness(&s, 10).1.contains("starting"));
        assert!(!readiness(&s, 10).0);
        s.published_ns = 1_000_000_000;
        let (ready, text) = readiness(&s, 1_500_000_000);
        assert!(ready, "{text}");
        assert_eq!(
            text,
            "ready: 7 of 7 probes serving, ring buffer drained 0.5 s ago\n"
        );
    }

    #[test]
    fn a_probe_off_on_this_kernel_is_ready_and_named() {
        let s = Snapshot {
            probes_total: 7,
            published_ns: 1_000_000_000,
            probes_down: vec!["lp_rst_sent: tracepoint tcp/tcp_send_reset missing".into()],
            ..Snapshot::default()
        };
        let (ready, text) = readiness(&s, 1_500_000_000);
        assert!(ready, "{text}");
        assert_eq!(
            text,
            "ready (degraded): 6 of 7 probes serving, ring buffer drained 0.5 s ago; off on \
             this kernel: lp_rst_sent: tracepoint tcp/tcp_send_reset missing\n"
        );
    }

    #[test]
    fn a_stale_snapshot_is_not_ready_degraded_or_not() {
        for down in [vec![], vec!["lp_retransmit: off".to_owned()]] {
            let s = Snapshot {
                probes_total: 7,
                published_ns: 1_000_000_000,
                probes_down: down,
                ..Snapshot::default()
            };
            let (ready, text) = readiness(&s, 10_000_000_000);
            assert!(!ready, "{text}");
            assert!(text.contains("last drained 9.0 s ago"), "{text}");
            // Just within the bound it is still ready.
            assert!(readiness(&s, 1_000_000_000 + STALE_NS).0);
        }
    }
}
