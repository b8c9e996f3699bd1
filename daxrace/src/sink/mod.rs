//! Where events and findings go. The pipeline hands every event, and every
//! finding as the detector establishes it, in order, to each [`Sink`]: the
//! terminal ([`terminal`]), the JSON lines trace ([`json_lines`]), and the
//! Prometheus registry ([`metrics`], served by [`http`]). [`summary`]
//! renders the end-of-run report of `trace` and `replay`.
pub mod http;
pub mod json_lines;
pub mod metrics;
pub mod summary;
pub mod terminal;

use crate::{
    detect::Finding,
    event::Event,
    trace_file::{Footer, TraceFileError},
};

/// One destination of the pipeline. Only the JSON lines sink can fail (its
/// file), hence the error type.
pub trait Sink {
    /// An event, before the detector sees it.
    fn event(&mut self, _ev: &Event) -> Result<(), TraceFileError> {
        Ok(())
    }

    /// A finding, as the detector establishes it.
    fn finding(&mut self, _finding: &Finding) -> Result<(), TraceFileError> {
        Ok(())
    }

    /// The end of the run, with the trace footer (counters, coverage).
    fn close(&mut self, _footer: &Footer) -> Result<(), TraceFileError> {
        Ok(())
    }
}
