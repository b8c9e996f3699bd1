//! Bad input gets a clear one-line error or a counter, never a panic: the
//! record decoder and the trace reader under random input, and the CLI
//! refusing an unprivileged user, a busy port and an unknown hook.
use std::{io::Write, net::TcpListener, process::Command};

use daxrace::{decode, source::trace_reader::TraceReader};
use daxrace_common::Record;
use proptest::prelude::*;

const DAXRACE: &str = env!("CARGO_BIN_EXE_daxrace");

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Any bytes: an event or an error, never a panic.
    #[test]
    fn the_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::decode(&bytes);
    }

    /// Records of the right size with random fields (corrupted kernel data).
    #[test]
    fn corrupted_records_decode_or_fail_cleanly(
        bytes in proptest::collection::vec(any::<u8>(), Record::SIZE..=Record::SIZE),
    ) {
        match decode::decode(&bytes) {
            Ok(ev) => {
                // A decoded event must survive the trace format.
                let json = serde_json::to_string(&ev).expect("serialises");
                let back: daxrace::event::Event = serde_json::from_str(&json).expect("parses");
                prop_assert_eq!(back, ev);
            }
            Err(e) => prop_assert!(!e.reason().is_empty()),
        }
    }

    /// Random lines after a valid header: each line parses or is an error
    /// naming its line; nothing panics.
    #[test]
    fn the_trace_reader_never_panics(lines in proptest::collection::vec(".{0,120}", 0..8)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.jsonl");
        let mut f = std::fs::File::create(&path).expect("create");
        writeln!(f, r#"{{"type":"header","format":"daxrace-trace","version":1,"daxrace_version":"x","kernel":"k","idle_refcount":1,"pin_bias":0}}"#).expect("write");
        for l in &lines {
            writeln!(f, "{l}").expect("write");
        }
        drop(f);
        let mut r = TraceReader::open(&path).expect("valid header");
        while let Some(line) = r.next_line() {
            if let Err(e) = line {
                let msg = e.to_string();
                prop_assert!(msg.contains("t.jsonl:"), "error names the file and line: {}", msg);
            }
        }
    }
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0]
}

#[test]
fn an_unprivileged_user_is_told_to_use_sudo() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            DAXRACE,
            "probes",
        ])
        .output()
        .expect("setpriv (util-linux) runs daxrace as nobody");
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(std::str::from_utf8(&out.stderr).expect("utf8"));
    assert!(line.contains("needs root"), "{line}");
    assert!(line.contains("sudo"), "{line}");
}

#[test]
fn a_busy_metrics_port_is_a_one_line_error_before_anything_attaches() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = Command::new(DAXRACE)
        .args(["run", "--listen", &addr.to_string(), "--duration", "1"])
        .output()
        .expect("run daxrace");
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(std::str::from_utf8(&out.stderr).expect("utf8"));
    assert!(line.contains(&addr.to_string()), "{line}");
    assert!(line.contains("--listen"), "{line}");
}

#[test]
fn unknown_hooks_and_finding_kinds_list_the_valid_ones() {
    let out = Command::new(DAXRACE)
        .args(["probes", "--hooks", "busy_scan,nonsense"])
        .output()
        .expect("run daxrace");
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(std::str::from_utf8(&out.stderr).expect("utf8"));
    assert!(
        line.contains("nonsense") && line.contains("busy_scan"),
        "{line}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.jsonl");
    std::fs::write(&p, "").expect("write");
    let out = Command::new(DAXRACE)
        .args(["replay", "--fail-on", "races"])
        .arg(&p)
        .output()
        .expect("run daxrace");
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(std::str::from_utf8(&out.stderr).expect("utf8"));
    assert!(
        line.contains("`races`") && line.contains("truncate_while_pinned"),
        "{line}"
    );
}
