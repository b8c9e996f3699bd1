//! PLACEHOLDER owned by the VM-harness work (issue 3); replaced wholesale.
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct VmArgs {
    #[arg(trailing_var_arg = true)]
    pub cmd: Vec<String>,
}

#[derive(clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: VmArgs) -> Result<i32> {
    bail!("the VM harness is not built yet (issue 3)")
}

pub fn demo(_args: DemoArgs) -> Result<()> {
    bail!("the demo is not built yet (issue 3)")
}

/// Runs the VM tests on every supported kernel series.
pub fn test_all() -> Result<()> {
    bail!("the VM tests are not built yet (issue 3)")
}
