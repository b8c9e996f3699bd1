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
//!
//! This module is the format; [`crate::sink::json_lines`] writes it and
//! [`crate::source::trace_reader`] reads it back.
use std::{collections::BTreeMap, path::PathBuf};

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
