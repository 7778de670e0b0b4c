//! `[cycle]`, `[replay]`, `[state]`, `[api]`: cycles and their guard, the replay buffer,
//! checkpoints, the HTTP API.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;

/// Fine-tuning scope of a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finetune {
    /// Head only (`fc`, `fc2`), §3.4 L-FT.
    Lft,
    /// All parameters, §3.4 F-FT.
    Fft,
}

/// What a cycle fine-tunes on (`cycle.objective`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinetuneObjective {
    /// The clean partition with its given labels' cross-entropy (§3.4).
    Clean,
    /// Every buffered sample outside the evaluation set, with the forward loss correction
    /// the verdicts condition ([`crate::noise_model::verdict_likelihoods`],
    /// [`crate::train::train_forward`]; not in the paper).
    Forward,
}

/// A trusted validation set for the acceptance gate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// A data set name (`mnist`, `fashion-mnist`, `csv:TRAIN,TEST`); its test split is used.
    pub dataset: String,
    /// Folder of the named data sets (default `data/`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Use at most this many samples (stratified), 0 = all.
    #[serde(default)]
    pub limit: usize,
}

/// `[cycle]`: prune → fine-tune → evaluate → accept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleConfig {
    /// Run cycles at all (only the replica owning input partition 0 runs them).
    pub enabled: bool,
    /// `lft` or `fft`.
    pub finetune: Finetune,
    /// `clean` (the paper's: the clean partition) or `forward` (every sample, forward loss
    /// correction conditioned on its verdict).
    pub objective: FinetuneObjective,
    /// Fine-tuning epochs over the fine-tuning set (`objective`).
    pub epochs: usize,
    /// Samples the replay buffer must hold before a cycle may start (more data, better
    /// fine-tuning; at least 500).
    pub min_samples: usize,
    /// Fraction of H pruned (paper: 0.156).
    pub prune_fraction: f64,
    /// Regrow the neurons the parent had pruned before pruning anew (`Model::regrow`), so
    /// `prune_fraction` of H is pruned however many cycles run; `false`: pruning accumulates
    /// over cycles up to half of H, after which cycles only fine-tune.
    pub regrow: bool,
    /// Fraction of the buffered samples (`cycle.guard.holdout = "unseen"`; of the clean ones
    /// with `"clean"`) held out to compare the models, drawn from those the current model has
    /// not trained on and at most half of them ([`crate::stream::cycle`]).
    pub holdout_fraction: f64,
    /// mixup's α in the fine-tuning recipe ([`crate::train::TrainConfig::mixup`]; 0 =
    /// off) of the cycle and of the bootstrap's optional clean fine-tune: mixed batches keep
    /// the fine-tune from memorising the wrong labels left in the clean partition.
    pub mixup: f64,
    /// Class balance of a cycle's clean fine-tune (`objective = "clean"` only; not the
    /// bootstrap's optional fine-tune): each class's clean samples are repeated until the
    /// class has the clean partition's overall share of its labels (outside the held-out
    /// slice), at most this many times (1 = off). The partition keeps fewer clean samples of
    /// a hard class (its correct labels look noisy more often); fine-tuning on it as it is
    /// teaches the model to stop predicting that class
    /// ([`crate::stream::cycle::class_balanced_rows`]).
    pub class_balance: f64,
    /// Decay of the moving average of the weights the cycle's fine-tune (and the bootstrap's
    /// optional clean fine-tune) ends with
    /// ([`crate::train::TrainConfig::ema`]; 0 = off, the paper's recipe; at most 0.9999;
    /// default 0.999, where a 3-epoch cycle's `(1 + t) / (10 + t)` schedule governs: about
    /// the last tenth of its steps). The candidate is the average of the fine-tune's last
    /// steps instead of its last step, which smooths out the step-to-step swings that wrong
    /// labels left in the clean partition cause (README "Does the repair work").
    pub ema: f64,
    /// The acceptance guard (`[cycle.guard]`, [`crate::stream::guard`]).
    pub guard: crate::stream::guard::GuardParams,
    /// A trusted validation set replaces the held-out slice when given.
    pub validation: Option<ValidationConfig>,
    /// Seed of the fine-tuning shuffles.
    pub seed: u64,
}

impl Default for CycleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            finetune: Finetune::Fft,
            objective: FinetuneObjective::Clean,
            epochs: 3,
            min_samples: 20_000,
            prune_fraction: crate::prune::DEFAULT_PRUNE_FRACTION,
            regrow: true,
            holdout_fraction: 0.1,
            mixup: 0.0,
            class_balance: 4.0,
            ema: 0.999,
            guard: Default::default(),
            validation: None,
            seed: 2,
        }
    }
}

/// `[replay]`: the bounded replay buffer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Samples kept at most.
    pub capacity: usize,
    /// Memory cap in MiB (wins over `capacity`).
    pub max_mib: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            capacity: 30_000,
            max_mib: 128,
        }
    }
}

/// `[state]`: checkpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Folder of `checkpoint.json`.
    pub dir: PathBuf,
    /// Seconds between checkpoints (also written at shutdown and after each cycle).
    pub checkpoint_interval_secs: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: "state".into(),
            checkpoint_interval_secs: 30,
        }
    }
}

/// `[api]`: the HTTP API served in the same process.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API at all.
    pub enabled: bool,
    /// Listen address (loopback unless you mean it).
    pub listen: String,
    /// Bearer token for rollback and cycle; empty disables those endpoints.
    pub admin_token: String,
    /// Largest predict batch.
    pub max_batch: usize,
    /// The API's base URL as clients outside reach it (`http[s]://host[:port][/prefix]`, e.g.
    /// the Service's or the ingress' address): `ModelPublished.model_url` is
    /// `<public_url>/v1/models/<name>/versions/<version>/model.onnx`. Empty (default): the
    /// events carry no URL.
    pub public_url: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            admin_token: String::new(),
            max_batch: 1024,
            public_url: String::new(),
        }
    }
}

impl CycleConfig {
    /// Problems of `[cycle]` (the prune count depends on `model.hidden`), one line each.
    pub fn problems(&self, model: &ModelConfig) -> Vec<String> {
        let mut p = vec![];
        let c = self;
        if let Err(e) = crate::prune::prune_count(c.prune_fraction, model.hidden) {
            p.push(format!("cycle.prune_fraction: {e}"));
        }
        if c.epochs == 0 {
            p.push("cycle.epochs must be >= 1".into());
        }
        if !(c.mixup >= 0.0 && c.mixup <= 10.0) {
            p.push(format!(
                "cycle.mixup = {}: must be in [0, 10] (mixup's Beta α; 0 = off)",
                c.mixup
            ));
        }
        if !(c.class_balance >= 1.0 && c.class_balance <= 100.0) {
            p.push(format!(
                "cycle.class_balance = {}: must be in [1, 100] (the most a class's clean samples \
                 are repeated; 1 = off)",
                c.class_balance
            ));
        }
        if !(c.ema >= 0.0 && c.ema <= 0.9999) {
            p.push(format!(
                "cycle.ema = {}: must be in [0, 0.9999] (the weight average's decay; 0 = off)",
                c.ema
            ));
        }
        if c.min_samples < MIN_CYCLE_SAMPLES {
            p.push(format!(
                "cycle.min_samples = {}: must be >= {}",
                c.min_samples, MIN_CYCLE_SAMPLES
            ));
        }
        if !(c.holdout_fraction > 0.0 && c.holdout_fraction < 0.5) {
            p.push(format!(
                "cycle.holdout_fraction = {}: must be in (0, 0.5)",
                c.holdout_fraction
            ));
        }
        p.extend(c.guard.problems());
        if let Some(v) = &c.validation {
            if let Err(e) = v.dataset.parse::<crate::data::DatasetSpec>() {
                p.push(format!("cycle.validation.dataset: {e}"));
            }
        }
        p
    }
}

impl ReplayConfig {
    /// Problems of `[replay]` (its slots depend on the model's input and classes), one line each.
    pub fn problems(&self, model: &ModelConfig) -> Vec<String> {
        let mut p = vec![];
        if let Err(e) = crate::stream::replay::ReplayBuffer::slots_per_class(
            self.capacity,
            self.max_mib << 20,
            model.num_features.max(1),
            model.num_classes.max(1),
        ) {
            p.push(e);
        }
        p
    }
}

impl ApiConfig {
    /// Problems of `[api]`, one line each, naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        let url = &self.public_url;
        if !url.is_empty()
            && !((url.starts_with("http://") || url.starts_with("https://"))
                && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty())
                && !url.contains(char::is_whitespace)
                && !url.contains(['?', '#']))
        {
            p.push(format!(
                "api.public_url = '{url}': expected http[s]://host[:port][/prefix] (no query, no fragment) or empty"
            ));
        }
        if self.enabled && self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("api.listen = '{}': expected ip:port", self.listen));
        }
        p
    }
}
