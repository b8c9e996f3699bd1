//! Pages and waits: a page a scan found busy is watched (its drops,
//! releases and wake-ups), a call waits on it, and a page that goes idle
//! with no wake-up marks its waiters for the `lost_wakeup` grace period.
use super::{
    state::{evict_oldest, push_capped, IdleTransition, PageWait, WatchedPage},
    Detector,
};
use crate::event::{Event, PageRef};

impl Detector {
    /// Starts (or renews) watching a page a scan found busy.
    pub(super) fn watch(&mut self, ev: &Event, p: &PageRef, mapping: u64) {
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
    pub(super) fn waited_pfns(&self) -> Vec<u64> {
        self.open
            .values()
            .filter_map(|w| w.wait.map(|wt| wt.pfn))
            .collect()
    }

    #[inline(never)]
    pub(super) fn on_wait_start(&mut self, ev: &Event, page: &PageRef) {
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
    ///
    /// The hot path with truncation: `#[inline]` lets `observe` keep it
    /// inline now that it lives in another module.
    #[inline]
    pub(super) fn on_refcount_drop(&mut self, ev: &Event, page: &PageRef, after: i64) {
        self.on_refcount_now(ev, page, after, true);
    }

    /// A watched page's refcount read by the daemon (the page hooks were
    /// off when it changed): a drop to idle counts as an idle transition
    /// whose releaser is unknown; a count above idle is busy again.
    #[inline(never)]
    pub(super) fn on_refcount_sampled(&mut self, ev: &Event, page: &PageRef) {
        let Some(before) = self.pages.get(&page.pfn).map(|wp| wp.refcount) else {
            return;
        };
        let idle = self.cfg.idle_refcount;
        if page.refcount > idle {
            if let Some(wp) = self.pages.get_mut(&page.pfn) {
                wp.refcount = page.refcount;
                wp.woken = false;
                if wp.idle_unwoken.take().is_some() {
                    self.set_waiters_idle(page.pfn, None);
                }
            }
            return;
        }
        let seen = PageRef {
            refcount: before,
            ..*page
        };
        self.on_refcount_now(ev, &seen, i64::from(page.refcount), false);
    }

    #[inline]
    fn on_refcount_now(&mut self, ev: &Event, page: &PageRef, after: i64, by_task: bool) {
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
        if by_task {
            wp.note_holder(&ev.task);
        }
        push_capped(
            &mut wp.timeline,
            self.cfg.timeline_len,
            ev,
            &mut self.dropped.timeline_entries_dropped,
        );
        if after == self.cfg.idle_refcount && !wp.woken {
            let t = IdleTransition {
                ts_ns: ev.ts_ns,
                task: by_task.then_some(ev.task),
                refcount: after,
            };
            wp.idle_unwoken = Some(t);
            self.set_waiters_idle(page.pfn, Some(t));
        }
    }

    #[inline(never)]
    pub(super) fn on_wake_up(&mut self, ev: &Event, page: &PageRef) {
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
    pub(super) fn set_waiters_idle(&mut self, pfn: u64, idle: Option<IdleTransition>) {
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
}
