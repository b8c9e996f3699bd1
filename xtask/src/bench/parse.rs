//! The guest's `@@` lines read back.
use std::collections::BTreeMap;

use serde_json::Value;

/// One `@@PROG` line: a loaded program during a stats phase.
#[derive(Clone, Debug)]
pub struct Prog {
    pub kind: String,
    pub name: String,
    pub runs: u64,
    pub ns: u64,
    pub attach: Vec<String>,
}

#[derive(Default)]
pub struct Parsed {
    pub kernel: String,
    /// (tag, tracer, fs) -> the pin-punch mix's JSON summary.
    pub workloads: BTreeMap<(String, String, String), Value>,
    /// (tag, tracer, fs, op) -> a lone operation's JSON summary.
    pub loops: BTreeMap<(String, String, String, String), Value>,
    /// The rate phases in the order they ran: (tag, tracer).
    pub phases: Vec<(String, String)>,
    /// tracer -> start-up times (ms).
    pub starts: BTreeMap<String, Vec<f64>>,
    pub start_failures: Vec<String>,
    /// tracer -> its programs in the stats phase.
    pub progs: BTreeMap<String, Vec<Prog>>,
    /// tracer -> share of the vCPU its own process used while attached
    /// (rate rounds only).
    pub cpu: BTreeMap<String, Vec<f64>>,
    /// Twin mode ("run", "full") -> how bpftrace hooked functions (kfunc
    /// or kprobe).
    pub bt_mode: BTreeMap<String, String>,
    /// `daxrace run` refused `--evidence`: both daxrace modes ran plain
    /// `daxrace run`.
    pub no_evidence: bool,
    /// The run mode attached what the full mode did: one twin serves both.
    pub same_plan: bool,
    /// (tracer, fs) -> BPF program runs during the idle check's O_DIRECT
    /// reads (less those of a run without reads: the file's set-up and
    /// removal), and the reads' JSON summary.
    pub idle: BTreeMap<(String, String), (i64, Value)>,
    /// (tracer, fs) -> the programs that ran then, with their run counts.
    pub idle_progs: BTreeMap<(String, String), Vec<(String, i64)>>,
    /// tracer -> what it attached right after start-up (kind:symbol).
    pub attached: BTreeMap<String, Vec<String>>,
    /// The kernel's preemption model, from `sched/preempt` ("(lazy)" ->
    /// "lazy"), when it says.
    pub preempt: Option<String>,
    /// Twin mode -> its bpftrace script.
    pub bt_scripts: BTreeMap<String, Vec<String>>,
    pub notes: Vec<String>,
}

pub fn parse(lines: &[String]) -> Parsed {
    let mut p = Parsed::default();
    for l in lines {
        if let Some((mode, rest)) = l
            .strip_prefix("@@BT-")
            .and_then(|r| r.split_once('|'))
            .filter(|(m, _)| !m.contains(' '))
        {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            p.bt_scripts
                .entry(mode.to_string())
                .or_default()
                .push(rest.to_string());
            continue;
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["@@KERNEL", k] => p.kernel = k.to_string(),
            ["@@PREEMPT", modes @ ..] => p.preempt = preempt_mode(modes),
            ["@@START", tracer, _, ms] => {
                if let Ok(ms) = ms.parse() {
                    p.starts.entry(tracer.to_string()).or_default().push(ms);
                }
            }
            ["@@STARTFAIL", tracer, tag, ..] => {
                p.start_failures.push(format!("{tracer} ({tag})"));
            }
            ["@@WL", tag, tracer, fs, _rc, ..] => {
                let json = l.splitn(6, ' ').nth(5).unwrap_or("");
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    p.workloads
                        .insert((tag.to_string(), tracer.to_string(), fs.to_string()), v);
                }
            }
            ["@@LOOP", tag, tracer, fs, op, _rc, ..] => {
                let json = l.splitn(7, ' ').nth(6).unwrap_or("");
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    p.loops.insert(
                        (
                            tag.to_string(),
                            tracer.to_string(),
                            fs.to_string(),
                            op.to_string(),
                        ),
                        v,
                    );
                }
            }
            ["@@PHASE", tag, tracer] => p.phases.push((tag.to_string(), tracer.to_string())),
            ["@@PROG", tracer, _id, kind, name, runs, ns, attach] => {
                p.progs.entry(tracer.to_string()).or_default().push(Prog {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    runs: runs.parse().unwrap_or(0),
                    ns: ns.parse().unwrap_or(0),
                    attach: attach
                        .split(',')
                        .filter(|a| a.contains(':'))
                        .map(String::from)
                        .collect(),
                });
            }
            ["@@CPU", tracer, tag, ticks, t0, t1] => {
                if let (Ok(ticks), Ok(t0), Ok(t1)) =
                    (ticks.parse::<f64>(), t0.parse::<f64>(), t1.parse::<f64>())
                {
                    if t1 > t0 && tag.starts_with('p') {
                        // USER_HZ is 100 on x86.
                        p.cpu
                            .entry(tracer.to_string())
                            .or_default()
                            .push(ticks / 100.0 / (t1 - t0));
                    }
                }
            }
            ["@@BTMODE", mode, m] => {
                p.bt_mode.insert(mode.to_string(), m.to_string());
            }
            ["@@NOEVIDENCE"] => p.no_evidence = true,
            ["@@FRESHFAIL", fs, what] => p.notes.push(format!(
                "a fresh {fs} failed ({what}): its phase kept the old filesystem"
            )),
            ["@@SAMEPLAN", ..] => p.same_plan = true,
            ["@@ATTACH", tracer, what] => p
                .attached
                .entry(tracer.to_string())
                .or_default()
                .push(what.to_string()),
            ["@@IDLE", tracer, fs, runs, ..] => {
                let json = l.splitn(5, ' ').nth(4).unwrap_or("");
                if let (Ok(runs), Ok(v)) = (runs.parse(), serde_json::from_str::<Value>(json)) {
                    p.idle
                        .insert((tracer.to_string(), fs.to_string()), (runs, v));
                }
            }
            ["@@IDLERUN", tracer, fs, prog, runs] => {
                if let Ok(runs) = runs.parse() {
                    p.idle_progs
                        .entry((tracer.to_string(), fs.to_string()))
                        .or_default()
                        .push((prog.to_string(), runs));
                }
            }
            ["@@BTMISSING", what] => p.notes.push(format!("bpftrace has no probe for {what}")),
            ["@@DIED", tracer, tag] => p.notes.push(format!("{tracer} died during {tag}")),
            ["@@STOPKILL", tracer] => p
                .notes
                .push(format!("{tracer} did not stop within 60 s of SIGINT")),
            ["@@NOSTATS"] => p
                .notes
                .push("cannot enable kernel.bpf_stats_enabled: no per-hook cost".into()),
            _ => {}
        }
    }
    p
}

/// The selected preemption model in `/sys/kernel/debug/sched/preempt`
/// ("none (voluntary) full lazy": the one in parentheses).
fn preempt_mode(words: &[&str]) -> Option<String> {
    words
        .iter()
        .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        costs::hook_costs,
        stats::{bracketed, median, rate, rate_rows},
        DR_RUN, NONE,
    };

    #[test]
    fn the_preemption_model_is_the_one_in_parentheses() {
        assert_eq!(
            preempt_mode(&["none", "(voluntary)", "full"]),
            Some("voluntary".into())
        );
        assert_eq!(preempt_mode(&["full", "(lazy)"]), Some("lazy".into()));
        assert_eq!(preempt_mode(&[]), None);
        let p = parse(&["@@PREEMPT full (lazy)".to_string()]);
        assert_eq!(p.preempt.as_deref(), Some("lazy"));
    }

    #[test]
    fn parse_and_group() {
        let lines: Vec<String> = [
            "@@KERNEL 7.3.4",
            "@@START daxrace-run stats-daxrace-run 3400",
            "@@START bpftrace stats-bpftrace-1 11000",
            "@@CPU bpftrace p02-bpftrace 50 10.0 20.0",
            "@@CPU daxrace-run stats-daxrace-run 50 10.0 20.0",
            "@@PHASE p01 none",
            r#"@@WL p01 none ext4 0 {"duration_s":2.0,"ops":{"read":{"count":100},"punch":{"count":10}}}"#,
            r#"@@LOOP p01 none ext4 read 0 {"duration_s":2.0,"ops":{"read":{"count":1000}}}"#,
            "@@PHASE p02 daxrace-run",
            r#"@@WL p02 daxrace-run ext4 0 {"duration_s":2.0,"ops":{"read":{"count":99},"punch":{"count":10}}}"#,
            r#"@@LOOP p02 daxrace-run ext4 read 0 {"duration_s":2.0,"ops":{"read":{"count":940}}}"#,
            "@@PHASE p03 none",
            r#"@@LOOP p03 none ext4 read 0 {"duration_s":2.0,"ops":{"read":{"count":900}}}"#,
            "@@PROG daxrace-run 5 tracing fe_busy_scan_ra 10 1000 fentry:dax_layout_busy_page_range",
            "@@PROG daxrace-run 6 kprobe kr_busy_scan 10 3000 kretprobe:dax_layout_busy_page,kretprobe:dax_layout_busy_page_range",
            "@@PROG daxrace-run 7 kprobe kp_disassociate 4 400 -",
            "@@PROG bpftrace-full 9 kprobe BEGIN 1 100 uprobe:/usr/bin/bpftrace",
            "@@BT-full| kfunc:wake_up_var {",
            "@@BT-full|",
            "@@BTMODE full kfunc",
            "@@NOEVIDENCE",
            "@@ATTACH daxrace-run fentry:wake_up_var",
            r#"@@IDLE daxrace-run ext4 33000 {"duration_s":2.0,"ops":{"read":{"count":1000}}}"#,
            "@@IDLERUN daxrace-run ext4 fe_wake_up 17000",
        ]
        .map(String::from)
        .to_vec();
        let p = parse(&lines);
        assert_eq!(p.kernel, "7.3.4");
        assert_eq!(p.starts["bpftrace"], [11000.0]);
        assert_eq!(p.cpu["bpftrace"], [0.05]);
        assert!(
            !p.cpu.contains_key("daxrace-run"),
            "stats phases are not rate phases"
        );
        assert!(p.no_evidence && !p.same_plan);
        assert_eq!(p.bt_mode["full"], "kfunc");
        assert_eq!(p.attached["daxrace-run"], ["fentry:wake_up_var"]);
        let key = ("daxrace-run".to_string(), "ext4".to_string());
        assert_eq!(p.idle[&key].0, 33000);
        assert_eq!(p.idle_progs[&key], [("fe_wake_up".to_string(), 17000)]);
        assert_eq!(p.workloads.len(), 2);
        assert_eq!(p.loops.len(), 3);
        assert_eq!(p.phases.len(), 3);
        let rows = rate_rows(&p);
        assert_eq!(
            rows.iter()
                .map(|r| (r.load.name(), r.name))
                .collect::<Vec<_>>(),
            [
                ("alone", "read"),
                ("alone", "punch"),
                ("alone", "truncate"),
                ("mix", "read"),
                ("mix", "punch"),
                ("mix", "truncate"),
                ("mix", "all modifications")
            ]
        );
        // The lone reads under daxrace against the mean of 1000 and 900.
        let by = bracketed(&p.phases, |tag, tr| rows[0].rate(&p, tag, tr));
        assert_eq!(by[DR_RUN], [940.0 / 950.0]);
        assert_eq!(by[NONE], [1000.0 / 900.0, 900.0 / 1000.0]);
        // The mix's p03 is missing: p02 is compared with p01 alone.
        let by = bracketed(&p.phases, |tag, tr| rows[3].rate(&p, tag, tr));
        assert_eq!(by[DR_RUN], [0.99]);
        let c = hook_costs(&p.progs["daxrace-run"]);
        assert_eq!(c["busy scan"].runs, 20);
        assert_eq!(c["busy scan"].ns_per_run(), Some(200.0));
        assert_eq!(c["disassociate"].runs, 4);
        assert!(c["disassociate"].kinds.contains("kprobe"));
        assert!(hook_costs(&p.progs["bpftrace-full"]).is_empty());
        assert_eq!(p.bt_scripts["full"], ["kfunc:wake_up_var {", ""]);
        let v = &p.workloads[&("p01".into(), "none".into(), "ext4".into())];
        assert_eq!(rate(v, &["read"]), Some(50.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    }
}
