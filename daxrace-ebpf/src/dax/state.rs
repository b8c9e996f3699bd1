//! State shared by more than one stage: the per-task tables of break-layouts
//! calls (read by the busy scan too) and of busy breaks (read by the
//! truncation), and the helpers every stage uses to name a task's slot and
//! to fill a record's page and file fields.
//!
//! Every table is an array indexed directly (by a task's tid, or a page's
//! address), never a hash map: the verifier inlines array lookups into plain
//! loads, and nothing here takes a lock. Hash-map updates and deletes (bucket
//! spinlock, free-list pops, LRU shrinking) were most of what the hooks cost.
//! A slot names its owner (tid or page); a lookup that finds another owner
//! finds nothing, and taking over a slot another task is using is counted.
//! A stage's own tables live in its module.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::map, maps::Array, programs::FEntryContext,
    EbpfContext,
};
use daxrace_common::{
    dax,
    slots::{self, TASK_SLOTS},
    Counter, Record,
};

use crate::emit::{count, fill_inode, read_at, read_page, vmemmap, Cfg};

// Every table is an array indexed directly (by a task's tid, or a page's
// address), never a hash map: the verifier inlines array lookups into plain
// loads, and nothing here takes a lock. Hash-map updates and deletes (bucket
// spinlock, free-list pops, LRU shrinking) were most of what the hooks cost.
// A slot names its owner (tid or page); a lookup that finds another owner
// finds nothing, and taking over a slot another task is using is counted.

/// A break-layouts call in progress on one task. Nothing is recorded until a
/// busy scan inside it finds a page: xfs_break_layouts() runs on every plain
/// write, and most calls find nothing (they are summed in `BREAK_STATS`).
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct BreakSlot {
    /// Owner; 0 when free.
    pub(super) tid: u32,
    /// Nesting depth (0: no call): on 6.15+ the generic dax_break_layout()
    /// runs inside ext4/xfs's own; only the outermost call is recorded.
    pub(super) depth: u32,
    pub(super) hook: u32,
    pub(super) fs: u32,
    /// The BreakEnter record was sent.
    pub(super) emitted: u32,
    /// A busy scan inside this call returned a page.
    pub(super) saw_busy: u32,
    /// Busy scans that ran inside this call.
    pub(super) scans: u32,
    _pad: u32,
    pub(super) ts_ns: u64,
    /// The mapping its first recorded scan looked at.
    pub(super) mapping: u64,
}

/// A task whose last break-layouts call saw a busy page, and that call's
/// mapping: its truncation that follows is worth recording entry by entry.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct RecentSlot {
    pub(super) tid: u32,
    /// A task whose busy break's truncation lost this slot to another
    /// task's before it came (0: none): its truncation then counts as a
    /// collision, not as quiet.
    pub(super) displaced: u32,
    pub(super) mapping: u64,
}

#[map]
pub(super) static BREAKS: Array<BreakSlot> = Array::with_max_entries(TASK_SLOTS, 0);

#[map]
pub(super) static RECENT_BUSY: Array<RecentSlot> = Array::with_max_entries(TASK_SLOTS, 0);

/// `page->mapping` of a shared (reflinked) DAX page: not a real mapping.
pub(super) const PAGE_MAPPING_DAX_COW: u64 = 1;
/// `dax_layout_busy_page(mapping)` scans the whole file.
pub(super) const LLONG_MAX: i64 = i64::MAX;

#[inline(always)]
pub(super) fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The task's slot of a per-task table (owned by it or not: callers check).
#[inline(always)]
pub(super) fn task_slot<T>(map: &Array<T>, tid: u32) -> Option<&mut T> {
    // SAFETY: an array map value, valid for this program run; a racing
    // writer can only be another task sharing the slot, which is counted.
    map.get_ptr_mut(slots::task_slot(tid))
        .map(|p| unsafe { &mut *p })
}

/// The `struct page` of frame `pfn`.
#[inline(always)]
pub(super) fn page_of(cfg: Cfg, pfn: u64) -> u64 {
    vmemmap(cfg) + pfn * cfg.page_struct_size() as u64
}

/// The frame number of `page` ([`dax::pfn_of`]).
#[inline(always)]
pub(super) fn pfn_of(cfg: Cfg, page: u64) -> u64 {
    dax::pfn_of(page, vmemmap(cfg), cfg.page_struct_size() as u64)
}

/// Fills the page fields: pfn, refcount and page->mapping, and returns the
/// page's index in its file. The file the page belongs to is named once, by
/// the busy scan that starts watching it (`fill_owner`); the page events
/// that follow carry only the page.
#[inline(always)]
pub(super) fn fill_page(r: &mut Record, cfg: Cfg, page: u64) -> u64 {
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
pub(super) fn fill_owner(r: &mut Record, cfg: Cfg) {
    if r.ino == 0 || r.page_mapping != r.mapping {
        fill_from_mapping(r, cfg, r.page_mapping);
    }
}

#[inline(always)]
pub(super) fn fill_from_mapping(r: &mut Record, cfg: Cfg, mapping: u64) {
    if mapping > PAGE_MAPPING_DAX_COW {
        let host = read_at::<u64>(mapping, cfg.mapping_host());
        fill_inode(r, cfg, host);
    }
}

/// Takes a task's slot for an entry; false when the entry is the one nesting
/// the hook allows (`nested`: depth becomes 2). The same task entering again
/// otherwise means its state is stale (a missed return: attached between
/// entry and return, or a kretprobe instance ran out): start afresh rather
/// than hide every later call as "nested". A slot another task holds is
/// taken, and counted.
///
/// Not in `daxrace_common::slots` with the other pure slot arithmetic:
/// written there with a callback for the count, it compiled to different
/// break and scan programs (2 instructions fewer in some), which only the
/// VM tests' verifiers could clear.
#[inline(always)]
pub(super) fn claim(tid: u32, owner: &mut u32, depth: &mut u32, nested: bool) -> bool {
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

/// Argument `n` of an fentry program as a plain number. The verifier types a
/// `struct page *` / `struct folio *` argument as a BTF pointer and forbids
/// the arithmetic pfns and slots need; `bpf_get_func_arg` (inlined by the
/// verifier, 5.17+) hands it over as a scalar.
#[inline(always)]
pub(super) fn scalar_arg(ctx: &FEntryContext, n: u32) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: helper call writing one u64 to our stack.
    let rc = unsafe { aya_ebpf::helpers::generated::bpf_get_func_arg(ctx.as_ptr(), n, &mut v) };
    if rc != 0 {
        count(Counter::ReadFailed);
        return 0;
    }
    v
}

pub(super) type LoopCallback = extern "C" fn(u32, *mut c_void) -> i64;
