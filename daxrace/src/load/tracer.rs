//! Loads the eBPF object into the running kernel, attaches the probe plan, and
//! hands out the ring buffer and counters. The only module that speaks aya.
use std::{collections::HashMap, os::fd::AsFd};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        fentry::FEntryLinkId, fexit::FExitLinkId, kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId, tp_btf::BtfTracePointLinkId, BtfTracePoint, FEntry,
        FExit, KProbe, RawTracePoint,
    },
    Ebpf, EbpfLoader,
};
use daxrace_common::{
    BreakStat, Counter, BREAK_STATS_MAP, COUNTERS_MAP, COUNTER_COUNT, EVENTS_MAP,
};

use super::privs::check_privileges;
use crate::{
    event::HookName,
    kernel::{
        btf::{Btf, FuncIds},
        btf_objects,
        facts::KernelFacts,
        kallsyms::Kallsyms,
        ksym,
        patched::{PatchedFunctions, LIVEPATCH_DIR},
    },
    plan::{
        self, AttachKind, AttachPreference, AttachedProgram, Evidence, HookStatus, KernelView,
        PlannedAttach, QuietRole,
    },
};

/// The sweep of the watched pages, test-run on request.
const SWEEP: &str = "rt_sweep_watched";

/// The compiled kernel programs (built by build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/daxrace.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("daxrace needs root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8): run it with sudo")]
    NotPrivileged,
    #[error("cannot read /proc/kallsyms: {0}")]
    Kallsyms(std::io::Error),
    #[error("the kernel refused to create the BPF maps ({0}); is BPF disabled (kernel.unprivileged_bpf_disabled, lockdown) or the memlock limit too low?")]
    Load(#[source] aya::EbpfError),
    #[error("map {0} missing from the eBPF object (build mismatch): rebuild daxrace")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("--strict: hooks not attached: {0}")]
    Strict(String),
    #[error("no hook attached at all on this kernel: see `daxrace probes` for why")]
    NothingAttached,
}

/// Start-up options that shape loading and attaching.
#[derive(Clone, Debug)]
pub struct TracerOptions {
    pub attach: AttachPreference,
    pub strict: bool,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// Attach only these hooks (all when empty).
    pub only: Vec<daxrace_common::HookId>,
    /// Where kernel symbols come from.
    pub symbols: SymbolSource,
    /// Which ext4 operations are recorded.
    pub fs_ops: FsOpRecording,
    /// How much is hooked: the daemon's quiet default, or everything.
    pub evidence: Evidence,
}

/// `--fs-ops`: which ext4 operations (hole punch, truncate...) reach the
/// ring buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FsOpRecording {
    /// Only a task's last operation before a break-layouts call of that task
    /// meets a busy page: what the break was for. The rest are counted
    /// (`fs_op_quiet`).
    #[default]
    Busy,
    /// Every operation, on any ext4 file, DAX or not.
    All,
}

/// `--symbols`: how daxrace learns which kernel functions exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SymbolSource {
    /// Ask the kernel for each symbol the plan needs (a BPF syscall
    /// program, 5.16+), where BTF does not already say; else read
    /// /proc/kallsyms.
    #[default]
    Auto,
    /// Read the whole of /proc/kallsyms (the kernel formats every symbol).
    Kallsyms,
}

impl Default for TracerOptions {
    fn default() -> Self {
        TracerOptions {
            attach: AttachPreference::Auto,
            strict: false,
            ring_buffer_bytes: 1 << 22,
            only: Vec::new(),
            symbols: SymbolSource::Auto,
            fs_ops: FsOpRecording::Busy,
            evidence: Evidence::Full,
        }
    }
}

pub struct Tracer {
    ebpf: Ebpf,
    pub facts: KernelFacts,
    pub statuses: Vec<HookStatus>,
    pub kernel_release: String,
    /// How the kernel's symbols were learned (`lookup` or `kallsyms`).
    pub symbols_from: &'static str,
    symbol_source: SymbolSource,
    /// The plan's functions at their vmlinux BTF ids (fentry/fexit).
    vmlinux_funcs: FuncIds,
    /// aya's model of the whole kernel BTF, parsed on first need (tp_btf).
    btf_full: Option<aya::Btf>,
    /// The BTF of the modules the plan's functions live in (fentry there).
    module_btfs: HashMap<String, FuncIds>,
    /// BPF run-time statistics were enabled (`--bpf-stats`).
    pub stats_enabled: bool,
    attach_pref: AttachPreference,
    only: Vec<daxrace_common::HookId>,
    /// `/proc/modules` as last seen: a module loaded later (xfs) may bring
    /// the symbols a missing hook needs.
    modules_seen: String,
    /// Functions live-patched (or otherwise IPMODIFY'd) as last seen: the
    /// plan keeps BPF trampolines off them.
    pub patched: PatchedFunctions,
    /// The live patches loaded as last seen (a directory listing, cheap to
    /// repeat every tick).
    livepatches_seen: Vec<String>,
    /// Every link attached, by program and symbol, so that a hook can be
    /// taken off one function without touching the others a kprobe
    /// program serves.
    links: HashMap<(&'static str, String), HookLink>,
    pub evidence: Evidence,
    /// Quiet mode: the page hooks, attached only while a page is watched
    /// (their plans, kept up to date with the kernel's changes).
    page_hooks: Vec<PlannedAttach>,
    page_hooks_on: bool,
    /// The sweep of the watched pages, run on request
    /// (`rt_sweep_watched`: samples their refcounts, ends stale watches,
    /// closes the page gate), where it loaded.
    sweep: Option<std::os::fd::OwnedFd>,
}

/// Why a page hook is not attached in quiet mode, as statuses show it.
pub const PAGE_HOOK_STANDBY: &str =
    "quiet mode: attached only while a busy page is watched (--evidence full keeps it attached)";
/// Why a per-entry hook is not planned in quiet mode.
pub const PER_ENTRY_OFF: &str =
    "quiet mode: truncation is seen once per range by disassociate (--evidence full hooks every entry)";

/// One attachment, as aya names it, to detach it later.
enum HookLink {
    TpBtf(BtfTracePointLinkId),
    RawTracepoint(RawTracePointLinkId),
    Fentry(FEntryLinkId),
    Fexit(FExitLinkId),
    Kprobe(KProbeLinkId),
}

/// What changed under a running tracer, for the caller to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelChange {
    /// A hook that was missing attached: a module with its symbols appeared.
    Attached(HookName),
    /// A live patch now covers a function a hook had a BPF trampoline on:
    /// the hook moved to kprobes (or is missing, with the reason).
    MovedOffTrampoline {
        hook: HookName,
        function: String,
        by: String,
        /// The attach kinds afterwards (empty: nothing could replace it).
        now: Vec<AttachKind>,
        /// Why the alternatives failed, when `now` is empty.
        errors: Vec<String>,
    },
}

impl std::fmt::Display for KernelChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelChange::Attached(h) => {
                write!(f, "{h} attached (a module with its symbols was loaded)")
            }
            KernelChange::MovedOffTrampoline {
                hook,
                function,
                by,
                now,
                errors,
            } => {
                write!(
                    f,
                    "{function} is now live-patched ({by}): {hook} moved off its BPF trampoline "
                )?;
                if now.is_empty() {
                    write!(f, "and could not attach otherwise: {}", errors.join("; "))?;
                    if errors.iter().any(|e| e.contains("Permission denied")) {
                        // Debian's kernel.perf_event_paranoid=3 refuses
                        // perf_event_open (kprobes) without CAP_SYS_ADMIN,
                        // which `run` drops once attached.
                        write!(
                            f,
                            ". The patch stays in force; to trace {function} again, restart daxrace (it plans kprobes there from the start) or run it with --keep-caps"
                        )?;
                    }
                    Ok(())
                } else {
                    let kinds: Vec<&str> = now.iter().map(|k| k.as_str()).collect();
                    write!(f, "to {}", kinds.join("+"))
                }
            }
        }
    }
}

/// The kernel's BTF, indexed for the functions and tracepoints the plan names.
fn read_btf() -> Option<Btf> {
    let mut btf = Btf::from_kernel().ok()?;
    let funcs: Vec<&str> = plan::symbols().collect();
    let tracepoints: Vec<&str> = plan::tracepoints().collect();
    btf.index(&funcs, &tracepoints);
    Some(btf)
}

/// The BTF of each module the plan's functions live in, for the functions
/// the plan names. A module without BTF is left out: its hooks use kprobes.
fn read_module_btfs(btf: Option<&Btf>, kallsyms: &Kallsyms) -> HashMap<String, FuncIds> {
    let Some(btf) = btf else {
        return HashMap::new();
    };
    let funcs: Vec<&str> = plan::symbols().collect();
    plan::modules(kallsyms)
        .into_iter()
        .filter_map(|m| match btf.module(&m, &funcs) {
            Ok(b) => Some((m, b)),
            Err(e) => {
                log::debug!("module {m}: no BTF for fentry ({e})");
                None
            }
        })
        .collect()
}

/// The symbols the plan and the facts need, and where they came from:
/// looked up one by one where the kernel answers such lookups, else read
/// from /proc/kallsyms.
fn read_symbols(
    source: SymbolSource,
    btf: Option<&Btf>,
) -> Result<(Kallsyms, &'static str), TraceError> {
    if let (SymbolSource::Auto, Some(btf)) = (source, btf) {
        let looked_up = ksym::SymbolLookup::load().and_then(|l| ksym::plan_symbols(&l, btf));
        match looked_up {
            Ok(Some(k)) => return Ok((k, "lookup")),
            Ok(None) => log::debug!("a cloned function needs the full symbol list"),
            Err(e) => log::debug!(
                "no symbol lookups here ({e}): reading {}",
                crate::kernel::kallsyms::KALLSYMS
            ),
        }
    }
    let k = read_kallsyms().map_err(TraceError::Kallsyms)?;
    Ok((k, "kallsyms"))
}

/// The symbols the plan and the facts need, from /proc/kallsyms.
fn read_kallsyms() -> std::io::Result<Kallsyms> {
    let wanted: Vec<&str> = plan::symbols()
        .chain(crate::kernel::facts::SYMBOLS.iter().copied())
        .collect();
    Kallsyms::read(&wanted)
}

fn read_modules() -> String {
    std::fs::read_to_string("/proc/modules")
        .map(|s| {
            // Names only: the use counts change all the time.
            s.lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct. Failure only matters on
    // kernels before 5.11 (no memcg accounting), where load will then say so.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

impl Tracer {
    /// Loads the object with the kernel facts; attaches nothing yet.
    pub fn load(opts: &TracerOptions) -> Result<Tracer, TraceError> {
        check_privileges()?;
        raise_memlock();
        let t = std::time::Instant::now();
        let btf = read_btf();
        log::debug!("BTF read in {:?}", t.elapsed());
        let (kallsyms, symbols_from) = read_symbols(opts.symbols, btf.as_ref())?;
        log::debug!("symbols ({symbols_from}) in {:?}", t.elapsed());
        let mut facts = KernelFacts::gather(btf.as_ref(), &kallsyms);
        facts.config.record_every_fs_op = (opts.fs_ops == FsOpRecording::All) as u32;
        facts.config.quiet = (opts.evidence == Evidence::Quiet) as u32;
        log::debug!("facts in {:?}", t.elapsed());
        let vmlinux_funcs = btf.as_ref().map(Btf::func_ids).unwrap_or_default();
        let module_btfs = read_module_btfs(btf.as_ref(), &kallsyms);
        let livepatches_seen =
            PatchedFunctions::livepatch_names(std::path::Path::new(LIVEPATCH_DIR));
        let patched = PatchedFunctions::read();
        log::debug!("module BTF in {:?}", t.elapsed());
        // A copy to patch, as aligned as the original: the ELF parser reads
        // its headers in place.
        let mut words = vec![0u64; OBJECT.len().div_ceil(8)];
        // SAFETY: the u64 buffer holds at least OBJECT.len() bytes, and u8
        // has no alignment or validity requirement.
        let object = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), OBJECT.len())
        };
        object.copy_from_slice(OBJECT);
        let kfunc_calls = daxrace_common::config::patch_kfunc_calls(object, facts.rdonly_cast_id);
        log::debug!(
            "{kfunc_calls} bpf_rdonly_cast call(s) {}",
            if facts.rdonly_cast_id.is_some() {
                "linked"
            } else {
                "turned into helper reads (no such kfunc)"
            }
        );
        // The object has no CO-RE relocations: the loader needs no kernel BTF
        // (`btf(None)`). aya 0.14's `new()` parses vmlinux's BTF all the same
        // and nothing public avoids it: about 25 ms natively, once per start
        // (vendor/aya/PATCHES.md). aya 0.15 reads it only for objects that
        // need it.
        let ebpf = EbpfLoader::new()
            .btf(None)
            .override_global(daxrace_common::CONFIG_GLOBAL, &facts.config, true)
            .map_max_entries(EVENTS_MAP, opts.ring_buffer_bytes)
            .load(object)
            .map_err(TraceError::Load)?;
        log::debug!("object loaded in {:?}", t.elapsed());
        let mut tracer = Tracer {
            ebpf,
            facts,
            statuses: Vec::new(),
            kernel_release: kernel_release(),
            symbols_from,
            symbol_source: opts.symbols,
            vmlinux_funcs,
            btf_full: None,
            module_btfs,
            stats_enabled: false,
            attach_pref: opts.attach,
            only: opts.only.clone(),
            modules_seen: read_modules(),
            patched,
            livepatches_seen,
            links: HashMap::new(),
            evidence: opts.evidence,
            page_hooks: Vec::new(),
            page_hooks_on: false,
            sweep: None,
        };
        let plan = plan::resolve(
            &KernelView {
                kallsyms: &kallsyms,
                btf: btf.as_ref(),
                modules: &tracer.module_btfs,
                patched: &tracer.patched,
            },
            opts.attach,
            opts.evidence,
        );
        for p in plan {
            if !opts.only.is_empty() && !opts.only.contains(&p.hook) {
                continue;
            }
            let status = match plan::standby_reason(p.hook, &tracer.statuses) {
                Some(why) => HookStatus::standby(p.hook, why),
                None if tracer.attaches_on_demand(&p) => {
                    tracer.preload(&p);
                    tracer.page_hooks.push(p.clone());
                    HookStatus::standby(p.hook, PAGE_HOOK_STANDBY.into())
                }
                None => tracer.attach_hook(&p),
            };
            tracer.statuses.push(status);
        }
        if opts.evidence == Evidence::Quiet {
            for spec in plan::HOOKS.iter().filter(|s| s.quiet == QuietRole::Off) {
                if opts.only.is_empty() || opts.only.contains(&spec.id) {
                    tracer
                        .statuses
                        .push(HookStatus::standby(spec.id, PER_ENTRY_OFF.into()));
                }
            }
        }
        tracer.sweep = tracer.load_sweep();
        if tracer.sweep.is_none() {
            tracer.facts.warnings.push(format!(
                "{SWEEP} did not load (it needs bpf_loop, 5.17+): once a page was watched the page hooks keep looking at every page{}",
                if opts.evidence == Evidence::Quiet {
                    ", and a pin dropped before they attach is not seen (--evidence full sees it)"
                } else {
                    ""
                }
            ));
        }
        log::debug!("plan attached in {:?}", t.elapsed());
        if tracer.statuses.iter().all(|s| !s.is_attached()) {
            return Err(TraceError::NothingAttached);
        }
        if opts.strict {
            let missing: Vec<_> = tracer
                .statuses
                .iter()
                .filter(|s| !s.is_served())
                .map(|s| s.hook.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(TraceError::Strict(missing.join(", ")));
            }
        }
        Ok(tracer)
    }

    /// Follows the kernel while running, once a tick: attaches hooks that
    /// were missing if a module appeared (xfs is often loaded after the
    /// daemon starts), and takes BPF trampolines off functions a live patch
    /// loaded since then covers. Returns what changed.
    ///
    /// A live patch loaded while a trampoline sits on its function is
    /// applied by the kernel before this tick sees it: for up to a tick the
    /// trampoline shares the function with it (README, "Live patches").
    pub fn follow_kernel_changes(&mut self) -> Vec<KernelChange> {
        let modules = read_modules();
        let livepatches = PatchedFunctions::livepatch_names(std::path::Path::new(LIVEPATCH_DIR));
        if modules == self.modules_seen && livepatches == self.livepatches_seen {
            return Vec::new();
        }
        self.modules_seen = modules;
        self.livepatches_seen = livepatches;
        self.patched = PatchedFunctions::read();
        let btf = read_btf();
        let Ok((kallsyms, _)) = read_symbols(self.symbol_source, btf.as_ref()) else {
            return Vec::new();
        };
        self.module_btfs = read_module_btfs(btf.as_ref(), &kallsyms);
        let plan = plan::resolve(
            &KernelView {
                kallsyms: &kallsyms,
                btf: btf.as_ref(),
                modules: &self.module_btfs,
                patched: &self.patched,
            },
            self.attach_pref,
            self.evidence,
        );
        let mut changes = Vec::new();
        for p in plan {
            if let Some(kept) = self.page_hooks.iter_mut().find(|k| k.hook == p.hook) {
                // Attached again from this plan the next time a page is
                // watched (live patches and modules as they are now).
                *kept = p.clone();
                if !self.page_hooks_on {
                    continue;
                }
            }
            let Some(i) = self.statuses.iter().position(|s| s.hook.0 == p.hook) else {
                continue;
            };
            if !self.only.is_empty() && !self.only.contains(&p.hook) {
                continue;
            }
            let newly_patched = self.statuses[i]
                .attached
                .iter()
                .filter(|a| matches!(a.kind, AttachKind::Fentry | AttachKind::Fexit))
                .find_map(|a| {
                    self.patched
                        .modifier(&a.symbol)
                        .map(|m| (a.symbol.clone(), m.by.clone()))
                });
            if let Some((function, by)) = newly_patched {
                let old = std::mem::take(&mut self.statuses[i].attached);
                self.detach(&old);
                let status = self.attach_hook(&p);
                changes.push(KernelChange::MovedOffTrampoline {
                    hook: status.hook,
                    function,
                    by,
                    now: status
                        .attached
                        .iter()
                        .map(|a| a.kind)
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    errors: status.errors.clone(),
                });
                self.statuses[i] = status;
                continue;
            }
            if self.statuses[i].is_served() {
                continue;
            }
            let status = self.attach_hook(&p);
            if status.is_attached() {
                changes.push(KernelChange::Attached(status.hook));
            }
            self.statuses[i] = status;
        }
        changes
    }

    /// Detaches these links (a hook's, or a flavour's that did not attach
    /// whole). A link the kernel already dropped is not an error worth
    /// more than a debug line.
    fn detach(&mut self, attached: &[AttachedProgram]) {
        for a in attached {
            let Some(link) = self.links.remove(&(a.program, a.symbol.clone())) else {
                continue;
            };
            let Some(prog) = self.ebpf.program_mut(a.program) else {
                continue;
            };
            let r = match link {
                HookLink::TpBtf(id) => {
                    <&mut BtfTracePoint>::try_from(prog).and_then(|p| p.detach(id))
                }
                HookLink::RawTracepoint(id) => {
                    <&mut RawTracePoint>::try_from(prog).and_then(|p| p.detach(id))
                }
                HookLink::Fentry(id) => <&mut FEntry>::try_from(prog).and_then(|p| p.detach(id)),
                HookLink::Fexit(id) => <&mut FExit>::try_from(prog).and_then(|p| p.detach(id)),
                HookLink::Kprobe(id) => <&mut KProbe>::try_from(prog).and_then(|p| p.detach(id)),
            };
            if let Err(e) = r {
                log::debug!("detaching {} from {}: {e}", a.program, a.symbol);
            }
        }
    }

    fn attach_hook(&mut self, p: &PlannedAttach) -> HookStatus {
        let spec = plan::spec(p.hook);
        let mut status = HookStatus {
            hook: HookName(p.hook),
            purpose: spec.purpose,
            context: spec.context,
            attached: Vec::new(),
            errors: p.missing.iter().cloned().collect(),
            standby: None,
            avoided: p.avoided.clone(),
        };
        for cand in &p.candidates {
            let mut ok = false;
            for flavour in &cand.flavours {
                let mut links = Vec::new();
                let mut failed = None;
                for program in flavour.programs {
                    let t = std::time::Instant::now();
                    let result = self.attach_program(
                        program.name,
                        program.kind,
                        &cand.attach_to,
                        cand.module.as_deref(),
                    );
                    let verified = self
                        .ebpf
                        .program(program.name)
                        .and_then(|p| p.info().ok())
                        .and_then(|i| i.verified_instruction_count());
                    log::debug!(
                        "{} {} on {}: {:?} in {:?} ({} instructions verified)",
                        program.kind.as_str(),
                        program.name,
                        cand.attach_to,
                        result.as_ref().map(|_| "ok"),
                        t.elapsed(),
                        verified.map_or("?".to_string(), |n| n.to_string())
                    );
                    match result {
                        Ok(()) => links.push(AttachedProgram {
                            symbol: cand.attach_to.clone(),
                            module: cand.module.clone(),
                            program: program.name,
                            kind: program.kind,
                        }),
                        Err(e) => {
                            failed = Some(format!(
                                "{} {} on {}: {e}",
                                program.kind.as_str(),
                                program.name,
                                cand.attach_to
                            ));
                            break;
                        }
                    }
                }
                // A flavour whose programs did not all attach would record
                // half of a hook (an entry without its return): it counts as
                // failed, and the links that did attach come off again, so
                // that the next flavour is not doubled by them.
                match failed {
                    None => {
                        status.attached.extend(links);
                        ok = true;
                        break;
                    }
                    Some(e) => {
                        self.detach(&links);
                        status.errors.push(e);
                    }
                }
            }
            if ok && !spec.attach_all {
                break;
            }
        }
        status
    }

    fn attach_program(
        &mut self,
        name: &'static str,
        kind: AttachKind,
        target: &str,
        module: Option<&str>,
    ) -> Result<(), String> {
        let link = self.attach_link(name, kind, target, module)?;
        self.links.insert((name, target.to_string()), link);
        Ok(())
    }

    fn attach_link(
        &mut self,
        name: &'static str,
        kind: AttachKind,
        target: &str,
        module: Option<&str>,
    ) -> Result<HookLink, String> {
        // A program loads once (a kprobe program may serve several symbols);
        // one the kernel refused may be tried again later.
        let first_load = self.ebpf.program(name).is_some_and(|p| p.fd().is_err());
        if kind == AttachKind::TpBtf && self.btf_full.is_none() {
            // BTF tracepoints need the typedefs aya's model of the whole
            // BTF has; only kernels with such a tracepoint in vmlinux pay.
            self.btf_full = aya::Btf::from_sys_fs().ok();
        }
        // fentry/fexit: the function's BTF id, and for a module function the
        // module's BTF object that id belongs to.
        let by_id = match kind {
            AttachKind::Fentry | AttachKind::Fexit if first_load => {
                Some(self.btf_func(target, module)?)
            }
            _ => None,
        };
        let btf_full = self.btf_full.as_ref();
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?;
        let e = |e: aya::programs::ProgramError| {
            // The whole verifier log, for `RUST_LOG=daxrace=debug`.
            log::debug!("{name} on {target}: {e}");
            short_error(&e)
        };
        match kind {
            AttachKind::TpBtf => {
                let p: &mut BtfTracePoint = prog.try_into().map_err(e)?;
                let btf = btf_full.ok_or("no kernel BTF")?;
                if first_load {
                    p.load(target, btf).map_err(e)?;
                }
                p.attach().map(HookLink::TpBtf).map_err(e)
            }
            AttachKind::RawTracepoint => {
                let p: &mut RawTracePoint = prog.try_into().map_err(e)?;
                if first_load {
                    p.load().map_err(e)?;
                }
                p.attach(target).map(HookLink::RawTracepoint).map_err(e)
            }
            AttachKind::Fentry => {
                let p: &mut FEntry = prog.try_into().map_err(e)?;
                if let Some((id, obj)) = by_id {
                    p.load_by_btf_id(id, obj).map_err(e)?;
                }
                p.attach().map(HookLink::Fentry).map_err(e)
            }
            AttachKind::Fexit => {
                let p: &mut FExit = prog.try_into().map_err(e)?;
                if let Some((id, obj)) = by_id {
                    p.load_by_btf_id(id, obj).map_err(e)?;
                }
                p.attach().map(HookLink::Fexit).map_err(e)
            }
            AttachKind::Kprobe | AttachKind::Kretprobe => {
                let p: &mut KProbe = prog.try_into().map_err(e)?;
                if first_load {
                    p.load().map_err(e)?;
                }
                p.attach(target, 0).map(HookLink::Kprobe).map_err(e)
            }
        }
    }

    /// The BTF id of `target`, and for a module function the module's BTF
    /// object that id belongs to: what a fentry/fexit program loads against.
    fn btf_func(
        &self,
        target: &str,
        module: Option<&str>,
    ) -> Result<(u32, Option<std::os::fd::OwnedFd>), String> {
        Ok(match module {
            None => (
                self.vmlinux_funcs
                    .func_id(target)
                    .ok_or_else(|| format!("no vmlinux BTF for {target}"))?,
                None,
            ),
            Some(m) => (
                self.module_btfs
                    .get(m)
                    .and_then(|b| b.func_id(target))
                    .ok_or_else(|| format!("module {m} has no BTF for {target}"))?,
                Some(
                    btf_objects::module_btf_fd(m)
                        .map_err(|err| format!("module {m}'s BTF object: {err}"))?,
                ),
            ),
        })
    }

    /// Loads (verifies) an on-demand page hook's programs now, so that
    /// attaching them when a page turns busy is a trampoline update, not a
    /// verifier run on the traced host's CPU at the moment it matters. A
    /// program that does not load here is tried again at attach time.
    fn preload(&mut self, p: &PlannedAttach) {
        let Some(c) = p.candidates.first() else {
            return;
        };
        let Some(f) = c.flavours.first() else { return };
        for pr in f.programs {
            let name = pr.kernel_name();
            if self.ebpf.program(name).is_none_or(|p| p.fd().is_ok()) {
                continue;
            }
            let loaded = self
                .btf_func(&c.attach_to, c.module.as_deref())
                .and_then(|(id, obj)| {
                    let prog = self.ebpf.program_mut(name).ok_or("missing")?;
                    let r = match pr.kind {
                        AttachKind::Fentry => <&mut FEntry>::try_from(prog)
                            .map_err(|e| short_error(&e))?
                            .load_by_btf_id(id, obj),
                        AttachKind::Fexit => <&mut FExit>::try_from(prog)
                            .map_err(|e| short_error(&e))?
                            .load_by_btf_id(id, obj),
                        _ => return Ok(()),
                    };
                    r.map_err(|e| short_error(&e))
                });
            if let Err(e) = loaded {
                log::debug!("{name}: not preloaded: {e}");
            }
        }
    }

    /// Quiet mode's page hooks attach later, when a page is watched, where
    /// their plan puts BPF trampolines first: attaching those needs no
    /// capability the daemon drops. A page hook that would be a kprobe
    /// (perf_event_open wants CAP_SYS_ADMIN on Debian) attaches now.
    fn attaches_on_demand(&self, p: &PlannedAttach) -> bool {
        self.evidence == Evidence::Quiet
            && plan::spec(p.hook).quiet == QuietRole::WhileWatched
            && p.candidates.first().is_some_and(|c| {
                c.flavours.first().is_some_and(|f| {
                    f.programs
                        .iter()
                        .all(|pr| matches!(pr.kind, AttachKind::Fentry | AttachKind::Fexit))
                })
            })
    }

    /// Whether quiet mode's page hooks are attached now (always true in
    /// full mode, where they never come off).
    pub fn page_hooks_on(&self) -> bool {
        self.page_hooks.is_empty() || self.page_hooks_on
    }

    /// Attaches quiet mode's page hooks (a page is watched). Returns what
    /// could not attach, one line per hook.
    pub fn attach_page_hooks(&mut self) -> Vec<String> {
        if self.page_hooks_on() {
            return Vec::new();
        }
        self.page_hooks_on = true;
        let mut errors = Vec::new();
        for p in self.page_hooks.clone() {
            let status = self.attach_hook(&p);
            if !status.is_attached() {
                errors.push(format!("{}: {}", status.hook, status.errors.join("; ")));
            }
            if let Some(s) = self.statuses.iter_mut().find(|s| s.hook.0 == p.hook) {
                *s = status;
            }
        }
        errors
    }

    /// Detaches quiet mode's page hooks (no page is watched any more).
    pub fn detach_page_hooks(&mut self) {
        if self.page_hooks.is_empty() || !self.page_hooks_on {
            return;
        }
        self.page_hooks_on = false;
        for hook in self.page_hooks.iter().map(|p| p.hook).collect::<Vec<_>>() {
            let Some(i) = self.statuses.iter().position(|s| s.hook.0 == hook) else {
                continue;
            };
            let old = std::mem::take(&mut self.statuses[i].attached);
            self.detach(&old);
            self.statuses[i] = HookStatus::standby(hook, PAGE_HOOK_STANDBY.into());
        }
    }

    /// Loads the sweep (never attached). Without it (a kernel too old for
    /// `bpf_loop`) both modes still work: the page gate stays open once a
    /// page was watched, and in quiet mode a pin dropped while the page
    /// hooks were off is not seen.
    fn load_sweep(&mut self) -> Option<std::os::fd::OwnedFd> {
        let prog = self.ebpf.program_mut(SWEEP)?;
        let p: &mut RawTracePoint = prog.try_into().ok()?;
        if let Err(e) = p.load() {
            log::warn!("{SWEEP}: {}", short_error(&e));
            return None;
        }
        p.fd().ok()?.as_fd().try_clone_to_owned().ok()
    }

    /// Runs the sweep of the watched pages (`daxrace_common::SweepFlags`): with
    /// `SAMPLE`, each watched page whose refcount changed since it was
    /// last reported becomes a `PageSampled` record in the ring; with
    /// `END_IDLE`, stale watches of idle pages end and, with none left, the
    /// page gate closes. Returns the watches left, or `None` without the
    /// sweep.
    pub fn sweep_watched(&self, flags: u64) -> std::io::Result<Option<u32>> {
        let Some(fd) = &self.sweep else {
            return Ok(None);
        };
        let mut args = [flags];
        let left = crate::kernel::bpf_sys::prog_test_run(fd.as_fd(), &mut args)?;
        Ok(Some(left.max(0) as u32))
    }

    /// Takes the ring buffer (once) for the event reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, TraceError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(TraceError::MissingMap(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(|source| TraceError::Map {
            name: EVENTS_MAP,
            source,
        })
    }

    /// Per-CPU counters summed over CPUs, indexed by [`Counter`].
    pub fn counters(&self) -> Result<KernelCounters, TraceError> {
        let mut out = KernelCounters::default();
        for i in 0..COUNTER_COUNT {
            out.values[i as usize] = self.per_cpu::<u64>(COUNTERS_MAP, i)?.iter().sum();
        }
        out.recursion_misses = self.recursion_misses();
        Ok(out)
    }

    /// Entry `index` of the per-CPU array `name`, one value per CPU.
    fn per_cpu<V: aya::Pod>(
        &self,
        name: &'static str,
        index: u32,
    ) -> Result<aya::maps::PerCpuValues<V>, TraceError> {
        let map = self.ebpf.map(name).ok_or(TraceError::MissingMap(name))?;
        let map_err = |source| TraceError::Map { name, source };
        PerCpuArray::<&MapData, V>::try_from(map)
            .map_err(map_err)?
            .get(&index, 0)
            .map_err(map_err)
    }

    /// Runs the kernel skipped, over every loaded program: one that moved
    /// off a function stays loaded, so its count is kept and the running
    /// total never goes back.
    fn recursion_misses(&self) -> u64 {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| btf_objects::prog_recursion_misses(fd.as_fd()).ok())
            .sum()
    }

    /// The kernel's break-layouts statistics, summed over CPUs.
    pub fn break_stats(&self) -> Result<BreakStats, TraceError> {
        let per_cpu = self.per_cpu::<[u64; BreakStat::ENTRIES as usize]>(BREAK_STATS_MAP, 0)?;
        let mut out = BreakStats::default();
        for row in per_cpu.iter() {
            for fs in 0..BreakStat::FS_KINDS {
                for slot in 0..BreakStat::PER_FS {
                    out.per_fs[fs as usize][slot as usize] +=
                        row[BreakStat::index(fs, slot) as usize];
                }
            }
        }
        Ok(out)
    }

    /// BPF run statistics per attached program: (name, run count, run time
    /// ns). Zero unless statistics are enabled (`--bpf-stats`).
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        if !self.stats_enabled {
            return out;
        }
        let attached: std::collections::BTreeSet<&'static str> = self
            .statuses
            .iter()
            .flat_map(|s| s.attached.iter().map(|a| a.program))
            .collect();
        for name in attached {
            let Some(prog) = self.ebpf.program(name) else {
                continue;
            };
            if let Ok(info) = prog.info() {
                out.push((
                    name.to_string(),
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ));
            }
        }
        out.sort();
        out
    }
}

/// The kernel's break-layouts statistics at one moment: per [`FsKind`]
/// value, the [`BreakStat`] slots (log2 duration buckets, errors, sum).
///
/// [`FsKind`]: daxrace_common::FsKind
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakStats {
    pub per_fs: [[u64; BreakStat::PER_FS as usize]; BreakStat::FS_KINDS as usize],
}

impl Default for BreakStats {
    fn default() -> Self {
        BreakStats {
            per_fs: [[0; BreakStat::PER_FS as usize]; BreakStat::FS_KINDS as usize],
        }
    }
}

impl BreakStats {
    /// Calls of filesystem kind `fs`, and how many of them failed.
    pub fn calls(&self, fs: usize) -> (u64, u64) {
        let row = &self.per_fs[fs];
        let calls = row[..BreakStat::BUCKETS as usize].iter().sum();
        (calls, row[BreakStat::ERRORS as usize])
    }
}

/// The kernel-side counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub values: [u64; COUNTER_COUNT as usize],
    /// Program runs the kernel skipped for recursion
    /// (`bpf_prog_info.recursion_misses`, summed): lost records.
    pub recursion_misses: u64,
}

/// The lost-event reason for [`KernelCounters::recursion_misses`].
pub const RECURSION_MISSES: &str = "recursion_misses";

impl KernelCounters {
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize]
    }
}

/// aya's errors can carry a whole verifier log; one line is what a status needs.
fn short_error(e: &aya::programs::ProgramError) -> String {
    // aya keeps the errno of a failed system call in the error's source.
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s = format!("{s}: {c}");
        cause = c.source();
    }
    if s.contains("event_source/devices/kprobe") {
        return "kprobes are not available on this kernel (CONFIG_KPROBES off?)".into();
    }
    if s.contains("BPF_PROG_LOAD") && s.contains("os error 1)") {
        return "the kernel refused to load the program (EPERM: lockdown, or no fentry on this kernel)"
            .into();
    }
    let first = s.split(". Verifier output").next().unwrap_or(&s);
    let first: String = first.chars().take(200).collect();
    match too_old_for(&s) {
        Some(why) => format!("{first}: {why}"),
        None => first,
    }
}

/// What a verifier refusal means when the kernel predates what the program
/// uses: a helper it does not know (`invalid func unknown#N`), or a helper
/// callback (`bpf_loop`'s), which kernels before 5.13 count wrongly
/// against the object's function info. Measured on Debian 11's 5.10.
fn too_old_for(verifier: &str) -> Option<&'static str> {
    if verifier.contains("func_info doesn't match number of subprogs")
        || verifier.contains("invalid func unknown#")
    {
        Some("this kernel is older than the program: it needs bpf_loop and its callbacks (Linux 5.17 or later)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_too_old_for_a_program_is_named() {
        // Debian 11's 5.10, loading the truncation hook (bpf_loop callbacks).
        let log = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: number of funcs in func_info doesn't match number of subprogs";
        assert!(too_old_for(log).is_some_and(|w| w.contains("5.17")));
        assert!(too_old_for("4: (85) call unknown#184\ninvalid func unknown#184").is_some());
        assert_eq!(too_old_for("R1 invalid mem access 'scalar'"), None);
    }

    #[test]
    fn a_hook_that_cannot_come_back_says_how_to_get_it() {
        let moved = KernelChange::MovedOffTrampoline {
            hook: HookName(daxrace_common::HookId::Ext4Break),
            function: "ext4_break_layouts".into(),
            by: "live patch p".into(),
            now: vec![AttachKind::Kprobe, AttachKind::Kretprobe],
            errors: Vec::new(),
        };
        let s = moved.to_string();
        assert!(s.contains("now live-patched (live patch p)"), "{s}");
        assert!(s.ends_with("to kprobe+kretprobe"), "{s}");
        let refused = KernelChange::MovedOffTrampoline {
            hook: HookName(daxrace_common::HookId::Ext4Break),
            function: "ext4_break_layouts".into(),
            by: "live patch p".into(),
            now: Vec::new(),
            errors: vec!["kprobe kp_ext4_break on ext4_break_layouts: `perf_event_open` failed: Permission denied (os error 13)".into()],
        };
        let s = refused.to_string();
        assert!(s.contains("could not attach otherwise: kprobe"), "{s}");
        assert!(s.contains("restart daxrace"), "{s}");
    }
}
