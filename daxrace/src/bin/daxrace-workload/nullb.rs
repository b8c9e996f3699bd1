//! A slow block device: null_blk made through configfs, memory-backed (so it
//! returns the data written to it) with every request completed by a timer
//! after `completion_nsec`. An O_DIRECT read from it into a DAX mapping
//! keeps the DAX pages pinned for that long: the data is copied at
//! submission, the pages are released at completion.
//!
//! Chosen over dm-delay because it needs no userspace tool (dmsetup) in the
//! guest and no backing device: one module and a few configfs writes.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const ROOT: &str = "/sys/kernel/config/nullb";

pub struct NullBlk {
    dir: PathBuf,
    pub dev: PathBuf,
}

fn set(dir: &Path, attr: &str, val: &str) -> Result<()> {
    fs::write(dir.join(attr), val).with_context(|| format!("setting null_blk {attr}={val}"))
}

impl NullBlk {
    pub fn create(name: &str, size_mib: u64, delay: Duration) -> Result<NullBlk> {
        let root = Path::new(ROOT);
        if !root.exists() {
            // Outside the test guest: try to load the module ourselves.
            let _ = Command::new("modprobe")
                .args(["null_blk", "nr_devices=0"])
                .status();
            let _ = Command::new("mount")
                .args(["-t", "configfs", "configfs", "/sys/kernel/config"])
                .status();
        }
        if !root.exists() {
            bail!("no {ROOT}: load null_blk (modprobe null_blk nr_devices=0) and mount configfs on /sys/kernel/config");
        }
        let dir = root.join(name);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on, Drop removes the device again if a step fails.
        let mut nb = NullBlk {
            dir: dir.clone(),
            dev: PathBuf::new(),
        };
        set(&dir, "size", &size_mib.to_string())?;
        set(&dir, "blocksize", "4096")?;
        set(&dir, "memory_backed", "1")?;
        // irqmode 2: completion by a timer after completion_nsec.
        set(&dir, "irqmode", "2")?;
        set(&dir, "completion_nsec", &delay.as_nanos().to_string())?;
        set(&dir, "power", "1")?;
        // Since 5.19 the disk takes the configfs directory's name; before,
        // it was nullb<index>.
        let index = fs::read_to_string(dir.join("index"))?.trim().to_string();
        let candidates = [
            PathBuf::from(format!("/dev/{name}")),
            PathBuf::from(format!("/dev/nullb{index}")),
        ];
        let t = Instant::now();
        let path = loop {
            if let Some(p) = candidates.iter().find(|p| p.exists()) {
                break p.clone();
            }
            if t.elapsed() > Duration::from_secs(5) {
                bail!("null_blk device {name} did not appear as /dev/{name} or /dev/nullb{index}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        nb.dev = path;
        Ok(nb)
    }
}

impl Drop for NullBlk {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("power"), "0");
        let _ = fs::remove_dir(&self.dir);
    }
}
