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

/// `sock.sk_cgrp_data` (`include/linux/cgroup-defs.h`, `sock_cgroup_ptr` in
/// `include/linux/cgroup.h`).
pub mod sock_cgroup {
    /// Low bits of the pre-5.15 `sock_cgroup_data.val` that mark it as no cgroup pointer: bit
    /// 0 (`is_data`: the value holds a net_cls classid / net_prio prioidx pair instead) and bit
    /// 1 (`no_refcnt`, 5.7+ and stable backports: socket cgroup refcounting was disabled, the
    /// value holds no pointer). The kernel's `sock_cgroup_ptr` then answers the root cgroup:
    /// the socket's own cgroup is lost. On 5.15+ the field is a plain pointer, aligned, so
    /// both bits are always clear; so it is on stable kernels that took that change (commit
    /// 8520e224f547, e.g. Debian's 5.10.262, whose BTF has `sk_cgrp_data.cgroup`).
    pub const TAG_BITS: u64 = 0b11;

    /// The cgroup pointer in `val`, or 0 where it holds none: linkprobe reports no (unknown)
    /// cgroup then, rather than the root the kernel falls back to.
    #[inline(always)]
    pub const fn pointer(val: u64) -> u64 {
        if val & TAG_BITS == 0 {
            val
        } else {
            0
        }
    }

    #[cfg(test)]
    mod tests {
        use super::pointer;

        #[test]
        fn tagged_values_are_no_cgroup() {
            let cgroup = 0xffff_8880_0123_4500u64;
            assert_eq!(pointer(cgroup), cgroup, "5.15+, or an untagged value");
            assert_eq!(pointer(0), 0, "never set");
            // is_data: classid 0x10001 and prioidx 3 over the lost pointer.
            assert_eq!(pointer((0x10001 << 32) | (3 << 16) | 1), 0);
            // no_refcnt: refcounting disabled when the socket was created; no pointer.
            assert_eq!(pointer(0b10), 0);
            assert_eq!(pointer(cgroup | 0b10), 0);
            assert_eq!(pointer(0b11), 0);
        }
    }
}
