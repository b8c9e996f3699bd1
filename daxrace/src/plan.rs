//! The probe plan: the one place that knows how kernels differ.
//!
//! [`HOOKS`] lists every logical hook with the kernel functions (or
//! tracepoints) that can serve it, in priority order, and the programs that
//! attach to each. [`resolve`] turns the table into [`PlannedAttach`]es for the
//! running kernel from its symbols (looked up one by one, or listed from
//! `/proc/kallsyms`) and BTF; the loader then proves each
//! one by attaching it, falling back to the next alternative when it fails.
//! No `if version > ...` anywhere: a kernel is described by what it has.
use std::collections::HashMap;

use daxrace_common::HookId;
use serde::Serialize;

use crate::{
    btf::{Btf, FuncIds},
    event::HookName,
    kallsyms::Kallsyms,
    patched::PatchedFunctions,
};

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachKind {
    TpBtf,
    RawTracepoint,
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
}

impl AttachKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachKind::TpBtf => "tp_btf",
            AttachKind::RawTracepoint => "raw_tracepoint",
            AttachKind::Fentry => "fentry",
            AttachKind::Fexit => "fexit",
            AttachKind::Kprobe => "kprobe",
            AttachKind::Kretprobe => "kretprobe",
        }
    }
}

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

/// One program of the eBPF object and how it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub kind: AttachKind,
}

const fn prog(name: &'static str, kind: AttachKind) -> Program {
    Program { name, kind }
}

/// A way to serve a hook on one kernel symbol: all its programs attach, or none.
#[derive(Clone, Copy, Debug)]
pub struct Flavour {
    pub programs: &'static [Program],
}

/// A kernel function or tracepoint that can serve a hook.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Function or tracepoint name (function clones such as `.isra.0` are
    /// resolved from kallsyms).
    pub symbol: &'static str,
    /// Alternatives in preference order.
    pub flavours: &'static [Flavour],
    /// What to use when only a compiler clone (`name.isra.0`) exists: clones
    /// may have lost or reordered arguments, so each target says which of its
    /// arguments it still trusts there. Empty: clones are not used.
    pub clone_flavours: &'static [Flavour],
    /// The module the function lives in where its filesystem is built as
    /// one (Debian's ext4 and xfs), for lookups that do not list modules.
    pub module: Option<&'static str>,
}

#[derive(Clone, Copy, Debug)]
pub struct HookSpec {
    pub id: HookId,
    /// What the hook tells the detector.
    pub purpose: &'static str,
    /// Candidates in priority order.
    pub targets: &'static [Target],
    /// Attach every available target, not just the first: for functions that
    /// call each other where either may be inlined (the busy scan pair).
    pub attach_all: bool,
    /// `(wrapper, callee)` pairs among the targets: when the wrapper is no
    /// more than a tail call (at most [`WRAPPER_MAX_BYTES`] by the listing's
    /// sizes, or code seen to jump straight to the callee when symbols were
    /// looked up) and the callee is hooked, the wrapper's own hook would only
    /// see each call twice.
    pub wrappers: &'static [(&'static str, &'static str)],
    /// Context hooks are nice to have; a missing DAX hook is a coverage gap.
    pub context: bool,
    /// A fallback that adds nothing where this other hook attached to this
    /// function itself (not a clone that lost arguments, not another
    /// target): there it stays unattached, on standby, and costs the traced
    /// path nothing.
    pub fallback_for: Option<(HookId, &'static str)>,
}

use AttachKind::*;

/// A function this small (endbr, the fentry nop, two argument loads and a
/// jump, padded) cannot hold an inlined copy of anything it calls.
pub const WRAPPER_MAX_BYTES: u64 = 64;

/// A tracepoint served by a BTF tracepoint program, else by a raw tracepoint
/// program (module tracepoints have no vmlinux BTF type).
macro_rules! tracepoint {
    ($tp:literal, $btf:literal, $raw:literal) => {
        Target {
            symbol: $tp,
            flavours: &[
                Flavour {
                    programs: &[prog($btf, TpBtf)],
                },
                Flavour {
                    programs: &[prog($raw, RawTracepoint)],
                },
            ],
            clone_flavours: &[],
            module: None,
        }
    };
}

/// A kernel function: fentry/fexit programs first (cheaper), then
/// kprobe/kretprobe (every kernel has them). Either list may be empty.
macro_rules! function {
    ($sym:literal, [$($fe:expr),*], [$($kp:expr),*]) => {
        function!($sym, [$($fe),*], [$($kp),*], clones: [], module: None)
    };
    ($sym:literal, [$($fe:expr),*], [$($kp:expr),*], module: $m:literal) => {
        function!($sym, [$($fe),*], [$($kp),*], clones: [], module: Some($m))
    };
    ($sym:literal, [$($fe:expr),*], [$($kp:expr),*], clones: [$($cl:expr),*]) => {
        function!($sym, [$($fe),*], [$($kp),*], clones: [$($cl),*], module: None)
    };
    ($sym:literal, [$($fe:expr),*], [$($kp:expr),*], clones: [$($cl:expr),*], module: $m:expr) => {
        Target {
            symbol: $sym,
            flavours: &[
                $(Flavour { programs: $fe },)*
                $(Flavour { programs: $kp },)*
            ],
            clone_flavours: &[$(Flavour { programs: $cl },)*],
            module: $m,
        }
    };
}

const BREAK_EXT4_FENTRY: &[Program] =
    &[prog("fe_ext4_break", Fentry), prog("fx_ext4_break", Fexit)];
const BREAK_EXT4: &[Program] = &[
    prog("kp_ext4_break", Kprobe),
    prog("kr_ext4_break", Kretprobe),
];
const BREAK_XFS_FENTRY: &[Program] = &[prog("fe_xfs_break", Fentry), prog("fx_xfs_break", Fexit)];
const BREAK_XFS_DAX_FENTRY: &[Program] = &[
    prog("fe_xfs_break_dax", Fentry),
    prog("fx_xfs_break_dax", Fexit),
];
const BREAK_XFS: &[Program] = &[
    prog("kp_xfs_break", Kprobe),
    prog("kr_xfs_break", Kretprobe),
];
const PIN_DROPPED_REFS: &[Program] = &[prog("kp_pin_dropped_refs", Kprobe)];
const PIN_DROPPED_ONE: &[Program] = &[prog("kp_pin_dropped_one", Kprobe)];

pub static HOOKS: &[HookSpec] = &[
    HookSpec {
        id: HookId::Ext4PunchHole,
        purpose: "ext4 hole punch (context)",
        targets: &[tracepoint!(
            "ext4_punch_hole",
            "tp_ext4_punch_hole",
            "raw_ext4_punch_hole"
        )],
        attach_all: false,
        wrappers: &[],
        context: true,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::Ext4ZeroRange,
        purpose: "ext4 zero range (context)",
        targets: &[tracepoint!(
            "ext4_zero_range",
            "tp_ext4_zero_range",
            "raw_ext4_zero_range"
        )],
        attach_all: false,
        wrappers: &[],
        context: true,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::Ext4CollapseRange,
        purpose: "ext4 collapse range (context)",
        targets: &[tracepoint!(
            "ext4_collapse_range",
            "tp_ext4_collapse_range",
            "raw_ext4_collapse_range"
        )],
        attach_all: false,
        wrappers: &[],
        context: true,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::Ext4InsertRange,
        purpose: "ext4 insert range (context)",
        targets: &[tracepoint!(
            "ext4_insert_range",
            "tp_ext4_insert_range",
            "raw_ext4_insert_range"
        )],
        attach_all: false,
        wrappers: &[],
        context: true,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::Ext4Truncate,
        purpose: "ext4 truncate (context)",
        targets: &[tracepoint!(
            "ext4_truncate_enter",
            "tp_ext4_truncate_enter",
            "raw_ext4_truncate_enter"
        )],
        attach_all: false,
        wrappers: &[],
        context: true,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::Ext4Break,
        purpose: "ext4 break-layouts call (the wait loop)",
        // ext4 is a module on distribution kernels: fentry goes through
        // the module's BTF.
        targets: &[function!(
            "ext4_break_layouts",
            [BREAK_EXT4_FENTRY],
            [BREAK_EXT4],
            module: "ext4"
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::XfsBreak,
        purpose: "xfs break-layouts call (the wait loop)",
        // xfs_break_layouts() holds the retry loop on every version; on 6.1
        // xfs_break_dax_layouts() is one scan and one wait per call.
        targets: &[
            function!(
                "xfs_break_layouts",
                [BREAK_XFS_FENTRY],
                [BREAK_XFS],
                module: "xfs"
            ),
            function!(
                "xfs_break_dax_layouts",
                [BREAK_XFS_DAX_FENTRY],
                [BREAK_XFS],
                module: "xfs"
            ),
        ],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::GenericBreak,
        purpose: "generic dax_break_layout() (6.15+, nested in the fs ones)",
        targets: &[function!(
            "dax_break_layout",
            [&[
                prog("fe_generic_break", Fentry),
                prog("fx_generic_break", Fexit)
            ]],
            [&[
                prog("kp_generic_break", Kprobe),
                prog("kr_generic_break", Kretprobe)
            ]]
        )],
        attach_all: false,
        wrappers: &[],
        context: true,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::BusyScan,
        purpose: "busy-page scan and the page it returned",
        // Either may be inlined into the other: attach both; the programs
        // record only the outermost call.
        targets: &[
            function!(
                "dax_layout_busy_page_range",
                [&[
                    prog("fe_busy_scan_range", Fentry),
                    prog("fx_busy_scan_range", Fexit)
                ]],
                [&[
                    prog("kp_busy_scan_range", Kprobe),
                    prog("kr_busy_scan", Kretprobe)
                ]]
            ),
            function!(
                "dax_layout_busy_page",
                [&[prog("fe_busy_scan", Fentry), prog("fx_busy_scan", Fexit)]],
                [&[
                    prog("kp_busy_scan", Kprobe),
                    prog("kr_busy_scan", Kretprobe)
                ]]
            ),
        ],
        attach_all: true,
        wrappers: &[("dax_layout_busy_page", "dax_layout_busy_page_range")],
        context: false,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::WaitStart,
        purpose: "a task starts waiting for a watched page to go idle",
        targets: &[function!(
            "init_wait_var_entry",
            [&[prog("fe_wait_start", Fentry)]],
            [&[prog("kp_wait_start", Kprobe)]]
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::PinDropped,
        purpose: "devmap put path: pins dropped from a watched page",
        targets: &[
            function!(
                "__put_devmap_managed_folio_refs",
                [&[prog("fe_pin_dropped_folio_refs", Fentry)]],
                [PIN_DROPPED_REFS]
            ),
            function!(
                "__put_devmap_managed_page_refs",
                [&[prog("fe_pin_dropped_page_refs", Fentry)]],
                [PIN_DROPPED_REFS]
            ),
            function!("put_devmap_managed_page", [], [PIN_DROPPED_ONE]),
            function!("__put_devmap_managed_page", [], [PIN_DROPPED_ONE]),
            // 6.15+: no devmap put; the folio is freed when it goes idle.
            function!(
                "free_zone_device_folio",
                [&[prog("fe_page_freed", Fentry)]],
                [&[prog("kp_page_freed", Kprobe)]]
            ),
        ],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::BioRelease,
        purpose: "bio release path (bypasses the devmap put on Debian 6.1)",
        targets: &[function!(
            "__bio_release_pages",
            [&[prog("fx_bio_release", Fexit)]],
            [&[
                prog("kp_bio_release", Kprobe),
                prog("kr_bio_release", Kretprobe)
            ]]
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::WakeUp,
        purpose: "wake-up of a watched page's waiters",
        targets: &[function!(
            "wake_up_var",
            [&[prog("fe_wake_up", Fentry)]],
            [&[prog("kp_wake_up", Kprobe)]]
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::Disassociate,
        purpose: "a DAX page leaves its file (truncation)",
        // 6.15+ builds it as `dax_disassociate_entry.isra.0` with its unused
        // arguments dropped: no BTF there, so a kprobe trap per entry (and
        // per page fault that fills a hole), and only the entry is trusted.
        // The same kernels truncate through dax_delete_mapping_range(): one
        // fentry per range, with the file and the range. The clone stays
        // the last resort.
        targets: &[
            function!(
                "dax_disassociate_entry",
                [&[prog("fe_disassociate", Fentry)]],
                [&[prog("kp_disassociate", Kprobe)]]
            ),
            function!(
                "dax_delete_mapping_range",
                [&[prog("fe_delete_range", Fentry)]],
                [&[prog("kp_delete_range", Kprobe)]]
            ),
            function!(
                "dax_disassociate_entry",
                [],
                [],
                clones: [&[prog("kp_disassociate_clone", Kprobe)]]
            ),
        ],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
    },
    HookSpec {
        id: HookId::DeleteEntry,
        purpose:
            "a DAX mapping entry is deleted (truncation, where disassociate is inlined or cloned)",
        targets: &[function!(
            "dax_delete_mapping_entry",
            [&[prog("fe_delete_entry", Fentry)]],
            [&[prog("kp_delete_entry", Kprobe)]]
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: Some((HookId::Disassociate, "dax_disassociate_entry")),
    },
];

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
    /// no BPF trampoline goes there ([`crate::patched`]).
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

fn is_tracepoint(t: &Target) -> bool {
    t.flavours
        .iter()
        .flat_map(|f| f.programs)
        .any(|p| matches!(p.kind, TpBtf | RawTracepoint))
}

/// Turns the table into what to try on this kernel.
pub fn resolve(view: &KernelView<'_>, pref: AttachPreference) -> Vec<PlannedAttach> {
    HOOKS
        .iter()
        .map(|spec| resolve_hook(spec, view, pref))
        .collect()
}

fn resolve_hook(spec: &HookSpec, view: &KernelView<'_>, pref: AttachPreference) -> PlannedAttach {
    let mut candidates = Vec::new();
    let mut absent = Vec::new();
    let mut avoided = Vec::new();
    for t in spec.targets {
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
        let (attach_to, module) = if is_tracepoint(t) {
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
pub fn trampoline_avoided(function: &str, by: Option<&crate::patched::Modifier>) -> String {
    format!(
        "no fentry/fexit on {function}: modified by {} (a BPF trampoline there would bypass it); kprobes instead",
        by.map_or("ftrace IPMODIFY", |m| m.by.as_str())
    )
}

/// Every kernel function target of the table (what symbol lookups ask for).
pub fn function_targets() -> impl Iterator<Item = &'static Target> {
    HOOKS
        .iter()
        .flat_map(|h| h.targets.iter())
        .filter(|t| !is_tracepoint(t))
}

/// Every `(wrapper, callee)` pair of the table.
pub fn wrappers() -> impl Iterator<Item = (&'static str, &'static str)> {
    HOOKS.iter().flat_map(|h| h.wrappers.iter().copied())
}

/// Every kernel function the table names (what kallsyms must be searched for).
pub fn symbols() -> impl Iterator<Item = &'static str> {
    function_targets().map(|t| t.symbol)
}

/// The modules the plan's functions live in on this kernel (whose BTF
/// fentry/fexit need), sorted.
pub fn modules(kallsyms: &Kallsyms) -> Vec<String> {
    let mut out: Vec<String> = symbols()
        .filter_map(|s| kallsyms.resolve_function(s).and_then(|f| f.module.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every tracepoint the table names.
pub fn tracepoints() -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .flat_map(|h| h.targets.iter())
        .filter(|t| is_tracepoint(t))
        .map(|t| t.symbol)
}

pub fn spec(hook: HookId) -> &'static HookSpec {
    HOOKS
        .iter()
        .find(|s| s.id == hook)
        .expect("every HookId has a row in HOOKS")
}

/// The outcome of attaching one hook, as `daxrace probes` and the metrics show it.
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub hook: HookName,
    pub purpose: &'static str,
    pub context: bool,
    /// What attached: `(symbol, kind)` per program link.
    pub attached: Vec<AttachedProgram>,
    /// Why it did not attach (or which alternatives failed before one worked).
    pub errors: Vec<String>,
    /// Not attached because another hook already serves it here (see
    /// [`HookSpec::fallback_for`]): why, for `daxrace probes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// Flavours kept off because they would change what the kernel does
    /// (a trampoline on a live-patched function), and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub avoided: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttachedProgram {
    pub symbol: String,
    pub module: Option<String>,
    pub program: &'static str,
    pub kind: AttachKind,
}

impl HookStatus {
    pub fn is_attached(&self) -> bool {
        !self.attached.is_empty()
    }

    pub fn standby(hook: HookId, why: String) -> HookStatus {
        let spec = spec(hook);
        HookStatus {
            hook: HookName(hook),
            purpose: spec.purpose,
            context: spec.context,
            attached: Vec::new(),
            errors: Vec::new(),
            standby: Some(why),
            avoided: Vec::new(),
        }
    }

    /// The attach kinds in use, as `fentry+fexit` (sorted, each once).
    pub fn kinds(&self) -> String {
        let kinds: std::collections::BTreeSet<&str> =
            self.attached.iter().map(|a| a.kind.as_str()).collect();
        kinds.into_iter().collect::<Vec<_>>().join("+")
    }

    /// What it attached to, as `ext4_break_layouts [ext4], ...` (sorted,
    /// each once).
    pub fn targets(&self) -> String {
        let to: std::collections::BTreeSet<String> = self
            .attached
            .iter()
            .map(|a| match &a.module {
                Some(m) => format!("{} [{m}]", a.symbol),
                None => a.symbol.clone(),
            })
            .collect();
        to.into_iter().collect::<Vec<_>>().join(", ")
    }

    /// Attached, or on standby: not a coverage gap.
    pub fn is_served(&self) -> bool {
        self.is_attached() || self.standby.is_some()
    }
}

/// How many hooks attached, and how many are on standby.
pub fn attached_and_standby(statuses: &[HookStatus]) -> (usize, usize) {
    let attached = statuses.iter().filter(|s| s.is_attached()).count();
    let standby = statuses.iter().filter(|s| s.standby.is_some()).count();
    (attached, standby)
}

/// Why `hook` need not attach, given the hooks attached so far: the hook it
/// is a fallback for attached to its own function, not to a clone that lost
/// arguments.
pub fn standby_reason(hook: HookId, attached_so_far: &[HookStatus]) -> Option<String> {
    let (primary, symbol) = spec(hook).fallback_for?;
    attached_so_far
        .iter()
        .filter(|s| s.hook.0 == primary)
        .flat_map(|s| s.attached.iter())
        .any(|a| a.symbol == symbol)
        .then(|| {
            format!(
                "{} serves it: {symbol} is hooked with all its arguments",
                HookName(primary).as_str()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_has_exactly_one_row_and_programs_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for s in HOOKS {
            assert!(seen.insert(s.id), "{:?} has two rows", s.id);
            assert!(!s.targets.is_empty(), "{:?} has no targets", s.id);
        }
        let mut names = std::collections::HashMap::new();
        for s in HOOKS {
            for t in s.targets {
                for f in t.flavours {
                    for p in f.programs {
                        // One program may serve several symbols only with kprobes
                        // (fentry and tp_btf programs are bound to one target at load).
                        if let Some(prev) = names.insert(p.name, (t.symbol, p.kind)) {
                            assert!(
                                matches!(p.kind, Kprobe | Kretprobe | RawTracepoint)
                                    || prev.0 == t.symbol,
                                "{} is used for {} and {}",
                                p.name,
                                prev.0,
                                t.symbol
                            );
                        }
                    }
                }
            }
        }
    }

    /// The DAX symbols of each kernel generation, as KERNELS.md lists them.
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
        let k = Kallsyms::parse(kallsyms);
        resolve(
            &KernelView {
                kallsyms: &k,
                btf: None,
                modules: &HashMap::new(),
                patched: &PatchedFunctions::default(),
            },
            AttachPreference::Kprobe,
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

    fn attached_to(hook: HookId, symbol: &str) -> HookStatus {
        HookStatus {
            hook: HookName(hook),
            purpose: "",
            context: false,
            attached: vec![AttachedProgram {
                symbol: symbol.into(),
                module: None,
                program: "p",
                kind: Fentry,
            }],
            errors: Vec::new(),
            standby: None,
            avoided: Vec::new(),
        }
    }

    #[test]
    fn a_status_names_its_kinds_and_targets_once_each() {
        let mut s = attached_to(HookId::BusyScan, "dax_layout_busy_page_range");
        let mut exit = s.attached[0].clone();
        exit.kind = Fexit;
        let mut module = exit.clone();
        module.symbol = "ext4_break_layouts".into();
        module.module = Some("ext4".into());
        s.attached.extend([exit, module]);
        assert_eq!(s.kinds(), "fentry+fexit");
        assert_eq!(
            s.targets(),
            "dax_layout_busy_page_range, ext4_break_layouts [ext4]"
        );
    }

    #[test]
    fn delete_entry_waits_on_standby_only_where_disassociate_has_all_its_arguments() {
        let full = [attached_to(HookId::Disassociate, "dax_disassociate_entry")];
        let why = standby_reason(HookId::DeleteEntry, &full).expect("standby");
        assert!(why.contains("dax_disassociate_entry"), "{why}");
        // The 6.15+ clone lost the mapping and the truncation flag.
        let clone = [attached_to(
            HookId::Disassociate,
            "dax_disassociate_entry.isra.0",
        )];
        assert_eq!(standby_reason(HookId::DeleteEntry, &clone), None);
        // Inlined (not attached): the deletion is what shows the truncation.
        let mut missing = attached_to(HookId::Disassociate, "x");
        missing.attached.clear();
        assert_eq!(standby_reason(HookId::DeleteEntry, &[missing]), None);
        assert_eq!(standby_reason(HookId::DeleteEntry, &[]), None);
        // A range deletion does not see single-entry deletions.
        let range = [attached_to(
            HookId::Disassociate,
            "dax_delete_mapping_range",
        )];
        assert_eq!(standby_reason(HookId::DeleteEntry, &range), None);
        // Hooks that are nobody's fallback always attach.
        assert_eq!(standby_reason(HookId::WakeUp, &full), None);
        let s = HookStatus::standby(HookId::DeleteEntry, why);
        assert!(s.is_served() && !s.is_attached());
    }
}
