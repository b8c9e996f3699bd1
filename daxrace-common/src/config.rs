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
    /// Keeps the u64 fields aligned without implicit padding.
    pub reserved: u32,
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
        reserved: 0,
        vmemmap_base_addr: 0,
        vmemmap_default: 0xffff_ea00_0000_0000,
    };
}

const _: () = {
    // 24 u32 offsets and flags, then two u64: no padding.
    assert!(core::mem::size_of::<KernelConfig>() == 24 * 4 + 16);
    assert!(core::mem::align_of::<KernelConfig>() == 8);
};

#[cfg(test)]
mod tests {
    use super::*;

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
