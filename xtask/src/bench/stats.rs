//! Rates, ratios to the untraced phases around them, and their spread.
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{parse::Parsed, NONE};

/// The workload figures compared: JSON op names summed into one rate.
const RATES: &[(&str, &[&str])] = &[
    ("read", &["read"]),
    ("punch", &["punch"]),
    ("truncate", &["truncate"]),
    (
        "all modifications",
        &["punch", "zero", "collapse", "insert", "truncate"],
    ),
];

/// The mix's one row when it ran a fixed budget of operations: every rate
/// is then the same work over the run's duration.
const BUDGET_ROW: (&str, &[&str]) = (
    "all ops (budget)",
    &["read", "punch", "zero", "collapse", "insert", "truncate"],
);

/// The two workloads of the rate phases.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Load {
    /// One operation in a loop on one thread (op-loop).
    Alone,
    /// pin-punch: pinned pages make breaks wait.
    Mix,
}

impl Load {
    pub fn name(self) -> &'static str {
        match self {
            Load::Alone => "alone",
            Load::Mix => "mix",
        }
    }
}

/// One line of the rate table: a rate of one workload on one filesystem.
pub struct RateRow {
    pub load: Load,
    pub fs: String,
    pub name: &'static str,
    pub ops: &'static [&'static str],
}

impl RateRow {
    pub fn rate(&self, p: &Parsed, tag: &str, tracer: &str) -> Option<f64> {
        let (tag, tracer, fs) = (tag.to_string(), tracer.to_string(), self.fs.clone());
        let v = match self.load {
            Load::Alone => p.loops.get(&(tag, tracer, fs, self.name.to_string())),
            Load::Mix => p.workloads.get(&(tag, tracer, fs)),
        };
        v.and_then(|v| rate(v, self.ops))
    }
}

/// The table's rows: each lone operation, then the mix's rates, per fs.
pub fn rate_rows(p: &Parsed) -> Vec<RateRow> {
    let mut rows = Vec::new();
    let loop_fs: BTreeSet<&String> = p.loops.keys().map(|(_, _, f, _)| f).collect();
    for fs in loop_fs {
        // op-loop runs one operation at a time: the single-operation rates.
        for (name, ops) in RATES.iter().filter(|(_, ops)| ops.len() == 1) {
            rows.push(RateRow {
                load: Load::Alone,
                fs: fs.clone(),
                name,
                ops,
            });
        }
    }
    let mix_fs: BTreeSet<&String> = p.workloads.keys().map(|(_, _, f)| f).collect();
    // With an operation budget every one of the mix's rates is its fixed
    // count over the same duration: one row says it all.
    let budgeted = p
        .workloads
        .values()
        .any(|v| v["extra"]["budget"]["mods"].as_u64().is_some());
    let mix_rates: &[(&str, &[&str])] = if budgeted {
        std::slice::from_ref(&BUDGET_ROW)
    } else {
        RATES
    };
    for fs in mix_fs {
        for (name, ops) in mix_rates {
            rows.push(RateRow {
                load: Load::Mix,
                fs: fs.clone(),
                name,
                ops,
            });
        }
    }
    rows
}

/// Each phase's value over the mean of the nearest untraced phases before
/// and after it (one of them at either end), grouped by tracer. A drift
/// over the boot cancels out to first order. Untraced phases get the same
/// treatment against their untraced neighbours: how far apart two runs of
/// the same thing land, the resolution of every other ratio.
pub fn bracketed(
    phases: &[(String, String)],
    value: impl Fn(&str, &str) -> Option<f64>,
) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let untraced = |mut it: Box<dyn Iterator<Item = &(String, String)> + '_>| {
        it.find(|(_, t)| t == NONE)
            .and_then(|(g, _)| value(g, NONE))
    };
    for (i, (tag, tracer)) in phases.iter().enumerate() {
        let Some(v) = value(tag, tracer) else {
            continue;
        };
        let around: Vec<f64> = [
            untraced(Box::new(phases[..i].iter().rev())),
            untraced(Box::new(phases[i + 1..].iter())),
        ]
        .into_iter()
        .flatten()
        .collect();
        if around.is_empty() {
            continue;
        }
        let base = around.iter().sum::<f64>() / around.len() as f64;
        if base > 0.0 {
            out.entry(tracer.clone()).or_default().push(v / base);
        }
    }
    out
}

/// The median of some ratios, with their range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Option<Spread> {
        Some(Spread {
            median: median(v.to_vec())?,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
    /// "0.951 [0.934-0.970]": under icount ratios repeat to about 0.001.
    pub fn show(v: &[f64]) -> String {
        Spread::of(v).map_or("-".into(), |s| {
            format!("{:.3} [{:.3}-{:.3}]", s.median, s.min, s.max)
        })
    }
}

pub fn rate(v: &Value, ops: &[&str]) -> Option<f64> {
    let secs = v["duration_s"].as_f64().filter(|d| *d > 0.0)?;
    let n: u64 = ops
        .iter()
        .map(|o| v["ops"][*o]["count"].as_u64().unwrap_or(0))
        .sum();
    Some(n as f64 / secs)
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// What daxrace's code costs over bpftrace's once the empty program's cost
/// (the attach and statistics floor both pay) is taken off; none when
/// bpftrace's code costs nothing measurable over the floor.
pub fn above_floor(dr: Option<f64>, bt: Option<f64>, empty: Option<f64>) -> Option<f64> {
    let (d, b, e) = (dr?, bt?, empty?);
    (b - e > 0.0).then(|| (d - e).max(0.0) / (b - e))
}

/// Workload operations (reads + modifications) in a stats phase: the
/// denominator that makes total BPF time comparable between tracers.
pub fn stats_ops(p: &Parsed, tracer: &str) -> u64 {
    p.workloads
        .iter()
        .filter(|((tag, t, _), _)| tag == "stats" && t == tracer)
        .map(|(_, v)| {
            ["read", "punch", "zero", "collapse", "insert", "truncate"]
                .iter()
                .map(|o| v["ops"][*o]["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        script::{phase_tag, rate_phases},
        BT_FULL as BT, DR_RUN as DR,
    };

    #[test]
    fn a_budgeted_mix_is_one_row() {
        let line = r#"@@WL p01 none ext4 0 {"duration_s":2.0,"extra":{"budget":{"mods":10,"reads":20}},"ops":{"read":{"count":20},"punch":{"count":4},"truncate":{"count":6}}}"#;
        let p = crate::bench::parse::parse(&[line.to_string()]);
        let rows = rate_rows(&p);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "all ops (budget)");
        assert_eq!(rows[0].rate(&p, "p01", NONE), Some(15.0));
    }

    #[test]
    fn the_floor_comes_off_both_sides() {
        assert_eq!(
            above_floor(Some(300.0), Some(500.0), Some(200.0)),
            Some(1.0 / 3.0)
        );
        assert_eq!(
            above_floor(Some(150.0), Some(500.0), Some(200.0)),
            Some(0.0)
        );
        assert_eq!(above_floor(Some(300.0), Some(190.0), Some(200.0)), None);
        assert_eq!(above_floor(Some(300.0), None, Some(200.0)), None);
    }

    #[test]
    fn bracketed_ratios_cancel_a_linear_drift() {
        // Rates falling 5% a phase: a tracer costing nothing reads 1.0.
        let phases: Vec<(String, String)> = rate_phases(2)
            .iter()
            .enumerate()
            .map(|(i, t)| (phase_tag(i), t.to_string()))
            .collect();
        let value = |tag: &str, tr: &str| {
            let i: f64 = tag[1..].parse().expect("tag");
            let cost = if tr == BT { 0.8 } else { 1.0 };
            Some((100.0 - 5.0 * i) * cost)
        };
        let by = bracketed(&phases, value);
        for r in &by[DR] {
            assert!((r - 1.0).abs() < 1e-12, "{r}");
        }
        for r in &by[BT] {
            assert!((r - 0.8).abs() < 1e-12, "{r}");
        }
        // Untraced phases against their untraced neighbours: 1 inside,
        // off at the ends where only one neighbour exists.
        assert_eq!(by[NONE].len(), 11);
        assert!((by[NONE][3] - 1.0).abs() < 1e-12);
        let s = Spread::of(&[1.0, 0.9, 1.2]).expect("spread");
        assert_eq!((s.median, s.min, s.max), (1.0, 0.9, 1.2));
        assert_eq!(Spread::show(&[]), "-");
        assert_eq!(Spread::show(&[0.95]), "0.950 [0.950-0.950]");
    }
}
