//! The source stage (a tokio task): polls the input consumer, decodes and validates each
//! message ([`crate::stream::schema`]) and checks it against the current version's training
//! inputs ([`crate::input_range`]); valid samples go to the scorer in micro-batches (size or
//! time window, whichever first), invalid ones to the sink as dead letters, tombstones to the
//! sink as skips. It also reports leadership (owning input partition 0), broker reachability
//! and consumer lag, and keeps the consumer in its group while the scorer is busy.
//!
//! Invariant: **the poll loop never waits on the scorer or the sink for long.** What they have
//! not taken waits in the source's own queues; a scorer that has taken nothing for
//! [`SCORER_STALL`] (or a sink with [`SOURCE_SINK_BACKLOG`] dead letters waiting) gets the
//! input partitions paused while polling goes on.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tokio::sync::{mpsc, watch};

use crate::events::{BrokersChecked, ConsumerErrored, InternalEvent as _, MessageReceived};
use crate::metrics::DaemonMetrics;
use crate::stream::config::ValidConfig;
use crate::stream::engine::{Incoming, SharedInputRange};
use crate::stream::kafka::{self, InputConsumer};
use crate::stream::offsets::OffsetTracker;
use crate::stream::schema::{self, Expect, InvalidSample};
use crate::stream::scorer::{LeaderFlag, ScorerMsg};
use crate::stream::sink::SinkMsg;

/// Dead letters and skipped messages the source holds for a busy sink before it pauses the
/// input (resumed below half of it). Each holds its payload (≤ `kafka.max_message_bytes`).
pub const SOURCE_SINK_BACKLOG: usize = 256;

/// How long the scorer may take no message, with messages waiting for it, before the source
/// pauses the input partitions (and keeps polling, so the consumer stays in its group through
/// a long bootstrap or cycle swap). Shorter waits are plain back-pressure: the source stops
/// receiving but does not pause, because a pause drops what librdkafka has prefetched and a
/// resume fetches it again; pausing whenever two batches waited made a draining daemon pause
/// and resume every batch (bench-stream: ~3,000 samples/s, against ~24,000 before).
pub const SCORER_STALL: Duration = Duration::from_secs(1);

/// The source stage, built from the configuration (see [`Source::new`]); [`Source::run`]
/// polls until shutdown.
pub struct Source {
    consumer: Arc<InputConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: DaemonMetrics,
    expect: Expect,
    /// Input-shift slack (spans); with 0 the check is off and `input_range` empty.
    shift_tolerance: f32,
    shift_fraction: f64,
    input_range: SharedInputRange,
    window: Duration,
    batch_size: usize,
    input_topic: String,
    keep_payload: bool,
    leader_flag: LeaderFlag,
}

impl Source {
    /// The source for `cfg`'s input topic on `consumer`; `input_range` is the engine's handle
    /// on the current version's training-input range, `leader_flag` what it reports
    /// leadership into.
    pub fn new(
        cfg: &ValidConfig,
        consumer: Arc<InputConsumer>,
        tracker: Arc<Mutex<OffsetTracker>>,
        metrics: DaemonMetrics,
        input_range: SharedInputRange,
        leader_flag: LeaderFlag,
    ) -> Self {
        let shift_tolerance = cfg.scoring.input_shift_tolerance as f32;
        Source {
            consumer,
            tracker,
            metrics,
            expect: Expect {
                num_features: cfg.model.num_features,
                num_classes: cfg.model.num_classes,
                max_bytes: cfg.kafka.max_message_bytes,
            },
            shift_tolerance,
            shift_fraction: cfg.scoring.input_shift_max_fraction,
            // tolerance 0 turns the check off.
            input_range: if shift_tolerance > 0.0 {
                input_range
            } else {
                SharedInputRange::default()
            },
            window: Duration::from_millis(cfg.scoring.batch_window_ms.max(1)),
            batch_size: cfg.scoring.batch_size,
            input_topic: cfg.kafka.input_topic.clone(),
            keep_payload: cfg.kafka.route_by_verdict,
            leader_flag,
        }
    }

    /// Poll until `shutdown` flips or the scorer is gone; then hand over what is queued and
    /// the partial batch (dropping `score_tx` and `sink_tx` lets the scorer and sink drain).
    pub async fn run(
        self,
        score_tx: mpsc::Sender<ScorerMsg>,
        sink_tx: mpsc::Sender<SinkMsg>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Source {
            consumer,
            tracker,
            metrics,
            expect,
            shift_tolerance,
            shift_fraction,
            input_range,
            window,
            batch_size: bs,
            input_topic,
            keep_payload,
            leader_flag,
        } = self;
        let mut batch: Vec<Incoming> = Vec::with_capacity(bs);
        let mut deadline = Instant::now() + window;
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        let mut leader = None;
        let mut ticks = 0u64;
        let mut broker_check: Option<tokio::task::JoinHandle<()>> = None;
        // Messages for the scorer that its full queue has not taken yet. While it is busy (the
        // bootstrap's training, a slow batch) the source pauses the input partitions and keeps
        // polling, so the consumer never exceeds max.poll.interval.ms and leaves the group; what
        // librdkafka had fetched is dropped by the pause and fetched again after the resume.
        let mut out: VecDeque<ScorerMsg> = VecDeque::new();
        // The same for dead letters and skipped messages on their way to the sink.
        let mut sink_out: VecDeque<SinkMsg> = VecDeque::new();
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
                        .map(|a| a.elements_for_topic(&input_topic).iter().any(|e| e.partition() == 0))
                        .unwrap_or(false);
                    leader_flag.store(u8::from(is_leader), Ordering::Relaxed);
                    if leader != Some(is_leader) {
                        leader = Some(is_leader);
                        out.push_back(ScorerMsg::Leader(is_leader));
                    }
                    if score_tx.try_send(ScorerMsg::Tick).is_err() && score_tx.is_closed() { break; }
                    ticks += 1;
                    // At most one check in flight (a slow broker does not pile them up).
                    if ticks % 10 == 1 && broker_check.as_ref().is_none_or(|h| h.is_finished()) {
                        // Blocking broker round trips (metadata, watermarks): off the runtime.
                        let (c, t, m) = (consumer.clone(), input_topic.clone(), metrics.clone());
                        broker_check = Some(tokio::task::spawn_blocking(move || {
                            let reachable = c.fetch_metadata(Some(&t), Duration::from_secs(2)).is_ok();
                            BrokersChecked { reachable }.emit(&m);
                            if reachable {
                                kafka::report_lag(&c, &t, &m);
                            }
                        }));
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
                            ConsumerErrored { error: &e }.emit(&metrics);
                            continue;
                        }
                    };
                    MessageReceived.emit(&metrics);
                    let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
                    tracker.lock().expect("tracker lock").received(&topic, partition, offset);
                    let json = kafka::is_json(&msg);
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
                                payload: keep_payload.then(|| Arc::from(payload)),
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
        // The check holds a handle on the consumer: wait for it (a few seconds at most), so the
        // consumer is closed by the daemon while the brokers are still there, not later by
        // this task (a close against gone brokers waits out the group session, and the
        // runtime's shutdown waits for it: `rlap demo` sometimes lingered ~48 s at exit).
        if let Some(h) = broker_check {
            let _ = h.await;
        }
        tracing::info!("stopped consuming");
    }
}
