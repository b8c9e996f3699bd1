//! The ring buffer's record and the enums its fields carry.

wire_enum! {
    /// What a [`Record`] says happened.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RecordKind: u16 {
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
        /// A watched page's refcount, read on the daemon's request (not by a
        /// hook on the page's path): `refcount` is the count now, and the
        /// task fields are the daemon's, not a releaser's. Sent when it
        /// differs from the last count reported for the page.
        PageSampled = 11,
    }
}

impl RecordKind {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Self::from_repr(v)
    }
}

wire_enum! {
    /// Filesystem operations seen through the context hooks.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FsOp: u32 {
        PunchHole = 1,
        ZeroRange = 2,
        CollapseRange = 3,
        InsertRange = 4,
        Truncate = 5,
    }
}

impl FsOp {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Self::from_repr(v)
    }
}

wire_enum! {
    /// Which filesystem's break-layouts a record belongs to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FsKind: u32 {
        Unknown = 0,
        Ext4 = 1,
        Xfs = 2,
        /// The generic `dax_break_layout()` of 6.15+, called by both.
        Generic = 3,
    }
}

impl FsKind {
    /// The kind of a value; [`FsKind::Unknown`] for any other.
    pub const fn from_u32(v: u32) -> Self {
        match Self::from_repr(v) {
            Some(k) => k,
            None => Self::Unknown,
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

wire_enum! {
    /// The logical hooks, the same on every kernel. Which kernel function and
    /// attach kind serves each one is the probe plan's business (userspace).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum HookId: u16 {
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
}

impl HookId {
    /// The hook of a value. Indexes [`HookId::ALL`] (values are `0..COUNT`,
    /// checked below): the kernel programs call this, and an index into
    /// the table is what their code was verified with.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }
}

// Sizes and values the kernel side and the trace files rely on.
const _: () = {
    // 2+2+4+8+4+4+16+4+4+8*5+4+4+8+8, no padding.
    assert!(Record::SIZE == 112);
    assert!(core::mem::align_of::<Record>() == 8);
    let mut i = 0;
    while i < HookId::COUNT {
        assert!(HookId::ALL[i] as usize == i);
        i += 1;
    }
    assert!(RecordKind::ALL[0] as u16 == 1);
    assert!(FsOp::ALL[0] as u32 == 1);
    assert!(FsKind::COUNT as u32 == crate::BreakStat::FS_KINDS);
    assert!(FsKind::ALL[FsKind::COUNT - 1] as u32 == FsKind::COUNT as u32 - 1);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for v in 1..=11u16 {
            assert_eq!(RecordKind::from_u16(v).unwrap() as u16, v);
        }
        assert!(RecordKind::from_u16(0).is_none());
        assert!(RecordKind::from_u16(12).is_none());
    }

    #[test]
    fn every_value_decodes_to_its_variant() {
        for h in HookId::ALL {
            assert_eq!(HookId::from_u16(h as u16), Some(h));
            assert_eq!(HookId::from_repr(h as u16), Some(h));
        }
        assert_eq!(HookId::from_u16(HookId::COUNT as u16), None);
        for op in FsOp::ALL {
            assert_eq!(FsOp::from_u32(op as u32), Some(op));
        }
        assert_eq!(FsOp::from_u32(0), None);
        assert_eq!(FsOp::from_u32(6), None);
        for fs in FsKind::ALL {
            assert_eq!(FsKind::from_u32(fs as u32), fs);
        }
        assert_eq!(FsKind::from_u32(4), FsKind::Unknown);
    }

    #[test]
    fn values_are_the_trace_format() {
        // Recorded in trace files: these numbers never change.
        assert_eq!(RecordKind::COUNT, 11);
        assert_eq!(RecordKind::DeleteEntry as u16, 10);
        assert_eq!(RecordKind::PageSampled as u16, 11);
        assert_eq!(HookId::COUNT, 15);
        assert_eq!(HookId::DeleteEntry as u16, 14);
        assert_eq!(FsOp::Truncate as u32, 5);
        assert_eq!(FsKind::Generic as u32, 3);
        assert_eq!(Record::SIZE, 112);
    }
}
