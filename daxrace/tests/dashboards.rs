//! The operator-facing files against what the daemon really exports and
//! against the real tools: the Grafana dashboard and the alert rules may only
//! name metrics, labels and label values the daemon produces (a typo in a
//! PromQL selector matches nothing and fails silently in production), every
//! expression must parse (`promtool`), the alerts must behave
//! (`promtool test rules`), the exposition must pass `promtool check metrics`,
//! and the systemd unit must pass `systemd-analyze verify` within an exposure
//! budget.
//!
//! The tools come from Debian (`prometheus`, `systemd`); `cargo xtask setup`
//! installs them. A missing tool fails the test: it never skips silently.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
};

use daxrace::{
    detect::{DetectorConfig, FindingKind},
    event::{Comm, Event, EventBody, Filesystem, HookName, PageRef, Task},
    load::tracer::KernelCounters,
    pipeline::Pipeline,
    plan::{AttachKind, AttachedProgram, HookStatus, HOOKS},
    sink::metrics::{Metrics, METRIC_NAMES},
};
use daxrace_common::HookId;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

// ---------------------------------------------------------------------------
// Files and tools

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the daxrace crate sits in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn dashboard() -> Json {
    serde_json::from_str(&read("dashboards/grafana/daxrace.json"))
        .unwrap_or_else(|e| panic!("dashboards/grafana/daxrace.json is not JSON: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// The tool, or a failure that says how to get it: a check that quietly did
/// not run would look like a check that passed.
fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{name}` is not installed or does not run: run `cargo xtask setup` \
         (Debian packages prometheus and systemd provide promtool and systemd-analyze)"
    );
    Command::new(name)
}

fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input)
            .unwrap_or_else(|e| panic!("cannot feed {shown}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{shown} did not finish: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = tool("promtool");
    cmd.args(args);
    run(cmd, stdin)
}

// ---------------------------------------------------------------------------
// What the daemon exports

/// One metric family as the exposition shows it.
#[derive(Debug)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

/// A registry fed through the daemon's own paths (the pipeline, the probe
/// statuses, the counter refreshes) so that every family and label shows.
fn fed_metrics() -> Metrics {
    let metrics = Arc::new(Mutex::new(Metrics::new("6.1.0-test")));
    let mut pipeline = Pipeline::new(
        DetectorConfig::with_idle_refcount(1),
        vec![Box::new(metrics.clone())],
    );
    pipeline
        .feed(&racy_truncation())
        .expect("no JSON sink to fail");
    pipeline.finish().expect("no JSON sink to fail");
    assert!(
        pipeline.count_of(&[FindingKind::TruncateWhilePinned]) > 0,
        "the sample events should make a truncate_while_pinned finding: {:#?}",
        pipeline.findings
    );
    drop(pipeline);
    let mut m = Arc::try_unwrap(metrics)
        .ok()
        .expect("the pipeline is gone")
        .into_inner()
        .expect("metrics lock");
    m.set_start_time(1.7e9);
    m.set_probes(&[
        HookStatus {
            hook: HookName(HookId::BusyScan),
            purpose: "busy scan",
            context: false,
            attached: vec![AttachedProgram {
                symbol: "dax_layout_busy_page_range".into(),
                module: None,
                program: "kp_busy_scan_range",
                kind: AttachKind::Kprobe,
            }],
            errors: Vec::new(),
            standby: None,
            avoided: Vec::new(),
        },
        HookStatus {
            hook: HookName(HookId::XfsBreak),
            purpose: "xfs break",
            context: false,
            attached: Vec::new(),
            errors: vec!["xfs is not loaded".into()],
            standby: None,
            avoided: Vec::new(),
        },
        HookStatus::standby(
            HookId::DeleteEntry,
            "disassociate serves it: dax_disassociate_entry is hooked with all its arguments"
                .into(),
        ),
    ]);
    let mut counters = KernelCounters::default();
    counters.values.iter_mut().for_each(|v| *v = 3);
    m.set_kernel_counters(&counters);
    let decode: BTreeMap<&'static str, u64> = [("size", 2)].into_iter().collect();
    m.set_decode_errors(decode.iter());
    m.set_detector_dropped(&daxrace::detect::DroppedState {
        windows_evicted: 1,
        pages_evicted: 4,
        ..Default::default()
    });
    m.set_program_stats(&[("kp_busy_scan_range".to_string(), 10, 25_000)]);
    m
}

/// Thread A punches a hole in a file while thread B's direct I/O pins a page
/// of it; ext4's break-layouts returns with the page still busy, and the
/// truncation then disassociates the pinned page (the seed race). A second,
/// failing xfs call gives the `error` result.
fn racy_truncation() -> Vec<Event> {
    const MAPPING: u64 = 0xffff_8880_0010_0000;
    let task = |tid: u32, comm: &str| Task {
        pid: tid,
        tid,
        comm: Comm::new(comm),
        cpu: 1,
    };
    let (a, b, c) = (
        task(100, "punch_hole"),
        task(200, "dio"),
        task(300, "xfs_io"),
    );
    let busy = PageRef {
        pfn: 0x10_0000,
        page: 0xffff_ea00_0400_0000,
        refcount: 3,
    };
    let ev = |ts_ns: u64, task: Task, hook: HookId, body: EventBody| Event {
        ts_ns,
        hook: HookName(hook),
        task,
        body,
    };
    let enter = |fs| EventBody::BreakEnter {
        fs,
        dev: (259 << 20) | 1,
        ino: 12,
        mapping: MAPPING,
    };
    let scan = |page| EventBody::BusyScan {
        mapping: MAPPING,
        start: 0,
        end: i64::MAX,
        page,
    };
    vec![
        ev(1_000, a, HookId::Ext4Break, enter(Filesystem::Ext4)),
        ev(2_000, a, HookId::BusyScan, scan(Some(busy))),
        ev(
            3_000,
            a,
            HookId::WaitStart,
            EventBody::WaitStart { page: busy },
        ),
        ev(
            4_000,
            b,
            HookId::WakeUp,
            EventBody::WakeUp {
                page: PageRef {
                    refcount: 2,
                    ..busy
                },
            },
        ),
        ev(5_000, a, HookId::BusyScan, scan(Some(busy))),
        ev(
            6_000,
            a,
            HookId::Ext4Break,
            EventBody::BreakExit {
                fs: Filesystem::Ext4,
                ret: 0,
            },
        ),
        ev(
            7_000,
            a,
            HookId::Disassociate,
            EventBody::Disassociate {
                mapping: MAPPING,
                page: busy,
                page_mapping: MAPPING,
                trunc: true,
            },
        ),
        ev(8_000, c, HookId::XfsBreak, enter(Filesystem::Xfs)),
        ev(9_000, c, HookId::BusyScan, scan(None)),
        ev(
            10_000_000,
            c,
            HookId::XfsBreak,
            EventBody::BreakExit {
                fs: Filesystem::Xfs,
                ret: -4,
            },
        ),
    ]
}

/// Metric families with their types and label names, from the exposition.
fn catalogue(exposition: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current = String::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            current = words.next().expect("TYPE names a metric").to_string();
            let kind = words.next().expect("TYPE gives a type").to_string();
            families.insert(
                current.clone(),
                Family {
                    kind,
                    labels: BTreeSet::new(),
                },
            );
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name_end = line.find(['{', ' ']).expect("a sample has a value");
            let name = &line[..name_end];
            assert!(
                name.starts_with(current.as_str()),
                "sample {name} outside its family {current}"
            );
            if line[name_end..].starts_with('{') {
                let (matchers, _) = parse_matchers(line, name_end)
                    .unwrap_or_else(|e| panic!("bad sample line `{line}`: {e}"));
                let family = families.get_mut(&current).expect("TYPE came first");
                family
                    .labels
                    .extend(matchers.into_iter().map(|m| m.label).filter(|l| l != "le"));
            }
        }
    }
    families
}

fn exported() -> (String, BTreeMap<String, Family>) {
    let text = String::from_utf8(fed_metrics().render()).expect("the exposition is UTF-8");
    let families = catalogue(&text);
    let listed: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
    let shown: BTreeSet<&str> = families.keys().map(String::as_str).collect();
    assert_eq!(
        shown, listed,
        "fed_metrics() should make every family in METRIC_NAMES appear, and nothing else \
         (a new metric needs feeding here, and probably a dashboard panel)"
    );
    (text, families)
}

// ---------------------------------------------------------------------------
// A small PromQL reader: just enough to find metric selectors

#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// What an expression refers to: its selectors and its range durations.
#[derive(Debug, Default)]
struct Refs {
    selectors: Vec<Selector>,
    ranges: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Index just past the string literal starting at `i`.
fn skip_string(b: &[u8], i: usize) -> Result<usize, String> {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return Ok(j + 1);
        }
        j += 1;
    }
    Err(format!("unterminated string at byte {i}"))
}

/// Index just past the `close` that ends the group opened at `i`.
fn skip_group(b: &[u8], i: usize, close: u8) -> Result<usize, String> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' | b'\'' | b'`' => j = skip_string(b, j)?,
            c if c == close => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(format!("`{}` at byte {i} is never closed", b[i] as char))
}

fn skip_number(b: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < b.len() {
        let exponent_sign =
            (b[j] == b'+' || b[j] == b'-') && j > i && matches!(b[j - 1], b'e' | b'E');
        if b[j].is_ascii_alphanumeric() || b[j] == b'.' || exponent_sign {
            j += 1;
        } else {
            break;
        }
    }
    j
}

fn next_non_space(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    (i < b.len()).then_some(i)
}

/// Label matchers of the `{...}` at `open`; also reads sample lines.
fn parse_matchers(s: &str, open: usize) -> Result<(Vec<Matcher>, usize), String> {
    let b = s.as_bytes();
    let mut i = open + 1;
    let mut out = Vec::new();
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return Err(format!("`{{` at byte {open} is never closed"));
        }
        if b[i] == b'}' {
            return Ok((out, i + 1));
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if start == i {
            return Err(format!("expected a label name at byte {i}"));
        }
        let label = s[start..i].to_string();
        let i_op = next_non_space(b, i).ok_or("matcher without an operator")?;
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| s[i_op..].starts_with(op))
            .ok_or_else(|| format!("no matcher operator after `{label}`"))?;
        let q = next_non_space(b, i_op + op.len()).ok_or("matcher without a value")?;
        if !matches!(b[q], b'"' | b'\'' | b'`') {
            return Err(format!("the value of `{label}` is not a string"));
        }
        i = skip_string(b, q)?;
        let value = s[q + 1..i - 1].replace("\\\"", "\"").replace("\\\\", "\\");
        out.push(Matcher {
            label,
            op: op.to_string(),
            value,
        });
    }
}

/// Metric selectors and range durations of a PromQL expression (Grafana
/// variables allowed): identifiers that are neither functions, aggregations,
/// keywords nor label lists are metric names.
fn scan(expr: &str) -> Result<Refs, String> {
    let b = expr.as_bytes();
    let mut refs = Refs::default();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(b, i)?,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'[' => {
                let end = skip_group(b, i, b']')?;
                refs.ranges.push(expr[i + 1..end - 1].trim().to_string());
                i = end;
            }
            b'{' => return Err(format!("a selector without a metric name at byte {i}")),
            b'$' => {
                i += 1;
                if i < b.len() && b[i] == b'{' {
                    i = skip_group(b, i, b'}')?;
                } else {
                    while i < b.len() && is_ident(b[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == b'.' => i = skip_number(b, i),
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let lower = word.to_ascii_lowercase();
                let next = next_non_space(b, i);
                let next_char = next.map(|j| b[j]);
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if let (Some(j), Some(b'(')) = (next, next_char) {
                        i = skip_group(b, j, b')')?;
                    }
                } else if KEYWORDS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&lower.as_str())
                    || next_char == Some(b'(')
                {
                    // An operator, an aggregation or a function call.
                } else {
                    let mut selector = Selector {
                        metric: word.to_string(),
                        matchers: Vec::new(),
                    };
                    if let (Some(j), Some(b'{')) = (next, next_char) {
                        let (matchers, end) = parse_matchers(expr, j)?;
                        selector.matchers = matchers;
                        i = end;
                    }
                    refs.selectors.push(selector);
                }
            }
            _ => i += 1,
        }
    }
    Ok(refs)
}

/// Series Prometheus makes itself that rules may use.
const PROMETHEUS_SERIES: &[&str] = &["up"];
/// Target labels every scraped series carries.
const TARGET_LABELS: &[&str] = &["job", "instance", "__name__"];

/// Why a label value can never match what the daemon exports, for the
/// labels whose values the library enumerates.
fn bad_value(label: &str, value: &str) -> Option<String> {
    let known = match label {
        "kind" => serde_json::from_value::<FindingKind>(Json::from(value)).is_ok(),
        "fs" => serde_json::from_value::<Filesystem>(Json::from(value)).is_ok(),
        "hook" => HookName::from_name(value).is_some(),
        _ => return None,
    };
    (!known).then(|| format!("{label}=\"{value}\" is not a value daxrace exports"))
}

/// Problems with one expression: unknown metrics, labels the metric does not
/// have, label values it never takes, or no metric at all.
fn check_expr(expr: &str, families: &BTreeMap<String, Family>) -> Vec<String> {
    let refs = match scan(expr) {
        Ok(r) => r,
        Err(e) => return vec![format!("cannot read `{expr}`: {e}")],
    };
    let mut problems = Vec::new();
    if refs.selectors.is_empty() {
        problems.push(format!("`{expr}` names no metric"));
    }
    for sel in &refs.selectors {
        let name = sel.metric.as_str();
        // Histograms are queried through their _bucket/_sum/_count series.
        let histogram_series = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            families
                .get(base)
                .filter(|f| f.kind == "histogram")
                .map(|f| (base, f, *suffix))
        });
        let (family, extra_labels): (&Family, &[&str]) = match histogram_series {
            Some((base, _, _)) if !METRIC_NAMES.contains(&base) => {
                problems.push(format!("`{base}` is not in METRIC_NAMES"));
                continue;
            }
            Some((_, f, suffix)) => (f, if suffix == "_bucket" { &["le"] } else { &[] }),
            None if PROMETHEUS_SERIES.contains(&name) => continue,
            None => match families.get(name) {
                Some(_) if !METRIC_NAMES.contains(&name) => {
                    problems.push(format!("`{name}` is not in METRIC_NAMES"));
                    continue;
                }
                Some(f) if f.kind == "histogram" => {
                    problems.push(format!(
                        "`{name}` is a histogram: query `{name}_bucket`, `_sum` or `_count`"
                    ));
                    continue;
                }
                Some(f) => (f, &[]),
                None => {
                    problems.push(format!(
                        "`{name}` is not a metric daxrace exports (see METRIC_NAMES)"
                    ));
                    continue;
                }
            },
        };
        for m in &sel.matchers {
            let known = family.labels.contains(&m.label)
                || TARGET_LABELS.contains(&m.label.as_str())
                || extra_labels.contains(&m.label.as_str());
            if !known {
                problems.push(format!(
                    "`{name}` has no label `{}` (it has {:?})",
                    m.label, family.labels
                ));
                continue;
            }
            // Exact values, and regexes that are plain alternations.
            let plain = m
                .value
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'|');
            let values: Vec<&str> = match m.op.as_str() {
                "=" | "!=" => vec![m.value.as_str()],
                _ if plain => m.value.split('|').collect(),
                _ => Vec::new(),
            };
            problems.extend(values.into_iter().filter_map(|v| bad_value(&m.label, v)));
        }
    }
    problems
}

/// Grafana's variables replaced by what promtool can parse.
fn substitute_grafana(expr: &str) -> String {
    [
        ("$__rate_interval", "5m"),
        ("${__rate_interval}", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("${job}", ".*"),
        ("$job", ".*"),
        ("${instance}", ".*"),
        ("$instance", ".*"),
    ]
    .iter()
    .fold(expr.to_string(), |e, (var, with)| e.replace(var, with))
}

/// Writes `exprs` as recording rules and has promtool parse them.
fn promtool_parses(exprs: &[(String, String)], dir: &Path) {
    let rules: Vec<Json> = exprs
        .iter()
        .enumerate()
        .map(
            |(n, (_, e))| serde_json::json!({ "record": format!("dashboard:expr_{n}"), "expr": e }),
        )
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let path = dir.join("dashboard_rules.yml");
    std::fs::write(
        &path,
        serde_norway::to_string(&file).expect("rules serialise"),
    )
    .expect("write the temporary rules file");
    let out = promtool(
        &["check", "rules", path.to_str().expect("UTF-8 temp path")],
        None,
    );
    let listing: String = exprs
        .iter()
        .enumerate()
        .map(|(n, (ctx, e))| format!("  dashboard:expr_{n} ({ctx}): {e}\n"))
        .collect();
    assert!(
        out.status.success(),
        "promtool rejects a dashboard query:\n{}\nqueries:\n{listing}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "promtool did not check every query:\n{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------
// The checks can fail

#[test]
fn the_expression_checker_catches_typos() {
    let (_, families) = exported();
    let bad = [
        "rate(daxrace_finding_total[5m])",
        "sum by (fs) (rate(dxrace_events_total[5m]))",
        "daxrace_findings_total{knd=\"stall\"}",
        "daxrace_findings_total{kind=\"truncate_while_pined\"}",
        "daxrace_findings_total{fs=~\"ext4|xf\"}",
        "daxrace_probe_attached{hook!~\"ext4_truncate_enter|busy_scan\"}",
        "daxrace_break_layouts_duration_seconds",
        "daxrace_events_total_bucket",
        "daxrace_bpf_program_run_count",
        "vector(1)",
    ];
    for e in bad {
        assert!(
            !check_expr(e, &families).is_empty(),
            "`{e}` should be reported"
        );
    }
    let good = [
        "histogram_quantile(0.99, sum by (le) (rate(daxrace_break_layouts_duration_seconds_bucket{fs=\"ext4\", job=~\"$job\"}[$__rate_interval])))",
        "sum without (instance) (daxrace_events_total) / on (job) group_left (kernel) daxrace_build_info",
        "count_values(\"v\", daxrace_build_info) and daxrace_probe_attached{hook=~\"busy_scan|wake_up\"} == bool 1",
        "time() - daxrace_start_time_seconds offset 1h > 1e-3",
        "up{job=\"daxrace\"} == 0 or absent(up{job=\"daxrace\"})",
        "sum(rate(daxrace_break_layouts_duration_seconds_sum[5m])) / sum(rate(daxrace_break_layouts_duration_seconds_count[5m]))",
    ];
    for e in good {
        let problems = check_expr(e, &families);
        assert!(problems.is_empty(), "`{e}` is fine, got {problems:#?}");
    }
}

#[test]
fn promtool_rejects_a_broken_expression() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.yml");
    std::fs::write(
        &path,
        "groups:\n  - name: broken\n    rules:\n      - record: x:y\n        expr: sum(rate(daxrace_events_total[5m])\n",
    )
    .expect("write");
    let out = promtool(&["check", "rules", path.to_str().expect("UTF-8")], None);
    assert!(
        !out.status.success(),
        "promtool accepted an unbalanced parenthesis, so its other passes prove nothing:\n{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------
// The exposition

#[test]
fn the_exposition_passes_promtool_check_metrics() {
    let (exposition, _) = exported();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("metrics.prom");
    std::fs::write(&path, &exposition).expect("write the exposition");
    let input = std::fs::read(&path).expect("read it back");
    let out = promtool(&["check", "metrics"], Some(&input));
    let lint = text(&out);
    assert!(
        out.status.success() && lint.trim().is_empty(),
        "promtool check metrics complains (status {}):\n{lint}\nexposition:\n{exposition}",
        out.status
    );
}

// ---------------------------------------------------------------------------
// The Grafana dashboard

/// Every panel, rows and the panels nested in them included.
fn panels(dash: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Every `expr` anywhere in the dashboard (panel targets, annotations), with
/// the title or name of what holds it.
fn dashboard_exprs(v: &Json, ctx: &str, out: &mut Vec<(String, String)>) {
    match v {
        Json::Object(map) => {
            let ctx = map
                .get("title")
                .or_else(|| map.get("name"))
                .and_then(Json::as_str)
                .unwrap_or(ctx);
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Json::String(e)) => out.push((ctx.to_string(), e.clone())),
                    _ => dashboard_exprs(v, ctx, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, ctx, out)),
        _ => {}
    }
}

/// The selector inside each query variable's `label_values(selector, label)`.
fn variable_selectors(dash: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?");
        let q = var["query"]
            .get("query")
            .unwrap_or(&var["query"])
            .as_str()
            .unwrap_or_else(|| panic!("variable {name} has no query"));
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: expected label_values(...), got `{q}`"));
        let selector = match inner.rsplit_once(',') {
            Some((sel, label)) if !label.contains('}') => sel.trim(),
            _ => inner.trim(),
        };
        out.push((format!("variable {name}"), selector.to_string()));
    }
    out
}

#[test]
fn the_dashboard_has_its_variables_and_describes_every_panel() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion should be ~39, got {}",
        dash["schemaVersion"]
    );
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("the dashboard has no `{name}` variable"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource", "datasource variable type");
    assert_eq!(ds["query"], "prometheus", "datasource variable plugin");
    for name in ["job", "instance"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name} variable type");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name} datasource");
        let q = v["query"].get("query").unwrap_or(&v["query"]).to_string();
        assert!(
            q.contains("label_values(daxrace_build_info") && q.contains(&format!(", {name})")),
            "{name} should be label_values(daxrace_build_info..., {name}), got {q}"
        );
    }
    assert!(
        var("instance")["query"].to_string().contains("$job"),
        "instance values should follow the chosen job"
    );

    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.trim().is_empty(), "a panel has no title: {p}");
        assert!(
            p["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty()),
            "panel `{title}` has no description"
        );
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id in `{title}`"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel `{title}` should use the datasource variable"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel `{title}` has no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "a query of `{title}` should use the datasource variable"
            );
        }
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        assert!(!unit.is_empty(), "panel `{title}` has no unit");
    }
}

#[test]
fn dashboard_queries_name_exported_metrics_and_parse() {
    let dash = dashboard();
    let (_, families) = exported();
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, "dashboard", &mut exprs);
    assert!(
        exprs.len() >= 15,
        "expected a full dashboard, found {} queries",
        exprs.len()
    );
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (ctx, e) in &exprs {
        problems.extend(
            check_expr(e, &families)
                .into_iter()
                .map(|p| format!("{ctx}: {p}")),
        );
        let refs = scan(e).unwrap_or_default();
        for r in &refs.ranges {
            if r != "$__rate_interval" {
                problems.push(format!("{ctx}: range [{r}] should be [$__rate_interval]"));
            }
        }
        for s in refs
            .selectors
            .iter()
            .filter(|s| s.metric.starts_with("daxrace_"))
        {
            used.insert(
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|x| {
                        s.metric
                            .strip_suffix(x)
                            .filter(|b| families.contains_key(*b))
                    })
                    .unwrap_or(&s.metric)
                    .to_string(),
            );
            // Without these the job/instance pickers would do nothing.
            for (label, var) in [("job", "$job"), ("instance", "$instance")] {
                let filtered = s
                    .matchers
                    .iter()
                    .any(|m| m.label == label && m.op == "=~" && m.value == var);
                if !filtered {
                    problems.push(format!("{ctx}: {} lacks {label}=~\"{var}\"", s.metric));
                }
            }
        }
    }
    let vars = variable_selectors(&dash);
    for (ctx, e) in &vars {
        problems.extend(
            check_expr(e, &families)
                .into_iter()
                .map(|p| format!("{ctx}: {p}")),
        );
    }
    assert!(
        problems.is_empty(),
        "dashboard problems:\n{}",
        problems.join("\n")
    );
    let unshown: Vec<_> = METRIC_NAMES
        .iter()
        .filter(|n| !used.contains(**n))
        .collect();
    assert!(unshown.is_empty(), "exported but on no panel: {unshown:?}");

    let mut parsed = Vec::new();
    for (ctx, e) in exprs.iter().chain(&vars) {
        let s = substitute_grafana(e);
        let leftover = s.match_indices('$').any(|(i, _)| {
            s.as_bytes()
                .get(i + 1)
                .is_some_and(|&c| c == b'{' || is_ident_start(c))
        });
        assert!(!leftover, "{ctx}: unknown Grafana variable in `{e}`");
        parsed.push((ctx.clone(), s));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    promtool_parses(&parsed, dir.path());
}

#[test]
fn the_dashboard_shows_what_operators_look_for() {
    let dash = dashboard();
    let all: Vec<&Json> = panels(&dash);
    let exprs_of = |p: &Json| {
        let mut v = Vec::new();
        dashboard_exprs(p, "", &mut v);
        v.into_iter().map(|(_, e)| e).collect::<Vec<_>>()
    };
    let has = |kind: &str, needle: &str| {
        all.iter()
            .any(|p| p["type"] == kind && exprs_of(p).iter().any(|e| e.contains(needle)))
    };
    assert!(
        has("heatmap", "daxrace_break_layouts_duration_seconds_bucket"),
        "a heatmap of break-layouts durations"
    );
    for q in ["histogram_quantile(0.5,", "histogram_quantile(0.99,"] {
        assert!(has("timeseries", q), "a timeseries with {q}");
    }
    assert!(
        has("table", "daxrace_probe_attached"),
        "a table of probes attached"
    );
    assert!(
        has("stat", "time() - daxrace_start_time_seconds"),
        "an uptime stat"
    );
    assert!(
        has(
            "timeseries",
            "rate(daxrace_bpf_program_run_time_seconds_total"
        ) && all.iter().any(|p| exprs_of(p).iter().any(|e| {
            e.contains("daxrace_bpf_program_run_time_seconds_total")
                && e.contains("/")
                && e.contains("daxrace_bpf_program_run_count_total")
        })),
        "BPF run time per run"
    );
    let highlighted = all.iter().any(|p| {
        p["fieldConfig"]["overrides"]
            .to_string()
            .contains("truncate_while_pinned")
            && p["fieldConfig"]["overrides"].to_string().contains("red")
    });
    assert!(
        highlighted,
        "truncate_while_pinned should be highlighted in red"
    );
}

// ---------------------------------------------------------------------------
// Prometheus configuration and alert rules

const ALERTS: &str = "dashboards/prometheus/alerts.yml";

fn rules() -> Vec<Yaml> {
    let doc = yaml(ALERTS);
    let groups = doc["groups"].as_sequence().expect("alerts.yml: groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("a group's rules").clone())
        .collect()
}

fn str_of<'a>(v: &'a Yaml, what: &str, alert: &str) -> &'a str {
    v.as_str()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| panic!("alert {alert}: missing {what}"))
}

#[test]
fn alert_rules_name_exported_metrics_and_are_complete() {
    let (_, families) = exported();
    let rules = rules();
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for r in &rules {
        let alert = str_of(&r["alert"], "the alert name", "?");
        names.insert(alert.to_string());
        str_of(&r["for"], "`for`", alert);
        let severity = str_of(&r["labels"]["severity"], "labels.severity", alert);
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "alert {alert}: severity {severity}"
        );
        str_of(&r["annotations"]["summary"], "annotations.summary", alert);
        str_of(
            &r["annotations"]["description"],
            "annotations.description",
            alert,
        );
        let expr = str_of(&r["expr"], "expr", alert);
        problems.extend(
            check_expr(expr, &families)
                .into_iter()
                .map(|p| format!("{alert}: {p}")),
        );
    }
    assert!(
        problems.is_empty(),
        "alert problems:\n{}",
        problems.join("\n")
    );
    for want in [
        "DaxraceTruncateWhilePinned",
        "DaxraceLostWakeup",
        "DaxraceBreakWithoutCleanScan",
        "DaxraceMappingMismatch",
        "DaxraceLostEvents",
        "DaxraceProbesMissing",
        "DaxraceDecodeErrors",
        "DaxraceDown",
    ] {
        assert!(names.contains(want), "alerts.yml has no {want}");
    }
    let rule = |name: &str| {
        rules
            .iter()
            .find(|r| r["alert"].as_str() == Some(name))
            .expect("checked above")
    };
    assert_eq!(
        rule("DaxraceTruncateWhilePinned")["labels"]["severity"].as_str(),
        Some("critical"),
        "the seed race pages someone"
    );

    // The alert's list of optional hooks is the plan's.
    let context: BTreeSet<&str> = HOOKS
        .iter()
        .filter(|h| h.context)
        .map(|h| HookName(h.id).as_str())
        .collect();
    let expr = rule("DaxraceProbesMissing")["expr"].as_str().expect("expr");
    let refs = scan(expr).expect("checked above");
    let excluded: BTreeSet<&str> = refs
        .selectors
        .iter()
        .flat_map(|s| &s.matchers)
        .filter(|m| m.label == "hook" && m.op == "!~")
        .flat_map(|m| m.value.split('|'))
        .collect();
    assert_eq!(
        excluded, context,
        "DaxraceProbesMissing should ignore exactly the context hooks of plan::HOOKS"
    );

    // DaxraceDown watches the job prometheus.yml scrapes.
    let config = yaml("dashboards/prometheus/prometheus.yml");
    let job = config["scrape_configs"][0]["job_name"]
        .as_str()
        .expect("a scrape job");
    let down = rule("DaxraceDown")["expr"].as_str().expect("expr");
    assert!(
        down.contains(&format!("up{{job=\"{job}\"}}")) && down.contains("absent("),
        "DaxraceDown should cover up{{job=\"{job}\"}} == 0 and its absence: {down}"
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let path = repo().join(ALERTS);
    let out = promtool(&["check", "rules", path.to_str().expect("UTF-8")], None);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );
    let tests = repo().join("dashboards/prometheus/alerts_test.yml");
    let out = promtool(&["test", "rules", tests.to_str().expect("UTF-8")], None);
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
}

#[test]
fn the_prometheus_config_scrapes_the_daemon_and_loads_the_rules() {
    let config = yaml("dashboards/prometheus/prometheus.yml");
    let scrape = &config["scrape_configs"][0];
    assert_eq!(scrape["job_name"].as_str(), Some("daxrace"));
    assert_eq!(
        scrape["static_configs"][0]["targets"][0].as_str(),
        Some("127.0.0.1:9712"),
        "the daemon's default --listen"
    );
    assert_eq!(scrape["scrape_interval"].as_str(), Some("15s"));
    let loads_alerts = config["rule_files"]
        .as_sequence()
        .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("alerts.yml")));
    assert!(loads_alerts, "prometheus.yml should load alerts.yml");
    let path = repo().join("dashboards/prometheus/prometheus.yml");
    let out = promtool(&["check", "config", path.to_str().expect("UTF-8")], None);
    assert!(
        out.status.success(),
        "promtool check config:\n{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------
// The systemd unit

const UNIT: &str = "daxrace/dist/daxrace.service";
const SOCKET: &str = "daxrace/dist/daxrace.socket";
/// `systemd-analyze security` exposure budget, in tenths (1.9 with the
/// dynamic user; 2.5 when the unit ran as root).
const MAX_EXPOSURE_TENTHS: u32 = 20;

/// The unit with ExecStart pointing at the binary this build made, since
/// `verify` insists the command exists.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let unit = read(UNIT);
    assert!(
        unit.contains("ExecStart=/usr/bin/daxrace run"),
        "{UNIT}: expected ExecStart=/usr/bin/daxrace run ... (where the package puts it)"
    );
    let path = dir.join("daxrace.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/daxrace", env!("CARGO_BIN_EXE_daxrace")),
    )
    .expect("write the unit");
    let socket = read(SOCKET);
    std::fs::write(dir.join("daxrace.socket"), socket).expect("write the socket unit");
    path
}

fn directives(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

#[test]
fn the_systemd_unit_verifies_and_keeps_its_hardening() {
    let d = directives(&read(UNIT));
    let one = |k: &str| {
        d.get(k)
            .and_then(|v| v.last())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{UNIT} has no {k}="))
    };
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        // The socket comes from daxrace.socket: no socket(2), no network.
        ("RestrictAddressFamilies", "none"),
        ("PrivateNetwork", "yes"),
        ("Requires", "daxrace.socket"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("StateDirectory", "daxrace"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(k), v, "{UNIT}: {k}");
    }
    // Either hides what daxrace must read: /proc/kallsyms, or CAP_SYSLOG.
    for k in ["ProtectKernelTunables", "ProtectKernelLogs"] {
        assert!(!d.contains_key(k), "{UNIT}: {k}= would break attaching");
    }
    let caps: BTreeSet<&str> = one("CapabilityBoundingSet").split_whitespace().collect();
    let ambient: BTreeSet<&str> = one("AmbientCapabilities").split_whitespace().collect();
    assert_eq!(caps, ambient, "{UNIT}: ambient and bounding capabilities");
    assert!(caps.contains("CAP_BPF") && caps.contains("CAP_PERFMON"));
    // CAP_SYS_ADMIN is there for attaching only: the daemon drops what
    // privs::KEPT does not name, and the unit must not rely on more.
    let kept = daxrace::load::privs::names(daxrace::load::privs::KEPT);
    for cap in &caps {
        assert!(
            kept.contains(cap) || *cap == "CAP_SYS_ADMIN",
            "{UNIT}: {cap} is granted but neither kept nor needed to attach"
        );
    }

    // The socket: loopback at the daemon's default port, stopped with the
    // service so that a scrape cannot restart probing.
    let sock = directives(&read(SOCKET));
    for (k, v) in [
        ("ListenStream", "127.0.0.1:9712"),
        ("PartOf", "daxrace.service"),
        ("IPAddressAllow", "localhost"),
    ] {
        assert_eq!(
            sock.get(k).and_then(|v| v.last()).map(String::as_str),
            Some(v),
            "{SOCKET}: {k}"
        );
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_this_build(dir.path());
    let mut cmd = tool("systemd-analyze");
    // The man pages the unit documents itself with come with the package.
    cmd.args(["verify", "--man=no"])
        .arg(&unit)
        .arg(dir.path().join("daxrace.socket"));
    let out = run(cmd, None);
    // verify exits 0 on unknown keys or bad values; it only prints them.
    let ours: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap_or("")
        .lines()
        .chain(std::str::from_utf8(&out.stdout).unwrap_or("").lines())
        .filter(|l| l.contains("daxrace.service") || l.contains("daxrace.socket"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {}:\n{}",
        unit.display(),
        text(&out)
    );

    let mut cmd = tool("systemd-analyze");
    cmd.args([
        "security",
        "--offline=true",
        &format!("--threshold={MAX_EXPOSURE_TENTHS}"),
    ])
    .arg(&unit);
    let out = run(cmd, None);
    let report = text(&out);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall line)");
    assert!(
        out.status.success(),
        "{UNIT} is more exposed than {}.{}: {overall}\n{report}",
        MAX_EXPOSURE_TENTHS / 10,
        MAX_EXPOSURE_TENTHS % 10
    );
}
