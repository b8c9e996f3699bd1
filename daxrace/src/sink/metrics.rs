//! The Prometheus registry: what the daemon exports. Names follow Prometheus
//! conventions (`daxrace_` prefix, base units, `_total` on counters); no pid,
//! pfn or inode ever becomes a label.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use daxrace_common::{BreakStat, Counter, FsKind};
use prometheus::{
    core::{Collector, Desc},
    proto, Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::Sink;
use crate::{
    detect::{DroppedState, Finding},
    event::{Event, EventBody, Filesystem},
    load::tracer::BreakStats,
    plan::HookStatus,
    trace_file::TraceFileError,
};

/// Every metric name the daemon exports (dashboards and alert rules are
/// tested against this list).
pub const METRIC_NAMES: &[&str] = &[
    "daxrace_build_info",
    "daxrace_findings_total",
    "daxrace_events_total",
    "daxrace_break_layouts_total",
    "daxrace_break_layouts_duration_seconds",
    "daxrace_busy_scans_total",
    "daxrace_pages_waited_on_total",
    "daxrace_lost_events_total",
    "daxrace_kernel_filtered_total",
    "daxrace_decode_errors_total",
    "daxrace_detector_dropped_total",
    "daxrace_probe_attached",
    "daxrace_bpf_program_run_count_total",
    "daxrace_bpf_program_run_time_seconds_total",
    "daxrace_start_time_seconds",
];

/// `attach_kind` of a hook left unattached because another hook serves it.
const STANDBY: &str = "standby";

pub struct Metrics {
    pub registry: Registry,
    findings: IntCounterVec,
    events: IntCounterVec,
    break_stats: Arc<Mutex<BreakStats>>,
    busy_scans: IntCounterVec,
    pages_waited_on: IntCounter,
    lost_events: IntCounterVec,
    kernel_filtered: IntCounterVec,
    decode_errors: IntCounterVec,
    detector_dropped: IntCounterVec,
    probe_attached: IntGaugeVec,
    prog_run_count: IntCounterVec,
    prog_run_time: prometheus::CounterVec,
    start_time: Gauge,
    /// Kernel counters already added (they are read as running totals).
    kernel_seen: [u64; daxrace_common::COUNTER_COUNT as usize],
    recursion_misses_seen: u64,
    decode_seen: HashMap<&'static str, u64>,
    prog_seen: HashMap<String, (u64, u64)>,
    dropped_seen: HashMap<&'static str, u64>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Buckets of the duration histogram shown with a finite bound: up to 2^27 us
/// (134 s); longer calls only count in `+Inf`.
const DURATION_BUCKETS_SHOWN: u32 = 28;

/// Exports the kernel's break-layouts statistics (log2 histogram, calls by
/// result) as they were last read: the kernel sums every call, recorded or not.
struct BreakStatsCollector {
    descs: Vec<Desc>,
    latest: Arc<Mutex<BreakStats>>,
}

const BREAKS_TOTAL: &str = "daxrace_break_layouts_total";
const BREAKS_TOTAL_HELP: &str =
    "Break-layouts calls that scanned for busy DAX pages, by filesystem and result (ok or error).";
const BREAK_DURATION: &str = "daxrace_break_layouts_duration_seconds";
const BREAK_DURATION_HELP: &str =
    "Duration of break-layouts calls that scanned for busy DAX pages (log2 buckets kept in the kernel).";

impl BreakStatsCollector {
    fn new(latest: Arc<Mutex<BreakStats>>) -> Self {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| l.to_string()).collect(),
                HashMap::new(),
            )
            .expect("valid metric")
        };
        BreakStatsCollector {
            descs: vec![
                desc(BREAKS_TOTAL, BREAKS_TOTAL_HELP, &["fs", "result"]),
                desc(BREAK_DURATION, BREAK_DURATION_HELP, &["fs"]),
            ],
            latest,
        }
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

fn family(
    name: &str,
    help: &str,
    kind: proto::MetricType,
    metrics: Vec<proto::Metric>,
) -> proto::MetricFamily {
    let mut f = proto::MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl Collector for BreakStatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let stats = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut totals = Vec::new();
        let mut histograms = Vec::new();
        for fs in [FsKind::Ext4, FsKind::Xfs, FsKind::Generic, FsKind::Unknown] {
            let i = fs as usize;
            let (calls, errors) = stats.calls(i);
            // ext4 and xfs always exist (at 0), the others once they happen.
            if calls == 0 && !matches!(fs, FsKind::Ext4 | FsKind::Xfs) {
                continue;
            }
            let name = Filesystem::from(fs).as_str();
            for (result, n) in [("ok", calls - errors.min(calls)), ("error", errors)] {
                let mut m = proto::Metric::default();
                m.set_label(vec![label("fs", name), label("result", result)]);
                let mut c = proto::Counter::default();
                c.set_value(n as f64);
                m.set_counter(c);
                totals.push(m);
            }
            let row = &stats.per_fs[i];
            let mut h = proto::Histogram::default();
            h.set_sample_count(calls);
            h.set_sample_sum(row[BreakStat::SUM_NS as usize] as f64 / 1e9);
            let mut cumulative = 0;
            let buckets = (0..DURATION_BUCKETS_SHOWN)
                .map(|k| {
                    cumulative += row[k as usize];
                    let mut b = proto::Bucket::default();
                    b.set_cumulative_count(cumulative);
                    b.set_upper_bound((1u64 << k) as f64 * 1e-6);
                    b
                })
                .collect();
            h.set_bucket(buckets);
            let mut m = proto::Metric::default();
            m.set_label(vec![label("fs", name)]);
            m.set_histogram(h);
            histograms.push(m);
        }
        vec![
            family(
                BREAKS_TOTAL,
                BREAKS_TOTAL_HELP,
                proto::MetricType::COUNTER,
                totals,
            ),
            family(
                BREAK_DURATION,
                BREAK_DURATION_HELP,
                proto::MetricType::HISTOGRAM,
                histograms,
            ),
        ]
    }
}

impl Metrics {
    pub fn new(kernel_release: &str) -> Metrics {
        let r = Registry::new();
        let build = GaugeVec::new(
            Opts::new(
                "daxrace_build_info",
                "daxrace version and the kernel it runs on; always 1.",
            ),
            &["version", "kernel"],
        )
        .expect("valid metric");
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kernel_release])
            .set(1.0);
        r.register(Box::new(build)).expect("unique metric");
        let start_time = Gauge::new(
            "daxrace_start_time_seconds",
            "Unix time the daemon started.",
        )
        .expect("valid metric");
        r.register(Box::new(start_time.clone()))
            .expect("unique metric");
        let break_stats = Arc::new(Mutex::new(BreakStats::default()));
        r.register(Box::new(BreakStatsCollector::new(break_stats.clone())))
            .expect("unique metric");
        let pages_waited_on = IntCounter::new(
            "daxrace_pages_waited_on_total",
            "Times a break-layouts call started waiting for a pinned DAX page.",
        )
        .expect("valid metric");
        r.register(Box::new(pages_waited_on.clone()))
            .expect("unique metric");
        let probe_attached = IntGaugeVec::new(
            Opts::new(
                "daxrace_probe_attached",
                "1 when the logical hook is attached with this attach kind (or on standby: another hook serves it on this kernel), 0 when the hook is missing.",
            ),
            &["hook", "attach_kind"],
        )
        .expect("valid metric");
        r.register(Box::new(probe_attached.clone()))
            .expect("unique metric");
        let prog_run_time = prometheus::CounterVec::new(
            Opts::new(
                "daxrace_bpf_program_run_time_seconds_total",
                "Kernel time spent in each daxrace BPF program (needs --bpf-stats).",
            ),
            &["program"],
        )
        .expect("valid metric");
        r.register(Box::new(prog_run_time.clone()))
            .expect("unique metric");
        let m = Metrics {
            findings: counter_vec(
                &r,
                "daxrace_findings_total",
                "Race findings by kind and filesystem.",
                &["kind", "fs"],
            ),
            events: counter_vec(
                &r,
                "daxrace_events_total",
                "Events received from the kernel, by logical hook.",
                &["hook"],
            ),
            busy_scans: counter_vec(
                &r,
                "daxrace_busy_scans_total",
                "Busy-page scans, by result: page (a pinned page was found) or none.",
                &["result"],
            ),
            lost_events: counter_vec(
                &r,
                "daxrace_lost_events_total",
                "Events lost before reaching the detector, by reason (ringbuf_full, task_slot_collision, watch_full, bio_truncated).",
                &["reason"],
            ),
            kernel_filtered: counter_vec(
                &r,
                "daxrace_kernel_filtered_total",
                "Hook calls filtered in the kernel because they concern no watched page, by reason.",
                &["reason"],
            ),
            decode_errors: counter_vec(
                &r,
                "daxrace_decode_errors_total",
                "Ring-buffer records that did not decode, by reason.",
                &["reason"],
            ),
            detector_dropped: counter_vec(
                &r,
                "daxrace_detector_dropped_total",
                "Detector state dropped to stay within its bounds, by what was dropped.",
                &["what"],
            ),
            prog_run_count: counter_vec(
                &r,
                "daxrace_bpf_program_run_count_total",
                "Runs of each daxrace BPF program (needs --bpf-stats).",
                &["program"],
            ),
            registry: r,
            break_stats,
            pages_waited_on,
            probe_attached,
            prog_run_time,
            start_time,
            kernel_seen: [0; daxrace_common::COUNTER_COUNT as usize],
            recursion_misses_seen: 0,
            decode_seen: HashMap::new(),
            prog_seen: HashMap::new(),
            dropped_seen: HashMap::new(),
        };
        // Series exist at 0 from the start, so `increase()` sees the first
        // finding or lost event instead of a series appearing at 1.
        for kind in crate::detect::FindingKind::ALL {
            for fs in [Filesystem::Ext4, Filesystem::Xfs, Filesystem::Unknown] {
                m.findings.with_label_values(&[kind.as_str(), fs.as_str()]);
            }
        }
        for c in Counter::LOST {
            m.lost_events.with_label_values(&[c.as_str()]);
        }
        for reason in crate::decode::DecodeError::REASONS {
            m.decode_errors.with_label_values(&[reason]);
        }
        // The same for every family whose label values are known before
        // anything happens (Prometheus' advice on missing series): dashboards
        // and rate() work from the first scrape.
        m.lost_events
            .with_label_values(&[crate::load::tracer::RECURSION_MISSES]);
        for c in Counter::ALL {
            if !Counter::LOST.contains(&c) && c != Counter::ScanQuiet {
                m.kernel_filtered.with_label_values(&[c.as_str()]);
            }
        }
        for result in ["page", "none"] {
            m.busy_scans.with_label_values(&[result]);
        }
        for (what, _) in dropped_totals(&DroppedState::default()) {
            m.detector_dropped.with_label_values(&[what]);
        }
        m
    }

    pub fn set_start_time(&self, unix_seconds: f64) {
        self.start_time.set(unix_seconds);
    }

    pub fn set_probes(&self, statuses: &[HookStatus]) {
        for s in statuses {
            if s.is_attached() {
                // Its events counter exists at 0 from the moment it attaches.
                self.events.with_label_values(&[s.hook.as_str()]);
            }
            if s.standby.is_some() {
                // Another hook serves it here: not missing, nothing attached.
                self.probe_attached
                    .with_label_values(&[s.hook.as_str(), STANDBY])
                    .set(1);
            }
            if !s.is_served() {
                self.probe_attached
                    .with_label_values(&[s.hook.as_str(), "none"])
                    .set(0);
            } else {
                // A hook attached late (module loaded) is no longer missing.
                let _ = self
                    .probe_attached
                    .remove_label_values(&[s.hook.as_str(), "none"]);
            }
            for a in &s.attached {
                self.probe_attached
                    .with_label_values(&[s.hook.as_str(), a.kind.as_str()])
                    .set(1);
            }
        }
    }

    pub fn observe_event(&mut self, ev: &Event) {
        self.events.with_label_values(&[ev.hook.as_str()]).inc();
        match ev.body {
            EventBody::BusyScan { page, .. } => {
                let result = if page.is_some() { "page" } else { "none" };
                self.busy_scans.with_label_values(&[result]).inc();
            }
            EventBody::WaitStart { .. } => self.pages_waited_on.inc(),
            _ => {}
        }
    }

    pub fn observe_finding(&self, f: &Finding) {
        self.findings
            .with_label_values(&[f.kind.as_str(), f.fs.as_str()])
            .inc();
    }

    /// Running totals of the kernel's counters, read from the per-CPU map.
    pub fn set_kernel_counters(&mut self, values: &crate::load::tracer::KernelCounters) {
        for c in Counter::ALL {
            let now = values.get(c);
            let prev = &mut self.kernel_seen[c as usize];
            let delta = now.saturating_sub(*prev);
            *prev = now;
            if delta == 0 {
                continue;
            }
            if c == Counter::ScanQuiet {
                // Scans that found nothing, counted in the kernel instead of recorded.
                self.busy_scans.with_label_values(&["none"]).inc_by(delta);
                continue;
            }
            let family = if Counter::LOST.contains(&c) {
                &self.lost_events
            } else {
                &self.kernel_filtered
            };
            family.with_label_values(&[c.as_str()]).inc_by(delta);
        }
        let delta = values
            .recursion_misses
            .saturating_sub(self.recursion_misses_seen);
        self.recursion_misses_seen = values.recursion_misses;
        if delta > 0 {
            self.lost_events
                .with_label_values(&[crate::load::tracer::RECURSION_MISSES])
                .inc_by(delta);
        }
    }

    /// The kernel's break-layouts statistics (running totals).
    pub fn set_break_stats(&self, stats: &BreakStats) {
        *self.break_stats.lock().unwrap_or_else(|e| e.into_inner()) = stats.clone();
    }

    /// Running totals of decode errors by reason.
    pub fn set_decode_errors<'a>(
        &mut self,
        totals: impl IntoIterator<Item = (&'a &'static str, &'a u64)>,
    ) {
        for (reason, &now) in totals {
            let prev = self.decode_seen.entry(reason).or_insert(0);
            let delta = now.saturating_sub(*prev);
            *prev = now;
            if delta > 0 {
                self.decode_errors
                    .with_label_values(&[reason])
                    .inc_by(delta);
            }
        }
    }

    /// Running totals of state the detector dropped.
    pub fn set_detector_dropped(&mut self, dropped: &DroppedState) {
        for (what, now) in dropped_totals(dropped) {
            let prev = self.dropped_seen.entry(what).or_insert(0);
            let delta = now.saturating_sub(*prev);
            *prev = now;
            if delta > 0 {
                self.detector_dropped
                    .with_label_values(&[what])
                    .inc_by(delta);
            }
        }
    }

    /// Running totals of BPF stats per program: (run count, run time ns).
    pub fn set_program_stats(&mut self, stats: &[(String, u64, u64)]) {
        for (name, count, ns) in stats {
            let prev = self.prog_seen.entry(name.clone()).or_insert((0, 0));
            let dc = count.saturating_sub(prev.0);
            let dt = ns.saturating_sub(prev.1);
            *prev = (*count, *ns);
            self.prog_run_count.with_label_values(&[name]).inc_by(dc);
            self.prog_run_time
                .with_label_values(&[name])
                .inc_by(dt as f64 / 1e9);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        out
    }
}

/// `daxrace_detector_dropped_total`'s `what` values and their totals.
fn dropped_totals(d: &DroppedState) -> [(&'static str, u64); 5] {
    [
        ("windows", d.windows_evicted),
        ("closed_windows", d.closed_windows_evicted),
        ("pages", d.pages_evicted),
        ("timeline_entries", d.timeline_entries_dropped),
        ("finding_keys", d.reported_keys_forgotten),
    ]
}

/// The pipeline feeds the registry the HTTP server reads.
impl Sink for Arc<Mutex<Metrics>> {
    fn event(&mut self, ev: &Event) -> Result<(), TraceFileError> {
        self.lock().expect("metrics lock").observe_event(ev);
        Ok(())
    }

    fn finding(&mut self, finding: &Finding) -> Result<(), TraceFileError> {
        self.lock().expect("metrics lock").observe_finding(finding);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Families whose label values are known in advance are exported at 0
    /// before anything happens: events of every attached hook, every
    /// kernel-filtered reason, every lost reason, every dropped kind.
    #[test]
    fn known_label_series_start_at_zero() {
        let m = Metrics::new("test");
        let text = String::from_utf8(m.render()).expect("utf-8");
        let zero = |family: &str, label: &str, value: &str| {
            let line = format!("{family}{{{label}=\"{value}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        };
        for c in Counter::LOST {
            zero("daxrace_lost_events_total", "reason", c.as_str());
        }
        zero(
            "daxrace_lost_events_total",
            "reason",
            crate::load::tracer::RECURSION_MISSES,
        );
        for c in Counter::ALL {
            if !Counter::LOST.contains(&c) && c != Counter::ScanQuiet {
                zero("daxrace_kernel_filtered_total", "reason", c.as_str());
            }
        }
        assert!(!text.contains("reason=\"scan_quiet\""), "{text}");
        for what in [
            "windows",
            "closed_windows",
            "pages",
            "timeline_entries",
            "finding_keys",
        ] {
            zero("daxrace_detector_dropped_total", "what", what);
        }
        zero("daxrace_busy_scans_total", "result", "page");
        zero("daxrace_busy_scans_total", "result", "none");
        // No hook attached yet: no events series (a hook that never
        // attaches must not look like a quiet one).
        assert!(!text.contains("daxrace_events_total{"), "{text}");
    }

    #[test]
    fn every_listed_name_is_registered_and_nothing_else() {
        let m = Metrics::new("test");
        // Touch the label vectors so they appear in the exposition.
        m.findings.with_label_values(&["stall", "ext4"]).inc();
        m.events.with_label_values(&["busy_scan"]).inc();
        let mut stats = BreakStats::default();
        stats.per_fs[FsKind::Ext4 as usize][3] = 2;
        stats.per_fs[FsKind::Ext4 as usize][BreakStat::ERRORS as usize] = 1;
        stats.per_fs[FsKind::Ext4 as usize][BreakStat::SUM_NS as usize] = 9_000;
        m.set_break_stats(&stats);
        m.busy_scans.with_label_values(&["page"]).inc();
        m.lost_events.with_label_values(&["ringbuf_full"]).inc();
        m.kernel_filtered
            .with_label_values(&["put_unwatched"])
            .inc();
        m.decode_errors.with_label_values(&["size"]).inc();
        m.detector_dropped.with_label_values(&["windows"]).inc();
        m.probe_attached
            .with_label_values(&["busy_scan", "kprobe"])
            .set(1);
        m.prog_run_count.with_label_values(&["kp_busy_scan"]).inc();
        m.prog_run_time.with_label_values(&["kp_busy_scan"]).inc();
        let mut names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        names.sort();
        let mut want: Vec<String> = METRIC_NAMES.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(names, want);
        let text = String::from_utf8(m.render()).expect("utf-8");
        for line in [
            r#"daxrace_break_layouts_total{fs="ext4",result="ok"} 1"#,
            r#"daxrace_break_layouts_total{fs="ext4",result="error"} 1"#,
            r#"daxrace_break_layouts_total{fs="xfs",result="ok"} 0"#,
            r#"daxrace_break_layouts_duration_seconds_bucket{fs="ext4",le="0.000004"} 0"#,
            r#"daxrace_break_layouts_duration_seconds_bucket{fs="ext4",le="0.000008"} 2"#,
            r#"daxrace_break_layouts_duration_seconds_bucket{fs="ext4",le="+Inf"} 2"#,
            r#"daxrace_break_layouts_duration_seconds_sum{fs="ext4"} 0.000009"#,
            r#"daxrace_break_layouts_duration_seconds_count{fs="ext4"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }
}
