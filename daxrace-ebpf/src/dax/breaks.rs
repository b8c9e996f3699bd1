//! Break-layouts calls (`ext4_break_layouts`, `xfs_break_layouts`,
//! `xfs_break_dax_layouts`, and from 6.15 the generic `dax_break_layout`
//! inside them): a call is recorded only once a busy scan inside it finds
//! a page; every call that scanned is summed in `BREAK_STATS`.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::PerCpuArray,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use daxrace_common::{BreakStat, Counter, FsKind, HookId, RecordKind};

use super::{
    fs_op::record_fs_op,
    state::{claim, task_slot, tid, BreakSlot, BREAKS, RECENT_BUSY},
};
use crate::emit::{count, new_record, submit};

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
#[inline(always)]
pub(super) fn break_recorded(st: &mut BreakSlot, mapping: u64, ino: u64, dev: u32) {
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

/// Break-layouts statistics per filesystem (see [`BreakStat`]): one entry,
/// so that userspace reads them all in one system call.
#[map]
static BREAK_STATS: PerCpuArray<[u64; BreakStat::ENTRIES as usize]> =
    PerCpuArray::with_max_entries(1, 0);

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
