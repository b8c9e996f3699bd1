//! Truncation: `dax_disassociate_entry` at a refcount above idle
//! (`truncate_while_pinned`) or under another mapping (`mapping_mismatch`),
//! and `dax_delete_mapping_entry` of a page a call left busy (the inferred
//! `truncate_while_pinned`). The hot path: for a page nobody watches it
//! costs at most one hash lookup.
use std::collections::VecDeque;

use super::{
    hash::IntMap,
    same_mapping,
    state::{push_capped, BreakWindow, ClosedBreak},
    BreakCall, Detector, Finding, FindingKind, PAGE_MAPPING_DAX_SHARED,
};
use crate::event::{Event, PageRef};

impl Detector {
    /// The hot path with page puts: `#[inline]` lets `observe` keep it
    /// inline now that it lives in another module.
    #[inline]
    pub(super) fn on_disassociate(
        &mut self,
        ev: &Event,
        mapping: u64,
        page: &PageRef,
        page_mapping: u64,
        trunc: bool,
        out: &mut Vec<Finding>,
    ) {
        self.coverage.disassociations += 1;
        let pinned = trunc && page.refcount > self.cfg.idle_refcount;
        // mapping 0: the hook could not read it (6.15+'s `.isra` clone drops
        // that argument), so there is nothing to compare with.
        let mismatch = mapping != 0
            && page_mapping != 0
            && page_mapping != mapping
            && page_mapping != PAGE_MAPPING_DAX_SHARED;
        if trunc {
            self.coverage.truncations += 1;
            if !self.suspects.is_empty() {
                // The refcount is read here: the direct rule judges this page.
                self.suspects
                    .retain(|s| s.pfn != page.pfn || !same_mapping(s.mapping, mapping));
            }
        }
        if self.watched_filter.may_contain(page.pfn) {
            if let Some(wp) = self.pages.get_mut(&page.pfn) {
                wp.refcount = page.refcount;
                wp.last_seen_ns = ev.ts_ns;
                push_capped(
                    &mut wp.timeline,
                    self.cfg.timeline_len,
                    ev,
                    &mut self.dropped.timeline_entries_dropped,
                );
            }
        }
        if pinned || mismatch {
            self.report_disassociate(ev, mapping, page, page_mapping, pinned, mismatch, out);
        }
    }

    #[cold]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report_disassociate(
        &mut self,
        ev: &Event,
        mapping: u64,
        page: &PageRef,
        page_mapping: u64,
        pinned: bool,
        mismatch: bool,
        out: &mut Vec<Finding>,
    ) {
        let call = call_of(&self.open, &self.closed, ev.task.tid, mapping);
        let mut rep = reporter!(self);
        if pinned {
            out.extend(rep.at_truncation(
                FindingKind::TruncateWhilePinned,
                ev,
                call,
                mapping,
                page.pfn,
                page.refcount,
                None,
                false,
            ));
        }
        if mismatch {
            out.extend(rep.at_truncation(
                FindingKind::MappingMismatch,
                ev,
                call,
                mapping,
                page.pfn,
                page.refcount,
                Some(page_mapping),
                false,
            ));
        }
    }

    /// `dax_delete_mapping_entry` by a task whose call returned 0 with a page
    /// still busy: that page is being truncated while pinned, by the last
    /// count seen.
    #[cold]
    pub(super) fn check_suspects(&mut self, ev: &Event, mapping: u64, out: &mut Vec<Finding>) {
        let tid = ev.task.tid;
        let mut i = 0;
        while i < self.suspects.len() {
            let s = self.suspects[i];
            if s.tid != tid || !same_mapping(s.mapping, mapping) {
                i += 1;
                continue;
            }
            self.suspects.remove(i);
            let Some(refcount) = self.pages.get(&s.pfn).map(|p| p.refcount) else {
                continue;
            };
            if refcount <= self.cfg.idle_refcount {
                continue;
            }
            let call = self
                .closed
                .get(&tid)
                .filter(|c| c.call.id == s.window_id)
                .map(|c| (&c.call, &c.timeline));
            out.extend(reporter!(self).at_truncation(
                FindingKind::TruncateWhilePinned,
                ev,
                call,
                mapping,
                s.pfn,
                refcount,
                None,
                true,
            ));
        }
    }
}

/// The truncating task's call on `mapping`: open (6.15 truncates inside
/// `dax_break_layout`) or recently finished.
fn call_of<'a>(
    open: &'a IntMap<u32, BreakWindow>,
    closed: &'a IntMap<u32, ClosedBreak>,
    tid: u32,
    mapping: u64,
) -> Option<(&'a BreakCall, &'a VecDeque<Event>)> {
    if let Some(w) = open.get(&tid) {
        if same_mapping(w.call.mapping, mapping) {
            return Some((&w.call, &w.timeline));
        }
    }
    closed
        .get(&tid)
        .filter(|c| same_mapping(c.call.mapping, mapping))
        .map(|c| (&c.call, &c.timeline))
}
