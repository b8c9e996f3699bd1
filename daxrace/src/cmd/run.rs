//! `daxrace run`: the daemon. Attaches the plan, detects races live, logs
//! findings, serves /metrics and /healthz, stops cleanly on SIGINT/SIGTERM.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use daxrace::sink::{
    http::{Health, MetricsServer},
    metrics::Metrics,
    summary::Unrecorded,
};
use tokio::signal::unix::{signal, SignalKind};

use super::{
    live::{self, DetectArgs},
    AttachArgs,
};

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    #[command(flatten)]
    pub detect: DetectArgs,
    /// Address for /metrics and /healthz (loopback unless told otherwise).
    /// Under systemd socket activation (daxrace.socket) the socket passed
    /// in is served instead, and its ListenStream= sets the address.
    #[arg(long, default_value = "127.0.0.1:9712")]
    pub listen: SocketAddr,
    /// Do not serve metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Also write every event and finding to this JSON lines file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Print every decoded event as it arrives.
    #[arg(long)]
    pub events: bool,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Keep every capability after attaching (default: drop all but
    /// CAP_BPF, CAP_PERFMON and CAP_SYSLOG, which late attaches need).
    #[arg(long)]
    pub keep_caps: bool,
    /// Collect per-program BPF run counts and run time (enables BPF stats
    /// host-wide while daxrace runs, at a small cost to every BPF program).
    #[arg(long)]
    pub bpf_stats: bool,
}

pub fn run(args: RunArgs) -> Result<i32> {
    live::block_on(|| run_async(args))
}

async fn run_async(args: RunArgs) -> Result<i32> {
    // Bind first: a busy port should fail before anything touches the kernel.
    let server = if args.no_metrics {
        None
    } else if let Some(passed) = MetricsServer::from_systemd()? {
        Some(passed)
    } else {
        Some(MetricsServer::bind(args.listen).await?)
    };
    // The start-up check runs in there, before capabilities go: kernel
    // stacks need CAP_SYS_ADMIN.
    let live::Started {
        mut tracer,
        stats: _stats,
        at_start,
        ..
    } = live::attach(
        &args.attach,
        daxrace::plan::Evidence::Quiet,
        args.bpf_stats,
        &args.detect,
    )?;
    let (attached, standby) = daxrace::plan::attached_and_standby(&tracer.statuses);
    // A daemon's log is all an operator has: say how each hook attached,
    // and why a cheaper flavour did not (e.g. fentry on a module function
    // without CAP_SYS_ADMIN, which its BTF object needs).
    for line in hook_lines(&tracer.statuses) {
        eprintln!("daxrace: {line}");
    }
    if !args.keep_caps {
        // After attaching, a compromised daemon should not be root in all
        // but name; what remains is what attaching a late module's hooks needs.
        let left = daxrace::load::privs::drop_capabilities(daxrace::load::privs::KEPT)
            .context("cannot drop capabilities (use --keep-caps to run without dropping)")?;
        eprintln!(
            "daxrace: capabilities after attaching: {}",
            daxrace::load::privs::names(left)
        );
    }
    let metrics = Arc::new(Mutex::new(Metrics::new(&tracer.kernel_release)));
    {
        let m = metrics.lock().expect("fresh lock");
        m.set_probes(&tracer.statuses);
        m.set_start_time(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
    }
    let health = Arc::new(Mutex::new(Health {
        hooks_attached: attached,
        hooks_missing: tracer.statuses.len() - attached - standby,
    }));
    if let Some(server) = server {
        eprintln!(
            "daxrace: metrics on http://{}/metrics",
            server.local_addr().context("listening socket")?
        );
        tokio::spawn(server.serve(metrics.clone(), health));
    }
    let sinks = live::sinks(
        &tracer,
        args.events,
        args.json.as_deref(),
        Some(metrics.clone()),
        None,
    )?;
    let (mut pipeline, mut source) = live::pipeline(&mut tracer, &args.detect, sinks)?;
    pipeline.found_outside(at_start)?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let duration = args.duration;
    let stop = async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
            _ = async {
                match duration {
                    Some(s) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    let counters = live::drive(
        &mut tracer,
        &mut source,
        &mut pipeline,
        Some(&metrics),
        stop,
    )
    .await?;
    let footer = live::footer(&pipeline, &source, &counters, None);
    let lost: u64 = footer.lost_events.values().sum();
    let unrecorded = Unrecorded::from_counters(&footer.kernel_counters);
    pipeline.close(&footer)?;
    eprintln!(
        "daxrace: stopped: {} events, {} findings, {lost} lost events, {} decode errors, peak RSS {} KiB",
        pipeline.events,
        pipeline.findings.len(),
        source.decode_errors.values().sum::<u64>(),
        live::peak_rss_kib()
    );
    eprintln!(
        "daxrace: {}",
        daxrace::sink::summary::coverage_line(pipeline.detector.coverage(), unrecorded)
    );
    live::print_program_stats(&tracer);
    Ok(0)
}

/// One line per hook: how it attached (`fentry+fexit ext4_break_layouts
/// [ext4]`), that it is on standby, or why it is missing; with the refusals
/// of the flavours tried before the one that attached.
fn hook_lines(statuses: &[daxrace::plan::HookStatus]) -> Vec<String> {
    statuses
        .iter()
        .map(|s| {
            let name = s.hook.as_str();
            if s.is_attached() {
                let mut line = format!("hook {name}: {} on {}", s.kinds(), s.targets());
                if !s.errors.is_empty() {
                    line += &format!(" (not {})", s.errors.join("; "));
                }
                line
            } else if let Some(why) = &s.standby {
                format!("hook {name}: standby: {why}")
            } else {
                format!(
                    "hook {name}: not attached: {}",
                    if s.errors.is_empty() {
                        "nothing to attach to on this kernel".to_string()
                    } else {
                        s.errors.join("; ")
                    }
                )
            }
        })
        .collect()
}
