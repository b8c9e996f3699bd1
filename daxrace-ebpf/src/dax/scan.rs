//! Busy-page scans (`dax_layout_busy_page_range`, `dax_layout_busy_page`):
//! the page a scan returns becomes watched, and the break it runs in is
//! recorded from then on.
use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::Array,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use daxrace_common::{slots::TASK_SLOTS, Counter, HookId, RecordKind};

use super::{
    breaks::break_recorded,
    state::{claim, fill_from_mapping, fill_owner, fill_page, task_slot, tid, BREAKS, LLONG_MAX},
    watch::watch,
};
use crate::emit::{config, count, new_record, submit, submit_now};

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

#[map]
static SCANS: Array<ScanSlot> = Array::with_max_entries(TASK_SLOTS, 0);

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
        watch(page, r.pfn, r.ts_ns, r.page_mapping, index, r.refcount);
    }
    if let Some(b) = in_break(tid) {
        break_recorded(b, mapping, ino, dev);
        if page != 0 {
            b.saw_busy = 1;
        }
    }
    if page != 0 {
        submit_now(&r);
    } else {
        submit(&r);
    }
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
