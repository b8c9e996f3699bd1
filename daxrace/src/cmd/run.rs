//! `daxrace run`: attach, stream events, stop cleanly on SIGINT/SIGTERM.
use anyhow::{Context, Result};
use daxrace::{source::LiveSource, tracer::Tracer};
use daxrace_common::Counter;
use tokio::signal::unix::{signal, SignalKind};

use super::{print_warnings, AttachArgs};

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Print every decoded event as it arrives.
    #[arg(long)]
    pub events: bool,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<u64>,
}

pub fn run(args: RunArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<i32> {
    let mut tracer = Tracer::load(&args.attach.options()).context("cannot attach")?;
    print_warnings(&tracer);
    let attached = tracer.statuses.iter().filter(|s| s.is_attached()).count();
    eprintln!(
        "daxrace: {attached} of {} hooks attached on {} (`daxrace probes` shows which)",
        tracer.statuses.len(),
        tracer.kernel_release
    );
    let mut source =
        LiveSource::new(tracer.take_events()?).context("cannot poll the ring buffer")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let deadline = async {
        match args.duration {
            Some(s) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut batch = Vec::with_capacity(1024);
    let mut events = 0u64;
    loop {
        tokio::select! {
            r = source.next_batch(&mut batch) => r.context("reading the ring buffer")?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
        events += batch.len() as u64;
        if args.events {
            for ev in &batch {
                println!("{ev}");
            }
        }
        batch.clear();
    }
    source.drain(&mut batch);
    events += batch.len() as u64;
    if args.events {
        for ev in &batch {
            println!("{ev}");
        }
    }
    let counters = tracer.counters()?;
    eprintln!(
        "daxrace: {events} events, {} lost (ring buffer full), {} decode errors",
        counters.get(Counter::RingbufFull),
        source.decode_errors.values().sum::<u64>()
    );
    Ok(0)
}
