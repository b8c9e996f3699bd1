//! One guest boot: the init script, the QEMU command line, and the console
//! reader that streams the command's output, measures the boot and takes the
//! exit status from a marker line.
use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::kernel::Kernel;

const MARK_READY: &str = "@@DAXRACE-READY";
const MARK_EXIT: &str = "@@DAXRACE-EXIT";
const MARK_FAIL: &str = "@@DAXRACE-FAIL";
const MARK_DMESG: &str = "@@DAXRACE-DMESG";
/// Boot to a shell with DAX mounts takes 7 to 30 s under TCG; far beyond
/// that the kernel is stuck.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Each pmem device: 512 MiB of RAM reserved with `memmap=512M!<start>`.
const PMEM_MIB: u64 = 512;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Fs {
    Ext4,
    Xfs,
    Both,
}

impl Fs {
    pub fn list(self) -> &'static [&'static str] {
        match self {
            Fs::Ext4 => &["ext4"],
            Fs::Xfs => &["xfs"],
            Fs::Both => &["ext4", "xfs"],
        }
    }
}

pub struct Spec<'a> {
    pub kernel: &'a Kernel,
    pub fs: Fs,
    /// Shell code run as root in the guest (by busybox sh).
    pub script: String,
    /// Limit for the command, after boot.
    pub timeout: Duration,
    /// Print the kernel's boot messages too.
    pub verbose: bool,
    /// Print the command's output as it comes (tests keep it quiet and show
    /// it on failure).
    pub stream: bool,
    /// Network with one TCP port forward (host port on 127.0.0.1, guest
    /// port): a virtio NIC at 10.0.2.15 on QEMU's user-mode network with
    /// `restrict=on`, so the guest cannot reach the host or beyond; only the
    /// forward reaches in. None: no NIC, no network modules loaded.
    pub forward: Option<(u16, u16)>,
}

/// Lets a host thread act on a guest that [`boot_controlled`] runs: see its
/// output so far, release the guest's `wait_host`, or kill it.
#[derive(Default)]
pub struct Control {
    release: AtomicBool,
    kill: AtomicBool,
    output: Mutex<Vec<String>>,
}

impl Control {
    /// Ends the guest's `wait_host` (a line on its serial console).
    pub fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }

    /// Kills QEMU; the boot then fails with "killed by the host".
    pub fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
    }

    /// The command's output so far.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Whether a line of the command's output so far contains `pat`.
    pub fn saw(&self, pat: &str) -> bool {
        self.output
            .lock()
            .is_ok_and(|o| o.iter().any(|l| l.contains(pat)))
    }
}

/// The longest a guest's `wait_host` waits for the host's release.
const WAIT_HOST_LIMIT: Duration = Duration::from_secs(900);
/// What the host writes to the serial console to release `wait_host`.
const RELEASE_LINE: &str = "daxrace-host-release";

pub struct Outcome {
    pub status: i32,
    /// Host time from starting QEMU to the guest's ready marker (mounts done).
    pub boot: Duration,
    /// The guest's own uptime at the ready marker.
    pub guest_uptime: f64,
    /// Host time the command took.
    pub command: Duration,
    /// The command's output lines (console, CR stripped).
    pub output: Vec<String>,
    /// Kernel warnings and errors logged while the command ran.
    pub dmesg: Vec<String>,
}

/// Quotes one word for the guest's sh.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn module_params(name: &str) -> &'static str {
    match name {
        // One 128 MiB RAM disk for the non-DAX scratch ext4.
        "brd" => "rd_nr=1 rd_size=131072 max_part=0",
        // No device at load: workloads create theirs through configfs with
        // the completion delay they want.
        "null_blk" => "nr_devices=0",
        _ => "",
    }
}

fn init_script(spec: &Spec, tuning: &Tuning) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
# PID 1 of the daxrace test guest (written by `cargo xtask vm`).
export PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin HOME=/root TERM=dumb
fail() { echo "@@DAXRACE-FAIL $*"; poweroff -f; sleep 10; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpffs /sys/fs/bpf || echo "vm: warning: no bpffs"
[ -e /sys/kernel/btf/vmlinux ] || echo "vm: warning: no /sys/kernel/btf/vmlinux"
# Loopback costs nothing and 127.0.0.1 is daxrace's default --listen.
ip link set lo up 2>/dev/null || echo "vm: warning: cannot bring lo up"
"#,
    );
    for m in &spec.kernel.modules {
        let file = m.file_name().unwrap_or_default().to_string_lossy();
        let name = file.trim_end_matches(".ko");
        s += &format!(
            "insmod /lib/modules/{file} {} 2>/tmp/insmod.err || grep -q 'File exists' /tmp/insmod.err || echo \"vm: warning: insmod {name}: $(cat /tmp/insmod.err)\"\n",
            module_params(name)
        );
    }
    if spec.forward.is_some() {
        for m in &spec.kernel.net_modules {
            let file = m.file_name().unwrap_or_default().to_string_lossy();
            s += &format!(
                "insmod /lib/modules/{file} 2>/tmp/insmod.err || grep -q 'File exists' /tmp/insmod.err || echo \"vm: warning: insmod {file}: $(cat /tmp/insmod.err)\"\n"
            );
        }
        // QEMU's user-mode network: the guest is 10.0.2.15, where hostfwd
        // delivers; no route or DNS since restrict=on forbids going out.
        s += r#"i=0; while [ ! -e /sys/class/net/eth0 ]; do i=$((i+1)); [ $i -gt 100 ] && fail "no eth0: the virtio_net module or the virtio-net-pci device is missing"; sleep 0.05; done
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 || fail "cannot configure eth0"
"#;
    }
    if tuning.no_rdrand {
        // Without RDRAND the kernel's random number generator comes ready
        // only minutes in under icount, and XFS transactions cost about 20%
        // more until then (`seed_rng` in
        // daxrace/src/bin/daxrace-workload/bench.rs says why).
        s += "daxrace-workload seed-rng || fail \"cannot seed the kernel's random number generator\"\n";
    }
    s += r#"mount -t configfs configfs /sys/kernel/config 2>/dev/null
wait_dev() { i=0; while [ ! -b "$1" ]; do i=$((i+1)); [ $i -gt 100 ] && fail "no $1: the pmem (nd_e820, nd_pmem) or brd module did not create it"; sleep 0.05; done; }
mkdir -p /mnt/scratch
wait_dev /dev/ram0
/usr/sbin/mke2fs -q -F -t ext4 -E nodiscard /dev/ram0 || fail "mke2fs on /dev/ram0 failed"
mount -t ext4 /dev/ram0 /mnt/scratch || fail "cannot mount the scratch ext4"
export DAX_SCRATCH=/mnt/scratch
"#;
    for (i, fs) in spec.fs.list().iter().enumerate() {
        let dev = format!("/dev/pmem{i}");
        let mnt = format!("/mnt/{fs}");
        let mkfs = match *fs {
            "ext4" => format!("/usr/sbin/mke2fs -q -F -t ext4 -E nodiscard {dev}"),
            _ => format!("/usr/sbin/mkfs.xfs -q -f -m reflink=0 {dev}"),
        };
        let var = format!("DAX_{}", fs.to_uppercase());
        s += &format!(
            r#"wait_dev {dev}
{mkfs} || fail "mkfs {fs} on {dev} failed"
mkdir -p {mnt}
mount -t {fs} -o dax {dev} {mnt} || fail "mount -t {fs} -o dax {dev} failed"
grep " {mnt} " /proc/mounts | grep -q dax=always || fail "{fs} on {dev} is mounted without DAX (no dax=always in /proc/mounts): $(grep " {mnt} " /proc/mounts)"
export {var}={mnt}
"#
        );
    }
    s += &format!(
        r#"export DAX_FS="{fs}"
# For scripts that act together with a host thread (boot_controlled): block
# until the host releases the guest, at most {wait_limit} s.
wait_host() {{ read -t {wait_limit} -r _ </dev/console; }}
dmesg_lines=$(dmesg | wc -l)
echo "{MARK_READY} $(cut -d' ' -f1 /proc/uptime)"
cd /root
(
{script}
) </dev/null
rc=$?
echo "{MARK_EXIT} $rc"
echo "{MARK_DMESG}"
dmesg -r | tail -n +$((dmesg_lines + 1)) | grep '^<[0-4]>'
echo "{MARK_DMESG}"
poweroff -f
sleep 10
"#,
        fs = spec.fs.list().join(" "),
        script = spec.script,
        wait_limit = WAIT_HOST_LIMIT.as_secs(),
    );
    s
}

/// Boots the kernel with the command and waits for it.
pub fn boot(spec: &Spec, binaries: &[PathBuf]) -> Result<Outcome> {
    boot_inner(spec, binaries, &Extras::default(), &[], None)
}

/// [`boot`] with more files in the guest: (guest path, host file).
pub fn boot_with_files(
    spec: &Spec,
    binaries: &[PathBuf],
    files: &[(String, PathBuf)],
) -> Result<Outcome> {
    boot_inner(spec, binaries, &Extras::default(), files, None)
}

/// How QEMU runs a bench guest to make its figures repeat: the VM tests
/// keep the default (none of this), only `cargo xtask bench` sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// `-icount shift=N,sleep=off`: the guest's clock advances 2^N ns per
    /// executed instruction, so rates per guest second count guest
    /// instructions whatever the host's load. (QEMU 7.2 refuses
    /// `thread=multi`, and `align=on` with `sleep=off`; `shift=auto` adapts
    /// to the host's speed and so does not repeat.)
    pub icount: Option<u32>,
    /// Keep RDRAND and RDSEED out of the CPU model (`-cpu max,-rdrand,-rdseed`):
    /// the kernel's random numbers then come from code that runs the same
    /// way every boot.
    pub no_rdrand: bool,
    /// `nokaslr` on the kernel command line: the same addresses every boot.
    pub nokaslr: bool,
}

impl Tuning {
    /// Guest nanoseconds per guest instruction, under icount.
    pub fn ns_per_instruction(&self) -> Option<f64> {
        self.icount.map(|s| f64::from(1u32 << s.min(10)))
    }

    /// How much longer than untuned host-side deadlines must be: under icount
    /// TCG runs slower (every translation block counts its instructions),
    /// and a guest second is 1e9 / 2^shift instructions, so at shifts below
    /// 3 each guest second takes longer still on the host.
    pub fn host_time_scale(&self) -> u32 {
        match self.icount {
            None => 1,
            Some(s) => 4 * (1u32 << 3u32.saturating_sub(s)),
        }
    }

    /// The boot deadline: boots count the same instructions whatever the
    /// shift, so only the TCG slow-down applies (180 s was hit once under
    /// icount by the bench's large initramfs).
    pub fn boot_timeout(&self) -> Duration {
        BOOT_TIMEOUT * if self.icount.is_some() { 4 } else { 1 }
    }

    /// The QEMU CPU option for TCG.
    fn tcg_cpu(&self) -> &'static str {
        if self.no_rdrand {
            "max,-rdrand,-rdseed"
        } else {
            "max"
        }
    }

    /// For table headers: "icount shift=3,sleep=off; -cpu max,-rdrand,-rdseed; nokaslr".
    pub fn describe(&self) -> String {
        let mut v = vec![match self.icount {
            Some(s) => format!("-icount shift={s},sleep=off"),
            None => "no icount (TCG wall time)".to_string(),
        }];
        v.push(format!("-cpu {}", self.tcg_cpu()));
        v.push(if self.nokaslr { "nokaslr" } else { "KASLR on" }.to_string());
        v.join("; ")
    }
}

/// What a few boots need beyond the usual guest (the bench's bpftrace).
#[derive(Default, Clone, Copy)]
pub struct Extras<'a> {
    /// Host programs copied to the same path in the guest, with the shared
    /// libraries `ldd` lists for them.
    pub host_programs: &'a [PathBuf],
    /// RAM added to the guest's usual 1.5 GiB (MiB): large programs such as
    /// bpftrace (LLVM, about 200 MB of libraries) live in the initramfs.
    pub extra_mem_mib: u64,
    /// QEMU tuning (the bench's; the VM tests leave the default).
    pub tuning: Tuning,
}

/// [`boot`] with extra host programs and RAM.
pub fn boot_with(spec: &Spec, binaries: &[PathBuf], extras: &Extras) -> Result<Outcome> {
    boot_inner(spec, binaries, extras, &[], None)
}

/// [`boot`] under a host thread's control (typically run in a scoped thread
/// while the host talks to the guest through `Spec::forward`).
pub fn boot_controlled(spec: &Spec, binaries: &[PathBuf], ctl: &Control) -> Result<Outcome> {
    boot_inner(spec, binaries, &Extras::default(), &[], Some(ctl))
}

fn boot_inner(
    spec: &Spec,
    binaries: &[PathBuf],
    extras: &Extras,
    files: &[(String, PathBuf)],
    ctl: Option<&Control>,
) -> Result<Outcome> {
    let cache = super::kernel::cache_dir();
    let work = cache.join("run");
    std::fs::create_dir_all(&work)?;
    let initrd = work.join(format!("initramfs-{}.cpio", std::process::id()));
    let script = init_script(spec, &extras.tuning);
    let modules: Vec<PathBuf> = if spec.forward.is_some() {
        let mut m = spec.kernel.modules.clone();
        m.extend(spec.kernel.net_modules.iter().cloned());
        m
    } else {
        spec.kernel.modules.clone()
    };
    super::initramfs::build(
        &initrd,
        &super::initramfs::Contents {
            init_script: &script,
            modules: &modules,
            binaries,
            host_programs: extras.host_programs,
            extra_files: files,
        },
    )?;
    let res = run_qemu(spec, &initrd, extras, ctl);
    let _ = std::fs::remove_file(&initrd);
    res
}

/// Boots a ready-made initramfs (the systemd test's Debian userland), which
/// the caller keeps or removes. Its init prints the same markers.
pub fn boot_initrd(spec: &Spec, initrd: &Path, extra_mem_mib: u64) -> Result<Outcome> {
    let extras = Extras {
        extra_mem_mib,
        ..Extras::default()
    };
    run_qemu(spec, initrd, &extras, None)
}

/// How QEMU runs the guest's CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Emulated (what works on these machines: docs/toolchain.md).
    #[default]
    Tcg,
    /// Hardware virtualisation, on a host where /dev/kvm works: times come
    /// close to native, so overhead ratios mean what they would on metal.
    Kvm,
}

static ACCEL: std::sync::OnceLock<Accel> = std::sync::OnceLock::new();

/// Chooses the accelerator for every guest this process boots (before the
/// first boot; TCG otherwise).
pub fn set_accel(accel: Accel) {
    let _ = ACCEL.set(accel);
}

fn qemu_command(spec: &Spec, initrd: &Path, extras: &Extras, controlled: bool) -> Command {
    let (extra_mem_mib, tuning) = (extras.extra_mem_mib, extras.tuning);
    let n = spec.fs.list().len() as u64;
    // RAM: 1 GiB for the kernel and the workloads, then the pmem ranges,
    // then 512 MiB and any extra above them.
    let mem_mib = 1024 + n * PMEM_MIB + 512 + extra_mem_mib;
    let memmap: Vec<String> = (0..n)
        .map(|i| format!("memmap={PMEM_MIB}M!{}M", 1024 + i * PMEM_MIB))
        .collect();
    let append = format!(
        // quiet: only errors reach the (slow, emulated) serial console while
        // booting; warnings are collected from dmesg after the command.
        // cryptomgr.notests saves about 1.4 s; panic=-1 with -no-reboot turns
        // a panic into QEMU's exit.
        "console=ttyS0 {}panic=-1 cryptomgr.notests {}{}",
        if spec.verbose { "" } else { "quiet " },
        if tuning.nokaslr { "nokaslr " } else { "" },
        memmap.join(" ")
    );
    let mut c = Command::new("qemu-system-x86_64");
    let (accel, cpu) = match ACCEL.get().copied().unwrap_or_default() {
        Accel::Tcg => ("tcg", tuning.tcg_cpu()),
        Accel::Kvm => ("kvm", "host"),
    };
    c.args(["-accel", accel, "-cpu", cpu, "-smp", "1"])
        .args(["-m", &format!("{mem_mib}M")])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&spec.kernel.boot_image)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        // A controlled guest hears the host on its serial console.
        .stdin(if controlled {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(shift) = tuning.icount {
        c.args(["-icount", &format!("shift={shift},sleep=off")]);
    }
    if let Some((host, guest)) = spec.forward {
        // restrict=on isolates the guest (no connection out, not even to the
        // host) and leaves explicit forwards working. The host side binds
        // 127.0.0.1 only. romfile= skips the PXE ROM nobody boots from.
        c.args([
            "-netdev",
            &format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{host}-:{guest}"),
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
    }
    c
}

enum Line {
    Out(String),
    Err(String),
    Eof,
}

fn run_qemu(spec: &Spec, initrd: &Path, extras: &Extras, ctl: Option<&Control>) -> Result<Outcome> {
    let start = Instant::now();
    let boot_timeout = extras.tuning.boot_timeout();
    let mut child = qemu_command(spec, initrd, extras, ctl.is_some())
        .spawn()
        .context("cannot start qemu-system-x86_64: run `cargo xtask setup` (qemu-system-x86)")?;
    let mut console_in = child.stdin.take();
    let mut released = false;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            let l = String::from_utf8_lossy(&l)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(Line::Out(l)).is_err() {
                return;
            }
        }
        let _ = tx.send(Line::Eof);
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx2.send(Line::Err(l)).is_err() {
                return;
            }
        }
    });

    let mut boot_log: VecDeque<String> = VecDeque::new();
    let mut ready: Option<(Instant, f64)> = None;
    let mut status: Option<(i32, Instant)> = None;
    let mut in_dmesg = false;
    let mut output = Vec::new();
    let mut dmesg = Vec::new();
    let mut qemu_err = Vec::new();
    let stdout = std::io::stdout();
    let result = loop {
        let deadline = match (ready, status) {
            (None, _) => start + boot_timeout,
            (Some((t, _)), None) => t + spec.timeout,
            // After the exit marker only the warnings and poweroff remain.
            (Some(_), Some((_, t))) => t + Duration::from_secs(30),
        };
        if let Some(ctl) = ctl {
            if ctl.kill.load(Ordering::SeqCst) {
                let _ = child.kill();
                break Err(anyhow::anyhow!("guest killed by the host"));
            }
            if !released && ctl.release.load(Ordering::SeqCst) {
                released = true;
                if let Some(w) = console_in.as_mut() {
                    // A failed write shows as wait_host's timeout in the guest.
                    let _ = writeln!(w, "{RELEASE_LINE}").and_then(|()| w.flush());
                }
            }
        }
        let now = Instant::now();
        // A controlled guest: wake up often enough to see the host's requests.
        let wait = match ctl {
            Some(_) => (deadline - now.min(deadline)).min(Duration::from_millis(100)),
            None => deadline - now.min(deadline),
        };
        let msg = if now >= deadline {
            Err(mpsc::RecvTimeoutError::Timeout)
        } else {
            match rx.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                m => m,
            }
        };
        match msg {
            Ok(Line::Out(l)) => {
                // Markers are looked for only where they can come, so that a
                // command printing one cannot confuse the harness.
                if ready.is_none() {
                    if let Some(rest) = find_marker(&l, MARK_READY) {
                        ready = Some((Instant::now(), rest.trim().parse().unwrap_or(0.0)));
                    } else if let Some(rest) = find_marker(&l, MARK_FAIL) {
                        break Err(anyhow::anyhow!("guest set-up failed: {}", rest.trim()));
                    } else {
                        if spec.verbose {
                            println!("{l}");
                        }
                        boot_log.push_back(l);
                        if boot_log.len() > 60 {
                            boot_log.pop_front();
                        }
                    }
                } else if status.is_none() {
                    if let Some(rest) = find_marker(&l, MARK_EXIT) {
                        status = Some((rest.trim().parse().unwrap_or(255), Instant::now()));
                    } else {
                        if spec.stream {
                            let mut o = stdout.lock();
                            let _ = writeln!(o, "{l}");
                            let _ = o.flush();
                        }
                        if let Some(ctl) = ctl {
                            if let Ok(mut o) = ctl.output.lock() {
                                o.push(l.clone());
                            }
                        }
                        output.push(l);
                    }
                } else if find_marker(&l, MARK_DMESG).is_some() {
                    // The second marker ends the kernel's warnings.
                    if in_dmesg {
                        break Ok(());
                    }
                    in_dmesg = true;
                } else if in_dmesg && !l.trim().is_empty() {
                    dmesg.push(l);
                }
            }
            Ok(Line::Err(l)) => qemu_err.push(l),
            Ok(Line::Eof) => break Ok(()),
            Err(_) => {
                let _ = child.kill();
                let what = if ready.is_none() {
                    format!("the guest did not boot within {} s", boot_timeout.as_secs())
                } else if status.is_none() {
                    format!(
                        "the guest command did not finish within {} s (a task is probably stuck in the kernel; raise --timeout if it was just slow); guest killed",
                        spec.timeout.as_secs()
                    )
                } else {
                    break Ok(()); // finished; only poweroff hung
                };
                break Err(anyhow::anyhow!(what));
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let boot_tail = || {
        boot_log
            .iter()
            .chain(qemu_err.iter())
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Err(e) = result {
        if ready.is_none() && !spec.verbose {
            eprintln!("vm: last console lines:\n{}", boot_tail());
        }
        return Err(e);
    }
    let Some((ready_at, guest_uptime)) = ready else {
        bail!(
            "the guest stopped before it was ready (kernel panic or QEMU error); last console lines:\n{}",
            boot_tail()
        );
    };
    let Some((status, exit_at)) = status else {
        bail!(
            "the guest stopped while the command ran (kernel panic?); last lines:\n{}",
            output
                .iter()
                .rev()
                .take(40)
                .rev()
                .chain(qemu_err.iter())
                .map(|l| format!("  | {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    };
    Ok(Outcome {
        status,
        boot: ready_at - start,
        guest_uptime,
        command: exit_at - ready_at,
        output,
        dmesg,
    })
}

/// The marker may follow kernel text on the same console line.
fn find_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

#[cfg(test)]
pub(crate) mod tests {

    /// The guest runs busybox sh: a script must at least parse there.
    pub(crate) fn assert_sh_parses(script: &str) {
        let bb = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox (busybox-static) is missing: run `cargo xtask setup`");
        let out = Command::new(bb)
            .args(["sh", "-n", "-c", script])
            .output()
            .expect("run busybox sh -n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("daxrace"), "daxrace");
        assert_eq!(shell_quote("--dir=/mnt/ext4"), "--dir=/mnt/ext4");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$X"), "'$X'");
    }

    #[test]
    fn init_script_parses() {
        let k = Kernel {
            pkg: "linux-image-x".into(),
            version: "1".into(),
            release: "1".into(),
            boot_image: PathBuf::from("/nonexistent"),
            modules: vec![PathBuf::from("/m/nd_pmem.ko"), PathBuf::from("/m/brd.ko")],
            net_modules: vec![PathBuf::from("/m/virtio_net.ko")],
            fetch_time: Duration::ZERO,
            config: None,
        };
        let spec = Spec {
            kernel: &k,
            fs: Fs::Both,
            script: "daxrace-workload pin-punch 'a b'".into(),
            timeout: Duration::from_secs(1),
            verbose: false,
            stream: false,
            forward: Some((20000, 9712)),
        };
        let script = init_script(&spec, &Tuning::default());
        assert!(script.contains("insmod /lib/modules/brd.ko rd_nr=1"));
        assert!(script.contains("insmod /lib/modules/virtio_net.ko"));
        assert!(script.contains("export DAX_XFS=/mnt/xfs"));
        assert!(!script.contains("seed-rng"));
        assert_sh_parses(&script);
        let no_rdrand = Tuning {
            no_rdrand: true,
            ..Tuning::default()
        };
        let seeded = init_script(&spec, &no_rdrand);
        assert!(seeded.contains("daxrace-workload seed-rng ||"));
        assert_sh_parses(&seeded);
    }

    #[test]
    fn only_a_tuned_guest_counts_instructions() {
        let k = Kernel {
            pkg: "linux-image-x".into(),
            version: "1".into(),
            release: "1".into(),
            boot_image: PathBuf::from("/nonexistent"),
            modules: vec![],
            net_modules: vec![],
            fetch_time: Duration::ZERO,
            config: None,
        };
        let spec = Spec {
            kernel: &k,
            fs: Fs::Ext4,
            script: String::new(),
            timeout: Duration::from_secs(1),
            verbose: false,
            stream: false,
            forward: None,
        };
        let args = |extras: &Extras| -> Vec<String> {
            qemu_command(&spec, Path::new("/i"), extras, false)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        // The VM tests' guests: as before.
        let plain = args(&Extras::default());
        assert!(!plain.iter().any(|a| a == "-icount"));
        assert!(plain.iter().any(|a| a == "max"));
        assert!(!plain.iter().any(|a| a.contains("nokaslr")));
        let tuning = Tuning {
            icount: Some(3),
            no_rdrand: true,
            nokaslr: true,
        };
        let tuned = args(&Extras {
            tuning,
            ..Extras::default()
        });
        let i = tuned.iter().position(|a| a == "-icount").expect("-icount");
        assert_eq!(tuned[i + 1], "shift=3,sleep=off");
        assert!(tuned.iter().any(|a| a == "max,-rdrand,-rdseed"));
        assert!(tuned.iter().any(|a| a.contains(" nokaslr ")));
        assert_eq!(tuning.ns_per_instruction(), Some(8.0));
        assert_eq!(tuning.host_time_scale(), 4);
        assert_eq!(
            Tuning {
                icount: Some(0),
                ..tuning
            }
            .host_time_scale(),
            32
        );
        assert_eq!(Tuning::default().host_time_scale(), 1);
        assert!(tuning.boot_timeout() > BOOT_TIMEOUT);
        assert_eq!(
            tuning.describe(),
            "-icount shift=3,sleep=off; -cpu max,-rdrand,-rdseed; nokaslr"
        );
    }

    #[test]
    fn markers_anywhere_in_a_line() {
        assert_eq!(
            find_marker("[ 1.0] x @@DAXRACE-EXIT 3", MARK_EXIT),
            Some(" 3")
        );
        assert_eq!(find_marker("nothing", MARK_EXIT), None);
    }
}
