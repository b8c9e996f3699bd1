//! Kernel functions that something else already reroutes through ftrace with
//! IPMODIFY: live patches (kpatch, Ubuntu Livepatch, distribution live
//! patches) and anything else that changes where a function returns to.
//!
//! Why the plan must know: a BPF trampoline (fentry/fexit) on such a function
//! shares its ftrace site with the patch. On Debian's 6.1 a trampoline put on
//! a live-patched `ext4_break_layouts` made the kernel run the original
//! function instead of the patch while attached (the tracer changed what the
//! kernel does), and the guest oopsed in trampolines after detach. kprobes go
//! through ftrace without IPMODIFY and leave the patch in force, so the plan
//! uses them there (see [`crate::plan`]).
use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

/// Where the kernel lists live patches: `<patch>/<object>/<function>,<sympos>`.
pub const LIVEPATCH_DIR: &str = "/sys/kernel/livepatch";
/// ftrace's own list of functions with callbacks, and their flags (`I`:
/// IPMODIFY). Readable where tracefs is mounted (systemd mounts it).
const ENABLED_FUNCTIONS: &[&str] = &[
    "/sys/kernel/tracing/enabled_functions",
    "/sys/kernel/debug/tracing/enabled_functions",
];

/// Who modifies a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Modifier {
    /// `live patch <name>` or `ftrace IPMODIFY (<handler>)`.
    pub by: String,
    /// The object the function lives in (`vmlinux` or a module), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// Functions modified through ftrace with IPMODIFY, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PatchedFunctions {
    #[serde(flatten)]
    by_function: BTreeMap<String, Modifier>,
}

impl PatchedFunctions {
    /// What this kernel says now. Unreadable sources count as empty: an
    /// unprivileged `daxrace probes` still plans, and a kernel without
    /// livepatch support has nothing to report.
    pub fn read() -> PatchedFunctions {
        let mut out = PatchedFunctions::from_livepatch_dir(Path::new(LIVEPATCH_DIR));
        if let Some(text) = ENABLED_FUNCTIONS
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
        {
            out.merge(PatchedFunctions::parse_enabled_functions(&text));
        }
        out
    }

    /// The names of the live patches loaded now (cheap: one directory
    /// listing), to notice a new one while running.
    pub fn livepatch_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// `dir/<patch>/<object>/<function>,<sympos>`.
    pub fn from_livepatch_dir(dir: &Path) -> PatchedFunctions {
        let mut out = PatchedFunctions::default();
        let subdirs = |p: &Path| -> Vec<(String, std::path::PathBuf)> {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        };
        for (patch, patch_dir) in subdirs(dir) {
            for (object, object_dir) in subdirs(&patch_dir) {
                for (entry, _) in subdirs(&object_dir) {
                    // `name,sympos`; the name itself never holds a comma.
                    let function = entry.split(',').next().unwrap_or(&entry);
                    out.by_function.insert(
                        function.to_string(),
                        Modifier {
                            by: format!("live patch {patch}"),
                            object: Some(object.clone()),
                        },
                    );
                }
            }
        }
        out
    }

    /// Lines such as `ext4_break_layouts [ext4] (1) R I   ->klp_ftrace_handler+0x0/0x90`:
    /// the flags after the count, then `tramp:` or `->handler`.
    pub fn parse_enabled_functions(text: &str) -> PatchedFunctions {
        let mut out = PatchedFunctions::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(function) = words.next() else {
                continue;
            };
            let mut object = None;
            let mut ipmodify = false;
            let mut handler = None;
            let mut past_count = false;
            for w in words {
                if let Some(m) = w.strip_prefix('[').and_then(|m| m.strip_suffix(']')) {
                    object = Some(m.to_string());
                } else if w.starts_with('(') && w.ends_with(')') {
                    past_count = true;
                } else if let Some(h) = w.strip_prefix("->") {
                    handler = Some(h.split('+').next().unwrap_or(h).to_string());
                } else if past_count && handler.is_none() && w == "I" {
                    ipmodify = true;
                }
            }
            if ipmodify {
                out.by_function.insert(
                    function.to_string(),
                    Modifier {
                        by: match handler.as_deref() {
                            Some("klp_ftrace_handler") => "a live patch".into(),
                            Some(h) => format!("ftrace IPMODIFY ({h})"),
                            None => "ftrace IPMODIFY".into(),
                        },
                        object,
                    },
                );
            }
        }
        out
    }

    /// Adds what `other` knows; a live patch's own name wins over the
    /// anonymous ftrace view of it.
    pub fn merge(&mut self, other: PatchedFunctions) {
        for (f, m) in other.by_function {
            self.by_function.entry(f).or_insert(m);
        }
    }

    /// Who modifies `function` (a clone such as `foo.isra.0` is patched
    /// under its own name, so it is looked up as given).
    pub fn modifier(&self, function: &str) -> Option<&Modifier> {
        self.by_function.get(function)
    }

    pub fn is_empty(&self) -> bool {
        self.by_function.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Modifier)> {
        self.by_function.iter().map(|(f, m)| (f.as_str(), m))
    }

    /// For tests and callers that build a view by hand.
    pub fn with(function: &str, by: &str) -> PatchedFunctions {
        let mut out = PatchedFunctions::default();
        out.by_function.insert(
            function.to_string(),
            Modifier {
                by: by.to_string(),
                object: None,
            },
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_functions_flags_only_ipmodify() {
        // 6.1's format: count, then R/I/D flags, then the trampoline or handler.
        let text = "\
ext4_break_layouts [ext4] (1) R I   \t->klp_ftrace_handler+0x0/0x190
wake_up_var (1)     D \ttramp: 0xffffffffc0201000 (bpf_trampoline_6442461147+0x0/0xb0) ->call_direct_funcs+0x0/0x20
dax_layout_busy_page (1) R      \t->kprobe_ftrace_handler+0x0/0x1c0
xfs_break_layouts [xfs] (2) R I  D \ttramp: 0xffffffffc0202000 ->custom_handler+0x0/0x10
";
        let p = PatchedFunctions::parse_enabled_functions(text);
        let names: Vec<&str> = p.iter().map(|(f, _)| f).collect();
        assert_eq!(names, vec!["ext4_break_layouts", "xfs_break_layouts"]);
        let m = p.modifier("ext4_break_layouts").expect("patched");
        assert_eq!(m.by, "a live patch");
        assert_eq!(m.object.as_deref(), Some("ext4"));
        assert_eq!(
            p.modifier("xfs_break_layouts").expect("modified").by,
            "ftrace IPMODIFY (custom_handler)"
        );
        // A function named like a flag does not confuse the parser.
        let odd = PatchedFunctions::parse_enabled_functions("I (1) R   ->h+0x0/0x1\n");
        assert!(odd.is_empty());
    }

    #[test]
    fn livepatch_sysfs_names_patch_object_and_function() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("kpatch_fix/ext4/ext4_break_layouts,1");
        std::fs::create_dir_all(&f).expect("mkdir");
        std::fs::write(dir.path().join("kpatch_fix/enabled"), "1\n").expect("write");
        std::fs::create_dir_all(dir.path().join("kpatch_fix/vmlinux/wake_up_var,0"))
            .expect("mkdir");
        let p = PatchedFunctions::from_livepatch_dir(dir.path());
        let m = p.modifier("ext4_break_layouts").expect("patched");
        assert_eq!(m.by, "live patch kpatch_fix");
        assert_eq!(m.object.as_deref(), Some("ext4"));
        assert!(p.modifier("wake_up_var").is_some());
        assert_eq!(
            PatchedFunctions::livepatch_names(dir.path()),
            vec!["kpatch_fix"]
        );
        // The live patch's name wins over ftrace's anonymous view.
        let mut merged = p.clone();
        merged.merge(PatchedFunctions::with("ext4_break_layouts", "a live patch"));
        assert_eq!(
            merged.modifier("ext4_break_layouts").expect("patched").by,
            "live patch kpatch_fix"
        );
        assert!(PatchedFunctions::from_livepatch_dir(&dir.path().join("none")).is_empty());
    }
}
