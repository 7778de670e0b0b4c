//! IDX files (MNIST's and Fashion-MNIST's format, raw or gzip): images `[n, rows·cols]` scaled
//! to [0, 1] and labels, with their counts and class range checked.

use super::*;

pub(super) fn find_idx(dir: &Path, stem: &str) -> PathBuf {
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

pub(super) fn check_count(
    img: &Path,
    n_img: usize,
    lab: &Path,
    n_lab: usize,
) -> Result<(), DataError> {
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

pub(super) fn check_labels(path: &Path, labels: &[u8], k: usize) -> Result<(), DataError> {
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

pub(super) fn read_all(path: &Path) -> Result<Vec<u8>, DataError> {
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

pub(super) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Read a whole IDX file and check its magic number, then that it holds at least the
/// `header` bytes of its kind.
pub(super) fn read_idx(
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
