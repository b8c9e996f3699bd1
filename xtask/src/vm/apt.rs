//! Finding and downloading Debian kernel packages through a private apt
//! configuration: the machine's own sources, lists and cache are never
//! touched, and the mirror is read from the machine's apt sources so that no
//! registry host name is written into the project.
use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};

/// Suites searched for kernels, by the kind of mirror that carries them.
/// bullseye (5.10: older than every hook needs, booted to show what daxrace
/// says there), bookworm (6.1), bookworm-backports and trixie (6.12), trixie-backports
/// (6.16 to 7.3), forky and sid (7.2, 7.3), experimental (the next release
/// candidate). Security suites carry the newest builds of the stable series
/// (6.1 updates land in bookworm-security first).
const MAIN_SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "forky",
    "sid",
    "experimental",
];
const SECURITY_SUITES: &[&str] = &["bullseye-security", "bookworm-security", "trixie-security"];
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists younger than this are reused without asking the mirror.
const LISTS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
const APT_TIMEOUT: Duration = Duration::from_secs(300);

/// What `--kernel` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// The newest build `linux-image-amd64` points to (not a release candidate).
    Newest,
    /// experimental's release candidate (`~rc` in its version).
    ReleaseCandidate,
    /// A series, major.minor: its newest released build.
    Series(String),
    /// One image package, e.g. `linux-image-6.16.12+deb13-amd64`.
    Image(String),
    /// One package version, e.g. `6.16.12-1~bpo13+1`.
    Version(String),
}

impl KernelSpec {
    pub const HELP: &'static str = "--kernel takes a series (6.1, 6.12, 6.16, 7.3 ...), newest, rc (experimental's release candidate), an image package (linux-image-6.16.12+deb13-amd64) or a package version (6.16.12-1~bpo13+1)";

    pub fn parse(s: &str) -> Result<KernelSpec> {
        let numeric = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let parts: Vec<&str> = s.split('.').collect();
        Ok(match s {
            "newest" => KernelSpec::Newest,
            "rc" => KernelSpec::ReleaseCandidate,
            _ if s.starts_with("linux-image-") => KernelSpec::Image(s.to_string()),
            _ if parts.len() == 2 && parts.iter().all(|p| numeric(p)) => {
                KernelSpec::Series(s.to_string())
            }
            _ if s.starts_with(|c: char| c.is_ascii_digit())
                && s.contains(['-', '~'])
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+-~:".contains(&b)) =>
            {
                KernelSpec::Version(s.to_string())
            }
            _ => bail!("unknown kernel {s:?}: {}", Self::HELP),
        })
    }
}

impl std::fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelSpec::Newest => f.write_str("newest"),
            KernelSpec::ReleaseCandidate => f.write_str("rc"),
            KernelSpec::Series(s) | KernelSpec::Image(s) | KernelSpec::Version(s) => f.write_str(s),
        }
    }
}

/// One series on the mirror: its newest build, and whether it can boot.
#[derive(Debug)]
pub struct MirrorSeries {
    pub series: String,
    /// (image package, version)
    pub build: Option<(String, String)>,
    pub bootable: std::result::Result<KernelPkg, String>,
}

/// One kernel build: the image package and what must be downloaded with it.
#[derive(Debug, Clone)]
pub struct KernelPkg {
    /// e.g. `linux-image-6.1.0-56-amd64`
    pub image: String,
    pub version: String,
    /// Every package to download (7.x splits the image into
    /// linux-image / linux-binary / linux-modules).
    pub packages: Vec<String>,
}

pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Private apt state under `cache/apt`; writes its sources list from the
    /// machine's mirrors.
    pub fn new(cache: &Path) -> Result<Apt> {
        let dir = cache.join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let apt = Apt { dir };
        let list = sources_list()?;
        let path = apt.dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(list.as_str()) {
            // Another mirror: the old lists say nothing about it.
            let _ = fs::remove_file(apt.stamp());
            fs::write(&path, list)?;
        }
        Ok(apt)
    }

    fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oDir::State::status=/dev/null".into(),
            // Our own directories: no lock with the system's apt is needed.
            "-oDebug::NoLocking=1".into(),
            // Only the Packages indexes are needed: skip AppStream and translations.
            "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "-oAcquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "-oAcquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            "-oAcquire::Languages=none".into(),
            "-oAPT::Sandbox::User=root".into(),
            "-oAcquire::http::Timeout=30".into(),
            "-q".into(),
        ]
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("updated")
    }

    /// True when lists exist and are fresh enough.
    pub fn lists_fresh(&self) -> bool {
        fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE)
    }

    pub fn has_lists(&self) -> bool {
        self.stamp().exists()
    }

    /// `apt-get update` on the private configuration.
    pub fn update(&self) -> Result<()> {
        eprintln!("vm: refreshing the Debian package lists (private apt state)");
        let out = super::run_with_timeout(
            Command::new("apt-get").args(self.opts()).arg("update"),
            APT_TIMEOUT,
        )?;
        // One unreachable suite fails the whole command, yet the others'
        // lists are in place: enough when linux-image-amd64 resolves.
        let got_lists = fs::read_dir(self.dir.join("lists"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if !out.status.success() && got_lists {
            eprintln!(
                "vm: warning: apt-get update: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        } else if !out.status.success() {
            bail!(
                "apt-get update failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        fs::write(self.stamp(), b"")?;
        Ok(())
    }

    fn show(&self, pkg: &str) -> Result<String> {
        let out = super::run_with_timeout(
            Command::new("apt-cache")
                .args(self.opts())
                .args(["show", pkg]),
            APT_TIMEOUT,
        )?;
        if !out.status.success() {
            bail!(
                "apt-cache show {pkg} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The kernel `--kernel` names (see [`KernelSpec`]), with every package
    /// it needs to boot; an error that says what is missing when the mirror
    /// has the image but not its modules.
    pub fn resolve(&self, spec: &str) -> Result<KernelPkg> {
        let spec = KernelSpec::parse(spec)?;
        let (image, version) = match &spec {
            KernelSpec::Newest => self.newest_meta()?,
            other => self.newest_image(other)?,
        };
        self.complete(image, version)
    }

    /// The newest build `linux-image-amd64` points to in the searched suites
    /// (experimental's release candidates aside): a build that is no longer
    /// published is replaced by the newest one.
    fn newest_meta(&self) -> Result<(String, String)> {
        let text = self.show("linux-image-amd64")?;
        let mut best: Option<(String, String)> = None; // (meta version, image name)
        for stanza in text.split("\n\n") {
            let (Some(version), Some(depends)) =
                (field(stanza, "Version"), field(stanza, "Depends"))
            else {
                continue;
            };
            let Some(image) = dep_names(&depends)
                .into_iter()
                .find(|d| d.starts_with("linux-image-") && d != "linux-image-amd64")
            else {
                continue;
            };
            if is_prerelease(&version) {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(v, _)| compare_versions(&version, v) == Ordering::Greater)
            {
                best = Some((version, image));
            }
        }
        let Some((version, image)) = best else {
            bail!(
                "no linux-image-amd64 in {}: check the machine's Debian mirror",
                MAIN_SUITES.join(", ")
            );
        };
        Ok((image, version))
    }

    /// Every amd64 kernel image package of the standard flavour in the
    /// searched suites (not -rt, -cloud, debug symbols or unsigned builds).
    fn image_names(&self) -> Result<Vec<String>> {
        let out = super::run_with_timeout(
            Command::new("apt-cache")
                .args(self.opts())
                .args(["pkgnames", "linux-image-"]),
            APT_TIMEOUT,
        )?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|n| is_standard_image(n))
            .map(String::from)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every published (package, version, suite) of `names`.
    fn madison(&self, names: &[String]) -> Result<Vec<(String, String, String)>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let out = super::run_with_timeout(
            Command::new("apt-cache")
                .args(self.opts())
                .arg("madison")
                .args(names),
            APT_TIMEOUT,
        )?;
        Ok(parse_madison(&String::from_utf8_lossy(&out.stdout)))
    }

    /// The newest image build that `spec` (not `Newest`) names.
    fn newest_image(&self, spec: &KernelSpec) -> Result<(String, String)> {
        let names: Vec<String> = self
            .image_names()?
            .into_iter()
            .filter(|n| match spec {
                KernelSpec::Series(s) => image_in_series(n, s),
                KernelSpec::Image(i) => n == i,
                _ => true,
            })
            .collect();
        let builds = self.madison(&names)?;
        let best = builds
            .into_iter()
            .filter(|(_, v, _)| match spec {
                KernelSpec::ReleaseCandidate => is_prerelease(v),
                KernelSpec::Version(want) => v == want,
                KernelSpec::Series(_) => !is_prerelease(v),
                _ => true,
            })
            .max_by(|a, b| compare_versions(&a.1, &b.1));
        match best {
            Some((image, version, _)) => Ok((image, version)),
            None => bail!(
                "no Debian kernel matches --kernel {spec} in {}: {}",
                MAIN_SUITES.join(", "),
                KernelSpec::HELP
            ),
        }
    }

    /// The packages one image build needs to boot: the image, and from 7.x
    /// the split-out kernel binary and modules (ext4, xfs and nd_pmem are
    /// modules); its `linux-base` (the kernel config, from 6.18) when the
    /// mirror has it. Fails, naming them, when required parts are missing.
    fn complete(&self, image: String, version: String) -> Result<KernelPkg> {
        let img = self.show(&format!("{image}={version}"))?;
        let depends = field(img.split("\n\n").next().unwrap_or(""), "Depends").unwrap_or_default();
        let abi = image.trim_start_matches("linux-image-");
        let parts: Vec<String> = dep_names(&depends)
            .into_iter()
            .filter(|d| {
                (d.starts_with("linux-binary-")
                    || d.starts_with("linux-modules-")
                    || d.starts_with("linux-base-"))
                    && d.ends_with(abi)
            })
            .collect();
        let published = self.madison(&parts)?;
        let has = |p: &str| published.iter().any(|(n, v, _)| n == p && *v == version);
        let missing: Vec<&String> = parts
            .iter()
            .filter(|p| !p.starts_with("linux-base-") && !has(p))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{image} {version} cannot boot from this mirror: {} not published (the kernel's modules, ext4, xfs and nd_pmem among them, are there)",
                missing
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
        }
        let mut packages = vec![image.clone()];
        packages.extend(parts.into_iter().filter(|p| has(p)));
        Ok(KernelPkg {
            image,
            version,
            packages,
        })
    }

    /// Every series (major.minor) with a standard amd64 image on the
    /// mirror, each with its newest build or why it cannot boot.
    pub fn mirror_series(&self) -> Result<Vec<MirrorSeries>> {
        let names = self.image_names()?;
        let mut series: Vec<String> = names
            .iter()
            .filter_map(|n| series_of(n))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        series.sort_by(|a, b| compare_versions(a, b));
        let mut out = Vec::new();
        for s in series.into_iter().chain(["rc".to_string()]) {
            let build = match KernelSpec::parse(&s).and_then(|k| self.newest_image(&k)) {
                Ok(b) => b,
                Err(_) if s == "rc" => continue,
                Err(e) => {
                    out.push(MirrorSeries {
                        series: s,
                        build: None,
                        bootable: Err(format!("{e:#}")),
                    });
                    continue;
                }
            };
            let bootable = self
                .complete(build.0.clone(), build.1.clone())
                .map_err(|e| format!("{e:#}"));
            out.push(MirrorSeries {
                series: s,
                build: Some(build),
                bootable,
            });
        }
        Ok(out)
    }

    /// `resolve`, remembered until the package lists change (each resolve
    /// costs two `apt-cache` runs, about 3 s).
    pub fn resolve_cached(&self, series: &str) -> Result<KernelPkg> {
        let memo = self.dir.join(format!("resolved-{series}"));
        let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        if let (Some(m), Some(l)) = (mtime(&memo), mtime(&self.stamp())) {
            if m >= l {
                if let Ok(text) = fs::read_to_string(&memo) {
                    let mut it = text.split_whitespace().map(String::from);
                    if let (Some(image), Some(version)) = (it.next(), it.next()) {
                        let packages: Vec<String> = it.collect();
                        if !packages.is_empty() {
                            return Ok(KernelPkg {
                                image,
                                version,
                                packages,
                            });
                        }
                    }
                }
            }
        }
        let k = self.resolve(series)?;
        fs::write(
            &memo,
            format!("{} {} {}\n", k.image, k.version, k.packages.join(" ")),
        )?;
        Ok(k)
    }

    /// The headers of one kernel build, to compile modules for it: the
    /// arch package `linux-headers-<release>` at the image's version, and
    /// the common headers and kbuild tools it depends on (same source, same
    /// version).
    pub fn headers(&self, release: &str, version: &str) -> Result<KernelPkg> {
        let arch = format!("linux-headers-{release}");
        let text = self.show(&format!("{arch}={version}"))?;
        let depends = field(text.split("\n\n").next().unwrap_or(""), "Depends").unwrap_or_default();
        let mut packages = vec![arch.clone()];
        packages.extend(dep_names(&depends).into_iter().filter(|d| {
            (d.starts_with("linux-headers-") && d.ends_with("-common"))
                || d.starts_with("linux-kbuild-")
        }));
        Ok(KernelPkg {
            image: arch,
            version: version.to_string(),
            packages,
        })
    }

    /// The line of the private sources list for `suite` (`deb [signed-by=..]
    /// URI suite main`), for tools that take a mirror the same way
    /// (mmdebstrap).
    pub fn suite_line(&self, suite: &str) -> Result<String> {
        let path = self.dir.join("sources.list");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        suite_line(&text, suite).with_context(|| {
            format!(
                "no suite {suite} in {}: the kernel's Debian release is not searched",
                path.display()
            )
        })
    }

    /// Downloads the packages of `k` into `dest` and returns the .deb paths.
    pub fn download(&self, k: &KernelPkg, dest: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dest)?;
        let out = super::run_with_timeout(
            Command::new("apt-get")
                .current_dir(dest)
                .args(self.opts())
                .arg("download")
                .args(k.packages.iter().map(|p| format!("{p}={}", k.version))),
            APT_TIMEOUT,
        )?;
        if !out.status.success() {
            bail!(
                "apt-get download {} failed: {}",
                k.packages.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut debs = Vec::new();
        for e in fs::read_dir(dest)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "deb") {
                debs.push(p);
            }
        }
        if debs.len() != k.packages.len() {
            bail!(
                "apt-get download gave {} of {} packages",
                debs.len(),
                k.packages.len()
            );
        }
        Ok(debs)
    }
}

/// The `deb` line of a one-line-style sources list whose suite is `suite`.
fn suite_line(list: &str, suite: &str) -> Option<String> {
    list.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
        .find(|l| {
            // Options in brackets come before the URI and the suite.
            let rest = match l.find(']') {
                Some(end) => &l[end + 1..],
                None => &l[4..],
            };
            rest.split_whitespace().nth(1) == Some(suite)
        })
        .map(String::from)
}

/// Experimental's builds: release candidates (`7.3~rc7-1~exp1`).
fn is_prerelease(version: &str) -> bool {
    version.contains("~rc") || version.contains("~exp")
}

/// A standard-flavour amd64 image: `linux-image-<abi>-amd64`, not the
/// meta package, -rt, -cloud, debug symbols or an unsigned build.
fn is_standard_image(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-amd64"))
        .is_some_and(|abi| {
            abi.starts_with(|c: char| c.is_ascii_digit())
                && !["-rt", "-cloud", "-dbg", "unsigned"]
                    .iter()
                    .any(|f| abi.contains(f))
        })
}

/// The series (major.minor) of an image package name.
fn series_of(image: &str) -> Option<String> {
    let abi = image.strip_prefix("linux-image-")?;
    let mut it = abi.split(['.', '-', '+']);
    let (major, minor) = (it.next()?, it.next()?);
    let numeric = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| format!("{major}.{minor}"))
}

/// `apt-cache madison` lines: `pkg | version | uri suite/main amd64 Packages`.
fn parse_madison(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut cols = l.split('|').map(str::trim);
            let (pkg, version, source) = (cols.next()?, cols.next()?, cols.next()?);
            if !source.ends_with("Packages") {
                return None; // a Sources line
            }
            let suite = source
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.split('/').next())
                .unwrap_or("");
            Some((pkg.to_string(), version.to_string(), suite.to_string()))
        })
        .collect()
}

fn image_in_series(image: &str, series: &str) -> bool {
    image
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_prefix(series))
        .is_some_and(|r| r.starts_with('.') || r.starts_with('-'))
}

/// A field of a deb822 stanza (single line; continuation lines are joined).
fn field(stanza: &str, name: &str) -> Option<String> {
    let mut lines = stanza.lines();
    while let Some(l) = lines.next() {
        if let Some(v) = l.strip_prefix(name).and_then(|r| r.strip_prefix(':')) {
            let mut v = v.trim().to_string();
            for c in lines.by_ref() {
                if !c.starts_with([' ', '\t']) {
                    break;
                }
                v.push(' ');
                v.push_str(c.trim());
            }
            return Some(v);
        }
    }
    None
}

/// Package names in a Depends field (alternatives included).
fn dep_names(depends: &str) -> Vec<String> {
    depends
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap_or(d).to_string())
        .collect()
}

/// A source the machine's apt uses.
#[derive(Debug, Default)]
struct Source {
    uris: Vec<String>,
    suites: Vec<String>,
    signed_by: Option<String>,
}

fn system_sources() -> Vec<Source> {
    let mut out = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        v.sort();
        files.extend(v);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                // Comments must not be taken for fields.
                let clean: String = stanza
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .collect::<Vec<_>>()
                    .join("\n");
                let types = field(&clean, "Types").unwrap_or_default();
                if !types.split_whitespace().any(|t| t == "deb") {
                    continue;
                }
                out.push(Source {
                    uris: field(&clean, "URIs")
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(String::from)
                        .collect(),
                    suites: field(&clean, "Suites")
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(String::from)
                        .collect(),
                    signed_by: field(&clean, "Signed-By").filter(|s| s.starts_with('/')),
                });
            }
        } else if name.ends_with(".list") {
            for l in text.lines() {
                let l = l.trim();
                let Some(rest) = l.strip_prefix("deb ") else {
                    continue;
                };
                let mut rest = rest.trim();
                let mut signed_by = None;
                if rest.starts_with('[') {
                    let end = rest.find(']').unwrap_or(rest.len() - 1);
                    for opt in rest[1..end].split_whitespace() {
                        if let Some(k) = opt.strip_prefix("signed-by=") {
                            signed_by = Some(k.to_string());
                        }
                    }
                    rest = rest[end + 1..].trim();
                }
                let mut it = rest.split_whitespace();
                let (Some(uri), Some(suite)) = (it.next(), it.next()) else {
                    continue;
                };
                out.push(Source {
                    uris: vec![uri.to_string()],
                    suites: vec![suite.to_string()],
                    signed_by,
                });
            }
        }
    }
    out
}

/// The private sources list: the machine's Debian mirror (and its security
/// mirror, if any) with the suites that carry the kernels we test.
fn sources_list() -> Result<String> {
    let sources = system_sources();
    let is_debian_suite = |s: &str| {
        let base = s.split('-').next().unwrap_or(s);
        [
            "bookworm", "trixie", "forky", "sid", "stable", "testing", "unstable", "bullseye",
        ]
        .contains(&base)
    };
    let main = sources.iter().find(|s| {
        s.suites
            .iter()
            .any(|x| is_debian_suite(x) && !x.ends_with("-security"))
    });
    let Some(main) = main.and_then(|s| s.uris.first().map(|u| (u, s))) else {
        bail!(
            "no Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d: add the machine's Debian mirror to its apt sources"
        );
    };
    let security = sources
        .iter()
        .find(|s| s.suites.iter().any(|x| x.ends_with("-security")))
        .and_then(|s| s.uris.first().map(|u| (u, s)));
    let keyring = |s: &Source| {
        s.signed_by
            .clone()
            .unwrap_or_else(|| DEFAULT_KEYRING.to_string())
    };
    let mut text = String::from("# written by `cargo xtask vm` from the machine's apt sources\n");
    for suite in MAIN_SUITES {
        // The archive key in the machine's keyring file covers every suite we
        // read; debian-archive-keyring.gpg holds them all.
        let key = if Path::new(DEFAULT_KEYRING).exists() {
            DEFAULT_KEYRING.to_string()
        } else {
            keyring(main.1)
        };
        text += &format!("deb [signed-by={key}] {} {suite} main\n", main.0);
    }
    if let Some((uri, s)) = security {
        let key = if Path::new(DEFAULT_KEYRING).exists() {
            DEFAULT_KEYRING.to_string()
        } else {
            keyring(s)
        };
        for suite in SECURITY_SUITES {
            text += &format!("deb [signed-by={key}] {uri} {suite} main\n");
        }
    }
    Ok(text)
}

/// Debian version ordering (dpkg's algorithm: epoch, upstream, revision;
/// `~` sorts before everything, letters before other symbols).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) => (e.parse().unwrap_or(0), r),
            None => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: u8) -> i32 {
        match c {
            b'~' => -1,
            c if c.is_ascii_alphabetic() => c as i32,
            c => c as i32 + 256,
        }
    }
    fn part(a: &str, b: &str) -> Ordering {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            // Non-digit prefix.
            loop {
                let ca = a.get(i).filter(|c| !c.is_ascii_digit());
                let cb = b.get(j).filter(|c| !c.is_ascii_digit());
                if ca.is_none() && cb.is_none() {
                    break;
                }
                let oa = ca.map_or(0, |&c| order(c));
                let ob = cb.map_or(0, |&c| order(c));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                i += ca.is_some() as usize;
                j += cb.is_some() as usize;
            }
            // Digit run.
            let si = i;
            while a.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let sj = j;
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            let na: u128 = std::str::from_utf8(&a[si..i])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let nb: u128 = std::str::from_utf8(&b[sj..j])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if na != nb {
                return na.cmp(&nb);
            }
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part(ua, ub))
        .then_with(|| part(ra, rb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_version_order() {
        let sorted = [
            "6.1.176-1",
            "6.1.192-2",
            "6.12.95-1~bpo12+1",
            "6.12.117-1",
            "7.2.13-1",
            "7.3.4-1~bpo13+1",
            "7.3.4-1",
            "1:0.1-1",
        ];
        for w in sorted.windows(2) {
            assert_eq!(
                compare_versions(w[0], w[1]),
                Ordering::Less,
                "{} < {}",
                w[0],
                w[1]
            );
            assert_eq!(
                compare_versions(w[1], w[0]),
                Ordering::Greater,
                "{} > {}",
                w[1],
                w[0]
            );
        }
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0a", "1.0+"), Ordering::Less);
    }

    #[test]
    fn series_match() {
        assert!(image_in_series("linux-image-6.1.0-56-amd64", "6.1"));
        assert!(!image_in_series("linux-image-6.12.117+deb13-amd64", "6.1"));
        assert!(image_in_series("linux-image-6.12.117+deb13-amd64", "6.12"));
        assert!(image_in_series("linux-image-7.3.4+deb13-amd64", "7.3"));
    }

    #[test]
    fn suite_lines() {
        let list = "# x\ndeb [signed-by=/k.gpg] http://m/debian bookworm main\ndeb [signed-by=/k.gpg] http://m/debian trixie main\ndeb http://m/debian-security trixie-security main\n";
        assert_eq!(
            suite_line(list, "trixie").as_deref(),
            Some("deb [signed-by=/k.gpg] http://m/debian trixie main")
        );
        assert_eq!(
            suite_line(list, "trixie-security").as_deref(),
            Some("deb http://m/debian-security trixie-security main")
        );
        assert_eq!(suite_line(list, "sid"), None);
    }

    #[test]
    fn kernel_specs() {
        assert_eq!(KernelSpec::parse("newest").unwrap(), KernelSpec::Newest);
        assert_eq!(
            KernelSpec::parse("rc").unwrap(),
            KernelSpec::ReleaseCandidate
        );
        assert_eq!(
            KernelSpec::parse("6.16").unwrap(),
            KernelSpec::Series("6.16".into())
        );
        assert_eq!(
            KernelSpec::parse("6.16.12-1~bpo13+1").unwrap(),
            KernelSpec::Version("6.16.12-1~bpo13+1".into())
        );
        assert_eq!(
            KernelSpec::parse("linux-image-7.3-amd64").unwrap(),
            KernelSpec::Image("linux-image-7.3-amd64".into())
        );
        for bad in ["", "6", "six.one", "6.1.2", "6.1 && rm", "../x"] {
            let e = KernelSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--kernel takes"), "{bad}: {e}");
        }
    }

    #[test]
    fn image_names_and_series() {
        assert!(is_standard_image("linux-image-6.16.12+deb13-amd64"));
        assert!(is_standard_image("linux-image-7.3-amd64"));
        assert!(is_standard_image("linux-image-6.1.0-57-amd64"));
        for other in [
            "linux-image-amd64",
            "linux-image-6.1.0-57-rt-amd64",
            "linux-image-7.3.4+deb13-cloud-amd64",
            "linux-image-6.1.0-57-amd64-dbg",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.1.0-57-arm64",
        ] {
            assert!(!is_standard_image(other), "{other}");
        }
        assert_eq!(
            series_of("linux-image-6.1.0-57-amd64").as_deref(),
            Some("6.1")
        );
        assert_eq!(
            series_of("linux-image-6.16.12+deb13-amd64").as_deref(),
            Some("6.16")
        );
        assert_eq!(series_of("linux-image-7.3-amd64").as_deref(), Some("7.3"));
        assert!(is_prerelease("7.3~rc7-1~exp1"));
        assert!(!is_prerelease("7.3.4-1~bpo13+1"));
    }

    #[test]
    fn madison_lines() {
        let text = " linux-image-7.3-amd64 | 7.3~rc7-1~exp1 | http://m/debian experimental/main amd64 Packages\n  linux | 7.3~rc7-1~exp1 | http://m/debian experimental/main Sources\n";
        assert_eq!(
            parse_madison(text),
            vec![(
                "linux-image-7.3-amd64".to_string(),
                "7.3~rc7-1~exp1".to_string(),
                "experimental".to_string()
            )]
        );
    }

    #[test]
    fn depends_parsing() {
        let d = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)";
        assert_eq!(dep_names(d)[3], "linux-binary-7.3.4+deb13-amd64");
        let s = "Package: x\nVersion: 1\nDepends: a,\n b\n";
        assert_eq!(field(s, "Depends").as_deref(), Some("a, b"));
    }
}
