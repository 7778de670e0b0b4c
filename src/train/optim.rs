//! The optimizer step: Adam (PyTorch semantics, L2 weight decay) and SGD with momentum, fused
//! in place per parameter on the CPU (a candle `InplaceOp2`, chunked) or as tensor operations
//! elsewhere; the weight average; the prune mask re-applied inside every step.

use super::*;

/// Per-parameter optimizer state.
pub(super) struct Slot {
    pub(super) var: Var,
    /// First moment (Adam) or momentum buffer (SGD), `elem_count` values.
    pub(super) m: Vec<f32>,
    /// Second moment (Adam only).
    pub(super) v: Vec<f32>,
    /// For `fc.weight`/`fc.bias`: the element stride of one neuron (F or 1), to re-apply the
    /// prune mask.
    pub(super) neuron_stride: Option<usize>,
}

/// Adam or SGD over a chosen set of parameters, honouring a model's prune mask.
pub struct OptimizerState {
    pub(super) kind: Optimizer,
    pub(super) slots: Vec<Slot>,
    pub(super) step: u64,
    pub(super) pruned: Vec<usize>,
    /// Tensor-operation state for non-CPU devices: (m, v) per slot.
    pub(super) dev_state: Vec<(Tensor, Tensor)>,
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
    pub(super) fn step_tensor_ops(&mut self, i: usize, g: &Tensor) -> Result<(), ModelError> {
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
pub(super) fn f32_pair<'a>(
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
pub(super) struct AverageStep(pub(super) f32);

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
pub(super) const ADAM_CHUNK: usize = 32 * 1024;

/// The fused CPU optimizer step: reads the gradient once and updates parameter and moments in
/// place, then zeroes the pruned neurons' rows (weights, moments).
pub(super) struct FusedStep<'a> {
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
