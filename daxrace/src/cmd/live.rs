//! The live loop shared by `run` and `trace`: ring buffer -> pipeline, a
//! once-a-second tick for time-based findings and counters, and a final
//! drain so nothing in flight is lost at shutdown.
use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use daxrace::{
    detect::DetectorConfig,
    load::tracer::{KernelCounters, Tracer},
    pipeline::{Pipeline, Sinks},
    sink::{json_lines::TraceWriter, metrics::Metrics, terminal::Terminal},
    source::ring::LiveSource,
    trace_file::{Footer, Header, TraceLine, FORMAT, VERSION},
};
use daxrace_common::{Counter, SweepFlags};

/// Runs a command's async body on a single-threaded runtime: the pipeline is
/// one consumer, and a second thread would only add locking.
pub fn block_on<F: Future<Output = Result<i32>>>(f: impl FnOnce() -> F) -> Result<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f())
}

/// A live run once attached: the tracer, the BPF statistics it keeps on,
/// its start-up time (ms) and the start-up check's findings.
pub struct Started {
    pub tracer: Tracer,
    pub stats: StatsGuard,
    pub startup_ms: u128,
    pub at_start: Vec<daxrace::detect::Finding>,
}

/// Loads and attaches, enables BPF stats if asked, makes the start-up check
/// (after attaching, so no wait falls between the two; before the
/// "hooks attached" line, which scripts take as the end of start-up), and
/// says what attached and how long it took.
pub fn attach(
    attach: &super::AttachArgs,
    evidence: daxrace::plan::Evidence,
    bpf_stats: bool,
    detect: &DetectArgs,
) -> Result<Started> {
    let started = std::time::Instant::now();
    let mut tracer = Tracer::load(&attach.options(evidence)?).context("cannot attach")?;
    let stats = enable_bpf_stats(&mut tracer, bpf_stats)?;
    super::print_warnings(&tracer);
    let at_start = detect.start_check();
    let (attached, standby) = daxrace::plan::attached_and_standby(&tracer.statuses);
    let startup_ms = started.elapsed().as_millis();
    eprintln!(
        "daxrace: {attached} of {} hooks attached{} on {} in {startup_ms} ms (`daxrace probes` shows which)",
        tracer.statuses.len(),
        if standby > 0 {
            format!(" ({standby} on standby: served by another hook, or by quiet mode when a page is busy)")
        } else {
            String::new()
        },
        tracer.kernel_release,
    );
    Ok(Started {
        tracer,
        stats,
        startup_ms,
        at_start,
    })
}

/// The sinks of a live run: findings on stderr, optional events on stdout,
/// optional JSON lines file (header written), optional metrics.
pub fn sinks(
    tracer: &Tracer,
    print_events: bool,
    json: Option<&std::path::Path>,
    metrics: Option<Arc<Mutex<Metrics>>>,
    command: Option<Vec<String>>,
) -> Result<Sinks> {
    let mut sinks: Sinks = vec![Box::new(Terminal {
        events: print_events,
        findings: true,
    })];
    if let Some(m) = metrics {
        sinks.push(Box::new(m));
    }
    if let Some(path) = json {
        let mut writer = TraceWriter::create(path)?;
        writer.write(&TraceLine::Header(Box::new(header(tracer, command))))?;
        sinks.push(Box::new(writer));
    }
    Ok(sinks)
}

/// How often the reader drains the ring without being woken, while records
/// come in. A quarter of a second keeps findings prompt; shorter cost the
/// traced host more wake-ups than the records were worth (`cargo xtask
/// bench`). A drain that finds nothing stops these until the once-a-second
/// tick finds records again: an idle daemon wakes once a second.
const DRAIN_EVERY: Duration = Duration::from_millis(250);

/// How far behind the clock the live detector judges time-based findings.
const TICK_LAG_NS: u64 = 250_000_000;

/// The detector pipeline for this kernel's facts, and the ring-buffer reader
/// that feeds it.
pub fn pipeline(
    tracer: &mut Tracer,
    detect: &DetectArgs,
    sinks: Sinks,
) -> Result<(Pipeline, LiveSource)> {
    let cfg = detect.config(
        tracer.facts.idle_refcount as i32,
        tracer.facts.pin_bias as i32,
    );
    let source = LiveSource::new(tracer.take_events()?).context("cannot poll the ring buffer")?;
    Ok((Pipeline::new(cfg, sinks), source))
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns()` reads.
pub use daxrace::kernel::waiters::clock_ns as monotonic_ns;

/// Detector limits, as flags.
#[derive(clap::Args, Clone, Debug)]
pub struct DetectArgs {
    /// Report a waiter as stranded (lost_wakeup) after its page has been idle this long (ms).
    #[arg(long, default_value_t = 1000)]
    pub lost_wakeup_grace_ms: u64,
    /// Report a break-layouts call blocked on pinned pages longer than this (ms) as a stall.
    #[arg(long, default_value_t = 5000)]
    pub stall_ms: u64,
    /// Most break-layouts calls tracked at once (older ones are dropped and counted).
    #[arg(long, default_value_t = 4096)]
    pub max_windows: usize,
    /// Most watched pages tracked at once (older ones are dropped and counted).
    #[arg(long, default_value_t = 65536)]
    pub max_pages: usize,
    /// Skip the start-up check for break-layouts waiters already asleep
    /// (`daxrace doctor`'s check, reported as `lost_wakeup` findings with
    /// `seen_at_start`).
    #[arg(long)]
    pub no_start_check: bool,
}

/// The confirming delay of the start-up check (`doctor --confirm-ms`'s default).
pub const START_CHECK_CONFIRM: Duration = Duration::from_millis(200);

impl DetectArgs {
    /// The start-up check's findings (none when turned off).
    pub fn start_check(&self) -> Vec<daxrace::detect::Finding> {
        if self.no_start_check {
            Vec::new()
        } else {
            super::doctor::start_check(START_CHECK_CONFIRM)
        }
    }

    pub fn config(&self, idle_refcount: i32, pin_bias: i32) -> DetectorConfig {
        DetectorConfig {
            idle_refcount,
            pin_bias,
            lost_wakeup_grace_ns: self.lost_wakeup_grace_ms * 1_000_000,
            stall_threshold_ns: self.stall_ms * 1_000_000,
            max_windows: self.max_windows,
            max_pages: self.max_pages,
            ..DetectorConfig::default()
        }
    }
}

pub fn header(tracer: &Tracer, command: Option<Vec<String>>) -> Header {
    Header {
        format: FORMAT.into(),
        version: VERSION,
        daxrace_version: env!("CARGO_PKG_VERSION").into(),
        kernel: tracer.kernel_release.clone(),
        idle_refcount: tracer.facts.idle_refcount as i32,
        pin_bias: tracer.facts.pin_bias as i32,
        facts: serde_json::to_value(&tracer.facts).unwrap_or_default(),
        probes: serde_json::to_value(&tracer.statuses).unwrap_or_default(),
        command,
    }
}

/// Kernel counters split into what was lost and what was filtered.
pub fn lost_events(k: &KernelCounters) -> BTreeMap<String, u64> {
    Counter::LOST
        .iter()
        .map(|&c| (c.as_str().to_string(), k.get(c)))
        .chain([(
            daxrace::load::tracer::RECURSION_MISSES.to_string(),
            k.recursion_misses,
        )])
        .collect()
}

pub fn footer(
    pipeline: &Pipeline,
    source: &LiveSource,
    counters: &KernelCounters,
    command_status: Option<i32>,
) -> Footer {
    Footer {
        events: pipeline.events,
        findings: pipeline.findings.len() as u64,
        lost_events: lost_events(counters),
        decode_errors: source
            .decode_errors
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        kernel_counters: Counter::ALL
            .iter()
            .map(|&c| (c.as_str().to_string(), counters.get(c)))
            .collect(),
        coverage: *pipeline.detector.coverage(),
        dropped: pipeline.detector.dropped(),
        command_status,
    }
}

/// Options for BPF run-time statistics (host-wide while enabled).
pub struct StatsGuard {
    _fd: Option<std::os::fd::OwnedFd>,
}

/// Enables BPF run-time statistics when asked (host-wide, for as long as the
/// guard lives), or uses them when an administrator already turned them on.
pub fn enable_bpf_stats(tracer: &mut Tracer, requested: bool) -> Result<StatsGuard> {
    let sysctl_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|v| v.trim() == "1");
    tracer.stats_enabled = requested || sysctl_on;
    if !requested {
        return Ok(StatsGuard { _fd: None });
    }
    let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("cannot enable BPF run-time statistics (needs CAP_SYS_ADMIN and kernel 5.8+; or set sysctl kernel.bpf_stats_enabled=1 and drop --bpf-stats)")?;
    Ok(StatsGuard { _fd: Some(fd) })
}

/// Peak resident memory of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Per-program runs and cost, like `bpftool prog show` would give them.
pub fn print_program_stats(tracer: &Tracer) {
    let stats = tracer.program_stats();
    if stats.is_empty() {
        return;
    }
    eprintln!(
        "daxrace: BPF program statistics:\n  {:<28} {:>12} {:>12} {:>10}",
        "program", "runs", "total ms", "ns/run"
    );
    let (mut runs, mut ns) = (0u64, 0u64);
    for (name, count, time_ns) in &stats {
        runs += count;
        ns += time_ns;
        eprintln!(
            "  {:<28} {:>12} {:>12.3} {:>10}",
            name,
            count,
            *time_ns as f64 / 1e6,
            time_ns.checked_div(*count).unwrap_or(0)
        );
    }
    eprintln!(
        "  {:<28} {:>12} {:>12.3} {:>10}",
        "all",
        runs,
        ns as f64 / 1e6,
        ns.checked_div(runs).unwrap_or(0)
    );
}

/// How long quiet mode keeps the page hooks after the last busy page was
/// found, once no break-layouts call is open: long enough that a punch
/// loop does not attach and detach them for every call, short enough that
/// the reads after it soon stop paying (`cargo xtask bench`).
const PAGE_HOOKS_LINGER: Duration = Duration::from_secs(2);

/// The page hooks (pin drop, bio release, wake-up) and the sweep of the
/// watched pages. Quiet mode attaches the hooks only while a busy page may
/// be watched, and the sweep reads the watched pages' refcounts for what
/// changed while they were off; in both modes the sweep ends stale watches
/// and closes the page gate the hooks return on when no page is watched.
#[derive(Default)]
struct PageHookSwitch {
    last_busy: Option<tokio::time::Instant>,
    /// Times the page hooks were attached (said once, then counted).
    attaches: u64,
    /// A page may be watched: a busy scan returned one since the last
    /// sweep that closed the gate. While false the tick does not sweep, so
    /// an idle daemon runs no program at all.
    gate_maybe_open: bool,
    /// The last sweep, for the backstop: a busy scan's record lost to a
    /// full ring leaves this false with a page watched.
    last_sweep: Option<tokio::time::Instant>,
}

/// How often the tick sweeps even when no busy page was reported.
const SWEEP_BACKSTOP: Duration = Duration::from_secs(30);
/// How often the tick sweeps to end watches while not sampling.
const SWEEP_ENDING_EVERY: Duration = Duration::from_secs(5);

impl PageHookSwitch {
    /// A busy page was found: the kernel side now watches it.
    fn after_batch(&mut self, tracer: &mut Tracer, batch: &[daxrace::event::Event]) {
        use daxrace::event::EventBody;
        if !batch
            .iter()
            .any(|e| matches!(e.body, EventBody::BusyScan { page: Some(_), .. }))
        {
            return;
        }
        self.gate_maybe_open = true;
        self.last_busy = Some(tokio::time::Instant::now());
        if tracer.page_hooks_on() {
            return;
        }
        let errors = tracer.attach_page_hooks();
        for e in &errors {
            eprintln!("daxrace: page hook not attached: {e}");
        }
        self.attaches += 1;
        if self.attaches == 1 {
            eprintln!(
                // Not "hooks attached": that is the start-up line scripts wait for.
                "daxrace: a busy page is watched: the page hooks are on ({} failed to attach); they come off {} s after the last busy page",
                errors.len(),
                PAGE_HOOKS_LINGER.as_secs()
            );
        }
        // A pin dropped between the scan and the attach is seen here.
        self.sweep(tracer, SweepFlags::SAMPLE);
    }

    /// Once a tick, in both modes, while a page may be watched (and every
    /// `SWEEP_BACKSTOP` regardless): the sweep ends stale watches and
    /// closes the page gate once none is left; in quiet mode it also
    /// samples while the hooks are on, and they come off when nothing has
    /// been busy for a while and no call waits.
    fn on_tick(&mut self, tracer: &mut Tracer, pipeline: &Pipeline) {
        let sample = if self.last_busy.is_some() {
            SweepFlags::SAMPLE
        } else {
            0
        };
        let since = |d: Duration| self.last_sweep.is_none_or(|t| t.elapsed() >= d);
        // Sampling is what quiet mode's evidence needs each second; ending
        // watches can wait (they end only after 10 s anyway).
        let due = sample != 0 || since(SWEEP_ENDING_EVERY);
        if (self.gate_maybe_open && due) || since(SWEEP_BACKSTOP) {
            self.sweep(tracer, SweepFlags::END_IDLE | sample);
        }
        let Some(last) = self.last_busy else { return };
        if last.elapsed() >= PAGE_HOOKS_LINGER && pipeline.detector.open_calls() == 0 {
            tracer.detach_page_hooks();
            self.last_busy = None;
        }
    }

    fn sweep(&mut self, tracer: &Tracer, flags: u64) {
        self.last_sweep = Some(tokio::time::Instant::now());
        match tracer.sweep_watched(flags) {
            Ok(Some(0)) if flags & SweepFlags::END_IDLE != 0 => self.gate_maybe_open = false,
            Ok(_) => {}
            Err(e) => eprintln!("daxrace: cannot sweep the watched pages: {e}"),
        }
    }
}

/// Runs until `stop` resolves, feeding the pipeline; then drains and finishes.
pub async fn drive(
    tracer: &mut Tracer,
    source: &mut LiveSource,
    pipeline: &mut Pipeline,
    metrics: Option<&Arc<Mutex<Metrics>>>,
    stop: impl Future<Output = ()>,
) -> Result<KernelCounters> {
    tokio::pin!(stop);
    let mut batch = Vec::with_capacity(4096);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The kernel side wakes the reader only when the ring fills up (see
    // `submit` in daxrace-ebpf): everything else is drained on this timer.
    let drain = tokio::time::sleep(DRAIN_EVERY);
    tokio::pin!(drain);
    let mut draining = true;
    let mut page_hooks = PageHookSwitch::default();
    loop {
        tokio::select! {
            r = source.next_batch(&mut batch) => {
                r.context("reading the ring buffer")?;
                pipeline.feed(&batch)?;
                page_hooks.after_batch(tracer, &batch);
                batch.clear();
            }
            _ = &mut drain, if draining => {
                source.drain(&mut batch);
                draining = !batch.is_empty();
                pipeline.feed(&batch)?;
                page_hooks.after_batch(tracer, &batch);
                batch.clear();
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_EVERY);
            }
            _ = tick.tick() => {
                // Time may only advance past events already read: take the
                // clock, drain what the kernel wrote before it, and judge a
                // little behind it (a record reserved just before the clock
                // read may still be committing). Otherwise a waiter whose
                // progress sits unread in the ring looks stranded.
                let now = monotonic_ns();
                source.drain(&mut batch);
                if !batch.is_empty() && !draining {
                    draining = true;
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_EVERY);
                }
                pipeline.feed(&batch)?;
                page_hooks.after_batch(tracer, &batch);
                batch.clear();
                page_hooks.on_tick(tracer, pipeline);
                pipeline.tick(now.saturating_sub(TICK_LAG_NS))?;
                for change in tracer.follow_kernel_changes() {
                    eprintln!("daxrace: {change}");
                    if let Some(m) = metrics {
                        if let Ok(m) = m.lock() {
                            m.set_probes(&tracer.statuses);
                        }
                    }
                }
                if let Some(m) = metrics {
                    refresh_metrics(tracer, source, pipeline, m);
                }
            }
            _ = &mut stop => break,
        }
    }
    source.drain(&mut batch);
    pipeline.feed(&batch)?;
    pipeline.finish()?;
    if let Some(m) = metrics {
        refresh_metrics(tracer, source, pipeline, m);
    }
    if page_hooks.attaches > 1 {
        // What quiet mode's saving cost: each attach and detach is a
        // trampoline update.
        eprintln!(
            "daxrace: quiet mode: the page hooks were put on {} times",
            page_hooks.attaches
        );
    }
    Ok(tracer.counters()?)
}

fn refresh_metrics(
    tracer: &Tracer,
    source: &LiveSource,
    pipeline: &Pipeline,
    metrics: &Arc<Mutex<Metrics>>,
) {
    let Ok(mut m) = metrics.lock() else { return };
    if let Ok(k) = tracer.counters() {
        m.set_kernel_counters(&k);
    }
    if let Ok(b) = tracer.break_stats() {
        m.set_break_stats(&b);
    }
    m.set_decode_errors(source.decode_errors.iter());
    m.set_detector_dropped(&pipeline.detector.dropped());
    m.set_program_stats(&tracer.program_stats());
}
