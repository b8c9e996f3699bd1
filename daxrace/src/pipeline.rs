//! decode -> detect -> sinks, the same for live tracing and replay. Events go
//! in batches; findings come out to whichever sinks are configured.
use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Arc, Mutex},
};

use crate::{
    detect::{Detector, DetectorConfig, Finding, FindingKind},
    event::Event,
    sink::metrics::Metrics,
    trace_file::{TraceFileError, TraceLine, TraceWriter},
};

/// Where events and findings go.
#[derive(Default)]
pub struct Sinks {
    /// Print each event as a human line (stdout).
    pub print_events: bool,
    /// Print each finding as it happens (stderr, so stdout stays the
    /// command's under `trace`).
    pub print_findings: bool,
    pub json: Option<TraceWriter>,
    pub metrics: Option<Arc<Mutex<Metrics>>>,
}

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
        if batch.is_empty() {
            return Ok(());
        }
        let metrics = self.sinks.metrics.clone();
        let mut metrics = metrics.as_ref().map(|m| m.lock().expect("metrics lock"));
        let stdout = std::io::stdout();
        let mut stdout = self.sinks.print_events.then(|| stdout.lock());
        for ev in batch {
            self.events += 1;
            *self.events_by_hook.entry(ev.hook.as_str()).or_default() += 1;
            if let Some(m) = metrics.as_deref_mut() {
                m.observe_event(ev);
            }
            if let Some(out) = stdout.as_mut() {
                let _ = writeln!(out, "{ev}");
            }
            if let Some(j) = self.sinks.json.as_mut() {
                j.write_event(ev)?;
            }
            self.detector.observe(ev, &mut self.scratch);
            if !self.scratch.is_empty() {
                drop(stdout.take());
                self.emit(metrics.as_deref())?;
            }
        }
        Ok(())
    }

    /// Time passed with no events (live only): waiters may now be stranded.
    pub fn tick(&mut self, now_ns: u64) -> Result<(), TraceFileError> {
        self.detector.advance(now_ns, &mut self.scratch);
        self.emit_locked()
    }

    /// End of stream: report what is still open.
    pub fn finish(&mut self) -> Result<(), TraceFileError> {
        self.detector.finish(&mut self.scratch);
        self.emit_locked()
    }

    fn emit_locked(&mut self) -> Result<(), TraceFileError> {
        if self.scratch.is_empty() {
            return Ok(());
        }
        let metrics = self.sinks.metrics.clone();
        let guard = metrics.as_ref().map(|m| m.lock().expect("metrics lock"));
        self.emit(guard.as_deref())
    }

    fn emit(&mut self, metrics: Option<&Metrics>) -> Result<(), TraceFileError> {
        for f in self.scratch.drain(..) {
            if self.sinks.print_findings {
                eprintln!("daxrace: FINDING {}", f.summary());
            }
            if let Some(m) = metrics {
                m.observe_finding(&f);
            }
            if let Some(j) = self.sinks.json.as_mut() {
                j.write(&TraceLine::Finding(Box::new(f.clone())))?;
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
        unrecorded: crate::sink::report::Unrecorded,
    ) -> String {
        crate::sink::report::render(&crate::sink::report::RunSummary {
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
