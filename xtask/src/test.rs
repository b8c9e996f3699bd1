//! `cargo xtask test`: the README's test command and what CI runs.
use std::time::Instant;

use anyhow::Result;

use crate::{setup, vm};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the VM tests (quick local runs; CI runs everything).
    #[arg(long)]
    pub no_vm: bool,
    /// Also run the pin-and-punch VM checks on 6.16, 6.17, 6.18, 7.2 and
    /// experimental's release candidate (beside 6.1, 6.12 and the newest).
    #[arg(long, conflicts_with = "no_vm")]
    pub all_kernels: bool,
}

/// Steps passed so far, for the closing summary line.
static PASSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("==> {name}");
    let t = Instant::now();
    if let Err(e) = f() {
        println!(
            "summary: {} passed, 1 failed",
            PASSED.load(std::sync::atomic::Ordering::Relaxed)
        );
        return Err(e.context(format!("test step `{name}` failed")));
    }
    PASSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    println!("==> {name}: ok ({:.1}s)", t.elapsed().as_secs_f64());
    Ok(())
}

pub fn run(args: TestArgs) -> Result<()> {
    let root = setup::workspace_root();
    let t = Instant::now();
    step("setup", setup::setup)?;
    step("format", || {
        setup::run(
            setup::cargo()
                .current_dir(&root)
                .args(["fmt", "--all", "--check"]),
        )
    })?;
    step("clippy", || {
        setup::run(setup::cargo().current_dir(&root).args([
            "clippy",
            // default-members: the eBPF crate only builds for the BPF target.
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step(
        "unit, model and host kernel round-trip tests (cargo test)",
        // default-members: the eBPF crate has no host test target.
        || setup::run(setup::cargo().current_dir(&root).args(["test"])),
    )?;
    if args.no_vm {
        println!("==> VM tests skipped (--no-vm)");
    } else {
        step("release build for the VM", setup::build_release)?;
        let all = args.all_kernels;
        step("VM tests on every supported kernel series", || {
            vm::test_all(all)
        })?;
    }
    println!("==> all tests passed in {:.0}s", t.elapsed().as_secs_f64());
    println!(
        "summary: {} passed, 0 failed",
        PASSED.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
