//! `rlap bench-stream`: sustained throughput, sample→verdict latency and resident memory of
//! the daemon against a real broker.
//!
//! This module owns the benchmark's protocol. The daemon runs as a child process
//! (`rlap serve`) so its resident memory is its own; figures come from its `/metrics` and
//! from a consumer of the verdict topic in this process:
//! 1. **Throughput**: `throughput_samples` MNIST samples are put on a fresh topic first; the
//!    daemon (store pre-seeded by a bootstrap on the first 10k) then drains it. Sustained
//!    throughput = verdicts/s between 20 % and 100 % of the verdicts (excludes start-up and
//!    group join), and the median of 1-second rates.
//! 2. **Latency and memory**: a second topic is fed at `latency_rate_fraction` × the measured
//!    throughput (or at a fixed `soak_rate`), each sample stamped with its event time: first
//!    `warmup_secs` of warm-up (at least [`MIN_WARMUP_SAMPLES`]), then `soak_samples` measured
//!    samples, in one unbroken stream. The consumer computes `receive time − event time` of
//!    every verdict; p50/p99/max are those of the measured samples (told apart by their
//!    position in the stream, the number in their id; the warm-up's own figures are reported
//!    beside them), and the daemon's VmRSS is sampled every 5 s over the whole soak (the RSS
//!    curve).
//!
//! Why the warm-up: the broker is a JVM started a minute earlier on the same two cores. Its
//! JIT compiler (C2) spends 45–75 % of a core for the first ~40 s of the soak's
//! produce-and-fetch load, and that, not the daemon, made the p99 of a cold broker (measured:
//! p99 394 ms against 110 and 157 ms for the next two soaks on the same, now warm, broker). A
//! production broker has been running for days.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::corruption::Corruption;
use crate::data::DatasetSpec;
use crate::drivers::topics::{self, ProduceArgs, ToolError};
use crate::progress::Progress;

/// Fewest warm-up samples of the soak, whatever `warmup_secs` says: the daemon holds the
/// verdicts of its first `mixture.warmup_samples` (5,000 by default) until its mixture is
/// fitted, a start-up delay that is not the steady state being measured.
pub const MIN_WARMUP_SAMPLES: u64 = 10_000;

/// Settings of the benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct StreamBenchArgs {
    /// Bootstrap servers of a real broker (e.g. from scripts/kafka.sh start).
    #[arg(long)]
    pub brokers: String,
    /// The `rlap` binary that runs the daemon (the running one, from the command line).
    #[arg(skip)]
    pub exe: PathBuf,
    /// Working folder: store, state, configs, logs (emptied first).
    #[arg(long, default_value_os_t = default_work_dir())]
    pub work_dir: PathBuf,
    /// Folder of the named data sets ($RLAP_DATA_DIR or ./data).
    #[arg(long, default_value_os_t = crate::data::default_data_dir())]
    pub data_dir: PathBuf,
    /// Samples of the throughput phase (pre-filled topic, drained as fast as possible).
    #[arg(long, default_value_t = 200_000)]
    pub throughput_samples: usize,
    /// Measured samples of the latency/memory soak (after its warm-up).
    #[arg(long, default_value_t = 1_000_000)]
    pub soak_samples: usize,
    /// The soak is fed at this fraction of the measured throughput, in (0, 1].
    #[arg(long = "rate-fraction", default_value_t = 0.5)]
    pub latency_rate_fraction: f64,
    /// Feed the soak at this many messages/s instead of the fraction (the same load for
    /// every run of an A/B comparison, e.g. 5000 for half the 10,000/s throughput target);
    /// 0 = use the fraction.
    #[arg(long)]
    pub soak_rate: Option<u64>,
    /// Seconds of soak load before the measured samples (at least 10,000 samples): a freshly
    /// started broker's JIT compiler competes for the cores at first (the warm-up's figures are
    /// reported separately).
    #[arg(long, default_value_t = 60)]
    pub warmup_secs: u64,
    /// Run model cycles during the soak (they compete for the 2 cores).
    #[arg(long)]
    pub cycles: bool,
    /// Port of the daemon's HTTP API (its /metrics is read).
    #[arg(long, default_value_t = 38181)]
    pub api_port: u16,
}

impl StreamBenchArgs {
    /// Problems with the options, one line.
    ///
    /// # Errors
    /// [`ToolError::Invalid`] naming the option.
    pub fn check(&self) -> Result<(), ToolError> {
        if !(self.latency_rate_fraction > 0.0 && self.latency_rate_fraction <= 1.0) {
            return Err(ToolError::Invalid(
                "--rate-fraction must lie in (0, 1]".into(),
            ));
        }
        if self.throughput_samples < 20_000 || self.soak_samples == 0 {
            return Err(ToolError::Invalid("--throughput-samples must be >= 20000 (the first 10000 bootstrap the model) and --soak-samples > 0".into()));
        }
        Ok(())
    }
}

/// One RSS sample.
#[derive(Clone, Debug, Serialize)]
pub struct RssPoint {
    /// Seconds since the soak started.
    pub seconds: f64,
    /// Verdicts acknowledged so far (daemon metric).
    pub verdicts: u64,
    /// Resident set size, MiB.
    pub rss_mib: f64,
}

/// The benchmark's figures.
#[derive(Clone, Debug, Serialize)]
pub struct StreamBenchReport {
    /// Samples drained in the throughput phase.
    pub throughput_samples: usize,
    /// Verdicts/s between 20 % and 100 % of the verdicts.
    pub sustained_samples_per_s: f64,
    /// Median of the 1-second verdict rates in the same span.
    pub median_1s_samples_per_s: f64,
    /// The soak's feed rate, messages/s.
    pub soak_rate: u64,
    /// Measured samples of the soak (after the warm-up).
    pub soak_samples: usize,
    /// Seconds of warm-up load before them (as asked).
    pub warmup_secs: u64,
    /// Samples of the warm-up (`soak_rate × warmup_secs`, at least [`MIN_WARMUP_SAMPLES`]).
    pub warmup_samples: u64,
    /// Verdicts whose latency was measured (of the samples after the warm-up).
    pub latency_samples: usize,
    /// Sample→verdict latency percentiles, milliseconds.
    pub latency_p50_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_max_ms: f64,
    /// The warm-up's verdicts (the first `warmup_samples` of the soak): count, p50, p99 and
    /// max in ms. With a freshly started broker these carry its JIT warm-up.
    pub warmup_latency: (usize, f64, f64, f64),
    /// The RSS curve of the daemon.
    pub rss: Vec<RssPoint>,
    /// Largest RSS seen, MiB.
    pub rss_max_mib: f64,
    /// RSS at 25 % of the soak's verdicts (warm-up included: with the defaults that point
    /// lies in the warm-up) and at the end, MiB (flatness).
    pub rss_quarter_end_mib: (f64, f64),
    /// Cycles run during the soak, by outcome.
    pub cycles: BTreeMap<String, u64>,
    /// The daemon's own receipt→acknowledged latency over the whole soak, warm-up included
    /// (its `rlap_verdict_latency_seconds` histogram, bucket upper bounds), p50 and p99 in ms:
    /// beside the end-to-end figures it tells broker time from daemon time.
    pub daemon_latency_p50_p99_ms: (f64, f64),
    /// The end-to-end latency split at the daemon's scoring time (the verdict's
    /// `scored_at_ms`), p50 and p99 in ms: event time → scored covers the producer, the
    /// broker, the consumer's fetch, batching and scoring; scored → delivered covers the
    /// sink, the broker's acknowledgement and the bench consumer's fetch. Both clocks are
    /// this machine's.
    pub event_to_scored_p50_p99_ms: (f64, f64),
    /// See `event_to_scored_p50_p99_ms`.
    pub scored_to_delivered_p50_p99_ms: (f64, f64),
    /// The seconds of the soak (by event time) with the largest worst latency: where a
    /// stall sits in time and in which span.
    pub worst_seconds: Vec<WorstSecond>,
}

/// One verdict's timestamps (Unix ms) as the bench consumer saw it.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// The sample's position in the soak's stream (the number ending its id).
    seq: u64,
    event_ms: i64,
    scored_ms: i64,
    delivered_ms: i64,
}

/// The slowest verdict of one second of the soak.
#[derive(Clone, Debug, Serialize)]
pub struct WorstSecond {
    /// Seconds since the soak started (by event time).
    pub second: i64,
    /// Verdicts read for measured samples produced in that second (a redelivered verdict
    /// counts again).
    pub verdicts: usize,
    /// The slowest one's event → delivered, ms.
    pub max_ms: i64,
    /// Its event → scored, ms.
    pub to_scored_ms: i64,
    /// Its scored → delivered, ms.
    pub to_delivered_ms: i64,
}

/// The `k` seconds (by event time since `epoch_ms`) whose slowest verdict was slowest.
fn worst_seconds(timings: &[Timing], epoch_ms: i64, k: usize) -> Vec<WorstSecond> {
    let mut by_second: BTreeMap<i64, (usize, Timing)> = BTreeMap::new();
    for t in timings {
        let e = by_second
            .entry((t.event_ms - epoch_ms).div_euclid(1000))
            .or_insert((0, *t));
        e.0 += 1;
        if t.delivered_ms - t.event_ms > e.1.delivered_ms - e.1.event_ms {
            e.1 = *t;
        }
    }
    let mut v: Vec<WorstSecond> = by_second
        .into_iter()
        .map(|(second, (verdicts, t))| WorstSecond {
            second,
            verdicts,
            max_ms: t.delivered_ms - t.event_ms,
            to_scored_ms: t.scored_ms - t.event_ms,
            to_delivered_ms: t.delivered_ms - t.scored_ms,
        })
        .collect();
    v.sort_by_key(|w| std::cmp::Reverse(w.max_ms));
    v.truncate(k);
    v
}

/// Split verdict timings by stream position: (the first `warm` samples', the rest).
fn split_warmup(timings: Vec<Timing>, warm: u64) -> (Vec<Timing>, Vec<Timing>) {
    timings.into_iter().partition(|t| t.seq < warm)
}

/// The upper bound of the bucket holding quantile `q` of histogram `name` in a Prometheus
/// text exposition (coarse: bucket bounds, not interpolated).
fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|b| b.1 >= q * total)
        .map_or(f64::NAN, |b| b.0)
}

fn err(e: impl std::fmt::Display) -> ToolError {
    ToolError::Invalid(e.to_string())
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(a: &StreamBenchArgs, topic: &str, cycles: bool) -> Result<Self, ToolError> {
        let cfg = format!(
            "[kafka]\nbrokers = \"{}\"\ninput_topic = \"{topic}\"\ngroup_id = \"{topic}-group\"\n\
             [model]\nstore = \"{}\"\n[state]\ndir = \"{}\"\n[cycle]\nenabled = {cycles}\n\
             [api]\nlisten = \"127.0.0.1:{}\"\n",
            a.brokers,
            a.work_dir.join("models").display(),
            a.work_dir.join(format!("state-{topic}")).display(),
            a.api_port
        );
        let path = a.work_dir.join(format!("{topic}.toml"));
        std::fs::write(&path, cfg).map_err(err)?;
        let log = std::fs::File::create(a.work_dir.join(format!("{topic}.log"))).map_err(err)?;
        let child = Command::new(&a.exe)
            .args(["--quiet", "serve", "--config"])
            .arg(&path)
            .env("RLAP_DATA_DIR", &a.data_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| err(format!("starting {}: {e}", a.exe.display())))?;
        Ok(Self { child })
    }

    fn stop(mut self) -> Result<(), ToolError> {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let st = self.child.wait().map_err(err)?;
        if !st.success() {
            return Err(err(format!("the daemon exited with {st}")));
        }
        Ok(())
    }

    fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

/// Sum of the samples of `name` (all label sets) in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn scrape(port: u16) -> Option<String> {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
}

fn verdicts_done(port: u16) -> Option<u64> {
    scrape(port).map(|t| {
        metric_sum(&t, "rlap_verdicts_total") + metric_sum(&t, "rlap_invalid_samples_total")
    })
}

fn produce_args(a: &StreamBenchArgs, topic: &str, limit: usize, rate: u64) -> ProduceArgs {
    ProduceArgs {
        brokers: a.brokers.clone(),
        topic: topic.into(),
        dataset: DatasetSpec::Mnist,
        data_dir: a.data_dir.clone(),
        corruption: Corruption::LabelSymmetric { rate: 0.4 },
        seed: 1,
        train_size: None,
        rate,
        limit,
        skip: 0,
        partitions: 3,
        create_topic: true,
        malformed_every: 0,
        json: false,
        throttle: None,
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Run the benchmark (minutes). Needs a real broker and the MNIST files.
///
/// # Errors
/// [`ToolError`] when the broker, the data or the daemon fails.
pub async fn run(a: &StreamBenchArgs, progress: &Progress) -> Result<StreamBenchReport, ToolError> {
    a.check()?;
    if a.work_dir.exists() {
        std::fs::remove_dir_all(&a.work_dir)
            .map_err(|e| ToolError::Invalid(format!("emptying {}: {e}", a.work_dir.display())))?;
    }
    std::fs::create_dir_all(&a.work_dir).map_err(err)?;
    let tag = std::process::id();
    let port = a.api_port;

    // Phase 1: pre-filled topic, drained as fast as possible (cycles off).
    let t1 = format!("bench-throughput-{tag}");
    let n1 = a.throughput_samples;
    tracing::info!(samples = n1, topic = %t1, "phase 1: filling the topic");
    topics::produce(&produce_args(a, &t1, n1, 0), progress).await?;
    let d = Daemon::start(a, &t1, false)?;
    let mut rates: Vec<(f64, u64)> = vec![];
    let start = Instant::now();
    let bar = progress.bar(n1 as u64, "throughput");
    // Polled every 100 ms: the sustained rate spans a few seconds, and at 1-s polls the last
    // poll's lag alone moved it by ~15 % (200,000 samples at ~25,000/s).
    const POLL: Duration = Duration::from_millis(100);
    let polls_per_second = (1000 / POLL.as_millis()).max(1) as usize;
    loop {
        tokio::time::sleep(POLL).await;
        let done = verdicts_done(port).unwrap_or(0);
        rates.push((start.elapsed().as_secs_f64(), done));
        bar.set_position(done);
        if done >= n1 as u64 {
            break;
        }
        if start.elapsed() > Duration::from_secs(1800) {
            return Err(err("phase 1 did not finish in 30 min"));
        }
    }
    bar.finish_and_clear();
    d.stop()?;
    let from = rates
        .iter()
        .find(|r| r.1 as f64 >= 0.2 * n1 as f64)
        .copied()
        .unwrap_or((0.0, 0));
    let to = *rates.last().expect("at least one sample");
    let sustained = (to.1 - from.1) as f64 / (to.0 - from.0).max(1e-9);
    let mut per_s: Vec<f64> = rates
        .iter()
        .step_by(polls_per_second)
        .copied()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].1 as f64 >= 0.2 * n1 as f64)
        .map(|w| (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0))
        .collect();
    per_s.sort_by(f64::total_cmp);
    let median_1s = percentile(&per_s, 0.5);
    tracing::info!(sustained, median_1s, "phase 1 done");

    // Phase 2: fed at a fraction of that rate; latency and RSS.
    let t2 = format!("bench-soak-{tag}");
    let rate = a
        .soak_rate
        .filter(|r| *r > 0)
        .unwrap_or((sustained * a.latency_rate_fraction).max(1.0) as u64);
    let n2 = a.soak_samples;
    let warm = (rate * a.warmup_secs).max(MIN_WARMUP_SAMPLES);
    let fed = n2 + warm as usize;
    topics::create_topic(&a.brokers, &t2, 3, &[]).await?;
    topics::create_topic(&a.brokers, &format!("{t2}.verdicts"), 3, &[]).await?;
    let d = Daemon::start(a, &t2, a.cycles)?;
    // Wait until the daemon has joined the group and owns partition 0 (the store already
    // holds version 1: no bootstrap), so the latency excludes the group join.
    let ready = Instant::now();
    while !scrape(port).is_some_and(|t| t.lines().any(|l| l == "rlap_cycle_leader 1")) {
        if ready.elapsed() > Duration::from_secs(60) {
            return Err(err("the daemon did not join the group within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let brokers = a.brokers.clone();
    let vt = format!("{t2}.verdicts");
    let latency = std::thread::spawn(move || -> Result<Vec<Timing>, ToolError> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("bench-latency-{tag}"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(err)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(&vt, p, Offset::Beginning)
                .map_err(err)?;
        }
        c.assign(&tpl).map_err(err)?;
        let mut lat = Vec::with_capacity(fed);
        let mut idle = Instant::now();
        while lat.len() < fed && idle.elapsed() < Duration::from_secs(120) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                idle = Instant::now();
                if let Some(v) = m
                    .payload()
                    .and_then(|p| crate::stream::schema::decode_verdict(p, topics::is_json(&m)))
                {
                    if let (Some(t), Some(seq)) =
                        (v.event_time_ms, topics::id_position(&v.sample_id))
                    {
                        lat.push(Timing {
                            seq,
                            event_ms: t,
                            scored_ms: v.scored_at_ms,
                            delivered_ms: crate::stream::unix_ms(),
                        });
                    }
                }
            }
        }
        Ok(lat)
    });
    let soak_start = Instant::now();
    let soak_epoch_ms = crate::stream::unix_ms();
    let producer = {
        let args = produce_args(a, &t2, fed, rate);
        let p = progress.clone();
        tokio::spawn(async move { topics::produce(&args, &p).await })
    };
    let mut rss = vec![];
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let done = verdicts_done(port).unwrap_or(0);
        rss.push(RssPoint {
            seconds: soak_start.elapsed().as_secs_f64(),
            verdicts: done,
            rss_mib: d.rss_mib(),
        });
        tracing::info!(verdicts = done, rss_mib = d.rss_mib(), "soak");
        if done >= fed as u64 {
            break;
        }
        if soak_start.elapsed() > Duration::from_secs(3600) {
            return Err(err("the soak did not finish in 60 min"));
        }
    }
    producer.await.map_err(err)??;
    let metrics = scrape(port).unwrap_or_default();
    let daemon_latency = (
        1000.0 * histogram_quantile(&metrics, "rlap_verdict_latency_seconds", 0.5),
        1000.0 * histogram_quantile(&metrics, "rlap_verdict_latency_seconds", 0.99),
    );
    let mut cycles = BTreeMap::new();
    for o in ["accepted", "rejected", "failed"] {
        let line = format!("rlap_cycles_total{{outcome=\"{o}\"}}");
        let v = metrics
            .lines()
            .find(|l| l.starts_with(&line))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        cycles.insert(o.to_string(), v as u64);
    }
    d.stop()?;
    let lat = latency
        .join()
        .map_err(|_| err("latency thread panicked"))??;
    let (warmup, timings) = split_warmup(lat, warm);
    let sorted = |ts: &[Timing], f: fn(&Timing) -> i64| {
        let mut v: Vec<f64> = ts.iter().map(|t| f(t) as f64).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let steady = sorted(&timings, |t| t.delivered_ms - t.event_ms);
    let to_scored = sorted(&timings, |t| t.scored_ms - t.event_ms);
    let to_delivered = sorted(&timings, |t| t.delivered_ms - t.scored_ms);
    let cold = sorted(&warmup, |t| t.delivered_ms - t.event_ms);
    let quarter = rss
        .iter()
        .find(|p| p.verdicts as f64 >= 0.25 * fed as f64)
        .map_or(0.0, |p| p.rss_mib);
    Ok(StreamBenchReport {
        throughput_samples: n1,
        sustained_samples_per_s: sustained,
        median_1s_samples_per_s: median_1s,
        soak_rate: rate,
        soak_samples: n2,
        warmup_secs: a.warmup_secs,
        warmup_samples: warm,
        latency_samples: steady.len(),
        latency_p50_ms: percentile(&steady, 0.5),
        latency_p99_ms: percentile(&steady, 0.99),
        latency_max_ms: steady.last().copied().unwrap_or(f64::NAN),
        warmup_latency: (
            cold.len(),
            percentile(&cold, 0.5),
            percentile(&cold, 0.99),
            cold.last().copied().unwrap_or(f64::NAN),
        ),
        event_to_scored_p50_p99_ms: (percentile(&to_scored, 0.5), percentile(&to_scored, 0.99)),
        scored_to_delivered_p50_p99_ms: (
            percentile(&to_delivered, 0.5),
            percentile(&to_delivered, 0.99),
        ),
        worst_seconds: worst_seconds(&timings, soak_epoch_ms, 5),
        rss_max_mib: rss.iter().map(|p| p.rss_mib).fold(0.0, f64::max),
        rss_quarter_end_mib: (quarter, rss.last().map_or(0.0, |p| p.rss_mib)),
        rss,
        cycles,
        daemon_latency_p50_p99_ms: daemon_latency,
    })
}

impl StreamBenchReport {
    /// The report as text.
    pub fn text(&self) -> String {
        let mut s = format!(
            "throughput: {} samples drained at {:.0} samples/s sustained (median 1-s rate {:.0})\n\
             soak: {} samples fed at {} msg/s after {} s ({} samples) of warm-up: sample->verdict latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} verdicts)\n\
             warm-up ({} verdicts; a freshly started broker's JIT compiles here): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
             daemon's own receipt->acknowledged latency (histogram bucket bounds, whole soak): p50 <= {:.0} ms, p99 <= {:.0} ms\n\
             split at scoring: event->scored p50 {:.0} ms, p99 {:.0} ms; scored->delivered p50 {:.0} ms, p99 {:.0} ms\n\
             daemon RSS: max {:.0} MiB; at 25 % {:.0} MiB, at the end {:.0} MiB | cycles {:?}\nRSS curve (s, verdicts, MiB):",
            self.throughput_samples,
            self.sustained_samples_per_s,
            self.median_1s_samples_per_s,
            self.soak_samples,
            self.soak_rate,
            self.warmup_secs,
            self.warmup_samples,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_max_ms,
            self.latency_samples,
            self.warmup_latency.0,
            self.warmup_latency.1,
            self.warmup_latency.2,
            self.warmup_latency.3,
            self.daemon_latency_p50_p99_ms.0,
            self.daemon_latency_p50_p99_ms.1,
            self.event_to_scored_p50_p99_ms.0,
            self.event_to_scored_p50_p99_ms.1,
            self.scored_to_delivered_p50_p99_ms.0,
            self.scored_to_delivered_p50_p99_ms.1,
            self.rss_max_mib,
            self.rss_quarter_end_mib.0,
            self.rss_quarter_end_mib.1,
            self.cycles
        );
        let step = (self.rss.len() / 20).max(1);
        for p in self.rss.iter().step_by(step) {
            s.push_str(&format!(
                " ({:.0}, {}, {:.0})",
                p.seconds, p.verdicts, p.rss_mib
            ));
        }
        s.push_str("\nslowest seconds (s: verdicts, max ms = to scored + to delivered):");
        for w in &self.worst_seconds {
            s.push_str(&format!(
                " ({}: {}, {} = {} + {})",
                w.second, w.verdicts, w.max_ms, w.to_scored_ms, w.to_delivered_ms
            ));
        }
        s.push('\n');
        s
    }
}

/// Default working folder of the benchmark.
pub fn default_work_dir() -> PathBuf {
    Path::new("out").join("bench-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets_of_one_name_only() {
        let t = "# HELP x\nrlap_verdicts_total{outcome=\"clean\"} 3\nrlap_verdicts_total{outcome=\"noisy\"} 4\nrlap_verdicts_totalx 9\n";
        assert_eq!(metric_sum(t, "rlap_verdicts_total"), 7);
        let h = "x_bucket{le=\"0.1\"} 50\nx_bucket{le=\"0.2\"} 98\nx_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_quantile(h, "x", 0.5), 0.1);
        assert_eq!(histogram_quantile(h, "x", 0.99), f64::INFINITY);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    }

    #[test]
    fn worst_seconds_ranks_seconds_by_their_slowest_verdict() {
        let t = |event_ms, scored_ms, delivered_ms| Timing {
            seq: 0,
            event_ms,
            scored_ms,
            delivered_ms,
        };
        assert!(worst_seconds(&[], 0, 3).is_empty());
        let timings = [
            t(10_100, 10_130, 10_140), // second 0: 40 ms
            t(10_900, 11_800, 11_810), // second 0: 910 ms, the slowest of all
            t(11_500, 11_520, 11_700), // second 1: 200 ms, mostly after scoring
            t(9_500, 9_510, 9_520),    // before the epoch: second -1, 20 ms
        ];
        let w = worst_seconds(&timings, 10_000, 10);
        assert_eq!(w.len(), 3, "k above the number of seconds returns them all");
        assert_eq!((w[0].second, w[0].verdicts, w[0].max_ms), (0, 2, 910));
        assert_eq!((w[0].to_scored_ms, w[0].to_delivered_ms), (900, 10));
        assert_eq!(
            (w[1].second, w[1].max_ms, w[1].to_delivered_ms),
            (1, 200, 180)
        );
        assert_eq!((w[2].second, w[2].max_ms), (-1, 20));
        assert_eq!(worst_seconds(&timings, 10_000, 1).len(), 1);
    }

    #[test]
    fn split_warmup_goes_by_stream_position_not_arrival_order() {
        let t = |seq| Timing {
            seq,
            event_ms: 1_000 + seq as i64,
            scored_ms: 1_005 + seq as i64,
            delivered_ms: 1_009 + seq as i64,
        };
        // Arrival order mixes partitions: a late warm-up verdict after a measured one.
        let (warm, measured) = split_warmup(vec![t(0), t(10_002), t(9_999), t(10_000)], 10_000);
        assert_eq!(warm.iter().map(|t| t.seq).collect::<Vec<_>>(), [0, 9_999]);
        assert_eq!(
            measured.iter().map(|t| t.seq).collect::<Vec<_>>(),
            [10_002, 10_000]
        );
        assert_eq!(topics::id_position("mnist-10000"), Some(10_000));
        assert_eq!(topics::id_position("label-symmetric_0.4-mnist-7"), Some(7));
        assert_eq!(topics::id_position("no-number"), None);
    }
}
