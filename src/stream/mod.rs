//! The streaming daemon (`rlap serve`): Kafka in, verdicts out, online mixture, noise-triggered
//! prune-and-fine-tune cycles.
//!
//! Modules, in the order a sample meets them:
//! - [`config`]: the TOML + environment configuration, validated at start-up.
//! - [`schema`]: the protobuf schemas (`proto/rlap/v1`), decoding and validation of samples.
//! - [`daemon`]: Kafka source → scorer thread → Kafka sink; offsets, dead letters, shutdown.
//! - [`offsets`]: which offset may be stored (at-least-once bookkeeping).
//! - [`engine`]: the scorer: bootstrap, warm-up, attribution → online GMM → verdicts.
//! - [`online_gmm`]: stepwise EM of the two-component mixture.
//! - [`trigger`]: windowed and EWMA noise rate, hysteresis, cool-down.
//! - [`replay`]: the bounded class-balanced replay buffer.
//! - [`cycle`]: regression sensitivity → prune → fine-tune → evaluate → accept → publish.
//! - [`state`]: atomic checkpoints.
//! - [`tools`]: `rlap produce` and `rlap evaluate-verdicts`.
//! - [`demo`]: the whole loop on librdkafka's in-process mock cluster.
//! - [`bench`]: `rlap bench-stream`: throughput, latency and memory against a real broker.

pub mod bench;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod offsets;
pub mod online_gmm;
pub mod replay;
pub mod schema;
pub mod state;
pub mod tools;
pub mod trigger;
