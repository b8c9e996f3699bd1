//! A model of the kernel protocol around fsdax layout breaking, as a test
//! fixture: direct-I/O tasks pin and unpin DAX pages, one truncating task per
//! file runs a break-layouts loop and then truncates. A scheduler driven by a
//! list of choices interleaves them; every step emits the events daxrace's
//! hooks would emit, with the same types and the same watched-page filter
//! (page puts, releases and wake-ups are only seen for pages a scan found busy).
//!
//! Three variants of the kernel:
//! - `Fixed`: the loop rescans until a scan returns no page (4.19+).
//! - `RetryBug`: the 2018 loop: `retry` is set only when the wait really
//!   slept, so a page that went idle between the scan and the wait's condition
//!   check ends the loop without a rescan, and a still-pinned page is truncated.
//! - `UnwokenRelease`: Debian 6.1's bio release drops references without the
//!   devmap put, so nothing wakes a waiter when the page goes idle; it sleeps
//!   until a signal (`BreakExit` -512).
//!
//! The model records the ground truth of what the kernel did; the detector
//! must find exactly that.

use std::collections::BTreeMap;

use daxrace::detect::{DetectorConfig, FindingKind, PAGE_MAPPING_DAX_SHARED};
use daxrace::event::{Comm, Event, EventBody, FileOp, Filesystem, PageRef, Task};

/// A signal reaches a stranded waiter this long after it went to sleep.
pub const SIGNAL_AFTER_NS: u64 = 5_000_000_000;
/// `page->mapping` of a page that belongs to some other file.
pub const FOREIGN_MAPPING: u64 = 0xffff_8880_dead_0000;
const PAGE_SIZE: i64 = 4096;
const STEP_LIMIT: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Fixed,
    RetryBug,
    UnwokenRelease,
}

/// How break-layouts calls look to the hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakShape {
    /// `ext4_break_layouts`: the whole loop in one call.
    Ext4Loop,
    /// `xfs_break_dax_layouts` before 6.15: one call per iteration of the
    /// caller's retry loop.
    XfsIterations,
    /// 6.15+: `ext4_break_layouts` around `dax_break_layout`, which loops and
    /// truncates before returning.
    Nested,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub variant: Variant,
    pub shape: BreakShape,
    /// Refcount of an idle page: 1 before 6.15, 0 from 6.15.
    pub idle: i32,
    /// What a pin adds: 1024 (FOLL_PIN, 6.12) or 0 for a plain reference (6.1).
    pub pin_bias: i32,
    pub files: usize,
    pub pages_per_file: usize,
    pub pinners: usize,
    pub ops_per_file: usize,
    pub pins_per_pinner: usize,
    /// Signals may also interrupt waits that are not stranded.
    pub interrupts: bool,
    /// The stream ends while stranded waiters still sleep (no signal comes).
    pub cut_at_end: bool,
    /// Non-truncating disassociations (invalidation) of possibly pinned pages.
    pub invalidations: bool,
    /// Odd pages are shared extents (`page->mapping` is the shared marker).
    pub shared_marker: bool,
    /// The n-th truncating disassociation sees a foreign `page->mapping`.
    pub mismatch_at: Option<usize>,
    pub stall_threshold_ns: u64,
}

impl ModelConfig {
    /// The detector settings for the kernel this configuration models.
    pub fn detector_config(&self) -> DetectorConfig {
        DetectorConfig {
            idle_refcount: self.idle,
            pin_bias: self.pin_bias,
            stall_threshold_ns: self.stall_threshold_ns,
            ..DetectorConfig::default()
        }
    }
}

/// What the kernel did, per kind: (task id, pfn) of each occurrence; pfn 0
/// for `stall`, which is about a call.
pub type Truth = BTreeMap<FindingKind, Vec<(u32, u64)>>;

pub struct ModelRun {
    pub events: Vec<Event>,
    pub truth: Truth,
}

// ---------------------------------------------------------------- events

pub fn event(ts_ns: u64, task: Task, body: EventBody) -> Event {
    Event::synthetic(ts_ns, task, body)
}

pub fn task(tid: u32, comm: &str) -> Task {
    Task {
        pid: tid,
        tid,
        comm: Comm::new(comm),
        cpu: tid % 4,
    }
}

pub fn page_ref(pfn: u64, refcount: i32) -> PageRef {
    PageRef {
        pfn,
        page: 0xffff_ea00_0000_0000 + pfn * 64,
        refcount,
    }
}

// ----------------------------------------------------------------- model

struct Page {
    file: usize,
    index: u64,
    pfn: u64,
    refcount: i32,
    /// A scan returned it: the page hooks report it from now on.
    watched: bool,
}

struct File {
    mapping: u64,
    dev: u32,
    ino: u64,
    /// The truncating task holds the layout lock: no new pins (faults block).
    locked: bool,
}

/// A direct-I/O task: pins the pages of one request (one or a few adjacent
/// pages of a file), then releases them one by one as the I/O completes.
struct Pinner {
    task: Task,
    holding: Vec<usize>,
    /// Scheduler steps until the I/O completes and the pin may be dropped:
    /// some pins are short, some outlast a whole break-layouts call.
    io_steps_left: usize,
    budget: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Idle,
    /// xfs: the caller's loop calls `xfs_break_dax_layouts` again.
    ReEnter,
    Scan,
    WaitInit(usize),
    /// The wait's condition check: idle already, or go to sleep.
    Check(usize),
    Asleep(usize),
    AfterWait {
        page: usize,
        slept: bool,
    },
    Exit(i64),
    Truncate(u64),
}

struct Truncator {
    task: Task,
    file: usize,
    ops_left: usize,
    step: Step,
    range: (u64, u64),
    last_busy: Option<usize>,
    blocked_since: Option<u64>,
    asleep_since: u64,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Pin(usize),
    Unpin(usize),
    Invalidate(usize),
    Truncator(usize),
    Interrupt(usize),
}

struct Model<'a> {
    cfg: &'a ModelConfig,
    choices: &'a [u32],
    cursor: usize,
    fallback: u64,
    now: u64,
    pages: Vec<Page>,
    files: Vec<File>,
    pinners: Vec<Pinner>,
    truncators: Vec<Truncator>,
    events: Vec<Event>,
    truth: Truth,
    truncations: usize,
}

/// Runs the model on one interleaving.
pub fn run(cfg: &ModelConfig, choices: &[u32]) -> ModelRun {
    let mut files = Vec::new();
    let mut pages = Vec::new();
    let mut truncators = Vec::new();
    for f in 0..cfg.files {
        files.push(File {
            mapping: 0xffff_8880_0010_0000 + (f as u64) * 0x1000,
            dev: (259 << 20) | f as u32,
            ino: 12 + f as u64,
            locked: false,
        });
        for i in 0..cfg.pages_per_file {
            pages.push(Page {
                file: f,
                index: i as u64,
                pfn: 0x10_0000 + (f as u64) * 0x200 + i as u64,
                refcount: cfg.idle,
                watched: false,
            });
        }
        truncators.push(Truncator {
            task: task(100 + f as u32, "punch"),
            file: f,
            ops_left: cfg.ops_per_file,
            step: Step::Idle,
            range: (0, 0),
            last_busy: None,
            blocked_since: None,
            asleep_since: 0,
        });
    }
    let pinners = (0..cfg.pinners)
        .map(|p| Pinner {
            task: task(200 + p as u32, "dio"),
            holding: Vec::new(),
            io_steps_left: 0,
            budget: cfg.pins_per_pinner,
        })
        .collect();
    let fallback = choices.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3)
    });
    let mut m = Model {
        cfg,
        choices,
        cursor: 0,
        fallback,
        now: 1_000_000_000,
        pages,
        files,
        pinners,
        truncators,
        events: Vec::new(),
        truth: Truth::new(),
        truncations: 0,
    };
    m.run();
    ModelRun {
        events: m.events,
        truth: m.truth,
    }
}

impl Model<'_> {
    /// A choice in 0..n: from the list, then from a generator seeded by it.
    fn pick(&mut self, n: usize) -> usize {
        let c = if self.cursor < self.choices.len() {
            u64::from(self.choices[self.cursor])
        } else {
            self.fallback ^= self.fallback << 13;
            self.fallback ^= self.fallback >> 7;
            self.fallback ^= self.fallback << 17;
            self.fallback >> 16
        };
        self.cursor += 1;
        (c % n.max(1) as u64) as usize
    }

    fn record(&mut self, kind: FindingKind, tid: u32, pfn: u64) {
        self.truth.entry(kind).or_default().push((tid, pfn));
    }

    fn emit(&mut self, task: Task, body: EventBody) -> u64 {
        let ts = self.now;
        self.events.push(event(ts, task, body));
        self.now += 1;
        ts
    }

    fn pin_step(&self) -> i32 {
        if self.cfg.pin_bias > 0 {
            self.cfg.pin_bias
        } else {
            1
        }
    }

    fn enabled(&mut self) -> Vec<Action> {
        let mut v = Vec::new();
        for p in 0..self.pinners.len() {
            let pinner = &self.pinners[p];
            if !pinner.holding.is_empty() {
                if pinner.io_steps_left == 0 {
                    v.push(Action::Unpin(p));
                }
            } else if pinner.budget > 0 {
                if self.pages.iter().any(|pg| !self.files[pg.file].locked) {
                    v.push(Action::Pin(p));
                }
                if self.cfg.invalidations {
                    v.push(Action::Invalidate(p));
                }
            }
        }
        for t in 0..self.truncators.len() {
            match self.truncators[t].step {
                Step::Idle if self.truncators[t].ops_left == 0 => {}
                Step::Asleep(_) => {
                    // Rare: a signal for some other reason.
                    if self.cfg.interrupts && self.pick(6) == 0 {
                        v.push(Action::Interrupt(t));
                    }
                }
                _ => v.push(Action::Truncator(t)),
            }
        }
        v
    }

    fn run(&mut self) {
        for _ in 0..STEP_LIMIT {
            let actions = self.enabled();
            if actions.is_empty() && self.pinners.iter().any(|p| p.io_steps_left > 0) {
                // Only I/O in flight: time passes.
                self.now += 10_000;
                self.tick();
                continue;
            }
            if actions.is_empty() {
                // Only sleepers left: they are stranded (nobody holds a pin
                // that could wake them). A signal comes at the deadline.
                let sleeper = (0..self.truncators.len())
                    .filter(|&t| matches!(self.truncators[t].step, Step::Asleep(_)))
                    .min_by_key(|&t| self.truncators[t].asleep_since);
                match sleeper {
                    None => return,
                    Some(_) if self.cfg.cut_at_end => break,
                    Some(t) => {
                        self.now = self
                            .now
                            .max(self.truncators[t].asleep_since + SIGNAL_AFTER_NS);
                        self.signal(t);
                        continue;
                    }
                }
            }
            let a = actions[self.pick(actions.len())];
            self.now += 1_000 + self.pick(50_000) as u64;
            self.tick();
            self.apply(a);
        }
        // The stream ends here: blocks still open last until its last event.
        let last = self.events.last().map_or(self.now, |e| e.ts_ns);
        for t in 0..self.truncators.len() {
            self.end_block(t, last);
        }
    }

    /// A signal wakes a sleeper, which returns -ERESTARTSYS at once: no
    /// other task runs in between (a release landing there would make the
    /// return look like the end of a lost wake-up).
    fn signal(&mut self, t: usize) {
        self.truncators[t].step = Step::Exit(-512);
        self.truncator_step(t);
    }

    /// Scheduler steps until the next page of a request is released.
    fn io_steps(&mut self) -> usize {
        [0, 0, 1, 3, 8, 16, 32][self.pick(7)]
    }

    fn tick(&mut self) {
        for p in &mut self.pinners {
            p.io_steps_left = p.io_steps_left.saturating_sub(1);
        }
    }

    fn apply(&mut self, a: Action) {
        match a {
            Action::Pin(p) => self.pin(p),
            Action::Unpin(p) => self.unpin(p),
            Action::Invalidate(p) => self.invalidate(p),
            Action::Truncator(t) => self.truncator_step(t),
            Action::Interrupt(t) => self.signal(t),
        }
    }

    fn pin(&mut self, p: usize) {
        let candidates: Vec<usize> = (0..self.pages.len())
            .filter(|&i| !self.files[self.pages[i].file].locked)
            .collect();
        let first = candidates[self.pick(candidates.len())];
        let len = 1 + self.pick(4);
        let file = self.pages[first].file;
        for i in first..(first + len).min(self.pages.len()) {
            if self.pages[i].file == file {
                self.pages[i].refcount += self.pin_step();
                self.pinners[p].holding.push(i);
            }
        }
        self.pinners[p].io_steps_left = self.io_steps();
        self.pinners[p].budget -= 1;
    }

    fn unpin(&mut self, p: usize) {
        if self.pinners[p].holding.is_empty() {
            return;
        }
        let i = self.pinners[p].holding.remove(0);
        self.pinners[p].io_steps_left = self.io_steps();
        let who = self.pinners[p].task;
        let step = self.pin_step();
        let unwoken = self.cfg.variant == Variant::UnwokenRelease && self.pick(2) == 0;
        let (pfn, watched, before) = (
            self.pages[i].pfn,
            self.pages[i].watched,
            self.pages[i].refcount,
        );
        let after = before - step;
        self.pages[i].refcount = after;
        if unwoken {
            // 6.1's bio release: a plain folio put, no devmap path, no wake-up.
            if watched {
                self.emit(
                    who,
                    EventBody::PageReleased {
                        page: page_ref(pfn, after),
                    },
                );
            }
            if after == self.cfg.idle {
                for t in 0..self.truncators.len() {
                    if self.truncators[t].step == Step::Asleep(i) {
                        // Asleep on an idle page that nobody will wake.
                        let tid = self.truncators[t].task.tid;
                        self.record(FindingKind::LostWakeup, tid, pfn);
                    }
                }
            }
        } else {
            if watched {
                self.emit(
                    who,
                    EventBody::PinDropped {
                        page: page_ref(pfn, before),
                        refs: step as u32,
                    },
                );
            }
            if after == self.cfg.idle {
                if watched {
                    self.emit(
                        who,
                        EventBody::WakeUp {
                            page: page_ref(pfn, after),
                        },
                    );
                }
                for t in 0..self.truncators.len() {
                    if self.truncators[t].step == Step::Asleep(i) {
                        self.truncators[t].step = Step::AfterWait {
                            page: i,
                            slept: true,
                        };
                    }
                }
            }
        }
    }

    fn invalidate(&mut self, p: usize) {
        self.pinners[p].budget -= 1;
        let i = self.pick(self.pages.len());
        let mapping = self.files[self.pages[i].file].mapping;
        let page = page_ref(self.pages[i].pfn, self.pages[i].refcount);
        self.emit(
            self.pinners[p].task,
            EventBody::Disassociate {
                mapping,
                page,
                page_mapping: mapping,
                trunc: false,
            },
        );
    }

    /// The call stops being blocked on busy pages at `end_ns`.
    fn end_block(&mut self, t: usize, end_ns: u64) {
        if let Some(since) = self.truncators[t].blocked_since.take() {
            if end_ns - since > self.cfg.stall_threshold_ns {
                let tid = self.truncators[t].task.tid;
                self.record(FindingKind::Stall, tid, 0);
            }
        }
    }

    fn enter_bodies(&self, t: usize) -> Vec<EventBody> {
        let f = &self.files[self.truncators[t].file];
        let body = |fs| EventBody::BreakEnter {
            fs,
            dev: f.dev,
            ino: f.ino,
            mapping: f.mapping,
        };
        match self.cfg.shape {
            BreakShape::Ext4Loop => vec![body(Filesystem::Ext4)],
            BreakShape::XfsIterations => vec![body(Filesystem::Xfs)],
            BreakShape::Nested => vec![body(Filesystem::Ext4), body(Filesystem::Generic)],
        }
    }

    fn exit_bodies(&self, ret: i64) -> Vec<EventBody> {
        let body = |fs| EventBody::BreakExit { fs, ret };
        match self.cfg.shape {
            BreakShape::Ext4Loop => vec![body(Filesystem::Ext4)],
            BreakShape::XfsIterations => vec![body(Filesystem::Xfs)],
            BreakShape::Nested => vec![body(Filesystem::Generic), body(Filesystem::Ext4)],
        }
    }

    fn op_done(&mut self, t: usize) {
        let tr = &mut self.truncators[t];
        tr.ops_left -= 1;
        tr.step = Step::Idle;
        tr.last_busy = None;
        self.files[tr.file].locked = false;
    }

    /// The loop ended after a busy scan without rescanning (the retry bug).
    fn loop_ended_dirty(&mut self, t: usize) {
        let tid = self.truncators[t].task.tid;
        let last = self.truncators[t]
            .last_busy
            .expect("a busy scan came first");
        let pfn = self.pages[last].pfn;
        self.record(FindingKind::BreakWithoutCleanScan, tid, pfn);
    }

    fn truncator_step(&mut self, t: usize) {
        let who = self.truncators[t].task;
        let file = self.truncators[t].file;
        let mapping = self.files[file].mapping;
        let idle = self.cfg.idle;
        match self.truncators[t].step {
            Step::Idle => {
                self.files[file].locked = true;
                let n = self.cfg.pages_per_file as u64;
                // Half the operations cover the whole file (truncate), half a
                // random range (punch hole).
                let (lo, hi) = if self.pick(2) == 0 {
                    (0, n - 1)
                } else {
                    let lo = self.pick(n as usize) as u64;
                    (lo, lo + self.pick((n - lo) as usize) as u64)
                };
                let f = &self.files[file];
                let op = EventBody::FileOp {
                    op: FileOp::PunchHole,
                    dev: f.dev,
                    ino: f.ino,
                    offset: lo as i64 * PAGE_SIZE,
                    len: (hi - lo + 1) as i64 * PAGE_SIZE,
                };
                self.emit(who, op);
                for body in self.enter_bodies(t) {
                    self.emit(who, body);
                }
                let tr = &mut self.truncators[t];
                tr.range = (lo, hi);
                tr.step = Step::Scan;
                tr.last_busy = None;
            }
            Step::ReEnter => {
                for body in self.enter_bodies(t) {
                    self.emit(who, body);
                }
                self.truncators[t].step = Step::Scan;
            }
            Step::Scan => {
                let (lo, hi) = self.truncators[t].range;
                let busy = (0..self.pages.len()).find(|&i| {
                    let p = &self.pages[i];
                    p.file == file && (lo..=hi).contains(&p.index) && p.refcount > idle
                });
                let found = busy.map(|i| page_ref(self.pages[i].pfn, self.pages[i].refcount));
                let ts = self.emit(
                    who,
                    EventBody::BusyScan {
                        mapping,
                        start: lo as i64 * PAGE_SIZE,
                        end: (hi + 1) as i64 * PAGE_SIZE - 1,
                        page: found,
                    },
                );
                match busy {
                    Some(i) => {
                        self.pages[i].watched = true;
                        let tr = &mut self.truncators[t];
                        tr.last_busy = Some(i);
                        tr.blocked_since.get_or_insert(ts);
                        tr.step = Step::WaitInit(i);
                    }
                    None => {
                        self.end_block(t, ts);
                        let tr = &mut self.truncators[t];
                        tr.last_busy = None;
                        tr.step = match self.cfg.shape {
                            // dax_break_layout truncates before it returns.
                            BreakShape::Nested => Step::Truncate(lo),
                            _ => Step::Exit(0),
                        };
                    }
                }
            }
            Step::WaitInit(i) => {
                let page = page_ref(self.pages[i].pfn, self.pages[i].refcount);
                self.emit(who, EventBody::WaitStart { page });
                self.truncators[t].step = Step::Check(i);
            }
            Step::Check(i) => {
                let tr = &mut self.truncators[t];
                if self.pages[i].refcount == idle {
                    tr.step = Step::AfterWait {
                        page: i,
                        slept: false,
                    };
                } else {
                    tr.step = Step::Asleep(i);
                    tr.asleep_since = self.now;
                }
            }
            Step::Asleep(_) => unreachable!("sleepers are not scheduled"),
            Step::AfterWait { slept, .. } => {
                let retry = match self.cfg.variant {
                    Variant::RetryBug => slept,
                    _ => true,
                };
                match (self.cfg.shape, retry) {
                    (BreakShape::XfsIterations, _) => {
                        // xfs_break_dax_layouts returns 0; its caller loops on `retry`.
                        let ts = self.emit(
                            who,
                            EventBody::BreakExit {
                                fs: Filesystem::Xfs,
                                ret: 0,
                            },
                        );
                        if retry {
                            self.truncators[t].step = Step::ReEnter;
                        } else {
                            self.loop_ended_dirty(t);
                            self.end_block(t, ts);
                            let lo = self.truncators[t].range.0;
                            self.truncators[t].step = Step::Truncate(lo);
                        }
                    }
                    (_, true) => self.truncators[t].step = Step::Scan,
                    (BreakShape::Ext4Loop, false) => {
                        self.loop_ended_dirty(t);
                        self.truncators[t].step = Step::Exit(0);
                    }
                    (BreakShape::Nested, false) => {
                        self.loop_ended_dirty(t);
                        let lo = self.truncators[t].range.0;
                        self.truncators[t].step = Step::Truncate(lo);
                    }
                }
            }
            Step::Exit(ret) => {
                let mut ts = self.now;
                for body in self.exit_bodies(ret) {
                    ts = self.emit(who, body);
                }
                self.end_block(t, ts);
                let lo = self.truncators[t].range.0;
                match (ret, self.cfg.shape) {
                    (0, BreakShape::Ext4Loop | BreakShape::XfsIterations) => {
                        self.truncators[t].step = Step::Truncate(lo);
                    }
                    _ => self.op_done(t),
                }
            }
            Step::Truncate(index) => {
                let i = (0..self.pages.len())
                    .find(|&i| self.pages[i].file == file && self.pages[i].index == index)
                    .expect("page of the range");
                let (pfn, refcount) = (self.pages[i].pfn, self.pages[i].refcount);
                self.emit(who, EventBody::DeleteEntry { mapping, index });
                let page_mapping = if self.cfg.mismatch_at == Some(self.truncations) {
                    self.record(FindingKind::MappingMismatch, who.tid, pfn);
                    FOREIGN_MAPPING
                } else if self.cfg.shared_marker && index % 2 == 1 {
                    PAGE_MAPPING_DAX_SHARED
                } else {
                    mapping
                };
                self.truncations += 1;
                if refcount > idle {
                    self.record(FindingKind::TruncateWhilePinned, who.tid, pfn);
                }
                self.emit(
                    who,
                    EventBody::Disassociate {
                        mapping,
                        page: page_ref(pfn, refcount),
                        page_mapping,
                        trunc: true,
                    },
                );
                let hi = self.truncators[t].range.1;
                if index < hi {
                    self.truncators[t].step = Step::Truncate(index + 1);
                } else if self.cfg.shape == BreakShape::Nested {
                    self.truncators[t].step = Step::Exit(0);
                } else {
                    self.op_done(t);
                }
            }
        }
    }
}
