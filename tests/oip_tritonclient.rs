//! The Open Inference Protocol (KServe v2) routes driven by Triton's own HTTP client
//! (`tritonclient[http]` from PyPI, `make setup-clients`), against the real ONNX Runtime on
//! loopback: `tests/python/oip_tritonclient.py` checks health, metadata, readiness, inference
//! with binary and JSON tensors against candle's logits, the protocol's errors, and parses the
//! store's `config.pbtxt` files as Triton's `ModelConfig`.

use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use rlap::api::{router, AppState, ServeConfig};
use rlap::data::{default_data_dir, load, DatasetSpec};
use rlap::model::{Arch, Model, ModelSpec};
use rlap::progress::Progress;
use rlap::store::{ModelStore, PublishInfo};
use rlap::train::{train, TrainConfig};

mod common;

#[test]
fn tritonclient_talks_to_rlap_over_the_open_inference_protocol() {
    let Some(python) = common::clients::clients_python("oip_tritonclient") else {
        return;
    };
    let split = load(&DatasetSpec::Mnist, &default_data_dir()).expect("run scripts/setup-data.sh");
    let set = split.train.select(&split.train.stratified_indices(1000, 7));
    let mut model =
        Model::new(ModelSpec::for_dataset(Arch::Mlp, 64, &set), &Device::Cpu, 7).unwrap();
    train(
        &model,
        &set,
        &TrainConfig::paper(1, 7),
        &Progress::hidden(),
        "t",
    )
    .unwrap();
    model.prune(&[3, 4]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::open(dir.path(), 5).unwrap();
    store
        .publish("digits", &model, PublishInfo::default())
        .unwrap();

    // Eight real test images and the model's own logits for them.
    let n = 8;
    let features = &split.test.features[..n * 784];
    let logits = model
        .forward(&Tensor::from_slice(features, (n, 784), &Device::Cpu).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let rows: Vec<&[f32]> = features.chunks(784).collect();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        serde_json::json!({ "features": rows, "logits": logits, "version": "1" }).to_string(),
    )
    .unwrap();

    let cfg = ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        model: "digits".into(),
        admin_token: None,
        poll_interval: Duration::from_secs(60),
        max_batch: 64,
    };
    let state = AppState::new(store, cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, router(state)).await.unwrap() });

    let t = Instant::now();
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/oip_tritonclient.py"
        ))
        .args(["--url", &addr.to_string(), "--model", "digits"])
        .arg("--cases")
        .arg(&cases)
        .arg("--store")
        .arg(dir.path())
        .output()
        .expect("running the tritonclient script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the tritonclient checks failed ({})",
        out.status
    );
    assert!(
        stdout.contains("tritonclient: all checks passed"),
        "{stdout}"
    );
    eprintln!(
        "tritonclient checks took {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
