//! The per-CPU counters the kernel programs keep.
wire_enum! {
    /// Per-CPU counters kept by the kernel programs (index into [`COUNTERS_MAP`](crate::COUNTERS_MAP));
    /// the label is the metric label.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Counter: u32 {
        /// A record could not be reserved in the ring buffer: it is lost.
        RingbufFull = 0 => "ringbuf_full",
        /// A page-put or release hook fired on a page nobody is watching,
        /// while another page was (with none watched the page gate returns
        /// before counting).
        PutUnwatched = 1 => "put_unwatched",
        /// A page-put or release hook fired on a watched page (a record was emitted).
        PutWatched = 2 => "put_watched",
        /// A kernel read (`bpf_probe_read_kernel`) failed; the record carries zeros there.
        ReadFailed = 3 => "read_failed",
        /// A watched page lost its slot to another busy page while still fresh
        /// (watched in the last [`WATCH_FRESH_NS`](crate::WATCH_FRESH_NS)): its later events are lost.
        WatchFull = 4 => "watch_full",
        /// Watched pages a release path (a bio) let go of beyond the few one
        /// program run reports: their records are lost. Every bvec and every
        /// page of a bio is walked, so nothing else of a bio is.
        BioTruncated = 5 => "bio_truncated",
        /// A truncation disassociated an idle, unwatched page (nothing to report).
        DisassociateQuiet = 6 => "disassociate_quiet",
        /// A mapping entry was deleted by a task whose last break saw no busy
        /// page, or after the first deletion that followed such a break.
        DeleteQuiet = 7 => "delete_quiet",
        /// A per-task table slot (tables are indexed by `tid % 16384`) was
        /// needed by two live tasks at once: the state of one of them was
        /// dropped, and with it the records it would have led to (a break or
        /// scan in progress, a kept ext4 operation a busy break then asked
        /// for, a busy break's truncation, a bio between entry and return).
        /// Was `state_full` (breaks and scans only).
        TaskSlotCollision = 8 => "task_slot_collision",
        /// A break-layouts call that never scanned for busy pages (xfs lease
        /// breaks on plain writes): not recorded.
        BreakQuiet = 9 => "break_quiet",
        /// A busy scan that found no page, in a call that had not found one
        /// either: it changes nothing for the detector, so it is counted, not
        /// recorded.
        ScanQuiet = 10 => "scan_quiet",
        /// A break-layouts call that scanned and never found a busy page: no
        /// record, only the break statistics ([`BREAK_STATS_MAP`](crate::BREAK_STATS_MAP)) and this count.
        BreakClean = 11 => "break_clean",
        /// A watched page gave its slot to a newly busy page long after anything
        /// last happened to it (a stale watch, not a loss).
        WatchRecycled = 12 => "watch_recycled",
        /// An ext4 operation (hole punch, truncate...) that no busy break
        /// followed in its task: it is kept per task and recorded just before
        /// such a break, and counted here once a later operation replaces it.
        FsOpQuiet = 13 => "fs_op_quiet",
        /// A watched page the range-deletion hook (6.15+) no longer keeps for
        /// its file: a file had more watched pages at once than it keeps, or
        /// another file took the file's slot. That page's watch then ends by
        /// recycling rather than at the range deletion (nothing is lost).
        FileWatchFull = 14 => "file_watch_full",
        /// A truncation disassociated a 2 MiB (PMD) DAX entry: 512 pages at
        /// once. Every watched page of it is reported; of the unwatched pages
        /// only the first one's refcount is read (a pin on another unwatched
        /// page of the entry is not seen).
        PmdEntry = 15 => "pmd_entry",
        /// A range deletion (6.15+) whose walk of the file's entries stopped at
        /// its step limit ([`RANGE_WALK_STEPS`](crate::RANGE_WALK_STEPS)): the entries past that point
        /// left the file unchecked for pins.
        RangeWalkCut = 16 => "range_walk_cut",
    }
}

/// Entries of [`COUNTERS_MAP`](crate::COUNTERS_MAP): one per [`Counter`].
pub const COUNTER_COUNT: u32 = Counter::COUNT as u32;

impl Counter {
    /// Counters of records that never reached userspace (the rest count
    /// hook calls filtered in the kernel, or degraded but complete state).
    pub const LOST: [Counter; 5] = [
        Counter::RingbufFull,
        Counter::TaskSlotCollision,
        Counter::WatchFull,
        Counter::BioTruncated,
        Counter::RangeWalkCut,
    ];
}

// The map is indexed by value: values are 0..COUNT.
const _: () = assert!(Counter::ALL[Counter::COUNT - 1] as u32 == COUNTER_COUNT - 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_metric_labels() {
        // Exported as metric labels and trace-file keys: byte for byte.
        let labels = [
            "ringbuf_full",
            "put_unwatched",
            "put_watched",
            "read_failed",
            "watch_full",
            "bio_truncated",
            "disassociate_quiet",
            "delete_quiet",
            "task_slot_collision",
            "break_quiet",
            "scan_quiet",
            "break_clean",
            "watch_recycled",
            "fs_op_quiet",
            "file_watch_full",
            "pmd_entry",
            "range_walk_cut",
        ];
        assert_eq!(Counter::ALL.len(), labels.len());
        for (i, (c, label)) in Counter::ALL.iter().zip(labels).enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(c.as_str(), label);
            assert_eq!(Counter::from_repr(i as u32), Some(*c));
        }
        assert_eq!(COUNTER_COUNT, 17);
    }
}
