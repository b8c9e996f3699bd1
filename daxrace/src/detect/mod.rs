//! The detector: the ordered event stream in, findings out.
//!
//! Pure: no aya, no I/O, no clock. Time is the events' own timestamps (plus
//! [`Detector::advance`] from the live daemon, on the same CLOCK_MONOTONIC), so
//! the same code runs live, under `daxrace trace` and on replay.
//!
//! What it follows, per task (tid): a break-layouts call (`BreakEnter` ..
//! `BreakExit`) loops over busy scans; a scan that returns a page is followed
//! by a wait until that page's refcount reaches idle and someone wakes the
//! waiter; a correct call ends with a clean scan. Pages a scan found busy are
//! watched (their drops, releases and wake-ups arrive as events) until they
//! expire. Truncation events are checked on their own; they are the hot path,
//! so for a page nobody watches they cost at most one hash lookup.
//!
//! Findings and their exact triggers:
//! - `truncate_while_pinned`: `Disassociate{trunc: true}` with refcount above
//!   idle (the kernel's own WARN). Also, inferred: a call returned 0 while the
//!   page its last scan returned was still busy (no drop to idle seen since),
//!   and the same task then deleted an entry of that mapping.
//! - `break_without_clean_scan`: a call returned 0 while its last busy scan
//!   returned a page. On xfs before 6.15 `xfs_break_dax_layouts` is a single
//!   iteration that returns 0 after a wait and is called again by
//!   `xfs_break_layouts`' loop: there the call is judged once the task does
//!   something other than call again (at the latest after `window_ttl_ns` or
//!   at the end of the stream; not by a short timer, which a descheduled
//!   task could outlast, so live and replay agree).
//! - `mapping_mismatch`: `Disassociate` with `page_mapping` not 0, not the
//!   mapping and not the shared-extent marker (`PAGE_MAPPING_DAX_COW`, 1),
//!   when the mapping is known (not 0).
//! - `lost_wakeup`: a waiter on page P whose refcount reached idle (a
//!   `PinDropped` whose count before minus refs is idle, or a `PageReleased`
//!   at idle) with no `WakeUp` for P since, and no event from the waiter for
//!   longer than the grace period after both; or whose call then returned an
//!   error (a signal got it out); or still stranded at [`Detector::finish`].
//! - `stall`: a call blocked (from a busy scan to the next clean scan or its
//!   end) for longer than the stall threshold; reported when it crosses it.
//!
//! Each is reported once per (kind, call or mapping, page).

/// An [`evidence::Reporter`] over the detector's fields, leaving `open` and
/// `closed` free to be borrowed alongside. Defined before the phases so they
/// can use it.
macro_rules! reporter {
    ($d:expr) => {
        $crate::detect::evidence::Reporter {
            cfg: &$d.cfg,
            pages: &$d.pages,
            reported: &mut $d.reported,
            forgotten: &mut $d.dropped.reported_keys_forgotten,
            now: $d.now,
        }
    };
}

// The phases of the protocol, each an `impl Detector` block over the
// detector's fields: break-layouts calls, pages and waits, truncation, time.
mod breaks;
mod pages;
mod timers;
mod truncation;

mod config;
mod coverage;
mod evidence;
mod finding;
mod hash;
mod state;
#[cfg(test)]
mod tests;

pub use config::DetectorConfig;
pub use coverage::{Coverage, DroppedState, PerFs, WaitEnds};
pub use finding::{
    format_dev, format_duration, split_refcount, BreakCall, Finding, FindingKind, TimelineEntry,
};

use crate::event::{Event, EventBody, FileOp};
use hash::{int_map, IntMap, KeyFilter};
use state::{BreakWindow, ClosedBreak, ReportedSet, SuspectPage, WatchedPage};

/// `page->mapping` of a DAX page shared by several files (reflink): not a
/// mismatch (`PAGE_MAPPING_DAX_COW` before 6.15, `PAGE_MAPPING_DAX_SHARED` after).
pub const PAGE_MAPPING_DAX_SHARED: u64 = 1;

/// See the module documentation.
pub struct Detector {
    cfg: DetectorConfig,
    /// Latest time known: the largest event timestamp or `advance` value.
    now: u64,
    /// Earliest time at which a deadline (grace, stall, xfs retry, sweep) can
    /// fire; the per-event cost of all timers is one comparison with it.
    next_timer_ns: u64,
    next_sweep_ns: u64,
    next_call_id: u64,
    open: IntMap<u32, BreakWindow>,
    closed: IntMap<u32, ClosedBreak>,
    pages: IntMap<u64, WatchedPage>,
    /// Pfns in `pages` (and some that left): most page events are about pages
    /// nobody watches, and this says so without a hash lookup.
    watched_filter: KeyFilter,
    /// The latest context-hook operation per task, for the call that follows.
    file_ops: IntMap<u32, (FileOp, u64)>,
    suspects: Vec<SuspectPage>,
    reported: ReportedSet,
    coverage: Coverage,
    dropped: DroppedState,
    due: Vec<(u64, u32)>,
}

fn same_mapping(a: u64, b: u64) -> bool {
    a == b || a == 0 || b == 0
}

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Self {
        let windows = cfg.max_windows.clamp(1, 256);
        Detector {
            reported: ReportedSet::new(cfg.max_reported),
            open: int_map(windows),
            closed: int_map(windows),
            pages: int_map(cfg.max_pages.clamp(1, 1024)),
            watched_filter: KeyFilter::new(16),
            file_ops: int_map(windows),
            suspects: Vec::new(),
            now: 0,
            next_timer_ns: 0,
            next_sweep_ns: 0,
            next_call_id: 1,
            coverage: Coverage::default(),
            dropped: DroppedState::default(),
            due: Vec::new(),
            cfg,
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    pub fn dropped(&self) -> DroppedState {
        self.dropped
    }

    /// Latest time the detector knows of (event or `advance`).
    pub fn now_ns(&self) -> u64 {
        self.now
    }

    /// Break-layouts calls open now (for a gauge).
    pub fn open_calls(&self) -> usize {
        self.open.len()
    }

    /// Pages being watched now (for a gauge).
    pub fn watched_pages(&self) -> usize {
        self.pages.len()
    }

    /// Feeds one event; findings it establishes are appended to `out`.
    ///
    /// Truncation events and page puts on unwatched pages are nearly all of a
    /// stream; everything else is `#[inline(never)]` so that their path stays
    /// short (a few compares, at most one hash lookup).
    pub fn observe(&mut self, ev: &Event, out: &mut Vec<Finding>) {
        self.coverage.events += 1;
        if ev.ts_ns > self.now {
            self.now = ev.ts_ns;
        }
        if self.now >= self.next_timer_ns {
            self.run_timers(out);
        }
        if !self.open.is_empty() {
            self.note_task_event(ev, out);
        }
        match ev.body {
            EventBody::Disassociate {
                mapping,
                page,
                page_mapping,
                trunc,
            } => self.on_disassociate(ev, mapping, &page, page_mapping, trunc, out),
            EventBody::DeleteEntry { mapping, .. } => {
                self.coverage.delete_entries += 1;
                if !self.suspects.is_empty() {
                    self.check_suspects(ev, mapping, out);
                }
            }
            EventBody::PinDropped { page, refs } => {
                self.coverage.pin_drops += 1;
                let after = i64::from(page.refcount) - i64::from(refs);
                self.on_refcount_drop(ev, &page, after);
            }
            EventBody::PageReleased { page } => {
                self.coverage.page_releases += 1;
                self.on_refcount_drop(ev, &page, i64::from(page.refcount));
            }
            EventBody::PageSampled { page } => {
                self.coverage.page_samples += 1;
                self.on_refcount_sampled(ev, &page);
            }
            EventBody::WakeUp { page } => self.on_wake_up(ev, &page),
            EventBody::BusyScan { mapping, page, .. } => self.on_busy_scan(ev, mapping, page, out),
            EventBody::WaitStart { page } => self.on_wait_start(ev, &page),
            EventBody::BreakEnter {
                fs,
                dev,
                ino,
                mapping,
            } => self.on_break_enter(ev, fs, dev, ino, mapping),
            EventBody::BreakExit { ret, .. } => self.on_break_exit(ev, ret, out),
            EventBody::FileOp { op, .. } => self.on_file_op(ev, op),
        }
    }

    /// Time passed with no event: fires the deadlines that fell due. The live
    /// daemon calls this with CLOCK_MONOTONIC ns (the events' clock) after
    /// draining the ring buffer, so no queued event is older than `now_ns`.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        if now_ns > self.now {
            self.now = now_ns;
        }
        if self.now >= self.next_timer_ns {
            self.run_timers(out);
        }
    }

    /// End of the stream: judges what is still open (xfs calls awaiting their
    /// retry, waiters still stranded on an idle page, calls still blocked) and
    /// closes every open call.
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        self.run_timers(out);
        let mut open: Vec<(u64, u32)> = self.open.iter().map(|(t, w)| (w.call.id, *t)).collect();
        open.sort_unstable();
        for (_, tid) in open {
            let Some(w) = self.open.remove(&tid) else {
                continue;
            };
            if let Some(exit_ns) = w.retry_pending_since {
                self.end_call(w, exit_ns, out);
                continue;
            }
            let now = self.now;
            if w.wait.is_some() {
                self.coverage.wait_ends.unfinished += 1;
            }
            let mut rep = reporter!(self);
            if let Some((wait, idle)) = w.wait.and_then(|wt| wt.idle_unwoken.map(|i| (wt, i))) {
                out.extend(rep.lost_wakeup(&w, &wait, &idle, now, None));
            }
            out.extend(rep.stall(&w, now));
            self.coverage.breaks_unfinished += 1;
        }
    }
}
