//! The class-conditional noise model: the verdict rule that holds beyond MNIST (project
//! decision, measured in `make bench-quality`).
//!
//! This module owns the estimate of the noise transition and the per-sample posterior of
//! "noisy" computed from it. Its inputs are **out-of-sample** class probabilities `q(x)` —
//! from a model that did not train on `x` (k-fold cross-fitting offline, score-before-train in
//! the stream) — and the given labels ỹ. In-sample probabilities of a model that has memorised
//! its noisy labels carry no signal (the 30-epoch failure of the summary-space mixture).
//!
//! Steps (Northcutt et al., "Confident learning", JAIR 70, 2021, §3.1 for steps 1–2; the
//! posterior of step 4 is the Bayes rule under the class-conditional noise model that §2 of that
//! paper assumes, P(ỹ = j | y* = c, x) = T[c, j]):
//! 1. per-class thresholds `t_c` = mean of `q_c(x)` over the samples labelled `c`;
//! 2. the calibrated confident joint: each sample counts in cell `[ỹ, c*]`, c* the most likely
//!    class among those whose probability reaches their threshold; each row is rescaled to the
//!    number of samples with that label; divided by n it estimates `Q[j, c] = P(ỹ = j, y* = c)`;
//! 3. the transition `T[c, j] = Q[j, c] / Σ_j' Q[j', c]` (row c: where true class c's labels go);
//! 4. a model trained on noisy labels estimates `q = Tᵀ π` with `π(x) = P(y* | x)`, so
//!    `π = (Tᵀ)⁻¹ q` (floored at 10⁻³·q, renormalised), and
//!    `P(clean | x, ỹ = j) = T[j, j] π_j / Σ_c T[c, j] π_c`; P(noisy) is its complement.
//!
//! Unlike a two-component mixture on the loss, the rule needs no "noisy component" to exist: on
//! a clean set the confident joint is (nearly) diagonal, T ≈ I and every posterior ≈ 0; a hard
//! but clean class gets a low threshold of its own instead of being flagged wholesale; and a
//! class-conditional flip (c → c+1) is found from the argmax structure of q, not from a loss
//! level. The noise rate it reports is the fraction of samples whose posterior reaches the
//! threshold (the `rlap_noisy_fraction` gauge in the daemon).
//!
//! The streaming form keeps the same statistics as running means updated by stepwise EM's
//! schedule (`s ← (1−γ)s + γ·batch mean`; [`crate::stream::online_gmm::StepSize`]).
//!
//! The repair side of the same model lives here too: [`verdict_likelihoods`], the per-sample
//! probability of the given label under each true class that the forward loss correction
//! trains with (the experiment's Forward row, `cycle.objective = "forward"`).

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::partition::{Partition, PartitionError};

/// Floor of the corrected class probabilities π_c, as a fraction of q_c: `(Tᵀ)⁻¹q` can go
/// negative where q is not exactly of the form Tᵀπ.
const PI_FLOOR: f64 = 1e-3;

/// Sufficient statistics of the class-conditional noise model over K classes, as running means
/// per sample. Serializable: it is part of the daemon's checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoiseModel {
    /// Classes K.
    pub num_classes: usize,
    /// `E[1[ỹ = c]]` per class `[K]`: the given-label frequencies.
    label_freq: Vec<f64>,
    /// `E[1[ỹ = c] · q_c(x)]` per class `[K]`: thresholds are `own_prob / label_freq`.
    own_prob: Vec<f64>,
    /// `E[1[ỹ = j, c*(x) = c]]` `[K·K]` row-major (j given, c confident): the raw confident joint.
    joint: Vec<f64>,
    /// Stepwise updates applied since the batch fit.
    pub updates: u64,
    /// Samples seen by the batch fit and the updates.
    pub samples: u64,
}

/// The matrices derived from the statistics (rebuilt when they change).
#[derive(Clone, Debug)]
pub struct Derived {
    /// `T[c][j] = P(ỹ = j | y* = c)`, `[K·K]` row-major.
    pub transition: Vec<f64>,
    /// `(Tᵀ)⁻¹` `[K·K]` row-major, or None when Tᵀ is singular (then π = q).
    inverse_t: Option<DMatrix<f64>>,
    /// Per-class thresholds `t_c` `[K]`.
    pub thresholds: Vec<f64>,
    /// Calibrated joint `Q[j][c]`, `[K·K]` row-major, summing to 1.
    pub joint: Vec<f64>,
}

impl Derived {
    /// `1 − trace(Q)`: the noise rate implied by the calibrated joint.
    pub fn joint_noise_rate(&self) -> f64 {
        let k = self.thresholds.len();
        1.0 - (0..k).map(|c| self.joint[c * k + c]).sum::<f64>()
    }
}

fn check(q: &[f32], labels: &[u32], k: usize) -> Result<usize, PartitionError> {
    let n = labels.len();
    if k < 2 || q.len() != n * k {
        return Err(PartitionError::Invalid(format!(
            "noise model: {} probabilities for {n} samples of {k} classes (need K >= 2)",
            q.len()
        )));
    }
    if let Some(&y) = labels.iter().find(|&&y| y as usize >= k) {
        return Err(PartitionError::Invalid(format!(
            "noise model: label {y} outside 0..{k}"
        )));
    }
    if q.iter().any(|v| !v.is_finite()) {
        return Err(PartitionError::Invalid(
            "noise model: a class probability is not finite".into(),
        ));
    }
    Ok(n)
}

impl NoiseModel {
    /// An empty model over `k` classes (no samples yet).
    pub fn empty(k: usize) -> Self {
        Self {
            num_classes: k,
            label_freq: vec![0.0; k],
            own_prob: vec![0.0; k],
            joint: vec![0.0; k * k],
            updates: 0,
            samples: 0,
        }
    }

    /// Batch fit on `n` samples: `q` `[n, K]` out-of-sample class probabilities (rows sum to
    /// 1), `labels` `[n]` given labels.
    ///
    /// # Errors
    /// [`PartitionError::Invalid`] on mismatched lengths, a label ≥ K, a non-finite value or
    /// no samples.
    pub fn fit(q: &[f32], labels: &[u32], k: usize) -> Result<Self, PartitionError> {
        let n = check(q, labels, k)?;
        if n == 0 {
            return Err(PartitionError::Invalid(
                "noise model: no samples to fit".into(),
            ));
        }
        let mut m = Self::empty(k);
        let (freq, own) = Self::class_means(q, labels, k);
        m.label_freq = freq;
        m.own_prob = own;
        m.joint = m.confident_joint(q, labels);
        m.samples = n as u64;
        Ok(m)
    }

    fn class_means(q: &[f32], labels: &[u32], k: usize) -> (Vec<f64>, Vec<f64>) {
        let n = labels.len().max(1) as f64;
        let (mut freq, mut own) = (vec![0.0; k], vec![0.0; k]);
        for (row, &y) in q.chunks_exact(k).zip(labels) {
            freq[y as usize] += 1.0 / n;
            own[y as usize] += row[y as usize] as f64 / n;
        }
        (freq, own)
    }

    /// Per-class thresholds `t_c = E[q_c | ỹ = c]`; 1 for a class never seen (nothing is
    /// confidently that class).
    pub fn thresholds(&self) -> Vec<f64> {
        self.label_freq
            .iter()
            .zip(&self.own_prob)
            .map(|(&f, &o)| if f > 0.0 { o / f } else { 1.0 })
            .collect()
    }

    /// The raw confident joint of a batch under the current thresholds, as a mean per sample.
    fn confident_joint(&self, q: &[f32], labels: &[u32]) -> Vec<f64> {
        let k = self.num_classes;
        let t = self.thresholds();
        let n = labels.len().max(1) as f64;
        let mut joint = vec![0.0; k * k];
        for (row, &y) in q.chunks_exact(k).zip(labels) {
            let mut best: Option<(usize, f32)> = None;
            for c in 0..k {
                // A small tolerance so that a class whose every sample has the same probability
                // still counts its own samples as confident.
                if row[c] as f64 >= t[c] - 1e-9 && best.is_none_or(|(_, v)| row[c] > v) {
                    best = Some((c, row[c]));
                }
            }
            if let Some((c, _)) = best {
                joint[y as usize * k + c] += 1.0 / n;
            }
        }
        joint
    }

    /// Stepwise update with one batch (step γ from the caller's schedule): the batch's means
    /// are blended in as `s ← (1−γ)s + γ·batch`. The confident joint of the batch is counted
    /// under the thresholds before the update.
    ///
    /// # Errors
    /// As [`NoiseModel::fit`]; γ outside (0, 1].
    pub fn update(&mut self, q: &[f32], labels: &[u32], gamma: f64) -> Result<(), PartitionError> {
        let n = check(q, labels, self.num_classes)?;
        if n == 0 {
            return Ok(());
        }
        if !(gamma > 0.0 && gamma <= 1.0) {
            return Err(PartitionError::Invalid(format!(
                "noise model: step {gamma} outside (0, 1]"
            )));
        }
        let joint = self.confident_joint(q, labels);
        let (freq, own) = Self::class_means(q, labels, self.num_classes);
        let blend = |s: &mut [f64], b: &[f64]| {
            for (s, b) in s.iter_mut().zip(b) {
                *s = (1.0 - gamma) * *s + gamma * b;
            }
        };
        blend(&mut self.label_freq, &freq);
        blend(&mut self.own_prob, &own);
        blend(&mut self.joint, &joint);
        self.updates += 1;
        self.samples += n as u64;
        Ok(())
    }

    /// The calibrated joint, the transition and its inverse (steps 2–4 of the module docs).
    pub fn derive(&self) -> Derived {
        let k = self.num_classes;
        let total: f64 = self.label_freq.iter().sum::<f64>().max(1e-300);
        // Calibrate: row j of the joint sums to the frequency of label j.
        let mut qj = vec![0.0; k * k];
        for j in 0..k {
            let row = &self.joint[j * k..(j + 1) * k];
            let s: f64 = row.iter().sum();
            let f = self.label_freq[j] / total;
            if s > 0.0 {
                for c in 0..k {
                    qj[j * k + c] = row[c] / s * f;
                }
            } else {
                qj[j * k + j] = f;
            }
        }
        let mut t = vec![0.0; k * k];
        for c in 0..k {
            let col: f64 = (0..k).map(|j| qj[j * k + c]).sum();
            for j in 0..k {
                t[c * k + j] = if col > 0.0 {
                    qj[j * k + c] / col
                } else {
                    f64::from(u8::from(c == j))
                };
            }
        }
        let tt = DMatrix::from_row_slice(k, k, &t).transpose();
        Derived {
            inverse_t: tt.try_inverse().filter(|m| m.iter().all(|v| v.is_finite())),
            transition: t,
            thresholds: self.thresholds(),
            joint: qj,
        }
    }

    /// P(noisy | q(x), ỹ) per sample, `[n]` (step 4 of the module docs).
    ///
    /// # Errors
    /// As [`NoiseModel::fit`].
    pub fn posterior(
        &self,
        derived: &Derived,
        q: &[f32],
        labels: &[u32],
    ) -> Result<Vec<f64>, PartitionError> {
        let k = self.num_classes;
        check(q, labels, k)?;
        let t = &derived.transition;
        let mut pi = vec![0.0f64; k];
        Ok(q.chunks_exact(k)
            .zip(labels)
            .map(|(row, &y)| {
                let y = y as usize;
                match &derived.inverse_t {
                    Some(inv) => {
                        for (a, p) in pi.iter_mut().enumerate() {
                            *p = (0..k)
                                .map(|b| inv[(a, b)] * row[b] as f64)
                                .sum::<f64>()
                                // A floor in proportion to q keeps the order of the samples
                                // whose inverted value clips (and no posterior exactly 0).
                                .max(PI_FLOOR * row[a] as f64);
                        }
                    }
                    None => pi.iter_mut().zip(row).for_each(|(p, &v)| *p = v as f64),
                }
                let s: f64 = pi.iter().sum();
                if s <= 0.0 {
                    pi.iter_mut().zip(row).for_each(|(p, &v)| *p = v as f64);
                }
                let den: f64 = (0..k).map(|c| t[c * k + y] * pi[c]).sum();
                if den <= 0.0 {
                    // No class explains the given label: it is noise.
                    return 1.0;
                }
                (1.0 - t[y * k + y] * pi[y] / den).clamp(0.0, 1.0)
            })
            .collect())
    }

    /// Batch partition of `n` samples with a freshly fitted model: posteriors, flags at
    /// `threshold`, and the model.
    ///
    /// # Errors
    /// As [`NoiseModel::fit`].
    pub fn partition(
        q: &[f32],
        labels: &[u32],
        k: usize,
        threshold: f64,
        loss: &[f32],
    ) -> Result<(Partition, NoiseModel), PartitionError> {
        let m = Self::fit(q, labels, k)?;
        let d = m.derive();
        let post = m.posterior(&d, q, labels)?;
        let noisy: Vec<bool> = post.iter().map(|&p| p >= threshold).collect();
        let rate = noisy.iter().filter(|&&b| b).count() as f64 / noisy.len().max(1) as f64;
        let mut sum = [0.0; 2];
        let mut cnt = [0usize; 2];
        for (&b, &l) in noisy.iter().zip(loss) {
            sum[usize::from(b)] += l as f64;
            cnt[usize::from(b)] += 1;
        }
        let mean = |i: usize| {
            if cnt[i] > 0 {
                sum[i] / cnt[i] as f64
            } else {
                f64::NAN
            }
        };
        Ok((
            Partition {
                posterior_noisy: post,
                noisy,
                clean_component: 0,
                weights: [1.0 - rate, rate],
                component_mean_loss: [mean(0), mean(1)],
                reg_covar: 0.0,
            },
            m,
        ))
    }
}

/// Pseudo-count of flips spread evenly over each true class's K − 1 other labels when
/// [`verdict_likelihoods`] estimates where a class's wrong labels go: a class no flagged
/// sample was traced back to gets a uniform row.
pub const FLIP_PSEUDO_COUNT: f64 = 1.0;

/// The per-sample likelihood vectors `[N, K]` row-major of the Forward row: `c_bi`, the
/// probability of sample b's given label `ỹ_b` if its true class were i,
/// ```text
/// c_bi = (1 − π_b)·1[i = ỹ_b] + π_b·O[i, ỹ_b]
/// ```
/// with `π_b` the partition's posterior P(noisy) (`posterior_noisy`, `[N]`) and `O` `[K, K]`
/// the estimated flip matrix: `O[i, j]` = the share of class i's wrong labels that read j
/// (`O[i, i]` = 0), counted over the flagged samples (`flagged`, `[N]`) whose class
/// probabilities (`probs`, `[N, K]`; out-of-sample in the experiment, the current model's in
/// the daemon's cycle, where rows it trained on mostly agree with their labels and count no
/// flip) put their argmax i elsewhere than their label j, plus [`FLIP_PSEUDO_COUNT`]. Where
/// `π_b` is small the row still peaks at `ỹ_b`, so the objective can still memorise a flagged
/// sample's label with a moderate posterior; it cannot one called noisy with confidence. The forward loss correction of Patrini et al. (CVPR 2017,
/// §3.1, with the transition matrix estimated from the data as in their §3.2, here from the
/// partition), made per-sample by the verdict: a sample the partition calls clean keeps its
/// label's cross-entropy, one it calls noisy says "one of the classes whose labels flip to
/// ỹ", which under pair noise names the class and under symmetric noise only excludes ỹ.
/// Not part of the RLAP paper.
///
/// # Errors
/// [`PartitionError::Invalid`] when the lengths disagree, K < 2, a posterior is outside
/// [0, 1] (NaN included) or a label is not below K.
pub fn verdict_likelihoods(
    given: &[u32],
    num_classes: usize,
    posterior_noisy: &[f64],
    flagged: &[bool],
    probs: &[f32],
) -> Result<Vec<f32>, PartitionError> {
    let n = given.len();
    if num_classes < 2
        || posterior_noisy.len() != n
        || flagged.len() != n
        || probs.len() != n * num_classes
    {
        return Err(PartitionError::Invalid(format!(
            "verdict likelihoods: {n} labels, {} posteriors, {} verdicts, {} probabilities over {num_classes} classes (K >= 2, one of each per sample, K probabilities each)",
            posterior_noisy.len(),
            flagged.len(),
            probs.len()
        )));
    }
    if let Some(b) = posterior_noisy
        .iter()
        .position(|p| !(0.0..=1.0).contains(p))
    {
        return Err(PartitionError::Invalid(format!(
            "verdict likelihoods: sample {b}'s posterior of noisy is {}, not in [0, 1]",
            posterior_noisy[b]
        )));
    }
    if let Some(b) = given.iter().position(|&y| y as usize >= num_classes) {
        return Err(PartitionError::Invalid(format!(
            "verdict likelihoods: sample {b}'s label {} is not below K = {num_classes}",
            given[b]
        )));
    }
    let k = num_classes;
    let mut flips = vec![0f64; k * k];
    for (b, (&y, _)) in given
        .iter()
        .zip(flagged)
        .enumerate()
        .filter(|(_, (_, &f))| f)
    {
        let row = &probs[b * k..(b + 1) * k];
        let i = (0..k).fold(0, |m, c| if row[c] > row[m] { c } else { m });
        if i != y as usize {
            flips[i * k + y as usize] += 1.0;
        }
    }
    let spread = FLIP_PSEUDO_COUNT / (k.max(2) - 1) as f64;
    for i in 0..k {
        let row = &mut flips[i * k..(i + 1) * k];
        let total: f64 = row.iter().sum::<f64>() + FLIP_PSEUDO_COUNT;
        for (j, o) in row.iter_mut().enumerate() {
            *o = if j == i { 0.0 } else { (*o + spread) / total };
        }
    }
    let mut c = vec![0f32; given.len() * k];
    for (b, (row, &y)) in c.chunks_mut(k).zip(given).enumerate() {
        let pi = posterior_noisy[b];
        for (i, v) in row.iter_mut().enumerate() {
            let stays = if i == y as usize { 1.0 - pi } else { 0.0 };
            *v = (stays + pi * flips[i * k + y as usize]) as f32;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// `n` samples of K classes. Each sample's true class c gets out-of-sample probabilities
    /// from a classifier trained on labels drawn through `t` (q = Tᵀ·onehot(c), sharpened by
    /// `blur` of uniform mass), and its given label is drawn from row c of `t`.
    /// `hard` classes are confused with class 0 by the classifier itself (clean ambiguity).
    fn synth(
        n: usize,
        k: usize,
        t: &[f64],
        hard: &[usize],
        seed: u64,
    ) -> (Vec<f32>, Vec<u32>, Vec<bool>) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let (mut q, mut labels, mut noisy) = (vec![], vec![], vec![]);
        for i in 0..n {
            let c = i % k;
            let mut pi = vec![0.0f64; k];
            if hard.contains(&c) {
                // The classifier is unsure between c and 0: 0.55 / 0.45 give or take.
                let a = 0.45 + 0.2 * rng.gen::<f64>();
                pi[c] = a;
                pi[0] += 1.0 - a;
            } else {
                pi[c] = 1.0;
            }
            let mut row: Vec<f64> = (0..k)
                .map(|j| (0..k).map(|s| t[s * k + j] * pi[s]).sum::<f64>())
                .collect();
            let blur = 0.05 * rng.gen::<f64>();
            row.iter_mut()
                .for_each(|v| *v = (1.0 - blur) * *v + blur / k as f64);
            q.extend(row.iter().map(|&v| v as f32));
            let u: f64 = rng.gen();
            let mut acc = 0.0;
            let mut y = k - 1;
            for j in 0..k {
                acc += t[c * k + j];
                if u < acc {
                    y = j;
                    break;
                }
            }
            labels.push(y as u32);
            noisy.push(y != c);
        }
        (q, labels, noisy)
    }

    fn symmetric(k: usize, r: f64) -> Vec<f64> {
        (0..k * k)
            .map(|i| {
                if i / k == i % k {
                    1.0 - r
                } else {
                    r / (k - 1) as f64
                }
            })
            .collect()
    }

    fn f1(post: &[f64], truth: &[bool]) -> f64 {
        let tp = post
            .iter()
            .zip(truth)
            .filter(|(p, t)| **p >= 0.5 && **t)
            .count() as f64;
        let fp = post
            .iter()
            .zip(truth)
            .filter(|(p, t)| **p >= 0.5 && !**t)
            .count() as f64;
        let fneg = post
            .iter()
            .zip(truth)
            .filter(|(p, t)| **p < 0.5 && **t)
            .count() as f64;
        2.0 * tp / (2.0 * tp + fp + fneg).max(1.0)
    }

    #[test]
    fn verdict_likelihoods_follow_the_posterior_and_the_estimated_flips() {
        // K = 3. Ten flagged samples labelled 1 look like class 0; one labelled 2 looks like 1;
        // a flagged sample whose probabilities agree with its label counts no flip.
        let k = 3;
        let mut given = vec![1u32; 10];
        let mut probs: Vec<f32> = [0.8, 0.1, 0.1].repeat(10);
        given.push(2);
        probs.extend([0.1, 0.7, 0.2]);
        given.push(0);
        probs.extend([0.9, 0.05, 0.05]);
        // Then: a clean sample (π = 0) and a flagged one labelled 1 with π = 0.8.
        given.extend([0, 1]);
        probs.extend([0.9, 0.05, 0.05, 0.3, 0.4, 0.3]);
        let n = given.len();
        let mut flagged = vec![true; n];
        flagged[n - 2] = false;
        let mut posterior = vec![1.0; n];
        posterior[n - 2] = 0.0;
        posterior[n - 1] = 0.8;
        let c = verdict_likelihoods(&given, k, &posterior, &flagged, &probs).unwrap();
        let row = |b: usize| &c[b * k..(b + 1) * k];
        assert_eq!(row(n - 2), &[1.0, 0.0, 0.0]);
        // O[0] = (10 + 0.5, 0.5) / 11 off the diagonal; O[2] had no flips: uniform 0.5.
        let o01 = 10.5 / 11.0;
        let want = [0.8 * o01, 0.2, 0.8 * 0.5];
        for (g, w) in row(n - 1).iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{:?} vs {want:?}", row(n - 1));
        }
        // π = 1 labelled 2: classes whose labels flip to 2: O[0][2] = 0.5/11, O[1][2] = 1.5/2.
        let want = [0.5 / 11.0, 1.5 / 2.0, 0.0];
        for (g, w) in row(10).iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{:?} vs {want:?}", row(10));
        }
        // Bad inputs are named.
        posterior[0] = f64::NAN;
        let e = verdict_likelihoods(&given, k, &posterior, &flagged, &probs).unwrap_err();
        assert!(e.to_string().contains("sample 0's posterior"), "{e}");
        let e = verdict_likelihoods(&given, k, &posterior[1..], &flagged, &probs).unwrap_err();
        assert!(e.to_string().contains("posteriors"), "{e}");
    }

    #[test]
    fn a_clean_set_flags_almost_nothing_even_with_a_hard_class() {
        let k = 5;
        let (q, y, _) = synth(5000, k, &symmetric(k, 0.0), &[3], 1);
        let (p, _) = NoiseModel::partition(&q, &y, k, 0.5, &vec![0.0; 5000]).unwrap();
        let rate = p.noisy_fraction();
        assert!(rate < 0.02, "clean set flagged {rate}");
    }

    #[test]
    fn symmetric_noise_rate_and_verdicts() {
        let k = 10;
        for r in [0.2, 0.4, 0.6] {
            let (q, y, truth) = synth(20000, k, &symmetric(k, r), &[], 2);
            let (p, m) = NoiseModel::partition(&q, &y, k, 0.5, &vec![0.0; 20000]).unwrap();
            let true_rate = truth.iter().filter(|&&b| b).count() as f64 / truth.len() as f64;
            assert!(
                (p.noisy_fraction() - true_rate).abs() < 0.02,
                "rate {r}: flagged {} true {true_rate}",
                p.noisy_fraction()
            );
            assert!(f1(&p.posterior_noisy, &truth) > 0.95, "rate {r}");
            assert!((m.derive().joint_noise_rate() - true_rate).abs() < 0.05);
        }
    }

    #[test]
    fn class_dependent_pair_flips_are_found_from_the_argmax_structure() {
        // 40 % of class c labelled c+1: a loss threshold cannot tell a flipped sample
        // (q_ỹ = 0.4) from a clean one of the same given class (q_ỹ = 0.6).
        let k = 6;
        let mut t = vec![0.0; k * k];
        for c in 0..k {
            t[c * k + c] = 0.6;
            t[c * k + (c + 1) % k] = 0.4;
        }
        let (q, y, truth) = synth(12000, k, &t, &[], 3);
        let (p, _) = NoiseModel::partition(&q, &y, k, 0.5, &vec![0.0; 12000]).unwrap();
        let true_rate = truth.iter().filter(|&&b| b).count() as f64 / truth.len() as f64;
        assert!((p.noisy_fraction() - true_rate).abs() < 0.03);
        assert!(f1(&p.posterior_noisy, &truth) > 0.9);
    }

    #[test]
    fn a_hard_clean_class_is_not_flagged_wholesale_under_noise() {
        let k = 5;
        let (q, y, truth) = synth(10000, k, &symmetric(k, 0.2), &[2], 4);
        let (p, _) = NoiseModel::partition(&q, &y, k, 0.5, &vec![0.0; 10000]).unwrap();
        // Clean samples of the hard class (given and true label 2).
        let (mut flagged_hard, mut hard) = (0, 0);
        for i in 0..y.len() {
            if y[i] == 2 && !truth[i] {
                hard += 1;
                flagged_hard += usize::from(p.noisy[i]);
            }
        }
        assert!(
            (flagged_hard as f64) < 0.1 * hard as f64,
            "{flagged_hard} of {hard} clean hard-class samples flagged"
        );
    }

    #[test]
    fn stepwise_updates_converge_to_the_batch_fit() {
        let k = 4;
        let (q, y, _) = synth(8000, k, &symmetric(k, 0.3), &[], 5);
        let batch = NoiseModel::fit(&q, &y, k).unwrap();
        let mut online = NoiseModel::fit(&q[..1000 * k], &y[..1000], k).unwrap();
        for (t, (qc, yc)) in q.chunks(200 * k).zip(y.chunks(200)).enumerate() {
            online.update(qc, yc, 1.0 / (t as f64 + 2.0)).unwrap();
        }
        let (a, b) = (batch.derive(), online.derive());
        assert!((a.joint_noise_rate() - b.joint_noise_rate()).abs() < 0.03);
        for (u, v) in a.thresholds.iter().zip(&b.thresholds) {
            assert!((u - v).abs() < 0.03);
        }
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        assert!(NoiseModel::fit(&[0.5, 0.5], &[2], 2).is_err());
        assert!(NoiseModel::fit(&[0.5], &[0], 2).is_err());
        assert!(NoiseModel::fit(&[f32::NAN, 0.5], &[0], 2).is_err());
        let mut m = NoiseModel::fit(&[0.9, 0.1, 0.2, 0.8], &[0, 1], 2).unwrap();
        assert!(m.update(&[0.9, 0.1], &[0], 0.0).is_err());
    }
}
