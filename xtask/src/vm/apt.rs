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
/// bookworm (6.1), bookworm-backports and trixie (6.12), trixie-backports and
/// sid (the newest: 6.18, 7.x). Security suites carry the newest builds of
/// the stable series (6.1 updates land in bookworm-security first).
const MAIN_SUITES: &[&str] = &[
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "sid",
];
const SECURITY_SUITES: &[&str] = &["bookworm-security", "trixie-security"];
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists younger than this are reused without asking the mirror.
const LISTS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
const APT_TIMEOUT: Duration = Duration::from_secs(300);

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

    /// The newest kernel of `series` ("6.1", "6.12", "newest", or any
    /// major.minor that a `linux-image-amd64` in the searched suites points
    /// to). Resolved from the meta package so that a build that is no longer
    /// published is replaced by the newest one of its series.
    pub fn resolve(&self, series: &str) -> Result<KernelPkg> {
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
            if series != "newest" && !image_in_series(&image, series) {
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
                "no Debian kernel of series {series} in {}: supported series are 6.1, 6.12 and newest",
                MAIN_SUITES.join(", ")
            );
        };
        // The image package's own version equals the meta package's; its
        // Depends name the split-out parts (7.x).
        let img = self.show(&format!("{image}={version}"))?;
        let abi = image.trim_start_matches("linux-image-");
        let mut packages = vec![image.clone()];
        if let Some(depends) = field(img.split("\n\n").next().unwrap_or(""), "Depends") {
            for d in dep_names(&depends) {
                if (d.starts_with("linux-binary-") || d.starts_with("linux-modules-"))
                    && d.ends_with(abi)
                {
                    packages.push(d);
                }
            }
        }
        Ok(KernelPkg {
            image,
            version,
            packages,
        })
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
    fn depends_parsing() {
        let d = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)";
        assert_eq!(dep_names(d)[3], "linux-binary-7.3.4+deb13-amd64");
        let s = "Package: x\nVersion: 1\nDepends: a,\n b\n";
        assert_eq!(field(s, "Depends").as_deref(), Some("a, b"));
    }
}
