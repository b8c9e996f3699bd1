//! The probe-plan table: the one place that knows how kernels differ.
//!
//! [`HOOKS`] lists every logical hook with the kernel functions (or
//! tracepoints) that can serve it, in priority order, and the programs of
//! daxrace's eBPF object that attach to each. daxrace's resolver
//! (`daxrace::plan`) turns it into what to attach on the running kernel;
//! `cargo xtask bench` builds its bpftrace twin from it. No
//! `if version > ...` anywhere: a kernel is described by what it has.
//!
//! This crate is plain data on purpose (no build script, no aya), so that
//! xtask, which cannot build the eBPF object, reads the same table.
pub use daxrace_common::HookId;

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttachKind {
    TpBtf,
    RawTracepoint,
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
}

impl AttachKind {
    pub const ALL: [AttachKind; 6] = [
        AttachKind::TpBtf,
        AttachKind::RawTracepoint,
        AttachKind::Fentry,
        AttachKind::Fexit,
        AttachKind::Kprobe,
        AttachKind::Kretprobe,
    ];

    /// The kind's name as `daxrace probes` and the trace header spell it.
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

    /// Runs when the function returns (and sees its return value).
    pub fn is_exit(self) -> bool {
        matches!(self, AttachKind::Fexit | AttachKind::Kretprobe)
    }
}

/// How much a running daxrace hooks (`--evidence`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Evidence {
    /// The daemon's default: the I/O path pays nothing while no page is
    /// watched. Per-page hooks attach only while a busy scan's page is
    /// watched, and truncation is seen once per range, not per entry.
    #[default]
    Quiet,
    /// Every hook, all the time: the page's whole history (`trace`).
    Full,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::Quiet => "quiet",
            Evidence::Full => "full",
        }
    }
}

/// When a hook is attached in [`Evidence::Quiet`] mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuietRole {
    /// From start to stop, as in full mode.
    Always,
    /// Only while some page is watched: hooks on paths every direct I/O
    /// takes, page by page (millions of runs a second), that matter only
    /// for a page a break-layouts call found busy.
    WhileWatched,
    /// Not in quiet mode: what it sees, another hook of the quiet plan
    /// sees once per range.
    Off,
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

/// The kernel keeps this many characters of a program's name
/// (`BPF_OBJ_NAME_LEN` less its NUL): what `bpftool` and the program
/// statistics show.
pub const KERNEL_PROGRAM_NAME_MAX: usize = 15;

impl Program {
    /// The name as the kernel keeps it.
    pub fn kernel_name(&self) -> &'static str {
        &self.name[..self.name.len().min(KERNEL_PROGRAM_NAME_MAX)]
    }
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
    /// The function's leading parameters by their names in the kernel's
    /// BTF, up to the last one a tracer reads there (daxrace's programs
    /// read them by position; bpftrace's kfunc probes, in the bench's twin,
    /// by name). A target used only through clones lists what the clone
    /// still has in place. Empty for tracepoints.
    pub args: &'static [&'static str],
    /// Alternatives in preference order.
    pub flavours: &'static [Flavour],
    /// What to use when only a compiler clone (`name.isra.0`) exists: clones
    /// may have lost or reordered arguments, so each target says which of its
    /// arguments it still trusts there. Empty: clones are not used.
    pub clone_flavours: &'static [Flavour],
    /// The module the function lives in where its filesystem is built as
    /// one (Debian's ext4 and xfs), for lookups that do not list modules.
    pub module: Option<&'static str>,
    /// The one mode this target serves in (`None`: both).
    pub only_in: Option<Evidence>,
}

impl Target {
    /// Whether the target is tried in this mode.
    pub fn serves(&self, evidence: Evidence) -> bool {
        self.only_in.is_none_or(|e| e == evidence)
    }

    /// Every program of the target, clones' included.
    pub fn programs(&self) -> impl Iterator<Item = &'static Program> {
        let (flavours, clone_flavours) = (self.flavours, self.clone_flavours);
        flavours
            .iter()
            .chain(clone_flavours)
            .flat_map(|f| f.programs.iter())
    }

    pub fn is_tracepoint(&self) -> bool {
        self.programs()
            .any(|p| matches!(p.kind, AttachKind::TpBtf | AttachKind::RawTracepoint))
    }

    /// Some program of the target runs at the function's return.
    pub fn has_exit(&self) -> bool {
        self.programs().any(|p| p.kind.is_exit())
    }
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
    /// When it is attached in quiet mode.
    pub quiet: QuietRole,
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
            args: &[],
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
            only_in: None,
        }
    };
}

/// A kernel function: fentry/fexit programs first (cheaper), then
/// kprobe/kretprobe (every kernel has them). Either list may be empty.
macro_rules! function {
    ($sym:literal, args: [$($arg:literal),*], [$($fe:expr),*], [$($kp:expr),*]
        $(, clones: [$($cl:expr),*])? $(, module: $m:literal)? $(, only_in: $only:expr)?) => {
        Target {
            symbol: $sym,
            args: &[$($arg),*],
            flavours: &[
                $(Flavour { programs: $fe },)*
                $(Flavour { programs: $kp },)*
            ],
            clone_flavours: &[$($(Flavour { programs: $cl },)*)?],
            module: function!(@module $($m)?),
            only_in: function!(@only $($only)?),
        }
    };
    (@module) => { None };
    (@module $m:literal) => { Some($m) };
    (@only) => { None };
    (@only $e:expr) => { Some($e) };
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
        quiet: QuietRole::Always,
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
        quiet: QuietRole::Always,
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
        quiet: QuietRole::Always,
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
        quiet: QuietRole::Always,
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
        quiet: QuietRole::Always,
    },
    HookSpec {
        id: HookId::Ext4Break,
        purpose: "ext4 break-layouts call (the wait loop)",
        // ext4 is a module on distribution kernels: fentry goes through
        // the module's BTF.
        targets: &[function!(
            "ext4_break_layouts",
            args: ["inode"],
            [BREAK_EXT4_FENTRY],
            [BREAK_EXT4],
            module: "ext4"
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
        quiet: QuietRole::Always,
    },
    HookSpec {
        id: HookId::XfsBreak,
        purpose: "xfs break-layouts call (the wait loop)",
        // xfs_break_layouts() holds the retry loop on every version; on 6.1
        // xfs_break_dax_layouts() is one scan and one wait per call.
        targets: &[
            function!(
                "xfs_break_layouts",
                args: ["inode"],
                [BREAK_XFS_FENTRY],
                [BREAK_XFS],
                module: "xfs"
            ),
            function!(
                "xfs_break_dax_layouts",
                args: ["inode"],
                [BREAK_XFS_DAX_FENTRY],
                [BREAK_XFS],
                module: "xfs"
            ),
        ],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
        quiet: QuietRole::Always,
    },
    HookSpec {
        id: HookId::GenericBreak,
        purpose: "generic dax_break_layout() (6.15+, nested in the fs ones)",
        targets: &[function!(
            "dax_break_layout",
            args: ["inode"],
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
        quiet: QuietRole::Always,
    },
    HookSpec {
        id: HookId::BusyScan,
        purpose: "busy-page scan and the page it returned",
        // Either may be inlined into the other: attach both; the programs
        // record only the outermost call.
        targets: &[
            function!(
                "dax_layout_busy_page_range",
                args: ["mapping", "start", "end"],
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
                args: ["mapping"],
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
        quiet: QuietRole::Always,
    },
    HookSpec {
        id: HookId::WaitStart,
        purpose: "a task starts waiting for a watched page to go idle",
        targets: &[function!(
            "init_wait_var_entry",
            args: ["wbq_entry", "var"],
            [&[prog("fe_wait_start", Fentry)]],
            [&[prog("kp_wait_start", Kprobe)]]
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
        quiet: QuietRole::Always,
    },
    HookSpec {
        id: HookId::PinDropped,
        purpose: "devmap put path: pins dropped from a watched page",
        targets: &[
            function!(
                "__put_devmap_managed_folio_refs",
                args: ["folio", "refs"],
                [&[prog("fe_pin_dropped_folio_refs", Fentry)]],
                [PIN_DROPPED_REFS]
            ),
            function!(
                "__put_devmap_managed_page_refs",
                args: ["page", "refs"],
                [&[prog("fe_pin_dropped_page_refs", Fentry)]],
                [PIN_DROPPED_REFS]
            ),
            function!("put_devmap_managed_page", args: ["page"], [], [PIN_DROPPED_ONE]),
            function!("__put_devmap_managed_page", args: ["page"], [], [PIN_DROPPED_ONE]),
            // 6.15+: no devmap put; the folio is freed when it goes idle.
            function!(
                "free_zone_device_folio",
                args: ["folio"],
                [&[prog("fe_page_freed", Fentry)]],
                [&[prog("kp_page_freed", Kprobe)]]
            ),
        ],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
        quiet: QuietRole::WhileWatched,
    },
    HookSpec {
        id: HookId::BioRelease,
        purpose: "bio release path (bypasses the devmap put on Debian 6.1)",
        targets: &[function!(
            "__bio_release_pages",
            args: ["bio"],
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
        quiet: QuietRole::WhileWatched,
    },
    HookSpec {
        id: HookId::WakeUp,
        purpose: "wake-up of a watched page's waiters",
        targets: &[function!(
            "wake_up_var",
            args: ["var"],
            [&[prog("fe_wake_up", Fentry)]],
            [&[prog("kp_wake_up", Kprobe)]]
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
        quiet: QuietRole::WhileWatched,
    },
    HookSpec {
        id: HookId::Disassociate,
        purpose: "a DAX page leaves its file (truncation)",
        // 6.15+ builds it as `dax_disassociate_entry.isra.0` with its unused
        // arguments dropped: no BTF there, so a kprobe trap per entry (and
        // per page fault that fills a hole), and only the entry is trusted.
        // The same kernels truncate through dax_delete_mapping_range(): one
        // fentry per range, with the file and the range. The clone stays
        // the last resort. Quiet mode never hooks an entry at a time.
        targets: &[
            function!(
                "dax_disassociate_entry",
                args: ["entry", "mapping", "trunc"],
                [&[prog("fe_disassociate", Fentry)]],
                [&[prog("kp_disassociate", Kprobe)]],
                only_in: Evidence::Full
            ),
            function!(
                "dax_delete_mapping_range",
                args: ["mapping", "start", "end"],
                [&[prog("fe_delete_range", Fentry)]],
                [&[prog("kp_delete_range", Kprobe)]]
            ),
            // Quiet mode before 6.15: the page cache's own range truncation,
            // once per truncate or punch (any file; a file whose last break
            // met no busy page returns at once) instead of once per entry.
            function!(
                "truncate_inode_pages_range",
                args: ["mapping", "lstart", "lend"],
                [&[prog("fe_truncate_range", Fentry)]],
                [&[prog("kp_truncate_range", Kprobe)]],
                only_in: Evidence::Quiet
            ),
            function!(
                "dax_disassociate_entry",
                args: ["entry"],
                [],
                [],
                clones: [&[prog("kp_disassociate_clone", Kprobe)]],
                only_in: Evidence::Full
            ),
        ],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: None,
        quiet: QuietRole::Always,
    },
    HookSpec {
        id: HookId::DeleteEntry,
        purpose:
            "a DAX mapping entry is deleted (truncation, where disassociate is inlined or cloned)",
        targets: &[function!(
            "dax_delete_mapping_entry",
            args: ["mapping", "index"],
            [&[prog("fe_delete_entry", Fentry)]],
            [&[prog("kp_delete_entry", Kprobe)]]
        )],
        attach_all: false,
        wrappers: &[],
        context: false,
        fallback_for: Some((HookId::Disassociate, "dax_disassociate_entry")),
        quiet: QuietRole::Off,
    },
];

/// Where a task asleep in a break-layouts wait shows in its kernel stack
/// (`/proc/PID/task/TID/stack`), for `daxrace doctor`. The innermost
/// frame that names one of these is the wait; a row is simply absent from
/// a kernel that lacks its function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakWait {
    /// The function whose frame a sleeping breaker shows.
    pub function: &'static str,
    /// The filesystem it belongs to (`generic` for the 6.15+ DAX helper,
    /// which ext4 and xfs both call: the inode's filesystem says which).
    pub fs: &'static str,
}

/// Every function a break-layouts waiter sleeps in, across kernels:
/// `ext4_break_layouts` and `xfs_break_dax_layouts` wait themselves before
/// 6.15 (`___wait_var_event` is a macro: no frame of its own); from 6.15
/// both call `dax_break_layout` (and `dax_break_layout_final` on inode
/// eviction), which waits. `xfs_break_layouts` is the caller that may
/// inline `xfs_break_dax_layouts`.
pub static BREAK_WAITS: &[BreakWait] = &[
    BreakWait {
        function: "dax_break_layout",
        fs: "generic",
    },
    BreakWait {
        function: "dax_break_layout_final",
        fs: "generic",
    },
    BreakWait {
        function: "ext4_break_layouts",
        fs: "ext4",
    },
    BreakWait {
        function: "xfs_break_dax_layouts",
        fs: "xfs",
    },
    BreakWait {
        function: "xfs_break_layouts",
        fs: "xfs",
    },
];

/// The break-wait row of a kernel stack frame's function (a clone such as
/// `.isra.0` counts as its function).
pub fn break_wait(function: &str) -> Option<&'static BreakWait> {
    let base = function.split('.').next().unwrap_or(function);
    BREAK_WAITS.iter().find(|w| w.function == base)
}

/// What a break-layouts waiter's wait variable is, relative to its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitVar {
    /// `&page->_refcount` (`wait_var_event(&page->_refcount, ...)`).
    PageRefcount,
    /// The page (folio) itself.
    Page,
}

/// One refcount model of fsdax pages: what a waiter waits on and when its
/// page is idle. The first row whose marker symbol the kernel has applies;
/// the last row has none and applies otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitModel {
    /// A kernel function present only under this model.
    pub marker: Option<&'static str>,
    pub var: WaitVar,
    /// `_refcount` of an idle fsdax page.
    pub idle_refcount: u32,
    pub note: &'static str,
}

/// The models, newest first. Since 38607c62b34b "fs/dax: properly refcount
/// fs dax pages" (v6.15), which added `dax_break_layout`, an idle page is
/// at 0 and waiters wait on the page; before it, at 1 and on `_refcount`.
pub static WAIT_MODELS: &[WaitModel] = &[
    WaitModel {
        marker: Some("dax_break_layout"),
        var: WaitVar::Page,
        idle_refcount: 0,
        note: "6.15+: wait_var_event(page), idle at refcount 0",
    },
    WaitModel {
        marker: None,
        var: WaitVar::PageRefcount,
        idle_refcount: 1,
        note: "before 6.15: wait_var_event(&page->_refcount), idle at refcount 1",
    },
];

/// The model of a kernel, told by which marker symbols it has.
pub fn wait_model(has: impl Fn(&str) -> bool) -> &'static WaitModel {
    WAIT_MODELS
        .iter()
        .find(|m| m.marker.is_none_or(&has))
        .expect("the last model has no marker")
}

/// The kernel's hashed wait queues behind `wait_var_event()`
/// (`__var_waitqueue()` hashes the variable's address into it) and their
/// size (`WAIT_TABLE_BITS` 8), stable since 4.16; and the wake function of
/// every wait-variable entry in them.
pub const WAIT_TABLE: &str = "bit_wait_table";
pub const WAIT_TABLE_SIZE: u32 = 256;
pub const VAR_WAKE_FUNCTION: &str = "var_wake_function";
/// The function that indexes [`WAIT_TABLE`]: where its address is found
/// when the table itself has no symbol (a kernel without
/// CONFIG_KALLSYMS_ALL lists functions only).
pub const WAIT_TABLE_USER: &str = "__var_waitqueue";

pub fn spec(hook: HookId) -> &'static HookSpec {
    HOOKS
        .iter()
        .find(|s| s.id == hook)
        .expect("every HookId has a row in HOOKS")
}

/// Every kernel function target of the table (what symbol lookups ask for).
pub fn function_targets() -> impl Iterator<Item = &'static Target> {
    HOOKS
        .iter()
        .flat_map(|h| h.targets.iter())
        .filter(|t| !t.is_tracepoint())
}

/// Every `(wrapper, callee)` pair of the table.
pub fn wrappers() -> impl Iterator<Item = (&'static str, &'static str)> {
    HOOKS.iter().flat_map(|h| h.wrappers.iter().copied())
}

/// Every kernel function the table names (what kallsyms must be searched for).
pub fn symbols() -> impl Iterator<Item = &'static str> {
    function_targets().map(|t| t.symbol)
}

/// Every tracepoint the table names.
pub fn tracepoints() -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .flat_map(|h| h.targets.iter())
        .filter(|t| t.is_tracepoint())
        .map(|t| t.symbol)
}

/// The hook a kernel function or tracepoint serves; a compiler clone
/// (`name.isra.0`) counts as its function.
pub fn hook_of_symbol(symbol: &str) -> Option<HookId> {
    let base = symbol.split('.').next().unwrap_or(symbol);
    HOOKS
        .iter()
        .find(|h| h.targets.iter().any(|t| t.symbol == base))
        .map(|h| h.id)
}

/// The hook and the program behind a program name as the kernel keeps it
/// (cut to [`KERNEL_PROGRAM_NAME_MAX`] characters): for programs whose links
/// do not say where they are attached (kprobes through BPF links).
pub fn program_by_kernel_name(name: &str) -> Option<(HookId, &'static Program)> {
    HOOKS.iter().find_map(|h| {
        h.targets
            .iter()
            .flat_map(|t| t.programs())
            .find(|p| p.kernel_name() == name)
            .map(|p| (h.id, p))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn break_waits_and_wait_models() {
        assert_eq!(break_wait("ext4_break_layouts").map(|w| w.fs), Some("ext4"));
        assert_eq!(
            break_wait("dax_break_layout.isra.0").map(|w| w.function),
            Some("dax_break_layout")
        );
        assert!(break_wait("ext4_punch_hole").is_none());
        let new = wait_model(|s| s == "dax_break_layout");
        assert_eq!((new.var, new.idle_refcount), (WaitVar::Page, 0));
        let old = wait_model(|_| false);
        assert_eq!((old.var, old.idle_refcount), (WaitVar::PageRefcount, 1));
        assert!(WAIT_MODELS.last().is_some_and(|m| m.marker.is_none()));
    }

    #[test]
    fn every_hook_has_exactly_one_row_and_programs_are_unique() {
        let mut seen = HashSet::new();
        for s in HOOKS {
            assert!(seen.insert(s.id), "{:?} has two rows", s.id);
            assert!(!s.targets.is_empty(), "{:?} has no targets", s.id);
        }
        let mut names = HashMap::new();
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

    #[test]
    fn a_kernel_program_name_names_one_hook_and_one_kind() {
        // Names cut to 15 characters may collide, but only within a hook
        // and a kind, or the bench could not tell them apart.
        let mut by_name: HashMap<&str, (HookId, AttachKind)> = HashMap::new();
        for h in HOOKS {
            for p in h.targets.iter().flat_map(|t| t.programs()) {
                let prev = by_name.insert(p.kernel_name(), (h.id, p.kind));
                assert!(
                    prev.is_none_or(|prev| prev == (h.id, p.kind)),
                    "{} stands for {prev:?} and {:?}",
                    p.kernel_name(),
                    (h.id, p.kind)
                );
            }
        }
        assert_eq!(
            program_by_kernel_name("fe_busy_scan_ra").map(|(h, p)| (h, p.kind)),
            Some((HookId::BusyScan, Fentry))
        );
        assert_eq!(
            program_by_kernel_name("kp_disassociate").map(|(h, p)| (h, p.kind)),
            Some((HookId::Disassociate, Kprobe))
        );
        assert!(program_by_kernel_name("BEGIN").is_none());
    }

    #[test]
    fn symbols_and_their_clones_name_their_hook() {
        assert_eq!(
            hook_of_symbol("dax_disassociate_entry.isra.0"),
            Some(HookId::Disassociate)
        );
        assert_eq!(
            hook_of_symbol("ext4_truncate_enter"),
            Some(HookId::Ext4Truncate)
        );
        assert_eq!(hook_of_symbol("vfs_read"), None);
        assert!(tracepoints().all(|t| hook_of_symbol(t).is_some()));
        assert!(symbols().all(|s| hook_of_symbol(s).is_some()));
    }

    #[test]
    fn every_function_names_the_arguments_its_programs_read() {
        for t in function_targets() {
            assert!(!t.args.is_empty(), "{} has no arguments", t.symbol);
        }
        assert!(HOOKS
            .iter()
            .flat_map(|h| h.targets)
            .filter(|t| t.is_tracepoint())
            .all(|t| t.args.is_empty()));
    }
}
