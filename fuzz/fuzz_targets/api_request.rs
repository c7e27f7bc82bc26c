//! One request line from a client of the API socket (any local user with access).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    probe_user::fuzzing::api_request(data);
});
