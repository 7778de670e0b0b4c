//! The streaming daemon against a real Apache Kafka broker (KRaft, one node) and real MNIST.
//!
//! The broker is `RLAP_KAFKA_BROKERS` when set (CI starts one with `scripts/kafka.sh`);
//! otherwise the test starts its own with `scripts/kafka.sh start` on a free port from 39292
//! (Java 17+ and Maven, or the jars already in `.cache/kafka`) and stops it at the end.
//! Topic and group names are unique per run, so a shared broker is fine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rlap::data::{default_data_dir, DatasetSpec};
use rlap::drivers::topics::{self, ProduceArgs};
use rlap::metrics::DaemonMetrics;
use rlap::progress::Progress;
use rlap::stream::config::DaemonConfig;
use rlap::stream::daemon;
use rlap::stream::schema::{self, ModelPublished};

mod common;
use common::{kafka_broker, partitions, reader};

/// One test at a time: each may start its own broker on the first free port pair, and two
/// starting at once would pick the same one.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every `ModelPublished` event on `topic`, from the beginning to the current end.
fn model_events(brokers: &str, topic: &str) -> Vec<ModelPublished> {
    let c = reader(brokers, "rlap-test-reader");
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for p in partitions(&c, topic) {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        left += hi - lo;
        tpl.add_partition_offset(topic, p, Offset::Offset(lo))
            .unwrap();
    }
    let mut out = vec![];
    if left == 0 {
        return out;
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while left > 0 && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            left -= 1;
            out.push(ModelPublished::decode(m.payload().unwrap_or_default()).unwrap());
        }
    }
    out
}

/// 5,000 MNIST samples (40 % symmetric label noise, every 500th message malformed) into a
/// 3-partition topic that `produce` creates; the daemon creates its output topics through the
/// admin API, bootstraps version 1 from the stream and verdicts every sample exactly once;
/// the malformed messages are dead-lettered; after a graceful stop the group's committed
/// offsets are the input's end; `evaluate_verdicts` (which reads the input's hidden truth
/// headers) finds nothing missing or duplicated and a verdict F1 well above chance; version 1
/// is announced on `rlap.models`.
#[test]
fn real_broker_every_sample_verdicted_once_with_dead_letters_and_announcement() {
    let _serial = serial();
    rlap::cpu::configure_threads();
    let t0 = Instant::now();
    let (brokers, _broker) = kafka_broker(39292..39392);
    let dir = tempfile::tempdir().unwrap();
    let run = format!(
        "kafka-e2e-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );

    let mut cfg = DaemonConfig::default();
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.group_id = format!("{run}-group");
    cfg.kafka.input_topic = format!("{run}.samples");
    cfg.kafka.create_topics = true;
    cfg.kafka.topic_partitions = 3;
    cfg.kafka.commit_interval_ms = 500;
    cfg.model.store = dir.path().join("models");
    cfg.bootstrap.samples = 2000;
    cfg.bootstrap.epochs = 3;
    cfg.mixture.warmup_samples = 1000;
    cfg.trigger.window = 1000;
    cfg.trigger.min_samples = 500;
    cfg.cycle.enabled = false;
    cfg.state.dir = dir.path().join("state");
    cfg.api.enabled = false;
    cfg.api.public_url = "http://rlap.example:8080/".into();
    let problems = cfg.validate();
    assert!(problems.is_empty(), "{problems:?}");
    let k = cfg.kafka.clone();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (samples, malformed_every) = (5000, 500);
    let report = rt
        .block_on(topics::produce(
            &ProduceArgs {
                brokers: brokers.clone(),
                topic: k.input_topic.clone(),
                dataset: DatasetSpec::Mnist,
                data_dir: default_data_dir(),
                corruption: "label-symmetric:0.4".parse().unwrap(),
                seed: 1,
                train_size: None,
                rate: 0,
                limit: samples,
                skip: 0,
                partitions: 3,
                create_topic: true,
                malformed_every,
                json: false,
                throttle: None,
            },
            &Progress::hidden(),
        ))
        .unwrap();
    eprintln!(
        "produced {} samples ({} corrupted) + {} malformed into {} in {:.1} s",
        report.samples, report.corrupted, report.malformed, k.input_topic, report.seconds
    );
    assert_eq!(report.malformed, (samples / malformed_every) as u64);

    let metrics = DaemonMetrics::new();
    let status = Arc::new(Mutex::new(None));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (_control, control_rx) = tokio::sync::mpsc::channel(1);
    let t_daemon = Instant::now();
    let task = rt.spawn(daemon::run(
        Arc::new(cfg.clone().check().unwrap()),
        metrics.clone(),
        stop_rx,
        status.clone(),
        control_rx,
    ));
    let done = || {
        let v = metrics.verdicts.with_label_values(&["clean"]).get()
            + metrics.verdicts.with_label_values(&["noisy"]).get();
        let d: u64 = schema::INVALID_REASONS
            .iter()
            .map(|r| metrics.invalid_samples.with_label_values(&[r]).get())
            .sum();
        (v, d)
    };
    loop {
        let (v, d) = done();
        if v >= report.samples && d >= report.malformed {
            break;
        }
        assert!(
            !task.is_finished(),
            "the daemon stopped early ({v} verdicts)"
        );
        assert!(
            t_daemon.elapsed() < Duration::from_secs(180),
            "after 180 s: {v}/{} verdicts, {d}/{} dead letters, consumed {}, status {:?}",
            report.samples,
            report.malformed,
            metrics.samples_consumed.get(),
            status
                .lock()
                .unwrap()
                .as_ref()
                .map(|s: &rlap::stream::engine::EngineStatus| (s.phase.clone(), s.model_version))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "all verdicts and dead letters acknowledged {:.1} s after the daemon started",
        t_daemon.elapsed().as_secs_f64()
    );
    stop.send(true).unwrap();
    let summary = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), task).await })
        .expect("the daemon stops within 120 s")
        .unwrap()
        .unwrap();
    eprintln!(
        "daemon: consumed {} verdicts {} noisy {} dead letters {} model v{}",
        summary.consumed,
        summary.verdicts,
        summary.noisy,
        summary.dead_letters,
        summary.model_version
    );
    assert_eq!(summary.consumed, report.samples + report.malformed);
    assert_eq!(summary.verdicts, report.samples);
    assert_eq!(summary.dead_letters, report.malformed);
    assert_eq!(summary.model_version, 1);

    // The daemon created its output topics with kafka.topic_partitions partitions.
    let c = reader(&brokers, &k.group_id);
    for t in [k.input_topic.clone(), k.verdicts(), k.dlq()] {
        assert_eq!(partitions(&c, &t).len(), 3, "partitions of {t}");
    }
    // After a graceful stop everything consumed is committed: the next start reads nothing
    // twice.
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&c, &k.input_topic) {
        tpl.add_partition(&k.input_topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let mut total_committed = 0;
    for e in committed.elements() {
        let (_, hi) = c
            .fetch_watermarks(&k.input_topic, e.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            e.offset(),
            Offset::Offset(hi),
            "committed offset of partition {}",
            e.partition()
        );
        total_committed += hi;
    }
    eprintln!("committed offsets at the end of all 3 partitions ({total_committed} messages)");

    let r = topics::evaluate_verdicts(
        &brokers,
        &k.input_topic,
        &k.verdicts(),
        Some(&k.dlq()),
        cfg.bootstrap.samples,
        &[],
    )
    .unwrap();
    eprint!("{}", r.text());
    assert_eq!(r.input_samples, report.samples);
    assert_eq!(r.input_without_truth, report.malformed);
    assert_eq!(r.missing, 0);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.verdicts, report.samples);
    assert_eq!(r.dead_letters, report.malformed);
    assert_eq!(r.by_model_version, vec![(1, report.samples)]);
    assert!(
        r.f1 >= 0.80,
        "verdict F1 {:.4} (precision {:.4}, recall {:.4})",
        r.f1,
        r.precision,
        r.recall
    );

    let store = std::path::absolute(&cfg.model.store).unwrap();
    let events = model_events(&brokers, &k.model_events_topic);
    let ours: Vec<&ModelPublished> = events
        .iter()
        .filter(|e| {
            e.location
                .starts_with(&format!("file://{}", store.display()))
        })
        .collect();
    eprintln!(
        "{} ModelPublished event(s) on {}, {} from this run: {:?}",
        events.len(),
        k.model_events_topic,
        ours.len(),
        ours.iter()
            .map(|e| (e.version, e.parent_version, e.sha256.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(ours.len(), 1, "one announcement (the bootstrap's)");
    let v1 = ours[0];
    assert_eq!((v1.model_name.as_str(), v1.version), ("mnist", 1));
    assert_eq!(v1.parent_version, 0);
    assert_eq!(v1.sha256.len(), 64, "hex sha256 of model.onnx");
    assert_eq!(
        v1.model_url, "http://rlap.example:8080/v1/models/mnist/versions/1/model.onnx",
        "the download URL from api.public_url"
    );
    assert!(store.join("mnist/1/model.onnx").is_file());
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// Scale-out: two replicas in one consumer group on a 4-partition topic share one model
/// store; one is stopped mid-stream, samples keep arriving, and it restarts (a rebalance each
/// way). Every sample gets a verdict; exactly one replica leads (owns partition 0) at the end;
/// one first model is trained and published (by the leader: before, both replicas
/// bootstrapped and published versions 1 and 2), and the other replica scores with it.
#[test]
fn real_broker_two_replicas_share_the_stream_and_one_model() {
    let _serial = serial();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rdkafka=warn")
        .with_test_writer()
        .try_init();
    rlap::cpu::configure_threads();
    let t0 = Instant::now();
    let (brokers, _broker) = kafka_broker(39292..39392);
    let dir = tempfile::tempdir().unwrap();
    let run = format!(
        "kafka-scale-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let mut base = DaemonConfig::default();
    base.kafka.brokers = brokers.clone();
    base.kafka.group_id = format!("{run}-group");
    base.kafka.input_topic = format!("{run}.samples");
    base.kafka.create_topics = true;
    base.kafka.topic_partitions = 4;
    base.kafka.commit_interval_ms = 500;
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1000"),
    ] {
        base.kafka.consumer_properties.insert(k.into(), v.into());
    }
    base.model.store = dir.path().join("models");
    base.bootstrap.samples = 1500;
    base.bootstrap.epochs = 2;
    base.mixture.warmup_samples = 500;
    base.trigger.window = 1000;
    base.trigger.min_samples = 500;
    base.cycle.enabled = false;
    base.api.enabled = false;
    let replica = |name: &str| {
        let mut c = base.clone();
        c.state.dir = dir.path().join(name);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        c
    };
    let (cfg_a, cfg_b) = (replica("state-a"), replica("state-b"));
    let k = base.kafka.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // 6,000 samples now, 4,000 more while replica B is down.
    let (first, second) = (6000, 4000);
    let samples = first + second;
    let produce = |skip: usize, limit: usize| {
        rt.block_on(topics::produce(
            &ProduceArgs {
                brokers: brokers.clone(),
                topic: k.input_topic.clone(),
                dataset: DatasetSpec::Mnist,
                data_dir: default_data_dir(),
                corruption: "label-symmetric:0.3".parse().unwrap(),
                seed: 2,
                train_size: None,
                rate: 0,
                limit,
                skip,
                partitions: 4,
                create_topic: true,
                malformed_every: 0,
                json: false,
                throttle: None,
            },
            &Progress::hidden(),
        ))
        .unwrap()
    };
    let report = produce(0, first);

    struct Replica {
        metrics: DaemonMetrics,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<daemon::DaemonSummary, daemon::DaemonError>>,
    }
    let start = |cfg: &DaemonConfig| {
        let metrics = DaemonMetrics::new();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (_control, control_rx) = tokio::sync::mpsc::channel(1);
        let task = rt.spawn(daemon::run(
            Arc::new(cfg.clone().check().unwrap()),
            metrics.clone(),
            stop_rx,
            Arc::new(Mutex::new(None)),
            control_rx,
        ));
        Replica {
            metrics,
            stop,
            task,
        }
    };
    let verdicts = |r: &Replica| {
        r.metrics.verdicts.with_label_values(&["clean"]).get()
            + r.metrics.verdicts.with_label_values(&["noisy"]).get()
    };
    let stop = |r: Replica| {
        r.stop.send(true).unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), r.task).await })
            .expect("a replica stops within 60 s")
            .unwrap()
            .unwrap()
    };
    let a = start(&cfg_a);
    // B joins a second later: A first owns every partition (and leads), then a rebalance
    // splits them while the first model is collected or trained.
    std::thread::sleep(Duration::from_secs(1));
    let b = start(&cfg_b);
    // Mid-stream: the first 6,000 samples are scored (by whichever replica owned them when;
    // on a loaded machine A may score them all before B joins), then B stops and more arrive.
    let t = Instant::now();
    while verdicts(&a) + verdicts(&b) < first as u64 {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the first samples were never scored"
        );
        assert!(!a.task.is_finished() && !b.task.is_finished());
        std::thread::sleep(Duration::from_millis(100));
    }
    let b_first = stop(b);
    eprintln!(
        "B stopped after {} verdicts (model v{}); 4,000 more samples, then B restarts",
        b_first.verdicts, b_first.model_version
    );
    let more = produce(first, second);
    let b = start(&cfg_b);
    // Until every sample has a verdict (counting distinct samples on the verdict topic: a
    // rebalance re-delivers what a replica still held, so counters include duplicates).
    let t = Instant::now();
    loop {
        let r = topics::evaluate_verdicts(&brokers, &k.input_topic, &k.verdicts(), None, 0, &[])
            .unwrap();
        if r.input_samples == samples as u64 && r.missing == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "{} of {samples} samples still without a verdict",
            r.missing
        );
        assert!(!a.task.is_finished() && !b.task.is_finished());
        std::thread::sleep(Duration::from_secs(1));
    }
    // Let leadership settle after the last rebalance (housekeeping runs every 0.5 s).
    std::thread::sleep(Duration::from_secs(2));
    let leaders = [a.metrics.cycle_leader.get(), b.metrics.cycle_leader.get()];
    let versions = [a.metrics.model_version.get(), b.metrics.model_version.get()];
    let (sa, sb) = (stop(a), stop(b));
    eprintln!(
        "A: {} verdicts v{}; B: {} + {} verdicts v{}; leaders {leaders:?}",
        sa.verdicts, sa.model_version, b_first.verdicts, sb.verdicts, sb.model_version
    );
    assert_eq!(
        leaders.iter().sum::<i64>(),
        1,
        "exactly one leader: {leaders:?}"
    );
    let store = rlap::store::ModelStore::open(&base.model.store, 5).unwrap();
    assert_eq!(
        store.versions(&base.model.name).unwrap(),
        vec![1],
        "one first model for the whole group"
    );
    assert_eq!(versions, [1, 1], "both replicas score with version 1");
    let r =
        topics::evaluate_verdicts(&brokers, &k.input_topic, &k.verdicts(), None, 0, &[]).unwrap();
    eprint!("{}", r.text());
    assert_eq!(r.input_samples, report.samples + more.samples);
    assert_eq!(r.missing, 0, "a sample lost its verdict");
    // At least once: samples a replica held (bootstrap, warm-up, queues) when its partitions
    // were revoked are verdicted again by their new owner. Never more than one extra verdict
    // per rebalance for a sample; three rebalances here.
    assert!(
        r.duplicates <= 3 * samples as u64 / 2,
        "{} duplicates",
        r.duplicates
    );
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}
