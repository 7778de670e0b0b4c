//! The streaming daemon (`rlap serve`): Kafka in, verdicts out, online mixture, noise-triggered
//! prune-and-fine-tune cycles.
//!
//! Modules, in the order a sample meets them:
//! - [`config`]: the TOML + environment configuration, validated at start-up.
//! - [`schema`]: the protobuf schemas (`proto/rlap/v1`), decoding and validation of samples.
//! - [`daemon`]: Kafka source → scorer thread → Kafka sink; offsets, dead letters, shutdown.
//! - [`offsets`]: which offset may be stored (at-least-once bookkeeping).
//! - [`engine`]: the scorer: bootstrap, warm-up, attribution → online GMM → verdicts.
//! - [`verdicter`]: the verdict rule (online noise model, default, or online mixture).
//! - [`online_gmm`]: stepwise EM of the two-component mixture.
//! - [`trigger`]: windowed and EWMA noise rate, hysteresis, cool-down.
//! - [`replay`]: the bounded class-balanced replay buffer.
//! - [`cycle`]: regression sensitivity → prune → fine-tune → evaluate → accept → publish.
//! - [`guard`]: the cycle's acceptance guard (size floor, confidence bound, per-class checks).
//! - [`state`]: atomic checkpoints.
//! - [`tools`]: `rlap produce` and `rlap evaluate-verdicts`.
//! - [`demo`]: the whole loop on librdkafka's in-process mock cluster.
//! - [`bench`]: `rlap bench-stream`: throughput, latency and memory against a real broker.

pub mod config;
pub mod cycle;
pub mod daemon;
pub mod engine;
pub mod features;
pub mod guard;
pub mod kafka;
pub mod offsets;
pub mod online_gmm;
pub mod replay;
pub mod schema;
pub mod scorer;
pub mod sink;
pub mod source;
pub mod state;
pub mod trigger;
pub mod verdicter;

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it): the unit of
/// `event_time_ms`, `scored_at_ms` and `created_at_ms` in the `rlap.v1` schemas.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
