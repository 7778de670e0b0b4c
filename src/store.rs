//! The versioned model store, in Triton's layout: `<store>/<model>/<version>/` holding
//! `model.onnx` (pruned neurons removed), `weights.safetensors` (the masked candle weights the
//! next cycle fine-tunes from), `config.pbtxt` (Triton's model configuration of that version,
//! [`triton_config`]) and `metadata.json` ([`VersionMetadata`]). Each publish also refreshes
//! `<store>/<model>/config.pbtxt`, where Triton reads it, so a Triton model repository can
//! point at the store as is (Triton ignores the other files and the non-numeric folders).
//!
//! This module owns publishing and reading versions. Architecture invariant: **a reader never
//! sees a half-written version.** A publish writes into `<model>/.tmp-<version>-<pid>/`, fsyncs
//! every file and the folder, then renames the folder to `<version>` (atomic on POSIX) and
//! fsyncs the parent. Only numeric folders that hold a `metadata.json` are versions; stale
//! `.tmp-*` folders left by a crash are removed by the next publish. Publishers of one model
//! take an exclusive file lock (`<model>/.lock`) for the whole publish, so concurrent
//! publishers (threads or processes) get distinct versions. Retention keeps the newest N.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Model, ModelError};
use crate::onnx::export::{self, ExportError, OPSET};

/// Errors of the model store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder operation failed.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// The underlying I/O error (part of the message, not a separate cause).
        error: std::io::Error,
    },
    /// A model name is not a plain folder name.
    #[error("bad model name '{0}': use letters, digits, '-', '_' or '.' (not starting with '.')")]
    BadName(String),
    /// The version does not exist.
    #[error("model '{model}' has no version {version}")]
    NoSuchVersion { model: String, version: u64 },
    /// The model has no version at all.
    #[error("model '{0}' has no published version")]
    Empty(String),
    /// A publish asked to be the first version ([`PublishInfo::only_if_first`]), but another
    /// publisher got there first: version `1` … `.1` exist.
    #[error("model '{0}' already has version {1}: not publishing another first model")]
    NotFirst(String, u64),
    /// `metadata.json` is unreadable.
    #[error("{path}: bad metadata: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    /// Exporting the model failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Saving the weights failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Test accuracy and macro F1 of a model, as stored in the metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Metrics {
    /// Accuracy in [0, 1].
    pub accuracy: f64,
    /// Macro F1 in [0, 1].
    pub macro_f1: f64,
}

/// Where the samples of a cycle came from (for the streaming daemon; free-form otherwise).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SampleWindow {
    /// Samples the cycle used.
    pub samples: u64,
    /// A description of the source, e.g. a topic and offset range or a data set name.
    pub source: String,
}

/// Why a cycle's candidate was published: what the acceptance guard saw
/// (`crate::stream::guard`), kept in the version's `metadata.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AcceptanceEvidence {
    /// The guard's reason, in words.
    pub reason: String,
    /// `holdout-unseen` (samples the parent had not trained on), `holdout` (the clean ones
    /// among them), `holdout-all` (the fallback when too few are unseen) or `validation` (the
    /// trusted set); see `crate::stream::cycle::CycleRecord::eval_set`.
    pub eval_set: String,
    /// Evaluation samples.
    pub eval_samples: usize,
    /// Accuracy of the parent on them, in [0, 1].
    pub accuracy_before: f64,
    /// Accuracy of this version on them.
    pub accuracy_after: f64,
    /// Two-sided interval of the paired accuracy difference (after − before): `[low, high]`.
    #[schema(value_type = [f64; 2])]
    pub difference_interval: (f64, f64),
    /// Recall per class `[K]` of the parent on the evaluation labels the guard trusts: all of a
    /// trusted validation set, or the clean-flagged ones of the held-out slice (None: no such
    /// sample of the class).
    pub recall_before: Vec<Option<f64>>,
    /// Recall per class `[K]` of this version.
    pub recall_after: Vec<Option<f64>>,
}

/// What the publisher knows about a new version.
#[derive(Clone, Debug, Default)]
pub struct PublishInfo {
    /// The version this one was derived from.
    pub parent_version: Option<u64>,
    /// The samples the cycle used.
    pub sample_window: Option<SampleWindow>,
    /// The partition's noisy fraction, in [0, 1].
    pub estimated_noise_rate: Option<f64>,
    /// Metrics of the parent model on the evaluation set.
    pub metrics_before: Option<Metrics>,
    /// Metrics of this model on the same set.
    pub metrics_after: Option<Metrics>,
    /// The range of the inputs this model trained on (input-shift detection).
    pub input_range: Option<crate::input_range::InputRange>,
    /// A cycle's acceptance evidence.
    pub acceptance: Option<AcceptanceEvidence>,
    /// Publish only when the model has no version yet (a replica's first model: with several
    /// replicas, the first to publish wins and the others adopt its version); checked under
    /// the publish lock.
    pub only_if_first: bool,
}

/// `metadata.json` of one version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VersionMetadata {
    /// Model name (the store folder).
    pub model: String,
    /// This version (1, 2, …).
    pub version: u64,
    /// The version it was derived from.
    pub parent_version: Option<u64>,
    /// RFC 3339, UTC, seconds.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// See [`PublishInfo`].
    pub sample_window: Option<SampleWindow>,
    /// See [`PublishInfo`].
    pub estimated_noise_rate: Option<f64>,
    /// See [`PublishInfo`].
    pub metrics_before: Option<Metrics>,
    /// See [`PublishInfo`].
    pub metrics_after: Option<Metrics>,
    /// Indices (into the original H) of the neurons removed from `fc`.
    pub pruned_neurons: Vec<usize>,
    /// Model family, input features D, classes K, target-layer width H (before removal).
    pub arch: String,
    /// Input features D.
    pub input_dim: usize,
    /// Classes K.
    pub num_classes: usize,
    /// Neurons H of `fc` before structural removal.
    pub hidden: usize,
    /// ONNX opset of `model.onnx`.
    pub opset: i64,
    /// sha256 (hex) of every other file of the version.
    pub sha256: BTreeMap<String, String>,
    /// See [`PublishInfo`]; absent in versions published before it existed (no shift check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_range: Option<crate::input_range::InputRange>,
    /// See [`PublishInfo`]; absent for first models and versions published before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance: Option<AcceptanceEvidence>,
}

/// The platform name KServe and Triton use for ONNX Runtime models (`config.pbtxt`, and the
/// Open Inference Protocol's model metadata).
pub const PLATFORM: &str = "onnxruntime_onnx";

/// File names inside a version folder.
pub const ONNX_FILE: &str = "model.onnx";
/// The masked candle weights (safetensors, [`Model::save`]).
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The [`VersionMetadata`] as JSON; its presence marks a complete version.
pub const METADATA_FILE: &str = "metadata.json";
/// Triton's model configuration ([`triton_config`]), in each version folder and in the model
/// folder (the one Triton reads).
pub const TRITON_CONFIG_FILE: &str = "config.pbtxt";
/// `max_batch_size` written into [`TRITON_CONFIG_FILE`]: the largest batch Triton may form
/// (the same as the API's default `max_batch`).
pub const TRITON_MAX_BATCH_SIZE: usize = 1024;

/// Triton's model configuration (protobuf text format of `inference.ModelConfig`) for a model
/// `name` with `input_dim` features D and `num_classes` classes K: platform
/// `onnxruntime_onnx`, input `input` `[D]` and output `logits` `[K]`, both `TYPE_FP32`, the
/// batch dimension implied by `max_batch_size` ([`TRITON_MAX_BATCH_SIZE`]). Written for
/// Triton's model repository; rlap itself never reads it.
pub fn triton_config(name: &str, input_dim: usize, num_classes: usize) -> String {
    // A fixed template: the name is a checked folder name (letters, digits, '-', '_', '.'), so
    // it needs no escaping inside the quotes.
    format!(
        "# Triton model configuration written by rlap (store/{name}); the model repository\n\
         # layout is <store>/<model>/<version>/model.onnx.\n\
         name: \"{name}\"\n\
         platform: \"{platform}\"\n\
         max_batch_size: {TRITON_MAX_BATCH_SIZE}\n\
         input [\n  {{\n    name: \"{input}\"\n    data_type: TYPE_FP32\n    dims: [ {input_dim} ]\n  }}\n]\n\
         output [\n  {{\n    name: \"{output}\"\n    data_type: TYPE_FP32\n    dims: [ {num_classes} ]\n  }}\n]\n",
        platform = PLATFORM,
        input = export::INPUT,
        output = export::OUTPUT,
    )
}

/// A model store rooted at a folder.
#[derive(Clone, Debug)]
pub struct ModelStore {
    root: PathBuf,
    retain: usize,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.into(),
        error: source,
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.into()))
    }
}

fn fsync_file(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<String, StoreError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(format!("{:x}", Sha256::digest(bytes)))
}

impl ModelStore {
    /// A store at `root` (created if absent) keeping the newest `retain` versions per model
    /// (at least 1).
    ///
    /// # Errors
    /// [`StoreError::Io`] when the folder cannot be created.
    pub fn open(root: &Path, retain: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(Self {
            root: root.into(),
            retain: retain.max(1),
        })
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Model names (folders), sorted.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn models(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let e = e.map_err(io(&self.root))?;
            let name = e.file_name().to_string_lossy().to_string();
            if e.path().is_dir() && check_name(&name).is_ok() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Published versions of `model`, ascending. Half-written versions are never listed.
    ///
    /// # Errors
    /// [`StoreError::BadName`], [`StoreError::Io`].
    pub fn versions(&self, model: &str) -> Result<Vec<u64>, StoreError> {
        check_name(model)?;
        let dir = self.root.join(model);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(v) = name.parse::<u64>() {
                // Only canonical names ("5", not "05" or "+5") are versions.
                if name == v.to_string() && e.path().join(METADATA_FILE).is_file() {
                    out.push(v);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The newest version of `model`.
    ///
    /// # Errors
    /// [`StoreError::Empty`] when there is none.
    pub fn latest(&self, model: &str) -> Result<u64, StoreError> {
        self.versions(model)?
            .last()
            .copied()
            .ok_or_else(|| StoreError::Empty(model.into()))
    }

    /// The folder of a published version.
    ///
    /// # Errors
    /// [`StoreError::NoSuchVersion`].
    pub fn version_dir(&self, model: &str, version: u64) -> Result<PathBuf, StoreError> {
        check_name(model)?;
        let dir = self.root.join(model).join(version.to_string());
        if dir.join(METADATA_FILE).is_file() {
            Ok(dir)
        } else {
            Err(StoreError::NoSuchVersion {
                model: model.into(),
                version,
            })
        }
    }

    /// The metadata of a published version.
    ///
    /// # Errors
    /// [`StoreError::NoSuchVersion`], [`StoreError::BadMetadata`].
    pub fn metadata(&self, model: &str, version: u64) -> Result<VersionMetadata, StoreError> {
        let path = self.version_dir(model, version)?.join(METADATA_FILE);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| StoreError::BadMetadata {
            path,
            reason: e.to_string(),
        })
    }

    /// Publish `model` as the next version of `name` (see the module docs for atomicity), then
    /// apply retention. Returns the new version's metadata.
    ///
    /// # Errors
    /// [`StoreError`] on any failure; nothing is visible to readers unless the whole version is.
    pub fn publish(
        &self,
        name: &str,
        model: &Model,
        info: PublishInfo,
    ) -> Result<VersionMetadata, StoreError> {
        check_name(name)?;
        let model_dir = self.root.join(name);
        std::fs::create_dir_all(&model_dir).map_err(io(&model_dir))?;
        // One publisher per model at a time, across processes: the lock is held until this
        // function returns (the file handle drops), so any `.tmp-*` seen under it is stale.
        let lock_path = model_dir.join(".lock");
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        self.remove_stale_tmp(&model_dir)?;
        let latest = self.versions(name)?.last().copied();
        if let (true, Some(v)) = (info.only_if_first, latest) {
            return Err(StoreError::NotFirst(name.into(), v));
        }
        let version = latest.map_or(1, |v| v + 1);
        let tmp = model_dir.join(format!(".tmp-{version}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

        let mut sha256 = BTreeMap::new();
        sha256.insert(
            ONNX_FILE.to_string(),
            write_synced(&tmp.join(ONNX_FILE), &export::to_bytes(model)?)?,
        );
        let weights = tmp.join(WEIGHTS_FILE);
        model.save(&weights)?;
        fsync_file(&weights)?;
        let bytes = std::fs::read(&weights).map_err(io(&weights))?;
        sha256.insert(
            WEIGHTS_FILE.to_string(),
            format!("{:x}", Sha256::digest(&bytes)),
        );
        let spec = model.spec();
        let triton = triton_config(name, spec.input_dim, spec.num_classes);
        sha256.insert(
            TRITON_CONFIG_FILE.to_string(),
            write_synced(&tmp.join(TRITON_CONFIG_FILE), triton.as_bytes())?,
        );
        let meta = VersionMetadata {
            model: name.into(),
            version,
            parent_version: info.parent_version,
            created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            sample_window: info.sample_window,
            estimated_noise_rate: info.estimated_noise_rate,
            metrics_before: info.metrics_before,
            metrics_after: info.metrics_after,
            input_range: info.input_range,
            acceptance: info.acceptance,
            pruned_neurons: model.pruned(),
            arch: spec.arch.to_string(),
            input_dim: spec.input_dim,
            num_classes: spec.num_classes,
            hidden: spec.hidden,
            opset: OPSET,
            sha256,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| StoreError::BadMetadata {
            path: tmp.join(METADATA_FILE),
            reason: e.to_string(),
        })?;
        write_synced(&tmp.join(METADATA_FILE), &json)?;
        fsync_file(&tmp)?;
        failpoint_sleep();
        let dest = model_dir.join(version.to_string());
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        fsync_file(&model_dir)?;
        tracing::info!(model = name, version, "model version published");
        // Triton reads the model folder's config.pbtxt: replace it (atomically) with this
        // version's. D and K are the same for every version of a model, so an older version
        // Triton still serves matches it too.
        let shared = model_dir.join(TRITON_CONFIG_FILE);
        // A fixed name (the publish lock is held): a crash leaves it for the next publish to
        // overwrite, and it does not start with `.tmp-` (those are folders, removed as stale).
        let staged = model_dir.join(format!(".{TRITON_CONFIG_FILE}.new"));
        if let Err(e) = write_synced(&staged, triton.as_bytes())
            .and_then(|_| std::fs::rename(&staged, &shared).map_err(io(&shared)))
        {
            tracing::warn!(model = name, error = %e, "could not refresh the model folder's config.pbtxt");
        }
        // The version is visible now: a retention failure must not make callers retry it.
        if let Err(e) = self.apply_retention(name) {
            tracing::warn!(model = name, error = %e, "retention failed; old versions kept");
        }
        Ok(meta)
    }

    fn remove_stale_tmp(&self, model_dir: &Path) -> Result<(), StoreError> {
        for e in std::fs::read_dir(model_dir).map_err(io(model_dir))? {
            let e = e.map_err(io(model_dir))?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                tracing::warn!(path = %e.path().display(), "removing a half-written version left by a crash");
                std::fs::remove_dir_all(e.path()).map_err(io(&e.path()))?;
            }
        }
        Ok(())
    }

    fn apply_retention(&self, name: &str) -> Result<(), StoreError> {
        let versions = self.versions(name)?;
        if versions.len() <= self.retain {
            return Ok(());
        }
        for v in &versions[..versions.len() - self.retain] {
            let dir = self.root.join(name).join(v.to_string());
            // Rename first so readers never see a version without its files.
            let doomed = self.root.join(name).join(format!(".tmp-retired-{v}"));
            std::fs::rename(&dir, &doomed).map_err(io(&dir))?;
            std::fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
            tracing::info!(model = name, version = v, "model version retired");
        }
        Ok(())
    }
}

/// Test hook: `RLAP_FAILPOINT_PUBLISH_SLEEP_MS` pauses a publish after its files are written
/// and before the rename, so a test can kill the process mid-publish (`tests/publish_crash.rs`
/// sets it on a child process). Read once per process, not on every publish.
fn failpoint_sleep() {
    static PAUSE: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("RLAP_FAILPOINT_PUBLISH_SLEEP_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(d) = pause {
        std::thread::sleep(*d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::mnist_spec;
    use crate::model::Arch;
    use candle_core::Device;

    #[test]
    fn publish_lists_reads_and_retains() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path(), 2).unwrap();
        let mut m = Model::new(mnist_spec(Arch::Mlp, 16), &Device::Cpu, 1).unwrap();
        m.prune(&[2, 3]).unwrap();
        for v in 1..=3u64 {
            let meta = store
                .publish(
                    "digits",
                    &m,
                    PublishInfo {
                        parent_version: v.checked_sub(1).filter(|&p| p > 0),
                        acceptance: (v == 3).then(|| AcceptanceEvidence {
                            reason: "holdout-unseen: better".into(),
                            eval_set: "holdout-unseen".into(),
                            eval_samples: 600,
                            accuracy_before: 0.8,
                            accuracy_after: 0.85,
                            difference_interval: (0.02, 0.08),
                            recall_before: vec![Some(0.9), None],
                            recall_after: vec![Some(0.92), None],
                        }),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(meta.version, v);
            assert_eq!(meta.acceptance.is_some(), v == 3);
        }
        assert_eq!(
            store.versions("digits").unwrap(),
            vec![2, 3],
            "retention keeps 2"
        );
        assert_eq!(store.models().unwrap(), vec!["digits"]);
        let meta = store.metadata("digits", 3).unwrap();
        assert_eq!(meta.pruned_neurons, vec![2, 3]);
        assert_eq!(meta.parent_version, Some(2));
        let a = meta.acceptance.as_ref().expect("the evidence round-trips");
        assert_eq!((a.eval_samples, a.recall_after[0]), (600, Some(0.92)));
        let triton = triton_config("digits", 784, 10);
        for dir in [
            store.version_dir("digits", 3).unwrap(),
            dir.path().join("digits"),
        ] {
            assert_eq!(
                std::fs::read_to_string(dir.join(TRITON_CONFIG_FILE)).unwrap(),
                triton,
                "{}",
                dir.display()
            );
        }
        for want in [
            "name: \"digits\"",
            "platform: \"onnxruntime_onnx\"",
            "max_batch_size: 1024",
            "name: \"input\"",
            "dims: [ 784 ]",
            "name: \"logits\"",
            "dims: [ 10 ]",
        ] {
            assert!(triton.contains(want), "{want} in\n{triton}");
        }
        assert_eq!(
            meta.sha256[TRITON_CONFIG_FILE],
            format!("{:x}", Sha256::digest(triton.as_bytes()))
        );
        let onnx = std::fs::read(store.version_dir("digits", 3).unwrap().join(ONNX_FILE)).unwrap();
        assert_eq!(
            meta.sha256[ONNX_FILE],
            format!("{:x}", Sha256::digest(&onnx))
        );
        let back = Model::load(
            &store.version_dir("digits", 3).unwrap().join(WEIGHTS_FILE),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(back.pruned(), vec![2, 3]);
        assert!(matches!(
            store.metadata("digits", 1),
            Err(StoreError::NoSuchVersion { .. })
        ));
        assert!(matches!(
            store.versions("../etc"),
            Err(StoreError::BadName(_))
        ));
    }

    #[test]
    fn concurrent_publishers_get_distinct_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path(), 10).unwrap();
        let m = Model::new(mnist_spec(Arch::Mlp, 8), &Device::Cpu, 1).unwrap();
        let versions: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        store
                            .publish("m", &m, PublishInfo::default())
                            .unwrap()
                            .version
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 2, 3, 4], "{versions:?}");
        assert_eq!(store.versions("m").unwrap(), vec![1, 2, 3, 4]);
        for v in 1..=4 {
            store.metadata("m", v).unwrap();
        }
    }

    #[test]
    fn non_canonical_folder_names_are_not_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path(), 10).unwrap();
        for name in ["05", "+5"] {
            std::fs::create_dir_all(dir.path().join("m").join(name)).unwrap();
            std::fs::write(dir.path().join("m").join(name).join(METADATA_FILE), b"{}").unwrap();
        }
        assert!(store.versions("m").unwrap().is_empty());
    }

    #[test]
    fn half_written_version_is_invisible_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path(), 5).unwrap();
        std::fs::create_dir_all(dir.path().join("m/.tmp-1-999")).unwrap();
        std::fs::write(dir.path().join("m/.tmp-1-999/model.onnx"), b"partial").unwrap();
        std::fs::create_dir_all(dir.path().join("m/7")).unwrap(); // no metadata.json
        assert!(store.versions("m").unwrap().is_empty());
        let m = Model::new(mnist_spec(Arch::Mlp, 8), &Device::Cpu, 1).unwrap();
        assert_eq!(
            store
                .publish("m", &m, PublishInfo::default())
                .unwrap()
                .version,
            1
        );
        assert!(!dir.path().join("m/.tmp-1-999").exists());
    }
}
