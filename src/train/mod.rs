//! Seeded mini-batch training: Adam (PyTorch semantics, L2 weight decay) and SGD with momentum,
//! over all parameters (initial training, F-FT, Retrain, Oracle) or the head only (L-FT, §3.4).
//!
//! This module owns the optimizers and the training loop. On the CPU the optimizer step is one
//! fused in-place pass per parameter (a candle `InplaceOp2`) instead of candle-nn's AdamW, which
//! spends ~15 ms per step on a 0.5M-parameter MLP building a dozen temporary tensors per
//! parameter; other devices use the same update written as tensor operations. The persistent
//! prune mask is re-applied inside every step, so fine-tuning can never regrow a pruned neuron.

use std::sync::Mutex;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, Layout, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

use crate::data::Dataset;
use crate::model::{Arch, Group, Model, ModelError};
use crate::progress::Progress;

mod grads;
mod optim;

pub use grads::*;
pub use optim::*;

/// Optimizer choice and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Optimizer {
    /// Adam (Kingma & Ba 2015) with β = (0.9, 0.999), ε = 1e-8 and L2 weight decay added to the
    /// gradient, as PyTorch's `torch.optim.Adam`.
    Adam { lr: f64, weight_decay: f64 },
    /// SGD with (heavy-ball) momentum and L2 weight decay, as `torch.optim.SGD`.
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    },
}

/// Which parameters are trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scope {
    /// Every parameter (initial training, F-FT, Retrain, Oracle).
    All,
    /// Only `fc` and `fc2` (L-FT, §3.4). The frozen body's outputs are computed once and reused
    /// across epochs.
    Head,
}

/// A training recipe.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per optimizer step (paper: 64).
    pub batch_size: usize,
    /// Optimizer and its settings.
    pub optimizer: Optimizer,
    /// Parameters to train.
    pub scope: Scope,
    /// Seed of the shuffling order.
    pub seed: u64,
    /// mixup's α (Zhang et al., ICLR 2018): each batch is replaced by `λ·x + (1 − λ)·x[π]`
    /// with targets mixed alike, `λ ~ Beta(α, α)` and `π` a random permutation of the batch
    /// (with a frozen body, [`Scope::Head`], the body's outputs are mixed). 0 = off (the
    /// paper's recipe); mixed batches keep a network from memorising the wrong labels a
    /// partition leaves behind.
    pub mixup: f64,
    /// Decay of an exponential moving average of the trained weights (Polyak & Juditsky
    /// 1992; as TensorFlow's `ExponentialMovingAverage` with `num_updates`, the decay of step
    /// t is `min(ema, (1 + t) / (10 + t))`); the model ends with the averaged weights. 0 =
    /// off (the paper's recipe); it smooths out the last epochs' step-to-step swings.
    pub ema: f64,
}

impl TrainConfig {
    /// The paper's recipe (§3.4): Adam, lr 1e-3, no weight decay, batch 64, every parameter.
    pub fn paper(epochs: usize, seed: u64) -> Self {
        Self {
            epochs,
            batch_size: 64,
            optimizer: Optimizer::Adam {
                lr: 1e-3,
                weight_decay: 0.0,
            },
            scope: Scope::All,
            seed,
            mixup: 0.0,
            ema: 0.0,
        }
    }
}

/// What a training run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrainStats {
    /// Wall-clock seconds of each epoch.
    pub epoch_seconds: Vec<f64>,
    /// Mean cross-entropy over the last epoch's batches.
    pub final_loss: f64,
    /// Wall-clock seconds of the whole run, including one-off work (L-FT's body pass).
    pub total_seconds: f64,
}

impl TrainStats {
    /// Mean seconds per epoch (the paper's "Time"); 0 when no epoch ran.
    pub fn seconds_per_epoch(&self) -> f64 {
        if self.epoch_seconds.is_empty() {
            0.0
        } else {
            self.epoch_seconds.iter().sum::<f64>() / self.epoch_seconds.len() as f64
        }
    }
}

/// Gather rows `idx` of `data` into an input tensor `[b, D]` and a label tensor `[b]` (u32).
///
/// # Errors
/// [`ModelError::Candle`].
pub fn batch_tensors(
    data: &Dataset,
    idx: &[usize],
    device: &Device,
) -> Result<(Tensor, Tensor), ModelError> {
    let mut x = Vec::with_capacity(idx.len() * data.dim);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        x.extend_from_slice(data.row(i));
        y.push(data.labels[i]);
    }
    Ok((
        Tensor::from_vec(x, (idx.len(), data.dim), device)?,
        Tensor::from_vec(y, idx.len(), device)?,
    ))
}

/// Train `model` on `data` with `cfg`, reporting each epoch on `progress`.
///
/// # Errors
/// [`ModelError`] from the forward/backward pass or the optimizer.
pub fn train(
    model: &Model,
    data: &Dataset,
    cfg: &TrainConfig,
    progress: &Progress,
    label: &str,
) -> Result<TrainStats, ModelError> {
    train_with(model, data, cfg, progress, label, &mut |_| Ok(()))
}

/// As [`train`], calling `on_epoch(epoch)` (1-based) after each epoch (e.g. to evaluate a
/// held-out set).
///
/// # Errors
/// [`ModelError`] from training or from `on_epoch`.
pub fn train_with(
    model: &Model,
    data: &Dataset,
    cfg: &TrainConfig,
    progress: &Progress,
    label: &str,
    on_epoch: &mut dyn FnMut(usize) -> Result<(), ModelError>,
) -> Result<TrainStats, ModelError> {
    train_targets(model, data, Targets::Labels, cfg, progress, label, on_epoch)
}

/// As [`train`] with soft targets instead of `data.labels`: `targets` `[N, K]` row-major
/// (N = `data.len()`, K = `data.num_classes`), each row a distribution over the classes
/// (label correction: a flagged sample's out-of-sample class probabilities).
///
/// # Errors
/// [`ModelError::Recipe`] when `targets` is not `N·K` long or a row is not a distribution;
/// [`ModelError`] from training.
pub fn train_soft(
    model: &Model,
    data: &Dataset,
    targets: &[f32],
    cfg: &TrainConfig,
    progress: &Progress,
    label: &str,
) -> Result<TrainStats, ModelError> {
    train_targets(
        model,
        data,
        Targets::Soft(targets),
        cfg,
        progress,
        label,
        &mut |_| Ok(()),
    )
}

/// As [`train`] with forward loss correction ([`Objective::Likelihood`]): `likelihoods`
/// `[N, K]` row-major, row b the probability of sample b's given label under each true class
/// (values in [0, 1], not all 0); the model learns the clean class probabilities whose
/// likelihood of the given labels is highest (Patrini et al., CVPR 2017).
///
/// # Errors
/// [`ModelError::Recipe`] when `likelihoods` is not `N·K` long or a row is out of range or
/// all zero; [`ModelError`] from training.
pub fn train_forward(
    model: &Model,
    data: &Dataset,
    likelihoods: &[f32],
    cfg: &TrainConfig,
    progress: &Progress,
    label: &str,
) -> Result<TrainStats, ModelError> {
    train_targets(
        model,
        data,
        Targets::Likelihood(likelihoods),
        cfg,
        progress,
        label,
        &mut |_| Ok(()),
    )
}

/// What a training run fits, per sample, on the host.
#[derive(Clone, Copy)]
enum Targets<'a> {
    /// `data.labels`.
    Labels,
    /// Soft targets `[N, K]` ([`Objective::Soft`]).
    Soft(&'a [f32]),
    /// Likelihood vectors `[N, K]` ([`Objective::Likelihood`]).
    Likelihood(&'a [f32]),
}

impl Targets<'_> {
    /// `Err(reason)` when the per-sample rows do not fit `data` or are out of range.
    fn check(&self, data: &Dataset) -> Result<(), ModelError> {
        let (rows, what) = match *self {
            Targets::Labels => return Ok(()),
            Targets::Soft(s) => (s, "soft targets"),
            Targets::Likelihood(c) => (c, "likelihood vectors"),
        };
        if rows.len() != data.len() * data.num_classes {
            return Err(ModelError::Recipe(format!(
                "{what}: {} values for {} samples of {} classes",
                rows.len(),
                data.len(),
                data.num_classes
            )));
        }
        let bad = rows
            .chunks(data.num_classes.max(1))
            .position(|r| match self {
                Targets::Soft(_) => {
                    r.iter().any(|v| !(v.is_finite() && *v >= 0.0))
                        || (r.iter().sum::<f32>() - 1.0).abs() > 1e-3
                }
                _ => r.iter().any(|v| !(0.0..=1.0).contains(v)) || r.iter().all(|&v| v == 0.0),
            });
        match (bad, self) {
            (None, _) => Ok(()),
            (Some(r), Targets::Soft(_)) => Err(ModelError::Recipe(format!(
                "soft targets: row {r} is not a distribution over the classes (non-negative, summing to 1)"
            ))),
            (Some(r), _) => Err(ModelError::Recipe(format!(
                "likelihood vectors: row {r} has a value outside [0, 1] or is all zero"
            ))),
        }
    }

    /// One batch's rows `[B, K]`: one-hot rows of the labels, or the given rows.
    fn batch(&self, data: &Dataset, idx: &[usize], device: &Device) -> Result<Tensor, ModelError> {
        let k = data.num_classes;
        let mut t = vec![0f32; idx.len() * k];
        for (row, &i) in t.chunks_mut(k).zip(idx) {
            match *self {
                Targets::Soft(s) | Targets::Likelihood(s) => {
                    row.copy_from_slice(&s[i * k..(i + 1) * k])
                }
                Targets::Labels => row[data.labels[i] as usize] = 1.0,
            }
        }
        Ok(Tensor::from_vec(t, (idx.len(), k), device)?)
    }
}

/// mixup's draw for one batch of `b` samples: `λ ~ Beta(α, α)` and a permutation `π`; the
/// mixed batch is `λ·a + (1 − λ)·a[π]` ([`mix`]).
fn mixup_draw(
    b: usize,
    alpha: f64,
    rng: &mut Xoshiro256PlusPlus,
    device: &Device,
) -> Result<(f64, Tensor), ModelError> {
    use rand_distr::{Beta, Distribution};
    let lambda = Beta::new(alpha, alpha)
        .map_err(|e| ModelError::Recipe(format!("mixup α = {alpha}: {e}")))?
        .sample(rng);
    if !lambda.is_finite() {
        return Err(ModelError::Recipe(format!(
            "mixup α = {alpha} drew λ = {lambda}"
        )));
    }
    let mut perm: Vec<u32> = (0..b as u32).collect();
    perm.shuffle(rng);
    Ok((lambda, Tensor::from_vec(perm, b, device)?))
}

/// `λ·a + (1 − λ)·a[π]` along the batch dimension.
fn mix(a: &Tensor, lambda: f64, perm: &Tensor) -> Result<Tensor, ModelError> {
    Ok(((a * lambda)? + (a.index_select(perm, 0)? * (1.0 - lambda))?)?)
}

fn train_targets(
    model: &Model,
    data: &Dataset,
    targets: Targets<'_>,
    cfg: &TrainConfig,
    progress: &Progress,
    label: &str,
    on_epoch: &mut dyn FnMut(usize) -> Result<(), ModelError>,
) -> Result<TrainStats, ModelError> {
    targets.check(data)?;
    if !(0.0..1.0).contains(&cfg.ema) {
        return Err(ModelError::Recipe(format!(
            "the weight average's decay must be in [0, 1) (got {})",
            cfg.ema
        )));
    }
    if !(cfg.mixup >= 0.0 && cfg.mixup.is_finite()) {
        return Err(ModelError::Recipe(format!(
            "mixup α must be a finite number ≥ 0 (got {})",
            cfg.mixup
        )));
    }
    let plain = matches!(targets, Targets::Labels) && cfg.mixup == 0.0;
    // mixup's own stream, so the shuffling order is the same with and without it.
    let mut mix_rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed ^ 0x6d_6978_7570);
    let t0 = Instant::now();
    let device = model.device();
    let mut opt = OptimizerState::new(model, cfg.optimizer, cfg.scope)?;
    // The moving average of the trained weights (cfg.ema), one tensor per trained parameter.
    let mut average: Vec<Tensor> = if cfg.ema > 0.0 {
        opt.vars()
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mut updates = 0u64;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let bs = cfg.batch_size.max(1);
    let steps_per_epoch = data.len().div_ceil(bs);
    // L-FT: the body is frozen, so its output for every sample is computed once.
    let frozen_body = match cfg.scope {
        Scope::Head => Some(body_outputs(model, data, 1024)?),
        Scope::All => None,
    };
    let bar = progress.bar((cfg.epochs * steps_per_epoch) as u64, label);
    let mut stats = TrainStats::default();
    for epoch in 0..cfg.epochs {
        let te = Instant::now();
        order.shuffle(&mut rng);
        // One epoch on a worker of the matrix-product pool (crate::cpu::compute).
        let loss_sum = crate::cpu::compute(|| -> Result<f64, ModelError> {
            let mut loss_sum = 0.0;
            for chunk in order.chunks(bs) {
                let (input, y) = match &frozen_body {
                    Some(z) => {
                        let idx: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
                        let labels: Vec<u32> = chunk.iter().map(|&i| data.labels[i]).collect();
                        let idx = Tensor::from_vec(idx, chunk.len(), device)?;
                        (
                            z.index_select(&idx, 0)?,
                            Tensor::from_vec(labels, chunk.len(), device)?,
                        )
                    }
                    None => batch_tensors(data, chunk, device)?,
                };
                let (loss, grads) = if plain {
                    loss_and_grads(model, &input, &y, cfg.scope)?
                } else {
                    let t = targets.batch(data, chunk, device)?;
                    let mixed = if cfg.mixup > 0.0 {
                        Some(mixup_draw(chunk.len(), cfg.mixup, &mut mix_rng, device)?)
                    } else {
                        None
                    };
                    let input = match &mixed {
                        Some((lambda, perm)) => mix(&input, *lambda, perm)?,
                        None => input,
                    };
                    let objective = match (targets, &mixed) {
                        (Targets::Likelihood(_), Some((lambda, perm))) => {
                            Objective::Likelihood(vec![
                                (*lambda, t.clone()),
                                (1.0 - lambda, t.index_select(perm, 0)?),
                            ])
                        }
                        (Targets::Likelihood(_), None) => Objective::Likelihood(vec![(1.0, t)]),
                        (_, Some((lambda, perm))) => Objective::Soft(mix(&t, *lambda, perm)?),
                        (_, None) => Objective::Soft(t),
                    };
                    objective_loss_and_grads(model, &input, &objective, cfg.scope)?
                };
                opt.step(&grads)?;
                if !average.is_empty() {
                    updates += 1;
                    let d = cfg.ema.min((1 + updates) as f64 / (10 + updates) as f64);
                    for (a, v) in average.iter_mut().zip(opt.vars()) {
                        if a.device().is_cpu() {
                            a.inplace_op2(v.as_tensor(), &AverageStep(d as f32))?;
                        } else {
                            *a = ((&*a * d)? + (v.as_tensor() * (1.0 - d))?)?;
                        }
                    }
                }
                loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                bar.inc(1);
            }
            Ok(loss_sum)
        })?;
        stats.final_loss = loss_sum / steps_per_epoch as f64;
        stats.epoch_seconds.push(te.elapsed().as_secs_f64());
        bar.set_message(format!(
            "{label} epoch {}/{} loss {:.4}",
            epoch + 1,
            cfg.epochs,
            stats.final_loss
        ));
        tracing::debug!(
            label,
            epoch = epoch + 1,
            loss = stats.final_loss,
            "epoch done"
        );
        on_epoch(epoch + 1)?;
    }
    for (a, v) in average.iter().zip(opt.vars()) {
        v.set(a)?;
    }
    bar.finish_and_clear();
    stats.total_seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// The body's output `[n, F]` for every sample of `data`, detached from the graph.
///
/// # Errors
/// [`ModelError::Candle`].
pub fn body_outputs(
    model: &Model,
    data: &Dataset,
    batch_size: usize,
) -> Result<Tensor, ModelError> {
    let mut parts = Vec::new();
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch_size) {
        let (x, _) = batch_tensors(data, chunk, model.device())?;
        parts.push(model.body_detached(&x)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Accuracy-ready predictions: argmax of the logits for every sample of `data`.
///
/// # Errors
/// [`ModelError::Candle`].
pub fn predict(model: &Model, data: &Dataset) -> Result<Vec<u32>, ModelError> {
    model.predict(&data.features, 1024)
}

#[cfg(test)]
mod tests;
