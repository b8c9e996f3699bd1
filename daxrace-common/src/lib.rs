//! Records shared by daxrace's kernel programs and its userspace.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every type
//! is `#[repr(C)]`, fixed-size and free of padding the compiler could choose.
//! Numeric values of the enums are part of the recorded trace format: append,
//! never renumber.
#![no_std]

/// Name of the ring buffer map that carries [`Record`]s to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array of [`Counter`]s.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// How long a watched page counts as fresh after its last event.
pub const WATCH_FRESH_NS: u64 = 10_000_000_000;
/// Name of the per-CPU array of break-layouts statistics ([`BreakStat`]).
pub const BREAK_STATS_MAP: &str = "BREAK_STATS";
/// Name of the global holding [`KernelConfig`].
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// What a [`Record`] says happened.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A filesystem operation that must break DAX layouts first (context hook:
    /// ext4 tracepoints). `op` is an [`FsOp`], `a`/`b` the byte range.
    FsOp = 1,
    /// A break-layouts call started. `op` is an [`FsKind`].
    BreakEnter = 2,
    /// A break-layouts call returned `a` (0 or -errno). `op` is an [`FsKind`].
    BreakExit = 3,
    /// A busy-page scan returned `page` (0: no busy page). `a`/`b`: range scanned.
    BusyScan = 4,
    /// A task started waiting for `page` to go idle.
    WaitStart = 5,
    /// The devmap put path is dropping `refs` references from `page`;
    /// `refcount` is the count before the drop.
    PinDropped = 6,
    /// A release path that bypasses the devmap put (Debian 6.1's
    /// `__bio_release_pages`) released a watched page; `refcount` is the count after.
    PageReleased = 7,
    /// `wake_up_var` was called for a watched page.
    WakeUp = 8,
    /// `dax_disassociate_entry`: `op` is the `trunc` flag, `page_mapping` what
    /// `page->mapping` held, `mapping` the mapping being truncated.
    Disassociate = 9,
    /// `dax_delete_mapping_entry(mapping, index)`: `a` is the index.
    DeleteEntry = 10,
}

impl RecordKind {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::FsOp,
            2 => Self::BreakEnter,
            3 => Self::BreakExit,
            4 => Self::BusyScan,
            5 => Self::WaitStart,
            6 => Self::PinDropped,
            7 => Self::PageReleased,
            8 => Self::WakeUp,
            9 => Self::Disassociate,
            10 => Self::DeleteEntry,
            _ => return None,
        })
    }
}

/// Filesystem operations seen through the context hooks.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsOp {
    PunchHole = 1,
    ZeroRange = 2,
    CollapseRange = 3,
    InsertRange = 4,
    Truncate = 5,
}

impl FsOp {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::PunchHole,
            2 => Self::ZeroRange,
            3 => Self::CollapseRange,
            4 => Self::InsertRange,
            5 => Self::Truncate,
            _ => return None,
        })
    }
}

/// Which filesystem's break-layouts a record belongs to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Unknown = 0,
    Ext4 = 1,
    Xfs = 2,
    /// The generic `dax_break_layout()` of 6.15+, called by both.
    Generic = 3,
}

impl FsKind {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Ext4,
            2 => Self::Xfs,
            3 => Self::Generic,
            _ => Self::Unknown,
        }
    }
}

/// One fixed-size record in the ring buffer. Fields not used by a kind are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// A [`RecordKind`].
    pub kind: u16,
    /// The logical hook that emitted it (index into userspace's probe plan).
    pub hook: u16,
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
    /// `s_dev` of the inode's superblock (kernel encoding), 0 when unknown.
    pub dev: u32,
    /// Kind-specific small value: [`FsOp`], [`FsKind`], or a flag.
    pub op: u32,
    pub ino: u64,
    /// `struct address_space *` the operation works on, 0 when unknown.
    pub mapping: u64,
    /// `struct page *` (or folio) the record is about, 0 when none.
    pub page: u64,
    pub pfn: u64,
    /// `page->mapping` as read by the hook.
    pub page_mapping: u64,
    /// `page->_refcount` as read by the hook.
    pub refcount: i32,
    /// References dropped by a put.
    pub refs: u32,
    /// Kind-specific: offset, return value, index.
    pub a: i64,
    /// Kind-specific: length, end of range.
    pub b: i64,
}

impl Record {
    pub const SIZE: usize = core::mem::size_of::<Record>();

    pub const fn zeroed() -> Self {
        Record {
            kind: 0,
            hook: 0,
            cpu: 0,
            ts_ns: 0,
            pid: 0,
            tid: 0,
            comm: [0; 16],
            dev: 0,
            op: 0,
            ino: 0,
            mapping: 0,
            page: 0,
            pfn: 0,
            page_mapping: 0,
            refcount: 0,
            refs: 0,
            a: 0,
            b: 0,
        }
    }
}

/// The logical hooks, the same on every kernel. Which kernel function and
/// attach kind serves each one is the probe plan's business (userspace).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookId {
    Ext4PunchHole = 0,
    Ext4ZeroRange = 1,
    Ext4CollapseRange = 2,
    Ext4InsertRange = 3,
    Ext4Truncate = 4,
    Ext4Break = 5,
    XfsBreak = 6,
    GenericBreak = 7,
    BusyScan = 8,
    WaitStart = 9,
    PinDropped = 10,
    BioRelease = 11,
    WakeUp = 12,
    Disassociate = 13,
    DeleteEntry = 14,
}

impl HookId {
    pub const ALL: [HookId; 15] = [
        HookId::Ext4PunchHole,
        HookId::Ext4ZeroRange,
        HookId::Ext4CollapseRange,
        HookId::Ext4InsertRange,
        HookId::Ext4Truncate,
        HookId::Ext4Break,
        HookId::XfsBreak,
        HookId::GenericBreak,
        HookId::BusyScan,
        HookId::WaitStart,
        HookId::PinDropped,
        HookId::BioRelease,
        HookId::WakeUp,
        HookId::Disassociate,
        HookId::DeleteEntry,
    ];

    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }
}

/// Per-CPU counters kept by the kernel programs (index into [`COUNTERS_MAP`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A record could not be reserved in the ring buffer: it is lost.
    RingbufFull = 0,
    /// A page-put or release hook fired on a page nobody is watching.
    PutUnwatched = 1,
    /// A page-put or release hook fired on a watched page (a record was emitted).
    PutWatched = 2,
    /// A kernel read (`bpf_probe_read_kernel`) failed; the record carries zeros there.
    ReadFailed = 3,
    /// A watched page lost its slot to another busy page while still fresh
    /// (watched in the last [`WATCH_FRESH_NS`]): its later events are lost.
    WatchFull = 4,
    /// Watched pages a release path (a bio) let go of beyond the few one
    /// program run reports: their records are lost. Every bvec and every
    /// page of a bio is walked, so nothing else of a bio is.
    BioTruncated = 5,
    /// A truncation disassociated an idle, unwatched page (nothing to report).
    DisassociateQuiet = 6,
    /// A mapping entry was deleted by a task whose last break saw no busy
    /// page, or after the first deletion that followed such a break.
    DeleteQuiet = 7,
    /// A per-task table slot (tables are indexed by `tid % 16384`) was
    /// needed by two live tasks at once: the state of one of them was
    /// dropped, and with it the records it would have led to (a break or
    /// scan in progress, a kept ext4 operation a busy break then asked
    /// for, a busy break's truncation, a bio between entry and return).
    /// Was `state_full` (breaks and scans only).
    TaskSlotCollision = 8,
    /// A break-layouts call that never scanned for busy pages (xfs lease
    /// breaks on plain writes): not recorded.
    BreakQuiet = 9,
    /// A busy scan that found no page, in a call that had not found one
    /// either: it changes nothing for the detector, so it is counted, not
    /// recorded.
    ScanQuiet = 10,
    /// A break-layouts call that scanned and never found a busy page: no
    /// record, only the break statistics ([`BREAK_STATS_MAP`]) and this count.
    BreakClean = 11,
    /// A watched page gave its slot to a newly busy page long after anything
    /// last happened to it (a stale watch, not a loss).
    WatchRecycled = 12,
    /// An ext4 operation (hole punch, truncate...) that no busy break
    /// followed in its task: it is kept per task and recorded just before
    /// such a break, and counted here once a later operation replaces it.
    FsOpQuiet = 13,
    /// A watched page the range-deletion hook (6.15+) no longer keeps for
    /// its file: a file had more watched pages at once than it keeps, or
    /// another file took the file's slot. That page's watch then ends by
    /// recycling rather than at the range deletion (nothing is lost).
    FileWatchFull = 14,
    /// A truncation disassociated a 2 MiB (PMD) DAX entry: 512 pages at
    /// once. Every watched page of it is reported; of the unwatched pages
    /// only the first one's refcount is read (a pin on another unwatched
    /// page of the entry is not seen).
    PmdEntry = 15,
    /// A range deletion (6.15+) whose walk of the file's entries stopped at
    /// its step limit ([`RANGE_WALK_STEPS`]): the entries past that point
    /// left the file unchecked for pins.
    RangeWalkCut = 16,
}

pub const COUNTER_COUNT: u32 = 17;

/// Slots one range deletion's walk visits at most: every entry of a file of
/// about a million 4 KiB entries (4 GiB), or 512 times that in 2 MiB
/// entries. The kernel's own deletion walks the same slots.
pub const RANGE_WALK_STEPS: u32 = 1 << 20;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::RingbufFull,
        Counter::PutUnwatched,
        Counter::PutWatched,
        Counter::ReadFailed,
        Counter::WatchFull,
        Counter::BioTruncated,
        Counter::DisassociateQuiet,
        Counter::DeleteQuiet,
        Counter::TaskSlotCollision,
        Counter::BreakQuiet,
        Counter::ScanQuiet,
        Counter::BreakClean,
        Counter::WatchRecycled,
        Counter::FsOpQuiet,
        Counter::FileWatchFull,
        Counter::PmdEntry,
        Counter::RangeWalkCut,
    ];

    /// Counters of records that never reached userspace (the rest count
    /// hook calls filtered in the kernel, or degraded but complete state).
    pub const LOST: [Counter; 5] = [
        Counter::RingbufFull,
        Counter::TaskSlotCollision,
        Counter::WatchFull,
        Counter::BioTruncated,
        Counter::RangeWalkCut,
    ];

    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Counter::RingbufFull => "ringbuf_full",
            Counter::PutUnwatched => "put_unwatched",
            Counter::PutWatched => "put_watched",
            Counter::ReadFailed => "read_failed",
            Counter::WatchFull => "watch_full",
            Counter::BioTruncated => "bio_truncated",
            Counter::DisassociateQuiet => "disassociate_quiet",
            Counter::DeleteQuiet => "delete_quiet",
            Counter::TaskSlotCollision => "task_slot_collision",
            Counter::BreakQuiet => "break_quiet",
            Counter::ScanQuiet => "scan_quiet",
            Counter::BreakClean => "break_clean",
            Counter::WatchRecycled => "watch_recycled",
            Counter::FsOpQuiet => "fs_op_quiet",
            Counter::FileWatchFull => "file_watch_full",
            Counter::PmdEntry => "pmd_entry",
            Counter::RangeWalkCut => "range_walk_cut",
        }
    }
}

/// Unread bytes in a ring buffer of `ring_bytes` above which a submit wakes
/// the reader at once (below it the reader drains on its own timer): a
/// quarter of the ring, and at most 256 KiB. A fixed 256 KiB never woke
/// the reader of a ring that small or smaller, which then filled up
/// between two timed drains.
#[inline(always)]
pub const fn ring_wake_bytes(ring_bytes: u64) -> u64 {
    let quarter = ring_bytes / 4;
    if quarter < RING_WAKE_MAX_BYTES {
        quarter
    } else {
        RING_WAKE_MAX_BYTES
    }
}

/// Waking the reader on every record was the dominant cost of the emitting
/// hooks (the wake-up is an irq_work): large rings wake it at this much.
pub const RING_WAKE_MAX_BYTES: u64 = 256 * 1024;

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

/// Break-layouts statistics kept in the kernel for every call that scanned
/// (recorded or not), per [`FsKind`]: a log2 histogram of durations like
/// ebpf_exporter's, so that the quiet calls cost no record.
pub struct BreakStat;

impl BreakStat {
    /// Histogram buckets: bucket `k` counts calls whose duration in
    /// microseconds has bit length `k` (bucket 0: under 1 us, bucket `k`:
    /// under `2^k` us); the last bucket also takes everything longer.
    pub const BUCKETS: u32 = 32;
    /// Slot of the number of calls that returned an error.
    pub const ERRORS: u32 = Self::BUCKETS;
    /// Slot of the summed duration, in nanoseconds.
    pub const SUM_NS: u32 = Self::BUCKETS + 1;
    /// Slots per filesystem kind.
    pub const PER_FS: u32 = Self::BUCKETS + 2;
    /// Filesystem kinds ([`FsKind`] values 0..=3).
    pub const FS_KINDS: u32 = 4;
    pub const ENTRIES: u32 = Self::PER_FS * Self::FS_KINDS;

    pub const fn index(fs: u32, slot: u32) -> u32 {
        (fs % Self::FS_KINDS) * Self::PER_FS + slot
    }

    /// The histogram bucket of a duration in microseconds: its bit length,
    /// capped at the last bucket. Branch-free (the bits below the top one
    /// are set, then counted): a binary search forked the verifier's walk
    /// of the break-exit programs into one path per bucket.
    #[inline(always)]
    pub const fn bucket(us: u64) -> u32 {
        let mut x = us;
        x |= x >> 1;
        x |= x >> 2;
        x |= x >> 4;
        x |= x >> 8;
        x |= x >> 16;
        x |= x >> 32;
        x -= (x >> 1) & 0x5555_5555_5555_5555;
        x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
        x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
        let bits = (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32;
        let last = Self::BUCKETS - 1;
        if bits > last {
            last
        } else {
            bits
        }
    }
}

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
    /// from there (6.15+, see [`XaEntry`]).
    pub mapping_xa_head: u32,
    /// Offsets of `shift` and `slots` in `struct xa_node`.
    pub xa_node_shift: u32,
    pub xa_node_slots: u32,
    /// Address of the kernel variable `vmemmap_base` (0: use the default base).
    pub vmemmap_base_addr: u64,
    /// Used when `vmemmap_base_addr` is 0.
    pub vmemmap_default: u64,
}

impl KernelConfig {
    /// Offsets seen on x86_64 from 4.18 to 6.18 (KERNELS.md); used only when
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
        vmemmap_base_addr: 0,
        vmemmap_default: 0xffff_ea00_0000_0000,
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data with no padding holes and no pointers.
    unsafe impl aya::Pod for super::Record {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelConfig {}
}

#[cfg(test)]
mod tests {

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
    fn a_duration_lands_in_the_bucket_of_its_bit_length() {
        let bit_len = |v: u64| 64 - v.leading_zeros();
        let fixed = [0u64, 1, 2, 3, 4, 7, 8, 999, 1000, 1024, u64::MAX];
        let powers = (0..64).flat_map(|k| [1u64 << k, (1u64 << k) - 1, (1u64 << k) + 1]);
        for v in fixed.into_iter().chain(powers) {
            let want = bit_len(v).min(BreakStat::BUCKETS - 1);
            assert_eq!(BreakStat::bucket(v), want, "{v}");
        }
    }
    use super::*;

    #[test]
    fn record_has_no_implicit_padding() {
        // 2+2+4+8+4+4+16+4+4+8*5+4+4+8+8
        assert_eq!(Record::SIZE, 112);
        assert_eq!(core::mem::size_of::<KernelConfig>(), 22 * 4 + 16);
    }

    #[test]
    fn the_reader_is_woken_before_a_small_ring_fills() {
        // One page: the smallest ring the kernel takes.
        assert_eq!(ring_wake_bytes(4096), 1024);
        assert_eq!(ring_wake_bytes(256 * 1024), 64 * 1024);
        assert_eq!(ring_wake_bytes(1 << 20), 256 * 1024);
        assert_eq!(ring_wake_bytes(1 << 22), RING_WAKE_MAX_BYTES);
        assert_eq!(ring_wake_bytes(1 << 31), RING_WAKE_MAX_BYTES);
        for shift in 12..32 {
            assert!(ring_wake_bytes(1 << shift) < 1 << shift);
        }
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
    fn kinds_round_trip() {
        for v in 1..=10u16 {
            assert_eq!(RecordKind::from_u16(v).unwrap() as u16, v);
        }
        assert!(RecordKind::from_u16(0).is_none());
        assert!(RecordKind::from_u16(11).is_none());
    }
}
