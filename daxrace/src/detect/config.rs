//! The detector's settings: bounds, thresholds and grace periods.

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
