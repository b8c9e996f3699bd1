//! Edge cases of the detector: refcount models, expiry, bounds, duplicates,
//! the xfs retry loop, nesting, inference, and the finding format.
use super::*;
use crate::event::{Comm, Filesystem, PageRef, Task};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const MAPPING: u64 = 0xffff_8880_1234_5000;
const OTHER_MAPPING: u64 = 0xffff_8880_9999_0000;
const PFN_X: u64 = 0x10_0000;
const PFN_Y: u64 = 0x10_0001;

fn task(tid: u32, comm: &str) -> Task {
    Task {
        pid: tid,
        tid,
        comm: Comm::new(comm),
        cpu: 0,
    }
}

fn punch() -> Task {
    task(100, "punch")
}

fn dio() -> Task {
    task(200, "dio")
}

fn page(pfn: u64, refcount: i32) -> PageRef {
    PageRef {
        pfn,
        page: 0xffff_ea00_0000_0000 + pfn * 64,
        refcount,
    }
}

fn ev(ts_ns: u64, task: Task, body: EventBody) -> Event {
    Event::synthetic(ts_ns, task, body)
}

fn enter(ts: u64, t: Task, fs: Filesystem, mapping: u64) -> Event {
    ev(
        ts,
        t,
        EventBody::BreakEnter {
            fs,
            dev: (259 << 20) | 1,
            ino: 12,
            mapping,
        },
    )
}

fn exit(ts: u64, t: Task, fs: Filesystem, ret: i64) -> Event {
    ev(ts, t, EventBody::BreakExit { fs, ret })
}

fn scan(ts: u64, t: Task, p: Option<PageRef>) -> Event {
    ev(
        ts,
        t,
        EventBody::BusyScan {
            mapping: MAPPING,
            start: 0,
            end: i64::MAX,
            page: p,
        },
    )
}

fn wait(ts: u64, t: Task, p: PageRef) -> Event {
    ev(ts, t, EventBody::WaitStart { page: p })
}

fn pin_dropped(ts: u64, t: Task, p: PageRef, refs: u32) -> Event {
    ev(ts, t, EventBody::PinDropped { page: p, refs })
}

fn released(ts: u64, t: Task, p: PageRef) -> Event {
    ev(ts, t, EventBody::PageReleased { page: p })
}

fn wake(ts: u64, t: Task, p: PageRef) -> Event {
    ev(ts, t, EventBody::WakeUp { page: p })
}

fn truncate(ts: u64, t: Task, p: PageRef) -> Event {
    disassociate(ts, t, p, MAPPING, true)
}

fn disassociate(ts: u64, t: Task, p: PageRef, page_mapping: u64, trunc: bool) -> Event {
    ev(
        ts,
        t,
        EventBody::Disassociate {
            mapping: MAPPING,
            page: p,
            page_mapping,
            trunc,
        },
    )
}

fn delete(ts: u64, t: Task, index: u64) -> Event {
    ev(
        ts,
        t,
        EventBody::DeleteEntry {
            mapping: MAPPING,
            index,
        },
    )
}

fn run(cfg: DetectorConfig, events: &[Event]) -> (Detector, Vec<Finding>) {
    let mut d = Detector::new(cfg);
    let mut out = Vec::new();
    for e in events {
        d.observe(e, &mut out);
    }
    d.finish(&mut out);
    (d, out)
}

fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}

/// A correct ext4 call: X busy, wait, X dropped to idle and woken, clean scan.
fn clean_ext4_call(t0: u64, idle: i32, pin: i32) -> Vec<Event> {
    let (a, b) = (punch(), dio());
    let busy = idle + pin;
    vec![
        enter(t0, a, Filesystem::Ext4, MAPPING),
        scan(t0 + 1_000, a, Some(page(PFN_X, busy))),
        wait(t0 + 2_000, a, page(PFN_X, busy)),
        pin_dropped(t0 + 3_000, b, page(PFN_X, busy), pin as u32),
        wake(t0 + 3_500, b, page(PFN_X, idle)),
        scan(t0 + 4_000, a, None),
        exit(t0 + 5_000, a, Filesystem::Ext4, 0),
        truncate(t0 + 6_000, a, page(PFN_X, idle)),
    ]
}

#[test]
fn a_clean_call_gives_no_finding_in_either_refcount_model() {
    for (idle, pin) in [(1, 1), (1, 1024), (0, 1), (0, 1024)] {
        let (d, out) = run(
            DetectorConfig::with_idle_refcount(idle),
            &clean_ext4_call(S, idle, pin),
        );
        assert!(out.is_empty(), "idle {idle} pin {pin}: {out:#?}");
        let c = d.coverage();
        assert!(c.reached_race_window(), "a busy scan returned a page");
        assert_eq!(c.breaks_started.ext4, 1);
        assert_eq!(c.breaks_finished.ext4, 1);
        assert_eq!((c.busy_scans, c.busy_scans_with_page, c.waits), (2, 1, 1));
        assert_eq!((c.pin_drops, c.wake_ups, c.truncations), (1, 1, 1));
        assert_eq!(
            c.wait_ns_total, 2_000,
            "wait lasts until the waiter's next event"
        );
    }
}

#[test]
fn idle_zero_model_judges_refcount_one_as_pinned_and_zero_as_idle() {
    let a = punch();
    let cfg = DetectorConfig::with_idle_refcount(0);
    assert_eq!(cfg.idle_refcount, 0);
    let (_, out) = run(
        cfg.clone(),
        &[
            truncate(S, a, page(PFN_X, 0)),
            truncate(S + 1, a, page(PFN_Y, 1)),
        ],
    );
    assert_eq!(kinds(&out), [FindingKind::TruncateWhilePinned]);
    assert_eq!(out[0].pfn, PFN_Y);
    assert_eq!((out[0].pins, out[0].refs), (None, Some(1)));
    // The same refcount 1 is idle before 6.15.
    let (_, out) = run(
        DetectorConfig::with_idle_refcount(1),
        &[truncate(S, a, page(PFN_Y, 1))],
    );
    assert!(out.is_empty(), "{out:#?}");
}

#[test]
fn refcounts_split_into_pins_and_references() {
    assert_eq!(split_refcount(1025, 1, 1024), (Some(1), 0));
    assert_eq!(split_refcount(4097, 1, 1024), (Some(4), 0));
    assert_eq!(split_refcount(1027, 1, 1024), (Some(1), 2));
    assert_eq!(split_refcount(1024, 0, 1024), (Some(1), 0));
    assert_eq!(split_refcount(3, 1, 0), (None, 2));
    assert_eq!(split_refcount(0, 1, 0), (None, 0), "never negative");
}

#[test]
fn truncation_without_trunc_flag_is_not_judged_pinned() {
    let (_, out) = run(
        DetectorConfig::default(),
        &[disassociate(S, punch(), page(PFN_X, 2), MAPPING, false)],
    );
    assert!(out.is_empty(), "{out:#?}");
}

#[test]
fn mapping_mismatch_ignores_null_same_and_shared_marker() {
    let a = punch();
    let events = [
        disassociate(S, a, page(PFN_X, 1), 0, true),
        disassociate(S + 1, a, page(PFN_X, 1), MAPPING, true),
        disassociate(S + 2, a, page(PFN_X, 1), PAGE_MAPPING_DAX_SHARED, true),
        disassociate(S + 3, a, page(PFN_Y, 1), OTHER_MAPPING, false),
    ];
    let (_, out) = run(DetectorConfig::default(), &events);
    assert_eq!(kinds(&out), [FindingKind::MappingMismatch]);
    let f = &out[0];
    assert_eq!(
        (f.pfn, f.mapping, f.page_mapping),
        (PFN_Y, MAPPING, Some(OTHER_MAPPING))
    );
    assert!(f.summary().contains("page->mapping"), "{}", f.summary());
}

/// 6.15+'s `dax_disassociate_entry.isra.0` loses its mapping argument: the
/// hook reports mapping 0 and a page that still points at its file. Seen as
/// 1,857 false mismatches on 7.3 before this rule.
#[test]
fn mapping_mismatch_needs_a_known_mapping() {
    let unknown = ev(
        S,
        punch(),
        EventBody::Disassociate {
            mapping: 0,
            page: page(PFN_X, 1),
            page_mapping: OTHER_MAPPING,
            trunc: false,
        },
    );
    let (_, out) = run(DetectorConfig::default(), &[unknown]);
    assert!(out.is_empty(), "{out:#?}");
}

#[test]
fn duplicates_are_suppressed_per_call_and_page() {
    let a = punch();
    let mut events = vec![
        enter(S, a, Filesystem::Ext4, MAPPING),
        scan(S + 1, a, None),
        exit(S + 2, a, Filesystem::Ext4, 0),
    ];
    for i in 0..5 {
        events.push(truncate(S + 10 + i, a, page(PFN_Y, 2)));
        events.push(disassociate(
            S + 20 + i,
            a,
            page(PFN_Y, 1),
            OTHER_MAPPING,
            true,
        ));
    }
    // A second call by the same task is a new scope: reported again.
    events.push(enter(S + 100, a, Filesystem::Ext4, MAPPING));
    events.push(scan(S + 101, a, None));
    events.push(exit(S + 102, a, Filesystem::Ext4, 0));
    events.push(truncate(S + 103, a, page(PFN_Y, 2)));
    let (_, out) = run(DetectorConfig::default(), &events);
    assert_eq!(
        kinds(&out),
        [
            FindingKind::TruncateWhilePinned,
            FindingKind::MappingMismatch,
            FindingKind::TruncateWhilePinned
        ]
    );
    let ids: Vec<u64> = out
        .iter()
        .map(|f| f.break_call.expect("attributed").id)
        .collect();
    assert_eq!(ids, [1, 1, 2]);
}

fn stranded_waiter(release: Event) -> Vec<Event> {
    let a = punch();
    vec![
        enter(S, a, Filesystem::Ext4, MAPPING),
        scan(S + 1_000, a, Some(page(PFN_X, 2))),
        wait(S + 2_000, a, page(PFN_X, 2)),
        release,
    ]
}

#[test]
fn lost_wakeup_fires_by_advance_after_the_grace_and_only_once() {
    let events = stranded_waiter(released(S + 10 * MS, dio(), page(PFN_X, 1)));
    let mut d = Detector::new(DetectorConfig {
        stall_threshold_ns: 3 * S,
        ..Default::default()
    });
    let mut out = Vec::new();
    for e in &events {
        d.observe(e, &mut out);
    }
    d.advance(S + 10 * MS + S, &mut out);
    assert!(out.is_empty(), "exactly the grace is not longer than it");
    d.advance(S + 10 * MS + S + 1, &mut out);
    assert_eq!(kinds(&out), [FindingKind::LostWakeup]);
    let f = &out[0];
    assert_eq!(f.task.tid, 100);
    assert_eq!(f.releaser.expect("releaser").tid, 200);
    assert_eq!(f.released_ns, Some(S + 10 * MS));
    assert_eq!(f.duration_ns, Some(10 * MS + S + 1 - 2_000));
    // The signal that finally gets it out does not report it again.
    d.advance(S + 5 * S, &mut out);
    d.observe(&exit(S + 5 * S, punch(), Filesystem::Ext4, -512), &mut out);
    d.finish(&mut out);
    assert_eq!(out.len(), 2, "plus one stall: {out:#?}");
    assert_eq!(out[1].kind, FindingKind::Stall);
    assert_eq!(d.coverage().breaks_failed, 1);
}

#[test]
fn lost_wakeup_via_pin_drop_without_wake_is_reported_at_finish() {
    let events = stranded_waiter(pin_dropped(S + 3_000, dio(), page(PFN_X, 2), 1));
    let (_, out) = run(DetectorConfig::default(), &events);
    assert_eq!(kinds(&out), [FindingKind::LostWakeup]);
}

/// 7.x reports one idle transition twice around the wake-up: the folio free
/// path (pin-drop hook), `wake_up_var`, then the bio release walk after the
/// release returned. A woken waiter that is slow to run again (it must retake
/// the inode locks) is no lost wake-up. Seen as false lost_wakeup findings on
/// xfs under 7.3 before `WatchedPage::woken`.
#[test]
fn a_second_report_of_the_same_idle_transition_after_the_wake_up_is_no_lost_wakeup() {
    let cfg = DetectorConfig {
        idle_refcount: 0,
        pin_bias: 1024,
        stall_threshold_ns: 60 * S,
        ..Default::default()
    };
    let a = punch();
    let events = vec![
        enter(S, a, Filesystem::Xfs, MAPPING),
        scan(S + 1_000, a, Some(page(PFN_X, 1024))),
        wait(S + 2_000, a, page(PFN_X, 1024)),
        released(S + 3_000, dio(), page(PFN_X, 0)),
        wake(S + 3_100, dio(), page(PFN_X, 0)),
        released(S + 3_200, dio(), page(PFN_X, 0)),
    ];
    let mut d = Detector::new(cfg.clone());
    let mut out = Vec::new();
    for e in &events {
        d.observe(e, &mut out);
    }
    d.advance(S + 3 * S, &mut out);
    assert!(out.is_empty(), "{out:#?}");

    // But a page pinned again and released without a wake-up still counts.
    let mut again = events.clone();
    again.extend([pin_dropped(S + 4 * S, dio(), page(PFN_X, 1024), 1024)]);
    let mut d = Detector::new(cfg);
    let mut out = Vec::new();
    for e in &again {
        d.observe(e, &mut out);
    }
    d.advance(S + 6 * S, &mut out);
    assert_eq!(kinds(&out), [FindingKind::LostWakeup], "{out:#?}");
}

#[test]
fn a_waiter_that_runs_on_after_an_unwoken_release_is_fine() {
    // The release lands between the wait's start and its condition check: the
    // waiter never sleeps and scans again at once.
    let a = punch();
    let mut events = stranded_waiter(released(S + 2_500, dio(), page(PFN_X, 1)));
    events.extend([
        scan(S + 4_000, a, None),
        exit(S + 5_000, a, Filesystem::Ext4, 0),
    ]);
    let (d, out) = run(DetectorConfig::default(), &events);
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(d.coverage().page_releases, 1);
}

#[test]
fn an_interrupted_wait_on_a_pinned_page_is_no_lost_wakeup() {
    let a = punch();
    let mut events = stranded_waiter(pin_dropped(S + 3_000, dio(), page(PFN_X, 3), 1));
    events.push(exit(S + 4_000, a, Filesystem::Ext4, -4));
    let (_, out) = run(DetectorConfig::default(), &events);
    assert!(out.is_empty(), "page still at 2: {out:#?}");
}

#[test]
fn stall_reports_once_with_pin_holders_and_duration() {
    let (a, b) = (punch(), dio());
    let cfg = DetectorConfig {
        stall_threshold_ns: 100 * MS,
        ..Default::default()
    };
    let events = [
        enter(S, a, Filesystem::Xfs, MAPPING),
        scan(S + 1, a, Some(page(PFN_X, 1025))),
        wait(S + 2, a, page(PFN_X, 1025)),
        // Another task's event moves time past the threshold.
        delete(S + 150 * MS, b, 7),
        pin_dropped(S + 300 * MS, b, page(PFN_X, 1025), 1024),
        wake(S + 300 * MS, b, page(PFN_X, 1)),
        exit(S + 300 * MS + 1, a, Filesystem::Xfs, 0),
        enter(S + 300 * MS + 2, a, Filesystem::Xfs, MAPPING),
        scan(S + 300 * MS + 3, a, None),
        exit(S + 300 * MS + 4, a, Filesystem::Xfs, 0),
    ];
    let (d, out) = run(
        DetectorConfig {
            pin_bias: 1024,
            ..cfg
        },
        &events,
    );
    assert_eq!(kinds(&out), [FindingKind::Stall], "{out:#?}");
    let f = &out[0];
    assert_eq!(
        f.ts_ns,
        S + 150 * MS,
        "reported when it crossed the threshold"
    );
    assert_eq!(f.duration_ns, Some(150 * MS - 1));
    assert_eq!((f.refcount, f.pins, f.refs), (Some(1025), Some(1), Some(0)));
    assert!(f.pin_holders.is_empty(), "not released yet when reported");
    assert_eq!(
        d.coverage().breaks_started.xfs,
        1,
        "xfs iterations are one call"
    );
    assert_eq!(d.coverage().breaks_finished.xfs, 1);
}

#[test]
fn xfs_iteration_returning_zero_is_judged_by_what_the_task_does_next() {
    let (a, b) = (punch(), dio());
    let iteration = |t0: u64| {
        vec![
            enter(t0, a, Filesystem::Xfs, MAPPING),
            scan(t0 + 1, a, Some(page(PFN_X, 2))),
            wait(t0 + 2, a, page(PFN_X, 2)),
            pin_dropped(t0 + 3, b, page(PFN_X, 2), 1),
            wake(t0 + 4, b, page(PFN_X, 1)),
            exit(t0 + 5, a, Filesystem::Xfs, 0),
        ]
    };
    // The outer loop retries and ends with a clean scan: fine.
    let mut events = iteration(S);
    events.extend([
        enter(S + 10, a, Filesystem::Xfs, MAPPING),
        scan(S + 11, a, None),
        exit(S + 12, a, Filesystem::Xfs, 0),
        truncate(S + 13, a, page(PFN_X, 1)),
    ]);
    let (_, out) = run(DetectorConfig::default(), &events);
    assert!(out.is_empty(), "{out:#?}");
    // The outer loop stops after the busy iteration: the truncation shows it.
    let mut events = iteration(S);
    events.push(delete(S + 20, a, 0));
    let mut d = Detector::new(DetectorConfig::default());
    let mut out = Vec::new();
    for e in &events {
        d.observe(e, &mut out);
    }
    assert_eq!(kinds(&out), [FindingKind::BreakWithoutCleanScan]);
    assert_eq!(out[0].break_call.expect("call").end_ns, Some(S + 5));
    // A retry after a long pause (the task was descheduled) is still a retry.
    let mut events = iteration(S);
    events.push(delete(S + 10, b, 3));
    events.extend(iteration(S + 30 * S));
    events.extend([
        enter(31 * S, a, Filesystem::Xfs, MAPPING),
        scan(31 * S + 1, a, None),
        exit(31 * S + 2, a, Filesystem::Xfs, 0),
    ]);
    let cfg = DetectorConfig {
        stall_threshold_ns: 60 * S,
        ..Default::default()
    };
    let (d, out) = run(cfg, &events);
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(d.coverage().breaks_started.xfs, 1);
    // Nothing follows at all: the end of the stream decides, or the window TTL.
    let (_, out) = run(DetectorConfig::default(), &iteration(S));
    assert_eq!(kinds(&out), [FindingKind::BreakWithoutCleanScan]);
    let mut d = Detector::new(DetectorConfig::default());
    let mut out = Vec::new();
    for e in &iteration(S) {
        d.observe(e, &mut out);
    }
    d.advance(S + 5 + d.config().window_ttl_ns - 1, &mut out);
    assert!(out.is_empty());
    d.advance(S + 5 + d.config().window_ttl_ns, &mut out);
    assert_eq!(kinds(&out), [FindingKind::BreakWithoutCleanScan]);
}

#[test]
fn nested_break_hooks_are_one_call_and_truncation_inside_is_attributed() {
    // 6.15+: ext4_break_layouts wraps dax_break_layout, which truncates itself.
    let a = punch();
    let cfg = DetectorConfig::with_idle_refcount(0);
    let events = [
        enter(S, a, Filesystem::Ext4, MAPPING),
        enter(S + 1, a, Filesystem::Generic, MAPPING),
        scan(S + 2, a, None),
        truncate(S + 3, a, page(PFN_Y, 1)),
        exit(S + 4, a, Filesystem::Generic, 0),
        exit(S + 5, a, Filesystem::Ext4, 0),
    ];
    let (d, out) = run(cfg, &events);
    assert_eq!(kinds(&out), [FindingKind::TruncateWhilePinned]);
    let call = out[0].break_call.expect("attributed to the open call");
    assert_eq!((call.id, call.fs, call.end_ns), (1, Filesystem::Ext4, None));
    assert_eq!(d.coverage().breaks_started.total(), 1);
    assert_eq!(d.coverage().breaks_finished.ext4, 1);
}

#[test]
fn truncation_after_a_dirty_exit_is_inferred_from_the_last_count_seen() {
    // Only dax_delete_mapping_entry is hooked (Debian 6.12): no refcount there.
    let a = punch();
    let events = [
        enter(S, a, Filesystem::Ext4, MAPPING),
        scan(S + 1, a, Some(page(PFN_X, 2))),
        exit(S + 2, a, Filesystem::Ext4, 0),
        delete(S + 3, a, 0),
        delete(S + 4, a, 1),
    ];
    let (_, out) = run(DetectorConfig::default(), &events);
    assert_eq!(
        kinds(&out),
        [
            FindingKind::BreakWithoutCleanScan,
            FindingKind::TruncateWhilePinned
        ]
    );
    assert!(out[1].inferred);
    assert_eq!((out[1].pfn, out[1].refcount), (PFN_X, Some(2)));
    assert!(
        out[1].summary().contains("inferred"),
        "{}",
        out[1].summary()
    );
    // When the page was seen going idle first, nothing is inferred.
    let events = [
        enter(S, a, Filesystem::Ext4, MAPPING),
        scan(S + 1, a, Some(page(PFN_X, 2))),
        released(S + 2, dio(), page(PFN_X, 1)),
        exit(S + 3, a, Filesystem::Ext4, 0),
        delete(S + 4, a, 0),
    ];
    let (_, out) = run(DetectorConfig::default(), &events);
    assert_eq!(kinds(&out), [FindingKind::BreakWithoutCleanScan]);
}

#[test]
fn closed_calls_expire_and_truncations_then_stand_alone() {
    let a = punch();
    let cfg = DetectorConfig {
        closed_window_ttl_ns: S,
        ..Default::default()
    };
    let events = [
        enter(S, a, Filesystem::Ext4, MAPPING),
        scan(S + 1, a, None),
        exit(S + 2, a, Filesystem::Ext4, 0),
        truncate(5 * S, a, page(PFN_Y, 2)),
    ];
    let (_, out) = run(cfg, &events);
    assert_eq!(kinds(&out), [FindingKind::TruncateWhilePinned]);
    assert_eq!(out[0].break_call, None);
    assert_eq!(out[0].fs, Filesystem::Unknown);
    assert_eq!(out[0].mapping, MAPPING);
}

#[test]
fn pages_and_open_calls_expire_by_event_time() {
    let (a, b) = (punch(), dio());
    let cfg = DetectorConfig {
        page_ttl_ns: S,
        window_ttl_ns: 10 * S,
        ..Default::default()
    };
    let mut d = Detector::new(cfg);
    let mut out = Vec::new();
    // An open call that never returns (its exit was lost) and a page it saw.
    d.observe(&enter(S, a, Filesystem::Ext4, MAPPING), &mut out);
    d.observe(&scan(S + 1, a, Some(page(PFN_X, 2))), &mut out);
    d.observe(&scan(S + 2, b, Some(page(PFN_Y, 2))), &mut out);
    assert_eq!((d.open_calls(), d.watched_pages()), (1, 2));
    d.advance(3 * S + 5, &mut out);
    assert_eq!(d.watched_pages(), 0);
    assert_eq!(d.dropped().pages_expired, 2);
    assert_eq!(d.open_calls(), 1);
    d.advance(12 * S, &mut out);
    assert_eq!(d.open_calls(), 0);
    assert_eq!(d.dropped().windows_expired, 1);
    assert_eq!(d.dropped().scans_without_call, 1);
    assert_eq!(kinds(&out), [FindingKind::Stall]);
}

#[test]
fn a_waited_on_page_outlives_its_ttl() {
    let events = stranded_waiter(released(S + 3 * S, dio(), page(PFN_X, 1)));
    let cfg = DetectorConfig {
        page_ttl_ns: S,
        ..Default::default()
    };
    let (_, out) = run(cfg, &events);
    let lost: Vec<&Finding> = out
        .iter()
        .filter(|f| f.kind == FindingKind::LostWakeup)
        .collect();
    assert_eq!(lost.len(), 1, "{out:#?}");
    assert!(
        lost[0]
            .timeline
            .iter()
            .any(|e| matches!(e.body, EventBody::PageReleased { .. })),
        "the page's history is kept: {:#?}",
        lost[0].timeline
    );
}

#[test]
fn bounds_evict_and_count() {
    let cfg = DetectorConfig {
        max_pages: 2,
        max_windows: 2,
        timeline_len: 3,
        ..Default::default()
    };
    let mut d = Detector::new(cfg);
    let mut out = Vec::new();
    for i in 0..3u32 {
        let t = task(10 + i, "punch");
        d.observe(
            &enter(S + u64::from(i), t, Filesystem::Ext4, MAPPING),
            &mut out,
        );
    }
    assert_eq!(d.open_calls(), 2);
    assert_eq!(d.dropped().windows_evicted, 1);
    let b = dio();
    for i in 0..3u64 {
        d.observe(&scan(2 * S + i, b, Some(page(PFN_X + i, 2))), &mut out);
    }
    assert_eq!(d.watched_pages(), 2);
    assert_eq!(d.dropped().pages_evicted, 1);
    for i in 0..5u64 {
        d.observe(&pin_dropped(3 * S + i, b, page(PFN_X + 2, 9), 1), &mut out);
    }
    assert_eq!(
        d.dropped().timeline_entries_dropped,
        3,
        "1 scan + 5 drops into 3 slots"
    );
    // The reported-key filter is bounded too.
    let mut d = Detector::new(DetectorConfig {
        max_reported: 1,
        ..Default::default()
    });
    for pfn in [PFN_X, PFN_Y, PFN_X] {
        d.observe(&truncate(S, punch(), page(pfn, 2)), &mut out);
    }
    assert_eq!(d.dropped().reported_keys_forgotten, 2);
}

#[test]
fn finding_timelines_are_bounded_and_ordered() {
    let a = punch();
    let cfg = DetectorConfig {
        timeline_len: 4,
        ..Default::default()
    };
    let mut events = vec![enter(S, a, Filesystem::Ext4, MAPPING)];
    for i in 0..10 {
        events.push(scan(S + 10 + i, a, Some(page(PFN_X, 2))));
    }
    events.push(exit(S + 100, a, Filesystem::Ext4, 0));
    let (_, out) = run(cfg, &events);
    assert_eq!(out[0].kind, FindingKind::BreakWithoutCleanScan);
    let tl = &out[0].timeline;
    assert_eq!(tl.len(), 4);
    assert!(tl.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    assert_eq!(tl.last().map(|e| e.ts_ns), Some(S + 100));
}

#[test]
fn a_call_on_another_mapping_abandons_one_whose_exit_was_lost() {
    let a = punch();
    let events = [
        enter(S, a, Filesystem::Ext4, MAPPING),
        enter(S + 1, a, Filesystem::Ext4, OTHER_MAPPING),
        scan(S + 2, a, None),
        exit(S + 3, a, Filesystem::Ext4, 0),
        exit(S + 4, a, Filesystem::Ext4, 0),
    ];
    let (d, out) = run(DetectorConfig::default(), &events);
    assert!(out.is_empty());
    assert_eq!(d.dropped().windows_abandoned, 1);
    assert_eq!(d.dropped().exits_without_call, 1);
}

#[test]
fn findings_round_trip_through_json_and_read_as_one_line() {
    let (a, b) = (punch(), dio());
    let mut events = stranded_waiter(released(S + 5_000, b, page(PFN_X, 1)));
    events.push(exit(S + 5 * S, a, Filesystem::Ext4, -512));
    let mut all = run(DetectorConfig::default(), &events).1;
    all.extend(run(DetectorConfig::default(), &[truncate(S, a, page(PFN_Y, 3))]).1);
    let kinds_seen: Vec<FindingKind> = kinds(&all);
    assert!(kinds_seen.contains(&FindingKind::LostWakeup));
    assert!(kinds_seen.contains(&FindingKind::TruncateWhilePinned));
    for f in &all {
        let json = serde_json::to_string(f).expect("serialises");
        let back: Finding = serde_json::from_str(&json).expect("parses");
        assert_eq!(&back, f);
        let line = f.summary();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with(f.kind.as_str()), "{line}");
        assert!(
            json.contains(&format!("\"kind\":\"{}\"", f.kind.as_str())),
            "{json}"
        );
    }
    let lost = all
        .iter()
        .find(|f| f.kind == FindingKind::LostWakeup)
        .expect("lost wake-up");
    assert!(
        lost.summary().contains("dio[200/200]"),
        "{}",
        lost.summary()
    );
    assert_eq!(format_dev((259 << 20) | 1), "259:1");
    for k in FindingKind::ALL {
        let s = serde_json::to_string(&k).expect("kind");
        assert_eq!(s, format!("\"{}\"", k.as_str()));
    }
}

#[test]
fn coverage_and_dropped_state_serialise() {
    let (d, _) = run(DetectorConfig::default(), &[delete(S, punch(), 1)]);
    assert!(!d.coverage().reached_race_window());
    let c = serde_json::to_value(d.coverage()).expect("coverage");
    assert_eq!(c["delete_entries"], 1);
    assert_eq!(c["reached_race_window"], false);
    assert_eq!(c["breaks_started"]["ext4"], 0);
    let dropped = serde_json::to_value(d.dropped()).expect("dropped");
    assert_eq!(dropped["pages_evicted"], 0);
}

/// Every wait is counted once, by how it ended: woken, page idle at its
/// start, interrupted, page gone idle with no wake-up, neither, or still
/// waiting at the end.
#[test]
fn how_each_wait_ended() {
    let (a, b) = (punch(), dio());
    let cfg = || DetectorConfig::with_idle_refcount(1);
    // Woken: the clean call.
    let (d, _) = run(cfg(), &clean_ext4_call(S, 1, 1));
    let e = d.coverage().wait_ends;
    assert_eq!((e.woken, e.total()), (1, 1), "{e:?}");

    // The page was already idle when the wait started (its drop raced the
    // scan): no wake-up needed, and daxrace saw no drop either.
    let idle_at_start = vec![
        enter(S, a, Filesystem::Ext4, MAPPING),
        scan(S + 1_000, a, Some(page(PFN_X, 2))),
        wait(S + 2_000, a, page(PFN_X, 1)),
        scan(S + 3_000, a, None),
        exit(S + 4_000, a, Filesystem::Ext4, 0),
    ];
    let (d, out) = run(cfg(), &idle_at_start);
    assert!(out.is_empty(), "{out:#?}");
    let e = d.coverage().wait_ends;
    assert_eq!((e.idle_at_start, e.total()), (1, 1), "{e:?}");

    // The same with the wait's refcount still busy: neither seen.
    let mut unexplained = idle_at_start.clone();
    unexplained[2] = wait(S + 2_000, a, page(PFN_X, 2));
    let (d, _) = run(cfg(), &unexplained);
    let e = d.coverage().wait_ends;
    assert_eq!((e.unexplained, e.total()), (1, 1), "{e:?}");

    // The 6.1 lost wake-up: idle, no wake-up, a signal gets the waiter out.
    let lost = vec![
        enter(S, a, Filesystem::Ext4, MAPPING),
        scan(S + 1_000, a, Some(page(PFN_X, 2))),
        wait(S + 2_000, a, page(PFN_X, 2)),
        released(S + 3_000, b, page(PFN_X, 1)),
        exit(S + 3 * S, a, Filesystem::Ext4, -4),
    ];
    let (d, out) = run(cfg(), &lost);
    assert!(kinds(&out).contains(&FindingKind::LostWakeup), "{out:#?}");
    let e = d.coverage().wait_ends;
    assert_eq!((e.interrupted, e.total()), (1, 1), "{e:?}");

    // Idle with no wake-up, but the waiter went on by itself.
    let mut went_on = lost.clone();
    went_on[4] = scan(S + 4_000, a, None);
    went_on.push(exit(S + 5_000, a, Filesystem::Ext4, 0));
    let (d, out) = run(cfg(), &went_on);
    assert!(out.is_empty(), "{out:#?}");
    let e = d.coverage().wait_ends;
    assert_eq!((e.idle_unwoken, e.total()), (1, 1), "{e:?}");

    // Still asleep when the stream ends.
    let (d, out) = run(cfg(), &lost[..4]);
    assert!(kinds(&out).contains(&FindingKind::LostWakeup), "{out:#?}");
    let e = d.coverage().wait_ends;
    assert_eq!((e.unfinished, e.total()), (1, 1), "{e:?}");
}
