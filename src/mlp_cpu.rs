//! The MLP on the CPU, forward and backward written out on candle's host buffers: three GEMMs
//! each way, bias and ReLU in place, the batch split by rows over the pool.
//!
//! This module owns the CPU fast path of the MLP (`x` `[B, D]` → body `u = x·W0ᵀ + b0`,
//! `z = relu(u)` `[B, F]` → `h = z·Wᵀ + b` `[B, H]` → `r = relu(h)` → logits `r·W2ᵀ + b2`
//! `[B, K]`; layers as `Model::new`, src/model/mod.rs) for attribution's forward
//! ([`crate::attribution`]) and for training's gradients ([`crate::train::loss_and_grads`]);
//! other devices, dtypes and the CNN keep candle's operations. The operands are read in place
//! through their storages (`storage_and_layout`, no copies), the transposed weights through
//! their strides ([`crate::cnn_cpu::matmul`]). Each part of the batch (one per thread, cut
//! so that there are [`MIN_ROWS_PER_PART`] rows a part or more, the last part and a smaller
//! batch's single part shorter) runs its products on its thread
//! ([`crate::cnn_cpu::as_part`]): at the batch sizes trained (64) and attributed (256) a GEMM
//! split over threads waits at a barrier per product, rows split over the pool do not. Within
//! a part the quantities are feature-major (`uᵀ` `[F, n]`, …), so that every product reads
//! its weight matrix in place; `h` and the logits are handed out row-major.
//! The backward pass (held to candle's autograd by `host_gradients_equal_autograd_on_any_pool`
//! and `hand_written_gradients_match_autograd`):
//! ```text
//! g   = ∂loss/∂logits (the objective's, given)                     [B, K]
//! δh  = (g·W2) ⊙ 1[h ≥ 0],  δu = (δh·W) ⊙ 1[u ≥ 0]    (per part)   [B, H], [B, F]
//! ∂W2 = gᵀ·r, ∂W = δhᵀ·z, ∂W0 = δuᵀ·x; ∂b = Σ_b δ   (output rows split, parts summed)
//! ```
//! ReLU's backward is candle's (`≥ 0`), so a pruned neuron (pre-activation exactly 0) keeps
//! its gradient as autograd gives it (the optimizer masks it). No gradient of the data.
//!
//! The input's and the parameters' storages are read-locked (candle's task-fair, non-recursive
//! read) for a whole pass: a pass must never run while the same tensors can be written, which
//! holds because training and attribution on one model are sequential (the cycle trains a
//! deep copy on its own pool); and the objective [`loss_and_grads`] calls in the middle must
//! not write or lock them either.

use candle_core::{DType, Tensor};

use crate::cnn_cpu::{as_part, matmul};
use crate::model::{Arch, Model, ModelError, MLP_WIDTH};

/// Fewest rows per part when a batch is split over the pool (the last part may have fewer).
pub(crate) const MIN_ROWS_PER_PART: usize = 32;

/// The MLP's parameters in the order [`Weights`] takes them.
const PARAMS: [&str; 6] = [
    "body.0.weight",
    "body.0.bias",
    "fc.weight",
    "fc.bias",
    "fc2.weight",
    "fc2.bias",
];

/// A contiguous tensor's storage, read-locked, with its element range: the host's view of it
/// without a copy.
struct HostView<'a> {
    storage: candle_core::StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl<'a> HostView<'a> {
    /// `None` for a non-contiguous tensor.
    fn new(t: &'a Tensor) -> Option<Self> {
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        Some(Self {
            storage,
            range: start..end,
        })
    }

    /// The elements when the storage is f32 on the CPU, else `None`.
    fn f32s(&self) -> Option<&[f32]> {
        match &*self.storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
                Some(&v[self.range.clone()])
            }
            _ => None,
        }
    }
}

/// The MLP's weights on the host, borrowed, with their dimensions: `W0` `[F, D]`, `b0` `[F]`,
/// `W` `[H, F]`, `b` `[H]`, `W2` `[K, H]`, `b2` `[K]`.
struct Weights<'a> {
    w0: &'a [f32],
    b0: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
    w2: &'a [f32],
    b2: &'a [f32],
    d: usize,
    f: usize,
    hidden: usize,
    k: usize,
}

/// Gradients by parameter name (`body.0.weight`, …), each shaped as its parameter.
pub(crate) type NamedGrads = Vec<(&'static str, Tensor)>;

/// One batch's forward pass on the host: `h` and the logits row-major, and each part's
/// quantities feature-major ([`PartPass`]) for the backward pass.
pub(crate) struct Pass {
    /// `fc`'s output `h` `[B, H]`, pre-ReLU (attribution's target layer, §3.2.1).
    pub h: Vec<f32>,
    /// Logits `[B, K]`.
    pub logits: Vec<f32>,
    /// Each part's quantities, parts in row order.
    parts: Vec<PartPass>,
}

/// One part's (`n` rows) forward quantities, feature-major (`[features, n]`, row-major): the
/// layout in which each product reads its weight matrix in place (with the samples as the
/// rows of the output, `gemm` repacks the whole weight matrix per call: measured at batch 32,
/// `x·W0ᵀ` took twice as long as `W0·xᵀ`).
struct PartPass {
    /// Rows of the batch in this part.
    n: usize,
    /// `uᵀ` `[F, n]`.
    ut: Vec<f32>,
    /// `zᵀ` `[F, n]`.
    zt: Vec<f32>,
    /// `hᵀ` `[H, n]`.
    ht: Vec<f32>,
    /// `rᵀ` `[H, n]`.
    rt: Vec<f32>,
}

/// One part's backward quantities, feature-major: `gᵀ` `[K, n]`, `δhᵀ` `[H, n]`, `δuᵀ`
/// `[F, n]`.
struct PartBack {
    gt: Vec<f32>,
    dht: Vec<f32>,
    dut: Vec<f32>,
}

/// Rows per part for a batch of `b` rows: the pool's threads, at least [`MIN_ROWS_PER_PART`]
/// rows each (one part for a small batch).
fn rows_per_part(b: usize) -> usize {
    let parts = rayon::current_num_threads()
        .min(b / MIN_ROWS_PER_PART)
        .max(1);
    b.div_ceil(parts)
}

/// `work` once per item, each as one part ([`as_part`]), in parallel when there are several;
/// results in item order.
fn map_parts<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    if items.len() == 1 {
        items.into_iter().map(work).collect()
    } else {
        use rayon::prelude::*;
        items
            .into_par_iter()
            .map(|item| as_part(|| work(item)))
            .collect()
    }
}

/// `m` `[O, n]` feature-major: add `bias[o]` to row `o`; write the ReLU of the result to
/// `relu`, also `[O, n]`.
fn add_bias_relu(m: &mut [f32], bias: &[f32], relu: &mut [f32]) {
    let n = m.len() / bias.len();
    for ((row, out), &c) in m.chunks_mut(n).zip(relu.chunks_mut(n)).zip(bias) {
        for (v, o) in row.iter_mut().zip(out) {
            *v += c;
            *o = v.max(0.0);
        }
    }
}

/// `src` `[r, c]` row-major into `dst` `[c, r]`.
fn transpose(src: &[f32], r: usize, dst: &mut [f32]) {
    let c = src.len() / r;
    for (j, row) in dst.chunks_mut(r).enumerate().take(c) {
        for (i, v) in row.iter_mut().enumerate() {
            *v = src[i * c + j];
        }
    }
}

/// `d ⊙= 1[pre ≥ 0]` (ReLU's backward as candle's autograd has it).
fn relu_backward(d: &mut [f32], pre: &[f32]) {
    for (v, &p) in d.iter_mut().zip(pre) {
        *v = if p >= 0.0 { *v } else { 0.0 };
    }
}

impl Weights<'_> {
    /// One part's forward pass: its input rows `x` `[n, D]` → its rows of `h` `[n, H]` and of
    /// the logits `[n, K]`, and its feature-major quantities.
    fn forward_part(&self, x: &[f32], h: &mut [f32], logits: &mut [f32]) -> PartPass {
        let (d, f, hidden, k) = (self.d, self.f, self.hidden, self.k);
        let n = x.len() / d;
        let mut ut = vec![0f32; f * n];
        let mut zt = vec![0f32; f * n];
        matmul(f, n, d, &mut ut, false, self.w0, (d, 1), x, (1, d));
        add_bias_relu(&mut ut, self.b0, &mut zt);
        let mut ht = vec![0f32; hidden * n];
        let mut rt = vec![0f32; hidden * n];
        matmul(hidden, n, f, &mut ht, false, self.w, (f, 1), &zt, (n, 1));
        add_bias_relu(&mut ht, self.b, &mut rt);
        let mut lt = vec![0f32; k * n];
        matmul(
            k,
            n,
            hidden,
            &mut lt,
            false,
            self.w2,
            (hidden, 1),
            &rt,
            (n, 1),
        );
        for (row, &c) in lt.chunks_mut(n).zip(self.b2) {
            row.iter_mut().for_each(|v| *v += c);
        }
        transpose(&ht, hidden, h);
        transpose(&lt, k, logits);
        PartPass { n, ut, zt, ht, rt }
    }

    /// One part's backward pass to `δhᵀ` and `δuᵀ` from its rows of `g` `[n, K]`.
    fn backward_part(&self, g: &[f32], pp: &PartPass) -> PartBack {
        let (f, hidden, k, n) = (self.f, self.hidden, self.k, pp.n);
        let mut gt = vec![0f32; k * n];
        transpose(g, n, &mut gt);
        // δhᵀ = W2ᵀ·gᵀ, δuᵀ = Wᵀ·δhᵀ, the transposed weights read through their strides.
        let mut dht = vec![0f32; hidden * n];
        matmul(
            hidden,
            n,
            k,
            &mut dht,
            false,
            self.w2,
            (1, hidden),
            &gt,
            (n, 1),
        );
        relu_backward(&mut dht, &pp.ht);
        let mut dut = vec![0f32; f * n];
        matmul(f, n, hidden, &mut dut, false, self.w, (1, f), &dht, (n, 1));
        relu_backward(&mut dut, &pp.ut);
        PartBack { gt, dht, dut }
    }

    /// The forward pass of the batch `x` `[B, D]`, its rows split over the pool.
    fn forward(&self, x: &[f32]) -> Pass {
        let b = x.len() / self.d;
        let mut h = vec![0f32; b * self.hidden];
        let mut logits = vec![0f32; b * self.k];
        let rows = rows_per_part(b);
        let items: Vec<_> = x
            .chunks(rows * self.d)
            .zip(h.chunks_mut(rows * self.hidden))
            .zip(logits.chunks_mut(rows * self.k))
            .collect();
        let parts = map_parts(items, |((x, h), l)| self.forward_part(x, h, l));
        Pass { h, logits, parts }
    }

    /// The gradients `[∂W0, ∂b0, ∂W, ∂b, ∂W2, ∂b2]` (shapes as [`Weights`]) of the batch `x`
    /// whose forward pass is `pass`, from the gradient at the logits `g` `[B, K]`.
    fn backward(&self, x: &[f32], pass: &Pass, g: &[f32]) -> [Vec<f32>; 6] {
        let (d, f, hidden, k) = (self.d, self.f, self.hidden, self.k);
        let mut row = 0;
        let items: Vec<_> = pass
            .parts
            .iter()
            .map(|pp| {
                row += pp.n;
                (&g[(row - pp.n) * k..row * k], pp)
            })
            .collect();
        let backs = map_parts(items, |(g, pp)| self.backward_part(g, pp));
        // ∂W_l[o0.., :] = Σ_parts δᵀ[o0.., :]·input and ∂b_l[o0..] = Σ δᵀ's rows, for one block
        // of layer l's output rows (l = 0: body, 1: fc, 2: fc2), summed over the parts.
        let block = |layer: usize, o0: usize, dw: &mut [f32], db: &mut [f32]| {
            let m = db.len();
            let mut start = 0;
            for (i, (pp, pb)) in pass.parts.iter().zip(&backs).enumerate() {
                let n = pp.n;
                let (delta, input, strides, width) = match layer {
                    0 => (&pb.dut, &x[start * d..(start + n) * d], (d, 1), d),
                    1 => (&pb.dht, &pp.zt[..], (1, n), f),
                    _ => (&pb.gt, &pp.rt[..], (1, n), hidden),
                };
                let delta = &delta[o0 * n..(o0 + m) * n];
                matmul(m, width, n, dw, i > 0, delta, (n, 1), input, strides);
                for (s, r) in db.iter_mut().zip(delta.chunks(n)) {
                    *s += r.iter().sum::<f32>();
                }
                start += n;
            }
        };
        let (mut dw0, mut db0) = (vec![0f32; f * d], vec![0f32; f]);
        let (mut dw, mut db) = (vec![0f32; hidden * f], vec![0f32; hidden]);
        let (mut dw2, mut db2) = (vec![0f32; k * hidden], vec![0f32; k]);
        // Output rows split over the pool, ∂W0's and ∂W's blocks interleaved (∂W0's are
        // larger) so that each thread gets one of each; fc2's small gradient is one block.
        let threads = rayon::current_num_threads();
        let (r0, r1) = (f.div_ceil(threads), hidden.div_ceil(threads));
        let mut blocks0 = dw0.chunks_mut(r0 * d).zip(db0.chunks_mut(r0)).enumerate();
        let mut blocks1 = dw.chunks_mut(r1 * f).zip(db.chunks_mut(r1)).enumerate();
        let mut blocks = Vec::new();
        loop {
            let (a, c) = (blocks0.next(), blocks1.next());
            if a.is_none() && c.is_none() {
                break;
            }
            blocks.extend(a.map(|(i, (w, bb))| (0, i * r0, w, bb)));
            blocks.extend(c.map(|(i, (w, bb))| (1, i * r1, w, bb)));
        }
        blocks.push((2, 0, &mut dw2[..], &mut db2[..]));
        map_parts(blocks, |(layer, o0, w, bb)| block(layer, o0, w, bb));
        [dw0, db0, dw, db, dw2, db2]
    }
}

/// Run `work` on the MLP's weights and the input `x` `[B, D]` read in place; `None` where the
/// host path does not apply (the CNN, another device or dtype, a non-contiguous tensor, an
/// empty batch, a parameter of another size than `W2`'s shape and the spec imply).
fn with_weights<R>(
    model: &Model,
    x: &Tensor,
    work: impl FnOnce(&Weights, &[f32]) -> R,
) -> Result<Option<R>, ModelError> {
    if model.spec().arch != Arch::Mlp || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, d) = x.dims2()?;
    let p = PARAMS.map(|name| model.param(name));
    let (k, hidden) = p[4].dims2()?; // W2 is [K, H]
    let f = MLP_WIDTH;
    let expected = [f * d, f, hidden * f, hidden, k * hidden, k];
    if b == 0 || p.iter().zip(expected).any(|(t, n)| t.elem_count() != n) {
        return Ok(None);
    }
    // Each operand read in place under its storage's read lock, held for the pass.
    let Some(views) = std::iter::once(x)
        .chain(p)
        .map(HostView::new)
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let Some(&[xs, w0, b0, w, bias, w2, b2]) = views
        .iter()
        .map(HostView::f32s)
        .collect::<Option<Vec<_>>>()
        .as_deref()
    else {
        return Ok(None);
    };
    let wt = Weights {
        w0,
        b0,
        w,
        b: bias,
        w2,
        b2,
        d,
        f,
        hidden,
        k,
    };
    Ok(Some(work(&wt, xs)))
}

/// The MLP's forward pass of `x` `[B, D]` on the host ([`Pass`]): the same values as
/// [`Model::fc`] and [`Model::head`] up to float summation order; `None` where the host path
/// does not apply: [`Model`] not an MLP, an empty batch, `x` or a parameter not f32 on the CPU
/// or not contiguous, a parameter of another size than `D`, the spec and `W2`'s shape imply
/// (an `x` of the wrong width included: candle's path then reports it).
///
/// # Errors
/// [`ModelError::Candle`] if `x` or `W2` is not 2-D.
pub(crate) fn forward(model: &Model, x: &Tensor) -> Result<Option<Pass>, ModelError> {
    with_weights(model, x, |wt, xs| wt.forward(xs))
}

/// The loss of the batch `x` `[B, D]` and the gradients of all six MLP parameters by name
/// (each shaped as its parameter), on the host; `None` where [`forward`] is `None`.
/// `at_logits` maps the logits `[B, K]` (a tensor on the CPU) to the loss and its gradient
/// there `[B, K]` (the objective's; `crate::train`'s `logit_loss_and_grad`).
///
/// `at_logits` runs while `x` and the parameters are read-locked (module doc): it must not
/// write or lock them.
///
/// # Errors
/// [`ModelError::Candle`] if `x` or `W2` is not 2-D; `at_logits`'s errors; a one-line
/// [`ModelError::Invalid`] if its gradient is not `[B, K]`.
pub(crate) fn loss_and_grads(
    model: &Model,
    x: &Tensor,
    at_logits: impl FnOnce(&Tensor) -> Result<(Tensor, Tensor), ModelError>,
) -> Result<Option<(Tensor, NamedGrads)>, ModelError> {
    let device = x.device();
    let out = with_weights(model, x, |wt, xs| -> Result<_, ModelError> {
        let mut pass = wt.forward(xs);
        let b = xs.len() / wt.d;
        let logits = Tensor::from_vec(std::mem::take(&mut pass.logits), (b, wt.k), device)?;
        let (loss, g) = at_logits(&logits)?;
        if g.dims() != [b, wt.k] {
            return Err(ModelError::Invalid(format!(
                "the objective's gradient is {:?}, the logits [{b}, {}]",
                g.dims(),
                wt.k
            )));
        }
        let g = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let grads = wt.backward(xs, &pass, &g);
        let shapes = [
            vec![wt.f, wt.d],
            vec![wt.f],
            vec![wt.hidden, wt.f],
            vec![wt.hidden],
            vec![wt.k, wt.hidden],
            vec![wt.k],
        ];
        let named = PARAMS
            .into_iter()
            .zip(grads)
            .zip(shapes)
            .map(|((name, v), shape)| Ok((name, Tensor::from_vec(v, shape, device)?)))
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok((loss, named))
    })?;
    out.transpose()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, D};

    use super::*;
    use crate::data::tests::mnist;
    use crate::model::tests::mnist_spec;
    use crate::train::batch_tensors;

    /// The host gradients of the labels' cross-entropy against candle's autograd on a pruned
    /// model (rows of `fc` exactly zero), on 1- to 4-thread pools and batches that split into
    /// uneven parts or a single short one; the forward's `h` and logits against candle's forward.
    #[test]
    fn host_gradients_equal_autograd_on_any_pool() {
        let split = mnist();
        let mut m = Model::new(mnist_spec(Arch::Mlp, 32), &Device::Cpu, 5).unwrap();
        m.prune(&[1, 4, 30]).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |got: &[f32], want: &[f32], what: &str| {
            assert_eq!(got.len(), want.len(), "{what}");
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-4 * scale, "{what}: {g} vs {w}");
            }
        };
        for (threads, n) in [
            (1, 64),
            (2, 64),
            (2, 65),
            (3, 20),
            (4, 50),
            (3, 97),
            (4, 130),
        ] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let idx: Vec<usize> = (0..n).collect();
            let (x, y) = batch_tensors(&split.train, &idx, &Device::Cpu).unwrap();
            let logits = m.forward(&x).unwrap();
            let reference = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
            let want = reference.backward().unwrap();
            let onehot = y
                .unsqueeze(1)
                .unwrap()
                .broadcast_eq(
                    &Tensor::arange(0u32, 10, &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                )
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let (loss, grads) = pool
                .install(|| {
                    loss_and_grads(&m, &x, |l| {
                        let log_p = candle_nn::ops::log_softmax(l, D::Minus1)?;
                        let loss = ((&log_p * &onehot)?.sum_all()? * (-1.0 / n as f64))?;
                        Ok((loss, ((log_p.exp()? - &onehot)? * (1.0 / n as f64))?))
                    })
                })
                .unwrap()
                .expect("the host path applies");
            let what = format!("{threads} threads, {n} rows");
            close(&flat(&loss), &flat(&reference), &format!("{what}: loss"));
            for (name, g) in &grads {
                let w = want.get(m.param(name)).expect("autograd's gradient");
                assert_eq!(g.dims(), w.dims(), "{what}: {name}");
                close(&flat(g), &flat(w), &format!("{what}: {name}"));
            }
            let pass = pool.install(|| forward(&m, &x)).unwrap().unwrap();
            let h = m.fc(&m.body_detached(&x).unwrap()).unwrap();
            close(&pass.h, &flat(&h), &format!("{what}: h"));
            close(&pass.logits, &flat(&logits), &format!("{what}: logits"));
        }
    }
}
