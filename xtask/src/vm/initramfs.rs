//! The guest's root: an uncompressed newc cpio written directly (no staging
//! directory, no cpio tool), holding busybox, the init script, the kernel's
//! modules, our binaries and the host programs the guest needs with their
//! shared libraries. Uncompressed because decompression under TCG costs more
//! than the kernel's copy of a ~30 MB archive.
use std::{
    collections::BTreeSet,
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Host programs the guest needs, by the name it calls them, with where to
/// look on the host.
const HOST_PROGRAMS: &[(&str, &[&str])] = &[
    ("/usr/sbin/mke2fs", &["/usr/sbin/mke2fs", "/sbin/mke2fs"]),
    (
        "/usr/sbin/mkfs.xfs",
        &["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"],
    ),
];

pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let name = name.trim_start_matches('/');
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // check
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        pad(&mut self.out, 110 + name.len() + 1)?;
        self.out.write_all(data)?;
        pad(&mut self.out, data.len())?;
        Ok(())
    }

    /// Creates `path`'s parent directories that are not there yet.
    fn parents(&mut self, path: &str) -> Result<()> {
        let p = Path::new(path.trim_start_matches('/'));
        let mut acc = PathBuf::new();
        if let Some(parent) = p.parent() {
            for c in parent.components() {
                acc.push(c);
                let s = acc.to_string_lossy().into_owned();
                if self.dirs.insert(s.clone()) {
                    self.entry(&s, 0o040755, (0, 0), &[])?;
                }
            }
        }
        Ok(())
    }

    pub fn dir(&mut self, path: &str) -> Result<()> {
        self.parents(&format!("{}/x", path.trim_end_matches('/')))
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.parents(path)?;
        self.entry(path, 0o100000 | mode, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parents(path)?;
        self.entry(path, 0o120777, (0, 0), target.as_bytes())
    }

    pub fn chardev(&mut self, path: &str, major: u32, minor: u32) -> Result<()> {
        self.parents(path)?;
        self.entry(path, 0o020600, (major, minor), &[])
    }

    /// Copies a host file (following symlinks) to `path`.
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs_mode(host)?;
        self.file(path, mode, &data)
    }

    pub fn finish(mut self) -> Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

fn pad(w: &mut impl Write, len: usize) -> Result<()> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..n])?;
    Ok(())
}

fn fs_mode(p: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(p)?.permissions().mode() & 0o7777)
}

/// The shared libraries (and the dynamic loader) a host program needs.
fn libraries(prog: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(prog).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || !out.status.success() {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// What goes into the guest besides the kernel's modules.
pub struct Contents<'a> {
    pub init_script: &'a str,
    pub modules: &'a [PathBuf],
    /// Our binaries, installed in /usr/local/bin under their file names.
    pub binaries: &'a [PathBuf],
    /// More host programs (absolute paths), installed at the same path with
    /// their shared libraries; for a few boots only (bpftrace for the bench).
    pub host_programs: &'a [PathBuf],
    /// More files: (path in the guest, host file), e.g. a test's own kernel
    /// module under /lib/modules/extra.
    pub extra_files: &'a [(String, PathBuf)],
}

pub fn build(out: &Path, c: &Contents) -> Result<u64> {
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("busybox is missing: run `cargo xtask setup` (busybox-static)")?;
    let f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(f));
    for d in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "mnt",
        "root",
        "etc",
        "usr/bin",
        "usr/sbin",
        "sbin",
        "bin",
        "usr/local/bin",
    ] {
        cpio.dir(d)?;
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.chardev("/dev/console", 5, 1)?;
    cpio.host_file("/bin/busybox", busybox)?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        // busybox's own mke2fs lacks -t and -E: the host's must win.
        let shadowed = HOST_PROGRAMS
            .iter()
            .any(|(g, _)| g.rsplit('/').next() == Some(applet));
        if applet != "busybox" && !applet.is_empty() && !shadowed {
            cpio.symlink(&format!("/bin/{applet}"), "busybox")?;
        }
    }
    cpio.file("/init", 0o755, c.init_script.as_bytes())?;
    // mke2fs reads its defaults (ext4 features) from here.
    if Path::new("/etc/mke2fs.conf").exists() {
        cpio.host_file("/etc/mke2fs.conf", Path::new("/etc/mke2fs.conf"))?;
    }
    cpio.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    cpio.file("/etc/group", 0o644, b"root:x:0:\n")?;
    for m in c.modules {
        let name = m.file_name().unwrap_or_default().to_string_lossy();
        cpio.host_file(&format!("/lib/modules/{name}"), m)?;
    }
    for (guest, host) in c.extra_files {
        cpio.host_file(guest, host)?;
    }
    let mut libs = BTreeSet::new();
    for (guest, candidates) in HOST_PROGRAMS {
        let host = candidates
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .with_context(|| format!("{guest} is missing on the host: run `cargo xtask setup`"))?;
        cpio.host_file(guest, host)?;
        libs.extend(libraries(host)?);
    }
    for p in c.host_programs {
        if !p.is_absolute() || !p.exists() {
            bail!(
                "{} is missing on the host: run `cargo xtask setup`",
                p.display()
            );
        }
        cpio.host_file(&p.to_string_lossy(), p)?;
        libs.extend(libraries(p)?);
    }
    for b in c.binaries {
        if !b.exists() {
            bail!("{} is missing: run `cargo xtask build`", b.display());
        }
        let name = b.file_name().unwrap_or_default().to_string_lossy();
        cpio.host_file(&format!("/usr/local/bin/{name}"), b)?;
        libs.extend(libraries(b)?);
    }
    for lib in libs {
        cpio.host_file(&lib.to_string_lossy(), &lib)?;
    }
    let mut w = cpio.finish()?;
    w.flush()?;
    Ok(fs::metadata(out)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_lists_with_busybox() {
        let mut c = Cpio::new(Vec::new());
        c.file("/usr/local/bin/x", 0o755, b"hello").unwrap();
        c.symlink("/bin/sh", "busybox").unwrap();
        c.chardev("/dev/console", 5, 1).unwrap();
        let bytes = c.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let Some(bb) = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            return; // the listing check needs busybox (cargo xtask setup)
        };
        let mut child = Command::new(bb)
            .args(["cpio", "-t"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        for want in [
            "usr",
            "usr/local/bin",
            "usr/local/bin/x",
            "bin/sh",
            "dev/console",
        ] {
            assert!(
                list.lines().any(|l| l == want),
                "{want} missing from {list}"
            );
        }
    }
}
