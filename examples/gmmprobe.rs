//! Probe: partition quality of variants on a saved attribution pass.
use rlap::attribution::{attribute, AttributionMode};
use rlap::experiment::{prepare, ExperimentConfig};
use rlap::model::{Arch, Model, ModelSpec};
use rlap::partition::*;
use rlap::progress::Progress;
use rlap::train::{train, Optimizer, Scope, TrainConfig};
fn main() {
    rlap::cpu::configure_threads();
    let epochs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(5);
    let cfg = ExperimentConfig {
        dataset: "fashion-mnist".parse().unwrap(),
        ..Default::default()
    };
    let data = prepare(&cfg).unwrap();
    let spec = ModelSpec {
        arch: Arch::Mlp,
        input_dim: 784,
        image_shape: Some((1, 28, 28)),
        hidden: 256,
        num_classes: 10,
    };
    let m = Model::new(spec, &cfg.device, 1).unwrap();
    let t = std::time::Instant::now();
    train(
        &m,
        &data.noisy,
        &TrainConfig {
            epochs,
            batch_size: 64,
            optimizer: Optimizer::Adam {
                lr: 1e-3,
                weight_decay: 0.0,
            },
            scope: Scope::All,
            seed: 1,
        },
        &Progress::hidden(),
        "i",
    )
    .unwrap();
    eprintln!("train {:.1}s", t.elapsed().as_secs_f64());
    let pred = rlap::train::predict(&m, &data.test).unwrap();
    eprintln!(
        "test acc {:.4}",
        rlap::evaluation::classification_report(&pred, &data.test.labels, 10).accuracy
    );
    for mode in [AttributionMode::LabelGradient] {
        let a = attribute(&m, &data.noisy, mode, 256, &Progress::hidden()).unwrap();
        let nan = a.values.iter().filter(|v| !v.is_finite()).count();
        let loss: Vec<f64> = a.loss.iter().map(|&l| l as f64).collect();
        let r = data.truth.detection_report(&loss, &vec![false; loss.len()]);
        eprintln!("{mode}: nonfinite {nan}; loss-only AUROC {:.4}", r.auroc);
        let t = std::time::Instant::now();
        match fit_partition(
            &a.values,
            a.n,
            a.hidden,
            &a.loss,
            &PartitionParams::default(),
        ) {
            Ok(p) => {
                let r = data.truth.detection_report(&p.posterior_noisy, &p.noisy);
                eprintln!("  gmm {:.1}s {:?}", t.elapsed().as_secs_f64(), r);
            }
            Err(e) => eprintln!("  gmm err {e} after {:.1}s", t.elapsed().as_secs_f64()),
        }
        // dump for offline probing
        let mut bytes = Vec::new();
        for v in &a.values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(format!("/tmp/attr-{mode}.f32"), bytes).unwrap();
        let mut lb = Vec::new();
        for v in &a.loss {
            lb.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(format!("/tmp/loss-{mode}.f32"), lb).unwrap();
    }
    let mut tb = Vec::new();
    for i in 0..data.noisy.len() {
        tb.push(data.truth.is_corrupted(i) as u8);
    }
    std::fs::write("/tmp/truth.u8", tb).unwrap();
    let mut yb = Vec::new();
    for &y in &data.noisy.labels {
        yb.extend_from_slice(&y.to_le_bytes());
    }
    std::fs::write("/tmp/labels.u32", yb).unwrap();
}
