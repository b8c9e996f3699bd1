//! One kernel series' figures as the bench prints them.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use super::{
    costs::{hook_costs, HookCost},
    parse::{Parsed, Prog},
    stats::{above_floor, bracketed, median, rate_rows, stats_ops, Load, Spread},
    BT, DR, DR_KP, EMPTY, NONE,
};
use crate::vm::guest;

pub struct SeriesReport {
    pub series: String,
    pub text: String,
    /// (workload, fs, rate name) -> daxrace / untraced.
    pub dr_ratios: BTreeMap<(Load, String, String), Spread>,
    /// workload -> untraced phases against their untraced neighbours.
    pub noise: BTreeMap<Load, Spread>,
    /// Per hook: daxrace auto ns/run, bpftrace ns/run.
    pub hook_pairs: Vec<(String, f64, f64)>,
    /// Total BPF ns per workload op: daxrace auto, bpftrace.
    pub total_per_op: Option<(f64, f64)>,
    /// Median start-up ms: daxrace auto, bpftrace.
    pub starts: (Option<f64>, Option<f64>),
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

pub fn report(
    series: &str,
    p: &Parsed,
    out: &guest::Outcome,
    took: Duration,
    (rounds, secs, loop_secs): (u32, u32, u32),
    log: &std::path::Path,
) -> SeriesReport {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n=== {series}: kernel {} ({} rounds of daxrace, bpftrace, empty programs, each between untraced phases, rotating order; boot {:.0} s, guest run {:.0} s, total {:.0} s)",
        p.kernel,
        rounds,
        out.boot.as_secs_f64(),
        out.command.as_secs_f64(),
        took.as_secs_f64()
    );
    // 1. rates
    let _ = writeln!(
        t,
        "workload rates, ops/s (median over phases); ratio = a phase's rate / the mean of the untraced phases just before and after it, median [min-max] over rounds"
    );
    let _ = writeln!(
        t,
        "  {:<6} {:<5} {:<17} {:>9} {:>9} {:>19} {:>19} {:>19} {:>19}",
        "load",
        "fs",
        "operation",
        "untraced",
        "daxrace",
        "daxrace ratio",
        "bpftrace ratio",
        "empty progs ratio",
        "untraced (noise)"
    );
    let mut dr_ratios = BTreeMap::new();
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
        if let Some(d) = Spread::of(&ratios(DR)) {
            dr_ratios.insert((row.load, row.fs.clone(), row.name.to_string()), d);
        }
        let _ = writeln!(
            t,
            "  {:<6} {:<5} {:<17} {:>9} {:>9} {:>19} {:>19} {:>19} {:>19}",
            row.load.name(),
            row.fs,
            row.name,
            fmt_opt(median(rates(NONE)), 1),
            fmt_opt(median(rates(DR)), 1),
            Spread::show(&ratios(DR)),
            Spread::show(&ratios(BT)),
            Spread::show(&ratios(EMPTY)),
            Spread::show(&ratios(NONE)),
        );
    }
    let _ = writeln!(
        t,
        "  alone: one operation in a loop on one thread (op-loop, {} s per phase); mix: pin-punch ({secs} s), where pinned pages make breaks wait; empty progs: empty bpftrace programs on the same probes; untraced (noise): the untraced phases compared in the same way with their untraced neighbours",
        loop_secs
    );
    let cpu = |tr: &str| {
        let v = p.cpu.get(tr).cloned().unwrap_or_default();
        format!("{}%", fmt_opt(median(v).map(|x| x * 100.0), 1))
    };
    let _ = writeln!(
        t,
        "  tracer process CPU while attached (share of the guest's one vCPU, median of rounds): daxrace {}, bpftrace {}, empty programs {}",
        cpu(DR),
        cpu(BT),
        cpu(EMPTY)
    );
    // 2. per-hook cost
    let costs: BTreeMap<&str, BTreeMap<&str, HookCost>> = [DR, DR_KP, BT, EMPTY]
        .iter()
        .map(|tr| (*tr, hook_costs(p.progs.get(*tr).map_or(&[][..], |v| v))))
        .collect();
    let _ = writeln!(
        t,
        "per-hook BPF cost in the stats phase (run time / run count, ns per program run; TCG-inflated){}",
        p.bt_mode
            .as_deref()
            .map(|m| format!("; bpftrace used {m}"))
            .unwrap_or_default()
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
        "  {:<17} {:<17} {:>7} {:>8}   {:>8}   {:<19} {:>7} {:>8}  {:>6}  {:>6}  {:>11}",
        "hook",
        "daxrace (auto)",
        "runs",
        "ns/run",
        "kprobe",
        "bpftrace",
        "runs",
        "ns/run",
        "dr/bt",
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
        let (a, k, b, e) = (get(DR), get(DR_KP), get(BT), get(EMPTY));
        if let (Some(y), Some(f)) = (b.ns_per_run(), e.ns_per_run()) {
            if y / 3.0 < f {
                below_floor.push(format!("{h} ({:.0} < {f:.0} ns)", y / 3.0));
            }
        }
        let ratio = match (a.ns_per_run(), b.ns_per_run()) {
            (Some(x), Some(y)) if y > 0.0 => {
                hook_pairs.push((h.to_string(), x, y));
                Some(x / y)
            }
            _ => None,
        };
        let _ = writeln!(
            t,
            "  {:<17} {:<17} {:>7} {:>8}   {:>8}   {:<19} {:>7} {:>8}  {:>6}  {:>6}  {:>11}",
            h,
            kinds(&a),
            a.runs,
            fmt_opt(a.ns_per_run(), 0),
            fmt_opt(k.ns_per_run(), 0),
            kinds(&b),
            b.runs,
            fmt_opt(b.ns_per_run(), 0),
            fmt_opt(ratio, 2),
            fmt_opt(e.ns_per_run(), 0),
            fmt_opt(
                above_floor(a.ns_per_run(), b.ns_per_run(), e.ns_per_run()),
                2
            )
        );
    }
    let _ = writeln!(
        t,
        "  empty: an empty bpftrace program on the same probes (what any program there costs); above empty: (daxrace - empty) / (bpftrace - empty), what each tracer's own code costs; a third of bpftrace's cost is below the empty program for: {}",
        if below_floor.is_empty() {
            "no hook".to_string()
        } else {
            below_floor.join(", ")
        }
    );
    // The programs behind the figures, costliest per run first: where a
    // hook stands out, this names the program.
    for (label, tr) in [("daxrace (auto)", DR), ("bpftrace", BT)] {
        let mut v: Vec<&Prog> = p
            .progs
            .get(tr)
            .map(|v| v.iter().filter(|p| p.runs > 0).collect())
            .unwrap_or_default();
        v.sort_by_key(|p| std::cmp::Reverse(p.ns / p.runs));
        let list: Vec<String> = v
            .iter()
            .take(6)
            .map(|p| format!("{} {} ns x {}", p.name, p.ns / p.runs, p.runs))
            .collect();
        if !list.is_empty() {
            let _ = writeln!(t, "  costliest {label} programs: {}", list.join(", "));
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
        ("daxrace (auto)", DR),
        ("daxrace kprobe", DR_KP),
        ("bpftrace", BT),
    ] {
        let (runs, ns) = total(tr);
        let _ = writeln!(
            t,
            "  total {label:<15} {runs:>9} runs {:>9.1} ms, {:>8} ns of BPF per workload op ({} ops)",
            ns as f64 / 1e6,
            fmt_opt(per_op(tr), 0),
            stats_ops(p, tr)
        );
    }
    let total_per_op = match (per_op(DR), per_op(BT)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    // 4. start-up
    let st = |tr: &str| p.starts.get(tr).cloned().unwrap_or_default();
    let _ = writeln!(
        t,
        "start-up, launch to all hooks attached (ms, median of n): daxrace auto {} (n={}), daxrace kprobe {} (n={}), bpftrace {} (n={})",
        fmt_opt(median(st(DR)), 0),
        st(DR).len(),
        fmt_opt(median(st(DR_KP)), 0),
        st(DR_KP).len(),
        fmt_opt(median(st(BT)), 0),
        st(BT).len()
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
        dr_ratios,
        noise: noise
            .iter()
            .filter_map(|(l, v)| Spread::of(v).map(|s| (*l, s)))
            .collect(),
        hook_pairs,
        total_per_op,
        starts: (median(st(DR)), median(st(BT))),
    }
}
