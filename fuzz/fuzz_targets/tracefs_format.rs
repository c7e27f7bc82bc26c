//! A tracefs format file (a kernel of any version, or a tampered tracefs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    probe_user::fuzzing::tracefs_format(data);
});
