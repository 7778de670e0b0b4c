//! The `rlap` command line: parses the arguments, sets up logging and progress, and hands each
//! subcommand to its module (`experiment`, `bench`, `models`, `stream`); the work and the
//! reports' text live in the library. `anyhow` lives only in this binary.

mod args;
mod bench;
mod experiment;
mod models;
mod stream;

use anyhow::Result;
use clap::{Parser, Subcommand};

use rlap::progress::Progress;

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
    Experiment(experiment::ExperimentArgs),
    /// Measure attribution and training throughput (samples/s, GFLOP/s).
    Bench(bench::BenchArgs),
    /// Measure serving: in-process ONNX Runtime vs python onnxruntime, HTTP p50/p99 latency.
    BenchServe(bench::BenchServeArgs),
    /// Check that a device (GPU) gives the CPU's attributions and partition on an MNIST slice.
    DeviceCheck(bench::DeviceCheckArgs),
    /// Publish a checkpoint to a model store as the next version (ONNX + weights + metadata).
    Publish(models::PublishArgs),
    /// Serve a model store's versions over HTTP (predict, versions, hot swap, rollback).
    ServeModel(models::ServeModelArgs),
    /// Run the streaming daemon (Kafka in, verdicts out, cycles) and the HTTP API.
    Serve(args::ConfigArg),
    /// Validate a daemon configuration (with RLAP__SECTION__KEY overrides) and exit.
    CheckConfig(args::ConfigArg),
    /// Stream a real data set, corrupted, into a Kafka topic as LabeledSample messages.
    Produce(rlap::drivers::topics::ProduceArgs),
    /// Join a verdict topic with the input topic's hidden truth: precision, recall, F1.
    EvaluateVerdicts(stream::EvaluateArgs),
    /// The whole loop on one machine: in-process mock Kafka, real MNIST, 40 % label noise.
    Demo(Box<stream::DemoCmd>),
    /// Measure the daemon against a real broker: throughput, sample->verdict latency, RSS.
    BenchStream(stream::BenchStreamCmd),
    /// The daemon's Prometheus metrics: `--list` prints every name, type, labels and help.
    Metrics(MetricsArgs),
}

#[derive(clap::Args)]
struct MetricsArgs {
    /// Print one line per metric: name, type, label names, help (tab-separated).
    #[arg(long)]
    list: bool,
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
        Command::Experiment(a) => experiment::run(a, &progress),
        Command::Bench(a) => bench::throughput(a),
        Command::BenchServe(a) => bench::serving(a),
        Command::DeviceCheck(a) => bench::device_check(a),
        Command::Publish(a) => models::publish(a),
        Command::ServeModel(a) => models::serve_model(a),
        Command::Serve(a) => stream::serve(a),
        Command::CheckConfig(a) => stream::check_config(a),
        Command::Produce(a) => stream::produce(a, &progress),
        Command::EvaluateVerdicts(a) => stream::evaluate(a),
        Command::Demo(a) => stream::demo(*a, &progress),
        Command::BenchStream(a) => stream::bench_stream(a, &progress),
        Command::Metrics(a) => {
            if a.list {
                print!("{}", rlap::metrics::DaemonMetrics::new().list());
            } else {
                print!("{}", rlap::metrics::DaemonMetrics::new().encode());
            }
            Ok(())
        }
    }
}
