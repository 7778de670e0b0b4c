//! What the engine shows and keeps: the status the API and the demo read, the checkpoint
//! written atomically by the scorer, and the `ModelPublished` announcement of a version.

use super::*;

/// The checkpointed state (JSON, `<state.dir>/checkpoint.json`, written atomically).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Model name.
    pub model: String,
    /// The version the mixture belongs to.
    pub model_version: u64,
    /// The verdict rule (None while warming up). The name is the one checkpoints had when
    /// the rule was always the online mixture.
    pub gmm: Option<Verdicter>,
    /// The trigger.
    pub trigger: NoiseTrigger,
    /// Verdicts made since the first start.
    pub verdicts: u64,
    /// The last cycles (newest last, at most 20).
    pub cycles: Vec<CycleRecord>,
}

/// The engine's view for the API and logs.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EngineStatus {
    /// `bootstrap`, `warm-up` or `scoring`.
    pub phase: String,
    /// Model version scoring now (0 before the first).
    pub model_version: u64,
    /// Noisy fraction over the trigger window and its EWMA.
    pub noisy_fraction_window: f64,
    /// See `noisy_fraction_window`.
    pub noisy_fraction_ewma: f64,
    /// A cycle is running.
    pub cycle_running: bool,
    /// This replica runs cycles.
    pub leader: bool,
    /// Samples in the replay buffer.
    pub replay_samples: usize,
    /// The verdicts are provisional: the configured mixture could not be fitted and the
    /// noise model stands in (no cycle runs).
    pub verdicts_provisional: bool,
    /// The last cycles, newest last (`crate::stream::cycle::CycleRecord`: outcome, stage
    /// times, guard evidence).
    #[schema(value_type = Vec<Object>)]
    pub cycles: Vec<CycleRecord>,
}

/// `ModelPublished.model_url`: `<public_url>/v1/models/<model>/versions/<version>/model.onnx`
/// (the API's download route), or empty when `public_url` is empty. A trailing `/` of
/// `public_url` is dropped.
pub fn model_url(public_url: &str, model: &str, version: u64) -> String {
    if public_url.is_empty() {
        return String::new();
    }
    format!(
        "{}/v1/models/{model}/versions/{version}/{}",
        public_url.trim_end_matches('/'),
        crate::store::ONNX_FILE
    )
}

impl Engine {
    /// The checkpoint of the current state.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            model: self.cfg.model.name.clone(),
            model_version: self.version,
            gmm: match self.phase {
                Phase::Scoring => self.gmm.clone(),
                _ => None,
            },
            trigger: self.trigger.clone(),
            verdicts: self.verdicts,
            cycles: self.cycles.clone(),
        }
    }

    /// A snapshot for the API.
    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            phase: match self.phase {
                Phase::Bootstrap(_) => "bootstrap",
                Phase::Warming(_) => "warm-up",
                Phase::Scoring => "scoring",
            }
            .into(),
            model_version: self.version,
            noisy_fraction_window: self.trigger.window_fraction(),
            noisy_fraction_ewma: self.trigger.ewma_fraction(),
            cycle_running: self.cycle.is_some(),
            leader: self.leader,
            replay_samples: self.replay.len(),
            verdicts_provisional: self.gmm.as_ref().is_some_and(Verdicter::provisional),
            cycles: self.cycles.clone(),
        }
    }

    /// The `ModelPublished` event of a version: its store folder as a `file://` location, and
    /// with `api.public_url` set, the HTTP URL of its `model.onnx` on the API.
    pub fn announcement(&self, meta: &VersionMetadata, extra: &[(String, f64)]) -> ModelPublished {
        let dir = self
            .store
            .root()
            .join(&meta.model)
            .join(meta.version.to_string());
        let mut metrics: std::collections::HashMap<String, f64> = extra.iter().cloned().collect();
        if let Some(m) = &meta.metrics_before {
            metrics.insert("accuracy_before".into(), m.accuracy);
        }
        if let Some(m) = &meta.metrics_after {
            metrics.insert("accuracy_after".into(), m.accuracy);
        }
        if let Some(r) = meta.estimated_noise_rate {
            metrics.insert("noisy_fraction".into(), r);
        }
        ModelPublished {
            model_name: meta.model.clone(),
            version: meta.version,
            parent_version: meta.parent_version.unwrap_or(0),
            location: format!(
                "file://{}",
                std::path::absolute(&dir).unwrap_or(dir).display()
            ),
            sha256: meta
                .sha256
                .get(crate::store::ONNX_FILE)
                .cloned()
                .unwrap_or_default(),
            metrics,
            created_at_ms: crate::stream::unix_ms(),
            model_url: model_url(&self.cfg.api.public_url, &meta.model, meta.version),
        }
    }
}
