//! Project tasks: `cargo xtask <command>`. The README's two commands are
//! `cargo xtask demo` (the main job) and `cargo xtask test` (the tests).
mod bench;
mod deb;
mod setup;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "daxrace project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (Debian packages, bpf-linker); idempotent.
    Setup,
    /// Set up, then build daxrace and its workloads (release).
    Build,
    /// Set up, build, and run every test: lints, unit tests, the host kernel
    /// round trip, and the VM tests on every supported kernel series.
    Test(test::TestArgs),
    /// Boot a Debian kernel under QEMU with emulated pmem and DAX mounts and run a command in it.
    Vm(vm::VmArgs),
    /// The main job on a machine without pmem: boot the newest kernel with
    /// emulated pmem, run `daxrace run` under the pin-and-punch workload.
    Demo(vm::DemoArgs),
    /// Tracer overhead in the VM: workload rates untraced, under daxrace
    /// and under an equivalent bpftrace script; per-hook BPF cost; start-up
    /// time; and the host pipeline's throughput. Prints figures, never fails
    /// on them.
    Bench(bench::BenchArgs),
    /// Build the Debian package (target/debian/daxrace_VERSION_amd64.deb):
    /// binary, systemd unit (not enabled on install), /etc/default/daxrace,
    /// man pages, completions, dashboards; checks its file list and runs
    /// lintian when installed.
    Deb(deb::DebArgs),
}

fn main() {
    // One line per error (with its causes), not a backtrace: these are
    // messages for the person running the command.
    if let Err(e) = dispatch(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build => {
            setup::setup()?;
            setup::build_release()
        }
        Cmd::Test(args) => test::run(args),
        Cmd::Vm(args) => {
            setup::setup()?;
            setup::build_release()?;
            let code = vm::run(args)?;
            std::process::exit(code)
        }
        Cmd::Demo(args) => {
            setup::setup()?;
            setup::build_release()?;
            vm::demo(args)
        }
        Cmd::Bench(args) => {
            setup::setup()?;
            setup::build_release()?;
            bench::run(args)
        }
        Cmd::Deb(args) => deb::build(&args).map(|_| ()),
    }
}
