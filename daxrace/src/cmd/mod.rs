//! One file per subcommand, plus the options they share.
pub mod probes;
pub mod replay;
pub mod run;
pub mod trace;

use daxrace::{
    plan::AttachPreference,
    tracer::{Tracer, TracerOptions},
};

/// Exit code for daxrace's own errors (bad input, cannot attach).
pub const EXIT_ERROR: i32 = 2;

/// Options shared by every command that attaches to the kernel.
#[derive(clap::Args, Clone, Debug)]
pub struct AttachArgs {
    /// Attach flavour for kernel functions.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
    /// Fail if any hook cannot attach (default: report it and run the rest).
    #[arg(long)]
    pub strict: bool,
    /// Ring buffer size in KiB (rounded up to a power of two).
    #[arg(long, default_value_t = 4096)]
    pub ring_buffer_kib: u32,
}

impl AttachArgs {
    pub fn options(&self) -> TracerOptions {
        TracerOptions {
            attach: self.attach,
            strict: self.strict,
            ring_buffer_bytes: (self.ring_buffer_kib.max(4) * 1024).next_power_of_two(),
            only: Vec::new(),
        }
    }
}

/// Warnings about guessed kernel facts, to stderr, once.
pub fn print_warnings(t: &Tracer) {
    for w in &t.facts.warnings {
        eprintln!("daxrace: warning: {w}");
    }
}
