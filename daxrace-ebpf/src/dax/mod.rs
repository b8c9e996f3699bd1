//! The DAX hooks: break-layouts calls, busy-page scans, waits and wake-ups on
//! a page's refcount, the paths that drop pins, and truncation.
//!
//! Each hook has one body taking plain values; the fentry/fexit and
//! kprobe/kretprobe programs in its module are thin shells around it, so the
//! two flavours cannot drift apart. The probe plan in userspace decides which
//! shell attaches to which kernel symbol, by the program's function name: a
//! program keeps its name wherever it lives, and so does every map.
//!
//! Filtering happens here: a page becomes *watched* when a busy scan returns
//! it; the page-put and release hooks (millions of calls a second under
//! direct I/O) only emit records for watched pages and count the rest, and
//! with no page watched at all they return on one load (the page gate).
//!
//! One module per stage, in the order a race goes through them:
//!
//! - [`state`]: the per-task tables more than one stage reads, and the
//!   helpers that fill a record's page and file fields;
//! - [`watch`]: the watched pages (and their 2 MiB blocks and files);
//! - [`fs_op`]: the ext4 operation a break is for, kept per task;
//! - [`breaks`]: break-layouts calls;
//! - [`scan`]: busy-page scans, which start a page's watch;
//! - [`pages`]: waits, wake-ups and pin drops on a watched page;
//! - [`bio`]: the bio release path that bypasses the devmap put (6.1);
//! - [`truncate`]: pages leaving their file, entry by entry;
//! - [`range`]: range deletion (6.15+, and every kernel's in quiet mode)
//!   and its walk of the file's entries;
//! - [`sweep`]: the watched pages, looked at when the daemon asks: their
//!   refcounts (quiet mode attaches the page hooks only while pages are
//!   watched), stale watches, and the page gate.
//!
//! Kernel facts behind each stage: `docs/kernels.md`.
// In the order of the stages.
mod bio;
mod breaks;
mod fs_op;
mod pages;
mod range;
mod scan;
mod state;
mod sweep;
mod truncate;
mod watch;

pub use fs_op::stash_fs_op;
