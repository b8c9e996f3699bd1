//! Where findings and events go: the terminal report, JSON lines (see
//! `trace_file`), and the Prometheus endpoint.
pub mod http;
pub mod metrics;
pub mod report;
