use super::{test_builder::*, *};

#[test]
fn parses_every_kind() {
    let b = sample();
    let btf = Btf::from_bytes(&b.bytes()).expect("parses");
    assert_eq!(btf.type_count(), b.next_id as usize);
    assert!(format!("{btf:?}").contains("types"));
}

#[test]
fn offsets_and_anonymous_descent() {
    let btf = sample_btf();
    let cases = [
        ("first", 0),
        ("u_val", 8),
        ("u_ptr", 8),
        ("x", 8),
        ("y", 12),
        ("nested", 16),
        ("nested.a", 16),
        ("nested.b", 24),
        ("whole", 33),
        ("st", 34),
        ("kind", 36),
        ("arr", 40),
        ("tail", 56),
    ];
    for (path, want) in cases {
        assert_eq!(
            btf.member_offset("outer", path).ok(),
            Some(want),
            "outer.{path}"
        );
    }
    assert_eq!(btf.member_offset("inner", "b").ok(), Some(8));
    assert_eq!(btf.member_offset("legacy", "full").ok(), Some(4));
    // The empty `dup` comes first; the one with the member is used.
    assert_eq!(btf.member_offset("dup", "m").ok(), Some(4));
}

#[test]
fn sizes_follow_typedefs_and_modifiers() {
    let btf = sample_btf();
    let cases = [
        ("first", 4),
        ("u_val", 8),
        ("u_ptr", 8),
        ("y", 4),
        ("nested", 16),
        ("nested.b", 8),
        ("whole", 1),
        ("st", 1),
        ("kind", 4),
        ("arr", 16),
        ("tail", 0),
    ];
    for (path, want) in cases {
        assert_eq!(
            btf.member_size("outer", path).ok(),
            Some(want),
            "outer.{path}"
        );
    }
    assert_eq!(btf.member_size("holder", "p").ok(), Some(8));
    let shape = btf.member_shape("outer", "tail").expect("shape");
    assert_eq!(shape.kind, Kind::Array);
    assert_eq!(shape.elem, Some(Kind::Ptr));
}

#[test]
fn bitfields_need_whole_bytes() {
    let btf = sample_btf();
    for path in ["flags", "mode"] {
        let err = btf.member_offset("outer", path).expect_err(path);
        assert!(matches!(err, BtfError::Bitfield { .. }), "{path}: {err}");
        assert!(btf.member_size("outer", path).is_err());
        assert!(btf.has_member("outer", path));
    }
    let err = btf.member_offset("outer", "mode").expect_err("mode");
    assert!(
        err.to_string().contains("5 bits at bit offset 259"),
        "{err}"
    );
    // Without kind_flag the INT encoding carries the bitfield.
    for path in ["lo", "hi", "mid"] {
        let err = btf.member_offset("legacy", path).expect_err(path);
        assert!(matches!(err, BtfError::Bitfield { .. }), "{path}: {err}");
    }
    let err = btf.member_offset("legacy", "mid").expect_err("mid");
    assert!(err.to_string().contains("bit offset 10"), "{err}");
}

#[test]
fn lookup_errors_name_struct_and_path() {
    let btf = sample_btf();
    let err = btf
        .member_offset("nosuch", "a.b")
        .expect_err("unknown struct");
    assert!(matches!(err, BtfError::UnknownStruct { .. }));
    let msg = err.to_string();
    assert!(msg.contains("`nosuch`") && msg.contains("`a.b`"), "{msg}");

    let err = btf
        .member_offset("outer", "nested.zz")
        .expect_err("unknown member");
    assert!(matches!(err, BtfError::UnknownMember { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("`outer`") && msg.contains("`nested.zz`") && msg.contains("`zz`"),
        "{msg}"
    );
    assert!(!btf.has_member("outer", "nested.zz"));
    assert!(btf.has_member("outer", "nested.b"));

    let err = btf
        .member_offset("outer", "first.x")
        .expect_err("int has no members");
    assert!(
        matches!(err, BtfError::NotComposite { kind: "int", .. }),
        "{err}"
    );
    // Pointers are not followed: the target lives elsewhere in memory.
    let err = btf.member_offset("holder", "p.first").expect_err("pointer");
    assert!(
        matches!(
            err,
            BtfError::NotComposite {
                kind: "pointer",
                ..
            }
        ),
        "{err}"
    );
    for path in ["", "nested..a", ".first", "first."] {
        let err = btf.member_offset("outer", path).expect_err(path);
        assert!(matches!(err, BtfError::BadPath { .. }), "{path:?}: {err}");
    }
    let err = btf.member_size("broken", "z").expect_err("bad type id");
    assert!(matches!(err, BtfError::BadTypeId { id: 999 }), "{err}");
    let err = btf.member_size("voidy", "v").expect_err("void");
    assert!(
        matches!(err, BtfError::NoSize { kind: "void", .. }),
        "{err}"
    );
    let err = btf.member_size("loopy", "l").expect_err("typedef loop");
    assert!(matches!(err, BtfError::TypeLoop { .. }), "{err}");
}

fn set_u32(data: &mut [u8], pos: usize, value: u32) {
    data[pos..pos + 4].copy_from_slice(&value.to_ne_bytes());
}

#[test]
fn rejects_truncated_data() {
    let data = sample().bytes();
    for len in [0, 1, 10, 23] {
        let err = Btf::from_bytes(&data[..len]).expect_err("short header");
        assert!(matches!(err, BtfError::Truncated { .. }), "{len}: {err}");
    }
    let err = Btf::from_bytes(&data[..data.len() - 1]).expect_err("short strings");
    assert!(
        matches!(
            err,
            BtfError::SectionBounds {
                section: "string",
                ..
            }
        ),
        "{err}"
    );
    // A type section that stops inside a type.
    let mut cut = data.clone();
    let type_len = u32::from_ne_bytes(cut[12..16].try_into().expect("4 bytes"));
    set_u32(&mut cut, 12, type_len - 4);
    let err = Btf::from_bytes(&cut).expect_err("cut type");
    assert!(matches!(err, BtfError::TruncatedType { .. }), "{err}");
    // Section lengths that overflow.
    let mut huge = data.clone();
    set_u32(&mut huge, 16, u32::MAX);
    set_u32(&mut huge, 20, u32::MAX);
    assert!(matches!(
        Btf::from_bytes(&huge),
        Err(BtfError::SectionBounds { .. })
    ));
}

#[test]
fn rejects_bad_header() {
    let data = sample().bytes();
    let mut swapped = data.clone();
    swapped.swap(0, 1);
    let err = Btf::from_bytes(&swapped).expect_err("byte-swapped");
    assert!(matches!(err, BtfError::ByteSwapped));
    assert!(err.to_string().contains("byte-swapped"), "{err}");

    let mut magic = data.clone();
    magic[..2].copy_from_slice(&0x1234u16.to_ne_bytes());
    let err = Btf::from_bytes(&magic).expect_err("bad magic");
    assert!(matches!(err, BtfError::BadMagic { found: 0x1234 }), "{err}");
    assert!(err.to_string().contains("0x1234"), "{err}");

    let mut version = data.clone();
    version[2] = 2;
    assert!(matches!(
        Btf::from_bytes(&version),
        Err(BtfError::BadVersion(2))
    ));
    let mut flags = data.clone();
    flags[3] = 1;
    assert!(matches!(
        Btf::from_bytes(&flags),
        Err(BtfError::BadFlags(1))
    ));
    let mut hdr_len = data.clone();
    set_u32(&mut hdr_len, 4, 8);
    assert!(matches!(
        Btf::from_bytes(&hdr_len),
        Err(BtfError::BadHeader(_))
    ));
    let mut no_nul = data.clone();
    let last = no_nul.len() - 1;
    no_nul[last] = b'x';
    assert!(matches!(
        Btf::from_bytes(&no_nul),
        Err(BtfError::BadHeader(_))
    ));
}

#[test]
fn missing_kernel_btf_message() {
    let err = BtfError::NoKernelBtf {
        path: VMLINUX_BTF.into(),
    };
    assert!(err
        .to_string()
        .starts_with("kernel has no BTF (CONFIG_DEBUG_INFO_BTF); linkprobe needs it"));
}

#[test]
fn rejects_unknown_kind() {
    let mut b = Builder::new();
    b.int("int", 4, 0, 32);
    b.ty("future", 25, false, 0, 0);
    let err = Btf::from_bytes(&b.bytes()).expect_err("kind 25");
    assert!(
        matches!(err, BtfError::UnknownKind { id: 2, kind: 25 }),
        "{err}"
    );
}

#[test]
fn accepts_longer_header() {
    // Newer headers may grow; sections are relative to hdr_len.
    let data = sample().bytes();
    let mut long = data[..24].to_vec();
    long.extend_from_slice(&[0; 8]);
    set_u32(&mut long, 4, 32);
    long.extend_from_slice(&data[24..]);
    let btf = Btf::from_bytes(&long).expect("parses");
    assert_eq!(btf.member_offset("outer", "nested.b").ok(), Some(24));
}
