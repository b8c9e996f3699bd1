//! `daxrace trace -- CMD`: not built yet (issue 7); says so plainly.
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct TraceArgs {
    /// The command to run under the tracer.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(_args: TraceArgs) -> Result<i32> {
    bail!("`daxrace trace` is not implemented yet (issue 7); use `daxrace run --events` meanwhile")
}
