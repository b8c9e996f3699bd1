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
