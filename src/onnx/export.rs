//! Export of a candle [`Model`] to an ONNX `ModelProto`, built from the typed prost messages.
//!
//! Pruned neurons are removed structurally first ([`Model::without_pruned`]): `fc` becomes
//! `Gemm(F → H − k)` and `fc2` `Gemm(H − k → K)`, so the published model is smaller and its
//! logits equal the masked model's. Graph: input `input` `[batch, D]` f32, output `logits`
//! `[batch, K]` f32. Operators (opset 17): Gemm, Relu; for the CNN also Reshape, Conv, MaxPool,
//! Flatten.

use std::path::Path;

use prost::Message;

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::model::{Arch, Model, ModelError};

/// The ONNX opset the exporter targets.
pub const OPSET: i64 = 17;
/// The ONNX IR version written (IR 8 goes with opset 17).
pub const IR_VERSION: i64 = 8;
/// Name of the graph input, `[batch, D]` f32.
pub const INPUT: &str = "input";
/// Name of the graph output, `[batch, K]` f32 logits.
pub const OUTPUT: &str = "logits";

/// Errors of the export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the weights or removing pruned neurons failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing the file failed.
    #[error("{path}: {error}")]
    Io {
        path: std::path::PathBuf,
        /// The underlying I/O error (part of the message, not a separate cause).
        error: std::io::Error,
    },
}

fn tensor_proto(name: &str, t: &candle_core::Tensor) -> Result<TensorProto, ModelError> {
    let values = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let mut raw = Vec::with_capacity(values.len() * 4);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    Ok(TensorProto {
        name: Some(name.into()),
        dims: t.dims().iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(raw),
        ..Default::default()
    })
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_{output}")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn float_value(name: &str, second_dim: usize) -> ValueInfoProto {
    let dims = vec![
        Dimension {
            value: Some(dimension::Value::DimParam("batch".into())),
            ..Default::default()
        },
        Dimension {
            value: Some(dimension::Value::DimValue(second_dim as i64)),
            ..Default::default()
        },
    ];
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Build the ONNX model of `model` (pruned neurons removed structurally).
///
/// # Errors
/// [`ExportError::Model`] when the weights cannot be read.
pub fn to_model_proto(model: &Model) -> Result<ModelProto, ExportError> {
    let m = model.without_pruned()?;
    let spec = m.spec();
    let mut init = Vec::new();
    for p in m.params() {
        init.push(tensor_proto(&p.name, p.var.as_tensor())?);
    }
    let gemm = |x: &str, layer: &str, out: &str| {
        node(
            "Gemm",
            &[x, &format!("{layer}.weight"), &format!("{layer}.bias")],
            out,
            vec![int("transB", 1)],
        )
    };
    let mut nodes = Vec::new();
    match spec.arch {
        Arch::Mlp => {
            nodes.push(gemm(INPUT, "body.0", "body0"));
            nodes.push(node("Relu", &["body0"], "z", vec![]));
        }
        Arch::Cnn => {
            let (c, h, w) = spec.image_shape.unwrap_or((1, 0, 0));
            init.push(TensorProto {
                name: Some("image_shape".into()),
                dims: vec![4],
                data_type: Some(DataType::Int64 as i32),
                int64_data: vec![-1, c as i64, h as i64, w as i64],
                ..Default::default()
            });
            nodes.push(node("Reshape", &[INPUT, "image_shape"], "image", vec![]));
            let mut x = "image".to_string();
            for layer in ["conv1", "conv2"] {
                let conv = format!("{layer}_out");
                nodes.push(node(
                    "Conv",
                    &[&x, &format!("{layer}.weight"), &format!("{layer}.bias")],
                    &conv,
                    vec![ints("strides", &[1, 1]), ints("pads", &[0, 0, 0, 0])],
                ));
                nodes.push(node("Relu", &[&conv], &format!("{layer}_relu"), vec![]));
                x = format!("{layer}_pool");
                nodes.push(node(
                    "MaxPool",
                    &[&format!("{layer}_relu")],
                    &x,
                    vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
                ));
            }
            nodes.push(node("Flatten", &[&x], "z", vec![int("axis", 1)]));
        }
    }
    nodes.push(gemm("z", "fc", "h"));
    nodes.push(node("Relu", &["h"], "h_relu", vec![]));
    nodes.push(gemm("h_relu", "fc2", OUTPUT));
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("rlap".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(GraphProto {
            name: Some(format!("rlap_{}", spec.arch)),
            node: nodes,
            initializer: init,
            input: vec![float_value(INPUT, spec.input_dim)],
            output: vec![float_value(OUTPUT, spec.num_classes)],
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The serialized ONNX model of `model` (protobuf bytes).
///
/// # Errors
/// As [`to_model_proto`].
pub fn to_bytes(model: &Model) -> Result<Vec<u8>, ExportError> {
    Ok(to_model_proto(model)?.encode_to_vec())
}

/// Write the ONNX model of `model` to `path`.
///
/// # Errors
/// [`ExportError::Io`] on a write failure; as [`to_model_proto`].
pub fn save(model: &Model, path: &Path) -> Result<(), ExportError> {
    std::fs::write(path, to_bytes(model)?).map_err(|source| ExportError::Io {
        path: path.into(),
        error: source,
    })
}
