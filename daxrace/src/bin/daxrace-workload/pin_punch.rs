//! pin-punch: reader threads O_DIRECT-read written data from a non-DAX file
//! into a MAP_SHARED mapping of a DAX file (get_user_pages pins the DAX
//! pages for the duration of each read) while a modifier thread punches
//! holes, zeroes ranges, collapses and inserts ranges, and truncates and
//! re-extends that file, each of which must first break layouts.
//!
//! Checking reads that race with modifications: the DAX file is cut into
//! regions with a generation counter each (a seqlock: odd while a
//! modification of the region is in flight). A reader notes the generations
//! of its destination before the read and after reading the bytes back; if
//! they are equal and even, nothing touched the range and the bytes must be
//! exactly the source's. Otherwise the read is counted as raced and not
//! judged. Each reader writes only into its own regions so that readers do
//! not overwrite each other.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::thread::JoinHandleExt},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::json;

use crate::{
    pattern::{self, Rng},
    report::{self, Report},
    stall::{self, Slot},
    Common,
};

const REGION: u64 = 64 << 10;
const BLOCK: u64 = 4096;
/// Source stream seed offset: distinct from the DAX file's own fill so that
/// misplaced data cannot pass the check.
const SRC_SALT: u64 = 0x5352_4300;
const DAX_SALT: u64 = 0x4441_5800;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Op {
    Punch,
    Zero,
    Collapse,
    Insert,
    Truncate,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Non-DAX directory for the O_DIRECT source file (default: $DAX_SCRATCH).
    /// It must support O_DIRECT (tmpfs does not).
    #[arg(long)]
    pub src_dir: Option<PathBuf>,
    /// How long to run; with --mods or --reads, the longest to run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// A fixed operation budget instead of a time: the modifier stops after
    /// this many modifications (each punch, zero, collapse/insert pair or
    /// truncate counts one). A benchmark then compares runs that did the
    /// same work, so its rates do not depend on how the scheduler split a
    /// fixed time between threads. With --reads: the run ends when both
    /// budgets are spent (or --seconds passed).
    #[arg(long)]
    pub mods: Option<u64>,
    /// The readers stop after this many reads in all (see --mods).
    #[arg(long)]
    pub reads: Option<u64>,
    /// Reader (pinning) threads.
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Layout-breaking operations to cycle through.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "punch,zero,collapse,insert,truncate"
    )]
    pub ops: Vec<Op>,
    /// Size of the DAX file (MiB).
    #[arg(long, default_value_t = 4)]
    pub file_mib: u64,
    /// Largest single read (KiB, at most 64).
    #[arg(long, default_value_t = 64)]
    pub max_read_kib: u64,
    /// Pause between two modifications (ms), so that readers get pins in.
    #[arg(long, default_value_t = 1.0)]
    pub gap_ms: f64,
    /// Make the kernel map the file with 2 MiB (PMD) entries where it can:
    /// a file of at least PMD_FILE_MIB MiB, whole 2 MiB blocks, mapped at a
    /// 2 MiB-aligned address. Whether the filesystem's extents are aligned
    /// is its own choice: ext4 on the VM's pmem made PMD entries in two
    /// 4-second runs of three on 6.12, xfs in none.
    #[arg(long)]
    pub pmd: bool,
}

/// The smallest file `--pmd` uses: ext4 allocated 2 MiB-aligned extents
/// for a file this large (the default 4 MiB file got none).
const PMD_FILE_MIB: u64 = 64;
const PMD_SIZE: u64 = 2 << 20;

struct Shared {
    report: Report,
    stop: AtomicBool,
    gens: Vec<AtomicU64>,
    map: usize,
    file_size: u64,
    src_size: u64,
    seed: u64,
    dax: File,
    src: File,
    reads: AtomicU64,
    mods: AtomicU64,
    /// When the last operation of the budgets ended: the run's duration ends
    /// there, not when the watcher next looks.
    done_at: std::sync::OnceLock<Instant>,
    /// Budgets (u64::MAX: none; then only `stop` ends a thread).
    read_budget: u64,
    mod_budget: u64,
}

impl Shared {
    fn regions(&self, off: u64, end: u64) -> std::ops::Range<usize> {
        let n = self.gens.len();
        (off / REGION).min(n as u64) as usize..(end.div_ceil(REGION)).min(n as u64) as usize
    }
    fn snapshot(&self, r: std::ops::Range<usize>) -> Vec<u64> {
        self.gens[r]
            .iter()
            .map(|g| g.load(Ordering::SeqCst))
            .collect()
    }
    /// Whether the operation budgets are used up (a kind without a budget
    /// runs until the other's is; with neither, never).
    fn budgets_spent(&self) -> bool {
        let spent =
            |n: &AtomicU64, budget: u64| budget == u64::MAX || n.load(Ordering::SeqCst) >= budget;
        (self.read_budget != u64::MAX || self.mod_budget != u64::MAX)
            && spent(&self.reads, self.read_budget)
            && spent(&self.mods, self.mod_budget)
    }
    /// Takes one operation from a budget (counting it); false once the
    /// budget is spent.
    fn take(&self, counter: &AtomicU64, budget: u64) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < budget).then_some(n + 1)
            })
            .is_ok()
    }
    /// Notes the moment both budgets were spent (the first to see it).
    fn note_done(&self) {
        if self.budgets_spent() {
            let _ = self.done_at.set(Instant::now());
        }
    }
    fn bump(&self, r: std::ops::Range<usize>) {
        for g in &self.gens[r] {
            g.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub fn run(a: Args) -> Result<i32> {
    let (dir, fs) = a.common.dax_target()?;
    if a.ops.is_empty() || a.readers == 0 {
        bail!("need at least one reader and one op");
    }
    let file_mib = if a.pmd {
        a.file_mib.max(PMD_FILE_MIB)
    } else {
        a.file_mib.max(1)
    };
    let file_size = (file_mib << 20).next_multiple_of(if a.pmd { PMD_SIZE } else { REGION });
    let max_read = (a.max_read_kib.clamp(4, 64) << 10).next_multiple_of(BLOCK);
    let src_size = 8u64 << 20;
    let seed = a.common.seed;
    let pid = std::process::id();

    let src = pattern::direct_source(
        a.src_dir.as_deref(),
        &format!("daxrace-src-{pid}"),
        seed ^ SRC_SALT,
        src_size,
    )?;

    let (dax, map) = pattern::mapped_dax_file(
        &dir,
        &format!("daxrace-pin-{pid}"),
        seed ^ DAX_SALT,
        file_size,
    )?;

    if a.pmd && !(map as u64).is_multiple_of(PMD_SIZE) {
        // ext4 and xfs align DAX mappings themselves (thp_get_unmapped_area).
        eprintln!(
            "pin-punch: warning: --pmd: the mapping at {map:p} is not 2 MiB-aligned: the kernel will use 4 KiB entries"
        );
    }
    let sh = Arc::new(Shared {
        report: Report::default(),
        stop: AtomicBool::new(false),
        gens: (0..file_size / REGION).map(|_| AtomicU64::new(0)).collect(),
        map: map as usize,
        file_size,
        src_size,
        seed,
        dax,
        src,
        reads: AtomicU64::new(0),
        mods: AtomicU64::new(0),
        done_at: std::sync::OnceLock::new(),
        read_budget: a.reads.unwrap_or(u64::MAX),
        mod_budget: a.mods.unwrap_or(u64::MAX),
    });
    let budgeted = a.mods.is_some() || a.reads.is_some();
    println!(
        "pin-punch: {} ({fs}), {} MiB file, {} readers (up to {} KiB O_DIRECT reads from a non-DAX file), ops {:?}, {} s{}",
        dir.display(),
        file_size >> 20,
        a.readers,
        max_read >> 10,
        a.ops,
        a.seconds,
        if budgeted {
            format!(
                " at most, budget {} modifications, {} reads",
                a.mods.map_or("unlimited".into(), |n| n.to_string()),
                a.reads.map_or("unlimited".into(), |n| n.to_string())
            )
        } else {
            String::new()
        }
    );

    let mut slots: Vec<Arc<Slot>> = Vec::new();
    let mut handles = Vec::new();
    for r in 0..a.readers {
        let slot = Arc::new(Slot::new(format!("reader{r}")));
        slots.push(slot.clone());
        let sh = sh.clone();
        let readers = a.readers;
        handles.push(std::thread::spawn(move || {
            reader(&sh, &slot, r, readers, max_read)
        }));
    }
    let mslot = Arc::new(Slot::new("modifier"));
    slots.push(mslot.clone());
    {
        let sh = sh.clone();
        let ops = a.ops.clone();
        let gap = Duration::from_secs_f64(a.gap_ms.max(0.0) / 1e3);
        handles.push(std::thread::spawn(move || modifier(&sh, &mslot, &ops, gap)));
    }

    let start = Instant::now();
    let run_for = Duration::from_secs_f64(a.seconds.max(0.0));
    let timeout = a.common.stall_timeout();
    let slot_refs: Vec<&Slot> = slots.iter().map(|s| s.as_ref()).collect();
    // Run, then stop and wait for the threads, watching all along.
    let mut stop_at: Option<Instant> = None;
    let stuck = loop {
        let stuck = stall::watch(&slot_refs, timeout, 10);
        if !stuck.is_empty() {
            break stuck;
        }
        if stop_at.is_none()
            && (start.elapsed() >= run_for
                || sh.report.stall_count() >= a.common.max_stalls as usize
                || (budgeted && sh.budgets_spent()))
        {
            sh.stop.store(true, Ordering::SeqCst);
            stop_at = Some(Instant::now());
        }
        if stop_at.is_some() && handles.iter().all(|h| h.is_finished()) {
            break stuck;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = match sh.done_at.get() {
        Some(t) => *t - start,
        None => start.elapsed(),
    };
    for s in &stuck {
        eprintln!("daxrace-workload: STUCK: {s}");
    }
    if stuck.is_empty() {
        for h in handles {
            let _ = h.join();
        }
    } else {
        // Threads in uninterruptible sleep cannot be joined; leave them.
        for h in handles {
            let _ = h.into_pthread_t();
        }
    }
    let extra = json!({
        "reads": sh.reads.load(Ordering::Relaxed),
        "modifications": sh.mods.load(Ordering::Relaxed),
        "budget": {"mods": a.mods, "reads": a.reads},
        "readers": a.readers,
        "file_bytes": file_size,
        "stuck": stuck,
    });
    let summary = sh.report.print("pin-punch", &fs, elapsed, extra);
    if a.common.json {
        println!("{summary}");
    }
    Ok(exit_code(&sh.report, !stuck.is_empty()))
}

pub fn exit_code(r: &Report, stuck: bool) -> i32 {
    if r.mismatch_count() > 0 {
        crate::EXIT_MISMATCH
    } else if stuck {
        crate::EXIT_STUCK
    } else if r.stall_count() > 0 {
        crate::EXIT_STALL
    } else {
        crate::EXIT_OK
    }
}

pub fn pread(fd: &File, buf: *mut u8, len: u64, off: u64) -> std::io::Result<u64> {
    // SAFETY: buf points to len writable bytes (our mapping or buffer).
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.cast(), len as usize, off as i64) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as u64)
    }
}

fn reader(sh: &Shared, slot: &Slot, me: usize, readers: usize, max_read: u64) {
    slot.bind();
    let mut rng = Rng::new(sh.seed ^ ((me as u64 + 1) * 0x9e37));
    let mut check = pattern::Aligned::new(max_read as usize);
    // This reader's regions: every `readers`-th one, starting at `me`.
    let mine: Vec<u64> = (0..sh.gens.len() as u64)
        .filter(|r| *r as usize % readers == me)
        .collect();
    if mine.is_empty() {
        return;
    }
    while !sh.stop.load(Ordering::Relaxed) {
        if !sh.take(&sh.reads, sh.read_budget) {
            // The read budget is spent: wait for the modifier's.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let len = BLOCK * (1 + rng.below(max_read / BLOCK));
        let region = mine[rng.below(mine.len() as u64) as usize];
        let dst = region * REGION + BLOCK * rng.below((REGION - len) / BLOCK + 1);
        let src_off = BLOCK * rng.below((sh.src_size - len) / BLOCK + 1);
        let span = sh.regions(dst, dst + len);
        let g1 = sh.snapshot(span.clone());
        slot.enter("read");
        let res = pread(&sh.src, (sh.map + dst as usize) as *mut u8, len, src_off);
        let (took, signals) = slot.leave();
        sh.note_done();
        sh.report.op("read", took, res.as_ref().copied());
        if signals > 0 {
            sh.report.stall(crate::report::Stall {
                thread: slot.name.clone(),
                op: "read",
                waited: took,
                signals,
                ended: ended(&res),
                note: "reader blocked (behind a modifier?)".into(),
            });
        }
        let Ok(n) = res else {
            // EFAULT: the destination is past EOF for a moment (truncate,
            // collapse); let the modifier run instead of spinning.
            std::thread::yield_now();
            continue;
        };
        if n == 0 {
            continue;
        }
        // Read the bytes back through the file, not the mapping: a truncate
        // may have shrunk the file and a load from the mapping would SIGBUS.
        let buf = &mut check.as_mut()[..n as usize];
        let back = pread(&sh.dax, buf.as_mut_ptr(), n, dst);
        let g2 = sh.snapshot(span);
        let quiet = g1 == g2 && g1.iter().all(|g| g % 2 == 0);
        if !quiet {
            sh.report.check("raced");
            continue;
        }
        match back {
            Ok(m) if m == n => match pattern::first_mismatch(sh.seed ^ SRC_SALT, src_off, buf) {
                None => sh.report.check("verified"),
                Some(i) => sh.report.mismatch(format!(
                    "DAX file offset {:#x}: O_DIRECT read of {n} bytes from source offset {src_off:#x} \
                     does not match at byte {i} (no modification overlapped)",
                    dst
                )),
            },
            Ok(m) => sh.report.mismatch(format!(
                "read back {m} of {n} bytes at DAX offset {dst:#x} with no modification in flight"
            )),
            Err(e) => sh.report.mismatch(format!("reading back DAX offset {dst:#x}: {e}")),
        }
    }
}

fn ended(res: &std::io::Result<u64>) -> String {
    match res {
        Ok(_) => "completed".into(),
        Err(e) => report::errno_name(e),
    }
}

pub fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> std::io::Result<u64> {
    // SAFETY: plain syscall on our fd.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(len)
    }
}

pub fn ftruncate(f: &File, size: u64) -> std::io::Result<u64> {
    // SAFETY: plain syscall on our fd.
    let r = unsafe { libc::ftruncate(f.as_raw_fd(), size as i64) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(0)
    }
}

/// Runs one layout-breaking syscall under the watchdog and records it.
fn timed(
    sh: &Shared,
    slot: &Slot,
    name: &'static str,
    f: impl FnOnce() -> std::io::Result<u64>,
) -> std::io::Result<u64> {
    slot.enter(name);
    let res = f();
    let (took, signals) = slot.leave();
    sh.report.op(name, took, res.as_ref().copied());
    if signals > 0 {
        sh.report.stall(crate::report::Stall {
            thread: slot.name.clone(),
            op: name,
            waited: took,
            signals,
            ended: ended(&res),
            note: "break-layouts did not return until interrupted".into(),
        });
    }
    res
}

fn modifier(sh: &Shared, slot: &Slot, ops: &[Op], gap: Duration) {
    slot.bind();
    let mut rng = Rng::new(sh.seed ^ 0xd1ce);
    let size = sh.file_size;
    let dax = &sh.dax;
    while !sh.stop.load(Ordering::Relaxed) {
        if !sh.take(&sh.mods, sh.mod_budget) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let op = ops[rng.below(ops.len() as u64) as usize];
        // Offsets and lengths are block multiples (collapse and insert
        // require it); ranges stay inside the file, and every op leaves the
        // file at its full size again so that readers rarely hit EOF.
        let len = BLOCK * (1 + rng.below((256 << 10) / BLOCK));
        let off = BLOCK * rng.below((size - len) / BLOCK);
        let span = match op {
            Op::Punch | Op::Zero => sh.regions(off, off + len),
            // These move or drop everything after `off`.
            _ => sh.regions(off, size),
        };
        sh.bump(span.clone());
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let collapse = libc::FALLOC_FL_COLLAPSE_RANGE;
        let insert = libc::FALLOC_FL_INSERT_RANGE;
        match op {
            Op::Punch => {
                let _ = timed(sh, slot, "punch", || fallocate(dax, punch, off, len));
            }
            Op::Zero => {
                let _ = timed(sh, slot, "zero", || fallocate(dax, zero, off, len));
            }
            // Collapse then insert back (a hole where the range was)...
            Op::Collapse => {
                if timed(sh, slot, "collapse", || fallocate(dax, collapse, off, len)).is_ok() {
                    let _ = timed(sh, slot, "insert", || fallocate(dax, insert, off, len));
                }
            }
            // ...or insert a hole and collapse it away again.
            Op::Insert => {
                if timed(sh, slot, "insert", || fallocate(dax, insert, off, len)).is_ok() {
                    let _ = timed(sh, slot, "collapse", || fallocate(dax, collapse, off, len));
                }
            }
            Op::Truncate => {
                let _ = timed(sh, slot, "truncate", || ftruncate(dax, off));
            }
        }
        // Re-extend and rewrite the start of the tail so that the file has
        // written blocks there again (a failed collapse/insert pair or a
        // truncate left it short).
        let cur = dax.metadata().map(|m| m.len()).unwrap_or(size);
        if cur != size {
            let _ = timed(sh, slot, "extend", || {
                ftruncate(dax, size)?;
                let n = (size.saturating_sub(cur)).min(256 << 10);
                pattern::write(dax, sh.seed ^ DAX_SALT, cur.min(size), n).map(|_| n)
            });
        }
        sh.bump(span);
        sh.note_done();
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
}
