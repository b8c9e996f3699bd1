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
}

impl KernelSymbol {
    pub fn is_text(&self) -> bool {
        matches!(self.kind, 'T' | 't')
    }

    pub fn is_local(&self) -> bool {
        self.kind.is_ascii_lowercase()
    }
}

#[derive(Default)]
pub struct Kallsyms {
    by_name: HashMap<String, KernelSymbol>,
    /// Base name -> clone names (`foo` -> [`foo.isra.0`]).
    clones: HashMap<String, Vec<String>>,
}

impl Kallsyms {
    /// Reads only the symbols `wanted` names (and their clones): the kernel
    /// has over 100,000, and start-up time matters.
    pub fn read(wanted: &[&str]) -> std::io::Result<Self> {
        let set: std::collections::HashSet<&str> = wanted.iter().copied().collect();
        Ok(Self::parse_filtered(
            &std::fs::read_to_string(KALLSYMS)?,
            |base| set.contains(base),
        ))
    }

    pub fn parse(text: &str) -> Self {
        Self::parse_filtered(text, |_| true)
    }

    /// Keeps the symbols whose name, without any clone suffix, passes `keep`.
    pub fn parse_filtered(text: &str, keep: impl Fn(&str) -> bool) -> Self {
        let mut k = Kallsyms::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !keep(name.split('.').next().unwrap_or(name)) {
                continue;
            }
            let module = it
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            let sym = KernelSymbol {
                name: name.to_string(),
                addr: u64::from_str_radix(addr, 16).unwrap_or(0),
                kind: kind.chars().next().unwrap_or('?'),
                module,
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
            k.by_name.entry(name.to_string()).or_insert(sym);
        }
        k
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
    }
}
