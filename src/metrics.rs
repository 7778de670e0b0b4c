//! Prometheus metrics of the daemon and the API (`GET /metrics`, text format).
//!
//! This module owns every metric's name, type, unit and label set. Names follow Prometheus
//! conventions: `rlap_` prefix, base units (seconds), `_total` for counters, and only bounded
//! label values (outcomes, [`DEAD_LETTER_REASONS`], stages, partition numbers of the input
//! topic). What updates them is [`crate::events`]: one typed event per notable thing, which
//! logs and counts it. Each [`DaemonMetrics`] has its own registry, so
//! several daemons can live in one process (tests).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every dead-letter reason (`rlap_invalid_samples_total{reason}`, the `rlap-dlq-reason`
/// header): what `stream::schema` validation and the source's input-shift check give.
pub const DEAD_LETTER_REASONS: [&str; 9] = [
    "oversize",
    "decode",
    "empty_id",
    "feature_count",
    "shape_mismatch",
    "non_finite",
    "feature_range",
    "label_range",
    "input_shift",
];

/// All metrics, registered in `registry`.
#[derive(Clone)]
pub struct DaemonMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `rlap_samples_consumed_total`: input messages received (valid or not).
    pub samples_consumed: IntCounter,
    /// `rlap_verdicts_total{outcome="clean|noisy"}`: verdicts acknowledged by the broker.
    pub verdicts: IntCounterVec,
    /// `rlap_invalid_samples_total{reason}`: messages sent to the dead-letter topic.
    pub invalid_samples: IntCounterVec,
    /// `rlap_skipped_messages_total{reason="tombstone"}`: input messages that carry no sample
    /// and are no error (tombstones: null values on compacted topics), committed unscored.
    pub skipped_messages: IntCounterVec,
    /// `rlap_noisy_fraction{estimate="window|ewma"}`: estimated noise rate, ratio in [0, 1].
    pub noisy_fraction: GaugeVec,
    /// `rlap_mixture_weight{component="clean|noisy"}`: the verdict rule's prior shares, ratio
    /// in [0, 1]: the noise model's joint noise rate (noisy) and its complement, or the online
    /// GMM's weights (`scoring.estimator = "mixture"`).
    pub mixture_weight: GaugeVec,
    /// `rlap_mixture_mean{component, dimension}`: component means in z-scored feature space
    /// (online GMM in summary space only: `dimension="log_attribution_norm|log_loss"`).
    pub mixture_mean: GaugeVec,
    /// `rlap_attribution_batch_seconds`: wall time of one micro-batch's attribution + verdict rule.
    pub attribution_batch_seconds: Histogram,
    /// `rlap_verdict_latency_seconds`: receipt of a sample → its verdict acknowledged.
    pub verdict_latency_seconds: Histogram,
    /// `rlap_consumer_lag_messages{partition}`: high watermark − position, per assigned
    /// input partition.
    pub consumer_lag: IntGaugeVec,
    /// `rlap_consumer_rebalances_total{kind="assign|revoke"}`: partitions assigned to or
    /// revoked from this replica, one count per rebalance event.
    pub consumer_rebalances: IntCounterVec,
    /// `rlap_consumer_errors_total`: errors the consumer reported (among them MAXPOLL: the
    /// poll loop stalled past `max.poll.interval.ms` and the replica left the group).
    pub consumer_errors: IntCounter,
    /// `rlap_broker_reachable`: 1 when the last metadata request to the brokers (every 5 s)
    /// succeeded, else 0; `/readyz` answers 503 while it is 0.
    pub broker_reachable: IntGauge,
    /// `rlap_cycles_total{outcome="accepted|rejected|skipped|failed"}`.
    pub cycles: IntCounterVec,
    /// `rlap_cycle_stage_seconds{stage}`: attribution, regression, finetune, evaluate, publish.
    pub cycle_stage_seconds: HistogramVec,
    /// `rlap_model_version`: the version scoring now (0 before the first).
    pub model_version: IntGauge,
    /// `rlap_model_swapped_timestamp_seconds`: Unix time the current version was swapped in.
    pub model_swapped_timestamp: Gauge,
    /// `rlap_cycle_leader`: 1 when this replica runs cycles (owns input partition 0).
    pub cycle_leader: IntGauge,
    /// `rlap_verdicts_provisional`: 1 while the configured mixture could not be fitted and the
    /// noise model stands in (verdicts carry `provisional = true`; no cycle runs).
    pub verdicts_provisional: IntGauge,
    /// `rlap_predict_requests_total{status}`: HTTP predict requests by status class.
    pub predict_requests: IntCounterVec,
    /// `rlap_predict_seconds`: HTTP predict handling time.
    pub predict_seconds: Histogram,
    /// `rlap_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// What each metric above is, in registration order.
    infos: Vec<MetricInfo>,
}

/// The Prometheus type of a collector, as the text format names it.
trait Kind {
    const KIND: &'static str;
}

macro_rules! kinds {
    ($($t:ty => $k:literal),* $(,)?) => {
        $(impl Kind for $t {
            const KIND: &'static str = $k;
        })*
    };
}

kinds! {
    IntCounter => "counter", IntCounterVec => "counter",
    IntGauge => "gauge", IntGaugeVec => "gauge", Gauge => "gauge", GaugeVec => "gauge",
    Histogram => "histogram", HistogramVec => "histogram",
}

/// One metric rlap defines: what `rlap metrics --list` prints and deploy checks read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricInfo {
    /// Full name (`rlap_…`).
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Label names (histograms also carry `le` on their `_bucket` series).
    pub labels: Vec<String>,
    /// Help text.
    pub help: String,
}

fn reg<T: prometheus::core::Collector + Kind + Clone + 'static>(
    r: &Registry,
    infos: &mut Vec<MetricInfo>,
    c: T,
) -> T {
    for d in c.desc() {
        infos.push(MetricInfo {
            name: d.fq_name.clone(),
            kind: T::KIND,
            labels: d.variable_labels.clone(),
            help: d.help.clone(),
        });
    }
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonMetrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let mut infos = Vec::new();
        let secs = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid")
        };
        let m = DaemonMetrics {
            samples_consumed: reg(
                &r,
                &mut infos,
                IntCounter::new("rlap_samples_consumed_total", "Input messages received.")
                    .expect("valid"),
            ),
            verdicts: reg(
                &r,
                &mut infos,
                IntCounterVec::new(
                    Opts::new(
                        "rlap_verdicts_total",
                        "Verdicts acknowledged by the broker, by outcome.",
                    ),
                    &["outcome"],
                )
                .expect("valid"),
            ),
            invalid_samples: reg(
                &r,
                &mut infos,
                IntCounterVec::new(
                    Opts::new(
                        "rlap_invalid_samples_total",
                        "Input messages sent to the dead-letter topic, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            skipped_messages: reg(
                &r,
                &mut infos,
                IntCounterVec::new(
                    Opts::new(
                        "rlap_skipped_messages_total",
                        "Input messages committed without a verdict because they carry no sample (tombstones), by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            noisy_fraction: reg(
                &r,
                &mut infos,
                GaugeVec::new(
                    Opts::new(
                        "rlap_noisy_fraction",
                        "Estimated noise rate of recent verdicts (ratio).",
                    ),
                    &["estimate"],
                )
                .expect("valid"),
            ),
            mixture_weight: reg(
                &r,
                &mut infos,
                GaugeVec::new(
                    Opts::new("rlap_mixture_weight", "Verdict rule prior share: noise model joint noise rate (noisy) and complement, or online GMM weight."),
                    &["component"],
                )
                .expect("valid"),
            ),
            mixture_mean: reg(
                &r,
                &mut infos,
                GaugeVec::new(
                    Opts::new(
                        "rlap_mixture_mean",
                        "Online GMM component mean in z-scored feature space.",
                    ),
                    &["component", "dimension"],
                )
                .expect("valid"),
            ),
            attribution_batch_seconds: reg(
                &r,
                &mut infos,
                secs(
                    "rlap_attribution_batch_seconds",
                    "Attribution and mixture time of one micro-batch.",
                    prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid"),
                ),
            ),
            verdict_latency_seconds: reg(
                &r,
                &mut infos,
                secs(
                    "rlap_verdict_latency_seconds",
                    "Sample receipt to verdict acknowledged by the broker.",
                    prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid"),
                ),
            ),
            consumer_lag: reg(
                &r,
                &mut infos,
                IntGaugeVec::new(
                    Opts::new(
                        "rlap_consumer_lag_messages",
                        "High watermark minus consumer position, per assigned input partition.",
                    ),
                    &["partition"],
                )
                .expect("valid"),
            ),
            consumer_rebalances: reg(
                &r,
                &mut infos,
                IntCounterVec::new(
                    Opts::new(
                        "rlap_consumer_rebalances_total",
                        "Rebalance events of this replica's consumer, by kind (assign, revoke).",
                    ),
                    &["kind"],
                )
                .expect("valid"),
            ),
            consumer_errors: reg(
                &r,
                &mut infos,
                IntCounter::new(
                    "rlap_consumer_errors_total",
                    "Errors reported by the consumer (MAXPOLL among them: the poll loop stalled and the replica left the group).",
                )
                .expect("valid"),
            ),
            broker_reachable: reg(
                &r,
                &mut infos,
                IntGauge::new(
                    "rlap_broker_reachable",
                    "1 when the last metadata request to the Kafka brokers succeeded (checked every 5 s), else 0.",
                )
                .expect("valid"),
            ),
            cycles: reg(
                &r,
                &mut infos,
                IntCounterVec::new(
                    Opts::new("rlap_cycles_total", "Model cycles by outcome."),
                    &["outcome"],
                )
                .expect("valid"),
            ),
            cycle_stage_seconds: reg(
                &r,
                &mut infos,
                HistogramVec::new(
                    HistogramOpts::new(
                        "rlap_cycle_stage_seconds",
                        "Wall time of each cycle stage.",
                    )
                    .buckets(prometheus::exponential_buckets(0.01, 2.0, 16).expect("valid")),
                    &["stage"],
                )
                .expect("valid"),
            ),
            model_version: reg(
                &r,
                &mut infos,
                IntGauge::new("rlap_model_version", "Model version scoring now.").expect("valid"),
            ),
            model_swapped_timestamp: reg(
                &r,
                &mut infos,
                Gauge::new(
                    "rlap_model_swapped_timestamp_seconds",
                    "Unix time the current model version was swapped in.",
                )
                .expect("valid"),
            ),
            cycle_leader: reg(
                &r,
                &mut infos,
                IntGauge::new(
                    "rlap_cycle_leader",
                    "1 when this replica runs model cycles (owns input partition 0).",
                )
                .expect("valid"),
            ),
            verdicts_provisional: reg(
                &r,
                &mut infos,
                IntGauge::new(
                    "rlap_verdicts_provisional",
                    "1 while the configured mixture cannot be fitted and the noise model gives provisional verdicts (no cycle runs).",
                )
                .expect("valid"),
            ),
            predict_requests: reg(
                &r,
                &mut infos,
                IntCounterVec::new(
                    Opts::new(
                        "rlap_predict_requests_total",
                        "HTTP predict requests by status class.",
                    ),
                    &["status"],
                )
                .expect("valid"),
            ),
            predict_seconds: reg(
                &r,
                &mut infos,
                secs(
                    "rlap_predict_seconds",
                    "HTTP predict handling time.",
                    prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid"),
                ),
            ),
            build_info: reg(
                &r,
                &mut infos,
                IntGaugeVec::new(
                    Opts::new("rlap_build_info", "Build information; always 1."),
                    &["version"],
                )
                .expect("valid"),
            ),
            registry: r,
            infos,
        };
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, … (the
        // Prometheus client convention; read from /proc, so Linux only).
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once per registry");
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for o in ["clean", "noisy"] {
            m.verdicts.with_label_values(&[o]);
        }
        for k in ["assign", "revoke"] {
            m.consumer_rebalances.with_label_values(&[k]);
        }
        for o in ["accepted", "rejected", "skipped", "failed"] {
            m.cycles.with_label_values(&[o]);
        }
        for reason in DEAD_LETTER_REASONS {
            m.invalid_samples.with_label_values(&[reason]);
        }
        m.skipped_messages.with_label_values(&["tombstone"]);
        m
    }

    /// Every metric rlap defines (not the process collector's `process_*`), in registration
    /// order, whether or not a series exists yet.
    pub fn infos(&self) -> &[MetricInfo] {
        &self.infos
    }

    /// [`Self::infos`] as `rlap metrics --list` prints them: one line per metric, tab-separated
    /// name, type, comma-separated label names (`-` for none) and help.
    pub fn list(&self) -> String {
        self.infos
            .iter()
            .map(|m| {
                let labels = if m.labels.is_empty() {
                    "-".to_string()
                } else {
                    m.labels.join(",")
                };
                format!("{}\t{}\t{labels}\t{}\n", m.name, m.kind, m.help)
            })
            .collect()
    }

    /// The registry in Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail on valid metrics");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_every_registered_metric_once() {
        let m = DaemonMetrics::new();
        let list = m.list();
        assert_eq!(list.lines().count(), m.infos().len());
        assert!(list.contains("rlap_invalid_samples_total\tcounter\treason\t"));
        assert!(list.contains("rlap_verdict_latency_seconds\thistogram\t-\t"));
        assert!(list.contains("rlap_mixture_mean\tgauge\tcomponent,dimension\t"));
        let mut names: Vec<_> = m.infos().iter().map(|i| i.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), m.infos().len());
        // Every family the registry gathers (those with a series) is in the list.
        for f in m.registry.gather() {
            if f.name().starts_with("rlap_") {
                assert!(names.contains(&f.name()), "{}", f.name());
            }
        }
    }

    #[test]
    fn names_follow_conventions_and_encode() {
        let m = DaemonMetrics::new();
        m.verdicts.with_label_values(&["noisy"]).inc();
        let text = m.encode();
        assert!(text.contains("rlap_verdicts_total{outcome=\"noisy\"} 1"));
        assert!(text.contains("rlap_build_info{version="));
        #[cfg(target_os = "linux")]
        assert!(
            text.contains("process_resident_memory_bytes "),
            "process metrics"
        );
        for f in m.registry.gather() {
            let name = f.name();
            assert!(
                name.starts_with("rlap_") || name.starts_with("process_"),
                "{name}"
            );
            if f.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }
}
