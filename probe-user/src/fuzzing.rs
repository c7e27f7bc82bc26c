//! The decoders of hostile input, for the fuzz targets in `fuzz/` (cargo feature `fuzzing`;
//! not an API). Each takes raw bytes and returns whether they parsed; a panic is the defect a
//! fuzzer looks for.

/// One ring record (`event::decode`).
pub fn ring_record(bytes: &[u8]) -> bool {
    crate::event::decode::decode(bytes).is_ok()
}

/// One API request line (`api::proto`).
pub fn api_request(line: &[u8]) -> bool {
    crate::api::proto::decode_request(line).is_ok()
}

/// A tracefs `format` file (`kernel::tracefs`); bytes that are not UTF-8 never reach the
/// parser (the daemon reads the file with `read_to_string`).
pub fn tracefs_format(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| crate::kernel::tracefs::parse_format(text).is_ok())
}

/// Raw BTF (`kernel::btf`), and on success every struct offset the probes need resolved from it.
pub fn btf(bytes: &[u8]) -> bool {
    crate::kernel::btf::Btf::from_bytes(bytes)
        .map(|btf| crate::kernel::btf::offsets::kernel_offsets(&btf))
        .is_ok()
}

/// Proxy access-log text (`accesslog`): lines through the CRI unwrapper and joiner (bounded at
/// 4 KiB), each complete one through Envoy's JSON line parser.
pub fn access_log(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let names = crate::accesslog::parse::FieldNames::default();
    let mut joiner = crate::accesslog::cri::Joiner::default();
    let mut any = false;
    for line in text.split('\n') {
        if let crate::accesslog::cri::Joined::Line { line, .. } = joiner.push(line, 4096) {
            any |= crate::accesslog::parse::parse_line(&line, &names).is_ok();
        }
    }
    any
}

/// One sock_diag dump datagram (`host::diag`'s wire parser), as an IPv4 then an IPv6 reply.
pub fn sock_diag_datagram(bytes: &[u8]) -> bool {
    crate::host::diag::fuzz_datagram(bytes)
}
