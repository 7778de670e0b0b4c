//! Cycles seen from the engine: when one starts (trigger, leadership, buffer size), polling
//! the cycle thread between micro-batches, swapping in an accepted candidate or a version
//! another replica published, and finishing a running cycle at shutdown.

use super::*;

impl Engine {
    pub(super) fn maybe_start_cycle(&mut self) {
        if self.cycle.is_some() || !self.cfg.cycle.enabled || !self.leader {
            return;
        }
        let now = self.clock.elapsed().as_secs_f64();
        let due = self.trigger.due(now);
        if !(due || self.force_cycle) {
            return;
        }
        let needed = self
            .cfg
            .cycle
            .min_samples
            .min(self.replay.per_class_capacity() * self.cfg.model.num_classes)
            .max(MIN_CYCLE_SAMPLES);
        if self.replay.len() < needed {
            tracing::debug!(
                replay = self.replay.len(),
                "cycle due but the replay buffer is still small"
            );
            return;
        }
        let (Some(model), Some(gmm)) = (&self.model, &self.gmm) else {
            return;
        };
        let cause = if self.force_cycle { "api" } else { "trigger" };
        self.force_cycle = false;
        if gmm.provisional() {
            // No cycle on provisional verdicts: the partition it would prune and fine-tune by
            // comes from a stand-in rule. First try the mixture again on the replay buffer
            // (the input may have moved on from the duplicates that defeated it).
            let refit = warm_verdicter(
                &self.cfg,
                model,
                &self.replay.snapshot(self.cfg.image_shape()),
                None,
            );
            let now = self.clock.elapsed().as_secs_f64();
            match refit {
                Ok(v) if !v.provisional() => {
                    tracing::info!(
                        samples = self.replay.len(),
                        "the mixture fits on the replay buffer now: verdicts are no longer provisional"
                    );
                    self.gmm = Some(v);
                    self.trigger.cycle_ended(now, false);
                    self.provisional_skip_recorded = false;
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "re-fitting the verdict rule on the replay buffer failed")
                }
            }
            // Recorded as skipped once per provisional spell (not at every cool-down, which
            // would fill the cycle history and the CyclesFailing alert); the cool-down spaces
            // the tries.
            if std::mem::replace(&mut self.provisional_skip_recorded, true) {
                tracing::debug!("cycle due, verdicts still provisional");
                self.trigger.cycle_ended(now, false);
                return;
            }
            let mut record = CycleRecord::new(cause, self.version, self.replay.len());
            record.outcome = CycleOutcome::Skipped;
            record.reason = "the verdicts are provisional: the configured mixture could not be \
                             fitted on this model's scores and the noise model stands in; the \
                             mixture is tried again on the replay buffer whenever a cycle falls \
                             due, and with each new model version"
                .into();
            self.finish_cycle(
                CycleResult {
                    record,
                    accepted: None,
                },
                &mut Vec::new(),
            );
            return;
        }
        let model = match model.deep_clone() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "could not copy the model for a cycle");
                return;
            }
        };
        let snap = self.replay.snapshot_with_seq(self.cfg.image_shape());
        self.cycle_last_seq = snap.seq.last().copied().unwrap_or(0);
        let input = CycleInput {
            model,
            version: self.version,
            holdout_from: snap.seq.partition_point(|&q| q < self.unseen_from_seq),
            samples: snap.data,
            posterior_noisy: snap.posterior_noisy,
            gmm: gmm.clone(),
            validation: self.validation.clone(),
            cause: cause.into(),
            noisy_fraction: self.trigger.estimate(),
        };
        tracing::info!(
            cause,
            version = self.version,
            noisy_fraction = input.noisy_fraction,
            samples = input.samples.len(),
            "cycle started"
        );
        self.trigger.cycle_started();
        let (tx, rx) = mpsc::channel();
        let cfg = self.cfg.clone();
        let store = self.store.clone();
        let handle = std::thread::Builder::new()
            .name("rlap-cycle".into())
            .spawn(move || {
                // The cycle's numeric work runs on a pool of its own: on the shared pool a
                // worker waiting inside one of the scorer's matrix products could steal a
                // whole training epoch and hold that scored batch until it ends.
                let result = match crate::cpu::private_pool("rlap-cycle") {
                    Ok(pool) => pool.install(|| run_cycle(&cfg, &store, input)),
                    Err(e) => {
                        tracing::warn!(error = %e, "no thread pool for the cycle: running it on the shared one");
                        run_cycle(&cfg, &store, input)
                    }
                };
                let _ = tx.send(result);
            })
            .expect("spawning a thread");
        self.cycle = Some((handle, rx));
    }

    /// Handle a finished cycle and, on followers, a version published by the leader.
    ///
    /// # Errors
    /// [`EngineError`] when a follower cannot load a newer version.
    pub fn poll(&mut self, events: &mut Vec<EngineEvent>) -> Result<(), EngineError> {
        if let Some((_, rx)) = &self.cycle {
            match rx.try_recv() {
                Ok(result) => {
                    let (handle, _) = self.cycle.take().expect("checked");
                    let _ = handle.join();
                    self.finish_cycle(result, events);
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.cycle = None;
                    self.trigger
                        .cycle_ended(self.clock.elapsed().as_secs_f64(), false);
                    tracing::error!("the cycle thread ended without a result");
                }
            }
        }
        if !self.leader && self.cycle.is_none() && self.last_store_check.elapsed().as_secs() >= 2 {
            self.last_store_check = Instant::now();
            if let Some(v) = self.newest_version()? {
                if v > self.version {
                    self.adopt_version(v)?;
                }
            }
        }
        // A due cycle (or one asked for through the API) starts even when no sample arrives.
        if matches!(self.phase, Phase::Scoring) {
            self.maybe_start_cycle();
        }
        Ok(())
    }

    pub(super) fn adopt_version(&mut self, v: u64) -> Result<(), EngineError> {
        self.load_version(v)?;
        // The adopted model never saw the held rows: they count as unseen below.
        self.warmup_trained = false;
        // Trained elsewhere (the leader's buffer): count only what arrives from now on as unseen.
        self.unseen_from_seq = self.replay.seen() + 1;
        self.trigger.reset_window();
        // Samples held in bootstrap or warm-up keep waiting for their verdicts (their offsets
        // are in flight): they become the new version's warm-up window.
        let held = match std::mem::replace(&mut self.phase, Phase::Scoring) {
            Phase::Bootstrap(h) | Phase::Warming(h) => h,
            Phase::Scoring => vec![],
        };
        if !held.is_empty() {
            self.phase = Phase::Warming(held);
        } else if let Some(v) = self.gmm.as_ref().and_then(Verdicter::for_new_model) {
            self.gmm = Some(v);
            self.phase = Phase::Scoring;
        } else if self.replay.len() >= self.cfg.mixture.warmup_samples.min(MIN_CYCLE_SAMPLES) {
            let model = self.model.as_ref().expect("just loaded");
            self.gmm = Some(warm_verdicter(
                &self.cfg,
                model,
                &self.replay.snapshot(self.cfg.image_shape()),
                None,
            )?);
            self.phase = Phase::Scoring;
        } else {
            self.phase = Phase::Warming(vec![]);
        }
        Ok(())
    }

    pub(super) fn finish_cycle(&mut self, result: CycleResult, events: &mut Vec<EngineEvent>) {
        let rec = result.record;
        CycleFinished {
            outcome: rec.outcome.as_str(),
            stage_seconds: &rec.stage_seconds,
        }
        .emit(&self.metrics);
        let now = self.clock.elapsed().as_secs_f64();
        match (rec.outcome, result.accepted) {
            (CycleOutcome::Accepted, Some((model, meta, gmm))) => {
                tracing::info!(
                    version = meta.version,
                    parent = rec.parent_version,
                    accuracy_before = ?rec.accuracy_before,
                    accuracy_after = ?rec.accuracy_after,
                    pruned = rec.pruned_now.len(),
                    reason = %rec.reason,
                    "cycle accepted; new model version swapped in"
                );
                let extra = vec![
                    ("eval_samples".to_string(), rec.eval_samples as f64),
                    ("finetune_samples".to_string(), rec.finetune_samples as f64),
                ];
                events.push(EngineEvent::Published(self.announcement(&meta, &extra)));
                self.model = Some(model);
                // The rule carried over from the one scoring now (updated while the cycle ran),
                // not from the cycle's copy taken at its start; the mixture takes the cycle's
                // re-fit.
                self.gmm = Some(
                    self.gmm
                        .as_ref()
                        .and_then(Verdicter::for_new_model)
                        .unwrap_or(gmm),
                );
                self.phase = Phase::Scoring;
                self.set_version(meta.version);
                // The new model fine-tuned on that snapshot.
                self.unseen_from_seq = self.cycle_last_seq + 1;
                self.trigger.cycle_ended(now, true);
            }
            (outcome, _) => {
                tracing::warn!(outcome = outcome.as_str(), reason = %rec.reason, "cycle not accepted; the current model keeps scoring");
                self.trigger.cycle_ended(now, false);
            }
        }
        self.cycles.push(rec);
        if self.cycles.len() > 20 {
            self.cycles.remove(0);
        }
    }

    /// Wait for a running cycle to end (shutdown), handling its result.
    pub fn finish(&mut self, events: &mut Vec<EngineEvent>) {
        if let Some((handle, rx)) = self.cycle.take() {
            tracing::info!("waiting for the running cycle to finish");
            if let Ok(result) = rx.recv() {
                let _ = handle.join();
                self.finish_cycle(result, events);
            }
        }
    }
}
