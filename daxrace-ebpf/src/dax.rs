//! The DAX hooks: break-layouts calls, busy-page scans, waits and wake-ups on
//! a page's refcount, the paths that drop pins, and truncation.
//!
//! Each hook has one body taking plain values; the fentry/fexit and
//! kprobe/kretprobe programs below are thin shells around it, so the two
//! flavours cannot drift apart. The probe plan in userspace decides which
//! shell attaches to which kernel symbol.
//!
//! Filtering happens here: a page becomes *watched* when a busy scan returns
//! it; the page-put and release hooks (millions of calls a second under
//! direct I/O) only emit records for watched pages and count the rest.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_loop},
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{Array, PerCpuArray},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
    EbpfContext,
};
use daxrace_common::{
    bvec_pages, BreakStat, Counter, DaxEntry, FsKind, HookId, Record, RecordKind, XaEntry,
    PAGE_SHIFT, RANGE_WALK_STEPS, WATCH_FRESH_NS,
};

use crate::emit::{
    config, count, count_add, fill_inode, new_record, read_at, read_page, submit, vmemmap, Cfg,
    PageFields,
};

// ---- state ----------------------------------------------------------------
//
// Every table is an array indexed directly (by a task's tid, or a page's
// address), never a hash map: the verifier inlines array lookups into plain
// loads, and nothing here takes a lock. Hash-map updates and deletes (bucket
// spinlock, free-list pops, LRU shrinking) were most of what the hooks cost.
// A slot names its owner (tid or page); a lookup that finds another owner
// finds nothing, and taking over a slot another task is using is counted.

/// Slots of the per-task tables (a power of two: `tid % TASK_SLOTS`).
const TASK_SLOTS: u32 = 16384;
/// Slots of the watched-page table (a power of two).
const WATCH_SLOTS: u32 = 16384;
/// Slots of the watched-files table (a power of two).
const FILE_SLOTS: u32 = 1024;
/// Watched pages one file's slot remembers, one place per pfn modulo this;
/// a page taking the place of another still watched counts
/// `FileWatchFull`. A busy scan watches one page per call, and the break
/// waits for it before the next, so a file has few at once.
const PAGES_PER_FILE: usize = 4;

/// A break-layouts call in progress on one task. Nothing is recorded until a
/// busy scan inside it finds a page: xfs_break_layouts() runs on every plain
/// write, and most calls find nothing (they are summed in `BREAK_STATS`).
#[derive(Clone, Copy)]
#[repr(C)]
struct BreakSlot {
    /// Owner; 0 when free.
    tid: u32,
    /// Nesting depth (0: no call): on 6.15+ the generic dax_break_layout()
    /// runs inside ext4/xfs's own; only the outermost call is recorded.
    depth: u32,
    hook: u32,
    fs: u32,
    /// The BreakEnter record was sent.
    emitted: u32,
    /// A busy scan inside this call returned a page.
    saw_busy: u32,
    /// Busy scans that ran inside this call.
    scans: u32,
    _pad: u32,
    ts_ns: u64,
    /// The mapping its first recorded scan looked at.
    mapping: u64,
}

/// A busy scan in progress on one task (dax_layout_busy_page may call
/// dax_layout_busy_page_range: only the outermost is recorded).
#[derive(Clone, Copy)]
#[repr(C)]
struct ScanSlot {
    tid: u32,
    depth: u32,
    /// Entered through dax_layout_busy_page() (which calls the _range one).
    whole_file: u32,
    _pad: u32,
    mapping: u64,
    start: i64,
    end: i64,
}

/// A task whose last break-layouts call saw a busy page, and that call's
/// mapping: its truncation that follows is worth recording entry by entry.
#[derive(Clone, Copy)]
#[repr(C)]
struct RecentSlot {
    tid: u32,
    /// A task whose busy break's truncation lost this slot to another
    /// task's before it came (0: none): its truncation then counts as a
    /// collision, not as quiet.
    displaced: u32,
    mapping: u64,
}

/// The kprobe flavour of the bio release hook: the bio, from entry to return.
#[derive(Clone, Copy)]
#[repr(C)]
struct BioSlot {
    tid: u32,
    _pad: u32,
    bio: u64,
}

/// A page a busy scan returned, and when (ns).
/// A task's last ext4 operation, until a busy break in the same task
/// records it.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct FsOpSlot {
    tid: u32,
    hook: u16,
    op: u8,
    pending: u8,
    /// A task whose kept operation another task's took the place of
    /// (0: none). Most kept operations are never asked for, so the loss
    /// is counted only once that task's busy break asks for it.
    displaced: u32,
    _pad: u32,
    ts_ns: u64,
    inode: u64,
    a: i64,
    b: i64,
}

/// A watched page, its own file (`page->mapping` when the busy scan found
/// it: not a file for a page shared by several) and its index there.
#[derive(Clone, Copy)]
#[repr(C)]
struct WatchSlot {
    page: u64,
    since_ns: u64,
    mapping: u64,
    index: u64,
}

/// The watched pages of one file (`struct address_space *`), for the range
/// deletion hook: `dax_delete_mapping_range(mapping, start, end)` names a
/// file and byte range, not pages.
#[derive(Clone, Copy)]
#[repr(C)]
struct FileSlot {
    mapping: u64,
    pages: [u64; PAGES_PER_FILE],
}

#[map]
static BREAKS: Array<BreakSlot> = Array::with_max_entries(TASK_SLOTS, 0);

#[map]
static SCANS: Array<ScanSlot> = Array::with_max_entries(TASK_SLOTS, 0);

#[map]
static RECENT_BUSY: Array<RecentSlot> = Array::with_max_entries(TASK_SLOTS, 0);

#[map]
static BIO_STASH: Array<BioSlot> = Array::with_max_entries(TASK_SLOTS, 0);

/// Watched pages, direct-mapped by address: a page taking the slot of
/// another watched page evicts it (counted as `WatchFull`).
#[map]
static FS_OPS: Array<FsOpSlot> = Array::with_max_entries(TASK_SLOTS, 0);

#[map]
static WATCHED: Array<WatchSlot> = Array::with_max_entries(WATCH_SLOTS, 0);

/// Nonzero where a page of a 2 MiB block (`pfn >> 9`, modulo the slots)
/// was ever watched. A truncated 2 MiB entry, or a bvec that spans pages
/// of such a block, is walked page by page only where this is set: the
/// watched-page table is direct-mapped by pfn, so that walk finds every
/// watched page of the block, and the hint lets the usual case (no watch
/// there, ever) skip it with one load. Never cleared: a stale hint costs
/// a walk, a missing one would hide a page.
#[map]
static WATCHED_BLOCKS: Array<u64> = Array::with_max_entries(BLOCK_SLOTS, 0);

/// Set once any page was watched (see [`any_watched`]).
#[no_mangle]
static mut ANY_WATCHED: u64 = 0;

/// Files with watched pages, direct-mapped by a hash of the mapping's
/// address: another file taking the slot makes the range hook miss the
/// first file's pages, which then stay watched until recycled.
#[map]
static WATCHED_FILES: Array<FileSlot> = Array::with_max_entries(FILE_SLOTS, 0);

/// Break-layouts statistics per filesystem (see [`BreakStat`]): one entry,
/// so that userspace reads them all in one system call.
#[map]
static BREAK_STATS: PerCpuArray<[u64; BreakStat::ENTRIES as usize]> =
    PerCpuArray::with_max_entries(1, 0);

/// Slots of the watched-blocks hint (a power of two): one per 2 MiB block
/// of physical memory, modulo this (32 GiB before two blocks share one).
const BLOCK_SLOTS: u32 = 16384;
/// `page->mapping` of a shared (reflinked) DAX page: not a real mapping.
const PAGE_MAPPING_DAX_COW: u64 = 1;
/// `dax_layout_busy_page(mapping)` scans the whole file.
const LLONG_MAX: i64 = i64::MAX;

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The task's slot of a per-task table (owned by it or not: callers check).
#[inline(always)]
fn task_slot<T>(map: &Array<T>, tid: u32) -> Option<&mut T> {
    // SAFETY: an array map value, valid for this program run; a racing
    // writer can only be another task sharing the slot, which is counted.
    map.get_ptr_mut(tid & (TASK_SLOTS - 1))
        .map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn watch_slot(page: u64) -> Option<&'static mut WatchSlot> {
    // struct page is 64 bytes: consecutive pages take consecutive slots.
    // SAFETY: as task_slot.
    WATCHED
        .get_ptr_mut(((page >> 6) as u32) & (WATCH_SLOTS - 1))
        .map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn watched(page: u64) -> bool {
    page != 0 && watch_slot(page).is_some_and(|s| s.page == page)
}

/// Whether a page was ever watched since load: before that, nothing a
/// hook misses can have concerned a watched page.
#[inline(always)]
fn any_watched() -> bool {
    // SAFETY: a plain u64 global.
    unsafe { core::ptr::read_volatile(&raw const ANY_WATCHED) != 0 }
}

/// The frame number of `page`. Wrapping: the hint below needs the same
/// number for a page wherever it is computed, not a checked one.
#[inline(always)]
fn pfn_of(cfg: Cfg, page: u64) -> u64 {
    // checked: a plain `/` leaves a panic path with no exit, which the
    // verifier refuses.
    page.wrapping_sub(vmemmap(cfg))
        .checked_div(cfg.page_struct_size() as u64)
        .unwrap_or(0)
}

#[inline(always)]
fn block_slot(pfn: u64) -> u32 {
    (pfn >> DaxEntry::PMD_ORDER) as u32 & (BLOCK_SLOTS - 1)
}

/// Whether a page of the 2 MiB block of `pfn` may be watched.
#[inline(always)]
fn block_maybe_watched(pfn: u64) -> bool {
    WATCHED_BLOCKS.get(block_slot(pfn)).is_some_and(|&v| v != 0)
}

#[inline(always)]
fn mark_block_watched(pfn: u64) {
    if let Some(v) = WATCHED_BLOCKS.get_ptr_mut(block_slot(pfn)) {
        // SAFETY: an array map value; every writer stores the same value.
        unsafe { core::ptr::write_volatile(v, 1) };
    }
    // SAFETY: a plain u64 global, only ever set to 1.
    unsafe { core::ptr::write_volatile(&raw mut ANY_WATCHED, 1) };
}

#[inline(always)]
fn file_slot(mapping: u64) -> Option<&'static mut FileSlot> {
    // Mappings are embedded in slab-allocated inodes: a multiplicative hash
    // spreads their addresses over the slots.
    let slot = (mapping.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as u32 & (FILE_SLOTS - 1);
    // SAFETY: as task_slot.
    WATCHED_FILES.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// Starts watching `page` (frame `pfn`), found
/// busy in `mapping` at `index` (`mapping` is the page's own: a shared
/// page's is not a file, and no range deletion matches it).
#[inline(always)]
fn watch(page: u64, pfn: u64, now: u64, mapping: u64, index: u64) {
    mark_block_watched(pfn);
    if let Some(s) = watch_slot(page) {
        if s.page != 0 && s.page != page {
            if now.saturating_sub(s.since_ns) < WATCH_FRESH_NS {
                count(Counter::WatchFull);
            } else {
                count(Counter::WatchRecycled);
            }
        }
        s.page = page;
        s.since_ns = now;
        s.mapping = mapping;
        s.index = index;
    }
    if mapping > PAGE_MAPPING_DAX_COW {
        watch_in_file(page, mapping);
    }
}

/// Files the page under its file for the range hook. A subprogram: its
/// branches end before the busy scan's record is sent.
#[inline(never)]
fn watch_in_file(page: u64, mapping: u64) {
    let Some(f) = file_slot(mapping) else {
        return;
    };
    if f.mapping != mapping {
        if f.mapping != 0 {
            count(Counter::FileWatchFull);
        }
        f.mapping = mapping;
        clear_pages(&mut f.pages);
    }
    // By pfn: the pages a file has busy at once are mostly neighbours, and
    // one place per page keeps this (and the verifier's walk) short.
    let at = ((page >> 6) as usize) & (PAGES_PER_FILE - 1);
    let old = f.pages[at];
    if old != 0 && old != page && watch_in(old, mapping).is_some() {
        count(Counter::FileWatchFull);
    }
    f.pages[at] = page;
}

/// Zeroes a page list in map memory with plain stores (an array
/// assignment there can become a byte-wise memset the verifier refuses).
#[inline(always)]
fn clear_pages(pages: &mut [u64; PAGES_PER_FILE]) {
    for p in pages.iter_mut() {
        // SAFETY: a valid, exclusive reference.
        unsafe { core::ptr::write_volatile(p, 0) };
    }
}

/// The watch of `page`, if it is still watched as a page of `mapping`.
#[inline(always)]
fn watch_in(page: u64, mapping: u64) -> Option<&'static mut WatchSlot> {
    watch_slot(page).filter(|w| w.page == page && w.mapping == mapping)
}

#[inline(always)]
fn unwatch(page: u64) {
    if let Some(s) = watch_slot(page) {
        if s.page == page {
            s.page = 0;
        }
    }
}

/// Fills the page fields: pfn, refcount and page->mapping, and returns the
/// page's index in its file. The file the page belongs to is named once, by
/// the busy scan that starts watching it (`fill_owner`); the page events
/// that follow carry only the page.
#[inline(always)]
fn fill_page(r: &mut Record, cfg: Cfg, page: u64) -> u64 {
    r.page = page;
    let size = cfg.page_struct_size() as u64;
    let base = vmemmap(cfg);
    if size != 0 && page >= base {
        r.pfn = (page - base) / size;
    }
    let f = read_page(cfg, page);
    r.refcount = f.refcount;
    r.page_mapping = f.mapping;
    f.index
}

/// The inode of the page's own mapping, when the record has none yet or
/// names another mapping.
#[inline(always)]
fn fill_owner(r: &mut Record, cfg: Cfg) {
    if r.ino == 0 || r.page_mapping != r.mapping {
        fill_from_mapping(r, cfg, r.page_mapping);
    }
}

#[inline(always)]
fn fill_from_mapping(r: &mut Record, cfg: Cfg, mapping: u64) {
    if mapping > PAGE_MAPPING_DAX_COW {
        let host = read_at::<u64>(mapping, cfg.mapping_host());
        fill_inode(r, cfg, host);
    }
}

/// The page behind a wait/wake variable: `&page->_refcount` before 6.15,
/// the page itself after.
#[inline(always)]
fn var_to_page(cfg: Cfg, var: u64) -> u64 {
    if cfg.wait_on_refcount() != 0 {
        var.wrapping_sub(cfg.page_refcount() as u64)
    } else {
        var
    }
}

// ---- break layouts -------------------------------------------------------

/// Takes a task's slot for an entry; false when the entry is the one nesting
/// the hook allows (`nested`: depth becomes 2). The same task entering again
/// otherwise means its state is stale (a missed return: attached between
/// entry and return, or a kretprobe instance ran out): start afresh rather
/// than hide every later call as "nested". A slot another task holds is
/// taken, and counted.
#[inline(always)]
fn claim(tid: u32, owner: &mut u32, depth: &mut u32, nested: bool) -> bool {
    if *depth != 0 {
        if *owner == tid {
            if nested && *depth == 1 {
                *depth = 2;
                return false;
            }
        } else {
            count(Counter::TaskSlotCollision);
        }
    }
    *owner = tid;
    *depth = 1;
    true
}

#[inline(always)]
fn break_enter(hook: HookId, fs: FsKind) -> u32 {
    let tid = tid();
    let Some(st) = task_slot(&BREAKS, tid) else {
        return 0;
    };
    // Only the generic dax_break_layout() nests, inside ext4's or xfs's own
    // call.
    let generic = HookId::GenericBreak as u32;
    let nested = st.hook != generic && hook as u32 == generic;
    if !claim(tid, &mut st.tid, &mut st.depth, nested) {
        return 0;
    }
    st.hook = hook as u32;
    st.fs = fs as u32;
    st.emitted = 0;
    st.saw_busy = 0;
    st.scans = 0;
    // SAFETY: plain helper call.
    st.ts_ns = unsafe { bpf_ktime_get_ns() };
    st.mapping = 0;
    if let Some(rb) = task_slot(&RECENT_BUSY, tid) {
        if rb.tid == tid {
            rb.tid = 0;
        }
        // A new break: the truncation the last one allowed is no longer
        // expected.
        if rb.displaced == tid {
            rb.displaced = 0;
        }
    }
    0
}

/// Sends the deferred BreakEnter of the task's break call, once. Its file
/// is the one the scan just read (every break-layouts scans
/// `inode->i_mapping`), so the call's inode need not be read again.
/// Keeps the task's ext4 operation `op` (of tracepoint `hook`) on `inode`
/// with its range or new size `(a, b)`: it is recorded only if a break in
/// this task meets a busy page, which is when it names what the break was
/// for. Most operations never get there (or are on files without DAX), and
/// are not worth a record each unless asked (`--fs-ops all`).
#[inline(always)]
pub fn stash_fs_op(hook: HookId, op: u32, inode: u64, a: i64, b: i64) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if config().record_every_fs_op() != 0 {
        send_fs_op(hook, op, inode, a, b, now);
        return;
    }
    let tid = tid();
    let Some(slot) = task_slot(&FS_OPS, tid) else {
        return;
    };
    if slot.pending != 0 && slot.tid != tid {
        // Another task's operation, still waiting for its break: whether
        // it is lost is known only if that break asks for it.
        if slot.displaced == tid {
            count(Counter::FsOpQuiet);
        }
        slot.displaced = slot.tid;
    } else if slot.pending != 0 || slot.displaced == tid {
        // Replaces this task's own older operation.
        count(Counter::FsOpQuiet);
        if slot.displaced == tid {
            slot.displaced = 0;
        }
    }
    slot.tid = tid;
    slot.pending = 1;
    slot.hook = hook as u16;
    slot.op = op as u8;
    slot.ts_ns = now;
    slot.inode = inode;
    slot.a = a;
    slot.b = b;
}

#[inline(always)]
fn send_fs_op(hook: HookId, op: u32, inode: u64, a: i64, b: i64, ts_ns: u64) {
    let mut r = new_record(RecordKind::FsOp, hook);
    r.ts_ns = ts_ns;
    fill_inode(&mut r, config(), inode);
    r.op = op;
    r.a = a;
    r.b = b;
    submit(&r);
}

/// Records the task's kept ext4 operation, if it has one. A subprogram: its
/// record lives in its own frame, so the busy scan that calls it goes on in
/// one state whichever way it went (fewer paths for the verifier to walk).
#[inline(never)]
fn record_fs_op(tid: u32) {
    let Some(slot) = task_slot(&FS_OPS, tid) else {
        return;
    };
    if slot.tid != tid {
        if slot.displaced == tid {
            // Its operation gave way to another task's: the break that
            // was for it goes out unexplained.
            slot.displaced = 0;
            count(Counter::TaskSlotCollision);
        }
        return;
    }
    if slot.pending == 0 {
        return;
    }
    let hook = HookId::from_u16(slot.hook).unwrap_or(HookId::Ext4Truncate);
    slot.pending = 0;
    send_fs_op(hook, slot.op as u32, slot.inode, slot.a, slot.b, slot.ts_ns);
}

#[inline(always)]
fn break_recorded(st: &mut BreakSlot, mapping: u64, ino: u64, dev: u32) {
    if st.emitted != 0 {
        return;
    }
    st.emitted = 1;
    st.mapping = mapping;
    record_fs_op(st.tid);
    send_break_enter(st, ino, dev);
}

/// The deferred BreakEnter itself; a subprogram for the same reason as
/// [`record_fs_op`].
#[inline(never)]
fn send_break_enter(st: &BreakSlot, ino: u64, dev: u32) {
    let hook = HookId::from_u16(st.hook as u16).unwrap_or(HookId::GenericBreak);
    let mut r = new_record(RecordKind::BreakEnter, hook);
    r.ts_ns = st.ts_ns;
    r.ino = ino;
    r.dev = dev;
    r.op = st.fs;
    r.mapping = st.mapping;
    submit(&r);
}

#[inline(always)]
fn stat_add(fs: u32, slot: u32, v: u64) {
    let i = BreakStat::index(fs, slot) as usize;
    if let Some(row) = BREAK_STATS.get_ptr_mut(0) {
        if i < BreakStat::ENTRIES as usize {
            // SAFETY: per-CPU entry, index checked: no other writer races.
            unsafe { (*row)[i] += v };
        }
    }
}

/// One scanned break-layouts call into the kernel-side statistics. A
/// subprogram: the histogram's branches end here, not in every path of the
/// caller the verifier walks.
#[inline(never)]
fn break_stats_add(fs: u32, took_ns: u64, failed: bool) {
    stat_add(fs, BreakStat::bucket(took_ns / 1000), 1);
    stat_add(fs, BreakStat::SUM_NS, took_ns);
    if failed {
        stat_add(fs, BreakStat::ERRORS, 1);
    }
}

#[inline(always)]
fn break_exit(hook: HookId, ret: i64) -> u32 {
    let tid = tid();
    let Some(st) = task_slot(&BREAKS, tid) else {
        return 0;
    };
    if st.tid != tid || st.depth == 0 {
        // Attached while the call was running: its entry was never seen.
        return 0;
    }
    if st.hook != hook as u32 {
        // The nested generic call returning inside the outer one.
        if st.depth > 1 {
            st.depth -= 1;
        }
        return 0;
    }
    st.depth = 0;
    st.tid = 0;
    let (fs, mapping) = (st.fs, st.mapping);
    if st.saw_busy != 0 {
        if let Some(rb) = task_slot(&RECENT_BUSY, tid) {
            if rb.tid != 0 && rb.tid != tid {
                rb.displaced = rb.tid;
            }
            rb.tid = tid;
            rb.mapping = mapping;
        }
    }
    if st.scans == 0 {
        count(Counter::BreakQuiet);
        return 0;
    }
    // SAFETY: plain helper call.
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(st.ts_ns);
    break_stats_add(fs, took, ret != 0);
    if st.emitted == 0 {
        count(Counter::BreakClean);
        return 0;
    }
    let mut r = new_record(RecordKind::BreakExit, hook);
    r.op = fs;
    r.mapping = mapping;
    r.a = ret;
    submit(&r);
    0
}

/// The four programs of a break-layouts function: fentry/fexit where its
/// BTF can be attached to (vmlinux, or a module's through its split BTF),
/// else kprobe/kretprobe.
macro_rules! break_programs {
    ($kp:ident, $kr:ident, $fe:ident, $fx:ident, $hook:expr, $fs:expr) => {
        #[kprobe]
        pub fn $kp(_ctx: ProbeContext) -> u32 {
            break_enter($hook, $fs)
        }

        #[kretprobe]
        pub fn $kr(ctx: RetProbeContext) -> u32 {
            break_exit($hook, ctx.ret::<i32>() as i64)
        }

        fentry_break!($fe, $fx, $hook, $fs);
    };
}

/// The fentry/fexit pair alone: one per target function, since a tracing
/// program is bound to its function when it loads.
macro_rules! fentry_break {
    ($fe:ident, $fx:ident, $hook:expr, $fs:expr) => {
        #[fentry]
        pub fn $fe(_ctx: FEntryContext) -> u32 {
            break_enter($hook, $fs)
        }

        #[fexit]
        pub fn $fx(ctx: FExitContext) -> u32 {
            break_exit($hook, ctx.ret::<i32>().unwrap_or(0) as i64)
        }
    };
}

break_programs!(
    kp_ext4_break,
    kr_ext4_break,
    fe_ext4_break,
    fx_ext4_break,
    HookId::Ext4Break,
    FsKind::Ext4
);
break_programs!(
    kp_xfs_break,
    kr_xfs_break,
    fe_xfs_break,
    fx_xfs_break,
    HookId::XfsBreak,
    FsKind::Xfs
);
fentry_break!(
    fe_xfs_break_dax,
    fx_xfs_break_dax,
    HookId::XfsBreak,
    FsKind::Xfs
);
break_programs!(
    kp_generic_break,
    kr_generic_break,
    fe_generic_break,
    fx_generic_break,
    HookId::GenericBreak,
    FsKind::Generic
);

// ---- busy scan ------------------------------------------------------------

#[inline(always)]
fn scan_enter(mapping: u64, start: i64, end: i64, whole_file: bool) -> u32 {
    let tid = tid();
    let Some(st) = task_slot(&SCANS, tid) else {
        return 0;
    };
    // The only real nesting: dax_layout_busy_page() calling the _range variant.
    let nested = st.whole_file != 0 && !whole_file;
    if !claim(tid, &mut st.tid, &mut st.depth, nested) {
        return 0;
    }
    st.whole_file = whole_file as u32;
    st.mapping = mapping;
    st.start = start;
    st.end = end;
    0
}

#[inline(always)]
fn scan_exit(page: u64) -> u32 {
    let tid = tid();
    let Some(st) = task_slot(&SCANS, tid) else {
        return 0;
    };
    if st.tid != tid || st.depth == 0 {
        // Attached while a scan was running: its arguments are unknown.
        return 0;
    }
    if st.depth > 1 {
        st.depth -= 1;
        return 0;
    }
    st.depth = 0;
    st.tid = 0;
    let (mapping, start, end) = (st.mapping, st.start, st.end);
    let cfg = config();
    // The break slot is looked up twice rather than held across the page's
    // part: the verifier then walks that part once, not once per case.
    let in_break = |tid: u32| task_slot(&BREAKS, tid).filter(|b| b.tid == tid && b.depth != 0);
    let quiet = match in_break(tid) {
        Some(b) => {
            b.scans += 1;
            // Nothing found, and nothing before: the call's statistics say
            // enough.
            page == 0 && b.saw_busy == 0
        }
        None => page == 0,
    };
    if quiet {
        count(Counter::ScanQuiet);
        return 0;
    }
    let mut r = new_record(RecordKind::BusyScan, HookId::BusyScan);
    r.mapping = mapping;
    r.a = start;
    r.b = end;
    fill_from_mapping(&mut r, cfg, mapping);
    // The file scanned, for the break's own record (the page's owner may
    // differ).
    let (ino, dev) = (r.ino, r.dev);
    if page != 0 {
        let index = fill_page(&mut r, cfg, page);
        fill_owner(&mut r, cfg);
        watch(page, r.pfn, r.ts_ns, r.page_mapping, index);
    }
    if let Some(b) = in_break(tid) {
        break_recorded(b, mapping, ino, dev);
        if page != 0 {
            b.saw_busy = 1;
        }
    }
    submit(&r);
    0
}

#[kprobe]
pub fn kp_busy_scan_range(ctx: ProbeContext) -> u32 {
    scan_enter(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<i64>(1).unwrap_or(0),
        ctx.arg::<i64>(2).unwrap_or(0),
        false,
    )
}

#[kprobe]
pub fn kp_busy_scan(ctx: ProbeContext) -> u32 {
    scan_enter(ctx.arg::<u64>(0).unwrap_or(0), 0, LLONG_MAX, true)
}

#[kretprobe]
pub fn kr_busy_scan(ctx: RetProbeContext) -> u32 {
    scan_exit(ctx.ret::<u64>())
}

#[fentry]
pub fn fe_busy_scan_range(ctx: FEntryContext) -> u32 {
    scan_enter(
        ctx.arg::<u64>(0),
        ctx.arg::<i64>(1),
        ctx.arg::<i64>(2),
        false,
    )
}

#[fexit]
pub fn fx_busy_scan_range(ctx: FExitContext) -> u32 {
    scan_exit(ctx.ret::<u64>().unwrap_or(0))
}

#[fentry]
pub fn fe_busy_scan(ctx: FEntryContext) -> u32 {
    scan_enter(ctx.arg::<u64>(0), 0, LLONG_MAX, true)
}

#[fexit]
pub fn fx_busy_scan(ctx: FExitContext) -> u32 {
    scan_exit(ctx.ret::<u64>().unwrap_or(0))
}

// ---- wait and wake on a watched page ------------------------------------

#[inline(always)]
fn page_event(kind: RecordKind, hook: HookId, var: u64) -> u32 {
    let cfg = config();
    let page = var_to_page(cfg, var);
    if !watched(page) {
        return 0;
    }
    let mut r = new_record(kind, hook);
    fill_page(&mut r, cfg, page);
    submit(&r);
    0
}

#[kprobe]
pub fn kp_wait_start(ctx: ProbeContext) -> u32 {
    page_event(
        RecordKind::WaitStart,
        HookId::WaitStart,
        ctx.arg::<u64>(1).unwrap_or(0),
    )
}

#[fentry]
pub fn fe_wait_start(ctx: FEntryContext) -> u32 {
    page_event(RecordKind::WaitStart, HookId::WaitStart, ctx.arg::<u64>(1))
}

#[kprobe]
pub fn kp_wake_up(ctx: ProbeContext) -> u32 {
    page_event(
        RecordKind::WakeUp,
        HookId::WakeUp,
        ctx.arg::<u64>(0).unwrap_or(0),
    )
}

#[fentry]
pub fn fe_wake_up(ctx: FEntryContext) -> u32 {
    page_event(RecordKind::WakeUp, HookId::WakeUp, ctx.arg::<u64>(0))
}

// ---- pins dropped ---------------------------------------------------------

/// The devmap put path: `refs` references are about to be dropped.
#[inline(always)]
fn pin_dropped(page: u64, refs: u32) -> u32 {
    if !watched(page) {
        count(Counter::PutUnwatched);
        return 0;
    }
    count(Counter::PutWatched);
    let cfg = config();
    let mut r = new_record(RecordKind::PinDropped, HookId::PinDropped);
    fill_page(&mut r, cfg, page);
    r.refs = refs;
    submit(&r);
    0
}

/// `free_zone_device_folio(folio)` (6.15+): the page already went idle.
#[inline(always)]
fn page_freed(page: u64) -> u32 {
    if !watched(page) {
        count(Counter::PutUnwatched);
        return 0;
    }
    count(Counter::PutWatched);
    let cfg = config();
    let mut r = new_record(RecordKind::PageReleased, HookId::PinDropped);
    fill_page(&mut r, cfg, page);
    submit(&r);
    0
}

#[kprobe]
pub fn kp_pin_dropped_refs(ctx: ProbeContext) -> u32 {
    pin_dropped(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u32>(1).unwrap_or(0),
    )
}

#[kprobe]
pub fn kp_pin_dropped_one(ctx: ProbeContext) -> u32 {
    pin_dropped(ctx.arg::<u64>(0).unwrap_or(0), 1)
}

#[kprobe]
pub fn kp_page_freed(ctx: ProbeContext) -> u32 {
    page_freed(ctx.arg::<u64>(0).unwrap_or(0))
}

/// Argument `n` of an fentry program as a plain number. The verifier types a
/// `struct page *` / `struct folio *` argument as a BTF pointer and forbids
/// the arithmetic pfns and slots need; `bpf_get_func_arg` (inlined by the
/// verifier, 5.17+) hands it over as a scalar.
#[inline(always)]
fn scalar_arg(ctx: &FEntryContext, n: u32) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: helper call writing one u64 to our stack.
    let rc = unsafe { aya_ebpf::helpers::generated::bpf_get_func_arg(ctx.as_ptr(), n, &mut v) };
    if rc != 0 {
        count(Counter::ReadFailed);
        return 0;
    }
    v
}

#[fentry]
pub fn fe_pin_dropped_folio_refs(ctx: FEntryContext) -> u32 {
    pin_dropped(scalar_arg(&ctx, 0), ctx.arg::<u32>(1))
}

#[fentry]
pub fn fe_pin_dropped_page_refs(ctx: FEntryContext) -> u32 {
    pin_dropped(scalar_arg(&ctx, 0), ctx.arg::<u32>(1))
}

#[fentry]
pub fn fe_page_freed(ctx: FEntryContext) -> u32 {
    page_freed(scalar_arg(&ctx, 0))
}

// ---- release path that bypasses the devmap put (Debian 6.1) --------------

/// Watched pages one release reports; more in one bio are counted as
/// `BioTruncated` (lost). A busy scan watches one page per call, so a bio
/// holds few.
const MAX_RELEASED_WATCHED: usize = 16;

/// Reports one watched page of a released bio. Called after the walk, not
/// inside it: the walk's callbacks stay a few instructions long, which is
/// what the 6.8+ verifier (it iterates callbacks to a fixed point) needs to
/// load them quickly.
#[inline(never)]
fn report_released(page: u64) {
    let cfg = config();
    let mut r = new_record(RecordKind::PageReleased, HookId::BioRelease);
    fill_page(&mut r, cfg, page);
    submit(&r);
}

/// What the walk found. In a per-CPU map rather than on the stack: values
/// read from map memory are unknown to the verifier, so the loop states
/// converge instead of forking on every count (a stack counter made the 7.x
/// verifier give up). The program cannot nest on one CPU (the kernel skips
/// a program's re-entry there), so one slot per CPU is enough.
#[derive(Clone, Copy)]
#[repr(C)]
struct Found {
    pages: [u64; MAX_RELEASED_WATCHED],
    n: u64,
    overflow: u64,
    /// Pages walked, counted once per bio.
    walked: u64,
}

#[map]
static RELEASE_FOUND: PerCpuArray<Found> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn found_push(page: u64) {
    let Some(f) = RELEASE_FOUND.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, only this program run uses it.
    let f = unsafe { &mut *f };
    let n = f.n as usize;
    if n < MAX_RELEASED_WATCHED {
        f.pages[n] = page;
        f.n += 1;
    } else {
        f.overflow += 1;
    }
}

/// What the bvec callback needs from the bio.
#[repr(C)]
struct BioWalk {
    vecs: u64,
    bvec_size: u64,
    psz: u64,
    /// The bvecs are in `BVEC_COPIES` (one read for the bio instead of
    /// three per bvec).
    copied: u64,
}

/// Bytes of bvecs copied in one read: `BIO_MAX_VECS` (256) bvecs of 16
/// bytes (64-bit), every bvec a bio whose pages the release path drops can
/// have. Longer lists are read field by field.
const BVEC_COPY: u64 = 4096;

/// The bvecs of the bio being released, copied in one read. Reading three
/// fields of each bvec apart took 48 reads for a 64 KiB direct I/O into a
/// DAX mapping (sixteen 1-page bvecs: DAX folios are not merged), about
/// 5 us of a 9.4 us run on 7.3 under emulation.
#[repr(C)]
struct BvecCopy {
    /// Twice `BVEC_COPY`: the read's length is masked to below that, which
    /// the 6.12 verifier can bound where it loses the `len <= BVEC_COPY`
    /// test; and slack for a masked offset plus 8.
    bytes: [u8; 2 * BVEC_COPY as usize + 16],
}

#[map]
static BVEC_COPIES: PerCpuArray<BvecCopy> = PerCpuArray::with_max_entries(1, 0);

/// Copies the first `n` bvecs at `vecs`; false when they do not fit or the
/// read fails (the walk then reads them field by field).
#[inline(always)]
fn copy_bvecs(vecs: u64, n: u32, bvec_size: u64) -> bool {
    let len = n as u64 * bvec_size;
    if vecs == 0 || len == 0 || len > BVEC_COPY {
        return false;
    }
    let Some(copy) = BVEC_COPIES.get_ptr_mut(0) else {
        return false;
    };
    // Read back through memory so that the compiler keeps the mask: having
    // proved `len <= BVEC_COPY` by a wrapping test the verifier cannot
    // follow, it would drop it, and the verifier then sees no bound.
    // SAFETY: a plain local.
    let len = unsafe { core::ptr::read_volatile(&len) } & (2 * BVEC_COPY - 1);
    // SAFETY: this CPU's slot (the program cannot nest on one CPU); the
    // helper writes `len` < 2 * BVEC_COPY bytes into it.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            (*copy).bytes.as_mut_ptr() as *mut c_void,
            len as u32,
            vecs as *const c_void,
        ) == 0
    }
}

/// A field of the copied bvecs, `at` bytes in. The offset is masked so that
/// the verifier can bound it; every real one is below the copied length.
#[inline(always)]
fn copied_field<T: Copy + Default>(at: u64) -> T {
    let Some(copy) = BVEC_COPIES.get_ptr_mut(0) else {
        return T::default();
    };
    // SAFETY: masked offset + size_of::<T>() (at most 8) is inside `bytes`.
    unsafe {
        core::ptr::read_unaligned(
            (*copy).bytes.as_ptr().add((at & (BVEC_COPY - 1)) as usize) as *const T
        )
    }
}

/// The pages of one multi-page bvec: `pages` pages from `first`, frame
/// numbers from `pfn`.
#[repr(C)]
struct BvecWalk {
    first: u64,
    pfn: u64,
    pages: u64,
    psz: u64,
}

/// A run of pages inside one 2 MiB block.
#[repr(C)]
struct PageRun {
    first: u64,
    psz: u64,
}

type LoopCallback = extern "C" fn(u32, *mut c_void) -> i64;

extern "C" fn page_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it below.
    let w = unsafe { &*(ctx as *const PageRun) };
    found_if_watched(w.first + i as u64 * w.psz);
    0
}

/// Block `i` of a multi-page bvec: its pages are looked at only where a
/// page of the block was ever watched (a 1 MiB bvec of a huge page then
/// costs one load, not 256).
extern "C" fn block_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it below.
    let w = unsafe { &*(ctx as *const BvecWalk) };
    let block_first = ((w.pfn >> DaxEntry::PMD_ORDER) + i as u64) << DaxEntry::PMD_ORDER;
    let lo = if block_first > w.pfn {
        block_first
    } else {
        w.pfn
    };
    let block_end = block_first + DaxEntry::PMD_PAGES;
    let end = w.pfn + w.pages;
    let hi = if block_end < end { block_end } else { end };
    if hi <= lo || !block_maybe_watched(lo) {
        return 0;
    }
    let mut run = PageRun {
        first: w.first + (lo - w.pfn) * w.psz,
        psz: w.psz,
    };
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            (hi - lo) as u32,
            page_step as LoopCallback as *mut c_void,
            &mut run as *mut PageRun as *mut c_void,
            0,
        )
    };
    0
}

#[inline(always)]
fn found_if_watched(page: u64) {
    if watched(page) {
        found_push(page);
    }
}

extern "C" fn bvec_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it below.
    let w = unsafe { &*(ctx as *const BioWalk) };
    let cfg = config();
    let at = (i as u64) * w.bvec_size;
    let (off, len, bv_page) = if w.copied != 0 {
        (
            copied_field::<u32>(at + cfg.bvec_offset() as u64) as u64,
            copied_field::<u32>(at + cfg.bvec_len() as u64) as u64,
            copied_field::<u64>(at + cfg.bvec_page() as u64),
        )
    } else {
        let bv = w.vecs + at;
        (
            read_at::<u32>(bv, cfg.bvec_offset()) as u64,
            read_at::<u32>(bv, cfg.bvec_len()) as u64,
            read_at::<u64>(bv, cfg.bvec_page()),
        )
    };
    let (first_pg, npages) = bvec_pages(off, len);
    if npages == 0 {
        return 0;
    }
    let first = bv_page + first_pg * w.psz;
    if npages == 1 {
        // The usual bvec here: no inner walk (a `bpf_loop` per bvec).
        found_if_watched(first);
        add_walked(1);
        return 0;
    }
    let pfn = pfn_of(cfg, first);
    let blocks = ((pfn + npages - 1) >> DaxEntry::PMD_ORDER) - (pfn >> DaxEntry::PMD_ORDER) + 1;
    let mut bw = BvecWalk {
        first,
        pfn,
        pages: npages,
        psz: w.psz,
    };
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            blocks as u32,
            block_step as LoopCallback as *mut c_void,
            &mut bw as *mut BvecWalk as *mut c_void,
            0,
        )
    };
    add_walked(npages);
    0
}

#[inline(always)]
fn add_walked(n: u64) {
    if let Some(f) = RELEASE_FOUND.get_ptr_mut(0) {
        // SAFETY: this CPU's slot (see Found). Counted here, not in the
        // walk's stack context: a counter there never lets the verifier's
        // loop states converge.
        unsafe { (*f).walked += n };
    }
}

/// Reports the watched pages the walk found, from a loop callback: one
/// record path for the verifier to check, not one per page.
extern "C" fn released_report_step(i: u32, _ctx: *mut c_void) -> i64 {
    let Some(f) = RELEASE_FOUND.get_ptr(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by the walk of this program run.
    let page = unsafe { (*f).pages[i as usize & (MAX_RELEASED_WATCHED - 1)] };
    report_released(page);
    0
}

/// After `__bio_release_pages(bio)` dropped its references: report the
/// watched pages of the bio with their refcount now. Every bvec and every
/// page is looked at (a bio the release path drops pages of has at most
/// `BIO_MAX_VECS` bvecs, a multi-page bvec up to 4 GiB): nothing is cut
/// short, so nothing but more watched pages than one run reports is lost.
///
/// Walked with `bpf_loop` (5.17+): its callbacks are verified once, where an
/// open-coded loop over bvecs and pages is verified per iteration and made
/// the 6.12 verifier give up (E2BIG after minutes under emulation).
#[inline(always)]
fn bio_released(bio: u64) -> u32 {
    if bio == 0 {
        return 0;
    }
    let cfg = config();
    let vcnt = read_at::<u16>(bio, cfg.bio_vcnt()) as u32;
    let mut w = BioWalk {
        vecs: read_at::<u64>(bio, cfg.bio_io_vec()),
        bvec_size: cfg.bio_vec_size() as u64,
        psz: cfg.page_struct_size() as u64,
        copied: 0,
    };
    let Some(found) = RELEASE_FOUND.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot (see Found). Volatile: plain stores next to
    // each other become a memset call the verifier refuses.
    unsafe {
        core::ptr::write_volatile(&raw mut (*found).n, 0);
        core::ptr::write_volatile(&raw mut (*found).overflow, 0);
        core::ptr::write_volatile(&raw mut (*found).walked, 0);
    }
    w.copied = copy_bvecs(w.vecs, vcnt, w.bvec_size) as u64;
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            vcnt,
            bvec_step as LoopCallback as *mut c_void,
            &mut w as *mut BioWalk as *mut c_void,
            0,
        )
    };
    // SAFETY: as above; copied out before any record is sent.
    let (n, walked, overflow) = unsafe { ((*found).n, (*found).walked, (*found).overflow) };
    count_add(Counter::PutWatched, n);
    count_add(Counter::PutUnwatched, walked.saturating_sub(n));
    count_add(Counter::BioTruncated, overflow);
    if n != 0 {
        // SAFETY: helper call with a callback and no context.
        unsafe {
            bpf_loop(
                n as u32,
                released_report_step as LoopCallback as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    0
}

#[fexit]
pub fn fx_bio_release(ctx: FExitContext) -> u32 {
    bio_released(ctx.arg::<u64>(0))
}

#[kprobe]
pub fn kp_bio_release(ctx: ProbeContext) -> u32 {
    let tid = tid();
    if let Some(st) = task_slot(&BIO_STASH, tid) {
        if st.tid != 0 && st.tid != tid && any_watched() {
            // Another task's bio between entry and return: its walk is
            // lost (counted only where a page could be watched at all).
            count(Counter::TaskSlotCollision);
        }
        st.tid = tid;
        st.bio = ctx.arg::<u64>(0).unwrap_or(0);
    }
    0
}

#[kretprobe]
pub fn kr_bio_release(_ctx: RetProbeContext) -> u32 {
    let tid = tid();
    let Some(st) = task_slot(&BIO_STASH, tid) else {
        return 0;
    };
    if st.tid != tid {
        return 0;
    }
    st.tid = 0;
    bio_released(st.bio)
}

// ---- truncation -------------------------------------------------------------

/// `dax_disassociate_entry(entry, mapping, trunc)`: the entry's pages leave
/// the file (one, or 512 for a 2 MiB entry).
#[inline(always)]
fn disassociate(entry: u64, mapping: u64, trunc: bool) -> u32 {
    let Some((pfn, pages)) = DaxEntry::pfns(entry) else {
        return 0; // the kernel maps no page for these
    };
    let cfg = config();
    let page = vmemmap(cfg) + pfn * cfg.page_struct_size() as u64;
    if pages > 1 {
        count(Counter::PmdEntry);
        disassociate_pmd_tail(page, pfn, mapping, trunc);
    }
    let is_watched = watched(page);
    if !(is_watched || trunc || mapping != 0) {
        // The 6.15+ clone on an unwatched page: neither a pinned truncation
        // nor a mismatch can be seen without the flag and the mapping, so
        // the page is not read (a kernel read per truncated entry).
        count(Counter::DisassociateQuiet);
        return 0;
    }
    let f = read_page(cfg, page);
    let pinned = trunc && f.refcount > cfg.idle_refcount() as i32;
    let mismatch = mapping != 0 && f.mapping > PAGE_MAPPING_DAX_COW && f.mapping != mapping;
    if !(is_watched || pinned || mismatch) {
        count(Counter::DisassociateQuiet);
        return 0;
    }
    send_disassociated(page, pfn, &f, mapping, trunc);
    0
}

/// Records one page leaving its file, and ends its watch: what happens to
/// it next belongs to its next owner, whose busy scan will watch it again.
/// (The 6.15+ clone cannot tell truncation from invalidation, so both end
/// the watch.)
#[inline(always)]
fn send_disassociated(page: u64, pfn: u64, f: &PageFields, mapping: u64, trunc: bool) {
    unwatch(page);
    let mut r = new_record(RecordKind::Disassociate, HookId::Disassociate);
    r.page = page;
    r.pfn = pfn;
    r.refcount = f.refcount;
    r.page_mapping = f.mapping;
    r.mapping = mapping;
    r.op = trunc as u32;
    fill_from_mapping(&mut r, config(), mapping);
    submit(&r);
}

/// What the walk of a 2 MiB entry's pages after the first needs.
#[repr(C)]
struct PmdWalk {
    first_page: u64,
    first_pfn: u64,
    psz: u64,
    mapping: u64,
    trunc: u64,
}

/// The watched pages of a 2 MiB entry other than its first (which the
/// caller judges like any entry's page): each is reported as truncated
/// with its own refcount. Before 6.15 a pin holds the page it was taken
/// on, any of the 512, and a busy scan returns that page; from 6.15 the
/// entry is one folio, watched by its first page. A subprogram: the walk
/// is one branch of the caller, not one per outcome.
#[inline(never)]
fn disassociate_pmd_tail(first_page: u64, first_pfn: u64, mapping: u64, trunc: bool) {
    if !block_maybe_watched(pfn_of(config(), first_page)) {
        return;
    }
    let mut walk = PmdWalk {
        first_page,
        first_pfn,
        psz: config().page_struct_size() as u64,
        mapping,
        trunc: trunc as u64,
    };
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            (DaxEntry::PMD_PAGES - 1) as u32,
            pmd_page_step as LoopCallback as *mut c_void,
            &mut walk as *mut PmdWalk as *mut c_void,
            0,
        )
    };
}

extern "C" fn pmd_page_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it above.
    let w = unsafe { &*(ctx as *const PmdWalk) };
    let k = i as u64 + 1;
    let page = w.first_page + k * w.psz;
    if watched(page) {
        report_pmd_page(page, w.first_pfn + k, w.mapping, w.trunc);
    }
    0
}

/// A subprogram, so that the page callback above stays a few instructions
/// long for the verifier (see `report_released`).
#[inline(never)]
fn report_pmd_page(page: u64, pfn: u64, mapping: u64, trunc: u64) {
    let f = read_page(config(), page);
    send_disassociated(page, pfn, &f, mapping, trunc != 0);
}

#[kprobe]
pub fn kp_disassociate(ctx: ProbeContext) -> u32 {
    disassociate(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u8>(2).unwrap_or(0) != 0,
    )
}

/// The `.isra` clone of 6.15+: only the entry survives as an argument, so
/// the mapping and the truncation flag are unknown (0): the record reports a
/// watched page leaving its file, never a pinned truncation by itself.
#[kprobe]
pub fn kp_disassociate_clone(ctx: ProbeContext) -> u32 {
    disassociate(ctx.arg::<u64>(0).unwrap_or(0), 0, false)
}

#[fentry]
pub fn fe_disassociate(ctx: FEntryContext) -> u32 {
    disassociate(ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u8>(2) != 0)
}

/// `dax_delete_mapping_range(mapping, start, end)` (6.15+): every entry of
/// the byte range `[start, end]` leaves the file, each through
/// `dax_disassociate_entry(entry, mapping, true)`. Where that is an `.isra`
/// clone (no BTF, so a kprobe trap per entry, and on every page fault that
/// fills a hole too) this one call per range stands for it: the watched
/// pages of the file that lie in the range are reported as truncated, with
/// their refcount. It runs after the break found every page of the range
/// idle, so a refcount above idle here is a pin taken behind its back.
///
/// The watched pages are not all: a page pinned behind the break's back, or
/// left pinned by a break that returned early (the 2018 race), was never
/// returned by a scan. So the file's entries in the range are walked too,
/// and every unwatched page above idle is reported as a truncated page,
/// as the per-entry hook does before 6.15.
#[inline(always)]
fn delete_range(mapping: u64, start: i64, end: i64) -> u32 {
    if mapping == 0 {
        return 0;
    }
    let first = (start.max(0) as u64) >> PAGE_SHIFT;
    let last = if end == LLONG_MAX {
        u64::MAX
    } else {
        (end.max(0) as u64) >> PAGE_SHIFT
    };
    walk_range_entries(mapping, first, last);
    let Some(f) = file_slot(mapping) else {
        return 0;
    };
    if f.mapping != mapping {
        count(Counter::DisassociateQuiet);
        return 0;
    }
    let Some(ended) = RANGE_ENDED.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, only this program run uses it.
    let ended = unsafe { &mut *ended };
    clear_pages(&mut ended.pages);
    // Nothing but memory changes from one page to the next, so that the
    // verifier's paths through the pages converge instead of multiplying.
    for i in 0..PAGES_PER_FILE {
        let page = f.pages[i];
        if page == 0 {
            continue;
        }
        if let Some(w) = watch_in(page, mapping) {
            if w.index < first || w.index > last {
                continue;
            }
            w.page = 0;
            ended.pages[i] = page;
        }
        // Ended here, or no longer watched for this file: forget it.
        f.pages[i] = 0;
    }
    if f.pages.iter().all(|&p| p == 0) {
        f.mapping = 0;
    }
    // The records come from a loop callback: one record path for the
    // verifier to check, not one per page.
    let mut walk = mapping;
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            PAGES_PER_FILE as u32,
            range_report_step as LoopCallback as *mut c_void,
            &mut walk as *mut u64 as *mut c_void,
            0,
        )
    };
    0
}

/// The watched pages one range deletion ended (0: none in that place). In
/// a per-CPU map, not on the stack, for the reason `RELEASE_FOUND` is.
#[repr(C)]
struct RangeEnded {
    pages: [u64; PAGES_PER_FILE],
}

#[map]
static RANGE_ENDED: PerCpuArray<RangeEnded> = PerCpuArray::with_max_entries(1, 0);

/// Reports one ended page as the disassociation would. The file is not
/// named again: the busy scan that watched the page did.
extern "C" fn range_report_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it above.
    let mapping = unsafe { *(ctx as *const u64) };
    let Some(ended) = RANGE_ENDED.get_ptr(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by the program that runs this loop.
    let page = unsafe { (*ended).pages[i as usize & (PAGES_PER_FILE - 1)] };
    if page != 0 {
        let cfg = config();
        let mut r = new_record(RecordKind::Disassociate, HookId::Disassociate);
        fill_page(&mut r, cfg, page);
        r.mapping = mapping;
        r.op = 1;
        submit(&r);
    }
    0
}

/// Levels of the page cache's xarray the walk descends (6 bits of index
/// each: 48 bits, far more pages than any file has).
const XA_LEVELS: usize = 8;

/// Where the walk of one range deletion is: per level, the node, the first
/// index it covers, its shift, and the next slot to visit. In a per-CPU map
/// (the loop callback indexes it by level, which stack memory would not
/// allow), for one program run at a time on this CPU.
#[repr(C)]
struct RangeWalk {
    node: [u64; XA_LEVELS],
    base: [u64; XA_LEVELS],
    shift: [u32; XA_LEVELS],
    next: [u32; XA_LEVELS],
    /// Levels in use; 0 when the walk is over.
    depth: u32,
    _pad: u32,
    first: u64,
    last: u64,
    mapping: u64,
}

#[map]
static RANGE_WALK: PerCpuArray<RangeWalk> = PerCpuArray::with_max_entries(1, 0);

/// Reports every unwatched page of `mapping`'s entries in `[first, last]`
/// that is above the idle refcount (the watched ones are reported by the
/// caller). One slot per loop step, depth first, skipping subtrees outside
/// the range; a walk that needs more than [`RANGE_WALK_STEPS`] steps is
/// counted as cut.
#[inline(never)]
fn walk_range_entries(mapping: u64, first: u64, last: u64) {
    let cfg = config();
    let head = read_at::<u64>(mapping, cfg.mapping_xa_head());
    if head == 0 {
        return;
    }
    let Some(node) = XaEntry::node(head) else {
        // A file of one entry keeps it in the root, at index 0.
        if first == 0 {
            check_range_entry(head, mapping);
        }
        return;
    };
    let Some(w) = RANGE_WALK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, only this program run uses it.
    let w = unsafe { &mut *w };
    w.node[0] = node;
    w.base[0] = 0;
    w.shift[0] = read_at::<u8>(node, cfg.xa_node_shift()) as u32;
    w.next[0] = 0;
    w.depth = 1;
    w.first = first;
    w.last = last;
    w.mapping = mapping;
    // SAFETY: helper call with a callback; the callback finds its state in
    // the map above, not through the context pointer.
    unsafe {
        bpf_loop(
            RANGE_WALK_STEPS,
            range_walk_step as LoopCallback as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if w.depth != 0 {
        count(Counter::RangeWalkCut);
    }
}

extern "C" fn range_walk_step(_i: u32, _ctx: *mut c_void) -> i64 {
    let Some(w) = RANGE_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by the program that runs this loop.
    let w = unsafe { &mut *w };
    if w.depth == 0 || w.depth as usize > XA_LEVELS {
        w.depth = 0;
        return 1;
    }
    let level = (w.depth as usize - 1) & (XA_LEVELS - 1);
    let slot = w.next[level];
    if slot >= XaEntry::SLOTS {
        w.depth -= 1;
        return 0;
    }
    w.next[level] = slot + 1;
    let Some((start, end)) = XaEntry::slot_span(w.base[level], w.shift[level], slot) else {
        w.depth -= 1;
        return 0;
    };
    if start > w.last {
        // The node's later slots lie further still.
        w.depth -= 1;
        return 0;
    }
    if end < w.first {
        return 0;
    }
    let cfg = config();
    let entry = read_at::<u64>(w.node[level], cfg.xa_node_slots() + slot * 8);
    if let Some(node) = XaEntry::node(entry) {
        if w.depth as usize >= XA_LEVELS {
            return 0; // deeper than any file: not a page cache
        }
        let down = w.depth as usize & (XA_LEVELS - 1);
        w.node[down] = node;
        w.base[down] = start;
        w.shift[down] = read_at::<u8>(node, cfg.xa_node_shift()) as u32;
        w.next[down] = 0;
        w.depth += 1;
        return 0;
    }
    check_range_entry(entry, w.mapping);
    0
}

/// One entry of a deleted range: its page is reported when it is above idle
/// and no watch of this file will report it. A subprogram, so that the loop
/// callback stays short for the verifier.
#[inline(never)]
fn check_range_entry(entry: u64, mapping: u64) {
    let Some((pfn, _)) = DaxEntry::pfns(entry) else {
        return; // not a DAX page: empty, zero page, sibling or retry entry
    };
    let cfg = config();
    let page = vmemmap(cfg) + pfn * cfg.page_struct_size() as u64;
    if watch_in(page, mapping).is_some() {
        return;
    }
    let f = read_page(cfg, page);
    if f.refcount > cfg.idle_refcount() as i32 {
        send_disassociated(page, pfn, &f, mapping, true);
    } else {
        count(Counter::DisassociateQuiet);
    }
}

#[kprobe]
pub fn kp_delete_range(ctx: ProbeContext) -> u32 {
    delete_range(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<i64>(1).unwrap_or(0),
        ctx.arg::<i64>(2).unwrap_or(0),
    )
}

#[fentry]
pub fn fe_delete_range(ctx: FEntryContext) -> u32 {
    // The mapping is hashed: it must be a plain number (see scalar_arg).
    delete_range(scalar_arg(&ctx, 0), ctx.arg::<i64>(1), ctx.arg::<i64>(2))
}

/// `dax_delete_mapping_entry(mapping, index)`: recorded only for tasks whose
/// last break saw a busy page (where 6.12 inlines the disassociate, this is
/// the truncation that remains visible).
#[inline(always)]
fn delete_entry(mapping: u64, index: u64) -> u32 {
    let tid = tid();
    let Some(slot) = task_slot(&RECENT_BUSY, tid) else {
        return 0;
    };
    if slot.tid != tid && slot.displaced == tid {
        // Its busy break's slot went to another task's busy break: the
        // truncation that break allowed is not recorded.
        slot.displaced = 0;
        count(Counter::TaskSlotCollision);
        return 0;
    }
    if slot.tid != tid || slot.mapping != mapping {
        count(Counter::DeleteQuiet);
        return 0;
    }
    // The first deletion shows the truncation the busy break allowed; the
    // rest of the range says nothing more.
    slot.tid = 0;
    let cfg = config();
    let mut r = new_record(RecordKind::DeleteEntry, HookId::DeleteEntry);
    r.mapping = mapping;
    r.a = index as i64;
    fill_from_mapping(&mut r, cfg, mapping);
    submit(&r);
    0
}

#[kprobe]
pub fn kp_delete_entry(ctx: ProbeContext) -> u32 {
    delete_entry(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
    )
}

#[fentry]
pub fn fe_delete_entry(ctx: FEntryContext) -> u32 {
    delete_entry(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}
