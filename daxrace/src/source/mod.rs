//! Where events come from: the live ring buffer ([`ring`]), or a recorded
//! JSON lines trace ([`trace_reader`]). Both hand out decoded events.
pub mod ring;
pub mod trace_reader;
