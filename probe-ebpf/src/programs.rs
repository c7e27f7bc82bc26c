//! Program entry points. Names are what userspace looks up. Each hook exists twice: with the
//! flow state in socket storage (`lp_*`) and in the fallback LRU map (`lp_*_lru`); userspace
//! loads the first that this kernel's verifier accepts. Each of those has a backup (`*_b`, see
//! `backup`) for the hits the kernel skips it for.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, sock_ops},
    programs::{BtfTracePointContext, SockOpsContext},
    EbpfContext as _,
};

use probe_common::backup as backup_hook;

use crate::{
    backup,
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

/// Argument `n` that only some kernels pass (`present` says this one does), 0 where it does
/// not: read through a helper, so the program still loads where the tracepoint has fewer
/// arguments (a direct context load past them is rejected). A plain value, never undefined:
/// older verifiers reject reading a stack slot that one path left unwritten.
#[inline(always)]
fn optional_arg(ctx: &BtfTracePointContext, n: usize, present: u32) -> u64 {
    if present == 0 {
        return 0;
    }
    arg_value(ctx, n)
}

#[inline(always)]
fn state_change<S: Store>(ctx: &BtfTracePointContext) {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    hooks::state_change::<S>(sk_arg(ctx, 0), old as u8, new as u8);
}

#[inline(always)]
fn rst_received<S: Store>(ctx: &BtfTracePointContext) {
    hooks::rst_received::<S>(sk_arg(ctx, 0));
}

#[inline(always)]
fn rst_sent<S: Store>(ctx: &BtfTracePointContext) {
    // Through the helper: in the backup, LLVM would reuse the key's `ctx + 8` for a direct
    // load, and the verifier rejects loads through a moved context pointer.
    let skb = arg_value(ctx, 1);
    let has_reason = HOOK_ARGS.load().rst_reason;
    let reason = if has_reason != 0 {
        optional_arg(ctx, 2, has_reason) as u32
    } else {
        hooks::REASON_UNKNOWN
    };
    hooks::rst_sent::<S>(sk_arg(ctx, 0), skb, reason);
}

#[inline(always)]
fn retransmit<S: Store>(ctx: &BtfTracePointContext) {
    // Plain values, not an Option: LLVM would spill the undefined payload of a None, and the
    // verifier rejects spilling whatever register held it.
    let has_err = HOOK_ARGS.load().retransmit_err;
    let err = optional_arg(ctx, 2, has_err) as i32;
    hooks::retransmit::<S>(sk_arg(ctx, 0), has_err != 0, err);
}

#[inline(always)]
fn retrans_synack<S: Store>(ctx: &BtfTracePointContext) {
    let listener: u64 = ctx.arg(0);
    let req: u64 = ctx.arg(1);
    hooks::retransmit_synack(listener, req);
}

/// Argument `n` as a plain number, read through a helper: a BTF-typed pointer argument loaded
/// from the context is a pointer to the verifier, and no arithmetic may touch it.
#[inline(always)]
fn arg_value(ctx: &BtfTracePointContext, n: usize) -> u64 {
    // SAFETY: the kernel's argument array; a slot a tracepoint does not pass reads as whatever
    // follows (the helper cannot fault), and only slots every kernel passes are asked for.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u64>().cast_const().add(n)) }.unwrap_or(0)
}

/// What identifies this hit of `hook`, for a primary and its backup alike.
#[inline(always)]
fn key_of(ctx: &BtfTracePointContext, hook: u32) -> u64 {
    let a0 = arg_value(ctx, 0);
    match hook {
        backup_hook::STATE => {
            let (old, new) = (arg_value(ctx, 1), arg_value(ctx, 2));
            backup::key(hook, a0, (old & 0xff) << 8 | (new & 0xff))
        }
        backup_hook::RST_RECEIVED => backup::key(hook, a0, 0),
        _ => backup::key(hook, arg_value(ctx, 1), a0),
    }
}

/// A hook's primary program (handles every hit it runs for, then marks it for the backup) and
/// its backup (handles the hits the kernel skipped the primary for), per flow store.
macro_rules! hook_programs {
    ($tp:literal, $hook:expr, $body:ident, $(($primary:ident, $backup:ident, $store:ty)),+) => {
        $(
            #[btf_tracepoint(function = $tp)]
            pub fn $primary(ctx: BtfTracePointContext) -> u32 {
                $body::<$store>(&ctx);
                if backup::on() {
                    backup::mark(key_of(&ctx, $hook));
                }
                0
            }

            #[btf_tracepoint(function = $tp)]
            pub fn $backup(ctx: BtfTracePointContext) -> u32 {
                if backup::stands_in($hook, key_of(&ctx, $hook)) {
                    $body::<$store>(&ctx);
                }
                0
            }
        )+
    };
}

hook_programs!(
    "inet_sock_set_state",
    backup_hook::STATE,
    state_change,
    (lp_state, lp_state_b, SkStore),
    (lp_state_lru, lp_state_lru_b, LruStore)
);
hook_programs!(
    "tcp_receive_reset",
    backup_hook::RST_RECEIVED,
    rst_received,
    (lp_rst_received, lp_rst_received_b, SkStore),
    (lp_rst_received_lru, lp_rst_received_lru_b, LruStore)
);
hook_programs!(
    "tcp_send_reset",
    backup_hook::RST_SENT,
    rst_sent,
    (lp_rst_sent, lp_rst_sent_b, SkStore),
    (lp_rst_sent_lru, lp_rst_sent_lru_b, LruStore)
);
hook_programs!(
    "tcp_retransmit_skb",
    backup_hook::RETRANSMIT,
    retransmit,
    (lp_retransmit, lp_retransmit_b, SkStore),
    (lp_retransmit_lru, lp_retransmit_lru_b, LruStore)
);

// SYN-ACK retransmits keep no flow state: one program pair serves both stores.
hook_programs!(
    "tcp_retransmit_synack",
    backup_hook::RETRANS_SYNACK,
    retrans_synack,
    (lp_retrans_synack, lp_retrans_synack_b, SkStore)
);

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
