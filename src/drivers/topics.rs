//! `rlap produce` (a real data set, corrupted, into a topic) and `rlap evaluate-verdicts`
//! (verdicts joined with the hidden truth).
//!
//! This module owns the only place where the ground truth travels on Kafka: `produce` writes
//! each sample's corruption flag into the `rlap-truth-corrupted` header, which the daemon
//! never reads, and `evaluate_verdicts` joins it with the verdict topic by sample id.
//! `produce` can also inject malformed messages (every n-th) to exercise the dead-letter path.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::corruption::Corruption;
use crate::data::DatasetSpec;
use crate::progress::Progress;
use crate::stream::schema::{self, LabeledSample};

/// Failures of the tools.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Kafka client or request failure.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The data set or corruption failed.
    #[error(transparent)]
    Experiment(#[from] crate::experiment::ExperimentError),
    /// Invalid arguments.
    #[error("{0}")]
    Invalid(String),
}

fn kafka<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> ToolError + '_ {
    move |e| ToolError::Kafka(format!("{what}: {e}"))
}

/// What to produce (also `rlap produce`'s options).
#[derive(Clone, Debug, clap::Args)]
pub struct ProduceArgs {
    /// Bootstrap servers, host:port[,host:port].
    #[arg(long)]
    pub brokers: String,
    /// Target topic (created if absent).
    #[arg(long)]
    pub topic: String,
    /// mnist | fashion-mnist | idx:DIR[,K] | csv:TRAIN.csv,TEST.csv[,K] (K: number of
    /// classes); its training split is streamed.
    #[arg(long, default_value = "mnist")]
    pub dataset: DatasetSpec,
    /// Folder of the named data sets ($RLAP_DATA_DIR or ./data).
    #[arg(long, default_value_os_t = crate::data::default_data_dir())]
    pub data_dir: std::path::PathBuf,
    /// Corruption, e.g. label-symmetric:0.4, applied before streaming (the truth goes into
    /// the rlap-truth-corrupted header).
    #[arg(long, default_value = "label-symmetric:0.4")]
    pub corruption: Corruption,
    /// Seed of the corruption (and of the subsample).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stream a stratified subsample of this many samples of the training split, drawn as
    /// `rlap experiment --train-size` draws it (same seed: the same samples and labels).
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Messages per second at most (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Samples at most (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Skip this many samples first (to continue a stream).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Partitions when the topic is created.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Create the topic if absent (always, from the command line).
    #[arg(skip = true)]
    pub create_topic: bool,
    /// Every n-th message is malformed, to exercise the dead-letter topic (0 = none),
    /// cycling through the invalid kinds.
    #[arg(long, default_value_t = 0)]
    pub malformed_every: usize,
    /// Send JSON instead of protobuf (content-type: application/json header).
    #[arg(long)]
    pub json: bool,
    /// Flow control for brokers with bounded logs (librdkafka's mock cluster keeps ~5 MB per
    /// partition): never get more than `.1` messages ahead of the counter `.0` (messages
    /// consumed by the daemon).
    #[arg(skip)]
    pub throttle: Option<(prometheus::IntCounter, u64)>,
}

/// What `produce` sent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProduceReport {
    /// Valid samples produced.
    pub samples: u64,
    /// Of those, corrupted (hidden truth).
    pub corrupted: u64,
    /// Malformed messages produced.
    pub malformed: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The hidden truth of every valid sample produced: id → (corrupted, index).
    #[serde(skip)]
    pub truth: HashMap<String, (bool, usize)>,
}

impl ProduceReport {
    /// One line: what was sent to `topic`, how fast.
    pub fn text(&self, topic: &str) -> String {
        format!(
            "produced {} samples ({} corrupted) and {} malformed messages to {topic} in {:.1} s ({:.0} msg/s)\n",
            self.samples,
            self.corrupted,
            self.malformed,
            self.seconds,
            (self.samples + self.malformed) as f64 / self.seconds.max(1e-9)
        )
    }
}

/// Create `topic` with `partitions` partitions if it does not exist.
///
/// # Errors
/// [`ToolError::Kafka`].
pub async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    extra: &[(String, String)],
) -> Result<(), ToolError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        c.set(k, v);
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        c.create().map_err(kafka("admin client"))?;
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(kafka("create topic"))?;
    for x in r {
        match x {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(ToolError::Kafka(format!("create topic {t}: {e}"))),
        }
    }
    Ok(())
}

fn malformed(kind: usize, id: &str, features: &[f32], label: u32) -> Vec<u8> {
    let mut s = LabeledSample {
        id: id.into(),
        features: features.to_vec(),
        shape: vec![],
        label,
        source: Some("rlap-produce-malformed".into()),
        event_time_ms: None,
    };
    match kind % 4 {
        0 => return b"\x0a\xff\xff\xff not protobuf".to_vec(),
        1 => s.features.truncate(features.len() / 2),
        2 => s.features[0] = f32::NAN,
        _ => s.label = 1000,
    }
    s.encode_to_vec()
}

/// The stream position ending a sample id written by [`produce`] (`<data set>-<n>`, n
/// counted from 0 over the stream, `--skip` included); `None` for other ids.
pub fn id_position(sample_id: &str) -> Option<u64> {
    sample_id.rsplit('-').next()?.parse().ok()
}

/// Stream a data set into a topic (see [`ProduceArgs`]).
///
/// # Errors
/// [`ToolError`] when the data cannot be loaded or Kafka refuses.
pub async fn produce(args: &ProduceArgs, progress: &Progress) -> Result<ProduceReport, ToolError> {
    let data_dir = args.data_dir.clone();
    let (dataset, corruption, seed) = (args.dataset.clone(), args.corruption.clone(), args.seed);
    let train_size = args.train_size;
    let (noisy, truth) = tokio::task::spawn_blocking(move || -> Result<_, ToolError> {
        let cfg = crate::experiment::ExperimentConfig {
            dataset,
            data_dir,
            corruption,
            seed,
            train_size,
            ..Default::default()
        };
        let p = crate::experiment::prepare(&cfg)?;
        Ok((p.noisy, p.truth))
    })
    .await
    .map_err(|e| ToolError::Invalid(e.to_string()))??;
    if args.create_topic {
        create_topic(&args.brokers, &args.topic, args.partitions, &[]).await?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(kafka("producer"))?;
    let n = noisy.len();
    // Past the end of the data set the stream wraps around (ids stay unique): long soaks.
    let end = if args.limit == 0 {
        n.max(args.skip)
    } else {
        args.skip + args.limit
    };
    if args.skip >= end {
        return Err(ToolError::Invalid(format!(
            "--skip {} leaves nothing of {n} samples",
            args.skip
        )));
    }
    let bar = progress.bar((end - args.skip) as u64, "produce");
    let t0 = Instant::now();
    let mut report = ProduceReport::default();
    let shape: Vec<u32> = match noisy.image_shape {
        Some((c, h, w)) => vec![c as u32, h as u32, w as u32],
        None => vec![noisy.dim as u32],
    };
    let ds_name = args.dataset.to_string().replace([':', '/', ','], "_");
    let mut pending = std::collections::VecDeque::new();
    for (j, seq) in (args.skip..end).enumerate() {
        let i = seq % n;
        if let Some((consumed, ahead)) = &args.throttle {
            while (j as u64).saturating_sub(consumed.get()) > *ahead {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if args.rate > 0 {
            let due = t0 + Duration::from_secs_f64(j as f64 / args.rate as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        let id = format!("{ds_name}-{seq}");
        let is_malformed = args.malformed_every > 0 && (j + 1) % args.malformed_every == 0;
        let (payload, headers) = if is_malformed {
            report.malformed += 1;
            (
                malformed(j / args.malformed_every, &id, noisy.row(i), noisy.labels[i]),
                OwnedHeaders::new(),
            )
        } else {
            let corrupted = truth.is_corrupted(i);
            report.samples += 1;
            report.corrupted += u64::from(corrupted);
            report.truth.insert(id.clone(), (corrupted, seq));
            let s = LabeledSample {
                id: id.clone(),
                features: noisy.row(i).to_vec(),
                shape: shape.clone(),
                label: noisy.labels[i],
                source: Some(format!("rlap-produce:{}", args.dataset)),
                event_time_ms: Some(crate::stream::unix_ms()),
            };
            let h = OwnedHeaders::new().insert(Header {
                key: schema::TRUTH_HEADER,
                value: Some(if corrupted { "1" } else { "0" }),
            });
            if args.json {
                let v = serde_json::json!({
                    "id": s.id, "features": s.features, "shape": s.shape, "label": s.label,
                    "source": s.source,
                });
                (
                    serde_json::to_vec(&v).expect("JSON of numbers"),
                    h.insert(Header {
                        key: schema::CONTENT_TYPE_HEADER,
                        value: Some("application/json"),
                    }),
                )
            } else {
                (s.encode_to_vec(), h)
            }
        };
        let rec = FutureRecord::to(&args.topic)
            .key(&id)
            .payload(&payload)
            .headers(headers);
        let fut = producer
            .send_result(rec)
            .map_err(|(e, _)| ToolError::Kafka(format!("enqueue: {e}")))?;
        pending.push_back(fut);
        // Bounded in-flight window.
        while pending.len() > 10_000 {
            let f = pending.pop_front().expect("non-empty");
            f.await
                .map_err(|_| ToolError::Kafka("delivery canceled".into()))?
                .map_err(|(e, _)| ToolError::Kafka(format!("delivery: {e}")))?;
        }
        bar.inc(1);
    }
    for f in pending {
        f.await
            .map_err(|_| ToolError::Kafka("delivery canceled".into()))?
            .map_err(|(e, _)| ToolError::Kafka(format!("delivery: {e}")))?;
    }
    bar.finish_and_clear();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

pub use crate::stream::kafka::is_json;

/// Verdicts joined with the hidden truth.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerdictReport {
    /// Valid samples on the input topic (those carrying a truth header).
    pub input_samples: u64,
    /// Malformed messages on the input topic (no truth header).
    pub input_without_truth: u64,
    /// Verdict messages read.
    pub verdicts: u64,
    /// Distinct sample ids with a verdict.
    pub unique_verdicts: u64,
    /// Verdict messages beyond the first per sample (redeliveries after a crash).
    pub duplicates: u64,
    /// Input samples without any verdict.
    pub missing: u64,
    /// Dead-letter messages read (0 when no dead-letter topic was given).
    pub dead_letters: u64,
    /// Detection of corrupted samples by the (first) verdict, noisy = positive.
    pub precision: f64,
    /// See `precision`.
    pub recall: f64,
    /// See `precision`.
    pub f1: f64,
    /// The same after skipping the first `skip` input samples (warm-up), if asked.
    pub after_warmup: Option<(u64, f64, f64, f64)>,
    /// Verdicts per model version.
    pub by_model_version: Vec<(u64, u64)>,
    /// True noise rate of the input samples.
    pub true_noise_rate: f64,
    /// Fraction of verdicts flagged noisy.
    pub flagged_fraction: f64,
}

fn read_all(
    brokers: &str,
    topic: &str,
    extra: &[(String, String)],
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<u64, ToolError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", format!("rlap-evaluate-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in extra {
        c.set(k, v);
    }
    let consumer: BaseConsumer = c.create().map_err(kafka("consumer"))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka("metadata"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(ToolError::Kafka(format!("topic {topic} does not exist")));
    }
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &parts {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(kafka("watermarks"))?;
        if hi > lo {
            ends.insert(p, hi);
            tpl.add_partition_offset(topic, p, Offset::Offset(lo))
                .map_err(kafka("assign"))?;
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl).map_err(kafka("assign"))?;
    let mut count = 0;
    let mut idle = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle = Instant::now();
                count += 1;
                f(&m);
                if let Some(&hi) = ends.get(&m.partition()) {
                    if m.offset() + 1 >= hi {
                        ends.remove(&m.partition());
                    }
                }
            }
            Some(Err(e)) => return Err(ToolError::Kafka(format!("reading {topic}: {e}"))),
            None if idle.elapsed() > Duration::from_secs(30) => {
                return Err(ToolError::Kafka(format!(
                    "reading {topic}: no message for 30 s before the end offsets"
                )))
            }
            None => {}
        }
    }
    Ok(count)
}

fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a [u8]> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
}

fn prf(tp: u64, fp: u64, fneg: u64) -> (f64, f64, f64) {
    let p = tp as f64 / (tp + fp).max(1) as f64;
    let r = tp as f64 / (tp + fneg).max(1) as f64;
    let f = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    (p, r, f)
}

/// Read the input topic (truth headers), the verdict topic and optionally the dead-letter
/// topic from their beginnings to their current ends, and join by sample id. `skip` input
/// samples (in input order per partition, by id order of arrival) are also excluded in
/// `after_warmup`.
///
/// # Errors
/// [`ToolError::Kafka`].
pub fn evaluate_verdicts(
    brokers: &str,
    input_topic: &str,
    verdicts_topic: &str,
    dlq_topic: Option<&str>,
    skip: usize,
    extra: &[(String, String)],
) -> Result<VerdictReport, ToolError> {
    let mut truth: HashMap<String, (bool, usize)> = HashMap::new();
    let mut without = 0;
    read_all(brokers, input_topic, extra, |m| {
        match (header(m, schema::TRUTH_HEADER), m.key()) {
            (Some(v), Some(k)) => {
                let id = String::from_utf8_lossy(k).into_owned();
                let order = id_position(&id).map_or(usize::MAX, |p| p as usize);
                truth.insert(id, (v == b"1", order));
            }
            _ => without += 1,
        }
    })?;
    let mut r = evaluate_against(&truth, brokers, verdicts_topic, dlq_topic, skip, extra)?;
    r.input_without_truth = without;
    Ok(r)
}

/// Write every verdict message on `verdicts_topic` whose sample is in `truth` (id →
/// (corrupted, stream index)) as one CSV row
/// `order,sample_id,given_label,corrupted,posterior_noisy,noisy,model_version` (the quality benchmark's
/// input; duplicates after a redelivery appear as extra rows).
///
/// # Errors
/// [`ToolError::Kafka`] when the topic cannot be read, [`ToolError::Invalid`] when the file
/// cannot be written.
pub fn write_verdicts_csv(
    path: &std::path::Path,
    truth: &HashMap<String, (bool, usize)>,
    brokers: &str,
    verdicts_topic: &str,
) -> Result<(), ToolError> {
    use std::io::Write;
    let io = |e: std::io::Error| ToolError::Invalid(format!("{}: {e}", path.display()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(
        w,
        "order,sample_id,given_label,corrupted,posterior_noisy,noisy,model_version"
    )
    .map_err(io)?;
    let mut err = None;
    read_all(brokers, verdicts_topic, &[], |m| {
        let Some(v) = m
            .payload()
            .and_then(|p| schema::decode_verdict(p, is_json(m)))
        else {
            return;
        };
        let Some(&(t, order)) = truth.get(&v.sample_id) else {
            return;
        };
        if let Err(e) = writeln!(
            w,
            "{order},{},{},{},{:.6},{},{}",
            v.sample_id,
            v.given_label,
            u8::from(t),
            v.posterior_noisy,
            u8::from(v.noisy),
            v.model_version
        ) {
            err.get_or_insert(e);
        }
    })?;
    if let Some(e) = err {
        return Err(io(e));
    }
    w.flush().map_err(io)
}

/// [`evaluate_verdicts`] with the truth already known (id → (corrupted, index)), for a
/// caller that produced the samples itself (the demo).
///
/// # Errors
/// [`ToolError::Kafka`].
pub fn evaluate_against(
    truth: &HashMap<String, (bool, usize)>,
    brokers: &str,
    verdicts_topic: &str,
    dlq_topic: Option<&str>,
    skip: usize,
    extra: &[(String, String)],
) -> Result<VerdictReport, ToolError> {
    let mut report = VerdictReport {
        input_samples: truth.len() as u64,
        ..Default::default()
    };
    let mut first: HashMap<String, bool> = HashMap::new();
    let mut by_version: std::collections::BTreeMap<u64, u64> = Default::default();
    report.verdicts = read_all(brokers, verdicts_topic, extra, |m| {
        if let Some(v) = m
            .payload()
            .and_then(|p| schema::decode_verdict(p, is_json(m)))
        {
            *by_version.entry(v.model_version).or_default() += 1;
            first.entry(v.sample_id).or_insert(v.noisy);
        }
    })?;
    if let Some(d) = dlq_topic {
        report.dead_letters = read_all(brokers, d, extra, |_| {}).unwrap_or(0);
    }
    report.unique_verdicts = first.len() as u64;
    report.duplicates = report.verdicts - report.unique_verdicts;
    report.by_model_version = by_version.into_iter().collect();
    let min_order = truth.values().map(|t| t.1).min().unwrap_or(0);
    let (mut all, mut late) = ([0u64; 3], [0u64; 3]);
    let mut late_n = 0;
    let mut corrupted = 0u64;
    let mut flagged = 0u64;
    for (id, &(t, order)) in truth {
        corrupted += u64::from(t);
        let Some(&v) = first.get(id) else {
            report.missing += 1;
            continue;
        };
        flagged += u64::from(v);
        let idx = match (v, t) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            _ => continue,
        };
        all[idx] += 1;
        if skip > 0 && order >= min_order + skip {
            late[idx] += 1;
        }
    }
    if skip > 0 {
        late_n = truth.values().filter(|t| t.1 >= min_order + skip).count() as u64;
    }
    (report.precision, report.recall, report.f1) = prf(all[0], all[1], all[2]);
    if skip > 0 {
        let (p, r, f) = prf(late[0], late[1], late[2]);
        report.after_warmup = Some((late_n, p, r, f));
    }
    report.true_noise_rate = corrupted as f64 / truth.len().max(1) as f64;
    report.flagged_fraction = flagged as f64 / first.len().max(1) as f64;
    Ok(report)
}

impl VerdictReport {
    /// Human-readable summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "input samples {} (+{} malformed) | verdicts {} ({} distinct, {} duplicates) | missing {} | dead letters {}\n\
             noisy flagged {:.4} of verdicts, true noise rate {:.4}\n\
             verdict detection (noisy = positive): precision {:.4} recall {:.4} F1 {:.4}\n",
            self.input_samples,
            self.input_without_truth,
            self.verdicts,
            self.unique_verdicts,
            self.duplicates,
            self.missing,
            self.dead_letters,
            self.flagged_fraction,
            self.true_noise_rate,
            self.precision,
            self.recall,
            self.f1
        );
        if let Some((n, p, r, f)) = self.after_warmup {
            s.push_str(&format!(
                "after warm-up ({n} samples): precision {p:.4} recall {r:.4} F1 {f:.4}\n"
            ));
        }
        s.push_str("verdicts by model version:");
        for (v, n) in &self.by_model_version {
            s.push_str(&format!(" v{v}={n}"));
        }
        s.push('\n');
        s
    }
}

/// Test accuracy of every version of `model` in the store on `test` (evaluation only).
///
/// # Errors
/// [`ToolError::Invalid`] when the store or a version cannot be read.
pub fn version_accuracies(
    store: &Path,
    model: &str,
    test: &crate::data::Dataset,
) -> Result<Vec<(u64, f64)>, ToolError> {
    let st = crate::store::ModelStore::open(store, usize::MAX)
        .map_err(|e| ToolError::Invalid(e.to_string()))?;
    let mut out = vec![];
    for v in st
        .versions(model)
        .map_err(|e| ToolError::Invalid(e.to_string()))?
    {
        let dir = st
            .version_dir(model, v)
            .map_err(|e| ToolError::Invalid(e.to_string()))?;
        let m = crate::model::Model::load(
            &dir.join(crate::store::WEIGHTS_FILE),
            &candle_core::Device::Cpu,
        )
        .map_err(|e| ToolError::Invalid(e.to_string()))?;
        let p = crate::train::predict(&m, test).map_err(|e| ToolError::Invalid(e.to_string()))?;
        out.push((
            v,
            crate::evaluation::classification_report(&p, &test.labels, test.num_classes).accuracy,
        ));
    }
    Ok(out)
}

/// One line of `(version, accuracy)` pairs, as `rlap evaluate-verdicts --store` prints them.
pub fn version_accuracies_text(acc: &[(u64, f64)]) -> String {
    let mut t = String::from("test-split accuracy by model version:");
    for (v, x) in acc {
        t += &format!(" v{v}={x:.4}");
    }
    t + "\n"
}
