//! Kafka plumbing shared by the daemon's stages: librdkafka client settings (shared, then
//! consumer or producer, then the keys rlap owns), topic creation, the consumer's rebalance
//! context, producing with retry until acknowledged, consumer lag, and the `content-type`
//! header test.
//!
//! Nothing here decides about a sample; the stages ([`crate::stream::source`],
//! [`crate::stream::sink`]) call these.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset};

use crate::events::{
    InternalEvent as _, LagMeasured, PartitionsAssigned, PartitionsAssigning, PartitionsRevoked,
};
use crate::metrics::DaemonMetrics;
use crate::stream::config::ValidConfig;
use crate::stream::offsets::OffsetTracker;
use crate::stream::schema;

/// A Kafka client or topic could not be created (the message names which and why).
#[derive(Debug, thiserror::Error)]
#[error("kafka: {0}")]
pub struct ClientError(pub String);

/// The input consumer: rdkafka's stream consumer with rlap's [`RebalanceContext`].
pub type InputConsumer = StreamConsumer<RebalanceContext>;

/// The consumer's context: a revoke drops the revoked partitions from the offset tracker
/// (their acknowledgements are the new owner's to store) and from the lag gauges; every
/// rebalance is logged and counted.
pub struct RebalanceContext {
    /// Offsets received and acknowledged, per partition (shared with the source and sink).
    pub tracker: Arc<Mutex<OffsetTracker>>,
    /// Where rebalances and lag are counted.
    pub metrics: DaemonMetrics,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        let partitions = |tpl: &rdkafka::TopicPartitionList| {
            tpl.elements().iter().map(|e| e.partition()).collect()
        };
        match r {
            Rebalance::Revoke(tpl) => {
                let mut t = self.tracker.lock().expect("tracker lock");
                for e in tpl.elements() {
                    t.revoke(e.topic(), e.partition());
                }
                PartitionsRevoked {
                    partitions: partitions(tpl),
                }
                .emit(&self.metrics);
            }
            Rebalance::Assign(tpl) => PartitionsAssigning {
                partitions: partitions(tpl),
            }
            .emit(&self.metrics),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        // Counted once the assignment is in effect: the source re-pauses when this moves.
        if let Rebalance::Assign(_) = r {
            PartitionsAssigned.emit(&self.metrics);
        }
    }
}

/// librdkafka settings shared by every client: brokers plus `kafka.properties`.
pub fn client_config(cfg: &ValidConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c
}

/// The consumer's settings: [`client_config`], then `kafka.consumer_properties`, then the
/// group and offset keys rlap owns (at-least-once: offsets are stored by the sink only).
pub fn consumer_config(cfg: &ValidConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    for (k, v) in &cfg.kafka.consumer_properties {
        c.set(k, v);
    }
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            cfg.kafka.commit_interval_ms.to_string(),
        )
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &cfg.kafka.auto_offset_reset);
    c
}

/// The producer's settings: rlap's `linger.ms = 5`, then `kafka.properties`, then
/// `kafka.producer_properties` (either may change the batching), then idempotence with
/// `acks=all`, which rlap owns.
pub fn producer_config(cfg: &ValidConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    if c.get("linger.ms").is_none() {
        c.set("linger.ms", "5");
    }
    for (k, v) in &cfg.kafka.producer_properties {
        c.set(k, v);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    c
}

/// Create the output topics that do not exist yet (`kafka.create_topics`).
///
/// # Errors
/// [`ClientError`] when the admin request fails for another reason than "exists".
pub async fn ensure_topics(cfg: &ValidConfig, topics: &[String]) -> Result<(), ClientError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)
        .create()
        .map_err(|e| ClientError(e.to_string()))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                cfg.kafka.topic_partitions,
                TopicReplication::Fixed(cfg.kafka.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| ClientError(format!("creating topics: {e}")))?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, "topic created"),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "topic exists")
            }
            Err((t, e)) => return Err(ClientError(format!("creating topic {t}: {e}"))),
        }
    }
    Ok(())
}

/// Every topic the daemon writes to: verdicts, dead letters, model events, and the routed
/// clean/quarantine copies when `kafka.route_by_verdict`.
pub fn output_topics(cfg: &ValidConfig) -> Vec<String> {
    let k = &cfg.kafka;
    let mut t = vec![k.verdicts(), k.dlq(), k.model_events_topic.clone()];
    if k.route_by_verdict {
        t.push(k.clean());
        t.push(k.quarantine());
    }
    t
}

/// Consumer lag (high watermark − position) of every assigned partition of `topic` into
/// `rlap_consumer_lag_messages`. Blocking broker round trips: call it off the runtime.
pub fn report_lag(consumer: &InputConsumer, topic: &str, metrics: &DaemonMetrics) {
    let Ok(pos) = consumer.position() else { return };
    for e in pos.elements_for_topic(topic) {
        if let (Offset::Offset(p), Ok((_, high))) = (
            e.offset(),
            consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(1)),
        ) {
            if high >= 0 {
                LagMeasured {
                    partition: e.partition(),
                    lag: high - p,
                }
                .emit(metrics);
            }
        }
    }
}

/// Kafka headers from `(key, value)` pairs.
pub fn headers(pairs: &[(&str, &[u8])]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(pairs.len());
    for (k, v) in pairs {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    h
}

/// Produce until acknowledged: librdkafka retries within `message.timeout.ms`; past that the
/// sink keeps trying (backpressure) rather than drop a verdict. An error that retrying cannot
/// clear (the record is too large for the broker) is returned instead.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    h: OwnedHeaders,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let mut backoff = Duration::from_millis(100);
    loop {
        let rec = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(h.clone());
        match producer.send(rec, Duration::from_secs(5)).await {
            Ok(_) => return Ok(()),
            Err((e, _))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(Code::MessageSizeTooLarge | Code::InvalidRecord)
                ) =>
            {
                return Err(e)
            }
            Err((e, _)) => {
                tracing::warn!(topic, error = %e, "produce failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Whether a message's `content-type` header says `application/json`.
pub fn is_json(m: &impl Message) -> bool {
    m.headers().is_some_and(|h| {
        h.iter().any(|hd| {
            hd.key.eq_ignore_ascii_case(schema::CONTENT_TYPE_HEADER)
                && hd.value.is_some_and(|v| v.starts_with(b"application/json"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::config::DaemonConfig;

    fn checked(c: &DaemonConfig) -> ValidConfig {
        c.clone().check().unwrap()
    }

    #[test]
    fn client_properties_layer_shared_then_own_then_rlaps() {
        let mut c = DaemonConfig::default();
        for (k, v) in [("security.protocol", "SSL"), ("linger.ms", "50")] {
            c.kafka.properties.insert(k.into(), v.into());
        }
        c.kafka
            .consumer_properties
            .insert("session.timeout.ms".into(), "6000".into());
        c.kafka
            .producer_properties
            .insert("compression.type".into(), "lz4".into());
        let consumer = consumer_config(&checked(&c));
        assert_eq!(consumer.get("security.protocol"), Some("SSL"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("compression.type"), None);
        let producer = producer_config(&checked(&c));
        assert_eq!(producer.get("security.protocol"), Some("SSL"));
        assert_eq!(producer.get("compression.type"), Some("lz4"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        // rlap's linger.ms default yields to the shared table, which yields to the producer's.
        assert_eq!(producer.get("linger.ms"), Some("50"));
        c.kafka
            .producer_properties
            .insert("linger.ms".into(), "20".into());
        assert_eq!(producer_config(&checked(&c)).get("linger.ms"), Some("20"));
        c.kafka.properties.clear();
        c.kafka.producer_properties.clear();
        assert_eq!(producer_config(&checked(&c)).get("linger.ms"), Some("5"));
        assert_eq!(producer_config(&checked(&c)).get("acks"), Some("all"));
    }
}
