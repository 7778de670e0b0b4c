//! The daemon's verdict rule over a stream: either the online class-conditional noise model
//! ([`crate::noise_model`], default) or the online two-component mixture of §3.2.2
//! ([`OnlineGmm`]), behind one type so the engine and the cycle do not care which.
//!
//! This module owns warming a rule up on a window of scored samples, scoring a micro-batch
//! (posterior of noisy before the update, then the stepwise update) and what a new model
//! version does to the rule's state. Both rules share the `[mixture]` step-size schedule.
//!
//! A new model version: the mixture is re-fitted on the replay buffer (its space is the new
//! model's), while the noise model keeps its statistics — the transition is a property of the
//! labelling process, not of the model — and restarts its step schedule, so the new model's
//! out-of-sample probabilities take over within a few micro-batches.

use serde::{Deserialize, Serialize};

use crate::attribution::Attributions;
use crate::noise_model::NoiseModel;
use crate::partition::{PartitionError, PartitionFeatures};
use crate::stream::config::DaemonConfig;
use crate::stream::online_gmm::{OnlineGmm, StepSize};

/// The verdict rule and its state (part of the checkpoint; a checkpoint written before the
/// noise model existed holds a bare mixture and still loads).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Verdicter {
    /// The online class-conditional noise model.
    NoiseModel {
        /// Its statistics.
        noise_model: NoiseModel,
        /// The step-size schedule of its updates.
        step: StepSize,
    },
    /// The online two-component mixture.
    Mixture(OnlineGmm),
}

impl Verdicter {
    /// Fit the configured rule on a window of scored samples `a` with given `labels`
    /// (`[n]`). Scores should come from a model that has not trained on them (the bootstrap's
    /// cross-fitting, or samples that arrived after the model's training data).
    ///
    /// # Errors
    /// [`PartitionError`] when the fit fails or the configuration is invalid.
    pub fn warm_up(
        cfg: &DaemonConfig,
        a: &Attributions,
        labels: &[u32],
    ) -> Result<Self, PartitionError> {
        let step = cfg.mixture.step_size().map_err(PartitionError::Invalid)?;
        match cfg.scoring.estimator {
            crate::partition::Estimator::NoiseModel => Ok(Self::NoiseModel {
                noise_model: NoiseModel::fit(&a.probs, labels, cfg.model.num_classes)?,
                step,
            }),
            crate::partition::Estimator::Mixture => {
                let (x, d) = crate::partition::partition_features(
                    cfg.scoring.features,
                    &a.values,
                    a.n,
                    a.hidden,
                    &a.loss,
                );
                let mut gmm = OnlineGmm::warm_up(
                    &x,
                    a.n,
                    d,
                    &a.loss,
                    cfg.mixture.reg_covar,
                    step,
                    cfg.mixture.seed,
                )?;
                gmm.min_noisy_loss = cfg.mixture.min_noisy_loss;
                Ok(Self::Mixture(gmm))
            }
        }
    }

    /// As [`Verdicter::warm_up`], but a mixture that cannot be fitted (zero spread: a
    /// producer stuck on one sample, duplicates, one far outlier) falls back to the noise
    /// model, which needs only finite class probabilities; the fallback is logged. Without it
    /// the same fit fails on every restart and wedges the partition.
    ///
    /// # Errors
    /// [`PartitionError`] when even the noise model cannot be fitted (no samples, non-finite
    /// probabilities, a bad configuration).
    pub fn warm_up_or_fallback(
        cfg: &DaemonConfig,
        a: &Attributions,
        labels: &[u32],
    ) -> Result<Self, PartitionError> {
        match Self::warm_up(cfg, a, labels) {
            Ok(v) => Ok(v),
            Err(e) if cfg.scoring.estimator == crate::partition::Estimator::Mixture => {
                tracing::warn!(error = %e, samples = labels.len(), "the mixture cannot be fitted on this window; the noise model gives the verdicts until the next model version");
                let mut noise = cfg.clone();
                noise.scoring.estimator = crate::partition::Estimator::NoiseModel;
                Self::warm_up(&noise, a, labels)
            }
            Err(e) => Err(e),
        }
    }

    /// P(noisy) per sample of `a`, `[n]`, without updating.
    ///
    /// # Errors
    /// [`PartitionError`] on mismatched lengths or non-finite scores.
    pub fn posterior(
        &self,
        features: PartitionFeatures,
        a: &Attributions,
        labels: &[u32],
    ) -> Result<Vec<f64>, PartitionError> {
        match self {
            Self::NoiseModel { noise_model, .. } => {
                noise_model.posterior(&noise_model.derive(), &a.probs, labels)
            }
            Self::Mixture(g) => {
                let (x, _) = crate::partition::partition_features(
                    features, &a.values, a.n, a.hidden, &a.loss,
                );
                Ok(g.posterior(&x, a.n)?.posterior_noisy)
            }
        }
    }

    /// P(noisy) per sample of `a` under the current state, then one stepwise update with
    /// the batch.
    ///
    /// # Errors
    /// As [`Verdicter::posterior`].
    pub fn update(
        &mut self,
        features: PartitionFeatures,
        a: &Attributions,
        labels: &[u32],
    ) -> Result<Vec<f64>, PartitionError> {
        match self {
            Self::NoiseModel { noise_model, step } => {
                let post = noise_model.posterior(&noise_model.derive(), &a.probs, labels)?;
                let gamma = step.gamma(noise_model.updates);
                noise_model.update(&a.probs, labels, gamma)?;
                Ok(post)
            }
            Self::Mixture(g) => {
                let (x, _) = crate::partition::partition_features(
                    features, &a.values, a.n, a.hidden, &a.loss,
                );
                Ok(g.update(&x, a.n, &a.loss)?.posterior_noisy)
            }
        }
    }

    /// Stepwise updates since the fit (part of each verdict's `partition_state_id`).
    pub fn updates(&self) -> u64 {
        match self {
            Self::NoiseModel { noise_model, .. } => noise_model.updates,
            Self::Mixture(g) => g.updates,
        }
    }

    /// The rule's own estimate of the clean and noisy shares: the mixture's weights, or
    /// `[trace Q, 1 − trace Q]` of the noise model's calibrated joint.
    pub fn weights_clean_noisy(&self) -> [f64; 2] {
        match self {
            Self::NoiseModel { noise_model, .. } => {
                let r = noise_model.derive().joint_noise_rate();
                [1.0 - r, r]
            }
            Self::Mixture(g) => g.weights_clean_noisy(),
        }
    }

    /// The mixture's component means (clean first), for the `rlap_mixture_mean` gauges.
    pub fn mixture(&self) -> Option<&OnlineGmm> {
        match self {
            Self::Mixture(g) => Some(g),
            Self::NoiseModel { .. } => None,
        }
    }

    /// The state to carry to a new model version without a re-fit (noise model: the same
    /// statistics with a restarted step schedule); None when the rule must be re-fitted (the
    /// mixture).
    pub fn for_new_model(&self) -> Option<Self> {
        match self {
            Self::NoiseModel { noise_model, step } => {
                let mut m = noise_model.clone();
                m.updates = 0;
                Some(Self::NoiseModel {
                    noise_model: m,
                    step: *step,
                })
            }
            Self::Mixture(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` scored samples that are all the same one (a producer stuck on one message): the
    /// same attribution, loss and class probabilities, the same label.
    fn identical(n: usize, k: usize, hidden: usize) -> (Attributions, Vec<u32>) {
        let mut probs = vec![0.02f32; n * k];
        for row in probs.chunks_exact_mut(k) {
            row[3] = 1.0 - 0.02 * (k - 1) as f32;
        }
        let a = Attributions {
            n,
            hidden,
            values: vec![0.25; n * hidden],
            activations: vec![0.5; n * hidden],
            loss: vec![0.1; n],
            predicted: vec![3; n],
            probs,
        };
        (a, vec![3; n])
    }

    #[test]
    fn identical_samples_never_stop_the_warm_up() {
        let (a, labels) = identical(2000, 10, 16);
        for estimator in [
            crate::partition::Estimator::NoiseModel,
            crate::partition::Estimator::Mixture,
        ] {
            let mut cfg = DaemonConfig::default();
            cfg.scoring.estimator = estimator;
            let v = Verdicter::warm_up_or_fallback(&cfg, &a, &labels)
                .unwrap_or_else(|e| panic!("{estimator:?}: {e}"));
            let post = v
                .posterior(cfg.scoring.features, &a, &labels)
                .unwrap_or_else(|e| panic!("{estimator:?}: {e}"));
            assert!(
                post.iter()
                    .all(|p| p.is_finite() && (0.0..=1.0).contains(p)),
                "{estimator:?}"
            );
            // Agreeing, confident samples are clean.
            assert!(
                post.iter().all(|&p| p < 0.5),
                "{estimator:?}: {:?}",
                &post[..3]
            );
        }
    }
}
