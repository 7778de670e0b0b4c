//! The scoring engine: micro-batches of valid samples in, verdicts out; owns the current
//! model, the verdict rule ([`crate::stream::verdicter`]), the trigger, the replay buffer and
//! the cycle thread.
//!
//! This module is synchronous and knows nothing of Kafka: the daemon
//! ([`crate::stream::daemon`]) runs it on one dedicated thread fed by a bounded channel. Its
//! phases, per model version:
//! 1. **Bootstrap** (no model in the store): collect `bootstrap.samples` samples, train the
//!    first model on them (Adam, §3.4 recipe), publish it as version 1, and score those
//!    samples out of sample with `bootstrap.crossfit_folds` fold models.
//! 2. **Warm-up**: hold verdicts until the bootstrap's out-of-sample scores, or
//!    `mixture.warmup_samples` samples scored by the current model, are in; fit the verdict
//!    rule on them, then release their verdicts.
//! 3. **Scoring**: attribution and class probabilities → posterior → verdict → stepwise
//!    update of the rule, per micro-batch.
//!
//! A new version (an accepted cycle here, or one published by another replica and found in
//! the store) takes the noise model's statistics over, or comes with a mixture already
//! fitted on the replay buffer, so scoring never stops for a re-warm unless the buffer is too
//! small. Invariants: **the engine never blocks on a cycle** (cycles run on their own thread
//! and are polled between micro-batches); **a verdict comes from a model that has not
//! trained on its sample**, and the replay buffer keeps that verdict's posterior for the
//! cycles' split.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::attribution::Attributions;
use crate::data::Dataset;
use crate::events::{BatchScored, CycleFinished, InternalEvent as _, LeadershipSet, ModelSwapped};
use crate::input_range::InputRange;
use crate::metrics::DaemonMetrics;
use crate::model::{Model, ModelError, ModelSpec};
use crate::partition::{PartitionError, PartitionFeatures};
use crate::progress::Progress;
use crate::store::{ModelStore, PublishInfo, SampleWindow, StoreError, VersionMetadata};
use crate::stream::config::{ValidConfig, MIN_CYCLE_SAMPLES};
use crate::stream::cycle::{
    run_cycle, warm_verdicter, CycleError, CycleInput, CycleOutcome, CycleRecord, CycleResult,
};
use crate::stream::features::{attribute_all, dataset_of};
use crate::stream::replay::ReplayBuffer;
use crate::stream::schema::{LabeledSample, ModelPublished, Verdict};
use crate::stream::trigger::NoiseTrigger;
use crate::stream::verdicter::Verdicter;
use crate::train::{train, TrainConfig};

mod bootstrap;
mod cycles;
mod status;

pub use status::{model_url, Checkpoint, EngineStatus};

/// Engine failures (each stops the daemon with this message; bad *samples* never do).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Model load, training or attribution failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The mixture failed.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// The model store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cycle step failed outside the cycle thread (re-warm after a follower swap).
    #[error(transparent)]
    Cycle(#[from] CycleError),
    /// Reading or writing the checkpoint failed.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The stored model does not fit the configured input or classes.
    #[error("{0}")]
    Mismatch(String),
}

/// One valid sample and where it came from.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The decoded sample.
    pub sample: LabeledSample,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The original payload and its headers' content type, kept only when routing by
    /// verdict is on.
    pub payload: Option<Arc<[u8]>>,
    /// When the daemon received it.
    pub received: Instant,
}

/// A sample with its verdict, ready for the sink.
#[derive(Debug)]
pub struct Scored {
    /// The sample.
    pub incoming: Incoming,
    /// Its verdict.
    pub verdict: Verdict,
}

/// What the engine asks the sink to announce.
#[derive(Debug)]
pub enum EngineEvent {
    /// A version was published by this replica.
    Published(ModelPublished),
}

enum Phase {
    Bootstrap(Vec<Incoming>),
    Warming(Vec<Incoming>),
    Scoring,
}

/// The scoring engine (see the module docs).
pub struct Engine {
    cfg: Arc<ValidConfig>,
    store: ModelStore,
    metrics: DaemonMetrics,
    device: candle_core::Device,
    model: Option<Model>,
    version: u64,
    gmm: Option<Verdicter>,
    phase: Phase,
    trigger: NoiseTrigger,
    replay: ReplayBuffer,
    validation: Option<Dataset>,
    clock: Instant,
    cycle: Option<(JoinHandle<()>, mpsc::Receiver<CycleResult>)>,
    cycles: Vec<CycleRecord>,
    verdicts: u64,
    leader: bool,
    force_cycle: bool,
    last_store_check: Instant,
    /// Replay arrival number from which samples are unseen by the current model's training
    /// (the cycle's held-out slice is drawn from them).
    unseen_from_seq: u64,
    /// The held warm-up samples include the bootstrap training set (exclude them when scored).
    warmup_trained: bool,
    /// The newest arrival number in the running cycle's snapshot.
    cycle_last_seq: u64,
    /// The current version's training-input range (see [`SharedInputRange`]).
    input_range: SharedInputRange,
    /// A follower has logged that it waits for the leader's first model.
    waiting_logged: bool,
    /// Since when this replica has held `bootstrap.samples` without a first model.
    follower_waiting_since: Option<Instant>,
    /// A skipped cycle has been recorded for the current spell of provisional verdicts.
    provisional_skip_recorded: bool,
}

/// How long a follower holding `bootstrap.samples` waits for the leader's first model before
/// it trains one itself (a leader whose partitions are quiet may never collect its
/// bootstrap). While it waits it takes no more samples (see [`Engine::waiting_for_first_model`]).
pub const FOLLOWER_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The current model version's training-input range, shared with the source, which
/// dead-letters samples far outside it before they are scored (`None`: no check, e.g. before
/// the first model or for a version published without one).
pub type SharedInputRange = Arc<std::sync::RwLock<Option<Arc<InputRange>>>>;

impl Engine {
    /// Start: load the newest version from the store (or plan a bootstrap) and restore the
    /// checkpoint when it belongs to that version.
    ///
    /// # Errors
    /// [`EngineError`] when the store, the model or the validation set cannot be read, or the
    /// model does not match the configured input and classes.
    pub fn new(
        cfg: Arc<ValidConfig>,
        store: ModelStore,
        metrics: DaemonMetrics,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Self, EngineError> {
        let device = cfg.device().clone();
        let replay = ReplayBuffer::new(
            cfg.replay.capacity,
            cfg.replay.max_mib << 20,
            cfg.model.num_features,
            cfg.model.num_classes,
            cfg.cycle.seed,
        )
        .map_err(EngineError::Mismatch)?;
        let validation = match cfg.validation() {
            None => None,
            Some(v) => {
                let test = crate::data::load(&v.dataset, &v.data_dir)
                    .map_err(|e| EngineError::Mismatch(format!("cycle.validation: {e}")))?
                    .test;
                Some(if v.limit > 0 && v.limit < test.len() {
                    test.select(&test.stratified_indices(v.limit, cfg.cycle.seed))
                } else {
                    test
                })
            }
        };
        let mut e = Engine {
            trigger: NoiseTrigger::new(cfg.trigger.clone()),
            store,
            metrics,
            device,
            model: None,
            version: 0,
            gmm: None,
            phase: Phase::Bootstrap(vec![]),
            replay,
            validation,
            clock: Instant::now(),
            cycle: None,
            cycles: vec![],
            verdicts: 0,
            leader: true,
            force_cycle: false,
            last_store_check: Instant::now(),
            unseen_from_seq: 0,
            warmup_trained: false,
            cycle_last_seq: 0,
            input_range: SharedInputRange::default(),
            waiting_logged: false,
            follower_waiting_since: None,
            provisional_skip_recorded: false,
            cfg,
        };
        if let Some(v) = e.newest_version()? {
            e.load_version(v)?;
            e.phase = Phase::Warming(vec![]);
            if let Some(cp) = checkpoint.filter(|c| c.model == e.cfg.model.name) {
                e.verdicts = cp.verdicts;
                e.cycles = cp.cycles;
                if cp.model_version == v {
                    e.trigger = cp.trigger;
                    e.trigger.params = e.cfg.trigger.clone();
                    e.trigger.restarted();
                    // A checkpoint of the other rule (the config changed), or of a provisional
                    // stand-in for the mixture, warms up anew.
                    if let Some(g) = cp.gmm.and_then(|g| g.restored_as(e.cfg.scoring.estimator)) {
                        e.gmm = Some(g);
                        e.phase = Phase::Scoring;
                        tracing::info!(
                            version = v,
                            "resumed the mixture and trigger from the checkpoint"
                        );
                    }
                }
            }
            // Without the loaded version's mixture the daemon warms up again, and may re-read
            // samples that version trained on (a stop between the bootstrap's publish and the
            // warm-up's commits): keep the warm-up rows out of the held-out slice.
            e.warmup_trained = matches!(e.phase, Phase::Warming(_));
        }
        Ok(e)
    }

    fn newest_version(&self) -> Result<Option<u64>, EngineError> {
        match self.store.latest(&self.cfg.model.name) {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::Empty(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn load_version(&mut self, v: u64) -> Result<(), EngineError> {
        let dir = self.store.version_dir(&self.cfg.model.name, v)?;
        let model = Model::load(&dir.join(crate::store::WEIGHTS_FILE), &self.device)?;
        let spec = model.spec();
        if spec.input_dim != self.cfg.model.num_features
            || spec.num_classes != self.cfg.model.num_classes
        {
            return Err(EngineError::Mismatch(format!(
                "model {} version {v} takes {} features and {} classes; the config says {} and {}",
                self.cfg.model.name,
                spec.input_dim,
                spec.num_classes,
                self.cfg.model.num_features,
                self.cfg.model.num_classes
            )));
        }
        tracing::info!(model = %self.cfg.model.name, version = v, "model version loaded");
        self.model = Some(model);
        self.set_version(v);
        Ok(())
    }

    fn set_version(&mut self, v: u64) {
        self.provisional_skip_recorded = false;
        let range = self
            .store
            .metadata(&self.cfg.model.name, v)
            .ok()
            .and_then(|m| m.input_range)
            .map(Arc::new);
        if range.is_none() {
            tracing::info!(
                version = v,
                "this model version records no input range: no input-shift check"
            );
        }
        *self.input_range.write().expect("input range lock") = range;
        self.version = v;
        ModelSwapped {
            version: v,
            at_ms: crate::stream::unix_ms(),
        }
        .emit(&self.metrics);
    }

    /// A follower holding its full bootstrap window, waiting for the leader's first model: the
    /// scorer then takes no more samples (its queue fills and the source pauses the input), so
    /// the held samples stay bounded by `bootstrap.samples` plus one queue.
    pub fn waiting_for_first_model(&self) -> bool {
        matches!(&self.phase, Phase::Bootstrap(h) if h.len() >= self.cfg.bootstrap.samples)
            && !self.leader
            && self
                .follower_waiting_since
                .is_some_and(|t| t.elapsed() < FOLLOWER_MAX_WAIT)
    }

    /// A handle on the current version's training-input range (updated on every version
    /// change), for the source's input-shift check.
    pub fn input_range(&self) -> SharedInputRange {
        self.input_range.clone()
    }

    /// The current model version (0 before the first).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Set whether this replica runs cycles (it owns input partition 0).
    pub fn set_leader(&mut self, leader: bool) {
        LeadershipSet {
            leader,
            changed: leader != self.leader,
        }
        .emit(&self.metrics);
        self.leader = leader;
    }

    /// Ask for a cycle now (the API's `POST /v1/cycle`), regardless of the trigger.
    pub fn request_cycle(&mut self) {
        self.force_cycle = true;
    }

    /// Samples held back (bootstrap or warm-up) whose verdicts are not out yet.
    pub fn held(&self) -> usize {
        match &self.phase {
            Phase::Bootstrap(v) | Phase::Warming(v) => v.len(),
            Phase::Scoring => 0,
        }
    }

    /// Score one micro-batch. Verdicts (possibly of earlier, held samples) are appended to
    /// `out`; announcements to `events`.
    ///
    /// # Errors
    /// [`EngineError`] when the model, the mixture or the store fails.
    pub fn process(
        &mut self,
        batch: Vec<Incoming>,
        out: &mut Vec<Scored>,
        events: &mut Vec<EngineEvent>,
    ) -> Result<(), EngineError> {
        self.poll(events)?;
        match std::mem::replace(&mut self.phase, Phase::Scoring) {
            Phase::Bootstrap(mut held) => {
                held.extend(batch);
                let want = self.cfg.bootstrap.samples;
                // Only the cycle leader trains and publishes the first model: a follower holds
                // its samples until that version is in the store (`poll` adopts it and the held
                // samples become its warm-up window). Two replicas bootstrapping at once
                // published two "first" models. A follower that has waited FOLLOWER_MAX_WAIT
                // (no leader publishing) trains one itself.
                if held.len() < want {
                    self.phase = Phase::Bootstrap(held);
                    return Ok(());
                }
                let waited = self.follower_waiting_since.get_or_insert_with(Instant::now);
                if !self.leader && waited.elapsed() < FOLLOWER_MAX_WAIT {
                    if !self.waiting_logged {
                        self.waiting_logged = true;
                        tracing::info!(
                            held = held.len(),
                            "follower: waiting for the leader's first model in the store"
                        );
                    }
                    self.phase = Phase::Bootstrap(held);
                    return Ok(());
                }
                // The leader, or a follower done waiting: a first model published meanwhile
                // (by another replica) is adopted rather than trained again.
                if let Some(v) = self.newest_version()? {
                    return self.adopt_instead_of_bootstrap(held, v, out, events);
                }
                if !self.leader {
                    tracing::warn!(
                        held = held.len(),
                        "no first model from the leader after {} s: training one on this replica",
                        FOLLOWER_MAX_WAIT.as_secs()
                    );
                }
                let scores = match self.bootstrap(&held, events) {
                    // Another replica published a first model while this one trained: adopt it.
                    Err(EngineError::Store(StoreError::NotFirst(_, v))) => {
                        tracing::info!(
                            version = v,
                            "another replica published the first model first: adopting it"
                        );
                        return self.adopt_instead_of_bootstrap(held, v, out, events);
                    }
                    r => r?,
                };
                self.warmup_trained = true;
                self.phase = Phase::Warming(vec![]);
                self.warm(held, scores, out)
            }
            Phase::Warming(mut held) => {
                held.extend(batch);
                self.warm(held, None, out)
            }
            Phase::Scoring => {
                self.score(batch, out)?;
                self.maybe_start_cycle();
                Ok(())
            }
        }
    }

    fn as_dataset(&self, items: &[Incoming]) -> Dataset {
        dataset_of(&self.cfg, items.iter().map(|it| &it.sample))
    }

    /// Warm the verdict rule up on the held samples once there are `mixture.warmup_samples`
    /// of them, and give them their verdicts. `scores` are their out-of-sample scores when
    /// the caller has them (the bootstrap's cross-fitting); otherwise the current model
    /// scores them.
    fn warm(
        &mut self,
        held: Vec<Incoming>,
        scores: Option<Attributions>,
        out: &mut Vec<Scored>,
    ) -> Result<(), EngineError> {
        // Cross-fitted scores (the bootstrap's) are out of sample however few: warm up on them
        // now rather than re-score the rows with the model that trained on them.
        if scores.is_none() && held.len() < self.cfg.mixture.warmup_samples {
            self.phase = Phase::Warming(held);
            return Ok(());
        }
        let model = self.model.as_ref().expect("a model exists after bootstrap");
        let data = self.as_dataset(&held);
        let a = match scores {
            Some(a) => a,
            None => attribute_all(model, &data, self.cfg.scoring.attribution)?,
        };
        let v = Verdicter::warm_up_or_fallback(&self.cfg, &a, &data.labels)?;
        tracing::info!(version = self.version, samples = held.len(), weights = ?v.weights_clean_noisy(), "verdict rule warmed up");
        self.gmm = Some(v);
        self.phase = Phase::Scoring;
        self.trigger.reset_window();
        // The warm-up samples get verdicts from the fitted rule (no update: it was fitted on
        // them).
        self.emit(held, &a, false, out)?;
        if std::mem::take(&mut self.warmup_trained) {
            // The first model trained on these: no held-out slice from them.
            self.unseen_from_seq = self.replay.seen() + 1;
        }
        Ok(())
    }

    fn score(&mut self, batch: Vec<Incoming>, out: &mut Vec<Scored>) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let model = self.model.as_ref().expect("scoring has a model");
        let a = attribute_all(
            model,
            &self.as_dataset(&batch),
            self.cfg.scoring.attribution,
        )?;
        self.emit(batch, &a, true, out)
    }

    /// Verdicts for `batch` from its scores `a` (same order): posterior under the rule, then
    /// (with `update`) one stepwise update.
    fn emit(
        &mut self,
        batch: Vec<Incoming>,
        a: &Attributions,
        update: bool,
        out: &mut Vec<Scored>,
    ) -> Result<(), EngineError> {
        let t = Instant::now();
        let labels: Vec<u32> = batch.iter().map(|it| it.sample.label).collect();
        let features = self.cfg.scoring.features;
        let v = self.gmm.as_mut().expect("scoring has a verdict rule");
        let post = if update {
            v.update(features, a, &labels)?
        } else {
            v.posterior(features, a, &labels)?
        };
        let state_id = format!("v{}-u{}", self.version, v.updates());
        let provisional = v.provisional();
        let threshold = self.cfg.scoring.threshold;
        let scored_at = crate::stream::unix_ms();
        for (i, it) in batch.into_iter().enumerate() {
            let p = post[i];
            let noisy = p >= threshold;
            self.trigger.observe(noisy);
            self.replay
                .offer(&it.sample.features, it.sample.label, p as f32);
            out.push(Scored {
                verdict: Verdict {
                    sample_id: it.sample.id.clone(),
                    given_label: it.sample.label,
                    predicted_label: a.predicted[i],
                    posterior_noisy: p,
                    noisy,
                    model_version: self.version,
                    partition_state_id: state_id.clone(),
                    source_partition: it.partition,
                    source_offset: it.offset,
                    scored_at_ms: scored_at,
                    event_time_ms: it.sample.event_time_ms,
                    provisional,
                },
                incoming: it,
            });
        }
        self.verdicts += a.n as u64;
        self.batch_scored(t.elapsed().as_secs_f64());
        Ok(())
    }

    fn batch_scored(&self, seconds: f64) {
        // A new version clears the window; keep showing the last full estimate until the new
        // window holds min_samples verdicts, so alerts on it do not reset at every swap.
        let window_full = self.trigger.window_len() >= self.trigger.params.min_samples.max(1);
        let summary_space = self.cfg.scoring.features == PartitionFeatures::Summary;
        BatchScored {
            seconds,
            noisy_fraction_window: window_full.then(|| self.trigger.window_fraction()),
            noisy_fraction_ewma: self.trigger.ewma_fraction(),
            provisional: self.gmm.as_ref().is_some_and(Verdicter::provisional),
            weights_clean_noisy: self.gmm.as_ref().map(Verdicter::weights_clean_noisy),
            means_clean_noisy: self
                .gmm
                .as_ref()
                .and_then(Verdicter::mixture)
                .filter(|_| summary_space)
                .map(|g| {
                    let m = g.means_clean_noisy();
                    [[m[0][0], m[0][1]], [m[1][0], m[1][1]]]
                }),
        }
        .emit(&self.metrics);
    }
}
