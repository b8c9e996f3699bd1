//! One file per subcommand, plus the options they share.
pub mod docs;
pub mod doctor;
pub mod live;
pub mod probes;
pub mod replay;
pub mod run;
pub mod trace;

use daxrace::{
    load::tracer::{FsOpRecording, SymbolSource, Tracer, TracerOptions},
    plan::{AttachPreference, Evidence},
};

/// Exit code of success (`doctor`: no lost wake-up).
pub const EXIT_OK: i32 = 0;
/// Exit code for daxrace's own errors (bad input, cannot attach).
pub const EXIT_ERROR: i32 = 2;
/// Exit code of `trace` and `replay` when findings of the `--fail-on` kinds
/// were seen (it wins over the traced command's own status).
pub const EXIT_FINDINGS: i32 = 10;

/// `--fail-on`: which finding kinds make `trace`/`replay` exit with
/// [`EXIT_FINDINGS`].
#[derive(clap::Args, Clone, Debug)]
pub struct FailOn {
    /// Comma-separated finding kinds that fail the run, or `bugs` (every kind
    /// but stall), `all`, `none`.
    #[arg(long = "fail-on", default_value = "bugs", value_name = "KINDS")]
    pub spec: String,
}

impl FailOn {
    pub fn kinds(&self) -> anyhow::Result<Vec<daxrace::detect::FindingKind>> {
        use daxrace::detect::FindingKind;
        let all = FindingKind::ALL;
        let mut out = Vec::new();
        for word in self
            .spec
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
        {
            match word {
                "all" => out.extend(all),
                "none" => {}
                "bugs" => out.extend(all.iter().copied().filter(|k| k.is_bug())),
                w => match all.iter().find(|k| k.as_str() == w) {
                    Some(k) => out.push(*k),
                    None => anyhow::bail!(
                        "--fail-on: unknown finding kind `{w}` (kinds: {}, or bugs, all, none)",
                        all.iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            }
        }
        Ok(out)
    }
}

/// Options shared by every command that attaches to the kernel.
#[derive(clap::Args, Clone, Debug)]
pub struct AttachArgs {
    /// Attach flavour for kernel functions.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
    /// Fail if any hook cannot attach (default: report it and run the rest).
    #[arg(long)]
    pub strict: bool,
    /// Ring buffer size in KiB: a power of two from 4 to 1048576.
    #[arg(long, default_value_t = 4096, value_parser = daxrace::source::ring::parse_ring_buffer_kib)]
    pub ring_buffer_kib: u32,
    /// Attach only these logical hooks (comma-separated names as `daxrace
    /// probes` prints them); default: all.
    #[arg(long, value_delimiter = ',', value_name = "HOOKS")]
    pub hooks: Vec<String>,
    /// How kernel symbols are learned: `auto` asks the kernel for each one
    /// (5.16+) and reads /proc/kallsyms only where it must; `kallsyms`
    /// always reads the whole list.
    #[arg(long, value_enum, default_value_t = SymbolSource::Auto)]
    pub symbols: SymbolSource,
    /// Which ext4 operations to record: `busy` (the one a break that meets
    /// a busy page was for) or `all` (every one, on any ext4 file).
    #[arg(long, value_enum, default_value_t = FsOpRecording::Busy)]
    pub fs_ops: FsOpRecording,
    /// How much is hooked: `quiet` keeps the per-page hooks off while no
    /// busy page is watched (the I/O path runs no daxrace program), `full`
    /// keeps every hook attached for the whole record. Default: quiet for
    /// `run`, full for `trace` and `probes`.
    #[arg(long, value_enum, value_name = "MODE")]
    pub evidence: Option<EvidenceArg>,
}

/// `--evidence`, as clap parses it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidenceArg {
    Quiet,
    Full,
}

impl From<EvidenceArg> for Evidence {
    fn from(e: EvidenceArg) -> Self {
        match e {
            EvidenceArg::Quiet => Evidence::Quiet,
            EvidenceArg::Full => Evidence::Full,
        }
    }
}

impl AttachArgs {
    /// The tracer's options; `evidence` is the command's default mode.
    pub fn options(&self, evidence: Evidence) -> anyhow::Result<TracerOptions> {
        let only = self
            .hooks
            .iter()
            .map(|h| {
                daxrace::event::HookName::from_name(h)
                    .map(|n| n.0)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--hooks: unknown hook `{h}` (hooks: {})",
                            daxrace_common::HookId::ALL
                                .iter()
                                .map(|&id| daxrace::event::HookName(id).as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(TracerOptions {
            attach: self.attach,
            strict: self.strict,
            // Bounded by its parser: a power of two that fits in bytes.
            ring_buffer_bytes: self.ring_buffer_kib * 1024,
            only,
            symbols: self.symbols,
            fs_ops: self.fs_ops,
            evidence: self.evidence.map_or(evidence, Evidence::from),
        })
    }
}

/// Warnings about guessed kernel facts, to stderr, once.
pub fn print_warnings(t: &Tracer) {
    for w in &t.facts.warnings {
        eprintln!("daxrace: warning: {w}");
    }
    for s in &t.statuses {
        for why in &s.avoided {
            eprintln!("daxrace: {}: {why}", s.hook);
        }
    }
}
