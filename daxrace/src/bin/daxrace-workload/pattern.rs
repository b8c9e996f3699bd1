//! Verifiable data: the byte at offset `o` of stream `seed` is a function of
//! (seed, o), so any range can be checked without keeping a copy, and data
//! that lands at the wrong offset or from the wrong stream is caught.
use std::{fs::File, os::unix::fs::FileExt};

fn mix(mut z: u64) -> u64 {
    // splitmix64
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the bytes at `[off, off + buf.len())` of stream `seed`.
pub fn fill(seed: u64, off: u64, buf: &mut [u8]) {
    // One hash per 8-byte word: byte k of a word is its k-th little-endian byte.
    let (mut i, mut o) = (0, off);
    while i < buf.len() {
        let w = mix(seed ^ (o / 8).wrapping_mul(0x1000_0001)).to_le_bytes();
        let s = (o % 8) as usize;
        let n = (8 - s).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[s..s + n]);
        i += n;
        o += n as u64;
    }
}

/// The first offset in `buf` that differs from stream `seed` at `off`.
pub fn first_mismatch(seed: u64, off: u64, buf: &[u8]) -> Option<usize> {
    let mut want = vec![0u8; buf.len()];
    fill(seed, off, &mut want);
    buf.iter().zip(&want).position(|(a, b)| a != b)
}

/// Writes `len` bytes of stream `seed` at `off` of `f`, 1 MiB at a time.
pub fn write(f: &File, seed: u64, off: u64, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        fill(seed, off + done, &mut buf[..n]);
        f.write_all_at(&buf[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// A small fast random source (xorshift), one per thread.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `[0, n)` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A page-aligned buffer (O_DIRECT needs aligned memory).
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value.
unsafe impl Send for Aligned {}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let len = len.max(4096).next_multiple_of(4096);
        // SAFETY: anonymous private mapping; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(ptr != libc::MAP_FAILED, "mmap of {len} bytes failed");
        Aligned {
            ptr: ptr.cast(),
            len,
        }
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe our mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Monotonic nanoseconds since the first call (for atomics shared with the
/// watchdog).
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
        + 1
}

/// Creates `dir/name` on the DAX mount, fills it with the pattern of
/// `seed`, unlinks it (it lives while open) and maps it shared: O_DIRECT reads
/// into this mapping pin its DAX pages. The mapping lives until exit.
pub fn mapped_dax_file(
    dir: &std::path::Path,
    name: &str,
    seed: u64,
    size: u64,
) -> anyhow::Result<(File, *mut libc::c_void)> {
    use std::os::fd::AsRawFd;

    use anyhow::Context;
    let path = dir.join(name);
    let dax = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    write(&dax, seed, 0, size)?;
    dax.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    // SAFETY: a shared mapping of our own file; only the kernel touches it
    // (O_DIRECT into it), never our code.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            dax.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        anyhow::bail!(
            "mmap of {} failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok((dax, map))
}

/// The source of the O_DIRECT reads that pin DAX pages: `size` bytes of the
/// pattern of `seed` in `dir` (else `$DAX_SCRATCH`), a non-DAX filesystem
/// that supports O_DIRECT, opened with O_DIRECT and unlinked (it lives while
/// open). It holds written data: O_DIRECT reads of unwritten extents are
/// zero-filled without a bio and pin nothing (why generic/503 misses).
pub fn direct_source(
    dir: Option<&std::path::Path>,
    name: &str,
    seed: u64,
    size: u64,
) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;

    use anyhow::Context;
    let dir = dir
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("DAX_SCRATCH").map(std::path::PathBuf::from))
        .context("no source directory: pass --src-dir (a non-DAX filesystem that supports O_DIRECT) or set DAX_SCRATCH")?;
    let path = dir.join(name);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    write(&f, seed, 0, size).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    drop(f);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .with_context(|| format!("opening {} with O_DIRECT (tmpfs cannot)", path.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_positional() {
        let mut a = vec![0u8; 100];
        let mut b = vec![0u8; 50];
        fill(7, 1000, &mut a);
        fill(7, 1050, &mut b);
        assert_eq!(&a[50..], &b[..]);
        assert_eq!(first_mismatch(7, 1000, &a), None);
        assert_eq!(first_mismatch(8, 1000, &a), Some(0));
        assert_eq!(first_mismatch(7, 1004, &a), Some(0));
    }
}
