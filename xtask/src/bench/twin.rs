//! The bpftrace twin: for every target of daxrace's probe-plan table, probe
//! files that do what daxrace's programs there do (per-task break/scan
//! state, a per-page `@watched` map filled by busy scans, map lookups on the
//! page hooks, and a printed line only for watched pages or pinned and
//! mismatched truncations). The guest assembles the script from the files
//! of the probes daxrace attached (`bt_plan`, `bt_build` in script/functions.sh).
//!
//! The bodies (`bt/*.bt`) name the hooked function's arguments as `{name}`
//! (the names the table gives them, which are BTF's) or `{A<i>}` by
//! position, its return value as `{RET}`, the kernel facts as `{REFOFF}`
//! and `{IDLE}`; `@SYM@` is the symbol, filled in the guest.
use daxrace_plan::{HookId, Target, HOOKS};

const BREAK_ENTRY: &str = include_str!("bt/break_entry.bt");
const BREAK_EXIT: &str = include_str!("bt/break_exit.bt");
const SCAN_ENTRY: &str = include_str!("bt/scan_entry.bt");
const SCAN_EXIT: &str = include_str!("bt/scan_exit.bt");
const WAIT_OR_WAKE: &str = include_str!("bt/wait_or_wake.bt");
const PIN_DROP: &str = include_str!("bt/pin_drop.bt");
/// The pages of a released bio, like daxrace's walk. daxrace walks up to 64
/// bvecs x 512 pages with bpf_loop, which bpftrace 0.17 cannot emit; an
/// open-coded walk that size (or even 64 pages in one loop) exceeds the
/// verifier's 1M-instruction limit (measured on 7.3), so this walks 16 bvecs
/// x 16 pages: all of the workload's reads (64 KiB at most).
const BIO_WALK: &str = include_str!("bt/bio_walk.bt");
/// What comes before the walk: the bio at fexit, or stashed per task by a
/// kprobe for the kretprobe, which so also serves as fexit's fallback.
const RELEASE_KRETFUNC: &str = include_str!("bt/release_kretfunc.bt");
const RELEASE_KRETPROBE: &str = include_str!("bt/release_kretprobe.bt");
const DISASSOCIATE: &str = include_str!("bt/disassociate.bt");
/// The range deletion of 6.15+ (daxrace's fe_delete_range), and the page
/// cache's range truncation quiet mode hooks instead of every entry
/// (fe_truncate_range): the watched page of the file, if it lies in the
/// range. Both take (mapping, first byte, last byte), so by position.
const DELETE_RANGE: &str = include_str!("bt/delete_range.bt");
const DELETE_ENTRY: &str = include_str!("bt/delete_entry.bt");
const FS_OP: &str = include_str!("bt/fs_op.bt");

/// The script's head: the ready line (built with %s so that bpftrace's
/// echo of the source in an error message cannot look like it).
pub const BT_HEAD: &str = include_str!("bt/head.bt");

/// One probe file for the guest: `/tmp/bt/<bpftrace kind>-<key>.bt`.
pub struct Fragment {
    pub kind: &'static str,
    pub key: String,
    pub text: String,
}

/// What the twin runs on one target of the table.
enum Twin {
    /// The same body under kprobe and kfunc at entry (and, where the table
    /// hooks the return, under kretprobe and kretfunc at exit); arguments
    /// the function does not have take their default.
    Function {
        entry: &'static str,
        exit: Option<&'static str>,
        defaults: &'static [(&'static str, &'static str)],
    },
    /// The bio release hook runs after the pages were released: daxrace
    /// uses fexit, or kprobe + kretprobe with the bio stashed per task; the
    /// twin walks the bio's pages at exit.
    ReleaseWalk,
    /// A tracepoint of this category.
    Tracepoint {
        category: &'static str,
        body: &'static str,
    },
}

/// The twin of daxrace's programs on one target of `hook`.
fn twin(hook: HookId, target: &Target) -> Twin {
    let function = |entry, exit, defaults| Twin::Function {
        entry,
        exit,
        defaults,
    };
    match hook {
        HookId::Ext4PunchHole
        | HookId::Ext4ZeroRange
        | HookId::Ext4CollapseRange
        | HookId::Ext4InsertRange
        | HookId::Ext4Truncate => Twin::Tracepoint {
            category: "ext4",
            body: FS_OP,
        },
        HookId::Ext4Break | HookId::XfsBreak | HookId::GenericBreak => {
            function(BREAK_ENTRY, Some(BREAK_EXIT), &[])
        }
        HookId::BusyScan => function(SCAN_ENTRY, Some(SCAN_EXIT), &[]),
        HookId::WaitStart | HookId::WakeUp => function(WAIT_OR_WAKE, None, &[]),
        // The devmap puts without a count drop one reference.
        HookId::PinDropped => function(PIN_DROP, None, &[("refs", "1")]),
        HookId::BioRelease => Twin::ReleaseWalk,
        // The disassociation takes the entry; its `.isra` clone of 6.15+
        // keeps only that (as daxrace's kp_disassociate_clone assumes).
        HookId::Disassociate if target.args.contains(&"entry") => {
            function(DISASSOCIATE, None, &[("mapping", "0"), ("trunc", "0")])
        }
        HookId::Disassociate => function(DELETE_RANGE, None, &[]),
        HookId::DeleteEntry => function(DELETE_ENTRY, None, &[]),
    }
}

/// The keys a target's probe files go under: its symbol, and `symbol.clone`
/// where the table uses the function's compiler clones (the guest's
/// `bt_plan` turns `name.isra.0` into that key).
fn keys(t: &Target) -> Vec<String> {
    let mut keys = Vec::new();
    if !t.flavours.is_empty() {
        keys.push(t.symbol.to_string());
    }
    if !t.clone_flavours.is_empty() {
        keys.push(format!("{}.clone", t.symbol));
    }
    keys
}

/// How a bpftrace probe kind names a function's arguments.
fn rendered_args(kind: &str, t: &Target) -> Vec<String> {
    match kind {
        "kfunc" | "kretfunc" => t.args.iter().map(|a| format!("args->{a}")).collect(),
        _ => (0..t.args.len()).map(|i| format!("arg{i}")).collect(),
    }
}

/// `body` with the target's arguments (`args`, as the probe kind names
/// them), their defaults and the return value put in.
fn fill(body: &str, t: &Target, args: &[String], defaults: &[(&str, &str)], ret: &str) -> String {
    let mut b = body
        .trim_end()
        .replace("{RET}", ret)
        // Kernel facts, filled in the guest from daxrace's own
        // (`daxrace probes --json`): no version check here.
        .replace("{REFOFF}", "@REFOFF@")
        .replace("{IDLE}", "@IDLE@");
    for (i, (name, a)) in t.args.iter().zip(args).enumerate() {
        b = b
            .replace(&format!("{{A{i}}}"), a)
            .replace(&format!("{{{name}}}"), a);
    }
    for (name, value) in defaults {
        b = b.replace(&format!("{{{name}}}"), value);
    }
    b
}

/// Every probe the script may need, in each flavour. The guest picks the
/// ones daxrace attached.
pub fn fragments() -> Vec<Fragment> {
    let mut out = Vec::new();
    for hook in HOOKS {
        for t in hook.targets {
            for key in keys(t) {
                fragments_of(twin(hook.id, t), t, key, &mut out);
            }
        }
    }
    out
}

fn fragments_of(twin: Twin, t: &Target, key: String, out: &mut Vec<Fragment>) {
    let mut push = |kind: &'static str, text: String| {
        out.push(Fragment {
            kind,
            key: key.clone(),
            text,
        })
    };
    match twin {
        Twin::Tracepoint { category, body } => {
            push(
                "tracepoint",
                format!("tracepoint:{category}:@SYM@ {}\n", body.trim_end()),
            );
        }
        Twin::Function {
            entry,
            exit,
            defaults,
        } => {
            // Both entry kinds whatever daxrace used: the guest turns fentry
            // into kprobes where bpftrace cannot use kfunc.
            for kind in ["kprobe", "kfunc"] {
                let args = rendered_args(kind, t);
                push(
                    kind,
                    format!("{kind}:@SYM@ {}\n", fill(entry, t, &args, defaults, "")),
                );
            }
            if let Some(exit) = exit.filter(|_| t.has_exit()) {
                for kind in ["kretprobe", "kretfunc"] {
                    push(
                        kind,
                        format!("{kind}:@SYM@ {}\n", fill(exit, t, &[], defaults, "retval")),
                    );
                }
            }
        }
        Twin::ReleaseWalk => {
            for (kind, head) in [
                ("kretfunc", RELEASE_KRETFUNC),
                ("kretprobe", RELEASE_KRETPROBE),
            ] {
                let head = fill(head, t, &rendered_args(kind, t), &[], "");
                push(kind, format!("{head}\n{BIO_WALK}"));
            }
            // The exits do it all; the entry files only keep the guest from
            // reporting a probe missing.
            for kind in ["kprobe", "kfunc"] {
                push(kind, String::new());
            }
        }
    }
}

/// The same probes with empty bodies: what attaching a program there costs
/// before it does anything (trampoline or kprobe entry, the statistics' own
/// clock reads), the floor under both tracers' per-hook figures.
pub fn empty_twin(text: &str) -> String {
    const KINDS: [&str; 5] = [
        "kprobe:",
        "kretprobe:",
        "kfunc:",
        "kretfunc:",
        "tracepoint:",
    ];
    text.lines()
        .filter(|l| KINDS.iter().any(|k| l.starts_with(k)))
        .filter_map(|l| l.split_whitespace().next())
        .map(|spec| format!("{spec} {{ }}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::bench::costs::{classify_program, hook_of};

    #[test]
    fn every_fragment_is_filled() {
        for f in fragments() {
            assert!(!f.text.contains("{A"), "{} {}: {}", f.kind, f.key, f.text);
            assert!(!f.text.contains("{RET}") && !f.text.contains("{REFS}"));
            if f.kind.starts_with("kret") {
                assert!(!f.text.contains("args->") || f.kind == "kretfunc");
            }
        }
    }

    #[test]
    fn empty_twins_keep_every_probe_and_drop_every_body() {
        let frags = fragments();
        let bio = frags
            .iter()
            .find(|f| f.kind == "kretprobe" && f.key == "__bio_release_pages")
            .expect("bio fragment");
        assert_eq!(
            empty_twin(&bio.text),
            "kprobe:@SYM@ { }\nkretprobe:@SYM@ { }\n"
        );
        for f in &frags {
            let twin = empty_twin(&f.text);
            let probes = f
                .text
                .lines()
                .filter(|l| l.starts_with(f.kind) || l.starts_with("kprobe:"))
                .count();
            assert_eq!(twin.lines().count(), probes, "{} {}", f.kind, f.key);
            assert!(twin.lines().all(|l| l.ends_with(" { }")), "{twin}");
        }
    }

    #[test]
    fn every_exit_the_table_hooks_has_a_twin() {
        for hook in HOOKS {
            for t in hook.targets {
                match twin(hook.id, t) {
                    Twin::Function { exit, .. } => {
                        assert_eq!(exit.is_some(), t.has_exit(), "{}", t.symbol)
                    }
                    Twin::ReleaseWalk => assert!(t.has_exit(), "{}", t.symbol),
                    Twin::Tracepoint { .. } => assert!(t.is_tracepoint(), "{}", t.symbol),
                }
            }
        }
    }

    /// The twin as it was written by hand before it came from the table:
    /// each probe file's key, the parameter names it was given, and
    /// whether it had exit probes.
    const BEFORE: &[(&str, &[&str], bool)] = &[
        ("ext4_break_layouts", &["inode"], true),
        ("xfs_break_layouts", &["inode"], true),
        ("xfs_break_dax_layouts", &["inode"], true),
        ("dax_break_layout", &["inode"], true),
        ("dax_layout_busy_page_range", &["mapping"], true),
        ("dax_layout_busy_page", &["mapping"], true),
        ("init_wait_var_entry", &["wbq_entry", "var"], false),
        ("wake_up_var", &["var"], false),
        ("__put_devmap_managed_page_refs", &["page", "refs"], false),
        ("__put_devmap_managed_folio_refs", &["folio", "refs"], false),
        ("put_devmap_managed_page", &["page"], false),
        ("__put_devmap_managed_page", &["page"], false),
        ("free_zone_device_folio", &["folio"], false),
        (
            "dax_disassociate_entry",
            &["entry", "mapping", "trunc"],
            false,
        ),
        ("dax_disassociate_entry.clone", &["entry"], false),
        (
            "dax_delete_mapping_range",
            &["mapping", "start", "end"],
            false,
        ),
        ("dax_delete_mapping_entry", &["mapping", "index"], false),
        ("__bio_release_pages", &["bio"], true),
    ];
    const TRACEPOINTS_BEFORE: &[&str] = &[
        "ext4_punch_hole",
        "ext4_zero_range",
        "ext4_collapse_range",
        "ext4_insert_range",
        "ext4_truncate_enter",
    ];

    /// The hand-written symbol-to-hook mapping the table replaced.
    fn hook_before(symbol: &str) -> &'static str {
        match symbol.split('.').next().unwrap_or(symbol) {
            "ext4_break_layouts" => "ext4 break-layouts",
            "xfs_break_layouts" | "xfs_break_dax_layouts" => "xfs break-layouts",
            "dax_break_layout" => "dax_break_layout",
            "dax_layout_busy_page" | "dax_layout_busy_page_range" => "busy scan",
            "init_wait_var_entry" => "wait start",
            "wake_up_var" => "wake_up_var",
            "__put_devmap_managed_page_refs"
            | "__put_devmap_managed_folio_refs"
            | "put_devmap_managed_page"
            | "__put_devmap_managed_page"
            | "free_zone_device_folio" => "pin drop",
            "__bio_release_pages" => "bio release",
            "dax_disassociate_entry" | "dax_delete_mapping_range" => "disassociate",
            "dax_delete_mapping_entry" => "delete entry",
            s if s.starts_with("ext4_") => "ext4 tracepoints",
            _ => "other",
        }
    }

    /// The hand-written program-name classification the table replaced.
    fn program_before(name: &str) -> Option<(&'static str, &'static str)> {
        let (kind, rest) = name.split_once('_')?;
        let kind = match kind {
            "fe" => "fentry",
            "fx" => "fexit",
            "kp" => "kprobe",
            "kr" => "kretprobe",
            "raw" => "raw_tracepoint",
            "tp" => "tp_btf",
            _ => return None,
        };
        [
            ("ext4_break", "ext4 break-layouts"),
            ("xfs_break", "xfs break-layouts"),
            ("generic_brea", "dax_break_layout"),
            ("busy_scan", "busy scan"),
            ("wait_start", "wait start"),
            ("pin_dropped", "pin drop"),
            ("page_freed", "pin drop"),
            ("bio_release", "bio release"),
            ("wake_up", "wake_up_var"),
            ("disassociat", "disassociate"),
            ("delete_range", "disassociate"),
            // Quiet mode's range truncation, added with it.
            ("truncate_ran", "disassociate"),
            ("delete_entry", "delete entry"),
            ("ext4_", "ext4 tracepoints"),
        ]
        .iter()
        .find(|(k, _)| rest.starts_with(k))
        .map(|(_, h)| (*h, kind))
    }

    /// The DAX functions of each tested kernel generation, as the probe
    /// plan's own tests list them (docs/kernels.md, its table of which DAX
    /// functions each Debian kernel has).
    const DEBIAN_6_1: &[&str] = &[
        "ext4_break_layouts",
        "xfs_break_layouts",
        "xfs_break_dax_layouts",
        "dax_layout_busy_page",
        "dax_layout_busy_page_range",
        "__put_devmap_managed_page_refs",
        "dax_disassociate_entry",
        "dax_delete_mapping_entry",
        "__bio_release_pages",
        "wake_up_var",
        "init_wait_var_entry",
    ];
    const DEBIAN_6_12: &[&str] = &[
        "ext4_break_layouts",
        "xfs_break_layouts",
        "dax_layout_busy_page",
        "dax_layout_busy_page_range",
        "__put_devmap_managed_folio_refs",
        "dax_delete_mapping_entry",
        "__bio_release_pages",
        "wake_up_var",
        "init_wait_var_entry",
    ];
    const DEBIAN_7_3: &[&str] = &[
        "ext4_break_layouts",
        "xfs_break_layouts",
        "dax_layout_busy_page",
        "dax_layout_busy_page_range",
        "dax_break_layout",
        "free_zone_device_folio",
        "dax_disassociate_entry.isra.0",
        "dax_delete_mapping_entry",
        "dax_delete_mapping_range",
        "__bio_release_pages",
        "wake_up_var",
        "init_wait_var_entry",
    ];

    /// The probe files key the guest looks up for an attached symbol
    /// (`bt_plan` in script/functions.sh).
    fn guest_key(symbol: &str) -> String {
        match symbol.split_once('.') {
            Some((base, _)) => format!("{base}.clone"),
            None => symbol.to_string(),
        }
    }

    #[test]
    fn the_twin_from_the_table_covers_the_probes_the_hand_written_one_did() {
        let frags = fragments();
        for (kernel, functions) in [
            ("6.1", DEBIAN_6_1),
            ("6.12", DEBIAN_6_12),
            ("7.3", DEBIAN_7_3),
        ] {
            let symbols = functions.iter().chain(TRACEPOINTS_BEFORE);
            let keys: BTreeSet<String> = symbols.clone().map(|s| guest_key(s)).collect();
            let mut before = BTreeSet::new();
            for &(key, _, exit) in BEFORE.iter().filter(|b| keys.contains(b.0)) {
                let kinds: &[&str] = if exit {
                    &["kprobe", "kfunc", "kretprobe", "kretfunc"]
                } else {
                    &["kprobe", "kfunc"]
                };
                before.extend(kinds.iter().map(|k| (k.to_string(), key.to_string())));
            }
            for &tp in TRACEPOINTS_BEFORE {
                before.insert(("tracepoint".to_string(), tp.to_string()));
            }
            let now: BTreeSet<(String, String)> = frags
                .iter()
                .filter(|f| keys.contains(&f.key))
                .map(|f| (f.kind.to_string(), f.key.clone()))
                .collect();
            assert_eq!(now, before, "{kernel}");
            for s in symbols {
                assert_eq!(hook_of(s), hook_before(s), "{kernel}: {s}");
            }
        }
        // Each probe reads the arguments the hand-written twin named.
        for f in &frags {
            let Some((_, params, _)) = BEFORE.iter().find(|b| b.0 == f.key) else {
                // Quiet mode's range truncation came after the hand-written twin.
                if f.key == "truncate_inode_pages_range" {
                    continue;
                }
                assert_eq!(f.kind, "tracepoint", "{} {}", f.kind, f.key);
                continue;
            };
            for (i, p) in params.iter().enumerate() {
                let (by_name, by_position) = (format!("args->{p}"), format!("arg{i}"));
                if f.text.contains(&by_name) {
                    assert!(f.kind.ends_with("func"), "{} {}", f.kind, f.key);
                }
                if f.text.contains(&by_position) {
                    assert!(f.kind.starts_with('k'), "{} {}", f.kind, f.key);
                }
            }
            let names = f.text.matches("args->").count();
            let known = params
                .iter()
                .map(|p| f.text.matches(&format!("args->{p}")).count())
                .sum::<usize>();
            assert_eq!(names, known, "{} {}: {}", f.kind, f.key, f.text);
        }
        // Every program of the table is classified as before, and only those.
        for p in HOOKS
            .iter()
            .flat_map(|h| h.targets)
            .flat_map(|t| t.programs())
        {
            let name = p.kernel_name();
            assert_eq!(classify_program(name), program_before(name), "{name}");
        }
        assert_eq!(classify_program("BEGIN"), None);
    }
}
