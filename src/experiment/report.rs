//! The experiment's report: one [`Row`] per model of the paper's table (accuracy and macro
//! P/R/F1 on the clean test split), the partition's detection scores, timings; the table
//! text and the JSON form.

use super::*;

/// One row of the paper's table: a model evaluated on the clean test split.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `Initial`, `Pruned`, `L-FT`, `F-FT`, `Retrain`, `Relabel` or `Oracle`.
    pub name: String,
    /// Test-split accuracy, in [0, 1].
    pub accuracy: f64,
    /// Test-split macro precision, recall and F1 (unweighted means over classes).
    pub macro_precision: f64,
    /// See `macro_precision`.
    pub macro_recall: f64,
    /// See `macro_precision`.
    pub macro_f1: f64,
    /// Mean wall-clock seconds per training epoch (0 for Pruned).
    pub seconds_per_epoch: f64,
    /// Wall-clock seconds to produce this row's model (Pruned: attribution + partition +
    /// scoring + pruning).
    pub total_seconds: f64,
    /// Training epochs run.
    pub epochs: usize,
    /// Training samples used.
    pub train_samples: usize,
}

/// Everything an experiment measured. Keys are stable (documented in the README).
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentReport {
    /// The settings of the run.
    pub config: ExperimentConfig,
    /// Training samples N (after subsampling).
    pub train_samples: usize,
    /// Test samples.
    pub test_samples: usize,
    /// Table rows in the paper's order.
    pub rows: Vec<Row>,
    /// The partition against the hidden mask.
    pub partition: DetectionReport,
    /// Mixture weights, clean component first.
    pub mixture_weights_clean_noisy: [f64; 2],
    /// Mean given-label cross-entropy, clean component first.
    pub mixture_mean_loss_clean_noisy: [f64; 2],
    /// Pruned neuron indices (ascending).
    pub pruned_neurons: Vec<usize>,
    /// Ridge λ of the OLS sensitivity solve (`rlap` criterion), for numerical stability only.
    pub regression_ridge_lambda: Option<f64>,
    /// Covariance regularisation of the mixture fit that succeeded.
    pub mixture_reg_covar: f64,
    /// Wall-clock seconds of the attribution pass over the training split.
    pub attribution_seconds: f64,
    /// Wall-clock seconds of the mixture fit.
    pub partition_seconds: f64,
    /// Wall-clock seconds of the cross-fitting (training the fold models and scoring).
    pub crossfit_seconds: f64,
    /// Wall-clock seconds of neuron scoring (the OLS solve for `rlap`).
    pub scoring_seconds: f64,
    /// Whole experiment wall-clock seconds.
    pub total_seconds: f64,
}

impl ExperimentReport {
    /// Gather a run's figures: `rows` in table order, the partition of `s1` scored against
    /// the hidden truth of `data`.
    pub fn assemble(
        cfg: &ExperimentConfig,
        data: &Prepared,
        s1: &Stage1,
        rows: Vec<Row>,
        pruned_neurons: Vec<usize>,
        scoring_seconds: f64,
        total_seconds: f64,
    ) -> Self {
        let p = &s1.partition;
        let (c, nz) = (p.clean_component, 1 - p.clean_component);
        ExperimentReport {
            config: cfg.clone(),
            train_samples: data.noisy.len(),
            test_samples: data.test.len(),
            rows,
            partition: data.truth.detection_report(&p.posterior_noisy, &p.noisy),
            mixture_weights_clean_noisy: [p.weights[c], p.weights[nz]],
            mixture_mean_loss_clean_noisy: [p.component_mean_loss[c], p.component_mean_loss[nz]],
            pruned_neurons,
            regression_ridge_lambda: None,
            mixture_reg_covar: p.reg_covar,
            attribution_seconds: s1.attribution_seconds,
            partition_seconds: s1.partition_seconds,
            crossfit_seconds: s1.crossfit_seconds,
            scoring_seconds,
            total_seconds,
        }
    }

    /// The row named `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// The paper-style table and the partition summary as text.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        s.push_str(&format!(
            "rlap experiment: dataset {} | corruption {} | model {} (H={}) | attribution {} | verdicts {} | criterion {} | prune {:.1}% | N={} | seed {}\n",
            c.dataset, c.corruption, c.arch, c.hidden, c.attribution,
            match c.estimator {
                Estimator::NoiseModel => "noise-model".to_string(),
                Estimator::Mixture => format!("mixture on {}", c.partition_features),
            } + &if c.crossfit_folds >= 2 {
                format!(" ({}-fold cross-fitted, {} epochs)", c.crossfit_folds, c.crossfit_epochs)
            } else {
                " (in-sample)".to_string()
            },
            c.criterion,
            100.0 * c.prune_fraction, self.train_samples, c.seed
        ));
        s.push_str(&format!(
            "{:<8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9}\n",
            "model", "accuracy", "macro-P", "macro-R", "macro-F1", "s/epoch", "total s"
        ));
        for r in &self.rows {
            s.push_str(&format!(
                "{:<8} {:>9.4} {:>10.4} {:>10.4} {:>9.4} {:>9.2} {:>9.1}\n",
                r.name,
                r.accuracy,
                r.macro_precision,
                r.macro_recall,
                r.macro_f1,
                r.seconds_per_epoch,
                r.total_seconds
            ));
        }
        let p = &self.partition;
        s.push_str(&format!(
            "partition (noisy = positive): precision {:.4} recall {:.4} F1 {:.4} AUROC {:.4} | noise rate estimated {:.4} true {:.4}\n",
            p.precision, p.recall, p.f1, p.auroc, p.estimated_noise_rate, p.true_noise_rate
        ));
        s.push_str(&format!(
            "pruned {} neurons | timings: attribution {:.1}s, cross-fit {:.1}s, partition {:.1}s, scoring {:.1}s, total {:.1}s\n",
            self.pruned_neurons.len(), self.attribution_seconds, self.crossfit_seconds,
            self.partition_seconds, self.scoring_seconds, self.total_seconds
        ));
        s
    }
}
