//! daxrace: a race detector and tracer for filesystem DAX on persistent memory.
//!
//! Data flows one way: kernel hooks (`daxrace-ebpf`) -> ring buffer ->
//! [`decode`] -> [`detect`] (pure) -> sinks. The probe plan ([`plan`]) is the
//! only place that knows how kernels differ.
pub mod btf;
pub mod btf_objects;
pub mod decode;
pub mod detect;
pub mod event;
pub mod facts;
pub mod kallsyms;
pub mod ksym;
pub mod patched;
pub mod pipeline;
pub mod plan;
pub mod privs;
pub mod sink;
pub mod source;
pub mod trace_file;
pub mod tracer;
