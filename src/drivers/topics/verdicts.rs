//! `rlap evaluate-verdicts`: a verdict topic joined with the input topic's hidden truth
//! (precision, recall, F1 of "noisy"), the per-verdict CSV, and each stored version's test
//! accuracy.

use super::*;

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

pub(super) fn read_all(
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

pub(super) fn header<'a>(
    m: &'a rdkafka::message::BorrowedMessage<'_>,
    key: &str,
) -> Option<&'a [u8]> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
}

pub(super) fn prf(tp: u64, fp: u64, fneg: u64) -> (f64, f64, f64) {
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
