//! Tracepoint record layouts from tracefs.
//!
//! The records of the TCP tracepoints change between kernels (`family` in 5.12, a sockaddr-based
//! `tcp_send_reset` with `reason` in 6.10, `err` on `tcp_retransmit_skb` in 6.17, ...), so the
//! eBPF programs hard-code no offset: [`read_format`] reads
//! `<tracefs>/events/<category>/<event>/format`, [`resolve_layout`] turns it into the
//! [`TpLayout`](probe_common::TpLayout) global a program reads, or explains why the probe has to
//! stay off.
mod format;
mod layout;
mod tracepoint;

use std::{io, path::Path};

pub use format::{parse_format, FormatError, TpFormat};
pub use layout::resolve_layout;
pub use tracepoint::Tracepoint;

/// Reads and parses `<tracefs_root>/events/<category>/<name>/format`.
pub fn read_format(tracefs_root: &Path, tp: Tracepoint) -> Result<TpFormat, FormatError> {
    let path = tp.format_path(tracefs_root);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(if !tracefs_root.join("events").is_dir() {
                FormatError::NoTracefs {
                    root: tracefs_root.to_path_buf(),
                }
            } else if !tp.event_dir(tracefs_root).exists() {
                FormatError::MissingTracepoint {
                    tp,
                    dir: tp.event_dir(tracefs_root),
                }
            } else {
                FormatError::Io { path, source: e }
            });
        }
        Err(e) => return Err(FormatError::Io { path, source: e }),
    };
    let format = parse_format(&text).map_err(|e| e.in_file(&path))?;
    if format.name != tp.name() {
        return Err(FormatError::NameMismatch {
            path: Some(path),
            expected: tp.name(),
            found: format.name,
        });
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use probe_common::{addr_style, TpLayout, ABSENT};

    use super::*;

    const KERNELS: [&str; 6] = ["5.10", "5.15", "6.1", "6.6", "6.12", "6.18"];

    fn fixture_path(version: &str, tp: Tracepoint) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs")
            .join(version)
            .join(tp.category())
            .join(tp.name())
            .join("format")
    }

    fn load(version: &str, tp: Tracepoint) -> TpFormat {
        let path = fixture_path(version, tp);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        parse_format(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Offsets in `TpLayout` field order, `A` = absent.
    const A: u16 = ABSENT;

    struct Want {
        style: u16,
        skaddr: u16,
        skbaddr: u16,
        req: u16,
        ports: (u16, u16),
        family: u16,
        protocol: u16,
        v4: (u16, u16),
        v6: (u16, u16),
        state: u16,
        states: (u16, u16),
        reason: u16,
        sock_cookie: u16,
        err: u16,
    }

    impl Want {
        fn layout(&self) -> TpLayout {
            TpLayout {
                addr_style: self.style,
                skaddr: self.skaddr,
                skbaddr: self.skbaddr,
                req: self.req,
                sport: self.ports.0,
                dport: self.ports.1,
                family: self.family,
                protocol: self.protocol,
                saddr: self.v4.0,
                daddr: self.v4.1,
                saddr_v6: self.v6.0,
                daddr_v6: self.v6.1,
                state: self.state,
                oldstate: self.states.0,
                newstate: self.states.1,
                reason: self.reason,
                sock_cookie: self.sock_cookie,
                err: self.err,
                valid: 1,
                // Compared separately (record_length_is_the_end_of_the_last_field).
                record_len: 0,
            }
        }
    }

    const NONE: Want = Want {
        style: addr_style::SPLIT,
        skaddr: A,
        skbaddr: A,
        req: A,
        ports: (A, A),
        family: A,
        protocol: A,
        v4: (A, A),
        v6: (A, A),
        state: A,
        states: (A, A),
        reason: A,
        sock_cookie: A,
        err: A,
    };

    /// The offsets each kernel's format must resolve to, written out by hand from the headers.
    fn expected(version: &str, tp: Tracepoint) -> TpLayout {
        let family = version != "5.10";
        let sockaddr_reset = matches!(version, "6.12" | "6.18");
        let err = version == "6.18";
        let want = match tp {
            // tcp_event_sk: skaddr, sport, dport, [family], saddr, daddr, saddr_v6, daddr_v6,
            // sock_cookie (8-aligned after the 60/62-byte address block).
            Tracepoint::RstReceived | Tracepoint::DestroySock if family => Want {
                skaddr: 8,
                ports: (16, 18),
                family: 20,
                v4: (22, 26),
                v6: (30, 46),
                sock_cookie: 64,
                ..NONE
            },
            Tracepoint::RstReceived | Tracepoint::DestroySock => Want {
                skaddr: 8,
                ports: (16, 18),
                v4: (20, 24),
                v6: (28, 44),
                sock_cookie: 64,
                ..NONE
            },
            // 6.10+: tcp_send_reset with sockaddr storage and the reason.
            Tracepoint::RstSent if sockaddr_reset => Want {
                style: addr_style::SOCKADDR,
                skbaddr: 8,
                skaddr: 16,
                state: 24,
                reason: 28,
                v4: (32, 60),
                ..NONE
            },
            // tcp_event_sk_skb: skbaddr, skaddr, state, sport, dport, [family], addresses.
            Tracepoint::RstSent | Tracepoint::RetransmitSkb if family => Want {
                skbaddr: 8,
                skaddr: 16,
                state: 24,
                ports: (28, 30),
                family: 32,
                v4: (34, 38),
                v6: (42, 58),
                err: if err && tp == Tracepoint::RetransmitSkb {
                    76
                } else {
                    A
                },
                ..NONE
            },
            Tracepoint::RstSent | Tracepoint::RetransmitSkb => Want {
                skbaddr: 8,
                skaddr: 16,
                state: 24,
                ports: (28, 30),
                v4: (32, 36),
                v6: (40, 56),
                ..NONE
            },
            Tracepoint::RetransmitSynack if family => Want {
                skaddr: 8,
                req: 16,
                ports: (24, 26),
                family: 28,
                v4: (30, 34),
                v6: (38, 54),
                ..NONE
            },
            Tracepoint::RetransmitSynack => Want {
                skaddr: 8,
                req: 16,
                ports: (24, 26),
                v4: (28, 32),
                v6: (36, 52),
                ..NONE
            },
            // Unchanged since 4.16.
            Tracepoint::SetState => Want {
                skaddr: 8,
                states: (16, 20),
                ports: (24, 26),
                family: 28,
                protocol: 30,
                v4: (32, 36),
                v6: (40, 56),
                ..NONE
            },
        };
        want.layout()
    }

    #[test]
    fn every_kernel_fixture_resolves_to_its_layout() {
        for version in KERNELS {
            for tp in Tracepoint::ALL {
                let format = load(version, tp);
                assert_eq!(format.name, tp.name(), "{version} {tp}");
                assert!(format.id.is_some(), "{version} {tp}");
                let layout =
                    resolve_layout(tp, &format).unwrap_or_else(|e| panic!("{version} {tp}: {e}"));
                let copy_len = TpLayout {
                    record_len: 0,
                    ..layout
                };
                assert_eq!(copy_len, expected(version, tp), "{version} {tp}");
            }
        }
    }

    #[test]
    fn record_length_is_the_end_of_the_last_field() {
        let len = |tp| resolve_layout(tp, &load("6.18", tp)).unwrap().record_len;
        assert_eq!(len(Tracepoint::RstReceived), 72, "sock_cookie@64 + 8");
        assert_eq!(len(Tracepoint::RstSent), 88, "daddr[28]@60");
        assert_eq!(len(Tracepoint::RetransmitSkb), 80, "err@76 + 4");
        assert_eq!(len(Tracepoint::SetState), 72, "daddr_v6@56 + 16");
        for version in KERNELS {
            for tp in Tracepoint::ALL {
                let l = resolve_layout(tp, &load(version, tp)).unwrap();
                assert!(
                    l.record_len > 0 && usize::from(l.record_len) <= probe_common::RECORD_BUF,
                    "{version} {tp}: {}",
                    l.record_len
                );
            }
        }
    }

    #[test]
    fn key_differences_between_kernels() {
        let rst_sent = |v| resolve_layout(Tracepoint::RstSent, &load(v, Tracepoint::RstSent));
        let retrans = |v| {
            resolve_layout(
                Tracepoint::RetransmitSkb,
                &load(v, Tracepoint::RetransmitSkb),
            )
        };

        // 5.10: no family, no reason, split addresses.
        let l = rst_sent("5.10").unwrap();
        assert_eq!(
            (l.addr_style, l.family, l.reason),
            (addr_style::SPLIT, A, A)
        );
        assert_eq!((l.sport, l.saddr_v6), (28, 40));
        // 6.6: family, still split and no reason.
        let l = rst_sent("6.6").unwrap();
        assert_eq!(
            (l.addr_style, l.family, l.reason),
            (addr_style::SPLIT, 32, A)
        );
        // 6.12 and 6.18: sockaddr storage, reason@28, no ports or v6 fields.
        for v in ["6.12", "6.18"] {
            let l = rst_sent(v).unwrap();
            assert_eq!(l.addr_style, addr_style::SOCKADDR, "{v}");
            assert_eq!((l.reason, l.saddr, l.daddr), (28, 32, 60), "{v}");
            assert_eq!(
                (l.sport, l.family, l.saddr_v6, l.daddr_v6),
                (A, A, A, A),
                "{v}"
            );
        }
        // err on tcp_retransmit_skb only in 6.18 (added in 6.17).
        assert_eq!(retrans("6.12").unwrap().err, A);
        assert_eq!(retrans("6.18").unwrap().err, 76);
        // sock_cookie in tcp_event_sk everywhere.
        for v in KERNELS {
            let tp = Tracepoint::RstReceived;
            assert_eq!(
                resolve_layout(tp, &load(v, tp)).unwrap().sock_cookie,
                64,
                "{v}"
            );
        }
    }

    /// A throwaway tracefs root under the temp dir, removed on drop.
    struct TempRoot(PathBuf);

    impl TempRoot {
        fn new() -> TempRoot {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "linkprobe-tracefs-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(dir.join("events")).unwrap();
            TempRoot(dir)
        }

        fn install(&self, tp: Tracepoint, text: &str) {
            let dir = tp.event_dir(&self.0);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("format"), text).unwrap();
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn read_format_reads_events_dir() {
        let root = TempRoot::new();
        for tp in Tracepoint::ALL {
            let text = std::fs::read_to_string(fixture_path("6.12", tp)).unwrap();
            root.install(tp, &text);
            let format = read_format(&root.0, tp).unwrap();
            let layout = resolve_layout(tp, &format).unwrap();
            assert_eq!(
                TpLayout {
                    record_len: 0,
                    ..layout
                },
                expected("6.12", tp)
            );
        }
    }

    #[test]
    fn read_format_says_when_the_kernel_lacks_the_tracepoint() {
        let root = TempRoot::new();
        std::fs::create_dir_all(root.0.join("events/tcp")).unwrap();
        let err = read_format(&root.0, Tracepoint::RstSent).unwrap_err();
        assert!(
            matches!(err, FormatError::MissingTracepoint { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("kernel has no tcp:tcp_send_reset tracepoint"),
            "{msg}"
        );
        assert!(msg.contains("events/tcp/tcp_send_reset"), "{msg}");
    }

    #[test]
    fn read_format_without_tracefs_or_format_file() {
        let root = TempRoot::new();
        std::fs::remove_dir(root.0.join("events")).unwrap();
        let err = read_format(&root.0, Tracepoint::SetState).unwrap_err();
        assert!(matches!(err, FormatError::NoTracefs { .. }), "{err}");
        assert!(err.to_string().contains("not seem to be mounted"), "{err}");

        // The event directory exists but its format file does not: a plain io error naming it.
        let root = TempRoot::new();
        std::fs::create_dir_all(Tracepoint::SetState.event_dir(&root.0)).unwrap();
        let err = read_format(&root.0, Tracepoint::SetState).unwrap_err();
        let FormatError::Io { path, source } = &err else {
            panic!("{err}");
        };
        assert_eq!(path, &Tracepoint::SetState.format_path(&root.0));
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .contains("sock/inet_sock_set_state/format: "),
            "{err}"
        );
    }

    #[test]
    fn read_format_names_file_and_line_of_a_syntax_error() {
        let root = TempRoot::new();
        root.install(
            Tracepoint::DestroySock,
            "name: tcp_destroy_sock\nformat:\n\tfield:const void * skaddr;\toffset:eight;\tsize:8;\n",
        );
        let err = read_format(&root.0, Tracepoint::DestroySock).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("events/tcp/tcp_destroy_sock/format: line 3: offset `eight`"),
            "{msg}"
        );
    }

    #[test]
    fn read_format_rejects_another_events_format() {
        let root = TempRoot::new();
        let text = std::fs::read_to_string(fixture_path("6.6", Tracepoint::RstReceived)).unwrap();
        root.install(Tracepoint::DestroySock, &text);
        let err = read_format(&root.0, Tracepoint::DestroySock).unwrap_err();
        assert!(matches!(err, FormatError::NameMismatch { .. }), "{err}");
    }

    #[test]
    fn display_and_paths() {
        assert_eq!(Tracepoint::RstSent.to_string(), "tcp:tcp_send_reset");
        assert_eq!(Tracepoint::SetState.to_string(), "sock:inet_sock_set_state");
        assert_eq!(
            Tracepoint::RetransmitSynack.format_path(Path::new("/sys/kernel/tracing")),
            Path::new("/sys/kernel/tracing/events/tcp/tcp_retransmit_synack/format")
        );
    }

    /// Parses this machine's own formats when tracefs is readable.
    #[test]
    fn live_kernel_formats_resolve() {
        let root = Path::new("/sys/kernel/tracing");
        if let Err(e) = std::fs::read_dir(root.join("events/tcp")) {
            eprintln!(
                "skipping: {} is not readable ({e}); mount tracefs and run as root to check \
                 this kernel",
                root.join("events/tcp").display()
            );
            return;
        }
        for tp in Tracepoint::ALL {
            match read_format(root, tp) {
                Ok(format) => {
                    let layout =
                        resolve_layout(tp, &format).unwrap_or_else(|e| panic!("live {tp}: {e}"));
                    assert_eq!(layout.valid, 1);
                    eprintln!("live {tp}: {layout:?}");
                }
                Err(e @ FormatError::MissingTracepoint { .. }) => eprintln!("live {tp}: {e}"),
                Err(e) => panic!("live {tp}: {e}"),
            }
        }
    }
}
