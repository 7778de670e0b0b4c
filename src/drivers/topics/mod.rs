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

pub use crate::stream::kafka::is_json;

mod produce;
mod verdicts;

pub use produce::*;
pub use verdicts::*;
