//! The cgroup `sock_ops` program: only for what no tracepoint gives, the retransmission timer
//! (RTO) firing. It turns the RTO callback on when a connection starts or is accepted and
//! returns at once for every other callback.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_storage_get},
    programs::SockOpsContext,
    EbpfContext as _,
};
use probe_common::{
    flags,
    kernel::{net, tcp_state},
    misc, EventKind, FlowRecord, FlowState, SockStats,
};

use crate::{
    counters::{count_event, count_misc},
    emit::{send, Header},
    hooks::{now, report_due, wants_detail},
    maps::{FLOWS, SCOPE},
};

/// sock_ops returns 1 for "continue"; anything else would fail socket operations.
pub const SOCK_OPS_OK: u32 = 1;

/// Which store the tracepoints of this kernel use: with socket storage the RTO is counted in
/// the flow; without, each RTO is a record of its own (by cookie, which this program also
/// generates early so the fallback tracepoints find it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    SkStorage,
    Fallback,
}

#[inline(always)]
pub fn handle(ctx: &SockOpsContext, variant: Variant) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB
        | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let wanted = ctx.cb_flags() | BPF_SOCK_OPS_RTO_CB_FLAG;
            if wanted != ctx.cb_flags() && ctx.set_cb_flags(wanted as i32).is_err() {
                count_misc(misc::CB_FLAGS_FAILED);
            }
            if variant == Variant::Fallback {
                // SAFETY: the context pointer, as the helper expects.
                unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            }
        }
        BPF_SOCK_OPS_RTO_CB => rto(ctx, variant),
        _ => {}
    }
    SOCK_OPS_OK
}

#[inline(always)]
fn rto(ctx: &SockOpsContext, variant: Variant) {
    // SAFETY: `ops` is the context; `sk` is the full socket (RTO callbacks have one).
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let st = match variant {
        // SAFETY: the helper returns NULL or this socket's storage, live for the program run.
        Variant::SkStorage => unsafe {
            bpf_sk_storage_get(FLOWS.as_ptr(), sk.cast(), core::ptr::null_mut(), 0)
                .cast::<FlowState>()
                .as_mut()
        },
        Variant::Fallback => None,
    };
    // A flow's state exists only in scope; without one the scope is unknown here.
    if st.is_none() && (SCOPE.load().netns_cookie != 0 || SCOPE.load().cgroup_id != 0) {
        count_misc(misc::SCOPE_UNKNOWN);
        return;
    }
    count_event(EventKind::Rto);
    let now = now();
    // SAFETY: `ops` is the context pointer; fields are read in place.
    let ops = unsafe { &*ctx.ops };
    let state = ops.state as u8;
    let stats = SockStats {
        srtt_us: ops.srtt_us >> 3,
        min_rtt_us: ops.rtt_min,
        total_retrans: ops.total_retrans,
        segs_in: ops.segs_in,
        segs_out: ops.segs_out,
        data_segs_in: ops.data_segs_in,
        data_segs_out: ops.data_segs_out,
        _pad: 0,
        bytes_received: ops.bytes_received,
        bytes_acked: ops.bytes_acked,
    };
    let fill = |rec: &mut FlowRecord, cookie: u64, netns: u64| {
        Header::at(now, cookie, netns, state).write(rec);
        addrs(ctx, rec);
        rec.stats = stats;
        rec.flags |= flags::STATS;
    };
    match st {
        Some(st) => {
            st.counts.rtos = st.counts.rtos.saturating_add(1);
            // In SYN_SENT the SYN retransmit that follows is the record (unless every hit of
            // this flow is one).
            if !wants_detail(st) && (state == tcp_state::SYN_SENT || !report_due(st, now)) {
                return;
            }
            let (cookie, netns) = (st.cookie, st.netns_cookie);
            send(EventKind::Rto, Some(st), 0, |rec| fill(rec, cookie, netns));
        }
        None => {
            // SAFETY: the context pointer, as the helper expects.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            send(EventKind::Rto, None, 0, |rec| fill(rec, cookie, 0));
        }
    }
}

/// The callback's addresses into the record.
#[inline(always)]
fn addrs(ctx: &SockOpsContext, rec: &mut FlowRecord) {
    let family = ctx.family();
    rec.family = family as u16;
    rec.sport = ctx.local_port() as u16;
    rec.dport = u32::from_be(ctx.remote_port()) as u16;
    if family == u32::from(net::AF_INET6) {
        rec.flags |= flags::IPV6;
        // SAFETY: `ops` is the context pointer; fields are read in place.
        let (local, remote) = unsafe {
            (
                ip6_words(&(*ctx.ops).local_ip6),
                ip6_words(&(*ctx.ops).remote_ip6),
            )
        };
        rec.saddr = words_to_bytes(local);
        rec.daddr = words_to_bytes(remote);
    } else {
        rec.saddr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        rec.daddr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    }
}

/// Word-by-word volatile loads so each stays a constant-offset context access (the verifier
/// rejects loads through a modified context pointer, which a loop would produce).
#[inline(always)]
fn ip6_words(words: &[u32; 4]) -> [u32; 4] {
    // SAFETY: `words` points into the context; each element is read in place.
    unsafe {
        [
            core::ptr::read_volatile(&words[0]),
            core::ptr::read_volatile(&words[1]),
            core::ptr::read_volatile(&words[2]),
            core::ptr::read_volatile(&words[3]),
        ]
    }
}

/// sock_ops IPv6 addresses are four network-order words; keep their bytes in memory order.
#[inline(always)]
fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}
