//! `rlap experiment`: Algorithm 1 on a real data set and the paper's table, or a sweep of it.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use rlap::attribution::AttributionMode;
use rlap::corruption::Corruption;
use rlap::experiment::{self, sweep::SweepSpec, ExperimentConfig};
use rlap::model::{parse_device, Arch};
use rlap::partition::{Estimator, PartitionFeatures};
use rlap::progress::Progress;
use rlap::prune::Criterion;

use crate::args::{DataArgs, JsonOut};

/// `rlap experiment`'s options.
#[derive(Args)]
pub struct ExperimentArgs {
    #[command(flatten)]
    data: DataArgs,
    /// none | input-gaussian:SIGMA:RATE | label-symmetric:RATE | label-pair:RATE | label-matrix:PATH
    #[arg(long, default_value = "label-symmetric:0.4")]
    corruption: Corruption,
    /// mlp | cnn
    #[arg(long, default_value = "mlp")]
    model: Arch,
    /// Neurons H of the target layer fc.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// max-class | label-gradient
    #[arg(long, default_value = "label-gradient")]
    attribution: AttributionMode,
    /// rlap | abs | rms | freq | std | random
    #[arg(long, default_value = "rlap")]
    criterion: Criterion,
    /// Fraction of the H neurons to prune.
    #[arg(long, default_value_t = rlap::prune::DEFAULT_PRUNE_FRACTION)]
    prune_fraction: f64,
    /// Epochs of Initial, Retrain and Oracle (the same recipe for all three).
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Epochs of L-FT and F-FT.
    #[arg(long, default_value_t = 5)]
    finetune_epochs: usize,
    /// Mini-batch size of every training run (paper: 64).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam learning rate (paper: 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Stratified subsample of the training split.
    #[arg(long)]
    train_size: Option<usize>,
    /// Verdict rule: noise-model (class-conditional noise transition on out-of-sample class
    /// probabilities; for label noise) | mixture (the paper's 2-component GMM; for corrupted
    /// inputs).
    #[arg(long, default_value = "noise-model")]
    estimator: Estimator,
    /// Folds of the cross-fitting that scores each training sample with a model that did not
    /// train on it; 0 scores in-sample with Initial (the paper's way).
    #[arg(long, default_value_t = 5)]
    crossfit: usize,
    /// Epochs of each cross-fitting model (independent of --epochs).
    #[arg(long, default_value_t = 5)]
    crossfit_epochs: usize,
    /// Stop after the partition: Initial row and partition report only.
    #[arg(long)]
    partition_only: bool,
    /// Mixture feature space (--estimator mixture): summary ([ln‖a‖₂, ln CE]) | attribution
    /// (paper: z-scored H-dim vector).
    #[arg(long, default_value = "summary")]
    partition_features: PartitionFeatures,
    /// Posterior P(noisy) at or above which a sample is noisy.
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    /// Master seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    out: JsonOut,
    /// Save the F-FT model (weights and prune mask, safetensors) here, for `rlap publish`.
    #[arg(long)]
    save_checkpoint: Option<PathBuf>,
    /// Write one CSV row per training sample here (not with --sweep).
    #[arg(long)]
    posteriors: Option<PathBuf>,
    /// rates:R1,R2,... (re-run at each corruption rate) or criteria:C1,C2,... (one Initial and
    /// partition, every criterion pruned and fine-tuned from it; `none` fine-tunes unpruned).
    #[arg(long)]
    sweep: Option<String>,
}

/// `rlap experiment`.
pub fn run(a: ExperimentArgs, progress: &Progress) -> Result<()> {
    let cfg = ExperimentConfig {
        dataset: a.data.dataset.clone(),
        data_dir: a.data.dir(),
        corruption: a.corruption,
        arch: a.model,
        hidden: a.hidden,
        attribution: a.attribution,
        criterion: a.criterion,
        prune_fraction: a.prune_fraction,
        epochs: a.epochs,
        finetune_epochs: a.finetune_epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        train_size: a.train_size,
        seed: a.seed,
        threshold: a.threshold,
        partition_features: a.partition_features,
        estimator: a.estimator,
        crossfit_folds: a.crossfit,
        crossfit_epochs: a.crossfit_epochs,
        partition_only: a.partition_only,
        device: parse_device(&a.device)?,
        ..Default::default()
    };
    match a.sweep.as_deref() {
        None => {
            let data = experiment::prepare(&cfg)?;
            let (report, s1, fft) = experiment::run(&cfg, &data, None, progress)?;
            print!("{}", report.table());
            a.out.write(&report)?;
            if let Some(p) = &a.posteriors {
                experiment::write_posteriors(p, &data, &s1)?;
            }
            if let Some(p) = &a.save_checkpoint {
                match fft {
                    Some(m) => m.save(p)?,
                    None => bail!("--save-checkpoint needs the F-FT model: drop --partition-only"),
                }
            }
            Ok(())
        }
        Some(spec) => {
            if a.posteriors.is_some() {
                bail!("--posteriors writes one run's samples: drop it with --sweep");
            }
            let spec: SweepSpec = spec.parse()?;
            let reports = experiment::sweep::sweep(&cfg, &spec, progress, |r| {
                println!("{}", r.table());
            })?;
            print!("{}", experiment::sweep::sweep_table(&spec, &reports));
            a.out.write(&reports)
        }
    }
}
