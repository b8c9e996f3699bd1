//! What happens to a watched page between the busy scan and the
//! truncation: waits and wake-ups on it (`init_wait_var_entry`,
//! `wake_up_var`), and the devmap put paths that drop its pins
//! (`__put_devmap_managed_page_refs` and the like before 6.15,
//! `free_zone_device_folio` from 6.15). Unwatched pages are only counted,
//! and only while some page is watched: with none, the page gate sends
//! every hook here back at once.
use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use daxrace_common::{Counter, HookId, RecordKind};

use super::{
    state::{fill_page, scalar_arg},
    watch::{gate_open, watched},
};
use crate::emit::{config, count, new_record, submit, Cfg};

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

/// Runs a hook's body only while some page is watched: the gate is read
/// before even the arguments.
#[inline(always)]
fn gated(body: impl FnOnce() -> u32) -> u32 {
    if gate_open() {
        body()
    } else {
        0
    }
}

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
    gated(|| {
        page_event(
            RecordKind::WaitStart,
            HookId::WaitStart,
            ctx.arg::<u64>(1).unwrap_or(0),
        )
    })
}

#[fentry]
pub fn fe_wait_start(ctx: FEntryContext) -> u32 {
    gated(|| page_event(RecordKind::WaitStart, HookId::WaitStart, ctx.arg::<u64>(1)))
}

#[kprobe]
pub fn kp_wake_up(ctx: ProbeContext) -> u32 {
    gated(|| {
        page_event(
            RecordKind::WakeUp,
            HookId::WakeUp,
            ctx.arg::<u64>(0).unwrap_or(0),
        )
    })
}

#[fentry]
pub fn fe_wake_up(ctx: FEntryContext) -> u32 {
    gated(|| page_event(RecordKind::WakeUp, HookId::WakeUp, ctx.arg::<u64>(0)))
}

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
    gated(|| {
        pin_dropped(
            ctx.arg::<u64>(0).unwrap_or(0),
            ctx.arg::<u32>(1).unwrap_or(0),
        )
    })
}

#[kprobe]
pub fn kp_pin_dropped_one(ctx: ProbeContext) -> u32 {
    gated(|| pin_dropped(ctx.arg::<u64>(0).unwrap_or(0), 1))
}

#[kprobe]
pub fn kp_page_freed(ctx: ProbeContext) -> u32 {
    gated(|| page_freed(ctx.arg::<u64>(0).unwrap_or(0)))
}

#[fentry]
pub fn fe_pin_dropped_folio_refs(ctx: FEntryContext) -> u32 {
    gated(|| pin_dropped(scalar_arg(&ctx, 0), ctx.arg::<u32>(1)))
}

#[fentry]
pub fn fe_pin_dropped_page_refs(ctx: FEntryContext) -> u32 {
    gated(|| pin_dropped(scalar_arg(&ctx, 0), ctx.arg::<u32>(1)))
}

#[fentry]
pub fn fe_page_freed(ctx: FEntryContext) -> u32 {
    gated(|| page_freed(scalar_arg(&ctx, 0)))
}
