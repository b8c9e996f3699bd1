//! Ring-buffer bytes -> typed [`Event`]. A bad record is an error value the
//! caller counts; nothing here panics on kernel input.
use daxrace_common::{FsKind, FsOp, HookId, Record, RecordKind};

use crate::event::{Comm, Event, EventBody, HookName, PageRef, Task};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, expected {expected}", expected = Record::SIZE)]
    Size(usize),
    #[error("unknown record kind {0}")]
    Kind(u16),
    #[error("unknown hook id {0}")]
    Hook(u16),
    #[error("unknown file operation {0}")]
    FileOp(u32),
}

impl DecodeError {
    /// Every value [`DecodeError::reason`] can take.
    pub const REASONS: [&'static str; 4] = ["size", "kind", "hook", "file_op"];

    /// Short label for the `reason` of the decode-error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Size(_) => "size",
            DecodeError::Kind(_) => "kind",
            DecodeError::Hook(_) => "hook",
            DecodeError::FileOp(_) => "file_op",
        }
    }
}

/// Reads a record from ring-buffer bytes (any alignment).
pub fn record_from_bytes(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() != Record::SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: length checked; Record is plain old data valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Record>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_record(&record_from_bytes(bytes)?)
}

pub fn decode_record(r: &Record) -> Result<Event, DecodeError> {
    let kind = RecordKind::from_u16(r.kind).ok_or(DecodeError::Kind(r.kind))?;
    let hook = HookId::from_u16(r.hook).ok_or(DecodeError::Hook(r.hook))?;
    let page = PageRef {
        pfn: r.pfn,
        page: r.page,
        refcount: r.refcount,
    };
    let body = match kind {
        RecordKind::FsOp => EventBody::FileOp {
            op: FsOp::from_u32(r.op)
                .ok_or(DecodeError::FileOp(r.op))?
                .into(),
            dev: r.dev,
            ino: r.ino,
            offset: r.a,
            len: r.b,
        },
        RecordKind::BreakEnter => EventBody::BreakEnter {
            fs: FsKind::from_u32(r.op).into(),
            dev: r.dev,
            ino: r.ino,
            mapping: r.mapping,
        },
        RecordKind::BreakExit => EventBody::BreakExit {
            fs: FsKind::from_u32(r.op).into(),
            ret: r.a,
        },
        RecordKind::BusyScan => EventBody::BusyScan {
            mapping: r.mapping,
            start: r.a,
            end: r.b,
            page: (r.page != 0).then_some(page),
        },
        RecordKind::WaitStart => EventBody::WaitStart { page },
        RecordKind::PinDropped => EventBody::PinDropped { page, refs: r.refs },
        RecordKind::PageReleased => EventBody::PageReleased { page },
        RecordKind::PageSampled => EventBody::PageSampled { page },
        RecordKind::WakeUp => EventBody::WakeUp { page },
        RecordKind::Disassociate => EventBody::Disassociate {
            mapping: r.mapping,
            page,
            page_mapping: r.page_mapping,
            trunc: r.op != 0,
        },
        RecordKind::DeleteEntry => EventBody::DeleteEntry {
            mapping: r.mapping,
            index: r.a as u64,
        },
    };
    Ok(Event {
        ts_ns: r.ts_ns,
        hook: HookName(hook),
        task: Task {
            pid: r.pid,
            tid: r.tid,
            comm: Comm(r.comm),
            cpu: r.cpu,
        },
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(r: &Record) -> Vec<u8> {
        // SAFETY: Record is plain old data.
        unsafe { std::slice::from_raw_parts((r as *const Record).cast::<u8>(), Record::SIZE) }
            .to_vec()
    }

    #[test]
    fn decodes_a_punch_hole_record() {
        let mut r = Record::zeroed();
        r.kind = RecordKind::FsOp as u16;
        r.hook = HookId::Ext4PunchHole as u16;
        r.op = FsOp::PunchHole as u32;
        r.pid = 42;
        r.tid = 43;
        r.comm[..4].copy_from_slice(b"test");
        r.ino = 12;
        r.a = 4096;
        r.b = 8192;
        let ev = decode(&bytes(&r)).expect("decodes");
        assert_eq!(ev.task.pid, 42);
        assert_eq!(ev.task.comm.as_str(), "test");
        assert_eq!(
            ev.body,
            EventBody::FileOp {
                op: crate::event::FileOp::PunchHole,
                dev: 0,
                ino: 12,
                offset: 4096,
                len: 8192
            }
        );
    }

    #[test]
    fn rejects_bad_records_without_panicking() {
        assert_eq!(decode(&[0u8; 3]), Err(DecodeError::Size(3)));
        let mut r = Record::zeroed();
        r.kind = 99;
        assert_eq!(decode(&bytes(&r)), Err(DecodeError::Kind(99)));
        r.kind = RecordKind::WakeUp as u16;
        r.hook = 999;
        assert_eq!(decode(&bytes(&r)), Err(DecodeError::Hook(999)));
    }

    #[test]
    fn events_round_trip_through_json() {
        let mut r = Record::zeroed();
        r.kind = RecordKind::BusyScan as u16;
        r.hook = HookId::BusyScan as u16;
        r.page = 0xffffea0000400000;
        r.pfn = 0x10000;
        r.refcount = 2;
        let ev = decode(&bytes(&r)).expect("decodes");
        let json = serde_json::to_string(&ev).expect("serialises");
        let back: Event = serde_json::from_str(&json).expect("parses");
        assert_eq!(ev, back);
    }
}
