//! Records shared by daxrace's kernel programs and its userspace.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every type
//! is `#[repr(C)]`, fixed-size and free of padding the compiler could choose.
//! Numeric values of the enums are part of the recorded trace format: append,
//! never renumber.
//!
//! - [`record`]: the ring buffer's [`Record`] and what its fields mean
//!   ([`RecordKind`], [`HookId`], [`FsOp`], [`FsKind`]);
//! - [`counter`]: the in-kernel [`Counter`]s;
//! - [`stats`]: break-layouts statistics and the ring's wake-up threshold;
//! - [`config`]: the kernel facts handed to the programs ([`KernelConfig`]);
//! - [`dax`]: the kernel's encodings the programs decode (DAX and xarray
//!   entries, bvecs, pfns);
//! - [`slots`]: how the programs' tables are indexed.
//!
//! Everything the kernel side calls is `#[inline(always)]` and calls no BPF
//! helper, so the host's unit tests here cover the same code the programs run.
#![no_std]

#[macro_use]
mod wire_enum;

pub mod config;
pub mod counter;
pub mod dax;
pub mod record;
pub mod slots;
pub mod stats;

pub use config::KernelConfig;
pub use counter::{Counter, COUNTER_COUNT};
pub use dax::{bvec_pages, DaxEntry, XaEntry, PAGE_SHIFT, RANGE_WALK_STEPS};
pub use record::{FsKind, FsOp, HookId, Record, RecordKind};
pub use slots::{SweepFlags, WATCH_FRESH_NS};
pub use stats::{ring_wake_bytes, BreakStat, RING_WAKE_MAX_BYTES};

/// Name of the ring buffer map that carries [`Record`]s to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array of [`Counter`]s.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the per-CPU array of break-layouts statistics ([`BreakStat`]).
pub const BREAK_STATS_MAP: &str = "BREAK_STATS";
/// Name of the global holding [`KernelConfig`].
pub const CONFIG_GLOBAL: &str = "CONFIG";

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data with no padding holes and no pointers.
    unsafe impl aya::Pod for super::Record {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelConfig {}
}
