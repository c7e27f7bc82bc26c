//! Program entry points. Names are what userspace looks up. Each hook exists twice: with the
//! flow state in socket storage (`lp_*`) and in the fallback LRU map (`lp_*_lru`); userspace
//! loads the first that this kernel's verifier accepts.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, sock_ops},
    programs::{BtfTracePointContext, SockOpsContext},
    EbpfContext as _,
};

use crate::{
    flow::{LruStore, Sk, SkStore, Store},
    hooks,
    iter::{self, IterSkStorage},
    maps::HOOK_ARGS,
    sockops::{self, Variant},
};

/// Argument `n` as the BTF-typed pointer and as a number.
#[inline(always)]
fn sk_arg(ctx: &BtfTracePointContext, n: usize) -> Sk {
    let typed: *mut c_void = ctx.arg(n);
    Sk {
        typed,
        addr: typed as u64,
    }
}

/// Argument `n` that only some kernels pass: read through a helper, so the program still loads
/// where the tracepoint has fewer arguments (a direct context load past them is rejected).
#[inline(always)]
fn optional_arg(ctx: &BtfTracePointContext, n: usize, present: u32) -> Option<u64> {
    if present == 0 {
        return None;
    }
    // SAFETY: the kernel's argument array, which has slot `n` when `present` says so.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u64>().cast_const().add(n)) }.ok()
}

#[inline(always)]
fn state_change<S: Store>(ctx: &BtfTracePointContext) -> u32 {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    hooks::state_change::<S>(sk_arg(ctx, 0), old as u8, new as u8);
    0
}

#[inline(always)]
fn rst_sent<S: Store>(ctx: &BtfTracePointContext) -> u32 {
    let skb: u64 = ctx.arg(1);
    let reason = match optional_arg(ctx, 2, HOOK_ARGS.load().rst_reason) {
        Some(r) => r as u32,
        None => hooks::REASON_UNKNOWN,
    };
    hooks::rst_sent::<S>(sk_arg(ctx, 0), skb, reason);
    0
}

#[inline(always)]
fn retransmit<S: Store>(ctx: &BtfTracePointContext) -> u32 {
    // Plain values, not an Option: LLVM would spill the undefined payload of a None, and the
    // verifier rejects spilling whatever register held it.
    let (has_err, err) = match optional_arg(ctx, 2, HOOK_ARGS.load().retransmit_err) {
        Some(e) => (true, e as i32),
        None => (false, 0),
    };
    hooks::retransmit::<S>(sk_arg(ctx, 0), has_err, err);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn lp_state(ctx: BtfTracePointContext) -> u32 {
    state_change::<SkStore>(&ctx)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn lp_state_lru(ctx: BtfTracePointContext) -> u32 {
    state_change::<LruStore>(&ctx)
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn lp_rst_received(ctx: BtfTracePointContext) -> u32 {
    hooks::rst_received::<SkStore>(sk_arg(&ctx, 0));
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn lp_rst_received_lru(ctx: BtfTracePointContext) -> u32 {
    hooks::rst_received::<LruStore>(sk_arg(&ctx, 0));
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn lp_rst_sent(ctx: BtfTracePointContext) -> u32 {
    rst_sent::<SkStore>(&ctx)
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn lp_rst_sent_lru(ctx: BtfTracePointContext) -> u32 {
    rst_sent::<LruStore>(&ctx)
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn lp_retransmit(ctx: BtfTracePointContext) -> u32 {
    retransmit::<SkStore>(&ctx)
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn lp_retransmit_lru(ctx: BtfTracePointContext) -> u32 {
    retransmit::<LruStore>(&ctx)
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn lp_retrans_synack(ctx: BtfTracePointContext) -> u32 {
    let listener: u64 = ctx.arg(0);
    let req: u64 = ctx.arg(1);
    hooks::retransmit_synack(listener, req);
    0
}

/// Named apart from its section (`sockops`): aya finds programs by function name.
#[sock_ops]
pub fn lp_sock_ops(ctx: SockOpsContext) -> u32 {
    sockops::handle(&ctx, Variant::SkStorage)
}

#[sock_ops]
pub fn lp_sock_ops_lru(ctx: SockOpsContext) -> u32 {
    sockops::handle(&ctx, Variant::Fallback)
}

/// The open-flow iterator (see `iter`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_sk_storage_map")]
pub fn lp_open_flows(ctx: *mut IterSkStorage) -> i32 {
    // SAFETY: the kernel passes its `bpf_iter__bpf_sk_storage_map` context.
    if let Some(ctx) = unsafe { ctx.as_ref() } {
        iter::open_flow(ctx);
    }
    0
}
