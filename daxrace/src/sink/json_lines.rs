//! The JSON lines sink: writes the trace format of [`crate::trace_file`],
//! buffered (`run --json`, `trace --json`).
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::Sink;
use crate::{
    detect::Finding,
    event::Event,
    trace_file::{Footer, TraceFileError, TraceLine},
};

/// Writes trace lines, buffered.
pub struct TraceWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl TraceWriter {
    pub fn create(path: &Path) -> Result<TraceWriter, TraceFileError> {
        let f = File::create(path).map_err(|source| TraceFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(TraceWriter {
            out: BufWriter::with_capacity(1 << 16, f),
            path: path.to_path_buf(),
        })
    }

    fn io(&self, source: std::io::Error) -> TraceFileError {
        TraceFileError::Io {
            path: self.path.clone(),
            source,
        }
    }

    pub fn write(&mut self, line: &TraceLine) -> Result<(), TraceFileError> {
        serde_json::to_writer(&mut self.out, line)
            .map_err(|e| self.io(std::io::Error::other(e)))?;
        self.out.write_all(b"\n").map_err(|e| self.io(e))
    }

    /// Writes an event without cloning it into a [`TraceLine`].
    pub fn write_event(&mut self, ev: &Event) -> Result<(), TraceFileError> {
        #[derive(Serialize)]
        struct Tagged<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            #[serde(flatten)]
            ev: &'a Event,
        }
        serde_json::to_writer(&mut self.out, &Tagged { ty: "event", ev })
            .map_err(|e| self.io(std::io::Error::other(e)))?;
        self.out.write_all(b"\n").map_err(|e| self.io(e))
    }

    pub fn flush(&mut self) -> Result<(), TraceFileError> {
        self.out.flush().map_err(|e| self.io(e))
    }
}

impl Sink for TraceWriter {
    fn event(&mut self, ev: &Event) -> Result<(), TraceFileError> {
        self.write_event(ev)
    }

    fn finding(&mut self, finding: &Finding) -> Result<(), TraceFileError> {
        self.write(&TraceLine::Finding(Box::new(finding.clone())))
    }

    /// The footer closes a complete trace.
    fn close(&mut self, footer: &Footer) -> Result<(), TraceFileError> {
        self.write(&TraceLine::Footer(Box::new(footer.clone())))?;
        self.flush()
    }
}
