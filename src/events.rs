//! Typed internal events (vector's `internal_events`): one struct per notable thing the daemon
//! or the API does, whose [`InternalEvent::emit`] both logs it (tracing) and counts it
//! ([`DaemonMetrics`]). Stages build an event and emit it; none of them touches a metric
//! directly, and the run summary ([`RunTotals`]) reads the same counters `/metrics` shows.
//!
//! Events carry plain values (partitions, reasons, seconds), never a stage's own types, so
//! this module sits just above [`crate::metrics`] and below every emitter.

use crate::metrics::DaemonMetrics;

/// Something that happened, logged and counted in one place.
pub trait InternalEvent {
    /// Log the event and update its metrics.
    fn emit(self, metrics: &DaemonMetrics);
}

/// An input message was received (valid or not): `rlap_samples_consumed_total`.
pub struct MessageReceived;

impl InternalEvent for MessageReceived {
    fn emit(self, m: &DaemonMetrics) {
        m.samples_consumed.inc();
    }
}

/// The consumer reported an error (MAXPOLL among them): `rlap_consumer_errors_total`, warned.
pub struct ConsumerErrored<'a> {
    /// librdkafka's error.
    pub error: &'a rdkafka::error::KafkaError,
}

impl InternalEvent for ConsumerErrored<'_> {
    fn emit(self, m: &DaemonMetrics) {
        m.consumer_errors.inc();
        tracing::warn!(error = %self.error, "consumer error");
    }
}

/// Partitions of the input topic were revoked from this replica: counted as a `revoke`
/// rebalance; their lag gauges go (the new owner reports them).
pub struct PartitionsRevoked {
    /// The revoked partitions.
    pub partitions: Vec<i32>,
}

impl InternalEvent for PartitionsRevoked {
    fn emit(self, m: &DaemonMetrics) {
        m.consumer_rebalances.with_label_values(&["revoke"]).inc();
        for p in &self.partitions {
            let _ = m.consumer_lag.remove_label_values(&[&p.to_string()]);
        }
        tracing::info!(partitions = ?self.partitions, "partitions revoked");
    }
}

/// Partitions were assigned to this replica: logged before the assignment takes effect.
pub struct PartitionsAssigning {
    /// The assigned partitions.
    pub partitions: Vec<i32>,
}

impl InternalEvent for PartitionsAssigning {
    fn emit(self, _m: &DaemonMetrics) {
        tracing::info!(partitions = ?self.partitions, "partitions assigned");
    }
}

/// An assignment is in effect: counted as an `assign` rebalance (the source re-pauses when
/// this count moves, see [`DaemonMetrics::consumer_rebalances`]).
pub struct PartitionsAssigned;

impl InternalEvent for PartitionsAssigned {
    fn emit(self, m: &DaemonMetrics) {
        m.consumer_rebalances.with_label_values(&["assign"]).inc();
    }
}

/// The result of a metadata request to the brokers: `rlap_broker_reachable` (`/readyz`).
pub struct BrokersChecked {
    /// Whether the request succeeded.
    pub reachable: bool,
}

impl InternalEvent for BrokersChecked {
    fn emit(self, m: &DaemonMetrics) {
        m.broker_reachable.set(i64::from(self.reachable));
    }
}

/// One input partition's consumer lag: `rlap_consumer_lag_messages{partition}`.
pub struct LagMeasured {
    /// The partition.
    pub partition: i32,
    /// High watermark − position, messages (≥ 0).
    pub lag: i64,
}

impl InternalEvent for LagMeasured {
    fn emit(self, m: &DaemonMetrics) {
        m.consumer_lag
            .with_label_values(&[&self.partition.to_string()])
            .set(self.lag.max(0));
    }
}

/// A message that carries no sample (a tombstone) was acknowledged without a verdict:
/// `rlap_skipped_messages_total{reason}`.
pub struct MessageSkipped {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Why (`tombstone`).
    pub reason: &'static str,
}

impl InternalEvent for MessageSkipped {
    fn emit(self, m: &DaemonMetrics) {
        tracing::debug!(
            partition = self.partition,
            offset = self.offset,
            reason = self.reason,
            "message skipped"
        );
        m.skipped_messages.with_label_values(&[self.reason]).inc();
    }
}

/// An invalid message's dead letter was acknowledged by the broker:
/// `rlap_invalid_samples_total{reason}`.
pub struct DeadLettered {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The dead-letter reason (one of [`crate::metrics::DEAD_LETTER_REASONS`]).
    pub reason: &'static str,
}

impl InternalEvent for DeadLettered {
    fn emit(self, m: &DaemonMetrics) {
        tracing::debug!(
            partition = self.partition,
            offset = self.offset,
            reason = self.reason,
            "dead letter acknowledged"
        );
        m.invalid_samples.with_label_values(&[self.reason]).inc();
    }
}

/// A batch of verdicts was acknowledged by the broker: `rlap_verdicts_total{outcome}` and,
/// per sample, `rlap_verdict_latency_seconds` (receipt → acknowledgement).
pub struct VerdictsAcknowledged<I> {
    /// Per verdict: (noisy, seconds since the sample was received).
    pub verdicts: I,
}

impl<I: IntoIterator<Item = (bool, f64)>> InternalEvent for VerdictsAcknowledged<I> {
    fn emit(self, m: &DaemonMetrics) {
        let (clean, noisy) = (
            m.verdicts.with_label_values(&["clean"]),
            m.verdicts.with_label_values(&["noisy"]),
        );
        let mut n = 0usize;
        for (is_noisy, seconds) in self.verdicts {
            if is_noisy { &noisy } else { &clean }.inc();
            m.verdict_latency_seconds.observe(seconds);
            n += 1;
        }
        tracing::trace!(verdicts = n, "verdicts acknowledged");
    }
}

/// A new model version scores from now on: `rlap_model_version` and
/// `rlap_model_swapped_timestamp_seconds`.
pub struct ModelSwapped {
    /// The version.
    pub version: u64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
}

impl InternalEvent for ModelSwapped {
    fn emit(self, m: &DaemonMetrics) {
        m.model_version.set(self.version as i64);
        m.model_swapped_timestamp.set(self.at_ms as f64 / 1000.0);
    }
}

/// Whether this replica runs cycles (owns input partition 0): `rlap_cycle_leader`; logged
/// when it changes.
pub struct LeadershipSet {
    /// Leader now.
    pub leader: bool,
    /// Whether that differs from before.
    pub changed: bool,
}

impl InternalEvent for LeadershipSet {
    fn emit(self, m: &DaemonMetrics) {
        if self.changed {
            tracing::info!(leader = self.leader, "cycle leadership changed");
        }
        m.cycle_leader.set(i64::from(self.leader));
    }
}

/// One micro-batch scored: `rlap_attribution_batch_seconds` and the verdict rule's gauges.
pub struct BatchScored {
    /// Wall time of the batch's attribution and verdict rule, seconds.
    pub seconds: f64,
    /// The windowed noisy fraction, when the window holds enough verdicts to show it.
    pub noisy_fraction_window: Option<f64>,
    /// The EWMA noisy fraction.
    pub noisy_fraction_ewma: f64,
    /// Whether the verdicts are provisional (the mixture could not be fitted).
    pub provisional: bool,
    /// The rule's prior shares (clean, noisy), when it is fitted.
    pub weights_clean_noisy: Option<[f64; 2]>,
    /// The online GMM's component means in summary space, `[clean, noisy]` ×
    /// `[log_attribution_norm, log_loss]`, when that is the rule.
    pub means_clean_noisy: Option<[[f64; 2]; 2]>,
}

impl InternalEvent for BatchScored {
    fn emit(self, m: &DaemonMetrics) {
        m.attribution_batch_seconds.observe(self.seconds);
        // A new version clears the window; the caller keeps the last full estimate showing
        // until the new window holds enough verdicts, so alerts do not reset at every swap.
        if let Some(w) = self.noisy_fraction_window {
            m.noisy_fraction.with_label_values(&["window"]).set(w);
        }
        m.noisy_fraction
            .with_label_values(&["ewma"])
            .set(self.noisy_fraction_ewma);
        m.verdicts_provisional.set(i64::from(self.provisional));
        if let Some(w) = self.weights_clean_noisy {
            m.mixture_weight.with_label_values(&["clean"]).set(w[0]);
            m.mixture_weight.with_label_values(&["noisy"]).set(w[1]);
        }
        if let Some(means) = self.means_clean_noisy {
            for (c, name) in [(0, "clean"), (1, "noisy")] {
                for (d, dim) in ["log_attribution_norm", "log_loss"].iter().enumerate() {
                    m.mixture_mean
                        .with_label_values(&[name, dim])
                        .set(means[c][d]);
                }
            }
        }
    }
}

/// A cycle ended: `rlap_cycles_total{outcome}` and `rlap_cycle_stage_seconds{stage}` (the
/// engine logs the outcome with its evidence).
pub struct CycleFinished<'a> {
    /// `accepted`, `rejected`, `skipped` or `failed`.
    pub outcome: &'a str,
    /// Wall time of each stage that ran, seconds.
    pub stage_seconds: &'a [(String, f64)],
}

impl InternalEvent for CycleFinished<'_> {
    fn emit(self, m: &DaemonMetrics) {
        m.cycles.with_label_values(&[self.outcome]).inc();
        for (stage, s) in self.stage_seconds {
            m.cycle_stage_seconds
                .with_label_values(&[stage])
                .observe(*s);
        }
    }
}

/// One HTTP prediction request answered: `rlap_predict_requests_total{status}` by status
/// class and `rlap_predict_seconds`.
pub struct PredictServed {
    /// The response's HTTP status.
    pub status: u16,
    /// Handling time, seconds.
    pub seconds: f64,
}

impl InternalEvent for PredictServed {
    fn emit(self, m: &DaemonMetrics) {
        let class = match self.status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        m.predict_requests.with_label_values(&[class]).inc();
        m.predict_seconds.observe(self.seconds);
    }
}

/// What a daemon's counters add up to: the run summary reads these rather than counting the
/// same events a second time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTotals {
    /// `rlap_samples_consumed_total`.
    pub consumed: u64,
    /// `rlap_verdicts_total`, both outcomes.
    pub verdicts: u64,
    /// `rlap_verdicts_total{outcome="noisy"}`.
    pub noisy: u64,
    /// `rlap_invalid_samples_total`, every reason.
    pub dead_letters: u64,
}

impl RunTotals {
    /// What was counted after `earlier` (a reading of the same metrics).
    pub fn since(&self, earlier: &RunTotals) -> RunTotals {
        RunTotals {
            consumed: self.consumed.saturating_sub(earlier.consumed),
            verdicts: self.verdicts.saturating_sub(earlier.verdicts),
            noisy: self.noisy.saturating_sub(earlier.noisy),
            dead_letters: self.dead_letters.saturating_sub(earlier.dead_letters),
        }
    }

    /// Read the totals from `m`.
    pub fn read(m: &DaemonMetrics) -> Self {
        use prometheus::core::Collector as _;
        let noisy = m.verdicts.with_label_values(&["noisy"]).get();
        let dead_letters = m
            .invalid_samples
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|c| c.get_counter().get_value() as u64)
            .sum();
        RunTotals {
            consumed: m.samples_consumed.get(),
            verdicts: m.verdicts.with_label_values(&["clean"]).get() + noisy,
            noisy,
            dead_letters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_what_the_totals_read() {
        let m = DaemonMetrics::new();
        assert_eq!(RunTotals::read(&m), RunTotals::default());
        for _ in 0..5 {
            MessageReceived.emit(&m);
        }
        VerdictsAcknowledged {
            verdicts: [(true, 0.01), (false, 0.02), (false, 0.03)],
        }
        .emit(&m);
        for reason in ["decode", "input_shift"] {
            DeadLettered {
                partition: 0,
                offset: 1,
                reason,
            }
            .emit(&m);
        }
        let t = RunTotals::read(&m);
        assert_eq!(
            t,
            RunTotals {
                consumed: 5,
                verdicts: 3,
                noisy: 1,
                dead_letters: 2
            }
        );
        assert_eq!(m.verdict_latency_seconds.get_sample_count(), 3);
        MessageReceived.emit(&m);
        assert_eq!(
            RunTotals::read(&m).since(&t),
            RunTotals {
                consumed: 1,
                ..RunTotals::default()
            }
        );
        let text = m.encode();
        assert!(text.contains("rlap_invalid_samples_total{reason=\"oversize\"} 0"));
        assert!(text.contains("rlap_invalid_samples_total{reason=\"input_shift\"} 1"));
    }

    #[test]
    fn revocation_counts_and_drops_the_lag_series() {
        let m = DaemonMetrics::new();
        LagMeasured {
            partition: 3,
            lag: -4,
        }
        .emit(&m);
        assert_eq!(m.consumer_lag.with_label_values(&["3"]).get(), 0);
        LagMeasured {
            partition: 3,
            lag: 9,
        }
        .emit(&m);
        assert!(m
            .encode()
            .contains("rlap_consumer_lag_messages{partition=\"3\"} 9"));
        PartitionsRevoked {
            partitions: vec![3],
        }
        .emit(&m);
        assert!(!m
            .encode()
            .contains("rlap_consumer_lag_messages{partition=\"3\"}"));
        assert_eq!(
            m.consumer_rebalances.with_label_values(&["revoke"]).get(),
            1
        );
    }
}
