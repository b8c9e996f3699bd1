//! Maps, the kernel facts handed over by userspace, and the helpers every
//! program uses to fill and send a record.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use daxrace_common::{
    config::{page_read_window, PAGE_READ_BYTES},
    ring_wake_bytes, Counter, HookId, KernelConfig, Record, RecordKind, COUNTER_COUNT,
};

/// Overridden by userspace at load time from BTF; these defaults only keep the
/// object loadable on its own.
#[no_mangle]
static CONFIG: KernelConfig = KernelConfig::X86_64_DEFAULTS;

/// Sized by userspace (`--ring-buffer-kib`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// The kernel facts, read field by field where used: copying the whole
/// struct was two dozen instructions on every hook's fast path.
#[derive(Clone, Copy)]
pub struct Cfg;

#[inline(always)]
pub fn config() -> Cfg {
    Cfg
}

macro_rules! config_fields {
    ($($field:ident: $ty:ty),* $(,)?) => {
        impl Cfg {
            $(
                #[inline(always)]
                pub fn $field(self) -> $ty {
                    // Volatile so the compiler cannot fold the defaults above
                    // into the code: the real values are written into the map
                    // behind this global at load time (read-only, so the
                    // verifier still sees them as constants).
                    unsafe { core::ptr::read_volatile(&raw const CONFIG.$field) }
                }
            )*
        }
    };
}

config_fields!(
    page_btf_id: u32,
    task_btf: u32,
    task_comm: u32,
    task_pid: u32,
    task_tgid: u32,
    page_refcount: u32,
    page_mapping: u32,
    page_struct_size: u32,
    inode_ino: u32,
    inode_size: u32,
    inode_sb: u32,
    sb_dev: u32,
    mapping_host: u32,
    bio_io_vec: u32,
    bio_vcnt: u32,
    bio_vec_size: u32,
    bvec_page: u32,
    bvec_len: u32,
    bvec_offset: u32,
    idle_refcount: u32,
    wait_on_refcount: u32,
    record_every_fs_op: u32,
    page_index: u32,
    mapping_xa_head: u32,
    xa_node_shift: u32,
    xa_node_slots: u32,
    quiet: u32,
    vmemmap_base_addr: u64,
    vmemmap_default: u64,
);

#[inline(always)]
pub fn count(counter: Counter) {
    count_add(counter, 1);
}

#[inline(always)]
pub fn count_add(counter: Counter, n: u64) {
    if n == 0 {
        return;
    }
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *slot += n };
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

/// `vmemmap_base`, read once from the kernel and then kept here: the
/// disassociate hook needs it on every truncated entry.
#[no_mangle]
static mut VMEMMAP_CACHE: u64 = 0;

/// Base of the `struct page` array (pfn -> page).
#[inline(always)]
pub fn vmemmap(cfg: Cfg) -> u64 {
    // SAFETY: a plain u64 global; a racing first read on two CPUs stores
    // the same value.
    let cached = unsafe { core::ptr::read_volatile(&raw const VMEMMAP_CACHE) };
    if cached != 0 {
        return cached;
    }
    let mut base = cfg.vmemmap_default();
    if cfg.vmemmap_base_addr() != 0 {
        let b = read_at::<u64>(cfg.vmemmap_base_addr(), 0);
        if b != 0 {
            base = b;
        }
    }
    unsafe { core::ptr::write_volatile(&raw mut VMEMMAP_CACHE, base) };
    base
}

/// The fields of a `struct page` the hooks need.
pub struct PageFields {
    pub refcount: i32,
    pub mapping: u64,
    pub index: u64,
}

/// A field of `T` at byte `offset` of a buffer of `N` words, or 0 where the
/// offset is past the buffer or not aligned for `T` (struct page's fields
/// are naturally aligned, so the second never happens on a real kernel).
/// An aligned load: a byte-wise `read_unaligned` was 8 loads and 14 shifts
/// per field.
#[inline(always)]
fn field_at<T: Copy + Default, const N: usize>(buf: &[u64; N], offset: usize) -> T {
    let size = core::mem::size_of::<T>();
    if offset > N * 8 - size || offset % size != 0 {
        return T::default();
    }
    // SAFETY: in bounds and aligned, checked above; the buffer is plain
    // words, so any bit pattern is a value of the integer `T`.
    unsafe { core::ptr::read((buf.as_ptr() as *const u8).add(offset) as *const T) }
}

/// `page->_refcount`, `page->mapping` and `page->index`: three loads where
/// the kernel types the address as a `struct page` ([`typed_page`]), else
/// one kernel read of the window that holds them (one helper call instead
/// of three: the disassociate hook runs on every truncated entry).
#[inline(always)]
pub fn read_page(cfg: Cfg, page: u64) -> PageFields {
    if let Some(typed) = typed_page(cfg, page) {
        // SAFETY: loads through a pointer the verifier types as a struct
        // page: it checks each offset against the struct and makes the
        // loads fault-safe.
        return unsafe {
            PageFields {
                refcount: load_u32(typed, cfg.page_refcount()) as i32,
                mapping: load_pointer_number(typed, page, cfg.page_mapping()),
                index: load_u64(typed, cfg.page_index()),
            }
        };
    }
    let (rc, mp, ix) = (
        cfg.page_refcount() as usize,
        cfg.page_mapping() as usize,
        cfg.page_index() as usize,
    );
    // Constants to the verifier (read-only config); userspace warns where
    // the fields do not fit (`KernelFacts::gather`).
    let (from, _) = page_read_window(rc, mp, ix);
    // Not zeroed first: the helper writes every byte (zeroes on failure),
    // and a zeroing here was a byte-wise `memset` call once.
    let mut buf = core::mem::MaybeUninit::<[u64; PAGE_READ_BYTES / 8]>::uninit();
    // SAFETY: the helper writes PAGE_READ_BYTES bytes into `buf`.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            buf.as_mut_ptr() as *mut c_void,
            PAGE_READ_BYTES as u32,
            (page + from as u64) as *const c_void,
        )
    };
    if ret != 0 && page != 0 {
        count(Counter::ReadFailed);
    }
    // SAFETY: written by the helper above, in full.
    let buf = unsafe { buf.assume_init() };
    PageFields {
        refcount: field_at(&buf, rc - from),
        mapping: field_at(&buf, mp - from),
        index: field_at(&buf, ix - from),
    }
}

/// The page's address typed as a `struct page` (`bpf_rdonly_cast`, 6.2+:
/// the verifier inlines the call and turns loads through the result into
/// ones that cannot fault, reading 0 at a bad address), or `None` where
/// the kernel has no such kfunc: then the caller reads with a helper
/// (about 100 guest instructions a call, against one per load).
#[inline(always)]
fn typed_page(cfg: Cfg, page: u64) -> Option<u64> {
    let id = cfg.page_btf_id();
    if id == 0 {
        return None;
    }
    let typed: u64;
    // SAFETY: the kfunc call the loader links (or turns into `r0 = 0`,
    // `KFUNC_CALL_MARKER`); it reads nothing and returns its first
    // argument, typed. r1-r5 are clobbered as by any call.
    unsafe {
        core::arch::asm!(
            ".quad {marker}",
            marker = const daxrace_common::config::KFUNC_CALL_MARKER,
            inout("r1") page => _,
            inout("r2") id as u64 => _,
            lateout("r0") typed,
            out("r3") _,
            out("r4") _,
            out("r5") _,
        )
    };
    (typed != 0).then_some(typed)
}

/// A load of `$size` (`u32`, `u64`) at `$base + $offset`, where `$base`
/// is a pointer the verifier types (`typed_page`,
/// `bpf_get_current_task_btf`): it checks the offset, a constant from the
/// read-only config, and makes the load fault-safe. Unsafe: `$base` must
/// be such a pointer.
macro_rules! typed_load {
    ($size:literal, $base:expr, $offset:expr) => {{
        let v: u64;
        // SAFETY: the caller's (see above).
        unsafe {
            core::arch::asm!(
                "{p} += {off}",
                concat!("{v} = *(", $size, " *)({p} + 0)"),
                p = inout(reg) $base => _,
                off = in(reg) $offset as u64,
                v = lateout(reg) v,
                // `pure`: a load whose value goes unused (a page's index on
                // a quiet path) is dropped.
                options(pure, nostack, readonly),
            )
        };
        v
    }};
}

/// A u32 at `base + offset` ([`typed_load`]).
///
/// # Safety
/// `base` must be a typed kernel pointer.
#[inline(always)]
unsafe fn load_u32(base: u64, offset: u32) -> u32 {
    typed_load!("u32", base, offset) as u32
}

/// A u64 at `base + offset` ([`typed_load`]).
///
/// # Safety
/// As for [`load_u32`].
#[inline(always)]
unsafe fn load_u64(base: u64, offset: u32) -> u64 {
    typed_load!("u64", base, offset)
}

/// A pointer field at `base + offset` as a number. The load gives the
/// verifier a typed pointer, on which a hook could do no arithmetic (the
/// watch table hashes a page's mapping); the difference of two pointers is
/// a number to a privileged program, so the field minus the typed
/// `base + offset`, plus that address as a number, is the field's value.
/// (A failed load reads 0, and gives 0 here too.)
///
/// # Safety
/// As for [`load_u32`]; `base_number` is `base`'s value, and the field
/// must be a pointer in BTF (userspace checks `page.mapping`), or the
/// verifier refuses the subtraction.
#[inline(always)]
unsafe fn load_pointer_number(base: u64, base_number: u64, offset: u32) -> u64 {
    let v: u64;
    core::arch::asm!(
        "{p} += {off}",
        "{v} = *(u64 *)({p} + 0)",
        "{v} -= {p}",
        "{v} += {q}",
        p = inout(reg) base => _,
        off = in(reg) offset as u64,
        q = in(reg) base_number.wrapping_add(offset as u64),
        // Written before `q` is read: not a `lateout`, which may share
        // an input's register.
        v = out(reg) v,
        options(pure, nostack, readonly),
    );
    v
}

/// `page->_refcount` alone, with one load where the page can be typed
/// ([`typed_page`]). A bad address reads 0 on the load's path, as the
/// helper's failure does (uncounted there).
#[inline(always)]
pub fn page_refcount(cfg: Cfg, page: u64) -> i32 {
    match typed_page(cfg, page) {
        // SAFETY: a typed pointer, see `load_u32`.
        Some(typed) => unsafe { load_u32(typed, cfg.page_refcount()) as i32 },
        None => read_at::<i32>(page, cfg.page_refcount()),
    }
}

/// A record with the task, CPU and time filled in.
#[inline(always)]
pub fn new_record(kind: RecordKind, hook: HookId) -> Record {
    let mut r = Record::zeroed();
    r.kind = kind as u16;
    r.hook = hook as u16;
    r.ts_ns = unsafe { bpf_ktime_get_ns() };
    let cfg = config();
    if cfg.task_btf() != 0 {
        // SAFETY: the helper returns `current`, typed (never null); the
        // loads go through it (see `load_u32`).
        unsafe {
            let task = aya_ebpf::helpers::generated::bpf_get_current_task_btf() as u64;
            r.pid = load_u32(task, cfg.task_tgid());
            r.tid = load_u32(task, cfg.task_pid());
            r.comm = core::mem::transmute::<[u64; 2], [u8; 16]>([
                load_u64(task, cfg.task_comm()),
                load_u64(task, cfg.task_comm() + 8),
            ]);
        }
    } else {
        let id = bpf_get_current_pid_tgid();
        r.pid = (id >> 32) as u32;
        r.tid = id as u32;
        r.comm = current_comm();
    }
    r.cpu = unsafe { bpf_get_smp_processor_id() };
    r
}

/// The task's name, as two words (the helper zeroes them on failure).
/// Into a buffer of its own rather than the record: a helper given the
/// record's address keeps the compiler from building the record in place,
/// and the copy of it cost a frame of stack. aya's wrapper zeroes and
/// copies its array byte by byte.
#[inline(always)]
fn current_comm() -> [u8; 16] {
    let mut comm = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: the helper writes the 16 bytes.
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(comm.as_mut_ptr() as *mut c_void, 16);
        core::mem::transmute::<[u64; 2], [u8; 16]>(comm.assume_init())
    }
}

/// Fills `ino`, `dev` from a `struct inode *`.
#[inline(always)]
pub fn fill_inode(r: &mut Record, cfg: Cfg, inode: u64) {
    r.ino = read_at::<u64>(inode, cfg.inode_ino());
    let sb = read_at::<u64>(inode, cfg.inode_sb());
    r.dev = read_at::<u32>(sb, cfg.sb_dev());
}

/// `bpf_ringbuf_query` / `bpf_ringbuf_submit` flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// The wake-up threshold of this ring ([`ring_wake_bytes`] of its size,
/// which userspace picks at load time), asked of the kernel once.
#[no_mangle]
static mut RING_WAKE_CACHE: u64 = 0;

#[inline(always)]
fn ring_wake_at() -> u64 {
    // SAFETY: a plain u64 global; racing first calls store the same value.
    let cached = unsafe { core::ptr::read_volatile(&raw const RING_WAKE_CACHE) };
    if cached != 0 {
        return cached;
    }
    let at = ring_wake_bytes(EVENTS.query(BPF_RB_RING_SIZE)).max(1);
    unsafe { core::ptr::write_volatile(&raw mut RING_WAKE_CACHE, at) };
    at
}

/// Sends a record and wakes the reader at once: for the rare record the
/// daemon must act on without waiting for its drain timer (a page starts
/// being watched: the quiet mode attaches the page hooks then).
#[inline(always)]
pub fn submit_now(r: &Record) {
    match EVENTS.reserve::<Record>(0) {
        Some(mut slot) => {
            slot.write(*r);
            slot.submit(BPF_RB_FORCE_WAKEUP);
        }
        None => count(Counter::RingbufFull),
    }
}

/// Sends a record; a full ring buffer is counted, never silent. The
/// reader is woken only once the ring holds a good part of its size
/// (otherwise it drains on its own short timer).
#[inline(always)]
pub fn submit(r: &Record) {
    match EVENTS.reserve::<Record>(0) {
        Some(mut slot) => {
            slot.write(*r);
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) > ring_wake_at() {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            slot.submit(flags);
        }
        None => count(Counter::RingbufFull),
    }
}
