//! Program entry points. Names are what userspace looks up; each maps a failure to "do nothing".
#![expect(
    clippy::manual_unwrap_or,
    clippy::manual_unwrap_or_default,
    reason = "entry points keep the explicit `match try_x(ctx)` shape of aya programs"
)]
use aya_ebpf::{
    macros::{raw_tracepoint, sock_ops, tracepoint},
    programs::{RawTracePointContext, SockOpsContext, TracePointContext},
};
use probe_common::EventKind;

use crate::{
    maps::{
        TP_DESTROY_SOCK, TP_RETRANSMIT_SKB, TP_RETRANSMIT_SYNACK, TP_RST_RECEIVED, TP_RST_SENT,
        TP_SET_STATE,
    },
    sockops, tracepoints,
};

#[sock_ops]
pub fn lp_sock_ops(ctx: SockOpsContext) -> u32 {
    match sockops::handle(&ctx) {
        Ok(v) => v,
        Err(_) => 1,
    }
}

#[tracepoint]
pub fn lp_rst_received(ctx: TracePointContext) -> u32 {
    match tracepoints::handle(&ctx, &TP_RST_RECEIVED.load(), EventKind::RstReceived) {
        Ok(v) => v,
        Err(_) => 0,
    }
}

#[tracepoint]
pub fn lp_rst_sent(ctx: TracePointContext) -> u32 {
    match tracepoints::handle(&ctx, &TP_RST_SENT.load(), EventKind::RstSent) {
        Ok(v) => v,
        Err(_) => 0,
    }
}

/// A raw tracepoint (see `tracepoints::handle_raw`). The kernel ignores its return value.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn lp_retransmit(ctx: RawTracePointContext) -> i32 {
    let _ = tracepoints::handle_raw(&ctx, &TP_RETRANSMIT_SKB.load(), EventKind::RetransmitSkb);
    0
}

/// A raw tracepoint (see `tracepoints::handle_raw`).
#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn lp_retrans_synack(ctx: RawTracePointContext) -> i32 {
    let _ = tracepoints::handle_raw(
        &ctx,
        &TP_RETRANSMIT_SYNACK.load(),
        EventKind::RetransmitSynack,
    );
    0
}

#[tracepoint]
pub fn lp_destroy_sock(ctx: TracePointContext) -> u32 {
    match tracepoints::handle(&ctx, &TP_DESTROY_SOCK.load(), EventKind::DestroySock) {
        Ok(v) => v,
        Err(_) => 0,
    }
}

/// A raw tracepoint (see `tracepoints::handle_raw`).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn lp_set_state(ctx: RawTracePointContext) -> i32 {
    let _ = tracepoints::handle_raw(&ctx, &TP_SET_STATE.load(), EventKind::StateChange);
    0
}
