//! The goals (issue 20), judged over every series: guest-instruction ratios
//! of the alone rows on ext4 and xfs.
use std::fmt::Write as _;

use super::{
    pipeline::Pipeline,
    report::SeriesReport,
    stats::{Load, Spread},
    BT_FULL, DR_FULL, DR_RUN, EMPTY, NONE,
};

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// The alone rows of `names` with `tracer`'s ratio: (fs, name, spread).
fn rows<'a>(
    r: &'a SeriesReport,
    load: Load,
    names: &[&str],
    tracer: &str,
) -> Vec<(&'a str, &'a str, Spread)> {
    r.ratios
        .iter()
        .filter(|((l, _, n), _)| *l == load && names.contains(&n.as_str()))
        .filter_map(|((_, fs, n), m)| m.get(tracer).map(|s| (fs.as_str(), n.as_str(), *s)))
        .collect()
}

fn show(v: &[(&str, &str, Spread)]) -> String {
    v.iter()
        .map(|(fs, n, x)| format!("{fs} {n} {:.3}", x.median))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One goal line: met when every row passes; "no figures" without rows.
fn line(t: &mut String, s: &str, what: &str, ok: Option<bool>, detail: &str) {
    let _ = writeln!(
        t,
        "  {s}: {what}: {} ({detail})",
        ok.map_or("no figures", verdict)
    );
}

pub fn goals(reports: &[SeriesReport], pipeline: Option<&Pipeline>) -> String {
    let mut t = String::from("\n=== goals (issue 20; medians of the alone rows, ext4 and xfs)\n");
    for r in reports {
        let s = &r.series;
        let _ = writeln!(t, "  {s}: QEMU {}", r.tuning);
        if r.no_evidence {
            let _ = writeln!(
                t,
                "  {s}: note: daxrace has no --evidence here: daxrace-run and daxrace-full both ran plain `daxrace run` (full evidence)"
            );
        }
        let noise = |load: Load| {
            r.noise
                .get(&load)
                .map(|n| format!("; untraced vs untraced {:.3}-{:.3}", n.min, n.max))
                .unwrap_or_default()
        };
        // 1. The daemon's default mode.
        for (names, goal) in [(&["read"][..], 0.99), (&["punch", "truncate"][..], 0.98)] {
            let v = rows(r, Load::Alone, names, DR_RUN);
            let ok = (!v.is_empty()).then(|| v.iter().all(|(_, _, x)| x.median >= goal));
            line(
                &mut t,
                s,
                &format!("daemon default mode: {} >= {goal}", names.join("/")),
                ok,
                &format!("{}{}", show(&v), noise(Load::Alone)),
            );
        }
        let idle: Vec<&(String, String, i64, u64)> =
            r.idle.iter().filter(|(tr, ..)| tr == DR_RUN).collect();
        line(
            &mut t,
            s,
            "daemon default mode: idle daemon runs no BPF program on the O_DIRECT read path",
            (!idle.is_empty()).then(|| idle.iter().all(|(_, _, runs, _)| *runs == 0)),
            &idle
                .iter()
                .map(|(_, fs, runs, reads)| format!("{fs}: {runs} runs in {reads} reads"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        // 2. Full evidence: near the floor, and at most half bpftrace's
        // overhead.
        let all = ["read", "punch", "truncate"];
        let full = rows(r, Load::Alone, &all, DR_FULL);
        let floor = rows(r, Load::Alone, &all, EMPTY);
        let twin = rows(r, Load::Alone, &all, BT_FULL);
        let pair = |other: &[(&str, &str, Spread)], fs: &str, n: &str| {
            other
                .iter()
                .find(|(f, m, _)| *f == fs && *m == n)
                .map(|x| x.2.median)
        };
        let near: Vec<(String, bool)> = full
            .iter()
            .filter_map(|(fs, n, x)| {
                let e = pair(&floor, fs, n)?;
                Some((
                    format!("{fs} {n} {:.3} vs {e:.3}", x.median),
                    x.median >= e - 0.02,
                ))
            })
            .collect();
        line(
            &mut t,
            s,
            "full evidence within 2 points of the empty-program floor",
            (!near.is_empty()).then(|| near.iter().all(|x| x.1)),
            &near
                .iter()
                .map(|x| x.0.clone())
                .collect::<Vec<_>>()
                .join(", "),
        );
        let half: Vec<(String, bool)> = full
            .iter()
            .filter_map(|(fs, n, x)| {
                let b = pair(&twin, fs, n)?;
                let (od, ob) = (1.0 - x.median, 1.0 - b);
                Some((
                    format!("{fs} {n} {od:.3} vs {ob:.3}"),
                    od <= (ob / 2.0).max(0.0) + 1e-9,
                ))
            })
            .collect();
        line(
            &mut t,
            s,
            "full evidence overhead (1 - ratio) <= half of its bpftrace twin's",
            (!half.is_empty()).then(|| half.iter().all(|x| x.1)),
            &half
                .iter()
                .map(|x| x.0.clone())
                .collect::<Vec<_>>()
                .join(", "),
        );
        // 3. Per hook.
        if r.hook_pairs.is_empty() {
            line(
                &mut t,
                s,
                "per-hook cost <= 1/3 of the bpftrace twin's",
                None,
                "",
            );
        } else {
            let over: Vec<String> = r
                .hook_pairs
                .iter()
                .filter(|(_, a, b)| a / b > 1.0 / 3.0)
                .map(|(h, a, b)| format!("{h} {:.2}", a / b))
                .collect();
            let worst = r
                .hook_pairs
                .iter()
                .map(|(h, a, b)| (h, a / b))
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .expect("not empty");
            line(
                &mut t,
                s,
                "per-hook cost (instructions per run, full evidence) <= 1/3 of the bpftrace twin's",
                Some(over.is_empty()),
                &format!(
                    "worst {} at {:.2}{}",
                    worst.0,
                    worst.1,
                    if over.is_empty() {
                        String::new()
                    } else {
                        format!("; above 1/3: {}", over.join(", "))
                    }
                ),
            );
        }
        // 4. The mix resolved.
        let mix_noise: Vec<(&str, &str, Spread)> = rows(
            r,
            Load::Mix,
            &[
                "read",
                "punch",
                "truncate",
                "all modifications",
                "all ops (budget)",
            ],
            NONE,
        );
        line(
            &mut t,
            s,
            "mix rows resolved to +-1% (untraced vs untraced within 0.99-1.01)",
            (!mix_noise.is_empty()).then(|| {
                mix_noise
                    .iter()
                    .all(|(_, _, x)| x.min >= 0.99 && x.max <= 1.01)
            }),
            &mix_noise
                .iter()
                .map(|(fs, n, x)| format!("{fs} {n} {:.3}-{:.3}", x.min, x.max))
                .collect::<Vec<_>>()
                .join(", "),
        );
        // Kept from before.
        match r.total_per_op {
            Some((a, b)) if b > 0.0 => {
                let _ = writeln!(
                    t,
                    "  {s}: total BPF cost (full evidence) <= 1/3 of the twin's: {} ({a:.0} vs {b:.0} {} per workload op, {:.2})",
                    verdict(a / b <= 1.0 / 3.0),
                    if r.ns_per_instruction.is_some() { "guest ns" } else { "ns" },
                    a / b
                );
            }
            _ => line(&mut t, s, "total BPF cost <= 1/3 of the twin's", None, ""),
        }
        match r.starts {
            (Some(a), Some(b)) if a > 0.0 => {
                let _ = writeln!(
                    t,
                    "  {s}: start-up >= 10x faster than bpftrace: {} ({:.1}x)",
                    verdict(b / a >= 10.0),
                    b / a
                );
            }
            _ => line(&mut t, s, "start-up >= 10x faster than bpftrace", None, ""),
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
