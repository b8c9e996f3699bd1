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

/// A one-hash Bloom filter over integer keys: tells in a few instructions that
/// a key is certainly absent from a map, which is the common answer on the hot
/// path (pages nobody watches, tasks not inside a break-layouts call). Bits are
/// only set; `rebuild` clears the ones of keys that left.
#[derive(Debug)]
pub struct KeyFilter {
    bits: Vec<u64>,
    shift: u32,
}

impl KeyFilter {
    /// `log2_bits` from 6 (one word) up.
    pub fn new(log2_bits: u32) -> Self {
        let log2_bits = log2_bits.max(6);
        KeyFilter {
            bits: vec![0; 1 << (log2_bits - 6)],
            shift: 64 - log2_bits,
        }
    }

    #[inline]
    fn slot(&self, key: u64) -> (usize, u64) {
        let h = key.wrapping_mul(SEED) >> self.shift;
        ((h >> 6) as usize, 1u64 << (h & 63))
    }

    #[inline]
    pub fn may_contain(&self, key: u64) -> bool {
        let (word, bit) = self.slot(key);
        self.bits[word] & bit != 0
    }

    #[inline]
    pub fn insert(&mut self, key: u64) {
        let (word, bit) = self.slot(key);
        self.bits[word] |= bit;
    }

    pub fn rebuild(&mut self, keys: impl Iterator<Item = u64>) {
        self.bits.fill(0);
        for k in keys {
            self.insert(k);
        }
    }
}
