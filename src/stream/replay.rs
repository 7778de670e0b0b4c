//! The replay buffer: a bounded, class-balanced, recency-biased sample of the stream that
//! cycles fine-tune and regress on.
//!
//! This module owns the buffer and its memory cap. Each given class has its own reservoir of
//! `capacity / K` slots; once a reservoir is full, a new sample replaces a uniformly chosen
//! old one (biased reservoir sampling, Aggarwal 2006, with bias 1/capacity), so the expected
//! age of a kept sample is about its reservoir's size: recent data dominate, old data fade.
//! The capacity is fixed at construction from `max_bytes`, so memory never grows with the
//! stream.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256Plus;

use crate::data::Dataset;

/// Bytes one stored sample costs: its features (f32) plus bookkeeping.
pub fn bytes_per_sample(num_features: usize) -> usize {
    num_features * std::mem::size_of::<f32>() + 48
}

/// A bounded class-balanced reservoir of recent samples (features `[D]`, given label and the
/// posterior of noisy its verdict carried).
#[derive(Debug)]
pub struct ReplayBuffer {
    num_features: usize,
    per_class: usize,
    /// Per class: flat features `[len, D]`, sequence numbers and verdict posteriors.
    features: Vec<Vec<f32>>,
    seq: Vec<Vec<u64>>,
    posterior: Vec<Vec<f32>>,
    seen: u64,
    rng: Xoshiro256Plus,
}

impl ReplayBuffer {
    /// Slots per class of a buffer of at most `capacity` samples in all and at most
    /// `max_bytes` of memory, split evenly over `num_classes` classes (no allocation: the
    /// configuration check uses it).
    ///
    /// # Errors
    /// A one-line message naming `replay.capacity` and `replay.max_mib` when the cap leaves
    /// less than one slot per class.
    pub fn slots_per_class(
        capacity: usize,
        max_bytes: usize,
        num_features: usize,
        num_classes: usize,
    ) -> Result<usize, String> {
        let by_bytes = max_bytes / bytes_per_sample(num_features);
        let per_class = capacity.min(by_bytes) / num_classes.max(1);
        if per_class == 0 {
            let need = num_classes * bytes_per_sample(num_features);
            return Err(format!(
                "replay.capacity = {capacity} and replay.max_mib = {} leave no slot per class \
                 ({num_classes} classes of {num_features} features need >= {need} bytes)",
                max_bytes >> 20
            ));
        }
        Ok(per_class)
    }

    /// A buffer of at most `capacity` samples in all and at most `max_bytes` of memory,
    /// split evenly over `num_classes` classes.
    ///
    /// # Errors
    /// See [`Self::slots_per_class`].
    pub fn new(
        capacity: usize,
        max_bytes: usize,
        num_features: usize,
        num_classes: usize,
        seed: u64,
    ) -> Result<Self, String> {
        let per_class = Self::slots_per_class(capacity, max_bytes, num_features, num_classes)?;
        Ok(Self {
            num_features,
            per_class,
            features: vec![Vec::new(); num_classes],
            seq: vec![Vec::new(); num_classes],
            posterior: vec![Vec::new(); num_classes],
            seen: 0,
            rng: Xoshiro256Plus::seed_from_u64(seed),
        })
    }

    /// Slots per class.
    pub fn per_class_capacity(&self) -> usize {
        self.per_class
    }

    /// Samples held now.
    pub fn len(&self) -> usize {
        self.seq.iter().map(Vec::len).sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples offered so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Bytes of feature storage reserved at most (the enforced cap).
    pub fn max_bytes(&self) -> usize {
        self.per_class * self.features.len() * bytes_per_sample(self.num_features)
    }

    /// Offer one sample (`features` `[D]`, given `label` < K, the `posterior_noisy` in [0, 1]
    /// of its verdict). Samples with an out-of-range label or the wrong length are ignored
    /// (the source validates them first).
    pub fn offer(&mut self, features: &[f32], label: u32, posterior_noisy: f32) {
        let c = label as usize;
        if c >= self.seq.len() || features.len() != self.num_features {
            return;
        }
        self.seen += 1;
        let d = self.num_features;
        if self.seq[c].len() < self.per_class {
            self.features[c].extend_from_slice(features);
            self.seq[c].push(self.seen);
            self.posterior[c].push(posterior_noisy);
        } else {
            let slot = self.rng.gen_range(0..self.per_class);
            self.features[c][slot * d..(slot + 1) * d].copy_from_slice(features);
            self.seq[c][slot] = self.seen;
            self.posterior[c][slot] = posterior_noisy;
        }
    }

    /// A copy of the buffer as a [`Dataset`] (rows ordered by arrival), for a cycle;
    /// `image_shape` is the model input's `(channels, height, width)` if it is an image.
    pub fn snapshot(&self, image_shape: Option<(usize, usize, usize)>) -> Dataset {
        self.snapshot_with_seq(image_shape).data
    }

    /// [`Self::snapshot`] plus each row's arrival number and verdict posterior, in the same
    /// order.
    pub fn snapshot_with_seq(&self, image_shape: Option<(usize, usize, usize)>) -> Snapshot {
        let mut rows: Vec<(u64, usize, usize)> = vec![];
        for (c, s) in self.seq.iter().enumerate() {
            rows.extend(s.iter().enumerate().map(|(i, &q)| (q, c, i)));
        }
        rows.sort_unstable();
        let d = self.num_features;
        let mut features = Vec::with_capacity(rows.len() * d);
        let mut labels = Vec::with_capacity(rows.len());
        let mut posterior_noisy = Vec::with_capacity(rows.len());
        for &(_, c, i) in &rows {
            features.extend_from_slice(&self.features[c][i * d..(i + 1) * d]);
            labels.push(c as u32);
            posterior_noisy.push(f64::from(self.posterior[c][i]));
        }
        let data = Dataset {
            name: "replay".into(),
            features,
            labels,
            dim: d,
            num_classes: self.seq.len(),
            image_shape,
        };
        Snapshot {
            data,
            seq: rows.iter().map(|r| r.0).collect(),
            posterior_noisy,
        }
    }
}

/// A copy of the replay buffer, rows ordered by arrival.
#[derive(Debug)]
pub struct Snapshot {
    /// The samples (`[N, D]` features, given labels).
    pub data: Dataset,
    /// Each row's arrival number: 1 for the first sample offered, increasing;
    /// [`ReplayBuffer::seen`] is the newest's.
    pub seq: Vec<u64>,
    /// Each row's posterior of noisy when its verdict went out. That verdict came from a model
    /// that had not trained on the row (the daemon's invariant), so unlike a re-score by the
    /// current model, which may have fine-tuned on it, it does not call memorised noisy
    /// labels clean.
    pub posterior_noisy: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_capped_by_bytes_and_balanced_per_class() {
        let cap = 10 * bytes_per_sample(4) * 3;
        let mut b = ReplayBuffer::new(1000, cap, 4, 10, 1).unwrap();
        assert_eq!(b.per_class_capacity(), 3);
        for i in 0..1000u32 {
            // Class 0 is 10× as frequent as the others.
            let label = if i % 2 == 0 { 0 } else { (i / 2) % 10 };
            b.offer(&[i as f32; 4], label, 0.0);
        }
        assert_eq!(b.len(), 30);
        let s = b.snapshot(None);
        assert!(s.class_counts().iter().all(|&c| c == 3));
        assert!(b.max_bytes() <= cap);
        assert!(ReplayBuffer::new(5, 1 << 20, 4, 10, 1).is_err());
    }

    #[test]
    fn recent_samples_dominate() {
        let mut b = ReplayBuffer::new(100, usize::MAX, 1, 1, 7).unwrap();
        for i in 0..10_000u32 {
            b.offer(&[i as f32], 0, i as f32 / 10_000.0);
        }
        let s = b.snapshot(None);
        let recent = s.features.iter().filter(|&&v| v >= 9_000.0).count();
        assert!(
            recent > 50,
            "{recent} of 100 from the last 10 % of the stream"
        );
        // Ordered by arrival.
        assert!(s.features.windows(2).all(|w| w[0] < w[1]));
        let snap = b.snapshot_with_seq(None);
        let (s2, seq) = (&snap.data, &snap.seq);
        assert_eq!(s2.features, s.features);
        // Each row keeps the posterior it was offered with.
        assert!(s2
            .features
            .iter()
            .zip(&snap.posterior_noisy)
            .all(|(f, p)| (*f as f64 / 10_000.0 - p).abs() < 1e-6));
        // Sample i (0-based) was the (i + 1)-th offered.
        assert!(s2
            .features
            .iter()
            .zip(seq)
            .all(|(f, q)| *f as u64 + 1 == *q));
    }
}
