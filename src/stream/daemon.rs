//! The streaming pipeline: Kafka source → scorer thread → Kafka sink, with at-least-once
//! offsets, dead letters, checkpoints and graceful shutdown.
//!
//! This module owns the tasks and channels (vector's source → transform → sink shape):
//! - **source** (tokio task): an rdkafka `StreamConsumer` in the consumer group with
//!   `enable.auto.offset.store=false`; decodes and validates each message
//!   ([`crate::stream::schema`]), sends invalid ones to the sink as dead letters, and valid
//!   ones in micro-batches (size or time window, whichever first) to the scorer. It also
//!   reports leadership (owning input partition 0) and consumer lag.
//! - **scorer** (one OS thread): the [`Engine`]; hands checkpoints to a writer thread.
//! - **sink** (tokio task): a `FutureProducer` (idempotent, acks=all) that produces verdicts
//!   keyed by sample id, routed copies, dead letters and `ModelPublished` events; after the
//!   broker acknowledges a sample's verdict or dead letter, its offset is marked done in the
//!   [`OffsetTracker`] and the contiguous prefix is stored; librdkafka commits stored offsets
//!   every `commit_interval_ms`, and once more at shutdown.
//!
//! Invariants: every channel is bounded (`scoring.queue_batches`), so a slow stage stops the
//! consumer instead of growing a queue; the scorer never blocks on I/O; an offset is stored
//! only after its sample's verdict (or dead letter) is acknowledged. Shutdown (the `shutdown`
//! watch flips): the source stops consuming and hands over its partial batch, the scorer
//! finishes it (and any running cycle) and checkpoints, the sink drains and flushes, the
//! consumer commits synchronously, and [`run`] returns the summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::metrics::DaemonMetrics;
use crate::store::ModelStore;
use crate::stream::config::DaemonConfig;
use crate::stream::engine::{
    Engine, EngineError, EngineEvent, EngineStatus, Incoming, Scored, SharedInputRange,
};
use crate::stream::offsets::OffsetTracker;
use crate::stream::schema::{self, Expect, InvalidSample};
use crate::stream::state;

/// Daemon failures (bad samples are never one of these: they go to the dead-letter topic).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A Kafka client could not be created or a topic could not be created.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The engine stopped.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The HTTP API could not start.
    #[error("api: {0}")]
    Api(String),
}

/// Requests from the API to the scorer.
#[derive(Debug)]
pub enum Control {
    /// Run a cycle now.
    Cycle,
}

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
    pub status: Arc<Mutex<Option<EngineStatus>>>,
    /// Requests to the scorer.
    pub control: mpsc::Sender<Control>,
}

enum ScorerMsg {
    Batch(Vec<Incoming>),
    Leader(bool),
    Tick,
}

enum SinkMsg {
    Verdicts(Vec<Scored>),
    DeadLetter {
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        why: InvalidSample,
    },
    Event(EngineEvent),
    /// A message that carries no sample and is not an error (a tombstone): acknowledged so its
    /// offset can be committed, counted under `reason`, not dead-lettered.
    Skipped {
        topic: String,
        partition: i32,
        offset: i64,
        reason: &'static str,
    },
}

struct Ctx {
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: DaemonMetrics,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Revoke(tpl) => {
                self.metrics
                    .consumer_rebalances
                    .with_label_values(&["revoke"])
                    .inc();
                let mut t = self.tracker.lock().expect("tracker lock");
                for e in tpl.elements() {
                    t.revoke(e.topic(), e.partition());
                    // A revoked partition's lag is the new owner's to report.
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[&e.partition().to_string()]);
                }
                tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        // Counted once the assignment is in effect: the source re-pauses when this moves.
        if let Rebalance::Assign(_) = r {
            self.metrics
                .consumer_rebalances
                .with_label_values(&["assign"])
                .inc();
        }
    }
}

/// librdkafka settings shared by every client: brokers plus `kafka.properties`.
pub fn client_config(cfg: &DaemonConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c
}

/// The consumer's settings: [`client_config`], then `kafka.consumer_properties`, then the
/// group and offset keys rlap owns (at-least-once: offsets are stored by the sink only).
pub fn consumer_config(cfg: &DaemonConfig) -> ClientConfig {
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
pub fn producer_config(cfg: &DaemonConfig) -> ClientConfig {
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
/// [`DaemonError::Kafka`] when the admin request fails for another reason than "exists".
pub async fn ensure_topics(cfg: &DaemonConfig, topics: &[String]) -> Result<(), DaemonError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)
        .create()
        .map_err(|e| DaemonError::Kafka(e.to_string()))?;
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
        .map_err(|e| DaemonError::Kafka(format!("creating topics: {e}")))?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, "topic created"),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "topic exists")
            }
            Err((t, e)) => return Err(DaemonError::Kafka(format!("creating topic {t}: {e}"))),
        }
    }
    Ok(())
}

fn output_topics(cfg: &DaemonConfig) -> Vec<String> {
    let k = &cfg.kafka;
    let mut t = vec![k.verdicts(), k.dlq(), k.model_events_topic.clone()];
    if k.route_by_verdict {
        t.push(k.clean());
        t.push(k.quarantine());
    }
    t
}

/// `rlap serve`: the daemon and, when `api.enabled`, the HTTP API (predict, versions,
/// rollback, cycle, status, metrics) in one process, until `shutdown` becomes true.
///
/// # Errors
/// [`DaemonError`] as [`run`], or [`DaemonError::Api`] when the listen address is taken.
pub async fn serve(
    cfg: Arc<DaemonConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<DaemonSummary, DaemonError> {
    let metrics = DaemonMetrics::new();
    let status = Arc::new(Mutex::new(None));
    let (control_tx, control_rx) = mpsc::channel(1);
    // The API stops after the daemon has (also when the daemon fails).
    let (api_stop_tx, api_stop) = watch::channel(false);
    let api = if cfg.api.enabled {
        let store = ModelStore::open(&cfg.model.store, cfg.model.retain)?;
        let bind: std::net::SocketAddr = cfg
            .api
            .listen
            .parse()
            .map_err(|e| DaemonError::Api(format!("api.listen: {e}")))?;
        let scfg = crate::serve::ServeConfig {
            bind,
            model: cfg.model.name.clone(),
            admin_token: Some(cfg.api.admin_token.clone()).filter(|t| !t.is_empty()),
            poll_interval: Duration::from_secs(1),
            max_batch: cfg.api.max_batch,
        };
        // The API serves the published versions through ONNX Runtime: a missing or too old
        // library stops the daemon at start-up with one line, not 503s behind a green probe.
        let rt = crate::onnx::runtime::loaded().map_err(|e| DaemonError::Api(e.to_string()))?;
        tracing::info!(library = %rt.library.display(), version = %rt.version, build = %rt.build, "ONNX Runtime loaded");
        let handles = DaemonHandles {
            metrics: metrics.clone(),
            status: status.clone(),
            control: control_tx,
        };
        let m = metrics.clone();
        let state = tokio::task::spawn_blocking(move || {
            crate::serve::AppState::with_daemon(store, scfg, m, Some(handles))
        })
        .await
        .map_err(|e| DaemonError::Api(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| DaemonError::Api(format!("binding {bind}: {e}")))?;
        tracing::info!(addr = %bind, "HTTP API listening");
        let watcher = tokio::spawn(crate::serve::watch_store(state.clone(), api_stop.clone()));
        let mut stop = api_stop;
        Some(tokio::spawn(async move {
            let r = axum::serve(listener, crate::serve::router(state))
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|v| *v).await;
                })
                .await;
            let _ = watcher.await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP API failed");
            }
            tracing::info!("HTTP API stopped");
        }))
    } else {
        drop(control_tx);
        None
    };
    let r = run(cfg, metrics, shutdown, status, control_rx).await;
    let _ = api_stop_tx.send(true);
    if let Some(api) = api {
        let _ = api.await;
    }
    r
}

/// Run the daemon until `shutdown` becomes true; returns what it did.
///
/// # Errors
/// [`DaemonError`] when a client, the store or the engine fails (never for a bad sample).
pub async fn run(
    cfg: Arc<DaemonConfig>,
    metrics: DaemonMetrics,
    shutdown: watch::Receiver<bool>,
    status: Arc<Mutex<Option<EngineStatus>>>,
    control: mpsc::Receiver<Control>,
) -> Result<DaemonSummary, DaemonError> {
    let store = ModelStore::open(&cfg.model.store, cfg.model.retain)?;
    let checkpoint = state::load(&cfg.state.dir)?;
    let engine = {
        let (cfg, store, metrics) = (cfg.clone(), store.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || Engine::new(cfg, store, metrics, checkpoint))
            .await
            .map_err(|e| DaemonError::Kafka(format!("engine start panicked: {e}")))??
    };
    if cfg.kafka.create_topics {
        let mut topics = vec![cfg.kafka.input_topic.clone()];
        topics.extend(output_topics(&cfg));
        ensure_topics(&cfg, &topics).await?;
    }

    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        consumer_config(&cfg)
            .create_with_context(Ctx {
                tracker: tracker.clone(),
                metrics: metrics.clone(),
            })
            .map_err(|e| DaemonError::Kafka(format!("consumer: {e}")))?,
    );
    consumer
        .subscribe(&[&cfg.kafka.input_topic])
        .map_err(|e| DaemonError::Kafka(format!("subscribe: {e}")))?;
    let producer: FutureProducer = producer_config(&cfg)
        .create()
        .map_err(|e| DaemonError::Kafka(format!("producer: {e}")))?;
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
    let counters = Arc::new(Counters::default());

    let input_range = engine.input_range();
    // Whether this replica owns input partition 0 (0/1; 2 before the first assignment), written
    // by the source, read by a scorer that waits for the leader's first model.
    let leader_flag = Arc::new(std::sync::atomic::AtomicU8::new(2));
    let scorer = {
        let (cfg, sink_tx, status) = (cfg.clone(), sink_tx.clone(), status.clone());
        let leader_flag = leader_flag.clone();
        std::thread::Builder::new()
            .name("rlap-scorer".into())
            .spawn(move || {
                scorer_loop(cfg, engine, score_rx, control, sink_tx, status, leader_flag)
            })
            .map_err(|e| DaemonError::Kafka(format!("spawning the scorer: {e}")))?
    };
    let sink = tokio::spawn(sink_loop(
        cfg.clone(),
        producer,
        consumer.clone(),
        tracker.clone(),
        sink_rx,
        metrics.clone(),
        counters.clone(),
    ));
    let source = source_loop(
        cfg.clone(),
        consumer.clone(),
        tracker,
        score_tx,
        sink_tx,
        metrics,
        counters.clone(),
        shutdown,
        input_range,
        leader_flag,
    )
    .await;
    // The source dropped its senders; the scorer drains and exits, then the sink.
    let scorer_result = tokio::task::spawn_blocking(move || scorer.join())
        .await
        .map_err(|e| DaemonError::Kafka(e.to_string()))?
        .map_err(|_| DaemonError::Kafka("the scorer thread panicked".into()))?;
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
    source?;
    let engine_summary = scorer_result?;
    tracing::info!("daemon stopped");
    Ok(DaemonSummary {
        consumed: counters.consumed.load(Ordering::Relaxed),
        verdicts: counters.verdicts.load(Ordering::Relaxed),
        noisy: counters.noisy.load(Ordering::Relaxed),
        dead_letters: counters.dead_letters.load(Ordering::Relaxed),
        model_version: engine_summary.0,
        cycles: engine_summary.1,
    })
}

/// Dead letters and skipped messages the source holds for a busy sink before it pauses the
/// input (resumed below half of it). Each holds its payload (≤ `kafka.max_message_bytes`).
const SOURCE_SINK_BACKLOG: usize = 256;

/// How long the scorer may take no message, with messages waiting for it, before the source
/// pauses the input partitions (and keeps polling, so the consumer stays in its group through
/// a long bootstrap or cycle swap). Shorter waits are plain back-pressure: the source stops
/// receiving but does not pause, because a pause drops what librdkafka has prefetched and a
/// resume fetches it again; pausing whenever two batches waited made a draining daemon pause
/// and resume every batch (bench-stream: ~3,000 samples/s, against ~24,000 before).
const SCORER_STALL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Counters {
    consumed: AtomicU64,
    verdicts: AtomicU64,
    noisy: AtomicU64,
    dead_letters: AtomicU64,
}

#[allow(clippy::too_many_arguments)]
async fn source_loop(
    cfg: Arc<DaemonConfig>,
    consumer: Arc<StreamConsumer<Ctx>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    score_tx: mpsc::Sender<ScorerMsg>,
    sink_tx: mpsc::Sender<SinkMsg>,
    metrics: DaemonMetrics,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
    input_range: SharedInputRange,
    leader_flag: Arc<std::sync::atomic::AtomicU8>,
) -> Result<(), DaemonError> {
    let expect = Expect {
        num_features: cfg.model.num_features,
        num_classes: cfg.model.num_classes,
        max_bytes: cfg.kafka.max_message_bytes,
    };
    let shift_tolerance = cfg.scoring.input_shift_tolerance as f32;
    let shift_fraction = cfg.scoring.input_shift_max_fraction;
    // tolerance 0 turns the check off.
    let input_range = if shift_tolerance > 0.0 {
        input_range
    } else {
        SharedInputRange::default()
    };
    let window = Duration::from_millis(cfg.scoring.batch_window_ms.max(1));
    let bs = cfg.scoring.batch_size;
    let mut batch: Vec<Incoming> = Vec::with_capacity(bs);
    let mut deadline = Instant::now() + window;
    let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
    let mut leader = None;
    let mut ticks = 0u64;
    // Messages for the scorer that its full queue has not taken yet. While it is busy (the
    // bootstrap's training, a slow batch) the source pauses the input partitions and keeps
    // polling, so the consumer never exceeds max.poll.interval.ms and leaves the group; what
    // librdkafka had fetched is dropped by the pause and fetched again after the resume.
    let mut out: std::collections::VecDeque<ScorerMsg> = std::collections::VecDeque::new();
    // The same for dead letters and skipped messages on their way to the sink.
    let mut sink_out: std::collections::VecDeque<SinkMsg> = std::collections::VecDeque::new();
    // While paused: the number of assignments seen when the input was last paused. A new
    // assignment (a rebalance) while paused gets paused too; otherwise no per-message call.
    let assignments = metrics.consumer_rebalances.with_label_values(&["assign"]);
    let mut paused: Option<u64> = None;
    // The number of assignments seen when the input was last resumed while not paused.
    let mut resumed_for = 0u64;
    // When the scorer last took a message.
    let mut last_handover = Instant::now();
    loop {
        // Before every pass (also after a `continue`):
        // More than one message waiting: the scorer is behind. Stop receiving (back-pressure)
        // while it keeps taking messages; when it has taken none for SCORER_STALL, pause the
        // input and receive again, so polling goes on (one waiting message is the normal
        // hand-over at full speed).
        // Paused again after a rebalance while it lasts, so that partitions assigned meanwhile
        // are paused too (pausing a paused partition is a no-op).
        let seen = assignments.get();
        let backed_up = out.len() >= 2;
        let stalled = backed_up && last_handover.elapsed() >= SCORER_STALL;
        // The sink behind on dead letters: the same, with its own bound.
        let busy = stalled || sink_out.len() >= SOURCE_SINK_BACKLOG;
        if paused.is_some() && out.is_empty() && sink_out.len() < SOURCE_SINK_BACKLOG / 2 {
            // The current assignment: partitions assigned while paused included. Still
            // paused (tried again next pass) when that fails.
            match consumer.assignment().map(|tpl| consumer.resume(&tpl)) {
                Ok(Ok(())) => {
                    paused = None;
                    tracing::debug!("scorer and sink caught up: input resumed");
                }
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %e, "resuming the input partitions failed")
                }
            }
        }
        if busy && paused != Some(seen) {
            if let Ok(tpl) = consumer.assignment() {
                match consumer.pause(&tpl) {
                    Ok(()) => {
                        if paused.is_none() {
                            tracing::debug!(
                                waiting = out.len(),
                                dead_letters_waiting = sink_out.len(),
                                "scorer or sink busy: input paused"
                            );
                        }
                        // Read before the assignment: one that lands in between re-pauses next pass.
                        paused = Some(seen);
                    }
                    Err(e) => tracing::warn!(error = %e, "pausing the input partitions failed"),
                }
            }
        }
        // Not paused: partitions (re)assigned since the last pass are resumed explicitly. A
        // resume that raced a rebalance (run between its revoke and its assign, on an empty
        // assignment) would otherwise leave partitions librdkafka still marks paused from
        // before the revoke stopped for good. Resuming an unpaused partition is a no-op.
        if paused.is_none() && resumed_for != seen {
            if let Ok(Ok(())) = consumer.assignment().map(|tpl| consumer.resume(&tpl)) {
                resumed_for = seen;
            }
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            permit = score_tx.reserve(), if !out.is_empty() => {
                let Ok(permit) = permit else { break };
                permit.send(out.pop_front().expect("not empty"));
                last_handover = Instant::now();
            }
            // Dead letters and skips wait here, not in an await, so a sink backed up by a slow
            // broker does not stall polling either.
            permit = sink_tx.reserve(), if !sink_out.is_empty() => {
                let Ok(permit) = permit else { break };
                permit.send(sink_out.pop_front().expect("not empty"));
            }
            _ = housekeeping.tick() => {
                let is_leader = consumer
                    .assignment()
                    .map(|a| a.elements_for_topic(&cfg.kafka.input_topic).iter().any(|e| e.partition() == 0))
                    .unwrap_or(false);
                leader_flag.store(u8::from(is_leader), Ordering::Relaxed);
                if leader != Some(is_leader) {
                    leader = Some(is_leader);
                    out.push_back(ScorerMsg::Leader(is_leader));
                }
                if score_tx.try_send(ScorerMsg::Tick).is_err() && score_tx.is_closed() { break; }
                ticks += 1;
                if ticks % 10 == 1 {
                    // Blocking broker round trips (metadata, watermarks): off the runtime.
                    let (c, t, m) = (consumer.clone(), cfg.kafka.input_topic.clone(), metrics.clone());
                    tokio::task::spawn_blocking(move || {
                        let reachable = c.fetch_metadata(Some(&t), Duration::from_secs(2)).is_ok();
                        m.broker_reachable.set(i64::from(reachable));
                        if reachable {
                            report_lag(&c, &t, &m);
                        }
                    });
                }
            }
            _ = tokio::time::sleep(wait), if !batch.is_empty() => {
                out.push_back(ScorerMsg::Batch(std::mem::take(&mut batch)));
            }
            // Receive unless the scorer is behind but still taking batches; when it has
            // stalled, poll even if pausing failed (the group's max.poll.interval.ms).
            msg = consumer.recv(), if !backed_up || stalled || paused.is_some() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        metrics.consumer_errors.inc();
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                metrics.samples_consumed.inc();
                counters.consumed.fetch_add(1, Ordering::Relaxed);
                let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
                tracker.lock().expect("tracker lock").received(&topic, partition, offset);
                let json = crate::stream::tools::is_json(&msg);
                let Some(payload) = msg.payload() else {
                    // A tombstone (null value: a delete marker on a compacted topic) is not a
                    // malformed sample: skip and count it, keep it out of the dead-letter alert.
                    sink_out.push_back(SinkMsg::Skipped { topic, partition, offset, reason: "tombstone" });
                    continue;
                };
                let decoded = schema::decode(payload, json, &expect).and_then(|s| {
                    // Far outside the current model's training inputs (a unit or scale change
                    // upstream): dead-lettered before it reaches the verdict rule or a cycle.
                    let range = input_range.read().expect("input range lock").clone();
                    match range.and_then(|r| r.shifted(&s.features, shift_tolerance, shift_fraction)) {
                        Some(o) => Err(InvalidSample { reason: "input_shift", detail: o.to_string() }),
                        None => Ok(s),
                    }
                });
                match decoded {
                    Ok(sample) => {
                        if batch.is_empty() {
                            deadline = Instant::now() + window;
                        }
                        batch.push(Incoming {
                            sample,
                            topic,
                            partition,
                            offset,
                            payload: cfg.kafka.route_by_verdict.then(|| Arc::from(payload)),
                            received: Instant::now(),
                        });
                        if batch.len() >= bs {
                            out.push_back(ScorerMsg::Batch(std::mem::replace(&mut batch, Vec::with_capacity(bs))));
                        }
                    }
                    Err(why) => {
                        tracing::debug!(partition, offset, reason = why.reason, detail = %why.detail, "invalid sample: dead-lettered");
                        sink_out.push_back(SinkMsg::DeadLetter {
                            topic,
                            partition,
                            offset,
                            key: msg.key().map(<[u8]>::to_vec),
                            payload: payload.to_vec(),
                            why,
                        });
                    }
                }
            }
        }
    }
    for m in out {
        if score_tx.send(m).await.is_err() {
            break;
        }
    }
    for m in sink_out {
        if sink_tx.send(m).await.is_err() {
            break;
        }
    }
    if !batch.is_empty() {
        let _ = score_tx.send(ScorerMsg::Batch(batch)).await;
    }
    tracing::info!("stopped consuming");
    Ok(())
}

fn report_lag(consumer: &StreamConsumer<Ctx>, topic: &str, metrics: &DaemonMetrics) {
    let Ok(pos) = consumer.position() else { return };
    for e in pos.elements_for_topic(topic) {
        if let (Offset::Offset(p), Ok((_, high))) = (
            e.offset(),
            consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(1)),
        ) {
            if high >= 0 {
                metrics
                    .consumer_lag
                    .with_label_values(&[&e.partition().to_string()])
                    .set((high - p).max(0));
            }
        }
    }
}

fn scorer_loop(
    cfg: Arc<DaemonConfig>,
    mut engine: Engine,
    mut rx: mpsc::Receiver<ScorerMsg>,
    mut control: mpsc::Receiver<Control>,
    sink: mpsc::Sender<SinkMsg>,
    status: Arc<Mutex<Option<EngineStatus>>>,
    leader_flag: Arc<std::sync::atomic::AtomicU8>,
) -> Result<(u64, Vec<crate::stream::cycle::CycleRecord>), DaemonError> {
    let interval = Duration::from_secs(cfg.state.checkpoint_interval_secs.max(1));
    let mut last_checkpoint = Instant::now();
    // Checkpoints are written by their own thread (JSON + fsync + rename can take hundreds of
    // milliseconds on a busy disk; the scorer must not wait for it). One pending at most: if
    // the writer is still busy, this interval's snapshot is skipped.
    let (cp_tx, cp_rx) = std::sync::mpsc::sync_channel::<crate::stream::engine::Checkpoint>(1);
    let writer = {
        let dir = cfg.state.dir.clone();
        std::thread::Builder::new()
            .name("rlap-checkpoint".into())
            .spawn(move || {
                while let Ok(cp) = cp_rx.recv() {
                    if let Err(e) = state::save(&dir, &cp) {
                        tracing::warn!(error = %e, "checkpoint failed");
                    }
                }
            })
            .map_err(|e| DaemonError::Kafka(format!("spawning the checkpoint writer: {e}")))?
    };
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut result = Ok(());
    *status.lock().expect("status lock") = Some(engine.status());
    let mut last_status = Instant::now();
    loop {
        // A follower holding its bootstrap window takes no more samples until the leader's
        // first model is in the store: it ticks (store check, leadership from the source's
        // flag) while its queue fills and the source pauses the input.
        let msg = if engine.waiting_for_first_model() {
            if rx.is_closed() {
                break; // shutting down: the held samples are re-delivered after the restart
            }
            std::thread::sleep(Duration::from_millis(200));
            match leader_flag.load(Ordering::Relaxed) {
                1 => ScorerMsg::Leader(true),
                _ => ScorerMsg::Tick,
            }
        } else {
            match rx.blocking_recv() {
                Some(m) => m,
                None => break,
            }
        };
        while let Ok(Control::Cycle) = control.try_recv() {
            engine.request_cycle();
        }
        let idle = matches!(msg, ScorerMsg::Tick);
        let r = match msg {
            ScorerMsg::Batch(b) => engine.process(b, &mut out, &mut events),
            // A leadership change or an idle tick can move a phase on with no new sample: a
            // new leader bootstraps from what it holds, a follower that adopted the leader's
            // first model warms up on its held samples.
            ScorerMsg::Leader(l) => {
                engine.set_leader(l);
                engine.process(vec![], &mut out, &mut events)
            }
            ScorerMsg::Tick => engine.process(vec![], &mut out, &mut events),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "the scoring engine failed; stopping");
            result = Err(e);
            break;
        }
        let cycles_before = events.len();
        if !out.is_empty()
            && sink
                .blocking_send(SinkMsg::Verdicts(std::mem::take(&mut out)))
                .is_err()
        {
            break;
        }
        for ev in events.drain(..) {
            let _ = sink.blocking_send(SinkMsg::Event(ev));
        }
        if cycles_before > 0 || last_checkpoint.elapsed() >= interval {
            let _ = cp_tx.try_send(engine.checkpoint());
            last_checkpoint = Instant::now();
        }
        // The status (for /v1/status and the demo) clones the cycle records: refresh it a few
        // times a second (and on every idle tick), not after every micro-batch.
        if idle || last_status.elapsed() >= Duration::from_millis(200) {
            *status.lock().expect("status lock") = Some(engine.status());
            last_status = Instant::now();
        }
    }
    // Drain: finish a running cycle, announce, checkpoint.
    engine.finish(&mut events);
    for ev in events.drain(..) {
        let _ = sink.blocking_send(SinkMsg::Event(ev));
    }
    let held = engine.held();
    if held > 0 {
        tracing::info!(held, "samples still in bootstrap/warm-up get their verdicts after the next start (offsets not stored)");
    }
    drop(cp_tx);
    let _ = writer.join();
    state::save(&cfg.state.dir, &engine.checkpoint())?;
    tracing::info!(
        version = engine.version(),
        "scorer stopped; checkpoint written"
    );
    let st = engine.status();
    *status.lock().expect("status lock") = Some(st.clone());
    result?;
    Ok((engine.version(), st.cycles))
}

fn headers(pairs: &[(&str, &[u8])]) -> OwnedHeaders {
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
async fn produce(
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

/// Produce one batch's verdicts (and routed copies) and wait for every acknowledgement.
async fn send_verdicts(
    producer: FutureProducer,
    topics: Arc<(String, String, String)>,
    format: crate::stream::config::VerdictFormat,
    scored: Vec<Scored>,
) -> Vec<Scored> {
    let (vt, ct, qt) = (&topics.0, &topics.1, &topics.2);
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

async fn sink_loop(
    cfg: Arc<DaemonConfig>,
    producer: FutureProducer,
    consumer: Arc<StreamConsumer<Ctx>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    mut rx: mpsc::Receiver<SinkMsg>,
    metrics: DaemonMetrics,
    counters: Arc<Counters>,
) {
    let verdicts_topic = cfg.kafka.verdicts();
    let dlq_topic = cfg.kafka.dlq();
    let (clean_topic, quarantine_topic) = (cfg.kafka.clean(), cfg.kafka.quarantine());
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
    let topics = Arc::new((verdicts_topic, clean_topic, quarantine_topic));
    let verdict_format = cfg.kafka.verdict_format;
    let ack_batch = |scored: Vec<Scored>| {
        for s in &scored {
            done(&s.incoming.topic, s.incoming.partition, s.incoming.offset);
            metrics
                .verdicts
                .with_label_values(&[if s.verdict.noisy { "noisy" } else { "clean" }])
                .inc();
            metrics
                .verdict_latency_seconds
                .observe(s.incoming.received.elapsed().as_secs_f64());
        }
        counters
            .verdicts
            .fetch_add(scored.len() as u64, Ordering::Relaxed);
        counters.noisy.fetch_add(
            scored.iter().filter(|s| s.verdict.noisy).count() as u64,
            Ordering::Relaxed,
        );
    };
    // Up to MAX_BATCHES_IN_FLIGHT verdict batches await their acknowledgements at once, so
    // the broker round trip overlaps the next batches' sends (offsets stay correct: the
    // tracker stores only the acknowledged prefix).
    const MAX_BATCHES_IN_FLIGHT: usize = 8;
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
                metrics
                    .invalid_samples
                    .with_label_values(&[why.reason])
                    .inc();
                counters.dead_letters.fetch_add(1, Ordering::Relaxed);
            }
            SinkMsg::Skipped {
                topic,
                partition,
                offset,
                reason,
            } => {
                tracing::debug!(partition, offset, reason, "message skipped");
                done(&topic, partition, offset);
                metrics.skipped_messages.with_label_values(&[reason]).inc();
            }
            SinkMsg::Event(EngineEvent::Published(ev)) => {
                let payload = ev.encode_to_vec();
                if let Err(e) = produce(
                    &producer,
                    &cfg.kafka.model_events_topic,
                    ev.model_name.as_bytes(),
                    &payload,
                    headers(&[(schema::CONTENT_TYPE_HEADER, pb)]),
                )
                .await
                {
                    tracing::error!(error = %e, "the broker refuses the ModelPublished event");
                }
                tracing::info!(model = %ev.model_name, version = ev.version, topic = %cfg.kafka.model_events_topic, "ModelPublished announced");
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let consumer = consumer_config(&c);
        assert_eq!(consumer.get("security.protocol"), Some("SSL"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("compression.type"), None);
        let producer = producer_config(&c);
        assert_eq!(producer.get("security.protocol"), Some("SSL"));
        assert_eq!(producer.get("compression.type"), Some("lz4"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        // rlap's linger.ms default yields to the shared table, which yields to the producer's.
        assert_eq!(producer.get("linger.ms"), Some("50"));
        c.kafka
            .producer_properties
            .insert("linger.ms".into(), "20".into());
        assert_eq!(producer_config(&c).get("linger.ms"), Some("20"));
        c.kafka.properties.clear();
        c.kafka.producer_properties.clear();
        assert_eq!(producer_config(&c).get("linger.ms"), Some("5"));
        assert_eq!(producer_config(&c).get("acks"), Some("all"));
    }
}
