//! Throughput of the userspace pipeline on one core: ring-buffer bytes ->
//! `decode` -> `Detector::observe`, on a generated stream shaped like the
//! traced workloads (docs/kernels.md): mostly truncation-side records
//! (`dax_disassociate_entry`, `dax_delete_mapping_entry`) and page puts on
//! pages nobody watches, with break-layouts calls now and then that find a
//! pinned page, wait for it, and see it released and woken.
//!
//! `cargo bench -p daxrace --bench pipeline` (`DAXRACE_BENCH_EVENTS` sets the
//! stream length, default 2,000,000).
use std::hint::black_box;
use std::time::{Duration, Instant};

use daxrace::decode::decode;
use daxrace::detect::{Detector, DetectorConfig};
use daxrace::event::Event;
use daxrace_common::{FsKind, FsOp, HookId, Record, RecordKind};

const PASSES: usize = 5;
/// Nanoseconds between records: 20 M records/s of kernel time.
const GAP_NS: u64 = 50;
const MAPPINGS: u64 = 64;

/// A small deterministic generator (xorshift), so every run sees the same stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct StreamBuilder {
    rng: Rng,
    ts: u64,
    bytes: Vec<u8>,
    records: usize,
}

impl StreamBuilder {
    fn record(&mut self, kind: RecordKind, hook: HookId, tid: u32) -> Record {
        self.ts += GAP_NS;
        let mut r = Record::zeroed();
        r.kind = kind as u16;
        r.hook = hook as u16;
        r.ts_ns = self.ts;
        r.pid = tid;
        r.tid = tid;
        r.cpu = tid % 2;
        r.comm[..6].copy_from_slice(if tid < 2000 { b"fstest" } else { b"dioxfr" });
        r
    }

    fn push(&mut self, r: &Record) {
        // SAFETY: Record is #[repr(C)] plain old data without padding.
        let raw =
            unsafe { std::slice::from_raw_parts((r as *const Record).cast::<u8>(), Record::SIZE) };
        self.bytes.extend_from_slice(raw);
        self.records += 1;
    }

    fn mapping(&mut self) -> u64 {
        0xffff_8880_0100_0000 + self.rng.below(MAPPINGS) * 0x1000
    }

    fn page(r: &mut Record, pfn: u64, refcount: i32) {
        r.pfn = pfn;
        r.page = 0xffff_ea00_0000_0000 + pfn * 64;
        r.refcount = refcount;
    }

    /// One truncation-side or page-put record on an unwatched page.
    fn background(&mut self) {
        let tid = 1000 + self.rng.below(8) as u32;
        let pfn = 0x20_0000 + self.rng.below(1 << 20);
        let mapping = self.mapping();
        let r = match self.rng.below(100) {
            0..=44 => {
                let mut r = self.record(RecordKind::Disassociate, HookId::Disassociate, tid);
                r.mapping = mapping;
                r.page_mapping = mapping;
                r.op = u32::from(self.rng.below(10) != 0);
                Self::page(&mut r, pfn, 1);
                r
            }
            45..=84 => {
                let mut r = self.record(RecordKind::DeleteEntry, HookId::DeleteEntry, tid);
                r.mapping = mapping;
                r.a = self.rng.below(1 << 16) as i64;
                r
            }
            _ => {
                let mut r = self.record(RecordKind::PinDropped, HookId::PinDropped, 3000);
                Self::page(&mut r, pfn, 1025);
                r.refs = 1024;
                r
            }
        };
        self.push(&r);
    }

    /// A break-layouts call: a punch-hole context record, a busy scan that
    /// finds a pinned page, a wait, the pin's release and wake-up (by a
    /// direct-I/O task), a clean scan, the return. `busy` = false: clean at once.
    fn break_call(&mut self, busy: bool) {
        let tid = 1000 + self.rng.below(8) as u32;
        let mapping = self.mapping();
        let pfn = 0x10_0000 + self.rng.below(4096);
        let mut r = self.record(RecordKind::FsOp, HookId::Ext4PunchHole, tid);
        r.op = FsOp::PunchHole as u32;
        r.ino = mapping & 0xffff;
        r.b = 1 << 20;
        self.push(&r);
        let mut r = self.record(RecordKind::BreakEnter, HookId::Ext4Break, tid);
        r.op = FsKind::Ext4 as u32;
        r.mapping = mapping;
        r.ino = mapping & 0xffff;
        r.dev = (259 << 20) | 1;
        self.push(&r);
        if busy {
            let mut r = self.record(RecordKind::BusyScan, HookId::BusyScan, tid);
            r.mapping = mapping;
            Self::page(&mut r, pfn, 1025);
            self.push(&r);
            let mut r = self.record(RecordKind::WaitStart, HookId::WaitStart, tid);
            Self::page(&mut r, pfn, 1025);
            self.push(&r);
            for _ in 0..20 {
                self.background();
            }
            let mut r = self.record(RecordKind::PinDropped, HookId::PinDropped, 3001);
            Self::page(&mut r, pfn, 1025);
            r.refs = 1024;
            self.push(&r);
            let mut r = self.record(RecordKind::WakeUp, HookId::WakeUp, 3001);
            Self::page(&mut r, pfn, 1);
            self.push(&r);
        }
        let mut r = self.record(RecordKind::BusyScan, HookId::BusyScan, tid);
        r.mapping = mapping;
        self.push(&r);
        let mut r = self.record(RecordKind::BreakExit, HookId::Ext4Break, tid);
        r.op = FsKind::Ext4 as u32;
        self.push(&r);
    }
}

/// At least `n` records, ending between break-layouts calls: about one call
/// per 500 records, one in four finding a busy page.
fn generate(n: usize, seed: u64) -> Vec<u8> {
    let mut b = StreamBuilder {
        rng: Rng(seed),
        ts: 1_000_000_000,
        bytes: Vec::with_capacity((n + 64) * Record::SIZE),
        records: 0,
    };
    while b.records < n {
        if b.rng.below(500) == 0 {
            let busy = b.rng.below(4) == 0;
            b.break_call(busy);
        } else {
            b.background();
        }
    }
    b.bytes
}

fn config() -> DetectorConfig {
    DetectorConfig {
        pin_bias: 1024,
        ..DetectorConfig::with_idle_refcount(1)
    }
}

/// Best and median of the passes.
fn time(mut pass: impl FnMut() -> usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(PASSES);
    for _ in 0..PASSES {
        let t = Instant::now();
        black_box(pass());
        times.push(t.elapsed());
    }
    times.sort();
    (times[0], times[PASSES / 2])
}

fn report(what: &str, n: usize, (best, median): (Duration, Duration)) {
    let rate = |d: Duration| n as f64 / d.as_secs_f64() / 1e6;
    println!(
        "  {what:<16} {:>6.1} M events/s per core (median {:>5.1}), {:>5.1} ns/event",
        rate(best),
        rate(median),
        best.as_nanos() as f64 / n as f64
    );
}

/// Times decode, detect and both over `laps` passes of `bytes`; each lap is
/// shifted in time after the previous one, so the detector sees one long stream.
fn measure(title: &str, bytes: &[u8], laps: usize) {
    let chunks = || bytes.chunks_exact(Record::SIZE);
    let events: Vec<Event> = chunks()
        .map(|c| decode(c).expect("generated records decode"))
        .collect();
    let span = events.last().map_or(0, |e| e.ts_ns) - events[0].ts_ns + GAP_NS;
    let n = events.len() * laps;
    println!("{title}: {} records x {laps} laps", events.len());
    report(
        "decode",
        n,
        time(|| {
            let mut ok = 0;
            for _ in 0..laps {
                for c in chunks() {
                    ok += usize::from(black_box(decode(black_box(c))).is_ok());
                }
            }
            ok
        }),
    );
    report(
        "detect",
        n,
        time(|| {
            let mut d = Detector::new(config());
            let mut out = Vec::new();
            for lap in 0..laps as u64 {
                for e in &events {
                    let mut e = *black_box(e);
                    e.ts_ns += lap * span;
                    d.observe(&e, &mut out);
                }
            }
            out.len()
        }),
    );
    report(
        "decode + detect",
        n,
        time(|| {
            let mut d = Detector::new(config());
            let mut out = Vec::new();
            for lap in 0..laps as u64 {
                for c in chunks() {
                    if let Ok(mut e) = decode(black_box(c)) {
                        e.ts_ns += lap * span;
                        d.observe(&e, &mut out);
                    }
                }
            }
            out.len()
        }),
    );
}

fn main() {
    let n: usize = std::env::var("DAXRACE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let large = generate(n, 0x5eed_da7a_cafe_f00d);

    // The stream is realistic and race-free: check before timing it.
    let mut d = Detector::new(config());
    let mut findings = Vec::new();
    for c in large.chunks_exact(Record::SIZE) {
        d.observe(&decode(c).expect("decodes"), &mut findings);
    }
    d.finish(&mut findings);
    let c = d.coverage();
    println!(
        "stream: {} records: {} disassociate, {} delete-entry, {} pin drops, \
         {} break-layouts calls, {} busy scans with a page, {} wake-ups; {} findings",
        c.events,
        c.disassociations,
        c.delete_entries,
        c.pin_drops,
        c.breaks_started.total(),
        c.busy_scans_with_page,
        c.wake_ups,
        findings.len()
    );
    assert!(
        findings.is_empty(),
        "the generated stream has no race: {findings:#?}"
    );

    // As the live daemon reads it: a ring buffer's worth (4 MiB) at a time,
    // warm in cache.
    let ring = generate((4 << 20) / Record::SIZE, 0x0123_4567_89ab_cdef);
    let laps = n.div_ceil(ring.len() / Record::SIZE);
    measure("ring-buffer-sized stream (4 MiB, in cache)", &ring, laps);
    measure(
        &format!("large stream ({} MiB, from memory)", large.len() >> 20),
        &large,
        1,
    );
}
