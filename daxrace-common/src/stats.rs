//! Statistics kept in the kernel instead of records, and when the ring
//! buffer wakes its reader.
/// Break-layouts statistics kept in the kernel for every call that scanned
/// (recorded or not), per [`FsKind`](crate::FsKind): a log2 histogram of durations like
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
    /// Filesystem kinds ([`FsKind`](crate::FsKind) values 0..=3).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
