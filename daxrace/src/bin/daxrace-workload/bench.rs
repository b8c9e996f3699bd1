//! Hidden helpers for `cargo xtask bench` in a guest that has no bpftool:
//! per-program BPF run statistics with what each program is attached to,
//! the time from a tracer's launch to the line saying it is ready, and a
//! seed for the random number generator of a guest without RDRAND.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use daxrace::kernel::{
    bpf_sys::{self, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_GET_FD_BY_ID, BPF_TASK_FD_QUERY},
    btf::{Btf, VMLINUX_BTF},
    btf_objects::kernel_btf_name,
};

#[derive(clap::Args)]
pub struct ProgStatsArgs {
    /// Also show what each program is attached to, from this process's
    /// perf-event and BPF-link file descriptors (a tracer's pid).
    #[arg(long)]
    pub pid: Option<u32>,
}

#[derive(clap::Args)]
pub struct WaitLineArgs {
    /// The process whose start is the zero of the measurement.
    #[arg(long)]
    pub pid: u32,
    /// The file its output goes to.
    #[arg(long)]
    pub file: PathBuf,
    /// Text of the line that says it is ready.
    #[arg(long)]
    pub pattern: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
}

/// `bpf-prog-stats`: one `@@PROG id type name runs run_ns attach...` line
/// per loaded program (run counts and times are zero unless
/// `kernel.bpf_stats_enabled` is on or a process holds BPF_ENABLE_STATS).
pub fn prog_stats(a: ProgStatsArgs) -> Result<i32> {
    let attach = match a.pid {
        Some(pid) => attachments(pid)?,
        None => BTreeMap::new(),
    };
    let mut n = 0;
    for p in aya::programs::loaded_programs() {
        let p = p.context("cannot read a loaded BPF program's info (needs CAP_SYS_ADMIN)")?;
        let name = p.name_as_str().unwrap_or("?");
        let kind = format!("{:?}", p.program_type());
        let at = attach.get(&p.id()).map(|v| v.join(",")).unwrap_or_default();
        println!(
            "@@PROG {} {} {} {} {} {}",
            p.id(),
            kind.trim_start_matches("BPF_PROG_TYPE_").to_lowercase(),
            if name.is_empty() { "-" } else { name },
            p.run_count(),
            p.run_time().as_nanos(),
            if at.is_empty() { "-" } else { &at }
        );
        n += 1;
    }
    if n == 0 {
        eprintln!("daxrace-workload: no BPF program is loaded");
    }
    Ok(crate::EXIT_OK)
}

/// `union bpf_attr` for BPF_TASK_FD_QUERY.
#[repr(C)]
#[derive(Default)]
struct TaskFdQuery {
    pid: u32,
    fd: u32,
    flags: u32,
    buf_len: u32,
    buf: u64,
    prog_id: u32,
    fd_type: u32,
    probe_offset: u64,
    probe_addr: u64,
}

/// Program id -> where it is attached (`kprobe:sym`, `kretprobe:sym`,
/// `tracepoint:name`, `raw_tracepoint:name`, `fentry:func`...), read the way
/// `bpftool perf` and `bpftool link` do: BPF_TASK_FD_QUERY on perf-event
/// fds, fdinfo on BPF link fds (tracing links name a vmlinux BTF type id).
fn attachments(pid: u32) -> Result<BTreeMap<u32, Vec<String>>> {
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let dir = format!("/proc/{pid}/fd");
    let mut btf: Option<Btf> = None;
    for e in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let e = e?;
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let mut buf = [0u8; 256];
        let mut q = TaskFdQuery {
            pid,
            fd,
            buf_len: buf.len() as u32,
            buf: buf.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: the attribute and the name buffer outlive the call; the
        // kernel writes at most buf_len bytes into buf.
        let r = unsafe { bpf_sys::bpf(BPF_TASK_FD_QUERY, &mut q) };
        if r.is_ok() {
            let len = buf.iter().position(|b| *b == 0).unwrap_or(0);
            let name = String::from_utf8_lossy(&buf[..len]).into_owned();
            let kind = match q.fd_type {
                0 => "raw_tracepoint",
                1 => "tracepoint",
                2 => "kprobe",
                3 => "kretprobe",
                4 => "uprobe",
                5 => "uretprobe",
                _ => "other",
            };
            out.entry(q.prog_id)
                .or_default()
                .push(format!("{kind}:{name}"));
            continue;
        }
        // Not a perf event or raw tracepoint link: a tracing (fentry/fexit)
        // link says its program and target in fdinfo.
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if field("link_type:").as_deref() != Some("tracing") {
            continue;
        }
        let Some(prog) = field("prog_id:").and_then(|v| v.parse::<u32>().ok()) else {
            continue;
        };
        // fdinfo names the target from 6.4 or so; before, the program's
        // own info does (attach_btf_obj_id, attach_btf_id: 5.18+).
        let target = match (
            field("target_obj_id:").and_then(|v| v.parse::<u32>().ok()),
            field("target_btf_id:").and_then(|v| v.parse::<u32>().ok()),
        ) {
            (Some(obj), Some(id)) => Some((obj, id)),
            _ => prog_attach_btf(prog),
        };
        let Some((obj_id, btf_id)) = target else {
            continue;
        };
        // attach_type 23 is BPF_TRACE_RAW_TP (tp_btf), 24 BPF_TRACE_FENTRY,
        // 25 BPF_TRACE_FEXIT.
        let kind = match field("attach_type:").as_deref() {
            Some("23") => "tp_btf",
            Some("24") => "fentry",
            Some("25") => "fexit",
            _ => "tracing",
        };
        // vmlinux's BTF, or a module's split BTF on top of it.
        if btf.is_none() {
            btf = Btf::from_file(VMLINUX_BTF).ok();
        }
        let name = match kernel_btf_name(obj_id).ok().flatten().as_deref() {
            Some("vmlinux") => btf
                .as_ref()
                .and_then(|b| b.type_name(btf_id))
                .map(str::to_string),
            Some(module) => std::fs::read(format!("/sys/kernel/btf/{module}"))
                .ok()
                .and_then(|m| btf.as_ref()?.split_type_name(&m, btf_id).ok()?),
            None => None,
        };
        // A BTF tracepoint's type is `btf_trace_<tracepoint>`.
        let name = name.map(|n| n.trim_start_matches("btf_trace_").to_string());
        out.entry(prog).or_default().push(format!(
            "{kind}:{}",
            name.unwrap_or_else(|| format!("btf_id_{btf_id}"))
        ));
    }
    Ok(out)
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info` up to `attach_btf_id` (8-byte aligned), and the
/// offsets of `attach_btf_obj_id` and `attach_btf_id` in it (uapi bpf.h).
const PROG_INFO_LEN: usize = 232;
const ATTACH_BTF_OBJ_ID_OFF: usize = 220;
const ATTACH_BTF_ID_OFF: usize = 224;

/// The BTF object and type a tracing program was loaded for (aya's
/// ProgramInfo does not expose them).
fn prog_attach_btf(prog_id: u32) -> Option<(u32, u32)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut a = GetFdById {
        id: prog_id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: a valid attribute for this command, of the size passed.
    let fd = unsafe { bpf_sys::bpf(BPF_PROG_GET_FD_BY_ID, &mut a) }.ok()?;
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = [0u8; PROG_INFO_LEN];
    let mut g = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: PROG_INFO_LEN as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`.
    if unsafe { bpf_sys::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut g) }.is_err() {
        return None;
    }
    let id = u32_at(&info, ATTACH_BTF_ID_OFF)?;
    (id != 0).then_some((u32_at(&info, ATTACH_BTF_OBJ_ID_OFF)?, id))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Seconds since boot (CLOCK_BOOTTIME), the clock of /proc/PID/stat.
fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// When process `pid` started, since boot (resolution: one clock tick).
fn start_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: u64 = rest
        .split_whitespace()
        .nth(19) // field 22, starttime
        .and_then(|v| v.parse().ok())
        .context("cannot parse /proc/PID/stat")?;
    // SAFETY: plain libc query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// `wait-line`: waits until `file` holds a line containing `pattern`, then
/// prints `@@READY <ms>`, the time from the process's start (its fork) to
/// when the line was seen (polled every 5 ms, so the figure includes up to
/// 5 ms of polling and one clock tick of start-time resolution).
pub fn wait_line(a: WaitLineArgs) -> Result<i32> {
    let started = start_time(a.pid)?;
    let limit = Duration::from_secs_f64(a.timeout.max(0.0));
    let t = Instant::now();
    loop {
        if std::fs::read_to_string(&a.file).is_ok_and(|s| s.contains(&a.pattern)) {
            let ms = boottime().saturating_sub(started).as_secs_f64() * 1e3;
            println!("@@READY {ms:.0}");
            return Ok(crate::EXIT_OK);
        }
        if !std::path::Path::new(&format!("/proc/{}", a.pid)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", a.pid)).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        {
            bail!(
                "process {} ended before printing {:?} (see {})",
                a.pid,
                a.pattern,
                a.file.display()
            );
        }
        if t.elapsed() > limit {
            bail!(
                "no line with {:?} in {} after {:.0} s",
                a.pattern,
                a.file.display(),
                limit.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `seed-rng`: credits a fixed 64-byte seed to the kernel's entropy pool
/// (`RNDADDENTROPY`), so the kernel's random number generator is ready from
/// here on. For a bench guest whose CPU has no RDRAND or RDSEED: its
/// generator otherwise warms up on interrupt timings alone, minutes under
/// icount, and until it is ready every `get_random_u32()` runs a ChaCha
/// block under a lock with interrupts off. XFS draws one per transaction
/// (`xlog_ticket_alloc`), so its punches and truncates got about 20%
/// cheaper at the moment the generator came ready, mid-bench. A fixed seed
/// keeps the guest the same every boot; a throwaway test guest has no
/// secret for it to weaken.
pub fn seed_rng() -> Result<i32> {
    use std::os::fd::AsRawFd;

    const SEED_BYTES: usize = 64;
    /// `struct rand_pool_info` with its buffer (include/uapi/linux/random.h).
    #[repr(C)]
    struct PoolInfo {
        entropy_bits: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; SEED_BYTES],
    }
    /// `_IOW('R', 0x03, int[2])`.
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    let mut info = PoolInfo {
        entropy_bits: (SEED_BYTES * 8) as libc::c_int,
        buf_size: SEED_BYTES as libc::c_int,
        buf: [0; SEED_BYTES],
    };
    for (i, b) in info.buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(0x5d);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .context("opening /dev/random")?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buffer holds
    // buf_size bytes, which `info` does.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, &info) } != 0 {
        bail!(
            "RNDADDENTROPY on /dev/random failed (needs CAP_SYS_ADMIN): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(crate::EXIT_OK)
}
