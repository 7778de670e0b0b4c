//! End to end with real parts: a real Prometheus server (Debian's 2.42, fetched by
//! `scripts/setup-prometheus.sh`) scrapes a running `rlap serve` (child process) on loopback
//! while noisy MNIST samples flow through a real Apache Kafka broker. The noise-rate alert of
//! `deploy/prometheus/alerts.yml` (its `for:` shortened to 5 s in a copy, the expression
//! unchanged) must reach the firing state, read through Prometheus' HTTP API, and the scraped
//! verdict counters must agree with the verdict topic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rlap::corruption::Corruption;
use rlap::data::{default_data_dir, DatasetSpec};
use rlap::drivers::topics::{self, ProduceArgs};
use rlap::progress::Progress;
use serde_json::Value;

mod common;
use common::kafka_broker;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(url: &str) -> Option<String> {
    ureq::get(url).call().ok()?.body_mut().read_to_string().ok()
}

fn prometheus_bin() -> PathBuf {
    let bin = Path::new(ROOT).join(".cache/prometheus/usr/bin/prometheus");
    if !bin.exists() {
        let st = Command::new(Path::new(ROOT).join("scripts/setup-prometheus.sh"))
            .status()
            .expect("scripts/setup-prometheus.sh");
        assert!(st.success(), "setup-prometheus.sh failed");
    }
    bin
}

fn query(prom: &str, q: &str) -> f64 {
    let url = format!(
        "{prom}/api/v1/query?query={}",
        q.replace(' ', "%20")
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
    );
    let v: Value = serde_json::from_str(&get(&url).unwrap_or_default()).unwrap_or(Value::Null);
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn prometheus_scrapes_the_daemon_and_the_noise_alert_fires() {
    let (brokers, _broker) = kafka_broker(39492..39592);
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let topic = format!("prom-e2e-{}", std::process::id());

    // The daemon, as ops would run it.
    let cfg = format!(
        "[kafka]\nbrokers = \"{}\"\ninput_topic = \"{topic}\"\ngroup_id = \"{topic}-g\"\n\
         [model]\nstore = \"{}\"\n[state]\ndir = \"{}\"\n[bootstrap]\nsamples = 2000\nepochs = 2\n\
         [mixture]\nwarmup_samples = 1000\n[trigger]\nwindow = 1000\nmin_samples = 500\n\
         [cycle]\nenabled = false\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
        brokers,
        dir.path().join("models").display(),
        dir.path().join("state").display()
    );
    let cfg_path = dir.path().join("rlap.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let daemon_log = std::fs::File::create(dir.path().join("rlap.log")).unwrap();
    let _daemon = Proc(
        Command::new(env!("CARGO_BIN_EXE_rlap"))
            .args(["serve", "--config"])
            .arg(&cfg_path)
            .env("RLAP_DATA_DIR", default_data_dir())
            .stdout(Stdio::null())
            .stderr(daemon_log)
            .spawn()
            .unwrap(),
    );

    // Prometheus with rlap's alert rules (only `for:` shortened) scraping every second.
    let rules = std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/alerts.yml"))
        .expect("deploy/prometheus/alerts.yml");
    let rules: String = rules
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}for: 5s\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: rlap\n    static_configs:\n      - targets: ['127.0.0.1:{api}']\n",
            dir.path().join("alerts.yml").display()
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Proc(
        Command::new(prometheus_bin())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(prom_log)
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://127.0.0.1:{prom_port}");

    // Noisy data through the real broker: 40 % symmetric label noise, some malformed.
    let produced = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(topics::produce(
            &ProduceArgs {
                brokers: brokers.clone(),
                topic: topic.clone(),
                dataset: DatasetSpec::Mnist,
                data_dir: default_data_dir(),
                corruption: Corruption::LabelSymmetric { rate: 0.4 },
                seed: 3,
                train_size: None,
                rate: 1000,
                limit: 8000,
                skip: 0,
                partitions: 3,
                create_topic: true,
                malformed_every: 400,
                json: false,
                throttle: None,
            },
            &Progress::hidden(),
        ))
        .unwrap();
    eprintln!(
        "produced {} samples + {} malformed",
        produced.samples, produced.malformed
    );

    // Every message gets its verdict or dead letter.
    let metrics_url = format!("http://127.0.0.1:{api}/metrics");
    let t = Instant::now();
    let (verdicts, noisy) = loop {
        let text = get(&metrics_url).unwrap_or_default();
        let clean = metric(&text, "rlap_verdicts_total{outcome=\"clean\"}");
        let noisy = metric(&text, "rlap_verdicts_total{outcome=\"noisy\"}");
        if clean + noisy >= produced.samples as f64 {
            break (clean + noisy, noisy);
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "only {} verdicts after 240 s; daemon log: {}",
            clean + noisy,
            std::fs::read_to_string(dir.path().join("rlap.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };

    // The alert fires (read through Prometheus' API).
    let t = Instant::now();
    loop {
        let alerts: Value =
            serde_json::from_str(&get(&format!("{prom}/api/v1/alerts")).unwrap_or_default())
                .unwrap_or(Value::Null);
        let firing: Vec<String> = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string())
            .collect();
        if firing.iter().any(|n| n == "NoiseRateHigh") {
            eprintln!("firing: {firing:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "NoiseRateHigh never fired; alerts: {alerts}; noisy fraction scraped: {}",
            query(&prom, "rlap_noisy_fraction{estimate=\"window\"}")
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Scraped counters agree with the verdict topic.
    std::thread::sleep(Duration::from_secs(2));
    let scraped = query(&prom, "sum(rlap_verdicts_total)");
    let scraped_noisy = query(&prom, "sum(rlap_verdicts_total{outcome=\"noisy\"})");
    let scraped_dlq = query(&prom, "sum(rlap_invalid_samples_total)");
    let report = topics::evaluate_verdicts(
        &brokers,
        &topic,
        &format!("{topic}.verdicts"),
        Some(&format!("{topic}.dlq")),
        0,
        &[],
    )
    .unwrap();
    let topic_noisy = (report.flagged_fraction * report.unique_verdicts as f64).round();
    eprintln!(
        "scraped verdicts {scraped} (noisy {scraped_noisy}, dead letters {scraped_dlq}); topic: {} verdicts, {} noisy, {} dead letters; F1 {:.3}",
        report.verdicts, topic_noisy, report.dead_letters, report.f1
    );
    assert_eq!(scraped, verdicts);
    assert_eq!(scraped as u64, report.verdicts);
    assert_eq!(scraped_noisy, noisy);
    assert_eq!(scraped_noisy, topic_noisy);
    assert_eq!(scraped_dlq as u64, report.dead_letters);
    assert_eq!(report.dead_letters, produced.malformed);
    assert_eq!(report.missing, 0);
}
