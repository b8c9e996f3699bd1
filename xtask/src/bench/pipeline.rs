//! The host pipeline: decode + detect throughput.
use std::time::Duration;

use anyhow::{bail, Result};

pub struct Pipeline {
    /// (stream, best, median) decode + detect M events/s per core.
    pub lines: Vec<(String, f64, f64)>,
}

/// Runs `cargo bench -p daxrace --bench pipeline` and takes its
/// "decode + detect" figures.
pub fn pipeline_bench() -> Result<Pipeline> {
    println!("bench: host pipeline: cargo bench -p daxrace --bench pipeline");
    let out = crate::vm::run_with_timeout(
        crate::setup::cargo()
            .current_dir(crate::setup::workspace_root())
            .args(["bench", "-p", "daxrace", "--bench", "pipeline"]),
        Duration::from_secs(1200),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cargo bench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let mut lines = Vec::new();
    let mut stream = String::new();
    for l in text.lines() {
        if !l.starts_with(' ') {
            stream = l.split(':').next().unwrap_or("").to_string();
        }
        // "  decode + detect    31.1 M events/s per core (median  22.4),  32.2 ns/event"
        if let Some(rest) = l.trim_start().strip_prefix("decode + detect") {
            let nums: Vec<f64> = rest
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter_map(|x| x.parse().ok())
                .collect();
            if nums.len() >= 2 {
                lines.push((stream.clone(), nums[0], nums[1]));
            }
        }
    }
    if lines.is_empty() {
        bail!("no \"decode + detect\" line in the benchmark's output");
    }
    Ok(Pipeline { lines })
}
