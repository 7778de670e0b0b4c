//! What the verdict rule and the cycle read about samples: a micro-batch of incoming samples
//! as a [`Dataset`] (`[n, D]` features and given labels), and a model's attribution scores
//! of a data set (§3.2.1: a(x), h(x), per-sample CE and class probabilities). Shared by the
//! engine's per-sample path and the cycle, so neither reaches into the other for it.

use crate::attribution::{attribute, AttributionMode, Attributions};
use crate::data::Dataset;
use crate::model::{Model, ModelError};
use crate::progress::Progress;
use crate::stream::config::DaemonConfig;
use crate::stream::schema::LabeledSample;

/// Rows per attribution pass: one backward pass per batch, never per sample.
pub const ATTRIBUTION_BATCH: usize = 256;

/// Attribute `data` with `model` (batches of [`ATTRIBUTION_BATCH`], no progress bar).
///
/// # Errors
/// [`ModelError`] from the forward/backward pass.
pub fn attribute_all(
    model: &Model,
    data: &Dataset,
    mode: AttributionMode,
) -> Result<Attributions, ModelError> {
    attribute(model, data, mode, ATTRIBUTION_BATCH, &Progress::hidden())
}

/// The samples as a data set of `cfg`'s shape (`model.num_features`, `model.num_classes`,
/// `model.image_shape`), in order; the caller has validated each sample's length.
pub fn dataset_of<'a>(
    cfg: &DaemonConfig,
    samples: impl ExactSizeIterator<Item = &'a LabeledSample>,
) -> Dataset {
    let d = cfg.model.num_features;
    let mut features = Vec::with_capacity(samples.len() * d);
    let mut labels = Vec::with_capacity(samples.len());
    for s in samples {
        features.extend_from_slice(&s.features);
        labels.push(s.label);
    }
    Dataset {
        name: "stream".into(),
        features,
        labels,
        dim: d,
        num_classes: cfg.model.num_classes,
        image_shape: cfg.image_shape(),
    }
}
