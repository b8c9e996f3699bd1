//! The detector's bounded memory: open and finished break-layouts calls,
//! watched pages, and the duplicate filter.
use std::collections::VecDeque;

use super::finding::{BreakCall, FindingKind};
use super::hash::{int_set, IntMap, IntSet};
use crate::event::{Event, PageRef, Task};

/// A page reaching the idle refcount, and who took it there.
#[derive(Clone, Copy, Debug)]
pub struct IdleTransition {
    pub ts_ns: u64,
    /// Who dropped the last pin; `None` when the drop itself was not seen
    /// (a sampled refcount).
    pub task: Option<Task>,
    pub refcount: i32,
}

/// A break-layouts waiter between its `WaitStart` and its next event.
#[derive(Clone, Copy, Debug)]
pub struct PageWait {
    pub pfn: u64,
    pub since_ns: u64,
    /// Set when the page went idle with no wake-up since: if the waiter was
    /// asleep, nothing will wake it.
    pub idle_unwoken: Option<IdleTransition>,
    /// The page was at the idle refcount when the wait started: its
    /// condition held, the waiter had no reason to sleep.
    pub idle_at_start: bool,
    /// A `WakeUp` on the page came during the wait.
    pub woken: bool,
}

/// An open break-layouts call of one task.
#[derive(Debug)]
pub struct BreakWindow {
    pub call: BreakCall,
    /// Nested hooks of one call (6.15 `ext4_break_layouts` around
    /// `dax_break_layout`, or xfs's outer and inner functions both hooked).
    pub depth: u32,
    /// The task's latest event: a waiter that produces none is not running.
    pub last_event_ns: u64,
    /// First busy scan since the last clean one: the call is blocked on pins.
    pub blocked_since: Option<u64>,
    pub wait: Option<PageWait>,
    /// xfs before 6.15: `xfs_break_dax_layouts` is one iteration and returned
    /// 0 after a busy scan; its caller's loop should call it again. Holds the
    /// exit time until the task shows whether it does.
    pub retry_pending_since: Option<u64>,
    /// The call's own steps (enter, scans, waits, exits).
    pub timeline: VecDeque<Event>,
}

/// A finished call, kept for a while to attribute the truncation that follows.
#[derive(Debug)]
pub struct ClosedBreak {
    pub call: BreakCall,
    pub closed_ns: u64,
    pub timeline: VecDeque<Event>,
}

/// A page that a busy scan returned: its refcount and transitions are followed
/// until it expires.
#[derive(Debug)]
pub struct WatchedPage {
    /// Mapping of the scan that found it busy.
    pub mapping: u64,
    pub last_seen_ns: u64,
    /// Latest known `_refcount` (scan, after a drop or release, disassociate).
    pub refcount: i32,
    pub idle_unwoken: Option<IdleTransition>,
    /// A wake-up for the page came since it was last seen busy. The same idle
    /// transition is often reported twice (7.x: the folio free path, then the
    /// bio release walk after it), around the wake-up: the second report must
    /// not look like an idle page nobody woke.
    pub woken: bool,
    /// Tasks seen dropping references: who held the pins.
    pub holders: Vec<Task>,
    pub timeline: VecDeque<Event>,
}

/// At most this many pin holders are remembered per page.
pub const MAX_HOLDERS: usize = 4;

impl WatchedPage {
    pub fn new(p: &PageRef, mapping: u64, ts_ns: u64, timeline_len: usize) -> Self {
        WatchedPage {
            mapping,
            last_seen_ns: ts_ns,
            refcount: p.refcount,
            idle_unwoken: None,
            woken: false,
            holders: Vec::new(),
            timeline: VecDeque::with_capacity(timeline_len.min(64)),
        }
    }

    pub fn note_holder(&mut self, task: &Task) {
        if self.holders.len() < MAX_HOLDERS && !self.holders.iter().any(|t| t.tid == task.tid) {
            self.holders.push(*task);
        }
    }
}

/// A call that returned 0 after a busy scan whose page was still busy: if
/// only `dax_delete_mapping_entry` is hooked, the truncation that follows
/// cannot show the page's refcount, so it is judged by the last count seen.
#[derive(Clone, Copy, Debug)]
pub struct SuspectPage {
    pub window_id: u64,
    pub tid: u32,
    pub mapping: u64,
    pub pfn: u64,
    pub closed_ns: u64,
}

/// What a finding is about: reported once per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FindingKey {
    pub kind: FindingKind,
    /// The break-layouts call's id, or the mapping when no call is known.
    pub scope: u64,
    pub pfn: u64,
}

/// The duplicate filter, bounded: the oldest keys are forgotten first.
#[derive(Debug)]
pub struct ReportedSet {
    set: IntSet<FindingKey>,
    order: VecDeque<FindingKey>,
    cap: usize,
}

impl ReportedSet {
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        ReportedSet {
            set: int_set(cap.min(1024)),
            order: VecDeque::with_capacity(cap.min(1024)),
            cap,
        }
    }

    /// True the first time a key is seen; `forgotten` counts evicted keys.
    pub fn first(&mut self, key: FindingKey, forgotten: &mut u64) -> bool {
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
                *forgotten += 1;
            }
        }
        self.set.insert(key);
        self.order.push_back(key);
        true
    }
}

/// Appends to a bounded timeline, dropping (and counting) the oldest entry.
pub fn push_capped(timeline: &mut VecDeque<Event>, cap: usize, ev: &Event, dropped: &mut u64) {
    if cap == 0 {
        *dropped += 1;
        return;
    }
    if timeline.len() >= cap {
        timeline.pop_front();
        *dropped += 1;
    }
    timeline.push_back(*ev);
}

/// Removes about 1/16 of the entries (at least one), oldest by `age` first,
/// skipping those `keep` protects; returns how many went. Batches keep the
/// cost per insertion constant when a map sits at its bound.
pub fn evict_oldest<K, V>(
    map: &mut IntMap<K, V>,
    age: impl Fn(&V) -> u64,
    keep: impl Fn(&K, &V) -> bool,
) -> u64
where
    K: Copy + Eq + std::hash::Hash,
{
    let mut candidates: Vec<(u64, K)> = map
        .iter()
        .filter(|(k, v)| !keep(k, v))
        .map(|(k, v)| (age(v), *k))
        .collect();
    if candidates.is_empty() {
        return 0;
    }
    let n = (candidates.len() / 16).max(1);
    if n < candidates.len() {
        candidates.select_nth_unstable_by_key(n - 1, |c| c.0);
    }
    for (_, k) in &candidates[..n] {
        map.remove(k);
    }
    n as u64
}
