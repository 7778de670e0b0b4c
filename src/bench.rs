//! `rlap bench`: measured throughput of attribution and of one training epoch, with the FLOPs
//! per sample and the GFLOP/s achieved, and a breakdown of where a training step spends its
//! time (forward, backward, optimizer).
//!
//! This module owns the measurement only; it runs the same code paths as the experiment.
//! Figures are medians over repeats, because the build machines are shared.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::attribution::{attribute_batch, AttributionMode};
use crate::data::Dataset;
use crate::model::{Model, ModelError, ModelSpec};
use crate::progress::Progress;
use crate::train::{
    batch_tensors, cross_entropy, train, Optimizer, OptimizerState, Scope, TrainConfig,
};

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// What was measured.
    pub name: String,
    /// Samples per second (median over repeats).
    pub samples_per_second: f64,
    /// FLOPs per sample counted for this work (matrix products and convolutions).
    pub flops_per_sample: f64,
    /// Achieved GFLOP/s = samples/s × FLOPs/sample / 1e9.
    pub gflops: f64,
    /// Median seconds per repeat.
    pub median_seconds: f64,
    /// Repeats measured.
    pub repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn result(name: String, samples: usize, secs: Vec<f64>, flops: f64) -> BenchResult {
    let repeats = secs.len();
    let m = median(secs);
    let sps = samples as f64 / m;
    BenchResult {
        name,
        samples_per_second: sps,
        flops_per_sample: flops,
        gflops: sps * flops / 1e9,
        median_seconds: m,
        repeats,
    }
}

/// Attribution throughput at `batch` samples per batch over `batches` batches, `repeats` times.
/// FLOPs per sample: one forward pass, plus the head's backward pass (2·H·K) for
/// `label-gradient` (`max-class` is a closed form of the forward quantities).
///
/// # Errors
/// [`ModelError`].
pub fn bench_attribution(
    model: &Model,
    data: &Dataset,
    mode: AttributionMode,
    batch: usize,
    batches: usize,
    repeats: usize,
) -> Result<BenchResult, ModelError> {
    let spec = model.spec();
    let inputs: Vec<(Tensor, Tensor)> = (0..batches)
        .map(|b| {
            let idx: Vec<usize> = (b * batch..(b + 1) * batch)
                .map(|i| i % data.len())
                .collect();
            batch_tensors(data, &idx, model.device())
        })
        .collect::<Result<_, _>>()?;
    // warm-up
    attribute_batch(model, &inputs[0].0, &inputs[0].1, mode)?;
    let mut secs = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        for (x, y) in &inputs {
            let a = attribute_batch(model, x, y, mode)?;
            // Bring the result to the host, as the experiment does.
            a.attributions.flatten_all()?.to_vec1::<f32>()?;
        }
        secs.push(t.elapsed().as_secs_f64());
    }
    let passes = match mode {
        AttributionMode::LabelGradient => 1.0,
        AttributionMode::MaxClass => 0.0,
    };
    let flops = spec.forward_flops()? + passes * 2.0 * (spec.hidden * spec.num_classes) as f64;
    Ok(result(
        format!("attribution {mode} {} batch {batch}", spec.arch),
        batch * batches,
        secs,
        flops,
    ))
}

/// One training epoch over `data` (all parameters, Adam), `repeats` times. FLOPs per sample:
/// 3 × forward (forward + backward for inputs and weights).
///
/// # Errors
/// [`ModelError`].
pub fn bench_epoch(
    model: &Model,
    data: &Dataset,
    batch: usize,
    repeats: usize,
) -> Result<BenchResult, ModelError> {
    let mut secs = Vec::new();
    for r in 0..repeats {
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: batch,
            optimizer: Optimizer::Adam {
                lr: 1e-3,
                weight_decay: 0.0,
            },
            scope: Scope::All,
            seed: r as u64,
        };
        let stats = train(model, data, &cfg, &Progress::hidden(), "bench")?;
        secs.push(stats.total_seconds);
    }
    let flops = 3.0 * model.spec().forward_flops()?;
    Ok(result(
        format!(
            "train epoch {} batch {batch} (N={})",
            model.spec().arch,
            data.len()
        ),
        data.len(),
        secs,
        flops,
    ))
}

/// Where one training step's time goes: median milliseconds of forward, backward and the
/// optimizer step (ours, fused) and of candle-nn's AdamW step for comparison.
#[derive(Clone, Debug, Serialize)]
pub struct StepBreakdown {
    pub batch: usize,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub fused_adam_ms: f64,
    pub candle_adamw_ms: f64,
}

/// Measure a training step's parts over `steps` steps.
///
/// # Errors
/// [`ModelError`].
pub fn step_breakdown(
    spec: &ModelSpec,
    data: &Dataset,
    batch: usize,
    steps: usize,
) -> Result<StepBreakdown, ModelError> {
    use candle_nn::Optimizer as _;
    let model = Model::new(spec.clone(), &Device::Cpu, 1)?;
    let mut ours = OptimizerState::new(
        &model,
        Optimizer::Adam {
            lr: 1e-3,
            weight_decay: 0.0,
        },
        Scope::All,
    )?;
    let other = Model::new(spec.clone(), &Device::Cpu, 1)?;
    let vars: Vec<_> = other.params().iter().map(|p| p.var.clone()).collect();
    let mut adamw = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let (mut f, mut b, mut o, mut c) = (vec![], vec![], vec![], vec![]);
    for s in 0..steps {
        let idx: Vec<usize> = (s * batch..(s + 1) * batch)
            .map(|i| i % data.len())
            .collect();
        let (x, y) = batch_tensors(data, &idx, &Device::Cpu)?;
        let t = Instant::now();
        let loss = cross_entropy(&model.forward(&x)?, &y)?;
        f.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let grads = loss.backward()?;
        b.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        ours.step(&grads)?;
        o.push(t.elapsed().as_secs_f64() * 1e3);
        let loss2 = cross_entropy(&other.forward(&x)?, &y)?;
        let grads2 = loss2.backward()?;
        let t = Instant::now();
        adamw.step(&grads2)?;
        c.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(StepBreakdown {
        batch,
        forward_ms: median(f),
        backward_ms: median(b),
        fused_adam_ms: median(o),
        candle_adamw_ms: median(c),
    })
}
