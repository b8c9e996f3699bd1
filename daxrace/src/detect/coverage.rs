//! What the stream exercised, and what the detector had to forget. "No
//! findings" from a run that never reached the race window must not look like
//! a clean bill: these travel with the findings.
use serde::{Deserialize, Serialize};

use super::state::PageWait;
use crate::event::{Event, EventBody, Filesystem};

/// A counter per filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerFs {
    pub ext4: u64,
    pub xfs: u64,
    pub generic: u64,
    pub unknown: u64,
}

impl PerFs {
    pub fn bump(&mut self, fs: Filesystem) {
        match fs {
            Filesystem::Ext4 => self.ext4 += 1,
            Filesystem::Xfs => self.xfs += 1,
            Filesystem::Generic => self.generic += 1,
            Filesystem::Unknown => self.unknown += 1,
        }
    }

    pub fn get(&self, fs: Filesystem) -> u64 {
        match fs {
            Filesystem::Ext4 => self.ext4,
            Filesystem::Xfs => self.xfs,
            Filesystem::Generic => self.generic,
            Filesystem::Unknown => self.unknown,
        }
    }

    pub fn total(&self) -> u64 {
        self.ext4 + self.xfs + self.generic + self.unknown
    }
}

/// How much of the race window the observed stream reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub events: u64,
    /// Break-layouts calls (an xfs retry loop of `xfs_break_dax_layouts`
    /// iterations counts once; nested hooks of one call count once).
    pub breaks_started: PerFs,
    pub breaks_finished: PerFs,
    /// Calls that returned an error (interrupted by a signal: -512, -4).
    pub breaks_failed: u64,
    /// Calls still open when the stream ended.
    pub breaks_unfinished: u64,
    pub busy_scans: u64,
    /// Busy scans that returned a pinned page: the race window was reached.
    pub busy_scans_with_page: u64,
    pub waits: u64,
    /// Time from a wait's start to the waiter's next event, summed and largest.
    pub wait_ns_total: u64,
    pub wait_ns_max: u64,
    /// How each of the waits ended.
    #[serde(default)]
    pub wait_ends: WaitEnds,
    /// Distinct pages that a busy scan returned.
    pub pages_watched: u64,
    pub disassociations: u64,
    /// Disassociations with `trunc` set.
    pub truncations: u64,
    pub delete_entries: u64,
    pub pin_drops: u64,
    /// Releases through a path that bypasses the devmap put (6.1's bio release).
    pub page_releases: u64,
    /// Refcounts of watched pages read by the daemon (quiet mode) that
    /// differed from the last one reported.
    #[serde(default)]
    pub page_samples: u64,
    pub wake_ups: u64,
    pub file_ops: u64,
    /// Did any busy scan return a page (see [`Coverage::reached_race_window`])?
    pub reached_race_window: bool,
}

/// How the waits ended, each counted once: when the waiter's next event
/// closes its wait, or at the end of the stream. The first that applies:
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitEnds {
    /// A `WakeUp` on the waited page came during the wait.
    pub woken: u64,
    /// The page was idle when the wait started (the refcount the wait's
    /// hook read): the condition held, nothing had to wake the waiter.
    pub idle_at_start: u64,
    /// The call returned an error right after: a signal got the waiter out
    /// while its page was still busy.
    pub interrupted: u64,
    /// The page went idle during the wait with no wake-up, and the waiter
    /// went on anyway: it had not slept yet, or something else woke it. A
    /// signal does: the wait re-checks its condition before it looks at
    /// signals, so a stranded waiter (the 6.1 `lost_wakeup`, reported
    /// once it stays silent past the grace period) that a signal wakes
    /// finds its page idle and goes on without an error.
    pub idle_unwoken: u64,
    /// None of these: the waiter went on although daxrace saw neither a
    /// wake-up nor its page idle (a drop it did not see: lost events, or a
    /// release by a path no hook covers).
    pub unexplained: u64,
    /// Still waiting when the stream ended, or forgotten with its call
    /// when it expired (no event for the window's time to live).
    pub unfinished: u64,
}

impl WaitEnds {
    /// Counts `wait`, which `ended_by` closed (None: another wait of the
    /// same task did).
    pub(super) fn bump(&mut self, wait: &PageWait, ended_by: Option<&Event>) {
        let interrupted =
            matches!(ended_by.map(|e| e.body), Some(EventBody::BreakExit { ret, .. }) if ret < 0);
        let n = if wait.woken {
            &mut self.woken
        } else if wait.idle_at_start {
            &mut self.idle_at_start
        } else if interrupted {
            &mut self.interrupted
        } else if wait.idle_unwoken.is_some() {
            &mut self.idle_unwoken
        } else {
            &mut self.unexplained
        };
        *n += 1;
    }

    pub fn total(&self) -> u64 {
        self.woken
            + self.idle_at_start
            + self.interrupted
            + self.idle_unwoken
            + self.unexplained
            + self.unfinished
    }
}

impl Coverage {
    /// True once a busy scan returned a page: only then could the race happen.
    pub fn reached_race_window(&self) -> bool {
        self.busy_scans_with_page > 0
    }
}

/// What the detector's bounds made it drop or could not place. Non-zero values
/// mean findings may be missing; they are metrics, never silent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedState {
    /// Open break-layouts calls evicted because `max_windows` was reached.
    pub windows_evicted: u64,
    /// Open calls with no event for `window_ttl_ns` (their exit was lost, or
    /// the task is stuck for good and was already reported).
    pub windows_expired: u64,
    /// Finished calls (kept to attribute truncations) evicted by `max_windows`.
    pub closed_windows_evicted: u64,
    /// Calls abandoned because the same task entered a call on another mapping
    /// without the previous one returning (an exit event was lost).
    pub windows_abandoned: u64,
    /// Watched pages evicted because `max_pages` was reached.
    pub pages_evicted: u64,
    /// Watched pages forgotten after `page_ttl_ns` without an event (normal).
    pub pages_expired: u64,
    /// Timeline entries pushed out of a full timeline (`timeline_len`).
    pub timeline_entries_dropped: u64,
    /// Finding keys forgotten by the duplicate filter (`max_reported`): a
    /// finding may be reported again after this.
    pub reported_keys_forgotten: u64,
    /// Break exits, scans and waits of tasks with no open call (a lost
    /// BreakEnter, or a hook that did not attach).
    pub exits_without_call: u64,
    pub scans_without_call: u64,
    pub waits_without_call: u64,
}
