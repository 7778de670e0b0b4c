//! `[kafka]`: brokers, consumer group, topics and the librdkafka passthrough tables, with the
//! keys rlap owns refused per table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// `[kafka]`: brokers, group, topics and librdkafka passthrough.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]` (`rlap demo` points it at librdkafka's
    /// in-process mock cluster itself).
    pub brokers: String,
    /// Consumer group id: replicas with the same id share the input partitions.
    pub group_id: String,
    /// Input topic of `LabeledSample` messages.
    pub input_topic: String,
    /// Verdict topic; default `<input_topic>.verdicts`.
    pub verdicts_topic: Option<String>,
    /// Dead-letter topic; default `<input_topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// Also copy each original message to `<input>.clean` or `<input>.quarantine`.
    pub route_by_verdict: bool,
    /// Topic of `ModelPublished` events.
    pub model_events_topic: String,
    /// Create missing output topics at start-up (with `topic_partitions` partitions).
    pub create_topics: bool,
    /// Partitions of topics the daemon creates.
    pub topic_partitions: i32,
    /// Replication factor of topics the daemon creates; `-1` (default) takes the broker's
    /// `default.replication.factor`.
    pub replication_factor: i32,
    /// Milliseconds between offset commits of stored offsets.
    pub commit_interval_ms: u64,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Largest accepted input payload, bytes.
    pub max_message_bytes: usize,
    /// Seconds `rlap serve` may take from SIGTERM/SIGINT to exit, whatever the brokers do
    /// (under Kubernetes' 30 s grace period). Past it the process exits, giving up in-flight
    /// produces and the final commit: at least once, the uncommitted samples are re-delivered.
    pub shutdown_timeout_secs: u64,
    /// Encoding of the verdicts: `protobuf` (default; `content-type: application/x-protobuf`)
    /// or `json` (canonical proto3 JSON, `content-type: application/json`), same fields.
    pub verdict_format: VerdictFormat,
    /// Extra librdkafka properties for every client: consumer, producer and admin
    /// (e.g. `"security.protocol" = "SASL_SSL"`, `"sasl.mechanism"`, `"ssl.ca.location"`).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only (e.g. `"session.timeout.ms"`,
    /// `"fetch.min.bytes"`); they win over `properties`. Keys rlap sets from its own options
    /// are refused (see [`RESERVED_CONSUMER_PROPERTIES`]).
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (e.g. `"linger.ms"`,
    /// `"compression.type"`); they win over `properties`, which wins over rlap's
    /// `linger.ms = 5`. The
    /// delivery guarantee's keys are refused (see [`RESERVED_PRODUCER_PROPERTIES`]).
    pub producer_properties: BTreeMap<String, String>,
}

/// Consumer properties rlap owns: the group and offsets follow its at-least-once rule
/// (`kafka.group_id`, `kafka.commit_interval_ms`, `kafka.auto_offset_reset`).
pub const RESERVED_CONSUMER_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "auto.offset.reset",
];

/// Producer properties rlap owns: verdicts are produced idempotently with `acks=all`, so an
/// offset is stored only once its verdict is durable.
pub const RESERVED_PRODUCER_PROPERTIES: &[&str] =
    &["bootstrap.servers", "enable.idempotence", "acks"];

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "rlap".into(),
            input_topic: "samples".into(),
            verdicts_topic: None,
            dlq_topic: None,
            route_by_verdict: false,
            model_events_topic: "rlap.models".into(),
            create_topics: true,
            topic_partitions: 3,
            replication_factor: -1,
            commit_interval_ms: 1000,
            auto_offset_reset: "earliest".into(),
            max_message_bytes: 1_000_000,
            shutdown_timeout_secs: 20,
            verdict_format: VerdictFormat::Protobuf,
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The verdict topic.
    pub fn verdicts(&self) -> String {
        self.verdicts_topic
            .clone()
            .unwrap_or_else(|| format!("{}.verdicts", self.input_topic))
    }
    /// The dead-letter topic.
    pub fn dlq(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.input_topic))
    }
    /// The clean-routing topic.
    pub fn clean(&self) -> String {
        format!("{}.clean", self.input_topic)
    }
    /// The quarantine-routing topic.
    pub fn quarantine(&self) -> String {
        format!("{}.quarantine", self.input_topic)
    }
}

impl KafkaConfig {
    /// Problems of `[kafka]`, one line each, naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        let k = self;
        if k.brokers.trim().is_empty() {
            p.push("kafka.brokers is empty".into());
        }
        if k.group_id.is_empty() {
            p.push("kafka.group_id is empty".into());
        }
        if k.input_topic.is_empty() {
            p.push("kafka.input_topic is empty".into());
        }
        if k.topic_partitions < 1 {
            p.push(format!(
                "kafka.topic_partitions = {}: must be >= 1",
                k.topic_partitions
            ));
        }
        if k.replication_factor == 0 || k.replication_factor < -1 {
            p.push(format!(
                "kafka.replication_factor = {}: must be >= 1, or -1 for the broker's default",
                k.replication_factor
            ));
        }
        if !matches!(k.auto_offset_reset.as_str(), "earliest" | "latest") {
            p.push(format!(
                "kafka.auto_offset_reset = '{}': expected earliest | latest",
                k.auto_offset_reset
            ));
        }
        if k.max_message_bytes < 64 {
            p.push("kafka.max_message_bytes must be >= 64".into());
        }
        if !(1..=3600).contains(&k.shutdown_timeout_secs) {
            p.push(format!(
                "kafka.shutdown_timeout_secs = {}: must be in [1, 3600]",
                k.shutdown_timeout_secs
            ));
        }
        // Routed copies of accepted messages must fit the producer's own limit.
        let producer_max = k
            .producer_properties
            .get("message.max.bytes")
            .or_else(|| k.properties.get("message.max.bytes"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1_000_000);
        if k.route_by_verdict && k.max_message_bytes > producer_max {
            p.push(format!(
                "kafka.max_message_bytes = {} exceeds the producer's message.max.bytes ({producer_max}): routed copies would be refused; lower it or set kafka.properties.\"message.max.bytes\"",
                k.max_message_bytes
            ));
        }
        // (table, its keys, reaches the consumer, reaches the producer)
        for (table, keys, consumer, producer) in [
            ("properties", &k.properties, true, true),
            ("consumer_properties", &k.consumer_properties, true, false),
            ("producer_properties", &k.producer_properties, false, true),
        ] {
            let reserved = |key: &str| {
                (consumer && RESERVED_CONSUMER_PROPERTIES.contains(&key))
                    || (producer && RESERVED_PRODUCER_PROPERTIES.contains(&key))
            };
            for key in keys.keys().filter(|key| reserved(key)) {
                p.push(format!(
                    "kafka.{table}.\"{key}\" is set by rlap itself (at-least-once offsets and \
                     idempotent acks=all verdicts); use the kafka section's own key where it has one"
                ));
            }
        }
        p
    }
}
