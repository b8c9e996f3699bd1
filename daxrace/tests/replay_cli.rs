//! `daxrace replay` end to end, through the real binary: a trace of a model
//! run with the 2018 `retry` bug replays to the model's findings and exit
//! code 10; the fixed kernel's trace exits 0; malformed files get one-line
//! errors that name the line, and exit 2.
#[allow(dead_code)] // shared with detector_model.rs, which uses all of it
mod model;

use std::{path::Path, process::Command};

use daxrace::{
    detect::{Detector, FindingKind},
    sink::json_lines::TraceWriter,
    trace_file::{Footer, Header, TraceLine, FORMAT, VERSION},
};
use model::{BreakShape, ModelConfig, Variant};

const DAXRACE: &str = env!("CARGO_BIN_EXE_daxrace");

fn config(variant: Variant) -> ModelConfig {
    ModelConfig {
        variant,
        shape: BreakShape::Ext4Loop,
        idle: 1,
        pin_bias: 0,
        files: 2,
        pages_per_file: 4,
        pinners: 2,
        ops_per_file: 6,
        pins_per_pinner: 6,
        interrupts: false,
        cut_at_end: false,
        invalidations: false,
        shared_marker: false,
        mismatch_at: None,
        stall_threshold_ns: 60_000_000_000,
    }
}

/// Deterministic choices for the model's scheduler (a small LCG per seed).
fn choices(seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..200)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u32
        })
        .collect()
}

/// Writes a complete trace of a model run, findings included as the live
/// tracer would record them.
fn write_trace(path: &Path, cfg: &ModelConfig, events: &[daxrace::event::Event]) {
    let mut w = TraceWriter::create(path).expect("create trace");
    w.write(&TraceLine::Header(Box::new(Header {
        format: FORMAT.into(),
        version: VERSION,
        daxrace_version: "test".into(),
        kernel: "model".into(),
        idle_refcount: cfg.idle,
        pin_bias: cfg.pin_bias,
        facts: serde_json::Value::Null,
        probes: serde_json::Value::Null,
        command: None,
    })))
    .expect("header");
    let mut d = Detector::new(cfg.detector_config());
    let mut found = Vec::new();
    for ev in events {
        w.write_event(ev).expect("event");
        d.observe(ev, &mut found);
        for f in found.drain(..) {
            w.write(&TraceLine::Finding(Box::new(f))).expect("finding");
        }
    }
    d.finish(&mut found);
    for f in found.drain(..) {
        w.write(&TraceLine::Finding(Box::new(f))).expect("finding");
    }
    w.write(&TraceLine::Footer(Box::new(Footer {
        events: events.len() as u64,
        coverage: *d.coverage(),
        ..Footer::default()
    })))
    .expect("footer");
    w.flush().expect("flush");
}

fn replay(path: &Path) -> (i32, String) {
    let out = Command::new(DAXRACE)
        .arg("replay")
        .arg(path)
        .output()
        .expect("run daxrace replay");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_retry_bug_trace_replays_to_the_models_findings_and_exit_10() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Find a schedule in which the 2018 loop really truncated a pinned page.
    let cfg = config(Variant::RetryBug);
    let (run, seed) = (1..500u64)
        .map(|seed| (model::run(&cfg, &choices(seed)), seed))
        .find(|(run, _)| run.truth.contains_key(&FindingKind::TruncateWhilePinned))
        .expect("some schedule of the retry-bug model truncates a pinned page");
    let path = dir.path().join("retry.jsonl");
    write_trace(&path, &cfg, &run.events);
    let (code, stderr) = replay(&path);
    assert_eq!(
        code, 10,
        "seed {seed}: replay should fail the run:\n{stderr}"
    );
    for kind in run.truth.keys() {
        assert!(
            stderr.contains(&format!("{}:", kind.as_str())),
            "seed {seed}: the model did {} but replay did not report it:\n{stderr}",
            kind.as_str()
        );
    }
    assert!(
        stderr.contains("replay agrees with the recording"),
        "{stderr}"
    );
    assert!(stderr.contains("the race window was reached"), "{stderr}");
}

#[test]
fn a_start_check_finding_carries_over_and_fails_the_replay() {
    // A trace of a clean run that began beside a waiter already stranded:
    // the start-up check's finding (seen_at_start) is recorded after the
    // header. Replay cannot re-derive it from events, so it carries it.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(Variant::Fixed);
    let run = model::run(&cfg, &choices(7));
    let path = dir.path().join("start.jsonl");
    write_trace(&path, &cfg, &run.events);
    let text = std::fs::read_to_string(&path).expect("read back");
    let (header, rest) = text.split_once('\n').expect("a header line");
    let f = daxrace::detect::Finding::seen_at_start(
        5_000_000_000,
        daxrace::event::Filesystem::Ext4,
        259 << 20,
        12,
        0xffff_8880_0400_0000,
        0x48100,
        1,
        None,
        0,
        daxrace::event::Task {
            pid: 157,
            tid: 160,
            comm: daxrace::event::Comm::new("pin-punch"),
            cpu: 0,
        },
        Some(1_500_000_000),
    );
    let line = serde_json::to_string(&TraceLine::Finding(Box::new(f))).expect("serializes");
    std::fs::write(&path, format!("{header}\n{line}\n{rest}")).expect("rewrite");
    let (code, stderr) = replay(&path);
    assert_eq!(code, 10, "{stderr}");
    assert!(
        stderr.contains("already asleep when daxrace started"),
        "{stderr}"
    );
    assert!(
        stderr.contains("replay agrees with the recording"),
        "{stderr}"
    );
}

#[test]
fn a_fixed_kernel_trace_replays_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(Variant::Fixed);
    let run = model::run(&cfg, &choices(7));
    let path = dir.path().join("fixed.jsonl");
    write_trace(&path, &cfg, &run.events);
    let (code, stderr) = replay(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("findings: none"), "{stderr}");
}

#[test]
fn malformed_traces_get_one_line_errors_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(Variant::Fixed);
    let run = model::run(&cfg, &choices(3));
    let good = dir.path().join("good.jsonl");
    write_trace(&good, &cfg, &run.events);
    let text = std::fs::read_to_string(&good).expect("read");
    let lines: Vec<&str> = text.lines().collect();

    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "empty file"),
        ("not json", "hello\n".into(), ":1:"),
        (
            "no header",
            format!("{}\n", lines[1]),
            "the first line must be the trace header",
        ),
        (
            "future version",
            lines[0].replace("\"version\":1", "\"version\":99") + "\n",
            "version 99 is not supported",
        ),
        (
            "bad event on line 3",
            format!(
                "{}\n{}\n{{\"type\":\"event\",\"ts_ns\":\"x\"}}\n",
                lines[0], lines[1]
            ),
            ":3:",
        ),
        (
            "unknown hook",
            format!(
                "{}\n{}\n",
                lines[0],
                lines[1].replacen("\"hook\":\"", "\"hook\":\"nope_", 1)
            ),
            "unknown hook",
        ),
    ];
    for (name, content, want) in cases {
        let p = dir.path().join(format!("{}.jsonl", name.replace(' ', "_")));
        std::fs::write(&p, content).expect("write");
        let (code, stderr) = replay(&p);
        assert_eq!(code, 2, "{name}: exit code; stderr:\n{stderr}");
        assert!(stderr.contains(want), "{name}: want `{want}` in:\n{stderr}");
        let error_lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("daxrace: ") && !l.starts_with("daxrace: replaying"))
            .collect();
        assert_eq!(error_lines.len(), 1, "{name}: one error line:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }

    // Cut short (the tracer was killed): what is there replays, with a warning.
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n") + "\n").expect("write");
    let (code, stderr) = replay(&cut);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no footer"), "{stderr}");

    let missing = dir.path().join("does-not-exist.jsonl");
    let (code, stderr) = replay(&missing);
    assert_eq!(code, 2);
    assert!(stderr.contains("No such file"), "{stderr}");
}
