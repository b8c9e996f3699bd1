//! Time: deadlines (the lost wake-up grace period, the stall threshold, the
//! xfs retry) fired in call order, and the sweep that forgets what aged out.
//! Time is the events' own (and [`Detector::advance`]'s).
use super::{Detector, Finding};

/// How often (event time) expired state is swept.
const SWEEP_INTERVAL_NS: u64 = 1_000_000_000;

impl Detector {
    /// Fires due deadlines (grace periods, stalls, xfs retries), sweeps
    /// expired state, and computes the next deadline.
    #[inline(never)]
    pub(super) fn run_timers(&mut self, out: &mut Vec<Finding>) {
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
    pub(super) fn sweep(&mut self) {
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
