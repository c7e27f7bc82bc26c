//! Turns a parsed format into the [`TpLayout`] the eBPF programs read, checking that every field
//! linkprobe uses has the size it expects.
use probe_common::{addr_style, TpLayout, ABSENT};

use super::{format::TpFormat, tracepoint::Tracepoint};

/// What a field must look like.
#[derive(Clone, Copy)]
struct Want {
    size: u16,
    what: &'static str,
}

const PTR: Want = Want {
    size: 8,
    what: "8 bytes (a pointer)",
};
const U16: Want = Want {
    size: 2,
    what: "2 bytes (__u16)",
};
const INT: Want = Want {
    size: 4,
    what: "4 bytes (int/enum)",
};
const U64: Want = Want {
    size: 8,
    what: "8 bytes (__u64)",
};
const V4: Want = Want {
    size: 4,
    what: "4 bytes (__u8[4], IPv4)",
};
const V6: Want = Want {
    size: 16,
    what: "16 bytes (__u8[16], IPv6)",
};
const SOCKADDR: Want = Want {
    size: 28,
    what: "28 bytes (__u8[28], sockaddr_in6 storage)",
};
const ADDR: Want = Want {
    size: 4,
    what: "4 bytes (__u8[4], IPv4) or 28 bytes (__u8[28], sockaddr storage)",
};

/// A tracepoint's format cannot be used; the probe on it stays off.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "{tp}: field `{field}` should be {expected} but is {found} bytes, so this kernel's \
         layout is not supported and the probe stays off; please report the contents of \
         events/{}/{}/format",
        .tp.category(),
        .tp.name()
    )]
    WrongSize {
        tp: Tracepoint,
        field: &'static str,
        expected: &'static str,
        found: u16,
    },
    #[error(
        "{tp}: required field `{field}` ({expected}) is missing from the format, so this \
         kernel's layout is not supported and the probe stays off; please report the contents \
         of events/{}/{}/format",
        .tp.category(),
        .tp.name()
    )]
    Missing {
        tp: Tracepoint,
        field: &'static str,
        expected: &'static str,
    },
}

struct Resolver<'a> {
    tp: Tracepoint,
    fmt: &'a TpFormat,
}

impl Resolver<'_> {
    /// Offset of `name`, or [`ABSENT`]; a present field of the wrong size is an error.
    fn optional(&self, name: &'static str, want: Want) -> Result<u16, LayoutError> {
        match self.fmt.field(name) {
            None => Ok(ABSENT),
            Some(f) if f.size == want.size => Ok(f.offset),
            Some(f) => Err(LayoutError::WrongSize {
                tp: self.tp,
                field: name,
                expected: want.what,
                found: f.size,
            }),
        }
    }

    fn required(&self, name: &'static str, want: Want) -> Result<u16, LayoutError> {
        self.required_because(name, want, want.what)
    }

    /// Like [`Self::required`], with a custom description of what was expected.
    fn required_because(
        &self,
        name: &'static str,
        want: Want,
        expected: &'static str,
    ) -> Result<u16, LayoutError> {
        match self.optional(name, want)? {
            ABSENT => Err(LayoutError::Missing {
                tp: self.tp,
                field: name,
                expected,
            }),
            offset => Ok(offset),
        }
    }

    fn required_if(
        &self,
        required: bool,
        name: &'static str,
        want: Want,
    ) -> Result<u16, LayoutError> {
        if required {
            self.required(name, want)
        } else {
            self.optional(name, want)
        }
    }

    /// `a` and `b` both present (each of its size) or both absent.
    fn pair(
        &self,
        (a, want_a, partner_of_a): (&'static str, Want, &'static str),
        (b, want_b, partner_of_b): (&'static str, Want, &'static str),
    ) -> Result<(u16, u16), LayoutError> {
        let (oa, ob) = (self.optional(a, want_a)?, self.optional(b, want_b)?);
        match (oa == ABSENT, ob == ABSENT) {
            (false, true) => Err(self.missing(b, partner_of_a)),
            (true, false) => Err(self.missing(a, partner_of_b)),
            _ => Ok((oa, ob)),
        }
    }

    fn missing(&self, field: &'static str, expected: &'static str) -> LayoutError {
        LayoutError::Missing {
            tp: self.tp,
            field,
            expected,
        }
    }

    /// Addresses: `saddr[28]`/`daddr[28]` (sockaddr storage) or the split
    /// `sport`/`dport`/`saddr[4]`/`daddr[4]`/`saddr_v6[16]`/`daddr_v6[16]` set.
    fn addresses(&self, layout: &mut TpLayout) -> Result<(), LayoutError> {
        let sockaddr = self.fmt.field("saddr").map(|f| f.size) == Some(SOCKADDR.size);
        if sockaddr {
            layout.addr_style = addr_style::SOCKADDR;
            layout.saddr = self.required("saddr", SOCKADDR)?;
            layout.daddr = self.required_because(
                "daddr",
                SOCKADDR,
                "28 bytes, sockaddr storage like `saddr`",
            )?;
            // The programs read family and ports from the sockaddr; v6 fields are not used.
            layout.saddr_v6 = ABSENT;
            layout.daddr_v6 = ABSENT;
            return Ok(());
        }

        layout.addr_style = addr_style::SPLIT;
        // A 28-byte saddr took the branch above, so here the IPv4 pair is 4 bytes each.
        let (saddr, daddr) = self.pair(
            ("saddr", ADDR, "4 bytes, the destination next to `saddr`"),
            ("daddr", V4, "4 bytes, the source next to `daddr`"),
        )?;
        let (saddr_v6, daddr_v6) = self.pair(
            (
                "saddr_v6",
                V6,
                "16 bytes, the destination next to `saddr_v6`",
            ),
            ("daddr_v6", V6, "16 bytes, the source next to `daddr_v6`"),
        )?;
        if saddr == ABSENT && saddr_v6 == ABSENT {
            return Err(self.missing(
                "saddr",
                "saddr/daddr of 4 or 28 bytes, or saddr_v6/daddr_v6 of 16 bytes",
            ));
        }
        if layout.family == ABSENT && saddr_v6 == ABSENT {
            // Without `family` the programs cannot tell IPv4 from IPv6 and read the
            // (v4-mapped) IPv6 pair, so it has to be there.
            return Err(self.missing(
                "saddr_v6",
                "16 bytes; without a `family` field the IPv6 pair carries every address",
            ));
        }
        layout.sport = self.required("sport", U16)?;
        layout.dport = self.required("dport", U16)?;
        layout.saddr = saddr;
        layout.daddr = daddr;
        layout.saddr_v6 = saddr_v6;
        layout.daddr_v6 = daddr_v6;
        Ok(())
    }
}

/// Fills every [`TpLayout`] offset the format has and checks field sizes.
///
/// Every tracepoint needs `skaddr` and an address set; `tcp_send_reset` also needs `skbaddr`,
/// `tcp_retransmit_synack` needs `req`, and `inet_sock_set_state` needs `oldstate`, `newstate`
/// and `protocol`. Other fields stay [`ABSENT`] when the kernel lacks them.
pub fn resolve_layout(tp: Tracepoint, fmt: &TpFormat) -> Result<TpLayout, LayoutError> {
    let r = Resolver { tp, fmt };
    let set_state = tp == Tracepoint::SetState;
    let mut layout = TpLayout::EMPTY;

    layout.skaddr = r.required("skaddr", PTR)?;
    layout.skbaddr = r.required_if(tp == Tracepoint::RstSent, "skbaddr", PTR)?;
    layout.req = r.required_if(tp == Tracepoint::RetransmitSynack, "req", PTR)?;
    layout.oldstate = r.required_if(set_state, "oldstate", INT)?;
    layout.newstate = r.required_if(set_state, "newstate", INT)?;
    layout.protocol = r.required_if(set_state, "protocol", U16)?;
    layout.family = r.optional("family", U16)?;
    layout.state = r.optional("state", INT)?;
    layout.reason = r.optional("reason", INT)?;
    layout.err = r.optional("err", INT)?;
    layout.sock_cookie = r.optional("sock_cookie", U64)?;
    // Ports may sit beside a sockaddr pair too (then they are only a convenience).
    layout.sport = r.optional("sport", U16)?;
    layout.dport = r.optional("dport", U16)?;
    r.addresses(&mut layout)?;

    let end = fmt
        .fields
        .iter()
        .map(|f| usize::from(f.offset) + usize::from(f.size))
        .max()
        .unwrap_or(0);
    layout.record_len = if end <= probe_common::RECORD_BUF {
        u16::try_from(end).unwrap_or(0)
    } else {
        0
    };
    layout.valid = 1;
    Ok(layout)
}

impl LayoutError {
    /// The field the error is about.
    #[cfg(test)]
    pub fn field(&self) -> &'static str {
        match self {
            LayoutError::WrongSize { field, .. } | LayoutError::Missing { field, .. } => field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tracefs::parse_format;

    fn fixture(version: &str, tp: Tracepoint) -> String {
        let path = format!(
            "{}/tests/fixtures/tracefs/{version}/{}/{}/format",
            env!("CARGO_MANIFEST_DIR"),
            tp.category(),
            tp.name()
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn resolve_text(tp: Tracepoint, text: &str) -> Result<TpLayout, LayoutError> {
        resolve_layout(tp, &parse_format(text).unwrap())
    }

    #[test]
    fn wrong_size_names_tracepoint_field_and_sizes() {
        let text = fixture("6.6", Tracepoint::RstSent).replace(
            "__u16 sport;\toffset:28;\tsize:2;",
            "__u32 sport;\toffset:28;\tsize:4;",
        );
        let err = resolve_text(Tracepoint::RstSent, &text).unwrap_err();
        assert_eq!(
            err,
            LayoutError::WrongSize {
                tp: Tracepoint::RstSent,
                field: "sport",
                expected: U16.what,
                found: 4,
            }
        );
        let msg = err.to_string();
        for needle in [
            "tcp:tcp_send_reset",
            "`sport`",
            "2 bytes",
            "is 4 bytes",
            "not supported",
            "probe stays off",
            "report the contents of events/tcp/tcp_send_reset/format",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing in {msg}");
        }
    }

    #[test]
    fn wrong_size_of_an_optional_field_is_an_error_too() {
        let text = fixture("6.18", Tracepoint::RetransmitSkb).replace(
            "int err;\toffset:76;\tsize:4;",
            "long err;\toffset:80;\tsize:8;",
        );
        let err = resolve_text(Tracepoint::RetransmitSkb, &text).unwrap_err();
        assert_eq!(err.field(), "err");
        assert!(err.to_string().contains("tcp:tcp_retransmit_skb"), "{err}");
    }

    #[test]
    fn missing_required_fields() {
        let cases: [(&str, Tracepoint, &str, &str); 6] = [
            (
                "5.10",
                Tracepoint::RstSent,
                "skbaddr",
                "const void * skbaddr;",
            ),
            (
                "6.18",
                Tracepoint::RstSent,
                "skbaddr",
                "const void * skbaddr;",
            ),
            (
                "6.1",
                Tracepoint::RetransmitSynack,
                "req",
                "const void * req;",
            ),
            ("6.6", Tracepoint::SetState, "protocol", "__u16 protocol;"),
            (
                "6.12",
                Tracepoint::DestroySock,
                "skaddr",
                "const void * skaddr;",
            ),
            ("5.15", Tracepoint::RstReceived, "sport", "__u16 sport;"),
        ];
        for (version, tp, field, line_start) in cases {
            let text: String = fixture(version, tp)
                .lines()
                .filter(|l| !l.trim_start().starts_with(&format!("field:{line_start}")))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = resolve_text(tp, &text).unwrap_err();
            assert!(
                matches!(err, LayoutError::Missing { field: f, .. } if f == field),
                "{version} {tp}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&tp.to_string()), "{msg}");
            assert!(msg.contains(&format!("`{field}`")), "{msg}");
            assert!(msg.contains("missing"), "{msg}");
        }
    }

    #[test]
    fn sockaddr_pair_must_match() {
        let text = fixture("6.18", Tracepoint::RstSent).replace(
            "__u8 daddr[28];\toffset:60;\tsize:28;",
            "__u8 daddr[4];\toffset:60;\tsize:4;",
        );
        let err = resolve_text(Tracepoint::RstSent, &text).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::WrongSize {
                    field: "daddr",
                    found: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn odd_address_size_is_rejected() {
        let text = fixture("6.6", Tracepoint::DestroySock).replace(
            "__u8 saddr[4];\toffset:22;\tsize:4;",
            "__u8 saddr[8];\toffset:22;\tsize:8;",
        );
        let err = resolve_text(Tracepoint::DestroySock, &text).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::WrongSize {
                    field: "saddr",
                    found: 8,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unpaired_or_absent_addresses_are_rejected() {
        // daddr without saddr.
        let base = fixture("6.6", Tracepoint::DestroySock);
        let no_saddr: String = base
            .lines()
            .filter(|l| !l.contains("field:__u8 saddr[4];"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = resolve_text(Tracepoint::DestroySock, &no_saddr).unwrap_err();
        assert!(
            matches!(err, LayoutError::Missing { field: "saddr", .. }),
            "{err}"
        );

        // No address fields at all.
        let bare = "name: tcp_destroy_sock\nformat:\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n";
        let err = resolve_text(Tracepoint::DestroySock, bare).unwrap_err();
        assert!(
            matches!(err, LayoutError::Missing { field: "saddr", .. }),
            "{err}"
        );

        // IPv4 pair only and no family: the programs could not place IPv4 addresses.
        let no_v6: String = fixture("5.10", Tracepoint::DestroySock)
            .lines()
            .filter(|l| !l.contains("_v6[16]"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = resolve_text(Tracepoint::DestroySock, &no_v6).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::Missing {
                    field: "saddr_v6",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn v6_pair_alone_is_enough_with_family() {
        let text: String = fixture("6.6", Tracepoint::RstReceived)
            .lines()
            .filter(|l| !l.contains("saddr[4]") && !l.contains("daddr[4]"))
            .map(|l| format!("{l}\n"))
            .collect();
        let layout = resolve_text(Tracepoint::RstReceived, &text).unwrap();
        assert_eq!((layout.saddr, layout.daddr), (ABSENT, ABSENT));
        assert_eq!((layout.saddr_v6, layout.daddr_v6), (30, 46));
        assert_eq!(layout.valid, 1);
    }
}
