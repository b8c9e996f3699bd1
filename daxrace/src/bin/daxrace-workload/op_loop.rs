//! op-loop: one operation in a loop on one thread, nothing racing it. The
//! benchmark's quiet-path figure: what a host pays for daxrace when no page
//! is busy, which is almost always. A single thread on an otherwise idle
//! guest also gives rates that vary far less from run to run than
//! pin-punch's scheduler-dependent mix.
//!
//! - `read`: O_DIRECT reads (64 KiB) from a non-DAX file into a shared
//!   mapping of a DAX file: get_user_pages pins 16 DAX pages, the bio's
//!   completion drops the pins (the devmap put path, the bio release walk).
//! - `punch`: fault 64 KiB of the mapping in by writing to it (DAX entries
//!   in the file's xarray), then punch it out (break layouts, a busy scan
//!   that finds nothing, 16 disassociations).
//! - `truncate`: the same with the file's last 64 KiB, cut by ftruncate and
//!   grown back.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::json;

use crate::{
    pattern,
    pin_punch::{fallocate, ftruncate, pread},
    report::Report,
    Common,
};

const CHUNK: u64 = 64 << 10;
const PAGE: u64 = 4096;
const FILE: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum LoopOp {
    Read,
    Punch,
    Truncate,
}

impl LoopOp {
    fn name(self) -> &'static str {
        match self {
            LoopOp::Read => "read",
            LoopOp::Punch => "punch",
            LoopOp::Truncate => "truncate",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The operation to repeat.
    #[arg(long, value_enum)]
    pub op: LoopOp,
    /// How long to run.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Non-DAX directory for the O_DIRECT source file of `read`
    /// (default: $DAX_SCRATCH).
    #[arg(long)]
    pub src_dir: Option<PathBuf>,
}

/// Writes one byte per page of `[off, off + len)` through the mapping: each
/// write faults the page in.
fn touch(map: *mut libc::c_void, off: u64, len: u64, v: u8) {
    for p in (off..off + len).step_by(PAGE as usize) {
        // SAFETY: inside our mapping of `FILE` bytes, within the file's
        // current size (callers grow it first).
        unsafe { std::ptr::write_volatile((map as *mut u8).add(p as usize), v) };
    }
}

pub fn run(a: Args) -> Result<i32> {
    let (dir, fs) = a.common.dax_target()?;
    let pid = std::process::id();
    let (dax, map) =
        pattern::mapped_dax_file(&dir, &format!("daxrace-loop-{pid}"), a.common.seed, FILE)?;
    let src = match a.op {
        LoopOp::Read => Some(pattern::direct_source(
            a.src_dir.as_deref(),
            &format!("daxrace-loop-src-{pid}"),
            a.common.seed,
            FILE,
        )?),
        _ => None,
    };
    let report = Report::default();
    let run_for = Duration::from_secs_f64(a.seconds.max(0.0));
    let start = Instant::now();
    let mut i: u64 = 0;
    while start.elapsed() < run_for {
        let off = (i * CHUNK) % FILE;
        let t = Instant::now();
        let res = match (a.op, &src) {
            (LoopOp::Read, Some(src)) => pread(
                src,
                // SAFETY: off + CHUNK <= FILE, inside the mapping.
                unsafe { (map as *mut u8).add(off as usize) },
                CHUNK,
                off,
            ),
            (LoopOp::Punch, _) => {
                touch(map, off, CHUNK, i as u8);
                fallocate(
                    &dax,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    CHUNK,
                )
            }
            (LoopOp::Truncate, _) => {
                let tail = FILE - CHUNK;
                ftruncate(&dax, FILE)
                    .inspect(|_| touch(map, tail, CHUNK, i as u8))
                    .and_then(|_| ftruncate(&dax, tail))
            }
            (LoopOp::Read, None) => unreachable!("the source is opened for reads"),
        };
        report.op(a.op.name(), t.elapsed(), res.as_ref().copied());
        if let Err(e) = res {
            bail!("{} failed on {}: {e}", a.op.name(), dir.display());
        }
        i += 1;
    }
    let summary = report.print(
        "op-loop",
        &fs,
        start.elapsed(),
        json!({ "op": a.op.name() }),
    );
    if a.common.json {
        println!("{summary}");
    }
    Ok(crate::EXIT_OK)
}
