//! Losses and their gradients: cross-entropy towards labels, soft targets or per-sample
//! likelihood vectors (the forward loss correction, in log space), written out for the head
//! (and the whole MLP) and held to candle's autograd by the tests.

use super::*;

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
/// On the CPU with f32, contiguous operands the MLP's passes run on the host buffers
/// ([`crate::mlp_cpu`], the same formulas) and the CNN's body uses the CPU kernels of
/// [`crate::cnn_cpu`]; otherwise candle's operations (and its autograd for the CNN's body).
/// The test `hand_written_gradients_match_autograd` checks the host path and the tensor
/// operations (a non-contiguous input) against `loss.backward()`.
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
            if let Some((loss, named)) = crate::mlp_cpu::loss_and_grads(model, input, |logits| {
                logit_loss_and_grad(logits, objective)
            })? {
                for (name, g) in named {
                    grads.insert(model.param(name), g);
                }
                return Ok((loss, grads));
            }
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
pub(super) fn objective_loss(logits: &Tensor, objective: &Objective) -> Result<Tensor, ModelError> {
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
pub(super) fn logit_loss_and_grad(
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
pub(super) fn relu_backward(d: &Tensor, pre: &Tensor) -> Result<Tensor, ModelError> {
    Ok((d * pre.ge(0.0)?.to_dtype(d.dtype())?)?)
}

/// The head's part of [`objective_loss_and_grads`]: from the body's output `z` `[B, F]` and
/// the objective, the loss, the gradients of `fc` and `fc2` (into `grads`) and, when
/// `want_dz`, the gradient at `z` `[B, F]`.
pub(super) fn head_grads(
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

/// Per-sample cross-entropy `[B]` of `logits` `[B, K]` on `labels` `[B]` (u32).
///
/// # Errors
/// [`ModelError::Candle`].
pub fn per_sample_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, ModelError> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}
