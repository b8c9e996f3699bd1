//! `daxrace doctor`: which tasks are asleep in a break-layouts wait right
//! now, on which DAX page, and whether their wake-up was lost. Also the
//! start-up check of `run` and `trace` ([`start_check`]).
use std::time::{Duration, Instant};

use anyhow::Result;
use daxrace::{
    detect::Finding,
    doctor::{Doctor, StuckTask, Verdict},
};
use serde_json::json;

use super::{EXIT_FINDINGS, EXIT_OK};

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Look at an idle page's waiter again after this long (ms) before
    /// calling its wake-up lost.
    #[arg(long, default_value_t = 200)]
    pub confirm_ms: u64,
    /// One JSON object on stdout instead of lines.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DoctorArgs) -> Result<i32> {
    let started = Instant::now();
    let doctor = Doctor::new()?;
    for w in &doctor.warnings {
        eprintln!("daxrace: warning: {w}");
    }
    let exam = doctor.examine(Duration::from_millis(args.confirm_ms))?;
    let stuck = &exam.stuck;
    for why in &exam.unjudged {
        eprintln!("daxrace: warning: not judged, its kernel stack is unreadable: {why}");
    }
    let took = started.elapsed();
    let lost = stuck
        .iter()
        .filter(|s| s.verdict == Verdict::LostWakeup)
        .count();
    if args.json {
        let v = json!({
            "kernel": daxrace::load::tracer::kernel_release(),
            "idle_refcount": doctor.idle_refcount,
            "pin_bias": doctor.pin_bias,
            "wait_model": doctor.model.note,
            "confirm_ms": args.confirm_ms,
            "took_ms": took.as_millis() as u64,
            "waiting": stuck,
            "unjudged": exam.unjudged,
            "lost_wakeups": lost,
        });
        println!("{v}");
    } else if stuck.is_empty() {
        println!("nothing waiting");
    } else {
        for s in stuck {
            println!("{}", s.line());
        }
    }
    log::info!("doctor took {} ms", took.as_millis());
    Ok(if lost > 0 { EXIT_FINDINGS } else { EXIT_OK })
}

/// The doctor's check once at the start of `run` and `trace`: lost
/// wake-ups of waiters asleep before daxrace attached become findings
/// (`seen_at_start`), legitimate waits are said on stderr. A check that
/// cannot run is a warning: it must not stop the tracer.
pub fn start_check(confirm: Duration) -> Vec<Finding> {
    let stuck: Vec<StuckTask> = match Doctor::new().and_then(|d| d.examine(confirm)) {
        Ok(e) => {
            for why in &e.unjudged {
                eprintln!("daxrace: warning: at start: a task asleep on a wait variable was not judged, its kernel stack is unreadable: {why}");
            }
            e.stuck
        }
        Err(e) => {
            eprintln!("daxrace: warning: start-up check of break-layouts waiters skipped: {e}");
            return Vec::new();
        }
    };
    let now = super::live::monotonic_ns();
    let mut out = Vec::new();
    for s in &stuck {
        eprintln!("daxrace: at start: {}", s.line());
        if s.verdict == Verdict::LostWakeup {
            out.push(s.finding(now));
        }
    }
    out
}
