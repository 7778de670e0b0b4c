//! Input-shift detection: the range of the inputs a model version trained on, and the test a
//! sample must pass to be scored by it.
//!
//! This module owns what "far outside the training inputs" means. A model version records,
//! per feature `j`, the smallest and largest value `[lo_j, hi_j]` of its training inputs
//! ([`InputRange::of`], stored in the version's metadata). A sample is *shifted* when more
//! than `max_fraction` of its features lie beyond `[lo_j − s_j, hi_j + s_j]`, with slack
//! `s_j = tolerance · max(hi_j − lo_j, mean span)` (the mean span over features keeps a
//! feature that never varied, e.g. an always-black border pixel, from refusing every sample
//! with ink there). The daemon dead-letters shifted samples (`reason = "input_shift"`) before
//! they reach the verdict rule or the replay buffer: a burst of 0–255 pixels sent to a model
//! trained on 0–1 would otherwise flip the partition and feed a cycle.

use serde::{Deserialize, Serialize};

use crate::data::Dataset;

/// Per-feature range of a model version's training inputs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct InputRange {
    /// Smallest value of each feature, `[D]`.
    pub lo: Vec<f32>,
    /// Largest value of each feature, `[D]`.
    pub hi: Vec<f32>,
    /// Mean of `hi − lo` over features (the slack's floor, in feature units).
    pub mean_span: f32,
}

/// How far outside its [`InputRange`] a sample lies.
#[derive(Clone, Debug, PartialEq)]
pub struct Outside {
    /// Features beyond their slack.
    pub count: usize,
    /// Features D.
    pub of: usize,
    /// The feature farthest beyond its range, in units of its slack, with its value.
    pub worst: Option<(usize, f32)>,
}

impl std::fmt::Display for Outside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} features lie outside the model's training range",
            self.count, self.of
        )?;
        if let Some((j, v)) = self.worst {
            write!(f, " (farthest: feature {j} = {v})")?;
        }
        Ok(())
    }
}

impl InputRange {
    /// The range of `data`'s rows. Empty data gives an empty range (which checks nothing).
    pub fn of(data: &Dataset) -> Self {
        let d = data.dim;
        let (mut lo, mut hi) = (vec![f32::INFINITY; d], vec![f32::NEG_INFINITY; d]);
        for row in data.features.chunks_exact(d.max(1)) {
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        if data.is_empty() {
            return Self {
                lo: vec![],
                hi: vec![],
                mean_span: 0.0,
            };
        }
        Self::from_bounds(lo, hi)
    }

    fn from_bounds(lo: Vec<f32>, hi: Vec<f32>) -> Self {
        let d = lo.len().max(1) as f64;
        let mean_span = (lo.iter().zip(&hi).map(|(l, h)| (h - l) as f64).sum::<f64>() / d) as f32;
        Self { lo, hi, mean_span }
    }

    /// The smallest range holding both (a cycle's model keeps its parent's range and adds
    /// what it fine-tuned on). `other` of another dimension is ignored.
    pub fn union(&self, other: &InputRange) -> InputRange {
        if other.lo.len() != self.lo.len() || self.lo.is_empty() {
            return if self.lo.is_empty() {
                other.clone()
            } else {
                self.clone()
            };
        }
        let lo = self
            .lo
            .iter()
            .zip(&other.lo)
            .map(|(a, b)| a.min(*b))
            .collect();
        let hi = self
            .hi
            .iter()
            .zip(&other.hi)
            .map(|(a, b)| a.max(*b))
            .collect();
        Self::from_bounds(lo, hi)
    }

    /// How far `features` (`[D]`) lie outside this range at `tolerance` (slack in spans).
    /// A sample of another length, or an empty range, is never outside (validation checks
    /// the length).
    pub fn outside(&self, features: &[f32], tolerance: f32) -> Outside {
        let mut out = Outside {
            count: 0,
            of: features.len(),
            worst: None,
        };
        if features.len() != self.lo.len() {
            return out;
        }
        let mut worst = 0.0f32;
        for (j, ((&x, &l), &h)) in features.iter().zip(&self.lo).zip(&self.hi).enumerate() {
            let slack = (tolerance * (h - l).max(self.mean_span)).max(f32::MIN_POSITIVE);
            let beyond = (l - slack - x).max(x - h - slack);
            if beyond > 0.0 {
                out.count += 1;
                if beyond / slack > worst {
                    worst = beyond / slack;
                    out.worst = Some((j, x));
                }
            }
        }
        out
    }

    /// Whether `features` are shifted: more than `max(1, max_fraction · D)` of them outside
    /// (one heavy-tailed feature alone never is). A degenerate range (no feature varied in
    /// training, e.g. a producer stuck on one sample) checks nothing: it would refuse every
    /// different sample for good, and those never reach a cycle that could widen it.
    pub fn shifted(&self, features: &[f32], tolerance: f32, max_fraction: f64) -> Option<Outside> {
        if self.mean_span.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return None;
        }
        let o = self.outside(features, tolerance);
        let allowed = ((max_fraction * o.of as f64).floor() as usize).max(1);
        (o.count > allowed).then_some(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mnist_range(n: usize) -> (InputRange, &'static crate::data::Split) {
        let split = crate::data::tests::mnist();
        let train = split.train.select(&(0..n).collect::<Vec<_>>());
        (InputRange::of(&train), split)
    }

    #[test]
    fn unseen_mnist_passes_and_its_0_255_copy_does_not() {
        // The range of 1,000 training images (the daemon tests' bootstrap): none of the 10,000
        // unseen test images is shifted, every one of their 0-255 copies is.
        let (r, split) = mnist_range(1000);
        assert_eq!(r.lo.len(), 784);
        let test = &split.test;
        let (mut passed, mut shifted_255) = (0, 0);
        for i in 0..test.len() {
            let x = test.row(i);
            if r.shifted(x, 1.0, 0.01).is_none() {
                passed += 1;
            }
            let scaled: Vec<f32> = x.iter().map(|v| v * 255.0).collect();
            if let Some(o) = r.shifted(&scaled, 1.0, 0.01) {
                assert!(o.to_string().contains("outside the model's training range"));
                shifted_255 += 1;
            }
        }
        assert_eq!(passed, test.len(), "no unseen test image is shifted");
        assert_eq!(shifted_255, test.len(), "every 0-255 copy is shifted");
    }

    #[test]
    fn a_constant_feature_gets_the_mean_span_as_slack() {
        let r = InputRange::from_bounds(vec![0.0, 0.0, 0.0], vec![0.0, 1.0, 1.0]);
        assert!((r.mean_span - 2.0 / 3.0).abs() < 1e-6);
        // Feature 0 never varied; 0.5 is within the mean-span slack, 2.0 is not.
        assert_eq!(r.outside(&[0.5, 0.5, 0.5], 1.0).count, 0);
        let o = r.outside(&[2.0, 0.5, 0.5], 1.0);
        assert_eq!((o.count, o.worst), (1, Some((0, 2.0))));
        // One feature outside never is a shift; two of three are more than 1 % of them.
        assert!(r.shifted(&[2.0, 0.5, 0.5], 1.0, 0.01).is_none());
        assert!(r.shifted(&[2.0, 3.0, 0.5], 1.0, 0.01).is_some());
        assert!(r.shifted(&[2.0, 3.0, 0.5], 1.0, 0.7).is_none());
    }

    #[test]
    fn a_range_from_identical_samples_checks_nothing() {
        let r = InputRange::from_bounds(vec![0.5; 4], vec![0.5; 4]);
        assert_eq!(r.mean_span, 0.0);
        assert!(r.shifted(&[9.0, 9.0, 9.0, 9.0], 1.0, 0.01).is_none());
    }

    #[test]
    fn union_widens_and_ignores_other_dimensions() {
        let a = InputRange::from_bounds(vec![0.0, 1.0], vec![1.0, 2.0]);
        let b = InputRange::from_bounds(vec![-1.0, 1.5], vec![0.5, 3.0]);
        let u = a.union(&b);
        assert_eq!((u.lo, u.hi), (vec![-1.0, 1.0], vec![1.0, 3.0]));
        let c = InputRange::from_bounds(vec![0.0], vec![1.0]);
        assert_eq!(a.union(&c), a);
    }
}
