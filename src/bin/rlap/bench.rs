//! The engine's benchmarks: `bench` (attribution and training throughput), `bench-serve`
//! (ONNX Runtime serving beside python onnxruntime) and `device-check` (CPU/GPU parity).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use rlap::attribution::AttributionMode;
use rlap::corruption::Corruption;
use rlap::data::{default_data_dir, load, DatasetSpec};
use rlap::drivers::bench;
use rlap::model::{parse_device, Arch, Model, ModelSpec};

use crate::args::JsonOut;

/// `rlap bench`'s options.
#[derive(Args)]
pub struct BenchArgs {
    /// mlp | cnn
    #[arg(long, default_value = "mlp")]
    model: Arch,
    /// Attribution batch sizes, comma-separated (each is measured).
    #[arg(long, value_delimiter = ',', default_value = "256")]
    batch: Vec<usize>,
    /// Training batch size.
    #[arg(long, default_value_t = 64)]
    train_batch: usize,
    /// Samples in the timed training epoch.
    #[arg(long, default_value_t = 10_000)]
    epoch_samples: usize,
    /// Repeats per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    out: JsonOut,
}

/// `rlap bench`: MNIST's first `--epoch-samples` training samples through a seeded model.
pub fn throughput(a: BenchArgs) -> Result<()> {
    if a.epoch_samples == 0
        || a.batch.is_empty()
        || a.batch.contains(&0)
        || a.train_batch == 0
        || a.repeats == 0
    {
        bail!("--epoch-samples, --batch, --train-batch and --repeats must be > 0");
    }
    let device = parse_device(&a.device)?;
    let split = load(&DatasetSpec::Mnist, &default_data_dir())?;
    let data = split
        .train
        .select(&(0..a.epoch_samples.min(split.train.len())).collect::<Vec<_>>());
    let spec = ModelSpec::for_dataset(a.model, 256, &data);
    let model = Model::new(spec.clone(), &device, 1)?;
    let header = format!(
        "rlap bench: model {} ({} parameters, {:.3} MFLOP forward per sample), device {}, {} threads",
        a.model,
        model.num_parameters(),
        spec.forward_flops()? / 1e6,
        a.device,
        rayon::current_num_threads()
    );
    println!("{header}");
    let mut results = Vec::new();
    for &batch in &a.batch {
        for mode in [AttributionMode::LabelGradient, AttributionMode::MaxClass] {
            results.push(bench::bench_attribution(
                &model, &data, mode, batch, 40, a.repeats,
            )?);
        }
    }
    results.push(bench::bench_epoch(
        &model,
        &data,
        a.train_batch,
        a.repeats.min(3),
    )?);
    let step_breakdown = if device.is_cpu() {
        Some(bench::step_breakdown(&spec, &data, a.train_batch, 50)?)
    } else {
        None
    };
    let report = bench::ThroughputReport {
        header,
        results,
        step_breakdown,
    };
    print!("{}", report.table());
    a.out.write(&report)
}

/// `rlap bench-serve`'s options.
#[derive(Args)]
pub struct BenchServeArgs {
    /// mlp | cnn
    #[arg(long, default_value = "mlp")]
    model: Arch,
    /// Sequential HTTP requests timed (batch 1).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// In-process iterations per repeat at batch 1.
    #[arg(long, default_value_t = 5000)]
    iters_batch1: usize,
    /// In-process iterations per repeat at batch 64.
    #[arg(long, default_value_t = 200)]
    iters_batch64: usize,
    /// The python onnxruntime peer (the repository's benches/ort_peer.py).
    #[arg(long, default_value = "benches/ort_peer.py")]
    peer_script: PathBuf,
    #[command(flatten)]
    out: JsonOut,
}

/// `rlap bench-serve`.
pub fn serving(a: BenchServeArgs) -> Result<()> {
    if a.requests == 0 || a.iters_batch1 == 0 || a.iters_batch64 == 0 {
        bail!("--requests, --iters-batch1 and --iters-batch64 must be > 0");
    }
    let split = load(&DatasetSpec::Mnist, &default_data_dir())?;
    let spec = ModelSpec::for_dataset(a.model, 256, &split.train);
    let model = Model::new(spec, &candle_core::Device::Cpu, 1)?;
    let r = bench::bench_serving(
        &model,
        split.test.row(0),
        a.requests,
        a.iters_batch1,
        a.iters_batch64,
        &a.peer_script,
    )?;
    print!("{}", r.text(&a.model.to_string(), model.num_parameters()));
    a.out.write(&r)
}

/// `rlap device-check`'s options.
#[derive(Args)]
pub struct DeviceCheckArgs {
    /// The device compared with the CPU: cuda | cuda:N (cpu checks the check itself).
    #[arg(long, default_value = "cuda:0")]
    device: String,
    #[command(flatten)]
    out: JsonOut,
}

/// `rlap device-check`: fails (exit 1) when the device disagrees with the CPU.
pub fn device_check(a: DeviceCheckArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let split = load(&DatasetSpec::Mnist, &default_data_dir())?;
    let slice = split.train.select(&split.train.stratified_indices(5000, 1));
    let (noisy, _) =
        rlap::corruption::corrupt(&slice, &Corruption::LabelSymmetric { rate: 0.4 }, 1)?;
    let r = bench::device_parity(&noisy, &device)?;
    print!("{}", r.text(&a.device));
    a.out.write(&r)?;
    if !r.passed {
        bail!("device check failed");
    }
    Ok(())
}
