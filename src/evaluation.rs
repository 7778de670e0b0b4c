//! Evaluation: classification metrics (accuracy, macro precision/recall/F1), the partition's
//! quality against the hidden corruption mask (precision, recall, F1, AUROC of "noisy"), and
//! the [`GroundTruth`] type itself.
//!
//! Architecture invariant: [`GroundTruth`] is only readable here. Its fields are private and
//! its accessors serve evaluation (and the Oracle upper bound); no decision of the algorithm
//! (attribution, partition, pruning, fine-tuning) takes a `GroundTruth`.

use serde::Serialize;

use crate::data::Dataset;

/// The hidden truth about a corrupted training split: the original (clean) set and, per
/// sample, whether it was corrupted. Built by [`crate::corruption::corrupt`].
#[derive(Clone, Debug)]
pub struct GroundTruth {
    clean: Dataset,
    corrupted: Vec<bool>,
}

impl GroundTruth {
    pub(crate) fn new(clean: Dataset, corrupted: Vec<bool>) -> Self {
        Self { clean, corrupted }
    }

    /// Whether sample `i` was corrupted.
    pub fn is_corrupted(&self, i: usize) -> bool {
        self.corrupted[i]
    }

    /// The true label of sample `i` (before label noise).
    pub fn true_label(&self, i: usize) -> u32 {
        self.clean.labels[i]
    }

    /// Fraction of corrupted samples.
    pub fn true_noise_rate(&self) -> f64 {
        self.corrupted.iter().filter(|&&c| c).count() as f64 / self.corrupted.len().max(1) as f64
    }

    /// The uncorrupted training set, for the evaluation-only Oracle upper bound.
    pub fn oracle_train_set(&self) -> &Dataset {
        &self.clean
    }

    /// Restrict to the samples `indices` (same order), e.g. after a stratified subsample.
    pub fn select(&self, indices: &[usize]) -> GroundTruth {
        GroundTruth {
            clean: self.clean.select(indices),
            corrupted: indices.iter().map(|&i| self.corrupted[i]).collect(),
        }
    }

    /// Score a partition's per-sample `posterior_noisy` and hard `predicted_noisy` flags
    /// against the hidden mask.
    ///
    /// # Panics
    /// If the slices' lengths differ from the number of samples (a programming error).
    pub fn detection_report(
        &self,
        posterior_noisy: &[f64],
        predicted_noisy: &[bool],
    ) -> DetectionReport {
        assert_eq!(posterior_noisy.len(), self.corrupted.len());
        assert_eq!(predicted_noisy.len(), self.corrupted.len());
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for (&p, &t) in predicted_noisy.iter().zip(&self.corrupted) {
            match (p, t) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        DetectionReport {
            precision,
            recall,
            f1: f1(precision, recall),
            auroc: auroc(posterior_noisy, &self.corrupted),
            estimated_noise_rate: predicted_noisy.iter().filter(|&&p| p).count() as f64
                / predicted_noisy.len().max(1) as f64,
            true_noise_rate: self.true_noise_rate(),
        }
    }
}

/// How well a partition found the corrupted samples (positive class = "noisy").
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DetectionReport {
    /// TP / (TP + FP).
    pub precision: f64,
    /// TP / (TP + FN).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Area under the ROC curve of `posterior_noisy` (ties count one half).
    pub auroc: f64,
    /// Fraction of samples predicted noisy.
    pub estimated_noise_rate: f64,
    /// Fraction of samples actually corrupted.
    pub true_noise_rate: f64,
}

/// Classification quality on a labelled set (the paper's Table columns).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassificationReport {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Unweighted mean over classes of per-class precision (a class never predicted counts 0).
    pub macro_precision: f64,
    /// Unweighted mean over classes of per-class recall.
    pub macro_recall: f64,
    /// Unweighted mean over classes of per-class F1.
    pub macro_f1: f64,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn f1(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

/// Accuracy and macro precision/recall/F1 of `predicted` against `truth` over `k` classes.
pub fn classification_report(predicted: &[u32], truth: &[u32], k: usize) -> ClassificationReport {
    let mut tp = vec![0usize; k];
    let mut pred_n = vec![0usize; k];
    let mut true_n = vec![0usize; k];
    for (&p, &t) in predicted.iter().zip(truth) {
        pred_n[p as usize] += 1;
        true_n[t as usize] += 1;
        if p == t {
            tp[p as usize] += 1;
        }
    }
    let present: Vec<usize> = (0..k).filter(|&c| true_n[c] > 0 || pred_n[c] > 0).collect();
    let m = present.len().max(1) as f64;
    let (mut sp, mut sr, mut sf) = (0.0, 0.0, 0.0);
    for &c in &present {
        let p = ratio(tp[c], pred_n[c]);
        let r = ratio(tp[c], true_n[c]);
        sp += p;
        sr += r;
        sf += f1(p, r);
    }
    ClassificationReport {
        accuracy: ratio(tp.iter().sum(), truth.len()),
        macro_precision: sp / m,
        macro_recall: sr / m,
        macro_f1: sf / m,
    }
}

/// Area under the ROC curve of `scores` for the positives `positive` (Mann–Whitney U with
/// average ranks for ties). 0.5 when one class is absent.
pub fn auroc(scores: &[f64], positive: &[bool]) -> f64 {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            if positive[o] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = n as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return 0.5;
    }
    (rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_metrics_on_a_hand_example() {
        // classes 0,1,2; predictions: 0→0, 0→1, 1→1, 2→2, 2→1
        let r = classification_report(&[0, 1, 1, 2, 1], &[0, 0, 1, 2, 2], 3);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        // precision: c0 1/1, c1 1/3, c2 1/1 ; recall: c0 1/2, c1 1/1, c2 1/2
        assert!((r.macro_precision - (1.0 + 1.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!((r.macro_recall - (0.5 + 1.0 + 0.5) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn auroc_perfect_random_and_ties() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            1.0
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            0.0
        );
        assert_eq!(auroc(&[0.5; 4], &[false, true, false, true]), 0.5);
    }
}
