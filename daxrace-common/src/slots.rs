//! How the kernel programs' tables are indexed. Every table is an array
//! indexed directly (by a task's tid, a page's address, a file's mapping or
//! a 2 MiB block's number), never a hash map; a slot names its owner, and a
//! lookup that finds another owner finds nothing. These are the indexes.

/// How long a watch counts as fresh after the busy scan that began it: a
/// page evicting a fresh one counts `WatchFull`, and the sweep ends only
/// watches older than this whose page is idle.
pub const WATCH_FRESH_NS: u64 = 10_000_000_000;

/// What the sweep of the watched pages (`rt_sweep_watched`, test-run by
/// the daemon) does: `args[0]` of its run.
pub struct SweepFlags;

impl SweepFlags {
    /// Report each watched page whose refcount changed since it was last
    /// reported (quiet mode, while pin drops may go unseen).
    pub const SAMPLE: u64 = 1;
    /// End stale watches of idle pages, and close the page gate once none
    /// is left.
    pub const END_IDLE: u64 = 2;
}

/// Slots of the per-task tables (a power of two: `tid % TASK_SLOTS`).
pub const TASK_SLOTS: u32 = 16384;
/// Slots of the watched-page table (a power of two).
pub const WATCH_SLOTS: u32 = 16384;
/// Watch slots per bucket of the sweep: a bucket no watch began in since
/// the sweep last found it empty is passed over in one step.
pub const WATCH_BUCKET_SLOTS: u32 = 64;
/// Buckets of the watched-page table.
pub const WATCH_BUCKETS: u32 = WATCH_SLOTS / WATCH_BUCKET_SLOTS;
/// Slots of the watched-files table (a power of two).
pub const FILE_SLOTS: u32 = 1024;
/// Slots of the watched-blocks hint (a power of two): one per 2 MiB block
/// of physical memory, modulo this (32 GiB before two blocks share one).
pub const BLOCK_SLOTS: u32 = 16384;
/// Watched pages one file's slot remembers, one place per pfn modulo this;
/// a page taking the place of another still watched counts
/// `FileWatchFull`. A busy scan watches one page per call, and the break
/// waits for it before the next, so a file has few at once.
pub const PAGES_PER_FILE: usize = 4;

const _: () = {
    assert!(TASK_SLOTS.is_power_of_two());
    assert!(WATCH_SLOTS.is_power_of_two());
    assert!(
        WATCH_BUCKET_SLOTS.is_power_of_two() && WATCH_BUCKETS * WATCH_BUCKET_SLOTS == WATCH_SLOTS
    );
    assert!(FILE_SLOTS.is_power_of_two());
    assert!(BLOCK_SLOTS.is_power_of_two());
    assert!(PAGES_PER_FILE.is_power_of_two());
};

/// The slot of task `tid` in a per-task table.
#[inline(always)]
pub const fn task_slot(tid: u32) -> u32 {
    tid & (TASK_SLOTS - 1)
}

/// The slot of a watched `struct page *`. A struct page is 64 bytes:
/// consecutive pages take consecutive slots.
#[inline(always)]
pub const fn watch_slot(page: u64) -> u32 {
    ((page >> 6) as u32) & (WATCH_SLOTS - 1)
}

/// The sweep's bucket of a watch slot.
#[inline(always)]
pub const fn watch_bucket(slot: u32) -> u32 {
    (slot / WATCH_BUCKET_SLOTS) & (WATCH_BUCKETS - 1)
}

/// The slot of a file (`struct address_space *`). Mappings are embedded in
/// slab-allocated inodes: a multiplicative hash spreads their addresses
/// over the slots.
#[inline(always)]
pub const fn file_slot(mapping: u64) -> u32 {
    (mapping.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as u32 & (FILE_SLOTS - 1)
}

/// The place of a watched page in its file's slot: by pfn, since the pages
/// a file has busy at once are mostly neighbours.
#[inline(always)]
pub const fn file_place(page: u64) -> usize {
    ((page >> 6) as usize) & (PAGES_PER_FILE - 1)
}

/// The slot of frame `pfn`'s 2 MiB block in the watched-blocks hint.
#[inline(always)]
pub const fn block_slot(pfn: u64) -> u32 {
    (pfn >> crate::DaxEntry::PMD_ORDER) as u32 & (BLOCK_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_share_a_slot_every_16384_tids() {
        assert_eq!(task_slot(1), 1);
        assert_eq!(task_slot(16384 + 7), 7);
        assert_eq!(task_slot(u32::MAX), TASK_SLOTS - 1);
    }

    #[test]
    fn neighbouring_pages_take_neighbouring_slots() {
        let page = 0xffff_ea00_0120_9000u64;
        for k in 0..64 {
            assert_eq!(
                watch_slot(page + k * 64),
                (watch_slot(page) + k as u32) % WATCH_SLOTS
            );
        }
        // Four neighbours of a file take its four places.
        let places: [usize; 4] = core::array::from_fn(|k| file_place(page + k as u64 * 64));
        let mut sorted = places;
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3]);
    }

    #[test]
    fn the_pages_of_a_2mib_block_share_its_hint() {
        assert_eq!(block_slot(0x48200), block_slot(0x483ff));
        assert_ne!(block_slot(0x48200), block_slot(0x48400));
        // 32 GiB of 2 MiB blocks before two share one.
        assert_eq!(block_slot(0), block_slot(BLOCK_SLOTS as u64 * 512));
    }

    #[test]
    fn files_spread_over_the_slots() {
        // Mappings inside inodes of one slab (1 KiB apart, the inode size
        // of ext4 and xfs rounded): no slot holds more than a few of 1024.
        let mut per_slot = [0u8; FILE_SLOTS as usize];
        for k in 0..1024u64 {
            per_slot[file_slot(0xffff_8880_1234_0000 + 0x30 + k * 1024) as usize] += 1;
        }
        let worst = per_slot.iter().max().copied().unwrap_or(0);
        assert!(worst <= 4, "{worst} files in one slot");
    }
}
