//! The classifiers RLAP acts on, in candle: an MLP and a small CNN, both ending in the paper's
//! head `fc: Linear(F → H)` → ReLU → `fc2: Linear(H → K)` (rlap-method.md, "Terms").
//!
//! This module owns parameters (seeded initialisation, safetensors checkpoints that round-trip),
//! the forward pass split at the target layer (`body` → `fc` → `head`), the persistent prune
//! mask over the H neurons of `fc` (§3.3, project decision) and the structural removal of pruned
//! neurons that the ONNX export uses. Device choice (`cpu`, `cuda:N`) is parsed here too.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Module, Tensor, Var, D};
use rand::Rng;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

mod checkpoint;
mod device;
mod mask;

pub use device::*;

/// Errors from building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shape mismatch, device error).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A checkpoint could not be written or read, or does not describe a valid model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// The model specification is inconsistent (e.g. a CNN without an image shape).
    #[error("invalid model: {0}")]
    Invalid(String),
    /// The requested device is not available.
    #[error("{0}")]
    Device(String),
    /// A training recipe or its targets are invalid (e.g. soft targets of the wrong length,
    /// a negative mixup α).
    #[error("invalid training recipe: {0}")]
    Recipe(String),
}

/// Model family (the `--model` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// `Linear(D → 512)` → ReLU → head.
    Mlp,
    /// `Conv(C→16, 5×5)` → ReLU → MaxPool 2 → `Conv(16→32, 5×5)` → ReLU → MaxPool 2 → flatten → head.
    Cnn,
}

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "mlp" => Ok(Self::Mlp),
            "cnn" => Ok(Self::Cnn),
            _ => Err(ModelError::Invalid(format!(
                "unknown model '{s}': expected mlp | cnn"
            ))),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mlp => "mlp",
            Self::Cnn => "cnn",
        })
    }
}

/// Width of the MLP's hidden layer before the head.
pub const MLP_WIDTH: usize = 512;
const CONV1: usize = 16;
const CONV2: usize = 32;
const KERNEL: usize = 5;

/// Everything that fixes a model's shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Model family.
    pub arch: Arch,
    /// Number of input features D (= C·H·W for images).
    pub input_dim: usize,
    /// `(channels, height, width)`; required by the CNN.
    pub image_shape: Option<(usize, usize, usize)>,
    /// Neurons H of the target layer `fc` (paper: 256).
    pub hidden: usize,
    /// Classes K.
    pub num_classes: usize,
}

impl ModelSpec {
    /// The spec of an `arch` model with `hidden` neurons in `fc` for `data` (D, image shape
    /// and K taken from it).
    pub fn for_dataset(arch: Arch, hidden: usize, data: &crate::data::Dataset) -> Self {
        Self {
            arch,
            input_dim: data.dim,
            image_shape: data.image_shape,
            hidden,
            num_classes: data.num_classes,
        }
    }

    /// Width F of the input to `fc` (the body's output).
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for a CNN without a usable image shape.
    pub fn body_width(&self) -> Result<usize, ModelError> {
        match self.arch {
            Arch::Mlp => Ok(MLP_WIDTH),
            Arch::Cnn => {
                let (_, h, w) = self.image_shape.ok_or_else(|| {
                    ModelError::Invalid("the CNN needs an image data set (IDX)".into())
                })?;
                let side =
                    |s: usize| ((s.saturating_sub(KERNEL - 1)) / 2).saturating_sub(KERNEL - 1) / 2;
                let (oh, ow) = (side(h), side(w));
                if oh == 0 || ow == 0 {
                    return Err(ModelError::Invalid(format!(
                        "image {h}x{w} too small for the CNN"
                    )));
                }
                Ok(CONV2 * oh * ow)
            }
        }
    }

    /// Multiply–add count ×2 of one forward pass for one sample (FLOPs), counting the matrix
    /// products and convolutions only.
    ///
    /// # Errors
    /// As [`ModelSpec::body_width`].
    pub fn forward_flops(&self) -> Result<f64, ModelError> {
        let f = self.body_width()? as f64;
        let head = f * self.hidden as f64 + (self.hidden * self.num_classes) as f64;
        let body = match self.arch {
            Arch::Mlp => (self.input_dim * MLP_WIDTH) as f64,
            Arch::Cnn => {
                let (c, h, w) = self.image_shape.unwrap_or((1, 0, 0));
                let (h1, w1) = (h - KERNEL + 1, w - KERNEL + 1);
                let (h2, w2) = (h1 / 2 - KERNEL + 1, w1 / 2 - KERNEL + 1);
                (h1 * w1 * CONV1 * c * KERNEL * KERNEL + h2 * w2 * CONV2 * CONV1 * KERNEL * KERNEL)
                    as f64
            }
        };
        Ok(2.0 * (body + head))
    }
}

/// Which part of the network a parameter belongs to (L-FT trains only [`Group::Head`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Everything before `fc`.
    Body,
    /// `fc` and `fc2` (§3.4).
    Head,
}

/// One named trainable tensor.
#[derive(Clone, Debug)]
pub struct Param {
    /// Checkpoint name, e.g. `fc.weight`.
    pub name: String,
    /// The tensor (a candle `Var`, so gradients flow to it).
    pub var: Var,
    /// Body or head.
    pub group: Group,
}

thread_local! {
    /// Buffers of the CNN's CPU kernels, reused across batches on each thread.
    static CNN_WORKSPACE: std::cell::RefCell<crate::cnn_cpu::Workspaces> =
        std::cell::RefCell::new(crate::cnn_cpu::Workspaces::default());
}

/// The CNN body's parameters copied to the host (small: ~13k floats).
struct HostConvWeights {
    image: (usize, usize, usize),
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl HostConvWeights {
    fn view(&self) -> crate::cnn_cpu::Weights<'_> {
        crate::cnn_cpu::Weights {
            image: self.image,
            conv1: (&self.w1, &self.b1),
            conv2: (&self.w2, &self.b2),
        }
    }
}

/// 2×2, stride-2 max-pooling of `x` `[B, C, H, W]` (odd edges dropped, as `max_pool2d`),
/// written as two `max` reductions: candle 0.11's `max_pool2d` backward scales a unique
/// maximum's gradient by 1/4, a reduction's backward does not.
///
/// # Errors
/// [`ModelError::Candle`] on a shape mismatch.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor, ModelError> {
    let (b, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?
    } else {
        x.clone()
    };
    Ok(x.reshape((b, c, h2, 2, w2, 2))?.max(5)?.max(3)?)
}

/// A classifier with the RLAP head and a persistent prune mask.
///
/// Shapes: input `[B, D]` (images flattened, reshaped inside for the CNN); `h = fc(body(x))`
/// is `[B, H]` pre-ReLU; logits `[B, K]`.
#[derive(Clone, Debug)]
pub struct Model {
    spec: ModelSpec,
    device: Device,
    params: Vec<Param>,
    pruned: BTreeSet<usize>,
}

/// `(weight, bias)` with PyTorch's default `nn.Linear`/`nn.Conv2d` initialisation:
/// U(−1/√fan_in, 1/√fan_in) for both.
fn init_uniform(
    rng: &mut Xoshiro256PlusPlus,
    shape: &[usize],
    fan_in: usize,
    device: &Device,
) -> Result<Var, ModelError> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(v, shape, device)?)?)
}

impl Model {
    /// A freshly initialised model, seeded.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for an inconsistent spec; [`ModelError::Candle`] on device errors.
    pub fn new(spec: ModelSpec, device: &Device, seed: u64) -> Result<Self, ModelError> {
        if spec.hidden == 0 || spec.num_classes < 2 || spec.input_dim == 0 {
            return Err(ModelError::Invalid(format!(
                "need hidden > 0, classes >= 2, inputs > 0 (got {}, {}, {})",
                spec.hidden, spec.num_classes, spec.input_dim
            )));
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let f = spec.body_width()?;
        let mut params = Vec::new();
        let mut push = |name: &str, shape: &[usize], fan_in: usize, group, rng: &mut _| {
            init_uniform(rng, shape, fan_in, device).map(|var| {
                params.push(Param {
                    name: name.into(),
                    var,
                    group,
                })
            })
        };
        match spec.arch {
            Arch::Mlp => {
                push(
                    "body.0.weight",
                    &[MLP_WIDTH, spec.input_dim],
                    spec.input_dim,
                    Group::Body,
                    &mut rng,
                )?;
                push(
                    "body.0.bias",
                    &[MLP_WIDTH],
                    spec.input_dim,
                    Group::Body,
                    &mut rng,
                )?;
            }
            Arch::Cnn => {
                let c = spec.image_shape.map(|s| s.0).unwrap_or(1);
                let fan1 = c * KERNEL * KERNEL;
                let fan2 = CONV1 * KERNEL * KERNEL;
                push(
                    "conv1.weight",
                    &[CONV1, c, KERNEL, KERNEL],
                    fan1,
                    Group::Body,
                    &mut rng,
                )?;
                push("conv1.bias", &[CONV1], fan1, Group::Body, &mut rng)?;
                push(
                    "conv2.weight",
                    &[CONV2, CONV1, KERNEL, KERNEL],
                    fan2,
                    Group::Body,
                    &mut rng,
                )?;
                push("conv2.bias", &[CONV2], fan2, Group::Body, &mut rng)?;
            }
        }
        push("fc.weight", &[spec.hidden, f], f, Group::Head, &mut rng)?;
        push("fc.bias", &[spec.hidden], f, Group::Head, &mut rng)?;
        push(
            "fc2.weight",
            &[spec.num_classes, spec.hidden],
            spec.hidden,
            Group::Head,
            &mut rng,
        )?;
        push(
            "fc2.bias",
            &[spec.num_classes],
            spec.hidden,
            Group::Head,
            &mut rng,
        )?;
        Ok(Self {
            spec,
            device: device.clone(),
            params,
            pruned: BTreeSet::new(),
        })
    }

    /// The shapes of this model.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The device its tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All parameters, body first, in a fixed order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// The parameter named `name`.
    ///
    /// # Panics
    /// If no such parameter exists (names are fixed by [`Model::new`]).
    pub fn param(&self, name: &str) -> &Tensor {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.var.as_tensor())
            .unwrap_or_else(|| panic!("no parameter {name}"))
    }

    /// Indices (into `0..H`) of the pruned neurons of `fc`, ascending.
    pub fn pruned(&self) -> Vec<usize> {
        self.pruned.iter().copied().collect()
    }

    /// The body: input `[B, D]` → `[B, F]`, the input of the target layer `fc`.
    ///
    /// # Errors
    /// [`ModelError::Candle`] on a shape mismatch.
    pub fn body(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self.spec.arch {
            Arch::Mlp => {
                let l = candle_nn::Linear::new(
                    self.param("body.0.weight").clone(),
                    Some(self.param("body.0.bias").clone()),
                );
                Ok(l.forward(x)?.relu()?)
            }
            Arch::Cnn => {
                let (c, h, w) = self.spec.image_shape.unwrap_or((1, 0, 0));
                let b = x.dim(0)?;
                let x = x.reshape((b, c, h, w))?;
                let conv = |x: &Tensor, name: &str| -> Result<Tensor, ModelError> {
                    let wt = self.param(&format!("{name}.weight"));
                    let bias = self.param(&format!("{name}.bias"));
                    let y = x.conv2d(wt, 0, 1, 1, 1)?;
                    Ok(y.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)?)
                };
                let x = max_pool_2x2(&conv(&x, "conv1")?.relu()?)?;
                let x = max_pool_2x2(&conv(&x, "conv2")?.relu()?)?;
                Ok(x.flatten_from(1)?)
            }
        }
    }

    /// The body's output like [`Model::body`], detached from the graph (no gradient flows to
    /// the body's parameters through it). For the CNN on the CPU it runs the hand-written
    /// kernels of [`crate::cnn_cpu`] (im2col + GEMM, buffers reused per thread); same values
    /// as `body` up to float summation order.
    ///
    /// # Errors
    /// [`ModelError::Candle`] on a shape mismatch.
    pub fn body_detached(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        if let Some(wt) = self.cnn_cpu_weights(x)? {
            let n = x.dim(0)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            // Taken out of the thread-local, not borrowed across the parallel work: a rayon
            // worker waiting inside it may run another job that comes back here.
            let mut ws = CNN_WORKSPACE.take();
            let z = crate::cnn_cpu::forward(&wt.view(), &xs, n, &mut ws);
            CNN_WORKSPACE.set(ws);
            return Ok(Tensor::from_vec(
                z,
                (n, self.spec.body_width()?),
                &self.device,
            )?);
        }
        Ok(self.body(x)?.detach())
    }

    /// The CNN body's weights on the host when the CPU kernels apply (CNN, CPU, f32 input).
    fn cnn_cpu_weights(&self, x: &Tensor) -> Result<Option<HostConvWeights>, ModelError> {
        if self.spec.arch != Arch::Cnn || !self.device.is_cpu() || x.dtype() != DType::F32 {
            return Ok(None);
        }
        let host = |name: &str| -> Result<Vec<f32>, ModelError> {
            Ok(self.param(name).flatten_all()?.to_vec1::<f32>()?)
        };
        Ok(Some(HostConvWeights {
            image: self.spec.image_shape.unwrap_or((1, 0, 0)),
            w1: host("conv1.weight")?,
            b1: host("conv1.bias")?,
            w2: host("conv2.weight")?,
            b2: host("conv2.bias")?,
        }))
    }

    /// One training step's gradients for the CNN body on the CPU: the body's output `z`
    /// `[B, F]` for inputs `x` `[B, D]` goes to `head`, which returns the loss's gradient at
    /// `z`; then [`crate::cnn_cpu::backward`] gives the body's parameter gradients (named).
    /// `None` where the kernels do not apply (then use candle's autograd).
    ///
    /// # Errors
    /// [`ModelError::Candle`] on a shape mismatch; `head`'s errors.
    #[allow(clippy::type_complexity)]
    pub(crate) fn cnn_cpu_body_grads(
        &self,
        x: &Tensor,
        head: impl FnOnce(&Tensor) -> Result<Tensor, ModelError>,
    ) -> Result<Option<[(String, Tensor); 4]>, ModelError> {
        let Some(wt) = self.cnn_cpu_weights(x)? else {
            return Ok(None);
        };
        let n = x.dim(0)?;
        let f = self.spec.body_width()?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        // Taken out of the thread-local (see `body_detached`); put back after.
        let mut ws = CNN_WORKSPACE.take();
        let z = crate::cnn_cpu::forward(&wt.view(), &xs, n, &mut ws);
        let dz = match head(&Tensor::from_vec(z, (n, f), &self.device)?)
            .and_then(|dz| Ok(dz.flatten_all()?.to_vec1::<f32>()?))
        {
            Ok(dz) => dz,
            Err(e) => {
                CNN_WORKSPACE.set(ws);
                return Err(e);
            }
        };
        let g = crate::cnn_cpu::backward(&wt.view(), &xs, &dz, n, &mut ws, true);
        CNN_WORKSPACE.set(ws);
        let t = |name: &str, v: Vec<f32>| -> Result<(String, Tensor), ModelError> {
            let shape = self.param(name).dims().to_vec();
            Ok((name.to_string(), Tensor::from_vec(v, shape, &self.device)?))
        };
        Ok(Some([
            t("conv1.weight", g.conv1_weight)?,
            t("conv1.bias", g.conv1_bias)?,
            t("conv2.weight", g.conv2_weight)?,
            t("conv2.bias", g.conv2_bias)?,
        ]))
    }

    /// The target layer: `[B, F]` → `h`, `[B, H]`, pre-ReLU (§3.2.1).
    ///
    /// # Errors
    /// [`ModelError::Candle`] on a shape mismatch.
    pub fn fc(&self, z: &Tensor) -> Result<Tensor, ModelError> {
        let l = candle_nn::Linear::new(
            self.param("fc.weight").clone(),
            Some(self.param("fc.bias").clone()),
        );
        Ok(l.forward(z)?)
    }

    /// The rest of the head: `h` `[B, H]` → ReLU → `fc2` → logits `[B, K]`.
    ///
    /// # Errors
    /// [`ModelError::Candle`] on a shape mismatch.
    pub fn head(&self, h: &Tensor) -> Result<Tensor, ModelError> {
        let l = candle_nn::Linear::new(
            self.param("fc2.weight").clone(),
            Some(self.param("fc2.bias").clone()),
        );
        Ok(l.forward(&h.relu()?)?)
    }

    /// Logits `[B, K]` for inputs `[B, D]`.
    ///
    /// # Errors
    /// [`ModelError::Candle`] on a shape mismatch.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.head(&self.fc(&self.body(x)?)?)
    }

    /// Predicted classes for `features` (`[n, D]` row-major), in batches of `batch_size`.
    ///
    /// # Errors
    /// [`ModelError::Candle`].
    pub fn predict(&self, features: &[f32], batch_size: usize) -> Result<Vec<u32>, ModelError> {
        let d = self.spec.input_dim;
        let n = features.len() / d;
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(batch_size.max(1)) {
            let end = (start + batch_size).min(n);
            let x = Tensor::from_slice(
                &features[start * d..end * d],
                (end - start, d),
                &self.device,
            )?;
            let logits = self.head(&self.fc(&self.body_detached(&x)?)?)?;
            out.extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::tests::mnist;

    /// The CNN's CPU kernels give candle's body output on real images, for a batch that
    /// spans several chunks and one that does not, and the 2×2 pool equals `max_pool2d`.
    #[test]
    fn cnn_cpu_body_matches_candle() {
        let split = mnist();
        let m = Model::new(mnist_spec(Arch::Cnn, 16), &Device::Cpu, 4).unwrap();
        for n in [3, crate::cnn_cpu::CHUNK * 2 + 5] {
            let idx: Vec<usize> = (0..n).collect();
            let (x, _) = crate::train::batch_tensors(&split.train, &idx, &Device::Cpu).unwrap();
            let want = m
                .body(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = m.body_detached(&x).unwrap();
            assert_eq!(got.dims(), &[n, m.spec().body_width().unwrap()]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(diff <= 1e-5 * scale, "n {n}: {diff} of {scale}");
        }
        let x = Tensor::randn(0f32, 1.0, (2, 3, 7, 6), &Device::Cpu).unwrap();
        let a = max_pool_2x2(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = x
            .max_pool2d(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }

    pub(crate) fn mnist_spec(arch: Arch, hidden: usize) -> ModelSpec {
        ModelSpec {
            arch,
            input_dim: 784,
            image_shape: Some((1, 28, 28)),
            hidden,
            num_classes: 10,
        }
    }

    fn batch(n: usize) -> Tensor {
        Tensor::from_slice(&mnist().test.features[..n * 784], (n, 784), &Device::Cpu).unwrap()
    }

    #[test]
    fn shapes_of_both_architectures() {
        for arch in [Arch::Mlp, Arch::Cnn] {
            let m = Model::new(mnist_spec(arch, 32), &Device::Cpu, 1).unwrap();
            let x = batch(5);
            let h = m.fc(&m.body(&x).unwrap()).unwrap();
            assert_eq!(h.dims(), &[5, 32]);
            assert_eq!(m.forward(&x).unwrap().dims(), &[5, 10]);
        }
        assert_eq!(mnist_spec(Arch::Cnn, 256).body_width().unwrap(), 512);
    }

    #[test]
    fn checkpoint_round_trips_with_mask() {
        let dir = tempfile::tempdir().unwrap();
        for arch in [Arch::Mlp, Arch::Cnn] {
            let mut m = Model::new(mnist_spec(arch, 16), &Device::Cpu, 7).unwrap();
            m.prune(&[3, 5]).unwrap();
            let p = dir.path().join(format!("{arch}.safetensors"));
            m.save(&p).unwrap();
            let back = Model::load(&p, &Device::Cpu).unwrap();
            assert_eq!(back.spec(), m.spec());
            assert_eq!(back.pruned(), vec![3, 5]);
            let x = batch(4);
            let a = m.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let b = back.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(a, b);
        }
        // A checkpoint whose header disagrees with its tensors is refused, not trusted.
        let m = Model::new(mnist_spec(Arch::Mlp, 16), &Device::Cpu, 7).unwrap();
        let p = dir.path().join("lying.safetensors");
        let mut tensors: HashMap<String, Tensor> = m
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        tensors.insert("rlap.prune_mask".into(), m.keep_mask().unwrap());
        let spec = ModelSpec {
            hidden: 4096,
            ..m.spec().clone()
        };
        let meta = HashMap::from([(
            "rlap.spec".to_string(),
            serde_json::to_string(&spec).unwrap(),
        )]);
        safetensors::serialize_to_file(tensors.into_iter().collect::<Vec<_>>(), Some(meta), &p)
            .unwrap();
        let e = Model::load(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("fc.weight has shape [16, 512], the spec says [4096, 512]"),
            "{e}"
        );
        std::fs::write(dir.path().join("bad"), b"garbage").unwrap();
        assert!(matches!(
            Model::load(&dir.path().join("bad"), &Device::Cpu),
            Err(ModelError::Checkpoint { .. })
        ));
    }

    /// Largest absolute elementwise difference of two same-shape tensors.
    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn structural_removal_keeps_logits() {
        for arch in [Arch::Mlp, Arch::Cnn] {
            let mut m = Model::new(mnist_spec(arch, 20), &Device::Cpu, 3).unwrap();
            m.prune(&[0, 7, 19]).unwrap();
            let small = m.without_pruned().unwrap();
            assert_eq!(small.spec().hidden, 17);
            assert_eq!(small.param("fc2.weight").dims(), &[10, 17]);
            let x = batch(8);
            let diff = max_abs_diff(&m.forward(&x).unwrap(), &small.forward(&x).unwrap());
            assert!(diff < 1e-5, "{diff}");
        }
    }

    #[test]
    fn regrowth_keeps_logits_and_revives_the_neurons() {
        for arch in [Arch::Mlp, Arch::Cnn] {
            let mut m = Model::new(mnist_spec(arch, 20), &Device::Cpu, 3).unwrap();
            m.prune(&[0, 7, 19]).unwrap();
            let x = batch(8);
            let before = m.forward(&x).unwrap();
            m.regrow(&[7, 19, 4], 11).unwrap();
            assert_eq!(m.pruned(), vec![0], "4 was never pruned: ignored");
            let diff = max_abs_diff(&before, &m.forward(&x).unwrap());
            assert!(diff < 1e-6, "{arch:?}: logits moved by {diff}");
            let w = m.param("fc.weight").to_vec2::<f32>().unwrap();
            assert!(w[7].iter().any(|&v| v != 0.0) && w[19].iter().any(|&v| v != 0.0));
            assert!(w[0].iter().all(|&v| v == 0.0), "0 stays pruned");
            let out = m.param("fc2.weight").to_vec2::<f32>().unwrap();
            assert!(out.iter().all(|row| row[7] == 0.0 && row[19] == 0.0));
            // The mask no longer zeroes them.
            m.apply_mask().unwrap();
            let w = m.param("fc.weight").to_vec2::<f32>().unwrap();
            assert!(w[7].iter().any(|&v| v != 0.0));
        }
    }

    #[test]
    fn seeded_init_is_reproducible() {
        let a = Model::new(mnist_spec(Arch::Mlp, 8), &Device::Cpu, 5).unwrap();
        let b = Model::new(mnist_spec(Arch::Mlp, 8), &Device::Cpu, 5).unwrap();
        let wa = a.param("fc.weight").to_vec2::<f32>().unwrap();
        assert_eq!(wa, b.param("fc.weight").to_vec2::<f32>().unwrap());
    }

    #[test]
    fn cuda_without_feature_is_one_clear_error() {
        if cfg!(feature = "cuda") {
            return;
        }
        let e = parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature"), "{e}");
        assert!(parse_device("tpu").is_err());
    }
}
