//! `cargo xtask setup`: everything a fresh machine of this kind lacks.
//! Each step checks first and says what it installs and why.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Debian packages and what they are for.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "rustc with a prebuilt core for bpfel-unknown-none",
    ),
    ("cargo-web", "the cargo that drives that rustc"),
    ("libstd-rust-web-dev-bpf", "core for the BPF target"),
    ("llvm-22-dev", "LLVM for bpf-linker"),
    (
        "qemu-system-x86",
        "booting Debian kernels with emulated pmem",
    ),
    ("busybox-static", "the guest's userland"),
    ("kmod", "depmod/modprobe for guest modules"),
    (
        "zstd",
        "unpacking zstd-compressed kernels (trixie and newer) for the VM",
    ),
    (
        "xz-utils",
        "unpacking xz-compressed kernels and .ko.xz modules for the VM",
    ),
    (
        "debian-archive-keyring",
        "verifying the Debian suites the VM kernels come from",
    ),
    ("xfsprogs", "mkfs.xfs for DAX mounts"),
    ("e2fsprogs", "mkfs.ext4 for DAX mounts"),
    (
        "prometheus",
        "the real Prometheus server and promtool for the metrics tests",
    ),
    ("systemd", "systemd-analyze, to verify the daemon's unit"),
    (
        "dpkg-dev",
        "dpkg-shlibdeps, for the Debian package's Depends (cargo xtask deb)",
    ),
    ("lintian", "checking the Debian package (cargo xtask deb)"),
    (
        "bpftrace",
        "the equivalent bpftrace script `cargo xtask bench` compares daxrace with",
    ),
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs a command, failing with its name and status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin")
}

fn bpf_linker_ok() -> bool {
    Command::new(cargo_bin_dir().join("bpf-linker"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

/// How long apt-get waits for another apt's lock (seconds).
const APT_LOCK_WAIT: &str = "DPkg::Lock::Timeout=900";

pub fn setup() -> Result<()> {
    let missing: Vec<_> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "setup needs root to install Debian packages {}: run `sudo cargo xtask setup`",
                missing
                    .iter()
                    .map(|(p, _)| *p)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        println!("setup: installing Debian packages (first run only):");
        for (p, why) in &missing {
            println!("  {p:<26} {why}");
        }
        // Waits for another apt (a second xtask, unattended upgrades)
        // instead of failing on its lock.
        run(Command::new("apt-get").args(["-o", APT_LOCK_WAIT, "update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["-o", APT_LOCK_WAIT, "install", "-y", "-q"])
            .args(missing.iter().map(|(p, _)| *p))
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !bpf_linker_ok() {
        println!(
            "setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (first run only, about 2 minutes)"
        );
        run(cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

/// Builds the release binaries the VM and the demo run.
pub fn build_release() -> Result<()> {
    run(cargo().current_dir(workspace_root()).args([
        "build",
        "--release",
        "--package",
        "daxrace",
        "--bins",
    ]))
}

/// Where `build_release` puts a binary.
pub fn release_bin(name: &str) -> PathBuf {
    workspace_root().join("target/release").join(name)
}
