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

/// Per-parameter optimizer state.
struct Slot {
    var: Var,
    /// First moment (Adam) or momentum buffer (SGD), `elem_count` values.
    m: Vec<f32>,
    /// Second moment (Adam only).
    v: Vec<f32>,
    /// For `fc.weight`/`fc.bias`: the element stride of one neuron (F or 1), to re-apply the
    /// prune mask.
    neuron_stride: Option<usize>,
}

/// Adam or SGD over a chosen set of parameters, honouring a model's prune mask.
pub struct OptimizerState {
    kind: Optimizer,
    slots: Vec<Slot>,
    step: u64,
    pruned: Vec<usize>,
    /// Tensor-operation state for non-CPU devices: (m, v) per slot.
    dev_state: Vec<(Tensor, Tensor)>,
}

impl OptimizerState {
    /// Optimizer over the parameters of `model` selected by `scope`.
    ///
    /// # Errors
    /// [`ModelError::Candle`] when device state cannot be allocated.
    pub fn new(model: &Model, kind: Optimizer, scope: Scope) -> Result<Self, ModelError> {
        let mut slots = Vec::new();
        let mut dev_state = Vec::new();
        for p in model.params() {
            if scope == Scope::Head && p.group != Group::Head {
                continue;
            }
            let n = p.var.elem_count();
            let neuron_stride = match p.name.as_str() {
                "fc.weight" => Some(p.var.dim(1)?),
                "fc.bias" => Some(1),
                _ => None,
            };
            if !model.device().is_cpu() {
                let z = p.var.zeros_like()?;
                dev_state.push((z.clone(), z));
            }
            slots.push(Slot {
                var: p.var.clone(),
                m: if model.device().is_cpu() {
                    vec![0.0; n]
                } else {
                    Vec::new()
                },
                v: if model.device().is_cpu() {
                    vec![0.0; n]
                } else {
                    Vec::new()
                },
                neuron_stride,
            });
        }
        Ok(Self {
            kind,
            slots,
            step: 0,
            pruned: model.pruned(),
            dev_state,
        })
    }

    /// The parameters this optimizer updates.
    pub fn vars(&self) -> Vec<&Var> {
        self.slots.iter().map(|s| &s.var).collect()
    }

    /// One update from `grads`. Parameters without a gradient are left alone.
    ///
    /// # Errors
    /// [`ModelError::Candle`].
    pub fn step(&mut self, grads: &GradStore) -> Result<(), ModelError> {
        self.step += 1;
        for i in 0..self.slots.len() {
            let Some(g) = grads.get(&self.slots[i].var) else {
                continue;
            };
            let g = g.contiguous()?;
            if self.slots[i].var.device().is_cpu() {
                let slot = &mut self.slots[i];
                let op = FusedStep {
                    kind: self.kind,
                    step: self.step,
                    state: Mutex::new((&mut slot.m, &mut slot.v)),
                    mask: slot.neuron_stride.map(|s| (s, self.pruned.as_slice())),
                };
                slot.var.as_tensor().inplace_op2(&g, &op)?;
            } else {
                self.step_tensor_ops(i, &g)?;
            }
        }
        Ok(())
    }

    /// The same update as [`FusedStep`], as candle tensor operations (any device).
    fn step_tensor_ops(&mut self, i: usize, g: &Tensor) -> Result<(), ModelError> {
        let slot = &self.slots[i];
        let p = slot.var.as_tensor();
        let (m, v) = &mut self.dev_state[i];
        let new_p = match self.kind {
            Optimizer::Adam { lr, weight_decay } => {
                let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
                let g = (g + (p * weight_decay)?)?;
                *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
                *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let bc1 = 1.0 - b1.powi(self.step as i32);
                let bc2 = 1.0 - b2.powi(self.step as i32);
                let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + eps)?)?;
                (p - (update * lr)?)?
            }
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let g = (g + (p * weight_decay)?)?;
                *m = if self.step == 1 {
                    g
                } else {
                    ((&*m * momentum)? + g)?
                };
                (p - (&*m * lr)?)?
            }
        };
        let new_p = match slot.neuron_stride {
            Some(stride) if !self.pruned.is_empty() => {
                let h = p.dim(0)?;
                let keep: Vec<f32> = (0..h)
                    .map(|j| {
                        if self.pruned.binary_search(&j).is_ok() {
                            0.0
                        } else {
                            1.0
                        }
                    })
                    .collect();
                let keep = Tensor::from_vec(keep, h, p.device())?;
                let keep = if stride == 1 {
                    keep
                } else {
                    keep.unsqueeze(1)?
                };
                *m = m.broadcast_mul(&keep)?;
                *v = v.broadcast_mul(&keep)?;
                new_p.broadcast_mul(&keep)?
            }
            _ => new_p,
        };
        slot.var.set(&new_p)?;
        Ok(())
    }
}

/// The two operands of an in-place CPU op as contiguous f32 slices (`what` names the op in
/// the error).
fn f32_pair<'a>(
    what: &str,
    s1: &'a mut CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(&'a mut [f32], &'a [f32])> {
    let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
        candle_core::bail!("{what}: f32 tensors expected")
    };
    let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("{what}: contiguous tensors expected")
    };
    Ok((&mut a[a0..a1], &b[b0..b1]))
}

/// One step of the weights' moving average on the CPU, in place: `a ← d·a + (1 − d)·w`.
struct AverageStep(f32);

impl candle_core::InplaceOp2 for AverageStep {
    fn name(&self) -> &'static str {
        "rlap-weight-average-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (a, w) = f32_pair("weight average", s1, l1, s2, l2)?;
        let d = self.0;
        for (ai, &wi) in a.iter_mut().zip(w) {
            *ai = d * *ai + (1.0 - d) * wi;
        }
        Ok(())
    }
}

/// Elements per task when a large parameter's Adam update is split over the thread pool.
const ADAM_CHUNK: usize = 32 * 1024;

/// The fused CPU optimizer step: reads the gradient once and updates parameter and moments in
/// place, then zeroes the pruned neurons' rows (weights, moments).
struct FusedStep<'a> {
    kind: Optimizer,
    step: u64,
    state: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    /// `(elements per neuron, pruned neuron indices)` for `fc.weight` / `fc.bias`.
    mask: Option<(usize, &'a [usize])>,
}

impl candle_core::InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "rlap-fused-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (p, g) = f32_pair("fused optimizer step", s1, l1, s2, l2)?;
        let mut guard = self.state.lock().expect("optimizer state lock");
        let (m, v) = &mut *guard;
        match self.kind {
            Optimizer::Adam { lr, weight_decay } => {
                let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
                let bc1 = 1.0 - (b1 as f64).powi(self.step as i32);
                let bc2 = 1.0 - (b2 as f64).powi(self.step as i32);
                let step_size = (lr / bc1) as f32;
                let bc2_sqrt = bc2.sqrt() as f32;
                let wd = weight_decay as f32;
                let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
                    for (((pi, &gi), mi), vi) in
                        p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        let gi = gi + wd * *pi;
                        *mi = b1 * *mi + (1.0 - b1) * gi;
                        *vi = b2 * *vi + (1.0 - b2) * gi * gi;
                        *pi -= step_size * *mi / (vi.sqrt() / bc2_sqrt + eps);
                    }
                };
                // Element-wise and memory-bound: large tensors are split over the pool.
                if p.len() >= 2 * ADAM_CHUNK && rayon::current_num_threads() > 1 {
                    use rayon::prelude::*;
                    p.par_chunks_mut(ADAM_CHUNK)
                        .zip(g.par_chunks(ADAM_CHUNK))
                        .zip(m.par_chunks_mut(ADAM_CHUNK))
                        .zip(v.par_chunks_mut(ADAM_CHUNK))
                        .for_each(|(((p, g), m), v)| update(p, g, m, v));
                } else {
                    update(p, g, m, v);
                }
            }
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let (lr, mu, wd) = (lr as f32, momentum as f32, weight_decay as f32);
                let first = self.step == 1;
                for ((pi, &gi), mi) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                    let gi = gi + wd * *pi;
                    *mi = if first { gi } else { mu * *mi + gi };
                    *pi -= lr * *mi;
                }
            }
        }
        if let Some((stride, pruned)) = self.mask {
            for &j in pruned {
                let r = j * stride..(j + 1) * stride;
                p[r.clone()].fill(0.0);
                m[r.clone()].fill(0.0);
                if !v.is_empty() {
                    v[r].fill(0.0);
                }
            }
        }
        Ok(())
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

/// Mean cross-entropy of `logits` `[B, K]` against `labels` `[B]` (u32).
///
/// # Errors
/// [`ModelError::Candle`].
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, ModelError> {
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

/// The mean cross-entropy of one batch (a scalar tensor) and its gradients with respect to the
/// parameters `scope` trains.
///
/// `input` is the body's input `[B, D]` for [`Scope::All`] and the body's output `[B, F]` for
/// [`Scope::Head`]; `labels` `[B]` u32. The head (`fc`, `fc2`) and the MLP's one body layer
/// are differentiated by hand: candle's autograd also builds the gradient of every input,
/// the data's included (for the MLP's first layer a quarter of the backward pass's matrix
/// products, read by nothing), and accumulates each gradient into a freshly zeroed tensor.
/// With `z` the body's output, `h = fc(z)` and `logits = fc2(relu(h))`:
/// ```text
/// g          = (softmax(logits) − onehot(labels)) / B          [B, K]
/// ∂fc2.w     = gᵀ · relu(h),   ∂fc2.b = Σ_b g                  [K, H], [K]
/// δh         = (g · fc2.w) ⊙ 1[h ≥ 0]                           [B, H]
/// ∂fc.w      = δhᵀ · z,        ∂fc.b  = Σ_b δh                  [H, F], [H]
/// MLP, All:  δu = (δh · fc.w) ⊙ 1[u ≥ 0] with z = relu(u), u = body.0(x)
///            ∂body.0.w = δuᵀ · x, ∂body.0.b = Σ_b δu           [512, D], [512]
/// ```
/// The CNN's body uses the CPU kernels of [`crate::cnn_cpu`] on the CPU and candle's autograd
/// elsewhere. The test `hand_written_gradients_match_autograd` checks every path against
/// `loss.backward()`.
///
/// # Errors
/// [`ModelError::Candle`] on a shape mismatch or device error.
pub fn loss_and_grads(
    model: &Model,
    input: &Tensor,
    labels: &Tensor,
    scope: Scope,
) -> Result<(Tensor, GradStore), ModelError> {
    let k = model.spec().num_classes;
    let classes = Tensor::arange(0u32, k as u32, input.device())?.unsqueeze(0)?;
    let onehot = labels
        .unsqueeze(1)?
        .broadcast_eq(&classes)?
        .to_dtype(input.dtype())?;
    soft_loss_and_grads(model, input, &onehot, scope)
}

/// What one batch is trained towards: the loss at the logits and its gradient there.
#[derive(Clone, Debug)]
pub enum Objective {
    /// Soft targets `t` `[B, K]`, each row a distribution over the classes: the mean
    /// cross-entropy `−(1/B) Σ_b Σ_k t_bk log p_bk`, `p = softmax(logits)`, whose gradient at
    /// the logits is `(p − t) / B` (one-hot rows: the labels' cross-entropy; label
    /// correction's soft labels; mixup's mixed targets, Zhang et al., ICLR 2018).
    Soft(Tensor),
    /// Forward loss correction (Patrini et al., "Making Deep Neural Networks Robust to Label
    /// Noise: a Loss Correction Approach", CVPR 2017, §3.1) with one likelihood vector per
    /// sample: terms `(w, c)`, `c` `[B, K]` with `c_bi` = P(sample b's given label | true
    /// class i), values in [0, 1], each row with a positive entry. Loss
    /// `−(1/B) Σ_m w_m Σ_b log ⟨p_b, c_mb⟩`, gradient at the logits
    /// `(1/B) Σ_m w_m (p − p ⊙ c_m / ⟨p, c_m⟩)`, both computed in log space. One term (w = 1)
    /// per plain batch; a mixup batch has two, `(λ, c)` and `(1 − λ, c[π])`.
    Likelihood(Vec<(f64, Tensor)>),
}

/// As [`loss_and_grads`] with soft targets: `targets` `[B, K]` f32, each row a distribution
/// over the classes (one-hot rows give [`loss_and_grads`]); [`Objective::Soft`].
///
/// # Errors
/// [`ModelError::Candle`] on a shape mismatch or device error.
pub fn soft_loss_and_grads(
    model: &Model,
    input: &Tensor,
    targets: &Tensor,
    scope: Scope,
) -> Result<(Tensor, GradStore), ModelError> {
    objective_loss_and_grads(model, input, &Objective::Soft(targets.clone()), scope)
}

/// As [`loss_and_grads`] for any [`Objective`]: the batch's loss and the gradients of the
/// parameters `scope` trains, differentiated by hand where [`loss_and_grads`] says.
///
/// # Errors
/// [`ModelError::Candle`] on a shape mismatch or device error.
pub fn objective_loss_and_grads(
    model: &Model,
    input: &Tensor,
    objective: &Objective,
    scope: Scope,
) -> Result<(Tensor, GradStore), ModelError> {
    let mut grads = GradStore::default();
    match (model.spec().arch, scope) {
        (_, Scope::Head) => {
            let (loss, _) = head_grads(model, input, objective, &mut grads, false)?;
            Ok((loss, grads))
        }
        (Arch::Mlp, Scope::All) => {
            let u = input
                .matmul(&model.param("body.0.weight").t()?)?
                .broadcast_add(model.param("body.0.bias"))?;
            let (loss, dz) = head_grads(model, &u.relu()?, objective, &mut grads, true)?;
            let dz = dz.expect("asked for");
            let du = relu_backward(&dz, &u)?;
            grads.insert(model.param("body.0.weight"), du.t()?.matmul(input)?);
            grads.insert(model.param("body.0.bias"), du.sum(0)?);
            Ok((loss, grads))
        }
        (Arch::Cnn, Scope::All) => {
            let mut loss = None;
            let body = model.cnn_cpu_body_grads(input, |z| {
                let (l, dz) = head_grads(model, z, objective, &mut grads, true)?;
                loss = Some(l);
                Ok(dz.expect("asked for"))
            })?;
            match (body, loss) {
                (Some(body), Some(loss)) => {
                    for (name, g) in body {
                        grads.insert(model.param(&name), g);
                    }
                    Ok((loss, grads))
                }
                _ => {
                    let loss = objective_loss(&model.forward(input)?, objective)?;
                    let grads = loss.backward()?;
                    Ok((loss, grads))
                }
            }
        }
    }
}

/// The objective's loss at `logits` `[B, K]` as differentiable tensor operations (autograd's
/// path, and the reference the hand-written gradients are tested against).
fn objective_loss(logits: &Tensor, objective: &Objective) -> Result<Tensor, ModelError> {
    let b = logits.dim(0)? as f64;
    match objective {
        Objective::Soft(t) => {
            let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            Ok(((&log_p * t)?.sum_all()? * (-1.0 / b))?)
        }
        Objective::Likelihood(terms) => {
            let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let mut loss = Tensor::zeros((), logits.dtype(), logits.device())?;
            for (w, c) in terms {
                // log ⟨p, c⟩ = logsumexp(log p + ln c), exact however small ⟨p, c⟩ is.
                let log_s = (&log_p + c.log()?)?.log_sum_exp(1)?;
                loss = (loss + (log_s.sum_all()? * (-w / b))?)?;
            }
            Ok(loss)
        }
    }
}

/// The objective's loss and its gradient at the logits `[B, K]`, by hand ([`Objective`]).
fn logit_loss_and_grad(
    logits: &Tensor,
    objective: &Objective,
) -> Result<(Tensor, Tensor), ModelError> {
    let b = logits.dim(0)? as f64;
    match objective {
        Objective::Soft(t) => {
            let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let loss = ((&log_p * t)?.sum_all()? * (-1.0 / b))?;
            let g = ((log_p.exp()? - t)? * (1.0 / b))?;
            Ok((loss, g))
        }
        Objective::Likelihood(terms) => {
            // In log space: with j = log p + ln c (−∞ where c = 0), log ⟨p, c⟩ = logsumexp(j)
            // and p ⊙ c / ⟨p, c⟩ = softmax(j), exact where ⟨p, c⟩ underflows f32.
            let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let p = log_p.exp()?;
            let mut loss = Tensor::zeros((), logits.dtype(), logits.device())?;
            let mut g = p.zeros_like()?;
            for (w, c) in terms {
                let joint = (&log_p + c.log()?)?;
                loss = (loss + (joint.log_sum_exp(1)?.sum_all()? * (-w / b))?)?;
                let q = candle_nn::ops::softmax_last_dim(&joint)?;
                g = (g + ((&p - q)? * (w / b))?)?;
            }
            Ok((loss, g))
        }
    }
}

/// `d ⊙ 1[pre ≥ 0]`: ReLU's backward as candle's autograd has it (PyTorch uses `> 0`): a
/// pruned neuron, whose pre-activation is exactly 0, keeps the gradient it had (the
/// optimizer masks it).
fn relu_backward(d: &Tensor, pre: &Tensor) -> Result<Tensor, ModelError> {
    Ok((d * pre.ge(0.0)?.to_dtype(d.dtype())?)?)
}

/// The head's part of [`objective_loss_and_grads`]: from the body's output `z` `[B, F]` and
/// the objective, the loss, the gradients of `fc` and `fc2` (into `grads`) and, when
/// `want_dz`, the gradient at `z` `[B, F]`.
fn head_grads(
    model: &Model,
    z: &Tensor,
    objective: &Objective,
    grads: &mut GradStore,
    want_dz: bool,
) -> Result<(Tensor, Option<Tensor>), ModelError> {
    let (w1, b1) = (model.param("fc.weight"), model.param("fc.bias"));
    let (w2, b2) = (model.param("fc2.weight"), model.param("fc2.bias"));
    let h = z.matmul(&w1.t()?)?.broadcast_add(b1)?;
    let r = h.relu()?;
    let logits = r.matmul(&w2.t()?)?.broadcast_add(b2)?;
    let (loss, g) = logit_loss_and_grad(&logits, objective)?;
    grads.insert(w2, g.t()?.matmul(&r)?);
    grads.insert(b2, g.sum(0)?);
    let dh = relu_backward(&g.matmul(w2)?, &h)?;
    grads.insert(w1, dh.t()?.matmul(z)?);
    grads.insert(b1, dh.sum(0)?);
    let dz = if want_dz { Some(dh.matmul(w1)?) } else { None };
    Ok((loss, dz))
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

/// Per-sample cross-entropy `[B]` of `logits` `[B, K]` on `labels` `[B]` (u32).
///
/// # Errors
/// [`ModelError::Candle`].
pub fn per_sample_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, ModelError> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::mnist;
    use crate::evaluation::classification_report;
    use crate::model::tests::mnist_spec;
    use crate::model::Arch;

    fn adam() -> Optimizer {
        Optimizer::Adam {
            lr: 1e-3,
            weight_decay: 0.0,
        }
    }

    /// The hand-written head and MLP gradients against candle's autograd on an MNIST batch,
    /// for both architectures and both scopes, on a partly trained and pruned model (dead
    /// ReLUs, zeroed rows).
    #[test]
    fn hand_written_gradients_match_autograd() {
        let split = mnist();
        let data = &split.train;
        let idx: Vec<usize> = (0..96).collect();
        let (x, y) = batch_tensors(data, &idx, &Device::Cpu).unwrap();
        // MNIST's blank background makes whole pooling windows tie exactly; the reference's
        // `max` sends a tie's gradient to every tied position, the CPU kernels (as PyTorch) to
        // the first. A small deterministic jitter breaks the ties so both must agree.
        let jitter: Vec<f32> = (0..x.elem_count())
            .map(|i| ((i * 7919 % 1000) as f32) * 1e-5)
            .collect();
        let jitter = Tensor::from_vec(jitter, x.dims(), &Device::Cpu).unwrap();
        let x = (x + jitter).unwrap();
        for arch in [Arch::Mlp, Arch::Cnn] {
            let mut m = Model::new(mnist_spec(arch, 32), &Device::Cpu, 3).unwrap();
            let cfg = TrainConfig {
                epochs: 1,
                batch_size: 64,
                optimizer: adam(),
                scope: Scope::All,
                seed: 1,
                mixup: 0.0,
                ema: 0.0,
            };
            let few = data.select(&(0..512).collect::<Vec<_>>());
            train(&m, &few, &cfg, &Progress::hidden(), "t").unwrap();
            m.prune(&[0, 5, 7]).unwrap();
            // Soft targets: a deterministic distribution per row (label correction, mixup).
            let k = 10;
            let soft: Vec<f32> = (0..96 * k)
                .map(|i| 1.0 + ((i * 31 % 17) as f32))
                .collect::<Vec<_>>()
                .chunks(k)
                .flat_map(|r| {
                    let z: f32 = r.iter().sum();
                    r.iter().map(move |v| v / z).collect::<Vec<_>>()
                })
                .collect();
            let soft = Tensor::from_vec(soft, (96, k), &Device::Cpu).unwrap();
            // Likelihood vectors (forward correction) as a mixup batch has them: two terms,
            // values in [0, 1], some of them 0.
            let lik = |seed: usize| {
                let v: Vec<f32> = (0..96 * k)
                    .map(|i| ((i * 37 + seed) % 11) as f32 / 10.0)
                    .collect();
                Tensor::from_vec(v, (96, k), &Device::Cpu).unwrap()
            };
            let likelihood = Objective::Likelihood(vec![(0.7, lik(3)), (0.3, lik(5))]);
            let soft = Objective::Soft(soft);
            for (scope, objective) in [Scope::All, Scope::Head]
                .into_iter()
                .flat_map(|s| [(s, None), (s, Some(&soft)), (s, Some(&likelihood))])
            {
                let input = match scope {
                    Scope::All => x.clone(),
                    Scope::Head => m.body(&x).unwrap().detach(),
                };
                let (loss, grads) = match objective {
                    None => loss_and_grads(&m, &input, &y, scope).unwrap(),
                    Some(Objective::Soft(t)) => soft_loss_and_grads(&m, &input, t, scope).unwrap(),
                    Some(o) => objective_loss_and_grads(&m, &input, o, scope).unwrap(),
                };
                let logits = match scope {
                    Scope::All => m.forward(&x).unwrap(),
                    Scope::Head => m.head(&m.fc(&input).unwrap()).unwrap(),
                };
                let ref_loss = match objective {
                    None => cross_entropy(&logits, &y).unwrap(),
                    Some(Objective::Soft(t)) => {
                        let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
                        ((log_p * t).unwrap().sum_all().unwrap() * (-1.0 / 96.0)).unwrap()
                    }
                    Some(Objective::Likelihood(terms)) => {
                        // −(1/B) Σ_m w_m Σ_b log ⟨softmax_b, c_mb⟩, written out.
                        let p = candle_nn::ops::softmax(&logits, D::Minus1).unwrap();
                        let mut l = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
                        for (w, c) in terms {
                            let s = (&p * c).unwrap().sum(1).unwrap().log().unwrap();
                            l = (l + (s.sum_all().unwrap() * (-w / 96.0)).unwrap()).unwrap();
                        }
                        l
                    }
                };
                let ref_grads = ref_loss.backward().unwrap();
                let l = |t: &Tensor| t.to_scalar::<f32>().unwrap();
                let what = match objective {
                    None => "labels",
                    Some(Objective::Soft(_)) => "soft",
                    Some(Objective::Likelihood(_)) => "likelihood",
                };
                assert!(
                    (l(&loss) - l(&ref_loss)).abs() < 1e-5,
                    "{arch} {scope:?} {what} loss"
                );
                for p in m.params() {
                    let trained = scope == Scope::All || p.group == Group::Head;
                    let (got, want) = (grads.get(&p.var), ref_grads.get(&p.var));
                    if !trained {
                        assert!(got.is_none(), "{arch} {scope:?} {}: frozen", p.name);
                        continue;
                    }
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let (got, want) = (flat(got.unwrap()), flat(want.unwrap()));
                    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
                    let diff = got
                        .iter()
                        .zip(&want)
                        .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
                    assert!(
                        diff / scale < 1e-4,
                        "{arch} {scope:?} {what} {}: rel diff {}",
                        p.name,
                        diff / scale
                    );
                }
            }
        }
    }

    #[test]
    fn mixup_and_soft_targets_train_and_refuse_bad_recipes() {
        let split = mnist();
        let few = split.train.select(&(0..1024).collect::<Vec<_>>());
        let k = few.num_classes;
        // One-hot soft targets with mixup learn the training labels (a separable-enough set).
        let onehot: Vec<f32> = few
            .labels
            .iter()
            .flat_map(|&c| (0..k).map(move |j| f32::from(j == c as usize)))
            .collect();
        let m = Model::new(mnist_spec(Arch::Mlp, 32), &Device::Cpu, 2).unwrap();
        let cfg = TrainConfig {
            epochs: 8,
            batch_size: 64,
            optimizer: adam(),
            scope: Scope::All,
            seed: 1,
            mixup: 1.0,
            ema: 0.0,
        };
        let accuracy = |m: &Model| {
            let p = predict(m, &few).unwrap();
            p.iter().zip(&few.labels).filter(|(a, b)| a == b).count() as f64 / 1024.0
        };
        train_soft(&m, &few, &onehot, &cfg, &Progress::hidden(), "t").unwrap();
        assert!(
            accuracy(&m) > 0.9,
            "mixup: training accuracy {}",
            accuracy(&m)
        );
        // The weight average ends elsewhere than the last step, learns as well, and keeps
        // pruned neurons at zero (their weights are zero at every step).
        let pruned_model = || {
            let mut m = Model::new(mnist_spec(Arch::Mlp, 32), &Device::Cpu, 2).unwrap();
            m.prune(&[1, 4]).unwrap();
            m
        };
        let (avg, last) = (pruned_model(), pruned_model());
        let with_ema = TrainConfig {
            ema: 0.99,
            ..cfg.clone()
        };
        train_soft(&avg, &few, &onehot, &with_ema, &Progress::hidden(), "t").unwrap();
        train_soft(&last, &few, &onehot, &cfg, &Progress::hidden(), "t").unwrap();
        assert!(
            accuracy(&avg) > 0.9,
            "average: training accuracy {}",
            accuracy(&avg)
        );
        let w = |m: &Model| m.param("fc.weight").to_vec2::<f32>().unwrap();
        assert!(w(&avg)[1].iter().chain(&w(&avg)[4]).all(|&v| v == 0.0));
        assert_ne!(
            w(&avg)[0],
            w(&last)[0],
            "the average is not the last step's weights"
        );
        let e = train(
            &m,
            &few,
            &TrainConfig {
                ema: 1.0,
                ..cfg.clone()
            },
            &Progress::hidden(),
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("decay"), "{e}");
        // Wrong lengths and a negative α are refused with the reason.
        let e = train_soft(&m, &few, &onehot[1..], &cfg, &Progress::hidden(), "t").unwrap_err();
        assert!(e.to_string().contains("soft targets"), "{e}");
        let bad = TrainConfig { mixup: -1.0, ..cfg };
        let e = train(&m, &few, &bad, &Progress::hidden(), "t").unwrap_err();
        assert!(e.to_string().contains("mixup"), "{e}");
    }

    /// The likelihood objective stays exact where ⟨p, c⟩ underflows f32 (a logit gap of 400):
    /// loss and gradient equal autograd's of the same formula and the closed form `p − q`.
    #[test]
    fn likelihood_objective_is_exact_when_saturated() {
        let logits =
            Var::from_slice(&[0f32, 200.0, -200.0, 1.0, 2.0, 3.0], (2, 3), &Device::Cpu).unwrap();
        // Row 0 is likely only as class 2 or (0.5) class 0; row 1 only as class 1.
        let c =
            Tensor::from_slice(&[0.5f32, 0.0, 1.0, 0.0, 1.0, 0.0], (2, 3), &Device::Cpu).unwrap();
        let objective = Objective::Likelihood(vec![(1.0, c)]);
        let (loss, g) = logit_loss_and_grad(logits.as_tensor(), &objective).unwrap();
        let reference = objective_loss(logits.as_tensor(), &objective).unwrap();
        let ref_g = reference.backward().unwrap();
        let ref_g = ref_g
            .get(logits.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let g = g.to_vec2::<f32>().unwrap();
        let (l, rl) = (
            loss.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap(),
        );
        // Row 0: p = (e^-200, 1, e^-400), log ⟨p, c⟩ = log(0.5·e^-200 + e^-400) ≈ ln 0.5 - 200.
        // Row 1: log p_1 = 2 - log(e + e^2 + e^3).
        let lse1 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let want = (-(0.5f64.ln() - 200.0) - (2.0 - lse1)) / 2.0;
        assert!(
            l.is_finite() && (l as f64 - want).abs() < 1e-3,
            "loss {l} vs {want}"
        );
        assert!((l - rl).abs() < 1e-3, "loss {l} vs autograd {rl}");
        // Row 0: p ≈ e_1 and q ≈ e_0 (class 0 is e^200 times likelier than class 2 under c).
        let p1: Vec<f64> = [1f64, 2.0, 3.0].iter().map(|z| (z - lse1).exp()).collect();
        let want = [
            [-0.5, 0.5, 0.0],
            [p1[0] / 2.0, (p1[1] - 1.0) / 2.0, p1[2] / 2.0],
        ];
        for r in 0..2 {
            for k in 0..3 {
                assert!(
                    (g[r][k] as f64 - want[r][k]).abs() < 1e-5,
                    "{g:?} vs {want:?}"
                );
                assert!(
                    (g[r][k] - ref_g[r][k]).abs() < 1e-5,
                    "{g:?} vs autograd {ref_g:?}"
                );
            }
        }
    }

    /// Forward correction with the noise's own transition matrix learns the true classes
    /// through pair noise (40 % of class c labelled c + 1) that plain training on the same
    /// labels copies; wrong likelihood rows are refused with the reason.
    #[test]
    fn forward_correction_learns_through_pair_noise() {
        let split = mnist();
        let n = 2048;
        let mut noisy = split.train.select(&(0..n).collect::<Vec<_>>());
        let k = noisy.num_classes;
        for (i, y) in noisy.labels.iter_mut().enumerate() {
            if i % 5 < 2 {
                *y = (*y + 1) % k as u32;
            }
        }
        // c_bi = T[i, ỹ_b] with T = 0.6·I + 0.4·(shift by one).
        let likelihoods: Vec<f32> = noisy
            .labels
            .iter()
            .flat_map(|&g| {
                (0..k).map(move |i| match () {
                    _ if i == g as usize => 0.6,
                    _ if (i + 1) % k == g as usize => 0.4,
                    _ => 0.0,
                })
            })
            .collect();
        let cfg = TrainConfig {
            epochs: 10,
            batch_size: 64,
            optimizer: adam(),
            scope: Scope::All,
            seed: 1,
            mixup: 0.0,
            ema: 0.0,
        };
        // Scored on the (clean) test split: what the model learnt, not what it memorised.
        let test = &split.test;
        let accuracy = |m: &Model| {
            let p = predict(m, test).unwrap();
            p.iter().zip(&test.labels).filter(|(a, b)| a == b).count() as f64 / test.len() as f64
        };
        let plain = Model::new(mnist_spec(Arch::Mlp, 64), &Device::Cpu, 2).unwrap();
        train(&plain, &noisy, &cfg, &Progress::hidden(), "t").unwrap();
        let forward = Model::new(mnist_spec(Arch::Mlp, 64), &Device::Cpu, 2).unwrap();
        train_forward(
            &forward,
            &noisy,
            &likelihoods,
            &cfg,
            &Progress::hidden(),
            "t",
        )
        .unwrap();
        let (a_plain, a_forward) = (accuracy(&plain), accuracy(&forward));
        assert!(
            a_forward > 0.85 && a_forward > a_plain + 0.15,
            "test accuracy: forward {a_forward}, plain {a_plain}"
        );
        let mut bad = likelihoods.clone();
        bad[3] = 1.5;
        let e = train_forward(&forward, &noisy, &bad, &cfg, &Progress::hidden(), "t").unwrap_err();
        assert!(e.to_string().contains("row 0"), "{e}");
        bad[3] = 0.0;
        bad[..k].fill(0.0);
        let e = train_forward(&forward, &noisy, &bad, &cfg, &Progress::hidden(), "t").unwrap_err();
        assert!(e.to_string().contains("all zero"), "{e}");
        let e =
            train_forward(&forward, &noisy, &bad[1..], &cfg, &Progress::hidden(), "t").unwrap_err();
        assert!(e.to_string().contains("likelihood vectors"), "{e}");
    }

    #[test]
    fn fused_adam_matches_tensor_ops_adam() {
        let m1 = Model::new(mnist_spec(Arch::Mlp, 16), &Device::Cpu, 1).unwrap();
        let m2 = m1.deep_clone().unwrap();
        let kind = Optimizer::Adam {
            lr: 1e-2,
            weight_decay: 1e-3,
        };
        let mut o1 = OptimizerState::new(&m1, kind, Scope::All).unwrap();
        let mut o2 = OptimizerState::new(&m2, kind, Scope::All).unwrap();
        o2.dev_state = o2
            .slots
            .iter()
            .map(|s| (s.var.zeros_like().unwrap(), s.var.zeros_like().unwrap()))
            .collect();
        let d = &mnist().train;
        for step in 0..3 {
            let idx: Vec<usize> = (step * 32..(step + 1) * 32).collect();
            let (x, y) = batch_tensors(d, &idx, &Device::Cpu).unwrap();
            let g1 = cross_entropy(&m1.forward(&x).unwrap(), &y)
                .unwrap()
                .backward()
                .unwrap();
            o1.step(&g1).unwrap();
            let g2 = cross_entropy(&m2.forward(&x).unwrap(), &y)
                .unwrap()
                .backward()
                .unwrap();
            o2.step += 1;
            for i in 0..o2.slots.len() {
                let g = g2.get(&o2.slots[i].var).unwrap().contiguous().unwrap();
                o2.step_tensor_ops(i, &g).unwrap();
            }
        }
        for (a, b) in m1.params().iter().zip(m2.params()) {
            let d = (a.var.as_tensor() - b.var.as_tensor())
                .unwrap()
                .abs()
                .unwrap();
            let d = d
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{}: {d}", a.name);
        }
    }

    #[test]
    fn training_learns_mnist_slice() {
        let d = &mnist().train;
        let train_set = d.select(&d.stratified_indices(3000, 1));
        let m = Model::new(mnist_spec(Arch::Mlp, 64), &Device::Cpu, 1).unwrap();
        let cfg = TrainConfig {
            epochs: 3,
            batch_size: 64,
            optimizer: adam(),
            scope: Scope::All,
            seed: 1,
            mixup: 0.0,
            ema: 0.0,
        };
        let stats = train(&m, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
        assert_eq!(stats.epoch_seconds.len(), 3);
        let test = &mnist().test;
        let test = test.select(&(0..2000).collect::<Vec<_>>());
        let acc = classification_report(&predict(&m, &test).unwrap(), &test.labels, 10).accuracy;
        // An MLP on 3,000 MNIST digits for 3 epochs reaches ~0.9 on the test set.
        assert!(acc > 0.85, "accuracy {acc}");
    }

    #[test]
    fn head_scope_leaves_body_untouched_and_pruned_neurons_zero() {
        let d = &mnist().train;
        let train_set = d.select(&(0..512).collect::<Vec<_>>());
        let mut m = Model::new(mnist_spec(Arch::Mlp, 32), &Device::Cpu, 2).unwrap();
        m.prune(&[1, 4, 9]).unwrap();
        let body_before = m.param("body.0.weight").to_vec2::<f32>().unwrap();
        for scope in [Scope::Head, Scope::All] {
            let cfg = TrainConfig {
                epochs: 2,
                batch_size: 64,
                optimizer: Optimizer::Adam {
                    lr: 1e-2,
                    weight_decay: 1e-5,
                },
                scope,
                seed: 3,
                mixup: 0.0,
                ema: 0.0,
            };
            train(&m, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
            let w = m.param("fc.weight").to_vec2::<f32>().unwrap();
            let b = m.param("fc.bias").to_vec1::<f32>().unwrap();
            for j in [1, 4, 9] {
                assert!(w[j].iter().all(|&v| v == 0.0), "{scope:?}: row {j} regrew");
                assert_eq!(b[j], 0.0);
            }
            assert!(w[0].iter().any(|&v| v != 0.0));
            if scope == Scope::Head {
                assert_eq!(
                    m.param("body.0.weight").to_vec2::<f32>().unwrap(),
                    body_before
                );
            }
        }
        assert_ne!(
            m.param("body.0.weight").to_vec2::<f32>().unwrap(),
            body_before
        );
    }

    #[test]
    fn sgd_reduces_loss() {
        let d = &mnist().train;
        let train_set = d.select(&(0..2048).collect::<Vec<_>>());
        let m = Model::new(mnist_spec(Arch::Mlp, 64), &Device::Cpu, 4).unwrap();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 64,
            optimizer: Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 0.0,
            },
            scope: Scope::All,
            seed: 1,
            mixup: 0.0,
            ema: 0.0,
        };
        let stats = train(&m, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
        // ln 10 = 2.30 at chance; SGD with momentum gets well below 1 in two epochs.
        assert!(stats.final_loss < 1.0, "loss {}", stats.final_loss);
    }

    #[test]
    fn cnn_learns_with_adam() {
        let d = &mnist().train;
        let train_set = d.select(&(0..2048).collect::<Vec<_>>());
        let m = Model::new(mnist_spec(Arch::Cnn, 64), &Device::Cpu, 4).unwrap();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 64,
            optimizer: adam(),
            scope: Scope::All,
            seed: 1,
            mixup: 0.0,
            ema: 0.0,
        };
        let stats = train(&m, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
        assert!(stats.final_loss < 1.0, "loss {}", stats.final_loss);
    }
}
