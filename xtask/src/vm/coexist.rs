//! daxrace beside what it did not write, on one guest per series:
//! - Debian's bpftrace on the same functions at the same time (fentry on
//!   the busy scan and `wake_up_var`, kprobes on the break functions):
//!   both keep working, and daxrace counts exactly the busy scans bpftrace
//!   counts over the same calls;
//! - attach/detach cycles of `daxrace run` under the pin-punch workload
//!   ([`cycles`]), every tenth ended by SIGKILL: no leftover programs
//!   (`bpf_prog_` entries in /proc/kallsyms back to the baseline) and no
//!   kernel fault.
//!
//! A kernel BUG, Oops, general protection fault or WARNING fails the test
//! ([`super::dmesg`]).
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{bail, Result};

use super::{guest, kernel};

/// Attach/detach cycles on a series: 100 on Debian's 6.1, where a
/// trampoline left on a live-patched function oopsed after detach; 20 on
/// the others, to keep `cargo xtask test` within its time (each cycle is a
/// whole start-up under TCG, about 3 s).
pub fn cycles(series: &str) -> u32 {
    if series == "6.1" {
        100
    } else {
        20
    }
}
/// bpftrace's libraries (LLVM) live in the initramfs.
const BPFTRACE_EXTRA_MIB: u64 = 512;

/// The other tracer: fentry where daxrace uses fentry (the busy scans,
/// `wake_up_var`), kprobes on the module break functions (bpftrace 0.17
/// has no module kfuncs). Non-NULL scan returns are counted per function.
const BPFTRACE_SCRIPT: &str = r#"BEGIN { printf("@@BT-READY\n"); }
kfunc:dax_layout_busy_page_range { @scan_range = count(); }
kretfunc:dax_layout_busy_page_range /retval != 0/ { @busy_range = count(); }
kretfunc:dax_layout_busy_page /retval != 0/ { @busy = count(); }
kfunc:wake_up_var { @wake = count(); }
kprobe:ext4_break_layouts { @brk_ext4 = count(); }
END { printf("@@BT-END\n"); }
"#;

fn script(cycles: u32) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"ours() {{ grep -cE 'bpf_prog_[0-9a-f]+_(kp|kr|fe|fx|raw|tp)_' /proc/kallsyms; }}
progs() {{ grep -c ' bpf_prog_' /proc/kallsyms; }}
# Where our processes sleep, when one would not end: a hang is reported
# with its stacks instead of running into the host's guest timeout.
stuck() {{ for t in /proc/[0-9]*/task/[0-9]*; do c=$(cat $t/comm 2>/dev/null); case $c in daxrace*|bpftrace) echo "@@STUCK $1 $c ${{t#/proc/}} $(cut -d' ' -f3 $t/stat) $(tr '\n' ' ' < $t/stack 2>/dev/null)";; esac; done; }}
echo "@@CX baseline $(progs)"
cat > /tmp/other.bt <<'BT'
{BPFTRACE_SCRIPT}BT
# bpftrace 0.17 lacks some kfuncs on some kernels: fall back to kprobes there.
echo "== bpftrace on the busy scans, wake_up_var and ext4_break_layouts"
daxrace-workload sigdfl bpftrace /tmp/other.bt > /tmp/bt.out 2>&1 &
BT=$!
i=0; while ! grep -q '@@BT-READY' /tmp/bt.out && kill -0 $BT 2>/dev/null && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done
if ! grep -q '@@BT-READY' /tmp/bt.out; then
  sed 's/kretfunc:\([a-z_]*\)/kretprobe:\1/; s/kfunc:\([a-z_]*\)/kprobe:\1/' /tmp/other.bt > /tmp/other-kp.bt
  sed 's/^/@@BTERR /' /tmp/bt.out
  daxrace-workload sigdfl bpftrace /tmp/other-kp.bt > /tmp/bt.out 2>&1 &
  BT=$!
  i=0; while ! grep -q '@@BT-READY' /tmp/bt.out && kill -0 $BT 2>/dev/null && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done
  echo "@@CX bpftrace kprobes-only"
fi
grep -q '@@BT-READY' /tmp/bt.out && echo "@@CX bpftrace ready"
echo "== daxrace trace beside it"
timeout -s KILL 600 daxrace trace --json /tmp/both.jsonl -- daxrace-workload pin-punch --dir $DAX_EXT4 --seconds 4 --stall-timeout 3 --max-stalls 1 > /tmp/both.out 2>&1
echo "@@CX trace-exit $?"
sed 's/^/@@TO /' /tmp/both.out
kill -INT $BT; wait $BT
echo "@@CX bpftrace-exit $?"
echo "== {cycles} attach/detach cycles under pin-punch"
sed 's/^/@@BT /' /tmp/bt.out
# Attach/detach cycles under the workload (the watchdog signals a breaker
# the 6.1 lost wake-up leaves asleep).
daxrace-workload pin-punch --dir $DAX_EXT4 --seconds 100000 --stall-timeout 2 --max-stalls 100000 > /tmp/pp.out 2>&1 &
PP=$!
ok=0; killed=0
for i in $(seq 1 {cycles}); do
  [ $((i % 10)) = 1 ] && echo "== cycle $i"
  if [ $((i % 10)) = 0 ]; then
    daxrace-workload sigdfl daxrace run --no-metrics > /tmp/c.out 2>&1 &
    DR=$!
    j=0; while ! grep -q 'hooks attached' /tmp/c.out && kill -0 $DR 2>/dev/null && [ $j -lt 600 ]; do sleep 0.1; j=$((j+1)); done
    kill -9 $DR; wait $DR; killed=$((killed+1))
  else
    timeout -s KILL 120 daxrace run --no-metrics --duration 0 > /tmp/c.out 2>&1 && ok=$((ok+1)) || {{ echo "@@CYCLEERR cycle $i exit $?"; sed 's/^/@@CYCLEERR /' /tmp/c.out; stuck cycle-$i; }}
  fi
done
# SIGTERM: a background job of this non-interactive shell ignores SIGINT.
kill -TERM $PP
i=0; while kill -0 $PP 2>/dev/null && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
kill -0 $PP 2>/dev/null && {{ echo "@@CYCLEERR pin-punch did not end on SIGTERM"; stuck pin-punch; kill -9 $PP; }}
wait $PP
echo "@@CX cycles $ok $killed"
i=0; while [ "$(ours)" -gt 0 ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
echo "@@CX after $(progs) $(ours)"
"#
    );
    s
}

/// What the guest reported.
#[derive(Debug, Default, PartialEq)]
struct Coexist {
    baseline: Option<u64>,
    bpftrace_ready: bool,
    trace_exit: Option<i32>,
    bpftrace_exit: Option<i32>,
    /// bpftrace's map values by name (`@busy_range: 12`).
    bt_counts: std::collections::BTreeMap<String, u64>,
    /// daxrace's "N found a pinned page" from its coverage line.
    daxrace_busy: Option<u64>,
    cycles: Option<(u32, u32)>,
    after: Option<(u64, u64)>,
    cycle_errors: Vec<String>,
    trace_output: Vec<String>,
}

fn parse(lines: &[String]) -> Coexist {
    let mut c = Coexist::default();
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["@@CX", "baseline", n] => c.baseline = n.parse().ok(),
            ["@@CX", "bpftrace", "ready"] => c.bpftrace_ready = true,
            ["@@CX", "trace-exit", n] => c.trace_exit = n.parse().ok(),
            ["@@CX", "bpftrace-exit", n] => c.bpftrace_exit = n.parse().ok(),
            ["@@CX", "cycles", ok, killed] => {
                c.cycles = ok.parse().ok().zip(killed.parse().ok());
            }
            ["@@CX", "after", all, ours] => c.after = all.parse().ok().zip(ours.parse().ok()),
            ["@@BT", name, n] if name.starts_with('@') && name.ends_with(':') => {
                if let Ok(n) = n.parse() {
                    c.bt_counts
                        .insert(name.trim_matches(['@', ':']).to_string(), n);
                }
            }
            ["@@CYCLEERR", ..] | ["@@STUCK", ..] => c.cycle_errors.push(l.clone()),
            ["@@TO", ..] => {
                let text = l.split_once(' ').map_or("", |x| x.1).to_string();
                if c.daxrace_busy.is_none() {
                    c.daxrace_busy = found_pinned(&text);
                }
                c.trace_output.push(text);
            }
            _ => {}
        }
    }
    c
}

/// `(N found a pinned page)` in daxrace's coverage line.
fn found_pinned(line: &str) -> Option<u64> {
    let at = line.find(" found a pinned page")?;
    line[..at].rsplit(['(', ' ']).next()?.parse().ok()
}

fn check(series: &str, c: &Coexist, cycles: u32) -> Vec<String> {
    let mut f = Vec::new();
    if !c.bpftrace_ready {
        f.push("bpftrace never attached beside daxrace".into());
    }
    let expected_trace = if super::tests::expects_lost_wakeup(series) {
        10
    } else {
        0
    };
    if c.trace_exit != Some(expected_trace) {
        f.push(format!(
            "daxrace trace beside bpftrace exited {:?}, expected {expected_trace}",
            c.trace_exit
        ));
    }
    if c.bpftrace_exit != Some(0) {
        f.push(format!("bpftrace exited {:?}", c.bpftrace_exit));
    }
    // The same calls, seen by both: scans nest (the wrapper calls the range
    // function, or has it inlined), so the larger count is the outer one.
    let bt_busy = ["busy", "busy_range"]
        .iter()
        .filter_map(|k| c.bt_counts.get(*k))
        .max()
        .copied();
    match (c.daxrace_busy, bt_busy) {
        (Some(d), Some(b)) if d == b && d > 0 => {}
        (d, b) => f.push(format!(
            "busy scans that found a pinned page: daxrace {d:?}, bpftrace {b:?} (must be equal and above zero)"
        )),
    }
    // Debian's 6.1 releases direct-I/O pages without the wake-up (its lost
    // wake-up): there wake_up_var is not called at all under this workload.
    let wakes = c.bt_counts.get("wake").copied().unwrap_or(0);
    if (wakes == 0) != super::tests::expects_lost_wakeup(series) {
        f.push(format!(
            "bpftrace's wake_up_var probe counted {wakes} calls on {series}: {:?}",
            c.bt_counts
        ));
    }
    let want = (cycles - cycles / 10, cycles / 10);
    if c.cycles != Some(want) {
        f.push(format!(
            "attach/detach cycles (clean, SIGKILLed): {:?}, expected {want:?}; {}",
            c.cycles,
            c.cycle_errors.join("; ")
        ));
    }
    match (c.baseline, c.after) {
        (Some(b), Some((all, 0))) if all == b => {}
        (b, a) => f.push(format!(
            "BPF programs in /proc/kallsyms: {b:?} before, (all, daxrace's) {a:?} after the cycles"
        )),
    }
    f
}

/// The coexistence test on one series.
pub fn coexist_e2e(series: &str, stream: bool) -> Result<String> {
    let bpftrace = PathBuf::from("/usr/bin/bpftrace");
    if !bpftrace.exists() {
        bail!("/usr/bin/bpftrace is missing: run `cargo xtask setup` (Debian package bpftrace)");
    }
    let k = kernel::fetch(series)?;
    let out = guest::boot_with(
        &guest::Spec {
            kernel: &k,
            fs: guest::Fs::Ext4,
            script: script(cycles(series)),
            timeout: Duration::from_secs(1500),
            verbose: false,
            stream,
            forward: None,
        },
        &super::guest_binaries(),
        &guest::Extras {
            host_programs: &[bpftrace],
            extra_mem_mib: BPFTRACE_EXTRA_MIB,
            ..guest::Extras::default()
        },
    )?;
    let c = parse(&out.output);
    let mut failures = check(series, &c, cycles(series));
    failures.extend(super::dmesg::unexpected_faults(&out.dmesg, &[]));
    if out.status != 0 {
        failures.push(format!("guest script exited with {}", out.status));
    }
    let summary = format!(
        "coexist {series}: bpftrace beside daxrace: busy scans daxrace {:?} / bpftrace {:?}, wake_up_var {:?}; {} attach/detach cycles {:?} (clean, SIGKILL); BPF programs {:?} -> {:?}; guest run {:.0} s",
        c.daxrace_busy,
        c.bt_counts.get("busy_range").or(c.bt_counts.get("busy")),
        c.bt_counts.get("wake"),
        cycles(series),
        c.cycles,
        c.baseline,
        c.after,
        out.command.as_secs_f64()
    );
    if !failures.is_empty() {
        for l in &out.output {
            println!("  | {l}");
        }
        for l in &out.dmesg {
            println!("  kernel: {l}");
        }
        bail!("{summary}\n  {}", failures.join("\n  "));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn equal_counts_and_a_clean_kernel_pass() {
        let out = lines(&[
            "@@CX baseline 3",
            "@@CX bpftrace ready",
            "@@CX trace-exit 0",
            "@@TO daxrace: coverage: 12 break-layouts calls, 30 busy scans (5 found a pinned page), 5 waits (1.2 s total, 0.3 s max), 7 truncations; the race window was reached",
            "@@CX bpftrace-exit 0",
            "@@BT @busy: 5",
            "@@BT @busy_range: 5",
            "@@BT @wake: 900",
            "@@CX cycles 90 10",
            "@@CX after 3 0",
        ]);
        let c = parse(&out);
        assert_eq!(c.daxrace_busy, Some(5));
        assert_eq!(c.bt_counts["wake"], 900);
        assert!(
            check("6.12", &c, 100).is_empty(),
            "{:?}",
            check("6.12", &c, 100)
        );
        // 6.1 must report its lost wake-up (exit 10) and has no wake-ups.
        assert_eq!(check("6.1", &c, 100).len(), 2);
    }

    #[test]
    fn a_difference_or_a_leftover_fails() {
        let out = lines(&[
            "@@CX baseline 3",
            "@@CX bpftrace ready",
            "@@CX trace-exit 0",
            "@@TO daxrace: coverage: 1 break-layouts calls, 3 busy scans (4 found a pinned page), 0 waits",
            "@@CX bpftrace-exit 0",
            "@@BT @busy_range: 5",
            "@@BT @wake: 9",
            "@@CYCLEERR daxrace: cannot attach",
            "@@CX cycles 89 10",
            "@@CX after 5 2",
        ]);
        let f = check("6.12", &parse(&out), 100);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].contains("daxrace Some(4), bpftrace Some(5)"));
        assert!(f[1].contains("cannot attach"));
        assert!(f[2].contains("Some(3) before"));
        assert!(!check("6.12", &Coexist::default(), 100).is_empty());
    }

    #[test]
    fn the_guest_script_parses() {
        super::super::guest::tests::assert_sh_parses(&script(3));
    }
}
