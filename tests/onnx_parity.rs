//! ONNX export parity against the real ONNX Runtime library (`scripts/setup-ort.sh`; `make test`
//! runs it): logits of ONNX Runtime vs candle's forward on 1,000 real MNIST test images, for the
//! MLP and the CNN, unpruned and pruned (pruned neurons removed structurally in the export).

use candle_core::Device;
use prost::Message;
use rlap::data::{default_data_dir, load, DatasetSpec};
use rlap::model::{Arch, Model, ModelSpec};
use rlap::onnx::export::{to_bytes, to_model_proto, OPSET};
use rlap::onnx::proto::ModelProto;
use rlap::onnx::runtime::OnnxModel;
use rlap::progress::Progress;
use rlap::train::{train, TrainConfig};

#[test]
fn onnx_runtime_matches_candle_on_real_images() {
    let split = load(&DatasetSpec::Mnist, &default_data_dir()).expect("run scripts/setup-data.sh");
    let train_set = split.train.select(&split.train.stratified_indices(2000, 1));
    let test = split.test.select(&(0..1000).collect::<Vec<_>>());
    for arch in [Arch::Mlp, Arch::Cnn] {
        let spec = ModelSpec {
            arch,
            input_dim: 784,
            image_shape: Some((1, 28, 28)),
            hidden: 256,
            num_classes: 10,
        };
        let mut model = Model::new(spec, &Device::Cpu, 5).unwrap();
        let cfg = TrainConfig::paper(1, 1);
        train(&model, &train_set, &cfg, &Progress::hidden(), "t").unwrap();
        for pruned in [false, true] {
            if pruned {
                model
                    .prune(&(0..40).map(|j| j * 6).collect::<Vec<_>>())
                    .unwrap();
            }
            let bytes = to_bytes(&model).unwrap();
            let proto = ModelProto::decode(&bytes[..]).unwrap();
            assert_eq!(proto.opset_import[0].version, Some(OPSET));
            let fc = proto
                .graph
                .as_ref()
                .unwrap()
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some("fc.weight"))
                .unwrap();
            assert_eq!(
                fc.dims[0],
                if pruned { 216 } else { 256 },
                "structural removal"
            );

            let onnx =
                OnnxModel::from_bytes(&bytes, 784).expect("ONNX Runtime: run scripts/setup-ort.sh");
            let got = onnx.logits(&test.features).unwrap();
            let x =
                candle_core::Tensor::from_slice(&test.features, (1000, 784), &Device::Cpu).unwrap();
            let want = model
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got.len(), want.len());
            let max_diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                max_diff <= 1e-4,
                "{arch} pruned={pruned}: max |Δlogit| = {max_diff}"
            );
            let argmax = |v: &[f32]| -> Vec<usize> {
                v.chunks(10)
                    .map(|r| {
                        r.iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .unwrap()
                            .0
                    })
                    .collect()
            };
            assert_eq!(
                argmax(&got),
                argmax(&want),
                "{arch} pruned={pruned}: argmax differs"
            );
            eprintln!("{arch} pruned={pruned}: max |Δlogit| = {max_diff:.2e} over 1,000 images");
        }
    }
    // The proto is typed: a model without a graph is rejected by ONNX Runtime with an error.
    let empty = ModelProto::default().encode_to_vec();
    assert!(OnnxModel::from_bytes(&empty, 784).is_err());
    let _ = to_model_proto;
}
