//! The VM tests (`test_all`) and the demo.
//!
//! The tests use the kernel's own tracefs kprobes as a witness that does not
//! depend on daxrace: hist triggers count break-layouts calls and the busy
//! scans (`dax_layout_busy_page*` kretprobes) that return a page, i.e. that
//! found a pinned DAX page. A workload that only ever sees empty scans would
//! pass any tracer without testing it; the assertion is that every series
//! and filesystem reaches the busy-page path.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;

use super::{
    guest::{self, Fs},
    kernel,
};

/// Series tested by `cargo xtask test`: Debian 12's kernel (the live lost
/// wake-up), Debian 13's, and the newest (the 6.15 rework and later). Every
/// VM test runs on these (docs/kernels.md).
pub const SERIES: &[&str] = &["6.1", "6.12", "newest"];

/// Series `cargo xtask test --all-kernels` adds, with the pin-and-punch
/// checks only: the trixie-backports and forky builds between 6.12 and the
/// newest, and experimental's release candidate.
pub const EXTRA_SERIES: &[&str] = &["6.16", "6.17", "6.18", "7.2", "rc"];

/// The Debian kernel below what every hook needs (bullseye's 5.10: no
/// bpf_loop, no helper callbacks): `--all-kernels` boots it to check what
/// daxrace says there.
pub const OLD_SERIES: &str = "5.10";

/// `daxrace probes` on [`OLD_SERIES`]: it attaches what the kernel can and
/// names the kernel as too old for the rest (never a bare EINVAL), and the
/// kernel logs no fault.
pub fn old_kernel_check() -> Result<String> {
    let k = kernel::fetch(OLD_SERIES)?;
    let script = r#"daxrace probes --json > /tmp/p.json 2>/tmp/p.err
echo "@@RC $?"
echo "@@PROBESJSON $(tr -d '\n' < /tmp/p.json)"
sed 's/^/@@ERR /' /tmp/p.err
"#;
    let out = guest::boot(
        &guest::Spec {
            kernel: &k,
            fs: Fs::Both,
            script: script.to_string(),
            timeout: Duration::from_secs(300),
            verbose: false,
            stream: false,
            forward: None,
        },
        &super::guest_binaries(),
    )?;
    let rc = out
        .output
        .iter()
        .find_map(|l| l.strip_prefix("@@RC "))
        .and_then(|v| v.trim().parse::<i32>().ok());
    let probes: Value = out
        .output
        .iter()
        .find_map(|l| l.strip_prefix("@@PROBESJSON "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or(Value::Null);
    let (summary, mut failures) = judge_old_kernel(rc, &probes);
    failures.extend(super::dmesg::unexpected_faults(&out.dmesg, &[]));
    let summary = format!(
        "old kernel {OLD_SERIES} ({} {}): {summary}",
        k.pkg, k.version
    );
    if failures.is_empty() {
        Ok(summary)
    } else {
        bail!("{summary}\n  {}", failures.join("\n  "))
    }
}

/// The verdict on `daxrace probes --json` from a kernel older than every
/// hook needs: (summary, failures).
fn judge_old_kernel(rc: Option<i32>, probes: &Value) -> (String, Vec<String>) {
    let mut failures = Vec::new();
    if rc != Some(0) {
        failures.push(format!("daxrace probes exited {rc:?}"));
    }
    let hooks = probes["hooks"].as_array().cloned().unwrap_or_default();
    let mut attached = Vec::new();
    let mut too_old = Vec::new();
    for h in &hooks {
        let name = h["hook"].as_str().unwrap_or("?").to_string();
        if h["attached"].as_array().is_some_and(|a| !a.is_empty()) || h["standby"].is_string() {
            attached.push(name);
            continue;
        }
        let errors: Vec<&str> = h["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if errors.iter().any(|e| e.contains("older than the program")) {
            too_old.push(name);
        } else if !errors.iter().all(|e| e.starts_with("no candidate")) {
            failures.push(format!(
                "hook {name} did not attach and daxrace does not say why in the kernel's terms: {}",
                errors.join("; ")
            ));
        }
    }
    if attached.is_empty() {
        failures.push("no hook attached".into());
    }
    if too_old.is_empty() {
        failures.push("no hook was named as needing a newer kernel".into());
    }
    (
        format!(
            "{} of {} hooks attached; too old for: {}",
            attached.len(),
            hooks.len(),
            too_old.join(" ")
        ),
        failures,
    )
}

/// The DAX symbols of the docs/kernels.md table, reported per kernel (a clone
/// such as `.isra.0` counts under its base name).
const DAX_SYMBOLS: &[&str] = &[
    "ext4_break_layouts",
    "xfs_break_dax_layouts",
    "xfs_break_layouts",
    "dax_break_layout",
    "dax_break_layout_final",
    "dax_break_layout_inode",
    "dax_layout_busy_page",
    "dax_layout_busy_page_range",
    "__put_devmap_managed_page",
    "put_devmap_managed_page",
    "__put_devmap_managed_page_refs",
    "__put_devmap_managed_folio_refs",
    "free_zone_device_folio",
    "dax_disassociate_entry",
    "dax_delete_mapping_entry",
    "dax_delete_mapping_range",
    "__dax_invalidate_entry",
    "__bio_release_pages",
    "wake_up_var",
    "init_wait_var_entry",
];

/// kprobe events: (event, kind, symbol). `busy*` are kretprobes whose
/// non-NULL returns are counted.
const PROBES: &[(&str, &str, &str)] = &[
    ("brk_ext4", "p", "ext4_break_layouts"),
    ("brk_xfs_dax", "p", "xfs_break_dax_layouts"),
    ("brk_xfs", "p", "xfs_break_layouts"),
    ("brk_dax", "p", "dax_break_layout"),
    ("busy", "r", "dax_layout_busy_page"),
    ("busy_range", "r", "dax_layout_busy_page_range"),
];

const WORKLOAD_SECONDS: u64 = 6;
/// How long the demo waits for `daxrace run` to attach (seconds).
const ATTACH_WAIT: u64 = 600;

/// Shell functions for the guest: list the DAX symbols, set up the kprobe
/// witnesses, and print counter snapshots as marker lines.
fn witness_setup() -> String {
    let mut s = String::from("T=/sys/kernel/tracing\nP=daxrace_w\n");
    let _ = writeln!(
        s,
        r#"awk -v want="{}" 'BEGIN {{ n = split(want, w, " "); for (i = 1; i <= n; i++) W[w[i]] = 1 }}
{{ b = $3; sub(/\..*/, "", b); if ((b in W) && !($3 in seen)) {{ seen[$3] = 1; print "@@SYM", $3, $2, $4 }} }}' /proc/kallsyms"#,
        DAX_SYMBOLS.join(" ")
    );
    for (ev, kind, sym) in PROBES {
        let fetch = if *kind == "r" { r" ret=\$retval" } else { "" };
        let _ = writeln!(
            s,
            r#"if echo "{kind}:$P/{ev} {sym}{fetch}" >> $T/kprobe_events 2>/dev/null; then echo "@@PROBE {ev} {sym} ok"; else echo "@@PROBE {ev} {sym} absent"; fi"#
        );
    }
    // A hist trigger registers the probe without filling the trace buffer;
    // on the busy kretprobes it counts only the scans that found a page.
    s += r#"for e in $T/events/$P/*; do
  [ -d "$e" ] || continue
  case "${e##*/}" in
    busy*) echo 'hist:keys=common_pid if ret != 0' > "$e/trigger" ;;
    *) echo 'hist:keys=common_pid' > "$e/trigger" ;;
  esac || echo "@@PROBE ${e##*/} trigger-failed"
done
snap() {
  awk -v ph="$1" '{ print "@@KP", ph, $1, $2 }' $T/kprobe_profile
  for e in $T/events/$P/busy*; do
    [ -d "$e" ] && echo "@@HIST $1 ${e##*/} $(awk '/Hits:/ { print $2; exit }' "$e/hist")"
  done
}
"#;
    s
}

/// The daxrace phase: `probes`, then `trace` around the pin-and-punch
/// workload on each filesystem, then `replay` of each recorded file. Output
/// goes to files first so exit statuses are not lost in pipes.
fn daxrace_script(fss: &[&str]) -> String {
    let mut s = String::from(
        r#"echo "== daxrace probes"
daxrace probes --json > /tmp/probes.json 2>/tmp/probes.err
echo "@@DR all probes $?"
echo "@@PROBESJSON $(tr -d '\n' < /tmp/probes.json)"
sed 's/^/  probes: /' /tmp/probes.err
# The same plan from the whole /proc/kallsyms, to check the lookups by.
daxrace probes --json --symbols kallsyms > /tmp/probes-k.json 2>/dev/null
echo "@@PROBESJSONK $(tr -d '\n' < /tmp/probes-k.json)"
# Detach: kernel-held links must not outlive a SIGKILLed daxrace. Our
# programs show in /proc/kallsyms as bpf_prog_<tag>_<name> while loaded.
ours() { grep -cE 'bpf_prog_[0-9a-f]+_(kp|kr|fe|fx|raw|tp)_' /proc/kallsyms; }
daxrace-workload sigdfl daxrace run --no-metrics --duration 300 > /tmp/kill.out 2>&1 &
DR=$!
i=0; while ! grep -q 'hooks attached' /tmp/kill.out && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
before=$(ours)
kill -9 $DR; wait $DR
i=0; while [ "$(ours)" -gt 0 ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
# aya attaches kprobes through the perf kprobe PMU, never through tracefs;
# anything there but the witness's own events would be a leftover.
echo "@@DETACH $before $(ours) $(grep -vc daxrace_w/ /sys/kernel/tracing/kprobe_events)"
"#,
    );
    // Each filesystem under `trace` (full evidence), then the first again
    // in the daemon's quiet mode, reported under its own tag and judged
    // by the same checks.
    let passes = fss.iter().map(|fs| (fs.to_string(), *fs, "")).chain(
        fss.first()
            .map(|fs| (quiet_tag(fs), *fs, " --evidence quiet")),
    );
    for (tag, dir_fs, evidence) in passes {
        let var = format!("DAX_{}", dir_fs.to_uppercase());
        let fs = tag;
        let _ = write!(
            s,
            r#"echo "== {fs}: daxrace trace{evidence} -- pin-punch"
daxrace trace{evidence} --json /tmp/trace-{fs}.jsonl -- daxrace-workload pin-punch --dir ${var} --seconds {WORKLOAD_SECONDS} --stall-timeout 3 --max-stalls 1 > /tmp/trace-{fs}.out 2>&1
echo "@@DR {fs} trace $?"
sed 's/^/@@TO {fs} /' /tmp/trace-{fs}.out
grep -o '"type":"finding","kind":"[a-z_]*"' /tmp/trace-{fs}.jsonl | sed 's/.*"kind":"//; s/"//' | sort | uniq -c | awk '{{ print "@@FK {fs}", $2, $1 }}'
grep -q '"type":"footer"' /tmp/trace-{fs}.jsonl && echo "@@FOOTER {fs}"
daxrace replay /tmp/trace-{fs}.jsonl > /tmp/replay-{fs}.out 2>&1
echo "@@DR {fs} replay $?"
sed 's/^/@@RO {fs} /' /tmp/replay-{fs}.out
"#
        );
    }
    s
}

/// The tag of the quiet-mode pass on `fs` (the daemon's default
/// `--evidence quiet`): the same checks as the full trace apply to it.
fn quiet_tag(fs: &str) -> String {
    format!("{fs}-quiet")
}

fn workload_script(fs: &str, dir_var: &str) -> String {
    format!(
        r#"echo "== {fs}: pin-punch"
daxrace-workload pin-punch --dir ${dir_var} --seconds {WORKLOAD_SECONDS} --stall-timeout 3 --max-stalls 1 --json
echo "@@RC {fs} pin-punch $?"
echo "== {fs}: slow-pin"
daxrace-workload slow-pin --dir ${dir_var} --iterations 3 --delay-ms 500 --stall-timeout 3 --max-stalls 1 --json
echo "@@RC {fs} slow-pin $?"
snap {fs}
"#
    )
}

#[derive(Default)]
struct FsResult {
    /// Calls per probe event during this filesystem's phase.
    calls: BTreeMap<String, u64>,
    /// Non-NULL busy scans per busy probe.
    busy: BTreeMap<String, u64>,
    /// Workload exit codes.
    rcs: BTreeMap<String, i32>,
    /// Workload JSON summaries by workload name.
    summaries: BTreeMap<String, Value>,
    /// daxrace exit statuses: "trace", "replay".
    daxrace_rcs: BTreeMap<String, i32>,
    /// Findings recorded by `daxrace trace`, by kind.
    findings: BTreeMap<String, u64>,
    trace_output: Vec<String>,
    replay_output: Vec<String>,
    footer: bool,
}

impl FsResult {
    /// Busy scans that returned a page. `dax_layout_busy_page` may call the
    /// `_range` variant (or have it inlined), so take the larger count, not
    /// the sum.
    fn busy_pages(&self) -> u64 {
        self.busy.values().copied().max().unwrap_or(0)
    }
    fn scans(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(k, _)| k.starts_with("busy"))
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0)
    }
    fn breaks(&self) -> u64 {
        // ext4 and xfs break functions; the generic dax_break_layout is
        // called by them on 6.15+ and would double count.
        self.calls
            .iter()
            .filter(|(k, _)| k.starts_with("brk_") && *k != "brk_dax")
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0)
            .max(self.calls.get("brk_dax").copied().unwrap_or(0))
    }
    fn stalls(&self) -> u64 {
        self.summaries
            .values()
            .filter_map(|v| v["stalls"].as_array().map(|a| a.len() as u64))
            .sum()
    }
}

struct SeriesResult {
    series: String,
    kernel: String,
    fetch: Duration,
    boot: Duration,
    workload: Duration,
    symbols: Vec<String>,
    absent_probes: Vec<String>,
    fs: BTreeMap<String, FsResult>,
    /// `daxrace probes --json` as the guest printed it.
    probes: Value,
    failures: Vec<String>,
}

type Parsed = (
    Vec<String>,
    Vec<String>,
    BTreeMap<String, FsResult>,
    Value,
    // `daxrace probes --json --symbols kallsyms`.
    Value,
    Option<i32>,
    // Our programs loaded before and after SIGKILL, and tracefs kprobe events left.
    Option<(u64, u64, u64)>,
);

fn parse(out: &guest::Outcome, fss: &[&str]) -> Parsed {
    let mut symbols = Vec::new();
    let mut absent = Vec::new();
    let mut snaps: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut hists: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut res: BTreeMap<String, FsResult> = fss
        .iter()
        .map(|f| (f.to_string(), FsResult::default()))
        .collect();
    let mut current_fs = String::new();
    let mut probes = Value::Null;
    let mut probes_k = Value::Null;
    let mut probes_rc = None;
    let mut detach: Option<(u64, u64, u64)> = None;
    for l in &out.output {
        if let Some(json) = l.strip_prefix("@@PROBESJSON ") {
            probes = serde_json::from_str(json).unwrap_or(Value::Null);
            continue;
        }
        if let Some(json) = l.strip_prefix("@@PROBESJSONK ") {
            probes_k = serde_json::from_str(json).unwrap_or(Value::Null);
            continue;
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["@@DR", "all", "probes", rc] => probes_rc = rc.parse().ok(),
            ["@@DETACH", before, after, events] => {
                detach = Some((
                    before.parse().unwrap_or(0),
                    after.parse().unwrap_or(u64::MAX),
                    events.parse().unwrap_or(u64::MAX),
                ))
            }
            ["@@DR", fs, what, rc] => {
                if let Some(r) = res.get_mut(*fs) {
                    r.daxrace_rcs
                        .insert(what.to_string(), rc.parse().unwrap_or(255));
                }
            }
            ["@@FK", fs, kind, n] => {
                if let Some(r) = res.get_mut(*fs) {
                    r.findings.insert(kind.to_string(), n.parse().unwrap_or(0));
                }
            }
            ["@@FOOTER", fs] => {
                if let Some(r) = res.get_mut(*fs) {
                    r.footer = true;
                }
            }
            ["@@TO", fs, ..] | ["@@RO", fs, ..] => {
                if let Some(r) = res.get_mut(*fs) {
                    let text = l.splitn(3, ' ').nth(2).unwrap_or("").to_string();
                    if w[0] == "@@TO" {
                        r.trace_output.push(text);
                    } else {
                        r.replay_output.push(text);
                    }
                }
            }
            ["@@SYM", name, kind, rest @ ..] => {
                // A local (t) vmlinux symbol may be inlined elsewhere; module
                // symbols are all listed lower case, so only mark vmlinux ones.
                let local = *kind == "t" && rest.is_empty();
                symbols.push(format!(
                    "{name}{}{}",
                    if local { "(t)" } else { "" },
                    rest.join("")
                ))
            }
            ["@@PROBE", ev, sym, "absent"] => absent.push(format!("{ev}={sym}")),
            ["@@KP", ph, ev, n] => {
                snaps
                    .entry(ph.to_string())
                    .or_default()
                    .insert(ev.to_string(), n.parse().unwrap_or(0));
            }
            ["@@HIST", ph, ev, n] => {
                hists
                    .entry(ph.to_string())
                    .or_default()
                    .insert(ev.to_string(), n.parse().unwrap_or(0));
            }
            ["@@RC", fs, wl, rc] => {
                if let Some(r) = res.get_mut(*fs) {
                    r.rcs.insert(wl.to_string(), rc.parse().unwrap_or(255));
                }
            }
            ["==", fs, ..] => current_fs = fs.trim_end_matches(':').to_string(),
            _ if l.starts_with('{') => {
                if let (Ok(v), Some(r)) =
                    (serde_json::from_str::<Value>(l), res.get_mut(&current_fs))
                {
                    if let Some(name) = v["workload"].as_str() {
                        r.summaries.insert(name.to_string(), v.clone());
                    }
                }
            }
            _ => {}
        }
    }
    // Phase counts are differences between consecutive snapshots.
    let mut prev = "start".to_string();
    for fs in fss {
        let diff = |m: &BTreeMap<String, BTreeMap<String, u64>>| -> BTreeMap<String, u64> {
            let before = m.get(&prev).cloned().unwrap_or_default();
            m.get(*fs)
                .map(|after| {
                    after
                        .iter()
                        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
                        .collect()
                })
                .unwrap_or_default()
        };
        if let Some(r) = res.get_mut(*fs) {
            r.calls = diff(&snaps);
            r.busy = diff(&hists);
        }
        prev = fs.to_string();
    }
    (symbols, absent, res, probes, probes_k, probes_rc, detach)
}

/// The ext4 and xfs break-layouts hooks must run as fentry/fexit through the
/// module's BTF on every tested kernel (the README's kernel table): a
/// quiet fall-back to kprobes would pass every other check.
fn check_module_fentry(probes: &Value) -> Vec<String> {
    ["ext4_break", "xfs_break"]
        .iter()
        .filter_map(|hook| {
            let kinds: Vec<&str> = probes["hooks"]
                .as_array()
                .and_then(|hs| hs.iter().find(|h| h["hook"] == *hook))
                .and_then(|h| h["attached"].as_array())
                .map(|a| a.iter().filter_map(|p| p["kind"].as_str()).collect())
                .unwrap_or_default();
            (!(kinds.contains(&"fentry") && kinds.contains(&"fexit"))).then(|| {
                format!("{hook} attached as {kinds:?}, not fentry+fexit through its module's BTF")
            })
        })
        .collect()
}

/// Symbols looked up one by one must give the plan the whole listing gives,
/// and the lookups must be what the default used (every tested kernel is
/// 5.16+).
/// A function the plan knows may be cloned (`.isra`, `.constprop`...)
/// that this kernel has under no name at all (6.16 inlines
/// dax_disassociate_entry everywhere): one by one lookups cannot prove it
/// is gone, so daxrace reads the listing there, and only there.
fn absent_clonable(symbols: &[String]) -> Option<&'static str> {
    let base = |s: &str| s.split(['.', '(', '[']).next().unwrap_or(s).to_string();
    let present: std::collections::BTreeSet<String> = symbols.iter().map(|s| base(s)).collect();
    daxrace_plan::function_targets()
        .filter(|t| !t.clone_flavours.is_empty() && DAX_SYMBOLS.contains(&t.symbol))
        .map(|t| t.symbol)
        .find(|f| !present.contains(*f))
}

fn check_symbol_sources(probes: &Value, from_kallsyms: &Value, symbols: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    let expected = match absent_clonable(symbols) {
        Some(_) => "kallsyms",
        None => "lookup",
    };
    if probes["symbols"] != expected {
        failures.push(format!(
            "daxrace probes learned symbols by {} instead of {}{}",
            probes["symbols"],
            if expected == "lookup" {
                "lookups"
            } else {
                "the listing"
            },
            absent_clonable(symbols)
                .map(|f| format!(" ({f} is under no name here)"))
                .unwrap_or_default()
        ));
    }
    if from_kallsyms["symbols"] != "kallsyms" {
        failures.push("daxrace probes --symbols kallsyms did not read kallsyms".into());
    }
    for key in ["hooks", "facts"] {
        if probes[key].is_null() || probes[key] != from_kallsyms[key] {
            failures.push(format!(
                "{key} from symbol lookups differ from {key} from /proc/kallsyms: {} vs {}",
                probes[key], from_kallsyms[key]
            ));
        }
    }
    failures
}

/// `N truncations` from daxrace's coverage line.
fn coverage_truncations(trace_output: &[String]) -> Option<u64> {
    trace_output
        .iter()
        .find(|l| l.contains("coverage:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .windows(2)
                .find(|w| w[1].trim_end_matches([';', ',']) == "truncations")
                .and_then(|w| w[0].parse().ok())
        })
}

/// What daxrace must report on each series: Debian's 6.1 releases
/// direct-I/O pages without waking break-layouts waiters (docs/kernels.md, "The
/// 6.1 lost wake-up"), so its trace must show lost wake-ups; later kernels are clean.
pub(super) fn expects_lost_wakeup(series: &str) -> bool {
    series == "6.1"
}

/// The daxrace checks of one series.
fn check_daxrace(
    series: &str,
    probes: &Value,
    probes_rc: Option<i32>,
    fs: &BTreeMap<String, FsResult>,
    dmesg: &[String],
) -> Vec<String> {
    let mut failures = Vec::new();
    if probes_rc != Some(0) {
        failures.push(format!("daxrace probes exited with {probes_rc:?}"));
    }
    // Every hook whose kernel symbol exists must attach: the only acceptable
    // reason for a missing hook is that the kernel has no candidate.
    match probes["hooks"].as_array() {
        None => failures.push("daxrace probes printed no hook list".into()),
        Some(hooks) => {
            for h in hooks {
                // On standby: another hook serves it on this kernel.
                let attached = h["attached"].as_array().is_some_and(|a| !a.is_empty())
                    || h["standby"].is_string();
                let errors: Vec<&str> = h["errors"]
                    .as_array()
                    .map(|e| e.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !attached && !errors.iter().all(|e| e.starts_with("no candidate")) {
                    failures.push(format!(
                        "hook {} exists on this kernel but did not attach: {}",
                        h["hook"],
                        errors.join("; ")
                    ));
                }
            }
        }
    }
    let kernel_warned_truncation = dmesg.iter().any(|l| l.contains("dax_disassociate_entry"));
    let truncation_hooked = probes["hooks"].as_array().is_some_and(|hs| {
        hs.iter().any(|h| {
            h["hook"] == "disassociate" && h["attached"].as_array().is_some_and(|a| !a.is_empty())
        })
    });
    for (name, r) in fs {
        // pin-punch punches the pages its readers pinned: once they are
        // idle, the truncation hook must see watched pages leave the file
        // (on 6.15+ through the range deletion). Not where the lost wake-up
        // leaves the punches asleep: a run there may complete none.
        let truncations = coverage_truncations(&r.trace_output);
        if truncation_hooked && !expects_lost_wakeup(series) && truncations.unwrap_or(0) == 0 {
            failures.push(format!(
                "{name}: the truncation hook is attached but daxrace's coverage line counts {truncations:?} truncations of watched pages"
            ));
        }
        let trace = r.daxrace_rcs.get("trace").copied();
        let replay = r.daxrace_rcs.get("replay").copied();
        let bugs: u64 = r
            .findings
            .iter()
            .filter(|(k, _)| *k != "stall")
            .map(|(_, n)| n)
            .sum();
        if !r.footer {
            failures.push(format!("{name}: the trace file has no footer"));
        }
        if !r
            .trace_output
            .iter()
            .any(|l| l.contains("the race window was reached"))
        {
            failures.push(format!(
                "{name}: daxrace's coverage line does not say the race window was reached"
            ));
        }
        if expects_lost_wakeup(series) {
            if trace != Some(10) || r.findings.get("lost_wakeup").copied().unwrap_or(0) == 0 {
                failures.push(format!(
                    "{name}: expected daxrace trace to report lost_wakeup and exit 10, got exit {trace:?} and findings {:?}",
                    r.findings
                ));
            }
        } else if trace != Some(0) || bugs > 0 {
            failures.push(format!(
                "{name}: expected a clean trace (exit 0, no findings), got exit {trace:?} and findings {:?}",
                r.findings
            ));
        }
        if kernel_warned_truncation && !r.findings.contains_key("truncate_while_pinned") {
            failures.push(format!(
                "{name}: the kernel warned in dax_disassociate_entry but daxrace reported no truncate_while_pinned"
            ));
        }
        if replay != trace {
            failures.push(format!(
                "{name}: replay exited {replay:?}, the trace {trace:?}"
            ));
        }
        if !r
            .replay_output
            .iter()
            .any(|l| l.contains("replay agrees with the recording"))
        {
            failures.push(format!("{name}: replay does not agree with the recording"));
        }
    }
    failures
}

fn run_series(series: &str) -> Result<SeriesResult> {
    let k = kernel::fetch(series)?;
    println!("--- {series}: {} {} ({})", k.pkg, k.version, k.release);
    println!("--- {series}: config: {}", k.dax_config());
    let fss = Fs::Both.list();
    let mut script = witness_setup();
    script += "snap start\n";
    for fs in fss {
        script += &workload_script(fs, &format!("DAX_{}", fs.to_uppercase()));
    }
    script += &daxrace_script(fss);
    let out = guest::boot(
        &guest::Spec {
            kernel: &k,
            fs: Fs::Both,
            script,
            timeout: Duration::from_secs(300),
            verbose: false,
            stream: false,
            forward: None,
        },
        &super::guest_binaries(),
    )?;
    let quiet = quiet_tag(fss[0]);
    let tags: Vec<&str> = fss.iter().copied().chain([quiet.as_str()]).collect();
    let (symbols, absent_probes, fs, probes, probes_k, probes_rc, detach) = parse(&out, &tags);
    let mut failures = check_daxrace(series, &probes, probes_rc, &fs, &out.dmesg);
    failures.extend(check_symbol_sources(&probes, &probes_k, &symbols));
    failures.extend(super::dmesg::unexpected_faults(&out.dmesg, &[]));
    failures.extend(check_module_fentry(&probes));
    match detach {
        Some((before, 0, 0)) if before > 0 => {
            println!("--- {series}: SIGKILL detach: {before} programs loaded, 0 left")
        }
        other => failures.push(format!(
            "after SIGKILL, daxrace programs or kprobe events stayed in the kernel (loaded, left, kprobe events): {other:?}"
        )),
    }
    if out.status != 0 {
        failures.push(format!("guest script exited with {}", out.status));
    }
    // The quiet pass ran no workload of its own to count.
    for (name, r) in fs.iter().filter(|(name, _)| **name != quiet) {
        if r.busy_pages() == 0 {
            failures.push(format!(
                "{name}: no busy scan returned a page ({} scans, {} break-layouts calls): the workloads did not pin DAX pages",
                r.scans(),
                r.breaks()
            ));
        }
        for wl in ["pin-punch", "slow-pin"] {
            match r.rcs.get(wl) {
                Some(0) | Some(3) => {}
                Some(1) => failures.push(format!("{name}: {wl} found a data mismatch")),
                Some(c) => failures.push(format!("{name}: {wl} exited with {c}")),
                None => failures.push(format!("{name}: {wl} did not report")),
            }
        }
        if let Some(sp) = r.summaries.get("slow-pin") {
            let waited = sp["extra"]["waited_for_pin"].as_u64().unwrap_or(0);
            let stalls = sp["stalls"].as_array().map_or(0, |a| a.len());
            if waited == 0 && stalls == 0 {
                failures.push(format!(
                    "{name}: slow-pin: break-layouts neither waited for a pin nor stalled"
                ));
            }
        }
    }
    if !failures.is_empty() {
        println!("--- {series}: guest output:");
        for l in &out.output {
            println!("  | {l}");
        }
    }
    for l in &out.dmesg {
        println!("  kernel: {l}");
    }
    Ok(SeriesResult {
        series: series.to_string(),
        kernel: format!("{} {}", k.pkg, k.version),
        fetch: k.fetch_time,
        boot: out.boot,
        workload: out.command,
        symbols,
        absent_probes,
        fs,
        probes,
        failures,
    })
}

/// A test that boots guests of its own on one series: (series, show the
/// guests' output) to a one-line summary.
pub(super) type GuestTest = fn(&str, bool) -> Result<String>;

/// The tests run per series after the main one, by name (also their
/// `cargo xtask vm --<name>` flag):
/// - livepatch: daxrace beside a live patch of the function it hooks;
/// - race2018: the 2018 race put back by a live patch, judged against the
///   patch's counters and the kernel's WARN;
/// - coexist: beside bpftrace on the same functions, and attach/detach
///   cycles under load;
/// - systemd: the Debian package under a real systemd;
/// - doctor: `daxrace doctor` on a breaker the 6.1 lost wake-up left
///   asleep, and on legitimate waits elsewhere.
pub(super) const GUEST_TESTS: &[(&str, GuestTest)] = &[
    ("livepatch", super::livepatch::livepatch_e2e),
    ("race2018", super::race2018::race2018_e2e),
    ("wakefix", super::wakefix::wakefix_e2e),
    ("doctor", super::doctor::doctor_e2e),
    ("coexist", super::coexist::coexist_e2e),
    ("systemd", |s, _| {
        super::systemd::systemd_test(s).map(|r| r.to_string())
    }),
];

/// `cargo xtask vm --<name> [--kernel S] [-v]`: one of [`GUEST_TESTS`] on
/// the given series, or on every tested one.
pub fn run_guest_test(name: &str, series: Option<&str>, show: bool) -> Result<()> {
    let (_, test) = GUEST_TESTS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| anyhow::anyhow!("no guest test named {name}"))?;
    let list: Vec<&str> = series.map_or_else(|| SERIES.to_vec(), |s| vec![s]);
    let mut failed = Vec::new();
    for s in list {
        let t = Instant::now();
        match test(s, show) {
            Ok(r) => println!("  {r} ({:.0} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                println!("--- {name} {s}: FAILED: {e:#}");
                failed.push(s);
            }
        }
    }
    if !failed.is_empty() {
        bail!("{name} test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Runs the VM tests on every supported series (and the pin-and-punch
/// checks on [`EXTRA_SERIES`] with `all_kernels`); one boot per series with
/// both filesystems.
pub fn test_all(all_kernels: bool) -> Result<()> {
    print_mirror_series();
    let mut series = SERIES.to_vec();
    if all_kernels {
        series.extend(EXTRA_SERIES);
    }
    test_series_with(&series, SERIES)?;
    if all_kernels {
        let r = old_kernel_check()?;
        println!("  {r}");
    }
    Ok(())
}

/// Which series the mirror has, and why those that cannot boot cannot: a
/// new series shows up here the day its packages are complete. Informative:
/// the mirror's state is not the project's to fail on (a tested series
/// that cannot boot fails its own test).
pub fn print_mirror_series() {
    let listed = kernel::cache_dir();
    let apt = match super::apt::Apt::new(&listed).and_then(|a| {
        if !a.has_lists() {
            a.update()?;
        }
        a.mirror_series()
    }) {
        Ok(s) => s,
        Err(e) => {
            println!("--- mirror: cannot list the Debian kernels: {e:#}");
            return;
        }
    };
    println!("--- mirror: Debian amd64 kernel series (newest build each; tested: {} always, {} with --all-kernels)", SERIES.join(" "), EXTRA_SERIES.join(" "));
    for m in apt {
        let build = m
            .build
            .as_ref()
            .map(|(i, v)| format!("{i} {v}"))
            .unwrap_or_else(|| "-".into());
        match m.bootable {
            Ok(k) => println!(
                "  {:<6} {build}: bootable ({})",
                m.series,
                k.packages.join(" ")
            ),
            Err(why) => println!("  {:<6} {build}: CANNOT BOOT: {why}", m.series),
        }
    }
}

/// The VM tests on `series`: the guest tests on those of them that are
/// in [`SERIES`], the pin-and-punch checks on all.
pub fn test_series(series: &[&str]) -> Result<()> {
    let guest: Vec<&str> = series
        .iter()
        .copied()
        .filter(|s| SERIES.contains(s))
        .collect();
    test_series_with(series, &guest)
}

/// The pin-and-punch checks on `series`, the guest tests ([`GUEST_TESTS`])
/// on `guest_series`.
fn test_series_with(series: &[&str], guest_series: &[&str]) -> Result<()> {
    let t0 = Instant::now();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for s in series {
        let t = Instant::now();
        match run_series(s) {
            Ok(r) => {
                println!(
                    "--- {s}: {} in {:.0} s",
                    if r.failures.is_empty() {
                        "ok"
                    } else {
                        "FAILED"
                    },
                    t.elapsed().as_secs_f64()
                );
                results.push(r);
            }
            Err(e) => {
                println!("--- {s}: FAILED: {e:#}");
                errors.push(format!("{s}: {e:#}"));
            }
        }
    }
    println!("\nVM tests: per-series summary (busy = dax_layout_busy_page* scans that returned a pinned page)");
    println!(
        "  {:<7} {:<44} {:>6} {:>6} {:>9}  {:<40}  stalls",
        "series",
        "kernel package",
        "fetch",
        "boot",
        "workload",
        "ext4 / xfs: break calls, scans, busy"
    );
    for r in &results {
        let per_fs: Vec<String> =
            r.fs.iter()
                .filter(|(n, _)| !n.ends_with("-quiet"))
                .map(|(n, f)| format!("{n} {}/{}/{}", f.breaks(), f.scans(), f.busy_pages()))
                .collect();
        let stalls: u64 = r.fs.values().map(FsResult::stalls).sum();
        println!(
            "  {:<7} {:<44} {:>5.1}s {:>5.1}s {:>8.1}s  {:<40}  {}",
            r.series,
            r.kernel,
            r.fetch.as_secs_f64(),
            r.boot.as_secs_f64(),
            r.workload.as_secs_f64(),
            per_fs.join("  "),
            if stalls > 0 {
                format!("{stalls} (lost wake-up: break-layouts slept until signalled)")
            } else {
                "0".into()
            }
        );
        println!("          DAX symbols: {}", r.symbols.join(" "));
        let attached: Vec<String> = r.probes["hooks"]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .filter(|h| h["attached"].as_array().is_some_and(|a| !a.is_empty()))
                    .map(|h| {
                        let kinds: std::collections::BTreeSet<&str> = h["attached"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a["kind"].as_str())
                            .collect();
                        format!(
                            "{}({})",
                            h["hook"].as_str().unwrap_or("?"),
                            kinds.into_iter().collect::<Vec<_>>().join("+")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!("          daxrace hooks attached: {}", attached.join(" "));
        for (n, f) in &r.fs {
            println!(
                "          daxrace on {n}: trace exit {:?}, replay exit {:?}, findings {:?}, truncations seen {:?}",
                f.daxrace_rcs.get("trace"),
                f.daxrace_rcs.get("replay"),
                f.findings,
                coverage_truncations(&f.trace_output)
            );
        }
        if !r.absent_probes.is_empty() {
            println!(
                "          probes not attachable: {}",
                r.absent_probes.join(" ")
            );
        }
        for f in &r.failures {
            errors.push(format!("{}: {f}", r.series));
        }
    }
    // Monitoring end to end, once: a real Prometheus scraping daxrace in a
    // guest of the newest series (with the guest tests, not for a run of
    // extra series alone).
    if !guest_series.is_empty() {
        match super::prometheus::prometheus_e2e("newest") {
            Ok(r) => println!("  {r}"),
            Err(e) => {
                println!("--- prometheus e2e: FAILED: {e:#}");
                errors.push(format!("{e:#} (re-run alone: cargo xtask vm --prometheus)"));
            }
        }
    }
    for (name, test) in GUEST_TESTS {
        for s in guest_series {
            match test(s, false) {
                Ok(r) => println!("  {r}"),
                Err(e) => {
                    println!("--- {name} {s}: FAILED: {e:#}");
                    errors.push(format!(
                        "{e:#} (re-run alone: cargo xtask vm --{name} --kernel {s})"
                    ));
                }
            }
        }
    }
    println!("  total {:.0} s", t0.elapsed().as_secs_f64());
    if !errors.is_empty() {
        bail!(
            "VM tests failed:\n  {}\n(re-run one series with `cargo xtask vm --kernel SERIES -- daxrace-workload pin-punch` to look closer)",
            errors.join("\n  ")
        );
    }
    Ok(())
}

/// The demo's guest script: daxrace in the background, the workloads on
/// both filesystems, then SIGINT and daxrace's report.
fn demo_script(secs: u64) -> String {
    let attach_wait = ATTACH_WAIT;
    format!(
        r#"echo "== starting daxrace run --events (output in /tmp/daxrace.out)"
# sigdfl: a background job of this (non-interactive) shell would start
# with SIGINT ignored.
daxrace-workload sigdfl daxrace run --events > /tmp/daxrace.out 2>&1 &
DR=$!
# Wait until it says its hooks are attached: loading and verifying the BPF
# programs takes minutes under TCG.
# Wall-clock time: the loader can starve this loop of the only vCPU.
t0=$(date +%s); next=30
while kill -0 $DR 2>/dev/null && ! grep -q 'hooks attached' /tmp/daxrace.out 2>/dev/null; do
  el=$(( $(date +%s) - t0 ))
  [ $el -ge {attach_wait} ] && {{ echo "== daxrace not attached after {attach_wait} s; running the workloads anyway"; break; }}
  [ $el -ge $next ] && {{ echo "== still waiting for daxrace to attach ($el s; the BPF verifier is slow under TCG)"; next=$((next + 30)); }}
  sleep 1
done
echo "== daxrace ready after $(( $(date +%s) - t0 )) s"
grep 'hooks attached' /tmp/daxrace.out 2>/dev/null
kill -0 $DR 2>/dev/null || echo "== daxrace exited early"
for d in $DAX_EXT4 $DAX_XFS; do
  echo "== pin-punch on $d ({secs} s)"
  daxrace-workload pin-punch --dir $d --seconds {secs} --stall-timeout 3 --max-stalls 2
  echo "== slow-pin on $d"
  daxrace-workload slow-pin --dir $d --iterations 3 --delay-ms 500 --stall-timeout 3
done
echo "== stopping daxrace (SIGINT)"
kill -INT $DR 2>/dev/null
i=0; while kill -0 $DR 2>/dev/null && [ $i -lt 80 ]; do sleep 0.25; i=$((i+1)); done
if kill -0 $DR 2>/dev/null; then
  echo "== daxrace did not stop within 20 s of SIGINT; sending SIGTERM"; kill -TERM $DR
  i=0; while kill -0 $DR 2>/dev/null && [ $i -lt 20 ]; do sleep 0.25; i=$((i+1)); done
  if kill -0 $DR 2>/dev/null; then echo "== still running; SIGKILL"; kill -9 $DR; fi
fi
wait $DR; echo "== daxrace exit status $?"
echo "== what daxrace reported:"
cat /tmp/daxrace.out
"#
    )
}

/// `cargo xtask demo`: daxrace watching the pin-and-punch workloads.
pub fn demo(args: &super::DemoArgs) -> Result<()> {
    let k = kernel::fetch(&args.kernel)?;
    println!(
        "demo: {} {} with emulated pmem, ext4 and xfs mounted with -o dax",
        k.pkg, k.version
    );
    let secs = args.seconds;
    let script = demo_script(secs);
    let out = guest::boot(
        &guest::Spec {
            kernel: &k,
            fs: Fs::Both,
            script,
            timeout: Duration::from_secs(ATTACH_WAIT + 300 + 4 * secs),
            verbose: false,
            stream: true,
            forward: None,
        },
        &super::guest_binaries(),
    )?;
    for l in &out.dmesg {
        println!("  kernel: {l}");
    }
    println!(
        "demo: boot {:.1} s, run {:.1} s",
        out.boot.as_secs_f64(),
        out.command.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_truncations_come_from_the_coverage_line() {
        let out = vec![
            "daxrace: 1953 events traced".to_string(),
            "daxrace: coverage: 12 break-layouts calls, 30 busy scans (5 found a pinned page), 5 waits (1.2 s total, 0.3 s max), 7 truncations; the race window was reached".to_string(),
        ];
        assert_eq!(coverage_truncations(&out), Some(7));
        assert_eq!(coverage_truncations(&out[..1]), None);
    }

    #[test]
    fn phase_counts_are_differences() {
        let lines = [
            "@@SYM dax_disassociate_entry t",
            "@@SYM ext4_break_layouts t [ext4]",
            "@@PROBE brk_dax dax_break_layout absent",
            "@@KP start brk_ext4 0",
            "@@KP start busy 0",
            "@@HIST start busy 0",
            "== ext4: pin-punch",
            r#"{"workload":"pin-punch","stalls":[{"op":"punch"}]}"#,
            "@@RC ext4 pin-punch 3",
            "@@KP ext4 brk_ext4 10",
            "@@KP ext4 busy 12",
            "@@HIST ext4 busy 4",
            "== xfs: pin-punch",
            "@@RC xfs pin-punch 0",
            "@@KP xfs brk_ext4 10",
            "@@KP xfs busy 20",
            "@@HIST xfs busy 9",
        ];
        let out = guest::Outcome {
            status: 0,
            boot: Duration::ZERO,
            guest_uptime: 0.0,
            command: Duration::ZERO,
            output: lines.iter().map(|s| s.to_string()).collect(),
            dmesg: Vec::new(),
        };
        let (syms, absent, res, _, _, _, _) = parse(&out, &["ext4", "xfs"]);
        assert_eq!(
            syms,
            ["dax_disassociate_entry(t)", "ext4_break_layouts[ext4]"]
        );
        assert_eq!(absent, ["brk_dax=dax_break_layout"]);
        let (e, x) = (&res["ext4"], &res["xfs"]);
        assert_eq!((e.breaks(), e.scans(), e.busy_pages()), (10, 12, 4));
        assert_eq!((x.breaks(), x.scans(), x.busy_pages()), (0, 8, 5));
        assert_eq!(e.rcs["pin-punch"], 3);
        assert_eq!(e.stalls(), 1);
        assert_eq!(x.stalls(), 0);
    }

    /// The generated guest scripts must at least parse (busybox sh -n).
    #[test]
    fn guest_scripts_parse() {
        let Some(bb) = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            return;
        };
        let mut test = witness_setup() + "snap start\n";
        test += &workload_script("ext4", "DAX_EXT4");
        for script in [test, demo_script(3)] {
            let out = std::process::Command::new(bb)
                .args(["sh", "-n", "-c", &script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn module_break_hooks_must_be_fentry() {
        let probes = |kinds: &[&str]| {
            let attached: Vec<Value> = kinds
                .iter()
                .map(|k| serde_json::json!({"kind": k, "module": "ext4"}))
                .collect();
            serde_json::json!({"hooks": [
                {"hook": "ext4_break", "attached": attached},
                {"hook": "xfs_break", "attached": [{"kind": "fentry"}, {"kind": "fexit"}]},
            ]})
        };
        assert!(check_module_fentry(&probes(&["fentry", "fexit"])).is_empty());
        let fell_back = check_module_fentry(&probes(&["kprobe", "kretprobe"]));
        assert_eq!(fell_back.len(), 1, "{fell_back:?}");
        assert!(fell_back[0].starts_with("ext4_break"));
        assert_eq!(check_module_fentry(&Value::Null).len(), 2);
    }

    #[test]
    fn an_old_kernel_is_named_too_old() {
        let probes = serde_json::json!({"hooks": [
            {"hook": "busy_scan", "attached": [{"symbol": "dax_layout_busy_page_range"}]},
            {"hook": "disassociate", "attached": [], "errors": ["fentry fe_disassociate on dax_disassociate_entry: the BPF_PROG_LOAD syscall returned Invalid argument (os error 22): this kernel is older than the program: it needs bpf_loop and its callbacks (Linux 5.17 or later)"]},
            {"hook": "generic_break", "attached": [], "errors": ["no candidate on this kernel (looked for dax_break_layout)"]},
        ]});
        let (summary, failures) = judge_old_kernel(Some(0), &probes);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(summary, "1 of 3 hooks attached; too old for: disassociate");
        // A bare EINVAL is a failure; so is nothing named too old.
        let bare = serde_json::json!({"hooks": [
            {"hook": "busy_scan", "attached": [{"symbol": "x"}]},
            {"hook": "disassociate", "attached": [], "errors": ["fentry fe_disassociate: Invalid argument (os error 22)"]},
        ]});
        let (_, failures) = judge_old_kernel(Some(0), &bare);
        assert_eq!(failures.len(), 2, "{failures:?}");
    }

    #[test]
    fn symbol_lookups_must_match_the_listing() {
        let plan = |from: &str, attach_to: &str| {
            serde_json::json!({
                "symbols": from,
                "facts": {"idle_refcount": 1},
                "hooks": [{"hook": "disassociate", "attached": [{"symbol": attach_to}]}],
            })
        };
        let syms = vec!["dax_disassociate_entry.isra.0(t)".to_string()];
        let same = check_symbol_sources(
            &plan("lookup", "dax_disassociate_entry.isra.0"),
            &plan("kallsyms", "dax_disassociate_entry.isra.0"),
            &syms,
        );
        assert!(same.is_empty(), "{same:?}");
        let differ = check_symbol_sources(
            &plan("lookup", "dax_disassociate_entry"),
            &plan("kallsyms", "dax_disassociate_entry.isra.0"),
            &syms,
        );
        assert_eq!(differ.len(), 1, "{differ:?}");
        let fell_back = check_symbol_sources(&plan("kallsyms", "x"), &plan("kallsyms", "x"), &syms);
        assert_eq!(fell_back.len(), 1, "{fell_back:?}");
        assert_eq!(
            check_symbol_sources(&Value::Null, &Value::Null, &syms).len(),
            4
        );
        // 6.16: dax_disassociate_entry inlined everywhere; the listing is
        // the only way to know, and lookups there would be the failure.
        let inlined = vec!["dax_delete_mapping_range".to_string()];
        let listed = check_symbol_sources(
            &plan("kallsyms", "dax_delete_mapping_range"),
            &plan("kallsyms", "dax_delete_mapping_range"),
            &inlined,
        );
        assert!(listed.is_empty(), "{listed:?}");
        let looked_up = check_symbol_sources(
            &plan("lookup", "dax_delete_mapping_range"),
            &plan("kallsyms", "dax_delete_mapping_range"),
            &inlined,
        );
        assert!(
            looked_up.len() == 1 && looked_up[0].contains("under no name"),
            "{looked_up:?}"
        );
    }
}
