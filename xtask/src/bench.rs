//! `cargo xtask bench`: tracer overhead measured in the VM (work in progress).
use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use crate::vm::{guest, kernel};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long, hide = true)]
    pub shell: Option<String>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let k = kernel::fetch(args.kernel.as_deref().unwrap_or("newest"))?;
    let out = guest::boot_with(
        &guest::Spec {
            kernel: &k,
            fs: guest::Fs::Both,
            script: args.shell.unwrap_or_default(),
            timeout: Duration::from_secs(600),
            verbose: false,
            stream: true,
            forward: None,
        },
        &crate::vm::guest_binaries(),
        &guest::Extras {
            host_programs: &[PathBuf::from("/usr/bin/bpftrace")],
            extra_mem_mib: 512,
        },
    )?;
    println!(
        "boot {:.1} s, command {:.1} s, status {}",
        out.boot.as_secs_f64(),
        out.command.as_secs_f64(),
        out.status
    );
    Ok(())
}
