//! Raw BTF, and the struct offsets the probes need resolved from it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    probe_user::fuzzing::btf(data);
});
