//! A fast hasher for the detector's integer keys (tids, pfns, mappings).
//!
//! The default SipHash costs more than the rest of the per-event work; keys here
//! are kernel-chosen integers (thread ids, page frame numbers), not input an
//! attacker picks to flood one bucket, so a multiply-rotate hash is enough.
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply by an odd constant, then rotate so the well-mixed high bits of the
/// product land in the low bits the table indexes by (pfns of 2 MiB pages are
/// multiples of 512: a plain multiply would leave their low bits zero).
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

const SEED: u64 = 0xf135_7aea_2e62_a9c5;

impl Hasher for IntHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(SEED);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;
pub type IntSet<K> = HashSet<K, BuildHasherDefault<IntHasher>>;

pub fn int_map<K, V>(capacity: usize) -> IntMap<K, V> {
    HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

pub fn int_set<K>(capacity: usize) -> IntSet<K> {
    HashSet::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}
