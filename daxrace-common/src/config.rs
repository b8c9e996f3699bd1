//! The kernel facts userspace hands to the programs at load time.

/// Kernel facts handed to the programs at load time (from BTF and kallsyms).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Offset of `_refcount` in `struct page` (and `struct folio`).
    pub page_refcount: u32,
    /// Offset of `mapping` in `struct page`.
    pub page_mapping: u32,
    /// `sizeof(struct page)`, for pfn arithmetic.
    pub page_struct_size: u32,
    pub inode_ino: u32,
    /// Offset of `i_size` in `struct inode`.
    pub inode_size: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// Offset of `host` in `struct address_space`.
    pub mapping_host: u32,
    pub bio_io_vec: u32,
    pub bio_vcnt: u32,
    /// `sizeof(struct bio_vec)`.
    pub bio_vec_size: u32,
    /// Offsets of `bv_page`, `bv_len`, `bv_offset` in `struct bio_vec`.
    pub bvec_page: u32,
    pub bvec_len: u32,
    pub bvec_offset: u32,
    /// Offset of `i_mapping` in `struct inode`.
    pub inode_mapping: u32,
    /// Refcount of an idle fsdax page: 1 before 6.15, 0 from 6.15.
    pub idle_refcount: u32,
    /// Set to 1 when the wait/wake hooks see `&page->_refcount` (before 6.15)
    /// rather than the page itself.
    pub wait_on_refcount: u32,
    /// 1: record every ext4 operation at once (`--fs-ops all`); 0: only the
    /// one before a break that meets a busy page.
    pub record_every_fs_op: u32,
    /// Offset of the page's index in its file (`index`, `__folio_index`
    /// from 6.16) in `struct page`: a range deletion names indexes, not pages.
    pub page_index: u32,
    /// Offset of the page cache's root entry (`i_pages.xa_head`) in
    /// `struct address_space`: a range deletion walks the file's entries
    /// from there (6.15+, see [`XaEntry`](crate::XaEntry)).
    pub mapping_xa_head: u32,
    /// Offsets of `shift` and `slots` in `struct xa_node`.
    pub xa_node_shift: u32,
    pub xa_node_slots: u32,
    /// 1 in the daemon's quiet mode (`--evidence quiet`): the truncation
    /// hooks that see a whole range look only at files whose last break met
    /// a busy page, so that a quiet truncate costs one early return.
    pub quiet: u32,
    /// Type id of `struct page` in vmlinux's BTF where the kernel has the
    /// `bpf_rdonly_cast` kfunc (6.2+), else 0. With it a hook reads a
    /// page's refcount with one load instead of a `bpf_probe_read_kernel`
    /// call (see [`KFUNC_CALL_MARKER`]).
    pub page_btf_id: u32,
    /// 1 where the hooks can read the current task's name and ids through
    /// `bpf_get_current_task_btf` (kernel BTF present, and the offsets
    /// below found in it): two loads for the name instead of a
    /// `bpf_get_current_comm` call (about 140 guest instructions, the
    /// dearest part of a record), two for the ids. 0: the helpers.
    pub task_btf: u32,
    /// Offsets of `comm`, `pid` (the thread id) and `tgid` (the process
    /// id) in `struct task_struct`.
    pub task_comm: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    /// Address of the kernel variable `vmemmap_base` (0: use the default base).
    pub vmemmap_base_addr: u64,
    /// Used when `vmemmap_base_addr` is 0.
    pub vmemmap_default: u64,
}

/// Bytes of `struct page` the hooks read at once: from the first of the
/// fields they need (`mapping`, `index`, `_refcount`), 8-aligned. Half the
/// page, so that a record's stack frame and a page read's fit the
/// verifier's 512-byte stack with a callee or two below them.
pub const PAGE_READ_BYTES: usize = 32;

/// Where the page read starts (`offset & !7` of the lowest of the three
/// fields' offsets), and whether all three fit in [`PAGE_READ_BYTES`] from
/// there (they do on every x86_64 kernel: bytes 24-56; one that does not
/// reads as 0).
#[inline(always)]
pub const fn page_read_window(refcount: usize, mapping: usize, index: usize) -> (usize, bool) {
    let lowest = if refcount < mapping {
        refcount
    } else {
        mapping
    };
    let lowest = if index < lowest { index } else { lowest };
    let from = lowest & !7;
    let fits = refcount + 4 <= from + PAGE_READ_BYTES
        && mapping + 8 <= from + PAGE_READ_BYTES
        && index + 8 <= from + PAGE_READ_BYTES;
    (from, fits)
}

impl KernelConfig {
    /// Offsets seen on x86_64 from 4.18 to 6.18 (docs/kernels.md); used only when
    /// BTF is missing, and then with a warning.
    pub const X86_64_DEFAULTS: KernelConfig = KernelConfig {
        page_refcount: 52,
        page_mapping: 24,
        page_struct_size: 64,
        inode_ino: 64,
        inode_size: 80,
        inode_sb: 40,
        sb_dev: 16,
        mapping_host: 0,
        bio_io_vec: 112,
        bio_vcnt: 96,
        bio_vec_size: 16,
        bvec_page: 0,
        bvec_len: 8,
        bvec_offset: 12,
        inode_mapping: 48,
        idle_refcount: 1,
        wait_on_refcount: 1,
        record_every_fs_op: 0,
        page_index: 32,
        mapping_xa_head: 16,
        xa_node_shift: 0,
        xa_node_slots: 40,
        quiet: 0,
        page_btf_id: 0,
        task_btf: 0,
        task_comm: 0,
        task_pid: 0,
        task_tgid: 0,
        vmemmap_base_addr: 0,
        vmemmap_default: 0xffff_ea00_0000_0000,
    };
}

/// The eBPF object's calls of the `bpf_rdonly_cast` kfunc, as the
/// assembler emits them (`call` with src_reg 2, BPF_PSEUDO_KFUNC_CALL, and
/// this marker as imm, little-endian): aya cannot relocate kfunc calls, so
/// the loader writes vmlinux's BTF id of the kfunc into the imm before
/// loading, or, on a kernel without it, turns the call into `r0 = 0`,
/// which sends the hook to its helper read.
pub const KFUNC_CALL_MARKER: u64 = 0x7ead_0001_0000_2085;
/// `r0 = 0` (BPF_ALU64 | BPF_MOV | BPF_K).
pub const MOV_R0_ZERO: u64 = 0x0000_0000_0000_00b7;

/// Rewrites the kfunc calls of an eBPF object ([`KFUNC_CALL_MARKER`]) to
/// call `bpf_rdonly_cast` (its vmlinux BTF type id), or to `r0 = 0` when
/// the kernel has none. Instructions sit on 8-byte boundaries of their
/// section, and sections of code on 8-byte boundaries of the file.
/// Returns how many were rewritten.
pub fn patch_kfunc_calls(object: &mut [u8], rdonly_cast_id: Option<u32>) -> usize {
    let mut n = 0;
    for insn in object.chunks_exact_mut(8) {
        if u64::from_le_bytes([
            insn[0], insn[1], insn[2], insn[3], insn[4], insn[5], insn[6], insn[7],
        ]) != KFUNC_CALL_MARKER
        {
            continue;
        }
        let new = match rdonly_cast_id {
            Some(id) => (u64::from(id) << 32) | (KFUNC_CALL_MARKER & 0xffff_ffff),
            None => MOV_R0_ZERO,
        };
        insn.copy_from_slice(&new.to_le_bytes());
        n += 1;
    }
    n
}

const _: () = {
    // 28 u32 offsets and flags, then two u64: no padding.
    assert!(core::mem::size_of::<KernelConfig>() == 28 * 4 + 16);
    assert!(core::mem::align_of::<KernelConfig>() == 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfunc_calls_get_the_id_or_become_r0_zero() {
        let mut obj = [0u8; 32];
        obj[8..16].copy_from_slice(&KFUNC_CALL_MARKER.to_le_bytes());
        // Not on an instruction boundary: left alone.
        obj[20..28].copy_from_slice(&KFUNC_CALL_MARKER.to_le_bytes());
        let mut with = obj;
        assert_eq!(patch_kfunc_calls(&mut with, Some(0x1234)), 1);
        assert_eq!(&with[8..16], &[0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0]);
        assert_eq!(&with[20..28], &obj[20..28]);
        let mut without = obj;
        assert_eq!(patch_kfunc_calls(&mut without, None), 1);
        assert_eq!(&without[8..16], &[0xb7, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn the_page_read_covers_the_fields_it_needs() {
        let d = KernelConfig::X86_64_DEFAULTS;
        let (from, fits) = page_read_window(
            d.page_refcount as usize,
            d.page_mapping as usize,
            d.page_index as usize,
        );
        assert_eq!((from, fits), (24, true));
        // A layout spread wider than the read is told, not read as zeros.
        assert_eq!(page_read_window(52, 8, 32), (8, false));
    }
}
