//! Maps, the kernel facts handed over by userspace, and the helpers every
//! program uses to fill and send a record.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use daxrace_common::{Counter, HookId, KernelConfig, Record, RecordKind, COUNTER_COUNT};

/// Overridden by userspace at load time from BTF; these defaults only keep the
/// object loadable on its own.
#[no_mangle]
static CONFIG: KernelConfig = KernelConfig::X86_64_DEFAULTS;

/// Sized by userspace (`--ring-buffer-size`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[inline(always)]
pub fn config() -> KernelConfig {
    // Volatile so the compiler cannot fold the defaults above into the code:
    // the real values are written into the map behind this global at load time.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *slot += 1 };
    }
}

/// Reads a kernel value at `base + offset`; a failed read counts and gives 0.
#[inline(always)]
pub fn read_at<T: Copy + Default>(base: u64, offset: u32) -> T {
    if base == 0 {
        return T::default();
    }
    match unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) } {
        Ok(v) => v,
        Err(_) => {
            count(Counter::ReadFailed);
            T::default()
        }
    }
}

/// A record with the task, CPU and time filled in.
#[inline(always)]
pub fn new_record(kind: RecordKind, hook: HookId) -> Record {
    let mut r = Record::zeroed();
    r.kind = kind as u16;
    r.hook = hook as u16;
    r.ts_ns = unsafe { bpf_ktime_get_ns() };
    let id = bpf_get_current_pid_tgid();
    r.pid = (id >> 32) as u32;
    r.tid = id as u32;
    r.cpu = unsafe { bpf_get_smp_processor_id() };
    r.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    r
}

/// Fills `ino`, `dev` from a `struct inode *`.
#[inline(always)]
pub fn fill_inode(r: &mut Record, cfg: &KernelConfig, inode: u64) {
    r.ino = read_at::<u64>(inode, cfg.inode_ino);
    let sb = read_at::<u64>(inode, cfg.inode_sb);
    r.dev = read_at::<u32>(sb, cfg.sb_dev);
}

/// `bpf_ringbuf_query` / `bpf_ringbuf_submit` flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Unread bytes above which a submit wakes the reader at once; below it the
/// reader drains on its own short timer. Waking the reader on every record
/// was the dominant cost of the emitting hooks (the wake-up is an irq_work).
const WAKE_AT_BYTES: u64 = 256 * 1024;

/// Sends a record; a full ring buffer is counted, never silent.
#[inline(always)]
pub fn submit(r: &Record) {
    match EVENTS.reserve::<Record>(0) {
        Some(mut slot) => {
            slot.write(*r);
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) > WAKE_AT_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            slot.submit(flags);
        }
        None => count(Counter::RingbufFull),
    }
}
