//! What the running kernel has, read before anything is loaded: its BTF
//! ([`btf`]) and the BTF objects of its modules ([`btf_objects`]), its
//! symbols ([`kallsyms`] lists them, [`ksym`] looks them up one by one), the
//! facts the detector depends on ([`facts`]), and the live patches that
//! replaced functions ([`patched`]), and the tasks asleep on a wait
//! variable ([`waiters`], for `daxrace doctor`). [`bpf_sys`] holds the raw `bpf(2)`
//! commands these need and aya does not offer.
pub mod bpf_sys;
pub mod btf;
pub mod btf_objects;
pub mod facts;
pub mod kallsyms;
pub mod ksym;
pub mod patched;
pub mod waiters;
