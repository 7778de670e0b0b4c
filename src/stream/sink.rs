//! The sink stage (a tokio task): a `FutureProducer` (idempotent, acks=all) that produces
//! verdicts keyed by sample id, routed copies (`kafka.route_by_verdict`), dead letters with
//! their reason headers, and `ModelPublished` events. After the broker acknowledges a
//! sample's verdict or dead letter, its offset is marked done in the [`OffsetTracker`] and the
//! partition's contiguous acknowledged prefix is stored; librdkafka commits stored offsets
//! every `commit_interval_ms` (and the daemon once more at shutdown).
//!
//! Invariant: **an offset is stored only after its sample's verdict or dead letter is
//! acknowledged**; at most [`MAX_BATCHES_IN_FLIGHT`] verdict batches await acknowledgement.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::Header;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::mpsc;

use crate::events::{DeadLettered, InternalEvent as _, MessageSkipped, VerdictsAcknowledged};
use crate::metrics::DaemonMetrics;
use crate::stream::config::ValidConfig;
use crate::stream::engine::{EngineEvent, Scored};
use crate::stream::kafka::{headers, produce, InputConsumer};
use crate::stream::offsets::OffsetTracker;
use crate::stream::schema::{self, InvalidSample, VerdictFormat};

/// What the source and the scorer send the sink.
pub enum SinkMsg {
    /// One micro-batch's verdicts (from the scorer), produced to the verdict topic (and the
    /// routed copies) and acknowledged together.
    Verdicts(Vec<Scored>),
    /// An invalid message (from the source), produced to the dead-letter topic with its
    /// reason and source position in headers.
    DeadLetter {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
        /// The message's key, kept on the dead letter.
        key: Option<Vec<u8>>,
        /// The message's payload as received (truncated to 1,000 bytes only if the broker
        /// refuses it whole).
        payload: Vec<u8>,
        /// Why it was refused: a reason of `metrics::DEAD_LETTER_REASONS` and a detail.
        why: InvalidSample,
    },
    /// A model event of the engine (`ModelPublished`), produced to `kafka.model_events_topic`.
    Event(EngineEvent),
    /// A message that carries no sample and is not an error (a tombstone): acknowledged so its
    /// offset can be committed, counted under `reason`, not dead-lettered.
    Skipped {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
        /// Why it carries no sample (`tombstone`).
        reason: &'static str,
    },
}

/// Verdict batches that may await their acknowledgements at once, so the broker round trip
/// overlaps the next batches' sends (offsets stay correct: the tracker stores only the
/// acknowledged prefix).
pub const MAX_BATCHES_IN_FLIGHT: usize = 8;

/// Where verdicts go: the verdict topic, and the routed copies' clean and quarantine topics.
struct VerdictTopics {
    verdicts: String,
    clean: String,
    quarantine: String,
}

/// The sink stage, built from the configuration; [`Sink::run`] drains until its senders are
/// gone.
pub struct Sink {
    producer: FutureProducer,
    consumer: Arc<InputConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: DaemonMetrics,
    topics: Arc<VerdictTopics>,
    dlq_topic: String,
    model_events_topic: String,
    verdict_format: VerdictFormat,
}

impl Sink {
    /// The sink for `cfg`'s topics; offsets are stored on `consumer`.
    pub fn new(
        cfg: &ValidConfig,
        producer: FutureProducer,
        consumer: Arc<InputConsumer>,
        tracker: Arc<Mutex<OffsetTracker>>,
        metrics: DaemonMetrics,
    ) -> Self {
        let k = &cfg.kafka;
        Sink {
            producer,
            consumer,
            tracker,
            metrics,
            topics: Arc::new(VerdictTopics {
                verdicts: k.verdicts(),
                clean: k.clean(),
                quarantine: k.quarantine(),
            }),
            dlq_topic: k.dlq(),
            model_events_topic: k.model_events_topic.clone(),
            verdict_format: k.verdict_format,
        }
    }

    /// Produce what arrives until every sender is dropped, wait for the batches in flight,
    /// flush the producer.
    pub async fn run(self, mut rx: mpsc::Receiver<SinkMsg>) {
        let Sink {
            producer,
            consumer,
            tracker,
            metrics,
            topics,
            dlq_topic,
            model_events_topic,
            verdict_format,
        } = self;
        let pb: &[u8] = b"application/x-protobuf";
        let done = |topic: &str, partition: i32, offset: i64| {
            let pos = tracker
                .lock()
                .expect("tracker lock")
                .ack(topic, partition, offset);
            if let Some(pos) = pos {
                // rd_kafka_offset_store stores offset + 1 (the next to read).
                if let Err(e) = consumer.store_offset(topic, partition, pos - 1) {
                    tracing::debug!(topic, partition, error = %e, "offset not stored (partition revoked?)");
                }
            }
        };
        let ack_batch = |scored: Vec<Scored>| {
            for s in &scored {
                done(&s.incoming.topic, s.incoming.partition, s.incoming.offset);
            }
            VerdictsAcknowledged {
                verdicts: scored
                    .iter()
                    .map(|s| (s.verdict.noisy, s.incoming.received.elapsed().as_secs_f64())),
            }
            .emit(&metrics);
        };
        let mut inflight = futures::stream::FuturesOrdered::new();
        loop {
            let msg = tokio::select! {
                Some(scored) = futures::StreamExt::next(&mut inflight), if !inflight.is_empty() => {
                    ack_batch(scored);
                    continue;
                }
                msg = rx.recv(), if inflight.len() < MAX_BATCHES_IN_FLIGHT => msg,
            };
            let Some(msg) = msg else { break };
            match msg {
                SinkMsg::Verdicts(scored) => {
                    inflight.push_back(send_verdicts(
                        producer.clone(),
                        topics.clone(),
                        verdict_format,
                        scored,
                    ));
                }
                SinkMsg::DeadLetter {
                    topic,
                    partition,
                    offset,
                    key,
                    payload,
                    why,
                } => {
                    let (p, o) = (partition.to_string(), offset.to_string());
                    let h = headers(&[
                        (schema::DLQ_REASON_HEADER, why.reason.as_bytes()),
                        (schema::DLQ_DETAIL_HEADER, why.detail.as_bytes()),
                        (schema::DLQ_TOPIC_HEADER, topic.as_bytes()),
                        (schema::DLQ_PARTITION_HEADER, p.as_bytes()),
                        (schema::DLQ_OFFSET_HEADER, o.as_bytes()),
                    ]);
                    let key = key.as_deref().unwrap_or_default();
                    if let Err(e) = produce(&producer, &dlq_topic, key, &payload, h.clone()).await {
                        // Too large for the broker: keep the reason and the source position, and
                        // the first 1,000 bytes of the payload.
                        tracing::warn!(error = %e, partition, offset, "dead letter too large; truncating its payload");
                        let cut = &payload[..payload.len().min(1000)];
                        let h = h.insert(Header {
                            key: "rlap-dlq-truncated",
                            value: Some(payload.len().to_string().as_bytes()),
                        });
                        if let Err(e) = produce(&producer, &dlq_topic, key, cut, h).await {
                            tracing::error!(error = %e, partition, offset, "dead letter refused even truncated");
                        }
                    }
                    done(&topic, partition, offset);
                    DeadLettered {
                        partition,
                        offset,
                        reason: why.reason,
                    }
                    .emit(&metrics);
                }
                SinkMsg::Skipped {
                    topic,
                    partition,
                    offset,
                    reason,
                } => {
                    done(&topic, partition, offset);
                    MessageSkipped {
                        partition,
                        offset,
                        reason,
                    }
                    .emit(&metrics);
                }
                SinkMsg::Event(EngineEvent::Published(ev)) => {
                    let payload = ev.encode_to_vec();
                    if let Err(e) = produce(
                        &producer,
                        &model_events_topic,
                        ev.model_name.as_bytes(),
                        &payload,
                        headers(&[(schema::CONTENT_TYPE_HEADER, pb)]),
                    )
                    .await
                    {
                        tracing::error!(error = %e, "the broker refuses the ModelPublished event");
                    }
                    tracing::info!(model = %ev.model_name, version = ev.version, topic = %model_events_topic, "ModelPublished announced");
                }
            }
        }
        while let Some(scored) = futures::StreamExt::next(&mut inflight).await {
            ack_batch(scored);
        }
        if let Err(e) = producer.flush(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "producer flush at shutdown failed");
        }
        tracing::info!("sink drained");
    }
}

/// Produce one batch's verdicts (and routed copies) and wait for every acknowledgement.
async fn send_verdicts(
    producer: FutureProducer,
    topics: Arc<VerdictTopics>,
    format: VerdictFormat,
    scored: Vec<Scored>,
) -> Vec<Scored> {
    let (vt, ct, qt) = (&topics.verdicts, &topics.clean, &topics.quarantine);
    let sends = scored.iter().map(|s| {
        let (payload, content_type) = schema::encode_verdict(&s.verdict, format);
        let producer = &producer;
        async move {
            let key = s.verdict.sample_id.as_bytes();
            if let Err(e) = produce(
                producer,
                vt,
                key,
                &payload,
                headers(&[(schema::CONTENT_TYPE_HEADER, content_type)]),
            )
            .await
            {
                tracing::error!(sample = %s.verdict.sample_id, error = %e, "the broker refuses this verdict; skipped");
            }
            if let Some(orig) = &s.incoming.payload {
                let to = if s.verdict.noisy { qt } else { ct };
                if let Err(e) = produce(producer, to, key, orig, headers(&[])).await {
                    tracing::warn!(topic = %to, error = %e, "routed copy refused by the broker; skipped");
                }
            }
        }
    });
    futures::future::join_all(sends).await;
    scored
}
