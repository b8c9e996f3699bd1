//! Building findings with their evidence. Only runs when something is found,
//! so it may allocate; it borrows the detector's parts it reads, which lets the
//! caller keep a call's window borrowed at the same time.
use std::collections::VecDeque;

use super::finding::{split_refcount, BreakCall, Finding, FindingKind, TimelineEntry};
use super::hash::IntMap;
use super::state::{BreakWindow, FindingKey, IdleTransition, PageWait, ReportedSet, WatchedPage};
use super::DetectorConfig;
use crate::event::{Event, Filesystem, PageRef, Task};

pub struct Reporter<'a> {
    pub cfg: &'a DetectorConfig,
    pub pages: &'a IntMap<u64, WatchedPage>,
    pub reported: &'a mut ReportedSet,
    pub forgotten: &'a mut u64,
    pub now: u64,
}

/// The call's steps and the page's transitions, oldest first, bounded.
pub fn merged_timeline(
    cap: usize,
    call: Option<&VecDeque<Event>>,
    page: Option<&WatchedPage>,
    trigger: Option<&Event>,
) -> Vec<TimelineEntry> {
    let mut v: Vec<Event> = call.map_or_else(Vec::new, |tl| tl.iter().copied().collect());
    let call_len = v.len();
    for ev in page
        .into_iter()
        .flat_map(|p| p.timeline.iter())
        .chain(trigger)
    {
        // Scans and waits sit in both timelines.
        if !v[..call_len].contains(ev) {
            v.push(*ev);
        }
    }
    v.sort_by_key(|e| e.ts_ns);
    if v.len() > cap {
        v.drain(..v.len() - cap);
    }
    v
}

impl Reporter<'_> {
    /// True the first time (kind, scope, pfn) is reported.
    pub fn first(&mut self, kind: FindingKind, scope: u64, pfn: u64) -> bool {
        self.reported
            .first(FindingKey { kind, scope, pfn }, self.forgotten)
    }

    fn base(
        &self,
        kind: FindingKind,
        ts_ns: u64,
        task: Task,
        call: Option<&BreakCall>,
        pfn: u64,
        refcount: Option<i32>,
    ) -> Finding {
        let (pins, refs) = match refcount {
            Some(rc) => {
                let (pins, refs) = split_refcount(rc, self.cfg.idle_refcount, self.cfg.pin_bias);
                (pins, Some(refs))
            }
            None => (None, None),
        };
        let holders = self
            .pages
            .get(&pfn)
            .filter(|_| pfn != 0)
            .map(|p| p.holders.clone())
            .unwrap_or_default();
        Finding {
            kind,
            ts_ns: ts_ns.max(self.now),
            fs: call.map_or(Filesystem::Unknown, |c| c.fs),
            dev: call.map_or(0, |c| c.dev),
            ino: call.map_or(0, |c| c.ino),
            mapping: call.map_or(0, |c| c.mapping),
            pfn,
            refcount,
            pins,
            refs,
            task,
            releaser: None,
            pin_holders: holders,
            break_call: call.copied(),
            since_ns: None,
            released_ns: None,
            duration_ns: None,
            page_mapping: None,
            inferred: false,
            timeline: Vec::new(),
            seen_at_start: false,
        }
    }

    fn timeline(
        &self,
        call: Option<&VecDeque<Event>>,
        pfn: u64,
        trigger: Option<&Event>,
    ) -> Vec<Event> {
        merged_timeline(self.cfg.timeline_len, call, self.pages.get(&pfn), trigger)
    }

    /// `stall` if the call has been blocked on busy pages for longer than the
    /// threshold at `at_ns`.
    pub fn stall(&mut self, w: &BreakWindow, at_ns: u64) -> Option<Finding> {
        let since = w.blocked_since?;
        let blocked = at_ns.saturating_sub(since);
        if blocked <= self.cfg.stall_threshold_ns || !self.first(FindingKind::Stall, w.call.id, 0) {
            return None;
        }
        let last_busy = w.call.last_busy;
        let pfn = w
            .wait
            .map(|wt| wt.pfn)
            .or(last_busy.map(|p| p.pfn))
            .unwrap_or(0);
        let refcount = self
            .pages
            .get(&pfn)
            .map(|p| p.refcount)
            .or(last_busy.map(|p| p.refcount));
        let mut f = self.base(
            FindingKind::Stall,
            at_ns,
            w.call.task,
            Some(&w.call),
            pfn,
            refcount,
        );
        f.since_ns = Some(since);
        f.duration_ns = Some(blocked);
        f.timeline = self.timeline(Some(&w.timeline), pfn, None);
        Some(f)
    }

    /// `lost_wakeup` for a waiter whose page went idle without a wake-up.
    pub fn lost_wakeup(
        &mut self,
        w: &BreakWindow,
        wait: &PageWait,
        idle: &IdleTransition,
        at_ns: u64,
        trigger: Option<&Event>,
    ) -> Option<Finding> {
        if !self.first(FindingKind::LostWakeup, w.call.id, wait.pfn) {
            return None;
        }
        let mut f = self.base(
            FindingKind::LostWakeup,
            at_ns,
            w.call.task,
            Some(&w.call),
            wait.pfn,
            Some(idle.refcount),
        );
        f.releaser = idle.task;
        f.since_ns = Some(wait.since_ns);
        f.released_ns = Some(idle.ts_ns);
        f.duration_ns = Some(at_ns.saturating_sub(wait.since_ns));
        f.timeline = self.timeline(Some(&w.timeline), wait.pfn, trigger);
        Some(f)
    }

    /// `break_without_clean_scan` for a call that returned 0 after `last`.
    pub fn break_without_clean_scan(&mut self, w: &BreakWindow, last: &PageRef) -> Option<Finding> {
        if !self.first(FindingKind::BreakWithoutCleanScan, w.call.id, 0) {
            return None;
        }
        let mut f = self.base(
            FindingKind::BreakWithoutCleanScan,
            self.now,
            w.call.task,
            Some(&w.call),
            last.pfn,
            Some(last.refcount),
        );
        f.timeline = self.timeline(Some(&w.timeline), last.pfn, None);
        Some(f)
    }

    /// `truncate_while_pinned` or `mapping_mismatch` at a truncation event.
    #[allow(clippy::too_many_arguments)]
    pub fn at_truncation(
        &mut self,
        kind: FindingKind,
        ev: &Event,
        call: Option<(&BreakCall, &VecDeque<Event>)>,
        mapping: u64,
        pfn: u64,
        refcount: i32,
        page_mapping: Option<u64>,
        inferred: bool,
    ) -> Option<Finding> {
        let scope = call.map_or(mapping, |(c, _)| c.id);
        if !self.first(kind, scope, pfn) {
            return None;
        }
        let mut f = self.base(
            kind,
            ev.ts_ns,
            ev.task,
            call.map(|(c, _)| c),
            pfn,
            Some(refcount),
        );
        f.mapping = mapping;
        f.page_mapping = page_mapping;
        f.inferred = inferred;
        f.timeline = self.timeline(call.map(|(_, t)| t), pfn, Some(ev));
        Some(f)
    }
}
