//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just what
//! the probe plan and the kernel facts need (struct member offsets through
//! anonymous unions, struct sizes, whether a function or tracepoint type
//! exists). aya parses BTF too, but does not expose member lookup by name.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use super::kallsyms::NamePrefixes;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF: {0}")]
    Format(&'static str),
}

const KIND_PTR: u8 = 2;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_TYPEDEF: u8 = 8;
const KIND_FUNC: u8 = 12;

#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u8,
    /// Set on structs whose member offsets carry bitfield sizes.
    kind_flag: bool,
    name_off: u32,
    /// Size for structs/unions, referenced type id for typedefs and the like.
    size_or_type: u32,
    /// Index of the first member in `Btf::members` (structs/unions).
    first_member: u32,
    vlen: u16,
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset inside the containing struct.
    bit_offset: u32,
}

/// Parsed BTF (types and strings).
pub struct Btf {
    /// `types[0]` is the void type (id 0).
    types: Vec<Type>,
    members: Vec<Member>,
    strings: Vec<u8>,
    index: Option<AttachIndex>,
}

/// Ids of the functions and tracepoint typedefs the plan may attach to.
#[derive(Default)]
struct AttachIndex {
    funcs: HashMap<String, u32>,
    typedefs: HashMap<String, u32>,
    /// Every name looked for, found or not.
    asked: HashSet<String>,
}

impl AttachIndex {
    fn covers(&self, name: &str) -> bool {
        self.asked.contains(name)
    }
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Format("truncated"))
}

/// The type and string sections of a BTF blob.
fn sections(b: &[u8]) -> Result<(&[u8], &[u8]), BtfError> {
    if b.len() < 24 || b[0..2] != [0x9f, 0xeb] {
        return Err(BtfError::Format(
            "bad magic (only little-endian BTF is read)",
        ));
    }
    let hdr_len = u32_at(b, 4)? as usize;
    let type_off = u32_at(b, 8)? as usize;
    let type_len = u32_at(b, 12)? as usize;
    let str_off = u32_at(b, 16)? as usize;
    let str_len = u32_at(b, 20)? as usize;
    let types_start = hdr_len + type_off;
    let strings = b
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or(BtfError::Format("string section out of bounds"))?;
    let types = b
        .get(types_start..types_start + type_len)
        .ok_or(BtfError::Format("type section out of bounds"))?;
    Ok((types, strings))
}

/// Kernel object `name`'s BTF ("vmlinux" or a module's): copied by the
/// kernel in one go where `bpf(2)` allows, else read from
/// `/sys/kernel/btf/<name>`.
fn kernel_bytes(name: &str) -> Result<Vec<u8>, BtfError> {
    super::btf_objects::kernel_btf_bytes(name).or_else(|e| {
        log::debug!("BTF of {name} through bpf(2): {e}; reading sysfs");
        let path = format!("/sys/kernel/btf/{name}");
        std::fs::read(&path).map_err(|source| BtfError::Read { path, source })
    })
}

/// The NUL-terminated string at `off` ("" when out of bounds or not UTF-8).
fn c_str(strings: &[u8], off: usize) -> &str {
    let rest = strings.get(off..).unwrap_or(&[]);
    let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

/// Bytes that follow a type's 12-byte header, by kind.
fn extra_bytes(kind: u8, vlen: u16) -> Result<usize, BtfError> {
    let vlen = vlen as usize;
    Ok(match kind {
        1 => 4,  // INT
        3 => 12, // ARRAY
        KIND_STRUCT | KIND_UNION => 12 * vlen,
        6 => 8 * vlen,   // ENUM
        13 => 8 * vlen,  // FUNC_PROTO
        14 => 4,         // VAR
        15 => 12 * vlen, // DATASEC
        17 => 4,         // DECL_TAG
        19 => 12 * vlen, // ENUM64
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        _ => return Err(BtfError::Format("unknown type kind")),
    })
}

/// Type ids of the functions the plan may load fentry/fexit programs
/// against, in vmlinux's BTF or in a module's split BTF
/// (`/sys/kernel/btf/<module>`, which continues vmlinux's ids and strings).
#[derive(Debug, Default)]
pub struct FuncIds {
    funcs: HashMap<String, u32>,
}

impl FuncIds {
    #[cfg(test)]
    pub(crate) fn with_funcs(funcs: &[(&str, u32)]) -> Self {
        FuncIds {
            funcs: funcs.iter().map(|&(n, id)| (n.to_string(), id)).collect(),
        }
    }

    /// The module's type id of function `name`, when the module has it and
    /// it was asked for.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.funcs.get(name).copied()
    }
}

impl Btf {
    /// Reads module `module`'s BTF for the functions in `funcs`.
    pub fn module(&self, module: &str, funcs: &[&str]) -> Result<FuncIds, BtfError> {
        self.parse_module(&kernel_bytes(module)?, funcs)
    }

    /// Parses a split BTF blob on top of this (base) BTF, keeping the ids of
    /// the functions named in `funcs`.
    pub fn parse_module(&self, b: &[u8], funcs: &[&str]) -> Result<FuncIds, BtfError> {
        let (tb, strings) = sections(b)?;
        let base_strings = self.strings.len() as u32;
        let wanted: HashSet<&str> = funcs.iter().copied().collect();
        let mut out = FuncIds::default();
        let mut id = self.types.len() as u32;
        let mut off = 0usize;
        while off < tb.len() {
            let name_off = u32_at(tb, off)?;
            let info = u32_at(tb, off + 4)?;
            let kind = ((info >> 24) & 0x1f) as u8;
            off += 12 + extra_bytes(kind, (info & 0xffff) as u16)?;
            if kind == KIND_FUNC {
                // Split BTF reuses the base's strings where it can.
                let name = if name_off < base_strings {
                    self.name(name_off)
                } else {
                    c_str(strings, (name_off - base_strings) as usize)
                };
                if wanted.contains(name) {
                    out.funcs.entry(name.to_string()).or_insert(id);
                }
            }
            id += 1;
        }
        Ok(out)
    }

    /// The name of type `id` in this BTF.
    pub fn type_name(&self, id: u32) -> Option<&str> {
        self.types.get(id as usize).map(|t| self.name(t.name_off))
    }

    /// The name of type `id` of a module's split BTF `b` on top of this one.
    pub fn split_type_name(&self, b: &[u8], id: u32) -> Result<Option<String>, BtfError> {
        if let Some(n) = (id < self.types.len() as u32)
            .then(|| self.type_name(id))
            .flatten()
        {
            return Ok(Some(n.to_string()));
        }
        let (tb, strings) = sections(b)?;
        let base_strings = self.strings.len() as u32;
        let mut cur = self.types.len() as u32;
        let mut off = 0usize;
        while off < tb.len() {
            let name_off = u32_at(tb, off)?;
            let info = u32_at(tb, off + 4)?;
            if cur == id {
                let name = if name_off < base_strings {
                    self.name(name_off)
                } else {
                    c_str(strings, (name_off - base_strings) as usize)
                };
                return Ok(Some(name.to_string()));
            }
            off += 12 + extra_bytes(((info >> 24) & 0x1f) as u8, (info & 0xffff) as u16)?;
            cur += 1;
        }
        Ok(None)
    }

    /// The running kernel's own BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::parse(&kernel_bytes("vmlinux")?)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        let (tb, strings) = sections(b)?;
        let strings = strings.to_vec();

        let mut types = vec![Type {
            kind: 0,
            kind_flag: false,
            name_off: 0,
            size_or_type: 0,
            first_member: 0,
            vlen: 0,
        }];
        let mut members = Vec::new();
        let mut off = 0usize;
        while off < tb.len() {
            let name_off = u32_at(tb, off)?;
            let info = u32_at(tb, off + 4)?;
            let size_or_type = u32_at(tb, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as u16;
            let kind = ((info >> 24) & 0x1f) as u8;
            let kind_flag = info >> 31 == 1;
            let first_member = members.len() as u32;
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for i in 0..vlen as usize {
                    let m = off + i * 12;
                    let raw = u32_at(tb, m + 8)?;
                    members.push(Member {
                        name_off: u32_at(tb, m)?,
                        type_id: u32_at(tb, m + 4)?,
                        bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                    });
                }
            }
            off += extra_bytes(kind, vlen)?;
            types.push(Type {
                kind,
                kind_flag,
                name_off,
                size_or_type,
                first_member,
                vlen,
            });
        }
        Ok(Btf {
            types,
            members,
            strings,
            index: None,
        })
    }

    fn name(&self, off: u32) -> &str {
        c_str(&self.strings, off as usize)
    }

    fn find(&self, kind: u8, name: &str) -> Option<&Type> {
        self.types.get(self.id_of(kind, name)? as usize)
    }

    /// Follows typedefs, const, volatile and the like to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                8..=11 | 18 => id = t.size_or_type,
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`, looking inside anonymous
    /// structs and unions (where `struct page` keeps `mapping`).
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Option<u32> {
        let t = self
            .find(KIND_STRUCT, struct_name)
            .or_else(|| self.find(KIND_UNION, struct_name))?;
        self.member_bits(t, member, 0).map(|(bits, _)| bits / 8)
    }

    /// Whether `member` of `struct name` is a pointer (after typedefs and
    /// qualifiers): a load of it through a typed pointer gives the program
    /// a pointer, not a number.
    pub fn member_is_pointer(&self, struct_name: &str, member: &str) -> Option<bool> {
        let t = self
            .find(KIND_STRUCT, struct_name)
            .or_else(|| self.find(KIND_UNION, struct_name))?;
        let (_, m) = self.member_bits(t, member, 0)?;
        Some(self.resolve(m.type_id)?.kind == KIND_PTR)
    }

    /// The member's bit offset, and the member itself.
    fn member_bits(&self, t: &Type, member: &str, depth: u32) -> Option<(u32, Member)> {
        if depth > 8 || !(t.kind == KIND_STRUCT || t.kind == KIND_UNION) {
            return None;
        }
        let ms = &self.members[t.first_member as usize..(t.first_member + t.vlen as u32) as usize];
        for m in ms {
            if self.name(m.name_off) == member {
                return Some((m.bit_offset, *m));
            }
        }
        for m in ms
            .iter()
            .filter(|m| m.name_off == 0 || self.name(m.name_off).is_empty())
        {
            if let Some(inner) = self.resolve(m.type_id) {
                if let Some((bits, found)) = self.member_bits(inner, member, depth + 1) {
                    return Some((m.bit_offset + bits, found));
                }
            }
        }
        None
    }

    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.find(KIND_STRUCT, name).map(|t| t.size_or_type)
    }

    /// Whether the kernel has a function of that name (fentry can target it).
    pub fn has_func(&self, name: &str) -> bool {
        match &self.index {
            Some(ix) if ix.covers(name) => ix.funcs.contains_key(name),
            _ => self.find(KIND_FUNC, name).is_some(),
        }
    }

    /// Whether a BTF tracepoint of that name exists (`btf_trace_<name>`).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        let typedef = format!("btf_trace_{name}");
        match &self.index {
            Some(ix) if ix.covers(&typedef) => ix.typedefs.contains_key(&typedef),
            _ => self.find(KIND_TYPEDEF, &typedef).is_some(),
        }
    }

    /// Finds, in one pass over the types, the ids of the functions named in
    /// `funcs` and of the BTF tracepoints named in `tracepoints`. Answers
    /// `has_func`/`has_tracepoint` for them from then on (a scan per query
    /// cost tens of ms under emulation).
    pub fn index(&mut self, funcs: &[&str], tracepoints: &[&str]) {
        let mut ix = AttachIndex::default();
        let typedefs: Vec<String> = tracepoints
            .iter()
            .map(|t| format!("btf_trace_{t}"))
            .collect();
        let typedef_set: HashSet<&str> = typedefs.iter().map(String::as_str).collect();
        let func_set: HashSet<&str> = funcs.iter().copied().collect();
        let prefixes = NamePrefixes::new(func_set.iter().chain(typedef_set.iter()).copied());
        for (id, t) in self.types.iter().enumerate() {
            let (set, found) = match t.kind {
                KIND_FUNC => (&func_set, &mut ix.funcs),
                KIND_TYPEDEF => (&typedef_set, &mut ix.typedefs),
                _ => continue,
            };
            if !prefixes.may_match(self.strings.get(t.name_off as usize..).unwrap_or(&[])) {
                continue;
            }
            let name = self.name(t.name_off);
            if set.contains(name) {
                found.entry(name.to_string()).or_insert(id as u32);
            }
        }
        ix.asked = func_set
            .iter()
            .map(|f| f.to_string())
            .chain(typedefs)
            .collect();
        self.index = Some(ix);
    }

    /// The type ids of the indexed functions (what fentry/fexit load with).
    pub fn func_ids(&self) -> FuncIds {
        FuncIds {
            funcs: self
                .index
                .as_ref()
                .map(|ix| ix.funcs.clone())
                .unwrap_or_default(),
        }
    }

    /// The type id of `struct name`.
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.id_of(KIND_STRUCT, name)
    }

    /// The type id of function `name` (a kfunc's, for a call to it).
    pub fn func_type_id(&self, name: &str) -> Option<u32> {
        self.id_of(KIND_FUNC, name)
    }

    fn id_of(&self, kind: u8, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == kind && self.name(t.name_off) == name)
            .map(|i| i as u32)
    }

    /// Whether the struct exists at all (e.g. `struct folio`).
    pub fn has_struct(&self, name: &str) -> bool {
        self.find(KIND_STRUCT, name).is_some()
    }

    /// Whether `struct name` packs bitfield sizes into member offsets.
    pub fn has_bitfields(&self, name: &str) -> Option<bool> {
        self.find(KIND_STRUCT, name).map(|t| t.kind_flag)
    }

    #[cfg(test)]
    fn kind_flag_of(&self, name: &str) -> Option<bool> {
        self.find(KIND_STRUCT, name).map(|t| t.kind_flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }`,
    /// `struct outer { long x; union { struct inner; long y; }; int z; }`.
    fn blob() -> Vec<u8> {
        let mut strings = b"\0int\0a\0b\0inner\0outer\0x\0y\0z\0long\0f\0btf_trace_t\0".to_vec();
        let s = |name: &str, strings: &Vec<u8>| -> u32 {
            let needle = [name.as_bytes(), b"\0"].concat();
            strings
                .windows(needle.len())
                .enumerate()
                .find(|(i, w)| *w == needle.as_slice() && (*i == 0 || strings[i - 1] == 0))
                .map(|(i, _)| i as u32)
                .expect("string present")
        };
        let mut t = Vec::new();
        let push = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push(&mut t, s("int", &strings));
        push(&mut t, 1 << 24);
        push(&mut t, 4);
        push(&mut t, 32);
        // 2: long
        push(&mut t, s("long", &strings));
        push(&mut t, 1 << 24);
        push(&mut t, 8);
        push(&mut t, 64);
        // 3: struct inner { int a @0; int b @32 }
        push(&mut t, s("inner", &strings));
        push(&mut t, (4 << 24) | 2);
        push(&mut t, 8);
        for (n, off) in [("a", 0u32), ("b", 32)] {
            push(&mut t, s(n, &strings));
            push(&mut t, 1);
            push(&mut t, off);
        }
        // 4: anonymous union { struct inner; long y; }
        push(&mut t, 0);
        push(&mut t, (5 << 24) | 2);
        push(&mut t, 8);
        push(&mut t, 0);
        push(&mut t, 3);
        push(&mut t, 0);
        push(&mut t, s("y", &strings));
        push(&mut t, 2);
        push(&mut t, 0);
        // 5: struct outer { long x @0; union @64; int z @128 }
        push(&mut t, s("outer", &strings));
        push(&mut t, (4 << 24) | 3);
        push(&mut t, 24);
        push(&mut t, s("x", &strings));
        push(&mut t, 2);
        push(&mut t, 0);
        push(&mut t, 0);
        push(&mut t, 4);
        push(&mut t, 64);
        push(&mut t, s("z", &strings));
        push(&mut t, 1);
        push(&mut t, 128);
        // 6: func f
        push(&mut t, s("f", &strings));
        push(&mut t, 12 << 24);
        push(&mut t, 0);
        // 7: typedef btf_trace_t
        push(&mut t, s("btf_trace_t", &strings));
        push(&mut t, 8 << 24);
        push(&mut t, 2);
        strings.push(0);
        let mut b = vec![0x9f, 0xeb, 1, 0];
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(t.len() as u32).to_le_bytes());
        b.extend_from_slice(&(t.len() as u32).to_le_bytes());
        b.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).expect("parses");
        assert_eq!(btf.member_offset("outer", "x"), Some(0));
        assert_eq!(btf.member_offset("outer", "y"), Some(8));
        assert_eq!(btf.member_offset("outer", "b"), Some(12));
        assert_eq!(btf.member_offset("outer", "z"), Some(16));
        assert_eq!(btf.member_offset("outer", "nope"), None);
        assert_eq!(btf.struct_size("outer"), Some(24));
        assert!(btf.has_func("f"));
        assert!(btf.has_tracepoint("t"));
        assert!(!btf.has_func("g"));
        // The same answers from the one-pass index (one-byte names too).
        let mut indexed = Btf::parse(&blob()).expect("parses");
        indexed.index(&["f", "g", "inner"], &["t"]);
        assert!(indexed.has_func("f"));
        assert!(!indexed.has_func("g"));
        assert!(!indexed.has_func("inner"), "a struct is no function");
        assert!(indexed.has_tracepoint("t"));
        assert_eq!(indexed.func_ids().func_id("f"), Some(6));
        assert_eq!(btf.kind_flag_of("outer"), Some(false));
    }

    #[test]
    fn module_btf_ids_follow_the_base() {
        let base = Btf::parse(&blob()).expect("parses");
        let base_strings = base.strings.len() as u32;
        // Split BTF: an int, then func "f" (a base string), then func "mf"
        // (a string of its own).
        let strings = b"\0mf\0".to_vec();
        let mut t = Vec::new();
        let push = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
        push(&mut t, 0);
        push(&mut t, 1 << 24);
        push(&mut t, 4);
        push(&mut t, 32);
        let f_off = base.types[6].name_off;
        for name_off in [f_off, base_strings + 1] {
            push(&mut t, name_off);
            push(&mut t, 12 << 24);
            push(&mut t, 0);
        }
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        let m = base.parse_module(&b, &["f", "mf", "zz"]).expect("parses");
        // The base has ids 0..=7 (void and seven types).
        assert_eq!(m.func_id("f"), Some(9));
        assert_eq!(m.func_id("mf"), Some(10));
        assert_eq!(m.func_id("zz"), None);
        assert_eq!(
            base.split_type_name(&b, 10).ok().flatten().as_deref(),
            Some("mf")
        );
        assert_eq!(
            base.split_type_name(&b, 9).ok().flatten().as_deref(),
            Some("f")
        );
        assert_eq!(
            base.split_type_name(&b, 3).ok().flatten().as_deref(),
            Some("inner")
        );
        assert_eq!(base.split_type_name(&b, 11).ok().flatten(), None);
        assert!(base.parse_module(b"garbage", &["f"]).is_err());
    }

    #[test]
    #[ignore = "needs ext4 loaded as a module with BTF, which the CI host (ext4 built in) lacks; the VM tests check module BTF on every series"]
    fn the_running_kernels_modules_have_their_functions() {
        let base = Btf::from_file(VMLINUX_BTF).expect("kernel BTF");
        let m = base
            .module("ext4", &["ext4_break_layouts"])
            .expect("ext4 loaded as a module with BTF");
        let id = m.func_id("ext4_break_layouts").expect("ext4 has it");
        assert!(id as usize >= base.types.len(), "ids follow vmlinux's");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not even close").is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn reads_the_running_kernel_when_it_has_btf() {
        // Every kernel daxrace targets has BTF; this machine's does too. The
        // offsets are stable on x86_64 from 4.18 to 6.18 (docs/kernels.md,
        // on the layout of struct page).
        let btf = Btf::from_file(VMLINUX_BTF)
            .unwrap_or_else(|e| panic!("this kernel must expose BTF for daxrace: {e}"));
        assert_eq!(btf.member_offset("page", "_refcount"), Some(52));
        assert_eq!(btf.member_offset("page", "mapping"), Some(24));
        assert_eq!(btf.struct_size("page"), Some(64));
        assert_eq!(btf.member_is_pointer("page", "mapping"), Some(true));
        assert_eq!(btf.member_is_pointer("page", "_refcount"), Some(false));
        assert_eq!(btf.member_is_pointer("task_struct", "comm"), Some(false));
        assert_eq!(btf.member_is_pointer("page", "no_such_member"), None);
    }

    #[test]
    fn function_ids_are_the_kernels_own() {
        let mut btf = Btf::from_file(VMLINUX_BTF)
            .expect("this test needs the kernel's BTF, which every kernel daxrace supports has");
        let funcs = [
            "wake_up_var",
            "init_wait_var_entry",
            "no_such_function_here",
        ];
        btf.index(&funcs, &[]);
        assert!(btf.has_func("wake_up_var"));
        assert!(!btf.has_func("no_such_function_here"));
        let ours = btf.func_ids();
        let full = aya::Btf::from_sys_fs().expect("aya parses the kernel BTF");
        for f in &funcs[..2] {
            assert_eq!(
                ours.func_id(f),
                full.id_by_type_name_kind(f, aya_obj::btf::BtfKind::Func)
                    .ok(),
                "{f}"
            );
        }
        assert_eq!(ours.func_id(funcs[2]), None);
    }
}
