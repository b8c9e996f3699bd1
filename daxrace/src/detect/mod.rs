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

mod coverage;
mod finding;
mod hash;
mod report;
mod state;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

pub use coverage::{Coverage, DroppedState, PerFs, WaitEnds};
pub use finding::{
    format_dev, format_duration, split_refcount, BreakCall, Finding, FindingKind, TimelineEntry,
};

use crate::event::{Event, EventBody, FileOp, Filesystem, PageRef};
use hash::{int_map, IntMap, KeyFilter};
use report::Reporter;
use state::{
    evict_oldest, push_capped, BreakWindow, ClosedBreak, IdleTransition, PageWait, ReportedSet,
    SuspectPage, WatchedPage,
};

/// `page->mapping` of a DAX page shared by several files (reflink): not a
/// mismatch (`PAGE_MAPPING_DAX_COW` before 6.15, `PAGE_MAPPING_DAX_SHARED` after).
pub const PAGE_MAPPING_DAX_SHARED: u64 = 1;

/// How often (event time) expired state is swept.
const SWEEP_INTERVAL_NS: u64 = 1_000_000_000;

/// The detector's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Refcount of an idle fsdax page: 1 before 6.15, 0 from 6.15.
    pub idle_refcount: i32,
    /// What one FOLL_PIN adds to the refcount (1024), or 0 when unknown: then
    /// every count above idle is reported as a reference.
    pub pin_bias: i32,
    /// How long a waiter may stay silent after its page went idle without a
    /// wake-up before it is reported as stranded.
    pub lost_wakeup_grace_ns: u64,
    /// How long a call may stay blocked on pinned pages before a `stall`.
    pub stall_threshold_ns: u64,
    /// Bound on open calls, and separately on finished calls kept for attribution.
    pub max_windows: usize,
    /// Bound on watched pages.
    pub max_pages: usize,
    /// Bound on each timeline (per page, per call, and in a finding).
    pub timeline_len: usize,
    /// An open call with no event for this long is forgotten (its exit was
    /// lost); an xfs call awaiting its retry this long is judged without it.
    pub window_ttl_ns: u64,
    /// A finished call is kept this long to attribute the truncation that follows.
    pub closed_window_ttl_ns: u64,
    /// A watched page with no event for this long is forgotten.
    pub page_ttl_ns: u64,
    /// Bound on the duplicate filter's memory.
    pub max_reported: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            idle_refcount: 1,
            pin_bias: 0,
            lost_wakeup_grace_ns: 1_000_000_000,
            stall_threshold_ns: 1_000_000_000,
            max_windows: 4096,
            max_pages: 65_536,
            timeline_len: 32,
            window_ttl_ns: 600_000_000_000,
            closed_window_ttl_ns: 10_000_000_000,
            page_ttl_ns: 60_000_000_000,
            max_reported: 65_536,
        }
    }
}

impl DetectorConfig {
    /// Defaults with the given idle refcount (1 before 6.15, 0 from 6.15:
    /// the live tracer takes it from the kernel's facts, replay from the
    /// trace header; no version is ever compared here).
    pub fn with_idle_refcount(idle_refcount: i32) -> Self {
        DetectorConfig {
            idle_refcount,
            ..Default::default()
        }
    }
}

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

/// A [`Reporter`] over the detector's fields, leaving `open` and `closed` free
/// to be borrowed alongside.
macro_rules! reporter {
    ($d:expr) => {
        Reporter {
            cfg: &$d.cfg,
            pages: &$d.pages,
            reported: &mut $d.reported,
            forgotten: &mut $d.dropped.reported_keys_forgotten,
            now: $d.now,
        }
    };
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

    /// Any event of a task with an open call is progress: it settles an xfs
    /// call awaiting its retry, and ends a wait.
    #[inline(never)]
    fn note_task_event(&mut self, ev: &Event, out: &mut Vec<Finding>) {
        let tid = ev.task.tid;
        let Some(w) = self.open.get_mut(&tid) else {
            return;
        };
        if let Some(exit_ns) = w.retry_pending_since {
            let retried = matches!(ev.body,
                EventBody::BreakEnter { mapping, .. } if same_mapping(mapping, w.call.mapping));
            if !retried {
                // The caller's loop did not call again: that iteration was the last.
                let w = self.open.remove(&tid).expect("window present");
                self.end_call(w, exit_ns, out);
            }
            return;
        }
        if ev.ts_ns > w.last_event_ns {
            w.last_event_ns = ev.ts_ns;
        }
        let Some(wait) = w.wait.take() else {
            return;
        };
        let asleep = ev.ts_ns.saturating_sub(wait.since_ns);
        self.coverage.wait_ends.bump(&wait, Some(ev));
        self.coverage.wait_ns_total += asleep;
        self.coverage.wait_ns_max = self.coverage.wait_ns_max.max(asleep);
        // A signal got a stranded waiter out: that is the finding, grace or not.
        if let (EventBody::BreakExit { ret, .. }, Some(idle)) = (ev.body, wait.idle_unwoken) {
            if ret < 0 {
                let w = &self.open[&tid];
                out.extend(reporter!(self).lost_wakeup(w, &wait, &idle, ev.ts_ns, Some(ev)));
            }
        }
    }

    #[inline(never)]
    fn on_file_op(&mut self, ev: &Event, op: FileOp) {
        self.coverage.file_ops += 1;
        if self.file_ops.len() >= self.cfg.max_windows {
            let (now, ttl) = (self.now, self.cfg.closed_window_ttl_ns);
            self.file_ops
                .retain(|_, (_, ts)| now.saturating_sub(*ts) <= ttl);
            if self.file_ops.len() >= self.cfg.max_windows {
                return;
            }
        }
        self.file_ops.insert(ev.task.tid, (op, ev.ts_ns));
    }

    #[inline(never)]
    fn on_break_enter(&mut self, ev: &Event, fs: Filesystem, dev: u32, ino: u64, mapping: u64) {
        let tid = ev.task.tid;
        let cap = self.cfg.timeline_len;
        let tl_dropped = &mut self.dropped.timeline_entries_dropped;
        if let Some(w) = self.open.get_mut(&tid) {
            if same_mapping(w.call.mapping, mapping) {
                if w.retry_pending_since.take().is_some() {
                    // xfs: the caller's loop retries; the same call goes on,
                    // and so does its block (timers skipped it meanwhile).
                    w.depth = 1;
                    w.call.end_ns = None;
                    w.call.ret = None;
                    if let Some(since) = w.blocked_since {
                        let at = since.saturating_add(self.cfg.stall_threshold_ns + 1);
                        self.next_timer_ns = self.next_timer_ns.min(at);
                    }
                } else {
                    // A nested hook of the same call.
                    w.depth += 1;
                }
                if w.call.mapping == 0 {
                    w.call.mapping = mapping;
                }
                if w.call.ino == 0 {
                    (w.call.dev, w.call.ino) = (dev, ino);
                }
                if w.call.fs == Filesystem::Unknown {
                    w.call.fs = fs;
                }
                push_capped(&mut w.timeline, cap, ev, tl_dropped);
                return;
            }
            // A call on another mapping while this one never returned: its exit was lost.
            self.open.remove(&tid);
            self.dropped.windows_abandoned += 1;
        }
        if self.open.len() >= self.cfg.max_windows {
            self.dropped.windows_evicted +=
                evict_oldest(&mut self.open, |w| w.last_event_ns, |_, _| false);
        }
        let op = self
            .file_ops
            .remove(&tid)
            .filter(|(_, ts)| ev.ts_ns.saturating_sub(*ts) <= self.cfg.closed_window_ttl_ns)
            .map(|(op, _)| op);
        let id = self.next_call_id;
        self.next_call_id += 1;
        self.coverage.breaks_started.bump(fs);
        let mut timeline = VecDeque::with_capacity(cap.min(64));
        push_capped(
            &mut timeline,
            cap,
            ev,
            &mut self.dropped.timeline_entries_dropped,
        );
        let call = BreakCall {
            id,
            task: ev.task,
            fs,
            dev,
            ino,
            mapping,
            op,
            start_ns: ev.ts_ns,
            end_ns: None,
            ret: None,
            scans: 0,
            busy_scans: 0,
            waits: 0,
            last_busy: None,
        };
        self.open.insert(
            tid,
            BreakWindow {
                call,
                depth: 1,
                last_event_ns: ev.ts_ns,
                blocked_since: None,
                wait: None,
                retry_pending_since: None,
                timeline,
            },
        );
    }

    #[inline(never)]
    fn on_break_exit(&mut self, ev: &Event, ret: i64, out: &mut Vec<Finding>) {
        let tid = ev.task.tid;
        let Some(w) = self.open.get_mut(&tid) else {
            self.dropped.exits_without_call += 1;
            return;
        };
        push_capped(
            &mut w.timeline,
            self.cfg.timeline_len,
            ev,
            &mut self.dropped.timeline_entries_dropped,
        );
        if w.depth > 1 {
            w.depth -= 1;
            return;
        }
        w.depth = 0;
        w.call.end_ns = Some(ev.ts_ns);
        w.call.ret = Some(ret);
        if ret == 0 && w.call.last_busy.is_some() && w.call.fs == Filesystem::Xfs {
            // One iteration of xfs's loop; whether it was the last shows next.
            // The block so far counts for a stall either way.
            w.retry_pending_since = Some(ev.ts_ns);
            out.extend(reporter!(self).stall(w, ev.ts_ns));
            let at = ev.ts_ns.saturating_add(self.cfg.window_ttl_ns);
            self.next_timer_ns = self.next_timer_ns.min(at);
            return;
        }
        let w = self.open.remove(&tid).expect("window present");
        self.end_call(w, ev.ts_ns, out);
    }

    /// A call is over (`end_ns` is its last exit): judge it, and keep it for a
    /// while to attribute the truncation that follows.
    #[inline(never)]
    fn end_call(&mut self, mut w: BreakWindow, end_ns: u64, out: &mut Vec<Finding>) {
        w.retry_pending_since = None;
        let mut rep = reporter!(self);
        out.extend(rep.stall(&w, end_ns));
        let ret = w.call.ret.unwrap_or(0);
        if ret != 0 {
            self.coverage.breaks_failed += 1;
        } else if let Some(last) = w.call.last_busy {
            out.extend(rep.break_without_clean_scan(&w, &last));
            // Still busy by the last count seen: a truncation that cannot read
            // the refcount (only the delete-entry hook) is judged by it.
            if self
                .pages
                .get(&last.pfn)
                .is_some_and(|p| p.refcount > self.cfg.idle_refcount)
            {
                if self.suspects.len() >= self.cfg.max_windows {
                    self.suspects.remove(0);
                }
                self.suspects.push(SuspectPage {
                    window_id: w.call.id,
                    tid: w.call.task.tid,
                    mapping: w.call.mapping,
                    pfn: last.pfn,
                    closed_ns: end_ns,
                });
            }
        }
        self.coverage.breaks_finished.bump(w.call.fs);
        let tid = w.call.task.tid;
        if self.closed.len() >= self.cfg.max_windows && !self.closed.contains_key(&tid) {
            self.dropped.closed_windows_evicted +=
                evict_oldest(&mut self.closed, |c| c.closed_ns, |_, _| false);
        }
        let closed = ClosedBreak {
            call: w.call,
            closed_ns: end_ns,
            timeline: w.timeline,
        };
        self.closed.insert(tid, closed);
    }

    #[inline(never)]
    fn on_busy_scan(
        &mut self,
        ev: &Event,
        mapping: u64,
        page: Option<PageRef>,
        out: &mut Vec<Finding>,
    ) {
        self.coverage.busy_scans += 1;
        if page.is_some() {
            self.coverage.busy_scans_with_page += 1;
            self.coverage.reached_race_window = true;
        }
        let mut mapping = mapping;
        match self.open.get_mut(&ev.task.tid) {
            Some(w) => {
                w.call.scans += 1;
                push_capped(
                    &mut w.timeline,
                    self.cfg.timeline_len,
                    ev,
                    &mut self.dropped.timeline_entries_dropped,
                );
                if mapping == 0 {
                    mapping = w.call.mapping;
                }
                match page {
                    None => {
                        // A clean scan ends the block: judge its length, then clear it.
                        out.extend(reporter!(self).stall(w, ev.ts_ns));
                        w.blocked_since = None;
                        w.call.last_busy = None;
                    }
                    Some(p) => {
                        w.call.busy_scans += 1;
                        w.call.last_busy = Some(p);
                        if w.blocked_since.is_none() {
                            w.blocked_since = Some(ev.ts_ns);
                            let at = ev.ts_ns.saturating_add(self.cfg.stall_threshold_ns + 1);
                            self.next_timer_ns = self.next_timer_ns.min(at);
                        }
                    }
                }
            }
            None => self.dropped.scans_without_call += 1,
        }
        if let Some(p) = page {
            self.watch(ev, &p, mapping);
        }
    }

    /// Starts (or renews) watching a page a scan found busy.
    fn watch(&mut self, ev: &Event, p: &PageRef, mapping: u64) {
        let (cap, idle) = (self.cfg.timeline_len, self.cfg.idle_refcount);
        if let Some(wp) = self.pages.get_mut(&p.pfn) {
            wp.refcount = p.refcount;
            wp.mapping = mapping;
            wp.last_seen_ns = ev.ts_ns;
            push_capped(
                &mut wp.timeline,
                cap,
                ev,
                &mut self.dropped.timeline_entries_dropped,
            );
            if p.refcount > idle {
                wp.woken = false;
                if wp.idle_unwoken.take().is_some() {
                    // Busy again: whoever waits on it has something to wait for.
                    self.set_waiters_idle(p.pfn, None);
                }
            }
            return;
        }
        if self.pages.len() >= self.cfg.max_pages {
            let waited = self.waited_pfns();
            self.dropped.pages_evicted += evict_oldest(
                &mut self.pages,
                |p| p.last_seen_ns,
                |pfn, _| waited.contains(pfn),
            );
            self.watched_filter.rebuild(self.pages.keys().copied());
        }
        let mut wp = WatchedPage::new(p, mapping, ev.ts_ns, cap);
        push_capped(
            &mut wp.timeline,
            cap,
            ev,
            &mut self.dropped.timeline_entries_dropped,
        );
        self.pages.insert(p.pfn, wp);
        self.watched_filter.insert(p.pfn);
        self.coverage.pages_watched += 1;
    }

    /// Pages some open call waits on: never forgotten while waited on.
    fn waited_pfns(&self) -> Vec<u64> {
        self.open
            .values()
            .filter_map(|w| w.wait.map(|wt| wt.pfn))
            .collect()
    }

    #[inline(never)]
    fn on_wait_start(&mut self, ev: &Event, page: &PageRef) {
        self.coverage.waits += 1;
        let cap = self.cfg.timeline_len;
        let mut idle = None;
        if let Some(wp) = self.pages.get_mut(&page.pfn) {
            wp.last_seen_ns = ev.ts_ns;
            push_capped(
                &mut wp.timeline,
                cap,
                ev,
                &mut self.dropped.timeline_entries_dropped,
            );
            idle = wp.idle_unwoken;
        }
        let Some(w) = self.open.get_mut(&ev.task.tid) else {
            self.dropped.waits_without_call += 1;
            return;
        };
        push_capped(
            &mut w.timeline,
            cap,
            ev,
            &mut self.dropped.timeline_entries_dropped,
        );
        w.call.waits += 1;
        if let Some(old) = w.wait.take() {
            // A wait with no event in between: the new one ends it.
            self.coverage.wait_ends.bump(&old, None);
        }
        w.wait = Some(PageWait {
            pfn: page.pfn,
            since_ns: ev.ts_ns,
            idle_unwoken: idle,
            idle_at_start: page.refcount <= self.cfg.idle_refcount,
            woken: false,
        });
        if let Some(i) = idle {
            // Already idle: the wait condition holds and the waiter should not
            // sleep at all; it must show progress within the grace period.
            let at = i
                .ts_ns
                .max(ev.ts_ns)
                .saturating_add(self.cfg.lost_wakeup_grace_ns + 1);
            self.next_timer_ns = self.next_timer_ns.min(at);
        }
    }

    /// A watched page lost references; `after` is its refcount now.
    fn on_refcount_drop(&mut self, ev: &Event, page: &PageRef, after: i64) {
        if !self.watched_filter.may_contain(page.pfn) {
            return;
        }
        let Some(wp) = self.pages.get_mut(&page.pfn) else {
            return;
        };
        let after = after.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        if page.refcount > self.cfg.idle_refcount {
            // A drop from a busy count: this is a new idle transition.
            wp.woken = false;
        }
        wp.refcount = after;
        wp.last_seen_ns = ev.ts_ns;
        wp.note_holder(&ev.task);
        push_capped(
            &mut wp.timeline,
            self.cfg.timeline_len,
            ev,
            &mut self.dropped.timeline_entries_dropped,
        );
        if after == self.cfg.idle_refcount && !wp.woken {
            let t = IdleTransition {
                ts_ns: ev.ts_ns,
                task: ev.task,
                refcount: after,
            };
            wp.idle_unwoken = Some(t);
            self.set_waiters_idle(page.pfn, Some(t));
        }
    }

    #[inline(never)]
    fn on_wake_up(&mut self, ev: &Event, page: &PageRef) {
        self.coverage.wake_ups += 1;
        if let Some(wp) = self.pages.get_mut(&page.pfn) {
            wp.last_seen_ns = ev.ts_ns;
            wp.idle_unwoken = None;
            wp.woken = true;
            push_capped(
                &mut wp.timeline,
                self.cfg.timeline_len,
                ev,
                &mut self.dropped.timeline_entries_dropped,
            );
        }
        // Waiters are cleared even if the page itself was evicted.
        self.set_waiters_idle(page.pfn, None);
        for w in self.open.values_mut() {
            if let Some(wait) = w.wait.as_mut().filter(|wt| wt.pfn == page.pfn) {
                wait.woken = true;
            }
        }
    }

    /// Marks (or clears) "went idle without a wake-up" on every waiter of `pfn`.
    fn set_waiters_idle(&mut self, pfn: u64, idle: Option<IdleTransition>) {
        let grace = self.cfg.lost_wakeup_grace_ns;
        for w in self.open.values_mut() {
            let Some(wait) = w.wait.as_mut().filter(|wt| wt.pfn == pfn) else {
                continue;
            };
            match idle {
                None => wait.idle_unwoken = None,
                Some(t) => {
                    if wait.idle_unwoken.is_none() {
                        wait.idle_unwoken = Some(t);
                    }
                    let at = t.ts_ns.max(w.last_event_ns).saturating_add(grace + 1);
                    self.next_timer_ns = self.next_timer_ns.min(at);
                }
            }
        }
    }

    fn on_disassociate(
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
    fn report_disassociate(
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
    fn check_suspects(&mut self, ev: &Event, mapping: u64, out: &mut Vec<Finding>) {
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

    /// Fires due deadlines (grace periods, stalls, xfs retries), sweeps
    /// expired state, and computes the next deadline.
    #[inline(never)]
    fn run_timers(&mut self, out: &mut Vec<Finding>) {
        let now = self.now;
        let grace = self.cfg.lost_wakeup_grace_ns;
        let threshold = self.cfg.stall_threshold_ns;
        let mut next = u64::MAX;
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        for (tid, w) in &self.open {
            if let Some(exit_ns) = w.retry_pending_since {
                let at = exit_ns.saturating_add(self.cfg.window_ttl_ns);
                if now >= at {
                    due.push((w.call.id, *tid));
                } else {
                    next = next.min(at);
                }
                continue;
            }
            let mut is_due = false;
            if let Some(idle) = w.wait.and_then(|wt| wt.idle_unwoken) {
                let at = idle.ts_ns.max(w.last_event_ns).saturating_add(grace + 1);
                is_due |= now >= at;
                if now < at {
                    next = next.min(at);
                }
            }
            if let Some(since) = w.blocked_since {
                let at = since.saturating_add(threshold + 1);
                is_due |= now >= at;
                if now < at {
                    next = next.min(at);
                }
            }
            if is_due {
                due.push((w.call.id, *tid));
            }
        }
        // In call order, so that findings come out the same on every run.
        due.sort_unstable();
        for &(_, tid) in &due {
            let pending = match self.open.get(&tid) {
                Some(w) => w.retry_pending_since,
                None => continue,
            };
            if let Some(exit_ns) = pending {
                let w = self.open.remove(&tid).expect("window present");
                self.end_call(w, exit_ns, out);
                continue;
            }
            let w = &self.open[&tid];
            let mut rep = reporter!(self);
            if let Some(wait) = w.wait {
                if let Some(idle) = wait.idle_unwoken {
                    if now.saturating_sub(idle.ts_ns.max(w.last_event_ns)) > grace {
                        out.extend(rep.lost_wakeup(w, &wait, &idle, now, None));
                    }
                }
            }
            out.extend(rep.stall(w, now));
        }
        self.due = due;
        if now >= self.next_sweep_ns {
            self.sweep();
            self.next_sweep_ns = now.saturating_add(SWEEP_INTERVAL_NS);
        }
        self.next_timer_ns = next.min(self.next_sweep_ns);
    }

    /// Forgets what aged out (event time).
    fn sweep(&mut self) {
        let now = self.now;
        let cfg = &self.cfg;
        let before = self.open.len();
        let ends = &mut self.coverage.wait_ends;
        self.open.retain(|_, w| {
            let keep = w.retry_pending_since.is_some()
                || now.saturating_sub(w.last_event_ns) <= cfg.window_ttl_ns;
            if !keep && w.wait.is_some() {
                ends.unfinished += 1;
            }
            keep
        });
        self.dropped.windows_expired += (before - self.open.len()) as u64;
        let closed_ttl = cfg.closed_window_ttl_ns;
        self.closed
            .retain(|_, c| now.saturating_sub(c.closed_ns) <= closed_ttl);
        self.suspects
            .retain(|s| now.saturating_sub(s.closed_ns) <= closed_ttl);
        self.file_ops
            .retain(|_, (_, ts)| now.saturating_sub(*ts) <= closed_ttl);
        let waited = self.waited_pfns();
        let before = self.pages.len();
        let page_ttl = self.cfg.page_ttl_ns;
        self.pages.retain(|pfn, p| {
            now.saturating_sub(p.last_seen_ns) <= page_ttl || waited.contains(pfn)
        });
        self.dropped.pages_expired += (before - self.pages.len()) as u64;
        self.watched_filter.rebuild(self.pages.keys().copied());
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
