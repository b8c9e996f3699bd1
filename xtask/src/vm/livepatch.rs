//! The live-patch test (`cargo xtask vm --livepatch`, and part of the VM
//! tests): daxrace next to a live patch of the function it hooks.
//!
//! Once a live patch owns a function, the kernel reroutes its calls through
//! an ftrace handler; a BPF trampoline put there as well can run the old
//! code or leave a dangling trampoline at detach. So daxrace must trace a
//! live-patched function with kprobes, and move a hook off fentry when a
//! patch appears while it runs ("now live-patched"). The test loads
//! `daxrace_count_patch` (xtask/kmod/count_patch: ext4_break_layouts() as
//! the kernel has it, plus a call counter in sysfs) and checks, with the
//! counter as a witness that does not depend on daxrace, that the patched
//! function keeps running through every attach and detach, and that the
//! kernel logs no oops or warning:
//!
//! - boot 1, patch first: `daxrace probes` must show the ext4 break hook on
//!   kprobe+kretprobe; `daxrace trace` around pin-punch; `daxrace run`
//!   stopped by SIGTERM, then by SIGKILL, pin-punch after each; then the
//!   patch is disabled and removed.
//! - boot 2, daxrace first: `daxrace run`, then the patch, then the "now
//!   live-patched" line, pin-punch while attached and after SIGTERM; the
//!   same with SIGKILL.
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use anyhow::{bail, Result};
use serde_json::Value;

use super::{
    guest::{self, Fs},
    kernel, kmod,
};

/// Where the patch module is in the guest.
const GUEST_KO: &str = "/lib/modules/extra/daxrace_count_patch.ko";
/// How long daxrace may take to say its hook moved off fentry after the
/// patch appeared (the contract), and how long the guest waits to find out
/// how late it was when it is late.
const MOVE_LIMIT_S: f64 = 10.0;
const MOVE_WAIT_S: u64 = 60;
/// How long a guest waits for `daxrace run` to attach (the BPF verifier is
/// slow under TCG).
const ATTACH_WAIT_S: u64 = 600;
/// Each boot's command limit: both boots take under a minute when daxrace
/// attaches in seconds; a task stuck in the kernel must not hold a test
/// run for long.
const BOOT_LIMIT: Duration = Duration::from_secs(900);

/// Kernel messages that loading an unsigned, out-of-tree live patch causes
/// by design.
const EXPECTED_KERNEL_LINES: &[&str] = &[
    "loading out-of-tree module taints kernel",
    "module verification failed",
    "tainting kernel with TAINT_LIVEPATCH",
    "enabling patch",
    "disabling patch",
    "livepatch:",
];
/// Kernel messages that mean something broke.
const BAD_KERNEL_LINES: &[&str] = &[
    "BUG:",
    "Oops",
    "general protection",
    "WARNING:",
    "Kernel panic",
];

/// Shell functions both boots use. Counter snapshots, exit statuses and
/// timings go out as `@@` lines for [`parse`].
fn common_script() -> String {
    format!(
        r#"LP=/sys/kernel/livepatch/daxrace_count_patch
calls() {{ cat /sys/module/daxrace_count_patch/parameters/calls 2>/dev/null || echo -1; }}
mark() {{ echo "@@LPC $1 $(calls)"; }}
now() {{ cut -d' ' -f1 /proc/uptime; }}
# The patch is live for every task only when its transition has ended.
settle() {{
  i=0; while [ "$(cat $LP/transition 2>/dev/null)" = 1 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  echo "@@LPT $1 $(cat $LP/transition 2>/dev/null || echo none) $(cat $LP/enabled 2>/dev/null || echo none)"
}}
patch_on() {{
  insmod {GUEST_KO} 2>/tmp/insmod.err; echo "@@LPI $1 $? $(tr '\n' ' ' </tmp/insmod.err)"
  settle $1
}}
patch_off() {{
  echo 0 > $LP/enabled; settle $1-off
  rmmod daxrace_count_patch 2>/tmp/rmmod.err; echo "@@LPR $1 $? $(tr '\n' ' ' </tmp/rmmod.err)"
}}
punch() {{
  daxrace-workload pin-punch --dir $DAX_EXT4 --seconds $2 --stall-timeout 3 --max-stalls 1 >/tmp/punch-$1.out 2>&1
  echo "@@PUNCH $1 $?"
}}
# daxrace run in the background (sigdfl: a background job of a
# non-interactive shell starts with SIGINT ignored), until it has attached.
start_run() {{
  daxrace-workload sigdfl daxrace run --no-metrics $2 > /tmp/run-$1.out 2>&1 &
  DR=$!
  t0=$(date +%s)
  while kill -0 $DR 2>/dev/null && ! grep -q 'hooks attached' /tmp/run-$1.out; do
    [ $(( $(date +%s) - t0 )) -ge {ATTACH_WAIT_S} ] && break
    sleep 1
  done
  if grep -q 'hooks attached' /tmp/run-$1.out; then echo "@@ATTACHED $1 $(( $(date +%s) - t0 ))"; else echo "@@NOTATTACHED $1"; fi
}}
stop_run() {{
  kill -$2 $DR; wait $DR; echo "@@DR run-$1 $?"
  sed "s/^/@@RUN $1 /" /tmp/run-$1.out
}}
# What hooks ext4_break_layouts, as the kernel lists it (not daxrace): the
# kprobe kinds (k, r) and ftrace's flags for it (I: the live patch's
# IPMODIFY, D: a direct call such as a BPF trampoline).
hooked() {{
  k=$(awk '$3 ~ /^ext4_break_layouts\+/ {{ print $2 }}' /sys/kernel/debug/kprobes/list 2>/dev/null | sort -u | tr -d '\n')
  echo "@@KPROBES $1 ${{k:-none}}"
  echo "@@FTRACE $1 $(grep '^ext4_break_layouts' /sys/kernel/tracing/enabled_functions 2>/dev/null | head -1)"
}}
# Seconds until daxrace says it moved a hook off fentry for the patch.
wait_moved() {{
  t0=$(now)
  i=0; while ! grep -q 'now live-patched' /tmp/run-$1.out && [ $i -lt $(({MOVE_WAIT_S} * 4)) ]; do sleep 0.25; i=$((i+1)); done
  if grep -q 'now live-patched' /tmp/run-$1.out; then echo "@@MOVED $1 $(awk -v a=$t0 -v b=$(now) 'BEGIN {{ printf "%.1f", b - a }}')"; else echo "@@NOTMOVED $1"; fi
}}
"#
    )
}

/// Boot 1: the patch is live before daxrace starts.
fn patch_first_script() -> String {
    common_script()
        + r#"patch_on a
mark a-loaded
daxrace probes --json > /tmp/probes.json 2>/tmp/probes.err
echo "@@DR probes $?"
echo "@@PROBESJSON $(tr -d '\n' < /tmp/probes.json)"
mark a-trace-before
daxrace trace --json /tmp/t.jsonl -- daxrace-workload pin-punch --dir $DAX_EXT4 --seconds 4 --stall-timeout 3 --max-stalls 1 > /tmp/trace.out 2>&1
echo "@@DR trace $?"
mark a-trace-after
sed 's/^/@@TO /' /tmp/trace.out
for sig in TERM KILL; do
  start_run a-$sig
  hooked a-$sig
  stop_run a-$sig $sig
  # The patched function after daxrace's hooks are gone.
  mark a-$sig-before
  punch a-$sig 3
  sleep 2
  mark a-$sig-after
done
patch_off a
punch a-unpatched 2
"#
}

/// Boot 2: daxrace runs when the patch arrives. The SIGTERM run keeps its
/// capabilities (`--keep-caps`): its hook moves to kprobes. The SIGKILL run
/// drops them as the daemon does by default: on Debian
/// (kernel.perf_event_paranoid=3) it can no longer open kprobes, so the hook
/// only comes off its trampoline and daxrace says how to get it back.
fn daxrace_first_script() -> String {
    common_script()
        + r#"for sig in TERM KILL; do
  if [ $sig = TERM ]; then start_run b-$sig --keep-caps; else start_run b-$sig; fi
  patch_on b-$sig
  wait_moved b-$sig
  hooked b-$sig
  mark b-$sig-before
  punch b-$sig-live 3
  mark b-$sig-live
  stop_run b-$sig $sig
  punch b-$sig 3
  sleep 2
  mark b-$sig-after
  patch_off b-$sig
done
"#
}

/// What one boot reported.
#[derive(Default, Debug)]
struct Report {
    /// Counter snapshots by tag (-1: no counter to read).
    counters: BTreeMap<String, i64>,
    /// insmod and rmmod: (exit status, stderr) by phase.
    insmod: BTreeMap<String, (i32, String)>,
    rmmod: BTreeMap<String, (i32, String)>,
    /// The patch's (transition, enabled) after waiting, by phase.
    transition: BTreeMap<String, (String, String)>,
    /// daxrace exit statuses: probes, trace, run-<phase>.
    daxrace: BTreeMap<String, i32>,
    punch: BTreeMap<String, i32>,
    /// Seconds `daxrace run` took to attach, None when it did not.
    attached: BTreeMap<String, Option<u64>>,
    /// Seconds until "now live-patched", None when it never came.
    moved: BTreeMap<String, Option<f64>>,
    /// Kprobe kinds on ext4_break_layouts while daxrace ran ("kr": kprobe
    /// and kretprobe), from the kernel's kprobes list.
    kprobes: BTreeMap<String, String>,
    /// ftrace's enabled_functions line for ext4_break_layouts then.
    ftrace: BTreeMap<String, String>,
    probes: Value,
    run_output: BTreeMap<String, Vec<String>>,
    trace_output: Vec<String>,
}

impl Report {
    /// How much the counter advanced from one snapshot to another.
    fn advance(&self, from: &str, to: &str) -> Option<i64> {
        match (self.counters.get(from), self.counters.get(to)) {
            (Some(&a), Some(&b)) if a >= 0 && b >= 0 => Some(b - a),
            _ => None,
        }
    }
}

fn parse(output: &[String]) -> Report {
    let mut r = Report::default();
    let rest_from = |l: &str, n: usize| -> String {
        l.splitn(n + 1, ' ').nth(n).unwrap_or("").trim().to_string()
    };
    for l in output {
        if let Some(json) = l.strip_prefix("@@PROBESJSON ") {
            r.probes = serde_json::from_str(json).unwrap_or(Value::Null);
            continue;
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["@@LPC", tag, n] => {
                r.counters.insert(tag.to_string(), n.parse().unwrap_or(-1));
            }
            ["@@LPI", phase, rc, ..] => {
                r.insmod.insert(
                    phase.to_string(),
                    (rc.parse().unwrap_or(255), rest_from(l, 3)),
                );
            }
            ["@@LPR", phase, rc, ..] => {
                r.rmmod.insert(
                    phase.to_string(),
                    (rc.parse().unwrap_or(255), rest_from(l, 3)),
                );
            }
            ["@@LPT", phase, transition, enabled] => {
                r.transition.insert(
                    phase.to_string(),
                    (transition.to_string(), enabled.to_string()),
                );
            }
            ["@@DR", what, rc] => {
                r.daxrace
                    .insert(what.to_string(), rc.parse().unwrap_or(255));
            }
            ["@@PUNCH", tag, rc] => {
                r.punch.insert(tag.to_string(), rc.parse().unwrap_or(255));
            }
            ["@@ATTACHED", tag, s] => {
                r.attached.insert(tag.to_string(), s.parse().ok());
            }
            ["@@NOTATTACHED", tag] => {
                r.attached.insert(tag.to_string(), None);
            }
            ["@@MOVED", tag, s] => {
                r.moved.insert(tag.to_string(), s.parse().ok());
            }
            ["@@NOTMOVED", tag] => {
                r.moved.insert(tag.to_string(), None);
            }
            ["@@RUN", tag, ..] => r
                .run_output
                .entry(tag.to_string())
                .or_default()
                .push(rest_from(l, 2)),
            ["@@KPROBES", tag, kinds] => {
                r.kprobes.insert(tag.to_string(), kinds.to_string());
            }
            ["@@FTRACE", tag, ..] => {
                r.ftrace.insert(tag.to_string(), rest_from(l, 2));
            }
            ["@@TO", ..] => r.trace_output.push(rest_from(l, 1)),
            _ => {}
        }
    }
    r
}

/// The attach kinds daxrace reports for the ext4 break-layouts hook.
fn ext4_break_kinds(probes: &Value) -> Vec<String> {
    probes["hooks"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["hook"] == "ext4_break"))
        .and_then(|h| h["attached"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p["kind"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Kernel lines that mean a crash or a warning (the expected taint and
/// livepatch notices excluded).
fn bad_kernel_lines(dmesg: &[String]) -> Vec<String> {
    dmesg
        .iter()
        .filter(|l| !EXPECTED_KERNEL_LINES.iter().any(|e| l.contains(e)))
        .filter(|l| BAD_KERNEL_LINES.iter().any(|b| l.contains(b)))
        .cloned()
        .collect()
}

/// The patch's module checks of one phase: loaded, transition over,
/// enabled (and later removed).
fn check_patch_phase(r: &Report, phase: &str, failures: &mut Vec<String>) {
    match r.insmod.get(phase) {
        Some((0, _)) => {}
        Some((rc, err)) => {
            failures.push(format!("{phase}: insmod of the patch failed ({rc}): {err}"))
        }
        None => failures.push(format!(
            "{phase}: the patch was not loaded (the script stopped early)"
        )),
    }
    if let Some((transition, enabled)) = r.transition.get(phase) {
        if transition != "0" || enabled != "1" {
            failures.push(format!(
                "{phase}: after loading, the patch's transition is {transition} and enabled {enabled} (want 0 and 1)"
            ));
        }
    }
}

fn check_advance(r: &Report, from: &str, to: &str, what: &str, failures: &mut Vec<String>) {
    match r.advance(from, to) {
        Some(n) if n > 0 => {}
        other => failures.push(format!(
            "the patched ext4_break_layouts() counter did not advance {what} ({from} -> {to}: {other:?})"
        )),
    }
}

/// daxrace run attached, and the kernel shows ext4_break_layouts under a
/// kprobe and a kretprobe then (daxrace's own word is not enough: a hook
/// moved off its trampoline may have attached nothing).
fn check_run(r: &Report, tag: &str, failures: &mut Vec<String>) {
    match r.attached.get(tag) {
        Some(Some(_)) => {
            let kinds = r.kprobes.get(tag).map(String::as_str).unwrap_or("none");
            if !(kinds.contains('k') && kinds.contains('r')) {
                failures.push(format!(
                    "{tag}: while daxrace ran with the patch live, the kernel's kprobes on ext4_break_layouts were {kinds:?}, not a kprobe and a kretprobe (ftrace: {:?})",
                    r.ftrace.get(tag).map(String::as_str).unwrap_or("")
                ));
            }
        }
        Some(None) => failures.push(format!(
            "{tag}: daxrace run did not say 'hooks attached' within {ATTACH_WAIT_S} s: {}",
            r.run_output
                .get(tag)
                .map(|o| o.join(" / "))
                .unwrap_or_default()
        )),
        None => failures.push(format!(
            "{tag}: daxrace run was not started (the script stopped early)"
        )),
    }
}

fn check_patch_first(r: &Report) -> Vec<String> {
    let mut failures = Vec::new();
    check_patch_phase(r, "a", &mut failures);
    if r.daxrace.get("probes") != Some(&0) {
        failures.push(format!(
            "daxrace probes exited with {:?}",
            r.daxrace.get("probes")
        ));
    }
    let kinds = ext4_break_kinds(&r.probes);
    let on_kprobes = kinds.iter().any(|k| k == "kprobe") && kinds.iter().any(|k| k == "kretprobe");
    let on_trampoline = kinds.iter().any(|k| k == "fentry" || k == "fexit");
    if !on_kprobes || on_trampoline {
        failures.push(format!(
            "with the live patch loaded, daxrace probes put ext4_break on {kinds:?}, not kprobe+kretprobe"
        ));
    }
    check_advance(
        r,
        "a-trace-before",
        "a-trace-after",
        "during daxrace trace",
        &mut failures,
    );
    for sig in ["TERM", "KILL"] {
        let tag = format!("a-{sig}");
        check_run(r, &tag, &mut failures);
        check_advance(
            r,
            &format!("{tag}-before"),
            &format!("{tag}-after"),
            &format!("after daxrace run was stopped by SIG{sig}"),
            &mut failures,
        );
    }
    if r.rmmod.get("a").is_some_and(|(rc, _)| *rc != 0) {
        failures.push(format!(
            "disabling and removing the patch failed: {:?}",
            r.rmmod["a"]
        ));
    }
    failures
}

/// A `daxrace run` that dropped its capabilities before the patch came: the
/// hook moved to kprobes, or (where perf_event_open needs the CAP_SYS_ADMIN
/// it dropped) left the function with no trampoline of daxrace's and said
/// how to trace it again.
fn check_run_dropped(r: &Report, tag: &str, failures: &mut Vec<String>) {
    let kinds = r.kprobes.get(tag).map(String::as_str).unwrap_or("none");
    if kinds.contains('k') && kinds.contains('r') {
        return;
    }
    let said_why = r
        .run_output
        .get(tag)
        .is_some_and(|o| o.iter().any(|l| l.contains("restart daxrace")));
    let ftrace = r.ftrace.get(tag).map(String::as_str).unwrap_or("");
    // enabled_functions flags a direct call (a BPF trampoline) with " D ".
    let trampoline_left = ftrace.split_whitespace().any(|w| w == "D");
    if !said_why || trampoline_left {
        failures.push(format!(
            "{tag}: after dropping its capabilities daxrace neither moved ext4_break to kprobes (kernel: {kinds:?}) nor {} (ftrace: {ftrace:?})",
            if trampoline_left {
                "took its trampoline off the live-patched function"
            } else {
                "said how to trace it again"
            }
        ));
    }
}

fn check_daxrace_first(r: &Report) -> Vec<String> {
    let mut failures = Vec::new();
    for sig in ["TERM", "KILL"] {
        let tag = format!("b-{sig}");
        if sig == "TERM" {
            check_run(r, &tag, &mut failures);
        } else {
            match r.attached.get(&tag) {
                Some(Some(_)) => check_run_dropped(r, &tag, &mut failures),
                _ => check_run(r, &tag, &mut failures),
            }
        }
        check_patch_phase(r, &tag, &mut failures);
        match r.moved.get(&tag) {
            Some(Some(s)) if *s <= MOVE_LIMIT_S => {}
            Some(Some(s)) => failures.push(format!(
                "{tag}: daxrace said 'now live-patched' only {s:.1} s after the patch was live (limit {MOVE_LIMIT_S} s)"
            )),
            Some(None) => failures.push(format!(
                "{tag}: daxrace never said 'now live-patched' within {MOVE_WAIT_S} s of the patch going live"
            )),
            None => {}
        }
        check_advance(
            r,
            &format!("{tag}-before"),
            &format!("{tag}-live"),
            "while daxrace ran",
            &mut failures,
        );
        check_advance(
            r,
            &format!("{tag}-live"),
            &format!("{tag}-after"),
            &format!("after daxrace run was stopped by SIG{sig}"),
            &mut failures,
        );
        if r.rmmod.get(&tag).is_some_and(|(rc, _)| *rc != 0) {
            failures.push(format!(
                "{tag}: disabling and removing the patch failed: {:?}",
                r.rmmod[&tag]
            ));
        }
    }
    failures
}

/// Boots one guest with the patch module and its script; the kernel's
/// problems become failures.
fn boot(
    k: &kernel::Kernel,
    ko: &std::path::Path,
    binaries: &[std::path::PathBuf],
    what: &str,
    script: String,
    stream: bool,
    failures: &mut Vec<String>,
) -> (guest::Outcome, Report) {
    let out = guest::boot_with_files(
        &guest::Spec {
            kernel: k,
            fs: Fs::Ext4,
            script,
            timeout: BOOT_LIMIT,
            verbose: false,
            // A guest that hangs or panics ends in an error without its
            // output: -v shows it as it comes.
            stream,
            forward: None,
        },
        binaries,
        &[(GUEST_KO.to_string(), ko.to_path_buf())],
    );
    // A hung or crashed guest is this test's finding, not the end of the
    // run: the other boot still says something.
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            failures.push(format!("{what}: {e:#}"));
            return (
                guest::Outcome {
                    status: -1,
                    boot: Duration::ZERO,
                    guest_uptime: 0.0,
                    command: Duration::ZERO,
                    output: Vec::new(),
                    dmesg: Vec::new(),
                },
                Report::default(),
            );
        }
    };
    for l in bad_kernel_lines(&out.dmesg) {
        failures.push(format!("{what}: kernel: {l}"));
    }
    if out.status != 0 {
        failures.push(format!("{what}: guest script exited with {}", out.status));
    }
    let report = parse(&out.output);
    (out, report)
}

/// The daxrace binaries the guests run: this workspace's release build, or
/// those in `$DAXRACE_LIVEPATCH_BINARIES` (a directory with daxrace and
/// daxrace-workload), to run the test against another build of daxrace as
/// a control, e.g. one from before it knew about live patches.
fn guest_binaries() -> Result<Vec<std::path::PathBuf>> {
    let Some(dir) = std::env::var_os("DAXRACE_LIVEPATCH_BINARIES") else {
        return Ok(super::guest_binaries());
    };
    let dir = std::path::PathBuf::from(dir);
    let bins: Vec<_> = ["daxrace", "daxrace-workload"]
        .iter()
        .map(|b| dir.join(b))
        .collect();
    if let Some(missing) = bins.iter().find(|b| !b.is_file()) {
        bail!(
            "DAXRACE_LIVEPATCH_BINARIES: {} is missing",
            missing.display()
        );
    }
    eprintln!(
        "vm: livepatch test with the daxrace binaries in {}",
        dir.display()
    );
    Ok(bins)
}

fn counters_line(r: &Report, pairs: &[(&str, &str, &str)]) -> String {
    pairs
        .iter()
        .map(|(label, from, to)| match r.advance(from, to) {
            Some(n) => format!("{label} +{n}"),
            None => format!("{label} ?"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The live-patch test on one kernel series; returns its one-line summary.
/// `show`: the guests' output and kernel messages even when every check
/// passed.
pub fn livepatch_e2e(series: &str, show: bool) -> Result<String> {
    let k = kernel::fetch(series)?;
    let src = crate::setup::workspace_root().join("xtask/kmod/count_patch");
    let module = kmod::build(&k, &src).map_err(|e| {
        e.context(format!(
            "livepatch {series}: cannot build the test's live patch module for {}",
            k.release
        ))
    })?;
    println!(
        "--- livepatch {series}: {} {} ({}), {}",
        k.pkg,
        k.version,
        k.release,
        module.provenance()
    );
    let mut failures = Vec::new();
    let binaries = guest_binaries()?;
    let (out_a, a) = boot(
        &k,
        &module.ko,
        &binaries,
        "patch first",
        patch_first_script(),
        show,
        &mut failures,
    );
    failures.extend(
        check_patch_first(&a)
            .into_iter()
            .map(|f| format!("patch first: {f}")),
    );
    let (out_b, b) = boot(
        &k,
        &module.ko,
        &binaries,
        "daxrace first",
        daxrace_first_script(),
        show,
        &mut failures,
    );
    failures.extend(
        check_daxrace_first(&b)
            .into_iter()
            .map(|f| format!("daxrace first: {f}")),
    );

    let kinds = ext4_break_kinds(&a.probes);
    let moved: Vec<String> = ["b-TERM", "b-KILL"]
        .iter()
        .map(|t| match b.moved.get(*t) {
            Some(Some(s)) => format!("{s:.1} s"),
            Some(None) => "never".into(),
            None => "-".into(),
        })
        .collect();
    let kprobes: Vec<String> = [
        (&a, "a-TERM"),
        (&a, "a-KILL"),
        (&b, "b-TERM"),
        (&b, "b-KILL"),
    ]
    .iter()
    .map(|(r, t)| r.kprobes.get(*t).cloned().unwrap_or_else(|| "-".into()))
    .collect();
    let mut summary = format!(
        "livepatch {series} ({}, module by {}): patch first: {}; daxrace first: {}; ext4_break on {} with the patch (kernel's kprobes k/r on it in the 4 runs: {}); 'now live-patched' after {}; boots {:.0}+{:.0} s",
        k.release,
        module.compiler,
        counters_line(
            &a,
            &[
                ("trace", "a-trace-before", "a-trace-after"),
                ("after SIGTERM", "a-TERM-before", "a-TERM-after"),
                ("after SIGKILL", "a-KILL-before", "a-KILL-after"),
            ]
        ),
        counters_line(
            &b,
            &[
                ("live (TERM run)", "b-TERM-before", "b-TERM-live"),
                ("after SIGTERM", "b-TERM-live", "b-TERM-after"),
                ("live (KILL run)", "b-KILL-before", "b-KILL-live"),
                ("after SIGKILL", "b-KILL-live", "b-KILL-after"),
            ]
        ),
        if kinds.is_empty() {
            "nothing".to_string()
        } else {
            kinds.join("+")
        },
        kprobes.join(" "),
        moved.join(" / "),
        out_a.command.as_secs_f64(),
        out_b.command.as_secs_f64(),
    );
    let other_kernel_lines: Vec<&String> = out_a
        .dmesg
        .iter()
        .chain(out_b.dmesg.iter())
        .filter(|l| !EXPECTED_KERNEL_LINES.iter().any(|e| l.contains(e)))
        .collect();
    if failures.is_empty() && !show {
        summary += "; ok";
        for l in other_kernel_lines {
            let _ = write!(summary, "\n    kernel: {l}");
        }
        return Ok(summary);
    }
    // Streamed already with -v.
    if !show {
        println!("--- livepatch {series}: guest output (patch first):");
        for l in &out_a.output {
            println!("  | {l}");
        }
        println!("--- livepatch {series}: guest output (daxrace first):");
        for l in &out_b.output {
            println!("  | {l}");
        }
    }
    for l in out_a.dmesg.iter().chain(out_b.dmesg.iter()) {
        println!("  kernel: {l}");
    }
    if failures.is_empty() {
        return Ok(summary + "; ok");
    }
    bail!("{summary}\n  {}", failures.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scripts_parse() {
        guest::tests::assert_sh_parses(&patch_first_script());
        guest::tests::assert_sh_parses(&daxrace_first_script());
    }

    #[test]
    fn patch_first_report() {
        let out = lines(&[
            "@@LPI a 0 ",
            "@@LPT a 0 1",
            "@@LPC a-loaded 0",
            "@@DR probes 0",
            r#"@@PROBESJSON {"hooks":[{"hook":"ext4_break","attached":[{"kind":"kprobe"},{"kind":"kretprobe"}]}]}"#,
            "@@LPC a-trace-before 0",
            "@@DR trace 0",
            "@@LPC a-trace-after 120",
            "@@TO daxrace: coverage: 3 break-layouts calls",
            "@@ATTACHED a-TERM 95",
            "@@KPROBES a-TERM kr",
            "@@FTRACE a-TERM ext4_break_layouts [ext4] (2) R I   tramp: 0xffffffffc0201000",
            "@@DR run-a-TERM 0",
            "@@RUN a-TERM daxrace: 14 hooks attached",
            "@@LPC a-TERM-before 120",
            "@@PUNCH a-TERM 0",
            "@@LPC a-TERM-after 200",
            "@@NOTATTACHED a-KILL",
            "@@DR run-a-KILL 137",
            "@@LPC a-KILL-before 200",
            "@@LPC a-KILL-after 200",
            "@@LPT a-off none none",
            "@@LPR a 0 ",
        ]);
        let r = parse(&out);
        assert_eq!(r.advance("a-trace-before", "a-trace-after"), Some(120));
        assert_eq!(r.attached["a-TERM"], Some(95));
        assert_eq!(r.attached["a-KILL"], None);
        assert_eq!(r.run_output["a-TERM"], ["daxrace: 14 hooks attached"]);
        assert_eq!(r.kprobes["a-TERM"], "kr");
        assert!(r.ftrace["a-TERM"].starts_with("ext4_break_layouts [ext4]"));
        assert_eq!(r.trace_output.len(), 1);
        assert_eq!(ext4_break_kinds(&r.probes), ["kprobe", "kretprobe"]);
        let failures = check_patch_first(&r);
        // The KILL run neither attached nor moved the counter.
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(
            failures.iter().all(|f| f.contains("a-KILL")),
            "{failures:?}"
        );
    }

    #[test]
    fn fentry_on_a_patched_function_fails() {
        let mut r = parse(&lines(&[
            r#"@@PROBESJSON {"hooks":[{"hook":"ext4_break","attached":[{"kind":"fentry"},{"kind":"fexit"}]}]}"#,
        ]));
        r.daxrace.insert("probes".into(), 0);
        let failures = check_patch_first(&r);
        assert!(
            failures.iter().any(|f| f.contains("not kprobe+kretprobe")),
            "{failures:?}"
        );
    }

    #[test]
    fn daxrace_first_report() {
        let mut out = Vec::new();
        for (sig, moved) in [
            ("TERM", "@@MOVED b-TERM 1.5"),
            ("KILL", "@@NOTMOVED b-KILL"),
        ] {
            out.extend(lines(&[
                &format!("@@ATTACHED b-{sig} 80"),
                &format!(
                    "@@KPROBES b-{sig} {}",
                    if sig == "TERM" { "kr" } else { "none" }
                ),
                &format!("@@LPI b-{sig} 0 "),
                &format!("@@LPT b-{sig} 0 1"),
                moved,
                &format!("@@LPC b-{sig}-before 10"),
                &format!("@@LPC b-{sig}-live 20"),
                &format!("@@LPC b-{sig}-after 30"),
                &format!("@@LPR b-{sig} 0 "),
            ]));
        }
        let r = parse(&out);
        assert_eq!(r.moved["b-TERM"], Some(1.5));
        assert_eq!(r.ftrace.get("b-TERM"), None);
        let failures = check_daxrace_first(&r);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("nor said how to trace it again"));
        assert!(failures[1].contains("never said 'now live-patched'"));
        // Capabilities dropped: off the trampoline, with the way back, passes.
        out.extend(lines(&[
            "@@MOVED b-KILL 0.5",
            "@@RUN b-KILL daxrace: ext4_break_layouts is now live-patched (live patch p): ext4_break moved off its BPF trampoline and could not attach otherwise: Permission denied. The patch stays in force; to trace ext4_break_layouts again, restart daxrace (it plans kprobes there from the start) or run it with --keep-caps",
            "@@FTRACE b-KILL ext4_break_layouts [ext4] (1) R I   ->klp_ftrace_handler+0x0/0x190",
        ]));
        let r = parse(&out);
        assert!(
            check_daxrace_first(&r).is_empty(),
            "{:?}",
            check_daxrace_first(&r)
        );
        // A trampoline left beside the patch fails.
        out.push("@@FTRACE b-KILL ext4_break_layouts [ext4] (2) R I D ->klp_ftrace_handler".into());
        let failures = check_daxrace_first(&parse(&out));
        assert!(
            failures[0].contains("took its trampoline off"),
            "{failures:?}"
        );
    }

    #[test]
    fn kernel_lines() {
        let dmesg = lines(&[
            "<4>[   20.1] daxrace_count_patch: loading out-of-tree module taints kernel.",
            "<4>[   20.1] daxrace_count_patch: module verification failed: signature and/or required key missing - tainting kernel",
            "<4>[   20.2] livepatch: tainting kernel with TAINT_LIVEPATCH",
            "<4>[   31.0] WARNING: CPU: 0 PID: 310 at kernel/trace/ftrace.c:2180 ftrace_bug+0x1f0/0x270",
            "<1>[   32.0] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "<4>[   32.0] Oops: 0000 [#1] PREEMPT SMP NOPTI",
        ]);
        let bad = bad_kernel_lines(&dmesg);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].contains("WARNING:"));
    }
}
