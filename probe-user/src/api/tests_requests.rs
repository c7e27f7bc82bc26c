//! The request decoder: every request decodes, the rest is refused, and no bytes make it
//! panic.
use proptest::prelude::*;

use super::proto::*;

#[test]
fn decodes_every_request_and_rejects_the_rest() {
    let ok = [
        r#"{"v":1,"req":{"type":"status"}}"#,
        r#"{"v":1,"req":{"type":"flows"}}"#,
        r#"{"v":1,"req":{"type":"flows","filter":{"peer":"10.0.0.1:80","failed":true},"sort":"rtt","limit":5}}"#,
        r#"{"v":1,"req":{"type":"flow","cookie":42}}"#,
        r#"{"v":1,"req":{"type":"anomalies","watch":true}}"#,
        r#"{"v":1,"req":{"type":"watch","filter":{"with_rst":true}}}"#,
        r#"{"v":1,"req":{"type":"top","by":"failure"}}"#,
    ];
    for line in ok {
        decode_request(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    let bad = [
        (r#"{"v":1,"req":{"type":"reboot"}}"#, ErrorCode::BadRequest),
        (
            r#"{"v":2,"req":{"type":"status"}}"#,
            ErrorCode::UnsupportedVersion,
        ),
        (
            r#"{"v":1,"req":{"type":"flows","filter":{"nope":1}}}"#,
            ErrorCode::BadRequest,
        ),
        (r#"{"v":1,"req":{"type":"flow"}}"#, ErrorCode::BadRequest),
        (
            r#"{"v":1,"req":{"type":"status"},"x":1}"#,
            ErrorCode::BadRequest,
        ),
        (r#"{"v":1,"req":{"type":"sta"#, ErrorCode::BadRequest),
        ("\u{0}\u{1}garbage", ErrorCode::BadRequest),
        ("", ErrorCode::BadRequest),
    ];
    for (line, code) in bad {
        let e = decode_request(line.as_bytes()).expect_err(line);
        assert_eq!(e.code(), code, "{line}: {e}");
    }
    let huge = vec![b'x'; MAX_REQUEST_BYTES + 1];
    assert_eq!(
        decode_request(&huge).unwrap_err().code(),
        ErrorCode::TooLarge
    );
    assert_eq!(
        decode_request(&[0xff, 0xfe]).unwrap_err().code(),
        ErrorCode::BadRequest
    );
    // The error echoes the client's variant name: escaped, never a raw ESC or override.
    let evil = r#"{"v":1,"req":{"type":"\u001b[2J\u202ex"}}"#;
    let msg = decode_request(evil.as_bytes()).unwrap_err().to_string();
    assert!(msg.contains("\\x1b[2J\\u{202e}x"), "{msg}");
    assert!(!msg.contains(['\u{1b}', '\u{202e}']), "{msg}");
}

fn any_query() -> impl Strategy<Value = Query> {
    prop_oneof![
        Just(Query::Status),
        any::<u64>().prop_map(|cookie| Query::Flow { cookie }),
        any::<bool>().prop_map(|watch| Query::Anomalies { watch }),
        (any::<Option<u16>>(), any::<bool>(), 0usize..100_000).prop_map(|(port, failed, limit)| {
            Query::Flows {
                filter: Filter {
                    port,
                    failed,
                    ..Filter::default()
                },
                sort: SortKey::Rtt,
                limit,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes: an error or a request, never a panic.
    #[test]
    fn decoder_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes);
    }

    /// Arbitrary JSON-ish text built from the protocol's own tokens.
    #[test]
    fn decoder_never_panics_on_near_json(s in r#"\{("v"|"req"|"type"|"status"|"flows"|"filter"|"cookie"|:|,|\{|\}|1|-1|18446744073709551616|true|null|"x"|\[|\]){0,40}"#) {
        let _ = decode_request(s.as_bytes());
    }

    /// Every request round-trips; every prefix of it (a truncated request) is rejected.
    #[test]
    fn requests_round_trip_and_truncations_fail(q in any_query(), cut in 0usize..200) {
        let line = encode_line(&Request { v: API_VERSION, req: q.clone() });
        let back = decode_request(line.as_bytes()).expect("round trip");
        prop_assert_eq!(back.req, q);
        let body = line.trim_end();
        let cut = cut % body.len();
        prop_assert!(decode_request(&body.as_bytes()[..cut]).is_err());
    }
}
