//! Typed events: what the detector, the sinks and the trace format speak.
//! Built from raw ring-buffer records by `decode`, or read back from a trace.
use std::fmt;

use daxrace_common::{FsKind, FsOp, HookId};
use serde::{Deserialize, Serialize};

/// A task name as the kernel keeps it: 16 bytes, NUL padded. Kept as bytes so
/// decoding an event never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn new(name: &str) -> Self {
        let mut b = [0u8; 16];
        let n = name.len().min(15);
        b[..n].copy_from_slice(&name.as_bytes()[..n]);
        Comm(b)
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Comm::new(&s))
    }
}

/// Who did it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    pub cpu: u32,
}

/// A DAX page as a hook saw it. `page` is the kernel address of its
/// `struct page` (or folio); `pfn` identifies it across hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    pub pfn: u64,
    pub page: u64,
    /// `_refcount` when the hook read it (what that means depends on the kind:
    /// before a put, after a release).
    pub refcount: i32,
}

/// Which filesystem a break-layouts call belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filesystem {
    Unknown,
    Ext4,
    Xfs,
    /// 6.15+'s generic `dax_break_layout()`.
    Generic,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Unknown => "unknown",
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::Generic => "generic",
        }
    }
}

impl From<FsKind> for Filesystem {
    fn from(k: FsKind) -> Self {
        match k {
            FsKind::Unknown => Filesystem::Unknown,
            FsKind::Ext4 => Filesystem::Ext4,
            FsKind::Xfs => Filesystem::Xfs,
            FsKind::Generic => Filesystem::Generic,
        }
    }
}

/// Operations that must break DAX layouts first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    PunchHole,
    ZeroRange,
    CollapseRange,
    InsertRange,
    Truncate,
}

impl From<FsOp> for FileOp {
    fn from(op: FsOp) -> Self {
        match op {
            FsOp::PunchHole => FileOp::PunchHole,
            FsOp::ZeroRange => FileOp::ZeroRange,
            FsOp::CollapseRange => FileOp::CollapseRange,
            FsOp::InsertRange => FileOp::InsertRange,
            FsOp::Truncate => FileOp::Truncate,
        }
    }
}

/// What happened, with the values each hook can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A context tracepoint: an operation that will break layouts.
    /// `offset`/`len` are bytes; for truncate `offset` is the new size.
    FileOp {
        op: FileOp,
        dev: u32,
        ino: u64,
        offset: i64,
        len: i64,
    },
    /// `ext4_break_layouts` / `xfs_break_dax_layouts` / `dax_break_layout` entered.
    BreakEnter {
        fs: Filesystem,
        dev: u32,
        ino: u64,
        mapping: u64,
    },
    /// The same call returned `ret` (0 or -errno).
    BreakExit { fs: Filesystem, ret: i64 },
    /// `dax_layout_busy_page*` returned `page` (None: no busy page in range).
    BusyScan {
        mapping: u64,
        start: i64,
        end: i64,
        page: Option<PageRef>,
    },
    /// A task is about to sleep until `page` goes idle (`init_wait_var_entry`).
    WaitStart { page: PageRef },
    /// The devmap put path drops `refs` references; `page.refcount` is before.
    PinDropped { page: PageRef, refs: u32 },
    /// A release path that bypasses the devmap put released a watched page;
    /// `page.refcount` is after the release.
    PageReleased { page: PageRef },
    /// A watched page's refcount, read on the daemon's request rather than
    /// by a hook on the page's path (the quiet mode's page hooks were off
    /// when it changed): `page.refcount` is the count now. The task is the
    /// daemon's; who released the page is unknown.
    PageSampled { page: PageRef },
    /// `wake_up_var` for a watched page.
    WakeUp { page: PageRef },
    /// `dax_disassociate_entry`: the page leaves `mapping`. `page_mapping` is
    /// what `page->mapping` held; `trunc` is set on truncation.
    Disassociate {
        mapping: u64,
        page: PageRef,
        page_mapping: u64,
        trunc: bool,
    },
    /// `dax_delete_mapping_entry(mapping, index)`.
    DeleteEntry { mapping: u64, index: u64 },
}

/// One decoded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (the kernel's `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub hook: HookName,
    pub task: Task,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// An event as the hook that usually reports `body` would send it: for
    /// events built by hand (tests, models), where no record names a hook.
    pub fn synthetic(ts_ns: u64, task: Task, body: EventBody) -> Event {
        let hook = match body {
            EventBody::FileOp { .. } => HookId::Ext4PunchHole,
            EventBody::BreakEnter { fs, .. } | EventBody::BreakExit { fs, .. } => match fs {
                Filesystem::Xfs => HookId::XfsBreak,
                Filesystem::Generic => HookId::GenericBreak,
                _ => HookId::Ext4Break,
            },
            EventBody::BusyScan { .. } => HookId::BusyScan,
            EventBody::WaitStart { .. } => HookId::WaitStart,
            EventBody::PinDropped { .. } => HookId::PinDropped,
            EventBody::PageReleased { .. } => HookId::BioRelease,
            EventBody::PageSampled { .. } => HookId::PinDropped,
            EventBody::WakeUp { .. } => HookId::WakeUp,
            EventBody::Disassociate { .. } => HookId::Disassociate,
            EventBody::DeleteEntry { .. } => HookId::DeleteEntry,
        };
        Event {
            ts_ns,
            hook: HookName(hook),
            task,
            body,
        }
    }
}

/// A [`HookId`] that serialises by name, so traces stay readable and stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HookName(pub HookId);

impl HookName {
    pub fn as_str(self) -> &'static str {
        match self.0 {
            HookId::Ext4PunchHole => "ext4_punch_hole",
            HookId::Ext4ZeroRange => "ext4_zero_range",
            HookId::Ext4CollapseRange => "ext4_collapse_range",
            HookId::Ext4InsertRange => "ext4_insert_range",
            HookId::Ext4Truncate => "ext4_truncate",
            HookId::Ext4Break => "ext4_break",
            HookId::XfsBreak => "xfs_break",
            HookId::GenericBreak => "generic_break",
            HookId::BusyScan => "busy_scan",
            HookId::WaitStart => "wait_start",
            HookId::PinDropped => "pin_dropped",
            HookId::BioRelease => "bio_release",
            HookId::WakeUp => "wake_up",
            HookId::Disassociate => "disassociate",
            HookId::DeleteEntry => "delete_entry",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        HookId::ALL
            .iter()
            .map(|&h| HookName(h))
            .find(|h| h.as_str() == s)
    }
}

impl Serialize for HookName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HookName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        HookName::from_name(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown hook `{s}`")))
    }
}

impl fmt::Display for HookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Event {
    /// One human line: time, task, hook, then what the hook saw.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>6}.{:06} {:>7}/{:<7} {:<15} {:<16} ",
            self.ts_ns / 1_000_000_000,
            (self.ts_ns / 1000) % 1_000_000,
            self.task.pid,
            self.task.tid,
            self.task.comm,
            self.hook
        )?;
        let page = |f: &mut fmt::Formatter<'_>, p: &PageRef| {
            write!(f, "pfn={:#x} refcount={}", p.pfn, p.refcount)
        };
        match &self.body {
            EventBody::FileOp {
                op,
                dev,
                ino,
                offset,
                len,
            } => write!(
                f,
                "{op:?} dev={}:{} ino={ino} offset={offset} len={len}",
                dev >> 20,
                dev & 0xfffff
            ),
            EventBody::BreakEnter { fs, ino, .. } => {
                write!(f, "break enter fs={} ino={ino}", fs.as_str())
            }
            EventBody::BreakExit { fs, ret } => {
                write!(f, "break exit fs={} ret={ret}", fs.as_str())
            }
            EventBody::BusyScan { page: Some(p), .. } => {
                f.write_str("busy scan -> ")?;
                page(f, p)
            }
            EventBody::BusyScan { page: None, .. } => f.write_str("busy scan -> none"),
            EventBody::WaitStart { page: p } => {
                f.write_str("wait on ")?;
                page(f, p)
            }
            EventBody::PinDropped { page: p, refs } => {
                write!(f, "put {refs} ref(s) from ")?;
                page(f, p)
            }
            EventBody::PageReleased { page: p } => {
                f.write_str("released, now ")?;
                page(f, p)
            }
            EventBody::PageSampled { page: p } => {
                f.write_str("sampled, now ")?;
                page(f, p)
            }
            EventBody::WakeUp { page: p } => {
                f.write_str("wake ")?;
                page(f, p)
            }
            EventBody::Disassociate {
                page: p,
                trunc,
                mapping,
                page_mapping,
            } => {
                write!(f, "disassociate trunc={trunc} ")?;
                page(f, p)?;
                if page_mapping != mapping {
                    write!(f, " page->mapping={page_mapping:#x} mapping={mapping:#x}")?;
                }
                Ok(())
            }
            EventBody::DeleteEntry { index, .. } => write!(f, "delete entry index={index}"),
        }
    }
}
