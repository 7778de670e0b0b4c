//! One model cycle of the daemon: regression sensitivity → prune → fine-tune on the buffered
//! clean samples → evaluate → accept or reject → (accepted) carry the verdict rule over (the
//! mixture re-fits) and publish.
//!
//! This module owns the cycle's steps; it runs on a dedicated thread while scoring continues
//! on the current model (see [`crate::stream::engine`]). The samples are a snapshot of the
//! replay buffer; their clean/noisy split comes from the verdicts they got on arrival, from a
//! model that had not trained on them (never from any ground truth, and never from a re-score
//! by the current model, which has memorised the noisy labels it fine-tuned on). The held-out
//! slice — `holdout_fraction` of the samples (`cycle.guard.holdout = "unseen"`, default,
//! compared by their given labels) or of the clean ones (`"clean"`), drawn after a seeded
//! shuffle from those the current model has not trained on (they arrived after its training
//! data, and no copy of whose input arrived before; see [`CycleInput::holdout_from`]), but
//! never more than half of those, so the candidate also fine-tunes on new samples — is
//! excluded from fine-tuning, every copy of its inputs with it ([`content_keys`]: a sample
//! streamed twice would otherwise be fine-tuned on and judged on), and compares the current
//! and candidate models unless a trusted validation set is configured. Only clean samples are
//! fine-tuned on (with `cycle.objective = "clean"`, each class's repeated towards the clean
//! partition's share of its labels outside the slice: `cycle.class_balance`,
//! [`class_balanced_rows`]). Drawing the slice from the clean samples alone favours the
//! current model: they are the ones it agrees with. Drawing it from the current model's own
//! training samples would favour that model: it has fitted their labels,
//! noisy ones included, and the pruned candidate partly forgets them. The acceptance guard
//! ([`crate::stream::guard`]) skips a cycle whose evaluation set is too small to judge, and
//! accepts a candidate only when it is better with statistical confidence and no class
//! collapses. With `cycle.regrow` (default) a cycle first regrows the neurons its parent had
//! pruned (fresh incoming weights, zero outgoing: the logits do not change) and then prunes
//! `prune_fraction·H` anew, so the pruned share stays bounded and capacity does not erode
//! over many cycles; without it, pruned neurons stay pruned, a cycle prunes at most
//! `prune_fraction·H` more and never beyond `MAX_PRUNED_FRACTION·H` in all (later cycles then
//! only fine-tune).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::evaluation::classification_report;
use crate::model::{Model, ModelError};
use crate::noise_model::verdict_likelihoods;
use crate::partition::PartitionError;
use crate::progress::Progress;
use crate::prune::{neuron_scores, prune_count, select_top, Criterion, PruneError};
use crate::store::{Metrics, ModelStore, PublishInfo, SampleWindow, StoreError, VersionMetadata};
use crate::stream::config::{DaemonConfig, Finetune, FinetuneObjective, ValidConfig};
use crate::stream::features::attribute_all;
use crate::stream::guard::{judge, Decision, HoldoutScope, Snapshot};
use crate::stream::verdicter::Verdicter;
use crate::train::{predict, train, train_forward, Optimizer, Scope, TrainConfig};

/// A cycle never leaves more than this fraction of `fc`'s neurons pruned in all.
pub const MAX_PRUNED_FRACTION: f64 = 0.5;

/// Fewest unseen clean samples the held-out slice is drawn from; with fewer (a cycle asked
/// for through the API right after a swap) it falls back to all clean samples, and the
/// record's `eval_set` says so.
pub const MIN_UNSEEN_HOLDOUT: usize = 100;

/// Why a cycle could not complete.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// Attribution, training or evaluation failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The mixture could not score or re-warm.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// Neuron scoring failed.
    #[error(transparent)]
    Prune(#[from] PruneError),
    /// Publishing the accepted model failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cycle's inputs disagree in length (a bug in the caller).
    #[error("cycle input mismatch: {0}")]
    Mismatch(String),
}

/// What a cycle starts from (all owned: the cycle thread shares nothing with the scorer).
pub struct CycleInput {
    /// The model serving now (a deep copy).
    pub model: Model,
    /// Its version.
    pub version: u64,
    /// Snapshot of the replay buffer, oldest first.
    pub samples: Dataset,
    /// First row of `samples` the current model has not trained on; `samples.len()` when
    /// none. Rows before it arrived before the model began scoring: its bootstrap training
    /// set, its fine-tuning snapshot, or (conservatively) the warm-up rows after a restart
    /// without a matching checkpoint and the rows held when a follower adopted it.
    pub holdout_from: usize,
    /// Each row's posterior of noisy from its verdict, out of sample (`[N]`, same order as
    /// `samples`); it splits the snapshot into clean and noisy.
    pub posterior_noisy: Vec<f64>,
    /// The current verdict rule (carried over to, or re-fitted for, the candidate).
    pub gmm: Verdicter,
    /// The trusted validation set, if configured.
    pub validation: Option<Dataset>,
    /// Why the cycle runs (`trigger` or `api`).
    pub cause: String,
    /// The noise-rate estimate that triggered it.
    pub noisy_fraction: f64,
}

/// How a cycle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CycleOutcome {
    /// The candidate was published and swapped in.
    Accepted,
    /// The candidate was not better with confidence, or a class collapsed
    /// ([`crate::stream::guard`]).
    Rejected,
    /// The cycle could not be judged (too few evaluation or fine-tuning samples): the current
    /// model keeps serving.
    Skipped,
    /// A step failed (the reason says which).
    Failed,
}

impl CycleOutcome {
    /// Stable label (metrics, logs).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

/// The record of one cycle (kept in the checkpoint and shown by the API and the demo).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CycleRecord {
    /// Outcome.
    pub outcome: CycleOutcome,
    /// Why: the acceptance comparison, or the error.
    pub reason: String,
    /// `trigger` or `api`.
    pub cause: String,
    /// The version the cycle started from.
    pub parent_version: u64,
    /// The published version (accepted only).
    pub new_version: Option<u64>,
    /// Samples in the snapshot.
    pub samples: usize,
    /// Of those, flagged noisy by the mixture.
    pub noisy: usize,
    /// Samples fine-tuned on: the clean ones outside the evaluation set, or with
    /// `cycle.objective = "forward"` every one outside it (distinct samples).
    pub finetune_samples: usize,
    /// Rows the fine-tune ran over per epoch: `finetune_samples` plus the clean samples
    /// `cycle.class_balance` repeated ([`class_balanced_rows`]).
    #[serde(default)]
    pub finetune_rows: usize,
    /// Samples the two models were compared on.
    pub eval_samples: usize,
    /// Snapshot rows left out of fine-tuning because they copy the input of a held-out row
    /// (a sample that arrived twice: a replayed topic, an at-least-once redelivery), so the
    /// candidate is never judged on an input it trained on ([`content_keys`]).
    #[serde(default)]
    pub holdout_copies: usize,
    /// `holdout` (clean samples the current model has not trained on), `holdout-unseen` (any
    /// samples it has not trained on, `cycle.guard.holdout = "unseen"`), `holdout-all` (the
    /// fallback: any distinct inputs among the clean samples, or among all under "unseen",
    /// see [`MIN_UNSEEN_HOLDOUT`]) or `validation` (trusted set).
    pub eval_set: String,
    /// Accuracy of the current model on the evaluation samples (None when the cycle ended
    /// before the comparison).
    pub accuracy_before: Option<f64>,
    /// Accuracy of the candidate (None when the cycle ended before the comparison).
    pub accuracy_after: Option<f64>,
    /// Neurons pruned by this cycle (indices into H).
    pub pruned_now: Vec<usize>,
    /// Neurons the parent had pruned that this cycle regrew (`cycle.regrow`).
    #[serde(default)]
    pub regrown: Vec<usize>,
    /// Seconds per stage: attribution, regression, fine-tune, evaluate, publish.
    pub stage_seconds: Vec<(String, f64)>,
    /// What the acceptance guard saw: evaluation size, accuracies, the confidence interval of
    /// their difference, per-class recall and predictions (None when the cycle ended before
    /// the comparison).
    #[serde(default)]
    pub evidence: Option<crate::stream::guard::Evidence>,
}

impl CycleRecord {
    /// A record of a cycle from `parent_version` on `samples` samples, nothing done yet
    /// (outcome `failed` until a step says otherwise).
    pub fn new(cause: &str, parent_version: u64, samples: usize) -> Self {
        Self {
            outcome: CycleOutcome::Failed,
            reason: String::new(),
            cause: cause.into(),
            parent_version,
            new_version: None,
            samples,
            noisy: 0,
            finetune_samples: 0,
            finetune_rows: 0,
            eval_samples: 0,
            holdout_copies: 0,
            eval_set: String::new(),
            accuracy_before: None,
            accuracy_after: None,
            pruned_now: vec![],
            regrown: vec![],
            stage_seconds: vec![],
            evidence: None,
        }
    }
}

/// A finished cycle: its record and, when accepted, the new model and its warmed mixture.
pub struct CycleResult {
    /// The record.
    pub record: CycleRecord,
    /// Accepted: the model, its version metadata and its verdict rule.
    pub accepted: Option<(Model, VersionMetadata, Verdicter)>,
}

/// A cycle's fine-tuning recipe (§3.4): `cycle.epochs` of Adam (lr 1e-3, batch 64) over every
/// parameter (F-FT) or the head only with weight decay 1e-5 (L-FT), per `cycle.finetune`,
/// shuffled with `seed`. The bootstrap's optional fine-tune and the demo's Oracle use it too.
pub fn finetune_recipe(cfg: &DaemonConfig, seed: u64) -> TrainConfig {
    let (scope, weight_decay) = match cfg.cycle.finetune {
        Finetune::Lft => (Scope::Head, 1e-5),
        Finetune::Fft => (Scope::All, 0.0),
    };
    TrainConfig {
        epochs: cfg.cycle.epochs,
        batch_size: 64,
        optimizer: Optimizer::Adam {
            lr: 1e-3,
            weight_decay,
        },
        scope,
        seed,
        mixup: cfg.cycle.mixup,
        ema: cfg.cycle.ema,
    }
}

/// The verdict rule for `model`, a new version: the noise model carries `previous` over
/// (see [`Verdicter::for_new_model`]); the mixture is re-fitted on the newest
/// `mixture.warmup_samples` samples of `data`.
///
/// # Errors
/// [`CycleError`] when attribution or the fit fails.
pub fn warm_verdicter(
    cfg: &ValidConfig,
    model: &Model,
    data: &Dataset,
    previous: Option<&Verdicter>,
) -> Result<Verdicter, CycleError> {
    if let Some(v) = previous.and_then(Verdicter::for_new_model) {
        return Ok(v);
    }
    let start = data.len().saturating_sub(cfg.mixture.warmup_samples);
    let recent = data.select(&(start..data.len()).collect::<Vec<_>>());
    let a = attribute_all(model, &recent, cfg.scoring.attribution)?;
    Ok(Verdicter::warm_up_or_fallback(cfg, &a, &recent.labels)?)
}

/// Split the (shuffled) clean rows into (held out, fine-tune, eval-set name): the held-out
/// slice is `fraction` of them, but at most half of the rows `is_unseen` accepts (unseen by
/// the current model), taken from those, while at least [`MIN_UNSEEN_HOLDOUT`] of those
/// exist; else `fraction` of all clean rows.
fn split_holdout(
    clean: &[usize],
    is_unseen: impl Fn(usize) -> bool,
    fraction: f64,
) -> (Vec<usize>, Vec<usize>, &'static str) {
    let m = ((clean.len() as f64) * fraction).round() as usize;
    let unseen = clean.iter().filter(|&&i| is_unseen(i)).count();
    if unseen < MIN_UNSEEN_HOLDOUT {
        let (held, tune) = clean.split_at(m);
        return (held.to_vec(), tune.to_vec(), "holdout-all");
    }
    let m = m.min(unseen / 2);
    let (mut held, mut tune) = (Vec::with_capacity(m), Vec::with_capacity(clean.len() - m));
    for &i in clean {
        if is_unseen(i) && held.len() < m {
            held.push(i);
        } else {
            tune.push(i);
        }
    }
    (held, tune, "holdout")
}

/// The held-out rows among `rows` (shuffled snapshot indices) and the eval-set name, by
/// [`split_holdout`] over the rows that are the first of this snapshot with their content
/// key (`keys`, one per snapshot row: [`content_keys`]), so no input is held out twice; such
/// a row counts as unseen by the current model when it is at or after `holdout_from` (no
/// copy of its input came earlier in the snapshot; a copy the store evicted before this
/// snapshot is not caught). The `holdout-all` fallback may hold out inputs the current
/// model trained on, and the record says so.
fn holdout_rows(
    rows: &[usize],
    keys: &[u64],
    holdout_from: usize,
    fraction: f64,
) -> (Vec<usize>, &'static str) {
    // The first row of each input: only first copies are candidates, so the held-out slice
    // (the `holdout-all` fallback's too) holds distinct inputs, and the "at most half" of
    // split_holdout counts distinct inputs.
    let mut first: HashMap<u64, usize> = HashMap::with_capacity(keys.len());
    for (i, &k) in keys.iter().enumerate() {
        first.entry(k).or_insert(i);
    }
    let distinct: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|&i| first[&keys[i]] == i)
        .collect();
    let (held, _, set) = split_holdout(&distinct, |i| i >= holdout_from, fraction);
    (held, set)
}

/// Per snapshot row (`keys`: [`content_keys`]): whether it is one of `held` or a copy of
/// one's input.
fn copies_of(held: &[usize], keys: &[u64]) -> Vec<bool> {
    let held_keys: HashSet<u64> = held.iter().map(|&i| keys[i]).collect();
    keys.iter().map(|k| held_keys.contains(k)).collect()
}

/// A key per row of `data` that two rows share exactly when their inputs are bit-for-bit
/// equal (the features' `f32` bits through SipHash; a collision between different inputs
/// has probability about `n² / 2⁶⁵`). Labels are not part of the key: an input the candidate
/// fine-tuned on under any label is not unseen.
pub fn content_keys(data: &Dataset) -> Vec<u64> {
    (0..data.len())
        .map(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for v in data.row(i) {
                v.to_bits().hash(&mut h);
            }
            h.finish()
        })
        .collect()
}

/// The clean fine-tuning rows with each class brought towards the clean partition's overall
/// share of its labels: `clean` rows of `labels` (indices into it) out of a pool of `pool`
/// rows; class c's clean rows are repeated `w_c = min(max_weight, share·n_c / m_c)` times
/// (`share` = clean rows ÷ pool rows, `n_c` the pool's rows labelled c, `m_c` its clean ones;
/// the fraction of a repeat drawn per row with `seed`), never fewer than once. Returns the
/// rows to fine-tune on (repeats included; `train` shuffles them).
///
/// Why: a class the current model finds hard has its correct labels called noisy more often,
/// so the clean partition under-represents it (Fashion-MNIST's shirts: 133 clean verdicts of
/// 2,007 labels where 817 were correct, at 60 % symmetric noise), and fine-tuning on it as it
/// is teaches the model to stop predicting that class. Class-balanced sampling is the usual
/// remedy for a skewed training distribution (Kang et al., "Decoupling representation and
/// classifier for long-tailed recognition", ICLR 2020, §3.1); not part of the RLAP paper.
/// Under class-conditional noise the given labels over-count the classes wrong labels flip
/// into, so the target overshoots there (Fashion-MNIST's human-like noise: 1,710 for shirts
/// against 1,202 correct labels); the cap bounds it.
///
/// # Panics
/// When a label of a `clean` or `pool` row is `>= num_classes` (labels are checked on
/// ingestion).
pub fn class_balanced_rows(
    labels: &[u32],
    clean: &[usize],
    pool: &[usize],
    num_classes: usize,
    max_weight: f64,
    seed: u64,
) -> Vec<usize> {
    if max_weight.is_nan() || max_weight <= 1.0 || clean.is_empty() {
        return clean.to_vec();
    }
    let (mut n, mut m) = (vec![0usize; num_classes], vec![0usize; num_classes]);
    for &i in pool {
        n[labels[i] as usize] += 1;
    }
    for &i in clean {
        m[labels[i] as usize] += 1;
    }
    let share = clean.len() as f64 / pool.len().max(1) as f64;
    let weight: Vec<f64> = (0..num_classes)
        .map(|c| {
            if m[c] == 0 {
                1.0
            } else {
                (share * n[c] as f64 / m[c] as f64).clamp(1.0, max_weight)
            }
        })
        .collect();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(clean.len());
    for &i in clean {
        let w = weight[labels[i] as usize];
        let extra = usize::from(rng.gen::<f64>() < w.fract());
        rows.extend(std::iter::repeat_n(i, w.trunc() as usize + extra));
    }
    rows
}

fn metrics(data: &Dataset, predicted: &[u32]) -> Metrics {
    let r = classification_report(predicted, &data.labels, data.num_classes);
    Metrics {
        accuracy: r.accuracy,
        macro_f1: r.macro_f1,
    }
}

/// Run one cycle (blocking; seconds to minutes). Publishes to `store` when accepted.
pub fn run_cycle(cfg: &ValidConfig, store: &ModelStore, input: CycleInput) -> CycleResult {
    let mut record = CycleRecord::new(&input.cause, input.version, input.samples.len());
    match cycle_steps(cfg, store, input, &mut record) {
        Ok(accepted) => CycleResult { record, accepted },
        Err(e) => {
            record.outcome = CycleOutcome::Failed;
            record.reason = e.to_string();
            CycleResult {
                record,
                accepted: None,
            }
        }
    }
}

fn cycle_steps(
    cfg: &ValidConfig,
    store: &ModelStore,
    input: CycleInput,
    rec: &mut CycleRecord,
) -> Result<Option<(Model, VersionMetadata, Verdicter)>, CycleError> {
    let data = &input.samples;
    let mut t = Instant::now();
    let mut lap = |rec: &mut CycleRecord, name: &str| {
        rec.stage_seconds
            .push((name.to_string(), t.elapsed().as_secs_f64()));
        t = Instant::now();
    };

    // 1. Attribute the snapshot with the current model; the verdicts the rows got on arrival
    //    split it (a re-score by this model would call the noisy rows it fine-tuned on clean).
    let a = attribute_all(&input.model, data, cfg.scoring.attribution)?;
    if input.posterior_noisy.len() != a.n {
        return Err(CycleError::Mismatch(format!(
            "{} posteriors for {} samples",
            input.posterior_noisy.len(),
            a.n
        )));
    }
    let noisy: Vec<bool> = input
        .posterior_noisy
        .iter()
        .map(|&p| p >= cfg.scoring.threshold)
        .collect();
    rec.noisy = noisy.iter().filter(|&&b| b).count();
    lap(rec, "attribution");

    // 2. Regression sensitivity (§3.3) and pruning, within the overall cap.
    let h = a.hidden;
    let already = input.model.pruned();
    let mut candidate = input.model.deep_clone()?;
    let still_pruned = if cfg.cycle.regrow && !already.is_empty() {
        candidate.regrow(&already, cfg.cycle.seed ^ input.version)?;
        rec.regrown = already.clone();
        0
    } else {
        already.len()
    };
    let budget = ((MAX_PRUNED_FRACTION * h as f64).floor() as usize).saturating_sub(still_pruned);
    let k = prune_count(cfg.cycle.prune_fraction, h)?.min(budget);
    if k > 0 {
        let scores = neuron_scores(
            Criterion::Rlap,
            &a.activations,
            a.n,
            h,
            &noisy,
            cfg.cycle.seed,
        )?;
        let mut s = scores.scores;
        for &j in &already {
            s[j] = f64::NEG_INFINITY;
        }
        rec.pruned_now = select_top(&s, k);
        candidate.prune(&rec.pruned_now)?;
    }
    lap(rec, "regression");

    // 3. Split the clean samples into fine-tuning and held-out slices. A row is unseen by the
    //    current model when it arrived after the model's training data and no copy of its
    //    input came earlier in this snapshot (a sample streamed twice is not new the second
    //    time; a copy already evicted from the store is not caught).
    let keys = content_keys(data);
    let mut clean: Vec<usize> = (0..a.n).filter(|&i| !noisy[i]).collect();
    clean.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(
        cfg.cycle.seed ^ input.version,
    ));
    // The held-out slice (none with a trusted validation set), then the fine-tuning set: the
    // clean samples outside it, or with cycle.objective = forward every sample outside it.
    let (eval, eval_set, held) = match &input.validation {
        Some(v) => (v.clone(), "validation", Vec::new()),
        None if cfg.cycle.guard.holdout == HoldoutScope::Unseen => {
            // Every unseen sample, flagged or not.
            let mut all: Vec<usize> = (0..a.n).collect();
            all.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(
                cfg.cycle.seed ^ input.version ^ 0x5eed,
            ));
            let (held, set) =
                holdout_rows(&all, &keys, input.holdout_from, cfg.cycle.holdout_fraction);
            let set = if set == "holdout" {
                "holdout-unseen"
            } else {
                set
            };
            (data.select(&held), set, held)
        }
        None => {
            let (held, set) = holdout_rows(
                &clean,
                &keys,
                input.holdout_from,
                cfg.cycle.holdout_fraction,
            );
            (data.select(&held), set, held)
        }
    };
    // Out of fine-tuning: the held-out rows and every copy of their inputs.
    let is_held = copies_of(&held, &keys);
    rec.holdout_copies = is_held.iter().filter(|&&b| b).count() - held.len();
    // The rows the fine-tune runs over (the clean ones repeated per class by
    // cycle.class_balance) and how many distinct samples they are.
    let (tune_idx, distinct): (Vec<usize>, usize) = match cfg.cycle.objective {
        FinetuneObjective::Clean => {
            let tune_clean: Vec<usize> = clean.into_iter().filter(|&i| !is_held[i]).collect();
            let pool: Vec<usize> = (0..a.n).filter(|&i| !is_held[i]).collect();
            let rows = class_balanced_rows(
                &data.labels,
                &tune_clean,
                &pool,
                data.num_classes,
                cfg.cycle.class_balance,
                cfg.cycle.seed ^ input.version ^ 0xba1,
            );
            (rows, tune_clean.len())
        }
        FinetuneObjective::Forward => {
            let rows: Vec<usize> = (0..a.n).filter(|&i| !is_held[i]).collect();
            let n = rows.len();
            (rows, n)
        }
    };
    rec.eval_set = eval_set.into();
    rec.eval_samples = eval.len();
    rec.finetune_samples = distinct;
    rec.finetune_rows = tune_idx.len();
    if distinct < 64 || eval.len() < cfg.cycle.guard.min_eval_samples {
        rec.outcome = CycleOutcome::Skipped;
        rec.reason = format!(
            "cannot be judged: {} samples to fine-tune on (64 needed), {} to evaluate \
             (cycle.guard.min_eval_samples = {}; a trusted [cycle.validation] set avoids this)",
            distinct,
            eval.len(),
            cfg.cycle.guard.min_eval_samples
        );
        return Ok(None);
    }
    let tune = data.select(&tune_idx);
    let recipe = finetune_recipe(cfg, cfg.cycle.seed.wrapping_add(input.version));
    match cfg.cycle.objective {
        FinetuneObjective::Clean => {
            train(
                &candidate,
                &tune,
                &recipe,
                &Progress::hidden(),
                "cycle fine-tune",
            )?;
        }
        FinetuneObjective::Forward => {
            // The flip matrix from the fine-tuning samples only (the evaluation set's labels
            // stay out of training altogether).
            let k = data.num_classes;
            let pick = |v: &[f64]| tune_idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
            let probs: Vec<f32> = tune_idx
                .iter()
                .flat_map(|&i| a.probs[i * k..(i + 1) * k].iter().copied())
                .collect();
            let flagged: Vec<bool> = tune_idx.iter().map(|&i| noisy[i]).collect();
            let likelihoods = verdict_likelihoods(
                &tune.labels,
                k,
                &pick(&input.posterior_noisy),
                &flagged,
                &probs,
            )?;
            train_forward(
                &candidate,
                &tune,
                &likelihoods,
                &recipe,
                &Progress::hidden(),
                "cycle fine-tune",
            )?;
        }
    }
    lap(rec, "finetune");

    // 4. The guard compares the two models on the same samples (and the whole snapshot's
    //    predictions for vanishing classes).
    let (pb, pa) = (predict(&input.model, &eval)?, predict(&candidate, &eval)?);
    let (sb, sa) = (predict(&input.model, data)?, predict(&candidate, data)?);
    let snapshot = Snapshot {
        labels: &data.labels,
        before: &sb,
        after: &sa,
    };
    // The recall check counts the held-out labels the verdicts call clean (all of a trusted
    // validation set's).
    let trusted: Vec<bool> = held.iter().map(|&i| !noisy[i]).collect();
    let (decision, evidence) = judge(
        &eval.labels,
        &pb,
        &pa,
        input.validation.is_none().then_some(trusted.as_slice()),
        snapshot,
        data.num_classes,
        &cfg.cycle.guard,
    );
    let before = metrics(&eval, &pb);
    let after = metrics(&eval, &pa);
    rec.accuracy_before = Some(before.accuracy);
    rec.accuracy_after = Some(after.accuracy);
    rec.evidence = Some(evidence);
    lap(rec, "evaluate");
    let verdict = match decision {
        Decision::Accept(why) => format!("{eval_set}: {why}"),
        Decision::Reject(why) => {
            rec.outcome = CycleOutcome::Rejected;
            rec.reason = format!("{eval_set}: {why}");
            return Ok(None);
        }
        Decision::Skip(why) => {
            rec.outcome = CycleOutcome::Skipped;
            rec.reason = format!("{eval_set}: {why}");
            return Ok(None);
        }
    };

    // 5. Re-warm the mixture for the new model, then publish.
    let gmm = warm_verdicter(cfg, &candidate, data, Some(&input.gmm))?;
    // The candidate has seen its parent's inputs and this snapshot's.
    let mut input_range = crate::input_range::InputRange::of(data);
    if let Some(parent) = store
        .metadata(&cfg.model.name, input.version)
        .ok()
        .and_then(|m| m.input_range)
    {
        input_range = parent.union(&input_range);
    }
    let meta = store.publish(
        &cfg.model.name,
        &candidate,
        PublishInfo {
            parent_version: Some(input.version),
            sample_window: Some(SampleWindow {
                samples: data.len() as u64,
                source: format!(
                    "replay buffer of topic {} (cause: {})",
                    cfg.kafka.input_topic, input.cause
                ),
            }),
            estimated_noise_rate: Some(input.noisy_fraction),
            metrics_before: Some(before),
            metrics_after: Some(after),
            input_range: Some(input_range),
            acceptance: rec
                .evidence
                .as_ref()
                .map(|e| crate::store::AcceptanceEvidence {
                    reason: verdict.clone(),
                    eval_set: rec.eval_set.clone(),
                    eval_samples: e.eval_samples,
                    accuracy_before: e.accuracy_before,
                    accuracy_after: e.accuracy_after,
                    difference_interval: e.difference_interval,
                    recall_before: e.classes.iter().map(|c| c.recall_before).collect(),
                    recall_after: e.classes.iter().map(|c| c.recall_after).collect(),
                }),
            only_if_first: false,
        },
    )?;
    lap(rec, "publish");
    rec.outcome = CycleOutcome::Accepted;
    rec.reason = verdict;
    rec.new_version = Some(meta.version);
    Ok(Some((candidate, meta, gmm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_balance_repeats_a_starved_class_up_to_the_cap() {
        // 200 pool rows: class 0 has 90 of its 100 labels called clean, class 1 only 10; the
        // clean share is 0.5, so class 1 wants 50 (5x) and gets the cap, 4x; class 0 is never
        // thinned.
        let labels: Vec<u32> = (0..200).map(|i| u32::from(i >= 100)).collect();
        let pool: Vec<usize> = (0..200).collect();
        let clean: Vec<usize> = (0..90).chain(100..110).collect();
        let rows = class_balanced_rows(&labels, &clean, &pool, 2, 4.0, 7);
        let counts = (count_of(&rows, &labels, 0), count_of(&rows, &labels, 1));
        assert_eq!(counts, (90, 40));
        // A fractional weight draws its fraction per row: class 1 has 100 of its 1,000 pool
        // rows called clean at a clean share of 0.5, so it wants 5x; capped at 2.5x that is
        // about 250 rows (always rounding down or up would give 200 or 300).
        let labels: Vec<u32> = (0..2000).map(|i| u32::from(i >= 1000)).collect();
        let pool: Vec<usize> = (0..2000).collect();
        let clean: Vec<usize> = (0..900).chain(1000..1100).collect();
        let rows = class_balanced_rows(&labels, &clean, &pool, 2, 2.5, 7);
        let ones = count_of(&rows, &labels, 1);
        assert!((225..=275).contains(&ones), "{ones} rows of class 1");
        // Off (1) or nothing clean: the clean rows as they are.
        assert_eq!(
            class_balanced_rows(&labels, &clean, &pool, 2, 1.0, 7),
            clean
        );
        assert!(class_balanced_rows(&labels, &[], &pool, 2, 4.0, 7).is_empty());
    }

    fn count_of(rows: &[usize], labels: &[u32], c: u32) -> usize {
        rows.iter().filter(|&&i| labels[i] == c).count()
    }

    #[test]
    fn a_sample_streamed_twice_is_neither_unseen_nor_fine_tuned_on_beside_its_held_copy() {
        // 1,000 rows of 4 features: rows 0..400 trained the current model; 400..1000 arrived
        // after: rows 700..950 are copies of 400..650 (the topic replayed) and rows 950..1000
        // copies of rows 0..50, which the model trained on (under other labels, too).
        let mut features = Vec::new();
        for i in 0..1000usize {
            let src = match i {
                950.. => i - 950,
                700..=949 => i - 300,
                _ => i,
            };
            features.extend((0..4).map(|j| (src * 4 + j) as f32 / 7.0));
        }
        let data = Dataset {
            name: "replayed".into(),
            features,
            labels: (0..1000).map(|i| (i % 3) as u32).collect(),
            dim: 4,
            num_classes: 3,
            image_shape: None,
        };
        let keys = content_keys(&data);
        assert_eq!(keys[999], keys[49]);
        assert_eq!(keys[700], keys[400]);
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 700);
        let mut rows: Vec<usize> = (0..1000).collect();
        rows.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(3));
        let (held, set) = holdout_rows(&rows, &keys, 400, 0.2);
        // 700 distinct inputs, 300 of them unseen (rows 400..700): a fifth of the distinct
        // inputs (140), at most half of the unseen ones (150).
        assert_eq!((held.len(), set), (140, "holdout"));
        assert!(
            held.iter().all(|&i| (400..700).contains(&i)),
            "only first copies of inputs that arrived after the model's data"
        );
        assert_eq!(
            held.iter().map(|&i| keys[i]).collect::<HashSet<_>>().len(),
            held.len(),
            "no input twice in the held-out slice"
        );
        let excluded = copies_of(&held, &keys);
        // Each held row's other copy (if it has one) is out of fine-tuning too.
        for &i in &held {
            let twin = match i {
                400..=649 => Some(i + 300),
                700..=949 => Some(i - 300),
                _ => None,
            };
            if let Some(t) = twin {
                assert!(
                    excluded[t],
                    "row {t}, a copy of held-out row {i}, fine-tunes"
                );
            }
        }
        let extra = excluded.iter().filter(|&&b| b).count() - held.len();
        assert!(extra > 50, "{extra} copies excluded");
        // The fallback (no row unseen) holds out distinct inputs too.
        let (all_held, all_set) = holdout_rows(&rows, &keys, 1000, 0.2);
        assert_eq!((all_held.len(), all_set), (140, "holdout-all"));
        assert_eq!(
            all_held
                .iter()
                .map(|&i| keys[i])
                .collect::<HashSet<_>>()
                .len(),
            140
        );
        assert!(excluded
            .iter()
            .enumerate()
            .all(|(i, &b)| !b || held.iter().any(|&h| keys[h] == keys[i])));
    }

    #[test]
    fn holdout_comes_from_rows_the_current_model_has_not_trained_on() {
        // 1,000 clean rows (shuffled order), the current model trained on rows < 600.
        let clean: Vec<usize> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        let (held, tune, set) = split_holdout(&clean, |i| i >= 600, 0.1);
        assert_eq!(set, "holdout");
        assert_eq!(held.len(), 100);
        assert!(held.iter().all(|&i| i >= 600));
        assert_eq!(tune.len(), 900);
        let mut all: Vec<usize> = held.iter().chain(&tune).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..1000).collect::<Vec<_>>(),
            "a partition of the clean rows"
        );
        // Few unseen rows: half of them are held out, the other half fine-tunes.
        let (held, tune, set) = split_holdout(&clean, |i| i >= 850, 0.2);
        assert_eq!((held.len(), set), (75, "holdout"));
        assert_eq!(tune.iter().filter(|&&i| i >= 850).count(), 75);
        // Too few unseen rows: the fallback draws from all clean rows and says so.
        let (held, tune, set) = split_holdout(&clean, |i| i >= 950, 0.1);
        assert_eq!((held.len(), tune.len(), set), (100, 900, "holdout-all"));
        assert!(held.iter().any(|&i| i < 950));
    }
}
