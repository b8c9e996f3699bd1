//! Out-of-tree kernel modules for a guest kernel (the live patch of the
//! livepatch test), built against Debian's own headers of that exact build.
//!
//! The headers come through the private apt state (`apt::Apt`): the arch
//! package `linux-headers-<release>`, the common headers and the kbuild tools
//! it depends on, unpacked with `dpkg-deb -x` under `<vm cache>/kmod/headers`.
//! Debian's arch headers include the common ones by an absolute `/usr/src`
//! path, rewritten to the unpacked copy.
//!
//! A module must be built by the compiler the kernel was built with (its
//! `CONFIG_CC_VERSION_TEXT`), and the kbuild tools (modpost, objtool) are
//! linked against the glibc of the kernel's Debian release. The host builds
//! when it runs that release and has that gcc; otherwise a minimal chroot of
//! the release with that gcc (mmdebstrap, cached under
//! `<vm cache>/chroots`) does, with the cache bind-mounted at its own path
//! in a private mount namespace, so nothing is left mounted.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{apt::Apt, kernel};

/// How long one `make modules` of a small module may take.
const MAKE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long creating a chroot (download and unpack ~100 packages) may take.
const MMDEBSTRAP_TIMEOUT: Duration = Duration::from_secs(1200);
/// What kbuild needs in a chroot besides the compiler: make; libc headers
/// (the module's host-side helpers), libelf for objtool and modpost, bc for
/// the kbuild scripts, dwarves (pahole) for the module's BTF, binutils for
/// the linker, kmod for the depmod kbuild may call.
const CHROOT_PACKAGES: &[&str] = &[
    "make",
    "libc6-dev",
    "libelf-dev",
    "bc",
    "dwarves",
    "binutils",
    "kmod",
];

/// A built module.
pub struct Module {
    /// The .ko, in the cache (`<vm cache>/kmod/modules/...`).
    pub ko: PathBuf,
    /// Module name (the .ko's file stem), as insmod/lsmod/sysfs call it.
    pub name: String,
    /// What compiled it, e.g. "host gcc-12" or "trixie chroot gcc-14".
    pub compiler: String,
    /// Time spent (headers, chroot, make); near zero when cached.
    pub time: Duration,
    /// True when the .ko came from the cache (same sources, same kernel).
    pub cached: bool,
}

impl Module {
    /// "module NAME by COMPILER (cached | built in N s)", for a test's
    /// header line.
    pub fn provenance(&self) -> String {
        format!(
            "module {} by {} ({})",
            self.name,
            self.compiler,
            if self.cached {
                "cached".to_string()
            } else {
                format!("built in {:.1} s", self.time.as_secs_f64())
            }
        )
    }
}

/// What went wrong loading a live patch in a guest, from insmod's (status,
/// stderr) and the patch's sysfs (transition, enabled) once settled: a
/// patch is in force when insmod succeeded and the transition ended with
/// the patch enabled.
pub fn live_patch_load_failures(
    what: &str,
    insmod: &Option<(i32, String)>,
    transition: &Option<(String, String)>,
) -> Vec<String> {
    let mut failures = Vec::new();
    match insmod {
        Some((0, _)) => {}
        other => failures.push(format!("insmod of {what}: {other:?}")),
    }
    if transition.as_ref().map(|(t, e)| (t.as_str(), e.as_str())) != Some(("0", "1")) {
        failures.push(format!(
            "{what}'s (transition, enabled) after loading: {transition:?}, want (0, 1)"
        ));
    }
    failures
}

/// The compiler a kernel was built with, from `CONFIG_CC_VERSION_TEXT`.
#[derive(Debug, PartialEq, Eq)]
struct KernelCompiler {
    /// gcc's major version: the package is `gcc-<major>`.
    gcc_major: u32,
    /// The whole version text, for messages.
    text: String,
}

/// `CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"` (6.1)
/// or `"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0"` (6.12, 7.x).
/// The last word is gcc's own version; clang-built kernels are refused.
fn parse_cc_version(config: &str) -> Result<KernelCompiler> {
    let text = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("no CONFIG_CC_VERSION_TEXT in the headers' .config")?;
    let first = text.split_whitespace().next().unwrap_or("");
    if !first.contains("gcc") {
        bail!("the kernel was built with {text:?}, not gcc: building its modules is not supported here");
    }
    let gcc_major = text
        .split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no gcc version at the end of {text:?}"))?;
    Ok(KernelCompiler { gcc_major, text })
}

/// The Debian release whose `gcc-<major>` built the kernels we test (the
/// kbuild tools of those kernels are linked against that release's glibc,
/// so it also runs them).
fn suite_for_gcc(major: u32) -> Option<&'static str> {
    match major {
        12 => Some("bookworm"),
        13 | 14 => Some("trixie"),
        15 => Some("sid"),
        _ => None,
    }
}

/// `VERSION_CODENAME` of an os-release file.
fn os_codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        l.strip_prefix("VERSION_CODENAME=")
            .map(|v| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    })
}

/// Debian's arch headers Makefile includes the common headers (and, from
/// 7.x, sets KBUILD_OUTPUT) by absolute `/usr/src/...` paths: point them at
/// the unpacked copy under `src_dir` (its `usr/src`).
fn rewrite_headers_makefile(text: &str, src_dir: &Path) -> String {
    let to = format!("{}/", src_dir.display());
    text.lines()
        .map(|l| {
            let trimmed = l.trim_start();
            if trimmed.starts_with("include ") || trimmed.starts_with("KBUILD_OUTPUT") {
                l.replace("/usr/src/", &to)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A stable hash of a module's sources (file names and contents, sorted),
/// so that a changed source rebuilds and an unchanged one is reused.
fn sources_hash(files: &[(String, Vec<u8>)]) -> u64 {
    // FNV-1a: std's hashers are not stable across Rust releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, data) in sorted {
        eat(name.as_bytes());
        eat(&[0]);
        eat(&(data.len() as u64).to_le_bytes());
        eat(data);
    }
    h
}

fn read_sources(src: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for e in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e.with_context(|| format!("reading {}", src.display()))?;
        let path = e.path();
        if !path.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        // Build products of a manual `make` in the source tree are no sources.
        if ["Kbuild", "Makefile"].contains(&name.as_str())
            || name.ends_with(".c")
            || name.ends_with(".h")
        {
            let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.push((name, data));
        }
    }
    if !files.iter().any(|(n, _)| n == "Kbuild" || n == "Makefile") {
        bail!("{} has no Kbuild file", src.display());
    }
    Ok(files)
}

/// The module name a Kbuild file builds (`obj-m += name.o`).
fn kbuild_module_name(kbuild: &str) -> Option<String> {
    kbuild.lines().find_map(|l| {
        let l = l.trim();
        let rest = l
            .strip_prefix("obj-m")?
            .trim_start()
            .trim_start_matches([':', '+'])
            .strip_prefix('=')?;
        rest.split_whitespace()
            .next()
            .and_then(|o| o.strip_suffix(".o"))
            .map(String::from)
    })
}

/// Builds the module whose Kbuild and C sources are in `src` for kernel `k`.
pub fn build(k: &kernel::Kernel, src: &Path) -> Result<Module> {
    let t0 = Instant::now();
    let sources = read_sources(src)?;
    let kbuild = sources
        .iter()
        .find(|(n, _)| n == "Kbuild")
        .or_else(|| sources.iter().find(|(n, _)| n == "Makefile"))
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    let name = kbuild_module_name(&kbuild)
        .with_context(|| format!("no `obj-m += NAME.o` in {}", src.display()))?;
    let vm_cache = kernel::cache_dir();
    let kmod_cache = vm_cache.join("kmod");
    let build_id = format!("{}_{}", k.release, k.version);
    let out_dir = kmod_cache.join("modules").join(&build_id);
    let ko = out_dir.join(format!("{name}-{:016x}.ko", sources_hash(&sources)));
    let compiler_file = ko.with_extension("compiler");
    if ko.exists() {
        return Ok(Module {
            compiler: fs::read_to_string(&compiler_file).unwrap_or_default(),
            ko,
            name,
            time: t0.elapsed(),
            cached: true,
        });
    }
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // One preparer at a time: the private apt state and the caches are shared
    // with other `cargo xtask vm` runs.
    let _lock = kernel::Lock::take(&vm_cache.join("lock"))?;

    let headers = prepare_headers(k, &vm_cache, &kmod_cache.join("headers").join(&build_id))
        .with_context(|| format!("preparing the headers of {} {}", k.release, k.version))?;
    let config = fs::read_to_string(headers.join(".config"))
        .with_context(|| format!("reading {}/.config", headers.display()))?;
    let cc = parse_cc_version(&config)?;
    let suite = suite_for_gcc(cc.gcc_major).with_context(|| {
        format!(
            "kernel {} was built with {}: no Debian release known to ship gcc-{} (see suite_for_gcc in xtask/src/vm/kmod.rs)",
            k.release, cc.text, cc.gcc_major
        )
    })?;
    let gcc = format!("gcc-{}", cc.gcc_major);
    let host_release = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| os_codename(&t));
    let on_host = host_release.as_deref() == Some(suite) && which(&gcc) && which("make");

    let build_dir = kmod_cache.join("build").join(&build_id).join(&name);
    let _ = fs::remove_dir_all(&build_dir);
    fs::create_dir_all(&build_dir).with_context(|| format!("creating {}", build_dir.display()))?;
    for (file, data) in &sources {
        fs::write(build_dir.join(file), data)
            .with_context(|| format!("writing {}", build_dir.join(file).display()))?;
    }
    let (compiler, mut make) = if on_host {
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(&headers)
            .arg(format!("M={}", build_dir.display()));
        (format!("host {gcc}"), c)
    } else {
        let root = ensure_chroot(&vm_cache, suite, &gcc, &k.release, host_release.as_deref())?;
        // The kmod cache appears in the chroot at its own path, so the
        // rewritten absolute include and the headers' relative symlinks into
        // the kbuild tools resolve there as on the host.
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"set -e
mkdir -p "$1$2"
mount --bind "$2" "$1$2"
mount -t proc proc "$1/proc"
root=$1; shift 2
exec chroot "$root" make "$@""#,
            )
            .arg("sh")
            .arg(&root)
            .arg(&kmod_cache)
            .arg("-C")
            .arg(&headers)
            .arg(format!("M={}", build_dir.display()))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root");
        (format!("{suite} chroot {gcc}"), c)
    };
    make.arg("modules").env("LC_ALL", "C");
    eprintln!(
        "vm: building kernel module {name} for {} with {compiler} (the kernel's compiler: {})",
        k.release, cc.text
    );
    let out = super::run_with_timeout(&mut make, MAKE_TIMEOUT)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let built = build_dir.join(format!("{name}.ko"));
    if !out.status.success() || !built.exists() {
        bail!(
            "building module {name} for {} with {compiler} failed ({}):\n{}",
            k.release,
            out.status,
            tail_lines(&text, 40)
        );
    }
    // Warnings matter: a faithful copy of a kernel function must compile cleanly.
    for l in text.lines().filter(|l| l.contains("warning:")) {
        eprintln!("vm: {name} ({}): {l}", k.release);
    }
    fs::copy(&built, &ko).with_context(|| format!("copying {} to the cache", built.display()))?;
    fs::write(&compiler_file, &compiler)
        .with_context(|| format!("writing {}", compiler_file.display()))?;
    Ok(Module {
        ko,
        name,
        compiler,
        time: t0.elapsed(),
        cached: false,
    })
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(prog);
            p.is_file()
        })
    })
}

/// Downloads and unpacks the headers of `k` once; returns the arch headers
/// directory (what `make -C` takes).
fn prepare_headers(k: &kernel::Kernel, vm_cache: &Path, dir: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    let arch = root
        .join("usr/src")
        .join(format!("linux-headers-{}", k.release));
    if dir.join("complete").exists() {
        return Ok(arch);
    }
    let apt = Apt::new(vm_cache)?;
    let pkg = apt.headers(&k.release, &k.version)?;
    eprintln!(
        "vm: downloading {} {} (to build modules for the guest kernel)",
        pkg.packages.join(" "),
        pkg.version
    );
    let _ = fs::remove_dir_all(dir);
    let debs = apt.download(&pkg, &dir.join("debs"))?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    for deb in &debs {
        super::check(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    let makefile = arch.join("Makefile");
    let text = fs::read_to_string(&makefile).with_context(|| {
        format!(
            "reading {} (is {} a Debian headers package?)",
            makefile.display(),
            pkg.image
        )
    })?;
    fs::write(
        &makefile,
        rewrite_headers_makefile(&text, &root.join("usr/src")),
    )
    .with_context(|| format!("writing {}", makefile.display()))?;
    let _ = fs::remove_dir_all(dir.join("debs"));
    fs::write(
        dir.join("complete"),
        format!("{} {}\n", pkg.packages.join(" "), pkg.version),
    )
    .with_context(|| format!("writing {}/complete", dir.display()))?;
    Ok(arch)
}

/// Installs mmdebstrap on the host (apt-get) when it is missing, saying
/// what for: the test live patches' chroots and the systemd test's rootfs.
pub(super) fn ensure_mmdebstrap(what_for: &str) -> Result<()> {
    if which("mmdebstrap") {
        return Ok(());
    }
    eprintln!("vm: installing mmdebstrap on the host (apt-get) {what_for}");
    super::check(
        Command::new("apt-get")
            .args([
                "-o",
                "DPkg::Lock::Timeout=900",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "mmdebstrap",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing mmdebstrap ({what_for})"))
}

/// Creates `dir` as a minbase Debian `suite` tree with `packages`
/// (mmdebstrap, installed on the host if missing, from the mirror of the
/// private apt sources), without documentation or translations, for a
/// guest rootfs or a build chroot. `extra` goes to mmdebstrap as is (apt
/// options, a customize hook); `what_for` is said while it runs. Built
/// beside `dir` and renamed into place, so a failed run leaves nothing.
pub(super) fn create_debian_tree(
    vm_cache: &Path,
    suite: &str,
    packages: &[&str],
    dir: &Path,
    extra: &[String],
    what_for: &str,
) -> Result<()> {
    ensure_mmdebstrap(&format!("to create a {suite} tree {what_for}"))?;
    let mirror = Apt::new(vm_cache)?.suite_line(suite)?;
    let include = packages.join(",");
    eprintln!(
        "vm: creating a {suite} tree with {include} in {} {what_for}",
        dir.display()
    );
    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let parent = dir.parent().unwrap_or(vm_cache);
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let out = super::run_with_timeout(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--mode=root", "-q"])
            .arg(format!("--include={include}"))
            .arg("--aptopt=Acquire::Languages \"none\"")
            // Documentation and translations only cost space and time.
            .args([
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--dpkgopt=path-exclude=/usr/share/info/*",
            ])
            .args(extra)
            .arg(suite)
            .arg(&tmp)
            .arg(&mirror),
        MMDEBSTRAP_TIMEOUT,
    )?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        bail!(
            "mmdebstrap {suite} with {include} failed ({}):\n{}",
            out.status,
            tail_lines(&String::from_utf8_lossy(&out.stderr), 30)
        );
    }
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))
}

/// A cached minbase chroot of `suite` with `gcc` and what kbuild needs;
/// created with mmdebstrap (installed on the host if missing) from the
/// mirror of the private apt sources.
fn ensure_chroot(
    vm_cache: &Path,
    suite: &str,
    gcc: &str,
    release: &str,
    host_release: Option<&str>,
) -> Result<PathBuf> {
    let dir = vm_cache.join("chroots").join(format!("{suite}-{gcc}"));
    let marker = dir.join(".daxrace-complete");
    if marker.exists() {
        return Ok(dir);
    }
    let why = match host_release {
        Some(h) if h == suite => format!("the host has no {gcc}"),
        Some(h) => format!("the host runs {h}, and the kernel's kbuild tools need {suite}'s"),
        None => "the host's Debian release is unknown".to_string(),
    };
    let packages: Vec<&str> = std::iter::once(gcc)
        .chain(CHROOT_PACKAGES.iter().copied())
        .collect();
    create_debian_tree(
        vm_cache,
        suite,
        &packages,
        &dir,
        &[],
        &format!("to build modules for {release} ({why}; once, about a minute)"),
    )?;
    fs::write(&marker, format!("{suite} {}\n", packages.join(",")))
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_patch_is_in_force_after_insmod_and_its_transition() {
        let ok = (
            Some((0, String::new())),
            Some(("0".to_string(), "1".to_string())),
        );
        assert!(live_patch_load_failures("p", &ok.0, &ok.1).is_empty());
        let refused = Some((1, "Invalid parameters".to_string()));
        let stuck = Some(("1".to_string(), "1".to_string()));
        let f = live_patch_load_failures("p", &refused, &stuck);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].starts_with("insmod of p") && f[1].contains("want (0, 1)"));
        assert_eq!(live_patch_load_failures("p", &None, &None).len(), 2);
    }

    #[test]
    fn compiler_from_the_config() {
        let c61 = parse_cc_version(
            "CONFIG_X=y\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n",
        )
        .unwrap();
        assert_eq!(c61.gcc_major, 12);
        let c612 = parse_cc_version(
            "CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\"\n",
        )
        .unwrap();
        assert_eq!(c612.gcc_major, 14);
        assert_eq!(suite_for_gcc(12), Some("bookworm"));
        assert_eq!(suite_for_gcc(14), Some("trixie"));
        assert_eq!(suite_for_gcc(9), None);
        assert!(
            parse_cc_version("CONFIG_CC_VERSION_TEXT=\"Debian clang version 19.1.7\"").is_err()
        );
        assert!(parse_cc_version("CONFIG_X=y\n").is_err());
    }

    #[test]
    fn headers_makefile_points_at_the_copy() {
        let src = Path::new("/cache/kmod/headers/k/root/usr/src");
        let m61 = "include /usr/src/linux-headers-6.1.0-57-common/Makefile\n";
        assert_eq!(
            rewrite_headers_makefile(m61, src),
            "include /cache/kmod/headers/k/root/usr/src/linux-headers-6.1.0-57-common/Makefile\n"
        );
        let m73 = "KBUILD_OUTPUT=/usr/src/linux-headers-7.3.4+deb13-amd64\ninclude /usr/src/linux-headers-7.3.4+deb13-common/Makefile\n";
        let r = rewrite_headers_makefile(m73, src);
        assert!(
            !r.contains(" /usr/src/") && !r.contains("=/usr/src/"),
            "{r}"
        );
        assert!(r.starts_with(
            "KBUILD_OUTPUT=/cache/kmod/headers/k/root/usr/src/linux-headers-7.3.4+deb13-amd64\n"
        ));
    }

    #[test]
    fn os_release_codename() {
        let t = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(os_codename(t).as_deref(), Some("bookworm"));
        assert_eq!(os_codename("ID=debian\nVERSION_CODENAME=\n"), None);
    }

    #[test]
    fn module_name_from_kbuild() {
        assert_eq!(
            kbuild_module_name("# comment\nobj-m += daxrace_count_patch.o\n").as_deref(),
            Some("daxrace_count_patch")
        );
        assert_eq!(kbuild_module_name("obj-m := x.o y.o").as_deref(), Some("x"));
        assert_eq!(kbuild_module_name("obj-y += x.o"), None);
    }

    #[test]
    fn sources_hash_follows_contents_not_order() {
        let a = vec![
            ("Kbuild".to_string(), b"obj-m += x.o\n".to_vec()),
            ("x.c".to_string(), b"int x;\n".to_vec()),
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(sources_hash(&a), sources_hash(&b));
        b[0].1 = b"int y;\n".to_vec();
        assert_ne!(sources_hash(&a), sources_hash(&b));
    }

    /// The module's sources are where the livepatch test looks for them.
    #[test]
    fn count_patch_sources_are_in_place() {
        let src = crate::setup::workspace_root().join("xtask/kmod/count_patch");
        let files = read_sources(&src).unwrap();
        let kbuild = files.iter().find(|(n, _)| n == "Kbuild").unwrap();
        assert_eq!(
            kbuild_module_name(&String::from_utf8_lossy(&kbuild.1)).as_deref(),
            Some("daxrace_count_patch")
        );
    }

    /// The 2018-race test's patch is where it looks for it, too.
    #[test]
    fn fault_patch_sources_are_in_place() {
        let src = crate::setup::workspace_root().join("xtask/kmod/fault_patch");
        let files = read_sources(&src).unwrap();
        let kbuild = files.iter().find(|(n, _)| n == "Kbuild").unwrap();
        assert_eq!(
            kbuild_module_name(&String::from_utf8_lossy(&kbuild.1)).as_deref(),
            Some("daxrace_fault_patch")
        );
        assert!(files.iter().any(|(n, _)| n == "daxrace_fault_patch.c"));
    }
}
