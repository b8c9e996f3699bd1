//! The package under a real systemd (`cargo xtask vm --systemd`): a Debian
//! bookworm userland with systemd as PID 1 boots the Debian kernel of a
//! series with emulated pmem and DAX mounts, installs the package built by
//! `cargo xtask deb` with apt, and checks what an operator relies on: the
//! install starts nothing, `systemctl enable --now` attaches every hook with
//! the flavour `daxrace probes` chooses as root, the daemon then holds only
//! CAP_BPF, CAP_PERFMON and CAP_SYSLOG in a network namespace of its own,
//! /metrics answers through daxrace.socket, the pin-and-punch workload moves
//! the counters, `systemctl kill -s KILL` is followed by a restart that
//! attaches again, `systemctl stop` (socket included) and `apt remove` leave
//! no BPF program, and the kernel logs no fault. The unit's sandboxing runs
//! for real.
//!
//! The guest's root is an initramfs: the cached rootfs (mmdebstrap, as a
//! newc cpio) followed by a small per-run archive (an /init that loads the
//! kernel's modules, makes and mounts the DAX filesystems and execs
//! systemd; the test unit and its script; the package; the workload), which
//! the kernel unpacks over it.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{
    guest::{self, Fs},
    initramfs::Cpio,
    kernel,
};

/// The userland's Debian release (any systemd of it runs any tested kernel).
const SUITE: &str = "bookworm";
/// Besides minbase: systemd as PID 1, udev for the pmem and RAM disks, the
/// mkfs tools, curl for the scrape, procps for ps, kmod for insmod.
const ROOTFS_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "procps",
    "curl",
    "e2fsprogs",
    "xfsprogs",
];
/// Bumped when the rootfs recipe changes, so that a cached one is rebuilt.
const ROOTFS_RECIPE: u32 = 1;
/// Units that would compete for the serial console or wake up during the
/// test (apt's and e2scrub's timers).
const MASKED: &[&str] = &[
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
];
/// The guest's limit, after systemd started the test unit: three attaches,
/// two workloads, apt twice.
const GUEST_TIMEOUT: Duration = Duration::from_secs(1500);
/// Seconds of pin-and-punch per filesystem.
const WORKLOAD_SECONDS: u64 = 6;
/// The rootfs lives in RAM beside the usual guest.
const EXTRA_MEM_MIB: u64 = 768;

/// A cached bookworm rootfs with systemd, as a newc cpio; built once.
fn ensure_rootfs(vm_cache: &Path) -> Result<PathBuf> {
    let name = format!("{SUITE}-systemd-{ROOTFS_RECIPE}");
    let dir = vm_cache.join("chroots").join(&name);
    let cpio = vm_cache.join("chroots").join(format!("{name}.cpio"));
    if cpio.exists() {
        return Ok(cpio);
    }
    let _lock = kernel::Lock::take(&vm_cache.join("lock"))?;
    if cpio.exists() {
        return Ok(cpio);
    }
    let masks = MASKED
        .iter()
        .map(|u| format!("ln -sf /dev/null \"$1/etc/systemd/system/{u}\""))
        .collect::<Vec<_>>()
        .join("; ");
    super::kmod::create_debian_tree(
        vm_cache,
        SUITE,
        ROOTFS_PACKAGES,
        &dir,
        &[
            "--aptopt=APT::Install-Recommends \"false\"".to_string(),
            format!(
                "--customize-hook={masks}; echo daxrace-vm > \"$1/etc/hostname\"; rm -rf \"$1\"/var/cache/apt/*.bin \"$1\"/var/cache/apt/archives/*.deb"
            ),
        ],
        "for the systemd test's guest (once, a few minutes)",
    )?;
    // busybox's cpio keeps owners, modes and symlinks as they are.
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox is missing: run `cargo xtask setup` (busybox-static)")?;
    let part = cpio.with_extension("part");
    let out = Command::new("sh")
        .current_dir(&dir)
        .arg("-c")
        .arg(format!(
            "find . -xdev ! -path './dev/*' | LC_ALL=C sort | {busybox} cpio -o -H newc > '{}'",
            part.display()
        ))
        .output()
        .context("packing the rootfs with busybox cpio")?;
    if !out.status.success() {
        bail!(
            "packing {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&part, &cpio).with_context(|| format!("renaming {}", part.display()))?;
    Ok(cpio)
}

fn module_params(name: &str) -> &'static str {
    match name {
        // One 128 MiB RAM disk: the non-DAX scratch ext4 the workload's
        // O_DIRECT source file lives on.
        "brd" => "rd_nr=1 rd_size=131072 max_part=0",
        "null_blk" => "nr_devices=0",
        _ => "",
    }
}

/// PID 1 until systemd takes over.
fn init_script() -> String {
    r#"#!/bin/sh
# PID 1 of the systemd test guest until it execs systemd (written by
# `cargo xtask vm --systemd`): the DAX set-up the other VM tests do, then
# a real init.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "@@DAXRACE-FAIL $*"; echo o > /proc/sysrq-trigger; sleep 10; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
while read -r m params; do
  insmod "/usr/lib/modules/daxrace-vm/$m" $params 2>/run/insmod.err || grep -q 'File exists' /run/insmod.err || echo "vm: warning: insmod $m: $(cat /run/insmod.err)"
done < /usr/lib/modules/daxrace-vm/order
wait_dev() { i=0; while [ ! -b "$1" ]; do i=$((i+1)); [ $i -gt 200 ] && fail "no $1"; sleep 0.05; done; }
wait_dev /dev/ram0
mkdir -p /mnt/scratch /mnt/ext4 /mnt/xfs
mke2fs -q -F -t ext4 -E nodiscard /dev/ram0 && mount -t ext4 /dev/ram0 /mnt/scratch || fail "scratch ext4"
wait_dev /dev/pmem0
mke2fs -q -F -t ext4 -E nodiscard /dev/pmem0 || fail "mkfs ext4"
mount -t ext4 -o dax /dev/pmem0 /mnt/ext4 || fail "mount ext4 -o dax"
wait_dev /dev/pmem1
mkfs.xfs -q -f -m reflink=0 /dev/pmem1 || fail "mkfs xfs"
mount -t xfs -o dax /dev/pmem1 /mnt/xfs || fail "mount xfs -o dax"
grep -c dax=always /proc/mounts | grep -q 2 || fail "DAX mounts without dax=always: $(grep pmem /proc/mounts)"
exec /lib/systemd/systemd
"#
    .to_string()
}

/// The test unit: runs the script once systemd reached multi-user, with
/// its output on the serial console the host reads.
const TEST_UNIT: &str = "[Unit]
Description=daxrace systemd VM test (cargo xtask vm --systemd)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/root/vmtest.sh
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
";

/// The test proper, as root under systemd. Marker lines: `@@SD key
/// values...` for the host's checks, `@@JOURNAL` for daxrace's journal,
/// `@@M` for scraped series, `@@PROBESJSON` for `daxrace probes` as root.
fn test_script(deb_name: &str) -> String {
    format!(
        r#"#!/bin/bash
# The systemd VM test (written by `cargo xtask vm --systemd`).
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "@@DAXRACE-READY $(cut -d' ' -f1 /proc/uptime)"
dmesg_lines=$(dmesg | wc -l)
cd /root
# Our programs show in /proc/kallsyms as bpf_prog_<tag>_<name> while
# loaded; systemd's own (IPAddressDeny=, device policy) are counted apart.
ours() {{ grep -cE 'bpf_prog_[0-9a-f]+_(kp|kr|fe|fx|raw|tp)_' /proc/kallsyms; }}
all_bpf() {{ grep -c 'bpf_prog_' /proc/kallsyms; }}
attached_count() {{ journalctl -u daxrace -o cat --no-pager | grep -c 'hooks attached'; }}
wait_attached() {{ i=0; while [ "$(attached_count)" -lt "$1" ] && [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done; }}
main_pid() {{ systemctl show -p MainPID --value daxrace; }}
scrape() {{ curl -sf --max-time 20 http://127.0.0.1:9712/metrics > "$1"; echo $?; }}
base=$(ours)
echo "@@SD baseline $base $(all_bpf)"
echo "@@SD pid1 $(cat /proc/1/comm) $(systemctl is-system-running)"
echo "@@SD mounts $(grep -c 'dax=always' /proc/mounts)"

DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./{deb_name} > /tmp/apt-install.out 2>&1
echo "@@SD install $?"
tail -n 3 /tmp/apt-install.out | sed 's/^/  apt: /'
echo "@@SD after_install $(systemctl is-enabled daxrace) $(systemctl is-active daxrace) $(ours) $(systemctl is-active daxrace.socket)"

# What `daxrace run` (quiet evidence) attaches at start, as root.
daxrace probes --json --evidence quiet > /tmp/probes.json 2>/tmp/probes.err
echo "@@SD probes $?"
echo "@@PROBESJSON $(tr -d '\n' < /tmp/probes.json)"

t0=$(date +%s.%N)
systemctl enable --now daxrace
echo "@@SD enable $?"
wait_attached 1
echo "@@SD attach_seconds $(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {{ printf "%.1f", t1 - t0 }}')"
journalctl -u daxrace -o cat --no-pager | sed 's/^/@@JOURNAL /'
pid=$(main_pid)
echo "@@SD user $(ps -o user=,uid= -p "$pid")"
echo "@@SD caps $(awk '/^CapEff/ {{ print $2 }}' /proc/$pid/status) $(grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/$pid/status | tr '\n\t' '  ')"
echo "@@SD netns $(readlink /proc/$pid/ns/net) $(readlink /proc/1/ns/net)"
echo "@@SD security $(systemd-analyze security daxrace 2>/dev/null | grep -o 'Overall exposure level.*')"
echo "@@SD scrape1 $(scrape /tmp/m1) $(wc -l < /tmp/m1)"
grep -E '^daxrace_probe_attached' /tmp/m1 | sed 's/^/@@M1 /'

for fs in ext4 xfs; do
  daxrace-workload pin-punch --dir /mnt/$fs --src-dir /mnt/scratch --seconds {WORKLOAD_SECONDS} --stall-timeout 3 --max-stalls 1 > /tmp/w-$fs.out 2>&1
  echo "@@SD workload $fs $?"
done
sleep 3
echo "@@SD scrape2 $(scrape /tmp/m2) $(wc -l < /tmp/m2)"
grep -E '^daxrace_(events_total|findings_total|break_layouts_total|busy_scans_total)' /tmp/m2 | sed 's/^/@@M2 /'
journalctl -u daxrace -o cat --no-pager | grep FINDING | head -n 4 | sed 's/^/@@FINDING /'
journalctl -u daxrace -o cat --no-pager | grep 'page hook' | head -n 4 | sed 's/^/@@PAGEHOOKS /'

systemctl kill -s KILL daxrace
echo "@@SD kill $?"
i=0; while {{ [ "$(main_pid)" = "$pid" ] || [ "$(main_pid)" = 0 ]; }} && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
wait_attached 2
echo "@@SD restart $pid $(main_pid) $(systemctl show -p NRestarts --value daxrace) $(systemctl is-active daxrace) $(attached_count)"
echo "@@SD scrape3 $(scrape /tmp/m3) $(wc -l < /tmp/m3)"

systemctl stop daxrace
echo "@@SD stop $? $(systemctl is-active daxrace) $(systemctl is-active daxrace.socket)"
i=0; while [ "$(ours)" -gt "$base" ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
echo "@@SD after_stop $(ours) $(all_bpf)"
# The socket went with the service: a scrape now must not start it again.
curl -s --max-time 5 http://127.0.0.1:9712/metrics > /dev/null
echo "@@SD scrape_stopped $? $(systemctl is-active daxrace)"

systemctl start daxrace
wait_attached 3
echo "@@SD restarted_for_remove $(systemctl is-active daxrace) $(attached_count)"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -q daxrace > /tmp/apt-remove.out 2>&1
echo "@@SD remove $?"
i=0; while [ "$(ours)" -gt "$base" ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
echo "@@SD after_remove $(systemctl is-active daxrace) $(ours) $(test -e /usr/bin/daxrace && echo present || echo gone) $(systemctl show -p LoadState --value daxrace)"

echo "@@DAXRACE-EXIT 0"
echo "@@DAXRACE-DMESG"
dmesg -r | tail -n +$((dmesg_lines + 1)) | grep '^<[0-4]>'
echo "@@DAXRACE-DMESG"
systemctl poweroff --force --force
"#
    )
}

/// Writes the per-run archive and returns the whole initramfs (rootfs
/// first, so that the run's files win).
fn build_initrd(k: &kernel::Kernel, rootfs: &Path, deb: &Path, work: &Path) -> Result<PathBuf> {
    let initrd = work.join(format!("initramfs-systemd-{}.cpio", std::process::id()));
    fs::copy(rootfs, &initrd)
        .with_context(|| format!("copying {} to {}", rootfs.display(), initrd.display()))?;
    let f = fs::OpenOptions::new()
        .append(true)
        .open(&initrd)
        .with_context(|| format!("opening {}", initrd.display()))?;
    let mut c = Cpio::new(BufWriter::new(f));
    // The kernel opens /dev/console for /init before devtmpfs is mounted.
    c.chardev("/dev/console", 5, 1)?;
    c.file("/init", 0o755, init_script().as_bytes())?;
    let mut order = String::new();
    for m in &k.modules {
        let file = m.file_name().unwrap_or_default().to_string_lossy();
        let name = file.trim_end_matches(".ko");
        c.host_file(&format!("/usr/lib/modules/daxrace-vm/{file}"), m)?;
        order += &format!("{file} {}\n", module_params(name));
    }
    c.file("/usr/lib/modules/daxrace-vm/order", 0o644, order.as_bytes())?;
    let deb_name = deb
        .file_name()
        .context("the package has no file name")?
        .to_string_lossy()
        .into_owned();
    c.host_file(&format!("/root/{deb_name}"), deb)?;
    c.file("/root/vmtest.sh", 0o755, test_script(&deb_name).as_bytes())?;
    c.host_file(
        "/usr/local/bin/daxrace-workload",
        &crate::setup::release_bin("daxrace-workload"),
    )?;
    c.file(
        "/etc/systemd/system/daxrace-vmtest.service",
        0o644,
        TEST_UNIT.as_bytes(),
    )?;
    c.symlink(
        "/etc/systemd/system/multi-user.target.wants/daxrace-vmtest.service",
        "../daxrace-vmtest.service",
    )?;
    let mut w = c.finish()?;
    w.flush()
        .with_context(|| format!("writing {}", initrd.display()))?;
    Ok(initrd)
}

/// What one series showed, for the closing note.
pub struct SystemdReport {
    pub series: String,
    pub kernel: String,
    pub boot: Duration,
    pub total: Duration,
    /// hook -> (flavour as root by `daxrace probes`, flavour under the unit).
    pub flavours: BTreeMap<String, (String, String)>,
    pub attach_seconds: String,
    pub user: String,
    pub security: String,
    /// Scraped series that moved under the workload.
    pub moved: Vec<String>,
    pub findings: Vec<String>,
    pub restart: String,
    pub after_stop: String,
    pub after_remove: String,
}

impl fmt::Display for SystemdReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "systemd {}: ok in {:.0} s ({}; boot to the test unit {:.0} s; attach {} s after enable; daemon user {}; {})",
            self.series,
            self.total.as_secs_f64(),
            self.kernel,
            self.boot.as_secs_f64(),
            self.attach_seconds,
            self.user,
            self.security
        )?;
        let hooks: Vec<String> = self
            .flavours
            .iter()
            .map(|(h, (root, unit))| {
                if root == unit {
                    format!("{h}({unit})")
                } else {
                    format!("{h}({unit}; root: {root})")
                }
            })
            .collect();
        writeln!(f, "    hooks from the journal: {}", hooks.join(" "))?;
        writeln!(f, "    counters moved: {}", self.moved.join(" "))?;
        if !self.findings.is_empty() {
            writeln!(f, "    findings: {}", self.findings.join(" | "))?;
        }
        writeln!(f, "    kill -s KILL: {}", self.restart)?;
        writeln!(f, "    stop: {}", self.after_stop)?;
        write!(f, "    apt remove: {}", self.after_remove)
    }
}

/// `@@SD key ...` lines as key -> rest.
fn sd_lines(out: &[String]) -> BTreeMap<String, String> {
    out.iter()
        .filter_map(|l| l.split_once("@@SD ").map(|(_, r)| r))
        .map(|r| {
            let (k, v) = r.split_once(' ').unwrap_or((r, ""));
            (k.to_string(), v.trim().to_string())
        })
        .collect()
}

/// Flavours per attached hook from `daxrace probes --json`.
fn root_flavours(probes: &Value) -> BTreeMap<String, String> {
    probes["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            let kinds: BTreeSet<&str> = h["attached"]
                .as_array()?
                .iter()
                .filter_map(|a| a["kind"].as_str())
                .collect();
            if kinds.is_empty() {
                return None;
            }
            Some((
                h["hook"].as_str()?.to_string(),
                kinds.into_iter().collect::<Vec<_>>().join("+"),
            ))
        })
        .collect()
}

/// Flavours per attached hook from the daemon's journal lines
/// (`daxrace: hook NAME: KINDS on SYMBOLS`), first start only.
fn journal_flavours(journal: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for l in journal {
        let Some(rest) = l.strip_prefix("daxrace: hook ") else {
            continue;
        };
        let Some((hook, what)) = rest.split_once(": ") else {
            continue;
        };
        if what.starts_with("standby") || what.starts_with("not attached") {
            continue;
        }
        let kinds = what.split(" on ").next().unwrap_or(what);
        out.entry(hook.to_string())
            .or_insert_with(|| kinds.to_string());
    }
    out
}

fn sum_series(lines: &[String], prefix: &str, metric: &str) -> f64 {
    lines
        .iter()
        .filter_map(|l| l.split_once(prefix).map(|(_, r)| r))
        .filter(|r| r.starts_with(metric) && r[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|r| r.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Boots one series and runs the test; the package must exist.
pub fn systemd_e2e(series: &str, deb: &Path) -> Result<SystemdReport> {
    let t0 = Instant::now();
    let k = kernel::fetch(series)?;
    let cache = kernel::cache_dir();
    let rootfs = ensure_rootfs(&cache)?;
    let work = cache.join("run");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = build_initrd(&k, &rootfs, deb, &work)?;
    let spec = guest::Spec {
        kernel: &k,
        fs: Fs::Both,
        script: String::new(),
        timeout: GUEST_TIMEOUT,
        verbose: false,
        stream: false,
        forward: None,
    };
    let res = guest::boot_initrd(&spec, &initrd, EXTRA_MEM_MIB);
    let _ = fs::remove_file(&initrd);
    let out = res?;
    let fail = |what: String| -> anyhow::Error {
        anyhow::anyhow!(
            "systemd {series} ({}): {what}\n  guest output:\n{}",
            k.release,
            out.output
                .iter()
                .map(|l| format!("  | {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let sd = sd_lines(&out.output);
    let get = |k: &str| sd.get(k).cloned().unwrap_or_default();
    let words = |k: &str| -> Vec<String> { get(k).split_whitespace().map(String::from).collect() };
    let mut failures = Vec::new();
    let base = words("baseline").first().cloned().unwrap_or_default();

    if !get("pid1").starts_with("systemd") {
        failures.push(format!("PID 1 is not systemd: {}", get("pid1")));
    }
    if get("install") != "0" {
        failures.push(format!("apt install failed: {}", get("install")));
    }
    let after_install = words("after_install");
    if after_install.get(0..2) != Some(&["disabled".to_string(), "inactive".to_string()][..])
        || after_install.get(2) != Some(&base)
        || after_install.get(3).is_none_or(|s| s != "inactive")
    {
        failures.push(format!(
            "installing must neither enable nor start the unit, nor load a program: enabled/active/programs {after_install:?}"
        ));
    }
    if get("enable") != "0" {
        failures.push(format!("systemctl enable --now: {}", get("enable")));
    }
    let probes_json = out
        .output
        .iter()
        .find_map(|l| l.split_once("@@PROBESJSON ").map(|(_, r)| r))
        .unwrap_or("");
    let probes: Value = serde_json::from_str(probes_json).unwrap_or(Value::Null);
    let root = root_flavours(&probes);
    if root.is_empty() {
        failures.push(format!(
            "daxrace probes as root attached nothing (exit {})",
            get("probes")
        ));
    }
    let journal: Vec<&str> = out
        .output
        .iter()
        .filter_map(|l| l.split_once("@@JOURNAL ").map(|(_, r)| r))
        .collect();
    let unit = journal_flavours(&journal);
    let mut flavours = BTreeMap::new();
    for (hook, root_kinds) in &root {
        match unit.get(hook) {
            None => failures.push(format!(
                "hook {hook} attaches as root ({root_kinds}) but not under the unit"
            )),
            Some(u) => {
                if u != root_kinds {
                    failures.push(format!(
                        "hook {hook}: {u} under the unit, {root_kinds} as root"
                    ));
                }
                flavours.insert(hook.clone(), (root_kinds.clone(), u.clone()));
            }
        }
    }
    // CAP_SYS_ADMIN served attaching only.
    let kept = "CAP_SYSLOG CAP_PERFMON CAP_BPF";
    if !journal
        .iter()
        .any(|l| l.ends_with(&format!("capabilities after attaching: {kept}")))
        || words("caps")
            .first()
            .is_none_or(|c| c != "000000c400000000")
    {
        failures.push(format!(
            "the daemon kept more than {kept} after attaching: {}",
            get("caps")
        ));
    }
    let netns = words("netns");
    if netns.len() != 2 || netns[0] == netns[1] {
        failures.push(format!(
            "the daemon is not in a network namespace of its own: {netns:?}"
        ));
    }
    if words("scrape1").first().is_none_or(|s| s != "0") {
        failures.push(format!("scraping /metrics failed: {}", get("scrape1")));
    }
    let m2: Vec<String> = out
        .output
        .iter()
        .filter(|l| l.contains("@@M2 "))
        .cloned()
        .collect();
    let mut moved = Vec::new();
    for metric in [
        "daxrace_events_total",
        "daxrace_break_layouts_total",
        "daxrace_busy_scans_total",
    ] {
        let n = sum_series(&m2, "@@M2 ", metric);
        moved.push(format!("{metric}={n}"));
        if n <= 0.0 {
            failures.push(format!("{metric} did not move under the workload"));
        }
    }
    // Quiet mode's page hooks attach when the workload's pins make a
    // break wait, after the daemon dropped CAP_SYS_ADMIN: as fentry/fexit,
    // which need only CAP_BPF and CAP_PERFMON.
    let page_hooks: Vec<&str> = out
        .output
        .iter()
        .filter_map(|l| l.split_once("@@PAGEHOOKS ").map(|(_, r)| r))
        .collect();
    if !page_hooks
        .iter()
        .any(|l| l.contains("the page hooks are on (0 failed to attach)"))
        || page_hooks.iter().any(|l| l.contains("not attached"))
    {
        failures.push(format!(
            "quiet mode's page hooks did not attach under the unit when pages were busy: {page_hooks:?}"
        ));
    }
    let lost_wakeups: f64 = m2
        .iter()
        .filter(|l| l.contains("daxrace_findings_total") && l.contains("lost_wakeup"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    moved.push(format!("lost_wakeup findings={lost_wakeups}"));
    if series == "6.1" && lost_wakeups <= 0.0 {
        failures.push("no lost_wakeup finding on 6.1, where the bug is live".into());
    }
    let restart = words("restart");
    // pid before, pid after, NRestarts, state, "hooks attached" lines
    let restarted = restart.len() == 5
        && restart[0] != restart[1]
        && restart[1] != "0"
        && restart[2] != "0"
        && restart[3] == "active"
        && restart[4] == "2";
    if !restarted {
        failures.push(format!(
            "after kill -s KILL: pid before/after, NRestarts, state, attaches = {restart:?}"
        ));
    }
    let after_stop = words("after_stop");
    let stop = words("stop");
    if stop != ["0", "inactive", "inactive"] {
        failures.push(format!(
            "systemctl stop: exit, service, socket = {stop:?} (the socket is PartOf= the service)"
        ));
    }
    let scrape_stopped = words("scrape_stopped");
    if scrape_stopped.first().is_some_and(|rc| rc == "0")
        || scrape_stopped.get(1).is_none_or(|s| s != "inactive")
    {
        failures.push(format!(
            "a scrape after systemctl stop was answered or started the daemon: curl exit, state = {scrape_stopped:?}"
        ));
    }
    if after_stop.first() != Some(&base) {
        failures.push(format!(
            "systemctl stop left programs: {after_stop:?} (baseline {base})"
        ));
    }
    let after_remove = words("after_remove");
    if get("remove") != "0"
        || after_remove.first().is_some_and(|s| s == "active")
        || after_remove.get(1) != Some(&base)
        || after_remove.get(2).is_some_and(|s| s != "gone")
    {
        failures.push(format!(
            "apt remove: exit {}, state/programs/binary/unit {after_remove:?} (baseline {base})",
            get("remove")
        ));
    }
    failures.extend(super::dmesg::unexpected_faults(&out.dmesg, &[]));
    if out.status != 0 {
        failures.push(format!("the test script exited {}", out.status));
    }
    if !failures.is_empty() {
        return Err(fail(failures.join("\n  ")));
    }
    Ok(SystemdReport {
        series: series.to_string(),
        kernel: format!("{} {}", k.pkg, k.version),
        boot: out.boot,
        total: t0.elapsed(),
        flavours,
        attach_seconds: get("attach_seconds"),
        user: get("user"),
        security: get("security"),
        moved,
        findings: out
            .output
            .iter()
            .filter_map(|l| l.split_once("@@FINDING ").map(|(_, r)| r.to_string()))
            .take(2)
            .collect(),
        restart: format!(
            "pid {} -> {}, NRestarts {}, {}, attached again",
            restart.first().map(String::as_str).unwrap_or("?"),
            restart.get(1).map(String::as_str).unwrap_or("?"),
            restart.get(2).map(String::as_str).unwrap_or("?"),
            restart.get(3).map(String::as_str).unwrap_or("?")
        ),
        after_stop: format!(
            "{} daxrace programs left (baseline {base}), {} BPF programs in all",
            after_stop.first().map(String::as_str).unwrap_or("?"),
            after_stop.get(1).map(String::as_str).unwrap_or("?")
        ),
        after_remove: format!(
            "unit {}, {} daxrace programs, /usr/bin/daxrace {}, LoadState {}",
            after_remove.first().map(String::as_str).unwrap_or("?"),
            after_remove.get(1).map(String::as_str).unwrap_or("?"),
            after_remove.get(2).map(String::as_str).unwrap_or("?"),
            after_remove.get(3).map(String::as_str).unwrap_or("?")
        ),
    })
}

/// Builds the package (`cargo xtask deb` without lintian), then runs the
/// test on `series`.
pub fn systemd_test(series: &str) -> Result<SystemdReport> {
    let deb = crate::deb::build(&crate::deb::DebArgs { no_lintian: true })?;
    systemd_e2e(series, &deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_scripts_parse() {
        for script in [init_script(), test_script("daxrace_0.1.0-1_amd64.deb")] {
            let out = Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn journal_lines_give_flavours() {
        let j = [
            "daxrace: 12 of 15 hooks attached on 6.1.0-41-amd64 in 3000 ms",
            "daxrace: hook ext4_break: kprobe+kretprobe on ext4_break_layouts [ext4] (not fentry fe_ext4_break on ext4_break_layouts: module ext4's BTF object: EPERM)",
            "daxrace: hook busy_scan: fentry+fexit on dax_layout_busy_page, dax_layout_busy_page_range",
            "daxrace: hook delete_entry: standby: served by disassociate",
            "daxrace: hook generic_break: not attached: nothing to attach to on this kernel",
            "daxrace: hook ext4_break: fentry on x",
        ];
        let f = journal_flavours(&j);
        assert_eq!(f.len(), 2);
        assert_eq!(f["ext4_break"], "kprobe+kretprobe");
        assert_eq!(f["busy_scan"], "fentry+fexit");
    }

    #[test]
    fn series_sums() {
        let lines = vec![
            "@@M2 daxrace_events_total{hook=\"busy_scan\"} 4".to_string(),
            "@@M2 daxrace_events_total{hook=\"wake_up\"} 2".to_string(),
            "@@M2 daxrace_events_totalx 100".to_string(),
        ];
        assert_eq!(sum_series(&lines, "@@M2 ", "daxrace_events_total"), 6.0);
    }
}
