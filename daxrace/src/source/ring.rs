//! The live event source: drains the ring buffer and decodes records. A
//! record that does not decode is counted by reason, never dropped silently.
use std::{collections::BTreeMap, io};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{decode, event::Event};

pub struct LiveSource {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Decode failures by reason.
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub records: u64,
}

impl LiveSource {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        Ok(LiveSource {
            // SAFETY: the ring buffer owns its fd and AsyncFd owns the ring,
            // so the fd stays open for as long as it is registered.
            ring: unsafe { AsyncFd::register(ring) }.map_err(io::Error::from)?,
            decode_errors: BTreeMap::new(),
            records: 0,
        })
    }

    /// Waits until records are available, then appends every available one
    /// to `out` (batching keeps wake-ups few under load).
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let LiveSource {
            ring,
            decode_errors,
            records,
        } = self;
        let mut guard = ring.readable_mut().await?;
        drain_into(guard.get_inner_mut(), out, records, decode_errors);
        guard.clear_ready();
        Ok(())
    }

    /// Appends whatever is in the ring now, without waiting (for shutdown).
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        drain_into(
            self.ring.get_mut(),
            out,
            &mut self.records,
            &mut self.decode_errors,
        );
    }
}

fn drain_into(
    ring: &mut RingBuf<MapData>,
    out: &mut Vec<Event>,
    records: &mut u64,
    errors: &mut BTreeMap<&'static str, u64>,
) {
    while let Some(item) = ring.next() {
        *records += 1;
        match decode::decode(&item) {
            Ok(ev) => out.push(ev),
            Err(e) => *errors.entry(e.reason()).or_default() += 1,
        }
    }
}

/// `--ring-buffer-kib` bounds: one page, and 1 GiB (the kernel takes a
/// power of two up to 2 GiB; more than 1 GiB of locked kernel memory for
/// records of 112 bytes is a typo, not a setting).
pub const RING_BUFFER_KIB_MIN: u32 = 4;
pub const RING_BUFFER_KIB_MAX: u32 = 1 << 20;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a power of two from {RING_BUFFER_KIB_MIN} to {RING_BUFFER_KIB_MAX} (KiB)")]
pub struct RingBufferSizeError(String);

/// Parses `--ring-buffer-kib`: the ring's size in KiB. The kernel wants a
/// power of two, and the size in bytes must fit the map's u32.
pub fn parse_ring_buffer_kib(arg: &str) -> Result<u32, RingBufferSizeError> {
    match arg.trim().parse::<u32>() {
        Ok(kib)
            if kib.is_power_of_two()
                && (RING_BUFFER_KIB_MIN..=RING_BUFFER_KIB_MAX).contains(&kib) =>
        {
            Ok(kib)
        }
        _ => Err(RingBufferSizeError(arg.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_sizes_are_powers_of_two_within_bounds() {
        assert_eq!(parse_ring_buffer_kib("4"), Ok(4));
        assert_eq!(parse_ring_buffer_kib("4096"), Ok(4096));
        assert_eq!(parse_ring_buffer_kib("1048576"), Ok(1 << 20));
        // Every accepted size fits the map's u32 in bytes.
        assert!(u32::try_from(RING_BUFFER_KIB_MAX as u64 * 1024).is_ok());
        for bad in [
            "0",
            "2",
            "3000",
            "2097152",
            "4194304",
            "99999999999",
            "-4",
            "4k",
            "",
        ] {
            let err = parse_ring_buffer_kib(bad).unwrap_err().to_string();
            assert!(err.contains("power of two"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: one line: {err}");
        }
    }
}
