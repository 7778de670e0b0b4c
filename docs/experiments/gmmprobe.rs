//! Probe behind the `--partition-features` decision: trains the MLP on Fashion-MNIST with 40 %
//! symmetric label noise, reports the partition in both feature spaces and dumps the
//! attributions, losses, given labels and the hidden mask to /tmp for
//! `docs/experiments/partition_space.py`.
//!
//! Usage: `cargo run --release --example gmmprobe [EPOCHS=5]`. Expected here: the summary space
//! reaches F1 ≈ 0.94; the paper's 256-d space fails in linfa 0.8.1 (NaN during EM) and reaches
//! F1 ≈ 0.47 under scikit-learn.
use rlap::attribution::{attribute, AttributionMode};
use rlap::experiment::{prepare, ExperimentConfig};
use rlap::model::{Arch, Model, ModelSpec};
use rlap::partition::{fit_partition, PartitionFeatures, PartitionParams};
use rlap::progress::Progress;
use rlap::train::{train, TrainConfig};

fn dump<T: Copy>(path: &str, values: &[T], to_bytes: impl Fn(T) -> Vec<u8>) {
    let bytes: Vec<u8> = values.iter().flat_map(|&v| to_bytes(v)).collect();
    std::fs::write(path, bytes).expect("write /tmp");
}

fn main() {
    rlap::cpu::configure_threads();
    let epochs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let cfg = ExperimentConfig {
        dataset: "fashion-mnist".parse().expect("known data set"),
        ..Default::default()
    };
    let data = prepare(&cfg).expect("run scripts/setup-data.sh");
    let spec = ModelSpec::for_dataset(Arch::Mlp, 256, &data.noisy);
    let m = Model::new(spec, &cfg.device, 1).expect("model");
    let recipe = TrainConfig::paper(epochs, 1);
    train(&m, &data.noisy, &recipe, &Progress::visible(), "Initial").expect("train");
    let a = attribute(
        &m,
        &data.noisy,
        AttributionMode::LabelGradient,
        256,
        &Progress::hidden(),
    )
    .expect("attribute");
    for features in [PartitionFeatures::Summary, PartitionFeatures::Attribution] {
        let params = PartitionParams {
            features,
            ..Default::default()
        };
        match fit_partition(&a.values, a.n, a.hidden, &a.loss, &params) {
            Ok(p) => println!(
                "{features}: {:?}",
                data.truth.detection_report(&p.posterior_noisy, &p.noisy)
            ),
            Err(e) => println!("{features}: {e}"),
        }
    }
    dump("/tmp/attr-label-gradient.f32", &a.values, |v: f32| {
        v.to_le_bytes().to_vec()
    });
    dump("/tmp/loss-label-gradient.f32", &a.loss, |v: f32| {
        v.to_le_bytes().to_vec()
    });
    dump("/tmp/labels.u32", &data.noisy.labels, |v: u32| {
        v.to_le_bytes().to_vec()
    });
    let truth: Vec<u8> = (0..data.noisy.len())
        .map(|i| data.truth.is_corrupted(i) as u8)
        .collect();
    std::fs::write("/tmp/truth.u8", truth).expect("write /tmp");
}
