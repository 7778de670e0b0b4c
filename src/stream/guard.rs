//! The acceptance guard of a model cycle: is the candidate better than the model serving now,
//! with statistical confidence, on an evaluation set large enough to tell, and without any
//! class collapsing?
//!
//! This module owns the decision and the evidence a cycle records; it is pure (predictions in,
//! decision out), so every adversarial case is a unit test. The rule (project decision; the
//! paired comparison is McNemar's setting, the bound the normal approximation of the paired
//! difference of proportions, Agresti, *Categorical Data Analysis*, 3rd ed., §11.1):
//! 1. **Size floor**: fewer than `min_eval_samples` evaluation samples → the cycle is
//!    *skipped* (cannot be judged): a bare accuracy on 11 or 38 samples is noise.
//! 2. **Confidence bound**: with dᵢ = 1[candidate right] − 1[current right] over the same
//!    samples, accept only when the one-sided lower bound `d̄ − z·sd(d)/√n` at `confidence`
//!    is at least `−tolerance` (default 0: better with 95 % confidence).
//! 3. **No class collapses**: every class with at least `min_class_samples` evaluation samples
//!    keeps its recall within `max_recall_drop` (on a held-out slice of the stream, counted on
//!    the labels the verdicts call clean: under pair noise a class's given labels include the
//!    samples flipped into it, see [`judge`]; there, the current model's recall on a class it
//!    predicts more often than the snapshot labels it is first discounted to that share, at
//!    most twofold, see `recall_at_label_share`); and over the whole snapshot, a class the
//!    current model predicts at least `min_class_predictions` times is still predicted at
//!    least half as often as the current model predicts it or as the snapshot labels it,
//!    whichever is fewer, and at least a quarter as often as the current model (a tiny class
//!    flagged wholesale must not vanish from the model; a class the current model predicts
//!    twice as often as it is labelled — pair noise pushes class c's samples into c + 1 — may
//!    come back to its share).

use serde::{Deserialize, Serialize};

/// Which snapshot samples the held-out slice is drawn from when no trusted validation set is
/// configured (always among those the current model has not trained on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldoutScope {
    /// Samples the verdicts call clean. Their labels are mostly right, but they are the
    /// samples the current model agrees with (the verdict rule flags disagreement), so the
    /// comparison favours the current model, the more so the higher the noise rate.
    Clean,
    /// Every sample, flagged or not, compared by its given label. Under class-conditional
    /// noise whose diagonal dominates each row, agreement with noisy labels ranks two models
    /// as their true accuracies do (the difference shrinks by about 1 − ρ − ρ/(K−1) under
    /// symmetric noise ρ), and the partition's mistakes cannot bias it. Default.
    #[default]
    Unseen,
}

/// Settings of the guard (validated with the daemon's config).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GuardParams {
    /// Evaluation samples needed to judge a cycle at all.
    pub min_eval_samples: usize,
    /// One-sided confidence of the lower bound on the accuracy difference, in (0.5, 1).
    pub confidence: f64,
    /// The lower bound may fall this far below 0 (accuracy points as a fraction; 0 = the
    /// candidate must be better with `confidence`).
    pub tolerance: f64,
    /// Classes with at least this many evaluation samples have their recall checked.
    pub min_class_samples: usize,
    /// Largest allowed drop of a checked class's recall (fraction). 0.3 by default: a class
    /// that vanishes loses most of its recall, while fine-tuning on a cleaner set routinely
    /// trades 0.1–0.2 of recall between confusable classes (Fashion-MNIST's shirt, coat and
    /// pullover; pair-flipped classes) while the accuracy rises with confidence.
    pub max_recall_drop: f64,
    /// Classes the current model predicts at least this often on the snapshot must still be
    /// predicted at least half as often as it predicts them or as the snapshot labels them,
    /// whichever is fewer, and at least a quarter as often as it predicts them.
    pub min_class_predictions: usize,
    /// Where the held-out slice comes from ([`HoldoutScope`]).
    pub holdout: HoldoutScope,
}

impl Default for GuardParams {
    fn default() -> Self {
        Self {
            min_eval_samples: 500,
            confidence: 0.95,
            tolerance: 0.0,
            min_class_samples: 20,
            max_recall_drop: 0.30,
            min_class_predictions: 3,
            holdout: HoldoutScope::Unseen,
        }
    }
}

impl GuardParams {
    /// Check ranges; one line per problem, naming the `cycle.guard.*` key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        if self.min_eval_samples < 30 {
            p.push(format!(
                "cycle.guard.min_eval_samples = {}: must be >= 30 (fewer cannot bound an accuracy difference)",
                self.min_eval_samples
            ));
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            p.push(format!(
                "cycle.guard.confidence = {}: must be in (0.5, 1)",
                self.confidence
            ));
        }
        if !(0.0..0.5).contains(&self.tolerance) {
            p.push(format!(
                "cycle.guard.tolerance = {}: must be in [0, 0.5)",
                self.tolerance
            ));
        }
        if !(self.max_recall_drop > 0.0 && self.max_recall_drop <= 1.0) {
            p.push(format!(
                "cycle.guard.max_recall_drop = {}: must be in (0, 1]",
                self.max_recall_drop
            ));
        }
        if self.min_class_samples == 0 || self.min_class_predictions == 0 {
            p.push("cycle.guard.min_class_samples and min_class_predictions must be >= 1".into());
        }
        p
    }

    /// The one-sided normal quantile of `confidence`.
    fn z(&self) -> f64 {
        use statrs::distribution::{ContinuousCDF, Normal};
        Normal::standard().inverse_cdf(self.confidence)
    }
}

/// One class's figures on the evaluation set (and predictions over the snapshot).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassEvidence {
    /// The class.
    pub class: u32,
    /// Evaluation samples labelled with it whose label the recall check trusts (all on a
    /// trusted validation set; the clean-flagged ones on a held-out slice, see [`judge`]).
    pub samples: usize,
    /// Recall of the current model on them (None when none: JSON has no NaN).
    pub recall_before: Option<f64>,
    /// Recall of the candidate.
    pub recall_after: Option<f64>,
    /// Snapshot samples the current model predicts as this class.
    pub predicted_before: usize,
    /// Snapshot samples the candidate predicts as this class.
    pub predicted_after: usize,
    /// Snapshot samples labelled with it (records written before commit 1702249 lack it: 0).
    #[serde(default)]
    pub labelled: usize,
}

/// What the guard saw: part of every cycle record.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    /// Evaluation samples.
    pub eval_samples: usize,
    /// Accuracy of the current model on them.
    pub accuracy_before: f64,
    /// Accuracy of the candidate.
    pub accuracy_after: f64,
    /// Two-sided interval at 2·`confidence` − 1 of the paired accuracy difference (after − before);
    /// its lower end is the one-sided bound the decision uses.
    pub difference_interval: (f64, f64),
    /// Per-class figures.
    pub classes: Vec<ClassEvidence>,
}

/// The guard's decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Publish the candidate.
    Accept(String),
    /// Keep the current model: the candidate is not better, or a class collapsed.
    Reject(String),
    /// Keep the current model: the evaluation set is too small to judge.
    Skip(String),
}

/// The current model's recall `rb` on a class discounted to the rate the snapshot labels it:
/// `rb · min(1, labelled / predicted_before)`. Recall rewards predicting a class more often
/// than it occurs (predicting it everywhere gives recall 1); a current model that predicts a
/// class twice as often as it is labelled (pair noise: it learned to put class c − 1's samples
/// there) would keep only about this recall if it predicted the class at its label share
/// with the same precision, so a candidate that brings the class back to its share is
/// measured against this, not against the inflated recall. A class the current model predicts
/// no more often than it is labelled keeps `rb`.
///
/// The factor is at least ½ (as [`vanishing_base`]'s floor: at most a twofold discount), and
/// [`judge`] applies it only on a held-out slice of the stream, whose labels are noisy like
/// the snapshot's; on a trusted validation set the recall is on true labels and is compared
/// as it is.
fn recall_at_label_share(rb: f64, predicted_before: usize, labelled: usize) -> f64 {
    if predicted_before <= labelled {
        rb
    } else {
        rb * (labelled as f64 / predicted_before as f64).max(0.5)
    }
}

/// The count a class's predictions must keep at least half of: the current model's count, or
/// the snapshot's label count where that is fewer, but never less than half the current
/// model's count (a class the labels no longer carry, e.g. all flipped away, still may not
/// vanish: at most a fourfold drop).
fn vanishing_base(predicted_before: usize, labelled: usize) -> usize {
    predicted_before.min(labelled.max(predicted_before / 2))
}

/// The whole snapshot's given labels and both models' predictions on it, all `[m]`.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// Given labels.
    pub labels: &'a [u32],
    /// The current model's predictions.
    pub before: &'a [u32],
    /// The candidate's predictions.
    pub after: &'a [u32],
}

/// Judge a candidate from predictions on the evaluation set (`labels`, `before`, `after`, all
/// `[n]`) and on the whole snapshot, over `k` classes. `trusted` (`[n]`; `None`: every label,
/// as on a trusted validation set) says which evaluation labels the per-class recall check
/// counts: on a held-out slice of the stream, the ones the verdicts call clean. The accuracy
/// comparison uses every evaluation sample.
///
/// Why the recall check skips flagged labels: under class-conditional noise a class's given
/// labels include the samples flipped into it (pair noise: 40 % of the samples labelled
/// c + 1 are class c), and a current model that learned the flip "recalls" them; a candidate
/// that predicts their true class loses that recall (MNIST, 40 % pair noise: 0.87 → 0.50)
/// while its test accuracy rises by 20–30 pt. On the labels the verdicts trust, a real
/// collapse still shows, as far as the verdicts are right: flipped labels the verdicts call
/// clean still count, so under heavy class-conditional noise the check can still fire on a
/// candidate that unlearns them (it then keeps the current model, the safe side).
pub fn judge(
    labels: &[u32],
    before: &[u32],
    after: &[u32],
    trusted: Option<&[bool]>,
    snapshot: Snapshot<'_>,
    k: usize,
    p: &GuardParams,
) -> (Decision, Evidence) {
    let n = labels.len();
    let mut ev = Evidence {
        eval_samples: n,
        ..Default::default()
    };
    let count = |preds: &[u32]| {
        let mut c = vec![0usize; k];
        for &q in preds {
            if (q as usize) < k {
                c[q as usize] += 1;
            }
        }
        c
    };
    let (pb, pa) = (count(snapshot.before), count(snapshot.after));
    let labelled = count(snapshot.labels);
    let (mut tot, mut hit_b, mut hit_a) = (vec![0usize; k], vec![0usize; k], vec![0usize; k]);
    let (mut right_b, mut right_a) = (0usize, 0usize);
    // Σ dᵢ² over dᵢ ∈ {−1, 0, 1}: the samples where exactly one model is right.
    let mut discordant = 0usize;
    for i in 0..n {
        let y = labels[i] as usize;
        let (b, a) = (before[i] == labels[i], after[i] == labels[i]);
        right_b += usize::from(b);
        right_a += usize::from(a);
        if y < k && trusted.is_none_or(|t| t[i]) {
            tot[y] += 1;
            hit_b[y] += usize::from(b);
            hit_a[y] += usize::from(a);
        }
        discordant += usize::from(a != b);
    }
    let nf = n.max(1) as f64;
    ev.accuracy_before = right_b as f64 / nf;
    ev.accuracy_after = right_a as f64 / nf;
    let mean = (right_a as f64 - right_b as f64) / nf;
    let var = if n > 1 {
        (discordant as f64 - nf * mean * mean) / (nf - 1.0)
    } else {
        0.0
    };
    let half = p.z() * (var.max(0.0) / nf).sqrt();
    ev.difference_interval = (mean - half, mean + half);
    ev.classes = (0..k)
        .map(|c| {
            let r = |h: usize| (tot[c] > 0).then(|| h as f64 / tot[c] as f64);
            ClassEvidence {
                class: c as u32,
                samples: tot[c],
                recall_before: r(hit_b[c]),
                recall_after: r(hit_a[c]),
                predicted_before: pb[c],
                predicted_after: pa[c],
                labelled: labelled[c],
            }
        })
        .collect();
    let summary = format!(
        "accuracy {:.4} -> {:.4} on {n} samples, difference {:+.4} ({:.0} % interval {:+.4} .. {:+.4})",
        ev.accuracy_before,
        ev.accuracy_after,
        mean,
        100.0 * (2.0 * p.confidence - 1.0),
        ev.difference_interval.0,
        ev.difference_interval.1
    );
    if n < p.min_eval_samples {
        return (
            Decision::Skip(format!(
                "cannot be judged: {n} evaluation samples, fewer than cycle.guard.min_eval_samples = {}",
                p.min_eval_samples
            )),
            ev,
        );
    }
    for c in &ev.classes {
        if let (Some(rb), Some(ra)) = (c.recall_before, c.recall_after) {
            let rb_at_share = if trusted.is_some() {
                recall_at_label_share(rb, c.predicted_before, c.labelled)
            } else {
                rb
            };
            if c.samples >= p.min_class_samples && rb_at_share - ra > p.max_recall_drop {
                return (
                    Decision::Reject(format!(
                        "class {} recall collapses {rb:.3} -> {ra:.3} on {} samples{}{}; {summary}",
                        c.class,
                        c.samples,
                        if trusted.is_some() {
                            " the verdicts call clean"
                        } else {
                            ""
                        },
                        if rb_at_share < rb {
                            format!(
                                " ({rb_at_share:.3} at its label share: the current model predicts it {} times, the snapshot labels it {})",
                                c.predicted_before, c.labelled
                            )
                        } else {
                            String::new()
                        }
                    )),
                    ev,
                );
            }
        }
        if c.predicted_before >= p.min_class_predictions
            && 2 * c.predicted_after < vanishing_base(c.predicted_before, c.labelled)
        {
            return (
                Decision::Reject(format!(
                    "class {} vanishes from the candidate's predictions ({} -> {} of the snapshot's {} samples, {} labelled with it); {summary}",
                    c.class, c.predicted_before, c.predicted_after, snapshot.labels.len(), c.labelled
                )),
                ev,
            );
        }
    }
    // Models that agree everywhere have no difference to bound: not better.
    if ev.difference_interval.0 < -p.tolerance || mean <= 0.0 {
        return (
            Decision::Reject(format!(
                "not better with {:.0} % confidence (lower bound {:+.4} < {}); {summary}",
                100.0 * p.confidence,
                ev.difference_interval.0,
                if p.tolerance > 0.0 {
                    format!("-{}", p.tolerance)
                } else {
                    "0".into()
                }
            )),
            ev,
        );
    }
    (Decision::Accept(summary), ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// `n` samples over `k` classes; the current model is right with probability `acc_b`, the
    /// candidate with `acc_a` (independently), wrong answers uniform over the other classes.
    fn preds(
        n: usize,
        k: usize,
        acc_b: f64,
        acc_a: f64,
        seed: u64,
    ) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let draw = |y: u32, acc: f64, rng: &mut Xoshiro256PlusPlus| {
            if rng.gen::<f64>() < acc {
                y
            } else {
                (y + rng.gen_range(1..k as u32)) % k as u32
            }
        };
        let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
        let b = labels.iter().map(|&y| draw(y, acc_b, &mut rng)).collect();
        let a = labels.iter().map(|&y| draw(y, acc_a, &mut rng)).collect();
        (labels, b, a)
    }

    fn run(labels: &[u32], b: &[u32], a: &[u32], k: usize) -> (Decision, Evidence) {
        let snapshot = Snapshot {
            labels,
            before: b,
            after: a,
        };
        judge(labels, b, a, None, snapshot, k, &GuardParams::default())
    }

    #[test]
    fn a_tiny_evaluation_set_is_skipped_not_accepted() {
        // The accepted-from-noise cases: 11, 15 and 38 held-out samples, candidate "better".
        for n in [11, 15, 38] {
            let (l, b, a) = preds(n, 10, 0.5, 0.9, n as u64);
            let (d, ev) = run(&l, &b, &a, 10);
            assert!(matches!(d, Decision::Skip(_)), "{n}: {d:?}");
            assert_eq!(ev.eval_samples, n);
        }
    }

    #[test]
    fn a_candidate_no_better_than_the_current_model_is_rejected() {
        // Pure label noise (threshold 0.01, 100 % random labels): both models are at chance.
        let (l, b, a) = preds(2000, 10, 0.1, 0.1, 1);
        assert!(matches!(run(&l, &b, &a, 10).0, Decision::Reject(_)));
        // Slightly worse on a mid-size set (0.868 -> 0.847): rejected.
        let (l, b, a) = preds(1000, 10, 0.868, 0.847, 2);
        assert!(matches!(run(&l, &b, &a, 10).0, Decision::Reject(_)));
        // Equal within noise: not better with 95 % confidence.
        let (l, b, a) = preds(3000, 10, 0.9, 0.9, 3);
        assert!(matches!(run(&l, &b, &a, 10).0, Decision::Reject(_)));
    }

    #[test]
    fn a_clearly_better_candidate_is_accepted_with_its_evidence() {
        let (l, b, a) = preds(2000, 10, 0.80, 0.90, 4);
        let (d, ev) = run(&l, &b, &a, 10);
        assert!(matches!(d, Decision::Accept(_)), "{d:?}");
        assert!(ev.difference_interval.0 > 0.0 && ev.difference_interval.1 < 0.2);
        assert_eq!(ev.classes.len(), 10);
        assert!(ev.classes.iter().all(|c| c.samples == 200));
    }

    #[test]
    fn a_collapsing_class_is_caught_even_when_accuracy_rises() {
        let (l, b, mut a) = preds(3000, 10, 0.80, 0.95, 5);
        // The candidate never gets class 3 right any more.
        for i in 0..l.len() {
            if l[i] == 3 {
                a[i] = 4;
            }
        }
        let (d, _) = run(&l, &b, &a, 10);
        match d {
            Decision::Reject(r) => assert!(r.contains("class 3"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_recall_trade_between_classes_is_not_a_collapse() {
        let (l, b, mut a) = preds(3000, 10, 0.80, 0.95, 5);
        // The candidate loses about 0.17 of class 3's recall but gains everywhere else.
        let mut right = 0;
        for i in 0..l.len() {
            if l[i] == 3 && a[i] == 3 {
                right += 1;
                if right % 3 == 0 {
                    a[i] = 4;
                }
            }
        }
        let (d, ev) = run(&l, &b, &a, 10);
        let c3 = &ev.classes[3];
        let drop = c3.recall_before.unwrap() - c3.recall_after.unwrap();
        assert!(drop > 0.1 && drop < 0.3, "drop {drop}");
        assert!(matches!(d, Decision::Accept(_)), "{d:?}");
    }

    #[test]
    fn a_model_unlearning_pair_noise_is_not_a_collapse_on_trusted_labels() {
        // Pair noise: 40 % of class c's samples are labelled c + 1 (the verdicts flag them).
        // The current model learned the flip and predicts the given label on them; the
        // candidate predicts their true class.
        let (true_class, b0, a) = preds(4000, 10, 0.9, 0.95, 8);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let (mut labels, mut b, mut trusted) = (true_class.clone(), b0, vec![true; 4000]);
        for i in 0..labels.len() {
            if rng.gen::<f64>() < 0.4 {
                labels[i] = (true_class[i] + 1) % 10;
                b[i] = labels[i];
                trusted[i] = false;
            }
        }
        let snapshot = Snapshot {
            labels: &labels,
            before: &b,
            after: &a,
        };
        let p = GuardParams::default();
        // Counted on every given label, each class "collapses" from ~0.94 to ~0.57.
        let (d, _) = judge(&labels, &b, &a, None, snapshot, 10, &p);
        assert!(
            matches!(&d, Decision::Reject(r) if r.contains("recall collapses")),
            "{d:?}"
        );
        // On the labels the verdicts trust, it is not a collapse; judged by accuracy on
        // the given labels, the candidate is worse (it disagrees with the flipped labels),
        // so it is rejected as not better, never as a collapse.
        let (d, ev) = judge(&labels, &b, &a, Some(&trusted), snapshot, 10, &p);
        assert!(
            matches!(&d, Decision::Reject(r) if r.contains("not better")),
            "{d:?}"
        );
        assert!(ev
            .classes
            .iter()
            .all(|c| c.samples < 400 && c.samples > 150));
        // The accuracies are on every evaluation label, whatever the recall check counts.
        let mean_d = (ev.difference_interval.0 + ev.difference_interval.1) / 2.0;
        assert!(
            (ev.accuracy_after - ev.accuracy_before - mean_d).abs() < 1e-9,
            "{ev:?}"
        );
        let right = |m: &[u32]| m.iter().zip(&labels).filter(|(q, y)| q == y).count();
        assert!((ev.accuracy_before - right(&b) as f64 / 4000.0).abs() < 1e-12);
        // A real collapse still shows on the trusted labels.
        let mut a3 = a.clone();
        for i in 0..labels.len() {
            if true_class[i] == 3 {
                a3[i] = 4;
            }
        }
        let snapshot = Snapshot {
            after: &a3,
            ..snapshot
        };
        let (d, _) = judge(&labels, &b, &a3, Some(&trusted), snapshot, 10, &p);
        assert!(
            matches!(&d, Decision::Reject(r) if r.contains("class 3 recall collapses")),
            "{d:?}"
        );
    }

    #[test]
    fn a_tiny_class_that_vanishes_from_the_predictions_is_caught() {
        // Class 9 has 3 samples in the snapshot and none in the evaluation set (flagged
        // wholesale); the candidate stops predicting it.
        let (l, b, a) = preds(1000, 9, 0.8, 0.95, 6);
        let mut sl: Vec<u32> = l.clone();
        let mut sb: Vec<u32> = b.clone();
        let mut sa: Vec<u32> = a.clone();
        sl.extend([9, 9, 9]);
        sb.extend([9, 9, 9]);
        sa.extend([0, 1, 2]);
        let snapshot = Snapshot {
            labels: &sl,
            before: &sb,
            after: &sa,
        };
        let (d, _) = judge(&l, &b, &a, None, snapshot, 10, &GuardParams::default());
        match d {
            Decision::Reject(r) => assert!(r.contains("class 9 vanishes"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn recall_inflated_by_over_prediction_is_not_a_collapse_to_lose() {
        // 1,000 rows, 100 per true class. 80 of class 1's samples are labelled 2 and the
        // verdicts call them clean (the current model agrees); the other 20 are flagged. The
        // current model predicts 2 for every class-1 and class-3 sample (300 predictions of a
        // class labelled 180 times), everything else right; the candidate predicts every true
        // class.
        let t: Vec<u32> = (0..1000).map(|i| (i % 10) as u32).collect();
        let labels: Vec<u32> = (0..1000)
            .map(|i| match (t[i], i / 10) {
                (1, r) if r < 80 => 2,
                (c, _) => c,
            })
            .collect();
        let trusted: Vec<bool> = (0..1000).map(|i| !(t[i] == 1 && labels[i] == 1)).collect();
        let before: Vec<u32> = t
            .iter()
            .map(|&c| if c == 1 || c == 3 { 2 } else { c })
            .collect();
        let after = t.clone();
        let snapshot = Snapshot {
            labels: &labels,
            before: &before,
            after: &after,
        };
        let p = GuardParams::default();
        let (d, ev) = judge(&labels, &before, &after, Some(&trusted), snapshot, 10, &p);
        let c2 = &ev.classes[2];
        assert_eq!(
            (c2.samples, c2.predicted_before, c2.labelled),
            (180, 300, 180)
        );
        let (rb, ra) = (c2.recall_before.unwrap(), c2.recall_after.unwrap());
        assert!(
            rb - ra > p.max_recall_drop,
            "{rb} -> {ra}: a drop counted raw"
        );
        assert!(
            (recall_at_label_share(rb, 300, 180) - 0.6).abs() < 1e-12,
            "1.0 at 300 predictions for 180 labels is 0.6 at the label share"
        );
        assert!(matches!(d, Decision::Accept(_)), "{d:?}");
        // At most a twofold discount, and a class labelled once is not a free pass.
        assert_eq!(recall_at_label_share(0.9, 400, 100), 0.45);
        assert_eq!(recall_at_label_share(0.9, 400, 1), 0.45);
        assert_eq!(recall_at_label_share(0.9, 100, 100), 0.9);
        // On a trusted validation set (true labels) there is no discount: the same drop is a
        // collapse.
        let (d, _) = judge(&labels, &before, &after, None, snapshot, 10, &p);
        assert!(
            matches!(&d, Decision::Reject(r) if r.contains("class 2 recall collapses") && !r.contains("label share")),
            "{d:?}"
        );
        // Below what the current model would keep at the label share, it still collapses.
        let mut worse = after.clone();
        for (i, w) in worse.iter_mut().enumerate() {
            if t[i] == 2 && i / 10 < 60 {
                *w = 5;
            }
        }
        let snapshot = Snapshot {
            after: &worse,
            ..snapshot
        };
        let (d, _) = judge(&labels, &before, &worse, Some(&trusted), snapshot, 10, &p);
        assert!(
            matches!(&d, Decision::Reject(r) if r.contains("class 2 recall collapses") && r.contains("at its label share")),
            "{d:?}"
        );
    }

    #[test]
    fn an_over_predicted_class_may_come_back_to_its_share() {
        // Pair noise: the current model predicts class 7 twice as often as the snapshot
        // labels it; the candidate predicts it as often as it is labelled (fewer than half
        // the current model's count) and is better: accepted. Falling below half its labelled
        // share is still a vanishing class.
        let (l, b, a) = preds(2000, 10, 0.7, 0.8, 8);
        let m = 1000;
        let labels: Vec<u32> = (0..m).map(|i| (i % 10) as u32).collect();
        let before: Vec<u32> = (0..m)
            .map(|i| if i % 10 == 6 { 7 } else { (i % 10) as u32 })
            .collect();
        let mut after = labels.clone();
        after[7] = 6; // one class-7 sample predicted 6: 200 -> 99 of 100 labelled.
        let snapshot = Snapshot {
            labels: &labels,
            before: &before,
            after: &after,
        };
        let (d, ev) = judge(&l, &b, &a, None, snapshot, 10, &GuardParams::default());
        assert_eq!(
            (
                ev.classes[7].predicted_before,
                ev.classes[7].predicted_after
            ),
            (200, 99)
        );
        assert_eq!(ev.classes[7].labelled, 100);
        assert!(matches!(d, Decision::Accept(_)), "{d:?}");
        for i in (7..m).step_by(10).take(52) {
            after[i] = 6; // 48 of 100 labelled: vanishing.
        }
        let snapshot = Snapshot {
            labels: &labels,
            before: &before,
            after: &after,
        };
        let (d, _) = judge(&l, &b, &a, None, snapshot, 10, &GuardParams::default());
        assert!(
            matches!(&d, Decision::Reject(r) if r.contains("class 7 vanishes")),
            "{d:?}"
        );
    }

    #[test]
    fn a_shifted_burst_that_wrecks_the_candidate_is_rejected() {
        // The 0-255 burst: the candidate fine-tuned on shifted inputs, clean accuracy
        // 0.937 -> 0.312 on a trusted evaluation set of 1,000.
        let (l, b, a) = preds(1000, 10, 0.937, 0.312, 7);
        assert!(matches!(run(&l, &b, &a, 10).0, Decision::Reject(_)));
    }

    #[test]
    fn bad_settings_are_named() {
        let p = GuardParams {
            min_eval_samples: 5,
            confidence: 1.5,
            ..Default::default()
        };
        let lines = p.problems();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("cycle.guard.min_eval_samples"));
        assert!(GuardParams::default().problems().is_empty());
    }
}
