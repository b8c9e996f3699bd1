//! `cargo xtask bench`: what daxrace costs the DAX I/O path, measured for
//! real in the VM and compared, in the same boot, with no tracer and with an
//! equivalent bpftrace script (Debian's bpftrace 0.17).
//!
//! Under TCG every absolute time is inflated many times over, so the figures
//! that count are ratios taken in the same run:
//!  1. workload rates untraced, under `daxrace run`, under bpftrace and
//!     under empty programs on bpftrace's probes (the cost of hooking those
//!     functions at all). Two workloads: each operation alone on one thread
//!     (`op-loop`: O_DIRECT reads into a DAX mapping, punches, truncates;
//!     the quiet path a host runs almost always), and the pin-punch mix
//!     where pinned pages make breaks wait. Every traced phase sits between
//!     two untraced ones and is compared with their mean, so that drift over
//!     the boot cancels out; the untraced phases compared with each other in
//!     the same way give the noise;
//!  2. per-hook BPF cost (run time / run count with `kernel.bpf_stats_enabled`),
//!     daxrace (auto: fentry where it attaches; and `--attach kprobe`) vs
//!     bpftrace, in a separate phase so that the statistics' own cost does
//!     not touch the rate rounds;
//!  3. start-up: from the tracer's launch to all hooks attached;
//!  4. on the host, the userspace decode + detect throughput
//!     (`cargo bench -p daxrace --bench pipeline`).
//!
//! The bpftrace script is assembled in the guest from what daxrace attached
//! there (kind and symbol of every link, read back with BPF_TASK_FD_QUERY and
//! link fdinfo by `daxrace-workload bpf-prog-stats`), so both tracers hook
//! the same functions with the same flavour: kfunc/kretfunc where daxrace
//! uses fentry/fexit (kprobes if bpftrace cannot), kprobes where daxrace
//! does, tracepoints for daxrace's ext4 tracepoints. Its probe files are
//! built from daxrace's probe-plan table (the `daxrace-plan` crate), one
//! twin per target ([`twin`]).
//!
//! Here: the command and one boot per kernel series; [`script`] writes the
//! guest's script (its shell in `script/*.sh`), [`parse`] reads its output,
//! [`stats`] and [`costs`] turn that into ratios and per-hook costs,
//! [`report`] prints a series, [`goals`] judges them all, [`pipeline`]
//! measures the host side.
//!
//! Nothing here fails on a figure: the goals are reported as met or not.
mod costs;
mod goals;
mod parse;
mod pipeline;
mod report;
mod script;
mod stats;
mod twin;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use self::{
    goals::goals,
    parse::parse,
    pipeline::pipeline_bench,
    report::{report, SeriesReport},
    script::{guest_script, rate_phases},
};
use crate::vm::{guest, kernel};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Kernel series: 6.1, 6.12, newest, or all (default: newest and 6.12;
    /// 6.1's lost wake-up stalls the punches, so its rates mean little).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Rounds of the rate phases: daxrace, bpftrace and empty programs,
    /// each between two untraced phases, in rotating order.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds of the pin-punch mix per filesystem (ext4, xfs) in each phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Seconds of each lone operation (read, punch, truncate) per
    /// filesystem in each phase.
    #[arg(long, default_value_t = 2)]
    pub loop_seconds: u32,
    /// Skip the host pipeline benchmark.
    #[arg(long)]
    pub no_pipeline: bool,
    /// Print the guest's output as it comes.
    #[arg(long, short)]
    pub verbose: bool,
    /// QEMU accelerator. `kvm` where /dev/kvm works (it does not on the
    /// machines this project runs on: QEMU aborts); under TCG, hooking a function
    /// at all costs more of an emulated operation than it would natively.
    #[arg(long, value_enum, default_value_t)]
    pub accel: guest::Accel,
    /// Debugging: run this shell code in the bench guest (with bpftrace)
    /// instead of the bench.
    #[arg(long, hide = true)]
    pub shell: Option<String>,
}

/// Extra guest RAM for bpftrace: its libraries (LLVM, clang: about 200 MB)
/// sit in the initramfs, and compiling a script takes a few hundred MB more.
const BPFTRACE_EXTRA_MIB: u64 = 512;
/// The longest one tracer may take to attach under TCG.
pub const ATTACH_LIMIT_S: u64 = 300;
/// Where the logs and the generated bpftrace scripts go.
fn out_dir() -> PathBuf {
    crate::setup::workspace_root().join("target/bench")
}

/// What the tracers are called in the guest script and the tables.
pub const NONE: &str = "none";
pub const DR: &str = "daxrace-auto";
pub const DR_KP: &str = "daxrace-kprobe";
pub const BT: &str = "bpftrace";
/// Empty programs on bpftrace's probes: the floor (stats phase only).
pub const EMPTY: &str = "empty";

pub fn run(args: BenchArgs) -> Result<()> {
    guest::set_accel(args.accel);
    let bpftrace = PathBuf::from("/usr/bin/bpftrace");
    if !bpftrace.exists() {
        bail!("/usr/bin/bpftrace is missing: run `cargo xtask setup` (Debian package bpftrace)");
    }
    if let Some(sh) = &args.shell {
        let k = kernel::fetch(args.kernel.as_deref().unwrap_or("newest"))?;
        let out = boot(&k, sh.clone(), Duration::from_secs(1800), true)?;
        println!(
            "bench: boot {:.1} s, command {:.1} s, exit status {}",
            out.boot.as_secs_f64(),
            out.command.as_secs_f64(),
            out.status
        );
        return Ok(());
    }
    let series: Vec<String> = match args.kernel.as_deref() {
        None => vec!["newest".into(), "6.12".into()],
        Some("all") => ["6.1", "6.12", "newest"].map(String::from).to_vec(),
        Some(s) => vec![s.to_string()],
    };
    std::fs::create_dir_all(out_dir())?;
    let mut reports = Vec::new();
    for s in &series {
        let t = Instant::now();
        match bench_series(s, &args) {
            Ok(r) => {
                println!("{}", r.text);
                println!("bench: {s}: {:.0} s", t.elapsed().as_secs_f64());
                reports.push(r);
            }
            Err(e) => println!(
                "bench: {s}: FAILED after {:.0} s: {e:#}",
                t.elapsed().as_secs_f64()
            ),
        }
    }
    let pipeline = if args.no_pipeline {
        None
    } else {
        match pipeline_bench() {
            Ok(p) => Some(p),
            Err(e) => {
                println!("bench: pipeline benchmark failed: {e:#}");
                None
            }
        }
    };
    println!("{}", goals(&reports, pipeline.as_ref()));
    Ok(())
}

fn boot(
    k: &kernel::Kernel,
    script: String,
    timeout: Duration,
    stream: bool,
) -> Result<guest::Outcome> {
    guest::boot_with(
        &guest::Spec {
            kernel: k,
            fs: guest::Fs::Both,
            script,
            timeout,
            verbose: false,
            stream,
            forward: None,
        },
        &crate::vm::guest_binaries(),
        &guest::Extras {
            host_programs: &[PathBuf::from("/usr/bin/bpftrace")],
            extra_mem_mib: BPFTRACE_EXTRA_MIB,
        },
    )
}

fn bench_series(series: &str, args: &BenchArgs) -> Result<SeriesReport> {
    let k = kernel::fetch(series)?;
    let rounds = args.rounds.max(1);
    let (secs, loop_secs) = (args.seconds.max(1), args.loop_seconds.max(1));
    let script = guest_script(rounds, secs, loop_secs);
    // Per phase: the workloads on two filesystems, one attach (bounded),
    // stop (bounded).
    let per_phase = 2 * u64::from(secs + 3 * loop_secs) + 60;
    let phases = rate_phases(rounds).len() as u64;
    let timeout =
        Duration::from_secs(4 * (per_phase + ATTACH_LIMIT_S) + phases * (per_phase + 90) + 300);
    println!(
        "bench: {series}: {} {}; one boot, stats phase then {phases} rate phases of {} s per filesystem (several minutes)",
        k.pkg,
        k.version,
        secs + 3 * loop_secs
    );
    let t = Instant::now();
    let out = boot(&k, script, timeout, args.verbose)?;
    let log = out_dir().join(format!("{series}.log"));
    std::fs::write(&log, out.output.join("\n") + "\n")
        .with_context(|| format!("writing {}", log.display()))?;
    if out.status != 0 {
        bail!(
            "the bench guest script exited with {} (output in {})",
            out.status,
            log.display()
        );
    }
    let p = parse(&out.output);
    if !p.bt_script.is_empty() {
        let bt = out_dir().join(format!("bpftrace-{series}.bt"));
        std::fs::write(&bt, p.bt_script.join("\n") + "\n")?;
    }
    Ok(report(
        series,
        &p,
        &out,
        t.elapsed(),
        (rounds, secs, loop_secs),
        &log,
    ))
}
