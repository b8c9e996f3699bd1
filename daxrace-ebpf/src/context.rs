//! Context hooks: the ext4 tracepoints that mark operations which must break
//! DAX layouts first. BTF tracepoints where vmlinux BTF describes them, raw
//! tracepoints otherwise (ext4 built as a module); both see the tracepoint's
//! arguments as the same array of u64, so one body serves both. Each
//! operation is kept per task and recorded only before a break of that task
//! that meets a busy page (`dax::stash_fs_op`).
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
    EbpfContext,
};
use daxrace_common::{FsOp, HookId};

use crate::{
    dax::stash_fs_op,
    emit::{config, read_at},
};

/// Argument `n` of a tracepoint (`TP_PROTO` order).
#[inline(always)]
fn tp_arg(ctx: &impl EbpfContext, n: usize) -> u64 {
    // SAFETY: tp_btf and raw_tracepoint contexts are arrays of u64 arguments;
    // n is a constant below the tracepoint's argument count.
    unsafe { *(ctx.as_ptr() as *const u64).add(n) }
}

/// `(inode, offset, len, ...)` tracepoints.
#[inline(always)]
fn range_op(ctx: &impl EbpfContext, hook: HookId, op: FsOp) -> u32 {
    stash_fs_op(
        hook,
        op as u32,
        tp_arg(ctx, 0),
        tp_arg(ctx, 1) as i64,
        tp_arg(ctx, 2) as i64,
    );
    0
}

/// `ext4_truncate_enter(inode)`: the new size is already in `i_size`.
#[inline(always)]
fn truncate(ctx: &impl EbpfContext) -> u32 {
    let inode = tp_arg(ctx, 0);
    let size = read_at::<i64>(inode, config().inode_size());
    stash_fs_op(HookId::Ext4Truncate, FsOp::Truncate as u32, inode, size, 0);
    0
}

macro_rules! range_tracepoint {
    ($tp:literal, $btf_fn:ident, $raw_fn:ident, $hook:expr, $op:expr) => {
        #[btf_tracepoint(function = $tp)]
        pub fn $btf_fn(ctx: BtfTracePointContext) -> u32 {
            range_op(&ctx, $hook, $op)
        }

        #[raw_tracepoint(tracepoint = $tp)]
        pub fn $raw_fn(ctx: RawTracePointContext) -> u32 {
            range_op(&ctx, $hook, $op)
        }
    };
}

range_tracepoint!(
    "ext4_punch_hole",
    tp_ext4_punch_hole,
    raw_ext4_punch_hole,
    HookId::Ext4PunchHole,
    FsOp::PunchHole
);
range_tracepoint!(
    "ext4_zero_range",
    tp_ext4_zero_range,
    raw_ext4_zero_range,
    HookId::Ext4ZeroRange,
    FsOp::ZeroRange
);
range_tracepoint!(
    "ext4_collapse_range",
    tp_ext4_collapse_range,
    raw_ext4_collapse_range,
    HookId::Ext4CollapseRange,
    FsOp::CollapseRange
);
range_tracepoint!(
    "ext4_insert_range",
    tp_ext4_insert_range,
    raw_ext4_insert_range,
    HookId::Ext4InsertRange,
    FsOp::InsertRange
);

#[btf_tracepoint(function = "ext4_truncate_enter")]
pub fn tp_ext4_truncate_enter(ctx: BtfTracePointContext) -> u32 {
    truncate(&ctx)
}

#[raw_tracepoint(tracepoint = "ext4_truncate_enter")]
pub fn raw_ext4_truncate_enter(ctx: RawTracePointContext) -> u32 {
    truncate(&ctx)
}
