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
        // On a pool worker, as `attribution::attribute` runs in the experiment and the daemon.
        crate::cpu::compute(|| -> Result<(), ModelError> {
            for (x, y) in &inputs {
                let a = attribute_batch(model, x, y, mode)?;
                // Bring the result to the host, as the experiment does.
                a.attributions.flatten_all()?.to_vec1::<f32>()?;
            }
            Ok(())
        })?;
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
            mixup: 0.0,
            ema: 0.0,
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
    /// Samples per step.
    pub batch: usize,
    /// Median milliseconds of the forward pass and loss.
    pub forward_ms: f64,
    /// Median milliseconds of candle's autograd `backward()`.
    pub backward_ms: f64,
    /// Median milliseconds of forward, loss and gradients as training computes them
    /// ([`crate::train::loss_and_grads`]: hand-written for the MLP, autograd for the CNN's body).
    pub training_grads_ms: f64,
    /// Median milliseconds of rlap's fused Adam step.
    pub fused_adam_ms: f64,
    /// Median milliseconds of candle-nn's AdamW step on the same model.
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
    // On a pool worker, as training runs.
    crate::cpu::compute(|| step_breakdown_on_this_thread(spec, data, batch, steps))
}

fn step_breakdown_on_this_thread(
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
    let (mut f, mut b, mut o, mut c, mut tg) = (vec![], vec![], vec![], vec![], vec![]);
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
        let (_, grads_hand) =
            crate::train::loss_and_grads(&model, &x, &y, crate::train::Scope::All)?;
        tg.push(t.elapsed().as_secs_f64() * 1e3);
        drop(grads_hand);
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
        training_grads_ms: median(tg),
        fused_adam_ms: median(o),
        candle_adamw_ms: median(c),
    })
}

/// Errors of the serving benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ServeBenchError {
    /// Building the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Publishing to the temporary store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// ONNX Runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::onnx::runtime::RuntimeError),
    /// Binding or runtime start-up failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A request failed or did not answer 200.
    #[error("HTTP: {0}")]
    Http(String),
}

/// `rlap bench`'s figures: attribution and epoch throughput, and where a CPU training step
/// spends its time.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    /// The first line: model, parameters, FLOPs, device, threads.
    #[serde(skip)]
    pub header: String,
    /// Each measured figure.
    pub results: Vec<BenchResult>,
    /// The training step's breakdown (CPU only).
    pub step_breakdown: Option<StepBreakdown>,
}

impl ThroughputReport {
    /// The header, then [`Self::table`].
    pub fn text(&self) -> String {
        format!("{}\n{}", self.header, self.table())
    }

    /// A table of the figures and the breakdown line (`rlap bench` prints the header before
    /// the minutes of measuring, this after).
    pub fn table(&self) -> String {
        let mut t = format!(
            "{:<48} {:>12} {:>12} {:>9} {:>10}\n",
            "work", "samples/s", "FLOP/sample", "GFLOP/s", "median s"
        );
        for r in &self.results {
            t += &format!(
                "{:<48} {:>12.0} {:>12.3e} {:>9.2} {:>10.4}\n",
                r.name, r.samples_per_second, r.flops_per_sample, r.gflops, r.median_seconds
            );
        }
        if let Some(b) = &self.step_breakdown {
            t += &format!(
                "training step at batch {} (median ms): forward {:.2}, autograd backward {:.2}, forward+backward as trained {:.2}, fused Adam {:.2}, candle-nn AdamW {:.2}\n",
                b.batch, b.forward_ms, b.backward_ms, b.training_grads_ms, b.fused_adam_ms, b.candle_adamw_ms
            );
        }
        t
    }
}

/// Serving figures: ONNX Runtime in-process (rlap, through `ort`) beside python onnxruntime on
/// the same model file and thread count, and HTTP latency at batch 1 on loopback.
#[derive(Clone, Debug, Serialize)]
pub struct ServeBench {
    /// rlap in-process, samples/s at batch 1 (median of 5 repeats).
    pub inproc_batch1_samples_per_second: f64,
    /// rlap in-process, samples/s at batch 64 (median of 5 repeats).
    pub inproc_batch64_samples_per_second: f64,
    /// python onnxruntime, same model and settings, samples/s at batch 1 (None when the peer
    /// could not run).
    pub peer_batch1_samples_per_second: Option<f64>,
    /// The same at batch 64.
    pub peer_batch64_samples_per_second: Option<f64>,
    /// rlap / peer at batch 1.
    pub ratio_batch1: Option<f64>,
    /// rlap / peer at batch 64.
    pub ratio_batch64: Option<f64>,
    /// Why the peer did not run, if it did not.
    pub peer_error: Option<String>,
    /// `POST /v1/predict` with one image: sequential requests on one keep-alive connection.
    pub http_requests: usize,
    /// Their median latency, milliseconds.
    pub http_p50_ms: f64,
    /// Their 99th-percentile latency, milliseconds.
    pub http_p99_ms: f64,
    /// Requests per second over the sequence.
    pub http_requests_per_second: f64,
}

impl ServeBench {
    /// The figures as `rlap bench-serve` prints them, under a header naming `model`
    /// (`mlp`/`cnn`) and its `parameters`.
    pub fn text(&self, model: &str, parameters: usize) -> String {
        let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
        let ratio = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        let mut t = format!(
            "rlap bench-serve: model {model} ({parameters} parameters), 1 intra-op thread on both sides\n"
        );
        t += &format!(
            "{:<34} {:>12} {:>12} {:>8}\n",
            "in-process ONNX Runtime", "rlap (ort)", "python ort", "ratio"
        );
        t += &format!(
            "{:<34} {:>12.0} {:>12} {:>8}\n",
            "batch 1 samples/s",
            self.inproc_batch1_samples_per_second,
            fmt(self.peer_batch1_samples_per_second),
            ratio(self.ratio_batch1)
        );
        t += &format!(
            "{:<34} {:>12.0} {:>12} {:>8}\n",
            "batch 64 samples/s",
            self.inproc_batch64_samples_per_second,
            fmt(self.peer_batch64_samples_per_second),
            ratio(self.ratio_batch64)
        );
        if let Some(e) = &self.peer_error {
            t += &format!("python peer did not run: {e}\n");
        }
        t += &format!(
            "HTTP POST /v1/predict batch 1, {} sequential requests on loopback: p50 {:.3} ms, p99 {:.3} ms, {:.0} requests/s\n",
            self.http_requests, self.http_p50_ms, self.http_p99_ms, self.http_requests_per_second
        );
        t
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn inproc_samples_per_second(
    onnx: &crate::onnx::runtime::OnnxModel,
    x: &[f32],
    batch: usize,
    iters: usize,
) -> Result<f64, ServeBenchError> {
    for _ in 0..20 {
        onnx.logits(x)?;
    }
    let mut secs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            onnx.logits(x)?;
        }
        secs.push(t.elapsed().as_secs_f64());
    }
    Ok((batch * iters) as f64 / median(secs))
}

/// Publish `model` to a temporary store, then measure in-process inference, the python
/// onnxruntime peer (`peer_script`, the repository's `benches/ort_peer.py`) and HTTP latency (`requests` sequential batch-1
/// requests) against `rlap::api` on 127.0.0.1.
///
/// # Errors
/// [`ServeBenchError`]; a failing peer is reported in the result instead.
pub fn bench_serving(
    model: &Model,
    sample: &[f32],
    requests: usize,
    iters1: usize,
    iters64: usize,
    peer_script: &std::path::Path,
) -> Result<ServeBench, ServeBenchError> {
    use crate::onnx::runtime::{find_library, OnnxModel};
    use crate::store::{ModelStore, PublishInfo, ONNX_FILE};
    let d = model.spec().input_dim;
    let dir = std::env::temp_dir().join(format!("rlap-bench-serve-{}", std::process::id()));
    let store = ModelStore::open(&dir, 1)?;
    store.publish("bench", model, PublishInfo::default())?;
    let onnx_path = store.version_dir("bench", 1)?.join(ONNX_FILE);
    let bytes = std::fs::read(&onnx_path)?;
    let onnx = OnnxModel::from_bytes(&bytes, d)?;
    let x64: Vec<f32> = (0..64).flat_map(|_| sample.iter().copied()).collect();
    let in1 = inproc_samples_per_second(&onnx, sample, 1, iters1)?;
    let in64 = inproc_samples_per_second(&onnx, &x64, 64, iters64)?;

    // The peer: python onnxruntime from the same wheel (its package folder is two levels above
    // the shared library).
    let pythonpath = find_library()?
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let peer = if peer_script.is_file() {
        std::process::Command::new("python3")
            .arg(peer_script)
            .arg(&onnx_path)
            .args([d.to_string(), iters1.to_string(), iters64.to_string()])
            .env("PYTHONPATH", &pythonpath)
            .output()
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{}: no such peer script (run from the repository root or pass --peer-script)",
                peer_script.display()
            ),
        ))
    };
    let (mut p1, mut p64, mut peer_error) = (None, None, None);
    match peer {
        Ok(out) if out.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            p1 = v["batch1_samples_per_second"].as_f64();
            p64 = v["batch64_samples_per_second"].as_f64();
        }
        Ok(out) => {
            peer_error = Some(
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed")
                    .to_string(),
            )
        }
        Err(e) => peer_error = Some(format!("python peer: {e}")),
    }

    // HTTP on loopback.
    let cfg = crate::api::ServeConfig {
        bind: "127.0.0.1:0".parse().expect("literal address"),
        model: "bench".into(),
        admin_token: None,
        poll_interval: std::time::Duration::from_secs(3600),
        max_batch: 64,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let state = crate::api::AppState::new(store, cfg);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move { axum::serve(listener, crate::api::router(state)).await });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}/v1/predict");
    let body = serde_json::json!({ "instances": [sample] }).to_string();
    let call = || -> Result<(), ServeBenchError> {
        let mut r = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body.as_str())
            .map_err(|e| ServeBenchError::Http(e.to_string()))?;
        let status = r.status();
        r.body_mut()
            .read_to_vec()
            .map_err(|e| ServeBenchError::Http(e.to_string()))?;
        if status != 200 {
            return Err(ServeBenchError::Http(format!("status {status}")));
        }
        Ok(())
    };
    for _ in 0..100 {
        call()?;
    }
    let mut lat = Vec::with_capacity(requests);
    let t0 = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        call()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = t0.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ServeBench {
        inproc_batch1_samples_per_second: in1,
        inproc_batch64_samples_per_second: in64,
        peer_batch1_samples_per_second: p1,
        peer_batch64_samples_per_second: p64,
        ratio_batch1: p1.map(|p| in1 / p),
        ratio_batch64: p64.map(|p| in64 / p),
        peer_error,
        http_requests: requests,
        http_p50_ms: quantile(&lat, 0.5),
        http_p99_ms: quantile(&lat, 0.99),
        http_requests_per_second: requests as f64 / total,
    })
}

/// CPU-versus-device agreement of attribution and partition on a fixed MNIST slice.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceParity {
    /// Samples compared.
    pub samples: usize,
    /// `label-gradient`: max |a_cpu − a_dev| / max |a_cpu|.
    pub label_gradient_rel_diff: f64,
    /// `max-class`: the same.
    pub max_class_rel_diff: f64,
    /// Fraction of samples whose noisy flag agrees between the CPU and device partitions.
    pub partition_agreement: f64,
    /// The tolerance the check applies to both relative differences.
    pub tolerance: f64,
    /// Whether both differences are within tolerance and the agreement is at least 0.999.
    pub passed: bool,
}

impl DeviceParity {
    /// One line, as `rlap device-check` prints it (`device` as given).
    pub fn text(&self, device: &str) -> String {
        format!(
            "device check, cpu vs {device} on {} MNIST samples (40 % symmetric label noise): label-gradient rel. diff {:.2e}, max-class rel. diff {:.2e} (tolerance {:.0e}), partition agreement {:.4} -> {}\n",
            self.samples,
            self.label_gradient_rel_diff,
            self.max_class_rel_diff,
            self.tolerance,
            self.partition_agreement,
            if self.passed { "PASS" } else { "FAIL" }
        )
    }
}

/// Train a small MLP on the CPU (seeded), copy it to `device` through a checkpoint, attribute
/// a 5,000-sample MNIST slice with 40 % symmetric label noise on both, partition both, and
/// compare. Used by `rlap device-check` on a GPU host; `--device cpu` checks the check.
///
/// # Errors
/// [`ModelError`] from training, checkpointing or attribution; partition failures are mapped
/// to [`ModelError::Invalid`].
pub fn device_parity(data: &Dataset, device: &Device) -> Result<DeviceParity, ModelError> {
    use crate::attribution::attribute;
    use crate::partition::{fit_partition, PartitionParams};
    let spec = ModelSpec::for_dataset(crate::model::Arch::Mlp, 256, data);
    let cpu_model = Model::new(spec, &Device::Cpu, 1)?;
    let cfg = TrainConfig::paper(1, 1);
    train(&cpu_model, data, &cfg, &Progress::hidden(), "parity")?;
    let ckpt = std::env::temp_dir().join(format!("rlap-parity-{}.safetensors", std::process::id()));
    cpu_model.save(&ckpt)?;
    let dev_model = Model::load(&ckpt, device)?;
    let _ = std::fs::remove_file(&ckpt);
    let rel = |a: &[f32], b: &[f32]| {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64 / scale as f64
    };
    let mut diffs = Vec::new();
    let mut flags = Vec::new();
    for mode in [AttributionMode::LabelGradient, AttributionMode::MaxClass] {
        let a = attribute(&cpu_model, data, mode, 256, &Progress::hidden())?;
        let b = attribute(&dev_model, data, mode, 256, &Progress::hidden())?;
        diffs.push(rel(&a.values, &b.values));
        if mode == AttributionMode::LabelGradient {
            for x in [&a, &b] {
                let p = fit_partition(
                    &x.values,
                    x.n,
                    x.hidden,
                    &x.loss,
                    &PartitionParams::default(),
                )
                .map_err(|e| ModelError::Invalid(e.to_string()))?;
                flags.push(p.noisy);
            }
        }
    }
    let agree = flags[0]
        .iter()
        .zip(&flags[1])
        .filter(|(a, b)| a == b)
        .count() as f64
        / data.len() as f64;
    let tolerance = 1e-4;
    Ok(DeviceParity {
        samples: data.len(),
        label_gradient_rel_diff: diffs[0],
        max_class_rel_diff: diffs[1],
        partition_agreement: agree,
        tolerance,
        passed: diffs.iter().all(|&d| d <= tolerance) && agree >= 0.999,
    })
}
