//! The kernel round trip on the machine the tests run on: load the object into
//! the running kernel, attach the ext4 context hooks, do the operations on a
//! file in an ext4 directory, and check the decoded events. Needs root; a
//! kernel that refuses BPF fails this test with the reason.
use std::{
    fs::OpenOptions,
    io::Write,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
    time::{Duration, Instant},
};

use daxrace::{
    decode,
    event::{EventBody, FileOp},
    load::tracer::{FsOpRecording, Tracer, TracerOptions},
};
use daxrace_common::{Counter, HookId};

const EXT4_SUPER_MAGIC: i64 = 0xEF53;

fn ext4_dir() -> PathBuf {
    let dir = std::env::var_os("DAXRACE_TEST_EXT4_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statfs into a zeroed struct with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statfs {}", dir.display());
    assert_eq!(
        st.f_type as i64,
        EXT4_SUPER_MAGIC,
        "{} is not on ext4; set DAXRACE_TEST_EXT4_DIR to an ext4 directory",
        dir.display()
    );
    dir
}

fn fallocate(fd: i32, mode: i32, offset: i64, len: i64) {
    // SAFETY: plain syscall on an open fd.
    let rc = unsafe { libc::fallocate(fd, mode, offset, len) };
    assert_eq!(
        rc,
        0,
        "fallocate mode {mode:#x}: {}",
        std::io::Error::last_os_error()
    );
}

/// Loads the object with only the ext4 context hooks attached.
fn context_tracer(fs_ops: FsOpRecording) -> Tracer {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the kernel round-trip test needs root (it loads BPF programs): run the tests as root"
    );
    let context_hooks = vec![
        HookId::Ext4PunchHole,
        HookId::Ext4ZeroRange,
        HookId::Ext4CollapseRange,
        HookId::Ext4InsertRange,
        HookId::Ext4Truncate,
    ];
    let tracer = Tracer::load(&TracerOptions {
        only: context_hooks,
        fs_ops,
        ..TracerOptions::default()
    })
    .unwrap_or_else(|e| panic!("the running kernel refused daxrace's programs: {e}"));
    for s in &tracer.statuses {
        assert!(s.is_attached(), "{} did not attach: {:?}", s.hook, s.errors);
    }
    tracer
}

/// Punches, zeroes, collapses, inserts and truncates a file in an ext4
/// directory (no DAX here); returns the file's inode (the directory goes
/// with the returned guard).
fn ext4_operations() -> (u64, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(ext4_dir()).expect("temp dir");
    let path = dir.path().join("victim");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create");
    f.write_all(&vec![0xa5u8; 1 << 20]).expect("write");
    f.sync_all().expect("fsync");
    let ino = f.metadata().expect("stat").ino();
    let fd = f.as_raw_fd();
    fallocate(
        fd,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        4096,
        8192,
    );
    fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 65536, 4096);
    fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, 4096, 4096);
    fallocate(fd, libc::FALLOC_FL_INSERT_RANGE, 8192, 4096);
    f.set_len(100_000).expect("truncate");
    (ino, dir)
}

#[test]
fn without_a_busy_break_ext4_operations_are_counted_not_recorded() {
    let mut tracer = context_tracer(FsOpRecording::Busy);
    let mut ring = tracer.take_events().expect("ring buffer");
    let before = tracer.counters().expect("counters").get(Counter::FsOpQuiet);
    let (ino, _dir) = ext4_operations();
    // SAFETY: no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    // Each operation replaces the one before it in this task's slot: four
    // are dropped as quiet (other tasks on this machine may add more).
    let after = tracer.counters().expect("counters").get(Counter::FsOpQuiet);
    assert!(
        after >= before + 4,
        "fs_op_quiet went from {before} to {after}"
    );
    while let Some(item) = ring.next() {
        let ev = decode::decode(&item).expect("kernel records decode");
        if let EventBody::FileOp { op, ino: i, .. } = ev.body {
            assert!(
                !(i == ino && ev.task.tid == tid),
                "{op:?} was recorded though no break met a busy page"
            );
        }
    }
}

#[test]
fn ext4_operations_arrive_as_typed_events() {
    let mut tracer = context_tracer(FsOpRecording::All);
    let mut ring = tracer.take_events().expect("ring buffer");
    let (ino, _dir) = ext4_operations();
    let pid = std::process::id();
    // SAFETY: no preconditions.
    let tid = unsafe { libc::gettid() } as u32;

    let expected = [
        (FileOp::PunchHole, 4096, 8192),
        (FileOp::ZeroRange, 65536, 4096),
        (FileOp::CollapseRange, 4096, 4096),
        (FileOp::InsertRange, 8192, 4096),
        (FileOp::Truncate, 100_000, 0),
    ];
    let mut seen = Vec::new();
    // A bound so a broken kernel cannot hang the suite; not a speed check.
    let give_up = Instant::now() + Duration::from_secs(20);
    while seen.len() < expected.len() && Instant::now() < give_up {
        match ring.next() {
            Some(item) => {
                let ev = decode::decode(&item).expect("kernel records decode");
                if let EventBody::FileOp {
                    op,
                    ino: i,
                    offset,
                    len,
                    dev,
                } = ev.body
                {
                    // This thread's: the other test's thread may have had
                    // a file of the same (reused) inode number.
                    if i == ino && ev.task.tid == tid {
                        assert_eq!(ev.task.pid, pid, "pid of {op:?}");
                        assert_ne!(dev, 0, "device of {op:?}");
                        assert!(ev.ts_ns > 0);
                        seen.push((op, offset, len));
                    }
                }
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(seen, expected, "events for inode {ino} from pid {pid}");
    let counters = tracer.counters().expect("counters");
    assert_eq!(counters.get(daxrace_common::Counter::RingbufFull), 0);
}
