//! `daxrace replay FILE`: not built yet (issue 7); says so plainly.
use std::path::PathBuf;

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A JSON lines trace recorded by `daxrace trace --json` or `run --json`.
    pub file: PathBuf,
}

pub fn run(_args: ReplayArgs) -> Result<i32> {
    bail!("`daxrace replay` is not implemented yet (issue 7)")
}
