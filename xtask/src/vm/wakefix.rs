//! The 6.1 lost wake-up proven by its fix (`cargo xtask vm --wakefix`, and
//! part of the VM tests): an A/B on the same kernel and workload.
//!
//! Debian 12's 6.1 releases direct-I/O pages in `__bio_release_pages()`
//! with `folio_put_refs()`, which on 6.1 never calls
//! `put_devmap_managed_page()`, the only wake-up of a break-layouts waiter
//! on a DAX page; daxrace reports it as `lost_wakeup`. The live patch
//! `xtask/kmod/wake_fix` replaces that function with a copy that releases
//! each page with `put_page()` (`fix=1`) or, as the control, with 6.1.y's
//! own `folio_put_refs()` (`fix=0`).
//!
//! One boot, both filesystems, `daxrace trace --json` with the default
//! attach (the patched function moves to kprobes by itself) around
//! pin-punch (4 readers, punch + truncate, stall timeout 3 s):
//! - no patch: `lost_wakeup` in every run, and the workload stalls (exit 3);
//! - `fix=1`: no `lost_wakeup`, no stall, exit 0, waits and `wake_up`
//!   events seen, DAX pages released through the patch;
//! - `fix=0`: the bug returns.
//!
//! Any kernel BUG, Oops or WARNING fails the test. On other series the bug
//! does not exist (direct I/O pins with FOLL_PIN and is released through
//! unpin_user_page(), which wakes the waiter) and the patch is not built:
//! the test says so and passes with that statement.
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
const GUEST_KO: &str = "/lib/modules/extra/daxrace_wake_fix.ko";
/// The phases in order, with their runs per filesystem. The patch cannot
/// be unloaded in between, so "no patch" comes first.
const MODES: &[(&str, u32)] = &[("none", 2), ("fix", 3), ("fix0", 1)];
const WORKLOAD_SECONDS: u64 = 8;
const READERS: u32 = 4;
const STALL_TIMEOUT_S: u64 = 3;
/// Stalls after which the workload stops: two show the bug, more only cost time.
const MAX_STALLS: u32 = 2;
/// 12 runs of up to ~30 s each (attaching daxrace under TCG included).
const BOOT_LIMIT: Duration = Duration::from_secs(900);
/// The patch module's counters.
const COUNTERS: &[&str] = &["calls", "pages", "devmap_pages"];
/// The workload's exit status after a breaker stalled (daxrace-workload's EXIT_STALL).
const EXIT_STALL: i32 = 3;

fn mode_label(mode: &str) -> &'static str {
    match mode {
        "none" => "no patch",
        "fix" => "fix=1 (put_page)",
        "fix0" => "fix=0 (folio_put_refs)",
        _ => "?",
    }
}

fn script(fss: &[&str]) -> String {
    let mut s = format!(
        r#"WP=/sys/module/daxrace_wake_fix/parameters
LP=/sys/kernel/livepatch/daxrace_wake_fix
run() {{
  fs=$1; mode=$2; i=$3; dir=$4; t=/tmp/w-$fs-$mode-$i
  echo "== $fs $mode run $i"
  [ -d $WP ] && echo 1 > $WP/reset
  n0=$(dmesg | wc -l)
  daxrace trace --fail-on none --json $t.jsonl -- daxrace-workload pin-punch --dir $dir --seconds {WORKLOAD_SECONDS} --readers {READERS} --ops punch,truncate --stall-timeout {STALL_TIMEOUT_S} --max-stalls {MAX_STALLS} --json > $t.out 2>&1
  echo "@@DR $fs $mode $i $?"
  if [ -d $WP ]; then for c in {counters}; do echo "@@WF $fs $mode $i $c $(cat $WP/$c)"; done; fi
  dmesg | tail -n +$((n0 + 1)) | grep -E 'WARNING:|BUG:|Oops|general protection|Kernel panic' | sed "s/^/@@KMSG $fs $mode $i /"
  grep '"type":"finding"' $t.jsonl | sed "s/^/@@FJ $fs $mode $i /"
  grep '"type":"footer"' $t.jsonl | sed "s/^/@@FOOT $fs $mode $i /"
  head -1 $t.jsonl | sed "s/^/@@HDR $fs $mode $i /"
  grep '^{{.*"workload"' $t.out | sed "s/^/@@WL $fs $mode $i /"
  grep 'FINDING' $t.out | head -1 | sed "s/^/@@TO $fs $mode $i /"
}}
"#,
        counters = COUNTERS.join(" "),
    );
    for (mode, runs) in MODES {
        match *mode {
            "fix" => {
                let _ = writeln!(s, "insmod {GUEST_KO} fix=1 2>/tmp/insmod.err");
                s += r#"echo "@@INS $? $(tr '\n' ' ' </tmp/insmod.err)"
i=0; while [ "$(cat $LP/transition 2>/dev/null)" = 1 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "@@LPT $(cat $LP/transition 2>/dev/null || echo none) $(cat $LP/enabled 2>/dev/null || echo none)"
"#
            }
            "fix0" => s += "echo 0 > $WP/fix; echo \"@@FIX $(cat $WP/fix)\"\n",
            _ => {}
        }
        for fs in fss {
            let var = format!("DAX_{}", fs.to_uppercase());
            for i in 1..=*runs {
                let _ = writeln!(s, "run {fs} {mode} {i} ${var}");
            }
        }
    }
    s
}

/// One run of the workload under `daxrace trace`.
#[derive(Default, Debug)]
struct Run {
    /// `daxrace trace --fail-on none`: the workload's own exit status.
    rc: Option<i32>,
    findings: Vec<Value>,
    footer: Value,
    workload: Value,
    counters: BTreeMap<String, i64>,
    kmsg: Vec<String>,
    /// How daxrace attached the release hook (from the trace header).
    release_kind: Option<String>,
    first_finding: Option<String>,
}

impl Run {
    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for f in &self.findings {
            *m.entry(f["kind"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        m
    }
    fn lost_wakeups(&self) -> usize {
        self.kinds().get("lost_wakeup").copied().unwrap_or(0)
    }
    fn cov(&self, name: &str) -> u64 {
        self.footer["coverage"][name].as_u64().unwrap_or(0)
    }
    /// How the waits ended (daxrace's `wait_ends`): woken, idle at start,
    /// interrupted, idle unwoken, neither, unfinished.
    fn wait_ends(&self) -> [u64; 6] {
        let e = &self.footer["coverage"]["wait_ends"];
        [
            "woken",
            "idle_at_start",
            "interrupted",
            "idle_unwoken",
            "unexplained",
            "unfinished",
        ]
        .map(|k| e[k].as_u64().unwrap_or(0))
    }
    fn stalls(&self) -> usize {
        self.workload["stalls"].as_array().map_or(0, Vec::len)
    }
    fn counter(&self, name: &str) -> i64 {
        self.counters.get(name).copied().unwrap_or(-1)
    }
    fn lost_events(&self) -> u64 {
        self.footer["lost_events"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
    }
}

#[derive(Default, Debug)]
struct Report {
    insmod: Option<(i32, String)>,
    transition: Option<(String, String)>,
    fix0: Option<String>,
    /// By (mode, fs, run).
    runs: BTreeMap<(String, String, u32), Run>,
}

fn parse(output: &[String]) -> Report {
    let mut r = Report::default();
    let rest = |l: &str, n: usize| l.splitn(n + 1, ' ').nth(n).unwrap_or("").to_string();
    for l in output {
        let w: Vec<&str> = l.split_whitespace().collect();
        let key = |fs: &str, mode: &str, i: &str| {
            i.parse::<u32>()
                .ok()
                .map(|i| (mode.to_string(), fs.to_string(), i))
        };
        match w.as_slice() {
            ["@@INS", rc, ..] => r.insmod = Some((rc.parse().unwrap_or(255), rest(l, 2))),
            ["@@LPT", transition, enabled] => {
                r.transition = Some((transition.to_string(), enabled.to_string()))
            }
            ["@@FIX", v] => r.fix0 = Some(v.to_string()),
            [tag, fs, mode, i, ..] if tag.starts_with("@@") => {
                let Some(k) = key(fs, mode, i) else { continue };
                let text = rest(l, 4);
                let run = r.runs.entry(k).or_default();
                match *tag {
                    "@@DR" => run.rc = text.trim().parse().ok(),
                    "@@WF" => {
                        if let [name, v] = text.split_whitespace().collect::<Vec<_>>()[..] {
                            run.counters
                                .insert(name.to_string(), v.parse().unwrap_or(-1));
                        }
                    }
                    "@@KMSG" => run.kmsg.push(text),
                    "@@FJ" => {
                        if let Ok(v) = serde_json::from_str::<Value>(&text) {
                            run.findings.push(v);
                        }
                    }
                    "@@FOOT" => run.footer = serde_json::from_str(&text).unwrap_or(Value::Null),
                    "@@WL" => run.workload = serde_json::from_str(&text).unwrap_or(Value::Null),
                    "@@HDR" => {
                        let header: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        run.release_kind = release_kinds(&header);
                    }
                    "@@TO" => run.first_finding = Some(text),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    r
}

/// How the trace header says daxrace attached the release hook
/// (`bio_release`), e.g. "kprobe+kretprobe".
fn release_kinds(header: &Value) -> Option<String> {
    let hook = header["probes"]
        .as_array()?
        .iter()
        .find(|h| h["hook"] == "bio_release")?;
    let kinds: std::collections::BTreeSet<&str> = hook["attached"]
        .as_array()?
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    Some(kinds.into_iter().collect::<Vec<_>>().join("+"))
}

/// The finding kinds that are bugs (all but `stall`, which is the
/// symptom daxrace reports beside a lost wake-up).
fn bug_kinds(run: &Run) -> Vec<String> {
    run.kinds()
        .into_iter()
        .filter(|(k, _)| k != "stall")
        .map(|(k, n)| format!("{k} x{n}"))
        .collect()
}

fn check_run(mode: &str, fs: &str, i: u32, run: &Run) -> Vec<String> {
    let mut f = Vec::new();
    let name = format!("{fs} {} run {i}", mode_label(mode));
    if run.footer.is_null() {
        f.push(format!("{name}: the trace file has no footer"));
    }
    if run.workload.is_null() {
        f.push(format!("{name}: no JSON summary from the workload"));
    }
    for fault in super::dmesg::unexpected_faults(&run.kmsg, &[]) {
        f.push(format!("{name}: {fault}"));
    }
    if mode != "none" && run.counter("devmap_pages") <= 0 {
        f.push(format!(
            "{name}: the patch released no DAX page (calls {}, pages {}, devmap_pages {}): the patched function did not run",
            run.counter("calls"),
            run.counter("pages"),
            run.counter("devmap_pages")
        ));
    }
    if run.cov("busy_scans_with_page") == 0 {
        f.push(format!(
            "{name}: no busy scan found a pinned page: the run never reached a wait"
        ));
    }
    match mode {
        "fix" => {
            let bugs = bug_kinds(run);
            if !bugs.is_empty() {
                f.push(format!(
                    "{name}: findings with the fix: {}",
                    bugs.join(", ")
                ));
            }
            if run.stalls() > 0 || run.rc != Some(0) {
                f.push(format!(
                    "{name}: the workload stalled {} times, exit {:?} (want 0, 0)",
                    run.stalls(),
                    run.rc
                ));
            }
            // Every wait accounted for: woken, page idle at its start, or
            // interrupted. One that went on after its page went idle with no
            // wake-up is the bug's signature; one with neither can only
            // come from events daxrace did not get.
            let [_, _, _, idle_unwoken, unexplained, unfinished] = run.wait_ends();
            if idle_unwoken > 0 || unfinished > 0 {
                f.push(format!(
                    "{name}: with the fix, {idle_unwoken} waits went on after their page went idle with no wake-up, {unfinished} never ended"
                ));
            }
            if unexplained > 0 && run.lost_events() == 0 {
                f.push(format!(
                    "{name}: {unexplained} waits ended with neither a wake-up nor their page seen idle, and no event was lost"
                ));
            }
            if run.cov("waits") == 0 || run.cov("wake_ups") == 0 {
                f.push(format!(
                    "{name}: {} waits, {} wake_up events: the fix was not exercised",
                    run.cov("waits"),
                    run.cov("wake_ups")
                ));
            }
        }
        _ => {
            if run.wait_ends()[3] == 0 {
                f.push(format!(
                    "{name}: no wait went on after its page went idle with no wake-up (waits ended: {:?})",
                    run.wait_ends()
                ));
            }
            if run.lost_wakeups() == 0 {
                f.push(format!(
                    "{name}: no lost_wakeup (findings: {:?}): the bug did not show",
                    run.kinds()
                ));
            }
            if run.stalls() == 0 || run.rc != Some(EXIT_STALL) {
                f.push(format!(
                    "{name}: the workload stalled {} times, exit {:?} (want at least 1, {EXIT_STALL})",
                    run.stalls(),
                    run.rc
                ));
            }
        }
    }
    f
}

/// "a" or "a-b" over the runs.
fn range<T: Ord + Copy + std::fmt::Display>(v: impl Iterator<Item = T>) -> String {
    let v: Vec<T> = v.collect();
    match (v.iter().min(), v.iter().max()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => "-".into(),
    }
}

fn secs_range(v: impl Iterator<Item = u64>) -> String {
    let v: Vec<u64> = v.collect();
    let (Some(a), Some(b)) = (v.iter().min(), v.iter().max()) else {
        return "-".into();
    };
    let f = |ns: u64| {
        if ns >= 1_000_000_000 {
            format!("{:.1} s", ns as f64 / 1e9)
        } else {
            format!("{:.0} ms", ns as f64 / 1e6)
        }
    };
    let (a, b) = (f(*a), f(*b));
    if a == b {
        a
    } else {
        format!("{a}-{b}")
    }
}

/// The A/B table: fs x mode over their runs (ranges where runs differ).
fn table(r: &Report, fss: &[&str]) -> String {
    let mut s = String::from(
        "  | fs | mode | runs | findings | waits (max) | waits ended: woken / idle at start / interrupted / idle unwoken / neither / unfinished | stalls, exit | wake_up events | DAX refs released by the patch | lost events |\n  |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for fs in fss {
        for (mode, _) in MODES {
            let runs: Vec<&Run> = r
                .runs
                .iter()
                .filter(|((m, f, _), _)| m == mode && f == fs)
                .map(|(_, run)| run)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let mut kinds: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for run in &runs {
                for (k, n) in run.kinds() {
                    kinds.entry(k).or_default().push(n);
                }
            }
            let findings = if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds
                    .iter()
                    .map(|(k, ns)| {
                        let mut all = ns.clone();
                        all.resize(runs.len(), 0);
                        format!("{} `{k}`", range(all.into_iter()))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "  | {fs} | {} | {} | {findings} | {} ({}) | {} | {}, exit {} | {} | {} | {} |",
                mode_label(mode),
                runs.len(),
                range(runs.iter().map(|x| x.cov("waits"))),
                secs_range(runs.iter().map(|x| x.cov("wait_ns_max"))),
                (0..6)
                    .map(|i| range(runs.iter().map(|x| x.wait_ends()[i])))
                    .collect::<Vec<_>>()
                    .join(" / "),
                range(runs.iter().map(|x| x.stalls())),
                range(runs.iter().map(|x| x.rc.unwrap_or(-1))),
                range(runs.iter().map(|x| x.cov("wake_ups"))),
                if *mode == "none" {
                    "-".to_string()
                } else {
                    range(runs.iter().map(|x| x.counter("devmap_pages")))
                },
                range(runs.iter().map(|x| x.lost_events())),
            );
        }
    }
    s
}

/// The wake-fix A/B on one series; returns its summary (with the table).
/// `show`: the guest's output even when every check passed.
pub fn wakefix_e2e(series: &str, show: bool) -> Result<String> {
    let k = kernel::fetch(series)?;
    if !k.release.starts_with("6.1.") {
        // Said, not skipped silently: there is nothing to fix here.
        return Ok(format!(
            "wakefix {series} ({}): NOT APPLICABLE: the lost wake-up is a 6.1-only bug (6.1.y's __bio_release_pages drops direct I/O's plain page references with folio_put_refs, which skips put_devmap_managed_page; later kernels pin direct I/O with FOLL_PIN and release it through unpin_user_page, which wakes the waiter), so there is no fix to prove on this series",
            k.release
        ));
    }
    let src = crate::setup::workspace_root().join("xtask/kmod/wake_fix");
    let module = kmod::build(&k, &src).map_err(|e| {
        e.context(format!(
            "wakefix {series}: cannot build the wake-fix patch for {}",
            k.release
        ))
    })?;
    println!(
        "--- wakefix {series}: {} {} ({}), {}",
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
    let mut failures =
        kmod::live_patch_load_failures("the wake-fix patch", &r.insmod, &r.transition);
    if r.fix0.as_deref() != Some("N") {
        failures.push(format!(
            "the patch's fix parameter after writing 0: {:?}, want N",
            r.fix0
        ));
    }
    failures.extend(super::dmesg::unexpected_faults(&out.dmesg, &[]));
    for (mode, runs) in MODES {
        for fs in fss {
            for i in 1..=*runs {
                match r.runs.get(&(mode.to_string(), fs.to_string(), i)) {
                    Some(run) => failures.extend(check_run(mode, fs, i, run)),
                    None => {
                        failures.push(format!("{fs} {} run {i}: did not run", mode_label(mode)))
                    }
                }
            }
        }
    }
    if out.status != 0 {
        failures.push(format!("guest script exited with {}", out.status));
    }
    let kinds: Vec<String> = r
        .runs
        .iter()
        .filter(|((m, _, _), _)| m != "none")
        .filter_map(|((m, f, i), run)| {
            run.release_kind
                .as_ref()
                .map(|k| format!("{f} {m} {i}: {k}"))
        })
        .collect();
    let mut summary = format!(
        "wakefix {series} ({}, module by {}, boot + runs {:.0} s; pin-punch {WORKLOAD_SECONDS} s, {READERS} readers, punch + truncate, stall timeout {STALL_TIMEOUT_S} s):\n{}",
        k.release,
        module.compiler,
        t0.elapsed().as_secs_f64(),
        table(&r, fss)
    );
    if !kinds.is_empty() {
        let _ = writeln!(
            summary,
            "  release hook attached as (patched runs): {}",
            kinds.join(", ")
        );
    }
    if let Some(l) = r.runs.values().find_map(|x| x.first_finding.as_ref()) {
        let _ = writeln!(summary, "  e.g. {l}");
    }
    if failures.is_empty() {
        return Ok(summary + "  ok");
    }
    if !show {
        println!("--- wakefix {series}: guest output:");
        for l in &out.output {
            if !l.starts_with("@@FJ") && !l.starts_with("@@FOOT") {
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
        let s = script(Fs::Both.list());
        guest::tests::assert_sh_parses(&s);
        // The patch is loaded after the unpatched runs, fix=0 after fix=1.
        let none = s.find("run ext4 none 1").unwrap();
        let ins = s.find("insmod").unwrap();
        let fix = s.find("run ext4 fix 1").unwrap();
        let fix0 = s.find("echo 0 > $WP/fix").unwrap();
        assert!(none < ins && ins < fix && fix < fix0, "{s}");
    }

    fn run_lines(fs: &str, mode: &str, rc: i32, lost: usize, stalls: usize) -> Vec<String> {
        let p = format!("{fs} {mode} 1");
        let mut v = vec![
            format!("@@DR {p} {rc}"),
            format!("@@WF {p} calls 40"),
            format!("@@WF {p} pages 300"),
            format!("@@WF {p} devmap_pages 120"),
            format!(
                r#"@@FOOT {p} {{"type":"footer","coverage":{{"waits":{},"wait_ns_max":{},"wake_ups":{},"busy_scans_with_page":9,"wait_ends":{{"woken":{},"idle_unwoken":{}}}}},"lost_events":{{"bio_truncated":2,"ringbuf_full":0}}}}"#,
                if lost > 0 { 2 } else { 1400 },
                if lost > 0 {
                    3_000_000_000u64
                } else {
                    17_000_000
                },
                if lost > 0 { 0 } else { 2100 },
                if lost > 0 { 0 } else { 1400 },
                if lost > 0 { 2 } else { 0 },
            ),
            format!(
                r#"@@WL {p} {{"workload":"pin-punch","stalls":[{}]}}"#,
                vec![r#"{"thread":"punch"}"#; stalls].join(",")
            ),
            format!(
                r#"@@HDR {p} {{"type":"header","probes":[{{"hook":"wake","attached":[{{"kind":"fentry"}}]}},{{"hook":"bio_release","attached":[{{"kind":"kretprobe"}},{{"kind":"kprobe"}}]}}]}}"#
            ),
        ];
        for _ in 0..lost {
            v.push(format!(
                r#"@@FJ {p} {{"type":"finding","kind":"lost_wakeup","pfn":1}}"#
            ));
        }
        v
    }

    #[test]
    fn runs_are_judged_by_mode() {
        let mut out = lines(&[
            "@@INS 0 ",
            "@@LPT 0 1",
            "@@FIX N",
            "@@KMSG ext4 fix0 1 <4>WARNING: CPU: 0 PID: 1 at block/bio.c:1 x+0x1/0x2",
        ]);
        out.extend(run_lines("ext4", "none", 3, 2, 2));
        out.extend(run_lines("ext4", "fix", 0, 0, 0));
        out.extend(run_lines("ext4", "fix0", 3, 2, 1));
        out.extend(run_lines("xfs", "fix", 3, 1, 1));
        let r = parse(&out);
        assert_eq!(r.insmod, Some((0, String::new())));
        assert_eq!(r.fix0.as_deref(), Some("N"));
        let get = |m: &str, f: &str| &r.runs[&(m.to_string(), f.to_string(), 1)];
        assert_eq!(get("none", "ext4").lost_wakeups(), 2);
        assert_eq!(get("none", "ext4").stalls(), 2);
        assert_eq!(get("fix", "ext4").cov("wake_ups"), 2100);
        assert_eq!(get("fix", "ext4").lost_events(), 2);
        assert_eq!(
            get("fix", "ext4").release_kind.as_deref(),
            Some("kprobe+kretprobe")
        );
        assert!(check_run("none", "ext4", 1, get("none", "ext4")).is_empty());
        assert!(check_run("fix", "ext4", 1, get("fix", "ext4")).is_empty());
        // The kernel's WARN fails the run that logged it.
        let f = check_run("fix0", "ext4", 1, get("fix0", "ext4"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("WARNING"));
        // With the fix, a lost wake-up and a stall are failures.
        let f = check_run("fix", "xfs", 1, get("fix", "xfs"));
        assert_eq!(f.len(), 4, "{f:?}");
        assert!(f[2].contains("2 waits went on after their page went idle with no wake-up"));
        // Without it, a clean run is one.
        let f = check_run("none", "ext4", 1, get("fix", "ext4"));
        assert_eq!(f.len(), 3, "{f:?}");
        let t = table(&r, &["ext4"]);
        assert!(
            t.contains(
                "| ext4 | no patch | 1 | 2 `lost_wakeup` | 2 (3.0 s) | 0 / 0 / 0 / 2 / 0 / 0 | 2, exit 3 | 0 | - | 2 |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| ext4 | fix=1 (put_page) | 1 | none | 1400 (17 ms) | 1400 / 0 / 0 / 0 / 0 / 0 | 0, exit 0 | 2100 | 120 | 2 |"),
            "{t}"
        );
    }

    /// The patch's sources are where the test builds them from, and build
    /// the module the guest script loads.
    #[test]
    fn wake_fix_sources_are_in_place() {
        let src = crate::setup::workspace_root().join("xtask/kmod/wake_fix");
        let kbuild = std::fs::read_to_string(src.join("Kbuild")).unwrap();
        assert!(kbuild.contains("obj-m += daxrace_wake_fix.o"), "{kbuild}");
        let c = std::fs::read_to_string(src.join("daxrace_wake_fix.c")).unwrap();
        assert!(c.contains(".old_name = \"__bio_release_pages\""));
        assert!(GUEST_KO.ends_with("/daxrace_wake_fix.ko"));
        assert!(script(Fs::Both.list()).contains(&format!("insmod {GUEST_KO} fix=1")));
    }

    #[test]
    fn ranges() {
        assert_eq!(range([3, 1, 2].into_iter()), "1-3");
        assert_eq!(range([2, 2].into_iter()), "2");
        assert_eq!(range(std::iter::empty::<u64>()), "-");
        assert_eq!(secs_range([23_100_000u64, 23_300_000].into_iter()), "23 ms");
        assert_eq!(
            secs_range([11_000_000u64, 3_000_000_000].into_iter()),
            "11 ms-3.0 s"
        );
    }
}
