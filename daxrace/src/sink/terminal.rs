//! The terminal sink: each event as a human line on stdout (`--events`), and
//! each finding as it happens on stderr, so that stdout stays the traced
//! command's under `trace`.
use std::io::Write;

use super::Sink;
use crate::{detect::Finding, event::Event, trace_file::TraceFileError};

pub struct Terminal {
    /// Print each event (stdout).
    pub events: bool,
    /// Print each finding (stderr).
    pub findings: bool,
}

impl Sink for Terminal {
    fn event(&mut self, ev: &Event) -> Result<(), TraceFileError> {
        if self.events {
            let _ = writeln!(std::io::stdout().lock(), "{ev}");
        }
        Ok(())
    }

    fn finding(&mut self, finding: &Finding) -> Result<(), TraceFileError> {
        if self.findings {
            eprintln!("daxrace: FINDING {}", finding.summary());
        }
        Ok(())
    }
}
