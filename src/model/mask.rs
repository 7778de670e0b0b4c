//! The persistent prune mask: pruning and regrowing neurons of `fc`, the keep mask the
//! optimizer re-applies, and the structural removal of pruned neurons for the ONNX export
//! (§3.3; the logits do not change).

use super::*;

impl Model {
    /// Prune neurons `indices` of `fc`: zero their incoming weight rows and biases and add them
    /// to the persistent mask that training re-applies after every step (§3.3, project
    /// decision). Already-pruned indices are ignored.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for an index `>= H`; [`ModelError::Candle`].
    pub fn prune(&mut self, indices: &[usize]) -> Result<(), ModelError> {
        if let Some(&bad) = indices.iter().find(|&&j| j >= self.spec.hidden) {
            return Err(ModelError::Invalid(format!(
                "cannot prune neuron {bad}: the layer has {} neurons",
                self.spec.hidden
            )));
        }
        self.pruned.extend(indices.iter().copied());
        self.apply_mask()
    }

    /// Bring pruned neurons `indices` back (regrowth, as in dynamic sparse training, e.g.
    /// Evci et al. 2020, "Rigging the Lottery"; not part of the RLAP paper): their incoming
    /// weights and bias in `fc` are re-drawn from the default U(−1/√F, 1/√F), their outgoing
    /// column of `fc2` is set to 0, so the model's logits are unchanged until training gives
    /// them a use. Indices that are not pruned are ignored. A cycle regrows the neurons its
    /// parent pruned before pruning anew, so the pruned share stays at `prune_fraction`
    /// however many cycles run.
    ///
    /// # Errors
    /// [`ModelError::Candle`].
    pub fn regrow(&mut self, indices: &[usize], seed: u64) -> Result<(), ModelError> {
        let back: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|j| self.pruned.contains(j))
            .collect();
        if back.is_empty() {
            return Ok(());
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let f = self.spec.body_width()?;
        let bound = 1.0 / (f as f32).sqrt();
        for p in &self.params {
            let t = p.var.as_tensor();
            let shape = t.dims().to_vec();
            let mut v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            match p.name.as_str() {
                "fc.weight" => {
                    for &j in &back {
                        for x in &mut v[j * f..(j + 1) * f] {
                            *x = rng.gen_range(-bound..bound);
                        }
                    }
                }
                "fc.bias" => {
                    for &j in &back {
                        v[j] = rng.gen_range(-bound..bound);
                    }
                }
                "fc2.weight" => {
                    let h = shape[1];
                    for row in v.chunks_exact_mut(h) {
                        for &j in &back {
                            row[j] = 0.0;
                        }
                    }
                }
                _ => continue,
            }
            p.var
                .set(&Tensor::from_vec(v, shape.as_slice(), t.device())?)?;
        }
        for j in &back {
            self.pruned.remove(j);
        }
        Ok(())
    }

    /// The keep-mask over the H neurons: `[H]` f32, 0 for pruned, 1 otherwise.
    ///
    /// # Errors
    /// [`ModelError::Candle`].
    pub fn keep_mask(&self) -> Result<Tensor, ModelError> {
        let m: Vec<f32> = (0..self.spec.hidden)
            .map(|j| if self.pruned.contains(&j) { 0.0 } else { 1.0 })
            .collect();
        Ok(Tensor::from_vec(m, self.spec.hidden, &self.device)?)
    }

    /// Re-zero the pruned neurons' incoming weights and biases (idempotent).
    ///
    /// # Errors
    /// [`ModelError::Candle`].
    pub fn apply_mask(&self) -> Result<(), ModelError> {
        if self.pruned.is_empty() {
            return Ok(());
        }
        let keep = self.keep_mask()?;
        for p in &self.params {
            match p.name.as_str() {
                "fc.weight" => p.var.set(&p.var.broadcast_mul(&keep.unsqueeze(1)?)?)?,
                "fc.bias" => p.var.set(&p.var.mul(&keep)?)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A copy of this model with the pruned neurons removed structurally: `fc` becomes
    /// `Linear(F → H − k)` and `fc2` `Linear(H − k → K)`. Its logits equal this model's (a
    /// pruned neuron contributes ReLU(0) = 0). Used by the ONNX export.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] when every neuron is pruned; [`ModelError::Candle`].
    pub fn without_pruned(&self) -> Result<Model, ModelError> {
        let keep: Vec<u32> = (0..self.spec.hidden as u32)
            .filter(|j| !self.pruned.contains(&(*j as usize)))
            .collect();
        if keep.is_empty() {
            return Err(ModelError::Invalid("every neuron of fc is pruned".into()));
        }
        let idx = Tensor::new(keep.as_slice(), &self.device)?;
        let mut params = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let t = p.var.as_tensor();
            let t = match p.name.as_str() {
                "fc.weight" | "fc.bias" => t.index_select(&idx, 0)?,
                "fc2.weight" => t.index_select(&idx, 1)?,
                _ => t.copy()?,
            };
            params.push(Param {
                name: p.name.clone(),
                var: Var::from_tensor(&t.contiguous()?)?,
                group: p.group,
            });
        }
        Ok(Model {
            spec: ModelSpec {
                hidden: keep.len(),
                ..self.spec.clone()
            },
            device: self.device.clone(),
            params,
            pruned: BTreeSet::new(),
        })
    }
}
