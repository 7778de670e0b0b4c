//! rlap: the data-quality engine and streaming daemon for machine-learning
//! pipelines whose labels arrive noisy, built on RLAP (Jin et al., "Machine Unlearning for Robust DNNs: Attribution-Guided
//! Partitioning and Neuron Pruning in Noisy Environments", MAKE 7(3):95, 2025).
//!
//! Modules, in reading order, layer by layer from the bottom (an import only goes down or
//! sideways, never in a loop: `scripts/module_deps.py` checks it):
//! - [`data`]: real data sets (IDX raw/`.gz`, CSV), validated, stratified subsampling.
//! - [`input_range`]: the range of a model version's training inputs; input-shift detection.
//! - [`corruption`]: seeded input and label noise on the training split; the hidden truth.
//! - [`evaluation`]: the [`evaluation::GroundTruth`] type (readable only there), classification
//!   and detection metrics.
//! - [`metrics`]: Prometheus metrics of the daemon and the API; [`events`]: the typed events
//!   that log and count what the daemon and the API do.
//! - [`cpu`]: CPU threading: the matrix-product pool sized once, the compute run on it;
//!   [`progress`]: indicatif progress bars, silenced by `--quiet`.
//! - [`model`]: candle MLP and CNN with the paper's `fc` → ReLU → `fc2` head, prune mask,
//!   checkpoints, structural removal of pruned neurons, device parsing; [`cnn_cpu`]: the CNN
//!   body's forward and backward on the CPU (im2col + GEMM), written out; [`mlp_cpu`]: the
//!   MLP's forward and backward on the CPU's host buffers (GEMMs, rows split over the pool).
//! - [`train`]: fused Adam/SGD steps and the seeded training loop (all parameters or head only).
//! - [`attribution`]: §3.2.1, `max-class` and `label-gradient`, batched.
//! - [`partition`]: §3.2.2, z-score + 2-component GMM + label-free clean-component rule.
//! - [`noise_model`]: the default verdict rule: the class-conditional noise transition
//!   estimated from out-of-sample probabilities, and each sample's posterior of noisy; the
//!   verdict-conditioned likelihood vectors of the forward loss correction.
//! - [`prune`]: §3.3, OLS regression sensitivity and the selective-pruning baselines.
//! - [`onnx`]: ONNX export (typed prost messages, pruned neurons removed) and ONNX Runtime
//!   inference (`ort`, load-dynamic); [`store`]: the versioned model store (Triton layout,
//!   atomic publish, retention).
//! - [`experiment`]: Algorithm 1 end to end, the paper's table, sweeps, JSON and CSV reports.
//! - [`stream`]: the streaming daemon: Kafka source → scorer → sink, the verdict rule,
//!   noise-triggered cycles, checkpoints (see its own module map).
//! - [`api`]: the HTTP API (axum) over ONNX Runtime: predict, versions, hot swap, rollback,
//!   the Open Inference Protocol.
//! - [`app`]: `rlap serve`, the daemon and the API composed in one process.
//! - [`drivers`]: the clients the binary runs: `produce`, `evaluate-verdicts`, `demo`,
//!   `bench-stream`, `bench`, `bench-serve`, `device-check`.

pub mod api;
pub mod app;
pub mod attribution;
pub mod cnn_cpu;
pub mod corruption;
pub mod cpu;
pub mod data;
pub mod drivers;
pub mod evaluation;
pub mod events;
pub mod experiment;
pub mod input_range;
pub mod metrics;
pub mod mlp_cpu;
pub mod model;
pub mod noise_model;
pub mod onnx;
pub mod partition;
pub mod progress;
pub mod prune;
pub mod store;
pub mod stream;
pub mod train;
