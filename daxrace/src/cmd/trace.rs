//! `daxrace trace -- CMD`: attach, run the command, report, and exit with a
//! verdict (see [`super::EXIT_FINDINGS`]).
use std::{
    path::PathBuf,
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{Context, Result};
use daxrace::{detect::FindingKind, pipeline::Pipeline, sink::summary::Unrecorded};
use tokio::signal::unix::{signal, SignalKind};

use super::{
    live::{self, DetectArgs},
    AttachArgs, FailOn,
};

#[derive(clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    #[command(flatten)]
    pub detect: DetectArgs,
    /// Write the header, every event, every finding and a footer to this JSON lines file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub fail_on: FailOn,
    /// Print every decoded event as it arrives.
    #[arg(long)]
    pub events: bool,
    /// Report per-program BPF run counts and run time at the end (enables
    /// BPF stats host-wide while daxrace runs).
    #[arg(long)]
    pub bpf_stats: bool,
    /// The command to run under the tracer.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(args: TraceArgs) -> Result<i32> {
    live::block_on(|| run_async(args))
}

async fn run_async(args: TraceArgs) -> Result<i32> {
    let fail_kinds = args.fail_on.kinds()?;
    let live::Started {
        mut tracer,
        stats: _stats,
        startup_ms,
        at_start,
    } = live::attach(
        &args.attach,
        daxrace::plan::Evidence::Full,
        args.bpf_stats,
        &args.detect,
    )?;
    let sinks = live::sinks(
        &tracer,
        args.events,
        args.json.as_deref(),
        None,
        Some(args.command.clone()),
    )?;
    let (mut pipeline, mut source) = live::pipeline(&mut tracer, &args.detect, sinks)?;
    pipeline.found_outside(at_start)?;

    // Hooks are attached: now the command may start.
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
        .with_context(|| format!("cannot run {}", args.command[0]))?;
    let pid = child.id().map(|p| p as i32);
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let origin = SignalOrigin::watch(&[libc::SIGINT, libc::SIGTERM])
        .context("cannot learn where signals come from")?;
    let (status_tx, status_rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        // Signals go to the command; daxrace stops when it exits.
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                _ = sigint.recv() => forward(pid, libc::SIGINT, &origin),
                _ = sigterm.recv() => forward(pid, libc::SIGTERM, &origin),
            }
        };
        let _ = status_tx.send(status);
    };
    let counters = live::drive(&mut tracer, &mut source, &mut pipeline, None, stop).await?;
    let status = status_rx
        .await
        .context("the command's status was lost")?
        .context("waiting for the command")?;
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(1);
    let footer = live::footer(&pipeline, &source, &counters, Some(code));
    let lost = footer.lost_events.clone();
    let unrecorded = Unrecorded::from_counters(&footer.kernel_counters);
    pipeline.close(&footer)?;
    eprint!(
        "{}",
        pipeline.report(&lost, source.decode_errors.values().sum(), unrecorded)
    );
    live::print_program_stats(&tracer);
    eprintln!(
        "daxrace: {} events traced; start-up {} ms; peak RSS {} KiB",
        pipeline.events,
        startup_ms,
        live::peak_rss_kib()
    );
    Ok(verdict(&pipeline, &fail_kinds, code))
}

/// The `si_code` of the last SIGINT and SIGTERM received, set by a signal
/// action beside tokio's (both run; tokio's registry allows several).
static LAST_SI_CODE: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];

/// `si_code` of a signal the kernel sent itself: the terminal's Ctrl-C
/// (and Ctrl-\) goes to the whole foreground process group.
const SI_KERNEL: i32 = 0x80;

fn origin_slot(sig: i32) -> usize {
    usize::from(sig == libc::SIGTERM)
}

/// Where the last SIGINT/SIGTERM came from.
struct SignalOrigin;

impl SignalOrigin {
    fn watch(signals: &[i32]) -> std::io::Result<SignalOrigin> {
        for &sig in signals {
            // SAFETY: the action only stores an integer in an atomic, which
            // is async-signal-safe.
            unsafe {
                signal_hook_registry::register_sigaction(sig, move |info: &libc::siginfo_t| {
                    LAST_SI_CODE[origin_slot(sig)].store(info.si_code, Ordering::SeqCst);
                })?;
            }
        }
        Ok(SignalOrigin)
    }

    /// The terminal sent it to the whole foreground process group, the
    /// command included (it stays in daxrace's group).
    fn sent_by_terminal(&self, sig: i32) -> bool {
        LAST_SI_CODE[origin_slot(sig)].load(Ordering::SeqCst) == SI_KERNEL
    }
}

/// Passes a signal on to the command, unless the command already got it
/// from the terminal: a second SIGINT makes fstests' `check` or fio stop
/// differently from one.
fn forward(pid: Option<i32>, sig: i32, origin: &SignalOrigin) {
    if origin.sent_by_terminal(sig) {
        log::debug!(
            "signal {sig} came from the terminal, which sent it to the command too: not forwarded"
        );
        return;
    }
    if let Some(pid) = pid {
        log::debug!("forwarding signal {sig} to the command (pid {pid})");
        // SAFETY: plain kill(2) on the child we spawned.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Findings of the chosen kinds win over the command's own status.
pub fn verdict(pipeline: &Pipeline, fail_kinds: &[FindingKind], command_code: i32) -> i32 {
    let hits = pipeline.count_of(fail_kinds);
    if hits > 0 {
        eprintln!(
            "daxrace: {hits} finding(s) of the kinds that fail the run: exit {}",
            super::EXIT_FINDINGS
        );
        super::EXIT_FINDINGS
    } else {
        command_code
    }
}
