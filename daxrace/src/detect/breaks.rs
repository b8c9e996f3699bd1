//! Break-layouts calls: a call opens at `BreakEnter` (with the file
//! operation that led to it), loops over busy scans, and is judged when it
//! returns (`break_without_clean_scan`, `stall`); on xfs before 6.15 a call
//! that returned 0 after a wait is judged only once the task does something
//! other than call again.
use std::collections::VecDeque;

use super::{
    same_mapping,
    state::{evict_oldest, push_capped, BreakWindow, ClosedBreak, SuspectPage},
    BreakCall, Detector, Finding,
};
use crate::event::{Event, EventBody, FileOp, Filesystem, PageRef};

impl Detector {
    /// Any event of a task with an open call is progress: it settles an xfs
    /// call awaiting its retry, and ends a wait.
    #[inline(never)]
    pub(super) fn note_task_event(&mut self, ev: &Event, out: &mut Vec<Finding>) {
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
    pub(super) fn on_file_op(&mut self, ev: &Event, op: FileOp) {
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
    pub(super) fn on_break_enter(
        &mut self,
        ev: &Event,
        fs: Filesystem,
        dev: u32,
        ino: u64,
        mapping: u64,
    ) {
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
    pub(super) fn on_break_exit(&mut self, ev: &Event, ret: i64, out: &mut Vec<Finding>) {
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
    pub(super) fn end_call(&mut self, mut w: BreakWindow, end_ns: u64, out: &mut Vec<Finding>) {
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
    pub(super) fn on_busy_scan(
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
}
