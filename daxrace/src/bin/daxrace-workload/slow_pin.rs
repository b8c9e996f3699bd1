//! slow-pin: one thread holds DAX pages pinned for a chosen time (an
//! O_DIRECT read from a null_blk device whose requests complete after
//! --delay-ms, into a MAP_SHARED mapping of a DAX file) while another
//! punches, zeroes or truncates inside the pinned range. Break-layouts must
//! wait until the read completes; the workload measures that wait.
//!
//! If the breaker is still asleep well after the read returned (the pin is
//! gone), the wake-up was lost: the watchdog reports it as a stall and
//! interrupts it (Debian 6.1, see docs/kernels.md, "The 6.1 lost wake-up").
use std::{
    fs::{File, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::{fs::OpenOptionsExt, thread::JoinHandleExt},
    },
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{
    nullb::NullBlk,
    pattern::{self, now_ns},
    report::{self, Report, Stall},
    stall::{self, Slot},
    Common,
};

const BLOCK: u64 = 4096;
const SRC_SALT: u64 = 0x534c_4f57;
const DAX_SALT: u64 = 0x4441_5801;
const FILE_SIZE: u64 = 1 << 20;
/// The range broken inside the pinned range: its second block.
const HIT: (u64, u64) = (BLOCK, BLOCK);

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Op {
    Punch,
    Zero,
    Truncate,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Punch => "punch",
            Op::Zero => "zero",
            Op::Truncate => "truncate",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// How long each read keeps the pages pinned (the device's completion delay).
    #[arg(long, default_value_t = 1000)]
    pub delay_ms: u64,
    /// Pin-and-break rounds (the ops are taken in turn).
    #[arg(long, default_value_t = 3)]
    pub iterations: u32,
    /// Size of each pinning read (KiB).
    #[arg(long, default_value_t = 64)]
    pub pin_kib: u64,
    /// When the breaker starts after the read was issued (ms; default: a
    /// fifth of the delay, at most 300).
    #[arg(long)]
    pub break_after_ms: Option<u64>,
    /// Operations to take in turn.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "punch,zero,truncate"
    )]
    pub ops: Vec<Op>,
}

fn pread(fd: &File, buf: *mut u8, len: u64, off: u64) -> std::io::Result<u64> {
    // SAFETY: buf points to len writable bytes.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.cast(), len as usize, off as i64) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as u64)
    }
}

fn syscall_result(r: i32, v: u64) -> std::io::Result<u64> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

fn breaker_op(f: &File, op: Op) -> std::io::Result<u64> {
    let fd = f.as_raw_fd();
    // SAFETY: plain syscalls on our fd.
    unsafe {
        match op {
            Op::Punch => syscall_result(
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    HIT.0 as i64,
                    HIT.1 as i64,
                ),
                HIT.1,
            ),
            Op::Zero => syscall_result(
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    HIT.0 as i64,
                    HIT.1 as i64,
                ),
                HIT.1,
            ),
            Op::Truncate => syscall_result(libc::ftruncate(fd, HIT.0 as i64), 0),
        }
    }
}

pub fn run(a: Args) -> Result<i32> {
    let (dir, fs) = a.common.dax_target()?;
    if a.ops.is_empty() {
        bail!("no ops");
    }
    let delay = Duration::from_millis(a.delay_ms.max(1));
    let pin = (a.pin_kib.clamp(8, 512) << 10).next_multiple_of(BLOCK);
    let break_after = Duration::from_millis(a.break_after_ms.unwrap_or((a.delay_ms / 5).min(300)));
    let seed = a.common.seed;
    let pid = std::process::id();

    let dev_mib = 16u64;
    let nb = NullBlk::create(&format!("daxrace-slow-{pid}"), dev_mib, delay)?;
    let dev_size = dev_mib << 20;
    {
        // Fill the device with the source pattern (one slow completion per
        // request, all in flight together).
        let w = OpenOptions::new()
            .write(true)
            .open(&nb.dev)
            .with_context(|| format!("opening {}", nb.dev.display()))?;
        pattern::write(&w, seed ^ SRC_SALT, 0, dev_size)?;
        w.sync_all()?;
    }
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&nb.dev)
        .with_context(|| format!("opening {} with O_DIRECT", nb.dev.display()))?;

    let (dax, map) = pattern::mapped_dax_file(
        &dir,
        &format!("daxrace-slow-{pid}"),
        seed ^ DAX_SALT,
        FILE_SIZE,
    )?;
    let map = map as usize;
    let src = Arc::new(src);
    let dax = Arc::new(dax);
    println!(
        "slow-pin: {} ({fs}), pins {} KiB for {} ms via O_DIRECT from {} (null_blk), breaks at +{} ms, {} rounds of {:?}",
        dir.display(),
        pin >> 10,
        delay.as_millis(),
        nb.dev.display(),
        break_after.as_millis(),
        a.iterations,
        a.ops
    );

    let report = Report::default();
    let timeout = a.common.stall_timeout();
    let start = Instant::now();
    let mut rounds = Vec::new();
    let mut waited = 0;
    let mut stuck = Vec::new();
    for i in 0..a.iterations {
        if report.stall_count() >= a.common.max_stalls as usize {
            break;
        }
        let op = a.ops[i as usize % a.ops.len()];
        // Restore the file: full size, the DAX pattern in the pinned range.
        let _ = dax.set_len(FILE_SIZE);
        pattern::write(&dax, seed ^ DAX_SALT, 0, pin)?;
        let src_off = (u64::from(i) * pin) % (dev_size - pin);

        let pslot = Arc::new(Slot::new("pinner"));
        let bslot = Arc::new(Slot::new("breaker"));
        let pin_done = Arc::new(AtomicU64::new(0));
        let reader = {
            let (slot, src, done) = (pslot.clone(), src.clone(), pin_done.clone());
            std::thread::spawn(move || {
                slot.bind();
                slot.enter("pin-read");
                let r = pread(&src, map as *mut u8, pin, src_off);
                let (took, signals) = slot.leave();
                done.store(now_ns(), Ordering::SeqCst);
                (r, took, signals)
            })
        };
        std::thread::sleep(break_after);
        let breaker = {
            let (slot, dax) = (bslot.clone(), dax.clone());
            std::thread::spawn(move || {
                slot.bind();
                slot.enter(op.name());
                let r = breaker_op(&dax, op);
                let (took, signals) = slot.leave();
                (r, took, signals)
            })
        };
        loop {
            stuck = stall::watch(&[&pslot, &bslot], timeout, 10);
            if !stuck.is_empty() || (reader.is_finished() && breaker.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !stuck.is_empty() {
            for s in &stuck {
                eprintln!("daxrace-workload: STUCK: {s}");
            }
            let _ = reader.into_pthread_t();
            let _ = breaker.into_pthread_t();
            break;
        }
        let (rres, rtook, _) = reader.join().expect("reader thread");
        let (bres, btook, bsig) = breaker.join().expect("breaker thread");
        let released = pin_done.load(Ordering::SeqCst);
        report.op("pin-read", rtook, rres.as_ref().copied());
        report.op(op.name(), btook, bres.as_ref().copied());
        if bsig > 0 {
            // How long the breaker slept after the pin was gone.
            let after = Duration::from_nanos(now_ns().saturating_sub(released));
            report.stall(Stall {
                thread: "breaker".into(),
                op: op.name(),
                waited: btook,
                signals: bsig,
                ended: match &bres {
                    Ok(_) => "completed".into(),
                    Err(e) => report::errno_name(e),
                },
                note: format!(
                    "the pinning read had returned {:.2} s before: lost wake-up",
                    after.as_secs_f64().min(btook.as_secs_f64())
                ),
            });
        }
        // Did break-layouts wait for the pin? It started break_after into
        // the read; the rest of the read is what it must wait.
        let expected = rtook.saturating_sub(break_after);
        let did_wait =
            bsig == 0 && bres.is_ok() && btook >= expected / 2 && expected > Duration::ZERO;
        waited += did_wait as u32;
        verify(
            &report, &dax, seed, src_off, pin, op, &rres, &bres, did_wait,
        );
        println!(
            "  round {i}: {:<8} pin {:>6.0} ms, break-layouts {:>6.0} ms ({})",
            op.name(),
            rtook.as_secs_f64() * 1e3,
            btook.as_secs_f64() * 1e3,
            match (&bres, did_wait, bsig) {
                (_, _, s) if s > 0 => "STALLED: woke only when signalled".to_string(),
                (Err(e), _, _) => report::errno_name(e),
                (Ok(_), true, _) => "waited for the pin".to_string(),
                (Ok(_), false, _) => "did not wait".to_string(),
            }
        );
        rounds.push(json!({
            "op": op.name(),
            "pin_ms": rtook.as_secs_f64() * 1e3,
            "break_ms": btook.as_secs_f64() * 1e3,
            "waited": did_wait,
            "stalled": bsig > 0,
        }));
    }
    let elapsed = start.elapsed();
    // SAFETY: unmapping our mapping; no thread uses it any more (or they are
    // stuck, and then we exit right after).
    if stuck.is_empty() {
        unsafe { libc::munmap(map as *mut libc::c_void, FILE_SIZE as usize) };
    }
    let extra = json!({
        "delay_ms": a.delay_ms,
        "pin_bytes": pin,
        "waited_for_pin": waited,
        "rounds": rounds,
        "slow_device": nb.dev,
        "stuck": stuck,
    });
    println!(
        "  break-layouts waited for the pin in {waited} of {} rounds",
        rounds.len()
    );
    let summary = report.print("slow-pin", &fs, elapsed, extra);
    if a.common.json {
        println!("{summary}");
    }
    if !stuck.is_empty() {
        // Threads in uninterruptible sleep: do not run destructors that
        // would wait on the device.
        std::mem::forget(nb);
    }
    Ok(crate::pin_punch::exit_code(&report, !stuck.is_empty()))
}

/// The bytes the read brought must be in the file, except where the break
/// removed them once the pin was gone.
#[allow(clippy::too_many_arguments)]
fn verify(
    report: &Report,
    dax: &File,
    seed: u64,
    src_off: u64,
    pin: u64,
    op: Op,
    rres: &std::io::Result<u64>,
    bres: &std::io::Result<u64>,
    did_wait: bool,
) {
    let n = match rres {
        Ok(n) if *n == pin => *n,
        Ok(n) => {
            report.mismatch(format!("pinning read returned {n} of {pin} bytes"));
            return;
        }
        Err(e) => {
            report.mismatch(format!("pinning read failed: {e}"));
            return;
        }
    };
    let mut buf = vec![0u8; n as usize];
    let got = match dax.read_at_full(&mut buf) {
        Ok(m) => m,
        Err(e) => {
            report.mismatch(format!("reading back: {e}"));
            return;
        }
    };
    let applied = bres.is_ok();
    let (lo, hi) = (HIT.0 as usize, (HIT.0 + HIT.1) as usize);
    if op == Op::Truncate && applied {
        if got != lo {
            report.mismatch(format!("after truncate to {lo} the file gives {got} bytes"));
        } else if pattern::first_mismatch(seed ^ SRC_SALT, src_off, &buf[..lo]).is_some() {
            report.mismatch("bytes before the truncation point differ from the read".into());
        } else {
            report.check("verified");
        }
        return;
    }
    if got != n as usize {
        report.mismatch(format!("read back {got} of {n} bytes"));
        return;
    }
    let src_ok = |r: std::ops::Range<usize>| {
        pattern::first_mismatch(seed ^ SRC_SALT, src_off + r.start as u64, &buf[r]).is_none()
    };
    let zero = buf[lo..hi].iter().all(|b| *b == 0);
    let outside = src_ok(0..lo) && src_ok(hi..n as usize);
    // The broken range: zero if the break ran after the read (it waited);
    // if it ran first, the read re-faulted the pages and left its data.
    let inside = if !applied {
        src_ok(lo..hi)
    } else if did_wait {
        zero
    } else {
        zero || src_ok(lo..hi)
    };
    if outside && inside {
        report.check("verified");
    } else {
        report.mismatch(format!(
            "{} round at source offset {src_off:#x}: outside the broken range {}, inside {}",
            op.name(),
            if outside { "ok" } else { "WRONG" },
            if inside { "ok" } else { "WRONG" }
        ));
    }
}

trait ReadFull {
    fn read_at_full(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl ReadFull for File {
    /// Reads from offset 0 until `buf` is full or the file ends.
    fn read_at_full(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }
}
