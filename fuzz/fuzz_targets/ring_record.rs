//! One ring record, as the kernel's ring buffer hands it to the daemon.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    probe_user::fuzzing::ring_record(data);
});
