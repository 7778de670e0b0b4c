//! `examples/python` end to end against a real Apache Kafka broker: `make_tabular.py` writes
//! a 4,000-row table (D = 16, K = 3, 20 % of the labels flipped), `producer.py` streams it with
//! confluent-kafka as proto3 JSON, the `rlap` binary runs as ops would run it
//! (`rlap serve --config examples/python/rlap.toml`, topics and folders overridden by
//! `RLAP__*` variables), and `consumer.py` reads the JSON verdicts and joins them back to the
//! array's rows by sample id. Every row gets exactly one verdict, the echoed labels match the
//! array's, and the noisy flags find the flipped labels.
//!
//! The broker is `RLAP_KAFKA_BROKERS` when set (CI starts one), else one this test starts with
//! `scripts/kafka.sh`. The python comes from `.cache/clients` (`make setup-clients`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

mod common;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The daemon child: SIGTERM on drop (a failed assertion must not leave it running).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn run_script(python: &Path, script: &str, args: &[&str]) -> String {
    let t = Instant::now();
    let out = Command::new(python)
        .arg(Path::new(ROOT).join("examples/python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "{script} ({:.1} s): {stdout}{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed ({})", out.status);
    stdout
}

#[test]
fn python_example_streams_a_numpy_array_and_joins_the_verdicts_back() {
    let Some(python) = common::clients::clients_python("python_example") else {
        return;
    };
    let t0 = Instant::now();
    let (brokers, _broker) = common::kafka_broker(39292..39392);
    let dir = tempfile::tempdir().unwrap();
    let run = format!(
        "py-example-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let topic = format!("{run}.samples");
    let data = dir.path().join("data.npz");
    let data_s = data.to_str().unwrap();
    let rows = 4000;
    run_script(
        &python,
        "make_tabular.py",
        &["--out", data_s, "--rows", &rows.to_string(), "--seed", "3"],
    );
    run_script(
        &python,
        "producer.py",
        &["--brokers", &brokers, "--topic", &topic, "--data", data_s],
    );

    let log = std::fs::File::create(dir.path().join("rlap.log")).unwrap();
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_rlap"))
            .args(["serve", "--config"])
            .arg(Path::new(ROOT).join("examples/python/rlap.toml"))
            .env("RLAP__KAFKA__BROKERS", &brokers)
            .env("RLAP__KAFKA__INPUT_TOPIC", &topic)
            .env("RLAP__KAFKA__GROUP_ID", format!("{run}-group"))
            .env("RLAP__MODEL__STORE", dir.path().join("models"))
            .env("RLAP__STATE__DIR", dir.path().join("state"))
            .env("RLAP__API__ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let verdicts = dir.path().join("verdicts.npz");
    let stdout = run_script(
        &python,
        "consumer.py",
        &[
            "--brokers",
            &brokers,
            "--topic",
            &format!("{topic}.verdicts"),
            "--rows",
            &rows.to_string(),
            "--out",
            verdicts.to_str().unwrap(),
            "--data",
            data_s,
            "--timeout",
            "240",
        ],
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap();
    assert_eq!(summary["verdicted"], rows, "{summary}");
    assert_eq!(summary["duplicates"], 0, "one verdict per row: {summary}");
    assert_eq!(summary["given_labels_match"], true, "{summary}");
    assert_eq!(
        summary["model_versions"],
        serde_json::json!([1]),
        "{summary}"
    );
    let (p, r) = (
        summary["precision"].as_f64().unwrap(),
        summary["recall"].as_f64().unwrap(),
    );
    assert!(
        p >= 0.9 && r >= 0.6,
        "the noisy flags should find the flipped labels (precision {p}, recall {r})"
    );
    assert!(verdicts.is_file());
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}
