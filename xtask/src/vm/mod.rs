//! `cargo xtask vm`, `cargo xtask demo` and the VM tests: real Debian
//! kernels under QEMU (TCG) with emulated pmem and DAX mounts.
//!
//! The guest is a small initramfs (busybox, our binaries, mkfs tools, the
//! kernel's modules): no 9p modules to load, nothing shared with the host,
//! and about 8 s from QEMU start to DAX mounts on 6.1.
mod apt;
mod coexist;
mod dmesg;
mod doctor;
pub(crate) mod guest;
mod initramfs;
pub(crate) mod kernel;
mod kmod;
mod livepatch;
mod prometheus;
mod race2018;
mod systemd;
mod tests;
mod wakefix;

use std::{
    io::Read,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use guest::Fs;

#[derive(clap::Args)]
pub struct VmArgs {
    /// Kernel: a series, 6.1 (bookworm), 6.12 (trixie, bookworm-backports),
    /// 6.16 to 7.3 (trixie-backports, forky, sid), newest, rc
    /// (experimental's release candidate), or one build by image package
    /// (linux-image-6.16.12+deb13-amd64) or package version
    /// (6.16.12-1~bpo13+1). Default: newest; with --test: every tested series.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Run the VM tests (what `cargo xtask test` runs after its other steps)
    /// instead of a command.
    #[arg(long, conflicts_with = "cmd")]
    pub test: bool,
    /// List the Debian kernel series on the mirror, the newest build of
    /// each and whether it can boot here (and why not), then exit.
    #[arg(long, conflicts_with_all = ["cmd", "test"])]
    pub list_kernels: bool,
    /// Run only the old-kernel check (part of --all-kernels): Debian 11's
    /// 5.10, below what every hook needs; `daxrace probes` must attach what
    /// it can and name the kernel as too old for the rest.
    #[arg(long, conflicts_with_all = ["cmd", "test"])]
    pub old_kernel: bool,
    /// With --test: also the pin-and-punch checks on 6.16, 6.17, 6.18, 7.2
    /// and experimental's release candidate (`cargo xtask test --all-kernels`).
    #[arg(long, requires = "test")]
    pub all_kernels: bool,
    /// Run only the end-to-end test in which a Prometheus server on the
    /// host scrapes `daxrace run` in the guest (default kernel: newest).
    #[arg(long, conflicts_with_all = ["cmd", "test"])]
    pub prometheus: bool,
    /// Run only the live-patch test: a live patch of ext4_break_layouts
    /// (xtask/kmod/count_patch, built against the kernel's Debian headers)
    /// loaded before and while daxrace runs (default: every tested series).
    #[arg(long, conflicts_with_all = ["cmd", "test", "prometheus"])]
    pub livepatch: bool,
    /// Run only the coexistence test: bpftrace on the same functions at the
    /// same time, then attach/detach cycles of `daxrace run` under load
    /// (default: every tested series).
    #[arg(long, conflicts_with_all = ["cmd", "test", "prometheus", "livepatch"])]
    pub coexist: bool,
    /// Run only the systemd test: the Debian package (`cargo xtask deb`)
    /// installed with apt in a Debian userland with systemd as PID 1,
    /// enabled, scraped, killed, stopped and removed (default: every tested
    /// series).
    #[arg(long, conflicts_with_all = ["cmd", "test", "prometheus", "livepatch", "coexist"])]
    pub systemd: bool,
    /// Run only the 2018-race test: a live patch (xtask/kmod/fault_patch)
    /// puts the 2018 break-layouts loop back, a workload makes the race
    /// complete, and daxrace is judged against the patch's counters and the
    /// kernel's WARN (default: every tested series).
    #[arg(long, conflicts_with_all = ["cmd", "test", "prometheus", "livepatch", "coexist", "systemd"])]
    pub race2018: bool,
    /// Run only the 6.1 lost wake-up A/B: pin-punch under daxrace with no
    /// patch, with the live patch xtask/kmod/wake_fix (`fix=1`: pages
    /// released with put_page) and with its control (`fix=0`); on other
    /// series it says the bug is 6.1-only (default: every tested series).
    #[arg(long, conflicts_with_all = ["cmd", "test", "prometheus", "livepatch", "coexist", "systemd", "race2018"])]
    pub wakefix: bool,
    /// Run only the `daxrace doctor` test: on 6.1 a breaker left asleep by
    /// the lost wake-up must be named as such (exit 10) and the remedy must
    /// free it; on later series slow-pin's waits must read "waiting on a
    /// pinned page"; with no waiter "nothing waiting" (default: every
    /// tested series).
    #[arg(long, conflicts_with_all = ["cmd", "test", "prometheus", "livepatch", "coexist", "systemd", "race2018", "wakefix"])]
    pub doctor: bool,
    /// DAX filesystems to create and mount (both: ext4 on /dev/pmem0, xfs on /dev/pmem1).
    #[arg(long, value_enum, default_value = "both")]
    pub fs: Fs,
    /// Seconds the command may run before the guest is killed.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Show the kernel's boot messages (with --livepatch: the guests'
    /// output and kernel warnings, also when the test passes).
    #[arg(long, short)]
    pub verbose: bool,
    /// Command run as root in the guest (PATH holds daxrace and
    /// daxrace-workload; env: DAX_EXT4, DAX_XFS, DAX_SCRATCH, DAX_FS).
    /// Arguments are quoted one by one; use `sh -c '...'` for shell syntax.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Kernel series to boot.
    #[arg(long, default_value = "newest")]
    pub kernel: String,
    /// Seconds of pin-and-punch workload per filesystem.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// The binaries the guest gets in /usr/local/bin.
pub(crate) fn guest_binaries() -> Vec<std::path::PathBuf> {
    ["daxrace", "daxrace-workload"]
        .iter()
        .map(|b| crate::setup::release_bin(b))
        .collect()
}

pub fn run(args: VmArgs) -> Result<i32> {
    if args.list_kernels {
        tests::print_mirror_series();
        return Ok(0);
    }
    if args.old_kernel {
        println!("{}", tests::old_kernel_check()?);
        return Ok(0);
    }
    if args.test {
        match &args.kernel {
            Some(k) => tests::test_series(&[k.as_str()])?,
            None => tests::test_all(args.all_kernels)?,
        }
        return Ok(0);
    }
    if args.prometheus {
        let r = prometheus::prometheus_e2e(args.kernel.as_deref().unwrap_or("newest"))?;
        println!("{r}");
        return Ok(0);
    }
    let guest_test = [
        ("livepatch", args.livepatch),
        ("race2018", args.race2018),
        ("wakefix", args.wakefix),
        ("doctor", args.doctor),
        ("coexist", args.coexist),
        ("systemd", args.systemd),
    ]
    .into_iter()
    .find_map(|(name, chosen)| chosen.then_some(name));
    if let Some(name) = guest_test {
        tests::run_guest_test(name, args.kernel.as_deref(), args.verbose)?;
        return Ok(0);
    }
    let k = kernel::fetch(args.kernel.as_deref().unwrap_or("newest"))?;
    eprintln!(
        "vm: kernel {} {} ({}){}",
        k.pkg,
        k.version,
        k.release,
        if k.fetch_time > Duration::from_millis(500) {
            format!(", fetched in {:.1} s", k.fetch_time.as_secs_f64())
        } else {
            String::new()
        }
    );
    let script = if args.cmd.is_empty() {
        "echo 'vm: no command given; mounts:'; grep -E 'pmem|ram0' /proc/mounts".to_string()
    } else {
        args.cmd
            .iter()
            .map(|a| guest::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let out = guest::boot(
        &guest::Spec {
            kernel: &k,
            fs: args.fs,
            script,
            timeout: Duration::from_secs(args.timeout),
            verbose: args.verbose,
            stream: true,
            forward: None,
        },
        &guest_binaries(),
    )?;
    print_dmesg(&out.dmesg);
    eprintln!(
        "vm: boot {:.1} s (guest uptime {:.1} s), command {:.1} s, exit status {}",
        out.boot.as_secs_f64(),
        out.guest_uptime,
        out.command.as_secs_f64(),
        out.status
    );
    Ok(out.status)
}

fn print_dmesg(lines: &[String]) {
    if !lines.is_empty() {
        eprintln!("vm: kernel warnings and errors while the command ran:");
        for l in lines {
            eprintln!("  | {l}");
        }
    }
}

pub fn demo(args: DemoArgs) -> Result<()> {
    tests::demo(&args)
}

/// Runs the VM tests on every supported kernel series (`all_kernels`: and
/// the pin-and-punch checks on the extra ones).
pub fn test_all(all_kernels: bool) -> Result<()> {
    tests::test_all(all_kernels)
}

/// Runs a host command to completion with a time limit, capturing its output.
pub(crate) fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{cmd:?} did not finish within {} s; killed",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Runs a quick host command, failing with its stderr.
pub(crate) fn check(cmd: &mut Command) -> Result<()> {
    let out = run_with_timeout(cmd, Duration::from_secs(300))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
