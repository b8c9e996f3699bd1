//! daxrace: a race detector and tracer for filesystem DAX on persistent memory.
//!
//! Data flows one way, and the modules follow it: [`kernel`] (what the running
//! kernel has) -> [`load`] (load and attach the kernel hooks, `daxrace-ebpf`)
//! -> [`source`] (ring buffer, or a recorded trace) -> [`decode`] ->
//! [`detect`] (pure) -> [`sink`]s, joined by [`pipeline`]. [`event`] and
//! [`trace_file`] are the vocabulary they share. The probe plan ([`plan`]) is
//! the only place that knows how kernels differ. [`doctor`] explains a
//! break-layouts wait that began before daxrace did.
pub mod decode;
pub mod detect;
pub mod doctor;
pub mod event;
pub mod kernel;
pub mod load;
pub mod pipeline;
pub mod plan;
pub mod sink;
pub mod source;
pub mod trace_file;
