//! The repair rows beside pruning: Relabel (label correction on the cross-fitted
//! probabilities), Forward (forward loss correction conditioned on the verdicts), both from
//! scratch with one shared start, and the Oracle bound (the same recipe on the true labels).

use super::*;

/// A noisy-partition sample is relabelled (label correction) when the out-of-sample class
/// probabilities that flagged it put at least this much on one class; below it, it is dropped.
pub const RELABEL_CONFIDENCE: f32 = 0.5;

/// The label-corrected training set: the samples not flagged (`flagged_noisy`, `[N]`) with
/// their given labels, plus each
/// noisy-partition sample whose out-of-sample class probabilities (`probs`, `[N, K]`, the
/// cross-fitted scores the partition was made from) put at least `min_confidence` on one class,
/// relabelled to that class. Returns the set and how many samples were relabelled. The label
/// correction of the noisy-label literature (e.g. Song et al., "Learning from Noisy Labels
/// with Deep Neural Networks: A Survey", 2022, §4); not part of the RLAP paper.
pub fn corrected_set(
    noisy: &Dataset,
    flagged_noisy: &[bool],
    probs: &[f32],
    min_confidence: f32,
) -> (Dataset, usize) {
    let k = noisy.num_classes;
    let mut keep = Vec::with_capacity(noisy.len());
    let mut labels = Vec::with_capacity(noisy.len());
    let mut relabelled = 0;
    for (i, &flagged) in flagged_noisy.iter().enumerate() {
        if !flagged {
            keep.push(i);
            labels.push(noisy.labels[i]);
            continue;
        }
        let row = &probs[i * k..(i + 1) * k];
        let (c, p) = row
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (c, &p)| if p > b.1 { (c, p) } else { b });
        if p >= min_confidence {
            keep.push(i);
            labels.push(c as u32);
            relabelled += usize::from(c as u32 != noisy.labels[i]);
        }
    }
    let mut set = noisy.select(&keep);
    set.labels = labels;
    (set, relabelled)
}

/// mixup's α in the Relabel row's recipe.
pub const RELABEL_MIXUP: f64 = 1.0;

/// Decay of the moving average of the weights the Relabel row ends with
/// ([`TrainConfig::ema`]; about the last 1,000 steps on long runs, fewer on short ones
/// where the schedule's `(1 + t) / (10 + t)` governs).
pub const RELABEL_EMA: f64 = 0.999;

/// The fresh model and the recipe the Relabel and Forward rows share: Retrain's seed and
/// recipe for `cfg.epochs`, plus mixup at [`RELABEL_MIXUP`] and the weight average at
/// [`RELABEL_EMA`].
fn correction_start(
    cfg: &ExperimentConfig,
    spec: &ModelSpec,
) -> Result<(Model, TrainConfig), ExperimentError> {
    let seed = cfg.seed.wrapping_add(1);
    let m = Model::new(spec.clone(), &cfg.device, seed)?;
    let recipe = TrainConfig {
        mixup: RELABEL_MIXUP,
        ema: RELABEL_EMA,
        ..recipe(cfg, cfg.epochs, Scope::All, 0.0, seed)
    };
    Ok((m, recipe))
}

/// The Relabel row: from scratch on [`corrected_set`] at [`RELABEL_CONFIDENCE`], with the
/// same recipe as Retrain plus mixup at α = [`RELABEL_MIXUP`] (Zhang et al., ICLR 2018)
/// for all `cfg.epochs`, ending with the moving average of its weights (decay
/// [`RELABEL_EMA`]). Mixed batches keep a long recipe from memorising the labels the
/// partition and the correction got wrong, and the average smooths the last epochs' swings
/// (both measured against early stopping on a held-out tenth, the row's recipe until
/// 2026-12-04: README "Does the repair work").
///
/// # Errors
/// Any step's error.
pub fn relabel_row(
    cfg: &ExperimentConfig,
    spec: &ModelSpec,
    data: &Prepared,
    s1: &Stage1,
    progress: &Progress,
) -> Result<Row, ExperimentError> {
    let (set, relabelled) = corrected_set(
        &data.noisy,
        &s1.partition.noisy,
        &s1.scores.probs,
        RELABEL_CONFIDENCE,
    );
    tracing::info!(
        samples = set.len(),
        relabelled,
        "label-corrected set: clean partition plus confidently relabelled noisy samples"
    );
    let (m, recipe) = correction_start(cfg, spec)?;
    let stats = train(&m, &set, &recipe, progress, "Relabel")?;
    row("Relabel", &m, &data.test, &stats, cfg.epochs, set.len())
}

/// The Forward row: from scratch on every training sample with its given label, trained
/// with the forward loss correction of [`verdict_likelihoods`] ([`train_forward`]) and the
/// Relabel row's recipe (mixup at α = [`RELABEL_MIXUP`], the weight average at
/// [`RELABEL_EMA`]). Where Relabel needs the out-of-sample probabilities to name each flagged
/// sample's class, Forward needs them only for the flip matrix, so it holds up where those
/// probabilities are wrong most often: class-dependent (pair, human-like) noise (README
/// "Does the repair work").
///
/// # Errors
/// Any step's error.
pub fn forward_row(
    cfg: &ExperimentConfig,
    spec: &ModelSpec,
    data: &Prepared,
    s1: &Stage1,
    progress: &Progress,
) -> Result<Row, ExperimentError> {
    let likelihoods = verdict_likelihoods(
        &data.noisy.labels,
        data.noisy.num_classes,
        &s1.partition.posterior_noisy,
        &s1.partition.noisy,
        &s1.scores.probs,
    )?;
    let (m, recipe) = correction_start(cfg, spec)?;
    let stats = train_forward(&m, &data.noisy, &likelihoods, &recipe, progress, "Forward")?;
    row(
        "Forward",
        &m,
        &data.test,
        &stats,
        cfg.epochs,
        data.noisy.len(),
    )
}

/// The Oracle row: the same architecture and recipe as Initial, trained on the true data
/// (evaluation-only upper bound).
///
/// # Errors
/// Any step's error.
pub fn oracle_row(
    cfg: &ExperimentConfig,
    spec: &ModelSpec,
    data: &Prepared,
    progress: &Progress,
) -> Result<Row, ExperimentError> {
    from_scratch(
        cfg,
        spec,
        data.truth.oracle_train_set(),
        &data.test,
        "Oracle",
        cfg.seed,
        progress,
    )
}
