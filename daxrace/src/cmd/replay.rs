//! `daxrace replay FILE`: the same detector on a recorded trace.
use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{bail, Result};
use daxrace::{
    detect::Finding,
    pipeline::Pipeline,
    sink::{summary::Unrecorded, terminal::Terminal},
    source::trace_reader::TraceReader,
    trace_file::TraceLine,
};

use super::{live::DetectArgs, FailOn};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A JSON lines trace written by `daxrace trace --json` or `daxrace run --json`.
    pub file: PathBuf,
    #[command(flatten)]
    pub detect: DetectArgs,
    #[command(flatten)]
    pub fail_on: FailOn,
    /// Print every event.
    #[arg(long)]
    pub events: bool,
}

/// What identifies a finding when comparing a replay with its recording.
fn key(f: &Finding) -> (String, u64, u64) {
    (f.kind.as_str().to_string(), f.pfn, f.ino)
}

pub fn run(args: ReplayArgs) -> Result<i32> {
    let fail_kinds = args.fail_on.kinds()?;
    let mut reader = TraceReader::open(&args.file)?;
    let h = &reader.header;
    eprintln!(
        "daxrace: replaying {} (kernel {}, recorded by daxrace {})",
        args.file.display(),
        h.kernel,
        h.daxrace_version
    );
    let cfg = args.detect.config(h.idle_refcount, h.pin_bias);
    let mut pipeline = Pipeline::new(
        cfg,
        vec![Box::new(Terminal {
            events: args.events,
            findings: false,
        })],
    );
    let mut recorded = Vec::new();
    let mut footer = None;
    let mut batch = Vec::with_capacity(4096);
    while let Some(line) = reader.next_line() {
        match line? {
            TraceLine::Event(ev) => {
                if footer.is_some() {
                    bail!(
                        "{}:{}: event after the footer",
                        args.file.display(),
                        reader.line_no()
                    );
                }
                batch.push(ev);
                if batch.len() == batch.capacity() {
                    pipeline.feed(&batch)?;
                    batch.clear();
                }
            }
            TraceLine::Finding(f) => {
                // The start-up check's findings came from outside the
                // detector (waiters asleep before the trace began): no
                // event can establish them again, so they carry over.
                if f.seen_at_start {
                    pipeline.feed(&batch)?;
                    batch.clear();
                    pipeline.found_outside(vec![(*f).clone()])?;
                }
                recorded.push(*f);
            }
            TraceLine::Footer(f) => footer = Some(*f),
            TraceLine::Header(_) => bail!(
                "{}:{}: a second header (two traces concatenated?)",
                args.file.display(),
                reader.line_no()
            ),
        }
    }
    pipeline.feed(&batch)?;
    pipeline.finish()?;
    let lost: BTreeMap<String, u64> = footer
        .as_ref()
        .map(|f| f.lost_events.clone())
        .unwrap_or_default();
    eprint!(
        "{}",
        pipeline.report(
            &lost,
            footer
                .as_ref()
                .map_or(0, |f| f.decode_errors.values().sum()),
            footer
                .as_ref()
                .map(|f| Unrecorded::from_counters(&f.kernel_counters))
                .unwrap_or_default(),
        )
    );
    if footer.is_none() {
        eprintln!("daxrace: warning: the trace has no footer: it was cut short (tracer killed?); findings are from what was recorded");
    }
    let mut replayed: Vec<_> = pipeline.findings.iter().map(key).collect();
    let mut was: Vec<_> = recorded.iter().map(key).collect();
    replayed.sort();
    was.sort();
    if replayed == was {
        eprintln!(
            "daxrace: replay agrees with the recording ({} findings)",
            was.len()
        );
    } else {
        eprintln!(
            "daxrace: replay differs from the recording: {} findings now, {} recorded (different detector settings or version?)",
            replayed.len(),
            was.len()
        );
    }
    let code = footer.and_then(|f| f.command_status).unwrap_or(0);
    Ok(super::trace::verdict(&pipeline, &fail_kinds, code))
}
