//! `rlap experiment`: Algorithm 1 end to end on a real data set, with the paper's table.
//!
//! This module owns the orchestration only: load → corrupt (train split) → train Initial →
//! attribute → partition → score neurons → prune → L-FT / F-FT on the clean partition →
//! Retrain on the clean partition → Oracle on the true data → evaluate on the clean test split.
//! It also scores the partition against the hidden mask, and writes the JSON report and the
//! per-sample posteriors CSV. Sweeps over corruption rates or criteria reuse the same steps.
//!
//! Architecture invariant: the [`GroundTruth`] is handed only to evaluation calls and to the
//! Oracle row; every decision (partition, pruning, fine-tuning set) is made from the noisy set.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::attribution::{attribute, AttributionMode, Attributions};
use crate::corruption::{corrupt, Corruption, CorruptionError};
use crate::data::{load, DataError, Dataset, DatasetSpec};
use crate::evaluation::{classification_report, DetectionReport, GroundTruth};
use crate::model::{Arch, Model, ModelError, ModelSpec};
use crate::noise_model::{verdict_likelihoods, NoiseModel};
use crate::partition::{
    fit_partition, Estimator, Partition, PartitionError, PartitionFeatures, PartitionParams,
};
use crate::progress::Progress;
use crate::prune::{neuron_scores, prune_count, select_top, Criterion, PruneError};
use crate::train::{predict, train, train_forward, Optimizer, Scope, TrainConfig, TrainStats};

mod correction;
mod crossfit;
mod report;
pub mod sweep;

pub use correction::*;
pub use crossfit::*;
pub use report::*;

/// Any failure of an experiment, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// Loading the data set failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The corruption specification or its matrix is invalid.
    #[error(transparent)]
    Corruption(#[from] CorruptionError),
    /// Training, attribution or checkpointing failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The mixture could not be fitted.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// Neuron scoring failed (e.g. a one-sided partition).
    #[error(transparent)]
    Prune(#[from] PruneError),
    /// A report file could not be written.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// The underlying I/O error (part of the message, not a separate cause).
        error: std::io::Error,
    },
    /// Invalid option combination.
    #[error("{0}")]
    Invalid(String),
}

/// Everything that defines one experiment run. Defaults follow the paper's recipe (§3.4:
/// Adam, lr 1e-3, batch 64; L-FT weight decay 1e-5; 15.6 % of H pruned).
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentConfig {
    /// Data set to load.
    #[serde(serialize_with = "ser_display")]
    pub dataset: DatasetSpec,
    /// Folder of the named data sets.
    pub data_dir: PathBuf,
    /// Corruption of the training split.
    #[serde(serialize_with = "ser_display")]
    pub corruption: Corruption,
    /// Model family.
    pub arch: Arch,
    /// Neurons H of the target layer.
    pub hidden: usize,
    /// Attribution mode.
    pub attribution: AttributionMode,
    /// Neuron criterion.
    pub criterion: Criterion,
    /// Fraction of H pruned.
    pub prune_fraction: f64,
    /// Epochs of Initial, Retrain and Oracle.
    pub epochs: usize,
    /// Epochs of L-FT and F-FT.
    pub finetune_epochs: usize,
    /// Mini-batch size of every training run.
    pub batch_size: usize,
    /// Adam learning rate of every training run.
    pub lr: f64,
    /// Stratified subsample of the training split (None = all).
    pub train_size: Option<usize>,
    /// Master seed (data subsample, corruption, init, shuffling, GMM).
    pub seed: u64,
    /// Samples per attribution batch.
    pub attribution_batch: usize,
    /// Posterior threshold for "noisy".
    pub threshold: f64,
    /// The mixture's feature space (estimator `mixture`).
    pub partition_features: PartitionFeatures,
    /// The verdict rule.
    pub estimator: Estimator,
    /// Folds of the cross-fitting that scores every training sample with a model that did
    /// not train on it; 0 or 1 scores with Initial itself (in-sample, the paper's way).
    pub crossfit_folds: usize,
    /// Epochs of each cross-fitting model: scoring models stop early whatever `epochs` says,
    /// so the partition does not depend on how long the final model trained.
    pub crossfit_epochs: usize,
    /// Stop after the partition (Initial row and partition report only): the quality
    /// benchmark's mode.
    pub partition_only: bool,
    /// Compute device.
    #[serde(skip)]
    pub device: Device,
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetSpec::Mnist,
            data_dir: crate::data::default_data_dir(),
            corruption: Corruption::LabelSymmetric { rate: 0.4 },
            arch: Arch::Mlp,
            hidden: 256,
            attribution: AttributionMode::LabelGradient,
            criterion: Criterion::Rlap,
            prune_fraction: crate::prune::DEFAULT_PRUNE_FRACTION,
            epochs: 5,
            finetune_epochs: 5,
            batch_size: 64,
            lr: 1e-3,
            train_size: None,
            seed: 1,
            attribution_batch: 256,
            threshold: 0.5,
            partition_features: PartitionFeatures::Summary,
            estimator: Estimator::NoiseModel,
            crossfit_folds: 5,
            crossfit_epochs: 5,
            partition_only: false,
            device: Device::Cpu,
        }
    }
}

/// The data an experiment works on: noisy train split, its hidden truth, clean test split.
pub struct Prepared {
    /// The corrupted training split: all the algorithm sees.
    pub noisy: Dataset,
    /// The hidden truth, for evaluation and the Oracle row only.
    pub truth: GroundTruth,
    /// The clean test split.
    pub test: Dataset,
}

/// Load, subsample (stratified on the true labels, before corruption) and corrupt.
///
/// # Errors
/// [`ExperimentError::Data`] or [`ExperimentError::Corruption`].
pub fn prepare(cfg: &ExperimentConfig) -> Result<Prepared, ExperimentError> {
    let split = load(&cfg.dataset, &cfg.data_dir)?;
    let train_set = match cfg.train_size {
        Some(n) => split
            .train
            .select(&split.train.stratified_indices(n, cfg.seed)),
        None => split.train,
    };
    let (noisy, truth) = corrupt(&train_set, &cfg.corruption, cfg.seed)?;
    Ok(Prepared {
        noisy,
        truth,
        test: split.test,
    })
}

fn validate(cfg: &ExperimentConfig) -> Result<(), ExperimentError> {
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.hidden == 0 || cfg.attribution_batch == 0 {
        return Err(ExperimentError::Invalid(
            "epochs, batch size, hidden width and attribution batch must be > 0".into(),
        ));
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(ExperimentError::Invalid(format!(
            "learning rate {} must be > 0",
            cfg.lr
        )));
    }
    prune_count(cfg.prune_fraction, cfg.hidden)?;
    Ok(())
}

fn recipe(
    cfg: &ExperimentConfig,
    epochs: usize,
    scope: Scope,
    weight_decay: f64,
    seed: u64,
) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: cfg.batch_size,
        optimizer: Optimizer::Adam {
            lr: cfg.lr,
            weight_decay,
        },
        scope,
        seed,
        mixup: 0.0,
        ema: 0.0,
    }
}

fn row(
    name: &str,
    model: &Model,
    test: &Dataset,
    stats: &TrainStats,
    epochs: usize,
    n: usize,
) -> Result<Row, ExperimentError> {
    let r = classification_report(&predict(model, test)?, &test.labels, test.num_classes);
    Ok(Row {
        name: name.into(),
        accuracy: r.accuracy,
        macro_precision: r.macro_precision,
        macro_recall: r.macro_recall,
        macro_f1: r.macro_f1,
        seconds_per_epoch: stats.seconds_per_epoch(),
        total_seconds: stats.total_seconds,
        epochs,
        train_samples: n,
    })
}

/// The state after steps 1–3 of Algorithm 1, shared by criterion sweeps.
pub struct Stage1 {
    /// The model trained on the noisy split.
    pub initial: Model,
    /// Its table row.
    pub initial_row: Row,
    /// Attributions, activations and losses of every training sample under Initial (the
    /// activations drive the sensitivity regression of §3.3).
    pub attributions: Attributions,
    /// The scores the partition was made from: out-of-sample (cross-fitted) when
    /// `crossfit_folds >= 2`, else a copy of `attributions`.
    pub scores: Attributions,
    /// The clean/noisy partition.
    pub partition: Partition,
    /// Wall-clock seconds of the attribution pass.
    pub attribution_seconds: f64,
    /// Wall-clock seconds of the cross-fitting.
    pub crossfit_seconds: f64,
    /// Wall-clock seconds of the mixture fit.
    pub partition_seconds: f64,
}

/// Steps 1–3: train Initial on the noisy set, attribute, partition.
///
/// # Errors
/// Any step's error.
pub fn stage1(
    cfg: &ExperimentConfig,
    data: &Prepared,
    progress: &Progress,
) -> Result<Stage1, ExperimentError> {
    validate(cfg)?;
    let spec = ModelSpec::for_dataset(cfg.arch, cfg.hidden, &data.noisy);
    let initial = Model::new(spec, &cfg.device, cfg.seed)?;
    let stats = train(
        &initial,
        &data.noisy,
        &recipe(cfg, cfg.epochs, Scope::All, 0.0, cfg.seed),
        progress,
        "Initial",
    )?;
    let initial_row = row(
        "Initial",
        &initial,
        &data.test,
        &stats,
        cfg.epochs,
        data.noisy.len(),
    )?;
    tracing::info!(
        accuracy = initial_row.accuracy,
        s_per_epoch = initial_row.seconds_per_epoch,
        "Initial trained"
    );

    let t = Instant::now();
    let attributions = attribute(
        &initial,
        &data.noisy,
        cfg.attribution,
        cfg.attribution_batch,
        progress,
    )?;
    let attribution_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let scores = if cfg.crossfit_folds >= 2 {
        crossfit(
            &data.noisy,
            initial.spec(),
            &CrossFitPlan {
                folds: cfg.crossfit_folds,
                recipe: recipe(cfg, cfg.crossfit_epochs, Scope::All, 0.0, cfg.seed),
                attribution: cfg.attribution,
                attribution_batch: cfg.attribution_batch,
            },
            &cfg.device,
            progress,
        )?
    } else {
        attributions.clone()
    };
    let crossfit_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let params = PartitionParams {
        features: cfg.partition_features,
        threshold: cfg.threshold,
        seed: cfg.seed,
        ..Default::default()
    };
    let partition = partition_scores(cfg.estimator, &scores, &data.noisy, &params)?;
    let partition_seconds = t.elapsed().as_secs_f64();
    tracing::info!(
        noisy_fraction = partition.noisy_fraction(),
        attribution_seconds,
        partition_seconds,
        "partition fitted"
    );
    Ok(Stage1 {
        initial,
        initial_row,
        attributions,
        scores,
        partition,
        attribution_seconds,
        crossfit_seconds,
        partition_seconds,
    })
}

/// Steps 4–6 for one criterion: score, prune, L-FT and F-FT.
///
/// # Errors
/// Any step's error.
pub fn prune_and_finetune(
    cfg: &ExperimentConfig,
    data: &Prepared,
    s1: &Stage1,
    criterion: Criterion,
    progress: &Progress,
) -> Result<Finetuned, ExperimentError> {
    let a = &s1.attributions;
    let t = Instant::now();
    let scores = neuron_scores(
        criterion,
        &a.activations,
        a.n,
        a.hidden,
        &s1.partition.noisy,
        cfg.seed,
    )?;
    let k = prune_count(cfg.prune_fraction, a.hidden)?;
    let top = select_top(&scores.scores, k);
    let mut pruned = s1.initial.deep_clone()?;
    pruned.prune(&top)?;
    let scoring_seconds = t.elapsed().as_secs_f64();
    let pruning_total = s1.attribution_seconds + s1.partition_seconds + scoring_seconds;
    let none = TrainStats {
        total_seconds: pruning_total,
        ..Default::default()
    };
    let mut rows = vec![row("Pruned", &pruned, &data.test, &none, 0, 0)?];

    let clean = data.noisy.select(&s1.partition.clean_indices());
    if clean.len() < cfg.batch_size {
        return Err(ExperimentError::Invalid(format!(
            "the clean partition has only {} samples: nothing to fine-tune on",
            clean.len()
        )));
    }
    let mut fft = None;
    for (name, scope, wd) in [("L-FT", Scope::Head, 1e-5), ("F-FT", Scope::All, 0.0)] {
        let m = pruned.deep_clone()?;
        let stats = train(
            &m,
            &clean,
            &recipe(
                cfg,
                cfg.finetune_epochs,
                scope,
                wd,
                cfg.seed.wrapping_add(2),
            ),
            progress,
            name,
        )?;
        if !pruned_rows_are_zero(&m, &top)? {
            return Err(ExperimentError::Invalid(format!(
                "{name} regrew a pruned neuron"
            )));
        }
        rows.push(row(
            name,
            &m,
            &data.test,
            &stats,
            cfg.finetune_epochs,
            clean.len(),
        )?);
        fft = Some(m);
    }
    let fft = fft.expect("the F-FT row ran");
    Ok(Finetuned {
        rows,
        pruned: top,
        scoring_seconds,
        ridge_lambda: scores.ridge_lambda,
        fft,
    })
}

/// What steps 4–6 produce for one criterion.
pub struct Finetuned {
    /// Rows Pruned, L-FT, F-FT.
    pub rows: Vec<Row>,
    /// Pruned neuron indices, ascending.
    pub pruned: Vec<usize>,
    /// Seconds spent scoring neurons.
    pub scoring_seconds: f64,
    /// The ridge λ of the OLS solve (`rlap` criterion only).
    pub ridge_lambda: Option<f64>,
    /// The F-FT model (the one a cycle would publish).
    pub fft: Model,
}

/// True when every pruned neuron's incoming weights and bias are exactly zero.
///
/// # Errors
/// [`ModelError::Candle`] when the weights cannot be read back.
pub fn pruned_rows_are_zero(model: &Model, pruned: &[usize]) -> Result<bool, ModelError> {
    let w = model.param("fc.weight").to_vec2::<f32>()?;
    let b = model.param("fc.bias").to_vec1::<f32>()?;
    Ok(pruned
        .iter()
        .all(|&j| b.get(j) == Some(&0.0) && w.get(j).is_some_and(|r| r.iter().all(|&v| v == 0.0))))
}

/// Train a fresh model (seed `seed`) on `set` for `cfg.epochs` and evaluate it as row `name`.
///
/// # Errors
/// Any step's error.
pub fn from_scratch(
    cfg: &ExperimentConfig,
    spec: &ModelSpec,
    set: &Dataset,
    test: &Dataset,
    name: &str,
    seed: u64,
    progress: &Progress,
) -> Result<Row, ExperimentError> {
    let m = Model::new(spec.clone(), &cfg.device, seed)?;
    let stats = train(
        &m,
        set,
        &recipe(cfg, cfg.epochs, Scope::All, 0.0, seed),
        progress,
        name,
    )?;
    row(name, &m, test, &stats, cfg.epochs, set.len())
}

/// Run Algorithm 1 end to end (see module docs); returns the report, steps 1–3's state (for
/// [`write_posteriors`]) and the F-FT model (None with `partition_only`). `oracle` reuses a precomputed Oracle row
/// (sweeps over label-noise rates train on the same true data).
///
/// # Errors
/// Any step's error.
pub fn run(
    cfg: &ExperimentConfig,
    data: &Prepared,
    oracle: Option<Row>,
    progress: &Progress,
) -> Result<(ExperimentReport, Stage1, Option<Model>), ExperimentError> {
    let t0 = Instant::now();
    let s1 = stage1(cfg, data, progress)?;
    if cfg.partition_only {
        let report = ExperimentReport::assemble(
            cfg,
            data,
            &s1,
            vec![s1.initial_row.clone()],
            vec![],
            0.0,
            t0.elapsed().as_secs_f64(),
        );
        return Ok((report, s1, None));
    }
    let Finetuned {
        mut rows,
        pruned: pruned_neurons,
        scoring_seconds,
        ridge_lambda,
        fft,
    } = prune_and_finetune(cfg, data, &s1, cfg.criterion, progress)?;
    rows.insert(0, s1.initial_row.clone());
    let spec = s1.initial.spec().clone();
    let clean = data.noisy.select(&s1.partition.clean_indices());
    rows.push(from_scratch(
        cfg,
        &spec,
        &clean,
        &data.test,
        "Retrain",
        cfg.seed.wrapping_add(1),
        progress,
    )?);
    rows.push(relabel_row(cfg, &spec, data, &s1, progress)?);
    rows.push(forward_row(cfg, &spec, data, &s1, progress)?);
    let oracle = match oracle {
        Some(r) => r,
        None => oracle_row(cfg, &spec, data, progress)?,
    };
    rows.push(oracle);
    let mut report = ExperimentReport::assemble(
        cfg,
        data,
        &s1,
        rows,
        pruned_neurons,
        scoring_seconds,
        t0.elapsed().as_secs_f64(),
    );
    report.regression_ridge_lambda = ridge_lambda;
    Ok((report, s1, Some(fft)))
}

/// Write the per-sample posteriors CSV:
/// `index,given_label,true_label,corrupted,posterior_noisy,predicted_noisy,q0,…,q{K-1}`, the
/// last K columns being the class probabilities the partition was made from (out-of-sample
/// when cross-fitted): the quality benchmark hands them to the peers.
///
/// # Errors
/// [`ExperimentError::Io`].
pub fn write_posteriors(path: &Path, data: &Prepared, s1: &Stage1) -> Result<(), ExperimentError> {
    let io = |source| ExperimentError::Io {
        path: path.into(),
        error: source,
    };
    let partition = &s1.partition;
    let k = data.noisy.num_classes;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    write!(
        w,
        "index,given_label,true_label,corrupted,posterior_noisy,predicted_noisy"
    )
    .map_err(io)?;
    for c in 0..k {
        write!(w, ",q{c}").map_err(io)?;
    }
    writeln!(w).map_err(io)?;
    for i in 0..data.noisy.len() {
        write!(
            w,
            "{i},{},{},{},{:.6},{}",
            data.noisy.labels[i],
            data.truth.true_label(i),
            data.truth.is_corrupted(i) as u8,
            partition.posterior_noisy[i],
            partition.noisy[i] as u8
        )
        .map_err(io)?;
        for v in &s1.scores.probs[i * k..(i + 1) * k] {
            write!(w, ",{v:.6}").map_err(io)?;
        }
        writeln!(w).map_err(io)?;
    }
    w.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrected_set_keeps_clean_relabels_confident_and_drops_the_rest() {
        let noisy = Dataset {
            name: "t".into(),
            features: vec![0.0, 1.0, 2.0, 3.0],
            labels: vec![0, 1, 1, 2],
            dim: 1,
            num_classes: 3,
            image_shape: None,
        };
        let partition = Partition {
            posterior_noisy: vec![0.1, 0.9, 0.8, 0.2],
            noisy: vec![false, true, true, false],
            clean_component: 0,
            weights: [0.5, 0.5],
            component_mean_loss: [0.1, 2.0],
            reg_covar: 0.0,
        };
        // Sample 1 is confidently class 2; sample 2 is unsure (0.4 at most).
        let probs = [
            0.9, 0.05, 0.05, //
            0.1, 0.1, 0.8, //
            0.4, 0.3, 0.3, //
            0.1, 0.1, 0.8,
        ];
        let (set, relabelled) = corrected_set(&noisy, &partition.noisy, &probs, 0.5);
        assert_eq!(relabelled, 1);
        assert_eq!(set.features, vec![0.0, 1.0, 3.0]);
        assert_eq!(set.labels, vec![0, 2, 2]);
        assert_eq!(set.num_classes, 3);
    }
}
