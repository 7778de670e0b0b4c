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

fn find_idx(dir: &Path, stem: &str) -> PathBuf {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.exists() {
        gz
    } else {
        dir.join(stem)
    }
}

/// Load an IDX folder (see [`DatasetSpec::Idx`]). `num_classes` fixes K for known sets; when
/// `None`, K = 1 + the largest training label and test labels must fall below it.
///
/// # Errors
/// [`DataError`] naming the offending file.
pub fn load_idx_dir(
    dir: &Path,
    name: &str,
    num_classes: Option<usize>,
) -> Result<Split, DataError> {
    let tr_img = find_idx(dir, "train-images-idx3-ubyte");
    let tr_lab = find_idx(dir, "train-labels-idx1-ubyte");
    let te_img = find_idx(dir, "t10k-images-idx3-ubyte");
    let te_lab = find_idx(dir, "t10k-labels-idx1-ubyte");
    let (train_x, shape) = read_idx_images(&tr_img)?;
    let train_y = read_idx_labels(&tr_lab)?;
    let (test_x, test_shape) = read_idx_images(&te_img)?;
    let test_y = read_idx_labels(&te_lab)?;
    check_count(
        &tr_img,
        train_x.len() / (shape.0 * shape.1),
        &tr_lab,
        train_y.len(),
    )?;
    check_count(
        &te_img,
        test_x.len() / (test_shape.0 * test_shape.1),
        &te_lab,
        test_y.len(),
    )?;
    let dim = shape.0 * shape.1;
    if test_shape != shape {
        return Err(DataError::DimMismatch {
            path: te_img,
            place: format!("image shape {}x{}", test_shape.0, test_shape.1),
            found: test_shape.0 * test_shape.1,
            expected: dim,
        });
    }
    let k = num_classes.unwrap_or_else(|| train_y.iter().copied().max().unwrap_or(0) as usize + 1);
    check_labels(&tr_lab, &train_y, k)?;
    check_labels(&te_lab, &test_y, k)?;
    let to_ds = |x: Vec<u8>, y: Vec<u8>, split: &str| Dataset {
        name: format!("{name}/{split}"),
        features: x.into_iter().map(|p| p as f32 / 255.0).collect(),
        labels: y.into_iter().map(u32::from).collect(),
        dim,
        num_classes: k,
        image_shape: Some((1, shape.0, shape.1)),
    };
    Ok(Split {
        train: to_ds(train_x, train_y, "train"),
        test: to_ds(test_x, test_y, "test"),
    })
}

fn check_count(img: &Path, n_img: usize, lab: &Path, n_lab: usize) -> Result<(), DataError> {
    if n_img != n_lab {
        return Err(DataError::CountMismatch {
            images: img.into(),
            n_images: n_img,
            labels: lab.into(),
            n_labels: n_lab,
        });
    }
    if n_img == 0 {
        return Err(DataError::Empty { path: img.into() });
    }
    Ok(())
}

fn check_labels(path: &Path, labels: &[u8], k: usize) -> Result<(), DataError> {
    match labels.iter().position(|&y| y as usize >= k) {
        Some(i) => Err(DataError::LabelOutOfRange {
            path: path.into(),
            place: format!("label #{i}"),
            label: labels[i] as i64,
            num_classes: k,
        }),
        None => Ok(()),
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.into(),
        error: source,
        hint: if path.exists() {
            String::new()
        } else {
            " (run scripts/setup-data.sh to fetch the data sets)".into()
        },
    };
    let raw = std::fs::read(path).map_err(io)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Read a whole IDX file and check its magic number, then that it holds at least the
/// `header` bytes of its kind.
fn read_idx(
    path: &Path,
    magic: u32,
    kind: &'static str,
    header: usize,
) -> Result<Vec<u8>, DataError> {
    let b = read_all(path)?;
    let truncated = |b: &[u8]| DataError::Truncated {
        path: path.into(),
        expected: header,
        actual: b.len(),
    };
    if b.len() < 4 {
        return Err(truncated(&b));
    }
    let found = be_u32(&b, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.into(),
            kind,
            found,
            expected: magic,
        });
    }
    if b.len() < header {
        return Err(truncated(&b));
    }
    Ok(b)
}

/// Read an IDX3 image file: returns the pixels (row-major `[n, rows*cols]`) and `(rows, cols)`.
///
/// # Errors
/// [`DataError::BadMagic`], [`DataError::Truncated`], [`DataError::Io`].
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, (usize, usize)), DataError> {
    let b = read_idx(path, 0x0803, "images (u8, 3 dims)", 16)?;
    let (n, r, c) = (
        be_u32(&b, 4) as usize,
        be_u32(&b, 8) as usize,
        be_u32(&b, 12) as usize,
    );
    if r == 0 || c == 0 {
        return Err(DataError::DimMismatch {
            path: path.into(),
            place: "header".into(),
            found: r * c,
            expected: 1,
        });
    }
    let expected = n
        .checked_mul(r)
        .and_then(|v| v.checked_mul(c))
        .and_then(|v| v.checked_add(16))
        .unwrap_or(usize::MAX);
    if b.len() != expected {
        return Err(DataError::Truncated {
            path: path.into(),
            expected,
            actual: b.len(),
        });
    }
    Ok((b[16..].to_vec(), (r, c)))
}

/// Read an IDX1 label file.
///
/// # Errors
/// [`DataError::BadMagic`], [`DataError::Truncated`], [`DataError::Io`].
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let b = read_idx(path, 0x0801, "labels (u8, 1 dim)", 8)?;
    let n = be_u32(&b, 4) as usize;
    if b.len() != 8 + n {
        return Err(DataError::Truncated {
            path: path.into(),
            expected: 8 + n,
            actual: b.len(),
        });
    }
    Ok(b[8..].to_vec())
}

/// Read a CSV file: label (non-negative integer) in the first column, numeric features after.
/// A first line is taken as a header when its first (label) cell is a non-empty word (not a
/// number); a first line with an empty or numeric label is data, checked like any other.
/// Returns
/// `(features [n, dim], labels, dim)`.
///
/// # Errors
/// [`DataError::BadCell`] with line and column, [`DataError::DimMismatch`] for a ragged row,
/// [`DataError::Empty`], [`DataError::Io`].
pub fn read_csv(path: &Path) -> Result<(Vec<f32>, Vec<u32>, usize), DataError> {
    let io = |source| DataError::Io {
        path: path.into(),
        error: source,
        hint: String::new(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(file);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut dim: Option<usize> = None;
    for (row_idx, rec) in rdr.records().enumerate() {
        let line = row_idx as u64 + 1;
        let rec = rec.map_err(|e| DataError::BadCell {
            path: path.into(),
            line,
            column: 1,
            message: e.to_string(),
        })?;
        if rec.is_empty() || (rec.len() == 1 && rec[0].is_empty()) {
            continue;
        }
        if row_idx == 0 && !rec[0].is_empty() && rec[0].parse::<f64>().is_err() {
            tracing::debug!(path = %path.display(), "line 1 read as a header");
            continue; // header
        }
        let bad = |column: usize, message: String| DataError::BadCell {
            path: path.into(),
            line,
            column,
            message,
        };
        let label: i64 = rec[0]
            .parse::<i64>()
            .map_err(|_| bad(1, format!("label '{}' is not an integer", &rec[0])))?;
        if !(0..MAX_CLASSES as i64).contains(&label) {
            return Err(DataError::LabelOutOfRange {
                path: path.into(),
                place: format!("line {line}"),
                label,
                num_classes: MAX_CLASSES,
            });
        }
        let d = rec.len() - 1;
        match dim {
            None => dim = Some(d),
            Some(e) if e != d => {
                return Err(DataError::DimMismatch {
                    path: path.into(),
                    place: format!("line {line}"),
                    found: d,
                    expected: e,
                })
            }
            _ => {}
        }
        for (j, cell) in rec.iter().enumerate().skip(1) {
            let v: f32 = cell
                .parse()
                .map_err(|_| bad(j + 1, format!("'{cell}' is not a number")))?;
            if !v.is_finite() {
                return Err(bad(j + 1, format!("'{cell}' is not finite")));
            }
            if v.abs() > MAX_ABS_FEATURE {
                return Err(bad(
                    j + 1,
                    format!("'{cell}' is beyond ±{MAX_ABS_FEATURE:e}: rescale the features"),
                ));
            }
            features.push(v);
        }
        labels.push(label as u32);
    }
    match dim {
        Some(d) if d > 0 && !labels.is_empty() => Ok((features, labels, d)),
        _ => Err(DataError::Empty { path: path.into() }),
    }
}

/// Load a CSV train/test pair (see [`read_csv`]). K = `num_classes` when given, else 1 + the
/// largest training label (then every class below it must have a training sample).
///
/// # Errors
/// [`DataError`] naming the offending file: [`DataError::LabelOutOfRange`] for a label `>= K`,
/// [`DataError::EmptyClasses`] when K is inferred and a class below it has no sample.
pub fn load_csv_pair(
    train: &Path,
    test: &Path,
    num_classes: Option<usize>,
) -> Result<Split, DataError> {
    let (trx, try_, d) = read_csv(train)?;
    let (tex, tey, d2) = read_csv(test)?;
    if d2 != d {
        return Err(DataError::DimMismatch {
            path: test.into(),
            place: "every line".into(),
            found: d2,
            expected: d,
        });
    }
    let k = num_classes.unwrap_or(*try_.iter().max().unwrap_or(&0) as usize + 1);
    if let Some(i) = try_.iter().position(|&y| y as usize >= k) {
        return Err(DataError::LabelOutOfRange {
            path: train.into(),
            place: format!("sample #{i}"),
            label: try_[i] as i64,
            num_classes: k,
        });
    }
    if let Some(i) = tey.iter().position(|&y| y as usize >= k) {
        return Err(DataError::LabelOutOfRange {
            path: test.into(),
            place: format!("sample #{i}"),
            label: tey[i] as i64,
            num_classes: k,
        });
    }
    let mk = |x, y, path: &Path| Dataset {
        name: path.display().to_string(),
        features: x,
        labels: y,
        dim: d,
        num_classes: k,
        image_shape: None,
    };
    let split = Split {
        train: mk(trx, try_, train),
        test: mk(tex, tey, test),
    };
    if num_classes.is_none() {
        let hint = format!("csv:{},{}", train.display(), test.display());
        check_no_empty_class(&split.train, train, &hint)?;
    }
    Ok(split)
}

/// With K inferred from the largest label, a class below it without a training sample means
/// that label is most likely a typo (one label 27 among ten classes would make K = 28).
/// `spec` is the `--dataset` value without `,K`, for the hint.
fn check_no_empty_class(train: &Dataset, path: &Path, spec: &str) -> Result<(), DataError> {
    let counts = train.class_counts();
    let empty = counts.iter().filter(|&&c| c == 0).count();
    if empty == 0 {
        return Ok(());
    }
    let k = train.num_classes;
    let at = train
        .labels
        .iter()
        .position(|&y| y as usize + 1 == k)
        .unwrap_or(0);
    Err(DataError::EmptyClasses {
        path: path.into(),
        place: format!("sample #{at}"),
        label: k as i64 - 1,
        num_classes: k,
        empty,
        spec_hint: format!("{spec},{k}"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// The real MNIST split (run `scripts/setup-data.sh` first); cached per test binary.
    pub(crate) fn mnist() -> &'static Split {
        use std::sync::OnceLock;
        static M: OnceLock<Split> = OnceLock::new();
        M.get_or_init(|| {
            load(&DatasetSpec::Mnist, &default_data_dir())
                .expect("MNIST missing: run scripts/setup-data.sh")
        })
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn idx_images(n: u32, r: u32, c: u32, extra: i64) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        for v in [n, r, c] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        let len = (n * r * c) as i64 + extra;
        b.extend(std::iter::repeat_n(7u8, len.max(0) as usize));
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 1];
        b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        b.extend_from_slice(labels);
        b
    }

    fn idx_dir(train_img: Vec<u8>, train_lab: Vec<u8>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "train-images-idx3-ubyte", &train_img);
        write(d.path(), "train-labels-idx1-ubyte", &train_lab);
        write(d.path(), "t10k-images-idx3-ubyte", &idx_images(2, 2, 2, 0));
        write(d.path(), "t10k-labels-idx1-ubyte", &idx_labels(&[0, 1]));
        d
    }

    #[test]
    fn real_mnist_loads_with_expected_shape() {
        let m = mnist();
        assert_eq!(m.train.len(), 60_000);
        assert_eq!(m.test.len(), 10_000);
        assert_eq!(m.train.dim, 784);
        assert_eq!(m.train.num_classes, 10);
        assert_eq!(m.train.labels[0], 5, "first MNIST training digit is a 5");
        assert!(m.train.features.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }

    #[test]
    fn real_fashion_mnist_loads_from_gz() {
        let f = load(&DatasetSpec::FashionMnist, &default_data_dir())
            .expect("Fashion-MNIST missing: run scripts/setup-data.sh");
        assert_eq!(
            (f.train.len(), f.test.len(), f.train.dim),
            (60_000, 10_000, 784)
        );
        assert_eq!(f.train.class_counts(), vec![6000; 10]);
    }

    #[test]
    fn good_idx_folder_loads() {
        let d = idx_dir(idx_images(3, 2, 2, 0), idx_labels(&[0, 2, 1]));
        let s = load(
            &DatasetSpec::Idx {
                dir: d.path().into(),
                num_classes: None,
            },
            Path::new("/"),
        )
        .unwrap();
        assert_eq!((s.train.len(), s.train.dim, s.train.num_classes), (3, 4, 3));
        assert!((s.train.features[0] - 7.0 / 255.0).abs() < 1e-7);
    }

    #[test]
    fn truncated_idx_is_rejected_with_path() {
        let d = idx_dir(idx_images(3, 2, 2, -5), idx_labels(&[0, 1, 1]));
        let e = load(
            &DatasetSpec::Idx {
                dir: d.path().into(),
                num_classes: None,
            },
            Path::new("/"),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    expected: 28,
                    actual: 23,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");
    }

    #[test]
    fn count_mismatch_is_rejected() {
        let d = idx_dir(idx_images(3, 2, 2, 0), idx_labels(&[0, 1]));
        let e = load(
            &DatasetSpec::Idx {
                dir: d.path().into(),
                num_classes: None,
            },
            Path::new("/"),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                DataError::CountMismatch {
                    n_images: 3,
                    n_labels: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_magic_is_rejected() {
        let d = idx_dir(idx_labels(&[0, 1, 2]), idx_labels(&[0, 1, 1]));
        let e = load(
            &DatasetSpec::Idx {
                dir: d.path().into(),
                num_classes: None,
            },
            Path::new("/"),
        )
        .unwrap_err();
        assert!(
            matches!(e, DataError::BadMagic { found: 0x0801, .. }),
            "{e}"
        );
    }

    #[test]
    fn named_label_out_of_range_is_rejected() {
        let d = idx_dir(idx_images(2, 2, 2, 0), idx_labels(&[0, 12]));
        let e = load_idx_dir(d.path(), "t", Some(10)).unwrap_err();
        assert!(
            matches!(e, DataError::LabelOutOfRange { label: 12, .. }),
            "{e}"
        );
    }

    #[test]
    fn missing_file_says_how_to_fetch() {
        let d = tempfile::tempdir().unwrap();
        let e = load(&DatasetSpec::Mnist, d.path()).unwrap_err();
        assert!(e.to_string().contains("setup-data.sh"), "{e}");
    }

    #[test]
    fn corrupt_gzip_is_an_io_error() {
        let d = idx_dir(idx_images(2, 2, 2, 0), idx_labels(&[0, 1]));
        std::fs::remove_file(d.path().join("train-images-idx3-ubyte")).unwrap();
        write(
            d.path(),
            "train-images-idx3-ubyte.gz",
            b"\x1f\x8bnot really gzip",
        );
        let e = load(
            &DatasetSpec::Idx {
                dir: d.path().into(),
                num_classes: None,
            },
            Path::new("/"),
        )
        .unwrap_err();
        assert!(matches!(e, DataError::Io { .. }), "{e}");
    }

    #[test]
    fn csv_pair_loads_with_header() {
        let d = tempfile::tempdir().unwrap();
        let tr = write(d.path(), "tr.csv", b"label,a,b\n0,1.5,2\n2,0,-1\n1,3,3\n");
        let te = write(d.path(), "te.csv", b"1,0,0\n");
        let s = load_csv_pair(&tr, &te, None).unwrap();
        assert_eq!((s.train.len(), s.train.dim, s.train.num_classes), (3, 2, 3));
        assert_eq!(s.train.row(1), &[0.0, -1.0]);
    }

    /// The error of loading `train` (with a one-row test file), and its (line, column) when
    /// it is a [`DataError::BadCell`].
    fn csv_error(train: &[u8]) -> (DataError, Option<(u64, usize)>) {
        let d = tempfile::tempdir().unwrap();
        let tr = write(d.path(), "tr.csv", train);
        let te = write(d.path(), "te.csv", b"1,0,0\n");
        let e = load_csv_pair(&tr, &te, None).unwrap_err();
        let at = match &e {
            DataError::BadCell { line, column, .. } => Some((*line, *column)),
            _ => None,
        };
        (e, at)
    }

    #[test]
    fn csv_non_numeric_cell_names_line_and_column() {
        let (e, at) = csv_error(b"0,1,2\n1,x,3\n");
        assert_eq!(at, Some((2, 2)), "{e}");
    }

    #[test]
    fn csv_ragged_row_and_test_label_out_of_range() {
        let d = tempfile::tempdir().unwrap();
        let tr = write(d.path(), "tr.csv", b"0,1,2\n1,3\n");
        let te = write(d.path(), "te.csv", b"1,0,0\n");
        let e = load_csv_pair(&tr, &te, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::DimMismatch {
                    found: 1,
                    expected: 2,
                    ..
                }
            ),
            "{e}"
        );
        let tr = write(d.path(), "tr2.csv", b"0,1,2\n1,3,4\n");
        let te = write(d.path(), "te2.csv", b"5,0,0\n");
        let e = load_csv_pair(&tr, &te, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::LabelOutOfRange {
                    label: 5,
                    num_classes: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn csv_label_typo_is_caught_unless_k_is_given() {
        let d = tempfile::tempdir().unwrap();
        let tr = write(d.path(), "tr.csv", b"0,1\n1,2\n27,3\n2,4\n");
        let te = write(d.path(), "te.csv", b"1,0\n");
        // K inferred: label 27 would make 28 classes, 25 of them empty.
        let e = load_csv_pair(&tr, &te, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::EmptyClasses {
                    label: 27,
                    num_classes: 28,
                    empty: 24,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("te.csv,28"), "{e}");
        // K given: the label is out of range, named with its sample.
        let e = load_csv_pair(&tr, &te, Some(10)).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::LabelOutOfRange {
                    label: 27,
                    num_classes: 10,
                    ..
                }
            ),
            "{e}"
        );
        // K given and larger than the labels seen: empty classes are the user's call.
        let ok = write(d.path(), "ok.csv", b"0,1\n2,3\n");
        let s = load_csv_pair(&ok, &te, Some(4)).unwrap();
        assert_eq!(s.train.num_classes, 4);
        assert!(load_csv_pair(&ok, &te, None).is_err(), "class 1 is empty");
        // Through the spec string.
        let spec: DatasetSpec = format!("csv:{},{},4", ok.display(), te.display())
            .parse()
            .unwrap();
        assert_eq!(load(&spec, d.path()).unwrap().train.num_classes, 4);
    }

    #[test]
    fn csv_absurd_feature_is_refused_with_its_place() {
        let (e, at) = csv_error(b"0,1,2\n1,1e30,4\n");
        assert_eq!(at, Some((2, 2)), "{e}");
    }

    #[test]
    fn csv_first_row_with_an_empty_label_is_data_not_a_header() {
        let (e, at) = csv_error(b",0.5,0.5\n0,1,2\n1,3,4\n");
        assert_eq!(at, Some((1, 1)), "{e}");
        // A numeric first row with words elsewhere is data too (the bad cell is named).
        let (e, at) = csv_error(b"0,x,0.5\n0,1,2\n1,3,4\n");
        assert_eq!(at, Some((1, 2)), "{e}");
    }

    #[test]
    fn spec_parsing() {
        assert_eq!("mnist".parse::<DatasetSpec>().unwrap(), DatasetSpec::Mnist);
        assert_eq!(
            "csv:a.csv,b.csv,10".parse::<DatasetSpec>().unwrap(),
            DatasetSpec::Csv {
                train: "a.csv".into(),
                test: "b.csv".into(),
                num_classes: Some(10)
            }
        );
        assert_eq!(
            "idx:some/dir,3".parse::<DatasetSpec>().unwrap().to_string(),
            "idx:some/dir,3"
        );
        assert!("csv:a.csv,b.csv,1".parse::<DatasetSpec>().is_err());
        assert!("csv:a.csv,b.csv,c.csv".parse::<DatasetSpec>().is_err());
        assert!(matches!(
            "csv:a.csv,b.csv".parse::<DatasetSpec>(),
            Ok(DatasetSpec::Csv { .. })
        ));
        assert!("csv:a.csv".parse::<DatasetSpec>().is_err());
        assert!("cifar".parse::<DatasetSpec>().is_err());
    }

    #[test]
    fn stratified_subsample_keeps_proportions() {
        let m = &mnist().train;
        let idx = m.stratified_indices(3000, 1);
        assert_eq!(idx.len(), 3000);
        let sub = m.select(&idx);
        let full = m.class_counts();
        for (c, &k) in sub.class_counts().iter().enumerate() {
            let expected = 3000.0 * full[c] as f64 / 60_000.0;
            assert!(
                (k as f64 - expected).abs() <= 1.0,
                "class {c}: {k} vs {expected}"
            );
        }
        assert_eq!(idx, m.stratified_indices(3000, 1), "seeded");
    }
}
