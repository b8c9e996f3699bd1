//! The end-of-run report for `trace` and `replay`: findings with their
//! evidence, the coverage line, counts by hook and what was lost.
use std::{collections::BTreeMap, fmt::Write as _};

use crate::detect::{Coverage, DroppedState, Finding, WaitEnds};

/// Everything the report shows, gathered by the caller.
pub struct RunSummary<'a> {
    pub findings: &'a [Finding],
    pub coverage: &'a Coverage,
    pub dropped: &'a DroppedState,
    pub events_by_hook: &'a BTreeMap<&'static str, u64>,
    /// Lost before the detector, by reason (ring buffer full, ...).
    pub lost: &'a BTreeMap<String, u64>,
    pub decode_errors: u64,
    pub unrecorded: Unrecorded,
}

/// What the kernel counted instead of recording: calls that never met a
/// busy page cost no record (see `Counter::BreakClean`, `Counter::ScanQuiet`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unrecorded {
    pub clean_breaks: u64,
    pub quiet_scans: u64,
    /// 2 MiB entries truncated (see `Counter::PmdEntry`).
    pub pmd_entries: u64,
}

impl Unrecorded {
    /// From kernel counters by name (a live run's, or a trace footer's).
    pub fn from_counters(counters: &BTreeMap<String, u64>) -> Unrecorded {
        let get = |c: daxrace_common::Counter| counters.get(c.as_str()).copied().unwrap_or(0);
        Unrecorded {
            clean_breaks: get(daxrace_common::Counter::BreakClean),
            quiet_scans: get(daxrace_common::Counter::ScanQuiet),
            pmd_entries: get(daxrace_common::Counter::PmdEntry),
        }
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

/// One line that says whether the run could have seen the race at all.
pub fn coverage_line(c: &Coverage, u: Unrecorded) -> String {
    let breaks = c.breaks_started.total() + u.clean_breaks;
    let verdict = if c.reached_race_window() {
        "the race window was reached"
    } else if breaks == 0 {
        "NO break-layouts call ran: this run says nothing about the race"
    } else {
        "no busy scan found a pinned page: the race window was NOT reached"
    };
    format!(
        "coverage: {breaks} break-layouts calls, {} busy scans ({} found a pinned page), {} waits ({} total, {} max), {} truncations; {verdict}",
        c.busy_scans + u.quiet_scans,
        c.busy_scans_with_page,
        c.waits,
        secs(c.wait_ns_total),
        secs(c.wait_ns_max),
        c.truncations + c.delete_entries,
    )
}

/// How the waits ended (see [`WaitEnds`]): every wait should have been
/// woken, found its page idle or been interrupted; the rest is named.
pub fn wait_ends_line(e: &WaitEnds) -> String {
    format!(
        "waits ended: {} woken by a wake_up on their page, {} found their page idle, {} interrupted (signal), {} went on after their page went idle unwoken, {} with neither a wake_up nor their page seen idle, {} still waiting at the end",
        e.woken, e.idle_at_start, e.interrupted, e.idle_unwoken, e.unexplained, e.unfinished
    )
}

pub fn render(s: &RunSummary<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "daxrace report");
    if s.findings.is_empty() {
        let _ = writeln!(out, "findings: none");
    } else {
        let _ = writeln!(out, "findings: {}", s.findings.len());
        for (i, f) in s.findings.iter().enumerate() {
            let _ = writeln!(out, "  [{}] {}", i + 1, f.summary());
            if !f.timeline.is_empty() {
                let _ = writeln!(out, "      timeline of pfn {:#x}:", f.pfn);
                for ev in &f.timeline {
                    let _ = writeln!(out, "        {ev}");
                }
            }
        }
    }
    let _ = writeln!(out, "{}", coverage_line(s.coverage, s.unrecorded));
    if s.coverage.wait_ends.total() > 0 {
        let _ = writeln!(out, "{}", wait_ends_line(&s.coverage.wait_ends));
    }
    let hooks: Vec<String> = s
        .events_by_hook
        .iter()
        .map(|(h, n)| format!("{h}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "events by hook: {}",
        if hooks.is_empty() {
            "none".to_string()
        } else {
            hooks.join(" ")
        }
    );
    let lost: u64 = s.lost.values().sum();
    let lost_detail: Vec<String> = s
        .lost
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "lost events: {lost}{}; decode errors: {}",
        if lost_detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", lost_detail.join(" "))
        },
        s.decode_errors
    );
    if s.unrecorded.pmd_entries > 0 {
        let _ = writeln!(
            out,
            "2 MiB (PMD) entries truncated: {}: each watched page of them was checked, but an unwatched page's pin is seen only on an entry's first page",
            s.unrecorded.pmd_entries
        );
    }
    let d = s.dropped;
    let dropped = d.windows_evicted + d.pages_evicted + d.reported_keys_forgotten;
    if dropped > 0 {
        let _ = writeln!(
            out,
            "detector bounds dropped state: {} windows, {} pages, {} finding keys (raise the limits to keep them)",
            d.windows_evicted, d.pages_evicted, d.reported_keys_forgotten
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use daxrace_common::Counter;

    fn report(kernel_counters: &BTreeMap<String, u64>, lost: &BTreeMap<String, u64>) -> String {
        render(&RunSummary {
            findings: &[],
            coverage: &Coverage::default(),
            dropped: &DroppedState::default(),
            events_by_hook: &BTreeMap::new(),
            lost,
            decode_errors: 0,
            unrecorded: Unrecorded::from_counters(kernel_counters),
        })
    }

    #[test]
    fn a_task_slot_collision_is_a_lost_event() {
        let counters: BTreeMap<String, u64> = Counter::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), 0))
            .collect();
        let mut lost: BTreeMap<String, u64> = Counter::LOST
            .iter()
            .map(|c| (c.as_str().to_string(), 0))
            .collect();
        lost.insert(Counter::TaskSlotCollision.as_str().into(), 3);
        let text = report(&counters, &lost);
        assert!(
            text.contains("lost events: 3 (task_slot_collision=3)"),
            "{text}"
        );
        assert!(!text.contains("2 MiB"), "{text}");
    }

    #[test]
    fn how_waits_ended_is_said_when_there_were_waits() {
        assert!(!report(&BTreeMap::new(), &BTreeMap::new()).contains("waits ended"));
        let coverage = Coverage {
            waits: 5,
            wait_ends: WaitEnds {
                woken: 2,
                idle_at_start: 1,
                interrupted: 1,
                unfinished: 1,
                ..WaitEnds::default()
            },
            ..Coverage::default()
        };
        let text = render(&RunSummary {
            findings: &[],
            coverage: &coverage,
            dropped: &DroppedState::default(),
            events_by_hook: &BTreeMap::new(),
            lost: &BTreeMap::new(),
            decode_errors: 0,
            unrecorded: Unrecorded::default(),
        });
        assert!(
            text.contains("waits ended: 2 woken by a wake_up on their page, 1 found their page idle, 1 interrupted (signal), 0 went on after their page went idle unwoken, 0 with neither a wake_up nor their page seen idle, 1 still waiting at the end"),
            "{text}"
        );
    }

    #[test]
    fn truncated_pmd_entries_are_said_with_what_was_checked() {
        let counters = BTreeMap::from([(Counter::PmdEntry.as_str().to_string(), 2)]);
        let text = report(&counters, &BTreeMap::new());
        assert!(
            text.contains("2 MiB (PMD) entries truncated: 2: each watched page"),
            "{text}"
        );
    }
}
