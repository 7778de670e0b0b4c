//! Seeded corruption of a training split: Gaussian input noise (the paper's "noise level" and
//! "attacked rate") and three label-noise models (symmetric, pair, transition matrix).
//!
//! This module owns turning a clean [`Dataset`] into the noisy set the algorithm sees plus the
//! [`GroundTruth`] that only [`crate::evaluation`] may read. The test split is never corrupted.
//! Source: `shared/docs/rlap-method.md`, "Corruption used in the experiments".

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::Rng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::data::Dataset;
use crate::evaluation::GroundTruth;

/// Errors in a corruption specification or its transition matrix.
#[derive(Debug, thiserror::Error)]
pub enum CorruptionError {
    /// The `--corruption` text is not understood.
    #[error("bad corruption '{0}': expected none | input-gaussian:SIGMA:RATE | label-symmetric:RATE | label-pair:RATE | label-matrix:PATH")]
    BadSpec(String),
    /// A rate outside `[0, 1]` or a negative sigma.
    #[error("bad corruption '{spec}': {reason}")]
    BadValue { spec: String, reason: String },
    /// The transition matrix file could not be read.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// The underlying I/O error (part of the message, not a separate cause).
        error: std::io::Error,
    },
    /// The transition matrix is malformed.
    #[error("{path}: {reason}")]
    BadMatrix { path: PathBuf, reason: String },
}

/// How the training split is corrupted (the `--corruption` option).
#[derive(Clone, Debug, PartialEq)]
pub enum Corruption {
    /// No corruption (the ground-truth mask is all false).
    None,
    /// `x' = clamp(x + sigma·N(0, I), 0, 1)` on a random fraction `rate` of the samples; labels
    /// kept. Drawn once per sample (seeded); the notebooks redraw on every read.
    InputGaussian { sigma: f32, rate: f64 },
    /// With probability `rate`, the label is replaced by a uniformly drawn *other* class.
    LabelSymmetric { rate: f64 },
    /// With probability `rate`, class c becomes (c + 1) mod K.
    LabelPair { rate: f64 },
    /// Class c becomes class c' with probability `T[c][c']` (K×K CSV, rows sum to 1).
    LabelMatrix { path: PathBuf },
}

fn parse_rate(spec: &str, s: &str) -> Result<f64, CorruptionError> {
    let bad = |reason: String| CorruptionError::BadValue {
        spec: spec.into(),
        reason,
    };
    let r: f64 = s
        .parse()
        .map_err(|_| bad(format!("rate '{s}' is not a number")))?;
    if !(0.0..=1.0).contains(&r) {
        return Err(bad(format!("rate {r} is outside [0, 1]")));
    }
    Ok(r)
}

impl FromStr for Corruption {
    type Err = CorruptionError;
    fn from_str(s: &str) -> Result<Self, CorruptionError> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["none"] => Ok(Self::None),
            ["input-gaussian", sigma, rate] => {
                let sigma: f32 = sigma.parse().map_err(|_| CorruptionError::BadValue {
                    spec: s.into(),
                    reason: format!("sigma '{sigma}' is not a number"),
                })?;
                if !(sigma >= 0.0 && sigma.is_finite()) {
                    return Err(CorruptionError::BadValue {
                        spec: s.into(),
                        reason: "sigma must be finite and >= 0".into(),
                    });
                }
                Ok(Self::InputGaussian {
                    sigma,
                    rate: parse_rate(s, rate)?,
                })
            }
            ["label-symmetric", rate] => Ok(Self::LabelSymmetric {
                rate: parse_rate(s, rate)?,
            }),
            ["label-pair", rate] => Ok(Self::LabelPair {
                rate: parse_rate(s, rate)?,
            }),
            ["label-matrix", ..] if s.len() > "label-matrix:".len() => Ok(Self::LabelMatrix {
                path: s["label-matrix:".len()..].into(),
            }),
            _ => Err(CorruptionError::BadSpec(s.into())),
        }
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(f, "none"),
            Self::InputGaussian { sigma, rate } => write!(f, "input-gaussian:{sigma}:{rate}"),
            Self::LabelSymmetric { rate } => write!(f, "label-symmetric:{rate}"),
            Self::LabelPair { rate } => write!(f, "label-pair:{rate}"),
            Self::LabelMatrix { path } => write!(f, "label-matrix:{}", path.display()),
        }
    }
}

impl Corruption {
    /// The same kind of corruption at another rate (for sweeps). `None` and matrices are
    /// returned unchanged.
    pub fn with_rate(&self, rate: f64) -> Corruption {
        match self {
            Self::InputGaussian { sigma, .. } => Self::InputGaussian {
                sigma: *sigma,
                rate,
            },
            Self::LabelSymmetric { .. } => Self::LabelSymmetric { rate },
            Self::LabelPair { .. } => Self::LabelPair { rate },
            other => other.clone(),
        }
    }

    /// True for the label-noise kinds (the given label may differ from the true one).
    pub fn is_label_noise(&self) -> bool {
        matches!(
            self,
            Self::LabelSymmetric { .. } | Self::LabelPair { .. } | Self::LabelMatrix { .. }
        )
    }
}

/// Read and validate a K×K transition matrix: CSV of non-negative numbers, each row summing to
/// 1 within 1e-6.
///
/// # Errors
/// [`CorruptionError::Io`] or [`CorruptionError::BadMatrix`] naming the row.
pub fn read_transition_matrix(path: &Path, k: usize) -> Result<Vec<Vec<f64>>, CorruptionError> {
    let text = std::fs::read_to_string(path).map_err(|source| CorruptionError::Io {
        path: path.into(),
        error: source,
    })?;
    let bad = |reason: String| CorruptionError::BadMatrix {
        path: path.into(),
        reason,
    };
    let mut rows = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let row = line
            .split(',')
            .map(|c| c.trim().parse::<f64>())
            .collect::<Result<Vec<f64>, _>>()
            .map_err(|_| bad(format!("row {}: not a list of numbers", i + 1)))?;
        if row.len() != k {
            return Err(bad(format!(
                "row {}: {} entries, expected K = {k}",
                i + 1,
                row.len()
            )));
        }
        if row.iter().any(|&p| !(0.0..=1.0).contains(&p)) {
            return Err(bad(format!("row {}: entries must lie in [0, 1]", i + 1)));
        }
        let sum: f64 = row.iter().sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(bad(format!("row {}: sums to {sum}, expected 1", i + 1)));
        }
        rows.push(row);
    }
    if rows.len() != k {
        return Err(bad(format!("{} rows, expected K = {k}", rows.len())));
    }
    Ok(rows)
}

/// Corrupt `clean` (a training split) as `spec` says, seeded by `seed`.
///
/// Returns the noisy set the algorithm sees and the [`GroundTruth`] (the original set and the
/// "was corrupted" mask), which only [`crate::evaluation`] can read. For label noise a sample
/// counts as corrupted when its label actually changed.
///
/// # Errors
/// [`CorruptionError`] for an unreadable or invalid transition matrix.
pub fn corrupt(
    clean: &Dataset,
    spec: &Corruption,
    seed: u64,
) -> Result<(Dataset, GroundTruth), CorruptionError> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xC0_88_0E_D0);
    let mut noisy = clean.clone();
    let k = clean.num_classes;
    let n = clean.len();
    let mut mask = vec![false; n];
    match spec {
        Corruption::None => {}
        Corruption::InputGaussian { sigma, rate } => {
            for (i, m) in mask.iter_mut().enumerate() {
                if rng.gen_bool(*rate) {
                    *m = true;
                    for v in &mut noisy.features[i * clean.dim..(i + 1) * clean.dim] {
                        let z: f32 = StandardNormal.sample(&mut rng);
                        *v = (*v + sigma * z).clamp(0.0, 1.0);
                    }
                }
            }
        }
        Corruption::LabelSymmetric { rate } => {
            for (i, y) in noisy.labels.iter_mut().enumerate() {
                if k > 1 && rng.gen_bool(*rate) {
                    let other = rng.gen_range(0..k as u32 - 1);
                    *y = if other >= *y { other + 1 } else { other };
                    mask[i] = true;
                }
            }
        }
        Corruption::LabelPair { rate } => {
            for (i, y) in noisy.labels.iter_mut().enumerate() {
                if k > 1 && rng.gen_bool(*rate) {
                    *y = (*y + 1) % k as u32;
                    mask[i] = true;
                }
            }
        }
        Corruption::LabelMatrix { path } => {
            let t = read_transition_matrix(path, k)?;
            for (i, y) in noisy.labels.iter_mut().enumerate() {
                let u: f64 = rng.gen();
                let row = &t[*y as usize];
                let mut acc = 0.0;
                let mut new = *y;
                for (c, &p) in row.iter().enumerate() {
                    acc += p;
                    if u < acc {
                        new = c as u32;
                        break;
                    }
                }
                mask[i] = new != *y;
                *y = new;
            }
        }
    }
    let truth = GroundTruth::new(clean.clone(), mask);
    Ok((noisy, truth))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::mnist;

    fn slice() -> Dataset {
        let m = &mnist().train;
        m.select(&m.stratified_indices(4000, 3))
    }

    #[test]
    fn symmetric_label_noise_hits_the_rate_and_never_keeps_the_label() {
        let d = slice();
        let (noisy, truth) = corrupt(&d, &"label-symmetric:0.4".parse().unwrap(), 1).unwrap();
        let rate = truth.true_noise_rate();
        assert!((rate - 0.4).abs() < 0.03, "rate {rate}");
        for i in 0..d.len() {
            assert_eq!(noisy.labels[i] != d.labels[i], truth.is_corrupted(i));
        }
        assert_eq!(noisy.features, d.features, "inputs untouched");
    }

    #[test]
    fn pair_noise_maps_to_next_class() {
        let d = slice();
        let (noisy, truth) = corrupt(&d, &"label-pair:0.3".parse().unwrap(), 2).unwrap();
        for i in (0..d.len()).filter(|&i| truth.is_corrupted(i)) {
            assert_eq!(noisy.labels[i], (d.labels[i] + 1) % 10);
        }
    }

    #[test]
    fn gaussian_input_noise_keeps_labels_and_range() {
        let d = slice();
        let (noisy, truth) = corrupt(&d, &"input-gaussian:4.5:0.5".parse().unwrap(), 3).unwrap();
        assert_eq!(noisy.labels, d.labels);
        assert!(noisy.features.iter().all(|v| (0.0..=1.0).contains(v)));
        let i = (0..d.len()).find(|&i| truth.is_corrupted(i)).unwrap();
        assert_ne!(noisy.row(i), d.row(i));
        let j = (0..d.len()).find(|&i| !truth.is_corrupted(i)).unwrap();
        assert_eq!(noisy.row(j), d.row(j));
    }

    #[test]
    fn corruption_is_seeded() {
        let d = slice();
        let c: Corruption = "label-symmetric:0.2".parse().unwrap();
        assert_eq!(
            corrupt(&d, &c, 9).unwrap().0.labels,
            corrupt(&d, &c, 9).unwrap().0.labels
        );
        assert_ne!(
            corrupt(&d, &c, 9).unwrap().0.labels,
            corrupt(&d, &c, 10).unwrap().0.labels
        );
    }

    #[test]
    fn matrix_is_validated_and_applied() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let mut rows = String::new();
        for c in 0..10 {
            let row: Vec<String> = (0..10)
                .map(|j| {
                    if j == (c + 2) % 10 {
                        "1".into()
                    } else {
                        "0".into()
                    }
                })
                .collect();
            rows.push_str(&row.join(","));
            rows.push('\n');
        }
        std::fs::write(&p, &rows).unwrap();
        let d = slice();
        let spec = Corruption::LabelMatrix { path: p.clone() };
        let (noisy, truth) = corrupt(&d, &spec, 1).unwrap();
        assert!(noisy
            .labels
            .iter()
            .zip(&d.labels)
            .all(|(a, b)| *a == (b + 2) % 10));
        assert!((truth.true_noise_rate() - 1.0).abs() < 1e-12);
        std::fs::write(&p, "0.5,0.4\n0,1\n").unwrap();
        let e = read_transition_matrix(&p, 2).unwrap_err();
        assert!(e.to_string().contains("row 1: sums to 0.9"), "{e}");
    }

    #[test]
    fn bad_specs_are_one_clear_error() {
        assert!("label-symmetric:1.5"
            .parse::<Corruption>()
            .unwrap_err()
            .to_string()
            .contains("outside [0, 1]"));
        assert!("salt:0.1".parse::<Corruption>().is_err());
        assert!("input-gaussian:x:0.5".parse::<Corruption>().is_err());
    }
}
