//! The end-to-end monitoring test: a real Prometheus server on the host
//! scrapes `daxrace run` in a guest through a QEMU port forward, with the
//! project's alert rules loaded, while the pin-and-punch workload runs on
//! DAX ext4 and xfs.
//!
//! The guest runs under a host thread's control (`guest::boot_controlled`):
//! it starts daxrace, runs the workloads, then waits for the host to release
//! it before stopping daxrace with SIGINT. The host meanwhile runs Prometheus
//! and asks its HTTP API what it scraped. Every wait has a deadline; on any
//! failure the guest is killed and Prometheus always is.
use std::{
    collections::BTreeMap,
    fmt,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{
    guest::{self, Control, Fs},
    kernel,
};

/// daxrace's default metrics port, inside the guest.
const GUEST_PORT: u16 = 9712;
/// Seconds of pin-and-punch per filesystem.
const WORKLOAD_SECONDS: u64 = 8;
/// A bound, not an expectation: daxrace attaches in about 3 s of guest time
/// now, but verifying its BPF programs took minutes under TCG before.
const ATTACH_WAIT: Duration = Duration::from_secs(600);
/// Boot to DAX mounts: 7 to 30 s; the guest's own limit is 180 s.
const BOOT_WAIT: Duration = Duration::from_secs(200);
/// After attaching: the workloads plus a few scrapes and rule evaluations.
const METRICS_WAIT: Duration = Duration::from_secs(2 * WORKLOAD_SECONDS + 240);
/// From the release to the guest's poweroff (daxrace stops on SIGINT).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);
/// Hooks that must be attached and reported as such: the DAX core.
const CORE_HOOKS: &[&str] = &["busy_scan", "ext4_break", "xfs_break"];

/// Figures for the closing note.
pub struct PromReport {
    pub series: String,
    pub kernel: String,
    /// Host time from QEMU start to daxrace's "hooks attached".
    pub attached_after: Duration,
    pub total: Duration,
    /// `daxrace_events_total` per hook at the end.
    pub events: BTreeMap<String, f64>,
    /// `daxrace_findings_total` per kind/fs at the end.
    pub findings: BTreeMap<String, f64>,
    /// Hooks with `daxrace_probe_attached == 1`, and those at 0.
    pub hooks_attached: Vec<String>,
    pub hooks_missing: Vec<String>,
    /// Programs with a run count above zero, and the largest count.
    pub programs_run: usize,
    pub max_program_runs: f64,
    /// Alert rules loaded, all with health "ok".
    pub rules_ok: usize,
    /// Alerts pending or firing at the end (name, state).
    pub alerts: Vec<String>,
    /// Successful scrapes Prometheus recorded (`count_over_time(up[1h])`).
    pub scrapes: f64,
    pub daxrace_exit: Option<i32>,
    /// pin-punch exit status per directory (3: stalls, i.e. a sleeper was
    /// only woken by the workload's signal).
    pub workload_exits: Vec<String>,
    /// daxrace's own finding lines (at most a few), for the record.
    pub finding_lines: Vec<String>,
}

impl fmt::Display for PromReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ev: Vec<String> = self
            .events
            .iter()
            .map(|(h, n)| format!("{h}={n}"))
            .collect();
        write!(
            f,
            "prometheus e2e {}: ok in {:.0} s ({}; daxrace attached {:.0} s after QEMU start; {} scrapes): \
             events {}; findings {}; hooks attached {}/{}{}; {} BPF programs ran (max {} runs); {} alert rules health ok; \
             alerts {}; pin-punch exits {}; daxrace exit {}",
            self.series,
            self.total.as_secs_f64(),
            self.kernel,
            self.attached_after.as_secs_f64(),
            self.scrapes,
            ev.join(" "),
            if self.findings.values().all(|n| *n == 0.0) {
                "none".to_string()
            } else {
                self.findings
                    .iter()
                    .filter(|(_, n)| **n > 0.0)
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            self.hooks_attached.len(),
            self.hooks_attached.len() + self.hooks_missing.len(),
            if self.hooks_missing.is_empty() {
                String::new()
            } else {
                format!(" (missing: {})", self.hooks_missing.join(" "))
            },
            self.programs_run,
            self.max_program_runs,
            self.rules_ok,
            if self.alerts.is_empty() {
                "none".to_string()
            } else {
                self.alerts.join(" ")
            },
            self.workload_exits.join(" "),
            self.daxrace_exit
                .map_or_else(|| "unknown".to_string(), |c| c.to_string()),
        )?;
        for l in &self.finding_lines {
            write!(f, "\n    {l}")?;
        }
        Ok(())
    }
}

/// Boots `series` and checks what a real Prometheus gets from daxrace in it.
pub fn prometheus_e2e(series: &str) -> Result<PromReport> {
    let t0 = Instant::now();
    let k = kernel::fetch(series)?;
    println!(
        "--- prometheus e2e {series}: {} {} ({})",
        k.pkg, k.version, k.release
    );
    let (daxrace_port, prom_port) = free_ports()?;
    let work = kernel::cache_dir()
        .join("run")
        .join(format!("prometheus-{}", std::process::id()));
    let _work_guard = TempDir::create(&work)?;
    let mut prom = Prometheus::start(&work, daxrace_port, prom_port)?;

    let ctl = Control::default();
    let spec = guest::Spec {
        kernel: &k,
        fs: Fs::Both,
        script: guest_script(),
        // Bounds the guest by itself too; the host's deadlines come first.
        timeout: ATTACH_WAIT + METRICS_WAIT + SHUTDOWN_WAIT + Duration::from_secs(900),
        verbose: false,
        stream: false,
        forward: Some((daxrace_port, GUEST_PORT)),
    };
    let binaries = super::guest_binaries();
    let (host, guest, guest_ended_first) = std::thread::scope(|s| {
        let g = s.spawn(|| guest::boot_controlled(&spec, &binaries, &ctl));
        let guest_done = || g.is_finished();
        let host = host_side(&mut prom, &ctl, &guest_done, daxrace_port, t0);
        let guest_ended_first = g.is_finished();
        match &host {
            Ok(_) => {
                ctl.release();
                // The guest stops daxrace and powers off; bounded here, not
                // by the guest's own (long) limit.
                let t = Instant::now();
                while !g.is_finished() && t.elapsed() < SHUTDOWN_WAIT {
                    std::thread::sleep(Duration::from_millis(200));
                }
                if !g.is_finished() {
                    ctl.kill();
                }
            }
            Err(_) => ctl.kill(),
        }
        let guest = g
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the guest thread panicked")));
        (host, guest, guest_ended_first)
    });
    drop(prom);
    let show_output = |out: &[String]| {
        println!("--- prometheus e2e {series}: guest output:");
        for l in out {
            println!("  | {l}");
        }
    };
    let mut report = match host {
        Ok(r) => r,
        Err(e) => {
            // The guest was killed: show what it printed until then.
            show_output(&ctl.output());
            let e = match guest {
                // Its own failure (boot, QEMU) is the better message.
                Err(g) if guest_ended_first => e.context(format!("{g:#}")),
                _ => e,
            };
            return Err(e.context(format!("prometheus e2e on {series}")));
        }
    };
    let out = match guest {
        Ok(out) => out,
        Err(e) => {
            show_output(&ctl.output());
            return Err(e.context(format!("prometheus e2e on {series}: the guest failed")));
        }
    };
    for l in &out.dmesg {
        println!("  kernel: {l}");
    }
    let findings: Vec<&String> = out
        .output
        .iter()
        .filter(|l| l.contains("daxrace: FINDING"))
        .collect();
    report.finding_lines = findings
        .iter()
        .take(3)
        .map(|l| l.trim().trim_start_matches("daxrace: ").to_string())
        .collect();
    if findings.len() > 3 {
        report
            .finding_lines
            .push(format!("... {} finding lines in all", findings.len()));
    }
    report.daxrace_exit = marker(&out.output, "@@PROM daxrace-exit").and_then(|v| v.parse().ok());
    let mut failures = super::dmesg::unexpected_faults(&out.dmesg, &[]);
    if out.status != 0 {
        failures.push(format!("the guest script exited with {}", out.status));
    }
    // On SIGINT daxrace stops and exits 0.
    if report.daxrace_exit != Some(0) {
        failures.push(format!(
            "daxrace run exited with {:?} after SIGINT, expected 0",
            report.daxrace_exit
        ));
    }
    for l in out
        .output
        .iter()
        .filter(|l| l.starts_with("@@PROM pin-punch"))
    {
        if let Some(r) = l.strip_prefix("@@PROM pin-punch ") {
            report.workload_exits.push(r.replacen(' ', "=", 1));
        }
        // 0: clean, 3: stalls (a lost wake-up on kernels that have the bug);
        // 1 is a data mismatch, anything else a broken workload.
        if !l.ends_with(" 0") && !l.ends_with(" 3") {
            failures.push(format!("workload failed: {l}"));
        }
    }
    if !failures.is_empty() {
        show_output(&out.output);
        bail!("prometheus e2e on {series}: {}", failures.join("; "));
    }
    report.series = series.to_string();
    report.kernel = format!("{} {}", k.pkg, k.version);
    report.total = t0.elapsed();
    Ok(report)
}

/// The guest: daxrace in the background listening on all addresses (the
/// forward arrives on eth0), the workloads, then hold until the host is done.
fn guest_script() -> String {
    let attach = ATTACH_WAIT.as_secs();
    format!(
        r#"echo "== daxrace run --listen 0.0.0.0:{GUEST_PORT} --bpf-stats"
# sigdfl: a background job of this (non-interactive) shell would start with
# SIGINT ignored.
daxrace-workload sigdfl daxrace run --listen 0.0.0.0:{GUEST_PORT} --bpf-stats > /tmp/daxrace.out 2>&1 &
DR=$!
# daxrace's output on the console as it comes: it survives a kill by the host.
tail -f /tmp/daxrace.out | sed 's/^/  daxrace: /' &
t0=$(date +%s)
while kill -0 $DR 2>/dev/null && ! grep -q 'hooks attached' /tmp/daxrace.out; do
  [ $(( $(date +%s) - t0 )) -ge {attach} ] && break
  sleep 1
done
if ! grep -q 'hooks attached' /tmp/daxrace.out; then
  echo "@@PROM not-attached after $(( $(date +%s) - t0 )) s"
  sleep 1
  exit 1
fi
echo "@@PROM attached $(( $(date +%s) - t0 ))"
for d in $DAX_EXT4 $DAX_XFS; do
  daxrace-workload pin-punch --dir $d --seconds {WORKLOAD_SECONDS} --stall-timeout 3 --max-stalls 2
  echo "@@PROM pin-punch $d $?"
done
echo "@@PROM workload-done"
wait_host
echo "@@PROM released $?"
kill -INT $DR
i=0; while kill -0 $DR 2>/dev/null && [ $i -lt 120 ]; do sleep 0.25; i=$((i+1)); done
kill -0 $DR 2>/dev/null && {{ echo "@@PROM daxrace ignored SIGINT for 30 s"; kill -9 $DR; }}
wait $DR
rc=$?
sleep 1 # tail -f shows daxrace's last lines
echo "@@PROM daxrace-exit $rc"
"#
    )
}

/// Everything the host checks while the guest runs.
fn host_side(
    prom: &mut Prometheus,
    ctl: &Control,
    guest_done: &dyn Fn() -> bool,
    daxrace_port: u16,
    t0: Instant,
) -> Result<PromReport> {
    prom.wait_ready(Duration::from_secs(60))?;
    // daxrace must attach in the guest first: minutes under TCG.
    let deadline = Instant::now() + BOOT_WAIT + ATTACH_WAIT;
    loop {
        if ctl.saw("@@PROM attached") {
            break;
        }
        if ctl.saw("@@PROM not-attached") {
            bail!("daxrace did not attach its hooks in the guest (its output follows)");
        }
        if guest_done() {
            bail!("the guest ended before daxrace attached");
        }
        if Instant::now() > deadline {
            bail!(
                "daxrace had not attached within {} s of QEMU's start",
                (BOOT_WAIT + ATTACH_WAIT).as_secs()
            );
        }
        prom.check_alive()?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let attached_after = t0.elapsed();
    println!(
        "--- daxrace attached after {:.0} s; polling Prometheus",
        attached_after.as_secs_f64()
    );

    // Poll until every condition holds at once, keeping the latest reason
    // so that a timeout says what was still missing.
    let deadline = Instant::now() + METRICS_WAIT;
    let mut last;
    let mut state = loop {
        match observe(prom) {
            Ok(s) => match s.missing(ctl) {
                None => break s,
                Some(why) => last = why,
            },
            Err(e) => last = format!("{e:#}"),
        }
        if guest_done() {
            bail!("the guest ended while Prometheus was still waiting ({last})");
        }
        if Instant::now() > deadline {
            bail!(
                "Prometheus did not see everything within {} s of daxrace attaching: {last}",
                METRICS_WAIT.as_secs()
            );
        }
        prom.check_alive()?;
        std::thread::sleep(Duration::from_secs(2));
    };
    // One more round after the workload ended and two scrapes later, for
    // the final figures.
    std::thread::sleep(Duration::from_secs(3));
    if let Ok(s) = observe(prom) {
        if s.missing(ctl).is_none() {
            state = s;
        }
    }

    let mut failures: Vec<String> = state.false_alerts().into_iter().collect();
    // The exposition itself, fetched through the forward, must lint clean.
    let (code, body) = http_get(daxrace_port, "/metrics", Duration::from_secs(20))
        .context("fetching daxrace's /metrics through the forwarded port")?;
    if code != 200 {
        bail!("daxrace's /metrics answered HTTP {code}");
    }
    if let Err(e) = promtool_check_metrics(&body) {
        failures.push(format!("{e:#}"));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }

    let scrapes = query(prom, r#"count_over_time(up{job="daxrace"}[1h])"#)?
        .first()
        .map_or(0.0, |(_, v)| *v);
    Ok(PromReport {
        series: String::new(),
        kernel: String::new(),
        attached_after,
        total: Duration::ZERO,
        events: state.events,
        findings: state.findings,
        hooks_attached: state.hooks_attached,
        hooks_missing: state.hooks_missing,
        programs_run: state.program_runs.len(),
        max_program_runs: state.program_runs.iter().cloned().fold(0.0, f64::max),
        rules_ok: state.rules_ok,
        alerts: state
            .alerts
            .iter()
            .map(|(a, fs, st)| format!("{a}{{{fs}}}({st})"))
            .collect(),
        scrapes,
        daxrace_exit: None,
        workload_exits: Vec::new(),
        finding_lines: Vec::new(),
    })
}

/// One look at Prometheus.
#[derive(Default)]
struct Observed {
    up: Option<f64>,
    target_health: Option<String>,
    build_info: Option<BTreeMap<String, String>>,
    events: BTreeMap<String, f64>,
    findings: BTreeMap<String, f64>,
    hooks_attached: Vec<String>,
    hooks_missing: Vec<String>,
    program_runs: Vec<f64>,
    rules_ok: usize,
    rules_bad: Vec<String>,
    rules_expected: usize,
    rule_names: Vec<String>,
    /// Pending or firing alerts: (alertname, fs label, state).
    alerts: Vec<(String, String, String)>,
}

impl Observed {
    /// The alert rule for a finding kind: DaxraceLostWakeup for lost_wakeup.
    fn rule_for(&self, kind: &str) -> Option<&str> {
        let camel: String = kind
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        let name = format!("Daxrace{camel}");
        self.rule_names
            .iter()
            .find(|r| **r == name)
            .map(String::as_str)
    }

    /// Finding alerts pending or firing for a kind and fs that has no
    /// finding (false alarms an operator would be paged for), as one line.
    fn false_alerts(&self) -> Option<String> {
        let kinds: std::collections::BTreeSet<&str> = self
            .findings
            .keys()
            .filter_map(|k| k.split_once('/').map(|(k, _)| k))
            .collect();
        // alertname -> the fs labels it fires for without a finding
        let mut out: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (name, fs, state) in &self.alerts {
            let Some(kind) = kinds.iter().find(|k| self.rule_for(k) == Some(name)) else {
                continue;
            };
            let n = self
                .findings
                .get(&format!("{kind}/{fs}"))
                .copied()
                .unwrap_or(0.0);
            if n == 0.0 {
                out.entry(name).or_default().push(format!("{fs}:{state}"));
            }
        }
        if out.is_empty() {
            return None;
        }
        let list: Vec<String> = out
            .iter()
            .map(|(a, f)| format!("{a}{{{}}}", f.join(",")))
            .collect();
        Some(format!(
            "finding alerts active with daxrace_findings_total at 0 for their kind and fs (false alarms): {}",
            list.join(" ")
        ))
    }

    /// What is still missing, or None when the test's conditions all hold.
    fn missing(&self, ctl: &Control) -> Option<String> {
        if self.up != Some(1.0) {
            return Some(format!("up{{job=\"daxrace\"}} is {:?}, not 1", self.up));
        }
        if self.target_health.as_deref() != Some("up") {
            return Some(format!(
                "/api/v1/targets: the daxrace target is {:?}",
                self.target_health
            ));
        }
        if self.build_info.is_none() {
            return Some("no daxrace_build_info sample".into());
        }
        for h in CORE_HOOKS {
            if !self.hooks_attached.iter().any(|a| a == h) {
                return Some(format!("daxrace_probe_attached{{hook=\"{h}\"}} is not 1"));
            }
        }
        for h in CORE_HOOKS {
            if self.events.get(*h).copied().unwrap_or(0.0) <= 0.0 {
                return Some(format!(
                    "daxrace_events_total{{hook=\"{h}\"}} has no sample above 0 (seen: {:?})",
                    self.events
                ));
            }
        }
        if self.program_runs.is_empty() {
            return Some("no daxrace_bpf_program_run_count_total above 0".into());
        }
        if !self.rules_bad.is_empty() {
            return Some(format!(
                "alert rules not healthy: {}",
                self.rules_bad.join("; ")
            ));
        }
        if self.rules_ok != self.rules_expected {
            return Some(format!(
                "{} of {} alert rules loaded with health ok",
                self.rules_ok, self.rules_expected
            ));
        }
        // A finding must raise its alert (`for: 0m`, evaluated every second).
        for (key, n) in &self.findings {
            let Some((kind, fs)) = key.split_once('/') else {
                continue;
            };
            let Some(rule) = self.rule_for(kind) else {
                continue;
            };
            let firing = self
                .alerts
                .iter()
                .any(|(a, f, st)| a == rule && f == fs && st == "firing");
            if *n > 0.0 && !firing {
                return Some(format!(
                    "daxrace_findings_total{{kind=\"{kind}\",fs=\"{fs}\"}} is {n} but {rule}{{fs=\"{fs}\"}} is not firing"
                ));
            }
        }
        if !ctl.saw("@@PROM workload-done") {
            return Some("the workloads are still running".into());
        }
        None
    }
}

fn observe(prom: &Prometheus) -> Result<Observed> {
    let mut o = Observed {
        rules_expected: prom.rules_expected,
        ..Observed::default()
    };
    o.up = query(prom, r#"up{job="daxrace"}"#)?
        .first()
        .map(|(_, v)| *v);
    o.build_info = query(prom, "daxrace_build_info")?
        .into_iter()
        .next()
        .map(|(labels, _)| labels);
    for (l, v) in query(prom, "daxrace_events_total")? {
        if let Some(h) = l.get("hook") {
            o.events.insert(h.clone(), v);
        }
    }
    for (l, v) in query(prom, "daxrace_findings_total")? {
        let key = format!(
            "{}/{}",
            l.get("kind").map_or("?", String::as_str),
            l.get("fs").map_or("?", String::as_str)
        );
        o.findings.insert(key, v);
    }
    for (l, v) in query(prom, "daxrace_probe_attached")? {
        let h = l.get("hook").cloned().unwrap_or_default();
        if v == 1.0 {
            o.hooks_attached.push(h);
        } else {
            o.hooks_missing.push(h);
        }
    }
    o.hooks_attached.sort();
    o.hooks_attached.dedup();
    o.program_runs = query(prom, "daxrace_bpf_program_run_count_total > 0")?
        .into_iter()
        .map(|(_, v)| v)
        .collect();

    let targets = api(prom, "/api/v1/targets?state=active")?;
    o.target_health = targets["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["labels"]["job"] == "daxrace")
        .map(|t| match t["lastError"].as_str() {
            Some(e) if !e.is_empty() => format!("{} ({e})", t["health"].as_str().unwrap_or("?")),
            _ => t["health"].as_str().unwrap_or("?").to_string(),
        });

    let rules = api(prom, "/api/v1/rules")?;
    for g in rules["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("?");
            o.rule_names.push(name.to_string());
            match r["health"].as_str() {
                Some("ok") => o.rules_ok += 1,
                h => o.rules_bad.push(format!(
                    "{name}: health {} {}",
                    h.unwrap_or("?"),
                    r["lastError"].as_str().unwrap_or("")
                )),
            }
        }
    }
    let alerts = api(prom, "/api/v1/alerts")?;
    for a in alerts["alerts"].as_array().into_iter().flatten() {
        o.alerts.push((
            a["labels"]["alertname"].as_str().unwrap_or("?").to_string(),
            a["labels"]["fs"].as_str().unwrap_or("").to_string(),
            a["state"].as_str().unwrap_or("?").to_string(),
        ));
    }
    o.alerts.sort();
    o.alerts.dedup();
    Ok(o)
}

/// An instant query's samples: (labels, value).
fn query(prom: &Prometheus, q: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
    let data = api(prom, &format!("/api/v1/query?query={}", url_encode(q)))?;
    let mut out = Vec::new();
    for s in data["result"].as_array().into_iter().flatten() {
        let labels = s["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let v = s["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("query {q}: a sample without a value: {s}"))?;
        out.push((labels, v));
    }
    Ok(out)
}

/// A Prometheus API call's `data`, or its error.
fn api(prom: &Prometheus, path: &str) -> Result<Value> {
    let (code, body) = http_get(prom.port, path, Duration::from_secs(10))?;
    let v: Value = serde_json::from_str(&body)
        .with_context(|| format!("Prometheus {path}: HTTP {code}, not JSON"))?;
    if v["status"] != "success" {
        bail!(
            "Prometheus {path}: HTTP {code}: {} {}",
            v["errorType"].as_str().unwrap_or(""),
            v["error"].as_str().unwrap_or("")
        );
    }
    Ok(v["data"].clone())
}

fn promtool_check_metrics(exposition: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run promtool: run `cargo xtask setup` (Debian package prometheus)")?;
    let mut stdin = child.stdin.take().expect("piped");
    let body = exposition.to_string();
    // A writer thread: promtool may answer before reading everything.
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !text.trim().is_empty() {
        bail!(
            "promtool check metrics on daxrace's exposition ({}): {}",
            out.status,
            text.trim().replace('\n', "; ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Host plumbing

/// Two distinct free loopback ports. Both listeners are held while the
/// second is chosen; a port can still be taken between here and its use,
/// which shows as a clear bind error.
fn free_ports() -> Result<(u16, u16)> {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("no free loopback port")?;
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("no free loopback port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Removes the directory when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(p: &Path) -> Result<TempDir> {
        let _ = std::fs::remove_dir_all(p);
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p.to_path_buf()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Prometheus server, killed when dropped (and by the kernel if this
/// process dies first: PR_SET_PDEATHSIG).
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
    rules_expected: usize,
}

impl Prometheus {
    fn start(work: &Path, target_port: u16, port: u16) -> Result<Prometheus> {
        let rules = crate::setup::workspace_root().join("dashboards/prometheus/alerts.yml");
        let rules_text = std::fs::read_to_string(&rules)
            .with_context(|| format!("reading {}", rules.display()))?;
        let rules_expected = rules_text
            .lines()
            .filter(|l| l.trim_start().starts_with("- alert:"))
            .count();
        // 1 s scrapes and evaluations: the test lasts minutes, not hours.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: daxrace\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n",
            rules.display()
        );
        let config_file = work.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let log = work.join("prometheus.log");
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new("/usr/bin/prometheus");
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // before exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context(
            "cannot start /usr/bin/prometheus: run `cargo xtask setup` (Debian package prometheus)",
        )?;
        Ok(Prometheus {
            child,
            port,
            log,
            rules_expected,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..]
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "Prometheus exited ({st}); its log ends:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = http_get(self.port, "/-/ready", Duration::from_secs(5)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Prometheus was not ready within {} s; its log ends:\n{}",
                    limit.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET to 127.0.0.1 (nothing else is ever contacted): status and body.
/// HTTP/1.1 with `Connection: close`, so the body ends at EOF unless it
/// comes chunked (Prometheus chunks large answers).
fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(64 << 20)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path} from {addr}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET {path} from {addr}: no complete HTTP answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {path} from {addr}: bad status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body =
            dechunk(&body).with_context(|| format!("GET {path} from {addr}: bad chunked body"))?;
    }
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).context("chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).context("truncated chunk")?);
        b = b.get(size + 2..).context("truncated chunk")?;
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The rest of the first line starting with `prefix`.
fn marker(lines: &[String], prefix: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n").unwrap(),
            b"Wikipedia "
        );
        assert!(dechunk(b"9\r\nshort\r\n").is_err());
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            url_encode(r#"up{job="daxrace"} == 1"#),
            "up%7Bjob%3D%22daxrace%22%7D%20%3D%3D%201"
        );
    }

    #[test]
    fn guest_script_parses() {
        crate::vm::guest::tests::assert_sh_parses(&guest_script());
    }
}
