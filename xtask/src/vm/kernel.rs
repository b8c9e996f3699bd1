//! A Debian kernel ready to boot: the uncompressed `vmlinux` (QEMU boots it
//! through its PVH entry, about 4 s faster than the bzImage under TCG) and
//! the few modules the guest needs, decompressed and in load order. Cached
//! per package build under `<workspace>/target/vm-cache/kernels`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::apt::{Apt, KernelPkg};

/// Modules the guest loads, in this order, with their dependencies first
/// (`modprobe --show-depends`). Names a kernel lacks are skipped (from 7.x
/// `crc32c_generic` is built in or gone).
/// - nd_e820, nd_pmem: legacy e820 pmem from `memmap=X!Y` as /dev/pmemN
/// - crc32c_generic: the checksum ext4 and xfs metadata need
/// - ext4, xfs: the DAX filesystems (xfs also for its symbols)
/// - brd: a RAM disk for the non-DAX scratch ext4 (O_DIRECT source files)
/// - null_blk: the slow-pin source: a memory-backed block device whose
///   requests complete after a configurable delay (configfs)
pub const MODULES: &[&str] = &[
    "nd_e820",
    "nd_pmem",
    "crc32c_generic",
    "crc32c_intel",
    "ext4",
    "xfs",
    "brd",
    "configfs",
    "null_blk",
];

/// Modules for guest networking (`guest::Spec::forward`), prepared like
/// [`MODULES`] but loaded only by guests that ask for a network, so the
/// others do not pay for them. virtio_pci is no symbol dependency of
/// virtio_net, hence listed; on kernels where virtio is built in these names
/// are simply absent.
pub const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

pub struct Kernel {
    pub pkg: String,
    pub version: String,
    /// `uname -r` of the kernel.
    pub release: String,
    /// What QEMU boots: `vmlinux` (ELF, PVH entry) or the bzImage as a fallback.
    pub boot_image: PathBuf,
    /// Decompressed modules in load order.
    pub modules: Vec<PathBuf>,
    /// The [`NET_MODULES`] and their dependencies not in `modules`, in load order.
    pub net_modules: Vec<PathBuf>,
    /// Time spent fetching and preparing (zero when cached).
    pub fetch_time: Duration,
    /// The kernel's config (`/boot/config-*`, in `linux-base` from 6.18),
    /// when the mirror has it.
    pub config: Option<PathBuf>,
}

/// The config options the DAX machinery and the tests depend on.
pub const DAX_CONFIG: &[&str] = &[
    "CONFIG_FS_DAX",
    "CONFIG_FS_DAX_PMD",
    "CONFIG_ZONE_DEVICE",
    "CONFIG_LIVEPATCH",
    "CONFIG_DEBUG_VM",
];

impl Kernel {
    /// [`DAX_CONFIG`] as the kernel's config sets them (`FS_DAX=y`,
    /// `DEBUG_VM unset`), or why they are unknown.
    pub fn dax_config(&self) -> String {
        let Some(text) = self
            .config
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
        else {
            return "config not published for this build (no config in its packages)".to_string();
        };
        dax_config_of(&text)
    }
}

fn dax_config_of(config: &str) -> String {
    DAX_CONFIG
        .iter()
        .map(|opt| {
            let short = opt.trim_start_matches("CONFIG_");
            let set = config.lines().find_map(|l| {
                l.strip_prefix(opt)
                    .and_then(|r| r.strip_prefix('='))
                    .map(str::to_string)
            });
            match set {
                Some(v) => format!("{short}={v}"),
                None => format!("{short} unset"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `<workspace>/target/vm-cache`, or `$DAXRACE_VM_CACHE` (e.g. a CI cache
/// that outlives `target/`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("DAXRACE_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::setup::workspace_root().join("target/vm-cache"))
}

/// Resolves, downloads and prepares the newest kernel of `series`; falls
/// back to the newest cached build of the series when the mirror is out of
/// reach.
pub fn fetch(series: &str) -> Result<Kernel> {
    let t0 = Instant::now();
    let cache = cache_dir();
    fs::create_dir_all(&cache)?;
    // Several `cargo xtask vm` may run at once (developers, CI): one at a
    // time updates the private apt state and prepares kernels.
    let _lock = Lock::take(&cache.join("lock"))?;
    let apt = Apt::new(&cache)?;
    let mut refreshed = false;
    if !apt.lists_fresh() {
        match apt.update() {
            Ok(()) => refreshed = true,
            Err(e) if apt.has_lists() => eprintln!("vm: warning: {e:#}; using older package lists"),
            Err(e) => {
                return cached_fallback(&cache, series).with_context(|| {
                    format!("cannot reach the Debian mirror ({e:#}): check the machine's network and apt sources")
                })
            }
        }
    }
    let mut pkg = apt.resolve_cached(series)?;
    let mut dir = cache
        .join("kernels")
        .join(format!("{}_{}", pkg.image, pkg.version));
    // A kernel prepared before NET_MODULES existed lacks net-order, one
    // prepared before linux-base was fetched its config: prepare it again
    // (one download) rather than boot guests without a network.
    let lacks_config = |dir: &Path, pkg: &KernelPkg| {
        pkg.packages.iter().any(|p| p.starts_with("linux-base-")) && !dir.join("config").exists()
    };
    if !prepared(&dir) || lacks_config(&dir, &pkg) {
        let tmp = cache
            .join("tmp")
            .join(format!("{}-{}", pkg.image, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let debs = match apt.download(&pkg, &tmp.join("debs")) {
            Ok(d) => d,
            // Stale lists name a build the mirror no longer has: refresh and
            // take the newest of the series instead.
            Err(e) if !refreshed => {
                eprintln!("vm: {e:#}; refreshing the package lists");
                apt.update()?;
                pkg = apt.resolve_cached(series)?;
                dir = cache
                    .join("kernels")
                    .join(format!("{}_{}", pkg.image, pkg.version));
                let _ = fs::remove_dir_all(&tmp);
                apt.download(&pkg, &tmp.join("debs"))?
            }
            Err(e) => return Err(e),
        };
        if !prepared(&dir) || lacks_config(&dir, &pkg) {
            eprintln!("vm: preparing {} {}", pkg.image, pkg.version);
            prepare(&pkg, &debs, &tmp.join("root"), &dir)
                .with_context(|| format!("preparing {} {}", pkg.image, pkg.version))?;
        }
        let _ = fs::remove_dir_all(&tmp);
    }
    let mut k = load(&dir)?;
    k.fetch_time = t0.elapsed();
    Ok(k)
}

/// An exclusive flock, released when the file is closed (dropped, or the
/// process dies).
pub(crate) struct Lock {
    _file: fs::File,
}

impl Lock {
    pub(crate) fn take(path: &Path) -> Result<Lock> {
        use std::os::fd::AsRawFd;
        let f = fs::File::create(path)?;
        let t = Instant::now();
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Lock { _file: f });
            }
            if t.elapsed() > Duration::from_secs(900) {
                bail!("{} stayed locked for 15 minutes: another `cargo xtask vm` is stuck fetching a kernel", path.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn cached_fallback(cache: &Path, series: &str) -> Result<Kernel> {
    let mut best: Option<(String, PathBuf)> = None;
    for e in fs::read_dir(cache.join("kernels"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        let Ok(k) = load(&dir) else { continue };
        let in_series = series == "newest"
            || k.release
                .strip_prefix(series)
                .is_some_and(|r| r.starts_with(['.', '-']));
        if in_series
            && best.as_ref().is_none_or(|(v, _)| {
                super::apt::compare_versions(&k.version, v) == std::cmp::Ordering::Greater
            })
        {
            best = Some((k.version, dir));
        }
    }
    match best {
        Some((_, dir)) => {
            eprintln!("vm: warning: using the cached kernel in {}", dir.display());
            load(&dir)
        }
        None => bail!("no cached kernel of series {series}"),
    }
}

fn prepared(dir: &Path) -> bool {
    dir.join("complete").exists() && dir.join("modules/net-order").exists()
}

fn load(dir: &Path) -> Result<Kernel> {
    let meta = fs::read_to_string(dir.join("complete"))
        .with_context(|| format!("{} is not a prepared kernel", dir.display()))?;
    let get = |k: &str| {
        meta.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_default()
            .to_string()
    };
    let list = |file: &str| -> Vec<PathBuf> {
        fs::read_to_string(dir.join("modules").join(file))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| dir.join("modules").join(l))
            .collect()
    };
    Ok(Kernel {
        pkg: get("package"),
        version: get("version"),
        release: get("release"),
        boot_image: dir.join(get("boot")),
        modules: list("order"),
        net_modules: list("net-order"),
        fetch_time: Duration::ZERO,
        config: Some(dir.join("config")).filter(|p| p.exists()),
    })
}

fn prepare(pkg: &KernelPkg, debs: &[PathBuf], root: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(root)?;
    for deb in debs {
        super::check(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
    }
    // Debian kernels before trixie put modules in /lib/modules, later ones in
    // /usr/lib/modules; depmod -b and modprobe -d want <root>/lib/modules.
    let usr_mods = root.join("usr/lib/modules");
    let lib_mods = root.join("lib/modules");
    if !lib_mods.exists() && usr_mods.exists() {
        fs::create_dir_all(root.join("lib"))?;
        std::os::unix::fs::symlink(&usr_mods, &lib_mods)?;
    }
    let release = fs::read_dir(&lib_mods)
        .with_context(|| format!("no lib/modules in {}", pkg.image))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| lib_mods.join(n).join("kernel").is_dir())
        .with_context(|| format!("no modules directory in {}", pkg.image))?;
    let vmlinuz = [
        root.join(format!("boot/vmlinuz-{release}")),
        lib_mods.join(&release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no vmlinuz in {}", pkg.packages.join(" ")))?;

    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("modules"))?;
    let bz = fs::read(&vmlinuz)?;
    let boot = match extract_vmlinux(&bz) {
        Ok(elf) => {
            fs::write(dir.join("vmlinux"), elf)?;
            "vmlinux"
        }
        Err(e) => {
            eprintln!("vm: warning: booting the compressed kernel ({e:#})");
            fs::write(dir.join("bzImage"), &bz)?;
            "bzImage"
        }
    };
    // /boot/config-<release> in the image before 7.x; linux-base puts it
    // beside the modules (lib/modules/<release>/config).
    let config = fs::read_dir(root.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("config-"))
        .map(|e| e.path())
        .or_else(|| Some(lib_mods.join(&release).join("config")).filter(|p| p.is_file()));
    if let Some(cfg) = config {
        fs::copy(cfg, dir.join("config"))?;
    }

    super::check(Command::new("depmod").arg("-b").arg(root).arg(&release))?;
    let mut order: Vec<String> = Vec::new();
    let mut net_order: Vec<String> = Vec::new();
    for (m, net) in MODULES
        .iter()
        .map(|m| (m, false))
        .chain(NET_MODULES.iter().map(|m| (m, true)))
    {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(root)
            .args(["-S", &release, "--show-depends", m])
            .output()?;
        if !out.status.success() {
            continue; // not a module in this kernel: built in or gone
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = path.split_whitespace().next().unwrap_or(path);
            let file = Path::new(path);
            let base = file.file_name().unwrap_or_default().to_string_lossy();
            let name = base
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .trim_end_matches(".gz")
                .to_string();
            if order.contains(&name) || net_order.contains(&name) {
                continue;
            }
            // modprobe prints paths as seen from the root it was given.
            let src = if file.starts_with(root) {
                file.to_path_buf()
            } else {
                root.join(path.trim_start_matches('/'))
            };
            decompress_module(&src, &dir.join("modules").join(&name))?;
            if net {
                net_order.push(name);
            } else {
                order.push(name);
            }
        }
    }
    for needed in ["nd_pmem.ko", "ext4.ko", "xfs.ko"] {
        if !order.iter().any(|n| n == needed) {
            bail!("module {needed} not found in {}", pkg.image);
        }
    }
    fs::write(dir.join("modules/order"), order.join("\n") + "\n")?;
    fs::write(dir.join("modules/net-order"), net_order.join("\n") + "\n")?;
    fs::write(
        dir.join("complete"),
        format!(
            "package={}\nversion={}\nrelease={release}\nboot={boot}\n",
            pkg.image, pkg.version
        ),
    )?;
    Ok(())
}

fn decompress_module(src: &Path, dst: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => {
            fs::copy(src, dst)?;
        }
        Some(t) => {
            // The guest's busy box insmod cannot decompress; the kernel may not
            // either (CONFIG_MODULE_DECOMPRESS): hand it plain ELF.
            let out = Command::new(t)
                .args(["-dc"])
                .arg(src)
                .output()
                .with_context(|| format!("cannot run {t}: run `cargo xtask setup`"))?;
            if !out.status.success() {
                bail!("{t} -dc {name} failed");
            }
            fs::write(dst, out.stdout)?;
        }
    }
    Ok(())
}

/// The ELF kernel inside a bzImage: the setup header gives the payload's
/// place (boot protocol 2.08+); its last 4 bytes are the uncompressed size.
fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    if bz.len() < 0x250 || &bz[0x202..0x206] != b"HdrS" {
        bail!("not a bzImage");
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let u32_at = |o: usize| u32::from_le_bytes(bz[o..o + 4].try_into().unwrap()) as usize;
    let start = (setup_sects + 1) * 512 + u32_at(0x248);
    let len = u32_at(0x24c);
    let payload = bz
        .get(start..start + len)
        .context("payload outside the bzImage")?;
    let size = u32::from_le_bytes(payload[len - 4..].try_into().unwrap()) as usize;
    let (tool, args): (&str, &[&str]) = if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ("zstd", &["-dc"])
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        ("xz", &["-dc", "--single-stream"])
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        ("gzip", &["-dc"])
    } else {
        bail!("unknown kernel compression {:02x?}", &payload[..4]);
    };
    let tmp = std::env::temp_dir().join(format!("daxrace-payload-{}", std::process::id()));
    fs::write(&tmp, payload)?;
    // zstd complains about the 4 size bytes after its frame, yet has written
    // the whole kernel: judge by the output, not the exit status.
    let out = Command::new(tool)
        .args(args)
        .arg(&tmp)
        .output()
        .with_context(|| format!("cannot run {tool}: run `cargo xtask setup`"));
    let _ = fs::remove_file(&tmp);
    let elf = out?.stdout;
    if !elf.starts_with(b"\x7fELF") || elf.len() != size {
        bail!("{tool} gave {} bytes, expected an ELF of {size}", elf.len());
    }
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dax_config_lines() {
        let cfg = "CONFIG_FS_DAX=y\nCONFIG_FS_DAX_PMD=y\nCONFIG_ZONE_DEVICE=y\n# CONFIG_DEBUG_VM is not set\nCONFIG_LIVEPATCH=y\n";
        assert_eq!(
            dax_config_of(cfg),
            "FS_DAX=y FS_DAX_PMD=y ZONE_DEVICE=y LIVEPATCH=y DEBUG_VM unset"
        );
    }
}
