//! Why the kernel's BTF could not be read.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel has no BTF (CONFIG_DEBUG_INFO_BTF); linkprobe needs it ({} is missing)",
        .path.display()
    )]
    NoKernelBtf { path: PathBuf },
    #[error("reading {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("BTF data is truncated: {len} bytes, the header needs {need}")]
    Truncated { len: usize, need: usize },
    #[error("not BTF data: magic {found:#06x}, expected 0xeb9f")]
    BadMagic { found: u16 },
    #[error(
        "BTF has byte-swapped magic 0x9feb: it was built for the other byte order, and only BTF \
         in this host's byte order is supported"
    )]
    ByteSwapped,
    #[error("unsupported BTF version {0} (expected 1)")]
    BadVersion(u8),
    #[error("unsupported BTF header flags {0:#04x}")]
    BadFlags(u8),
    #[error("bad BTF header: {0}")]
    BadHeader(String),
    #[error(
        "BTF {section} section (offset {offset}, length {len}) does not fit in the {available} \
         bytes after the header"
    )]
    SectionBounds {
        section: &'static str,
        offset: u32,
        len: u32,
        available: usize,
    },
    #[error("BTF type {id} (at byte {offset} of the type section) is truncated")]
    TruncatedType { id: u32, offset: usize },
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("BTF has more types or members than fit in 32 bits")]
    TooManyTypes,
    #[error("BTF string at offset {offset} is outside the string section or not valid UTF-8")]
    BadString { offset: u32 },
    #[error("BTF refers to type id {id}, which does not exist")]
    BadTypeId { id: u32 },
    #[error("BTF type chain from type {id} is cyclic or nested too deeply")]
    TypeLoop { id: u32 },
    #[error("BTF has no struct or union named `{struct_name}` (looking up `{path}`)")]
    UnknownStruct { struct_name: String, path: String },
    #[error("`{path}` is not a member path (empty element) in struct `{struct_name}`")]
    BadPath { struct_name: String, path: String },
    #[error("struct `{struct_name}` has no member `{element}` (looking up `{path}`)")]
    UnknownMember {
        struct_name: String,
        path: String,
        element: String,
    },
    #[error(
        "struct `{struct_name}`: `{parent}` is a {kind}, not a struct or union, so `{path}` \
         cannot be resolved"
    )]
    NotComposite {
        struct_name: String,
        path: String,
        parent: String,
        kind: &'static str,
    },
    #[error(
        "struct `{struct_name}` member `{path}` is a bitfield ({bits} bits at bit offset \
         {bit_offset}); it cannot be read as whole bytes"
    )]
    Bitfield {
        struct_name: String,
        path: String,
        bits: u32,
        bit_offset: u64,
    },
    #[error(
        "struct `{struct_name}` member `{path}` is at bit offset {bit_offset}, not on a byte \
         boundary"
    )]
    Unaligned {
        struct_name: String,
        path: String,
        bit_offset: u64,
    },
    #[error("struct `{struct_name}` member `{path}` has {kind} type, which has no size")]
    NoSize {
        struct_name: String,
        path: String,
        kind: &'static str,
    },
    #[error("struct `{struct_name}` member `{path}`: offset or size does not fit in 32 bits")]
    Overflow { struct_name: String, path: String },
}
