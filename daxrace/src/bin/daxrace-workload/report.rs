//! What a workload did: operations by kind (count, errors, time), bytes,
//! data checks and stalls; printed as text and optionally as one JSON line.
use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use serde_json::{json, Value};

#[derive(Default, Clone)]
pub struct OpStats {
    pub count: u64,
    pub ok: u64,
    pub bytes: u64,
    pub total: Duration,
    pub max: Duration,
    /// errno name -> count (EINTR here means a stall was interrupted).
    pub errors: BTreeMap<String, u64>,
}

#[derive(Clone)]
pub struct Stall {
    pub thread: String,
    pub op: &'static str,
    pub waited: Duration,
    pub signals: u32,
    /// How the syscall ended: "EINTR" (interrupted) or "completed".
    pub ended: String,
    pub note: String,
}

#[derive(Default)]
pub struct Report {
    pub ops: Mutex<BTreeMap<&'static str, OpStats>>,
    pub stalls: Mutex<Vec<Stall>>,
    pub mismatches: Mutex<Vec<String>>,
    pub checks: Mutex<BTreeMap<&'static str, u64>>,
}

pub fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EINTR) => "EINTR".into(),
        Some(libc::EFAULT) => "EFAULT".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::ENOSPC) => "ENOSPC".into(),
        Some(libc::EIO) => "EIO".into(),
        Some(libc::EBUSY) => "EBUSY".into(),
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP".into(),
        Some(n) => format!("errno{n}"),
        None => e.to_string(),
    }
}

impl Report {
    pub fn op(&self, kind: &'static str, took: Duration, res: Result<u64, &std::io::Error>) {
        let mut ops = self.ops.lock().unwrap();
        let s = ops.entry(kind).or_default();
        s.count += 1;
        s.total += took;
        s.max = s.max.max(took);
        match res {
            Ok(b) => {
                s.ok += 1;
                s.bytes += b;
            }
            Err(e) => *s.errors.entry(errno_name(e)).or_default() += 1,
        }
    }

    pub fn check(&self, what: &'static str) {
        *self.checks.lock().unwrap().entry(what).or_default() += 1;
    }

    pub fn mismatch(&self, msg: String) {
        eprintln!("daxrace-workload: MISMATCH: {msg}");
        let mut m = self.mismatches.lock().unwrap();
        if m.len() < 20 {
            m.push(msg);
        }
    }

    pub fn stall(&self, s: Stall) {
        eprintln!(
            "daxrace-workload: stall ended: {} in {} waited {:.2} s, {} ({} signal(s)){}",
            s.thread,
            s.op,
            s.waited.as_secs_f64(),
            s.ended,
            s.signals,
            if s.note.is_empty() {
                String::new()
            } else {
                format!("; {}", s.note)
            }
        );
        self.stalls.lock().unwrap().push(s);
    }

    pub fn stall_count(&self) -> usize {
        self.stalls.lock().unwrap().len()
    }

    pub fn mismatch_count(&self) -> usize {
        self.mismatches.lock().unwrap().len()
    }

    /// Prints the text report; returns the JSON summary.
    pub fn print(&self, workload: &str, fs: &str, elapsed: Duration, extra: Value) -> Value {
        let ops = self.ops.lock().unwrap().clone();
        let checks = self.checks.lock().unwrap().clone();
        let stalls = self.stalls.lock().unwrap().clone();
        let mism = self.mismatches.lock().unwrap().clone();
        println!("{workload} on {fs}: {:.1} s", elapsed.as_secs_f64());
        println!(
            "  {:<10} {:>8} {:>8} {:>12} {:>10} {:>10}  errors",
            "op", "count", "ok", "bytes", "avg ms", "max ms"
        );
        let mut jops = serde_json::Map::new();
        for (k, s) in &ops {
            let avg = if s.count > 0 {
                s.total.as_secs_f64() * 1e3 / s.count as f64
            } else {
                0.0
            };
            let errs: Vec<String> = s.errors.iter().map(|(e, n)| format!("{e}:{n}")).collect();
            println!(
                "  {:<10} {:>8} {:>8} {:>12} {:>10.2} {:>10.1}  {}",
                k,
                s.count,
                s.ok,
                s.bytes,
                avg,
                s.max.as_secs_f64() * 1e3,
                errs.join(" ")
            );
            jops.insert(
                (*k).to_string(),
                json!({"count": s.count, "ok": s.ok, "bytes": s.bytes,
                       "avg_ms": avg, "max_ms": s.max.as_secs_f64() * 1e3, "errors": s.errors}),
            );
        }
        let checks_txt: Vec<String> = checks.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  checks: {}", checks_txt.join(", "));
        println!("  mismatches: {}", mism.len());
        println!("  stalls: {}", stalls.len());
        for s in &stalls {
            println!(
                "    {} in {}: waited {:.2} s, {}{}",
                s.thread,
                s.op,
                s.waited.as_secs_f64(),
                s.ended,
                if s.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.note)
                }
            );
        }
        json!({
            "workload": workload,
            "fs": fs,
            "duration_s": elapsed.as_secs_f64(),
            "ops": jops,
            "checks": checks,
            "mismatches": mism.len(),
            "mismatch_examples": mism,
            "stalls": stalls.iter().map(|s| json!({
                "thread": s.thread, "op": s.op, "waited_s": s.waited.as_secs_f64(),
                "signals": s.signals, "ended": s.ended, "note": s.note})).collect::<Vec<_>>(),
            "extra": extra,
        })
    }
}

/// The filesystem type of `path` ("ext4", "xfs", or the magic in hex).
pub fn fs_name(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: statfs into a zeroed struct with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as u64 {
        0xef53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        t => format!("{t:#x}"),
    }
}

/// Whether `path` is on a mount with DAX in effect (from /proc/mounts).
pub fn is_dax(path: &std::path::Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let p = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, bool)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 || !p.starts_with(f[1]) {
            continue;
        }
        let dax = f[3].split(',').any(|o| o == "dax" || o == "dax=always");
        if best.is_none_or(|(n, _)| f[1].len() >= n) {
            best = Some((f[1].len(), dax));
        }
    }
    best.is_some_and(|(_, d)| d)
}
