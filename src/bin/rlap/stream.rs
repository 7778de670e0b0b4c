//! The daemon's subcommands: `serve`, `check-config`, and its clients `produce`,
//! `evaluate-verdicts`, `demo`, `bench-stream`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use rlap::drivers::{bench_stream, demo, topics};
use rlap::progress::Progress;

use crate::args::{runtime, ConfigArg, DataArgs, JsonOut};

/// `rlap serve`: the daemon and its HTTP API until SIGINT/SIGTERM, then a bounded shutdown.
pub fn serve(a: ConfigArg) -> Result<()> {
    let cfg = rlap::stream::config::load(&a.config)?;
    let bound = std::time::Duration::from_secs(cfg.kafka.shutdown_timeout_secs);
    let summary = runtime()?.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            rlap::api::shutdown_signal().await;
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

/// `rlap check-config`.
pub fn check_config(a: ConfigArg) -> Result<()> {
    rlap::stream::config::load(&a.config)?;
    println!("config OK: {}", a.config.display());
    Ok(())
}

/// `rlap produce`.
pub fn produce(a: topics::ProduceArgs, progress: &Progress) -> Result<()> {
    let r = runtime()?.block_on(topics::produce(&a, progress))?;
    print!("{}", r.text(&a.topic));
    Ok(())
}

/// `rlap evaluate-verdicts`'s options.
#[derive(Args)]
pub struct EvaluateArgs {
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
    /// Model store: also print each version's test accuracy (on --dataset's clean test split).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Model name in the store.
    #[arg(long, default_value = "mnist")]
    model: String,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    out: JsonOut,
}

/// `rlap evaluate-verdicts`.
pub fn evaluate(a: EvaluateArgs) -> Result<()> {
    let verdicts = a
        .verdicts
        .unwrap_or_else(|| format!("{}.verdicts", a.topic));
    let dlq = a.dlq.unwrap_or_else(|| format!("{}.dlq", a.topic));
    let r = topics::evaluate_verdicts(
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
        let test = rlap::data::load(&a.data.dataset, &a.data.dir())?.test;
        acc = topics::version_accuracies(store, &a.model, &test)?;
        print!("{}", topics::version_accuracies_text(&acc));
    }
    a.out
        .write(&serde_json::json!({ "verdicts": r, "version_accuracy": acc }))
}

/// `rlap demo`'s options.
#[derive(Args)]
pub struct DemoCmd {
    /// Daemon configuration (brokers, store and state are set by the demo).
    #[arg(long, default_value = "configs/demo.toml")]
    config: PathBuf,
    #[command(flatten)]
    args: demo::DemoArgs,
    #[command(flatten)]
    out: JsonOut,
}

/// `rlap demo`.
pub fn demo(a: DemoCmd, progress: &Progress) -> Result<()> {
    if !a.config.is_file() {
        bail!(
            "{}: no such config file (run from the repository root, or pass --config)",
            a.config.display()
        );
    }
    let args = demo::DemoArgs {
        config: rlap::stream::config::load(&a.config)?.into_inner(),
        ..a.args
    };
    let s = runtime()?.block_on(demo::run(args, progress))?;
    print!("{}", s.text());
    a.out.write(&s)
}

/// `rlap bench-stream`'s options.
#[derive(Args)]
pub struct BenchStreamCmd {
    #[command(flatten)]
    args: bench_stream::StreamBenchArgs,
    #[command(flatten)]
    out: JsonOut,
}

/// `rlap bench-stream`: this binary runs the daemon child.
pub fn bench_stream(a: BenchStreamCmd, progress: &Progress) -> Result<()> {
    let args = bench_stream::StreamBenchArgs {
        exe: std::env::current_exe()?,
        ..a.args
    };
    let r = runtime()?.block_on(bench_stream::run(&args, progress))?;
    print!("{}", r.text());
    a.out.write(&r)
}
