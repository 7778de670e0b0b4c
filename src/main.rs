//! The `rlap` command line: `experiment` (Algorithm 1 on a real data set, the paper's table),
//! `bench` (attribution and training throughput), `bench-serve` (serving throughput and
//! latency), `publish` (a checkpoint into the model store) and `serve-model` (the HTTP API).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use rlap::attribution::AttributionMode;
use rlap::bench;
use rlap::corruption::Corruption;
use rlap::data::{default_data_dir, load, DatasetSpec};
use rlap::experiment::{self, ExperimentConfig, ExperimentReport, Prepared};
use rlap::model::{parse_device, Arch, Model, ModelSpec};
use rlap::partition::{Estimator, PartitionFeatures};
use rlap::progress::Progress;
use rlap::prune::Criterion;

#[derive(Parser)]
#[command(
    name = "rlap",
    version,
    about = "Attribution-guided partitioning and neuron pruning for noisy-label data (RLAP)"
)]
struct Cli {
    /// No progress bars and only warnings in the log (for scripts).
    #[arg(long, global = true)]
    quiet: bool,
    /// Log lines as text, or as JSON objects (one per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run Algorithm 1 end to end and print the paper's table.
    Experiment(ExperimentArgs),
    /// Measure attribution and training throughput (samples/s, GFLOP/s).
    Bench(BenchArgs),
    /// Measure serving: in-process ONNX Runtime vs python onnxruntime, HTTP p50/p99 latency.
    BenchServe(BenchServeArgs),
    /// Check that a device (GPU) gives the CPU's attributions and partition on an MNIST slice.
    DeviceCheck(DeviceCheckArgs),
    /// Publish a checkpoint to a model store as the next version (ONNX + weights + metadata).
    Publish(PublishArgs),
    /// Serve a model store's versions over HTTP (predict, versions, hot swap, rollback).
    ServeModel(ServeModelArgs),
    /// Run the streaming daemon (Kafka in, verdicts out, cycles) and the HTTP API.
    Serve(ServeArgs),
    /// Validate a daemon configuration (with RLAP__SECTION__KEY overrides) and exit.
    CheckConfig(ServeArgs),
    /// Stream a real data set, corrupted, into a Kafka topic as LabeledSample messages.
    Produce(ProduceCliArgs),
    /// Join a verdict topic with the input topic's hidden truth: precision, recall, F1.
    EvaluateVerdicts(EvaluateArgs),
    /// The whole loop on one machine: in-process mock Kafka, real MNIST, 40 % label noise.
    Demo(DemoCliArgs),
    /// Measure the daemon against a real broker: throughput, sample->verdict latency, RSS.
    BenchStream(BenchStreamArgs),
}

#[derive(Args)]
struct BenchStreamArgs {
    /// Bootstrap servers of a real broker (e.g. from scripts/kafka.sh start).
    #[arg(long)]
    brokers: String,
    /// Samples of the throughput phase (pre-filled topic, drained as fast as possible).
    #[arg(long, default_value_t = 200_000)]
    throughput_samples: usize,
    /// Measured samples of the latency/memory soak (after its warm-up).
    #[arg(long, default_value_t = 1_000_000)]
    soak_samples: usize,
    /// The soak is fed at this fraction of the measured throughput.
    #[arg(long, default_value_t = 0.5)]
    rate_fraction: f64,
    /// Feed the soak at this many messages/s instead of the fraction (the same load for
    /// every run of an A/B comparison, e.g. 5000 for half the 10,000/s throughput target).
    #[arg(long)]
    soak_rate: Option<u64>,
    /// Seconds of soak load before the measured samples (at least 10,000 samples): a freshly
    /// started broker's JIT compiler competes for the cores at first (the warm-up's figures
    /// are reported separately).
    #[arg(long, default_value_t = 60)]
    warmup_secs: u64,
    /// Run model cycles during the soak.
    #[arg(long)]
    cycles: bool,
    /// Port of the daemon's HTTP API (its /metrics is read).
    #[arg(long, default_value_t = 38181)]
    api_port: u16,
    /// Folder of the named data sets.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Working folder (emptied first).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration (see configs/default.toml); RLAP__SECTION__KEY variables override it.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Args)]
struct ProduceCliArgs {
    /// Bootstrap servers, host:port[,host:port].
    #[arg(long)]
    brokers: String,
    /// Target topic (created if absent).
    #[arg(long)]
    topic: String,
    /// mnist | fashion-mnist | idx:DIR[,K] | csv:TRAIN.csv,TEST.csv[,K] (K: number of classes) (its training split is streamed)
    #[arg(long, default_value = "mnist")]
    dataset: DatasetSpec,
    /// Folder of the named data sets (default: $RLAP_DATA_DIR or ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Corruption, e.g. label-symmetric:0.4 (the truth goes into the rlap-truth-corrupted header).
    #[arg(long, default_value = "label-symmetric:0.4")]
    corruption: Corruption,
    /// Seed of the corruption.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stream a stratified subsample of the training split (as `experiment --train-size`).
    #[arg(long)]
    train_size: Option<usize>,
    /// Messages per second at most (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Samples at most (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Skip this many samples first.
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Partitions when the topic is created.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Every n-th message is malformed, to exercise the dead-letter topic (0 = none).
    #[arg(long, default_value_t = 0)]
    malformed_every: usize,
    /// Send JSON instead of protobuf (content-type: application/json header).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvaluateArgs {
    /// Bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// The input topic (carries the truth headers).
    #[arg(long)]
    topic: String,
    /// Verdict topic (default: <topic>.verdicts).
    #[arg(long)]
    verdicts: Option<String>,
    /// Dead-letter topic to count (default: <topic>.dlq).
    #[arg(long)]
    dlq: Option<String>,
    /// Also report the samples after the first N (the warm-up) separately.
    #[arg(long, default_value_t = 0)]
    skip_first: usize,
    /// Model store: also print each version's test accuracy (with --dataset).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Model name in the store.
    #[arg(long, default_value = "mnist")]
    model: String,
    /// Data set whose clean test split scores the versions.
    #[arg(long, default_value = "mnist")]
    dataset: DatasetSpec,
    /// Folder of the named data sets.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct DemoCliArgs {
    /// Daemon configuration (brokers, store and state are set by the demo).
    #[arg(long, default_value = "configs/demo.toml")]
    config: PathBuf,
    /// mnist | fashion-mnist | idx:DIR[,K] | csv:TRAIN.csv,TEST.csv[,K] (K: number of classes)
    #[arg(long, default_value = "mnist")]
    dataset: DatasetSpec,
    /// Folder of the named data sets.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Corruption of the streamed samples.
    #[arg(long, default_value = "label-symmetric:0.4")]
    corruption: Corruption,
    /// Samples streamed (0 = the whole training split).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Every n-th message is malformed (0 = none).
    #[arg(long, default_value_t = 1000)]
    malformed_every: usize,
    /// Seed of the corruption.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stream a stratified subsample of the training split (as `experiment --train-size`:
    /// same seed, same samples and labels).
    #[arg(long)]
    train_size: Option<usize>,
    /// Messages per second streamed in (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Output folder (model store, state); emptied first.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Write one CSV row per verdict here:
    /// `order,sample_id,given_label,corrupted,posterior_noisy,noisy,model_version`.
    #[arg(long)]
    verdicts_csv: Option<PathBuf>,
    /// Also train the Oracle (the first model's recipe on the first samples streamed, with
    /// their true labels) and print its test accuracy beside the served model's.
    #[arg(long)]
    oracle: bool,
    /// Write the summary as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchServeArgs {
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
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct DeviceCheckArgs {
    /// The device compared with the CPU: cuda | cuda:N (cpu checks the check itself).
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct PublishArgs {
    /// Checkpoint written by `rlap experiment --save-checkpoint` (safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Model store folder.
    #[arg(long)]
    store: PathBuf,
    /// Model name inside the store.
    #[arg(long)]
    model: String,
    /// Versions kept per model.
    #[arg(long, default_value_t = 5)]
    retain: usize,
}

#[derive(Args)]
struct ServeModelArgs {
    /// Model store folder.
    #[arg(long)]
    store: PathBuf,
    /// Model name served by /v1/predict.
    #[arg(long)]
    model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// Bearer token for the admin endpoints (rollback, cycle); read from $RLAP_ADMIN_TOKEN when
    /// not given; without one they are disabled.
    #[arg(long)]
    admin_token: Option<String>,
    /// Seconds between checks of the store for a newer version.
    #[arg(long, default_value_t = 2.0)]
    poll_seconds: f64,
    /// Largest batch /v1/predict accepts.
    #[arg(long, default_value_t = 1024)]
    max_batch: usize,
}

#[derive(Args)]
struct ExperimentArgs {
    /// mnist | fashion-mnist | idx:DIR[,K] | csv:TRAIN.csv,TEST.csv[,K] (K: number of classes)
    #[arg(long, default_value = "mnist")]
    dataset: DatasetSpec,
    /// Folder of the named data sets (default: $RLAP_DATA_DIR or ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
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

#[derive(Args)]
struct BenchArgs {
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
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line per cause (no backtrace dump even when RUST_BACKTRACE is set).
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    rlap::cpu::configure_threads();
    let cli = Cli::parse();
    // ONNX Runtime forwards its own (very chatty) logs into tracing under `ort`.
    let default_level = if cli.quiet { "warn" } else { "info,ort=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let progress = if cli.quiet {
        Progress::hidden()
    } else {
        Progress::visible()
    };
    match cli.command {
        Command::Experiment(a) => run_experiment(a, &progress),
        Command::Bench(a) => run_bench(a),
        Command::BenchServe(a) => run_bench_serve(a),
        Command::DeviceCheck(a) => run_device_check(a),
        Command::Publish(a) => run_publish(a),
        Command::ServeModel(a) => run_serve_model(a),
        Command::Serve(a) => run_serve(a),
        Command::CheckConfig(a) => {
            rlap::stream::config::load(&a.config)?;
            println!("config OK: {}", a.config.display());
            Ok(())
        }
        Command::Produce(a) => run_produce(a, &progress),
        Command::EvaluateVerdicts(a) => run_evaluate(a),
        Command::Demo(a) => run_demo(a, &progress),
        Command::BenchStream(a) => run_bench_stream(a, &progress),
    }
}

fn run_bench_stream(a: BenchStreamArgs, progress: &Progress) -> Result<()> {
    if !(a.rate_fraction > 0.0 && a.rate_fraction <= 1.0) {
        bail!("--rate-fraction must lie in (0, 1]");
    }
    if a.throughput_samples < 20_000 || a.soak_samples == 0 {
        bail!("--throughput-samples must be >= 20000 (the first 10000 bootstrap the model) and --soak-samples > 0");
    }
    let work_dir = a
        .work_dir
        .unwrap_or_else(rlap::stream::bench::default_work_dir);
    if work_dir.exists() {
        std::fs::remove_dir_all(&work_dir)
            .with_context(|| format!("emptying {}", work_dir.display()))?;
    }
    let args = rlap::stream::bench::StreamBenchArgs {
        brokers: a.brokers,
        exe: std::env::current_exe()?,
        work_dir,
        data_dir: a.data_dir.unwrap_or_else(default_data_dir),
        throughput_samples: a.throughput_samples,
        soak_samples: a.soak_samples,
        latency_rate_fraction: a.rate_fraction,
        soak_rate: a.soak_rate.filter(|r| *r > 0),
        warmup_secs: a.warmup_secs,
        cycles: a.cycles,
        api_port: a.api_port,
    };
    let r = runtime()?.block_on(rlap::stream::bench::run(&args, progress))?;
    print!("{}", r.text());
    if let Some(p) = a.json {
        write_json(&p, &r)?;
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run_serve(a: ServeArgs) -> Result<()> {
    let cfg = rlap::stream::config::load(&a.config)?;
    let bound = std::time::Duration::from_secs(cfg.kafka.shutdown_timeout_secs);
    let rt = runtime()?;
    let summary = rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            rlap::serve::shutdown_signal().await;
            let _ = tx.send(true);
            // A bounded shutdown whatever the brokers do: a dead broker keeps produces retrying
            // and the consumer's close waiting for the group coordinator. Past the bound the
            // process exits without the final commit; at least once, the samples since the last
            // commit are re-delivered to whoever owns their partitions next.
            std::thread::spawn(move || {
                std::thread::sleep(bound);
                tracing::warn!(
                    seconds = bound.as_secs(),
                    "shutdown took longer than kafka.shutdown_timeout_secs: exiting without the final commit (uncommitted samples will be re-delivered)"
                );
                std::process::exit(0);
            });
        });
        rlap::app::serve(std::sync::Arc::new(cfg), rx).await
    })?;
    tracing::info!(
        consumed = summary.consumed,
        verdicts = summary.verdicts,
        dead_letters = summary.dead_letters,
        model_version = summary.model_version,
        "exiting"
    );
    Ok(())
}

fn run_produce(a: ProduceCliArgs, progress: &Progress) -> Result<()> {
    let args = rlap::stream::tools::ProduceArgs {
        brokers: a.brokers,
        topic: a.topic,
        dataset: a.dataset,
        data_dir: a.data_dir.unwrap_or_else(default_data_dir),
        corruption: a.corruption,
        seed: a.seed,
        train_size: a.train_size,
        rate: a.rate,
        limit: a.limit,
        skip: a.skip,
        partitions: a.partitions,
        create_topic: true,
        malformed_every: a.malformed_every,
        json: a.json,
        throttle: None,
    };
    let r = runtime()?.block_on(rlap::stream::tools::produce(&args, progress))?;
    println!(
        "produced {} samples ({} corrupted) and {} malformed messages to {} in {:.1} s ({:.0} msg/s)",
        r.samples,
        r.corrupted,
        r.malformed,
        args.topic,
        r.seconds,
        (r.samples + r.malformed) as f64 / r.seconds.max(1e-9)
    );
    Ok(())
}

fn run_evaluate(a: EvaluateArgs) -> Result<()> {
    let verdicts = a
        .verdicts
        .unwrap_or_else(|| format!("{}.verdicts", a.topic));
    let dlq = a.dlq.unwrap_or_else(|| format!("{}.dlq", a.topic));
    let r = rlap::stream::tools::evaluate_verdicts(
        &a.brokers,
        &a.topic,
        &verdicts,
        Some(&dlq),
        a.skip_first,
        &[],
    )?;
    print!("{}", r.text());
    let mut acc = vec![];
    if let Some(store) = &a.store {
        let test = load(&a.dataset, &a.data_dir.unwrap_or_else(default_data_dir))?.test;
        acc = rlap::stream::tools::version_accuracies(store, &a.model, &test)?;
        print!("test-split accuracy by model version:");
        for (v, x) in &acc {
            print!(" v{v}={x:.4}");
        }
        println!();
    }
    if let Some(p) = a.json {
        write_json(
            &p,
            &serde_json::json!({ "verdicts": r, "version_accuracy": acc }),
        )?;
    }
    Ok(())
}

fn run_demo(a: DemoCliArgs, progress: &Progress) -> Result<()> {
    let config = if a.config.is_file() {
        rlap::stream::config::load(&a.config)?.into_inner()
    } else {
        bail!(
            "{}: no such config file (run from the repository root, or pass --config)",
            a.config.display()
        );
    };
    let args = rlap::stream::demo::DemoArgs {
        config,
        dataset: a.dataset,
        data_dir: a.data_dir.unwrap_or_else(default_data_dir),
        corruption: a.corruption,
        limit: a.limit,
        malformed_every: a.malformed_every,
        seed: a.seed,
        train_size: a.train_size,
        rate: a.rate,
        out_dir: a.out,
        verdicts_csv: a.verdicts_csv,
        oracle: a.oracle,
    };
    let s = runtime()?.block_on(rlap::stream::demo::run(args, progress))?;
    print!("{}", s.text());
    if let Some(p) = a.json {
        write_json(&p, &s)?;
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &PathBuf, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn run_experiment(a: ExperimentArgs, progress: &Progress) -> Result<()> {
    let cfg = ExperimentConfig {
        dataset: a.dataset,
        data_dir: a.data_dir.unwrap_or_else(default_data_dir),
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
            if let Some(p) = &a.json {
                write_json(p, &report)?;
            }
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
            let reports = sweep(&cfg, spec, progress)?;
            if let Some(p) = &a.json {
                write_json(p, &reports)?;
            }
            Ok(())
        }
    }
}

fn sweep(
    base: &ExperimentConfig,
    spec: &str,
    progress: &Progress,
) -> Result<Vec<ExperimentReport>> {
    let (kind, list) = spec.split_once(':').with_context(|| {
        format!("bad --sweep '{spec}': expected rates:R1,R2,... or criteria:C1,C2,...")
    })?;
    let items: Vec<&str> = list.split(',').filter(|s| !s.is_empty()).collect();
    let mut reports = Vec::new();
    match kind {
        "rates" => {
            if matches!(
                base.corruption,
                Corruption::None | Corruption::LabelMatrix { .. }
            ) {
                bail!("--sweep rates needs a corruption with a rate (input-gaussian, label-symmetric, label-pair), not '{}'", base.corruption);
            }
            let rates = items
                .iter()
                .map(|r| match r.parse::<f64>() {
                    Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
                    _ => bail!("bad rate '{r}' in --sweep: expected a number in [0, 1]"),
                })
                .collect::<Result<Vec<_>>>()?;
            let mut oracle = None;
            for rate in rates {
                let cfg = ExperimentConfig {
                    corruption: base.corruption.with_rate(rate),
                    ..base.clone()
                };
                let data = experiment::prepare(&cfg)?;
                let (report, _, _) = experiment::run(&cfg, &data, oracle.clone(), progress)?;
                if cfg.corruption.is_label_noise() {
                    // Label noise leaves the inputs alone: the Oracle's training data is the same.
                    oracle = report.row("Oracle").cloned();
                }
                println!("{}", report.table());
                reports.push(report);
            }
        }
        "criteria" => {
            // `none`: no pruning (fraction 0), fine-tuned from the same Initial and partition:
            // the ablation that says whether pruning helps at all.
            let criteria = items
                .iter()
                .map(|c| match *c {
                    "none" => Ok((Criterion::Rlap, 0.0)),
                    c => c.parse::<Criterion>().map(|x| (x, base.prune_fraction)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let t0 = std::time::Instant::now();
            let data: Prepared = experiment::prepare(base)?;
            let s1 = experiment::stage1(base, &data, progress)?;
            let spec = s1.initial.spec().clone();
            let clean = data.noisy.select(&s1.partition.clean_indices());
            let retrain = experiment::from_scratch(
                base,
                &spec,
                &clean,
                &data.test,
                "Retrain",
                base.seed.wrapping_add(1),
                progress,
            )?;
            let relabel = experiment::relabel_row(base, &spec, &data, &s1, progress)?;
            let oracle = experiment::oracle_row(base, &spec, &data, progress)?;
            for (criterion, prune_fraction) in criteria {
                let cfg = ExperimentConfig {
                    criterion,
                    prune_fraction,
                    ..base.clone()
                };
                let ft = experiment::prune_and_finetune(&cfg, &data, &s1, criterion, progress)?;
                let (mut rows, pruned, scoring) = (ft.rows, ft.pruned, ft.scoring_seconds);
                rows.insert(0, s1.initial_row.clone());
                rows.push(retrain.clone());
                rows.push(relabel.clone());
                rows.push(oracle.clone());
                let total = t0.elapsed().as_secs_f64();
                let mut report =
                    ExperimentReport::assemble(&cfg, &data, &s1, rows, pruned, scoring, total);
                report.regression_ridge_lambda = ft.ridge_lambda;
                println!("{}", report.table());
                reports.push(report);
            }
        }
        _ => bail!("bad --sweep '{spec}': expected rates:... or criteria:..."),
    }
    println!("sweep summary (test accuracy; partition F1)");
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "run",
        "Initial",
        "Pruned",
        "L-FT",
        "F-FT",
        "Retrain",
        "Relabel",
        "Forward",
        "Oracle",
        "part.F1"
    );
    for r in &reports {
        let acc = |n: &str| r.row(n).map(|x| x.accuracy).unwrap_or(f64::NAN);
        let label = if kind == "rates" {
            r.config.corruption.to_string()
        } else if r.config.prune_fraction == 0.0 {
            "none (no pruning)".to_string()
        } else {
            r.config.criterion.to_string()
        };
        println!(
            "{:<22} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4}",
            label,
            acc("Initial"),
            acc("Pruned"),
            acc("L-FT"),
            acc("F-FT"),
            acc("Retrain"),
            acc("Relabel"),
            acc("Forward"),
            acc("Oracle"),
            r.partition.f1
        );
    }
    Ok(reports)
}

fn run_bench(a: BenchArgs) -> Result<()> {
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
    println!(
        "rlap bench: model {} ({} parameters, {:.3} MFLOP forward per sample), device {}, {} threads",
        a.model,
        model.num_parameters(),
        spec.forward_flops()? / 1e6,
        a.device,
        rayon::current_num_threads()
    );
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
    println!(
        "{:<48} {:>12} {:>12} {:>9} {:>10}",
        "work", "samples/s", "FLOP/sample", "GFLOP/s", "median s"
    );
    for r in &results {
        println!(
            "{:<48} {:>12.0} {:>12.3e} {:>9.2} {:>10.4}",
            r.name, r.samples_per_second, r.flops_per_sample, r.gflops, r.median_seconds
        );
    }
    let breakdown = if device.is_cpu() {
        let b = bench::step_breakdown(&spec, &data, a.train_batch, 50)?;
        println!(
            "training step at batch {} (median ms): forward {:.2}, autograd backward {:.2}, forward+backward as trained {:.2}, fused Adam {:.2}, candle-nn AdamW {:.2}",
            b.batch, b.forward_ms, b.backward_ms, b.training_grads_ms, b.fused_adam_ms, b.candle_adamw_ms
        );
        Some(b)
    } else {
        None
    };
    if let Some(p) = &a.json {
        write_json(
            p,
            &serde_json::json!({ "results": results, "step_breakdown": breakdown }),
        )?;
    }
    Ok(())
}

fn run_publish(a: PublishArgs) -> Result<()> {
    let model = Model::load(&a.checkpoint, &candle_core::Device::Cpu)?;
    let store = rlap::store::ModelStore::open(&a.store, a.retain)?;
    let parent = store.latest(&a.model).ok();
    let meta = store.publish(
        &a.model,
        &model,
        rlap::store::PublishInfo {
            parent_version: parent,
            ..Default::default()
        },
    )?;
    println!(
        "published {} version {} to {}",
        meta.model,
        meta.version,
        store.version_dir(&meta.model, meta.version)?.display()
    );
    Ok(())
}

fn run_serve_model(a: ServeModelArgs) -> Result<()> {
    if !(a.poll_seconds > 0.0 && a.poll_seconds <= 86_400.0) {
        bail!("--poll-seconds must lie in (0, 86400]");
    }
    let store = rlap::store::ModelStore::open(&a.store, usize::MAX)?;
    let cfg = rlap::serve::ServeConfig {
        bind: a.bind,
        model: a.model,
        admin_token: a
            .admin_token
            .or_else(|| std::env::var("RLAP_ADMIN_TOKEN").ok()),
        poll_interval: std::time::Duration::from_secs_f64(a.poll_seconds),
        max_batch: a.max_batch,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(rlap::serve::run(store, cfg))?;
    Ok(())
}

fn run_bench_serve(a: BenchServeArgs) -> Result<()> {
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
    )?;
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
    let ratio = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
    println!(
        "rlap bench-serve: model {} ({} parameters), 1 intra-op thread on both sides",
        a.model,
        model.num_parameters()
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "in-process ONNX Runtime", "rlap (ort)", "python ort", "ratio"
    );
    println!(
        "{:<34} {:>12.0} {:>12} {:>8}",
        "batch 1 samples/s",
        r.inproc_batch1_samples_per_second,
        fmt(r.peer_batch1_samples_per_second),
        ratio(r.ratio_batch1)
    );
    println!(
        "{:<34} {:>12.0} {:>12} {:>8}",
        "batch 64 samples/s",
        r.inproc_batch64_samples_per_second,
        fmt(r.peer_batch64_samples_per_second),
        ratio(r.ratio_batch64)
    );
    if let Some(e) = &r.peer_error {
        println!("python peer did not run: {e}");
    }
    println!(
        "HTTP POST /v1/predict batch 1, {} sequential requests on loopback: p50 {:.3} ms, p99 {:.3} ms, {:.0} requests/s",
        r.http_requests, r.http_p50_ms, r.http_p99_ms, r.http_requests_per_second
    );
    if let Some(p) = &a.json {
        write_json(p, &r)?;
    }
    Ok(())
}

fn run_device_check(a: DeviceCheckArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let split = load(&DatasetSpec::Mnist, &default_data_dir())?;
    let slice = split.train.select(&split.train.stratified_indices(5000, 1));
    let (noisy, _) =
        rlap::corruption::corrupt(&slice, &Corruption::LabelSymmetric { rate: 0.4 }, 1)?;
    let r = bench::device_parity(&noisy, &device)?;
    println!(
        "device check, cpu vs {} on {} MNIST samples (40 % symmetric label noise): label-gradient rel. diff {:.2e}, max-class rel. diff {:.2e} (tolerance {:.0e}), partition agreement {:.4} -> {}",
        a.device,
        r.samples,
        r.label_gradient_rel_diff,
        r.max_class_rel_diff,
        r.tolerance,
        r.partition_agreement,
        if r.passed { "PASS" } else { "FAIL" }
    );
    if let Some(p) = &a.json {
        write_json(p, &r)?;
    }
    if !r.passed {
        bail!("device check failed");
    }
    Ok(())
}
