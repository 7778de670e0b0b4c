//! Real data sets: IDX (raw or `.gz`) and CSV loaders, the named sets (MNIST, Fashion-MNIST)
//! fetched by `scripts/setup-data.sh`, and stratified subsampling.
//!
//! This module owns turning files into a validated [`Dataset`]. Every defect of a file
//! (missing, truncated, wrong magic, inconsistent counts or dimensions, label out of range,
//! non-numeric cell) is a [`DataError`] that names the file and the place; nothing here panics
//! on bad input.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

mod csv_file;
mod idx;

pub use csv_file::*;
pub use idx::*;

/// Errors raised while reading or validating a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("{path}: {error}{hint}")]
    Io {
        path: PathBuf,
        /// The underlying I/O error (part of the message, not a separate cause).
        error: std::io::Error,
        /// Extra advice, e.g. to run the setup script.
        hint: String,
    },
    /// The file ended before the header promised.
    #[error("{path}: truncated: expected {expected} bytes after decompression, found {actual}")]
    Truncated {
        path: PathBuf,
        expected: usize,
        actual: usize,
    },
    /// The IDX magic number is not the one expected for this file kind.
    #[error("{path}: not an IDX {kind} file (magic 0x{found:08x}, expected 0x{expected:08x})")]
    BadMagic {
        path: PathBuf,
        kind: &'static str,
        found: u32,
        expected: u32,
    },
    /// Images and labels disagree on the number of samples.
    #[error("{images}: {n_images} images but {labels} has {n_labels} labels")]
    CountMismatch {
        images: PathBuf,
        n_images: usize,
        labels: PathBuf,
        n_labels: usize,
    },
    /// The train and test splits (or two rows of a CSV) disagree on the feature dimension.
    #[error("{path}: {place}: {found} features, expected {expected}")]
    DimMismatch {
        path: PathBuf,
        place: String,
        found: usize,
        expected: usize,
    },
    /// A label is outside `0..num_classes`.
    #[error("{path}: {place}: label {label} out of range 0..{num_classes}")]
    LabelOutOfRange {
        path: PathBuf,
        place: String,
        label: i64,
        num_classes: usize,
    },
    /// A CSV cell is not a number (or the label is not a non-negative integer).
    #[error("{path}: line {line}, column {column}: {message}")]
    BadCell {
        path: PathBuf,
        line: u64,
        column: usize,
        message: String,
    },
    /// Labels inferred K (no `,K` in the spec) but some classes below the largest label have
    /// no training sample: the largest label is probably a typo.
    #[error(
        "{path}: {place}: label {label} makes {num_classes} classes, but {empty} of the classes \
         below it have no training sample (a typo?); if the data set really has {num_classes} \
         classes, say so: {spec_hint}"
    )]
    EmptyClasses {
        path: PathBuf,
        place: String,
        label: i64,
        num_classes: usize,
        empty: usize,
        spec_hint: String,
    },
    /// A file holds no samples.
    #[error("{path}: no samples")]
    Empty { path: PathBuf },
    /// The `--dataset` specification is not understood.
    #[error(
        "bad dataset '{0}': expected mnist | fashion-mnist | idx:DIR[,K] | csv:TRAIN.csv,TEST.csv[,K] \
         (K: the number of classes)"
    )]
    BadSpec(String),
}

/// Largest accepted feature magnitude, in CSV files and on the stream: beyond it f32
/// activations can overflow to ±∞ (one feature of 1e30 collapses the partition).
pub const MAX_ABS_FEATURE: f32 = 1e6;

/// The largest number of classes a CSV set may declare (labels `0..MAX_CLASSES`).
pub const MAX_CLASSES: usize = 65_536;

/// A labelled data set held in memory, row-major.
///
/// `features` has shape `[n, dim]` (f32). Images are scaled to `[0, 1]` (pixel / 255) and keep
/// their `[channels, height, width]` in `image_shape`; CSV features are kept as read.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Human-readable name, e.g. `mnist/train`.
    pub name: String,
    /// Row-major features, `n * dim` values.
    pub features: Vec<f32>,
    /// Class index per sample, each `< num_classes`.
    pub labels: Vec<u32>,
    /// Number of features per sample.
    pub dim: usize,
    /// Number of classes K.
    pub num_classes: usize,
    /// `(channels, height, width)` for image sets; `None` for tabular ones.
    pub image_shape: Option<(usize, usize, usize)>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features of sample `i`, a slice of `dim` values.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// A new data set made of the rows `indices` (in that order).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.dim);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            features.extend_from_slice(self.row(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            name: self.name.clone(),
            features,
            labels,
            dim: self.dim,
            num_classes: self.num_classes,
            image_shape: self.image_shape,
        }
    }

    /// Indices of a stratified subsample of `size` rows (per-class counts proportional to the
    /// full set's, largest-remainder rounding), sorted ascending. Seeded.
    /// Returns all indices when `size >= len()`.
    pub fn stratified_indices(&self, size: usize, seed: u64) -> Vec<usize> {
        let n = self.len();
        if size >= n {
            return (0..n).collect();
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.num_classes];
        for (i, &y) in self.labels.iter().enumerate() {
            by_class[y as usize].push(i);
        }
        // Largest-remainder allocation of `size` over the classes.
        let mut quota: Vec<(usize, f64)> = by_class
            .iter()
            .map(|c| {
                let exact = size as f64 * c.len() as f64 / n as f64;
                (exact.floor() as usize, exact - exact.floor())
            })
            .collect();
        let mut left = size - quota.iter().map(|q| q.0).sum::<usize>();
        let mut order: Vec<usize> = (0..quota.len()).collect();
        order.sort_by(|&a, &b| quota[b].1.total_cmp(&quota[a].1));
        for &c in order.iter().cycle().take(order.len() * 2) {
            if left == 0 {
                break;
            }
            if quota[c].0 < by_class[c].len() {
                quota[c].0 += 1;
                left -= 1;
            }
        }
        let mut out = Vec::with_capacity(size);
        for (c, members) in by_class.iter_mut().enumerate() {
            members.shuffle(&mut rng);
            out.extend_from_slice(&members[..quota[c].0.min(members.len())]);
        }
        out.sort_unstable();
        out
    }

    /// Count of samples per class, length `num_classes`.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &y in &self.labels {
            counts[y as usize] += 1;
        }
        counts
    }
}

/// A train split and a test split with the same feature dimension and classes.
#[derive(Clone, Debug)]
pub struct Split {
    /// The training split (the one corruption applies to).
    pub train: Dataset,
    /// The test split (kept clean).
    pub test: Dataset,
}

/// Which data set to load (the `--dataset` option).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetSpec {
    /// MNIST from `<data_dir>/mnist` (10 classes, 28×28).
    Mnist,
    /// Fashion-MNIST from `<data_dir>/fashion-mnist` (10 classes, 28×28).
    FashionMnist,
    /// Any IDX set: a folder with `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
    /// `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`; `idx:DIR[,K]`.
    Idx {
        /// The folder.
        dir: PathBuf,
        /// K when given (`,K`); else 1 + the largest training label.
        num_classes: Option<usize>,
    },
    /// Two CSV files, label (integer) in the first column, numeric features after;
    /// `csv:TRAIN,TEST[,K]`.
    Csv {
        /// Training split.
        train: PathBuf,
        /// Test split.
        test: PathBuf,
        /// K when given (`,K`); else 1 + the largest training label.
        num_classes: Option<usize>,
    },
}

impl FromStr for DatasetSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "mnist" => Ok(Self::Mnist),
            "fashion-mnist" => Ok(Self::FashionMnist),
            _ => {
                let bad = || DataError::BadSpec(s.into());
                // A trailing `,K` (an integer >= 2) gives the number of classes.
                let classes = |rest: &'_ str| -> Result<(String, Option<usize>), DataError> {
                    match rest.rsplit_once(',') {
                        Some((head, k))
                            if k.chars().all(|c| c.is_ascii_digit()) && !k.is_empty() =>
                        {
                            match k.parse::<usize>() {
                                Ok(k) if (2..=MAX_CLASSES).contains(&k) => {
                                    Ok((head.into(), Some(k)))
                                }
                                _ => Err(bad()),
                            }
                        }
                        _ => Ok((rest.into(), None)),
                    }
                };
                if let Some(rest) = s.strip_prefix("idx:") {
                    let (dir, num_classes) = classes(rest)?;
                    if dir.is_empty() {
                        return Err(bad());
                    }
                    Ok(Self::Idx {
                        dir: dir.into(),
                        num_classes,
                    })
                } else if let Some(rest) = s.strip_prefix("csv:") {
                    let (rest, num_classes) = classes(rest)?;
                    match rest.split_once(',') {
                        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(',') => {
                            Ok(Self::Csv {
                                train: a.into(),
                                test: b.into(),
                                num_classes,
                            })
                        }
                        _ => Err(bad()),
                    }
                } else {
                    Err(DataError::BadSpec(s.into()))
                }
            }
        }
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mnist => write!(f, "mnist"),
            Self::FashionMnist => write!(f, "fashion-mnist"),
            Self::Idx { dir, num_classes } => {
                write!(f, "idx:{}", dir.display())?;
                num_classes.map_or(Ok(()), |k| write!(f, ",{k}"))
            }
            Self::Csv {
                train,
                test,
                num_classes,
            } => {
                write!(f, "csv:{},{}", train.display(), test.display())?;
                num_classes.map_or(Ok(()), |k| write!(f, ",{k}"))
            }
        }
    }
}

/// The folder holding the named data sets: `$RLAP_DATA_DIR`, else `data/` under the crate root
/// when it exists (running from a checkout), else `./data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RLAP_DATA_DIR") {
        return d.into();
    }
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    if in_repo.is_dir() {
        in_repo
    } else {
        PathBuf::from("data")
    }
}

/// Load both splits of `spec`. Named sets are read from `data_dir`.
///
/// # Errors
/// Any [`DataError`]: a missing file says to run `scripts/setup-data.sh`.
pub fn load(spec: &DatasetSpec, data_dir: &Path) -> Result<Split, DataError> {
    match spec {
        DatasetSpec::Mnist => load_idx_dir(&data_dir.join("mnist"), "mnist", Some(10)),
        DatasetSpec::FashionMnist => {
            load_idx_dir(&data_dir.join("fashion-mnist"), "fashion-mnist", Some(10))
        }
        DatasetSpec::Idx { dir, num_classes } => {
            let split = load_idx_dir(dir, &dir.display().to_string(), *num_classes)?;
            if num_classes.is_none() {
                let path = find_idx(dir, "train-labels-idx1-ubyte");
                check_no_empty_class(&split.train, &path, &format!("idx:{}", dir.display()))?;
            }
            Ok(split)
        }
        DatasetSpec::Csv {
            train,
            test,
            num_classes,
        } => load_csv_pair(train, test, *num_classes),
    }
}

#[cfg(test)]
pub(crate) mod tests;
