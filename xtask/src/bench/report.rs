//! One kernel series' figures as the bench prints them.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use super::{
    costs::{hook_costs, HookCost},
    parse::{Parsed, Prog},
    script::Workloads,
    stats::{above_floor, bracketed, median, rate_rows, stats_ops, Load, Spread},
    BT_FULL, BT_RUN, DR_FULL, DR_KP, DR_RUN, EMPTY, NONE,
};
use crate::vm::guest;

/// How the series ran: rounds, workloads, QEMU tuning.
pub struct RunInfo {
    pub rounds: u32,
    pub w: Workloads,
    pub tuning: guest::Tuning,
}

pub struct SeriesReport {
    pub series: String,
    pub text: String,
    /// The QEMU tuning, for the goals' lines.
    pub tuning: String,
    /// (workload, fs, rate name) -> tracer -> its ratios to untraced
    /// (NONE: the untraced phases against their neighbours, the noise).
    pub ratios: BTreeMap<(Load, String, String), BTreeMap<String, Spread>>,
    /// workload -> untraced phases against their untraced neighbours.
    pub noise: BTreeMap<Load, Spread>,
    /// The idle check: (tracer, fs, BPF program runs, reads).
    pub idle: Vec<(String, String, i64, u64)>,
    /// Per hook: daxrace full ns/run, its bpftrace twin's ns/run.
    pub hook_pairs: Vec<(String, f64, f64)>,
    /// Total BPF ns per workload op: daxrace full, its bpftrace twin.
    pub total_per_op: Option<(f64, f64)>,
    /// Median start-up ms: daxrace run, bpftrace full twin.
    pub starts: (Option<f64>, Option<f64>),
    /// `daxrace run` refused `--evidence`: both modes are plain `run`.
    pub no_evidence: bool,
    /// Guest ns per instruction (icount), for converting times.
    pub ns_per_instruction: Option<f64>,
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// The rate table's columns: tracer and heading.
const COLUMNS: [(&str, &str); 6] = [
    (DR_RUN, "daxrace-run"),
    (DR_FULL, "daxrace-full"),
    (BT_RUN, "bpftrace-run twin"),
    (BT_FULL, "bpftrace-full twin"),
    (EMPTY, "empty progs"),
    (NONE, "untraced (noise)"),
];

pub fn report(
    series: &str,
    p: &Parsed,
    out: &guest::Outcome,
    took: Duration,
    info: &RunInfo,
    log: &std::path::Path,
) -> SeriesReport {
    let mut t = String::new();
    let npi = info.tuning.ns_per_instruction();
    let unit = match npi {
        Some(n) => format!(
            "figures are guest instructions (1 instruction = {n:.0} guest ns), never TCG wall time"
        ),
        None => "no icount: figures are TCG wall time (noisy)".to_string(),
    };
    let _ = writeln!(
        t,
        "\n=== {series}: kernel {}; QEMU {}; {unit}",
        p.kernel,
        info.tuning.describe(),
    );
    let _ = writeln!(
        t,
        "  {} round(s) of daxrace-run, daxrace-full, their bpftrace twins and empty programs, each between untraced phases, rotating order; host time: boot {:.0} s, guest run {:.0} s, total {:.0} s",
        info.rounds,
        out.boot.as_secs_f64(),
        out.command.as_secs_f64(),
        took.as_secs_f64()
    );
    if p.no_evidence {
        let _ = writeln!(
            t,
            "  note: this daxrace refused `run --evidence full` (exit 2, unexpected argument): daxrace-full and daxrace-kprobe ran plain `daxrace run`, the same as daxrace-run"
        );
    }
    if p.same_plan {
        let _ = writeln!(
            t,
            "  note: daxrace-run attached the same hooks as daxrace-full: one twin (bpftrace-full) stands for both"
        );
    }
    // 1. rates
    let _ = writeln!(
        t,
        "workload rates; ratio = a phase's rate / the mean of the untraced phases just before and after it, median [min-max] over rounds"
    );
    let per_op_head = if npi.is_some() {
        "untraced k instr/op"
    } else {
        "untraced ops/s"
    };
    let _ = write!(
        t,
        "  {:<6} {:<5} {:<17} {:>19}",
        "load", "fs", "operation", per_op_head
    );
    for (_, h) in COLUMNS {
        let _ = write!(t, " {h:>19}");
    }
    t.push('\n');
    let mut ratios_out = BTreeMap::new();
    let mut noise: BTreeMap<Load, Vec<f64>> = BTreeMap::new();
    for row in rate_rows(p) {
        let by_tracer = bracketed(&p.phases, |tag, tracer| row.rate(p, tag, tracer));
        let ratios = |tr: &str| by_tracer.get(tr).cloned().unwrap_or_default();
        let rates = |tr: &str| -> Vec<f64> {
            p.phases
                .iter()
                .filter(|(_, t)| t == tr)
                .filter_map(|(tag, _)| row.rate(p, tag, tr))
                .collect()
        };
        noise.entry(row.load).or_default().extend(ratios(NONE));
        let mut m = BTreeMap::new();
        for (tr, _) in COLUMNS {
            if let Some(s) = Spread::of(&ratios(tr)) {
                m.insert(tr.to_string(), s);
            }
        }
        ratios_out.insert((row.load, row.fs.clone(), row.name.to_string()), m);
        let base = median(rates(NONE)).map(|r| match npi {
            Some(n) => 1e9 / r / n / 1e3,
            None => r,
        });
        let _ = write!(
            t,
            "  {:<6} {:<5} {:<17} {:>19}",
            row.load.name(),
            row.fs,
            row.name,
            fmt_opt(base, 1),
        );
        for (tr, _) in COLUMNS {
            let cell = if tr == BT_RUN && p.same_plan {
                "= bpftrace-full".to_string()
            } else {
                Spread::show(&ratios(tr))
            };
            let _ = write!(t, " {cell:>19}");
        }
        t.push('\n');
    }
    let _ = writeln!(
        t,
        "  every tracer ran {} guest s before its phase measured (--settle-seconds); alone: one operation in a loop on one thread (op-loop, {} guest s per phase{}); mix: pin-punch ({}), where pinned pages make breaks wait; daxrace-run: `daxrace run` (the daemon's default mode); daxrace-full: `daxrace run --evidence full` (every hook, as `daxrace trace`); twins: bpftrace scripts doing what each mode's programs do on the hooks that mode attached at start-up; empty progs: empty bpftrace programs on the full twin's probes (the floor); untraced (noise): the untraced phases compared in the same way with their untraced neighbours",
        info.w.settle_secs,
        info.w.loop_secs,
        if info.w.fresh_fs {
            ", each phase on a fresh filesystem after an untraced warm-up"
        } else {
            ""
        },
        match info.w.mix {
            Some((m, r)) => format!("a budget of {m} modifications and {r} reads per phase and filesystem"),
            None => format!("{} guest s", info.w.secs),
        }
    );
    let cpu = |tr: &str| {
        let v = p.cpu.get(tr).cloned().unwrap_or_default();
        format!("{}%", fmt_opt(median(v).map(|x| x * 100.0), 1))
    };
    let _ = writeln!(
        t,
        "  tracer process CPU while attached (share of the guest's one vCPU, median of rounds): daxrace-run {}, daxrace-full {}, bpftrace-full {}, empty programs {}",
        cpu(DR_RUN),
        cpu(DR_FULL),
        cpu(BT_FULL),
        cpu(EMPTY)
    );
    // The idle check.
    let _ = writeln!(
        t,
        "idle check: BPF program runs during O_DIRECT 64 KiB reads alone (stats phase, op-loop read, {} guest s per filesystem; no page is watched; less the runs of the same op-loop with no reads: the file's set-up and removal)",
        info.w.loop_secs
    );
    let mut idle = Vec::new();
    for ((tr, fs), (runs, v)) in &p.idle {
        let reads = v["ops"]["read"]["count"].as_u64().unwrap_or(0);
        idle.push((tr.clone(), fs.clone(), *runs, reads));
        let mut progs = p
            .idle_progs
            .get(&(tr.clone(), fs.clone()))
            .cloned()
            .unwrap_or_default();
        progs.sort_by_key(|(_, n)| std::cmp::Reverse(n.abs()));
        let list: Vec<String> = progs
            .iter()
            .take(6)
            .map(|(n, r)| format!("{n} x{r}"))
            .collect();
        let _ = writeln!(
            t,
            "  {tr:<14} {fs:<5} {reads:>7} reads {runs:>9} program runs, {:>6} per read{}",
            if reads > 0 {
                format!("{:.1}", *runs as f64 / reads as f64)
            } else {
                "-".into()
            },
            if list.is_empty() {
                String::new()
            } else {
                format!(" ({})", list.join(", "))
            }
        );
    }
    if p.idle.is_empty() {
        let _ = writeln!(t, "  no figures");
    }
    // 2. per-hook cost
    let costs: BTreeMap<&str, BTreeMap<&str, HookCost>> =
        [DR_RUN, DR_FULL, DR_KP, BT_RUN, BT_FULL, EMPTY]
            .iter()
            .map(|tr| (*tr, hook_costs(p.progs.get(*tr).map_or(&[][..], |v| v))))
            .collect();
    // Per run: instructions under icount (ns / 2^shift), else ns.
    let per_run = |h: &HookCost| h.ns_per_run().map(|ns| npi.map_or(ns, |n| ns / n));
    let run_unit = if npi.is_some() {
        "instructions"
    } else {
        "ns (TCG)"
    };
    let _ = writeln!(
        t,
        "per-hook BPF cost in the stats phase (BPF statistics: run time / run count, in {run_unit} per program run){}",
        if p.bt_mode.is_empty() {
            String::new()
        } else {
            format!(
                "; bpftrace used {}",
                p.bt_mode
                    .iter()
                    .map(|(m, k)| format!("{k} ({m} twin)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if let Some(m) = p
        .preempt
        .as_deref()
        .filter(|m| *m == "full" || *m == "lazy")
    {
        let _ = writeln!(
            t,
            "  note: this kernel preempts in kernel mode ({m}): fentry/fexit programs run preemptible, and their run time includes any time preempted, for both tracers; kprobe programs run with preemption off. Long programs under contention read high."
        );
    }
    let _ = writeln!(
        t,
        "  {:<17} {:<17} {:>7} {:>8} {:>7} {:>8}  {:>6}   {:>7} {:>8} {:>8}  {:>6}   {:>8} {:>8}  {:>11}",
        "hook",
        "daxrace-full",
        "runs",
        "per run",
        "twin",
        "per run",
        "dr/bt",
        "run-mode",
        "per run",
        "twin",
        "dr/bt",
        "kprobe",
        "empty",
        "above empty"
    );
    let mut below_floor = Vec::new();
    let hooks: BTreeSet<&str> = costs.values().flat_map(|m| m.keys().copied()).collect();
    let mut hook_pairs = Vec::new();
    let kinds = |h: &HookCost| h.kinds.iter().cloned().collect::<Vec<_>>().join("+");
    for h in hooks {
        let get = |tr: &str| {
            costs
                .get(tr)
                .and_then(|m| m.get(h))
                .cloned()
                .unwrap_or_default()
        };
        let (f, r, k, bf, br, e) = (
            get(DR_FULL),
            get(DR_RUN),
            get(DR_KP),
            get(BT_FULL),
            get(if p.same_plan { BT_FULL } else { BT_RUN }),
            get(EMPTY),
        );
        if let (Some(y), Some(fl)) = (per_run(&bf), per_run(&e)) {
            if y / 3.0 < fl {
                below_floor.push(format!("{h} ({:.0} < {fl:.0})", y / 3.0));
            }
        }
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        if let (Some(x), Some(y)) = (per_run(&f), per_run(&bf)) {
            if y > 0.0 {
                hook_pairs.push((h.to_string(), x, y));
            }
        }
        let _ = writeln!(
            t,
            "  {:<17} {:<17} {:>7} {:>8} {:>7} {:>8}  {:>6}   {:>7} {:>8} {:>8}  {:>6}   {:>8} {:>8}  {:>11}",
            h,
            kinds(&f),
            f.runs,
            fmt_opt(per_run(&f), 0),
            bf.runs,
            fmt_opt(per_run(&bf), 0),
            fmt_opt(ratio(per_run(&f), per_run(&bf)), 2),
            r.runs,
            fmt_opt(per_run(&r), 0),
            fmt_opt(per_run(&br), 0),
            fmt_opt(ratio(per_run(&r), per_run(&br)), 2),
            fmt_opt(per_run(&k), 0),
            fmt_opt(per_run(&e), 0),
            fmt_opt(above_floor(per_run(&f), per_run(&bf), per_run(&e)), 2)
        );
    }
    let _ = writeln!(
        t,
        "  runs: program runs in the stats phase's mix (same budget for every tracer); twin: the mode's bpftrace twin; kprobe: daxrace-full with --attach kprobe; empty: an empty bpftrace program on the same probes (what any program there costs); above empty: (daxrace - empty) / (twin - empty), what each tracer's own code costs; a third of the twin's cost is below the empty program for: {}",
        if below_floor.is_empty() {
            "no hook".to_string()
        } else {
            below_floor.join(", ")
        }
    );
    // The programs behind the figures, costliest per run first: where a
    // hook stands out, this names the program.
    for (label, tr) in [("daxrace-full", DR_FULL), ("bpftrace-full", BT_FULL)] {
        let mut v: Vec<&Prog> = p
            .progs
            .get(tr)
            .map(|v| v.iter().filter(|p| p.runs > 0).collect())
            .unwrap_or_default();
        v.sort_by_key(|p| std::cmp::Reverse(p.ns / p.runs));
        let list: Vec<String> = v
            .iter()
            .take(6)
            .map(|p| {
                let per = p.ns as f64 / p.runs as f64;
                format!(
                    "{} {:.0} x {}",
                    p.name,
                    npi.map_or(per, |n| per / n),
                    p.runs
                )
            })
            .collect();
        if !list.is_empty() {
            let _ = writeln!(
                t,
                "  costliest {label} programs ({run_unit} per run x runs): {}",
                list.join(", ")
            );
        }
    }
    let total = |tr: &str| -> (u64, u64) {
        costs.get(tr).map_or((0, 0), |m| {
            m.values().fold((0, 0), |(r, n), h| (r + h.runs, n + h.ns))
        })
    };
    let per_op = |tr: &str| {
        let ops = stats_ops(p, tr);
        (ops > 0).then(|| total(tr).1 as f64 / ops as f64)
    };
    for (label, tr) in [
        ("daxrace-run", DR_RUN),
        ("daxrace-full", DR_FULL),
        ("daxrace kprobe", DR_KP),
        ("bpftrace-run", BT_RUN),
        ("bpftrace-full", BT_FULL),
    ] {
        let (runs, ns) = total(tr);
        if runs == 0 && stats_ops(p, tr) == 0 {
            continue;
        }
        let _ = writeln!(
            t,
            "  total {label:<15} {runs:>9} runs {:>12.0} {}, {:>8} {run_unit} of BPF per workload op ({} ops)",
            npi.map_or(ns as f64 / 1e6, |n| ns as f64 / n / 1e6),
            if npi.is_some() { "M instructions" } else { "ms" },
            fmt_opt(per_op(tr).map(|x| npi.map_or(x, |n| x / n)), 0),
            stats_ops(p, tr)
        );
    }
    let total_per_op = match (per_op(DR_FULL), per_op(BT_FULL)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    // 4. start-up
    let st = |tr: &str| p.starts.get(tr).cloned().unwrap_or_default();
    let show_start = |tr: &str| {
        let m = median(st(tr));
        let v = match npi {
            // guest ms -> M instructions
            Some(n) => m.map(|ms| ms * 1e6 / n / 1e6),
            None => m,
        };
        format!("{} (n={})", fmt_opt(v, 0), st(tr).len())
    };
    let _ = writeln!(
        t,
        "start-up, launch to all hooks attached ({}, median of n): daxrace-run {}, daxrace-full {}, daxrace kprobe {}, bpftrace-full {}",
        if npi.is_some() { "M guest instructions" } else { "ms" },
        show_start(DR_RUN),
        show_start(DR_FULL),
        show_start(DR_KP),
        show_start(BT_FULL),
    );
    let stalled = p
        .workloads
        .values()
        .filter(|v| v["stalls"].as_array().is_some_and(|a| !a.is_empty()))
        .count();
    if stalled > 0 {
        let _ = writeln!(
            t,
            "  note: {stalled} of {} workload runs stalled (break-layouts slept until signalled: the lost wake-up); their rates measure the stall timeout, not a tracer's cost",
            p.workloads.len()
        );
    }
    for f in &p.start_failures {
        let _ = writeln!(t, "  note: {f} did not attach (see {})", log.display());
    }
    for n in &p.notes {
        let _ = writeln!(t, "  note: {n}");
    }
    for l in &out.dmesg {
        let _ = writeln!(t, "  kernel: {l}");
    }
    SeriesReport {
        series: series.to_string(),
        text: t,
        tuning: info.tuning.describe(),
        ratios: ratios_out,
        idle,
        no_evidence: p.no_evidence,
        ns_per_instruction: npi,
        noise: noise
            .iter()
            .filter_map(|(l, v)| Spread::of(v).map(|s| (*l, s)))
            .collect(),
        hook_pairs,
        total_per_op,
        starts: (median(st(DR_RUN)), median(st(BT_FULL))),
    }
}
