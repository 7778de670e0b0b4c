//! Selective pruning of the target layer's neurons (§3.3).
//!
//! This module owns the neuron scores: RLAP's regression sensitivity `s_j = |β_j|` from the
//! least-squares fit of the noisy indicator on the activations `h` (with intercept, per sample;
//! the CIFAR notebook's per-class indexing bug is not reproduced), the selective-pruning
//! baselines of Pochinkov & Schoots 2024 (arXiv 2403.01267) with forget = noisy and retain =
//! clean, and a seeded random control; and the choice of the top-k neurons to prune.
//!
//! The least squares are solved by Householder QR (nalgebra) of the column-centred design
//! augmented with a tiny ridge `√λ·I` (λ = 1e-10 × mean squared column norm, reported), never
//! by the normal equations: dead neurons make the plain design rank deficient.

use std::fmt;
use std::str::FromStr;

use nalgebra::DMatrix;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

/// Errors of the pruning step.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// Bad inputs (lengths, fraction, criterion).
    #[error("invalid pruning input: {0}")]
    Invalid(String),
}

/// Neuron-ranking criterion (the `--criterion` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// RLAP: `|β_j|` of the OLS fit `1[noisy] ~ h` (§3.3).
    Rlap,
    /// `mean|z|` on noisy / on clean. (Baselines read z = h, the pre-ReLU output of `fc`, like
    /// RLAP's regression; post-ReLU values would make a silent neuron and a strongly negative
    /// one look alike.)
    Abs,
    /// `sqrt(mean z²)` on noisy / on clean.
    Rms,
    /// `mean 1[z > 0]` on noisy / on clean.
    Freq,
    /// `std(z)` on noisy / on clean.
    Std,
    /// Uniformly random neurons (control).
    Random,
}

impl FromStr for Criterion {
    type Err = PruneError;
    fn from_str(s: &str) -> Result<Self, PruneError> {
        Ok(match s {
            "rlap" => Self::Rlap,
            "abs" => Self::Abs,
            "rms" => Self::Rms,
            "freq" => Self::Freq,
            "std" => Self::Std,
            "random" => Self::Random,
            _ => {
                return Err(PruneError::Invalid(format!(
                    "unknown criterion '{s}': expected rlap | abs | rms | freq | std | random"
                )))
            }
        })
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rlap => "rlap",
            Self::Abs => "abs",
            Self::Rms => "rms",
            Self::Freq => "freq",
            Self::Std => "std",
            Self::Random => "random",
        })
    }
}

/// Default fraction of the H neurons to prune (40 of 256, 20 of 128).
pub const DEFAULT_PRUNE_FRACTION: f64 = 0.156;

/// Number of neurons to prune: `round(fraction · h)`.
///
/// # Errors
/// [`PruneError::Invalid`] for a fraction outside `[0, 1)`.
pub fn prune_count(fraction: f64, h: usize) -> Result<usize, PruneError> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(PruneError::Invalid(format!(
            "prune fraction {fraction} must lie in [0, 1)"
        )));
    }
    Ok((fraction * h as f64).round() as usize)
}

/// An OLS fit `y ≈ Xβ + b`.
#[derive(Clone, Debug, Serialize)]
pub struct OlsFit {
    /// Coefficients `[H]`.
    pub beta: Vec<f64>,
    /// Intercept b.
    pub intercept: f64,
    /// The ridge λ actually used (tiny; for numerical stability only).
    pub ridge_lambda: f64,
}

/// Least squares with intercept of `y` `[n]` on `x` `[n, h]` (row-major), §3.3:
/// centre the columns and `y` (which removes the intercept exactly), then solve
/// `min ‖X_c β − y_c‖² + λ‖β‖²` by QR of `[X_c; √λ I]`.
///
/// # Errors
/// [`PruneError::Invalid`] for mismatched lengths or too few samples.
pub fn ols_sensitivity(x: &[f32], n: usize, h: usize, y: &[f64]) -> Result<OlsFit, PruneError> {
    if x.len() != n * h || y.len() != n {
        return Err(PruneError::Invalid(format!(
            "{} activations and {} targets for {n} samples of {h} neurons",
            x.len(),
            y.len()
        )));
    }
    if n < 2 {
        return Err(PruneError::Invalid("need at least two samples".into()));
    }
    let mut mean = vec![0.0f64; h];
    for row in x.chunks_exact(h) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let y_mean = y.iter().sum::<f64>() / n as f64;
    let mut a = DMatrix::<f64>::zeros(n + h, h);
    let mut sq_norm = 0.0;
    for (i, row) in x.chunks_exact(h).enumerate() {
        for j in 0..h {
            let v = row[j] as f64 - mean[j];
            a[(i, j)] = v;
            sq_norm += v * v;
        }
    }
    let lambda = 1e-10 * (sq_norm / h as f64).max(1e-300);
    let sqrt_l = lambda.sqrt();
    for j in 0..h {
        a[(n + j, j)] = sqrt_l;
    }
    let mut b = nalgebra::DVector::<f64>::zeros(n + h);
    for i in 0..n {
        b[i] = y[i] - y_mean;
    }
    let qr = a.qr();
    let qtb = qr.q().transpose() * &b;
    let r = qr.r();
    let beta = r
        .solve_upper_triangular(&qtb)
        .ok_or_else(|| PruneError::Invalid("singular system despite the ridge".into()))?;
    let beta: Vec<f64> = beta.iter().copied().collect();
    let intercept = y_mean - beta.iter().zip(&mean).map(|(b, m)| b * m).sum::<f64>();
    Ok(OlsFit {
        beta,
        intercept,
        ridge_lambda: lambda,
    })
}

/// Per-neuron pruning scores, and the ridge λ when the criterion solved least squares.
#[derive(Clone, Debug, Serialize)]
pub struct NeuronScores {
    /// One score per neuron `[H]`; higher = prune first.
    pub scores: Vec<f64>,
    /// The tiny ridge λ of the OLS solve ([`Criterion::Rlap`] only).
    pub ridge_lambda: Option<f64>,
}

/// Per-neuron pruning scores `[H]` (higher = prune first) from the activations `h` `[n, H]`
/// and the partition's `noisy` flags `[n]`.
///
/// # Errors
/// [`PruneError::Invalid`] for mismatched lengths, or when one side of the partition is empty
/// (`random` excepted): a constant indicator makes every neuron equally (in)sensitive.
pub fn neuron_scores(
    criterion: Criterion,
    activations: &[f32],
    n: usize,
    h: usize,
    noisy: &[bool],
    seed: u64,
) -> Result<NeuronScores, PruneError> {
    if activations.len() != n * h || noisy.len() != n {
        return Err(PruneError::Invalid(format!(
            "{} activations and {} flags for {n} samples of {h} neurons",
            activations.len(),
            noisy.len()
        )));
    }
    let one_sided = noisy.iter().all(|&b| b) || noisy.iter().all(|&b| !b);
    if one_sided && criterion != Criterion::Random {
        return Err(PruneError::Invalid(
            "the partition has an empty side (all samples clean or all noisy): no neuron can be ranked by it".into(),
        ));
    }
    let scores = match criterion {
        Criterion::Rlap => {
            let y: Vec<f64> = noisy.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
            let fit = ols_sensitivity(activations, n, h, &y)?;
            return Ok(NeuronScores {
                scores: fit.beta.iter().map(|b| b.abs()).collect(),
                ridge_lambda: Some(fit.ridge_lambda),
            });
        }
        Criterion::Random => {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut order: Vec<usize> = (0..h).collect();
            order.shuffle(&mut rng);
            let mut s = vec![0.0; h];
            for (rank, &j) in order.iter().enumerate() {
                s[j] = (h - rank) as f64;
            }
            s
        }
        _ => {
            let forget = activation_stat(criterion, activations, h, noisy, true);
            let retain = activation_stat(criterion, activations, h, noisy, false);
            forget
                .iter()
                .zip(&retain)
                .map(|(f, r)| f / (r + 1e-8))
                .collect()
        }
    };
    Ok(NeuronScores {
        scores,
        ridge_lambda: None,
    })
}

/// `I(D, j)` over the samples whose noisy flag equals `side`.
fn activation_stat(c: Criterion, x: &[f32], h: usize, noisy: &[bool], side: bool) -> Vec<f64> {
    let mut s1 = vec![0.0f64; h];
    let mut s2 = vec![0.0f64; h];
    let mut m = 0usize;
    for (row, _) in x.chunks_exact(h).zip(noisy).filter(|(_, &f)| f == side) {
        m += 1;
        for j in 0..h {
            let z = row[j] as f64;
            match c {
                Criterion::Abs => s1[j] += z.abs(),
                Criterion::Rms => s1[j] += z * z,
                Criterion::Freq => s1[j] += (z > 0.0) as u8 as f64,
                _ => {
                    s1[j] += z;
                    s2[j] += z * z;
                }
            }
        }
    }
    let mf = m.max(1) as f64;
    (0..h)
        .map(|j| match c {
            Criterion::Rms => (s1[j] / mf).sqrt(),
            Criterion::Std => {
                let mu = s1[j] / mf;
                (s2[j] / mf - mu * mu).max(0.0).sqrt()
            }
            _ => s1[j] / mf,
        })
        .collect()
}

/// The `k` highest-scoring neurons, ties broken by lower index; returned ascending.
pub fn select_top(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut top: Vec<usize> = order.into_iter().take(k).collect();
    top.sort_unstable();
    top
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand_distr::StandardNormal;

    #[test]
    fn ols_recovers_a_constructed_linear_model() {
        // y = 0.7 + 2 x0 - 3 x2 + 0 x1, plus a dead (all-zero) column x3 and an exact copy
        // (collinear) would break normal equations; the ridge keeps it solvable.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let (n, h) = (500, 4);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let r: [f32; 3] = [
                rng.sample(StandardNormal),
                rng.sample(StandardNormal),
                rng.sample(StandardNormal),
            ];
            x.extend_from_slice(&[r[0], r[1], r[2], 0.0]);
            y.push(0.7 + 2.0 * r[0] as f64 - 3.0 * r[2] as f64);
        }
        let fit = ols_sensitivity(&x, n, h, &y).unwrap();
        let want = [2.0, 0.0, -3.0, 0.0];
        for (j, (b, w)) in fit.beta.iter().zip(want).enumerate() {
            assert!((b - w).abs() < 1e-6, "beta[{j}] = {b}");
        }
        assert!((fit.intercept - 0.7).abs() < 1e-6);
        assert!(fit.ridge_lambda > 0.0 && fit.ridge_lambda < 1e-6);
        assert!(neuron_scores(Criterion::Rlap, &x, n, h, &vec![false; n], 0).is_err());
    }

    #[test]
    fn top_k_and_count() {
        assert_eq!(prune_count(0.156, 256).unwrap(), 40);
        assert_eq!(prune_count(0.156, 128).unwrap(), 20);
        assert!(prune_count(1.0, 8).is_err());
        assert_eq!(select_top(&[0.1, 0.9, 0.5, 0.9], 2), vec![1, 3]);
    }

    #[test]
    fn baselines_rank_the_neuron_that_fires_on_noisy_samples() {
        let (n, h) = (200, 3);
        let mut x = Vec::new();
        let noisy: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        for &f in &noisy {
            // neuron 1 is active only on noisy samples; 0 and 2 alike on both sides.
            x.extend_from_slice(&[1.0, if f { 2.0 } else { -0.5 }, 0.5]);
        }
        for c in [
            Criterion::Abs,
            Criterion::Rms,
            Criterion::Freq,
            Criterion::Rlap,
        ] {
            let s = neuron_scores(c, &x, n, h, &noisy, 0).unwrap().scores;
            assert_eq!(select_top(&s, 1), vec![1], "{c}: {s:?}");
        }
        let r = neuron_scores(Criterion::Random, &x, n, h, &noisy, 4)
            .unwrap()
            .scores;
        assert_eq!(select_top(&r, 3), vec![0, 1, 2]);
        assert!(neuron_scores(Criterion::Abs, &x, n, h, &vec![true; n], 0).is_err());
    }

    #[test]
    fn std_criterion_matches_direct_computation() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let x: Vec<f32> = (0..40).map(|_| rng.gen()).collect();
        let noisy: Vec<bool> = (0..20).map(|i| i < 8).collect();
        let s = neuron_scores(Criterion::Std, &x, 20, 2, &noisy, 0)
            .unwrap()
            .scores;
        let sd = |v: Vec<f64>| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let f0 = sd((0..8).map(|i| x[i * 2] as f64).collect());
        let r0 = sd((8..20).map(|i| x[i * 2] as f64).collect());
        assert!((s[0] - f0 / (r0 + 1e-8)).abs() < 1e-9);
    }
}
