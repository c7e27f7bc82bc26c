//! Types shared by the eBPF programs (`probe-ebpf`) and the daemon (`probe-user`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so that both sides agree on the
//! byte layout; the `user` feature adds `aya::Pod` so userspace can read maps and set globals.
#![no_std]

pub mod event;
pub mod kernel;
pub mod layout;

pub use event::*;
pub use layout::*;
