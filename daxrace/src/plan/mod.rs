//! The probe plan. The table ([`HOOKS`]: every logical hook, the kernel
//! functions or tracepoints that can serve it in priority order, and the
//! programs that attach to each) is the `daxrace-plan` crate, which xtask
//! reads too; here it meets the running kernel: [`resolve`] turns it into
//! [`PlannedAttach`]es from the kernel's symbols and BTF, and [`HookStatus`]
//! is what attaching them came to.
mod resolve;
mod status;

pub use daxrace_plan::{
    function_targets, spec, symbols, tracepoints, wrappers, AttachKind, Evidence, Flavour,
    HookSpec, Program, QuietRole, Target, HOOKS, WRAPPER_MAX_BYTES,
};
pub use resolve::{
    modules, resolve, trampoline_avoided, AttachPreference, Candidate, KernelView, PlannedAttach,
};
pub use status::{attached_and_standby, standby_reason, AttachedProgram, HookStatus};
