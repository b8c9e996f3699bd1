//! Per-hook BPF cost: each tracer's programs grouped by the hook of
//! daxrace's probe plan they serve.
use std::collections::{BTreeMap, BTreeSet};

use daxrace_plan::HookId;

use super::parse::Prog;

/// The bench's name for a hook in its tables (the five ext4 context
/// tracepoints share one line).
fn label(hook: HookId) -> &'static str {
    match hook {
        HookId::Ext4PunchHole
        | HookId::Ext4ZeroRange
        | HookId::Ext4CollapseRange
        | HookId::Ext4InsertRange
        | HookId::Ext4Truncate => "ext4 tracepoints",
        HookId::Ext4Break => "ext4 break-layouts",
        HookId::XfsBreak => "xfs break-layouts",
        HookId::GenericBreak => "dax_break_layout",
        HookId::BusyScan => "busy scan",
        HookId::WaitStart => "wait start",
        HookId::PinDropped => "pin drop",
        HookId::BioRelease => "bio release",
        HookId::WakeUp => "wake_up_var",
        HookId::Disassociate => "disassociate",
        HookId::DeleteEntry => "delete entry",
    }
}

/// The hook a kernel symbol serves in daxrace's probe plan (a clone
/// `name.isra.0` counts as its function).
pub fn hook_of(symbol: &str) -> &'static str {
    daxrace_plan::hook_of_symbol(symbol).map_or("other", label)
}

#[derive(Default, Clone)]
pub struct HookCost {
    pub kinds: BTreeSet<String>,
    pub runs: u64,
    pub ns: u64,
}

impl HookCost {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

/// The hook and attach kind of a daxrace program from its name (as the
/// kernel keeps it: 15 characters), for programs whose links do not say
/// where they are attached (kprobes through BPF links).
pub fn classify_program(name: &str) -> Option<(&'static str, &'static str)> {
    daxrace_plan::program_by_kernel_name(name).map(|(hook, p)| (label(hook), p.kind.as_str()))
}

/// A tracer's programs grouped by hook (a program attached to several
/// symbols of one hook counts once; BEGIN/END uprobes are left out).
pub fn hook_costs(progs: &[Prog]) -> BTreeMap<&'static str, HookCost> {
    let mut out: BTreeMap<&'static str, HookCost> = BTreeMap::new();
    for p in progs {
        let hooks: BTreeSet<&'static str> = p
            .attach
            .iter()
            .filter(|a| !a.starts_with("uprobe") && !a.starts_with("uretprobe"))
            .filter_map(|a| a.split_once(':').map(|(_, s)| hook_of(s)))
            .collect();
        let named = classify_program(&p.name);
        let Some(hook) = hooks.first().copied().or(named.map(|n| n.0)) else {
            continue;
        };
        let h = out.entry(hook).or_default();
        for a in &p.attach {
            if let Some((k, _)) = a.split_once(':') {
                h.kinds.insert(k.to_string());
            }
        }
        if p.attach.is_empty() {
            h.kinds
                .insert(named.map_or(p.kind.clone(), |n| n.1.to_string()));
        }
        h.runs += p.runs;
        h.ns += p.ns;
    }
    out
}
