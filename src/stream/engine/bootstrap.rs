//! Phase 1, bootstrap: the first model trained on `bootstrap.samples` streamed samples and
//! published as version 1, those samples scored out of sample by cross-fitted fold models; or,
//! on a follower, the leader's first model adopted instead.

use super::*;

impl Engine {
    /// Train and publish the first model on `held`; returns the held samples' out-of-sample
    /// scores from `bootstrap.crossfit_folds` fold models (None without cross-fitting).
    ///
    /// With cross-fitting and `bootstrap.finetune_clean`, the first model is then fine-tuned
    /// on the samples the cross-fitted verdicts call clean (as a cycle's F-FT does, §3.4),
    /// before it is published (off by default; see the option's measurements).
    pub(super) fn bootstrap(
        &mut self,
        held: &[Incoming],
        events: &mut Vec<EngineEvent>,
    ) -> Result<Option<Attributions>, EngineError> {
        let data = self.as_dataset(held);
        let m = &self.cfg.model;
        let spec = ModelSpec::for_dataset(m.arch, m.hidden, &data);
        let model = Model::new(spec, &self.device, self.cfg.bootstrap.seed)?;
        tracing::info!(
            samples = data.len(),
            epochs = self.cfg.bootstrap.epochs,
            "training the first model on the stream's first samples"
        );
        let t = Instant::now();
        let recipe = TrainConfig::paper(self.cfg.bootstrap.epochs, self.cfg.bootstrap.seed);
        train(&model, &data, &recipe, &Progress::hidden(), "bootstrap")?;
        let folds = self.cfg.bootstrap.crossfit_folds;
        let can_crossfit = folds >= 2 && data.len() >= folds;
        // Cross-fitted before publishing only when the fine-tune needs the verdicts: otherwise
        // the first model goes out first (followers wait for it).
        let mut scores = if can_crossfit && self.cfg.bootstrap.finetune_clean {
            Some(self.crossfit_scores(&data, model.spec(), &recipe)?)
        } else {
            None
        };
        let mut source = format!("first samples of topic {}", self.cfg.kafka.input_topic);
        if let Some(a) = scores
            .as_ref()
            .filter(|_| self.cfg.bootstrap.finetune_clean)
        {
            let v = Verdicter::warm_up_or_fallback(&self.cfg, a, &data.labels)?;
            let post = v.posterior(self.cfg.scoring.features, a, &data.labels)?;
            let clean: Vec<usize> = (0..data.len())
                .filter(|&i| post[i] < self.cfg.scoring.threshold)
                .collect();
            // Provisional verdicts (a stand-in rule) do not decide what the model learns.
            if !v.provisional() && clean.len() >= 64 && clean.len() < data.len() {
                let ft = crate::stream::cycle::finetune_recipe(&self.cfg, self.cfg.bootstrap.seed);
                train(
                    &model,
                    &data.select(&clean),
                    &ft,
                    &Progress::hidden(),
                    "bootstrap fine-tune",
                )?;
                tracing::info!(
                    clean = clean.len(),
                    flagged = data.len() - clean.len(),
                    epochs = self.cfg.cycle.epochs,
                    "first model fine-tuned on the samples the cross-fitted verdicts call clean"
                );
                source.push_str(&format!(
                    " (then fine-tuned on the {} of {} its cross-fitted verdicts call clean)",
                    clean.len(),
                    data.len()
                ));
            }
        }
        let meta = self.store.publish(
            &self.cfg.model.name,
            &model,
            PublishInfo {
                parent_version: None,
                sample_window: Some(SampleWindow {
                    samples: data.len() as u64,
                    source,
                }),
                input_range: Some(crate::input_range::InputRange::of(&data)),
                only_if_first: true,
                ..Default::default()
            },
        )?;
        tracing::info!(
            version = meta.version,
            seconds = t.elapsed().as_secs_f64(),
            "first model trained and published"
        );
        events.push(EngineEvent::Published(self.announcement(&meta, &[])));
        if can_crossfit && scores.is_none() {
            scores = Some(self.crossfit_scores(&data, model.spec(), &recipe)?);
        }
        self.model = Some(model);
        self.set_version(meta.version);
        Ok(scores)
    }

    /// The bootstrap samples `data` scored out of sample by `bootstrap.crossfit_folds` fold
    /// models of `spec` trained with `recipe`.
    pub(super) fn crossfit_scores(
        &self,
        data: &crate::data::Dataset,
        spec: &ModelSpec,
        recipe: &TrainConfig,
    ) -> Result<Attributions, EngineError> {
        let t = Instant::now();
        let folds = self.cfg.bootstrap.crossfit_folds;
        let plan = crate::experiment::CrossFitPlan {
            folds,
            recipe: recipe.clone(),
            attribution: self.cfg.scoring.attribution,
            attribution_batch: 256,
        };
        let scores =
            crate::experiment::crossfit(data, spec, &plan, &self.device, &Progress::hidden())
                .map_err(|e| match e {
                    crate::experiment::ExperimentError::Model(m) => EngineError::Model(m),
                    other => EngineError::Mismatch(other.to_string()),
                })?;
        tracing::info!(
            folds,
            seconds = t.elapsed().as_secs_f64(),
            "bootstrap samples scored out of sample (cross-fitted)"
        );
        Ok(scores)
    }

    /// Another replica's first model `v` is in the store: adopt it (the `held` bootstrap
    /// samples become its warm-up window) and move on with no new sample.
    pub(super) fn adopt_instead_of_bootstrap(
        &mut self,
        held: Vec<Incoming>,
        v: u64,
        out: &mut Vec<Scored>,
        events: &mut Vec<EngineEvent>,
    ) -> Result<(), EngineError> {
        self.phase = Phase::Bootstrap(held);
        self.adopt_version(v)?;
        self.process(vec![], out, events)
    }
}
