//! decode -> detect -> sinks, the same for live tracing and replay. Events go
//! in batches; each event, and each finding the detector establishes, goes to
//! every sink in order.
use std::collections::BTreeMap;

use crate::{
    detect::{Detector, DetectorConfig, Finding, FindingKind},
    event::Event,
    sink::{
        summary::{render, RunSummary, Unrecorded},
        Sink,
    },
    trace_file::{Footer, TraceFileError},
};

/// Where events and findings go (see [`crate::sink`]).
pub type Sinks = Vec<Box<dyn Sink>>;

pub struct Pipeline {
    pub detector: Detector,
    pub sinks: Sinks,
    /// Every finding so far, for the end-of-run report (the detector reports
    /// each finding once, so this stays small).
    pub findings: Vec<Finding>,
    pub events_by_hook: BTreeMap<&'static str, u64>,
    pub events: u64,
    scratch: Vec<Finding>,
}

impl Pipeline {
    pub fn new(cfg: DetectorConfig, sinks: Sinks) -> Pipeline {
        Pipeline {
            detector: Detector::new(cfg),
            sinks,
            findings: Vec::new(),
            events_by_hook: BTreeMap::new(),
            events: 0,
            scratch: Vec::with_capacity(16),
        }
    }

    pub fn feed(&mut self, batch: &[Event]) -> Result<(), TraceFileError> {
        for ev in batch {
            self.events += 1;
            *self.events_by_hook.entry(ev.hook.as_str()).or_default() += 1;
            for sink in &mut self.sinks {
                sink.event(ev)?;
            }
            self.detector.observe(ev, &mut self.scratch);
            self.emit()?;
        }
        Ok(())
    }

    /// Time passed with no events (live only): waiters may now be stranded.
    pub fn tick(&mut self, now_ns: u64) -> Result<(), TraceFileError> {
        self.detector.advance(now_ns, &mut self.scratch);
        self.emit()
    }

    /// Findings established outside the detector (the start-up check of
    /// `run` and `trace`: waiters asleep before daxrace attached), to every
    /// sink like the detector's own.
    pub fn found_outside(&mut self, findings: Vec<Finding>) -> Result<(), TraceFileError> {
        self.scratch.extend(findings);
        self.emit()
    }

    /// End of stream: report what is still open.
    pub fn finish(&mut self) -> Result<(), TraceFileError> {
        self.detector.finish(&mut self.scratch);
        self.emit()
    }

    /// Closes every sink with the footer (after [`Pipeline::finish`]).
    pub fn close(&mut self, footer: &Footer) -> Result<(), TraceFileError> {
        for sink in &mut self.sinks {
            sink.close(footer)?;
        }
        Ok(())
    }

    fn emit(&mut self) -> Result<(), TraceFileError> {
        for f in self.scratch.drain(..) {
            for sink in &mut self.sinks {
                sink.finding(&f)?;
            }
            self.findings.push(f);
        }
        Ok(())
    }

    /// The end-of-run report (findings, coverage, counts, losses).
    pub fn report(
        &self,
        lost: &BTreeMap<String, u64>,
        decode_errors: u64,
        unrecorded: Unrecorded,
    ) -> String {
        render(&RunSummary {
            findings: &self.findings,
            coverage: self.detector.coverage(),
            dropped: &self.detector.dropped(),
            events_by_hook: &self.events_by_hook,
            lost,
            decode_errors,
            unrecorded,
        })
    }

    pub fn count_of(&self, kinds: &[FindingKind]) -> usize {
        self.findings
            .iter()
            .filter(|f| kinds.contains(&f.kind))
            .count()
    }
}
