//! The sweep of the watched pages, run when the daemon asks: a program
//! that is never attached, run with `BPF_PROG_TEST_RUN`. A raw tracepoint
//! program because the kernel test-runs those unattached (5.10+) and they
//! may read kernel memory; its context is the arguments userspace passes
//! (`args[0]`: the [`SweepFlags`]).
//!
//! - Sampling (quiet mode): the page hooks (pin drops, wake-ups, bio
//!   release) are attached only once a busy scan watches a page, a few
//!   milliseconds after it; a pin dropped in between, or while they are
//!   detached again, is seen here as a changed refcount (who dropped it is
//!   not known).
//! - Ending (both modes): a watch older than `WATCH_FRESH_NS` on an idle
//!   page ends (a break that waited on a page outside the range it then
//!   truncated leaves it watched, and nothing else would end it); with no
//!   watch left the page gate closes, and the page hooks return at once
//!   again.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_loop},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
    EbpfContext,
};
use daxrace_common::{
    slots::{watch_bucket, WATCH_BUCKETS, WATCH_BUCKET_SLOTS, WATCH_SLOTS},
    HookId, RecordKind, SweepFlags, WATCH_FRESH_NS,
};

use super::{
    state::{fill_page, LoopCallback},
    watch::{bucket_marked, clear_bucket, close_gate, gate_open, mark_bucket, watch_seq, WATCHED},
};
use crate::emit::{config, new_record, page_refcount, submit};

/// What the sweep's callback needs and counts.
#[repr(C)]
struct Sweep {
    flags: u64,
    now: u64,
    idle: i64,
}

/// Watches still on, counted by the sweep's callback. In map memory rather
/// than in [`Sweep`] on the stack: a count the verifier cannot know keeps
/// the callback's states converging (a stack count made the 6.18 verifier
/// give up, "the sequence of 8193 jumps is too complex"). Only the daemon
/// that loaded the program runs it, one run at a time.
#[no_mangle]
static mut SWEEP_LEFT: u64 = 0;

/// The next watch slot the sweep's callback looks at (in map memory for
/// the reason [`SWEEP_LEFT`] is).
#[no_mangle]
static mut SWEEP_NEXT: u64 = 0;

/// Reads one of the sweep's counters above.
#[inline(always)]
fn get(v: *const u64) -> u64 {
    // SAFETY: one of this file's plain u64 globals.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn set(v: *mut u64, n: u64) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(v, n) };
}

/// Returns the watched pages left (at most `i32::MAX`); 0 also when the
/// gate was already closed, and so only when it is closed after `END_IDLE`.
#[raw_tracepoint]
pub fn rt_sweep_watched(ctx: RawTracePointContext) -> i32 {
    // SAFETY: a test run's context is the u64 array userspace passed (one
    // word at least; the kernel checks the size against the program's).
    let flags = unsafe { *(ctx.as_ptr() as *const u64) };
    if !gate_open() {
        return 0;
    }
    let seq = watch_seq();
    let mut sweep = Sweep {
        flags,
        // SAFETY: a helper with no arguments.
        now: unsafe { bpf_ktime_get_ns() },
        idle: config().idle_refcount() as i64,
    };
    set(&raw mut SWEEP_LEFT, 0);
    set(&raw mut SWEEP_NEXT, 0);
    // One step per bucket passed over, one per slot of a marked bucket.
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            WATCH_SLOTS + WATCH_BUCKETS,
            sweep_step as LoopCallback as *mut c_void,
            &mut sweep as *mut Sweep as *mut c_void,
            0,
        )
    };
    let left = get(&raw const SWEEP_LEFT);
    if left == 0 && flags & SweepFlags::END_IDLE != 0 {
        // A watch that began while the sweep looked counts as one left.
        return if close_gate(seq) { 0 } else { 1 };
    }
    left.min(i32::MAX as u64) as i32
}

extern "C" fn sweep_step(_step: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it above.
    let sweep = unsafe { &*(ctx as *const Sweep) };
    let i = get(&raw const SWEEP_NEXT);
    if i >= WATCH_SLOTS as u64 {
        return 1;
    }
    let i = i as u32;
    let bucket = watch_bucket(i);
    if i % WATCH_BUCKET_SLOTS == 0 {
        if !bucket_marked(bucket) {
            set(&raw mut SWEEP_NEXT, (i + WATCH_BUCKET_SLOTS) as u64);
            return 0;
        }
        clear_bucket(bucket);
    }
    set(&raw mut SWEEP_NEXT, i as u64 + 1);
    let Some(s) = WATCHED.get_ptr_mut(i) else {
        return 1;
    };
    // SAFETY: an array map value, valid for this run; a busy scan racing
    // with it can only make one report early or late.
    let s = unsafe { &mut *s };
    let page = s.page;
    if page == 0 {
        return 0;
    }
    let refcount = page_refcount(config(), page) as i64;
    if sweep.flags & SweepFlags::SAMPLE != 0 && refcount != s.reported_refcount {
        s.reported_refcount = refcount;
        report_sampled(page);
    }
    if sweep.flags & SweepFlags::END_IDLE != 0
        && refcount <= sweep.idle
        && sweep.now.saturating_sub(s.since_ns) >= WATCH_FRESH_NS
        && s.page == page
    {
        s.page = 0;
        return 0;
    }
    set(&raw mut SWEEP_LEFT, get(&raw const SWEEP_LEFT) + 1);
    mark_bucket(bucket, 1);
    0
}

/// A subprogram, so that the loop callback stays short for the verifier.
#[inline(never)]
fn report_sampled(page: u64) {
    let cfg = config();
    let mut r = new_record(RecordKind::PageSampled, HookId::PinDropped);
    fill_page(&mut r, cfg, page);
    submit(&r);
}
