//! Range deletion (6.15+): `dax_delete_mapping_range(mapping, start, end)`,
//! one call per deleted range. The file's watched pages in the range are
//! reported from the per-file lists, and the file's xarray entries in the
//! range are walked (`bpf_loop`, depth first) for unwatched pages above idle.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_loop,
    macros::{fentry, kprobe, map},
    maps::PerCpuArray,
    programs::{FEntryContext, ProbeContext},
};
use daxrace_common::{
    dax, slots::PAGES_PER_FILE, Counter, DaxEntry, HookId, RecordKind, XaEntry, RANGE_WALK_STEPS,
};

use super::{
    state::{fill_page, page_of, scalar_arg, task_slot, tid, LoopCallback, RECENT_BUSY},
    truncate::send_disassociated,
    watch::{clear_pages, file_slot, watch_in},
};
use crate::emit::{
    config, count, count_add, new_record, page_refcount, read_at, read_page, submit, vmemmap, Cfg,
};

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
    if config().quiet() != 0 && !worth_walking(mapping) {
        count(Counter::DisassociateQuiet);
        return 0;
    }
    let (first, last) = dax::range_indexes(start, end);
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

/// Quiet mode: a range is looked at only where this task's last break met
/// a busy page in this file (the 2018 race: a break that returned anyway),
/// or where the file has watched pages. Every other truncate, of any file
/// (`truncate_inode_pages_range` serves them all), returns here. A pin
/// taken behind the back of a break that found the file idle is seen only
/// in full mode.
#[inline(always)]
fn worth_walking(mapping: u64) -> bool {
    let tid = tid();
    if task_slot(&RECENT_BUSY, tid).is_some_and(|s| s.tid == tid && s.mapping == mapping) {
        return true;
    }
    file_slot(mapping).is_some_and(|f| f.mapping == mapping)
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

/// Slots of one node, as words.
const NODE_SLOTS: usize = XaEntry::SLOTS as usize;

/// Where the walk of one range deletion is: per level, the first slot in
/// range and the next and last slot to visit, the node's first index and
/// shift, and the node's slots in range, read at once when the walk
/// entered it (`slots[level][i]` is slot `lo + i`). In a per-CPU map (the
/// loop callback indexes it by level, which stack memory would not
/// allow), for one program run at a time on this CPU.
#[repr(C)]
struct RangeWalk {
    base: [u64; XA_LEVELS],
    shift: [u32; XA_LEVELS],
    lo: [u32; XA_LEVELS],
    next: [u32; XA_LEVELS],
    hi: [u32; XA_LEVELS],
    /// Levels in use; 0 when the walk is over.
    depth: u32,
    _pad: u32,
    first: u64,
    last: u64,
    mapping: u64,
    /// Entries found idle, counted once the walk is over (one counter
    /// update per range instead of one per entry).
    idle: u64,
    slots: [[u64; NODE_SLOTS]; XA_LEVELS],
}

#[map]
static RANGE_WALK: PerCpuArray<RangeWalk> = PerCpuArray::with_max_entries(1, 0);

/// Reports every unwatched page of `mapping`'s entries in `[first, last]`
/// that is above the idle refcount (the watched ones are reported by the
/// caller). Depth first, a loop step passing over up to
/// [`SLOTS_PER_STEP`] empty slots and idle pages and stopping at a node or
/// a busy page: a node's slots in range are read in one kernel read when
/// the walk enters it, and slots outside the range are never visited. A
/// walk that needs more than [`RANGE_WALK_STEPS`] steps is counted as cut.
#[inline(never)]
fn walk_range_entries(mapping: u64, first: u64, last: u64) {
    let cfg = config();
    let head = read_at::<u64>(mapping, cfg.mapping_xa_head());
    if head == 0 {
        return;
    }
    let Some(node) = XaEntry::node(head) else {
        // A file of one entry keeps it in the root, at index 0.
        if first == 0 && !check_range_entry(head, mapping) {
            count(Counter::DisassociateQuiet);
        }
        return;
    };
    let Some(w) = RANGE_WALK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, only this program run uses it.
    let w = unsafe { &mut *w };
    w.depth = 0;
    w.first = first;
    w.last = last;
    w.mapping = mapping;
    w.idle = 0;
    enter_node(w, node, 0);
    if w.depth == 0 {
        return;
    }
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
    count_add(Counter::DisassociateQuiet, w.idle);
}

/// Pushes `node` (first index `base`) on the walk with its slots in range,
/// read in one kernel read; a node with none is not pushed.
#[inline(always)]
fn enter_node(w: &mut RangeWalk, node: u64, base: u64) {
    if w.depth as usize >= XA_LEVELS {
        return; // deeper than any file: not a page cache
    }
    let cfg = config();
    let shift = read_at::<u8>(node, cfg.xa_node_shift()) as u32;
    let Some((lo, hi)) = XaEntry::slots_in_range(base, shift, w.first, w.last) else {
        return;
    };
    // Masked in assembly too: the compiler knows the check above makes
    // the mask a no-op and may drop it, and 6.1's verifier then cannot
    // bound the buffer the read below writes. (The plain mask keeps the
    // index in bounds for the compiler, which would otherwise add a
    // panicking check.)
    let level = opaque_mask(w.depth as u64, (XA_LEVELS - 1) as u64) as usize & (XA_LEVELS - 1);
    if hi < lo {
        return;
    }
    let lo = lo & (XaEntry::SLOTS - 1);
    // 1 to 64, and so for 6.1's verifier too, which cannot relate `hi` to
    // `lo` and sees their difference as possibly negative: the mask is
    // done in assembly, where the compiler (which knows it changes
    // nothing) cannot drop it.
    let n = opaque_mask(hi.wrapping_sub(lo) as u64, (XaEntry::SLOTS - 1) as u64) as u32 + 1;
    let src = node + cfg.xa_node_slots() as u64 + lo as u64 * 8;
    // SAFETY: at most NODE_SLOTS words into this level's buffer; the
    // helper zeroes it on failure (entry 0: nothing there).
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            w.slots[level].as_mut_ptr() as *mut c_void,
            n * 8,
            src as *const c_void,
        )
    };
    if rc != 0 {
        count(Counter::ReadFailed);
    }
    w.base[level] = base;
    w.shift[level] = shift;
    w.lo[level] = lo;
    w.next[level] = lo;
    w.hi[level] = lo + n - 1;
    w.depth += 1;
}

/// `x & mask` in one instruction the compiler cannot reason away, for a
/// bound the verifier must see.
#[inline(always)]
fn opaque_mask(mut x: u64, mask: u64) -> u64 {
    // SAFETY: a register-only ALU instruction.
    unsafe {
        core::arch::asm!(
            "{x} &= {m}",
            x = inout(reg) x,
            m = in(reg) mask,
            options(pure, nomem, nostack),
        )
    };
    x
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
    let (lo, hi) = (w.lo[level], w.hi[level]);
    let at = |slot: u32| (slot.wrapping_sub(lo) as usize) & (NODE_SLOTS - 1);
    // Empty slots and idle pages (a truncation is mostly those) are
    // passed over several to a step: a step costs more than the refcount
    // load that tells an idle page.
    let cfg = config();
    let pages = IdleTest::of(cfg);
    // In 64-bit buffer positions rather than u32 slots, which cost a
    // zero-extension each use.
    let slots = &w.slots[level];
    let last = u64::from(hi.wrapping_sub(lo)) & (NODE_SLOTS as u64 - 1);
    let mut at_slot = u64::from(w.next[level].wrapping_sub(lo));
    let mut passed = 0u64;
    while passed < SLOTS_PER_STEP as u64 && at_slot <= last {
        // Masked in assembly: a plain mask the compiler turns into a
        // pointer bumped each pass, which the verifier cannot bound.
        let entry = slots[opaque_mask(at_slot, NODE_SLOTS as u64 - 1) as usize & (NODE_SLOTS - 1)];
        if entry != 0 {
            if !pages.idle_dax_entry(cfg, entry) {
                break;
            }
            w.idle += 1;
        }
        at_slot += 1;
        passed += 1;
    }
    let slot = lo.wrapping_add(at_slot as u32);
    if slot > hi {
        w.next[level] = slot;
        w.depth -= 1;
        return 0;
    }
    w.next[level] = slot + 1;
    let entry = w.slots[level][at(slot)];
    if entry == 0 {
        return 0;
    }
    if let Some(node) = XaEntry::node(entry) {
        let start = w.base[level] + ((slot as u64) << (w.shift[level] & 63));
        enter_node(w, node, start);
        return 0;
    }
    if !check_range_entry(entry, w.mapping) {
        w.idle += 1;
    }
    0
}

/// Empty slots and idle pages one step of the walk passes over at most.
const SLOTS_PER_STEP: u32 = 16;

/// What the idle test of a step's entries needs, loaded once a step
/// rather than once an entry (the kfunc call between two entries' loads
/// keeps the compiler from hoisting them itself).
struct IdleTest {
    vmemmap: u64,
    page_size: u64,
    idle: i32,
}

impl IdleTest {
    #[inline(always)]
    fn of(cfg: Cfg) -> Self {
        IdleTest {
            vmemmap: vmemmap(cfg),
            page_size: cfg.page_struct_size() as u64,
            idle: cfg.idle_refcount() as i32,
        }
    }

    /// Whether `entry` is a DAX page at or below the idle refcount (what
    /// most entries of a truncated range are). A node, a zero-page or
    /// empty entry, or a busy page is not: the step gives those to the
    /// slower path.
    #[inline(always)]
    fn idle_dax_entry(&self, cfg: Cfg, entry: u64) -> bool {
        match DaxEntry::pfns(entry) {
            Some((pfn, _)) => page_refcount(cfg, self.vmemmap + pfn * self.page_size) <= self.idle,
            None => false,
        }
    }
}

/// One entry of a deleted range: its page is reported when it is above idle
/// and no watch of this file will report it. The refcount is read first
/// and alone (most truncated pages are idle). Returns false for an idle
/// page, which the caller counts. A subprogram, so that the loop callback
/// stays short for the verifier.
#[inline(never)]
fn check_range_entry(entry: u64, mapping: u64) -> bool {
    let Some((pfn, _)) = DaxEntry::pfns(entry) else {
        return true; // not a DAX page: empty, zero page, sibling or retry entry
    };
    let cfg = config();
    let page = page_of(cfg, pfn);
    if page_refcount(cfg, page) <= cfg.idle_refcount() as i32 {
        return false;
    }
    if watch_in(page, mapping).is_some() {
        return true;
    }
    let f = read_page(cfg, page);
    if f.refcount <= cfg.idle_refcount() as i32 {
        return false;
    }
    send_disassociated(page, pfn, &f, mapping, true);
    true
}

#[kprobe]
pub fn kp_delete_range(ctx: ProbeContext) -> u32 {
    delete_range(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<i64>(1).unwrap_or(0),
        ctx.arg::<i64>(2).unwrap_or(0),
    )
}

/// `truncate_inode_pages_range(mapping, lstart, lend)` (quiet mode before
/// 6.15): the same range, before its entries go; `lend` is -1 for "to the
/// end of the file".
#[inline(always)]
fn truncate_range(mapping: u64, start: i64, end: i64) -> u32 {
    delete_range(mapping, start, if end < 0 { i64::MAX } else { end })
}

#[kprobe]
pub fn kp_truncate_range(ctx: ProbeContext) -> u32 {
    truncate_range(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<i64>(1).unwrap_or(0),
        ctx.arg::<i64>(2).unwrap_or(0),
    )
}

#[fentry]
pub fn fe_truncate_range(ctx: FEntryContext) -> u32 {
    truncate_range(scalar_arg(&ctx, 0), ctx.arg::<i64>(1), ctx.arg::<i64>(2))
}

#[fentry]
pub fn fe_delete_range(ctx: FEntryContext) -> u32 {
    // The mapping is hashed: it must be a plain number (see scalar_arg).
    delete_range(scalar_arg(&ctx, 0), ctx.arg::<i64>(1), ctx.arg::<i64>(2))
}
