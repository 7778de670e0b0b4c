//! `rlap demo`: the whole loop on one machine with no external broker.
//!
//! This module owns the demo's orchestration: librdkafka's in-process mock cluster stands in
//! for the brokers (the daemon's source and sink code are the same as in production), a real
//! data set is corrupted and streamed in with a few malformed messages mixed in, the daemon
//! bootstraps a model, scores every sample and runs cycles; when every message has its verdict
//! or dead letter the daemon shuts down gracefully and the demo prints the verdicts against
//! the hidden truth, the cycles, and each published version's accuracy on the clean test
//! split (evaluation only: nothing of the test split or the truth reaches the daemon; with
//! `--validation`, a trusted validation set of training samples that are never streamed does,
//! as `[cycle.validation]`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use serde::Serialize;

use crate::corruption::Corruption;
use crate::data::{load, DatasetSpec};
use crate::drivers::topics::{self, ProduceArgs, ToolError, VerdictReport};
use crate::metrics::DaemonMetrics;
use crate::progress::Progress;
use crate::stream::config::DaemonConfig;
use crate::stream::cycle::CycleRecord;
use crate::stream::daemon::{self, DaemonSummary};

/// What the demo streams and where it writes (also `rlap demo`'s options).
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// The daemon configuration (brokers, store and state are overridden); `rlap demo`
    /// loads it from `--config`.
    #[arg(skip)]
    pub config: DaemonConfig,
    /// mnist | fashion-mnist | idx:DIR[,K] | csv:TRAIN.csv,TEST.csv[,K] (K: number of
    /// classes); its training split is streamed.
    #[arg(long, default_value = "mnist")]
    pub dataset: DatasetSpec,
    /// Folder of the named data sets ($RLAP_DATA_DIR or ./data).
    #[arg(long, default_value_os_t = crate::data::default_data_dir())]
    pub data_dir: PathBuf,
    /// Corruption of the streamed samples.
    #[arg(long, default_value = "label-symmetric:0.4")]
    pub corruption: Corruption,
    /// Samples streamed (0 = the whole training split, or the `--train-size` subsample); past
    /// its end the stream starts over, so `--limit 40000 --train-size 20000` streams the
    /// subsample twice.
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Every n-th message is malformed (0 = none).
    #[arg(long, default_value_t = 1000)]
    pub malformed_every: usize,
    /// Seed of the corruption.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stream a stratified subsample of the training split (as `experiment --train-size`:
    /// same seed, same samples and labels).
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Messages per second streamed in (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Output folder (model store, state); emptied first.
    #[arg(long = "out", default_value = "out/demo")]
    pub out_dir: PathBuf,
    /// Write one CSV row per verdict, joined with the hidden truth, here:
    /// `order,sample_id,given_label,corrupted,posterior_noisy,noisy,model_version`.
    #[arg(long)]
    pub verdicts_csv: Option<PathBuf>,
    /// Also train the Oracle (the first model's recipe on the first samples streamed, with
    /// their true labels) and print its test accuracy beside the served
    /// model's.
    #[arg(long)]
    pub oracle: bool,
    /// Hold back this many samples of the training split outside the streamed subsample
    /// (needs `--train-size`; stratified, with their true labels) and give them to the daemon
    /// as its trusted `[cycle.validation]` set, written to `OUT/validation.csv` (no header;
    /// the label, then the features). 0 = none: cycles are judged on the held-out slice of
    /// the stream.
    #[arg(long, default_value_t = 0, requires = "train_size")]
    pub validation: usize,
}

/// The closing summary.
#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    /// What `produce` sent.
    pub produced: topics::ProduceReport,
    /// What the daemon did.
    pub daemon: DaemonSummary,
    /// Verdicts against the hidden truth.
    pub verdicts: VerdictReport,
    /// Test-split accuracy of each published version.
    pub version_accuracy: Vec<(u64, f64)>,
    /// Test-split accuracy of the Oracle (with `--oracle`): the first model's recipe on the
    /// first `bootstrap.samples` samples streamed, with their true labels.
    pub oracle_accuracy: Option<f64>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl DemoSummary {
    /// The closing summary as text.
    pub fn text(&self) -> String {
        let mut s = String::from("\n== rlap demo summary ==\n");
        s.push_str(&format!(
            "streamed {} samples ({} corrupted) + {} malformed in {:.1} s; daemon consumed {}, verdicts {}, dead letters {}\n",
            self.produced.samples,
            self.produced.corrupted,
            self.produced.malformed,
            self.produced.seconds,
            self.daemon.consumed,
            self.daemon.verdicts,
            self.daemon.dead_letters
        ));
        s.push_str(&self.verdicts.text());
        let cycles: &[CycleRecord] = &self.daemon.cycles;
        let accepted = cycles
            .iter()
            .filter(|c| c.outcome == crate::stream::cycle::CycleOutcome::Accepted)
            .count();
        s.push_str(&format!(
            "cycles: {} run, {} accepted\n",
            cycles.len(),
            accepted
        ));
        for c in cycles {
            s.push_str(&format!(
                "  v{} -> {}: {} ({}); pruned {} neurons, fine-tuned on {} clean samples\n",
                c.parent_version,
                c.new_version.map_or("-".into(), |v| format!("v{v}")),
                c.outcome.as_str(),
                c.reason,
                c.pruned_now.len(),
                c.finetune_samples
            ));
        }
        s.push_str("test-split accuracy by model version:");
        for (v, a) in &self.version_accuracy {
            s.push_str(&format!(" v{v}={a:.4}"));
        }
        if let (Some(first), Some(last)) =
            (self.version_accuracy.first(), self.version_accuracy.last())
        {
            s.push_str(&format!(
                "\naccuracy before (v{}) {:.4} -> after (v{}) {:.4}",
                first.0, first.1, last.0, last.1
            ));
        }
        if let Some(o) = self.oracle_accuracy {
            s.push_str(&format!(
                "\noracle (the first model's recipe on the same first samples, true labels) {o:.4}"
            ));
        }
        s.push_str(&format!("\ndone in {:.1} s\n", self.seconds));
        s
    }
}

/// Run the demo (see the module docs).
///
/// # Errors
/// [`ToolError`] when the mock cluster, the data, the daemon or the evaluation fails.
pub async fn run(args: DemoArgs, progress: &Progress) -> Result<DemoSummary, ToolError> {
    let t0 = Instant::now();
    let mock = MockCluster::new(1).map_err(|e| ToolError::Kafka(format!("mock cluster: {e}")))?;
    let brokers = mock.bootstrap_servers();
    let mut cfg = args.config.clone();
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.create_topics = false;
    cfg.model.store = args.out_dir.join("models");
    cfg.state.dir = args.out_dir.join("state");
    cfg.api.enabled = false;
    // The demo knows its data: the model takes its shape (and --validation its samples).
    let train = {
        let (ds, dir) = (args.dataset.clone(), args.data_dir.clone());
        let train = tokio::task::spawn_blocking(move || load(&ds, &dir))
            .await
            .map_err(|e| ToolError::Invalid(e.to_string()))?
            .map_err(crate::experiment::ExperimentError::from)?
            .train;
        cfg.model.num_features = train.dim;
        cfg.model.num_classes = train.num_classes;
        cfg.model.image_shape = train.image_shape.map_or(vec![], |(c, h, w)| vec![c, h, w]);
        if args.validation > 0 {
            held_back_room(&args, train.len())?;
        }
        train
    };
    let validation_csv = args.out_dir.join("validation.csv");
    if args.validation > 0 {
        if validation_csv.to_string_lossy().contains(',') {
            return Err(ToolError::Invalid(format!(
                "--validation: the output folder {} has a comma in its path, which a csv: data \
                 set spec cannot carry; choose another --out",
                args.out_dir.display()
            )));
        }
        cfg.cycle.validation = Some(crate::stream::config::ValidationConfig {
            dataset: format!(
                "csv:{p},{p},{}",
                cfg.model.num_classes,
                p = validation_csv.display()
            ),
            data_dir: None,
            limit: 0,
        });
    }
    // Checked before anything is deleted: a config the demo's data does not fit stops here.
    let cfg = Arc::new(cfg.check().map_err(|e| ToolError::Invalid(e.to_string()))?);
    if args.out_dir.exists() {
        std::fs::remove_dir_all(&args.out_dir)
            .map_err(|e| ToolError::Invalid(format!("{}: {e}", args.out_dir.display())))?;
    }
    if args.validation > 0 {
        let a = args.clone();
        let path = validation_csv.clone();
        tokio::task::spawn_blocking(move || write_held_back_validation(&train, &a, &path))
            .await
            .map_err(|e| ToolError::Invalid(e.to_string()))??;
    }
    let k = &cfg.kafka;
    for (t, p) in [
        (k.input_topic.clone(), k.topic_partitions),
        (k.verdicts(), k.topic_partitions),
        (k.dlq(), 1),
        (k.model_events_topic.clone(), 1),
        (k.clean(), k.topic_partitions),
        (k.quarantine(), k.topic_partitions),
    ] {
        mock.create_topic(&t, p, 1)
            .map_err(|e| ToolError::Kafka(format!("mock topic {t}: {e}")))?;
    }
    let metrics = DaemonMetrics::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (_control_tx, control_rx) = tokio::sync::mpsc::channel(1);
    let status = Arc::new(Mutex::new(None));
    let daemon = tokio::spawn(daemon::run(
        cfg.clone(),
        metrics.clone(),
        stop_rx,
        status.clone(),
        control_rx,
    ));

    let produce_args = ProduceArgs {
        brokers: brokers.clone(),
        topic: cfg.kafka.input_topic.clone(),
        dataset: args.dataset.clone(),
        data_dir: args.data_dir.clone(),
        corruption: args.corruption.clone(),
        seed: args.seed,
        train_size: args.train_size,
        rate: args.rate,
        limit: args.limit,
        skip: 0,
        partitions: cfg.kafka.topic_partitions,
        create_topic: false,
        malformed_every: args.malformed_every,
        json: false,
        // The mock cluster keeps ~5 MB per partition (librdkafka's rdkafka_mock.c) and drops
        // samples the daemon has not read yet beyond it. Unconsumed samples need not spread
        // evenly over the partitions (the daemon pauses its input while the first model
        // trains, and the fetcher resumes them unevenly), so at most 1,500 in all: 4.7 MB of
        // Fashion-MNIST-sized messages even if they all sit in one partition. (3,000 spread
        // as 1,000 per partition lost samples once the pause landed.)
        throttle: Some((metrics.samples_consumed.clone(), 1500)),
    };
    let mut produced = topics::produce(&produce_args, progress).await?;
    let total = produced.samples + produced.malformed;
    let bar = progress.bar(total, "verdicts");
    let mut last = (0u64, Instant::now());
    loop {
        let done = metrics.verdicts.with_label_values(&["clean"]).get()
            + metrics.verdicts.with_label_values(&["noisy"]).get()
            + crate::stream::schema::INVALID_REASONS
                .iter()
                .map(|r| metrics.invalid_samples.with_label_values(&[r]).get())
                .sum::<u64>();
        bar.set_position(done);
        if let Some(st) = status.lock().expect("status lock").as_ref() {
            bar.set_message(format!(
                "{} | model v{} | noisy {:.3} | cycles {}{}",
                st.phase,
                st.model_version,
                st.noisy_fraction_window,
                st.cycles.len(),
                if st.cycle_running {
                    " (one running)"
                } else {
                    ""
                }
            ));
        }
        if done >= total {
            break;
        }
        if daemon.is_finished() {
            break;
        }
        if done > last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(300) {
            bar.finish_and_clear();
            let _ = stop_tx.send(true);
            return Err(ToolError::Invalid(format!(
                "no verdict for 300 s ({done} of {total} done)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    let summary = daemon
        .await
        .map_err(|e| ToolError::Invalid(format!("daemon task: {e}")))?
        .map_err(|e| ToolError::Invalid(format!("daemon: {e}")))?;
    let (b, vt, dlq) = (brokers.clone(), cfg.kafka.verdicts(), cfg.kafka.dlq());
    let warmup = cfg.bootstrap.samples;
    let truth = std::mem::take(&mut produced.truth);
    let malformed = produced.malformed;
    let csv = args.verdicts_csv.clone();
    let verdicts = tokio::task::spawn_blocking(move || {
        if let Some(p) = &csv {
            topics::write_verdicts_csv(p, &truth, &b, &vt)?;
        }
        let mut r = topics::evaluate_against(&truth, &b, &vt, Some(&dlq), warmup, &[])?;
        // The truth came from the producer's memory, not from the input topic: its malformed
        // messages are the ones the producer wrote.
        r.input_without_truth = malformed;
        Ok::<_, ToolError>(r)
    })
    .await
    .map_err(|e| ToolError::Invalid(e.to_string()))??;
    let (store, name, ds, dir) = (
        cfg.model.store.clone(),
        cfg.model.name.clone(),
        args.dataset.clone(),
        args.data_dir.clone(),
    );
    let version_accuracy = tokio::task::spawn_blocking(move || -> Result<_, ToolError> {
        let test = load(&ds, &dir)
            .map_err(crate::experiment::ExperimentError::from)?
            .test;
        topics::version_accuracies(&store, &name, &test)
    })
    .await
    .map_err(|e| ToolError::Invalid(e.to_string()))??;
    drop(mock);
    let oracle_accuracy = if args.oracle {
        let a = args.clone();
        let c = cfg.clone();
        Some(
            tokio::task::spawn_blocking(move || oracle_accuracy(&a, &c))
                .await
                .map_err(|e| ToolError::Invalid(e.to_string()))??,
        )
    } else {
        None
    };
    Ok(DemoSummary {
        produced,
        daemon: summary,
        verdicts,
        version_accuracy,
        oracle_accuracy,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `--train-size` when the training split (`train_len` samples) leaves at least
/// `--validation` samples outside the streamed subsample.
///
/// # Errors
/// [`ToolError::Invalid`], one line, without `--train-size` or with too few samples left.
fn held_back_room(args: &DemoArgs, train_len: usize) -> Result<usize, ToolError> {
    let Some(n) = args.train_size else {
        return Err(ToolError::Invalid(
            "--validation needs --train-size: the validation samples come from the training \
             split's samples outside the streamed subsample"
                .into(),
        ));
    };
    let left = train_len.saturating_sub(n);
    if left < args.validation {
        return Err(ToolError::Invalid(format!(
            "--validation {}: only {left} of the {train_len} training samples lie outside \
             --train-size {n}",
            args.validation
        )));
    }
    Ok(n)
}

/// Write `args.validation` samples of the training split `train` (`args.dataset`'s, with its
/// true labels) that the demo does not stream (the complement of `--train-size`'s stratified
/// subsample; stratified again, seed `args.seed`) to `path` as a CSV (no header; the label,
/// then the features): the trusted validation set of `--validation`.
///
/// # Errors
/// [`ToolError::Invalid`] without `--train-size`, when fewer samples are left than asked for,
/// or when the file cannot be written.
pub fn write_held_back_validation(
    train: &crate::data::Dataset,
    args: &DemoArgs,
    path: &Path,
) -> Result<(), ToolError> {
    let n = held_back_room(args, train.len())?;
    let streamed: std::collections::HashSet<usize> =
        train.stratified_indices(n, args.seed).into_iter().collect();
    let rest: Vec<usize> = (0..train.len()).filter(|i| !streamed.contains(i)).collect();
    let rest = train.select(&rest);
    let held = rest.select(&rest.stratified_indices(args.validation, args.seed ^ 0x7a11d));
    let err = |e: &dyn std::fmt::Display| ToolError::Invalid(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let mut w = csv::Writer::from_path(path).map_err(|e| err(&e))?;
    for i in 0..held.len() {
        let mut rec = vec![held.labels[i].to_string()];
        rec.extend(held.row(i).iter().map(|v| v.to_string()));
        w.write_record(&rec).map_err(|e| err(&e))?;
    }
    w.flush().map_err(|e| err(&e))
}

/// The Oracle of a demo run: a model trained as the daemon's first model is
/// (`bootstrap.epochs`, `bootstrap.seed`, the paper's recipe, then with
/// `bootstrap.finetune_clean` `cycle.epochs` of fine-tuning) on the first `bootstrap.samples`
/// samples streamed, with their true labels; returns its test-split accuracy. The daemon's first model trains on the first
/// samples it consumes, which are these up to the interleaving of the input partitions.
///
/// # Errors
/// [`ToolError`] when the data cannot be loaded or training fails.
pub fn oracle_accuracy(args: &DemoArgs, cfg: &DaemonConfig) -> Result<f64, ToolError> {
    let p = crate::experiment::prepare(&crate::experiment::ExperimentConfig {
        dataset: args.dataset.clone(),
        data_dir: args.data_dir.clone(),
        corruption: args.corruption.clone(),
        seed: args.seed,
        train_size: args.train_size,
        ..Default::default()
    })?;
    let clean = p.truth.oracle_train_set();
    let first: Vec<usize> = (0..cfg.bootstrap.samples.min(clean.len())).collect();
    let set = clean.select(&first);
    let spec = crate::model::ModelSpec::for_dataset(cfg.model.arch, cfg.model.hidden, &set);
    let err = |e: crate::model::ModelError| ToolError::Invalid(format!("oracle: {e}"));
    let device = candle_core::Device::Cpu;
    let model = crate::model::Model::new(spec, &device, cfg.bootstrap.seed).map_err(err)?;
    let recipe = crate::train::TrainConfig::paper(cfg.bootstrap.epochs, cfg.bootstrap.seed);
    crate::train::train(&model, &set, &recipe, &Progress::hidden(), "oracle").map_err(err)?;
    if cfg.bootstrap.finetune_clean && cfg.bootstrap.crossfit_folds >= 2 {
        // The first model's fine-tune on its clean partition: with true labels, every sample.
        let ft = crate::stream::cycle::finetune_recipe(cfg, cfg.bootstrap.seed);
        crate::train::train(&model, &set, &ft, &Progress::hidden(), "oracle fine-tune")
            .map_err(err)?;
    }
    let pred = crate::train::predict(&model, &p.test).map_err(err)?;
    Ok(
        crate::evaluation::classification_report(&pred, &p.test.labels, p.test.num_classes)
            .accuracy,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    #[test]
    fn held_back_validation_is_outside_the_stream_with_true_labels() {
        // 100 training rows of 2 classes whose features name the row (label = row % 2).
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, n: usize| {
            let p = dir.path().join(name);
            let rows: String = (0..n)
                .map(|i| format!("{},{i},{}.5\n", i % 2, i * 2))
                .collect();
            std::fs::write(&p, rows).unwrap();
            p
        };
        let (train, test) = (write("train.csv", 100), write("test.csv", 10));
        let spec = format!("csv:{},{}", train.display(), test.display());
        let args = |extra: &[&str]| {
            let mut v = vec!["demo", "--dataset", &spec, "--validation", "20"];
            v.extend_from_slice(extra);
            Cli::parse_from(v).demo
        };
        let out = dir.path().join("validation.csv");
        let no_size =
            Cli::try_parse_from(["demo", "--dataset", spec.as_str(), "--validation", "20"]);
        assert!(no_size.is_err(), "--validation without --train-size parses");
        let mut a = args(&["--train-size", "60"]);
        a.train_size = None;
        let full = load(&a.dataset, &a.data_dir).unwrap().train;
        let err = write_held_back_validation(&full, &a, &out).unwrap_err();
        assert!(err.to_string().contains("needs --train-size"), "{err}");
        let a = args(&["--train-size", "60"]);
        write_held_back_validation(&full, &a, &out).unwrap();
        let (features, labels, dim) = crate::data::read_csv(&out).unwrap();
        assert_eq!((labels.len(), dim), (20, 2));
        let streamed: std::collections::HashSet<usize> =
            full.stratified_indices(60, a.seed).into_iter().collect();
        for (r, &y) in labels.iter().enumerate() {
            let row = features[r * 2] as usize;
            assert!(!streamed.contains(&row), "row {row} is streamed too");
            assert_eq!(y as usize, row % 2, "row {row}: not its true label");
            assert_eq!(features[r * 2 + 1], (row * 2) as f32 + 0.5);
        }
        assert_eq!(labels.iter().filter(|&&y| y == 1).count(), 10, "stratified");
        let err =
            write_held_back_validation(&full, &args(&["--train-size", "90"]), &out).unwrap_err();
        assert!(err.to_string().contains("only 10 of the 100"), "{err}");
    }
}
