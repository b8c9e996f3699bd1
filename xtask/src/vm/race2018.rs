//! The 2018 race test (`cargo xtask vm --race2018`, and part of the VM
//! tests): the break-layouts race of 2018 put back into the kernel by a
//! live patch (xtask/kmod/fault_patch), driven to completion by
//! `daxrace-workload race2018`, and daxrace judged against two witnesses
//! that do not depend on it: the patch's own counters (ground truth) and
//! the kernel's WARN in dax_disassociate_entry().
//!
//! One boot per series, both filesystems; on each, the patch's `fixed`
//! mode (the kernel's loop: the control) and then its `buggy` mode (the
//! 2018 loop), each under `daxrace trace --json` with daxrace's default
//! attach (the live-patched break functions go to kprobes by themselves),
//! then `daxrace replay` of the trace; then the buggy loop once more under
//! `--evidence quiet` (the daemon's default), judged as buggy. Before a buggy phase the kernel's
//! WARN_ON_ONCE flags are cleared (debugfs `clear_warn_once`), so that
//! each filesystem's phase can reach the WARN on its own.
//!
//! buggy: daxrace's `break_without_clean_scan` count equals the patch's
//! early exits; its `truncate_while_pinned` pages are exactly the pages the
//! patch found above idle when the break returned (the workload's break
//! covers the whole file, so each of them is then truncated, and its pin
//! outlives the break by seconds); the kernel WARNs, and daxrace reports
//! truncate_while_pinned whenever it does. fixed: no early exit, no page
//! pinned at return, no WARN, and no finding but the known 6.1
//! lost_wakeup.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;

use super::{
    guest::{self, Fs},
    kernel, kmod,
};

/// Where the patch module is in the guest.
const GUEST_KO: &str = "/lib/modules/extra/daxrace_fault_patch.ko";
/// The patch's window: longer than the workload's brief pin, so that the
/// brief page goes idle inside it.
const WINDOW_MS: u64 = 1000;
/// The longest single sleep of the patched wait (the 6.1 lost wake-up
/// would otherwise hold every fixed-mode break until a signal).
const WAIT_TIMEOUT_MS: u64 = 10;
/// The workload's pins: the brief one ends inside the window, the long one
/// outlives any break of the 2018 loop.
const BRIEF_MS: u64 = 600;
const LONG_MS: u64 = 3000;
const ROUNDS: u32 = 4;
/// The boot's command limit: six phases of about 15 s each, plus
/// attaching daxrace six times.
const BOOT_LIMIT: Duration = Duration::from_secs(900);
/// The kernel's WARN on a truncated page above idle, as 6.1 and 6.12 log it
/// (`WARNING: CPU: 0 PID: 229 at fs/dax.c:390 dax_disassociate_entry+0x86/0xb0`)
/// and 7.3 (`WARNING: fs/dax.c:452 at dax_disassociate_entry.isra.0+0x9c/0xc0,
/// CPU#0: ...`): the one kernel fault a buggy phase expects.
const TRUNCATION_WARN: &str = "fs/dax.c:";
const TRUNCATION_WARN_FUNCTION: &str = " dax_disassociate_entry";
/// The patch module's counters, in the order they are printed.
const COUNTERS: &[&str] = &[
    "calls",
    "busy_scans",
    "early_exits",
    "pinned_at_return",
    "idle_in_window",
    "waits_slept",
];
/// The phases: the patch's fixed and buggy loops under `trace` (full
/// evidence), then the buggy loop again under the daemon's quiet mode.
const MODES: &[&str] = &["fixed", "buggy", "quiet"];

/// The patch's mode in a phase.
fn patch_mode(mode: &str) -> &str {
    if mode == "quiet" {
        "buggy"
    } else {
        mode
    }
}

fn script(fss: &[&str]) -> String {
    let mut s = format!(
        r#"FP=/sys/module/daxrace_fault_patch/parameters
LP=/sys/kernel/livepatch/daxrace_fault_patch
insmod {GUEST_KO} window_ms={WINDOW_MS} wait_timeout_ms={WAIT_TIMEOUT_MS} 2>/tmp/insmod.err
echo "@@FPI $? $(tr '\n' ' ' </tmp/insmod.err)"
i=0; while [ "$(cat $LP/transition 2>/dev/null)" = 1 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "@@FPT $(cat $LP/transition 2>/dev/null || echo none) $(cat $LP/enabled 2>/dev/null || echo none)"
daxrace probes --json > /tmp/probes.json 2>/dev/null
echo "@@PROBESJSON $(tr -d '\n' < /tmp/probes.json)"
"#
    );
    for fs in fss {
        let var = format!("DAX_{}", fs.to_uppercase());
        for mode in MODES {
            let t = format!("/tmp/t-{fs}-{mode}");
            let _ = write!(
                s,
                r#"echo "== {fs} {mode}"
echo {patch} > $FP/mode; echo 1 > $FP/reset
{clear}n0=$(dmesg | wc -l)
daxrace trace{evidence} --json {t}.jsonl -- daxrace-workload race2018 --dir ${var} --rounds {ROUNDS} --brief-ms {BRIEF_MS} --long-ms {LONG_MS} --stall-timeout 5 --max-stalls 1 --json > {t}.out 2>&1
echo "@@DR {fs} {mode} trace $?"
for c in {counters}; do echo "@@FP {fs} {mode} $c $(cat $FP/$c)"; done
sed 's/^/@@FPP {fs} {mode} /' $FP/pinned_pages
dmesg | tail -n +$((n0 + 1)) | grep -E 'WARNING:|BUG:|Oops|general protection|Kernel panic' | sed 's/^/@@KMSG {fs} {mode} /'
sed 's/^/@@TO {fs} {mode} /' {t}.out
grep '"type":"finding"' {t}.jsonl | sed 's/^/@@FJ {fs} {mode} /'
grep -q '"type":"footer"' {t}.jsonl && echo "@@FOOTER {fs} {mode}"
daxrace replay {t}.jsonl > {t}.replay 2>&1
echo "@@DR {fs} {mode} replay $?"
sed 's/^/@@RO {fs} {mode} /' {t}.replay
"#,
                patch = patch_mode(mode),
                evidence = if *mode == "quiet" {
                    " --evidence quiet"
                } else {
                    ""
                },
                clear = if patch_mode(mode) == "buggy" {
                    "echo 1 > /sys/kernel/debug/clear_warn_once\n"
                } else {
                    ""
                },
                counters = COUNTERS.join(" "),
            );
        }
    }
    s
}

/// A page the patch found above idle when a break returned 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PinnedPage {
    ino: u64,
    index: u64,
    pfn: u64,
    refcount: i64,
    /// The return was an early exit.
    early: bool,
}

/// `ext4 12 8 0x48410 2 early` (fs ino index pfn refcount early|clean).
fn parse_pinned_page(words: &[&str]) -> Option<PinnedPage> {
    let [_fs, ino, index, pfn, refcount, how] = words else {
        return None;
    };
    Some(PinnedPage {
        ino: ino.parse().ok()?,
        index: index.parse().ok()?,
        pfn: u64::from_str_radix(pfn.trim_start_matches("0x"), 16).ok()?,
        refcount: refcount.parse().ok()?,
        early: *how == "early",
    })
}

/// Pages by (ino, pfn), each with how often it was seen.
type PageCounts = BTreeMap<(u64, u64), usize>;

fn page_counts(pages: impl Iterator<Item = (u64, u64)>) -> PageCounts {
    let mut m = PageCounts::new();
    for p in pages {
        *m.entry(p).or_default() += 1;
    }
    m
}

fn total(pages: &PageCounts) -> usize {
    pages.values().sum()
}

/// What `a` has more often than `b`, as "ino I pfn P" (xN when more than once).
fn excess(a: &PageCounts, b: &PageCounts) -> Vec<String> {
    a.iter()
        .filter_map(|(&(ino, pfn), &n)| {
            let more = n.saturating_sub(b.get(&(ino, pfn)).copied().unwrap_or(0));
            match more {
                0 => None,
                1 => Some(format!("ino {ino} pfn {pfn:#x}")),
                m => Some(format!("ino {ino} pfn {pfn:#x} x{m}")),
            }
        })
        .collect()
}

/// How many of `a` are matched in `b`, counting multiplicity.
fn matched(a: &PageCounts, b: &PageCounts) -> usize {
    a.iter()
        .map(|(k, &n)| n.min(b.get(k).copied().unwrap_or(0)))
        .sum()
}

/// One filesystem in one mode.
#[derive(Default, Debug)]
struct Phase {
    counters: BTreeMap<String, i64>,
    pinned: Vec<PinnedPage>,
    kmsg: Vec<String>,
    /// daxrace exit statuses: trace, replay.
    rcs: BTreeMap<String, i32>,
    findings: Vec<Value>,
    trace_output: Vec<String>,
    replay_output: Vec<String>,
    footer: bool,
    /// The workload's JSON summary line.
    workload: Value,
}

impl Phase {
    fn counter(&self, name: &str) -> i64 {
        self.counters.get(name).copied().unwrap_or(-1)
    }
    fn findings_of(&self, kind: &str) -> Vec<&Value> {
        self.findings.iter().filter(|f| f["kind"] == kind).collect()
    }
    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for f in &self.findings {
            *m.entry(f["kind"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        m
    }
    fn warned(&self) -> bool {
        self.kmsg.iter().any(|l| is_truncation_warn(l))
    }
    /// (ino, pfn) of daxrace's truncate_while_pinned findings, with their
    /// multiplicity: a filesystem may hand the same block to the file again
    /// in a later round, so a page can be truncated pinned more than once.
    fn truncated_pinned(&self) -> PageCounts {
        page_counts(self.findings_of("truncate_while_pinned").iter().map(|f| {
            (
                f["ino"].as_u64().unwrap_or(0),
                f["pfn"].as_u64().unwrap_or(0),
            )
        }))
    }
    /// (ino, pfn) of the pages the patch counted as pinned at return.
    fn module_pinned(&self) -> PageCounts {
        page_counts(self.pinned.iter().map(|p| (p.ino, p.pfn)))
    }
}

#[derive(Default, Debug)]
struct Report {
    insmod: Option<(i32, String)>,
    transition: Option<(String, String)>,
    probes: Value,
    phases: Phases,
}

type Phases = BTreeMap<(String, String), Phase>;

fn at<'a>(phases: &'a mut Phases, fs: &str, mode: &str) -> &'a mut Phase {
    phases
        .entry((fs.to_string(), mode.to_string()))
        .or_default()
}

fn parse(output: &[String]) -> Report {
    let mut r = Report::default();
    let rest = |l: &str, n: usize| l.splitn(n + 1, ' ').nth(n).unwrap_or("").to_string();
    for l in output {
        if let Some(json) = l.strip_prefix("@@PROBESJSON ") {
            r.probes = serde_json::from_str(json).unwrap_or(Value::Null);
            continue;
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["@@FPI", rc, ..] => r.insmod = Some((rc.parse().unwrap_or(255), rest(l, 2))),
            ["@@FPT", transition, enabled] => {
                r.transition = Some((transition.to_string(), enabled.to_string()))
            }
            ["@@DR", fs, mode, what, rc] => {
                at(&mut r.phases, fs, mode)
                    .rcs
                    .insert(what.to_string(), rc.parse().unwrap_or(255));
            }
            ["@@FP", fs, mode, name, v] => {
                at(&mut r.phases, fs, mode)
                    .counters
                    .insert(name.to_string(), v.parse().unwrap_or(-1));
            }
            ["@@FPP", fs, mode, page @ ..] => {
                if let Some(p) = parse_pinned_page(page) {
                    at(&mut r.phases, fs, mode).pinned.push(p);
                }
            }
            ["@@KMSG", fs, mode, ..] => at(&mut r.phases, fs, mode).kmsg.push(rest(l, 3)),
            ["@@TO", fs, mode, ..] => {
                let text = rest(l, 3);
                let p = at(&mut r.phases, fs, mode);
                if text.starts_with('{') && text.contains("\"workload\"") {
                    p.workload = serde_json::from_str(&text).unwrap_or(Value::Null);
                }
                p.trace_output.push(text);
            }
            ["@@RO", fs, mode, ..] => at(&mut r.phases, fs, mode).replay_output.push(rest(l, 3)),
            ["@@FJ", fs, mode, ..] => {
                if let Ok(v) = serde_json::from_str::<Value>(&rest(l, 3)) {
                    at(&mut r.phases, fs, mode).findings.push(v);
                }
            }
            ["@@FOOTER", fs, mode] => at(&mut r.phases, fs, mode).footer = true,
            _ => {}
        }
    }
    r
}

fn is_truncation_warn(line: &str) -> bool {
    line.contains("WARNING:")
        && line.contains(TRUNCATION_WARN)
        && line.contains(TRUNCATION_WARN_FUNCTION)
}

/// What the kernel may log in a phase of this mode.
fn expected_faults(mode: &str) -> &'static [&'static str] {
    if patch_mode(mode) == "buggy" {
        &[TRUNCATION_WARN_FUNCTION]
    } else {
        &[]
    }
}

/// The finding kinds a fixed phase may report: the 6.1 lost wake-up (the
/// kernel's own bug, not the patch's), nothing else.
fn allowed_in_fixed(series: &str) -> &'static [&'static str] {
    if series == "6.1" {
        &["lost_wakeup"]
    } else {
        &[]
    }
}

fn check_phase(series: &str, fs: &str, mode: &str, p: &Phase) -> Vec<String> {
    let mut f = Vec::new();
    let name = format!("{fs} {mode}");
    for c in COUNTERS {
        if p.counter(c) < 0 {
            f.push(format!("{name}: the patch's counter {c} was not read"));
        }
    }
    if !p.footer {
        f.push(format!("{name}: the trace file has no footer"));
    }
    let trace = p.rcs.get("trace").copied();
    let replay = p.rcs.get("replay").copied();
    if replay != trace {
        f.push(format!(
            "{name}: replay exited {replay:?}, the trace {trace:?}"
        ));
    }
    if !p
        .replay_output
        .iter()
        .any(|l| l.contains("replay agrees with the recording"))
    {
        f.push(format!(
            "{name}: the replay does not agree with the recording: {}",
            p.replay_output.join(" / ")
        ));
    }
    let armed = p.workload["extra"]["armed"].as_u64().unwrap_or(0);
    if armed == 0 {
        f.push(format!(
            "{name}: no round of the workload had both pins in flight when the break started"
        ));
    }
    for fault in super::dmesg::unexpected_faults(&p.kmsg, expected_faults(mode)) {
        f.push(format!("{name}: {fault}"));
    }
    let early = p.counter("early_exits");
    let bwcs = p.findings_of("break_without_clean_scan").len() as i64;
    let module_pinned = p.module_pinned();
    let daxrace_pinned = p.truncated_pinned();
    if mode == "fixed" {
        if early != 0 || p.counter("pinned_at_return") != 0 {
            f.push(format!(
                "{name}: the kernel's loop returned early {early} times with {} pages pinned (the patch's fixed mode is wrong)",
                p.counter("pinned_at_return")
            ));
        }
        let unexpected: Vec<String> = p
            .kinds()
            .into_iter()
            .filter(|(k, _)| !allowed_in_fixed(series).contains(&k.as_str()))
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        if !unexpected.is_empty() {
            f.push(format!(
                "{name}: daxrace reported {} under the kernel's own loop",
                unexpected.join(", ")
            ));
        }
        if p.warned() {
            f.push(format!("{name}: the kernel WARNed under its own loop"));
        }
        if p.counter("busy_scans") <= 0 {
            f.push(format!(
                "{name}: no busy scan returned a page: the workload did not reach break-layouts with a pin"
            ));
        }
        return f;
    }
    // buggy
    if early <= 0 {
        f.push(format!(
            "{name}: the 2018 loop never returned early (patch: {} busy scans, {} idle in the window): the race did not complete",
            p.counter("busy_scans"),
            p.counter("idle_in_window")
        ));
    }
    if bwcs != early {
        f.push(format!(
            "{name}: daxrace reported {bwcs} break_without_clean_scan, the patch counted {early} early exits"
        ));
    }
    // The patch keeps its latest pages only: the list must hold them all.
    if p.pinned.len() as i64 != p.counter("pinned_at_return") {
        f.push(format!(
            "{name}: the patch counted {} pages pinned at return but listed {} (it keeps the latest 48)",
            p.counter("pinned_at_return"),
            p.pinned.len()
        ));
    }
    let missed = excess(&module_pinned, &daxrace_pinned);
    let extra = excess(&daxrace_pinned, &module_pinned);
    if !missed.is_empty() {
        f.push(format!(
            "{name}: pages the patch found pinned when the break returned, then truncated, with no truncate_while_pinned from daxrace: {}",
            missed.join(", ")
        ));
    }
    if !extra.is_empty() {
        f.push(format!(
            "{name}: truncate_while_pinned on pages the patch did not find pinned at any return: {}",
            extra.join(", ")
        ));
    }
    if p.counter("pinned_at_return") <= 0 {
        f.push(format!(
            "{name}: no break of the 2018 loop returned with a page of its range still pinned: the truncation never met a pin"
        ));
    }
    if !p.warned() {
        f.push(format!(
            "{name}: the kernel did not WARN in dax_disassociate_entry (its WARN_ON_ONCE was cleared before the phase)"
        ));
    } else if total(&daxrace_pinned) == 0 {
        f.push(format!(
            "{name}: the kernel WARNed on a truncated pinned page, daxrace reported no truncate_while_pinned"
        ));
    }
    if trace != Some(10) {
        f.push(format!(
            "{name}: daxrace trace exited {trace:?}, not 10 (findings)"
        ));
    }
    let others: Vec<String> = p
        .kinds()
        .into_iter()
        .filter(|(k, _)| {
            !["break_without_clean_scan", "truncate_while_pinned"].contains(&k.as_str())
                && !allowed_in_fixed(series).contains(&k.as_str())
        })
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    if !others.is_empty() {
        f.push(format!("{name}: other findings: {}", others.join(", ")));
    }
    f
}

/// Precision and recall of a daxrace finding kind against the patch's
/// ground truth, as "p/r" (n/a without either).
fn precision_recall(found: usize, truth: usize, matched: usize) -> String {
    let ratio = |a: usize, b: usize| {
        if b == 0 {
            "n/a".to_string()
        } else {
            format!("{:.2}", a as f64 / b as f64)
        }
    };
    format!("{}/{}", ratio(matched, found), ratio(matched, truth))
}

/// One table row per phase.
fn table(series: &str, r: &Report) -> String {
    let mut s = format!(
        "  {:<6} {:<5} {:<6} | {:>5} {:>5} {:>5} {:>6} | {:>5} {:>5} {:<22} | {:<4} | {}\n",
        "series",
        "fs",
        "mode",
        "calls",
        "busy",
        "early",
        "pinned",
        "bwcs",
        "twp",
        "other findings",
        "WARN",
        "precision/recall bwcs, twp"
    );
    for ((fs, mode), p) in &r.phases {
        let bwcs = p.findings_of("break_without_clean_scan").len();
        let early = p.counter("early_exits").max(0) as usize;
        let module_pinned = p.module_pinned();
        let daxrace_pinned = p.truncated_pinned();
        let both = matched(&module_pinned, &daxrace_pinned);
        let others: Vec<String> = p
            .kinds()
            .into_iter()
            .filter(|(k, _)| {
                !["break_without_clean_scan", "truncate_while_pinned"].contains(&k.as_str())
            })
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  {:<6} {:<5} {:<6} | {:>5} {:>5} {:>5} {:>6} | {:>5} {:>5} {:<22} | {:<4} | {}, {}",
            series,
            fs,
            mode,
            p.counter("calls"),
            p.counter("busy_scans"),
            p.counter("early_exits"),
            p.counter("pinned_at_return"),
            bwcs,
            p.findings_of("truncate_while_pinned").len(),
            if others.is_empty() {
                "-".to_string()
            } else {
                others.join(", ")
            },
            if p.warned() { "yes" } else { "no" },
            precision_recall(bwcs, early, bwcs.min(early)),
            precision_recall(total(&daxrace_pinned), total(&module_pinned), both),
        );
    }
    s
}

/// The race2018 test on one series; returns its summary (with the table).
/// `show`: the guest's output even when every check passed.
pub fn race2018_e2e(series: &str, show: bool) -> Result<String> {
    let k = kernel::fetch(series)?;
    let src = crate::setup::workspace_root().join("xtask/kmod/fault_patch");
    let module = kmod::build(&k, &src).map_err(|e| {
        e.context(format!(
            "race2018 {series}: cannot build the fault patch for {}",
            k.release
        ))
    })?;
    println!(
        "--- race2018 {series}: {} {} ({}), {}",
        k.pkg,
        k.version,
        k.release,
        module.provenance()
    );
    let fss = Fs::Both.list();
    let t0 = Instant::now();
    let out = guest::boot_with_files(
        &guest::Spec {
            kernel: &k,
            fs: Fs::Both,
            script: script(fss),
            timeout: BOOT_LIMIT,
            verbose: false,
            stream: show,
            forward: None,
        },
        &super::guest_binaries(),
        &[(GUEST_KO.to_string(), module.ko.clone())],
    )?;
    let r = parse(&out.output);
    let mut failures = kmod::live_patch_load_failures("the fault patch", &r.insmod, &r.transition);
    // The whole boot: nothing but the buggy phases' WARN.
    failures.extend(super::dmesg::unexpected_faults(
        &out.dmesg,
        expected_faults("buggy"),
    ));
    for fs in fss {
        for mode in MODES {
            match r.phases.get(&(fs.to_string(), mode.to_string())) {
                Some(p) => failures.extend(check_phase(series, fs, mode, p)),
                None => failures.push(format!("{fs} {mode}: the phase did not run")),
            }
        }
    }
    if out.status != 0 {
        failures.push(format!("guest script exited with {}", out.status));
    }
    let mut summary = format!(
        "race2018 {series} ({}, module by {}, boot + phases {:.0} s):\n{}",
        k.release,
        module.compiler,
        t0.elapsed().as_secs_f64(),
        table(series, &r)
    );
    // The first finding of each headline kind, as daxrace words it.
    for kind in ["break_without_clean_scan", "truncate_while_pinned"] {
        if let Some(line) = r
            .phases
            .values()
            .flat_map(|p| p.trace_output.iter())
            .find(|l| l.contains(&format!("FINDING {kind}")))
        {
            let _ = writeln!(summary, "  e.g. {line}");
        }
    }
    for l in r.phases.values().flat_map(|p| p.kmsg.iter()) {
        let _ = writeln!(summary, "  kernel: {l}");
    }
    if failures.is_empty() {
        return Ok(summary + "  ok");
    }
    if !show {
        println!("--- race2018 {series}: guest output:");
        for l in &out.output {
            if !l.starts_with("@@FJ") {
                println!("  | {l}");
            }
        }
    }
    for l in &out.dmesg {
        println!("  kernel: {l}");
    }
    bail!("{summary}  {}", failures.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn script_parses() {
        guest::tests::assert_sh_parses(&script(Fs::Both.list()));
    }

    #[test]
    fn pinned_page_lines() {
        assert_eq!(
            parse_pinned_page(&["ext4", "12", "8", "0x48410", "2", "early"]),
            Some(PinnedPage {
                ino: 12,
                index: 8,
                pfn: 0x48410,
                refcount: 2,
                early: true
            })
        );
        assert_eq!(
            parse_pinned_page(&["xfs", "131", "8", "0x4a008", "1025", "clean"]).map(|p| p.early),
            Some(false)
        );
        assert_eq!(parse_pinned_page(&["ext4", "12", "8"]), None);
        assert_eq!(
            parse_pinned_page(&["ext4", "x", "8", "0x1", "2", "early"]),
            None
        );
    }

    fn buggy_phase_lines(bwcs: usize, twp_pfn: &str) -> Vec<String> {
        let mut v = lines(&[
            "@@DR ext4 buggy trace 10",
            "@@FP ext4 buggy calls 9",
            "@@FP ext4 buggy busy_scans 8",
            "@@FP ext4 buggy early_exits 2",
            "@@FP ext4 buggy pinned_at_return 2",
            "@@FP ext4 buggy idle_in_window 4",
            "@@FP ext4 buggy waits_slept 2",
            "@@FPP ext4 buggy ext4 12 8 0x48410 2 early",
            "@@FPP ext4 buggy ext4 12 8 0x48418 2 early",
            "@@KMSG ext4 buggy <4>[   40.1] WARNING: CPU: 0 PID: 177 at fs/dax.c:398 dax_disassociate_entry+0x87/0xb0",
            r#"@@TO ext4 buggy {"workload":"race2018","extra":{"armed":4}}"#,
            "@@FOOTER ext4 buggy",
            "@@DR ext4 buggy replay 10",
            "@@RO ext4 buggy daxrace: replay agrees with the recording (4 findings)",
        ]);
        for _ in 0..bwcs {
            v.push(r#"@@FJ ext4 buggy {"type":"finding","kind":"break_without_clean_scan","ino":12,"pfn":1}"#.into());
        }
        for pfn in ["0x48410", twp_pfn] {
            let pfn = u64::from_str_radix(pfn.trim_start_matches("0x"), 16).unwrap();
            v.push(format!(
                r#"@@FJ ext4 buggy {{"type":"finding","kind":"truncate_while_pinned","ino":12,"pfn":{pfn}}}"#
            ));
        }
        v
    }

    #[test]
    fn buggy_phase_agrees() {
        let r = parse(&buggy_phase_lines(2, "0x48418"));
        let p = &r.phases[&("ext4".to_string(), "buggy".to_string())];
        assert_eq!(p.counter("early_exits"), 2);
        assert_eq!(p.pinned.len(), 2);
        assert!(p.warned());
        let f = check_phase("6.1", "ext4", "buggy", p);
        assert!(f.is_empty(), "{f:?}");
        assert!(table("6.1", &r).contains("1.00/1.00, 1.00/1.00"));
    }

    #[test]
    fn buggy_phase_differences_fail() {
        let r = parse(&buggy_phase_lines(1, "0x50000"));
        let p = &r.phases[&("ext4".to_string(), "buggy".to_string())];
        let f = check_phase("6.1", "ext4", "buggy", p);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].contains("1 break_without_clean_scan") && f[0].contains("2 early exits"));
        assert!(f[1].contains("pfn 0x48418"));
        assert!(f[2].contains("pfn 0x50000"));
    }

    /// 7.x words the WARN differently and warns in the `.isra` clone;
    /// without any WARN, or with no page pinned at a return, the phase fails.
    #[test]
    fn buggy_phase_warn_formats_and_no_pin() {
        let mut out = buggy_phase_lines(2, "0x48418");
        out.retain(|l| !l.starts_with("@@KMSG"));
        let r = parse(&out);
        let p = &r.phases[&("ext4".to_string(), "buggy".to_string())];
        let f = check_phase("6.12", "ext4", "buggy", p);
        assert!(f.len() == 1 && f[0].contains("did not WARN"), "{f:?}");
        out.push("@@KMSG ext4 buggy [   56.646175] WARNING: fs/dax.c:452 at dax_disassociate_entry.isra.0+0x9c/0xc0, CPU#0: daxrace-workloa/208".into());
        let r = parse(&out);
        let p = &r.phases[&("ext4".to_string(), "buggy".to_string())];
        assert!(check_phase("newest", "ext4", "buggy", p).is_empty());
        out.retain(|l| !l.starts_with("@@FPP") && !l.contains("truncate_while_pinned"));
        out.retain(|l| !l.contains("pinned_at_return"));
        out.push("@@FP ext4 buggy pinned_at_return 0".into());
        let r = parse(&out);
        let p = &r.phases[&("ext4".to_string(), "buggy".to_string())];
        let f = check_phase("newest", "ext4", "buggy", p);
        assert!(f.iter().any(|l| l.contains("never met a pin")), "{f:?}");
    }

    /// xfs gave the file the same block in two rounds: the page is pinned
    /// at return twice and must be reported twice.
    #[test]
    fn a_page_pinned_at_return_twice() {
        let mut out = buggy_phase_lines(2, "0x48410");
        out.retain(|l| !l.contains("0x48418"));
        out.push("@@FPP ext4 buggy ext4 12 8 0x48410 2 early".into());
        let r = parse(&out);
        let p = &r.phases[&("ext4".to_string(), "buggy".to_string())];
        assert!(check_phase("6.1", "ext4", "buggy", p).is_empty());
        out.pop();
        out.push("@@FPP ext4 buggy ext4 12 8 0x48420 2 early".into());
        let r = parse(&out);
        let p = &r.phases[&("ext4".to_string(), "buggy".to_string())];
        let f = check_phase("6.1", "ext4", "buggy", p);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("pfn 0x48420") && f[1].contains("pfn 0x48410"));
        assert!(
            table("6.1", &r).contains("0.50/0.50"),
            "{}",
            table("6.1", &r)
        );
    }

    #[test]
    fn fixed_phase_findings() {
        let base = lines(&[
            "@@DR xfs fixed trace 0",
            "@@FP xfs fixed calls 9",
            "@@FP xfs fixed busy_scans 8",
            "@@FP xfs fixed early_exits 0",
            "@@FP xfs fixed pinned_at_return 0",
            "@@FP xfs fixed idle_in_window 4",
            "@@FP xfs fixed waits_slept 4",
            r#"@@TO xfs fixed {"workload":"race2018","extra":{"armed":4}}"#,
            "@@FOOTER xfs fixed",
            "@@DR xfs fixed replay 0",
            "@@RO xfs fixed daxrace: replay agrees with the recording (0 findings)",
        ]);
        let r = parse(&base);
        let p = &r.phases[&("xfs".to_string(), "fixed".to_string())];
        assert!(check_phase("6.12", "xfs", "fixed", p).is_empty());
        let mut with = base.clone();
        with.push(
            r#"@@FJ xfs fixed {"type":"finding","kind":"lost_wakeup","ino":5,"pfn":7}"#.into(),
        );
        with.push("@@KMSG xfs fixed <4>WARNING: CPU: 0 PID: 1 at fs/dax.c:398 dax_disassociate_entry+0x87/0xb0".into());
        let r = parse(&with);
        let p = &r.phases[&("xfs".to_string(), "fixed".to_string())];
        // lost_wakeup is 6.1's own bug; a WARN is never expected here.
        let f61 = check_phase("6.1", "xfs", "fixed", p);
        assert_eq!(f61.len(), 2, "{f61:?}");
        let f612 = check_phase("6.12", "xfs", "fixed", p);
        assert_eq!(f612.len(), 3, "{f612:?}");
        assert!(f612.iter().any(|l| l.contains("lost_wakeup x1")));
    }
}
