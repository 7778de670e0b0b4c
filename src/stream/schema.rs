//! The wire schemas (`proto/rlap/v1/*.proto`, compiled by prost via protox) and the decoding
//! and validation of incoming samples.
//!
//! This module owns what a valid input message is. A message is protobuf `LabeledSample`
//! unless its `content-type` header says `application/json`, in which case it is read as
//! canonical proto3 JSON (pbjson, generated from the same `.proto`: `eventTimeMs` or
//! `event_time_ms`, int64 as string or number, unknown fields ignored). Either may come in the
//! schema-registry wire format (magic byte 0 + schema id [+ message-index path]), recognised by
//! its first byte; registry-framed JSON is recognised without the header. Validation checks the size cap,
//! the feature count against the model's input, finiteness and the label range; each failure
//! is an [`InvalidSample`] whose `reason` is a stable snake_case label (used in the dead-letter
//! header `rlap-dlq-reason` and in metrics) plus a one-line detail.

use prost::Message;

/// Generated protobuf types of package `rlap.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/rlap.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/rlap.v1.serde.rs"));
}

pub use pb::{LabeledSample, ModelPublished, Verdict};

/// Header naming the payload encoding; `application/json` selects JSON, anything else (or no
/// header) protobuf.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// Header carrying the ground-truth corruption flag ("1"/"0"), written by `rlap produce` and
/// read only by evaluation (`rlap evaluate-verdicts`, the demo summary).
pub const TRUTH_HEADER: &str = "rlap-truth-corrupted";
/// Dead-letter header: the [`InvalidSample::reason`] label.
pub const DLQ_REASON_HEADER: &str = "rlap-dlq-reason";
/// Dead-letter header: the one-line detail.
pub const DLQ_DETAIL_HEADER: &str = "rlap-dlq-detail";
/// Dead-letter headers: the source topic, partition and offset.
pub const DLQ_TOPIC_HEADER: &str = "rlap-source-topic";
/// See [`DLQ_TOPIC_HEADER`].
pub const DLQ_PARTITION_HEADER: &str = "rlap-source-partition";
/// See [`DLQ_TOPIC_HEADER`].
pub const DLQ_OFFSET_HEADER: &str = "rlap-source-offset";

/// Why a message was sent to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSample {
    /// Stable label: `oversize`, `decode`, `empty_id`, `feature_count`, `shape_mismatch`,
    /// `non_finite`, `feature_range`, `label_range`, and `input_shift` (set by the daemon:
    /// far outside the current model's training inputs, see [`crate::input_range`]).
    pub reason: &'static str,
    /// One line for a human.
    pub detail: String,
}

impl std::fmt::Display for InvalidSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Every reason label [`validate`] (and the source's input-shift check) can give a dead
/// letter: the bounded label set of `rlap_invalid_samples_total`, which [`crate::metrics`]
/// owns and creates at zero.
pub use crate::metrics::DEAD_LETTER_REASONS as INVALID_REASONS;

pub use crate::data::MAX_ABS_FEATURE;

fn invalid(reason: &'static str, detail: impl Into<String>) -> InvalidSample {
    InvalidSample {
        reason,
        detail: detail.into(),
    }
}

/// First byte of the schema-registry wire format (Confluent): magic byte 0, a 4-byte
/// big-endian schema id, then (protobuf) the message-index path as zigzag varints, then the
/// message. A bare protobuf `LabeledSample` never starts with 0 (field number 0 is invalid)
/// and JSON never does, so the framing is recognised by this byte alone.
pub const REGISTRY_MAGIC: u8 = 0;

/// Strip the schema-registry framing from `payload` when it has one: the message bytes, and
/// whether they are JSON (a `{` right after the schema id; protobuf's index path cannot start
/// with it: 0x7B is a negative zigzag count). Unframed payloads pass through unchanged.
///
/// # Errors
/// `decode` when the framing is truncated or its message-index path does not name the first
/// message of `rlap/v1/sample.proto` (`LabeledSample`, path `[0]`).
fn strip_registry_framing(payload: &[u8], json: bool) -> Result<(&[u8], bool), InvalidSample> {
    if payload.first() != Some(&REGISTRY_MAGIC) {
        return Ok((payload, json));
    }
    let Some(rest) = payload.get(5..) else {
        return Err(invalid(
            "decode",
            "schema-registry framing truncated: fewer than 5 bytes (magic byte + schema id)",
        ));
    };
    if json || rest.first() == Some(&b'{') {
        return Ok((rest, true));
    }
    let mut buf = rest;
    let zigzag = |buf: &mut &[u8]| -> Result<i64, InvalidSample> {
        let v = prost::encoding::decode_varint(buf)
            .map_err(|e| invalid("decode", format!("schema-registry message index: {e}")))?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    };
    let count = zigzag(&mut buf)?;
    // Count 0 is the short form of the path [0].
    let path: Vec<i64> = if count == 0 {
        vec![0]
    } else if (1..=16).contains(&count) {
        (0..count)
            .map(|_| zigzag(&mut buf))
            .collect::<Result<_, _>>()?
    } else {
        return Err(invalid(
            "decode",
            format!("schema-registry message-index count {count} out of range"),
        ));
    };
    if path != [0] {
        return Err(invalid(
            "decode",
            format!("schema-registry message index {path:?} is not rlap.v1.LabeledSample ([0])"),
        ));
    }
    Ok((buf, false))
}

/// What the daemon expects of every sample.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// Features D of the model's input.
    pub num_features: usize,
    /// Classes K.
    pub num_classes: usize,
    /// Largest accepted payload in bytes.
    pub max_bytes: usize,
}

/// Decode and validate one payload. `json` selects the JSON encoding.
///
/// # Errors
/// An [`InvalidSample`] naming the first problem found.
pub fn decode(payload: &[u8], json: bool, expect: &Expect) -> Result<LabeledSample, InvalidSample> {
    if payload.len() > expect.max_bytes {
        return Err(invalid(
            "oversize",
            format!(
                "payload of {} bytes exceeds the {}-byte cap",
                payload.len(),
                expect.max_bytes
            ),
        ));
    }
    let (payload, json) = strip_registry_framing(payload, json)?;
    let s = if json {
        // Canonical proto3 JSON (pbjson): JSON or proto field names, int64 as string or number,
        // unknown fields ignored.
        serde_json::from_slice::<LabeledSample>(payload)
            .map_err(|e| invalid("decode", format!("not a JSON LabeledSample: {e}")))?
    } else {
        LabeledSample::decode(payload)
            .map_err(|e| invalid("decode", format!("not a protobuf LabeledSample: {e}")))?
    };
    validate(&s, expect)?;
    Ok(s)
}

/// How verdicts are encoded on the verdict topic (`kafka.verdict_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictFormat {
    /// `rlap.v1.Verdict` protobuf.
    #[default]
    Protobuf,
    /// The same message as canonical proto3 JSON (camelCase names, int64 as strings).
    Json,
}

/// Encode a verdict as `format` says: the payload and its `content-type` header value.
pub fn encode_verdict(v: &Verdict, format: VerdictFormat) -> (Vec<u8>, &'static [u8]) {
    match format {
        VerdictFormat::Protobuf => (v.encode_to_vec(), b"application/x-protobuf"),
        VerdictFormat::Json => (
            serde_json::to_vec(v).expect("a Verdict always serialises"),
            b"application/json",
        ),
    }
}

/// Decode a verdict in either encoding: JSON when `json` (its `content-type` header said
/// so) or when it starts with `{` (a protobuf `Verdict` starts with field 1's tag, 0x0A).
pub fn decode_verdict(payload: &[u8], json: bool) -> Option<Verdict> {
    if json || payload.first() == Some(&b'{') {
        serde_json::from_slice(payload).ok()
    } else {
        Verdict::decode(payload).ok()
    }
}

/// Check a decoded sample against the model's input and label space.
///
/// # Errors
/// An [`InvalidSample`] naming the first problem found.
pub fn validate(s: &LabeledSample, expect: &Expect) -> Result<(), InvalidSample> {
    if s.id.is_empty() {
        return Err(invalid("empty_id", "the sample id is empty"));
    }
    if !s.shape.is_empty() {
        let product = s
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        if product != Some(s.features.len() as u64) {
            return Err(invalid(
                "shape_mismatch",
                format!(
                    "shape {:?} holds {} values but {} features were sent",
                    s.shape,
                    product.map_or("too many".to_string(), |p| p.to_string()),
                    s.features.len()
                ),
            ));
        }
    }
    if s.features.len() != expect.num_features {
        return Err(invalid(
            "feature_count",
            format!(
                "{} features, the model takes {}",
                s.features.len(),
                expect.num_features
            ),
        ));
    }
    if let Some(i) = s.features.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            "non_finite",
            format!("feature {i} is {}", s.features[i]),
        ));
    }
    // Finite but huge values overflow the model's f32 arithmetic into NaN attributions.
    if let Some(i) = s.features.iter().position(|v| v.abs() > MAX_ABS_FEATURE) {
        return Err(invalid(
            "feature_range",
            format!(
                "feature {i} is {}, beyond ±{MAX_ABS_FEATURE:e}",
                s.features[i]
            ),
        ));
    }
    if s.label as usize >= expect.num_classes {
        return Err(invalid(
            "label_range",
            format!("label {} is outside [0, {})", s.label, expect.num_classes),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPECT: Expect = Expect {
        num_features: 4,
        num_classes: 3,
        max_bytes: 1024,
    };

    fn sample() -> LabeledSample {
        LabeledSample {
            id: "a".into(),
            features: vec![0.0, 0.5, 1.0, 0.25],
            shape: vec![2, 2],
            label: 2,
            source: Some("t".into()),
            event_time_ms: None,
        }
    }

    /// The forms producers send: proto3 JSON as Python's `MessageToJson` writes it
    /// (camelCase, int64 as a string, unknown fields), and the schema-registry framing of
    /// protobuf (short and long index path) and of JSON, without the content-type header.
    #[test]
    fn canonical_json_and_registry_framing_decode() {
        let mut s = sample();
        s.event_time_ms = Some(1_700_000_000_123);
        let camel = br#"{"id":"a","features":[0,0.5,1,0.25],"shape":[2,2],"label":2,"source":"t","eventTimeMs":"1700000000123","extra":{"x":1}}"#;
        assert_eq!(decode(camel, true, &EXPECT).unwrap(), s);
        let snake = br#"{"id":"a","features":[0,0.5,1,0.25],"shape":[2,2],"label":2,"source":"t","event_time_ms":1700000000123}"#;
        assert_eq!(decode(snake, true, &EXPECT).unwrap(), s);
        let frame = |body: &[u8], index: &[u8]| {
            let mut v = vec![REGISTRY_MAGIC, 0, 0, 0, 42];
            v.extend_from_slice(index);
            v.extend_from_slice(body);
            v
        };
        let pb = s.encode_to_vec();
        assert_eq!(decode(&frame(&pb, &[0]), false, &EXPECT).unwrap(), s);
        // Long form: count 1 (zigzag 2), index 0.
        assert_eq!(decode(&frame(&pb, &[2, 0]), false, &EXPECT).unwrap(), s);
        assert_eq!(decode(&frame(camel, &[]), false, &EXPECT).unwrap(), s);
        // Path [1] names another message; truncated framing; both dead-lettered as decode.
        let e = decode(&frame(&pb, &[2, 2]), false, &EXPECT).unwrap_err();
        assert_eq!(e.reason, "decode");
        assert!(e.detail.contains("[1]"), "{e}");
        assert_eq!(
            decode(&[REGISTRY_MAGIC, 0, 0], false, &EXPECT)
                .unwrap_err()
                .reason,
            "decode"
        );
        // Still validated after unframing.
        let mut bad = s.clone();
        bad.label = 9;
        let e = decode(&frame(&bad.encode_to_vec(), &[0]), false, &EXPECT).unwrap_err();
        assert_eq!(e.reason, "label_range");
    }

    #[test]
    fn verdicts_round_trip_in_both_formats() {
        use super::VerdictFormat;
        let v = Verdict {
            sample_id: "s-1".into(),
            noisy: true,
            posterior_noisy: 0.875,
            model_version: 3,
            event_time_ms: Some(1_700_000_000_123),
            provisional: true,
            ..Default::default()
        };
        for f in [VerdictFormat::Protobuf, VerdictFormat::Json] {
            let (bytes, ct) = encode_verdict(&v, f);
            let json = ct == b"application/json";
            assert_eq!(decode_verdict(&bytes, json), Some(v.clone()), "{f:?}");
            assert_eq!(
                decode_verdict(&bytes, false),
                Some(v.clone()),
                "{f:?} by content"
            );
        }
        let (bytes, _) = encode_verdict(&v, VerdictFormat::Json);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(r#""sampleId":"s-1""#)
                && text.contains(r#""eventTimeMs":"1700000000123""#),
            "{text}"
        );
    }

    #[test]
    fn protobuf_and_json_decode_to_the_same_sample() {
        let s = sample();
        assert_eq!(decode(&s.encode_to_vec(), false, &EXPECT).unwrap(), s);
        let j = br#"{"id":"a","features":[0,0.5,1,0.25],"shape":[2,2],"label":2,"source":"t"}"#;
        assert_eq!(decode(j, true, &EXPECT).unwrap(), s);
    }

    #[test]
    fn each_problem_has_its_reason() {
        let reason = |s: LabeledSample| validate(&s, &EXPECT).unwrap_err().reason;
        let mut s = sample();
        s.label = 3;
        assert_eq!(reason(s), "label_range");
        let mut s = sample();
        s.features[1] = f32::NAN;
        assert_eq!(reason(s), "non_finite");
        let mut s = sample();
        s.features.push(0.0);
        s.shape.clear();
        assert_eq!(reason(s), "feature_count");
        let mut s = sample();
        s.shape = vec![3, 2];
        assert_eq!(reason(s), "shape_mismatch");
        let mut s = sample();
        s.shape = vec![u32::MAX; 4];
        assert_eq!(reason(s), "shape_mismatch");
        let mut s = sample();
        s.features[2] = 3e30;
        assert_eq!(reason(s), "feature_range");
        let mut s = sample();
        s.id.clear();
        assert_eq!(reason(s), "empty_id");
        assert_eq!(
            decode(b"\xff\xff\xff", false, &EXPECT).unwrap_err().reason,
            "decode"
        );
        assert_eq!(decode(b"{", true, &EXPECT).unwrap_err().reason, "decode");
        assert_eq!(
            decode(&[0u8; 2000], false, &EXPECT).unwrap_err().reason,
            "oversize"
        );
        for r in ["decode", "oversize", "label_range"] {
            assert!(INVALID_REASONS.contains(&r));
        }
    }

    /// Property-based fuzzing of decode + validate: no input panics, and every rejection
    /// carries one of the documented reasons. CI runs `PROPTEST_CASES` cases per property
    /// (proptest's default 256); `PROPTEST_CASES=2000000 cargo test --release --lib fuzz_`
    /// is the long run (see the README's Tests section).
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn check(r: Result<LabeledSample, InvalidSample>) {
            if let Err(e) = r {
                assert!(INVALID_REASONS.contains(&e.reason), "{e}");
                assert!(!e.detail.is_empty());
            }
        }

        fn any_f32() -> impl Strategy<Value = f32> {
            prop_oneof![
                any::<f32>(),
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(-1e30f32),
                -2.0f32..2.0
            ]
        }

        fn any_sample() -> impl Strategy<Value = LabeledSample> {
            (
                ".{0,8}",
                proptest::collection::vec(any_f32(), 0..10),
                proptest::collection::vec(any::<u32>(), 0..4),
                prop_oneof![any::<u32>(), 0u32..4],
                proptest::option::of(".{0,4}"),
                proptest::option::of(any::<i64>()),
            )
                .prop_map(|(id, features, shape, label, source, event_time_ms)| {
                    LabeledSample {
                        id,
                        features,
                        shape,
                        label,
                        source,
                        event_time_ms,
                    }
                })
        }

        proptest! {
            #[test]
            fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), json in any::<bool>()) {
                check(decode(&bytes, json, &EXPECT));
            }

            #[test]
            fn fuzz_arbitrary_samples_never_panic(s in any_sample()) {
                check(decode(&s.encode_to_vec(), false, &EXPECT));
                check(validate(&s, &EXPECT).map(|()| s.clone()));
            }

            #[test]
            fn fuzz_arbitrary_json_never_panics(
                id in proptest::option::of(".{0,6}"),
                features in proptest::collection::vec(prop_oneof![any::<f64>().prop_map(|v| v.to_string()), Just("1e400".to_string()), Just("null".to_string()), Just("\"x\"".to_string())], 0..8),
                label in prop_oneof![any::<i64>().prop_map(|v| v.to_string()), Just("-1".to_string()), Just("2.5".to_string())],
                extra in proptest::option::of("[a-z]{1,5}"),
            ) {
                let mut fields = vec![];
                if let Some(id) = id {
                    fields.push(format!("{:?}:{}", "id", serde_json::to_string(&id).unwrap()));
                }
                fields.push(format!("\"features\":[{}]", features.join(",")));
                fields.push(format!("\"label\":{label}"));
                if let Some(k) = extra {
                    fields.push(format!("\"{k}\":1"));
                }
                let doc = format!("{{{}}}", fields.join(","));
                check(decode(doc.as_bytes(), true, &EXPECT));
            }
        }
    }
}
