//! The online two-component Gaussian mixture of the streaming daemon: stepwise EM
//! (Cappé & Moulines 2009; Liang & Klein 2009), method doc §3.2.2 "online".
//!
//! This module owns the mixture's sufficient statistics and their update. It is initialised
//! from a batch fit (linfa, via [`crate::partition`]'s z-score) on a warm-up window, then for
//! each mini-batch: E-step responsibilities `r_k(x)`, then
//! `s ← (1−γ)·s + γ·mean_batch(r_k·[1, x, x xᵀ, loss])`, then the M-step from `s`
//! (`w_k = s0_k / Σ s0`, `μ_k = s1_k / s0_k`, `Σ_k = s2_k / s0_k − μ_k μ_kᵀ + reg·I`).
//! The step size is `γ_t = γ0·(t + n0)^(−α)` with α ∈ (0.5, 1] (convergent) or a constant γ
//! (forgetting, for drifting streams). The clean component is re-decided after every update by
//! the label-free rule of §3.2.2 applied to the tracked responsibility-weighted mean loss
//! (`s_loss_k / s0_k`), so label switching cannot flip verdicts silently.
//!
//! Posteriors use a max-shifted log-sum-exp and Cholesky factors (nalgebra), so they are finite
//! for any finite input, unlike linfa 0.8.1's.

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_clustering::{GaussianMixtureModel, GmmInitMethod};
use nalgebra::{DMatrix, DVector};
use ndarray::Array2;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use serde::{Deserialize, Serialize};

use crate::partition::{PartitionError, ZScore};

/// Step-size schedule of stepwise EM.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepSize {
    /// `γ_t = gamma0 · (t + n0)^(−alpha)`, t = updates since the warm-up (Cappé & Moulines).
    Decaying {
        /// Scale γ0 (> 0).
        gamma0: f64,
        /// Offset n0 (≥ 0): larger starts with smaller steps.
        n0: f64,
        /// Exponent α ∈ (0.5, 1].
        alpha: f64,
    },
    /// A constant γ ∈ (0, 1]: exponential forgetting of old batches (drifting streams).
    Constant {
        /// The step γ.
        gamma: f64,
    },
}

impl StepSize {
    /// γ for update number `t` (0-based).
    pub fn gamma(&self, t: u64) -> f64 {
        self.gamma_at(t as f64)
    }

    /// γ at schedule position `t` (fractional: see [`StepSize::gamma_for_batch`]).
    pub fn gamma_at(&self, t: f64) -> f64 {
        match *self {
            StepSize::Decaying { gamma0, n0, alpha } => (gamma0 * (t + n0).powf(-alpha)).min(1.0),
            StepSize::Constant { gamma } => gamma,
        }
    }

    /// γ at schedule position `t` for a mini-batch of `n` samples when the schedule is meant
    /// for mini-batches of `nominal` samples: `1 − (1 − γ_t)^(n / nominal)`, so that a batch
    /// of one sample moves the statistics by about a `nominal`-th of a full step (a burst of
    /// single-sample batches, or one poison sample alone in a batch, cannot pull the rule as
    /// far as a whole mini-batch). The caller advances `t` by `n / nominal` (at most 1), so a
    /// slow stream of small batches follows the same schedule per sample as a fast one.
    /// `nominal` 0 means every update is a full step.
    pub fn gamma_for_batch(&self, t: f64, n: usize, nominal: usize) -> f64 {
        let g = self.gamma_at(t);
        if nominal == 0 || n >= nominal {
            return g;
        }
        1.0 - (1.0 - g).powf(n as f64 / nominal as f64)
    }

    /// Check ranges.
    ///
    /// # Errors
    /// A one-line description of the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            StepSize::Decaying { gamma0, n0, alpha } => {
                if !(gamma0 > 0.0 && gamma0.is_finite()) {
                    return Err(format!("mixture.gamma0 = {gamma0}: must be > 0"));
                }
                if !(n0 >= 0.0 && n0.is_finite()) {
                    return Err(format!("mixture.n0 = {n0}: must be >= 0"));
                }
                if !(alpha > 0.5 && alpha <= 1.0) {
                    return Err(format!(
                        "mixture.alpha = {alpha}: must be in (0.5, 1] for stepwise EM to converge"
                    ));
                }
                if gamma0 * n0.max(1.0).powf(-alpha) > 1.0 + 1e-12 && n0 >= 1.0 {
                    return Err(format!(
                        "mixture.gamma0 = {gamma0} with n0 = {n0}: the first step exceeds 1"
                    ));
                }
            }
            StepSize::Constant { gamma } => {
                if !(gamma > 0.0 && gamma <= 1.0) {
                    return Err(format!("mixture.gamma = {gamma}: must be in (0, 1]"));
                }
            }
        }
        Ok(())
    }
}

/// Default of [`OnlineGmm::min_noisy_loss`]: 1 nat, a mean probability of the given label
/// below e^−1 ≈ 0.37.
pub const DEFAULT_MIN_NOISY_LOSS: f64 = 1.0;

fn default_min_noisy_loss() -> f64 {
    DEFAULT_MIN_NOISY_LOSS
}

/// Z-scores are clipped to ±this many warm-up standard deviations before the mixture sees
/// them: one far outlier (a broken producer, a unit change) then moves the statistics by a
/// bounded step instead of dragging a component thousands of standard deviations away.
pub const Z_CLIP: f64 = 10.0;

/// Floor on each component's variance in z-scored space (warm-up standard deviations²): a
/// component fitted on near-identical samples would otherwise be so narrow that ordinary later
/// variation falls outside it and into the other component.
pub const MIN_COMPONENT_VAR: f64 = 1e-2;

/// Relative floor on the warm-up's per-feature standard deviation: at least this fraction of
/// the feature's root mean square (see [`OnlineGmm::warm_up`]).
pub const REL_STD_FLOOR: f64 = 1e-2;

/// Settings of a warm-up fit (see [`OnlineGmm::warm_up`]).
#[derive(Clone, Copy, Debug)]
pub struct WarmUpParams {
    /// Covariance regularisation added to the diagonal (z-scored units²; > 0).
    pub reg_covar: f64,
    /// Floor on the warm-up's per-feature standard deviation (feature units).
    pub min_std: f64,
    /// Step-size schedule of the updates that follow.
    pub step: StepSize,
    /// Seed of linfa's k-means initialisation.
    pub seed: u64,
}

/// The mixture's posteriors for a batch.
#[derive(Clone, Debug)]
pub struct BatchPosterior {
    /// P(noisy component | x) per sample, `[B]`.
    pub posterior_noisy: Vec<f64>,
}

/// Sufficient statistics and parameters of the online two-component mixture in `d` dimensions.
/// Serializable: it is part of the daemon's checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OnlineGmm {
    /// Dimensions d of the (z-scored) feature space.
    pub dim: usize,
    /// The warm-up z-score (mean and std per dimension), applied before the mixture.
    pub zscore_mean: Vec<f64>,
    /// See `zscore_mean`.
    pub zscore_std: Vec<f64>,
    /// `s0_k = E[r_k]` `[2]`.
    s0: [f64; 2],
    /// `s1_k = E[r_k x]` `[2][d]`.
    s1: [Vec<f64>; 2],
    /// `s2_k = E[r_k x xᵀ]` `[2][d·d]` row-major.
    s2: [Vec<f64>; 2],
    /// `E[r_k · loss]` `[2]` (the clean-component rule).
    s_loss: [f64; 2],
    /// Covariance regularisation added to the diagonal.
    pub reg_covar: f64,
    /// The noisy component must have a mean given-label cross-entropy of at least this many
    /// nats, or there is no noisy component and every posterior of noisy is 0 (see
    /// [`OnlineGmm::has_noisy_component`]).
    #[serde(default = "default_min_noisy_loss")]
    pub min_noisy_loss: f64,
    /// Step-size schedule.
    pub step: StepSize,
    /// The mini-batch size the schedule is meant for (`scoring.batch_size`); smaller batches
    /// take proportionally smaller steps ([`StepSize::gamma_for_batch`]). 0: every update is
    /// a full step (checkpoints written before this field).
    #[serde(default)]
    pub nominal_batch: usize,
    /// Position in the step schedule when `nominal_batch` > 0: advanced by
    /// `min(1, n / nominal_batch)` per update of `n` samples (else `updates` is the position).
    #[serde(default)]
    pub schedule_t: f64,
    /// Stepwise updates applied since the warm-up fit.
    pub updates: u64,
    /// Samples seen by updates since the warm-up fit.
    pub samples: u64,
}

/// Cholesky-based log-density evaluator for one component, rebuilt after each M-step.
struct Component {
    log_weight: f64,
    mean: DVector<f64>,
    chol_l: DMatrix<f64>,
    log_det: f64,
}

impl OnlineGmm {
    /// Initialise from a batch fit (linfa, k-means init, one run) on a warm-up window.
    /// `x` is `[n, d]` row-major (raw features, z-scored here); `loss` `[n]` the given-label
    /// cross-entropy used to name the clean component. `params.min_std` floors the warm-up's
    /// per-feature standard deviation (feature units; the effective floor is
    /// `max(min_std, REL_STD_FLOOR · RMS of the feature)`): a window of near-identical samples
    /// (a producer stuck on one message) would otherwise make ordinary later variation
    /// hundreds of standard deviations.
    ///
    /// # Errors
    /// [`PartitionError::Invalid`] for fewer than 4 samples or mismatched lengths;
    /// [`PartitionError::Gmm`] when linfa's EM fails (after raising `reg_covar` 100× twice).
    pub fn warm_up(
        x: &[f32],
        n: usize,
        d: usize,
        loss: &[f32],
        params: &WarmUpParams,
    ) -> Result<Self, PartitionError> {
        let WarmUpParams {
            reg_covar,
            min_std,
            step,
            seed,
        } = *params;
        if n < 4 || x.len() != n * d || loss.len() != n || d == 0 {
            return Err(PartitionError::Invalid(format!(
                "warm-up needs >= 4 samples with matching lengths: {} values, {} losses, n={n}, d={d}",
                x.len(),
                loss.len()
            )));
        }
        let mut zs = ZScore::fit(x, n, d);
        for (j, s) in zs.std.iter_mut().enumerate() {
            let rms = (x
                .chunks_exact(d)
                .map(|r| (r[j] as f64).powi(2))
                .sum::<f64>()
                / n as f64)
                .sqrt();
            *s = s.max(min_std.max(0.0)).max(REL_STD_FLOOR * rms);
        }
        let z = zs.transform(x, n).mapv(|v| v.clamp(-Z_CLIP, Z_CLIP));
        let mut reg = reg_covar;
        let gmm = loop {
            let fit = GaussianMixtureModel::params_with_rng(2, Xoshiro256Plus::seed_from_u64(seed))
                .tolerance(1e-3)
                .reg_covariance(reg)
                .max_n_iterations(100)
                .init_method(GmmInitMethod::KMeans)
                .n_runs(1)
                .fit(&DatasetBase::from(z.view()));
            match fit {
                Ok(g) => break g,
                Err(e) if reg < reg_covar.max(1e-12) * 1e4 => {
                    tracing::warn!(reg_covar = reg, error = %e, "warm-up mixture fit failed; retrying with 100x reg_covar");
                    reg = reg.max(1e-12) * 100.0;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let w = gmm.weights();
        let means = gmm.means();
        let covs = gmm.covariances();
        let mut s0 = [0.0; 2];
        let mut s1 = [vec![0.0; d], vec![0.0; d]];
        let mut s2 = [vec![0.0; d * d], vec![0.0; d * d]];
        for k in 0..2 {
            s0[k] = w[k];
            for i in 0..d {
                s1[k][i] = w[k] * means[[k, i]];
                for j in 0..d {
                    // linfa's covariances include reg on the diagonal; components() adds it.
                    let c = covs[[k, i, j]] - if i == j { reg } else { 0.0 };
                    s2[k][i * d + j] = w[k] * (c + means[[k, i]] * means[[k, j]]);
                }
            }
        }
        let mut gmm_state = OnlineGmm {
            dim: d,
            zscore_mean: zs.mean.clone(),
            // 0 for a constant dimension (it maps to 0, as in the batch partition); finite so
            // the checkpoint's JSON round-trips.
            zscore_std: zs.std.clone(),
            s0,
            s1,
            s2,
            s_loss: [0.0; 2],
            reg_covar: reg,
            min_noisy_loss: DEFAULT_MIN_NOISY_LOSS,
            step,
            nominal_batch: 0,
            schedule_t: 0.0,
            updates: 0,
            samples: 0,
        };
        // Responsibility-weighted mean loss of the warm-up window, from the fitted posteriors.
        let r = gmm_state.responsibilities(&z)?;
        let mut sl = [0.0; 2];
        for (p, &l) in r.iter().zip(loss) {
            sl[0] += p[0] * l as f64;
            sl[1] += p[1] * l as f64;
        }
        gmm_state.s_loss = [sl[0] / n as f64, sl[1] / n as f64];
        Ok(gmm_state)
    }

    fn zscore(&self, x: &[f32], n: usize) -> Array2<f64> {
        let d = self.dim;
        Array2::from_shape_fn((n, d), |(i, j)| {
            let s = self.zscore_std[j];
            if s > 1e-12 {
                ((x[i * d + j] as f64 - self.zscore_mean[j]) / s).clamp(-Z_CLIP, Z_CLIP)
            } else {
                0.0
            }
        })
    }

    fn components(&self) -> Result<[Component; 2], PartitionError> {
        let d = self.dim;
        let total = self.s0[0] + self.s0[1];
        let make = |k: usize| -> Result<Component, PartitionError> {
            let s0 = self.s0[k].max(1e-12);
            let mean = DVector::from_iterator(d, self.s1[k].iter().map(|v| v / s0));
            let mut cov =
                DMatrix::from_row_slice(d, d, &self.s2[k]) / s0 - &mean * mean.transpose();
            for i in 0..d {
                cov[(i, i)] += self.reg_covar;
                // Raising the diagonal keeps the matrix positive semi-definite.
                cov[(i, i)] = cov[(i, i)].max(MIN_COMPONENT_VAR);
            }
            // Symmetrise against rounding before factorising.
            let cov = (&cov + cov.transpose()) * 0.5;
            let chol = cov.cholesky().ok_or_else(|| {
                PartitionError::Invalid(format!(
                    "component {k}'s covariance lost positive definiteness; raise mixture.reg_covar (now {})",
                    self.reg_covar
                ))
            })?;
            let l = chol.l();
            let log_det = 2.0 * l.diagonal().iter().map(|v| v.ln()).sum::<f64>();
            Ok(Component {
                log_weight: (self.s0[k] / total).max(1e-300).ln(),
                mean,
                chol_l: l,
                log_det,
            })
        };
        Ok([make(0)?, make(1)?])
    }

    /// Responsibilities `[n][2]` of z-scored rows.
    fn responsibilities(&self, z: &Array2<f64>) -> Result<Vec<[f64; 2]>, PartitionError> {
        let comps = self.components()?;
        let d = self.dim;
        let log_2pi = (2.0 * std::f64::consts::PI).ln();
        let mut out = Vec::with_capacity(z.nrows());
        for row in z.outer_iter() {
            let x = DVector::from_iterator(d, row.iter().copied());
            let mut lp = [0.0; 2];
            for (k, c) in comps.iter().enumerate() {
                let diff = &x - &c.mean;
                let y = c
                    .chol_l
                    .solve_lower_triangular(&diff)
                    .unwrap_or_else(|| DVector::from_element(d, f64::INFINITY));
                lp[k] = c.log_weight - 0.5 * (d as f64 * log_2pi + c.log_det + y.norm_squared());
            }
            let m = lp[0].max(lp[1]);
            let (e0, e1) = ((lp[0] - m).exp(), (lp[1] - m).exp());
            let s = e0 + e1;
            out.push([e0 / s, e1 / s]);
        }
        Ok(out)
    }

    /// Index of the clean component: lower responsibility-weighted mean loss (§3.2.2 rule).
    pub fn clean_component(&self) -> usize {
        let m0 = self.s_loss[0] / self.s0[0].max(1e-12);
        let m1 = self.s_loss[1] / self.s0[1].max(1e-12);
        usize::from(m1 < m0)
    }

    /// Mean given-label cross-entropy (nats) of each component, clean component first.
    pub fn mean_loss_clean_noisy(&self) -> [f64; 2] {
        let c = self.clean_component();
        let m = |k: usize| self.s_loss[k] / self.s0[k].max(1e-12);
        [m(c), m(1 - c)]
    }

    /// Whether the higher-loss component is noise at all. A two-component mixture always
    /// splits the data, also a clean stream (into easy and less easy samples); the label-free
    /// rule of §3.2.2 only says which side is cleaner. Project decision: the noisy side counts
    /// as noisy only when its mean given-label cross-entropy reaches `min_noisy_loss` (the
    /// model gives those samples' labels < e^−1 probability on average); otherwise every
    /// posterior of noisy is 0.
    pub fn has_noisy_component(&self) -> bool {
        self.mean_loss_clean_noisy()[1] >= self.min_noisy_loss
    }

    /// Mixture weights, clean component first.
    pub fn weights_clean_noisy(&self) -> [f64; 2] {
        let c = self.clean_component();
        let t = self.s0[0] + self.s0[1];
        [self.s0[c] / t, self.s0[1 - c] / t]
    }

    /// Component means in z-scored feature space, clean component first, `[2][d]`.
    pub fn means_clean_noisy(&self) -> [Vec<f64>; 2] {
        let c = self.clean_component();
        let mean = |k: usize| -> Vec<f64> {
            self.s1[k]
                .iter()
                .map(|v| v / self.s0[k].max(1e-12))
                .collect()
        };
        [mean(c), mean(1 - c)]
    }

    /// Posteriors of `n` samples (`x` `[n, d]` raw features) without updating the mixture.
    ///
    /// # Errors
    /// [`PartitionError::Invalid`] on a length mismatch or a degenerate covariance.
    pub fn posterior(&self, x: &[f32], n: usize) -> Result<BatchPosterior, PartitionError> {
        self.check(x, n)?;
        let r = self.responsibilities(&self.zscore(x, n))?;
        Ok(BatchPosterior {
            posterior_noisy: self.noisy_posteriors(&r),
        })
    }

    fn noisy_posteriors(&self, r: &[[f64; 2]]) -> Vec<f64> {
        if !self.has_noisy_component() {
            return vec![0.0; r.len()];
        }
        let noisy = 1 - self.clean_component();
        r.iter().map(|p| p[noisy]).collect()
    }

    fn check(&self, x: &[f32], n: usize) -> Result<(), PartitionError> {
        if x.len() != n * self.dim || x.iter().any(|v| !v.is_finite()) {
            return Err(PartitionError::Invalid(format!(
                "{} values for {n} samples of {} features, or a non-finite value",
                x.len(),
                self.dim
            )));
        }
        Ok(())
    }

    /// One stepwise-EM update on a mini-batch (`x` `[n, d]` raw, `loss` `[n]`): the E-step
    /// under the current parameters (returned, so verdicts use the same posteriors), then the
    /// statistics move by γ_t towards the batch means.
    ///
    /// # Errors
    /// As [`OnlineGmm::posterior`]; on error the statistics are unchanged.
    pub fn update(
        &mut self,
        x: &[f32],
        n: usize,
        loss: &[f32],
    ) -> Result<BatchPosterior, PartitionError> {
        self.check(x, n)?;
        if n == 0 {
            return Ok(BatchPosterior {
                posterior_noisy: vec![],
            });
        }
        let z = self.zscore(x, n);
        let r = self.responsibilities(&z)?;
        let posterior_noisy = self.noisy_posteriors(&r);
        let d = self.dim;
        let t = if self.nominal_batch == 0 {
            self.updates as f64
        } else {
            self.schedule_t
        };
        let gamma = self.step.gamma_for_batch(t, n, self.nominal_batch);
        let inv_n = 1.0 / n as f64;
        let mut b0 = [0.0; 2];
        let mut b1 = [vec![0.0; d], vec![0.0; d]];
        let mut b2 = [vec![0.0; d * d], vec![0.0; d * d]];
        let mut bl = [0.0; 2];
        for ((row, p), &l) in z.outer_iter().zip(&r).zip(loss) {
            for k in 0..2 {
                let rk = p[k];
                b0[k] += rk;
                bl[k] += rk * l as f64;
                for i in 0..d {
                    b1[k][i] += rk * row[i];
                    for j in 0..d {
                        b2[k][i * d + j] += rk * row[i] * row[j];
                    }
                }
            }
        }
        let mut next = self.clone();
        for k in 0..2 {
            next.s0[k] = (1.0 - gamma) * self.s0[k] + gamma * b0[k] * inv_n;
            next.s_loss[k] = (1.0 - gamma) * self.s_loss[k] + gamma * bl[k] * inv_n;
            let blend = |old: &[f64], batch: &[f64], new: &mut [f64]| {
                for ((n, o), b) in new.iter_mut().zip(old).zip(batch) {
                    *n = (1.0 - gamma) * o + gamma * b * inv_n;
                }
            };
            blend(&self.s1[k], &b1[k], &mut next.s1[k]);
            blend(&self.s2[k], &b2[k], &mut next.s2[k]);
        }
        next.updates += 1;
        if self.nominal_batch > 0 {
            next.schedule_t += (n as f64 / self.nominal_batch as f64).min(1.0);
        }
        next.samples += n as u64;
        // Keep the previous state if the M-step would leave a degenerate covariance.
        next.components()?;
        *self = next;
        Ok(BatchPosterior { posterior_noisy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand_distr::StandardNormal;

    fn params(step: StepSize) -> WarmUpParams {
        WarmUpParams {
            reg_covar: 1e-6,
            min_std: 0.0,
            step,
            seed: 0,
        }
    }

    /// Two 2-d blobs: clean (loss low) at (0,0) weight 0.6, noisy (loss high) at (4,4).
    fn blobs(n: usize, seed: u64, shift: f32) -> (Vec<f32>, Vec<f32>, Vec<bool>) {
        let mut rng = Xoshiro256Plus::seed_from_u64(seed);
        let (mut x, mut loss, mut truth) = (vec![], vec![], vec![]);
        for _ in 0..n {
            let noisy = rng.gen::<f64>() < 0.4;
            let c = if noisy { 4.0 + shift } else { shift };
            for _ in 0..2 {
                x.push(c + rng.sample::<f32, _>(StandardNormal) * 0.7);
            }
            loss.push(if noisy { 3.0 } else { 0.1 });
            truth.push(noisy);
        }
        (x, loss, truth)
    }

    fn accuracy(p: &[f64], truth: &[bool]) -> f64 {
        p.iter()
            .zip(truth)
            .filter(|(p, t)| (**p >= 0.5) == **t)
            .count() as f64
            / truth.len() as f64
    }

    #[test]
    fn warm_up_names_the_clean_component_and_posteriors_separate_blobs() {
        let (x, loss, truth) = blobs(2000, 1, 0.0);
        let step = StepSize::Decaying {
            gamma0: 1.0,
            n0: 10.0,
            alpha: 0.6,
        };
        let g = OnlineGmm::warm_up(&x, 2000, 2, &loss, &params(step)).unwrap();
        let w = g.weights_clean_noisy();
        assert!((w[1] - 0.4).abs() < 0.05, "noisy weight {w:?}");
        let (x2, _, t2) = blobs(1000, 2, 0.0);
        let p = g.posterior(&x2, 1000).unwrap();
        assert!(accuracy(&p.posterior_noisy, &t2) > 0.98);
        assert!(accuracy(&g.posterior(&x, 2000).unwrap().posterior_noisy, &truth) > 0.98);
    }

    #[test]
    fn stepwise_updates_track_a_drifting_stream_and_stay_finite() {
        let (x, loss, _) = blobs(2000, 3, 0.0);
        let step = StepSize::Constant { gamma: 0.05 };
        let mut g = OnlineGmm::warm_up(&x, 2000, 2, &loss, &params(step)).unwrap();
        let before = g.means_clean_noisy();
        // The stream drifts by +1.5 in both dimensions; 200 batches of 64.
        for b in 0..200 {
            let (xb, lb, _) = blobs(64, 100 + b, 1.5);
            g.update(&xb, 64, &lb).unwrap();
        }
        let after = g.means_clean_noisy();
        let z_shift = 1.5 / g.zscore_std[0];
        assert!(
            (after[0][0] - before[0][0] - z_shift).abs() < 0.15 * z_shift.max(1.0),
            "clean mean moved {} -> {} (expected +{z_shift})",
            before[0][0],
            after[0][0]
        );
        let (xt, _, tt) = blobs(1000, 999, 1.5);
        let p = g.posterior(&xt, 1000).unwrap();
        assert!(p.posterior_noisy.iter().all(|v| v.is_finite()));
        assert!(accuracy(&p.posterior_noisy, &tt) > 0.97);
        // Far outliers still give finite posteriors (max-shifted log-sum-exp).
        let far = g.posterior(&[1e6, -1e6], 1).unwrap();
        assert!(far.posterior_noisy[0].is_finite());
        assert_eq!(g.updates, 200);
    }

    #[test]
    fn decaying_steps_shrink_and_bad_settings_are_named() {
        let s = StepSize::Decaying {
            gamma0: 1.0,
            n0: 2.0,
            alpha: 0.7,
        };
        assert!(s.gamma(0) > s.gamma(10) && s.gamma(10) > s.gamma(1000));
        assert!(s.validate().is_ok());
        let bad = StepSize::Decaying {
            gamma0: 1.0,
            n0: 2.0,
            alpha: 0.4,
        };
        assert!(bad.validate().unwrap_err().contains("mixture.alpha"));
        assert!(StepSize::Constant { gamma: 1.5 }.validate().is_err());
    }

    #[test]
    fn a_low_loss_split_is_not_noise() {
        // Two blobs whose "noisy" side has a mean loss of 0.3 nats: easy vs less easy clean
        // samples. Posteriors of noisy are all 0; with loss 3.0 they are not.
        let (x, mut loss, _) = blobs(1000, 5, 0.0);
        for l in loss.iter_mut() {
            *l = if *l > 1.0 { 0.3 } else { 0.05 };
        }
        let step = StepSize::Constant { gamma: 0.1 };
        let g = OnlineGmm::warm_up(&x, 1000, 2, &loss, &params(step)).unwrap();
        assert!(!g.has_noisy_component(), "{:?}", g.mean_loss_clean_noisy());
        assert!(g
            .posterior(&x, 1000)
            .unwrap()
            .posterior_noisy
            .iter()
            .all(|&p| p == 0.0));
        let (x, loss, _) = blobs(1000, 5, 0.0);
        let g = OnlineGmm::warm_up(&x, 1000, 2, &loss, &params(step)).unwrap();
        assert!(g.has_noisy_component());
    }

    #[test]
    fn rejects_non_finite_input_without_changing_state() {
        let (x, loss, _) = blobs(500, 4, 0.0);
        let mut g = OnlineGmm::warm_up(
            &x,
            500,
            2,
            &loss,
            &params(StepSize::Constant { gamma: 0.1 }),
        )
        .unwrap();
        assert!(g.update(&[f32::NAN, 0.0], 1, &[0.1]).is_err());
        assert_eq!(g.updates, 0);
    }
}
