//! Truncation, entry by entry: `dax_disassociate_entry` (each page leaving
//! its file, with its refcount: a page above idle there is the 2018 race)
//! and `dax_delete_mapping_entry` (recorded for tasks whose last break saw
//! a busy page).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_loop,
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use daxrace_common::{Counter, DaxEntry, HookId, RecordKind};

use super::{
    state::{
        fill_from_mapping, page_of, pfn_of, task_slot, tid, LoopCallback, PAGE_MAPPING_DAX_COW,
        RECENT_BUSY,
    },
    watch::{block_maybe_watched, gate_open, unwatch, watched},
};
use crate::emit::{config, count, new_record, read_page, submit, PageFields};

/// `dax_disassociate_entry(entry, mapping, trunc)`: the entry's pages leave
/// the file (one, or 512 for a 2 MiB entry).
#[inline(always)]
fn disassociate(entry: u64, mapping: u64, trunc: bool) -> u32 {
    let Some((pfn, pages)) = DaxEntry::pfns(entry) else {
        return 0; // the kernel maps no page for these
    };
    let cfg = config();
    let page = page_of(cfg, pfn);
    if pages > 1 {
        count(Counter::PmdEntry);
        disassociate_pmd_tail(page, pfn, mapping, trunc);
    }
    // The gate first: closed, no page is watched, and a truncated entry's
    // quiet path skips the watch table's lookup.
    let is_watched = gate_open() && watched(page);
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
pub(super) fn send_disassociated(page: u64, pfn: u64, f: &PageFields, mapping: u64, trunc: bool) {
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
