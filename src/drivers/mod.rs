//! Clients of the library that the `rlap` binary runs, one per job; none of them is part of
//! the daemon or the engine, and nothing below imports them.
//!
//! - [`topics`]: `rlap produce` (a corrupted data set into a topic, the truth in a header) and
//!   `rlap evaluate-verdicts` (a verdict topic joined with that truth).
//! - [`demo`]: `rlap demo`, the whole loop on librdkafka's in-process mock cluster.
//! - [`bench_stream`]: `rlap bench-stream`, a daemon child process against a real broker.
//! - [`bench`]: `rlap bench`, `bench-serve` and `device-check`: attribution and training
//!   throughput, serving latency, CPU/GPU parity.

pub mod bench;
pub mod bench_stream;
pub mod demo;
pub mod topics;
