//! The kernel's own numbers that both sides use: the eBPF programs compare what they read from
//! sockets with them, userspace decodes records, names states and talks sock_diag with them.
//! One definition each; userspace keeps only the display names.

/// Address families and protocols (`include/linux/socket.h`, `include/uapi/linux/in.h`).
pub mod net {
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;
    pub const IPPROTO_TCP: u16 = 6;
}

/// TCP states (`include/net/tcp_states.h`): `skc_state`, the state-change tracepoint's
/// arguments, sock_diag's `idiag_state`.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// Bound but not listening or connected (6.10+).
    pub const BOUND_INACTIVE: u8 = 13;
}

/// The `sk_err` values of failed connects (`include/uapi/asm-generic/errno.h`).
pub mod errno {
    pub const ENETDOWN: i32 = 100;
    pub const ENETUNREACH: i32 = 101;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const EHOSTDOWN: i32 = 112;
    pub const EHOSTUNREACH: i32 = 113;
}
