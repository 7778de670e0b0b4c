//! `rlap produce`: a real data set's training split, corrupted with a seeded corruption, into a
//! topic as `LabeledSample` messages, the hidden truth in the `rlap-truth-corrupted` header
//! (read only by `evaluate-verdicts` and the demo), optionally rate-limited and with
//! malformed messages mixed in.

use super::*;

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

pub(super) fn malformed(kind: usize, id: &str, features: &[f32], label: u32) -> Vec<u8> {
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
