//! A small BTF reader that resolves kernel struct member offsets.
//!
//! The tracepoint programs get a `struct sock *` and read the socket cookie, network namespace
//! and cgroup through `bpf_probe_read_kernel` at offsets that differ between kernels. They have
//! no CO-RE relocations for these reads, so at load time userspace reads the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), resolves the offsets here and hands them to the programs as
//! [`KernelOffsets`](probe_common::KernelOffsets) (see [`offsets::kernel_offsets`]).
//!
//! Only what offset lookups need is kept: every type kind (1..=19) is parsed so the type
//! section can be walked, struct/union members are stored, and struct/union names are indexed
//! once.
use std::{collections::HashMap, fmt, io, path::PathBuf};

mod error;
pub mod offsets;
mod parse;
#[cfg(test)]
mod test_builder;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_offsets;

pub use error::BtfError;
use parse::{str_at, Extra, Kind, Member, TypeEntry};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Longest typedef/modifier chain or anonymous-member nesting followed before giving up
/// (real kernels need a handful; corrupt BTF could loop).
const MAX_DEPTH: u32 = 64;

/// Parsed BTF: the types, their struct/union members, the string table and a name index.
pub struct Btf {
    types: Vec<TypeEntry>,
    members: Vec<Member>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .field("members", &self.members.len())
            .field("string_bytes", &self.strings.len())
            .field("named_structs", &self.by_name.len())
            .finish()
    }
}

/// A member found by name, relative to the struct or union searched.
#[derive(Clone, Copy, Debug)]
struct Hit {
    bit_offset: u64,
    type_id: u32,
    /// Bitfield size from a kind_flag struct's member offset; 0 when not a bitfield there.
    bitfield_bits: u32,
    /// The containing struct has no kind_flag, so a bitfield shows in the INT encoding.
    legacy: bool,
}

/// A resolved member path.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    bit_offset: u64,
    type_id: u32,
    /// Non-zero for a bitfield member.
    bitfield_bits: u32,
}

/// Shape of a member's type after typedefs and modifiers, for the checks in `offsets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    kind: Kind,
    /// For arrays, the element's kind (modifiers skipped).
    elem: Option<Kind>,
}

impl Btf {
    /// Parses raw BTF (`/sys/kernel/btf/vmlinux` or the `.BTF` section of an object).
    /// Checks the magic (a byte-swapped one gets its own error), version 1, the header and the
    /// section bounds, and walks every type.
    pub fn from_bytes(data: &[u8]) -> Result<Btf, BtfError> {
        let parsed = parse::parse(data)?;
        Ok(Btf {
            types: parsed.types,
            members: parsed.members,
            strings: parsed.strings,
            by_name: parsed.by_name,
        })
    }

    /// Reads and parses the running kernel's BTF from [`VMLINUX_BTF`].
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        let path = PathBuf::from(VMLINUX_BTF);
        match std::fs::read(&path) {
            Ok(data) => Btf::from_bytes(&data),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BtfError::NoKernelBtf { path }),
            Err(source) => Err(BtfError::Read { path, source }),
        }
    }

    /// Number of types, counting void (id 0).
    #[cfg(test)]
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    /// Byte offset of a member path inside a struct, e.g. `("sock", "__sk_common.skc_cookie")`
    /// or `("sk_buff", "dev")`.
    ///
    /// Each path element is a named member; members inside anonymous structs/unions are found
    /// transparently (recursively) and the offsets add up. Typedef, const, volatile, restrict
    /// and type_tag are followed to reach the struct/union type of intermediate members.
    /// A bitfield member is an error unless it starts and ends on byte boundaries.
    /// Where BTF holds several structs of that name, the first one that has the path wins.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let r = self.resolve(struct_name, path)?;
        check_bytes(struct_name, path, &r)?;
        u32::try_from(r.bit_offset / 8).map_err(|_| overflow(struct_name, path))
    }

    /// Size in bytes of the type of that member, resolving typedefs and modifiers: INT, ENUM,
    /// FLOAT, STRUCT and UNION sizes as recorded, pointers 8 (64-bit kernels), arrays elements × element size
    /// (0 for a flexible array), byte-aligned bitfields their width.
    pub fn member_size(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let r = self.resolve(struct_name, path)?;
        check_bytes(struct_name, path, &r)?;
        let size = if r.bitfield_bits != 0 {
            u64::from(r.bitfield_bits / 8)
        } else {
            self.type_size(r.type_id, struct_name, path)?
        };
        u32::try_from(size).map_err(|_| overflow(struct_name, path))
    }

    /// Whether the member path exists (bitfields included, whatever their alignment).
    pub fn has_member(&self, struct_name: &str, path: &str) -> bool {
        self.resolve(struct_name, path).is_ok()
    }

    /// Kind of a member's type, and of its elements for an array.
    fn member_shape(&self, struct_name: &str, path: &str) -> Result<Shape, BtfError> {
        let r = self.resolve(struct_name, path)?;
        let t = self.entry(self.skip_modifiers(r.type_id)?)?;
        let elem = match t.extra {
            Extra::Array { elem, .. } if t.kind == Kind::Array => {
                Some(self.entry(self.skip_modifiers(elem)?)?.kind)
            }
            _ => None,
        };
        Ok(Shape { kind: t.kind, elem })
    }

    fn entry(&self, id: u32) -> Result<&TypeEntry, BtfError> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.types.get(i))
            .ok_or(BtfError::BadTypeId { id })
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type id.
    fn skip_modifiers(&self, start: u32) -> Result<u32, BtfError> {
        let mut id = start;
        for _ in 0..MAX_DEPTH {
            let t = self.entry(id)?;
            if !t.kind.is_modifier() {
                return Ok(id);
            }
            id = t.size_or_type;
        }
        Err(BtfError::TypeLoop { id: start })
    }

    fn type_size(&self, start: u32, struct_name: &str, path: &str) -> Result<u64, BtfError> {
        // Arrays of arrays multiply up; everything else ends the walk.
        let mut id = start;
        let mut factor = 1u64;
        for _ in 0..MAX_DEPTH {
            let t = self.entry(self.skip_modifiers(id)?)?;
            let size = match (t.kind, t.extra) {
                (Kind::Int | Kind::Enum | Kind::Enum64 | Kind::Float, _)
                | (Kind::Struct | Kind::Union, _) => u64::from(t.size_or_type),
                (Kind::Ptr, _) => 8,
                (Kind::Array, Extra::Array { elem, nelems }) => {
                    factor = factor
                        .checked_mul(u64::from(nelems))
                        .ok_or_else(|| overflow(struct_name, path))?;
                    id = elem;
                    continue;
                }
                (kind, _) => {
                    return Err(BtfError::NoSize {
                        struct_name: struct_name.to_owned(),
                        path: path.to_owned(),
                        kind: kind.describe(),
                    })
                }
            };
            return size
                .checked_mul(factor)
                .ok_or_else(|| overflow(struct_name, path));
        }
        Err(BtfError::TypeLoop { id: start })
    }

    fn members_of(&self, t: &TypeEntry) -> &[Member] {
        match t.extra {
            Extra::Members { start, len } => {
                let start = start as usize;
                self.members
                    .get(start..start + len as usize)
                    .unwrap_or_default()
            }
            _ => &[],
        }
    }

    /// Finds a named member of a struct/union, descending into anonymous struct/union
    /// members.
    fn find_member(
        &self,
        composite: u32,
        name: &[u8],
        depth: u32,
    ) -> Result<Option<Hit>, BtfError> {
        if depth >= MAX_DEPTH {
            return Err(BtfError::TypeLoop { id: composite });
        }
        let t = self.entry(composite)?;
        for m in self.members_of(t) {
            let (bit_offset, bitfield_bits) = if t.kind_flag {
                (m.offset & 0x00ff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            let member_name = if m.name_off == 0 {
                &[][..]
            } else {
                str_at(&self.strings, m.name_off)?
            };
            if member_name.is_empty() {
                let inner = self.skip_modifiers(m.type_id)?;
                if self.entry(inner)?.kind.is_composite() {
                    if let Some(mut hit) = self.find_member(inner, name, depth + 1)? {
                        hit.bit_offset += u64::from(bit_offset);
                        return Ok(Some(hit));
                    }
                }
            } else if member_name == name {
                return Ok(Some(Hit {
                    bit_offset: u64::from(bit_offset),
                    type_id: m.type_id,
                    bitfield_bits,
                    legacy: !t.kind_flag,
                }));
            }
        }
        Ok(None)
    }

    fn resolve(&self, struct_name: &str, path: &str) -> Result<Resolved, BtfError> {
        let ids = self
            .by_name
            .get(struct_name)
            .ok_or_else(|| BtfError::UnknownStruct {
                struct_name: struct_name.to_owned(),
                path: path.to_owned(),
            })?;
        let mut first_err = None;
        for &id in ids {
            match self.resolve_in(id, struct_name, path) {
                Ok(r) => return Ok(r),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| BtfError::UnknownStruct {
            struct_name: struct_name.to_owned(),
            path: path.to_owned(),
        }))
    }

    fn resolve_in(&self, id: u32, struct_name: &str, path: &str) -> Result<Resolved, BtfError> {
        let elements: Vec<&str> = path.split('.').collect();
        if elements.iter().any(|e| e.is_empty()) {
            return Err(BtfError::BadPath {
                struct_name: struct_name.to_owned(),
                path: path.to_owned(),
            });
        }
        let mut cur = id;
        let mut bit_offset = 0u64;
        let mut last = None;
        for (i, element) in elements.iter().enumerate() {
            let container = self.skip_modifiers(cur)?;
            let t = self.entry(container)?;
            if !t.kind.is_composite() {
                return Err(BtfError::NotComposite {
                    struct_name: struct_name.to_owned(),
                    path: path.to_owned(),
                    parent: elements[..i].join("."),
                    kind: t.kind.describe(),
                });
            }
            let hit = self
                .find_member(container, element.as_bytes(), 0)?
                .ok_or_else(|| BtfError::UnknownMember {
                    struct_name: struct_name.to_owned(),
                    path: path.to_owned(),
                    element: (*element).to_owned(),
                })?;
            bit_offset += hit.bit_offset;
            cur = hit.type_id;
            last = Some(hit);
        }
        let mut bitfield_bits = last.map_or(0, |h| h.bitfield_bits);
        if last.is_some_and(|h| h.legacy) {
            // Without kind_flag, a bitfield is an INT whose encoding narrows it.
            let t = self.entry(self.skip_modifiers(cur)?)?;
            if let (Kind::Int, Extra::Int(encoding)) = (t.kind, t.extra) {
                let bits = encoding & 0xff;
                let int_offset = (encoding >> 16) & 0xff;
                if int_offset != 0 || u64::from(bits) != u64::from(t.size_or_type) * 8 {
                    bit_offset += u64::from(int_offset);
                    bitfield_bits = bits;
                }
            }
        }
        Ok(Resolved {
            bit_offset,
            type_id: cur,
            bitfield_bits,
        })
    }
}

fn overflow(struct_name: &str, path: &str) -> BtfError {
    BtfError::Overflow {
        struct_name: struct_name.to_owned(),
        path: path.to_owned(),
    }
}

/// A member read as bytes must start on a byte boundary, and a bitfield must also cover
/// whole bytes.
fn check_bytes(struct_name: &str, path: &str, r: &Resolved) -> Result<(), BtfError> {
    if r.bitfield_bits != 0
        && (!r.bit_offset.is_multiple_of(8) || !r.bitfield_bits.is_multiple_of(8))
    {
        return Err(BtfError::Bitfield {
            struct_name: struct_name.to_owned(),
            path: path.to_owned(),
            bits: r.bitfield_bits,
            bit_offset: r.bit_offset,
        });
    }
    if !r.bit_offset.is_multiple_of(8) {
        return Err(BtfError::Unaligned {
            struct_name: struct_name.to_owned(),
            path: path.to_owned(),
            bit_offset: r.bit_offset,
        });
    }
    Ok(())
}
