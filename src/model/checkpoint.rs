//! Checkpoints: a deep copy, and safetensors files holding the weights, the spec and the
//! prune mask (loaded onto any device).

use super::*;

impl Model {
    /// A deep copy (new storage) so that training the copy leaves this model unchanged.
    ///
    /// # Errors
    /// [`ModelError::Candle`].
    pub fn deep_clone(&self) -> Result<Model, ModelError> {
        let params = self
            .params
            .iter()
            .map(|p| {
                Ok(Param {
                    name: p.name.clone(),
                    var: Var::from_tensor(&p.var.as_tensor().copy()?)?,
                    group: p.group,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Model {
            params,
            ..self.clone()
        })
    }

    /// Write the weights, the prune mask and the spec to a safetensors file. The spec goes in
    /// the header metadata (`rlap.spec`, JSON), the mask as the tensor `rlap.prune_mask` `[H]`.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] on I/O failure; [`ModelError::Candle`].
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let ck = |reason: String| ModelError::Checkpoint {
            path: path.into(),
            reason,
        };
        let mut tensors: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().to_device(&Device::Cpu)))
            .map(|(n, t)| t.map(|t| (n, t)))
            .collect::<Result<_, _>>()?;
        tensors.insert(
            "rlap.prune_mask".into(),
            self.keep_mask()?.to_device(&Device::Cpu)?,
        );
        let meta = HashMap::from([(
            "rlap.spec".to_string(),
            serde_json::to_string(&self.spec).map_err(|e| ck(e.to_string()))?,
        )]);
        let views: Vec<(String, Tensor)> = tensors.into_iter().collect();
        safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| ck(e.to_string()))
    }

    /// Read a checkpoint written by [`Model::save`] onto `device`.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] when the file is unreadable, lacks the spec or a tensor, or a
    /// tensor has the wrong shape.
    pub fn load(path: &Path, device: &Device) -> Result<Model, ModelError> {
        let ck = |reason: String| ModelError::Checkpoint {
            path: path.into(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| ck(e.to_string()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| ck(e.to_string()))?;
        let spec: ModelSpec = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("rlap.spec"))
            .ok_or_else(|| ck("no rlap.spec in the header: not an rlap checkpoint".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| ck(format!("rlap.spec: {e}"))))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
        // Check the header's shapes against the tensors before allocating anything from them.
        let fc = tensors
            .get("fc.weight")
            .ok_or_else(|| ck("missing tensor fc.weight".into()))?;
        if fc.dims() != [spec.hidden, spec.body_width()?] {
            return Err(ck(format!(
                "fc.weight has shape {:?}, the spec says [{}, {}]",
                fc.dims(),
                spec.hidden,
                spec.body_width()?
            )));
        }
        let mut model = Model::new(spec, device, 0)?;
        for p in &mut model.params {
            let t = tensors
                .get(&p.name)
                .ok_or_else(|| ck(format!("missing tensor {}", p.name)))?;
            if t.dims() != p.var.dims() {
                return Err(ck(format!(
                    "{}: shape {:?}, expected {:?}",
                    p.name,
                    t.dims(),
                    p.var.dims()
                )));
            }
            p.var = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
        }
        let mask = tensors
            .get("rlap.prune_mask")
            .ok_or_else(|| ck("missing tensor rlap.prune_mask".into()))?
            .to_vec1::<f32>()?;
        if mask.len() != model.spec.hidden {
            return Err(ck(format!(
                "rlap.prune_mask has {} entries, expected H = {}",
                mask.len(),
                model.spec.hidden
            )));
        }
        model.pruned = mask
            .iter()
            .enumerate()
            .filter(|(_, &m)| m == 0.0)
            .map(|(j, _)| j)
            .collect();
        model.apply_mask()?;
        Ok(model)
    }
}
