//! Loading and attaching: [`tracer`] loads the eBPF object with what
//! [`crate::kernel`] found, attaches the probe plan and hands out the ring
//! buffer and counters (the only module that speaks aya); [`privs`] checks
//! the privileges it needs and drops the rest afterwards.
pub mod privs;
pub mod tracer;
