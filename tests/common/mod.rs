//! Test harness shared by the integration tests that talk to Kafka: a real broker started
//! with `scripts/kafka.sh` (or the one named by `RLAP_KAFKA_BROKERS`), and plain readers of
//! topics. Each test file uses part of it.
#![allow(dead_code)]

pub mod clients;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Stops the broker a test started (also when an assertion fails).
pub struct OwnBroker {
    port: u16,
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let out = Command::new(kafka_script())
            .args(["stop", &self.port.to_string()])
            .output();
        match out {
            Ok(o) if o.status.success() => eprintln!("stopped the broker on port {}", self.port),
            Ok(o) => eprintln!(
                "scripts/kafka.sh stop {} failed: {}",
                self.port,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("scripts/kafka.sh stop {}: {e}", self.port),
        }
    }
}

/// `scripts/kafka.sh` of this checkout.
pub fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The bootstrap servers to use, and the guard of a broker this call started.
///
/// `RLAP_KAFKA_BROKERS` when set and not empty; otherwise a fresh broker from
/// `scripts/kafka.sh start` on the first free port pair (PORT for clients, PORT+1 for the
/// controller) in `ports`. Panics when none is free or the broker does not start.
pub fn kafka_broker(ports: std::ops::Range<u16>) -> (String, Option<OwnBroker>) {
    if let Ok(b) = std::env::var("RLAP_KAFKA_BROKERS") {
        if !b.trim().is_empty() {
            eprintln!("using RLAP_KAFKA_BROKERS={b}");
            return (b, None);
        }
    }
    let port = ports
        .clone()
        .step_by(2)
        .find(|&p| port_free(p) && port_free(p + 1))
        .unwrap_or_else(|| panic!("no free port pair in {ports:?}"));
    let t = Instant::now();
    let out = Command::new(kafka_script())
        .args(["start", &port.to_string()])
        .output()
        .expect("running scripts/kafka.sh");
    let guard = OwnBroker { port };
    assert!(
        out.status.success(),
        "scripts/kafka.sh start {port} failed (set RLAP_KAFKA_BROKERS to use a running broker):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let brokers = stdout
        .lines()
        .last()
        .expect("kafka.sh prints the address")
        .trim()
        .to_string();
    assert_eq!(brokers, format!("127.0.0.1:{port}"));
    eprintln!(
        "started a broker at {brokers} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    (brokers, Some(guard))
}

/// A consumer in `group` that never commits: for reading topics by explicit assignment.
pub fn reader(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// The partition ids of `topic` (empty when the broker reports it with an error).
pub fn partitions(c: &BaseConsumer, topic: &str) -> Vec<i32> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}
