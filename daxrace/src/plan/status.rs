//! The outcome of attaching each hook, as `daxrace probes`, the metrics and
//! the trace header show it.
use std::collections::BTreeSet;

use daxrace_common::HookId;
use daxrace_plan::{spec, AttachKind};
use serde::Serialize;

use crate::event::HookName;

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
    #[serde(serialize_with = "kind_name")]
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
        let kinds: BTreeSet<&str> = self.attached.iter().map(|a| a.kind.as_str()).collect();
        kinds.into_iter().collect::<Vec<_>>().join("+")
    }

    /// What it attached to, as `ext4_break_layouts [ext4], ...` (sorted,
    /// each once).
    pub fn targets(&self) -> String {
        let to: BTreeSet<String> = self
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

/// An attach kind by the name `daxrace probes` shows (`tp_btf`, `fentry`..).
fn kind_name<S: serde::Serializer>(kind: &AttachKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.as_str())
}

#[cfg(test)]
mod tests {
    use daxrace_plan::AttachKind::*;

    use super::*;

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
    fn attach_kinds_serialise_by_the_names_probes_shows() {
        let mut a = attached_to(HookId::Ext4PunchHole, "ext4_punch_hole").attached[0].clone();
        for kind in AttachKind::ALL {
            a.kind = kind;
            let json = serde_json::to_value(&a).expect("serialises");
            assert_eq!(json["kind"], kind.as_str());
        }
        a.kind = TpBtf;
        assert_eq!(serde_json::to_value(&a).expect("json")["kind"], "tp_btf");
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
