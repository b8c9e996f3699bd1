//! `daxrace-workload`: workloads that drive filesystem DAX into the
//! break-layouts path (docs/kernels.md, "The 2018 race"): direct I/O reads from a non-DAX file that
//! holds written data, into a MAP_SHARED mapping of a DAX file, pin DAX pages
//! through get_user_pages while other threads punch holes, zero, collapse,
//! insert and truncate that file.
//!
//! Every wait is bounded: a thread stuck in the kernel past `--stall-timeout`
//! is reported as a stall and interrupted with a no-op SIGUSR1 installed
//! without SA_RESTART (the break-layouts wait is interruptible, so the
//! syscall returns EINTR). On Debian's 6.1 kernel the puncher never wakes
//! after the first busy scan (a lost wake-up): this is our live reproducer.
//!
//! Exit status (documented in `--help`):
//! - 0: done, every read checked, no stall
//! - 1: data mismatch: bytes read back differ from what was written
//! - 2: usage or set-up error
//! - 3: stall: a break-layouts caller had to be interrupted (data checked fine)
//! - 4: stuck: a thread did not return even after signals
mod bench;
mod nullb;
mod op_loop;
mod pattern;
mod pin_punch;
mod race2018;
mod report;
mod slow_pin;
mod stall;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

pub const EXIT_OK: i32 = 0;
pub const EXIT_MISMATCH: i32 = 1;
pub const EXIT_SETUP: i32 = 2;
pub const EXIT_STALL: i32 = 3;
pub const EXIT_STUCK: i32 = 4;

#[derive(Parser)]
#[command(
    name = "daxrace-workload",
    about = "Pin DAX pages with direct I/O while breaking layouts (punch, zero, collapse, insert, truncate)",
    after_help = "Exit status: 0 ok; 1 data mismatch; 2 usage or set-up error; \
3 stall (a punch/truncate waited past --stall-timeout and was interrupted: the 6.1 lost wake-up); \
4 a thread stayed stuck even after signals."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// Directory on a DAX mount (default: $DAX_EXT4, else $DAX_XFS).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A thread in the kernel longer than this (seconds) is a stall: it is
    /// reported and interrupted with SIGUSR1.
    #[arg(long, default_value_t = 5.0)]
    pub stall_timeout: f64,
    /// Stop early after this many stalls.
    #[arg(long, default_value_t = 2)]
    pub max_stalls: u32,
    /// Print a one-line JSON summary at the end.
    #[arg(long)]
    pub json: bool,
    /// Seed of the data pattern and of the random offsets.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Common {
    pub fn dax_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        ["DAX_EXT4", "DAX_XFS"]
            .iter()
            .find_map(|v| std::env::var_os(v).map(PathBuf::from))
            .ok_or_else(|| anyhow::anyhow!("no DAX directory: pass --dir or set DAX_EXT4/DAX_XFS"))
    }
    /// The DAX directory and its filesystem's name. A directory off DAX is
    /// warned about but used: a run there is a baseline to compare with.
    pub fn dax_target(&self) -> anyhow::Result<(PathBuf, String)> {
        let dir = self.dax_dir()?;
        if !report::is_dax(&dir) {
            eprintln!(
                "daxrace-workload: warning: {} is not on a DAX mount: no DAX page will be pinned, no DAX hook will fire",
                dir.display()
            );
        }
        let fs = report::fs_name(&dir);
        Ok((dir, fs))
    }
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.stall_timeout.max(0.1))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Reader threads O_DIRECT-read written data into an mmap of a DAX file
    /// while a modifier thread punches, zeroes, collapses/inserts and
    /// truncates/re-extends it; every read is checked.
    PinPunch(pin_punch::Args),
    /// Holds DAX pages pinned for a chosen time (O_DIRECT from a null_blk
    /// device whose requests complete after --delay-ms) while punching,
    /// zeroing and truncating the pinned range: break-layouts must wait.
    SlowPin(slow_pin::Args),
    /// One operation (read, punch or truncate) in a loop on one thread with
    /// nothing racing it: the benchmark's quiet-path rates. Nothing can make
    /// a break wait here, so --stall-timeout and --max-stalls do not apply;
    /// a failing operation ends the run with its error.
    OpLoop(op_loop::Args),
    /// The 2018 break-layouts race, made to complete under a kernel whose
    /// loop is the 2018 one (the fault patch of `cargo xtask vm
    /// --race2018`): a long and a brief pin (two slow null_blk devices)
    /// in one file, then a punch or truncate of both; the busy scan meets
    /// the brief one, which goes idle before the wait's check.
    Race2018(race2018::Args),
    /// Runs a command with SIGINT and SIGQUIT at their default action: a
    /// background job of a non-interactive shell starts with them ignored,
    /// so `daxrace run &` could not be stopped with SIGINT otherwise.
    Sigdfl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// For `cargo xtask bench`: loaded BPF programs with run counts and
    /// run time (what bpftool would show), and where they are attached.
    #[command(hide = true)]
    BpfProgStats(bench::ProgStatsArgs),
    /// For `cargo xtask bench`: milliseconds from a process's start to a
    /// line in its output file.
    #[command(hide = true)]
    WaitLine(bench::WaitLineArgs),
    /// For `cargo xtask bench` guests without RDRAND: credits a fixed seed
    /// to the kernel's entropy pool, so its random number generator is
    /// ready before anything is measured.
    #[command(hide = true)]
    SeedRng,
}

fn main() {
    let cli = Cli::parse();
    if let Cmd::Sigdfl { cmd } = &cli.cmd {
        use std::os::unix::process::CommandExt;
        // SAFETY: restoring default dispositions before exec.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
        }
        let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
        eprintln!("daxrace-workload: cannot run {}: {err}", cmd[0]);
        std::process::exit(EXIT_SETUP);
    }
    stall::install_sigusr1();
    let res = match cli.cmd {
        Cmd::Sigdfl { .. } => unreachable!("handled above"),
        Cmd::PinPunch(a) => pin_punch::run(a),
        Cmd::SlowPin(a) => slow_pin::run(a),
        Cmd::OpLoop(a) => op_loop::run(a),
        Cmd::Race2018(a) => race2018::run(a),
        Cmd::BpfProgStats(a) => bench::prog_stats(a),
        Cmd::WaitLine(a) => bench::wait_line(a),
        Cmd::SeedRng => bench::seed_rng(),
    };
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("daxrace-workload: error: {e:#}");
            std::process::exit(EXIT_SETUP);
        }
    }
}
