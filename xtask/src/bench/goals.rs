//! The goals, judged over every series.
use std::fmt::Write as _;

use super::{
    pipeline::Pipeline,
    report::SeriesReport,
    stats::{Load, Spread},
};

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

pub fn goals(reports: &[SeriesReport], pipeline: Option<&Pipeline>) -> String {
    let mut t = String::from("\n=== goals\n");
    for r in reports {
        let s = &r.series;
        // Judged on the median ratio; the range and the untraced phases'
        // own spread say how firmly.
        let check = |load: Load, names: &[&str], goal: f64| -> Option<(bool, String)> {
            let rows: Vec<(&(Load, String, String), &Spread)> = r
                .dr_ratios
                .iter()
                .filter(|((l, _, n), _)| *l == load && names.contains(&n.as_str()))
                .collect();
            let v: Vec<String> = rows
                .iter()
                .map(|((_, fs, n), x)| {
                    format!("{fs} {n} {:.3} [{:.2}-{:.2}]", x.median, x.min, x.max)
                })
                .collect();
            let ok = rows.iter().all(|(_, x)| x.median >= goal);
            (!v.is_empty()).then(|| (ok, v.join(", ")))
        };
        for load in [Load::Alone, Load::Mix] {
            let noise = r
                .noise
                .get(&load)
                .map(|n| format!("; untraced vs untraced {:.2}-{:.2}", n.min, n.max))
                .unwrap_or_default();
            for (names, goal, what) in [
                (
                    &["punch", "truncate"][..],
                    0.95,
                    "punch/truncate rate >= 0.95 of untraced",
                ),
                (&["read"][..], 0.99, "read rate >= 0.99 of untraced"),
            ] {
                match check(load, names, goal) {
                    Some((ok, v)) => {
                        let _ = writeln!(
                            t,
                            "  {s}: {}: {what}: {} ({v}{noise})",
                            load.name(),
                            verdict(ok)
                        );
                    }
                    None => {
                        let _ = writeln!(t, "  {s}: {}: {what}: no figures", load.name());
                    }
                }
            }
        }
        if r.hook_pairs.is_empty() {
            let _ = writeln!(t, "  {s}: per-hook cost <= 1/3 of bpftrace's: no figures");
        } else {
            let worst = r
                .hook_pairs
                .iter()
                .map(|(h, a, b)| (h, a / b))
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .expect("not empty");
            let over: Vec<String> = r
                .hook_pairs
                .iter()
                .filter(|(_, a, b)| a / b > 1.0 / 3.0)
                .map(|(h, a, b)| format!("{h} {:.2}", a / b))
                .collect();
            let _ = writeln!(
                t,
                "  {s}: per-hook cost <= 1/3 of bpftrace's: {} (worst {} at {:.2}{})",
                verdict(over.is_empty()),
                worst.0,
                worst.1,
                if over.is_empty() {
                    String::new()
                } else {
                    format!("; above 1/3: {}", over.join(", "))
                }
            );
        }
        match r.total_per_op {
            Some((a, b)) if b > 0.0 => {
                let _ = writeln!(
                    t,
                    "  {s}: total BPF time <= 1/3 of bpftrace's: {} ({a:.0} vs {b:.0} ns per workload op, {:.2})",
                    verdict(a / b <= 1.0 / 3.0),
                    a / b
                );
            }
            _ => {
                let _ = writeln!(t, "  {s}: total BPF time <= 1/3 of bpftrace's: no figures");
            }
        }
        match r.starts {
            (Some(a), Some(b)) if a > 0.0 => {
                let _ = writeln!(
                    t,
                    "  {s}: start-up >= 10x faster than bpftrace: {} ({a:.0} vs {b:.0} ms, {:.1}x)",
                    verdict(b / a >= 10.0),
                    b / a
                );
            }
            _ => {
                let _ = writeln!(t, "  {s}: start-up >= 10x faster than bpftrace: no figures");
            }
        }
    }
    match pipeline {
        Some(p) => {
            let worst = p
                .lines
                .iter()
                .map(|(_, _, m)| *m)
                .fold(f64::INFINITY, f64::min);
            let v: Vec<String> = p
                .lines
                .iter()
                .map(|(s, b, m)| format!("{s}: best {b:.1}, median {m:.1}"))
                .collect();
            let _ = writeln!(
                t,
                "  host: pipeline >= 20 M events/s/core (decode + detect, median): {} ({})",
                verdict(worst >= 20.0),
                v.join("; ")
            );
        }
        None => {
            let _ = writeln!(t, "  host: pipeline >= 20 M events/s/core: not measured");
        }
    }
    t
}
