//! One NETLINK_SOCK_DIAG dump datagram.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    probe_user::fuzzing::sock_diag_datagram(data);
});
