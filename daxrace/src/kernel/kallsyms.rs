//! `/proc/kallsyms`: which kernel functions exist right now, under which
//! name (the compiler may clone a static function as `name.isra.0`), and in
//! which module.
use std::collections::HashMap;

pub const KALLSYMS: &str = "/proc/kallsyms";

/// A kernel symbol as kallsyms lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSymbol {
    /// The name to attach to (may be a clone such as `dax_disassociate_entry.isra.0`).
    pub name: String,
    pub addr: u64,
    /// `T`/`t` for text; lower case means local (static).
    pub kind: char,
    /// `Some("xfs")` for module symbols.
    pub module: Option<String>,
    /// Bytes up to the next symbol, when known (kallsyms lists by address).
    pub size: Option<u64>,
}

impl KernelSymbol {
    pub fn is_text(&self) -> bool {
        matches!(self.kind, 'T' | 't')
    }

    pub fn is_local(&self) -> bool {
        self.kind.is_ascii_lowercase()
    }
}

/// Positions of the `\n` bytes of `text`, eight bytes per step.
struct LineEnds<'a> {
    text: &'a [u8],
    at: usize,
}

impl Iterator for LineEnds<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        const NEWLINES: u64 = ONES * b'\n' as u64;
        let t = self.text;
        let mut i = self.at;
        while i + 8 <= t.len() {
            let word = u64::from_le_bytes(t[i..i + 8].try_into().expect("8 bytes"));
            let x = word ^ NEWLINES;
            // A byte of x is zero where word has a newline (the lowest such
            // byte is marked exactly; that is the one used).
            let found = x.wrapping_sub(ONES) & !x & HIGHS;
            if found != 0 {
                let pos = i + (found.trailing_zeros() / 8) as usize;
                self.at = pos + 1;
                return Some(pos);
            }
            i += 8;
        }
        while i < t.len() {
            if t[i] == b'\n' {
                self.at = i + 1;
                return Some(i);
            }
            i += 1;
        }
        self.at = t.len();
        None
    }
}

/// The first two bytes of a set of names: a symbol table scan rejects
/// nearly every entry on them before it measures or hashes the name (the
/// scans of kallsyms and of BTF run under emulation at start-up).
pub struct NamePrefixes(Vec<bool>);

impl NamePrefixes {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut table = vec![false; 1 << 16];
        for n in names {
            table[Self::key(n.as_bytes())] = true;
        }
        NamePrefixes(table)
    }

    /// A one-byte name keys on its terminating NUL, so `at` may be a name
    /// or a NUL-terminated string starting with one.
    fn key(at: &[u8]) -> usize {
        match at {
            [a, 0, ..] | [a] => (*a as usize) << 8,
            [a, b, ..] => (*a as usize) << 8 | *b as usize,
            [] => 0,
        }
    }

    /// Whether the name at the start of `at` may be one of the names.
    pub fn may_match(&self, at: &[u8]) -> bool {
        !at.is_empty() && self.0[Self::key(at)]
    }
}

#[derive(Default)]
pub struct Kallsyms {
    by_name: HashMap<String, KernelSymbol>,
    /// Base name -> clone names (`foo` -> [`foo.isra.0`]).
    clones: HashMap<String, Vec<String>>,
    /// `(wrapper, callee)` pairs whose wrapper's code was seen to jump to
    /// the callee (symbols looked up one by one carry no size).
    jumps: std::collections::HashSet<(String, String)>,
}

impl Kallsyms {
    /// Reads only the symbols `wanted` names (and their clones): the kernel
    /// has over 100,000, and start-up time matters.
    pub fn read(wanted: &[&str]) -> std::io::Result<Self> {
        let set: std::collections::HashSet<&[u8]> = wanted.iter().map(|w| w.as_bytes()).collect();
        let prefixes = NamePrefixes::new(wanted.iter().copied());
        // One read: the kernel formats ~200,000 lines either way; a large
        // buffer saves the system calls.
        let mut text = Vec::with_capacity(16 << 20);
        std::io::Read::read_to_end(&mut std::fs::File::open(KALLSYMS)?, &mut text)?;
        Ok(Self::parse_bytes(&text, |name| {
            prefixes.may_match(name)
                && set.contains(name.split(|&b| b == b'.').next().unwrap_or(name))
        }))
    }

    pub fn parse(text: &str) -> Self {
        Self::parse_bytes(text.as_bytes(), |_| true)
    }

    /// Keeps the symbols whose full name passes `keep`. Works on bytes and
    /// builds nothing for the lines it skips: under emulation, parsing was
    /// as slow as the kernel's formatting.
    pub fn parse_bytes(text: &[u8], keep: impl Fn(&[u8]) -> bool) -> Self {
        let mut k = Kallsyms::default();
        // The last kept symbol, whose size the next line's address gives.
        let mut pending: Option<String> = None;
        let mut start = 0;
        // Newlines found a word at a time: the SIMD searches of `memchr`
        // pick AVX2, several times slower under QEMU's emulation (440 ms
        // became 750 ms for /proc/kallsyms), and a byte loop cost 160 ms.
        let ends = LineEnds { text, at: 0 }.chain(std::iter::once(text.len()));
        for end in ends {
            let line = &text[start..end];
            start = end + 1;
            // The fixed layout of a 64-bit kernel ("%016lx %c name"), where
            // the name can be tested before the line is split.
            if line.len() > 19 && line[16] == b' ' && line[18] == b' ' && pending.is_none() {
                let name_end = line[19..]
                    .iter()
                    .position(|&b| b == b'\t' || b == b' ')
                    .unwrap_or(line.len() - 19);
                if !keep(&line[19..19 + name_end]) {
                    continue;
                }
            }
            // "ADDR T NAME[\t[MODULE]]"
            let Some(sp1) = line.iter().position(|&b| b == b' ') else {
                continue;
            };
            let rest = &line[sp1 + 1..];
            if rest.len() < 3 || rest[1] != b' ' {
                continue;
            }
            let kind = rest[0] as char;
            let tail = &rest[2..];
            let name_end = tail
                .iter()
                .position(|&b| b == b'\t' || b == b' ')
                .unwrap_or(tail.len());
            let name = &tail[..name_end];
            let addr_of = || {
                std::str::from_utf8(&line[..sp1])
                    .ok()
                    .and_then(|a| u64::from_str_radix(a, 16).ok())
                    .unwrap_or(0)
            };
            if let Some(prev) = pending.take() {
                let addr = addr_of();
                if let Some(sym) = k.by_name.get_mut(&prev) {
                    if addr > sym.addr {
                        sym.size = Some(addr - sym.addr);
                    }
                }
            }
            if !keep(name) {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            let module = std::str::from_utf8(&tail[name_end..])
                .ok()
                .map(|m| m.trim().trim_start_matches('[').trim_end_matches(']'))
                .filter(|m| !m.is_empty())
                .map(str::to_string);
            let sym = KernelSymbol {
                name: name.to_string(),
                addr: addr_of(),
                kind,
                module,
                size: None,
            };
            if let Some((base, suffix)) = name.split_once('.') {
                // Compiler clones: .isra.N, .constprop.N, .part.N, .cold (not callable).
                // `foo.isra.0.cold` is the cold tail of a clone, not callable.
                if !suffix.split('.').any(|part| part == "cold") {
                    k.clones
                        .entry(base.to_string())
                        .or_default()
                        .push(name.to_string());
                }
            }
            // First definition wins: duplicates of local names are rare and
            // any of them is as good as another for attaching.
            if !k.by_name.contains_key(name) {
                k.by_name.insert(name.to_string(), sym);
                pending = Some(name.to_string());
            }
        }
        k
    }

    /// Adds a symbol learned otherwise than by listing (a lookup); `name`
    /// may be a clone of `base`.
    pub fn insert(&mut self, base: &str, sym: KernelSymbol) {
        if sym.name != base {
            self.clones
                .entry(base.to_string())
                .or_default()
                .push(sym.name.clone());
        }
        self.by_name.entry(sym.name.clone()).or_insert(sym);
    }

    /// Records that `wrapper`'s code jumps straight to `callee`.
    pub fn insert_jump(&mut self, wrapper: &str, callee: &str) {
        self.jumps.insert((wrapper.to_string(), callee.to_string()));
    }

    /// Whether `wrapper`'s code was seen to jump straight to `callee`.
    pub fn jumps_to(&self, wrapper: &str, callee: &str) -> bool {
        self.jumps
            .contains(&(wrapper.to_string(), callee.to_string()))
    }

    pub fn get(&self, name: &str) -> Option<&KernelSymbol> {
        self.by_name.get(name)
    }

    /// The function to attach to for `name`: itself, or else its first clone.
    pub fn resolve_function(&self, name: &str) -> Option<&KernelSymbol> {
        if let Some(s) = self.by_name.get(name).filter(|s| s.is_text()) {
            return Some(s);
        }
        self.clones
            .get(name)?
            .iter()
            .filter_map(|c| self.by_name.get(c))
            .find(|s| s.is_text())
    }

    /// Whether addresses are real (root, kptr_restrict permitting) or zeroed.
    pub fn has_addresses(&self) -> bool {
        self.by_name.values().any(|s| s.addr != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81300000 t dax_disassociate_entry.isra.0
ffffffff81300100 t dax_disassociate_entry.cold
ffffffff81300180 t dax_disassociate_entry.isra.0.cold
ffffffff81300200 T dax_layout_busy_page
ffffffffa0000000 t xfs_break_dax_layouts\t[xfs]
ffffffff82000000 D vmemmap_base
";

    #[test]
    fn resolves_plain_clone_and_module_symbols() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(
            k.resolve_function("dax_layout_busy_page")
                .map(|s| s.name.as_str()),
            Some("dax_layout_busy_page")
        );
        let clone = k
            .resolve_function("dax_disassociate_entry")
            .expect("clone found");
        assert_eq!(clone.name, "dax_disassociate_entry.isra.0");
        assert!(clone.is_local());
        let xfs = k
            .resolve_function("xfs_break_dax_layouts")
            .expect("module symbol");
        assert_eq!(xfs.module.as_deref(), Some("xfs"));
        assert!(
            k.resolve_function("vmemmap_base").is_none(),
            "data is not a function"
        );
        assert_eq!(
            k.get("vmemmap_base").map(|s| s.addr),
            Some(0xffffffff82000000)
        );
        assert!(k.resolve_function("missing").is_none());
        assert!(k.has_addresses());
        assert_eq!(
            k.get("dax_layout_busy_page").and_then(|s| s.size),
            Some(0xffffffffa0000000 - 0xffffffff81300200)
        );
        assert_eq!(k.get("_stext").and_then(|s| s.size), Some(0x300000));
    }

    #[test]
    fn the_filtered_read_keeps_what_the_full_parse_finds() {
        let text = std::fs::read_to_string(KALLSYMS).expect("daxrace runs on Linux");
        let full = Kallsyms::parse(&text);
        let wanted: Vec<&str> = crate::plan::symbols().chain(["vmemmap_base"]).collect();
        let filtered = Kallsyms::read(&wanted).expect("kallsyms readable");
        for name in &wanted {
            assert_eq!(
                filtered.resolve_function(name),
                full.resolve_function(name),
                "{name}"
            );
            assert_eq!(filtered.get(name), full.get(name), "{name}");
        }
        assert!(filtered.by_name.len() < full.by_name.len() / 100);
    }

    #[test]
    fn name_prefixes_pass_their_names_and_reject_others() {
        let p = NamePrefixes::new(["wake_up_var", "f"]);
        assert!(p.may_match(b"wake_up_var"));
        assert!(p.may_match(b"wa\0"), "a prefix only says maybe");
        assert!(p.may_match(b"f"));
        assert!(
            p.may_match(b"f\0other"),
            "a one-byte name in a string table"
        );
        assert!(!p.may_match(b"fo"));
        assert!(!p.may_match(b"dax_layout_busy_page"));
        assert!(!p.may_match(b""));
    }

    #[test]
    fn line_ends_finds_every_newline() {
        let text = b"a\nbb\n\nccccccccccccccccc\ndddddddd\n\n\nx";
        let want: Vec<usize> = text
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i)
            .collect();
        for start in 0..text.len() {
            let got: Vec<usize> = LineEnds {
                text: &text[start..],
                at: 0,
            }
            .map(|i| i + start)
            .collect();
            let expect: Vec<usize> = want.iter().copied().filter(|&i| i >= start).collect();
            assert_eq!(got, expect, "from {start}");
        }
    }
}
