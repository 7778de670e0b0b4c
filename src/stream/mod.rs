//! The streaming daemon (`rlap serve`): Kafka in, verdicts out, online mixture, noise-triggered
//! prune-and-fine-tune cycles.
//!
//! Modules, in the order a sample meets them:
//! - [`config`]: the TOML + environment configuration, checked once into a `ValidConfig`.
//! - [`daemon`]: the wiring: clients, bounded channels, the stages, the shutdown order.
//! - [`kafka`]: client settings, topics, the rebalance context, produce with retry.
//! - [`source`]: poll, decode and validate ([`schema`]), input-shift check, micro-batches.
//! - [`scorer`]: the [`engine`] on its own thread; checkpoints ([`state`]) on another.
//! - [`engine`]: bootstrap, warm-up, [`features`] → verdict rule ([`verdicter`]: the online
//!   noise model or [`online_gmm`]) → verdicts; [`trigger`], [`replay`].
//! - [`cycle`]: regression sensitivity → prune → fine-tune → evaluate → [`guard`] → publish.
//! - [`sink`]: verdicts, dead letters and model events produced; [`offsets`] stored once
//!   acknowledged.
//!
//! The clients of the daemon (`produce`, `evaluate-verdicts`, the demo, `bench-stream`) live
//! in [`crate::drivers`]; `rlap serve` (daemon + API) in [`crate::app`].

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
