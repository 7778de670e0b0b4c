//! The cycle trigger: the estimated noise rate of the stream and when it calls for a cycle.
//!
//! This module owns two estimates of the noisy fraction of recent verdicts — a count-based
//! sliding window of the last `window` verdicts and an EWMA with per-sample weight `alpha` —
//! and the decision rule: the trigger is *above* once the chosen estimate reaches
//! `threshold` and stays above until it falls below `threshold − hysteresis` (no flapping);
//! while above, a cycle is due when the window holds at least `min_samples` verdicts of the
//! current model version and the cool-down since the last cycle ended has passed. A new model
//! version clears the window (its verdicts mean something new) but keeps the EWMA.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Which estimate drives the trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerSource {
    /// The sliding count window.
    Window,
    /// The exponentially weighted moving average.
    Ewma,
}

/// Validated trigger settings (`[trigger]` in the config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerParams {
    /// Noisy fraction in (0, 1) at which a cycle is due.
    pub noisy_fraction: f64,
    /// Re-arm below `noisy_fraction − hysteresis`, in [0, noisy_fraction).
    pub hysteresis: f64,
    /// Verdicts in the sliding window (> 0).
    pub window: usize,
    /// EWMA weight of each new verdict, in (0, 1].
    pub ewma_alpha: f64,
    /// Verdicts of the current model version needed before a cycle can fire.
    pub min_samples: usize,
    /// Seconds after a cycle ends before another may start.
    pub cooldown_secs: f64,
    /// Which estimate is compared with the threshold.
    pub source: TriggerSource,
}

impl Default for TriggerParams {
    fn default() -> Self {
        Self {
            noisy_fraction: 0.3,
            hysteresis: 0.05,
            window: 5000,
            ewma_alpha: 0.001,
            min_samples: 2000,
            cooldown_secs: 60.0,
            source: TriggerSource::Window,
        }
    }
}

impl TriggerParams {
    /// Check ranges; each problem is one line naming the key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = vec![];
        if !(self.noisy_fraction > 0.0 && self.noisy_fraction < 1.0) {
            p.push(format!(
                "trigger.noisy_fraction = {}: must be in (0, 1)",
                self.noisy_fraction
            ));
        }
        if !(self.hysteresis >= 0.0 && self.hysteresis < self.noisy_fraction) {
            p.push(format!(
                "trigger.hysteresis = {}: must be in [0, trigger.noisy_fraction)",
                self.hysteresis
            ));
        }
        if self.window == 0 {
            p.push("trigger.window = 0: must be > 0".into());
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            p.push(format!(
                "trigger.ewma_alpha = {}: must be in (0, 1]",
                self.ewma_alpha
            ));
        }
        if self.min_samples > self.window {
            p.push(format!(
                "trigger.min_samples = {} exceeds trigger.window = {}",
                self.min_samples, self.window
            ));
        }
        if !(self.cooldown_secs >= 0.0 && self.cooldown_secs.is_finite()) {
            p.push(format!(
                "trigger.cooldown_secs = {}: must be >= 0",
                self.cooldown_secs
            ));
        }
        p
    }
}

/// Trigger state (checkpointed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoiseTrigger {
    /// Settings.
    pub params: TriggerParams,
    /// Noisy flags of the last `window` verdicts of the current model version.
    window: VecDeque<bool>,
    window_noisy: usize,
    /// EWMA of the noisy flag (None before the first verdict).
    ewma: Option<f64>,
    /// Hysteresis state.
    above: bool,
    /// Seconds (daemon clock) when the last cycle ended, if any.
    last_cycle_end: Option<f64>,
    /// A cycle is running now.
    running: bool,
}

impl NoiseTrigger {
    /// A trigger with empty estimates.
    pub fn new(params: TriggerParams) -> Self {
        Self {
            window: VecDeque::with_capacity(params.window),
            params,
            window_noisy: 0,
            ewma: None,
            above: false,
            last_cycle_end: None,
            running: false,
        }
    }

    /// Record one verdict's noisy flag.
    pub fn observe(&mut self, noisy: bool) {
        // `while`: a checkpoint restored under a smaller `trigger.window` shrinks at once.
        while self.window.len() >= self.params.window.max(1) {
            if self.window.pop_front() == Some(true) {
                self.window_noisy -= 1;
            }
        }
        self.window.push_back(noisy);
        self.window_noisy += usize::from(noisy);
        let x = f64::from(u8::from(noisy));
        self.ewma = Some(match self.ewma {
            None => x,
            Some(e) => e + self.params.ewma_alpha * (x - e),
        });
        // Decide the hysteresis state only on a meaningful window (not on the first verdicts
        // after a model swap).
        if self.params.source == TriggerSource::Window
            && self.window.len() < self.params.min_samples.max(1)
        {
            return;
        }
        let v = self.estimate();
        if v >= self.params.noisy_fraction {
            self.above = true;
        } else if v < self.params.noisy_fraction - self.params.hysteresis {
            self.above = false;
        }
    }

    /// Noisy fraction over the sliding window (0 when empty).
    pub fn window_fraction(&self) -> f64 {
        self.window_noisy as f64 / self.window.len().max(1) as f64
    }

    /// The EWMA of the noisy flag (0 before any verdict).
    pub fn ewma_fraction(&self) -> f64 {
        self.ewma.unwrap_or(0.0)
    }

    /// The estimate the trigger compares with the threshold.
    pub fn estimate(&self) -> f64 {
        match self.params.source {
            TriggerSource::Window => self.window_fraction(),
            TriggerSource::Ewma => self.ewma_fraction(),
        }
    }

    /// Verdicts in the window.
    pub fn window_len(&self) -> usize {
        self.window.len()
    }

    /// True while the estimate is above the threshold (with hysteresis).
    pub fn is_above(&self) -> bool {
        self.above
    }

    /// True when a cycle should start now (`now_secs` on the daemon's monotonic clock).
    pub fn due(&self, now_secs: f64) -> bool {
        !self.running
            && self.above
            && self.window.len() >= self.params.min_samples
            && self
                .last_cycle_end
                .is_none_or(|t| now_secs - t >= self.params.cooldown_secs)
    }

    /// A cycle has started.
    pub fn cycle_started(&mut self) {
        self.running = true;
    }

    /// The cycle ended (accepted or not) at `now_secs`; `new_version` clears the window.
    pub fn cycle_ended(&mut self, now_secs: f64, new_version: bool) {
        self.running = false;
        self.last_cycle_end = Some(now_secs);
        if new_version {
            self.reset_window();
        }
    }

    /// Forget the window (a new model version); the EWMA and hysteresis state are kept.
    pub fn reset_window(&mut self) {
        self.window.clear();
        self.window_noisy = 0;
        if self.params.source == TriggerSource::Window {
            self.above = false;
        }
    }

    /// After a restart the daemon clock starts again at 0: keep a cool-down that was running.
    pub fn restarted(&mut self) {
        self.running = false;
        if self.last_cycle_end.is_some() {
            self.last_cycle_end = Some(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> TriggerParams {
        TriggerParams {
            noisy_fraction: 0.3,
            hysteresis: 0.05,
            window: 100,
            ewma_alpha: 0.05,
            min_samples: 50,
            cooldown_secs: 10.0,
            source: TriggerSource::Window,
        }
    }

    fn feed(t: &mut NoiseTrigger, n: usize, every: usize) {
        for i in 0..n {
            t.observe(i % every == 0);
        }
    }

    #[test]
    fn fires_above_the_threshold_and_not_below() {
        let mut t = NoiseTrigger::new(params());
        feed(&mut t, 200, 10); // 10 % noisy
        assert!((t.window_fraction() - 0.1).abs() < 1e-9);
        assert!(!t.due(0.0));
        feed(&mut t, 200, 2); // 50 % noisy
        assert!(t.is_above() && t.due(0.0));
    }

    #[test]
    fn needs_min_samples_and_respects_the_cooldown_and_hysteresis() {
        let mut t = NoiseTrigger::new(params());
        feed(&mut t, 40, 2);
        assert!(
            !t.is_above() && !t.due(0.0),
            "40 < min_samples: not decided yet"
        );
        feed(&mut t, 20, 2);
        assert!(t.due(0.0));
        t.cycle_started();
        assert!(!t.due(1.0), "one cycle at a time");
        t.cycle_ended(5.0, true);
        assert_eq!(t.window_len(), 0);
        feed(&mut t, 100, 2);
        assert!(!t.due(10.0) && t.due(15.0));
        // A checkpoint restored under a smaller window shrinks at once.
        t.params.window = 10;
        t.observe(true);
        assert_eq!(t.window_len(), 10);
        // 28 % noisy: between 0.25 and 0.3 it stays above (hysteresis) ...
        let mut h = NoiseTrigger::new(params());
        feed(&mut h, 100, 2);
        for i in 0..100 {
            h.observe(i % 25 < 7);
        }
        assert!((h.window_fraction() - 0.28).abs() < 1e-9);
        assert!(h.is_above());
        // ... and re-arms below 0.25.
        feed(&mut h, 100, 5);
        assert!(!h.is_above());
    }

    #[test]
    fn ewma_source_and_validation() {
        let mut p = params();
        p.source = TriggerSource::Ewma;
        let mut t = NoiseTrigger::new(p.clone());
        feed(&mut t, 300, 1); // all noisy
        assert!(t.ewma_fraction() > 0.99 && t.is_above());
        p.hysteresis = 0.5;
        p.min_samples = 1000;
        let problems = p.validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("trigger.hysteresis"));
    }
}
