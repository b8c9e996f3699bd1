//! The detector against a model of the kernel protocol (`model/`): the 2018
//! LKML interleavings and the Debian 6.1 lost wake-up written out by hand,
//! then thousands of random interleavings of three kernel variants in both
//! refcount models, where the detector must flag exactly what the model did.
//!
//! `PROPTEST_CASES` sets the number of random cases (default 2000);
//! `PROPTEST_RNG_SEED` picks other interleavings than the default seed's.
//! Run with `--nocapture` to see the counts.
mod model;

use std::collections::BTreeMap;

use daxrace::detect::{Detector, DetectorConfig, Finding, FindingKind};
use daxrace::event::{Event, EventBody, Filesystem, PageRef, Task};
use model::{event, page_ref, task, BreakShape, ModelConfig, Truth, Variant};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

const S: u64 = 1_000_000_000;
const MAPPING: u64 = 0xffff_8880_0010_0000;
const PFN_X: u64 = 0x10_0000;
const PFN_Y: u64 = 0x10_0001;
const DEFAULT_CASES: u32 = 2000;
const DEFAULT_SEED: u64 = 0x00da_0ace;

fn detect(cfg: DetectorConfig, events: &[Event]) -> Vec<Finding> {
    let mut d = Detector::new(cfg);
    let mut out = Vec::new();
    for e in events {
        d.observe(e, &mut out);
    }
    d.finish(&mut out);
    out
}

fn of_kind(findings: &[Finding], kind: FindingKind) -> Vec<&Finding> {
    findings.iter().filter(|f| f.kind == kind).collect()
}

/// Thread A punches a hole, thread B's direct I/O pins pages of the file.
fn thread_a() -> Task {
    task(100, "punch_hole")
}

fn thread_b() -> Task {
    task(200, "dio_read")
}

/// A page event of `t` on page `pfn` seen at `refcount`.
fn page_event(ts: u64, t: Task, pfn: u64, refcount: i32, body: fn(PageRef) -> EventBody) -> Event {
    event(ts, t, body(page_ref(pfn, refcount)))
}

fn wait_start(ts: u64, t: Task, pfn: u64, refcount: i32) -> Event {
    page_event(ts, t, pfn, refcount, |page| EventBody::WaitStart { page })
}

fn wake_up(ts: u64, t: Task, pfn: u64, refcount: i32) -> Event {
    page_event(ts, t, pfn, refcount, |page| EventBody::WakeUp { page })
}

fn released(ts: u64, t: Task, pfn: u64, refcount: i32) -> Event {
    page_event(ts, t, pfn, refcount, |page| EventBody::PageReleased {
        page,
    })
}

fn pin_dropped(ts: u64, t: Task, pfn: u64, refcount: i32, refs: u32) -> Event {
    event(
        ts,
        t,
        EventBody::PinDropped {
            page: page_ref(pfn, refcount),
            refs,
        },
    )
}

fn exit(ts: u64, t: Task, fs: Filesystem, ret: i64) -> Event {
    event(ts, t, EventBody::BreakExit { fs, ret })
}

fn enter(ts: u64, fs: Filesystem) -> Event {
    event(
        ts,
        thread_a(),
        EventBody::BreakEnter {
            fs,
            dev: (259 << 20) | 1,
            ino: 12,
            mapping: MAPPING,
        },
    )
}

fn scan(ts: u64, page: Option<PageRef>) -> Event {
    event(
        ts,
        thread_a(),
        EventBody::BusyScan {
            mapping: MAPPING,
            start: 0,
            end: 8191,
            page,
        },
    )
}

fn truncation(ts: u64, index: u64, pfn: u64, refcount: i32) -> [Event; 2] {
    [
        event(
            ts,
            thread_a(),
            EventBody::DeleteEntry {
                mapping: MAPPING,
                index,
            },
        ),
        event(
            ts + 1,
            thread_a(),
            EventBody::Disassociate {
                mapping: MAPPING,
                page: page_ref(pfn, refcount),
                page_mapping: MAPPING,
                trunc: true,
            },
        ),
    ]
}

/// LKML, July 2018, "ext4: Close race between direct IO and
/// ext4_break_layouts()": X and Y pinned by B; the scan returns X; X's
/// refcount drops before the wait's condition check, so the wait never
/// sleeps, `retry` stays false and the loop exits; Y, still at refcount 2, is
/// truncated.
#[test]
fn lkml_2018_retry_bug_truncates_pinned_page_y() {
    let (a, b) = (thread_a(), thread_b());
    let mut events = vec![
        enter(S, Filesystem::Ext4),
        scan(S + 1_000, Some(page_ref(PFN_X, 2))),
        pin_dropped(S + 1_500, b, PFN_X, 2, 1),
        wake_up(S + 1_600, b, PFN_X, 1),
        wait_start(S + 2_000, a, PFN_X, 1),
        // Condition true at once: no sleep, retry == false, the loop ends.
        exit(S + 3_000, a, Filesystem::Ext4, 0),
    ];
    events.extend(truncation(S + 4_000, 0, PFN_X, 1));
    events.extend(truncation(S + 5_000, 1, PFN_Y, 2));
    let found = detect(DetectorConfig::with_idle_refcount(1), &events);
    assert_eq!(found.len(), 2, "{found:#?}");

    let [twp] = of_kind(&found, FindingKind::TruncateWhilePinned)[..] else {
        panic!("one truncate_while_pinned: {found:#?}");
    };
    assert_eq!((twp.pfn, twp.refcount, twp.refs), (PFN_Y, Some(2), Some(1)));
    assert_eq!(
        (twp.fs, twp.ino, twp.mapping),
        (Filesystem::Ext4, 12, MAPPING)
    );
    assert_eq!(twp.task.tid, a.tid);
    let call = twp.break_call.expect("the break-layouts call it followed");
    assert_eq!(
        (call.ret, call.busy_scans, call.last_busy.map(|p| p.pfn)),
        (Some(0), 1, Some(PFN_X))
    );
    assert!(!twp.inferred);
    assert!(
        twp.timeline
            .iter()
            .any(|e| matches!(e.body, EventBody::BusyScan { .. }))
            && matches!(
                twp.timeline.last().map(|e| e.body),
                Some(EventBody::Disassociate { .. })
            ),
        "timeline shows the call and the truncation: {:#?}",
        twp.timeline
    );

    let [dirty] = of_kind(&found, FindingKind::BreakWithoutCleanScan)[..] else {
        panic!("one break_without_clean_scan: {found:#?}");
    };
    assert_eq!(
        (dirty.pfn, dirty.refcount, dirty.task.tid),
        (PFN_X, Some(2), a.tid)
    );
    println!("{}\n{}", twp.summary(), dirty.summary());
}

/// The same report's good case: the wait did sleep, so the loop rescanned,
/// waited for Y too, and ended with a clean scan.
#[test]
fn lkml_2018_wait_that_slept_rescans_and_is_clean() {
    let (a, b) = (thread_a(), thread_b());
    let mut events = vec![
        enter(S, Filesystem::Ext4),
        scan(S + 1_000, Some(page_ref(PFN_X, 2))),
        wait_start(S + 2_000, a, PFN_X, 2),
        pin_dropped(S + 9_000, b, PFN_X, 2, 1),
        wake_up(S + 9_100, b, PFN_X, 1),
        scan(S + 10_000, Some(page_ref(PFN_Y, 2))),
        wait_start(S + 11_000, a, PFN_Y, 2),
        pin_dropped(S + 19_000, b, PFN_Y, 2, 1),
        wake_up(S + 19_100, b, PFN_Y, 1),
        scan(S + 20_000, None),
        exit(S + 21_000, a, Filesystem::Ext4, 0),
    ];
    events.extend(truncation(S + 22_000, 0, PFN_X, 1));
    events.extend(truncation(S + 23_000, 1, PFN_Y, 1));
    let mut d = Detector::new(DetectorConfig::with_idle_refcount(1));
    let mut found = Vec::new();
    for e in &events {
        d.observe(e, &mut found);
    }
    d.finish(&mut found);
    assert!(found.is_empty(), "{found:#?}");
    let c = d.coverage();
    assert!(c.reached_race_window());
    assert_eq!((c.busy_scans_with_page, c.waits, c.wake_ups), (2, 2, 2));
}

/// Debian 6.1: the bio release drops the last reference with a plain folio
/// put; nothing wakes the waiter; a signal gets it out 5 s later.
#[test]
fn debian_6_1_lost_wakeup_is_reported_once_with_its_evidence() {
    let (a, b) = (thread_a(), thread_b());
    let opening = vec![
        enter(S, Filesystem::Ext4),
        scan(S + 1_000, Some(page_ref(PFN_X, 2))),
        wait_start(S + 2_000, a, PFN_X, 2),
        released(S + 3_000, b, PFN_X, 1),
    ];
    let signal = exit(S + 5 * S, a, Filesystem::Ext4, -512);
    // Quiet: nothing happens until the signal. Busy: other files keep being
    // truncated meanwhile, so the grace period runs out before the signal.
    let quiet: Vec<Event> = opening.iter().copied().chain([signal]).collect();
    let mut busy = opening.clone();
    for i in 0..50u64 {
        busy.push(event(
            S + 3_000 + i * 100_000_000,
            task(300, "rm"),
            EventBody::DeleteEntry {
                mapping: 0xffff_8880_7777_0000,
                index: i,
            },
        ));
    }
    busy.push(signal);
    for (name, events, detected_at) in [
        ("quiet", quiet, S + 5 * S),
        ("busy", busy, S + 3_000 + 11 * 100_000_000),
    ] {
        let found = detect(DetectorConfig::with_idle_refcount(1), &events);
        let [lost] = of_kind(&found, FindingKind::LostWakeup)[..] else {
            panic!("{name}: exactly one lost_wakeup: {found:#?}");
        };
        assert_eq!(lost.task.tid, a.tid, "{name}: the waiter");
        assert_eq!(lost.pfn, PFN_X, "{name}: the page");
        assert_eq!(
            lost.releaser.map(|t| t.tid),
            Some(b.tid),
            "{name}: who released it"
        );
        assert_eq!(lost.released_ns, Some(S + 3_000), "{name}: when");
        assert_eq!(lost.since_ns, Some(S + 2_000), "{name}");
        assert_eq!(lost.ts_ns, detected_at, "{name}");
        assert_eq!(
            lost.duration_ns,
            Some(detected_at - (S + 2_000)),
            "{name}: asleep"
        );
        assert_eq!((lost.refcount, lost.refs), (Some(1), Some(0)), "{name}");
        assert!(
            lost.summary().contains("dio_read"),
            "{name}: {}",
            lost.summary()
        );
        // Blocked 5 s: also a stall, which is not a bug.
        let other: Vec<FindingKind> = found
            .iter()
            .map(|f| f.kind)
            .filter(|k| *k != FindingKind::LostWakeup)
            .collect();
        assert_eq!(other, [FindingKind::Stall], "{name}");
        println!("{name}: {}", lost.summary());
    }
}

/// 6.12: FOLL_PIN adds 1024; the devmap put drops it and wakes the waiter.
#[test]
fn linux_6_12_pin_drop_then_wakeup_is_fine() {
    let (a, b) = (thread_a(), thread_b());
    let mut events = vec![
        enter(S, Filesystem::Xfs),
        scan(S + 1_000, Some(page_ref(PFN_X, 1025))),
        wait_start(S + 2_000, a, PFN_X, 1025),
        pin_dropped(S + 3_000, b, PFN_X, 1025, 1024),
        wake_up(S + 3_100, b, PFN_X, 1),
        exit(S + 4_000, a, Filesystem::Xfs, 0),
        enter(S + 5_000, Filesystem::Xfs),
        scan(S + 6_000, None),
        exit(S + 7_000, a, Filesystem::Xfs, 0),
    ];
    events.extend(truncation(S + 8_000, 0, PFN_X, 1));
    let cfg = DetectorConfig {
        pin_bias: 1024,
        ..DetectorConfig::with_idle_refcount(1)
    };
    let found = detect(cfg, &events);
    assert!(found.is_empty(), "{found:#?}");
}

// ------------------------------------------------------- random interleavings

fn model_config() -> impl Strategy<Value = ModelConfig> {
    let variant = prop_oneof![
        Just(Variant::Fixed),
        Just(Variant::RetryBug),
        Just(Variant::UnwokenRelease)
    ];
    let shape = prop_oneof![
        Just(BreakShape::Ext4Loop),
        Just(BreakShape::XfsIterations),
        Just(BreakShape::Nested)
    ];
    let refcounts = prop_oneof![Just((1, 0)), Just((1, 1024)), Just((0, 0)), Just((0, 1024))];
    let sizes = (1..=2usize, 1..=6usize, 1..=3usize, 1..=3usize, 1..=6usize);
    let flags = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
    let mismatch = prop_oneof![3 => Just(None), 1 => (0..6usize).prop_map(Some)];
    let stall = prop_oneof![Just(300_000u64), Just(1_000_000), Just(S)];
    (variant, shape, refcounts, sizes, flags, mismatch, stall).prop_map(
        |(variant, shape, (idle, pin_bias), sizes, flags, mismatch_at, stall_threshold_ns)| {
            let (files, pages_per_file, pinners, ops_per_file, pins_per_pinner) = sizes;
            let (interrupts, cut_at_end, invalidations, shared_marker) = flags;
            ModelConfig {
                variant,
                shape,
                idle,
                pin_bias,
                files,
                pages_per_file,
                pinners,
                ops_per_file,
                pins_per_pinner,
                interrupts,
                cut_at_end,
                invalidations,
                shared_marker,
                mismatch_at,
                stall_threshold_ns,
            }
        },
    )
}

fn reported(findings: &[Finding]) -> Truth {
    let mut t = Truth::new();
    for f in findings {
        let pfn = if f.kind == FindingKind::Stall {
            0
        } else {
            f.pfn
        };
        t.entry(f.kind).or_default().push((f.task.tid, pfn));
    }
    t
}

/// Per kind: true and false positives, false negatives, over all cases; and
/// how many cases had the kind at all.
#[derive(Default)]
struct Tally {
    cases: u64,
    cases_by_variant: BTreeMap<&'static str, u64>,
    per_kind: BTreeMap<FindingKind, [u64; 4]>,
    events: u64,
}

impl Tally {
    /// Multiset comparison of what the model did and what was reported.
    fn add(&mut self, truth: &Truth, found: &Truth) -> Vec<String> {
        let mut errors = Vec::new();
        for kind in FindingKind::ALL {
            let mut expected = truth.get(&kind).cloned().unwrap_or_default();
            let mut got = found.get(&kind).cloned().unwrap_or_default();
            expected.sort_unstable();
            got.sort_unstable();
            let (mut tp, mut fp, mut fneg) = (0, 0, 0);
            let (mut i, mut j) = (0, 0);
            while i < expected.len() || j < got.len() {
                match (expected.get(i), got.get(j)) {
                    (Some(e), Some(g)) if e == g => (tp, i, j) = (tp + 1, i + 1, j + 1),
                    (Some(e), Some(g)) if e < g => (fneg, i) = (fneg + 1, i + 1),
                    (Some(_), None) => (fneg, i) = (fneg + 1, i + 1),
                    _ => (fp, j) = (fp + 1, j + 1),
                }
            }
            let row = self.per_kind.entry(kind).or_default();
            row[0] += tp;
            row[1] += fp;
            row[2] += fneg;
            row[3] += u64::from(!expected.is_empty());
            if fp + fneg > 0 {
                errors.push(format!("{kind}: expected {expected:?}, reported {got:?}"));
            }
        }
        errors
    }

    fn print(&self, title: &str) {
        println!("{title}: {} cases, {} events", self.cases, self.events);
        println!("  cases per variant: {:?}", self.cases_by_variant);
        println!(
            "  {:<26} {:>6} {:>6} {:>4} {:>4} {:>9} {:>6}",
            "kind", "cases", "TP", "FP", "FN", "precision", "recall"
        );
        for (kind, [tp, fp, fneg, cases]) in &self.per_kind {
            println!(
                "  {:<26} {:>6} {:>6} {:>4} {:>4} {:>9} {:>6}",
                kind.as_str(),
                cases,
                tp,
                fp,
                fneg,
                ratio(*tp, tp + fp),
                ratio(*tp, tp + fneg)
            );
        }
    }

    fn totals(&self, kind: FindingKind) -> [u64; 4] {
        self.per_kind.get(&kind).copied().unwrap_or_default()
    }
}

fn ratio(num: u64, den: u64) -> String {
    if den == 0 {
        "n/a".to_string()
    } else {
        format!("{:.3}", num as f64 / den as f64)
    }
}

fn runner() -> TestRunner {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(DEFAULT_SEED);
    }
    TestRunner::new(config)
}

/// Runs the model on random interleavings and tallies the detector against
/// it. `broken` shifts the detector's idle refcount by one (a detector that
/// misreads the kernel): then disagreements are only counted, not failures.
fn run_cases(broken: bool) -> (Tally, Option<String>) {
    let tally = std::cell::RefCell::new(Tally::default());
    let strategy = (
        model_config(),
        proptest::collection::vec(any::<u32>(), 16..256),
    );
    let result = runner().run(&strategy, |(cfg, choices)| {
        let run = model::run(&cfg, &choices);
        let mut dcfg = cfg.detector_config();
        if broken {
            dcfg.idle_refcount += 1;
        }
        let found = detect(dcfg, &run.events);
        for f in &found {
            let back: Finding = serde_json::from_str(&serde_json::to_string(f).expect("json"))
                .expect("finding parses back");
            prop_assert_eq!(&back, f);
        }
        let mut t = tally.borrow_mut();
        t.cases += 1;
        t.events += run.events.len() as u64;
        *t.cases_by_variant
            .entry(variant_name(cfg.variant))
            .or_default() += 1;
        let errors = t.add(&run.truth, &reported(&found));
        if broken {
            return Ok(());
        }
        if cfg.variant == Variant::Fixed {
            let bugs: Vec<&Finding> = found
                .iter()
                .filter(|f| f.kind.is_bug() && f.kind != FindingKind::MappingMismatch)
                .collect();
            prop_assert!(bugs.is_empty(), "the fixed kernel has no race: {bugs:#?}");
        }
        prop_assert!(errors.is_empty(), "{cfg:?}\n{}", errors.join("\n"));
        Ok(())
    });
    (tally.into_inner(), result.err().map(|e| e.to_string()))
}

fn variant_name(v: Variant) -> &'static str {
    match v {
        Variant::Fixed => "fixed",
        Variant::RetryBug => "retry_bug",
        Variant::UnwokenRelease => "unwoken_release",
    }
}

#[test]
fn detector_flags_exactly_what_the_model_did() {
    let (tally, failure) = run_cases(false);
    tally.print("model vs detector");
    if let Some(failure) = failure {
        panic!("the detector disagrees with the model: {failure}");
    }
    for kind in FindingKind::ALL {
        let [tp, fp, fneg, cases] = tally.totals(kind);
        assert_eq!(
            (fp, fneg),
            (0, 0),
            "{kind}: precision and recall must be 1.0"
        );
        assert!(
            tp > 0 && cases > 0,
            "{kind}: the random cases never produced it"
        );
    }
}

#[test]
fn a_detector_misreading_the_idle_refcount_is_caught() {
    let (tally, failure) = run_cases(true);
    tally.print("model vs detector with idle refcount off by one");
    assert_eq!(failure, None);
    for kind in [FindingKind::TruncateWhilePinned, FindingKind::LostWakeup] {
        let [_, _, fneg, _] = tally.totals(kind);
        assert!(
            fneg > 0,
            "{kind}: the comparison must count what a broken detector misses"
        );
    }
}
