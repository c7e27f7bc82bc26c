//! Proxy access-log text as a sidecar (or anyone who can write to its log) puts it in a file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    probe_user::fuzzing::access_log(data);
});
