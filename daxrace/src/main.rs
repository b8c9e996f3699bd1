//! The `daxrace` command. Library errors become one-line messages here.
mod cmd;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "daxrace",
    version,
    about = "Race detector and tracer for filesystem DAX on persistent memory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run as a daemon: attach, detect races live, serve metrics.
    Run(cmd::run::RunArgs),
    /// Trace a command: attach, run it, report races, exit with a verdict.
    Trace(cmd::trace::TraceArgs),
    /// Show the probe plan for this kernel and what attaches.
    Probes(cmd::probes::ProbesArgs),
    /// Run the detector on a recorded trace file.
    Replay(cmd::replay::ReplayArgs),
    /// Find tasks asleep in a break-layouts wait now; say whether their
    /// wake-up was lost (exit 10) or they wait on a pinned page.
    Doctor(cmd::doctor::DoctorArgs),
    /// Write a man page per subcommand into DIR (for packaging).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// Write bash, zsh and fish completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateCompletions { dir: PathBuf },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => cmd::run::run(a),
        Cmd::Trace(a) => cmd::trace::run(a),
        Cmd::Probes(a) => cmd::probes::run(a),
        Cmd::Replay(a) => cmd::replay::run(a),
        Cmd::Doctor(a) => cmd::doctor::run(a),
        Cmd::GenerateMan { dir } => cmd::docs::man_pages(Cli::command(), &dir).map(|files| {
            println!("{}", files.join("\n"));
            0
        }),
        Cmd::GenerateCompletions { dir } => {
            cmd::docs::completions(Cli::command(), &dir).map(|files| {
                println!("{}", files.join("\n"));
                0
            })
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("daxrace: {e:#}");
            std::process::exit(cmd::EXIT_ERROR);
        }
    }
}
