//! The kernel's encodings the programs decode, as pure arithmetic: DAX
//! and xarray entries, bvecs, frame numbers. The facts behind them are in
//! `docs/kernels.md` ("Entries and pages").

/// `PAGE_SHIFT` of the kernels daxrace runs on (x86_64).
pub const PAGE_SHIFT: u32 = 12;

/// A DAX xarray entry (`fs/dax.c`): `xa_mk_value(flags | pfn << DAX_SHIFT)`,
/// that is `(flags | pfn << 4) << 1 | 1`.
pub struct DaxEntry;

impl DaxEntry {
    pub const SHIFT: u32 = 4;
    /// The entry maps a 2 MiB (PMD) range: [`Self::PMD_PAGES`] pages.
    pub const PMD: u64 = 1 << 1;
    pub const ZERO_PAGE: u64 = 1 << 2;
    pub const EMPTY: u64 = 1 << 3;
    /// log2 of the pages a PMD entry maps (`PMD_ORDER`).
    pub const PMD_ORDER: u32 = 9;
    pub const PMD_PAGES: u64 = 1 << Self::PMD_ORDER;

    /// The pages the entry maps, as (first pfn, number of pages: 1, or 512
    /// for a PMD entry); `None` for what maps no page (not a value entry, a
    /// zero-page or empty entry).
    #[inline(always)]
    pub const fn pfns(entry: u64) -> Option<(u64, u64)> {
        if entry & 1 == 0 {
            return None;
        }
        let value = entry >> 1;
        if value & (Self::ZERO_PAGE | Self::EMPTY) != 0 {
            return None;
        }
        let pages = if value & Self::PMD != 0 {
            Self::PMD_PAGES
        } else {
            1
        };
        Some((value >> Self::SHIFT, pages))
    }
}

/// The page cache's xarray encoding (include/linux/xarray.h), as far as the
/// range-deletion walk needs it: a node pointer carries tag 2 in its low
/// bits, a value entry (every DAX entry) tag 1; a node's slot `s` covers the
/// indexes from `base + (s << shift)`, `1 << shift` of them.
pub struct XaEntry;

impl XaEntry {
    /// Slots per node (`XA_CHUNK_SIZE` with `CONFIG_BASE_SMALL` off).
    pub const SLOTS: u32 = 64;

    /// The node an entry points to; `None` for values, sibling and retry
    /// entries (internal entries up to 4096, as `xa_is_node()` tells them).
    #[inline(always)]
    pub const fn node(entry: u64) -> Option<u64> {
        if entry & 3 == 2 && entry > 4096 {
            Some(entry - 2)
        } else {
            None
        }
    }

    /// The first and last index slot `slot` of a node covers; `None` when
    /// the slot lies past the last index a `pgoff_t` can hold (only the
    /// slots of a top node of shift 60 can).
    #[inline(always)]
    pub const fn slot_span(base: u64, shift: u32, slot: u32) -> Option<(u64, u64)> {
        let shift = shift & 63;
        if slot as u64 > u64::MAX >> shift {
            return None;
        }
        let start = match base.checked_add((slot as u64) << shift) {
            Some(s) => s,
            None => return None,
        };
        let width = (1u64 << shift) - 1;
        Some((start, start.saturating_add(width)))
    }

    /// The first and last slot of a node (its first index `base`, its
    /// `shift`) that hold indexes of `[first, last]`; `None` when none
    /// does. A walk reads just these slots, in one kernel read.
    #[inline(always)]
    pub const fn slots_in_range(
        base: u64,
        shift: u32,
        first: u64,
        last: u64,
    ) -> Option<(u32, u32)> {
        let shift = shift & 63;
        if last < base || first > last {
            return None;
        }
        let lo = if first <= base {
            0
        } else {
            (first - base) >> shift
        };
        if lo >= Self::SLOTS as u64 {
            return None;
        }
        let hi = (last - base) >> shift;
        let hi = if hi >= Self::SLOTS as u64 {
            Self::SLOTS as u64 - 1
        } else {
            hi
        };
        Some((lo as u32, hi as u32))
    }
}

/// The pages a bvec covers, counted from its `bv_page`: (index of the
/// first, how many). A multi-page bvec's `bv_len` spans several pages, and
/// its `bv_offset` may exceed a page.
#[inline(always)]
pub const fn bvec_pages(offset: u64, len: u64) -> (u64, u64) {
    let first = offset >> PAGE_SHIFT;
    if len == 0 {
        return (first, 0);
    }
    let last = (offset + len - 1) >> PAGE_SHIFT;
    (first, last + 1 - first)
}

/// Slots one range deletion's walk visits at most: every entry of a file of
/// about a million 4 KiB entries (4 GiB), or 512 times that in 2 MiB
/// entries. The kernel's own deletion walks the same slots.
pub const RANGE_WALK_STEPS: u32 = 1 << 20;

/// The 2 MiB blocks (`pfn >> PMD_ORDER`) that `pages` pages from frame
/// `pfn` touch (at least one when `pages` is not 0).
#[inline(always)]
pub const fn bvec_blocks(pfn: u64, pages: u64) -> u64 {
    ((pfn + pages - 1) >> DaxEntry::PMD_ORDER) - (pfn >> DaxEntry::PMD_ORDER) + 1
}

/// The frames `[lo, hi)` that the run of `pages` pages from frame `pfn`
/// has in its `i`th 2 MiB block (counted from the block of `pfn`); `None`
/// when it has none there.
#[inline(always)]
pub const fn block_run(pfn: u64, pages: u64, i: u32) -> Option<(u64, u64)> {
    let block_first = ((pfn >> DaxEntry::PMD_ORDER) + i as u64) << DaxEntry::PMD_ORDER;
    let lo = if block_first > pfn { block_first } else { pfn };
    let block_end = block_first + DaxEntry::PMD_PAGES;
    let end = pfn + pages;
    let hi = if block_end < end { block_end } else { end };
    if hi <= lo {
        None
    } else {
        Some((lo, hi))
    }
}

/// The frame number of `page` in a `struct page` array at `base` whose
/// entries are `page_size` bytes. Wrapping: a page's block hint needs the
/// same number for a page wherever it is computed, not a checked one; a
/// size of 0 gives 0 (and, as a checked division, leaves no panic path,
/// which the verifier would refuse).
#[inline(always)]
pub const fn pfn_of(page: u64, base: u64, page_size: u64) -> u64 {
    match page.wrapping_sub(base).checked_div(page_size) {
        Some(pfn) => pfn,
        None => 0,
    }
}

/// The page indexes `[first, last]` of the byte range `[start, end]` that
/// `dax_delete_mapping_range()` deletes (`end == LLONG_MAX`: to the end of
/// the file).
#[inline(always)]
pub const fn range_indexes(start: i64, end: i64) -> (u64, u64) {
    let first = (if start > 0 { start } else { 0 } as u64) >> PAGE_SHIFT;
    let last = if end == i64::MAX {
        u64::MAX
    } else {
        (if end > 0 { end } else { 0 } as u64) >> PAGE_SHIFT
    };
    (first, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xarray_slots_cover_their_indexes() {
        // A leaf (shift 0) holds one index per slot; a node of shift 6
        // above it 64 per slot.
        assert_eq!(XaEntry::slot_span(128, 0, 5), Some((133, 133)));
        assert_eq!(XaEntry::slot_span(0, 6, 3), Some((192, 255)));
        assert_eq!(XaEntry::slot_span(4096, 6, 63), Some((8128, 8191)));
        // A top node of shift 60: slots 0..=15 cover every pgoff_t.
        assert_eq!(XaEntry::slot_span(0, 60, 15), Some((15 << 60, u64::MAX)));
        assert_eq!(XaEntry::slot_span(0, 60, 16), None);
    }

    #[test]
    fn a_range_reads_only_the_slots_it_covers() {
        // A leaf at 128: indexes 140..=150 are its slots 12..=22.
        assert_eq!(XaEntry::slots_in_range(128, 0, 140, 150), Some((12, 22)));
        // A range from before the node to past its end: all 64.
        assert_eq!(XaEntry::slots_in_range(128, 0, 0, u64::MAX), Some((0, 63)));
        // Truncation to the end of a file of 1024 pages: a node of shift 6
        // over indexes 0..=4095, from index 1008 (slot 15) on.
        assert_eq!(
            XaEntry::slots_in_range(0, 6, 1008, u64::MAX >> 12),
            Some((15, 63))
        );
        // Ranges wholly before or after the node.
        assert_eq!(XaEntry::slots_in_range(128, 0, 0, 127), None);
        assert_eq!(XaEntry::slots_in_range(128, 0, 192, 300), None);
        // The top node of shift 60 covers everything; the last slot holding
        // an index is 15.
        assert_eq!(XaEntry::slots_in_range(0, 60, 0, u64::MAX), Some((0, 15)));
        // Every slot the answer names overlaps the range, and the slots
        // just outside it do not.
        for (base, shift, first, last) in [
            (64u64, 0u32, 70u64, 90u64),
            (0, 6, 100, 1000),
            (4096, 6, 4000, 5000),
        ] {
            let (lo, hi) = XaEntry::slots_in_range(base, shift, first, last).unwrap();
            for slot in lo..=hi {
                let (s, e) = XaEntry::slot_span(base, shift, slot).unwrap();
                assert!(s <= last && e >= first, "slot {slot} of {base}/{shift}");
            }
            if lo > 0 {
                assert!(XaEntry::slot_span(base, shift, lo - 1).unwrap().1 < first);
            }
            if hi < 63 {
                assert!(XaEntry::slot_span(base, shift, hi + 1).unwrap().0 > last);
            }
        }
    }

    #[test]
    fn xarray_nodes_are_told_from_values_and_siblings() {
        assert_eq!(
            XaEntry::node(0xffff_8880_0123_4002),
            Some(0xffff_8880_0123_4000)
        );
        // xa_mk_value(pfn << 4) and a sibling entry (xa_mk_sibling(3)).
        assert_eq!(XaEntry::node((0x48410 << 4 << 1) | 1), None);
        assert_eq!(XaEntry::node((3 << 2) | 2), None);
        assert_eq!(XaEntry::node(0), None);
    }

    #[test]
    fn a_pmd_entry_maps_512_pages_from_its_pfn() {
        let entry = |flags: u64, pfn: u64| ((flags | pfn << DaxEntry::SHIFT) << 1) | 1;
        assert_eq!(DaxEntry::pfns(entry(0, 0x40010)), Some((0x40010, 1)));
        assert_eq!(
            DaxEntry::pfns(entry(DaxEntry::PMD, 0x40200)),
            Some((0x40200, 512))
        );
        // The lock bit changes nothing.
        assert_eq!(DaxEntry::pfns(entry(1, 0x40010)), Some((0x40010, 1)));
        assert_eq!(DaxEntry::pfns(entry(DaxEntry::ZERO_PAGE, 7)), None);
        assert_eq!(
            DaxEntry::pfns(entry(DaxEntry::PMD | DaxEntry::EMPTY, 0)),
            None
        );
        // Not a value entry (a pointer): nothing mapped.
        assert_eq!(DaxEntry::pfns(0xffff_8880_0000_1000), None);
    }

    #[test]
    fn a_multi_page_bvec_covers_every_page_it_touches() {
        assert_eq!(bvec_pages(0, 4096), (0, 1));
        assert_eq!(bvec_pages(512, 512), (0, 1));
        assert_eq!(bvec_pages(4000, 200), (0, 2));
        assert_eq!(bvec_pages(0, 1 << 20), (0, 256));
        assert_eq!(bvec_pages(8192 + 100, 2 << 20), (2, 513));
        assert_eq!(bvec_pages(4096, 0), (1, 0));
        assert_eq!(bvec_pages(0, u32::MAX as u64), (0, 1 << 20));
    }

    #[test]
    fn a_run_of_pages_is_cut_at_2mib_blocks() {
        // 1 MiB inside one block.
        assert_eq!(bvec_blocks(0x40000, 256), 1);
        assert_eq!(block_run(0x40000, 256, 0), Some((0x40000, 0x40100)));
        assert_eq!(block_run(0x40000, 256, 1), None);
        // 514 pages from the last page of a block: three blocks.
        let pfn = 0x401ff;
        assert_eq!(bvec_blocks(pfn, 514), 3);
        assert_eq!(block_run(pfn, 514, 0), Some((0x401ff, 0x40200)));
        assert_eq!(block_run(pfn, 514, 1), Some((0x40200, 0x40400)));
        assert_eq!(block_run(pfn, 514, 2), Some((0x40400, 0x40401)));
        assert_eq!(block_run(pfn, 514, 3), None);
        // Every page of the run lands in exactly one block's part.
        for (pfn, pages) in [(0x40000u64, 1u64), (0x401ff, 2), (0x40123, 2000), (7, 512)] {
            let mut seen = 0;
            let mut next = pfn;
            for i in 0..bvec_blocks(pfn, pages) as u32 {
                if let Some((lo, hi)) = block_run(pfn, pages, i) {
                    assert_eq!(lo, next, "{pfn:#x}+{pages} block {i}");
                    assert_eq!(lo >> DaxEntry::PMD_ORDER, (hi - 1) >> DaxEntry::PMD_ORDER);
                    seen += hi - lo;
                    next = hi;
                }
            }
            assert_eq!(seen, pages, "{pfn:#x}+{pages}");
        }
    }

    #[test]
    fn a_page_address_gives_its_frame_number() {
        let base = 0xffff_ea00_0000_0000;
        assert_eq!(pfn_of(base, base, 64), 0);
        assert_eq!(pfn_of(base + 0x48240 * 64, base, 64), 0x48240);
        // No struct page size known (no BTF): no frame, no panic.
        assert_eq!(pfn_of(base + 640, base, 0), 0);
    }

    #[test]
    fn a_deleted_byte_range_names_its_page_indexes() {
        assert_eq!(range_indexes(0, 4095), (0, 0));
        assert_eq!(range_indexes(4096, 3 * 4096 - 1), (1, 2));
        // Truncation to the end of the file.
        assert_eq!(range_indexes(8192, i64::MAX), (2, u64::MAX));
        assert_eq!(range_indexes(-1, -1), (0, 0));
    }
}
