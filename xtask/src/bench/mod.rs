//! `cargo xtask bench`: what daxrace costs the DAX I/O path, measured for
//! real in the VM and compared, in the same boot, with no tracer and with an
//! equivalent bpftrace script (Debian's bpftrace 0.17).
//!
//! The guest runs under QEMU's instruction counting (`--icount`, shift 3 by
//! default: `-icount shift=3,sleep=off`), so that its clock advances by
//! executed instructions: a rate per guest second is a count of guest
//! instructions per operation, whatever the host's load, and ratios repeat
//! to about 0.1%. (Without icount, TCG wall times spread 0.4-2.4x.) An
//! instruction count is its own cost model (no cache misses, one count per
//! `rep movs` iteration, cheap devices), so the figures are reported as
//! guest-instruction ratios, never mixed with TCG or native times. By
//! default the CPU model also drops RDRAND/RDSEED and the kernel runs with
//! `nokaslr`, which take out most of the residual noise.
//!
//! The figures that count are ratios taken in the same run:
//!  1. workload rates untraced, under `daxrace run` in its default mode
//!     (`daxrace-run`) and with full evidence (`daxrace-full`: `daxrace run
//!     --evidence full`, what `daxrace trace` keeps), under each mode's
//!     bpftrace twin and under empty programs on the full twin's probes
//!     (the cost of hooking those functions at all). Two workloads: each operation alone on one thread
//!     (`op-loop`: O_DIRECT reads into a DAX mapping, punches, truncates;
//!     the quiet path a host runs almost always), and the pin-punch mix
//!     where pinned pages make breaks wait. Every traced phase sits between
//!     two untraced ones and is compared with their mean, so that drift over
//!     the boot cancels out; the untraced phases compared with each other in
//!     the same way give the noise;
//!  2. per-hook BPF cost (run time / run count with `kernel.bpf_stats_enabled`;
//!     under icount, time / 2^shift is instructions), daxrace (auto: fentry
//!     where it attaches; and `--attach kprobe`) vs bpftrace, in a separate
//!     phase so that the statistics' own cost does not touch the rate
//!     rounds; in that phase, too, the idle check: how many BPF programs
//!     each daxrace mode runs for O_DIRECT reads while no page is watched;
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
    report::{report, RunInfo, SeriesReport},
    script::{guest_script, rate_phases, Workloads},
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
    /// Seconds of the pin-punch mix per filesystem (ext4, xfs) in each
    /// phase, when it has no operation budget (--mix-mods 0); with one, the
    /// longest it may run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// The pin-punch mix's modification budget per filesystem and phase
    /// (0: run --seconds instead). A fixed amount of work makes the mix's
    /// phases comparable; a time let the scheduler decide how much of each.
    /// On 6.12, 1000 modifications and 2000 reads gave an untraced band of
    /// 0.989-1.011 (ext4), 3000 and 6000 gave 0.991-1.005.
    #[arg(long, default_value_t = 3000)]
    pub mix_mods: u64,
    /// The pin-punch mix's read budget per filesystem and phase.
    #[arg(long, default_value_t = 6000)]
    pub mix_reads: u64,
    /// QEMU instruction counting: `-icount shift=SHIFT,sleep=off` (one
    /// guest instruction = 2^SHIFT ns of guest time), or `off` for TCG wall
    /// time. `shift=auto` is refused: it adapts to the host and does not
    /// repeat.
    #[arg(long, default_value = "3", value_parser = parse_icount)]
    pub icount: Icount,
    /// Make a new filesystem (mkfs, then an untraced warm-up) before every
    /// rate phase, so that each starts from the same on-disk state.
    #[arg(long)]
    pub fresh_fs: bool,
    /// Keep RDRAND and RDSEED in the guest's CPU model (default: `-cpu
    /// max,-rdrand,-rdseed`, which cuts the residual noise; the guest then
    /// seeds its random number generator at boot, `daxrace-workload
    /// seed-rng`).
    #[arg(long)]
    pub rdrand: bool,
    /// Boot with KASLR (default: `nokaslr`, the same layout every boot).
    #[arg(long)]
    pub kaslr: bool,
    /// Seconds of each lone operation (read, punch, truncate) per
    /// filesystem in each phase.
    #[arg(long, default_value_t = 2)]
    pub loop_seconds: u32,
    /// Guest seconds every tracer (daxrace, bpftrace, empty programs) runs
    /// before a rate phase measures: the kernel keeps doing work for 10-15
    /// guest s after a BPF tracer attaches (system time in no process,
    /// there with the tracer stopped too: reads ran at 0.976-0.983 of
    /// untraced, and 0.998 after), and the rows are the steady state a
    /// daemon spends its days in. 0 measures from the ready line.
    #[arg(long, default_value_t = 15)]
    pub settle_seconds: u32,
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
    /// Print the report again from a bench guest's saved output
    /// (target/bench/SERIES.log) with the workload and tuning flags given,
    /// without booting.
    #[arg(long, hide = true)]
    pub from_log: Option<PathBuf>,
    /// Debugging: run this shell code in the bench guest (with bpftrace)
    /// instead of the bench.
    #[arg(long, hide = true)]
    pub shell: Option<String>,
}

/// `--icount`: a shift, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icount(pub Option<u32>);

fn parse_icount(s: &str) -> Result<Icount, String> {
    match s {
        "off" | "none" => Ok(Icount(None)),
        "auto" => Err("shift=auto adapts to the host's speed and does not repeat: give a number (3 is the default)".into()),
        n => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= 10)
            .map(|n| Icount(Some(n)))
            .ok_or_else(|| format!("--icount takes a shift of 0 to 10 or `off`, not {n:?}")),
    }
}

impl BenchArgs {
    /// The bench guest's QEMU tuning.
    pub fn tuning(&self) -> guest::Tuning {
        guest::Tuning {
            // Instruction counting is TCG's: under KVM the guest runs natively.
            icount: self.icount.0.filter(|_| self.accel == guest::Accel::Tcg),
            no_rdrand: !self.rdrand,
            nokaslr: !self.kaslr,
        }
    }
}

/// Extra guest RAM for bpftrace: its libraries (LLVM, clang: about 200 MB)
/// sit in the initramfs, and compiling a script takes a few hundred MB more.
const BPFTRACE_EXTRA_MIB: u64 = 512;
/// The longest one tracer may take to attach under TCG (guest seconds: under
/// icount an instruction budget, 37.5 G instructions at shift 3).
pub const ATTACH_LIMIT_S: u64 = 300;
/// Where the logs and the generated bpftrace scripts go.
fn out_dir() -> PathBuf {
    crate::setup::workspace_root().join("target/bench")
}

/// What the tracers are called in the guest script and the tables.
pub const NONE: &str = "none";
/// `daxrace run`: the daemon's default mode.
pub const DR_RUN: &str = "daxrace-run";
/// `daxrace run --evidence full`: every hook, as `daxrace trace`.
pub const DR_FULL: &str = "daxrace-full";
/// The full mode with `--attach kprobe` (stats phase only).
pub const DR_KP: &str = "daxrace-kprobe";
/// The bpftrace twin of each mode.
pub const BT_RUN: &str = "bpftrace-run";
pub const BT_FULL: &str = "bpftrace-full";
/// Empty programs on the full twin's probes: the floor.
pub const EMPTY: &str = "empty";

pub fn run(args: BenchArgs) -> Result<()> {
    guest::set_accel(args.accel);
    let bpftrace = PathBuf::from("/usr/bin/bpftrace");
    if !bpftrace.exists() {
        bail!("/usr/bin/bpftrace is missing: run `cargo xtask setup` (Debian package bpftrace)");
    }
    if let Some(sh) = &args.shell {
        let k = kernel::fetch(args.kernel.as_deref().unwrap_or("newest"))?;
        let out = boot(
            &k,
            sh.clone(),
            Duration::from_secs(1800),
            true,
            args.tuning(),
        )?;
        println!(
            "bench: boot {:.1} s, command {:.1} s, exit status {}",
            out.boot.as_secs_f64(),
            out.command.as_secs_f64(),
            out.status
        );
        return Ok(());
    }
    if let Some(log) = &args.from_log {
        let text =
            std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
        let lines: Vec<String> = text.lines().map(String::from).collect();
        let p = parse(&lines);
        let out = guest::Outcome {
            status: 0,
            boot: Duration::ZERO,
            guest_uptime: 0.0,
            command: Duration::ZERO,
            output: Vec::new(),
            dmesg: Vec::new(),
        };
        let series = args.kernel.clone().unwrap_or_else(|| p.kernel.clone());
        let (w, _) = workloads(&args);
        let r = report(
            &series,
            &p,
            &out,
            Duration::ZERO,
            &RunInfo {
                rounds: args.rounds.max(1),
                w,
                tuning: args.tuning(),
            },
            log,
        );
        println!("{}", r.text);
        println!("{}", goals(&[r], None));
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
    tuning: guest::Tuning,
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
            tuning,
        },
    )
}

/// The guest's workloads from the flags.
fn workloads(args: &BenchArgs) -> (Workloads, Option<(u64, u64)>) {
    let (secs, loop_secs) = (args.seconds.max(1), args.loop_seconds.max(1));
    let mix = (args.mix_mods > 0).then_some((args.mix_mods, args.mix_reads));
    // With a budget, --seconds only bounds a run gone wrong.
    let secs = if mix.is_some() { secs.max(120) } else { secs };
    (
        Workloads {
            secs,
            loop_secs,
            mix,
            fresh_fs: args.fresh_fs,
            settle_secs: args.settle_seconds,
        },
        mix,
    )
}

fn bench_series(series: &str, args: &BenchArgs) -> Result<SeriesReport> {
    let k = kernel::fetch(series)?;
    let rounds = args.rounds.max(1);
    let (w, mix) = workloads(args);
    let (secs, loop_secs) = (w.secs, w.loop_secs);
    let script = guest_script(rounds, w);
    // Per phase: the workloads on two filesystems, one attach (bounded),
    // stop (bounded). Guest seconds; the host's deadline scales with icount.
    let per_phase = 2 * u64::from(secs + 3 * loop_secs) + u64::from(w.settle_secs) + 60;
    let phases = rate_phases(rounds).len() as u64;
    let tuning = args.tuning();
    let guest_s = 8 * (per_phase + ATTACH_LIMIT_S) + phases * (per_phase + 90) + 300;
    let timeout = Duration::from_secs(guest_s * u64::from(tuning.host_time_scale()));
    println!(
        "bench: {series}: {} {}; QEMU {}; one boot, stats phase then {phases} rate phases (mix {} per filesystem, {} s per lone operation; several minutes)",
        k.pkg,
        k.version,
        tuning.describe(),
        match mix {
            Some((m, r)) => format!("{m} modifications + {r} reads"),
            None => format!("{secs} s"),
        },
        loop_secs
    );
    let t = Instant::now();
    let out = boot(&k, script, timeout, args.verbose, tuning)?;
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
    for (mode, text) in &p.bt_scripts {
        let bt = out_dir().join(format!("bpftrace-{mode}-{series}.bt"));
        std::fs::write(&bt, text.join("\n") + "\n")?;
    }
    Ok(report(
        series,
        &p,
        &out,
        t.elapsed(),
        &RunInfo { rounds, w, tuning },
        &log,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icount_takes_a_shift_or_off_but_not_auto() {
        assert_eq!(parse_icount("3"), Ok(Icount(Some(3))));
        assert_eq!(parse_icount("off"), Ok(Icount(None)));
        assert!(parse_icount("auto").is_err());
        assert!(parse_icount("11").is_err());
    }
}
