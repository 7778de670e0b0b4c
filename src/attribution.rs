//! Gradient attribution at the target layer (§3.2.1): one H-dimensional vector per sample.
//!
//! This module owns both attribution modes, always batched (never one backward pass per
//! sample), each a closed form of the forward quantities:
//! - `max-class`: `a(x) = | max_c (∂y_c/∂h ⊙ h) |` (the paper's notebooks; label-free)
//!   `= | relu(h) ⊙ max_c W2[c, :] |`;
//! - `label-gradient`: `a(x) = | ∂ℓ(f(x), y_given)/∂h ⊙ h |`, ℓ = cross-entropy (project
//!   decision; label-aware, needed for label noise) `= | ((softmax − onehot(y))·W2) ⊙ relu(h) |`.
//!
//! `h` is the pre-ReLU output of `fc`. No autograd graph is built. On the CPU the MLP's
//! forward runs on the host buffers ([`crate::mlp_cpu`], the batch split by rows over the pool) and
//! the closed forms as one fused pass per row, rows split over the pool (the CNN's body runs
//! in [`crate::cnn_cpu`], its `fc` and `fc2` as candle operations, then the same row pass); on
//! other devices everything is tensor operations. The tests hold both forms to the definitions
//! computed literally by autograd. The same pass also returns `h` (the regressors of §3.3) and
//! the per-sample cross-entropy (the clean-component rule of §3.2.2).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::data::Dataset;
use crate::model::{Model, ModelError};
use crate::progress::Progress;
use crate::train::batch_tensors;

/// Attribution mode (the `--attribution` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttributionMode {
    /// `| max_c ∂y_c/∂h ⊙ h |` (paper, label-free; detects corrupted inputs).
    MaxClass,
    /// `| ∂CE(f(x), y_given)/∂h ⊙ h |` (label-aware; detects wrong labels).
    LabelGradient,
}

impl FromStr for AttributionMode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "max-class" => Ok(Self::MaxClass),
            "label-gradient" => Ok(Self::LabelGradient),
            _ => Err(ModelError::Invalid(format!(
                "unknown attribution '{s}': expected max-class | label-gradient"
            ))),
        }
    }
}

impl fmt::Display for AttributionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MaxClass => "max-class",
            Self::LabelGradient => "label-gradient",
        })
    }
}

/// Attributions of one batch, as tensors on the model's device.
#[derive(Debug)]
pub struct BatchAttribution {
    /// `a(x)`, `[B, H]`, non-negative.
    pub attributions: Tensor,
    /// `h(x)`, `[B, H]`, pre-ReLU output of `fc`.
    pub activations: Tensor,
    /// Cross-entropy on the given label, `[B]`.
    pub loss: Tensor,
    /// Logits `[B, K]`.
    pub logits: Tensor,
}

/// Attribute one batch: inputs `x` `[B, D]`, given labels `y` `[B]` (u32).
///
/// # Errors
/// [`ModelError::Candle`] on a shape mismatch or device error.
pub fn attribute_batch(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    mode: AttributionMode,
) -> Result<BatchAttribution, ModelError> {
    // Nothing here is differentiated by autograd: both modes are closed forms of the forward
    // quantities, one matrix expression per batch.
    if let Some(pass) = crate::mlp_cpu::forward(model, x)? {
        return closed_form_on_host(model, pass.h, pass.logits, y, mode);
    }
    let h = model.fc(&model.body_detached(x)?)?.detach();
    let logits = model.head(&h)?.detach();
    if h.device().is_cpu() && h.dtype() == DType::F32 {
        let hv = h.flatten_all()?.to_vec1::<f32>()?;
        let lv = logits.flatten_all()?.to_vec1::<f32>()?;
        return closed_form_on_host(model, hv, lv, y, mode);
    }
    closed_form_tensor_ops(model, h, logits, y, mode)
}

/// The closed forms of [`attribute_batch`] as tensor operations (any device).
fn closed_form_tensor_ops(
    model: &Model,
    h: Tensor,
    logits: Tensor,
    y: &Tensor,
    mode: AttributionMode,
) -> Result<BatchAttribution, ModelError> {
    let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let loss = log_p.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let w2 = model.param("fc2.weight").detach();
    let attributions = match mode {
        AttributionMode::LabelGradient => {
            // ∂CE/∂h = ((softmax − onehot(y)) · W2) ⊙ 1[h > 0], and 1[h > 0] ⊙ h = relu(h):
            // a = |((p − onehot(y)) · W2) ⊙ relu(h)| (the test below holds it to autograd's
            // definition, computed literally).
            let k = logits.dim(1)?;
            let classes = Tensor::arange(0u32, k as u32, logits.device())?.unsqueeze(0)?;
            let onehot = y
                .unsqueeze(1)?
                .broadcast_eq(&classes)?
                .to_dtype(logits.dtype())?;
            let g = (log_p.exp()? - onehot)?.matmul(&w2)?;
            (g * h.relu()?)?.abs()?
        }
        AttributionMode::MaxClass => {
            // ∂y_c/∂h_j = W2[c, j]·1[h_j > 0], so max_c(∂y_c/∂h ⊙ h)_j = relu(h_j)·max_c W2[c, j]
            // (h_j > 0 there): one matrix expression for the batch instead of K backward passes.
            let w2_max = w2.max_keepdim(0)?; // [1, H]
            h.relu()?.broadcast_mul(&w2_max)?.abs()?
        }
    };
    Ok(BatchAttribution {
        attributions,
        activations: h,
        loss,
        logits,
    })
}

/// The closed forms of [`attribute_batch`] on the CPU, one fused pass per row over
/// `h` `[B, H]` and the logits `[B, K]` instead of a dozen batch-wide tensor operations (each
/// a fresh allocation): a per-row softmax, the cross-entropy on `y`, and
/// `a_j = |Σ_k (p_k − [k = y])·W2[k, j]|·relu(h_j)` (label-gradient) or
/// `relu(h_j)·|max_k W2[k, j]|` (max-class).
fn closed_form_on_host(
    model: &Model,
    hv: Vec<f32>,
    lv: Vec<f32>,
    y: &Tensor,
    mode: AttributionMode,
) -> Result<BatchAttribution, ModelError> {
    let (k, hidden) = model.param("fc2.weight").dims2()?; // W2 is [K, H]
    let yv = y.to_vec1::<u32>()?;
    let b = yv.len();
    if hv.len() != b * hidden || lv.len() != b * k {
        return Err(ModelError::Invalid(format!(
            "attribution: {} activations and {} logits for {b} labels, {hidden} neurons, {k} classes",
            hv.len(),
            lv.len()
        )));
    }
    let w2 = model.param("fc2.weight").flatten_all()?.to_vec1::<f32>()?; // [K, H]
    let w2_max: Vec<f32> = (0..hidden)
        .map(|j| {
            (0..k)
                .map(|c| w2[c * hidden + j])
                .fold(f32::MIN, f32::max)
                .abs()
        })
        .collect();
    let mut a = vec![0f32; b * hidden];
    let mut loss = vec![0f32; b];
    // One row's pass: its softmax `p` (scratch, K), cross-entropy and attribution.
    let row = |i: usize, ai: &mut [f32], loss_i: &mut f32, p: &mut Vec<f32>| {
        let hi = &hv[i * hidden..(i + 1) * hidden];
        let li = &lv[i * k..(i + 1) * k];
        p.resize(k, 0.0);
        let m = li.iter().copied().fold(f32::MIN, f32::max);
        let mut z = 0f32;
        for (pc, &l) in p.iter_mut().zip(li) {
            *pc = (l - m).exp();
            z += *pc;
        }
        let label = yv[i] as usize;
        *loss_i = z.ln() - (li[label] - m);
        match mode {
            AttributionMode::LabelGradient => {
                // g = (p − onehot(y))·W2, accumulated row by row of W2 (contiguous in j).
                for (c, pc) in p.iter().enumerate() {
                    let coef = pc / z - f32::from(c == label);
                    for (g, &w) in ai.iter_mut().zip(&w2[c * hidden..(c + 1) * hidden]) {
                        *g += coef * w;
                    }
                }
                for (g, &hj) in ai.iter_mut().zip(hi) {
                    *g = g.abs() * hj.max(0.0);
                }
            }
            AttributionMode::MaxClass => {
                for ((g, &hj), &w) in ai.iter_mut().zip(hi).zip(&w2_max) {
                    *g = hj.max(0.0) * w;
                }
            }
        }
    };
    // Rows split over the pool (the caller runs on one of its workers).
    use rayon::prelude::*;
    a.par_chunks_mut(hidden)
        .zip(loss.par_iter_mut())
        .enumerate()
        .with_min_len(crate::mlp_cpu::MIN_ROWS_PER_PART)
        .for_each_init(Vec::new, |p, (i, (ai, li))| row(i, ai, li, p));
    let device = model.device();
    Ok(BatchAttribution {
        attributions: Tensor::from_vec(a, (b, hidden), device)?,
        activations: Tensor::from_vec(hv, (b, hidden), device)?,
        loss: Tensor::from_vec(loss, b, device)?,
        logits: Tensor::from_vec(lv, (b, k), device)?,
    })
}

/// Attributions of a whole data set, on the host, row-major.
#[derive(Clone, Debug)]
pub struct Attributions {
    /// Samples N.
    pub n: usize,
    /// Neurons H.
    pub hidden: usize,
    /// `a(x)` for every sample, `[N, H]`.
    pub values: Vec<f32>,
    /// `h(x)` for every sample, `[N, H]` (pre-ReLU).
    pub activations: Vec<f32>,
    /// Cross-entropy on the given label, `[N]`.
    pub loss: Vec<f32>,
    /// Argmax of the logits, `[N]`.
    pub predicted: Vec<u32>,
    /// Class probabilities softmax(logits), `[N, K]` row-major (the noise model's input).
    pub probs: Vec<f32>,
}

/// Attribute every sample of `data` in batches of `batch_size`, on a worker of the
/// matrix-product pool ([`crate::cpu::compute`]).
///
/// # Errors
/// [`ModelError`] from the forward or backward pass.
pub fn attribute(
    model: &Model,
    data: &Dataset,
    mode: AttributionMode,
    batch_size: usize,
    progress: &Progress,
) -> Result<Attributions, ModelError> {
    crate::cpu::compute(|| attribute_on_this_thread(model, data, mode, batch_size, progress))
}

fn attribute_on_this_thread(
    model: &Model,
    data: &Dataset,
    mode: AttributionMode,
    batch_size: usize,
    progress: &Progress,
) -> Result<Attributions, ModelError> {
    let n = data.len();
    let hidden = model.spec().hidden;
    let mut out = Attributions {
        n,
        hidden,
        values: Vec::with_capacity(n * hidden),
        activations: Vec::with_capacity(n * hidden),
        loss: Vec::with_capacity(n),
        predicted: Vec::with_capacity(n),
        probs: Vec::with_capacity(n * model.spec().num_classes),
    };
    let idx: Vec<usize> = (0..n).collect();
    let bar = progress.bar(n as u64, "attribute");
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, y) = batch_tensors(data, chunk, model.device())?;
        let b = attribute_batch(model, &x, &y, mode)?;
        out.values
            .extend(b.attributions.flatten_all()?.to_vec1::<f32>()?);
        out.activations
            .extend(b.activations.flatten_all()?.to_vec1::<f32>()?);
        out.loss.extend(b.loss.to_vec1::<f32>()?);
        out.predicted
            .extend(b.logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        out.probs.extend(
            candle_nn::ops::softmax_last_dim(&b.logits)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::mnist;
    use crate::model::tests::mnist_spec;
    use crate::model::Arch;
    use crate::train::{batch_tensors, per_sample_cross_entropy};
    use candle_core::Device;
    use candle_core::Var;

    /// The paper's definition computed literally: one backward pass per class, elementwise max.
    fn max_class_by_autograd(m: &Model, x: &Tensor) -> Tensor {
        let h = m.fc(&m.body(x).unwrap()).unwrap().detach();
        let hv = Var::from_tensor(&h).unwrap();
        let logits = m.head(hv.as_tensor()).unwrap();
        let mut best: Option<Tensor> = None;
        for c in 0..logits.dim(1).unwrap() {
            let g = logits
                .narrow(1, c, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gh = (g.get(&hv).unwrap() * &h).unwrap();
            best = Some(match best {
                None => gh,
                Some(b) => b.maximum(&gh).unwrap(),
            });
        }
        best.unwrap().abs().unwrap()
    }

    /// label-gradient against its definition computed literally by autograd: the gradient of
    /// the batch-summed per-sample cross-entropy w.r.t. the leaf h, times h.
    #[test]
    fn label_gradient_equals_autograd() {
        for arch in [Arch::Mlp, Arch::Cnn] {
            let m = Model::new(mnist_spec(arch, 24), &Device::Cpu, 9).unwrap();
            let d = &mnist().train;
            let idx: Vec<usize> = (100..164).collect();
            let (x, y) = batch_tensors(d, &idx, &Device::Cpu).unwrap();
            let h = m.fc(&m.body(&x).unwrap()).unwrap().detach();
            let hv = Var::from_tensor(&h).unwrap();
            let loss = per_sample_cross_entropy(&m.head(hv.as_tensor()).unwrap(), &y).unwrap();
            let g = loss.sum_all().unwrap().backward().unwrap();
            let want = (g.get(&hv).unwrap() * &h).unwrap().abs().unwrap();
            let got = attribute_batch(&m, &x, &y, AttributionMode::LabelGradient).unwrap();
            let (want, got) = (
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                got.attributions
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(
                scale > 0.0 && diff <= 1e-5 * scale,
                "{arch}: {diff} of {scale}"
            );
        }
    }

    /// Closed forms on a tiny model: with p = softmax(logits), r = 1[h > 0],
    /// label-gradient a_j = |((p − onehot(y))ᵀ W2)_j · r_j · h_j|,
    /// max-class a_j = |max_c W2[c, j] · r_j · h_j|.
    #[test]
    fn attribution_equals_the_analytic_form() {
        let m = Model::new(mnist_spec(Arch::Mlp, 12), &Device::Cpu, 11).unwrap();
        let d = &mnist().train;
        let idx: Vec<usize> = (0..40).collect();
        let (x, y) = batch_tensors(d, &idx, &Device::Cpu).unwrap();
        let w2 = m.param("fc2.weight").to_vec2::<f32>().unwrap();
        let lg = attribute_batch(&m, &x, &y, AttributionMode::LabelGradient).unwrap();
        let mc = attribute_batch(&m, &x, &y, AttributionMode::MaxClass).unwrap();
        let h = lg.activations.to_vec2::<f32>().unwrap();
        let p = candle_nn::ops::softmax(&lg.logits, 1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let a_lg = lg.attributions.to_vec2::<f32>().unwrap();
        let a_mc = mc.attributions.to_vec2::<f32>().unwrap();
        let a_mc_autograd = max_class_by_autograd(&m, &x).to_vec2::<f32>().unwrap();
        let mut nonzero = 0;
        for i in 0..idx.len() {
            for j in 0..12 {
                let r = if h[i][j] > 0.0 { 1.0 } else { 0.0 };
                let g: f32 = (0..10)
                    .map(|c| (p[i][c] - if c as u32 == d.labels[i] { 1.0 } else { 0.0 }) * w2[c][j])
                    .sum();
                let want_lg = (g * r * h[i][j]).abs();
                let wmax = (0..10).map(|c| w2[c][j]).fold(f32::MIN, f32::max);
                let want_mc = (wmax * r * h[i][j]).abs();
                assert!(
                    (a_lg[i][j] - want_lg).abs() < 1e-5,
                    "lg {i},{j}: {} vs {want_lg}",
                    a_lg[i][j]
                );
                assert!(
                    (a_mc[i][j] - want_mc).abs() < 1e-5,
                    "mc {i},{j}: {} vs {want_mc}",
                    a_mc[i][j]
                );
                assert!(
                    (a_mc[i][j] - a_mc_autograd[i][j]).abs() < 1e-5,
                    "mc autograd {i},{j}"
                );
                nonzero += (want_lg > 0.0) as usize;
            }
        }
        assert!(nonzero > 100, "the check must exercise active neurons");
    }

    #[test]
    /// The CPU's host forward and fused pass and candle's forward with the tensor operations
    /// (every other device) agree, and the loss is the per-sample cross-entropy; also when
    /// the batch splits unevenly over the pool (97 rows on 3 threads: 33/33/31; 130 on 4).
    fn host_pass_equals_tensor_ops() {
        let split = mnist();
        let m = Model::new(mnist_spec(Arch::Mlp, 32), &Device::Cpu, 4).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (threads, n) in [(1, 64), (2, 64), (3, 97), (4, 130)] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let idx: Vec<usize> = (0..n).collect();
            let (x, y) = batch_tensors(&split.train, &idx, &Device::Cpu).unwrap();
            for mode in [AttributionMode::LabelGradient, AttributionMode::MaxClass] {
                let h = m.fc(&m.body_detached(&x).unwrap()).unwrap().detach();
                let logits = m.head(&h).unwrap().detach();
                // The whole CPU path: the MLP's forward on the host, then the fused pass.
                let a = pool.install(|| attribute_batch(&m, &x, &y, mode)).unwrap();
                let b = closed_form_tensor_ops(&m, h.clone(), logits.clone(), &y, mode).unwrap();
                let ce = flat(&per_sample_cross_entropy(&logits, &y).unwrap());
                for (got, want) in [
                    (flat(&a.activations), flat(&h)),
                    (flat(&a.logits), flat(&logits)),
                    (flat(&a.attributions), flat(&b.attributions)),
                    (flat(&a.loss), flat(&b.loss)),
                    (flat(&a.loss), ce),
                ] {
                    assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{mode}, {threads} threads, {n} rows: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn whole_set_pass_has_one_row_per_sample_in_any_batching() {
        let d = mnist().test.select(&(0..300).collect::<Vec<_>>());
        for arch in [Arch::Cnn, Arch::Mlp] {
            let m = Model::new(mnist_spec(arch, 8), &Device::Cpu, 2).unwrap();
            let pass = |batch: usize| {
                attribute(
                    &m,
                    &d,
                    AttributionMode::LabelGradient,
                    batch,
                    &Progress::hidden(),
                )
                .unwrap()
            };
            let (a, b) = (pass(256), pass(7));
            assert_eq!((a.values.len(), a.loss.len()), (300 * 8, 300), "{arch:?}");
            for (u, v) in a.values.iter().zip(&b.values) {
                assert!((u - v).abs() < 1e-5, "{arch:?}");
            }
        }
    }
}
