//! The streaming pipeline's wiring: Kafka source → scorer thread → Kafka sink, joined by
//! bounded channels (vector's source → transform → sink shape), and the shutdown order.
//!
//! Each stage owns one job and is built from the configuration: [`Source`] (poll, decode,
//! validate, micro-batch), [`Scorer`] (the [`Engine`] on its own thread, checkpoints),
//! [`Sink`] (produce, acknowledge, store offsets); [`crate::stream::kafka`] holds the client
//! settings they share. This module creates the clients and channels, starts the stages and
//! stops them in order.
//!
//! Invariants: every channel is bounded (`scoring.queue_batches`), so a slow stage stops the
//! consumer instead of growing a queue; an offset is stored only after its sample's verdict
//! (or dead letter) is acknowledged. Shutdown (the `shutdown` watch flips): the source stops
//! consuming and hands over its partial batch, the scorer finishes it (and any running cycle)
//! and checkpoints, the sink drains and flushes, the consumer commits synchronously, and
//! [`run`] returns the summary.

use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureProducer;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::events::RunTotals;
use crate::metrics::DaemonMetrics;
use crate::store::ModelStore;
use crate::stream::config::ValidConfig;
use crate::stream::engine::{Engine, EngineError};
use crate::stream::kafka::{self, ClientError, InputConsumer, RebalanceContext};
use crate::stream::offsets::OffsetTracker;
use crate::stream::scorer::{Scorer, ScorerMsg, SharedStatus};
use crate::stream::sink::{Sink, SinkMsg};
use crate::stream::source::Source;
use crate::stream::state;

/// Daemon failures (bad samples are never one of these: they go to the dead-letter topic).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A Kafka client could not be created or a topic could not be created.
    #[error(transparent)]
    Kafka(#[from] ClientError),
    /// The engine stopped.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A stage's thread could not start or panicked.
    #[error("{0}")]
    Thread(String),
}

pub use crate::stream::scorer::Control;

/// What a run did (returned at shutdown; the demo prints it).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DaemonSummary {
    /// Input messages received.
    pub consumed: u64,
    /// Verdicts acknowledged by the broker.
    pub verdicts: u64,
    /// Of those, noisy.
    pub noisy: u64,
    /// Dead letters acknowledged.
    pub dead_letters: u64,
    /// The model version at exit.
    pub model_version: u64,
    /// Cycles by outcome (from the checkpointed records).
    pub cycles: Vec<crate::stream::cycle::CycleRecord>,
}

/// Handles shared with the API.
#[derive(Clone)]
pub struct DaemonHandles {
    /// Metrics of this daemon.
    pub metrics: DaemonMetrics,
    /// The engine's latest status.
    pub status: SharedStatus,
    /// Requests to the scorer.
    pub control: mpsc::Sender<Control>,
}

/// Run the daemon until `shutdown` becomes true; returns what it did, read from `metrics`'
/// counters (what they gained during this run).
///
/// # Errors
/// [`DaemonError`] when a client, the store or the engine fails (never for a bad sample).
pub async fn run(
    cfg: Arc<ValidConfig>,
    metrics: DaemonMetrics,
    shutdown: watch::Receiver<bool>,
    status: SharedStatus,
    control: mpsc::Receiver<Control>,
) -> Result<DaemonSummary, DaemonError> {
    // The summary counts this run's events only, also when `metrics` saw an earlier run.
    let before = RunTotals::read(&metrics);
    let store = ModelStore::open(&cfg.model.store, cfg.model.retain)?;
    let checkpoint = state::load(&cfg.state.dir)?;
    let engine = {
        let (cfg, store, metrics) = (cfg.clone(), store.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || Engine::new(cfg, store, metrics, checkpoint))
            .await
            .map_err(|e| DaemonError::Thread(format!("engine start panicked: {e}")))??
    };
    if cfg.kafka.create_topics {
        let mut topics = vec![cfg.kafka.input_topic.clone()];
        topics.extend(kafka::output_topics(&cfg));
        kafka::ensure_topics(&cfg, &topics).await?;
    }

    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let consumer: Arc<InputConsumer> = Arc::new(
        kafka::consumer_config(&cfg)
            .create_with_context(RebalanceContext {
                tracker: tracker.clone(),
                metrics: metrics.clone(),
            })
            .map_err(|e| ClientError(format!("consumer: {e}")))?,
    );
    consumer
        .subscribe(&[&cfg.kafka.input_topic])
        .map_err(|e| ClientError(format!("subscribe: {e}")))?;
    let producer: FutureProducer = kafka::producer_config(&cfg)
        .create()
        .map_err(|e| ClientError(format!("producer: {e}")))?;
    tracing::info!(
        brokers = %cfg.kafka.brokers,
        group = %cfg.kafka.group_id,
        input = %cfg.kafka.input_topic,
        verdicts = %cfg.kafka.verdicts(),
        "daemon started"
    );

    let q = cfg.scoring.queue_batches;
    let (score_tx, score_rx) = mpsc::channel::<ScorerMsg>(q);
    let (sink_tx, sink_rx) = mpsc::channel::<SinkMsg>(q * 2);
    // Whether this replica owns input partition 0 (0/1; 2 before the first assignment), written
    // by the source, read by a scorer that waits for the leader's first model.
    let leader_flag = Arc::new(AtomicU8::new(2));
    let source = Source::new(
        &cfg,
        consumer.clone(),
        tracker.clone(),
        metrics.clone(),
        engine.input_range(),
        leader_flag.clone(),
    );
    let scorer = Scorer::new(&cfg, engine, status, leader_flag)
        .spawn(score_rx, control, sink_tx.clone())
        .map_err(|e| DaemonError::Thread(format!("spawning {e}")))?;
    let sink = tokio::spawn(
        Sink::new(&cfg, producer, consumer.clone(), tracker, metrics.clone()).run(sink_rx),
    );
    source.run(score_tx, sink_tx, shutdown).await;
    // The source dropped its senders; the scorer drains and exits, then the sink.
    let scorer_result = tokio::task::spawn_blocking(move || scorer.join())
        .await
        .map_err(|e| DaemonError::Thread(e.to_string()))?
        .map_err(|_| DaemonError::Thread("the scorer thread panicked".into()))?;
    let _ = sink.await;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => tracing::info!("offsets already committed"),
        Err(e) => {
            tracing::warn!(error = %e, "final offset commit failed (the next start re-reads from the last commit)")
        }
    }
    let exit = scorer_result?;
    tracing::info!("daemon stopped");
    let totals = RunTotals::read(&metrics).since(&before);
    Ok(DaemonSummary {
        consumed: totals.consumed,
        verdicts: totals.verdicts,
        noisy: totals.noisy,
        dead_letters: totals.dead_letters,
        model_version: exit.model_version,
        cycles: exit.cycles,
    })
}
