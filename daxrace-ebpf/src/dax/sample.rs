//! The watched pages' refcounts, read when the daemon asks: a program that
//! is never attached, run with `BPF_PROG_TEST_RUN`. In the daemon's quiet
//! mode the page hooks (pin drops, wake-ups, bio release) are attached only
//! once a busy scan watches a page, a few milliseconds after it; a pin
//! dropped in between, or while they are detached again, is seen here as a
//! changed refcount (who dropped it is not known). A raw tracepoint
//! program because the kernel test-runs those unattached (5.10+) and they
//! may read kernel memory.
use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_loop, macros::raw_tracepoint, programs::RawTracePointContext};
use daxrace_common::{slots::WATCH_SLOTS, HookId, RecordKind};

use super::{
    state::{fill_page, LoopCallback},
    watch::WATCHED,
};
use crate::emit::{config, new_record, read_page, submit};

#[raw_tracepoint]
pub fn rt_sample_watched(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: helper call with a callback and no context.
    unsafe {
        bpf_loop(
            WATCH_SLOTS,
            sample_step as LoopCallback as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    0
}

extern "C" fn sample_step(i: u32, _ctx: *mut c_void) -> i64 {
    let Some(s) = WATCHED.get_ptr_mut(i) else {
        return 1;
    };
    // SAFETY: an array map value, valid for this run; a busy scan racing
    // with it can only make one report early or late.
    let s = unsafe { &mut *s };
    if s.page == 0 {
        return 0;
    }
    let refcount = read_page(config(), s.page).refcount as i64;
    if refcount != s.reported_refcount {
        s.reported_refcount = refcount;
        report_sampled(s.page);
    }
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
