//! The CNN body on the CPU, forward and backward written out: im2col + GEMM convolutions,
//! 2×2 max-pooling with remembered argmax, no gradient for the data.
//!
//! This module owns the CPU fast path of [`crate::model::Model::body`] for the CNN and of its
//! training gradients ([`crate::train::loss_and_grads`]); other devices keep candle's ops and
//! autograd. Its strided [`matmul`] and [`as_part`] also run the MLP's passes
//! ([`crate::mlp_cpu`]). candle 0.11's CPU convolution builds a fresh im2col tensor per op
//! and batch, computes input gradients with a per-pixel `conv_transpose2d` loop (also
//! conv1's, which nothing reads),
//! and its max-pool backward scales every unique maximum's gradient by 1/4 (it multiplies by the
//! window's mean of the "is max" mask instead of dividing by the tie count). Here:
//! ```text
//! conv:  cols [n·Ho·Wo, k·k·C] (column (i·k+j)·C+c: one copy per kernel row from NHWC input;
//!        the weights are permuted to match) · Wᵀ → [n·Ho·Wo, Co]
//!        (NHWC), + bias;  ∂W = δᵀ·cols, ∂b = Σ δ, δcols = δ·W → col2im (conv2 only)
//! relu:  ∂ = δ ⊙ 1[pre ≥ 0] (as candle's autograd)
//! pool:  2×2, stride 2, the gradient goes to the first maximum of each window (as PyTorch)
//! ```
//! Samples are processed in chunks of [`CHUNK`] so the im2col buffers stay small (cache-sized
//! for conv2) whatever the batch; the weight gradients accumulate across chunks. The matrix
//! products use the `gemm` crate (candle's own GEMM) on the pool [`crate::cpu`] sizes.
//! Layers and sizes follow `Model::new` (src/model/mod.rs): conv1 `[16, C, 5, 5]`, conv2
//! `[32, 16, 5, 5]`, both valid, stride 1, each followed by ReLU and a 2×2 max-pool; the body's
//! output is flattened in NCHW order `[n, 32·H4·W4]`.

/// Samples per chunk of the forward and backward passes.
pub const CHUNK: usize = 64;

/// Fewest samples per part when a batch is split over the pool's threads.
const MIN_PART: usize = 8;

thread_local! {
    /// Set while a thread runs one part of a batch split over the pool: its matrix products
    /// then run on that thread alone (the parts already keep every thread busy).
    static IN_PART: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Split `0..n` into at most `rayon::current_num_threads()` contiguous parts of at least
/// [`MIN_PART`] samples (one part when `n` is small).
fn parts(n: usize) -> Vec<std::ops::Range<usize>> {
    let p = rayon::current_num_threads().min(n / MIN_PART).max(1);
    (0..p).map(|i| i * n / p..(i + 1) * n / p).collect()
}

/// Run `work` once per part, in parallel when there are several, each with its own
/// workspace; results in part order.
fn run_parts<R: Send>(
    ranges: &[std::ops::Range<usize>],
    ws: &mut Workspaces,
    work: impl Fn(std::ops::Range<usize>, &mut Workspace) -> R + Sync,
) -> Vec<R> {
    if ws.0.len() < ranges.len() {
        ws.0.resize_with(ranges.len(), Workspace::default);
    }
    if ranges.len() == 1 {
        return vec![work(ranges[0].clone(), &mut ws.0[0])];
    }
    use rayon::prelude::*;
    ranges
        .par_iter()
        .zip(ws.0.par_iter_mut())
        .map(|(r, w)| as_part(|| work(r.clone(), w)))
        .collect()
}

/// Run `work` as one part of a batch split over the pool: [`matmul`] inside it runs on this
/// thread alone (the parts already keep every thread busy).
pub(crate) fn as_part<R>(work: impl FnOnce() -> R) -> R {
    // Restored on the way out, also by a panic (a worker may run a part of another batch
    // while it waits, so the flag it had is put back, not cleared).
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_PART.set(self.0);
        }
    }
    let _restore = Restore(IN_PART.replace(true));
    work()
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, each operand given by its row and column
/// strides in elements (so transposed views cost nothing).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs + 1
    };
    assert!(dst.len() >= m * n, "gemm: dst too small");
    if k > 0 {
        assert!(
            lhs.len() >= last(lhs_rs, lhs_cs, m, k),
            "gemm: lhs too small"
        );
        assert!(
            rhs.len() >= last(rhs_rs, rhs_cs, k, n),
            "gemm: rhs too small"
        );
    }
    let threads = if IN_PART.get() {
        1
    } else {
        rayon::current_num_threads()
    };
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element the strides address inside the slices;
    // dst is exclusively borrowed and does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Geometry of one valid, stride-1 convolution with a square kernel on NHWC input.
#[derive(Clone, Copy, Debug)]
struct Conv {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    co: usize,
}

impl Conv {
    fn ho(&self) -> usize {
        self.h + 1 - self.k
    }
    fn wo(&self) -> usize {
        self.w + 1 - self.k
    }
    /// Columns per output pixel: `C·k·k`.
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }

    /// `x` `[n, H, W, C]` → `cols` `[n·Ho·Wo, k·k·C]`, column `(i·k + j)·C + c`: each kernel
    /// row is one contiguous run of `k·C` values in NHWC input.
    fn im2col(&self, x: &[f32], n: usize, cols: &mut Vec<f32>) {
        let (ho, wo, kk, k, c) = (self.ho(), self.wo(), self.kk(), self.k, self.c);
        let run = k * c;
        cols.clear();
        cols.resize(n * ho * wo * kk, 0.0);
        for (r, row) in cols.chunks_exact_mut(kk).enumerate() {
            let (b, oy, ox) = (r / (ho * wo), r / wo % ho, r % wo);
            for (i, dst) in row.chunks_exact_mut(run).enumerate() {
                let at = ((b * self.h + oy + i) * self.w + ox) * c;
                dst.copy_from_slice(&x[at..at + run]);
            }
        }
    }

    /// Scatter-add `dcols` `[n·Ho·Wo, k·k·C]` back to `dx` `[n, H, W, C]` (zeroed first).
    fn col2im(&self, dcols: &[f32], n: usize, dx: &mut Vec<f32>) {
        let (ho, wo, kk, k, c) = (self.ho(), self.wo(), self.kk(), self.k, self.c);
        let run = k * c;
        dx.clear();
        dx.resize(n * self.h * self.w * c, 0.0);
        for (r, row) in dcols.chunks_exact(kk).enumerate() {
            let (b, oy, ox) = (r / (ho * wo), r / wo % ho, r % wo);
            for (i, src) in row.chunks_exact(run).enumerate() {
                let at = ((b * self.h + oy + i) * self.w + ox) * c;
                for (d, v) in dx[at..at + run].iter_mut().zip(src) {
                    *d += v;
                }
            }
        }
    }

    /// `∂W += d_preᵀ · cols` (`[Co, k·k·C]`, the columns' order) and `∂b += Σ_rows d_pre`,
    /// for `d_pre` `[rows, Co]` and `cols` `[rows, k·k·C]`.
    fn accumulate_grads(
        &self,
        d_pre: &[f32],
        cols: &[f32],
        rows: usize,
        gw: &mut [f32],
        gb: &mut [f32],
    ) {
        let (kk, co) = (self.kk(), self.co);
        matmul(co, kk, rows, gw, true, d_pre, (1, co), cols, (kk, 1));
        for row in d_pre.chunks_exact(co) {
            for (s, v) in gb.iter_mut().zip(row) {
                *s += v;
            }
        }
    }

    /// A weight `[Co, C, k, k]` (candle's layout) as `[Co, k, k, C]` (the columns' order),
    /// or back with `to_hwc = false`.
    fn permute(&self, w: &[f32], to_hwc: bool) -> Vec<f32> {
        let (k, c) = (self.k, self.c);
        let mut out = vec![0.0; w.len()];
        for (src, dst) in w
            .chunks_exact(self.kk())
            .zip(out.chunks_exact_mut(self.kk()))
        {
            for ci in 0..c {
                for ij in 0..k * k {
                    let (chw, hwc) = (ci * k * k + ij, ij * c + ci);
                    if to_hwc {
                        dst[hwc] = src[chw];
                    } else {
                        dst[chw] = src[hwc];
                    }
                }
            }
        }
        out
    }

    /// `pre = cols · Wᵀ + bias`, `[rows, Co]`; `weight` `[Co, k·k·C]` row-major (the columns'
    /// order, see [`Conv::permute`]).
    fn forward(&self, cols: &[f32], rows: usize, weight: &[f32], bias: &[f32], pre: &mut Vec<f32>) {
        let (kk, co) = (self.kk(), self.co);
        pre.clear();
        pre.reserve(rows * co);
        for _ in 0..rows {
            pre.extend_from_slice(bias);
        }
        matmul(rows, co, kk, pre, true, cols, (kk, 1), weight, (1, kk));
    }
}

/// 2×2, stride-2 max-pool of `relu(pre)` (NHWC `[n, H, W, C]`) → `out` `[n, H/2, W/2, C]`,
/// with the flat index into `pre` of each window's first maximum.
fn relu_pool(
    pre: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    out: &mut Vec<f32>,
    arg: &mut Vec<u32>,
) {
    let (h2, w2) = (h / 2, w / 2);
    out.clear();
    arg.clear();
    out.reserve(n * h2 * w2 * c);
    arg.reserve(n * h2 * w2 * c);
    for b in 0..n {
        for y in 0..h2 {
            for x in 0..w2 {
                for ch in 0..c {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = 0usize;
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let i = ((b * h + 2 * y + dy) * w + 2 * x + dx) * c + ch;
                        let v = pre[i].max(0.0);
                        if v > best {
                            best = v;
                            at = i;
                        }
                    }
                    out.push(best);
                    arg.push(at as u32);
                }
            }
        }
    }
}

/// Reusable buffers and the saved intermediates of the last forward chunk(s).
#[derive(Default)]
struct Workspace {
    cols1: Vec<f32>,
    pre1: Vec<f32>,
    pool1: Vec<f32>,
    arg1: Vec<u32>,
    cols2: Vec<f32>,
    pre2: Vec<f32>,
    pool2: Vec<f32>,
    arg2: Vec<u32>,
    d_pre2: Vec<f32>,
    d_cols2: Vec<f32>,
    d_pool1: Vec<f32>,
    d_pre1: Vec<f32>,
}

/// The CNN body's parameters on the host.
pub struct Weights<'a> {
    /// `[C, H, W]` of one input image.
    pub image: (usize, usize, usize),
    /// conv1's weight `[16, C, 5, 5]` and bias `[16]`, row-major (candle's layout).
    pub conv1: (&'a [f32], &'a [f32]),
    /// conv2's weight `[32, 16, 5, 5]` and bias `[32]`, row-major (candle's layout).
    pub conv2: (&'a [f32], &'a [f32]),
}

impl Weights<'_> {
    fn convs(&self) -> (Conv, Conv) {
        let (c, h, w) = self.image;
        let co1 = self.conv1.1.len();
        let co2 = self.conv2.1.len();
        let k = ((self.conv1.0.len() / (co1 * c)) as f64).sqrt() as usize;
        let c1 = Conv {
            c,
            h,
            w,
            k,
            co: co1,
        };
        let c2 = Conv {
            c: co1,
            h: c1.ho() / 2,
            w: c1.wo() / 2,
            k,
            co: co2,
        };
        (c1, c2)
    }

    /// Width of the body's output per sample: `32·H4·W4`.
    pub fn out_width(&self) -> usize {
        let (_, c2) = self.convs();
        c2.co * (c2.ho() / 2) * (c2.wo() / 2)
    }
}

/// Forward one chunk of `n` images `x` `[n, C·H·W]` (NCHW), keeping the intermediates in `ws`;
/// writes the body's output `[n, F]` (NCHW flatten) to `z`.
fn forward_chunk(
    wt: &Weights,
    hwc: &HwcWeights,
    x: &[f32],
    n: usize,
    ws: &mut Workspace,
    z: &mut [f32],
) {
    let (c1, c2) = wt.convs();
    // NCHW → NHWC (a no-op copy for one channel).
    let mut nhwc = Vec::new();
    let x = if c1.c == 1 {
        x
    } else {
        let hw = c1.h * c1.w;
        nhwc.resize(n * hw * c1.c, 0.0);
        for b in 0..n {
            for ch in 0..c1.c {
                for p in 0..hw {
                    nhwc[(b * hw + p) * c1.c + ch] = x[(b * c1.c + ch) * hw + p];
                }
            }
        }
        &nhwc
    };
    c1.im2col(x, n, &mut ws.cols1);
    c1.forward(
        &ws.cols1,
        n * c1.ho() * c1.wo(),
        &hwc.conv1,
        wt.conv1.1,
        &mut ws.pre1,
    );
    relu_pool(
        &ws.pre1,
        n,
        c1.ho(),
        c1.wo(),
        c1.co,
        &mut ws.pool1,
        &mut ws.arg1,
    );
    c2.im2col(&ws.pool1, n, &mut ws.cols2);
    c2.forward(
        &ws.cols2,
        n * c2.ho() * c2.wo(),
        &hwc.conv2,
        wt.conv2.1,
        &mut ws.pre2,
    );
    relu_pool(
        &ws.pre2,
        n,
        c2.ho(),
        c2.wo(),
        c2.co,
        &mut ws.pool2,
        &mut ws.arg2,
    );
    let (h4, w4, co) = (c2.ho() / 2, c2.wo() / 2, c2.co);
    let f = co * h4 * w4;
    for b in 0..n {
        for p in 0..h4 * w4 {
            for ch in 0..co {
                z[b * f + ch * h4 * w4 + p] = ws.pool2[(b * h4 * w4 + p) * co + ch];
            }
        }
    }
}

/// The conv weights in the columns' order `[Co, k, k, C]`.
struct HwcWeights {
    conv1: Vec<f32>,
    conv2: Vec<f32>,
}

impl HwcWeights {
    fn new(wt: &Weights) -> Self {
        let (c1, c2) = wt.convs();
        Self {
            conv1: c1.permute(wt.conv1.0, true),
            conv2: c2.permute(wt.conv2.0, true),
        }
    }
}

/// One workspace per part of a batch split over the pool's threads.
#[derive(Default)]
pub struct Workspaces(Vec<Workspace>);

/// The body's output `[n, F]` for `x` `[n, C·H·W]`: the batch is split into one part per
/// pool thread (data parallel), each part run chunk by chunk.
pub fn forward(wt: &Weights, x: &[f32], n: usize, ws: &mut Workspaces) -> Vec<f32> {
    let (c, h, w) = wt.image;
    let d = c * h * w;
    let f = wt.out_width();
    let hwc = HwcWeights::new(wt);
    let ranges = parts(n);
    let zs = run_parts(&ranges, ws, |r, ws| {
        let mut z = vec![0.0; r.len() * f];
        for start in (r.start..r.end).step_by(CHUNK) {
            let m = CHUNK.min(r.end - start);
            let at = start - r.start;
            forward_chunk(
                wt,
                &hwc,
                &x[start * d..(start + m) * d],
                m,
                ws,
                &mut z[at * f..(at + m) * f],
            );
        }
        z
    });
    zs.concat()
}

/// Gradients of the body's four parameters, accumulated over a batch.
#[derive(Debug, Default)]
pub struct Grads {
    /// ∂loss/∂conv1.weight, `[16, C, 5, 5]` row-major (candle's layout).
    pub conv1_weight: Vec<f32>,
    /// ∂loss/∂conv1.bias, `[16]`.
    pub conv1_bias: Vec<f32>,
    /// ∂loss/∂conv2.weight, `[32, 16, 5, 5]` row-major (candle's layout).
    pub conv2_weight: Vec<f32>,
    /// ∂loss/∂conv2.bias, `[32]`.
    pub conv2_bias: Vec<f32>,
}

/// Backward through the body: `dz` `[n, F]` is the loss's gradient at the body's output for
/// the inputs `x` `[n, C·H·W]`. No gradient for `x`. The intermediates of the forward pass
/// are taken from `ws` when `forward_in_ws` says the last [`forward`] on `ws` ran on these
/// `x` and `n ≤ CHUNK` (one training batch); otherwise the forward pass is recomputed chunk
/// by chunk (cheap beside the backward, and memory stays at one chunk).
pub fn backward(
    wt: &Weights,
    x: &[f32],
    dz: &[f32],
    n: usize,
    ws: &mut Workspaces,
    forward_in_ws: bool,
) -> Grads {
    let (c1, c2) = wt.convs();
    let hwc = HwcWeights::new(wt);
    let ranges = parts(n);
    // The forward pass left each part's intermediates in its workspace when every part fitted
    // in one chunk (the same split: `parts` depends on n and the pool only).
    let reuse = forward_in_ws && ranges.iter().all(|r| r.len() <= CHUNK);
    let per_part = run_parts(&ranges, ws, |r, ws| {
        backward_part(wt, &hwc, x, dz, r, ws, reuse)
    });
    let mut g = Grads {
        conv1_weight: vec![0.0; c1.co * c1.kk()],
        conv1_bias: vec![0.0; c1.co],
        conv2_weight: vec![0.0; c2.co * c2.kk()],
        conv2_bias: vec![0.0; c2.co],
    };
    for p in per_part {
        for (sum, part) in [
            (&mut g.conv1_weight, p.conv1_weight),
            (&mut g.conv1_bias, p.conv1_bias),
            (&mut g.conv2_weight, p.conv2_weight),
            (&mut g.conv2_bias, p.conv2_bias),
        ] {
            for (s, v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
    }
    // The weight gradients were built in the columns' order; back to candle's layout.
    g.conv1_weight = c1.permute(&g.conv1_weight, false);
    g.conv2_weight = c2.permute(&g.conv2_weight, false);
    g
}

/// [`backward`] for the samples `r` of the batch, on one workspace; gradients in the
/// columns' order.
fn backward_part(
    wt: &Weights,
    hwc: &HwcWeights,
    x: &[f32],
    dz: &[f32],
    r: std::ops::Range<usize>,
    ws: &mut Workspace,
    reuse: bool,
) -> Grads {
    let (c1, c2) = wt.convs();
    let (c, h, w) = wt.image;
    let d = c * h * w;
    let f = wt.out_width();
    let mut g = Grads {
        conv1_weight: vec![0.0; c1.co * c1.kk()],
        conv1_bias: vec![0.0; c1.co],
        conv2_weight: vec![0.0; c2.co * c2.kk()],
        conv2_bias: vec![0.0; c2.co],
    };
    let mut z = vec![0.0; CHUNK.min(r.len()) * f];
    let (h4, w4) = (c2.ho() / 2, c2.wo() / 2);
    for start in (r.start..r.end).step_by(CHUNK) {
        let m = CHUNK.min(r.end - start);
        if !reuse {
            forward_chunk(
                wt,
                hwc,
                &x[start * d..(start + m) * d],
                m,
                ws,
                &mut z[..m * f],
            );
        }
        // dz (NCHW flatten) → through pool2 and relu2 → d_pre2 [m·Ho2·Wo2, 32].
        let rows2 = m * c2.ho() * c2.wo();
        ws.d_pre2.clear();
        ws.d_pre2.resize(rows2 * c2.co, 0.0);
        for b in 0..m {
            for p in 0..h4 * w4 {
                for ch in 0..c2.co {
                    let at = ws.arg2[(b * h4 * w4 + p) * c2.co + ch] as usize;
                    if ws.pre2[at] >= 0.0 {
                        ws.d_pre2[at] += dz[(start + b) * f + ch * h4 * w4 + p];
                    }
                }
            }
        }
        let (kk2, co2) = (c2.kk(), c2.co);
        // ∂W2 += d_pre2ᵀ · cols2, ∂b2 += Σ rows.
        c2.accumulate_grads(
            &ws.d_pre2,
            &ws.cols2,
            rows2,
            &mut g.conv2_weight,
            &mut g.conv2_bias,
        );
        // d_cols2 = d_pre2 · W2 → d_pool1.
        ws.d_cols2.resize(rows2 * kk2, 0.0);
        matmul(
            rows2,
            kk2,
            co2,
            &mut ws.d_cols2,
            false,
            &ws.d_pre2,
            (co2, 1),
            &hwc.conv2,
            (kk2, 1),
        );
        c2.col2im(&ws.d_cols2, m, &mut ws.d_pool1);
        // Through pool1 and relu1 → d_pre1 [m·Ho1·Wo1, 16].
        let rows1 = m * c1.ho() * c1.wo();
        ws.d_pre1.clear();
        ws.d_pre1.resize(rows1 * c1.co, 0.0);
        for (i, &at) in ws.arg1.iter().enumerate() {
            let at = at as usize;
            if ws.pre1[at] >= 0.0 {
                ws.d_pre1[at] += ws.d_pool1[i];
            }
        }
        c1.accumulate_grads(
            &ws.d_pre1,
            &ws.cols1,
            rows1,
            &mut g.conv1_weight,
            &mut g.conv1_bias,
        );
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_handles_transposed_operands_and_accumulation() {
        // a [2×3], b [3×2]; aᵀ stored as [3×2].
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let at = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let want = [4.0, 5.0, 10.0, 11.0];
        let mut c = [0.0; 4];
        matmul(2, 2, 3, &mut c, false, &a, (3, 1), &b, (2, 1));
        assert_eq!(c, want);
        let mut c = [1.0; 4];
        matmul(2, 2, 3, &mut c, true, &at, (1, 2), &b, (2, 1));
        assert_eq!(c, [5.0, 6.0, 11.0, 12.0]);
    }

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), y> = <x, col2im(y)> for any x, y.
        let conv = Conv {
            c: 2,
            h: 6,
            w: 5,
            k: 3,
            co: 1,
        };
        let n = 2;
        let x: Vec<f32> = (0..n * 6 * 5 * 2)
            .map(|i| ((i * 37 % 11) as f32) - 5.0)
            .collect();
        let mut cols = Vec::new();
        conv.im2col(&x, n, &mut cols);
        let y: Vec<f32> = (0..cols.len())
            .map(|i| ((i * 13 % 7) as f32) - 3.0)
            .collect();
        let mut dx = Vec::new();
        conv.col2im(&y, n, &mut dx);
        let lhs: f32 = cols.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-3, "{lhs} vs {rhs}");
    }
}
