//! `daxrace doctor` against real stuck and waiting tasks (`cargo xtask vm
//! --doctor`, and part of the VM tests).
//!
//! One boot per series, both filesystems:
//! - nobody waiting: `nothing waiting`, exit 0;
//! - 6.1 (the live lost wake-up): pin-punch with its watchdog off
//!   (`--stall-timeout` of an hour) until a breaker sleeps in a
//!   break-layouts wait, then `daxrace doctor` must name that task, its
//!   page and "lost wake-up", exit 10; `daxrace trace -- true` started
//!   beside it must report the same as a `lost_wakeup` finding with
//!   `seen_at_start`, and `daxrace run` likewise in its log; then the
//!   doctor's own remedy (SIGSTOP + SIGCONT)
//!   must let pin-punch finish, and the doctor then finds nothing;
//! - later series: during slow-pin's legitimate waits (a 6 s pin from a
//!   slow null_blk), "waiting on a pinned page", never "lost wake-up",
//!   exit 0.
//!
//! Any kernel BUG, Oops or WARNING fails the test.
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

const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// slow-pin's pin (ms): long enough for the doctor to look during it
/// (twice, about 0.5 s each under emulation), well short of null_blk's
/// request timeout (5 s), past which its requests fail with EIO (3.5 s
/// pins already did, for the workload's own buffered writes, on a host
/// busy with other guests).
const PIN_MS: u64 = 2500;
/// When slow-pin's breaker starts after its pinning read (ms).
const BREAK_AFTER_MS: u64 = 100;

/// The guest script for one filesystem: the lost wake-up (`lost`) or the
/// legitimate wait.
fn fs_script(fs: &str, lost: bool) -> String {
    let dir = format!("$DAX_{}", fs.to_uppercase());
    let mut s = String::new();
    if lost {
        let _ = write!(
            s,
            r#"echo "== {fs}: pin-punch, watchdog off"
daxrace-workload pin-punch --dir {dir} --seconds 3 --stall-timeout 3600 --max-stalls 1 > /tmp/pp-{fs}.out 2>&1 &
W=$!
"#
        );
    } else {
        let _ = write!(
            s,
            r#"echo "== {fs}: slow-pin, {PIN_MS} ms pins"
daxrace-workload slow-pin --dir {dir} --iterations 1 --delay-ms {PIN_MS} --break-after-ms {BREAK_AFTER_MS} --stall-timeout 60 > /tmp/pp-{fs}.out 2>&1 &
W=$!
"#
        );
    }
    // The lost wake-up has all the time in the world; a legitimate wait
    // ends with its pin.
    let settle = if lost { "1" } else { "0.2" };
    let _ = write!(
        s,
        r#"i=0; until grep -qs _break_ /proc/$W/task/*/stack || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done
sleep {settle}
echo "@@WPID {fs} $W"
for t in /proc/$W/task/*; do grep -qs _break_ $t/stack && echo "@@WAITER {fs} ${{t##*/}} $(head -1 $t/stack)"; done
s=$(awk '{{ print int($1 * 1000) }}' /proc/uptime)
daxrace doctor > /tmp/d-{fs}.out 2>/tmp/d-{fs}.err
rc=$?
e=$(awk '{{ print int($1 * 1000) }}' /proc/uptime)
echo "@@DOC {fs} $rc $((e - s))"
sed 's/^/@@DOUT {fs} /' /tmp/d-{fs}.out
sed 's/^/@@DERR {fs} /' /tmp/d-{fs}.err
daxrace doctor --json > /tmp/d-{fs}.json 2>/dev/null
echo "@@DJSON {fs} $? $(tr -d '\n' < /tmp/d-{fs}.json)"
"#
    );
    if lost {
        let _ = write!(
            s,
            r#"daxrace trace --json /tmp/t-{fs}.jsonl -- true > /tmp/t-{fs}.out 2>&1
echo "@@TRACE {fs} $?"
grep '"type":"finding"' /tmp/t-{fs}.jsonl | sed 's/^/@@TFIND {fs} /'
grep 'at start' /tmp/t-{fs}.out | sed 's/^/@@TOUT {fs} /'
daxrace run --no-metrics --duration 1 > /tmp/r-{fs}.out 2>&1
echo "@@RUN {fs} $?"
grep 'FINDING lost_wakeup' /tmp/r-{fs}.out | sed 's/^/@@RFIND {fs} /'
remedy=$(sed -n 's/.*remedy: //p' /tmp/d-{fs}.out | head -1)
echo "@@REMEDY {fs} $remedy"
[ -n "$remedy" ] && sh -c "$remedy"
"#
        );
    }
    let _ = write!(
        s,
        r#"i=0; while kill -0 $W 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
if kill -0 $W 2>/dev/null; then echo "@@STUCK {fs}"; kill -USR1 $W; sleep 5; kill -9 $W; fi
wait $W
echo "@@WRC {fs} $?"
sed 's/^/@@WOUT {fs} /' /tmp/pp-{fs}.out | tail -5
daxrace doctor > /tmp/d2-{fs}.out 2>&1
echo "@@AFTER {fs} $? $(head -1 /tmp/d2-{fs}.out)"
"#
    );
    s
}

fn script(fss: &[&str], lost: bool) -> String {
    let mut s = String::from(
        r#"daxrace doctor > /tmp/d0.out 2>&1
echo "@@NONE $? $(head -1 /tmp/d0.out)"
"#,
    );
    for fs in fss {
        s += &fs_script(fs, lost);
    }
    s
}

#[derive(Default, Debug)]
struct FsRun {
    wpid: Option<u32>,
    waiters: Vec<u32>,
    doctor: Option<(i32, u64)>,
    lines: Vec<String>,
    errors: Vec<String>,
    json: Option<(i32, Value)>,
    trace_rc: Option<i32>,
    trace_findings: Vec<Value>,
    run_rc: Option<i32>,
    run_findings: Vec<String>,
    remedy: Option<String>,
    stuck: bool,
    workload_rc: Option<i32>,
    after: Option<(i32, String)>,
}

fn parse(lines: &[String]) -> (Option<(i32, String)>, BTreeMap<String, FsRun>) {
    let mut none = None;
    let mut runs: BTreeMap<String, FsRun> = BTreeMap::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("@@") else {
            continue;
        };
        let (tag, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        if tag == "NONE" {
            let (rc, text) = rest.split_once(' ').unwrap_or((rest, ""));
            none = rc.parse().ok().map(|rc| (rc, text.to_string()));
            continue;
        }
        let (fs, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let r = runs.entry(fs.to_string()).or_default();
        let mut words = rest.split_whitespace();
        match tag {
            "WPID" => r.wpid = words.next().and_then(|w| w.parse().ok()),
            "WAITER" => r
                .waiters
                .extend(words.next().and_then(|w| w.parse::<u32>().ok())),
            "DOC" => {
                let rc = words.next().and_then(|w| w.parse().ok());
                let ms = words.next().and_then(|w| w.parse().ok());
                r.doctor = rc.zip(ms);
            }
            "DOUT" => r.lines.push(rest.to_string()),
            "DERR" => r.errors.push(rest.to_string()),
            "DJSON" => {
                let (rc, j) = rest.split_once(' ').unwrap_or((rest, ""));
                r.json = rc
                    .parse()
                    .ok()
                    .map(|rc| (rc, serde_json::from_str(j).unwrap_or(Value::Null)));
            }
            "TRACE" => r.trace_rc = words.next().and_then(|w| w.parse().ok()),
            "TFIND" => r
                .trace_findings
                .extend(serde_json::from_str::<Value>(rest).ok()),
            "RUN" => r.run_rc = words.next().and_then(|w| w.parse().ok()),
            "RFIND" => r.run_findings.push(rest.to_string()),
            "REMEDY" => r.remedy = Some(rest.to_string()),
            "STUCK" => r.stuck = true,
            "WRC" => r.workload_rc = words.next().and_then(|w| w.parse().ok()),
            "AFTER" => {
                let (rc, text) = rest.split_once(' ').unwrap_or((rest, ""));
                r.after = rc.parse().ok().map(|rc| (rc, text.to_string()));
            }
            _ => {}
        }
    }
    (none, runs)
}

/// The failures of one filesystem's run.
fn check(fs: &str, lost: bool, r: &FsRun) -> Vec<String> {
    let mut f = Vec::new();
    let mut fail = |m: String| f.push(format!("{fs}: {m}"));
    if r.waiters.is_empty() {
        fail(format!(
            "no thread of the workload (pid {:?}) was seen in a break-layouts wait: nothing to diagnose",
            r.wpid
        ));
        return f;
    }
    let text = r.lines.join("\n");
    let want_rc = if lost { 10 } else { 0 };
    if r.doctor.map(|d| d.0) != Some(want_rc) {
        fail(format!(
            "doctor exited {:?}, want {want_rc}; stderr: {}",
            r.doctor.map(|d| d.0),
            r.errors.join(" | ")
        ));
    }
    let pid = r.wpid.unwrap_or(0);
    let named = r.lines.iter().find(|l| {
        l.starts_with(&format!("pid {pid} "))
            && r.waiters.iter().any(|t| {
                l.contains(&format!("thread {t} ")) || l.starts_with(&format!("pid {t} ("))
            })
    });
    match named {
        None => fail(format!(
            "doctor did not name the waiting thread ({:?} of pid {pid}): {text}",
            r.waiters
        )),
        Some(l) => {
            if !l.contains("on page pfn 0x") || !l.contains(" inode ") {
                fail(format!("the line does not name the page and inode: {l}"));
            }
            if lost && !l.contains("lost wake-up") {
                fail(format!("no \"lost wake-up\" for the stuck breaker: {l}"));
            }
        }
    }
    if !lost {
        if text.contains("lost wake-up") {
            fail(format!("\"lost wake-up\" during a legitimate wait: {text}"));
        }
        if !text.contains("waiting on a pinned page") {
            fail(format!("no \"waiting on a pinned page\": {text}"));
        }
    }
    match &r.json {
        Some((rc, v)) if *rc == want_rc => {
            let verdicts: Vec<&str> = v["waiting"]
                .as_array()
                .map(|a| a.iter().filter_map(|w| w["verdict"].as_str()).collect())
                .unwrap_or_default();
            let want = if lost { "lost_wakeup" } else { "pinned" };
            if !verdicts.contains(&want) || (!lost && verdicts.contains(&"lost_wakeup")) {
                fail(format!("--json verdicts {verdicts:?}, want {want}"));
            }
        }
        other => fail(format!(
            "doctor --json: {:?}",
            other.as_ref().map(|(rc, _)| rc)
        )),
    }
    if lost {
        if r.trace_rc != Some(10) {
            fail(format!(
                "daxrace trace -- true beside the stuck task exited {:?}, want 10",
                r.trace_rc
            ));
        }
        if !r
            .trace_findings
            .iter()
            .any(|v| v["kind"] == "lost_wakeup" && v["seen_at_start"] == true)
        {
            fail("the trace file has no lost_wakeup finding with seen_at_start".into());
        }
        if r.run_rc != Some(0)
            || !r
                .run_findings
                .iter()
                .any(|l| l.contains("already asleep when daxrace started"))
        {
            fail(format!(
                "daxrace run beside the stuck task: exit {:?}, findings {:?}; want 0 and the start-up check's lost_wakeup",
                r.run_rc, r.run_findings
            ));
        }
        if r.remedy.as_deref().is_none_or(str::is_empty) {
            fail("doctor offered no remedy".into());
        }
        if r.stuck {
            fail("the workload did not finish after the remedy".into());
        }
    } else if r.stuck {
        fail("the workload did not finish once its pin was gone".into());
    }
    if r.workload_rc != Some(0) {
        fail(format!("the workload exited {:?}, want 0", r.workload_rc));
    }
    match &r.after {
        Some((0, t)) if t == "nothing waiting" => {}
        other => fail(format!(
            "doctor after the workload: {other:?}, want (0, \"nothing waiting\")"
        )),
    }
    f
}

/// `cargo xtask vm --doctor [--kernel S]`.
pub fn doctor_e2e(series: &str, show: bool) -> Result<String> {
    let k = kernel::fetch(series)?;
    let lost = super::tests::expects_lost_wakeup(series) || k.release.starts_with("6.1.");
    let fss = Fs::Both.list();
    let t0 = Instant::now();
    let out = guest::boot(
        &guest::Spec {
            kernel: &k,
            fs: Fs::Both,
            script: script(fss, lost),
            timeout: BOOT_LIMIT,
            verbose: false,
            stream: show,
            forward: None,
        },
        &super::guest_binaries(),
    )?;
    let (none, runs) = parse(&out.output);
    let mut failures = Vec::new();
    match &none {
        Some((0, t)) if t == "nothing waiting" => {}
        other => failures.push(format!(
            "with no waiter: {other:?}, want (0, \"nothing waiting\")"
        )),
    }
    let mut summary = format!(
        "doctor {series} ({}, boot + runs {:.0} s; {}):",
        k.release,
        t0.elapsed().as_secs_f64(),
        if lost {
            "pin-punch, watchdog off"
        } else {
            "slow-pin, 2.5 s pins"
        }
    );
    let _ = write!(
        summary,
        "\n  no waiter: {}",
        none.as_ref().map_or("?", |n| n.1.as_str())
    );
    for fs in fss {
        let Some(r) = runs.get(*fs) else {
            failures.push(format!("{fs}: did not run"));
            continue;
        };
        failures.extend(check(fs, lost, r));
        let _ = write!(
            summary,
            "\n  {fs}: doctor exit {:?} in {:?} ms (guest wall clock)",
            r.doctor.map(|d| d.0),
            r.doctor.map(|d| d.1)
        );
        for l in &r.lines {
            let _ = write!(summary, "\n    {l}");
        }
        if lost {
            let _ = write!(
                summary,
                "\n    trace beside it: exit {:?}, {} finding(s) seen at start; run beside it: exit {:?}, {} finding(s); remedy `{}`: workload exit {:?}",
                r.trace_rc,
                r.trace_findings
                    .iter()
                    .filter(|v| v["seen_at_start"] == true)
                    .count(),
                r.run_rc,
                r.run_findings.len(),
                r.remedy.as_deref().unwrap_or(""),
                r.workload_rc
            );
        }
        let _ = write!(
            summary,
            "\n    after: {}",
            r.after.as_ref().map_or("?", |a| a.1.as_str())
        );
    }
    failures.extend(super::dmesg::unexpected_faults(&out.dmesg, &[]));
    if out.status != 0 {
        failures.push(format!("guest script exited with {}", out.status));
    }
    if failures.is_empty() {
        Ok(summary)
    } else {
        bail!("{summary}\n  FAILED:\n  {}", failures.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_wakeup_run_parses_and_passes() {
        let out: Vec<String> = [
            "@@NONE 0 nothing waiting",
            "@@WPID ext4 150",
            "@@WAITER ext4 153 [<0>] ext4_break_layouts+0x8f/0xd0 [ext4]",
            "@@DOC ext4 10 812",
            "@@DOUT ext4 pid 150 thread 153 (daxrace-workloa) asleep 2.1 s in ext4_break_layouts on page pfn 0x48100 (ext4 inode 12 on pmem0, index 0): lost wake-up — the page is idle (refcount 1); remedy: kill -STOP 150; sleep 1; kill -CONT 150",
            r#"@@DJSON ext4 10 {"waiting":[{"verdict":"lost_wakeup"}]}"#,
            "@@TRACE ext4 10",
            r#"@@TFIND ext4 {"type":"finding","kind":"lost_wakeup","seen_at_start":true}"#,
            "@@RUN ext4 0",
            "@@RFIND ext4 daxrace: FINDING lost_wakeup: ext4 dev 259:0 ino 12: waiter daxrace-workloa[150/153] asleep 2.1 s on pfn 0x48100 at refcount 1 (0 refs), already asleep when daxrace started: the page is idle and nobody woke it (seen by the start-up check)",
            "@@REMEDY ext4 kill -STOP 150; sleep 1; kill -CONT 150",
            "@@WRC ext4 0",
            "@@AFTER ext4 0 nothing waiting",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (none, runs) = parse(&out);
        assert_eq!(none, Some((0, "nothing waiting".into())));
        let r = &runs["ext4"];
        assert_eq!(r.waiters, vec![153]);
        assert_eq!(check("ext4", true, r), Vec::<String>::new());
        // The same output is wrong for a legitimate wait.
        assert!(!check("ext4", false, r).is_empty());
    }

    #[test]
    fn guest_scripts_are_sh() {
        for lost in [true, false] {
            let s = script(&["ext4", "xfs"], lost);
            assert!(!s.contains("{{") && !s.contains("}}"), "{s}");
            assert!(s.contains("daxrace doctor --json"));
        }
    }
}
