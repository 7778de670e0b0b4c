//! Out-of-sample scores: k-fold cross-fitting (each training sample scored by a model that
//! did not train on it; also the daemon's bootstrap) and the split of those scores into clean
//! and noisy (§3.2.2 mixture or the noise model).

use super::*;

/// How [`crossfit`] scores a data set out of sample.
#[derive(Clone, Debug)]
pub struct CrossFitPlan {
    /// Folds (≥ 2).
    pub folds: usize,
    /// The training recipe of each fold model (its seed is offset per fold).
    pub recipe: TrainConfig,
    /// Attribution mode of the scoring pass.
    pub attribution: AttributionMode,
    /// Samples per attribution batch.
    pub attribution_batch: usize,
}

/// Score every sample of `data` out of sample: split it into `plan.folds` seeded folds, train
/// a fresh model of `spec` on all folds but one and attribute the held-out fold with it. Rows
/// come back in `data`'s order; activations are the fold models' (not Initial's).
///
/// # Errors
/// [`ModelError`] from training or attribution; [`ExperimentError::Invalid`] for fewer than
/// two folds or fewer samples than folds.
pub fn crossfit(
    data: &Dataset,
    spec: &ModelSpec,
    plan: &CrossFitPlan,
    device: &Device,
    progress: &Progress,
) -> Result<Attributions, ExperimentError> {
    let (folds, recipe) = (plan.folds, &plan.recipe);
    let (attribution, attribution_batch) = (plan.attribution, plan.attribution_batch);
    let n = data.len();
    if folds < 2 || n < folds {
        return Err(ExperimentError::Invalid(format!(
            "cross-fitting needs at least 2 folds and as many samples ({folds} folds, {n} samples)"
        )));
    }
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(
        recipe.seed ^ 0x0c0f_f01d,
    ));
    let fold_of: Vec<usize> = {
        let mut f = vec![0; n];
        for (rank, &i) in order.iter().enumerate() {
            f[i] = rank % folds;
        }
        f
    };
    let (h, k) = (spec.hidden, spec.num_classes);
    let mut out = Attributions {
        n,
        hidden: h,
        values: vec![0.0; n * h],
        activations: vec![0.0; n * h],
        loss: vec![0.0; n],
        predicted: vec![0; n],
        probs: vec![0.0; n * k],
    };
    for f in 0..folds {
        let (held, rest): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold_of[i] == f);
        let model = Model::new(
            spec.clone(),
            device,
            recipe.seed.wrapping_add(100 + f as u64),
        )?;
        let cfg = TrainConfig {
            seed: recipe.seed.wrapping_add(100 + f as u64),
            ..recipe.clone()
        };
        train(
            &model,
            &data.select(&rest),
            &cfg,
            progress,
            &format!("cross-fit {}/{folds}", f + 1),
        )?;
        let a = attribute(
            &model,
            &data.select(&held),
            attribution,
            attribution_batch,
            progress,
        )?;
        for (r, &i) in held.iter().enumerate() {
            out.values[i * h..(i + 1) * h].copy_from_slice(&a.values[r * h..(r + 1) * h]);
            out.activations[i * h..(i + 1) * h].copy_from_slice(&a.activations[r * h..(r + 1) * h]);
            out.probs[i * k..(i + 1) * k].copy_from_slice(&a.probs[r * k..(r + 1) * k]);
            out.loss[i] = a.loss[r];
            out.predicted[i] = a.predicted[r];
        }
    }
    Ok(out)
}

/// Split `data` with `estimator` from its scores `a` (§3.2.2 mixture or the noise model).
///
/// # Errors
/// [`PartitionError`] from the fit.
pub fn partition_scores(
    estimator: Estimator,
    a: &Attributions,
    data: &Dataset,
    params: &PartitionParams,
) -> Result<Partition, PartitionError> {
    match estimator {
        Estimator::Mixture => fit_partition(&a.values, a.n, a.hidden, &a.loss, params),
        Estimator::NoiseModel => {
            params.validate()?;
            Ok(NoiseModel::partition(
                &a.probs,
                &data.labels,
                data.num_classes,
                params.threshold,
                &a.loss,
            )?
            .0)
        }
    }
}
