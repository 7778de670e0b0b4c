//! CSV data sets: one row per sample, features then the label last; a train/test pair with
//! K given or inferred (an inferred K with an empty class is refused, naming it).

use super::*;

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
pub(super) fn check_no_empty_class(
    train: &Dataset,
    path: &Path,
    spec: &str,
) -> Result<(), DataError> {
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
