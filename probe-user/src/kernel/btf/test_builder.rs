//! A small BTF writer for tests: builds blobs the way pahole lays them out.
use super::*;

pub(super) const INT: u32 = 1;
pub(super) const PTR: u32 = 2;
pub(super) const ARRAY: u32 = 3;
pub(super) const STRUCT: u32 = 4;
pub(super) const UNION: u32 = 5;
pub(super) const ENUM: u32 = 6;
pub(super) const FWD: u32 = 7;
pub(super) const TYPEDEF: u32 = 8;
pub(super) const VOLATILE: u32 = 9;
pub(super) const CONST: u32 = 10;
pub(super) const RESTRICT: u32 = 11;
pub(super) const FUNC: u32 = 12;
pub(super) const FUNC_PROTO: u32 = 13;
pub(super) const VAR: u32 = 14;
pub(super) const DATASEC: u32 = 15;
pub(super) const FLOAT: u32 = 16;
pub(super) const DECL_TAG: u32 = 17;
pub(super) const TYPE_TAG: u32 = 18;
pub(super) const ENUM64: u32 = 19;

/// Writes BTF the way pahole does: header, type section, string section.
pub(super) struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    pub(super) next_id: u32,
}

impl Builder {
    pub(super) fn new() -> Builder {
        Builder {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    pub(super) fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    pub(super) fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_ne_bytes());
        }
    }

    /// A `struct btf_type`; the caller appends the kind's trailing data.
    pub(super) fn ty(
        &mut self,
        name: &str,
        kind: u32,
        kind_flag: bool,
        vlen: u32,
        size_or_type: u32,
    ) -> u32 {
        let name = self.name(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        self.words(&[name, info, size_or_type]);
        self.next_id += 1;
        self.next_id - 1
    }

    pub(super) fn int(&mut self, name: &str, size: u32, bit_offset: u32, bits: u32) -> u32 {
        let id = self.ty(name, INT, false, 0, size);
        self.words(&[(bit_offset << 16) | bits]);
        id
    }

    pub(super) fn modifier(&mut self, kind: u32, name: &str, target: u32) -> u32 {
        self.ty(name, kind, false, 0, target)
    }

    pub(super) fn array(&mut self, elem: u32, index: u32, nelems: u32) -> u32 {
        let id = self.ty("", ARRAY, false, 0, 0);
        self.words(&[elem, index, nelems]);
        id
    }

    /// Members are (name, type, raw offset word).
    pub(super) fn composite(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        kind_flag: bool,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let id = self.ty(name, kind, kind_flag, members.len() as u32, size);
        for &(member, type_id, offset) in members {
            let member = self.name(member);
            self.words(&[member, type_id, offset]);
        }
        id
    }

    pub(super) fn bytes(&self) -> Vec<u8> {
        let type_len = self.types.len() as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_ne_bytes());
        out.push(1);
        out.push(0);
        for w in [24, 0, type_len, type_len, self.strings.len() as u32] {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// Offset word of a bitfield member in a kind_flag struct.
pub(super) fn bitfield(bit_offset: u32, bits: u32) -> u32 {
    (bits << 24) | bit_offset
}

/// One of every kind, plus the structs the lookups are tested on.
pub(super) fn sample() -> Builder {
    let mut b = Builder::new();
    let int = b.int("int", 4, 0, 32);
    let u8t = b.int("unsigned char", 1, 0, 8);
    let u64t = b.int("long long unsigned int", 8, 0, 64);
    let vptr = b.modifier(PTR, "", 0);
    let inner = b.composite(
        STRUCT,
        "inner",
        16,
        false,
        &[("a", int, 0), ("b", u64t, 64)],
    );
    let inner_t = b.modifier(TYPEDEF, "inner_t", inner);
    let const_inner = b.modifier(CONST, "", inner_t);
    let anon_struct = b.composite(STRUCT, "", 8, false, &[("x", int, 0), ("y", int, 32)]);
    let anon_union = b.composite(
        UNION,
        "",
        8,
        false,
        &[("u_val", u64t, 0), ("u_ptr", vptr, 0), ("", anon_struct, 0)],
    );
    let arr4 = b.array(int, int, 4);
    let tagged = b.modifier(TYPE_TAG, "rcu", vptr);
    let flex = b.array(tagged, int, 0);
    let state = b.ty("state", ENUM, false, 2, 4);
    b.words(&[b.strings.len() as u32, 0]);
    let _ = b.name("ST_A");
    b.words(&[0, 1]);
    let _wide = b.ty("wide", ENUM64, false, 1, 8);
    b.words(&[0, 1, 2]);
    let _float = b.ty("double", FLOAT, false, 0, 8);
    let _fwd = b.ty("later", FWD, false, 0, 0);
    let vol_u8 = b.modifier(VOLATILE, "", u8t);
    let _restrict = b.modifier(RESTRICT, "", vptr);
    let proto = b.ty("", FUNC_PROTO, false, 2, int);
    b.words(&[0, int, 0, vptr]);
    let _func = b.ty("f", FUNC, false, 1, proto);
    let var = b.ty("v", VAR, false, 0, int);
    b.words(&[1]);
    let _sec = b.ty(".data", DATASEC, false, 1, 4);
    b.words(&[var, 0, 4]);
    let outer = b.composite(
        STRUCT,
        "outer",
        56,
        true,
        &[
            ("first", int, 0),
            ("", anon_union, 64),
            ("nested", const_inner, 128),
            ("flags", u8t, bitfield(256, 3)),
            ("mode", u8t, bitfield(259, 5)),
            ("whole", u8t, bitfield(264, 8)),
            ("st", vol_u8, 272),
            ("kind", state, 288),
            ("arr", arr4, 320),
            ("tail", flex, 448),
        ],
    );
    let _decl = b.ty("annotation", DECL_TAG, false, 0, outer);
    b.words(&[u32::MAX]);
    let outer_ptr = b.modifier(PTR, "", outer);
    let bf3 = b.int("int", 4, 0, 3);
    let bf_shifted = b.int("int", 4, 2, 3);
    b.composite(
        STRUCT,
        "legacy",
        8,
        false,
        &[
            ("lo", bf3, 0),
            ("hi", bf3, 3),
            ("mid", bf_shifted, 8),
            ("full", int, 32),
        ],
    );
    b.composite(STRUCT, "dup", 0, false, &[]);
    b.composite(STRUCT, "dup", 8, false, &[("m", int, 32)]);
    b.composite(STRUCT, "holder", 8, false, &[("p", outer_ptr, 0)]);
    b.composite(STRUCT, "broken", 8, false, &[("z", 999, 0)]);
    b.composite(STRUCT, "voidy", 8, false, &[("v", 0, 0)]);
    let looped = b.next_id;
    b.modifier(TYPEDEF, "loop", looped);
    b.composite(STRUCT, "loopy", 8, false, &[("l", looped, 0)]);
    b
}

pub(super) fn sample_btf() -> Btf {
    match Btf::from_bytes(&sample().bytes()) {
        Ok(btf) => btf,
        Err(e) => panic!("sample BTF does not parse: {e}"),
    }
}
