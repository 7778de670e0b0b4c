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
