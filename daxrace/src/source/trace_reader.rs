//! Reads a recorded trace back (`replay`): checks the header, then hands out
//! the lines of [`crate::trace_file`] as they come.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use crate::trace_file::{Header, TraceFileError, TraceLine, FORMAT, VERSION};

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
