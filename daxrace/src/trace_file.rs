//! The JSON lines trace format (version 1), written by `trace --json` and
//! `run --json`, read by `replay`.
//!
//! ```text
//! {"type":"header","format":"daxrace-trace","version":1,"kernel":"6.1.0-56-amd64",...}
//! {"type":"event","ts_ns":..,"hook":"busy_scan","task":{..},"kind":"busy_scan",..}
//! {"type":"finding","kind":"lost_wakeup",...}
//! {"type":"footer","events":1234,"lost_events":{"ringbuf_full":0},...}
//! ```
//! One object per line. The header comes first; events and findings follow in
//! the order they happened; the footer (counters, coverage) closes a complete
//! trace. A trace without a footer was cut short (the tracer was killed).
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    detect::{Coverage, DroppedState, Finding},
    event::Event,
};

pub const FORMAT: &str = "daxrace-trace";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub daxrace_version: String,
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    /// Refcount of an idle fsdax page on that kernel (1 before 6.15, 0 after).
    pub idle_refcount: i32,
    /// What one FOLL_PIN adds to a refcount there (0: plain references).
    pub pin_bias: i32,
    /// Kernel facts and the probe plan as attached (free-form, for readers).
    #[serde(default)]
    pub facts: serde_json::Value,
    #[serde(default)]
    pub probes: serde_json::Value,
    /// The traced command, for `trace`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Footer {
    pub events: u64,
    pub findings: u64,
    /// Events lost before the detector, by reason (ringbuf_full, ...).
    pub lost_events: BTreeMap<String, u64>,
    pub decode_errors: BTreeMap<String, u64>,
    /// Every in-kernel counter, by name.
    pub kernel_counters: BTreeMap<String, u64>,
    pub coverage: Coverage,
    pub dropped: DroppedState,
    /// The traced command's exit status, for `trace`.
    #[serde(default)]
    pub command_status: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TraceLine {
    Header(Box<Header>),
    Event(Event),
    Finding(Box<Finding>),
    Footer(Box<Footer>),
}

#[derive(Debug, thiserror::Error)]
pub enum TraceFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {what}")]
    Malformed {
        path: PathBuf,
        line: u64,
        what: String,
    },
    #[error("{path}: empty file, not a daxrace trace")]
    Empty { path: PathBuf },
}

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

/// A trace read back: the header, then lines as they come.
pub struct TraceReader {
    lines: std::io::Lines<BufReader<File>>,
    path: PathBuf,
    line_no: u64,
    pub header: Header,
}

impl TraceReader {
    pub fn open(path: &Path) -> Result<TraceReader, TraceFileError> {
        let f = File::open(path).map_err(|source| TraceFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut lines = BufReader::new(f).lines();
        let first = match lines.next() {
            None => {
                return Err(TraceFileError::Empty {
                    path: path.to_path_buf(),
                })
            }
            Some(l) => l.map_err(|source| TraceFileError::Io {
                path: path.to_path_buf(),
                source,
            })?,
        };
        let malformed = |what: String| TraceFileError::Malformed {
            path: path.to_path_buf(),
            line: 1,
            what,
        };
        let header = match serde_json::from_str::<TraceLine>(&first) {
            Ok(TraceLine::Header(h)) => *h,
            Ok(_) => return Err(malformed("the first line must be the trace header".into())),
            Err(e) => return Err(malformed(format!("not a daxrace trace header: {e}"))),
        };
        if header.format != FORMAT {
            return Err(malformed(format!(
                "format is `{}`, not `{FORMAT}`",
                header.format
            )));
        }
        if header.version != VERSION {
            return Err(malformed(format!(
                "trace format version {} is not supported (this daxrace reads version {VERSION})",
                header.version
            )));
        }
        Ok(TraceReader {
            lines,
            path: path.to_path_buf(),
            line_no: 1,
            header,
        })
    }

    /// The next line, or `None` at the end of the file.
    pub fn next_line(&mut self) -> Option<Result<TraceLine, TraceFileError>> {
        loop {
            let raw = self.lines.next()?;
            self.line_no += 1;
            let raw = match raw {
                Ok(r) => r,
                Err(source) => {
                    return Some(Err(TraceFileError::Io {
                        path: self.path.clone(),
                        source,
                    }))
                }
            };
            if raw.trim().is_empty() {
                continue;
            }
            return Some(serde_json::from_str::<TraceLine>(&raw).map_err(|e| {
                TraceFileError::Malformed {
                    path: self.path.clone(),
                    line: self.line_no,
                    what: e.to_string(),
                }
            }));
        }
    }

    pub fn line_no(&self) -> u64 {
        self.line_no
    }
}
