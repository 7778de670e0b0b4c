use super::*;
use crate::data::tests::mnist;
use crate::evaluation::classification_report;
use crate::model::tests::mnist_spec;
use crate::model::Arch;

fn adam() -> Optimizer {
    Optimizer::Adam {
        lr: 1e-3,
        weight_decay: 0.0,
    }
}

/// The hand-written head and MLP gradients against candle's autograd on an MNIST batch,
/// for both architectures and both scopes, on a partly trained and pruned model (dead
/// ReLUs, zeroed rows).
#[test]
fn hand_written_gradients_match_autograd() {
    let split = mnist();
    let data = &split.train;
    let idx: Vec<usize> = (0..96).collect();
    let (x, y) = batch_tensors(data, &idx, &Device::Cpu).unwrap();
    // MNIST's blank background makes whole pooling windows tie exactly; the reference's
    // `max` sends a tie's gradient to every tied position, the CPU kernels (as PyTorch) to
    // the first. A small deterministic jitter breaks the ties so both must agree.
    let jitter: Vec<f32> = (0..x.elem_count())
        .map(|i| ((i * 7919 % 1000) as f32) * 1e-5)
        .collect();
    let jitter = Tensor::from_vec(jitter, x.dims(), &Device::Cpu).unwrap();
    let x = (x + jitter).unwrap();
    for arch in [Arch::Mlp, Arch::Cnn] {
        let mut m = Model::new(mnist_spec(arch, 32), &Device::Cpu, 3).unwrap();
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: 64,
            optimizer: adam(),
            scope: Scope::All,
            seed: 1,
            mixup: 0.0,
            ema: 0.0,
        };
        let few = data.select(&(0..512).collect::<Vec<_>>());
        train(&m, &few, &cfg, &Progress::hidden(), "t").unwrap();
        m.prune(&[0, 5, 7]).unwrap();
        // Soft targets: a deterministic distribution per row (label correction, mixup).
        let k = 10;
        let soft: Vec<f32> = (0..96 * k)
            .map(|i| 1.0 + ((i * 31 % 17) as f32))
            .collect::<Vec<_>>()
            .chunks(k)
            .flat_map(|r| {
                let z: f32 = r.iter().sum();
                r.iter().map(move |v| v / z).collect::<Vec<_>>()
            })
            .collect();
        let soft = Tensor::from_vec(soft, (96, k), &Device::Cpu).unwrap();
        // Likelihood vectors (forward correction) as a mixup batch has them: two terms,
        // values in [0, 1], some of them 0.
        let lik = |seed: usize| {
            let v: Vec<f32> = (0..96 * k)
                .map(|i| ((i * 37 + seed) % 11) as f32 / 10.0)
                .collect();
            Tensor::from_vec(v, (96, k), &Device::Cpu).unwrap()
        };
        let likelihood = Objective::Likelihood(vec![(0.7, lik(3)), (0.3, lik(5))]);
        let soft = Objective::Soft(soft);
        for (scope, objective) in [Scope::All, Scope::Head]
            .into_iter()
            .flat_map(|s| [(s, None), (s, Some(&soft)), (s, Some(&likelihood))])
        {
            let input = match scope {
                Scope::All => x.clone(),
                Scope::Head => m.body(&x).unwrap().detach(),
            };
            // The MLP's whole-model gradients twice: on the CPU's host path (`mlp_cpu`) and,
            // from a non-contiguous copy of the input, on candle's tensor operations.
            let mut inputs = vec![input.clone()];
            if arch == Arch::Mlp && scope == Scope::All {
                inputs.push(input.t().unwrap().contiguous().unwrap().t().unwrap());
            }
            let results: Vec<_> = inputs
                .iter()
                .map(|input| match objective {
                    None => loss_and_grads(&m, input, &y, scope).unwrap(),
                    Some(Objective::Soft(t)) => soft_loss_and_grads(&m, input, t, scope).unwrap(),
                    Some(o) => objective_loss_and_grads(&m, input, o, scope).unwrap(),
                })
                .collect();
            let logits = match scope {
                Scope::All => m.forward(&x).unwrap(),
                Scope::Head => m.head(&m.fc(&input).unwrap()).unwrap(),
            };
            let ref_loss = match objective {
                None => cross_entropy(&logits, &y).unwrap(),
                Some(Objective::Soft(t)) => {
                    let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
                    ((log_p * t).unwrap().sum_all().unwrap() * (-1.0 / 96.0)).unwrap()
                }
                Some(Objective::Likelihood(terms)) => {
                    // −(1/B) Σ_m w_m Σ_b log ⟨softmax_b, c_mb⟩, written out.
                    let p = candle_nn::ops::softmax(&logits, D::Minus1).unwrap();
                    let mut l = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
                    for (w, c) in terms {
                        let s = (&p * c).unwrap().sum(1).unwrap().log().unwrap();
                        l = (l + (s.sum_all().unwrap() * (-w / 96.0)).unwrap()).unwrap();
                    }
                    l
                }
            };
            let ref_grads = ref_loss.backward().unwrap();
            let l = |t: &Tensor| t.to_scalar::<f32>().unwrap();
            let what = match objective {
                None => "labels",
                Some(Objective::Soft(_)) => "soft",
                Some(Objective::Likelihood(_)) => "likelihood",
            };
            for (path, (loss, grads)) in results.iter().enumerate() {
                assert!(
                    (l(loss) - l(&ref_loss)).abs() < 1e-5,
                    "{arch} {scope:?} {what} loss (path {path})"
                );
                for p in m.params() {
                    let trained = scope == Scope::All || p.group == Group::Head;
                    let (got, want) = (grads.get(&p.var), ref_grads.get(&p.var));
                    if !trained {
                        assert!(got.is_none(), "{arch} {scope:?} {}: frozen", p.name);
                        continue;
                    }
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let (got, want) = (flat(got.unwrap()), flat(want.unwrap()));
                    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
                    let diff = got
                        .iter()
                        .zip(&want)
                        .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
                    assert!(
                        diff / scale < 1e-4,
                        "{arch} {scope:?} {what} {} (path {path}): rel diff {}",
                        p.name,
                        diff / scale
                    );
                }
            }
        }
    }
}

#[test]
fn mixup_and_soft_targets_train_and_refuse_bad_recipes() {
    let split = mnist();
    let few = split.train.select(&(0..1024).collect::<Vec<_>>());
    let k = few.num_classes;
    // One-hot soft targets with mixup learn the training labels (a separable-enough set).
    let onehot: Vec<f32> = few
        .labels
        .iter()
        .flat_map(|&c| (0..k).map(move |j| f32::from(j == c as usize)))
        .collect();
    let m = Model::new(mnist_spec(Arch::Mlp, 32), &Device::Cpu, 2).unwrap();
    let cfg = TrainConfig {
        epochs: 8,
        batch_size: 64,
        optimizer: adam(),
        scope: Scope::All,
        seed: 1,
        mixup: 1.0,
        ema: 0.0,
    };
    let accuracy = |m: &Model| {
        let p = predict(m, &few).unwrap();
        p.iter().zip(&few.labels).filter(|(a, b)| a == b).count() as f64 / 1024.0
    };
    train_soft(&m, &few, &onehot, &cfg, &Progress::hidden(), "t").unwrap();
    assert!(
        accuracy(&m) > 0.9,
        "mixup: training accuracy {}",
        accuracy(&m)
    );
    // The weight average ends elsewhere than the last step, learns as well, and keeps
    // pruned neurons at zero (their weights are zero at every step).
    let pruned_model = || {
        let mut m = Model::new(mnist_spec(Arch::Mlp, 32), &Device::Cpu, 2).unwrap();
        m.prune(&[1, 4]).unwrap();
        m
    };
    let (avg, last) = (pruned_model(), pruned_model());
    let with_ema = TrainConfig {
        ema: 0.99,
        ..cfg.clone()
    };
    train_soft(&avg, &few, &onehot, &with_ema, &Progress::hidden(), "t").unwrap();
    train_soft(&last, &few, &onehot, &cfg, &Progress::hidden(), "t").unwrap();
    assert!(
        accuracy(&avg) > 0.9,
        "average: training accuracy {}",
        accuracy(&avg)
    );
    let w = |m: &Model| m.param("fc.weight").to_vec2::<f32>().unwrap();
    assert!(w(&avg)[1].iter().chain(&w(&avg)[4]).all(|&v| v == 0.0));
    assert_ne!(
        w(&avg)[0],
        w(&last)[0],
        "the average is not the last step's weights"
    );
    let e = train(
        &m,
        &few,
        &TrainConfig {
            ema: 1.0,
            ..cfg.clone()
        },
        &Progress::hidden(),
        "t",
    )
    .unwrap_err();
    assert!(e.to_string().contains("decay"), "{e}");
    // Wrong lengths and a negative α are refused with the reason.
    let e = train_soft(&m, &few, &onehot[1..], &cfg, &Progress::hidden(), "t").unwrap_err();
    assert!(e.to_string().contains("soft targets"), "{e}");
    let bad = TrainConfig { mixup: -1.0, ..cfg };
    let e = train(&m, &few, &bad, &Progress::hidden(), "t").unwrap_err();
    assert!(e.to_string().contains("mixup"), "{e}");
}

/// The likelihood objective stays exact where ⟨p, c⟩ underflows f32 (a logit gap of 400):
/// loss and gradient equal autograd's of the same formula and the closed form `p − q`.
#[test]
fn likelihood_objective_is_exact_when_saturated() {
    let logits =
        Var::from_slice(&[0f32, 200.0, -200.0, 1.0, 2.0, 3.0], (2, 3), &Device::Cpu).unwrap();
    // Row 0 is likely only as class 2 or (0.5) class 0; row 1 only as class 1.
    let c = Tensor::from_slice(&[0.5f32, 0.0, 1.0, 0.0, 1.0, 0.0], (2, 3), &Device::Cpu).unwrap();
    let objective = Objective::Likelihood(vec![(1.0, c)]);
    let (loss, g) = logit_loss_and_grad(logits.as_tensor(), &objective).unwrap();
    let reference = objective_loss(logits.as_tensor(), &objective).unwrap();
    let ref_g = reference.backward().unwrap();
    let ref_g = ref_g
        .get(logits.as_tensor())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let g = g.to_vec2::<f32>().unwrap();
    let (l, rl) = (
        loss.to_scalar::<f32>().unwrap(),
        reference.to_scalar::<f32>().unwrap(),
    );
    // Row 0: p = (e^-200, 1, e^-400), log ⟨p, c⟩ = log(0.5·e^-200 + e^-400) ≈ ln 0.5 - 200.
    // Row 1: log p_1 = 2 - log(e + e^2 + e^3).
    let lse1 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    let want = (-(0.5f64.ln() - 200.0) - (2.0 - lse1)) / 2.0;
    assert!(
        l.is_finite() && (l as f64 - want).abs() < 1e-3,
        "loss {l} vs {want}"
    );
    assert!((l - rl).abs() < 1e-3, "loss {l} vs autograd {rl}");
    // Row 0: p ≈ e_1 and q ≈ e_0 (class 0 is e^200 times likelier than class 2 under c).
    let p1: Vec<f64> = [1f64, 2.0, 3.0].iter().map(|z| (z - lse1).exp()).collect();
    let want = [
        [-0.5, 0.5, 0.0],
        [p1[0] / 2.0, (p1[1] - 1.0) / 2.0, p1[2] / 2.0],
    ];
    for r in 0..2 {
        for k in 0..3 {
            assert!(
                (g[r][k] as f64 - want[r][k]).abs() < 1e-5,
                "{g:?} vs {want:?}"
            );
            assert!(
                (g[r][k] - ref_g[r][k]).abs() < 1e-5,
                "{g:?} vs autograd {ref_g:?}"
            );
        }
    }
}

/// Forward correction with the noise's own transition matrix learns the true classes
/// through pair noise (40 % of class c labelled c + 1) that plain training on the same
/// labels copies; wrong likelihood rows are refused with the reason.
#[test]
fn forward_correction_learns_through_pair_noise() {
    let split = mnist();
    let n = 2048;
    let mut noisy = split.train.select(&(0..n).collect::<Vec<_>>());
    let k = noisy.num_classes;
    for (i, y) in noisy.labels.iter_mut().enumerate() {
        if i % 5 < 2 {
            *y = (*y + 1) % k as u32;
        }
    }
    // c_bi = T[i, ỹ_b] with T = 0.6·I + 0.4·(shift by one).
    let likelihoods: Vec<f32> = noisy
        .labels
        .iter()
        .flat_map(|&g| {
            (0..k).map(move |i| match () {
                _ if i == g as usize => 0.6,
                _ if (i + 1) % k == g as usize => 0.4,
                _ => 0.0,
            })
        })
        .collect();
    let cfg = TrainConfig {
        epochs: 10,
        batch_size: 64,
        optimizer: adam(),
        scope: Scope::All,
        seed: 1,
        mixup: 0.0,
        ema: 0.0,
    };
    // Scored on the (clean) test split: what the model learnt, not what it memorised.
    let test = &split.test;
    let accuracy = |m: &Model| {
        let p = predict(m, test).unwrap();
        p.iter().zip(&test.labels).filter(|(a, b)| a == b).count() as f64 / test.len() as f64
    };
    let plain = Model::new(mnist_spec(Arch::Mlp, 64), &Device::Cpu, 2).unwrap();
    train(&plain, &noisy, &cfg, &Progress::hidden(), "t").unwrap();
    let forward = Model::new(mnist_spec(Arch::Mlp, 64), &Device::Cpu, 2).unwrap();
    train_forward(
        &forward,
        &noisy,
        &likelihoods,
        &cfg,
        &Progress::hidden(),
        "t",
    )
    .unwrap();
    let (a_plain, a_forward) = (accuracy(&plain), accuracy(&forward));
    assert!(
        a_forward > 0.85 && a_forward > a_plain + 0.15,
        "test accuracy: forward {a_forward}, plain {a_plain}"
    );
    let mut bad = likelihoods.clone();
    bad[3] = 1.5;
    let e = train_forward(&forward, &noisy, &bad, &cfg, &Progress::hidden(), "t").unwrap_err();
    assert!(e.to_string().contains("row 0"), "{e}");
    bad[3] = 0.0;
    bad[..k].fill(0.0);
    let e = train_forward(&forward, &noisy, &bad, &cfg, &Progress::hidden(), "t").unwrap_err();
    assert!(e.to_string().contains("all zero"), "{e}");
    let e = train_forward(&forward, &noisy, &bad[1..], &cfg, &Progress::hidden(), "t").unwrap_err();
    assert!(e.to_string().contains("likelihood vectors"), "{e}");
}

#[test]
fn fused_adam_matches_tensor_ops_adam() {
    let m1 = Model::new(mnist_spec(Arch::Mlp, 16), &Device::Cpu, 1).unwrap();
    let m2 = m1.deep_clone().unwrap();
    let kind = Optimizer::Adam {
        lr: 1e-2,
        weight_decay: 1e-3,
    };
    let mut o1 = OptimizerState::new(&m1, kind, Scope::All).unwrap();
    let mut o2 = OptimizerState::new(&m2, kind, Scope::All).unwrap();
    o2.dev_state = o2
        .slots
        .iter()
        .map(|s| (s.var.zeros_like().unwrap(), s.var.zeros_like().unwrap()))
        .collect();
    let d = &mnist().train;
    for step in 0..3 {
        let idx: Vec<usize> = (step * 32..(step + 1) * 32).collect();
        let (x, y) = batch_tensors(d, &idx, &Device::Cpu).unwrap();
        let g1 = cross_entropy(&m1.forward(&x).unwrap(), &y)
            .unwrap()
            .backward()
            .unwrap();
        o1.step(&g1).unwrap();
        let g2 = cross_entropy(&m2.forward(&x).unwrap(), &y)
            .unwrap()
            .backward()
            .unwrap();
        o2.step += 1;
        for i in 0..o2.slots.len() {
            let g = g2.get(&o2.slots[i].var).unwrap().contiguous().unwrap();
            o2.step_tensor_ops(i, &g).unwrap();
        }
    }
    for (a, b) in m1.params().iter().zip(m2.params()) {
        let d = (a.var.as_tensor() - b.var.as_tensor())
            .unwrap()
            .abs()
            .unwrap();
        let d = d
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{}: {d}", a.name);
    }
}

#[test]
fn training_learns_mnist_slice() {
    let d = &mnist().train;
    let train_set = d.select(&d.stratified_indices(3000, 1));
    let m = Model::new(mnist_spec(Arch::Mlp, 64), &Device::Cpu, 1).unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 64,
        optimizer: adam(),
        scope: Scope::All,
        seed: 1,
        mixup: 0.0,
        ema: 0.0,
    };
    let stats = train(&m, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
    assert_eq!(stats.epoch_seconds.len(), 3);
    let test = &mnist().test;
    let test = test.select(&(0..2000).collect::<Vec<_>>());
    let acc = classification_report(&predict(&m, &test).unwrap(), &test.labels, 10).accuracy;
    // An MLP on 3,000 MNIST digits for 3 epochs reaches ~0.9 on the test set.
    assert!(acc > 0.85, "accuracy {acc}");
}

#[test]
fn head_scope_leaves_body_untouched_and_pruned_neurons_zero() {
    let d = &mnist().train;
    let train_set = d.select(&(0..512).collect::<Vec<_>>());
    let mut m = Model::new(mnist_spec(Arch::Mlp, 32), &Device::Cpu, 2).unwrap();
    m.prune(&[1, 4, 9]).unwrap();
    let body_before = m.param("body.0.weight").to_vec2::<f32>().unwrap();
    for scope in [Scope::Head, Scope::All] {
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 64,
            optimizer: Optimizer::Adam {
                lr: 1e-2,
                weight_decay: 1e-5,
            },
            scope,
            seed: 3,
            mixup: 0.0,
            ema: 0.0,
        };
        train(&m, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
        let w = m.param("fc.weight").to_vec2::<f32>().unwrap();
        let b = m.param("fc.bias").to_vec1::<f32>().unwrap();
        for j in [1, 4, 9] {
            assert!(w[j].iter().all(|&v| v == 0.0), "{scope:?}: row {j} regrew");
            assert_eq!(b[j], 0.0);
        }
        assert!(w[0].iter().any(|&v| v != 0.0));
        if scope == Scope::Head {
            assert_eq!(
                m.param("body.0.weight").to_vec2::<f32>().unwrap(),
                body_before
            );
        }
    }
    assert_ne!(
        m.param("body.0.weight").to_vec2::<f32>().unwrap(),
        body_before
    );
}

#[test]
fn sgd_reduces_loss() {
    let d = &mnist().train;
    let train_set = d.select(&(0..2048).collect::<Vec<_>>());
    let m = Model::new(mnist_spec(Arch::Mlp, 64), &Device::Cpu, 4).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 64,
        optimizer: Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
        },
        scope: Scope::All,
        seed: 1,
        mixup: 0.0,
        ema: 0.0,
    };
    let stats = train(&m, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
    // ln 10 = 2.30 at chance; SGD with momentum gets well below 1 in two epochs.
    assert!(stats.final_loss < 1.0, "loss {}", stats.final_loss);
}

#[test]
fn cnn_learns_with_adam() {
    let d = &mnist().train;
    let train_set = d.select(&(0..2048).collect::<Vec<_>>());
    let m = Model::new(mnist_spec(Arch::Cnn, 64), &Device::Cpu, 4).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 64,
        optimizer: adam(),
        scope: Scope::All,
        seed: 1,
        mixup: 0.0,
        ema: 0.0,
    };
    let stats = train(&m, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
    assert!(stats.final_loss < 1.0, "loss {}", stats.final_loss);
}
