//! The daemon's configuration: TOML file plus `RLAP__SECTION__KEY` environment overrides
//! (the `config` crate), deserialized into typed sections and validated at start-up.
//!
//! This module owns every configurable key, its default and its range. Unknown keys are an
//! error (a typo must not silently fall back to a default). [`DaemonConfig::validate`] returns
//! one line per problem, each naming the key; [`load`] joins them into one error.
//! `configs/default.toml` documents every key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::attribution::AttributionMode;
use crate::model::Arch;
use crate::partition::{Estimator, PartitionFeatures};
use crate::stream::online_gmm::StepSize;
pub use crate::stream::schema::VerdictFormat;
use crate::stream::trigger::TriggerParams;

mod kafka;
mod scoring;
mod service;

pub use kafka::*;
pub use scoring::*;
pub use service::*;

/// A configuration that could not be loaded or is invalid; the message is one line per
/// problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The whole daemon configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Kafka.
    pub kafka: KafkaConfig,
    /// The model and its store.
    pub model: ModelConfig,
    /// The first model.
    pub bootstrap: BootstrapConfig,
    /// Micro-batches and verdicts.
    pub scoring: ScoringConfig,
    /// The online GMM.
    pub mixture: MixtureConfig,
    /// When a cycle is due.
    pub trigger: TriggerParams,
    /// The cycle.
    pub cycle: CycleConfig,
    /// The replay buffer.
    pub replay: ReplayConfig,
    /// Checkpoints.
    pub state: StateConfig,
    /// The HTTP API.
    pub api: ApiConfig,
}

impl DaemonConfig {
    /// Every problem, one line each, naming the key (section by section).
    pub fn validate(&self) -> Vec<String> {
        self.problems_and_device().0
    }

    /// [`Self::validate`]'s problems, and `model.device` opened once (`None` when it names
    /// no usable device, which is then one of the problems).
    fn problems_and_device(&self) -> (Vec<String>, Option<candle_core::Device>) {
        let mut p = self.kafka.problems();
        p.extend(self.model.problems());
        let device = match crate::model::parse_device(&self.model.device) {
            Ok(d) => Some(d),
            Err(e) => {
                p.push(format!("model.device = '{}': {e}", self.model.device));
                None
            }
        };
        p.extend(self.bootstrap.problems());
        p.extend(self.scoring.problems());
        p.extend(self.mixture.problems());
        p.extend(self.trigger.validate());
        p.extend(self.cycle.problems(&self.model));
        p.extend(self.replay.problems(&self.model));
        p.extend(self.api.problems());
        (p, device)
    }

    /// Validate, then parse the keys held as text into their types (linfa's params →
    /// valid params): only a [`ValidConfig`] starts an engine or a daemon.
    ///
    /// # Errors
    /// [`ConfigError`] with one line per problem (see [`Self::validate`]).
    pub fn check(self) -> Result<ValidConfig, ConfigError> {
        let (problems, device) = self.problems_and_device();
        let device = match device {
            Some(d) if problems.is_empty() => d,
            _ => return Err(ConfigError(problems.join("\n"))),
        };
        let one = |e: String| ConfigError(e);
        let step = self.mixture.step_size().map_err(one)?;
        let listen = if self.api.enabled {
            Some(self.api.listen.parse().map_err(|_| {
                one(format!(
                    "api.listen = '{}': expected ip:port",
                    self.api.listen
                ))
            })?)
        } else {
            None
        };
        let validation = match &self.cycle.validation {
            None => None,
            Some(v) => Some(ValidationSet {
                dataset: v
                    .dataset
                    .parse()
                    .map_err(|e| one(format!("cycle.validation.dataset: {e}")))?,
                data_dir: v
                    .data_dir
                    .clone()
                    .unwrap_or_else(crate::data::default_data_dir),
                limit: v.limit,
            }),
        };
        Ok(ValidConfig {
            raw: self,
            device,
            step,
            listen,
            validation,
        })
    }

    /// The image shape as a tuple, if any.
    pub fn image_shape(&self) -> Option<(usize, usize, usize)> {
        match self.model.image_shape[..] {
            [c, h, w] => Some((c, h, w)),
            _ => None,
        }
    }
}

/// The trusted validation set of `[cycle.validation]`, parsed.
#[derive(Clone, Debug)]
pub struct ValidationSet {
    /// The data set (its test split is used).
    pub dataset: crate::data::DatasetSpec,
    /// Folder of the named data sets.
    pub data_dir: PathBuf,
    /// At most this many samples (stratified), 0 = all.
    pub limit: usize,
}

/// A configuration that passed [`DaemonConfig::check`]: every key in range and the keys held
/// as text (`model.device`, `mixture.step`, `api.listen`, `cycle.validation.dataset`) parsed
/// once into their types (read them through the accessors, not the raw text). Reads as the
/// [`DaemonConfig`] it came from (`Deref`) and cannot be changed: to change a key, change the
/// [`DaemonConfig`] ([`Self::into_inner`]) and check again. The engine, the daemon and its
/// stages accept only this type.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    raw: DaemonConfig,
    device: candle_core::Device,
    step: StepSize,
    listen: Option<std::net::SocketAddr>,
    validation: Option<ValidationSet>,
}

impl std::ops::Deref for ValidConfig {
    type Target = DaemonConfig;

    fn deref(&self) -> &DaemonConfig {
        &self.raw
    }
}

impl ValidConfig {
    /// `model.device`, opened.
    pub fn device(&self) -> &candle_core::Device {
        &self.device
    }

    /// `mixture.step` with its parameters (`gamma0`, `n0`, `alpha` or `gamma`).
    pub fn step(&self) -> StepSize {
        self.step
    }

    /// `api.listen`, when `api.enabled`.
    pub fn listen(&self) -> Option<std::net::SocketAddr> {
        self.listen
    }

    /// `[cycle.validation]`, parsed.
    pub fn validation(&self) -> Option<&ValidationSet> {
        self.validation.as_ref()
    }

    /// The configuration as written (to change a key, change it there and check again).
    pub fn into_inner(self) -> DaemonConfig {
        self.raw
    }
}

/// Fewest samples a cycle runs on (the floor of `cycle.min_samples`; a cycle needs this
/// many in the replay buffer).
pub const MIN_CYCLE_SAMPLES: usize = 500;

/// Keys earlier releases read, and what replaced them (said in one line rather than serde's
/// bare "unknown field").
const MOVED_KEYS: &[(&str, &str)] = &[(
    "cycle.tolerance",
    "the acceptance guard replaced it; set cycle.guard.tolerance (a margin on the paired \
     accuracy gain, default 0.0) and see [cycle.guard] in configs/default.toml",
)];

/// Load `path` (TOML) with `RLAP__SECTION__KEY` overrides from `env`, then validate.
///
/// # Errors
/// [`ConfigError`] with one line per problem.
pub fn load_from(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<ValidConfig, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError(format!(
            "{}: no such config file (see configs/default.toml)",
            path.display()
        )));
    }
    let overrides_env: Vec<(String, String)> = env.into_iter().collect();
    let overrides: std::collections::HashMap<String, String> = overrides_env
        .iter()
        .filter(|(k, _)| k.starts_with("RLAP__"))
        .cloned()
        .collect();
    let cfg = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("RLAP")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        )
        .build()
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    for (old, new) in MOVED_KEYS {
        if cfg.get::<config::Value>(old).is_ok() {
            return Err(ConfigError(format!(
                "{}: {old} is no longer read: {new}",
                path.display()
            )));
        }
    }
    let mut cfg: DaemonConfig = cfg
        .try_deserialize()
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    for (key, value) in librdkafka_properties_from_env(overrides_env.iter().cloned()) {
        cfg.kafka.properties.insert(key, value);
    }
    cfg.check().map_err(|ConfigError(lines)| {
        ConfigError(
            lines
                .lines()
                .map(|p| format!("{}: {p}", path.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// Prefix of environment variables that set a librdkafka property of every client:
/// `RLAP_KAFKA_PROPERTY_SASL_PASSWORD=…` sets `sasl.password` (the rest of the name,
/// lower-cased, `_` → `.`; librdkafka's keys have no underscores). For secrets, which should
/// not sit in the TOML, and for any dotted key the `RLAP__SECTION__KEY` overrides cannot
/// spell. Wins over `kafka.properties`.
pub const KAFKA_PROPERTY_ENV_PREFIX: &str = "RLAP_KAFKA_PROPERTY_";

/// The librdkafka properties set through [`KAFKA_PROPERTY_ENV_PREFIX`] variables.
pub fn librdkafka_properties_from_env(
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    env.into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(KAFKA_PROPERTY_ENV_PREFIX)?;
            (!key.is_empty()).then(|| (key.to_ascii_lowercase().replace('_', "."), v))
        })
        .collect()
}

/// [`load_from`] with the process environment.
///
/// # Errors
/// See [`load_from`].
pub fn load(path: &Path) -> Result<ValidConfig, ConfigError> {
    load_from(path, std::env::vars())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_secrets_come_from_the_environment() {
        let f = write("[kafka]\nproperties = { \"sasl.mechanism\" = \"PLAIN\" }\n");
        let env = [
            ("RLAP_KAFKA_PROPERTY_SASL_PASSWORD", "s3cret"),
            ("RLAP_KAFKA_PROPERTY_SASL_USERNAME", "rlap"),
            ("RLAP_KAFKA_PROPERTY_", "ignored"),
            ("OTHER_SASL_PASSWORD", "ignored"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = load_from(f.path(), env).unwrap();
        let p = &c.kafka.properties;
        assert_eq!(p.get("sasl.password").map(String::as_str), Some("s3cret"));
        assert_eq!(p.get("sasl.username").map(String::as_str), Some("rlap"));
        assert_eq!(p.get("sasl.mechanism").map(String::as_str), Some("PLAIN"));
        assert_eq!(p.len(), 3);
        assert_eq!(c.kafka.replication_factor, -1);
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn a_moved_key_is_named_with_its_replacement() {
        let f = write("[cycle]\ntolerance = 0.01\n");
        let e = load_from(f.path(), vec![]).unwrap_err().to_string();
        assert!(
            e.contains("cycle.tolerance is no longer read") && e.contains("cycle.guard.tolerance"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn defaults_validate_and_env_overrides_win() {
        assert!(DaemonConfig::default().validate().is_empty());
        let f = write("[kafka]\nbrokers = \"a:1\"\n[trigger]\nnoisy_fraction = 0.4\n");
        let env = vec![
            ("RLAP__KAFKA__BROKERS".to_string(), "b:2".to_string()),
            ("RLAP__SCORING__BATCH_SIZE".to_string(), "64".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = load_from(f.path(), env).unwrap();
        assert_eq!(c.kafka.brokers, "b:2");
        assert_eq!(c.scoring.batch_size, 64);
        assert_eq!(c.trigger.noisy_fraction, 0.4);
        assert_eq!(c.kafka.verdicts(), "samples.verdicts");
    }

    #[test]
    fn every_problem_is_one_line_naming_its_key() {
        let f = write(
            "[trigger]\nnoisy_fraction = 1.5\n[scoring]\nthreshold = 0\n[mixture]\nalpha = 0.2\n\
             [cycle]\nema = 1.0\n",
        );
        let e = load_from(f.path(), vec![]).unwrap_err().0;
        let lines: Vec<&str> = e.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("trigger.noisy_fraction = 1.5")),
            "{e}"
        );
        assert!(lines.iter().any(|l| l.contains("scoring.threshold")), "{e}");
        assert!(lines.iter().any(|l| l.contains("mixture.alpha")), "{e}");
        assert!(lines.iter().any(|l| l.contains("cycle.ema = 1")), "{e}");
        let f = write("[kafka]\nbrokerz = \"x\"\n");
        let e = load_from(f.path(), vec![]).unwrap_err().0;
        assert!(e.contains("brokerz") && !e.contains('\n'), "{e}");
        assert!(load_from(Path::new("/nonexistent.toml"), vec![]).is_err());
    }

    #[test]
    fn reserved_kafka_properties_are_refused_per_table() {
        let f = write(
            "[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"acks\" = \"1\"\n\
             [kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"enable.auto.commit\" = \"false\"\n\
             [kafka.producer_properties]\n\"linger.ms\" = \"20\"\n\"enable.idempotence\" = \"false\"\n",
        );
        let e = load_from(f.path(), vec![]).unwrap_err().0;
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(lines[0].contains("kafka.properties.\"acks\""), "{e}");
        assert!(
            lines[1].contains("kafka.consumer_properties.\"enable.auto.commit\""),
            "{e}"
        );
        assert!(
            lines[2].contains("kafka.producer_properties.\"enable.idempotence\""),
            "{e}"
        );
        // A producer-only key is fine in the consumer's table and the other way round.
        let f = write(
            "[kafka.consumer_properties]\n\"acks\" = \"1\"\n[kafka.producer_properties]\n\"group.id\" = \"x\"\n",
        );
        assert!(load_from(f.path(), vec![]).is_ok());
    }

    #[test]
    fn public_url_is_empty_or_an_http_base_url() {
        let mut c = DaemonConfig::default();
        for ok in ["", "http://rlap:8080", "https://models.example.com/rlap/"] {
            c.api.public_url = ok.into();
            assert!(c.validate().is_empty(), "{ok}: {:?}", c.validate());
        }
        for bad in [
            "rlap:8080",
            "ftp://x",
            "http://",
            "http://x/?a=1",
            "http://a b",
        ] {
            c.api.public_url = bad.into();
            let p = c.validate();
            assert!(
                p.len() == 1 && p[0].starts_with("api.public_url"),
                "{bad}: {p:?}"
            );
        }
        assert_eq!(
            crate::stream::engine::model_url("https://m.example/rlap/", "mnist", 3),
            "https://m.example/rlap/v1/models/mnist/versions/3/model.onnx"
        );
        assert_eq!(crate::stream::engine::model_url("", "mnist", 3), "");
    }
}
