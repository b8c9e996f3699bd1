//! The resolver: the table turned into what to try on the running kernel,
//! from its symbols (looked up one by one, or listed from `/proc/kallsyms`)
//! and BTF. The loader then proves each candidate by attaching it, falling
//! back to the next alternative when it fails.
use std::collections::HashMap;

use daxrace_common::HookId;
use daxrace_plan::{
    AttachKind::*, Evidence, Flavour, HookSpec, QuietRole, HOOKS, WRAPPER_MAX_BYTES,
};

use crate::{
    kernel::btf::{Btf, FuncIds},
    kernel::kallsyms::Kallsyms,
    kernel::patched::PatchedFunctions,
};

/// `--attach`: which flavour to use for kernel functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachPreference {
    /// fentry/fexit where they attach (cheaper), else kprobes.
    #[default]
    Auto,
    /// kprobes/kretprobes only: the baseline every kernel has.
    Kprobe,
    /// fentry/fexit only.
    Fentry,
}

/// What the plan proposes for one hook on this kernel, before attaching.
#[derive(Clone, Debug)]
pub struct PlannedAttach {
    pub hook: HookId,
    /// Symbols that exist here, each with the flavours allowed by the
    /// preference and the kernel, in order.
    pub candidates: Vec<Candidate>,
    /// Why there is nothing to try, when `candidates` is empty.
    pub missing: Option<String>,
    /// Flavours not tried because they would harm the kernel, and why.
    pub avoided: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Candidate {
    /// Table name of the target.
    pub symbol: &'static str,
    /// Name to attach to (a clone such as `foo.isra.0`, or the tracepoint).
    pub attach_to: String,
    pub module: Option<String>,
    pub flavours: Vec<Flavour>,
}

/// What the running kernel offers, as far as the plan is concerned.
pub struct KernelView<'a> {
    pub kallsyms: &'a Kallsyms,
    /// `None` when the kernel has no BTF: only kprobes and raw tracepoints remain.
    pub btf: Option<&'a Btf>,
    /// The BTF of the modules the plan's functions live in, by module name
    /// (absent: no fentry/fexit there).
    pub modules: &'a HashMap<String, FuncIds>,
    /// Functions a live patch (or another IPMODIFY ftrace user) reroutes:
    /// no BPF trampoline goes there ([`crate::kernel::patched`]).
    pub patched: &'a PatchedFunctions,
}

fn flavour_allowed(f: &Flavour, pref: AttachPreference) -> bool {
    f.programs.iter().all(|p| match p.kind {
        Fentry | Fexit => pref != AttachPreference::Kprobe,
        Kprobe | Kretprobe => pref != AttachPreference::Fentry,
        TpBtf | RawTracepoint => true,
    })
}

/// Whether the kernel can possibly serve this flavour on this symbol.
fn flavour_possible(
    f: &Flavour,
    view: &KernelView<'_>,
    attach_to: &str,
    module: Option<&str>,
) -> bool {
    f.programs.iter().all(|p| match p.kind {
        // BTF tracepoints need the type in vmlinux BTF (module ones are not there).
        TpBtf => view.btf.is_some_and(|b| b.has_tracepoint(attach_to)),
        RawTracepoint => true,
        // Clones are not in BTF; module functions are in the module's.
        Fentry | Fexit => match module {
            None => view.btf.is_some_and(|b| b.has_func(attach_to)),
            Some(m) => view
                .modules
                .get(m)
                .is_some_and(|b| b.func_id(attach_to).is_some()),
        },
        Kprobe | Kretprobe => !view.kallsyms.is_empty(),
    })
}

/// A flavour that needs a BPF trampoline on the function.
fn uses_trampoline(f: &Flavour) -> bool {
    f.programs.iter().any(|p| matches!(p.kind, Fentry | Fexit))
}

/// Turns the table into what to try on this kernel.
/// In quiet mode a hook that is [`QuietRole::Off`] there is left out, and
/// targets that serve only the other mode are not tried.
pub fn resolve(
    view: &KernelView<'_>,
    pref: AttachPreference,
    evidence: Evidence,
) -> Vec<PlannedAttach> {
    HOOKS
        .iter()
        .filter(|spec| evidence == Evidence::Full || spec.quiet != QuietRole::Off)
        .map(|spec| resolve_hook(spec, view, pref, evidence))
        .collect()
}

fn resolve_hook(
    spec: &HookSpec,
    view: &KernelView<'_>,
    pref: AttachPreference,
    evidence: Evidence,
) -> PlannedAttach {
    let mut candidates = Vec::new();
    let mut absent = Vec::new();
    let mut avoided = Vec::new();
    for t in spec.targets.iter().filter(|t| t.serves(evidence)) {
        let tail_call = spec.wrappers.iter().any(|&(wrapper, callee)| {
            wrapper == t.symbol
                && (view
                    .kallsyms
                    .get(wrapper)
                    .and_then(|s| s.size)
                    .is_some_and(|n| n <= WRAPPER_MAX_BYTES)
                    || view.kallsyms.jumps_to(wrapper, callee))
                && candidates.iter().any(|c: &Candidate| c.symbol == callee)
        });
        if tail_call {
            continue;
        }
        let (attach_to, module) = if t.is_tracepoint() {
            (t.symbol.to_string(), None)
        } else {
            match view.kallsyms.resolve_function(t.symbol) {
                Some(sym) => (sym.name.clone(), sym.module.clone()),
                None => {
                    absent.push(t.symbol);
                    continue;
                }
            }
        };
        let is_clone = attach_to != t.symbol;
        let table = if is_clone {
            t.clone_flavours
        } else {
            t.flavours
        };
        let patched_by = view.patched.modifier(&attach_to);
        let flavours: Vec<Flavour> = table
            .iter()
            .filter(|f| flavour_allowed(f, pref))
            .filter(|f| flavour_possible(f, view, &attach_to, module.as_deref()))
            .filter(|f| {
                let keep = patched_by.is_none() || !uses_trampoline(f);
                if !keep && !avoided.iter().any(|a: &String| a.contains(&attach_to)) {
                    avoided.push(trampoline_avoided(&attach_to, patched_by));
                }
                keep
            })
            .copied()
            .collect();
        if flavours.is_empty() {
            absent.push(t.symbol);
            continue;
        }
        candidates.push(Candidate {
            symbol: t.symbol,
            attach_to,
            module,
            flavours,
        });
    }
    let missing = candidates.is_empty().then(|| {
        format!(
            "no candidate on this kernel (looked for {}{})",
            absent.join(", "),
            match pref {
                AttachPreference::Auto => "",
                AttachPreference::Kprobe => " with --attach kprobe",
                AttachPreference::Fentry => " with --attach fentry",
            }
        )
    });
    PlannedAttach {
        hook: spec.id,
        candidates,
        missing,
        avoided,
    }
}

/// Why a function gets no fentry/fexit, as `daxrace probes` says it.
pub fn trampoline_avoided(function: &str, by: Option<&crate::kernel::patched::Modifier>) -> String {
    format!(
        "no fentry/fexit on {function}: modified by {} (a BPF trampoline there would bypass it); kprobes instead",
        by.map_or("ftrace IPMODIFY", |m| m.by.as_str())
    )
}

/// The modules the plan's functions live in on this kernel (whose BTF
/// fentry/fexit need), sorted.
pub fn modules(kallsyms: &Kallsyms) -> Vec<String> {
    let mut out: Vec<String> = daxrace_plan::symbols()
        .filter_map(|s| kallsyms.resolve_function(s).and_then(|f| f.module.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use daxrace_plan::AttachKind;

    use super::*;

    /// The DAX symbols of each kernel generation (docs/kernels.md, its
    /// table of which DAX functions each Debian kernel has).
    const DEBIAN_6_1: &str = "\
ffffffffc0a00000 t ext4_break_layouts\t[ext4]
ffffffffc0b00000 T xfs_break_layouts\t[xfs]
ffffffffc0b00100 T xfs_break_dax_layouts\t[xfs]
ffffffff81400000 T dax_layout_busy_page
ffffffff81400100 T dax_layout_busy_page_range
ffffffff81400200 T __put_devmap_managed_page_refs
ffffffff81400300 t dax_disassociate_entry
ffffffff81400400 T dax_delete_mapping_entry
ffffffff81400500 T __bio_release_pages
ffffffff81400600 T wake_up_var
ffffffff81400700 T init_wait_var_entry
";
    const DEBIAN_6_12: &str = "\
ffffffffc0a00000 t ext4_break_layouts\t[ext4]
ffffffffc0b00000 T xfs_break_layouts\t[xfs]
ffffffff81400000 T dax_layout_busy_page
ffffffff81400100 T dax_layout_busy_page_range
ffffffff81400200 T __put_devmap_managed_folio_refs
ffffffff81400400 T dax_delete_mapping_entry
ffffffff81400500 T __bio_release_pages
ffffffff81400600 T wake_up_var
ffffffff81400700 T init_wait_var_entry
";
    const DEBIAN_7_3: &str = "\
ffffffffc0a00000 t ext4_break_layouts\t[ext4]
ffffffffc0b00000 T xfs_break_layouts\t[xfs]
ffffffff81400000 T dax_layout_busy_page
ffffffff81400100 T dax_layout_busy_page_range
ffffffff81400150 T dax_break_layout
ffffffff81400200 T free_zone_device_folio
ffffffff81400300 t dax_disassociate_entry.isra.0
ffffffff81400400 T dax_delete_mapping_entry
ffffffff81400480 T dax_delete_mapping_range
ffffffff81400500 T __bio_release_pages
ffffffff81400600 T wake_up_var
ffffffff81400700 T init_wait_var_entry
";

    fn chosen(kallsyms: &str) -> std::collections::HashMap<HookId, Vec<String>> {
        chosen_in(kallsyms, Evidence::Full)
    }

    fn chosen_in(
        kallsyms: &str,
        evidence: Evidence,
    ) -> std::collections::HashMap<HookId, Vec<String>> {
        let k = Kallsyms::parse(kallsyms);
        resolve(
            &KernelView {
                kallsyms: &k,
                btf: None,
                modules: &HashMap::new(),
                patched: &PatchedFunctions::default(),
            },
            AttachPreference::Kprobe,
            evidence,
        )
        .into_iter()
        .map(|p| {
            (
                p.hook,
                p.candidates.into_iter().map(|c| c.attach_to).collect(),
            )
        })
        .collect()
    }

    #[test]
    fn the_table_picks_each_generations_symbols() {
        let k61 = chosen(DEBIAN_6_1);
        assert_eq!(
            k61[&HookId::PinDropped],
            vec!["__put_devmap_managed_page_refs"]
        );
        assert_eq!(k61[&HookId::Disassociate], vec!["dax_disassociate_entry"]);
        assert_eq!(
            k61[&HookId::XfsBreak],
            vec!["xfs_break_layouts", "xfs_break_dax_layouts"],
            "the retry loop first, the single scan as fallback"
        );
        assert_eq!(
            k61[&HookId::BusyScan],
            vec!["dax_layout_busy_page_range", "dax_layout_busy_page"]
        );
        assert!(k61[&HookId::GenericBreak].is_empty());

        let k612 = chosen(DEBIAN_6_12);
        assert_eq!(
            k612[&HookId::PinDropped],
            vec!["__put_devmap_managed_folio_refs"]
        );
        assert!(k612[&HookId::Disassociate].is_empty(), "inlined on 6.12");
        assert_eq!(k612[&HookId::DeleteEntry], vec!["dax_delete_mapping_entry"]);

        let k73 = chosen(DEBIAN_7_3);
        assert_eq!(k73[&HookId::PinDropped], vec!["free_zone_device_folio"]);
        assert_eq!(
            k73[&HookId::Disassociate],
            vec!["dax_delete_mapping_range", "dax_disassociate_entry.isra.0"],
            "one hook per range rather than a kprobe trap per entry; the clone as fallback"
        );
        assert_eq!(k73[&HookId::DeleteEntry], vec!["dax_delete_mapping_entry"]);
        // Without the range function the clone serves.
        let k = chosen(&DEBIAN_7_3.replace("dax_delete_mapping_range", "other"));
        assert_eq!(
            k[&HookId::Disassociate],
            vec!["dax_disassociate_entry.isra.0"]
        );
        assert_eq!(k73[&HookId::GenericBreak], vec!["dax_break_layout"]);
    }

    #[test]
    fn quiet_mode_truncates_by_range_and_hooks_no_entry() {
        const TRUNCATE: &str = "ffffffff81400800 T truncate_inode_pages_range\n";
        for kernel in [DEBIAN_6_1, DEBIAN_6_12] {
            let with_range = format!("{kernel}{TRUNCATE}");
            let quiet = chosen_in(&with_range, Evidence::Quiet);
            assert_eq!(
                quiet[&HookId::Disassociate],
                vec!["truncate_inode_pages_range"]
            );
            assert!(!quiet.contains_key(&HookId::DeleteEntry));
            // Every other hook is planned as in full mode.
            let full = chosen_in(&with_range, Evidence::Full);
            for (hook, symbols) in &full {
                if ![HookId::Disassociate, HookId::DeleteEntry].contains(hook) {
                    assert_eq!(quiet.get(hook), Some(symbols), "{hook:?}");
                }
            }
            assert!(!full[&HookId::Disassociate].contains(&"truncate_inode_pages_range".into()));
        }
        // 6.15+: the range deletion serves both modes, ahead of the page cache's.
        let k73 = chosen_in(&format!("{DEBIAN_7_3}{TRUNCATE}"), Evidence::Quiet);
        assert_eq!(k73[&HookId::Disassociate][0], "dax_delete_mapping_range");
    }

    #[test]
    fn a_tail_call_wrapper_is_not_hooked_twice() {
        // dax_layout_busy_page as a 32-byte jump to the _range variant.
        let k = chosen(
            "ffffffff81400000 T dax_layout_busy_page\n\
             ffffffff81400020 T dax_layout_busy_page_range\n\
             ffffffff81400200 T __put_devmap_managed_folio_refs\n",
        );
        assert_eq!(k[&HookId::BusyScan], vec!["dax_layout_busy_page_range"]);
        // Without the callee the wrapper is all there is.
        let k = chosen(
            "ffffffff81400000 T dax_layout_busy_page\n\
             ffffffff81400020 T __put_devmap_managed_folio_refs\n",
        );
        assert_eq!(k[&HookId::BusyScan], vec!["dax_layout_busy_page"]);
    }

    #[test]
    fn module_functions_use_fentry_where_the_module_has_btf() {
        let k = Kallsyms::parse(DEBIAN_6_12);
        assert_eq!(modules(&k), vec!["ext4", "xfs"]);
        // ext4's BTF has its break function, xfs has no BTF at all.
        let modules = HashMap::from([(
            "ext4".to_string(),
            FuncIds::with_funcs(&[("ext4_break_layouts", 70_001)]),
        )]);
        let plan = resolve(
            &KernelView {
                kallsyms: &k,
                btf: None,
                modules: &modules,
                patched: &PatchedFunctions::default(),
            },
            AttachPreference::Auto,
            Evidence::Full,
        );
        let kinds = |hook: HookId| -> Vec<Vec<AttachKind>> {
            let p = plan.iter().find(|p| p.hook == hook).expect("planned");
            p.candidates[0]
                .flavours
                .iter()
                .map(|f| f.programs.iter().map(|p| p.kind).collect())
                .collect()
        };
        assert_eq!(
            kinds(HookId::Ext4Break),
            vec![vec![Fentry, Fexit], vec![Kprobe, Kretprobe]],
            "fentry first, kprobes when the kernel refuses it"
        );
        assert_eq!(kinds(HookId::XfsBreak), vec![vec![Kprobe, Kretprobe]]);
    }

    #[test]
    fn a_live_patched_function_gets_kprobes_not_a_trampoline() {
        let k = Kallsyms::parse(DEBIAN_6_1);
        let modules = HashMap::from([(
            "ext4".to_string(),
            FuncIds::with_funcs(&[("ext4_break_layouts", 70_001)]),
        )]);
        let patched =
            PatchedFunctions::with("ext4_break_layouts", "live patch daxrace_count_patch");
        let planned = |pref: AttachPreference, hook: HookId| -> PlannedAttach {
            resolve(
                &KernelView {
                    kallsyms: &k,
                    btf: None,
                    modules: &modules,
                    patched: &patched,
                },
                pref,
                Evidence::Full,
            )
            .into_iter()
            .find(|p| p.hook == hook)
            .expect("planned")
        };
        let brk = planned(AttachPreference::Auto, HookId::Ext4Break);
        let kinds: Vec<Vec<AttachKind>> = brk.candidates[0]
            .flavours
            .iter()
            .map(|f| f.programs.iter().map(|p| p.kind).collect())
            .collect();
        assert_eq!(kinds, vec![vec![Kprobe, Kretprobe]]);
        assert_eq!(brk.avoided.len(), 1, "{:?}", brk.avoided);
        assert!(
            brk.avoided[0].contains("live patch daxrace_count_patch"),
            "{:?}",
            brk.avoided
        );
        // --attach fentry has nothing left to offer there: the hook is
        // missing, with the reason, rather than bypassing the patch.
        let brk = planned(AttachPreference::Fentry, HookId::Ext4Break);
        assert!(brk.candidates.is_empty());
        assert!(brk.missing.is_some() && !brk.avoided.is_empty());
        // Other hooks are untouched.
        assert!(planned(AttachPreference::Fentry, HookId::WakeUp)
            .avoided
            .is_empty());
    }

    #[test]
    fn a_kernel_without_btf_falls_back_to_raw_tracepoints() {
        let k = Kallsyms::parse("ffffffff81000000 T _stext\n");
        let plan = resolve(
            &KernelView {
                kallsyms: &k,
                btf: None,
                modules: &HashMap::new(),
                patched: &PatchedFunctions::default(),
            },
            AttachPreference::Auto,
            Evidence::Full,
        );
        let punch = plan
            .iter()
            .find(|p| p.hook == HookId::Ext4PunchHole)
            .expect("planned");
        assert_eq!(punch.candidates.len(), 1);
        let kinds: Vec<_> = punch.candidates[0]
            .flavours
            .iter()
            .flat_map(|f| f.programs.iter().map(|p| p.kind))
            .collect();
        assert_eq!(kinds, vec![RawTracepoint]);
    }
}
