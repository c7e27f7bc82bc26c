//! The raw BTF format: header, type section and string section (`include/uapi/linux/btf.h`,
//! `Documentation/bpf/btf.rst`). Everything is read in the host's byte order, which is the
//! kernel's own; BTF of the other byte order is recognised by its swapped magic and refused.
use std::collections::HashMap;

use super::error::BtfError;

pub(super) const MAGIC: u16 = 0xeb9f;
pub(super) const VERSION: u8 = 1;
/// `struct btf_header` up to and including `str_len`.
pub(super) const HEADER_LEN: usize = 24;
/// `struct btf_type`: `name_off`, `info`, `size`/`type`.
const TYPE_LEN: usize = 12;

/// `BTF_KIND_*`. Type id 0 is `Void`, which has no entry in the type section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Kind> {
        Some(match raw {
            1 => Kind::Int,
            2 => Kind::Ptr,
            3 => Kind::Array,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            7 => Kind::Fwd,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            11 => Kind::Restrict,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            14 => Kind::Var,
            15 => Kind::Datasec,
            16 => Kind::Float,
            17 => Kind::DeclTag,
            18 => Kind::TypeTag,
            19 => Kind::Enum64,
            _ => return None,
        })
    }

    /// Bytes of kind-specific data after the 12-byte `struct btf_type`.
    fn trailing_len(self, vlen: usize) -> usize {
        match self {
            Kind::Int | Kind::Var | Kind::DeclTag => 4,
            Kind::Array => 12,
            Kind::Struct | Kind::Union | Kind::Datasec | Kind::Enum64 => 12 * vlen,
            Kind::Enum | Kind::FuncProto => 8 * vlen,
            Kind::Void
            | Kind::Ptr
            | Kind::Fwd
            | Kind::Typedef
            | Kind::Volatile
            | Kind::Const
            | Kind::Restrict
            | Kind::Func
            | Kind::Float
            | Kind::TypeTag => 0,
        }
    }

    /// Kinds that only qualify or rename another type.
    pub(super) fn is_modifier(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }

    pub(super) fn is_composite(self) -> bool {
        matches!(self, Kind::Struct | Kind::Union)
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            Kind::Void => "void",
            Kind::Int => "int",
            Kind::Ptr => "pointer",
            Kind::Array => "array",
            Kind::Struct => "struct",
            Kind::Union => "union",
            Kind::Enum => "enum",
            Kind::Fwd => "forward declaration",
            Kind::Typedef => "typedef",
            Kind::Volatile => "volatile",
            Kind::Const => "const",
            Kind::Restrict => "restrict",
            Kind::Func => "function",
            Kind::FuncProto => "function prototype",
            Kind::Var => "variable",
            Kind::Datasec => "data section",
            Kind::Float => "float",
            Kind::DeclTag => "decl tag",
            Kind::TypeTag => "type tag",
            Kind::Enum64 => "enum64",
        }
    }
}

/// What the lookups need of each kind's trailing data; the rest is skipped.
#[derive(Clone, Copy, Debug)]
pub(super) enum Extra {
    None,
    /// `BTF_INT_ENCODING` / `BTF_INT_OFFSET` / `BTF_INT_BITS` word.
    Int(u32),
    Array {
        elem: u32,
        nelems: u32,
    },
    /// Range into [`Types::members`].
    Members {
        start: u32,
        len: u32,
    },
}

#[derive(Clone, Copy, Debug)]
pub(super) struct TypeEntry {
    pub name_off: u32,
    pub kind: Kind,
    pub kind_flag: bool,
    /// `size` for INT, ENUM, ENUM64, STRUCT, UNION, FLOAT, DATASEC; `type` for the others.
    pub size_or_type: u32,
    pub extra: Extra,
}

/// `struct btf_member`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member {
    pub name_off: u32,
    pub type_id: u32,
    /// Bit offset; with the parent's kind_flag, bits 0..24 are the offset and 24..32 the
    /// bitfield size.
    pub offset: u32,
}

pub(super) struct Types {
    /// Indexed by type id; entry 0 is void.
    pub types: Vec<TypeEntry>,
    pub members: Vec<Member>,
    pub strings: Vec<u8>,
    /// Struct and union names → their type ids, in id order.
    pub by_name: HashMap<String, Vec<u32>>,
}

fn read_u16(data: &[u8], pos: usize) -> Option<u16> {
    let bytes = data.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

fn read_u32(data: &[u8], pos: usize) -> Option<u32> {
    let bytes = data.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn header_u32(data: &[u8], pos: usize) -> Result<u32, BtfError> {
    read_u32(data, pos).ok_or(BtfError::Truncated {
        len: data.len(),
        need: pos + 4,
    })
}

/// The bytes of a NUL-terminated string at `off`, without the NUL.
pub(super) fn str_at(strings: &[u8], off: u32) -> Result<&[u8], BtfError> {
    let rest = usize::try_from(off)
        .ok()
        .and_then(|off| strings.get(off..))
        .ok_or(BtfError::BadString { offset: off })?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(BtfError::BadString { offset: off })?;
    Ok(&rest[..end])
}

/// Checks one section's bounds within the data after the header.
fn section<'a>(
    body: &'a [u8],
    name: &'static str,
    off: u32,
    len: u32,
) -> Result<&'a [u8], BtfError> {
    let bad = || BtfError::SectionBounds {
        section: name,
        offset: off,
        len,
        available: body.len(),
    };
    let start = usize::try_from(off).map_err(|_| bad())?;
    let len = usize::try_from(len).map_err(|_| bad())?;
    let end = start.checked_add(len).ok_or_else(bad)?;
    body.get(start..end).ok_or_else(bad)
}

pub(super) fn parse(data: &[u8]) -> Result<Types, BtfError> {
    let magic = read_u16(data, 0).ok_or(BtfError::Truncated {
        len: data.len(),
        need: HEADER_LEN,
    })?;
    if magic == MAGIC.swap_bytes() {
        return Err(BtfError::ByteSwapped);
    }
    if magic != MAGIC {
        return Err(BtfError::BadMagic { found: magic });
    }
    if data.len() < HEADER_LEN {
        return Err(BtfError::Truncated {
            len: data.len(),
            need: HEADER_LEN,
        });
    }
    let version = data[2];
    if version != VERSION {
        return Err(BtfError::BadVersion(version));
    }
    let flags = data[3];
    if flags != 0 {
        return Err(BtfError::BadFlags(flags));
    }
    let hdr_len = header_u32(data, 4)?;
    let type_off = header_u32(data, 8)?;
    let type_len = header_u32(data, 12)?;
    let str_off = header_u32(data, 16)?;
    let str_len = header_u32(data, 20)?;
    let hdr_len_usize = usize::try_from(hdr_len).unwrap_or(usize::MAX);
    if hdr_len_usize < HEADER_LEN {
        return Err(BtfError::BadHeader(format!(
            "hdr_len {hdr_len} is shorter than the {HEADER_LEN}-byte header"
        )));
    }
    let body = data.get(hdr_len_usize..).ok_or(BtfError::Truncated {
        len: data.len(),
        need: hdr_len_usize,
    })?;
    if !type_off.is_multiple_of(4) {
        return Err(BtfError::BadHeader(format!(
            "type section offset {type_off} is not 4-byte aligned"
        )));
    }
    let type_sec = section(body, "type", type_off, type_len)?;
    let str_sec = section(body, "string", str_off, str_len)?;
    if str_sec.first() != Some(&0) || str_sec.last() != Some(&0) {
        return Err(BtfError::BadHeader(
            "string section must start and end with a NUL byte".to_owned(),
        ));
    }
    let strings = str_sec.to_vec();
    let (types, members) = parse_types(type_sec)?;

    let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
    for (id, t) in types.iter().enumerate() {
        if !t.kind.is_composite() || t.name_off == 0 {
            continue;
        }
        let name = std::str::from_utf8(str_at(&strings, t.name_off)?)
            .map_err(|_| BtfError::BadString { offset: t.name_off })?;
        if name.is_empty() {
            continue;
        }
        // Ids fit in u32: parse_types caps the count.
        let id = u32::try_from(id).map_err(|_| BtfError::TooManyTypes)?;
        by_name.entry(name.to_owned()).or_default().push(id);
    }
    Ok(Types {
        types,
        members,
        strings,
        by_name,
    })
}

fn parse_types(sec: &[u8]) -> Result<(Vec<TypeEntry>, Vec<Member>), BtfError> {
    // Rough guesses for vmlinux (about 40 bytes per type, 3 members per type) to avoid
    // regrowing the vectors many times.
    let mut types = Vec::with_capacity(sec.len() / 40 + 1);
    let mut members = Vec::with_capacity(sec.len() / 40);
    types.push(TypeEntry {
        name_off: 0,
        kind: Kind::Void,
        kind_flag: false,
        size_or_type: 0,
        extra: Extra::None,
    });
    let mut pos = 0usize;
    while pos < sec.len() {
        let id = u32::try_from(types.len()).map_err(|_| BtfError::TooManyTypes)?;
        let truncated = BtfError::TruncatedType { id, offset: pos };
        let (Some(name_off), Some(info), Some(size_or_type)) = (
            read_u32(sec, pos),
            read_u32(sec, pos + 4),
            read_u32(sec, pos + 8),
        ) else {
            return Err(truncated);
        };
        let raw_kind = (info >> 24) & 0x1f;
        let kind = Kind::from_raw(raw_kind).ok_or(BtfError::UnknownKind { id, kind: raw_kind })?;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let body = pos + TYPE_LEN;
        let end = body + kind.trailing_len(vlen);
        let trailing = sec.get(body..end).ok_or(truncated)?;
        let word = |i: usize| read_u32(trailing, i * 4).unwrap_or(0);
        let extra = match kind {
            Kind::Int => Extra::Int(word(0)),
            Kind::Array => Extra::Array {
                elem: word(0),
                nelems: word(2),
            },
            Kind::Struct | Kind::Union => {
                let start = u32::try_from(members.len()).map_err(|_| BtfError::TooManyTypes)?;
                members.extend(trailing.chunks_exact(12).map(|m| Member {
                    name_off: read_u32(m, 0).unwrap_or(0),
                    type_id: read_u32(m, 4).unwrap_or(0),
                    offset: read_u32(m, 8).unwrap_or(0),
                }));
                Extra::Members {
                    start,
                    // vlen is 16 bits.
                    len: vlen as u32,
                }
            }
            _ => Extra::None,
        };
        types.push(TypeEntry {
            name_off,
            kind,
            kind_flag,
            size_or_type,
            extra,
        });
        pos = end;
    }
    Ok((types, members))
}
