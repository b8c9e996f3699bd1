//! Watched pages: a page becomes watched when a busy scan returns it, and
//! the page hooks (millions of calls a second under direct I/O) look only
//! for those. The watched-page table, the 2 MiB block hint that lets the
//! multi-page walks skip blocks never watched, and the per-file lists the
//! 6.15+ range deletion needs; and the page gate, which lets those hooks
//! return at once while no page is watched at all.
use aya_ebpf::{macros::map, maps::Array};
use daxrace_common::{
    slots::{self, BLOCK_SLOTS, FILE_SLOTS, PAGES_PER_FILE, WATCH_BUCKETS, WATCH_SLOTS},
    Counter, WATCH_FRESH_NS,
};

use super::state::PAGE_MAPPING_DAX_COW;
use crate::emit::count;

/// A watched page, its own file (`page->mapping` when the busy scan found
/// it: not a file for a page shared by several) and its index there.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct WatchSlot {
    pub(super) page: u64,
    pub(super) since_ns: u64,
    pub(super) mapping: u64,
    pub(super) index: u64,
    /// The refcount last reported for the page (by its busy scan, or by the
    /// sweep): the sweep reports only a change.
    pub(super) reported_refcount: i64,
}

/// The watched pages of one file (`struct address_space *`), for the range
/// deletion hook: `dax_delete_mapping_range(mapping, start, end)` names a
/// file and byte range, not pages.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct FileSlot {
    pub(super) mapping: u64,
    pub(super) pages: [u64; PAGES_PER_FILE],
}

/// Watched pages, direct-mapped by address: a page taking the slot of
/// another watched page evicts it (counted as `WatchFull`).
#[map]
pub(super) static WATCHED: Array<WatchSlot> = Array::with_max_entries(WATCH_SLOTS, 0);

/// Nonzero where a page of a 2 MiB block (`pfn >> 9`, modulo the slots)
/// was ever watched. A truncated 2 MiB entry, or a bvec that spans pages
/// of such a block, is walked page by page only where this is set: the
/// watched-page table is direct-mapped by pfn, so that walk finds every
/// watched page of the block, and the hint lets the usual case (no watch
/// there, ever) skip it with one load. Never cleared: a stale hint costs
/// a walk, a missing one would hide a page.
#[map]
static WATCHED_BLOCKS: Array<u64> = Array::with_max_entries(BLOCK_SLOTS, 0);

/// Nonzero while a page may be watched: the page hooks (every page put,
/// wake-up and bio release under direct I/O) return on it before anything
/// else, so with no page watched they cost a load. Opened by every watch,
/// after its slot is written; closed only by the sweep (`sweep.rs`) once
/// it found every slot empty and no watch began while it looked
/// ([`WATCH_SEQ`]).
#[no_mangle]
static mut PAGE_GATE: u64 = 0;

/// Watches begun since load. The sweep reads it before it looks at the
/// slots and again after it closed the gate: a watch that moved it in
/// between (its slot written behind the sweep's back) reopens the gate, so
/// the gate is closed with a page watched for a few instructions at most.
#[no_mangle]
static mut WATCH_SEQ: u64 = 0;

/// Per bucket of [`WATCH_BUCKET_SLOTS`] watch slots: nonzero when a watch
/// began there since the sweep last found the bucket empty. The sweep
/// visits only these: 256 steps and the watched buckets' slots, instead of
/// every one of the 16 k slots (about 0.6 M guest instructions a sweep).
/// A watch marks its bucket after writing its slot and a locked add; the
/// sweep clears a bucket's mark, then a locked add, then reads its slots,
/// and marks it again if any is left: so a watch whose slot the sweep
/// missed marked its bucket after the clear.
#[no_mangle]
static mut WATCH_BUCKET_MARKS: [u64; WATCH_BUCKETS as usize] = [0; WATCH_BUCKETS as usize];

/// A locked add the sweep makes between closing the gate and reading
/// [`WATCH_SEQ`] again: a full barrier on x86 (the load must not pass the
/// store).
#[no_mangle]
static mut GATE_FENCE: u64 = 0;

/// Files with watched pages, direct-mapped by a hash of the mapping's
/// address: another file taking the slot makes the range hook miss the
/// first file's pages, which then stay watched until recycled.
#[map]
static WATCHED_FILES: Array<FileSlot> = Array::with_max_entries(FILE_SLOTS, 0);

#[inline(always)]
fn watch_slot(page: u64) -> Option<&'static mut WatchSlot> {
    // SAFETY: as task_slot.
    WATCHED
        .get_ptr_mut(slots::watch_slot(page))
        .map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub(super) fn watched(page: u64) -> bool {
    page != 0 && watch_slot(page).is_some_and(|s| s.page == page)
}

/// Whether any page may be watched now (see [`PAGE_GATE`]).
#[inline(always)]
pub(super) fn gate_open() -> bool {
    // SAFETY: a plain u64 global.
    unsafe { core::ptr::read_volatile(&raw const PAGE_GATE) != 0 }
}

/// Watches begun so far (see [`WATCH_SEQ`]).
#[inline(always)]
pub(super) fn watch_seq() -> u64 {
    // SAFETY: a plain u64 global, changed only by locked adds.
    unsafe { core::ptr::read_volatile(&raw const WATCH_SEQ) }
}

/// Closes the gate if no watch began since `seq` (the sweep saw every slot
/// empty). Returns whether it stayed closed.
#[inline(always)]
pub(super) fn close_gate(seq: u64) -> bool {
    // SAFETY: a plain u64 global.
    unsafe { core::ptr::write_volatile(&raw mut PAGE_GATE, 0) };
    locked_add(&raw mut GATE_FENCE);
    if watch_seq() != seq {
        open_gate();
        return false;
    }
    true
}

/// Whether a watch may have begun in `bucket` since the sweep cleared it.
#[inline(always)]
pub(super) fn bucket_marked(bucket: u32) -> bool {
    // SAFETY: a u64 of a global array, index masked into it.
    unsafe {
        core::ptr::read_volatile(
            &raw const WATCH_BUCKET_MARKS[(bucket & (WATCH_BUCKETS - 1)) as usize],
        ) != 0
    }
}

#[inline(always)]
pub(super) fn mark_bucket(bucket: u32, v: u64) {
    // SAFETY: as above.
    unsafe {
        core::ptr::write_volatile(
            &raw mut WATCH_BUCKET_MARKS[(bucket & (WATCH_BUCKETS - 1)) as usize],
            v,
        )
    };
}

/// Clears a bucket's mark before the sweep reads its slots (see
/// [`WATCH_BUCKET_MARKS`]); the locked add keeps those reads after it.
#[inline(always)]
pub(super) fn clear_bucket(bucket: u32) {
    mark_bucket(bucket, 0);
    locked_add(&raw mut GATE_FENCE);
}

/// `lock *(u64 *)(p + 0) += 1`: BPF's atomic add without fetch (every
/// kernel version; a `lock add` on x86, a full barrier). The bpfel target
/// has no atomic read-modify-write in `core`. Also a compiler barrier
/// (the assembly may touch memory).
#[inline(always)]
fn locked_add(v: *mut u64) {
    // SAFETY: `v` is a u64 global (map memory).
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {one}",
            p = in(reg) v,
            one = in(reg) 1u64,
            options(nostack),
        )
    };
}

#[inline(always)]
fn open_gate() {
    // SAFETY: a plain u64 global; every writer but the sweep stores 1.
    unsafe { core::ptr::write_volatile(&raw mut PAGE_GATE, 1) };
}

#[inline(always)]
fn block_slot(pfn: u64) -> u32 {
    slots::block_slot(pfn)
}

/// Whether a page of the 2 MiB block of `pfn` may be watched.
#[inline(always)]
pub(super) fn block_maybe_watched(pfn: u64) -> bool {
    WATCHED_BLOCKS.get(block_slot(pfn)).is_some_and(|&v| v != 0)
}

#[inline(always)]
fn mark_block_watched(pfn: u64) {
    if let Some(v) = WATCHED_BLOCKS.get_ptr_mut(block_slot(pfn)) {
        // SAFETY: an array map value; every writer stores the same value.
        unsafe { core::ptr::write_volatile(v, 1) };
    }
}

#[inline(always)]
pub(super) fn file_slot(mapping: u64) -> Option<&'static mut FileSlot> {
    // SAFETY: as task_slot.
    WATCHED_FILES
        .get_ptr_mut(slots::file_slot(mapping))
        .map(|p| unsafe { &mut *p })
}

/// Starts watching `page` (frame `pfn`), found
/// busy in `mapping` at `index` (`mapping` is the page's own: a shared
/// page's is not a file, and no range deletion matches it).
#[inline(always)]
pub(super) fn watch(page: u64, pfn: u64, now: u64, mapping: u64, index: u64, refcount: i32) {
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
        s.reported_refcount = refcount as i64;
    }
    // After the slot: the sweep that saw it empty sees the count move, or
    // the bucket marked after it cleared it.
    locked_add(&raw mut WATCH_SEQ);
    mark_bucket(slots::watch_bucket(slots::watch_slot(page)), 1);
    open_gate();
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
    // One place per page keeps this (and the verifier's walk) short.
    let at = slots::file_place(page);
    let old = f.pages[at];
    if old != 0 && old != page && watch_in(old, mapping).is_some() {
        count(Counter::FileWatchFull);
    }
    f.pages[at] = page;
}

/// Zeroes a page list in map memory with plain stores (an array
/// assignment there can become a byte-wise memset the verifier refuses).
#[inline(always)]
pub(super) fn clear_pages(pages: &mut [u64; PAGES_PER_FILE]) {
    for p in pages.iter_mut() {
        // SAFETY: a valid, exclusive reference.
        unsafe { core::ptr::write_volatile(p, 0) };
    }
}

/// The watch of `page`, if it is still watched as a page of `mapping`.
#[inline(always)]
pub(super) fn watch_in(page: u64, mapping: u64) -> Option<&'static mut WatchSlot> {
    watch_slot(page).filter(|w| w.page == page && w.mapping == mapping)
}

#[inline(always)]
pub(super) fn unwatch(page: u64) {
    if let Some(s) = watch_slot(page) {
        if s.page == page {
            s.page = 0;
        }
    }
}
