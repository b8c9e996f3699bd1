//! What the detector reports. Every finding carries its own evidence and
//! round-trips through JSON: trace files and `daxrace replay` store them as is.
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{Event, FileOp, Filesystem, PageRef, Task};

/// The kinds of finding. The serialised names are part of the trace format and
/// of the metrics' `kind` label: never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A page was disassociated on truncation while its refcount was above idle.
    TruncateWhilePinned,
    /// A break-layouts call returned 0 although its last busy scan found a page.
    BreakWithoutCleanScan,
    /// `page->mapping` differed from the mapping being disassociated.
    MappingMismatch,
    /// A break-layouts waiter sleeps on a page that went idle without a wake-up.
    LostWakeup,
    /// A break-layouts call waited longer than the threshold on pinned pages.
    /// Not a bug: what operators of pmem hosts want to see.
    Stall,
}

impl FindingKind {
    pub const ALL: [FindingKind; 5] = [
        FindingKind::TruncateWhilePinned,
        FindingKind::BreakWithoutCleanScan,
        FindingKind::MappingMismatch,
        FindingKind::LostWakeup,
        FindingKind::Stall,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::TruncateWhilePinned => "truncate_while_pinned",
            FindingKind::BreakWithoutCleanScan => "break_without_clean_scan",
            FindingKind::MappingMismatch => "mapping_mismatch",
            FindingKind::LostWakeup => "lost_wakeup",
            FindingKind::Stall => "stall",
        }
    }

    /// A kernel bug (data corruption or a hung task) rather than slowness:
    /// `daxrace trace` exits non-zero on these.
    pub fn is_bug(self) -> bool {
        !matches!(self, FindingKind::Stall)
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Timeline entries are the hooks' events themselves, unchanged, so a finding
/// can be checked against the raw trace.
pub type TimelineEntry = Event;

/// One break-layouts call (`ext4_break_layouts`, `xfs_break_dax_layouts` and
/// its caller's retry loop, or `dax_break_layout`) as the detector saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakCall {
    /// Sequence number of the call in this detector's stream (1, 2, ...).
    pub id: u64,
    pub task: Task,
    pub fs: Filesystem,
    pub dev: u32,
    pub ino: u64,
    pub mapping: u64,
    /// The operation that asked for the break, when a context hook saw it.
    pub op: Option<FileOp>,
    pub start_ns: u64,
    /// `None` while the call is still running.
    pub end_ns: Option<u64>,
    pub ret: Option<i64>,
    /// Busy-page scans in the call, and how many of them returned a page.
    pub scans: u32,
    pub busy_scans: u32,
    pub waits: u32,
    /// The page the latest scan returned; `None` after a clean scan (or none yet).
    pub last_busy: Option<PageRef>,
}

/// One finding with the evidence that makes it believable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// Event time (CLOCK_MONOTONIC ns) at which the finding was established.
    pub ts_ns: u64,
    pub fs: Filesystem,
    /// `s_dev` in the kernel's encoding (major << 20 | minor); 0 when unknown.
    pub dev: u32,
    pub ino: u64,
    pub mapping: u64,
    /// The page concerned; 0 when the finding is about a call, not a page.
    pub pfn: u64,
    /// `_refcount` as last seen, and what it means: `refcount - idle` split into
    /// FOLL_PIN pins (`/ pin_bias`) and plain references (`% pin_bias`). `pins`
    /// is `None` when the pin bias is unknown (every extra count is a reference).
    pub refcount: Option<i32>,
    pub pins: Option<u32>,
    pub refs: Option<u32>,
    /// The task whose action is the problem: the truncating task, the task in
    /// the break-layouts call, the stranded waiter.
    pub task: Task,
    /// `lost_wakeup`: the task whose release took the page to idle without a wake-up.
    pub releaser: Option<Task>,
    /// Tasks seen dropping references on the page: who held the pins.
    pub pin_holders: Vec<Task>,
    /// The break-layouts call involved (for a truncation: the truncating task's
    /// latest call on that mapping).
    pub break_call: Option<BreakCall>,
    /// `lost_wakeup`: when the wait started; `stall`: when the call first found
    /// a busy page without a clean scan since.
    pub since_ns: Option<u64>,
    /// `lost_wakeup`: when the page reached idle.
    pub released_ns: Option<u64>,
    /// `lost_wakeup`: how long the waiter has been asleep; `stall`: how long the
    /// call has been blocked.
    pub duration_ns: Option<u64>,
    /// `mapping_mismatch`: what `page->mapping` held.
    pub page_mapping: Option<u64>,
    /// `truncate_while_pinned` established without reading the refcount at
    /// truncation (only `dax_delete_mapping_entry` is hooked, e.g. Debian 6.12):
    /// the page was still busy by the last count seen.
    pub inferred: bool,
    /// That page's transitions and the call's steps, oldest first, bounded.
    pub timeline: Vec<TimelineEntry>,
    /// `lost_wakeup` found by the start-up check of `run` and `trace` (the
    /// waiter was asleep before daxrace attached): no event of it was seen.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seen_at_start: bool,
}

/// Splits `refcount - idle` into pins and references (see [`Finding::pins`]).
pub fn split_refcount(refcount: i32, idle: i32, pin_bias: i32) -> (Option<u32>, u32) {
    let extra = (i64::from(refcount) - i64::from(idle)).max(0) as u32;
    if pin_bias > 0 {
        let bias = pin_bias as u32;
        (Some(extra / bias), extra % bias)
    } else {
        (None, extra)
    }
}

/// `major:minor` of a kernel-encoded `s_dev`.
pub fn format_dev(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// A duration in the unit that reads best.
pub fn format_duration(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

fn who(t: &Task) -> String {
    format!("{}[{}/{}]", t.comm, t.pid, t.tid)
}

impl Finding {
    /// A `lost_wakeup` of a waiter that was asleep before daxrace started
    /// (`daxrace doctor`'s check at the start of `run` and `trace`): its
    /// page is idle and it still sleeps. Built outside the detector, which
    /// never saw that wait begin.
    #[allow(clippy::too_many_arguments)]
    pub fn seen_at_start(
        now_ns: u64,
        fs: Filesystem,
        dev: u32,
        ino: u64,
        mapping: u64,
        pfn: u64,
        refcount: i32,
        pins: Option<u32>,
        refs: u32,
        task: Task,
        asleep_ns: Option<u64>,
    ) -> Finding {
        Finding {
            kind: FindingKind::LostWakeup,
            ts_ns: now_ns,
            fs,
            dev,
            ino,
            mapping,
            pfn,
            refcount: Some(refcount),
            pins,
            refs: Some(refs),
            task,
            releaser: None,
            pin_holders: Vec::new(),
            break_call: None,
            since_ns: asleep_ns.map(|a| now_ns.saturating_sub(a)),
            released_ns: None,
            duration_ns: asleep_ns,
            page_mapping: None,
            inferred: false,
            timeline: Vec::new(),
            seen_at_start: true,
        }
    }

    /// The refcount as words: "refcount 1025 (1 pin)".
    fn refcount_words(&self) -> String {
        let Some(rc) = self.refcount else {
            return "refcount unknown".to_string();
        };
        let mut parts = Vec::new();
        if let Some(p) = self.pins {
            parts.push(format!("{p} pin{}", if p == 1 { "" } else { "s" }));
        }
        if let Some(r) = self.refs {
            if r > 0 || self.pins.is_none() {
                parts.push(format!("{r} ref{}", if r == 1 { "" } else { "s" }));
            }
        }
        if parts.is_empty() {
            format!("refcount {rc}")
        } else {
            format!("refcount {rc} ({})", parts.join(" + "))
        }
    }

    fn call_words(&self) -> String {
        match &self.break_call {
            Some(c) => {
                let ret = c
                    .ret
                    .map_or_else(|| "running".to_string(), |r| format!("ret {r}"));
                format!("break-layouts call #{} ({ret})", c.id)
            }
            None => "no break-layouts call seen".to_string(),
        }
    }

    /// One human line.
    pub fn summary(&self) -> String {
        let head = format!(
            "{}: {} dev {} ino {}",
            self.kind,
            self.fs.as_str(),
            format_dev(self.dev),
            self.ino
        );
        match self.kind {
            FindingKind::TruncateWhilePinned => format!(
                "{head}: pfn {:#x} truncated at {}{} by {} after {}",
                self.pfn,
                self.refcount_words(),
                if self.inferred { " (last seen; inferred)" } else { "" },
                who(&self.task),
                self.call_words()
            ),
            FindingKind::BreakWithoutCleanScan => format!(
                "{head}: {} by {} returned 0 but its last busy scan returned pfn {:#x} at {}",
                self.call_words(),
                who(&self.task),
                self.pfn,
                self.refcount_words()
            ),
            FindingKind::MappingMismatch => format!(
                "{head}: pfn {:#x} has page->mapping {:#x}, disassociated from mapping {:#x} by {}",
                self.pfn,
                self.page_mapping.unwrap_or(0),
                self.mapping,
                who(&self.task)
            ),
            FindingKind::LostWakeup if self.seen_at_start => format!(
                "{head}: waiter {} asleep {} on pfn {:#x} at {}, already asleep when daxrace started: the page is idle and nobody woke it (seen by the start-up check)",
                who(&self.task),
                format_duration(self.duration_ns.unwrap_or(0)),
                self.pfn,
                self.refcount_words()
            ),
            FindingKind::LostWakeup => format!(
                "{head}: waiter {} asleep {} on pfn {:#x}, idle since {} released it ({}) with no wake-up",
                who(&self.task),
                format_duration(self.duration_ns.unwrap_or(0)),
                self.pfn,
                self.releaser
                    .as_ref()
                    .map_or_else(|| "an unseen task".to_string(), who),
                self.released_ns
                    .map_or_else(|| "time unknown".to_string(), |t| format!("at {t} ns")),
            ),
            FindingKind::Stall => {
                let holders = if self.pin_holders.is_empty() {
                    "pin holders not seen yet".to_string()
                } else {
                    let names: Vec<String> = self.pin_holders.iter().map(who).collect();
                    format!("pins dropped by {}", names.join(", "))
                };
                format!(
                    "{head}: {} by {} blocked {} on pfn {:#x} at {}; {holders}",
                    self.call_words(),
                    who(&self.task),
                    format_duration(self.duration_ns.unwrap_or(0)),
                    self.pfn,
                    self.refcount_words()
                )
            }
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}
