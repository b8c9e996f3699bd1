//! The ext4 operations the context hooks see (`crate::context`): kept per
//! task, and recorded only just before a break of that task meets a busy
//! page, which is when they say what the break was for.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::Array};
use daxrace_common::{slots::TASK_SLOTS, Counter, HookId, RecordKind};

use super::state::{task_slot, tid};
use crate::emit::{config, count, fill_inode, new_record, submit};

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

#[map]
static FS_OPS: Array<FsOpSlot> = Array::with_max_entries(TASK_SLOTS, 0);

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
pub(super) fn record_fs_op(tid: u32) {
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
