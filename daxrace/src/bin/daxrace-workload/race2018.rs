//! race2018: the 2018 break-layouts race made to complete on purpose, for a
//! kernel whose break-layouts loop is the 2018 one (xtask/kmod/fault_patch,
//! `mode=buggy`, with its window held open).
//!
//! Each round pins two pages of a small DAX file through O_DIRECT reads
//! from two slow null_blk devices into a MAP_SHARED mapping of it:
//!
//! - the *long* pin, on a page far into the file, held `--long-ms`;
//! - the *brief* pin, on the file's first page, held `--brief-ms`, issued
//!   once the long one is in flight;
//!
//! then, once the brief read is in flight too, punches (or truncates) a
//! range that holds both. The busy scan walks the file in index order, so
//! it returns the brief page; that page goes idle `--brief-ms` after its
//! read was issued, inside the patched break's window, so the wait's first
//! condition check finds it idle and the 2018 loop returns without
//! scanning again: the truncation then meets the long-pinned page (the
//! kernel's WARN in dax_disassociate_entry, daxrace's
//! truncate_while_pinned). With the kernel's own loop, the break scans
//! again, finds the long pin and waits for it.
//!
//! Whether the reads are in flight is read from the devices' own
//! `/sys/block/<dev>/inflight`, not guessed from sleeps: the pages are
//! pinned before a read is submitted, so an in-flight read is a held pin.
use std::{
    fs::{File, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::{fs::MetadataExt, fs::OpenOptionsExt, thread::JoinHandleExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{
    nullb::NullBlk,
    pattern,
    report::{self, Report},
    stall::{self, Slot},
    Common,
};

const BLOCK: u64 = 4096;
const DAX_SALT: u64 = 0x4441_5818;
/// The DAX file: 16 blocks. The brief pin is on block 0, the long one on
/// LONG_BLOCK; the break covers the whole file.
const FILE_SIZE: u64 = 16 * BLOCK;
const BRIEF_BLOCK: u64 = 0;
const LONG_BLOCK: u64 = 8;
/// How long to wait for a read to show as in flight on its device.
const INFLIGHT_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Op {
    Punch,
    Truncate,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Punch => "punch",
            Op::Truncate => "truncate",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Rounds (the ops are taken in turn).
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    /// How long the long pin is held (ms): longer than the whole break
    /// under the 2018 loop, so that the truncation meets it.
    #[arg(long, default_value_t = 3000)]
    pub long_ms: u64,
    /// How long the brief pin is held (ms): shorter than the patched
    /// break's window (the fault patch's window_ms), longer than it takes
    /// the breaker to reach its busy scan.
    #[arg(long, default_value_t = 600)]
    pub brief_ms: u64,
    /// Operations to take in turn; each covers the whole file.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "punch,truncate"
    )]
    pub ops: Vec<Op>,
}

/// Reads in flight on a block device, from `/sys/block/<dev>/inflight`.
fn reads_in_flight(dev: &Path) -> Option<u64> {
    let name = dev.file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/inflight")).ok()?;
    parse_inflight(&text).map(|(reads, _)| reads)
}

/// `/sys/block/<dev>/inflight`: "<reads> <writes>" (padded).
fn parse_inflight(text: &str) -> Option<(u64, u64)> {
    let mut w = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((w.next()??, w.next()??))
}

/// Waits until `dev` has a read in flight; false after INFLIGHT_WAIT.
fn wait_in_flight(dev: &Path) -> bool {
    let t = Instant::now();
    while t.elapsed() < INFLIGHT_WAIT {
        if reads_in_flight(dev).unwrap_or(0) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn open_direct(dev: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .with_context(|| format!("opening {} with O_DIRECT", dev.display()))
}

/// One O_DIRECT read of a block from `src` into the mapping at `block`:
/// the DAX page stays pinned until the device completes it.
fn pin_read(src: &File, map: usize, block: u64) -> std::io::Result<u64> {
    // SAFETY: map + block * BLOCK .. + BLOCK is inside our live mapping.
    let n = unsafe {
        libc::pread(
            src.as_raw_fd(),
            (map + (block * BLOCK) as usize) as *mut libc::c_void,
            BLOCK as usize,
            0,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as u64)
    }
}

fn break_op(f: &File, op: Op) -> std::io::Result<u64> {
    let fd = f.as_raw_fd();
    // SAFETY: plain syscalls on our fd.
    let r = unsafe {
        match op {
            Op::Punch => libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                FILE_SIZE as i64,
            ),
            Op::Truncate => libc::ftruncate(fd, 0),
        }
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(0)
    }
}

/// What one round saw, from user space.
struct Round {
    /// Both reads were in flight when the break started.
    armed: bool,
    break_ms: f64,
    long_ms: f64,
    /// The break returned while the long read was still in flight: it did
    /// not wait for a page it was about to truncate.
    returned_under_long_pin: bool,
    error: Option<String>,
}

pub fn run(a: Args) -> Result<i32> {
    let (dir, fs) = a.common.dax_target()?;
    if a.ops.is_empty() || a.rounds == 0 {
        bail!("need at least one op and one round");
    }
    if a.brief_ms >= a.long_ms {
        bail!("--brief-ms must be shorter than --long-ms");
    }
    let pid = std::process::id();
    let long_dev = NullBlk::create(
        &format!("daxrace-long-{pid}"),
        4,
        Duration::from_millis(a.long_ms),
    )?;
    let brief_dev = NullBlk::create(
        &format!("daxrace-brief-{pid}"),
        4,
        Duration::from_millis(a.brief_ms),
    )?;
    let long_src = Arc::new(open_direct(&long_dev.dev)?);
    let brief_src = Arc::new(open_direct(&brief_dev.dev)?);
    let seed = a.common.seed ^ DAX_SALT;
    let (dax, map) =
        pattern::mapped_dax_file(&dir, &format!("daxrace-race-{pid}"), seed, FILE_SIZE)?;
    let map = map as usize;
    let ino = dax.metadata().map(|m| m.ino()).unwrap_or(0);
    let dax = Arc::new(dax);
    println!(
        "race2018: {} ({fs}) ino {ino}: brief pin on block {BRIEF_BLOCK} ({} ms, {}), long pin on block {LONG_BLOCK} ({} ms, {}), {} rounds of {:?} over the whole file",
        dir.display(),
        a.brief_ms,
        brief_dev.dev.display(),
        a.long_ms,
        long_dev.dev.display(),
        a.rounds,
        a.ops
    );

    let report = Report::default();
    let timeout = a.common.stall_timeout();
    let start = Instant::now();
    let mut rounds = Vec::new();
    let mut stuck = Vec::new();
    for i in 0..a.rounds {
        if report.stall_count() >= a.common.max_stalls as usize {
            break;
        }
        let op = a.ops[i as usize % a.ops.len()];
        // Restore the file, so both pages are mapped blocks of it again.
        dax.set_len(FILE_SIZE)?;
        pattern::write(&dax, seed, 0, FILE_SIZE)?;
        let r = round(
            &a,
            op,
            map,
            &dax,
            (&long_src, &long_dev.dev),
            (&brief_src, &brief_dev.dev),
            &report,
            timeout,
            &mut stuck,
        );
        let Some(r) = r else { break };
        println!(
            "  round {i}: {:<8} {} break {:>6.0} ms, long pin {:>6.0} ms: {}",
            op.name(),
            if r.armed {
                "both pins in flight,"
            } else {
                "NOT ARMED,"
            },
            r.break_ms,
            r.long_ms,
            match (&r.error, r.returned_under_long_pin) {
                (Some(e), _) => e.clone(),
                (None, true) => "returned while the long pin was held (early)".into(),
                (None, false) => "waited for the long pin".into(),
            }
        );
        rounds.push(json!({
            "op": op.name(),
            "armed": r.armed,
            "break_ms": r.break_ms,
            "long_ms": r.long_ms,
            "early": r.returned_under_long_pin,
            "error": r.error,
        }));
        if !stuck.is_empty() {
            break;
        }
    }
    let elapsed = start.elapsed();
    if stuck.is_empty() {
        // SAFETY: our mapping; no thread uses it any more.
        unsafe { libc::munmap(map as *mut libc::c_void, FILE_SIZE as usize) };
    }
    let early = rounds.iter().filter(|r| r["early"] == true).count();
    let armed = rounds.iter().filter(|r| r["armed"] == true).count();
    println!(
        "  {armed} of {} rounds armed, {early} breaks returned while the long pin was held",
        rounds.len()
    );
    let extra = json!({
        "ino": ino,
        "brief_index": BRIEF_BLOCK,
        "long_index": LONG_BLOCK,
        "armed": armed,
        "early": early,
        "rounds": rounds,
        "stuck": stuck,
    });
    let summary = report.print("race2018", &fs, elapsed, extra);
    if a.common.json {
        println!("{summary}");
    }
    if !stuck.is_empty() {
        // Threads in uninterruptible sleep: do not run destructors that
        // would wait on the devices.
        std::mem::forget(long_dev);
        std::mem::forget(brief_dev);
    }
    Ok(crate::pin_punch::exit_code(&report, !stuck.is_empty()))
}

type Source<'a> = (&'a Arc<File>, &'a PathBuf);

/// One round; None when a thread got stuck (listed in `stuck`).
#[allow(clippy::too_many_arguments)]
fn round(
    a: &Args,
    op: Op,
    map: usize,
    dax: &Arc<File>,
    long: Source,
    brief: Source,
    report: &Report,
    timeout: Duration,
    stuck: &mut Vec<String>,
) -> Option<Round> {
    let lslot = Arc::new(Slot::new("long-pin"));
    let bslot = Arc::new(Slot::new("brief-pin"));
    let kslot = Arc::new(Slot::new("breaker"));
    let spawn_pin = |slot: &Arc<Slot>, src: &Arc<File>, block: u64| {
        let (slot, src) = (slot.clone(), src.clone());
        std::thread::spawn(move || {
            slot.bind();
            slot.enter("pin-read");
            let r = pin_read(&src, map, block);
            let (took, _) = slot.leave();
            (r, took)
        })
    };
    let long_t = spawn_pin(&lslot, long.0, LONG_BLOCK);
    let mut armed = wait_in_flight(long.1);
    let brief_t = spawn_pin(&bslot, brief.0, BRIEF_BLOCK);
    armed &= wait_in_flight(brief.1);
    let breaker = {
        let (slot, dax) = (kslot.clone(), dax.clone());
        let long_dev = long.1.clone();
        std::thread::spawn(move || {
            slot.bind();
            slot.enter(op.name());
            let r = break_op(&dax, op);
            let (took, signals) = slot.leave();
            // Read right at the return: is the long pin still held?
            let under_long_pin = reads_in_flight(&long_dev).unwrap_or(0) > 0;
            (r, took, signals, under_long_pin)
        })
    };
    // The long pin is the longest wait of a round: the stall timeout is
    // counted from it, not from the break.
    let limit = timeout + Duration::from_millis(a.long_ms);
    loop {
        *stuck = stall::watch(&[&lslot, &bslot, &kslot], limit, 10);
        if !stuck.is_empty()
            || (long_t.is_finished() && brief_t.is_finished() && breaker.is_finished())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !stuck.is_empty() {
        for s in stuck.iter() {
            eprintln!("daxrace-workload: STUCK: {s}");
        }
        let _ = long_t.into_pthread_t();
        let _ = brief_t.into_pthread_t();
        let _ = breaker.into_pthread_t();
        return None;
    }
    let (lres, ltook) = long_t.join().expect("long pin thread");
    let (bres, btook) = brief_t.join().expect("brief pin thread");
    let (kres, ktook, ksig, under_long_pin) = breaker.join().expect("breaker thread");
    report.op("pin-read", ltook, lres.as_ref().copied());
    report.op("pin-read", btook, bres.as_ref().copied());
    report.op(op.name(), ktook, kres.as_ref().copied());
    if ksig > 0 {
        report.stall(report::Stall {
            thread: "breaker".into(),
            op: op.name(),
            waited: ktook,
            signals: ksig,
            ended: match &kres {
                Ok(_) => "completed".into(),
                Err(e) => report::errno_name(e),
            },
            note: "the break outlived the long pin plus the stall timeout".into(),
        });
    }
    let error = [
        ("long pin", &lres),
        ("brief pin", &bres),
        (op.name(), &kres),
    ]
    .iter()
    .find_map(|(what, r)| {
        r.as_ref()
            .err()
            .map(|e| format!("{what}: {}", report::errno_name(e)))
    });
    Some(Round {
        armed,
        break_ms: ktook.as_secs_f64() * 1e3,
        long_ms: ltook.as_secs_f64() * 1e3,
        returned_under_long_pin: kres.is_ok() && under_long_pin,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_counts() {
        assert_eq!(parse_inflight("       1        0\n"), Some((1, 0)));
        assert_eq!(parse_inflight("0 3"), Some((0, 3)));
        assert_eq!(parse_inflight(""), None);
        assert_eq!(parse_inflight("x 0"), None);
    }
}
