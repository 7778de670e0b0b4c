//! The model-serving HTTP API (axum) over ONNX Runtime: predictions from the current model
//! version, the store's versions and files, hot swap to newer versions, rollback.
//!
//! This module owns the server. Architecture invariants:
//! - **In-flight requests never fail on a swap.** The current version is an `Arc<Served>`
//!   behind a lock held only to clone or replace the `Arc`; a request keeps the version it
//!   started with until it ends.
//! - **A version that fails to load or to pass the smoke check is refused**; the current one
//!   keeps serving and the refusal is logged with its reason.
//! - Binds to 127.0.0.1 unless configured; admin endpoints need the bearer token from config
//!   and are disabled without one.
//!
//! The API's OpenAPI document is generated from the handlers' and types' annotations
//! ([`openapi::document`], served at `GET /openapi.json`); `openapi/rlap.json` is its
//! checked-in copy (a test fails when they drift) and `tests/http_api.rs` checks the server
//! against it. [`oip`] adds the Open Inference Protocol (KServe v2) routes under `/v2`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

mod models;
pub mod oip;
pub mod openapi;
mod ops;
mod predict;

use models::{cycle, download_onnx, list_models, rollback, version_metadata};
use ops::{healthz, metrics, readyz, status};
use predict::predict;

use crate::onnx::runtime::{OnnxModel, RuntimeError};
use crate::store::{ModelStore, StoreError, VersionMetadata, ONNX_FILE};

/// Errors of loading a version for serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The version or its files could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// ONNX Runtime refused the model or failed to run it.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The file on disk does not match the sha256 in its metadata.
    #[error("{0}: sha256 mismatch with metadata.json")]
    Checksum(String),
    /// The model loaded but produced unusable output on the smoke batch.
    #[error("smoke check failed: {0}")]
    Smoke(String),
}

/// A loaded, checked model version.
pub struct Served {
    /// Store metadata of this version.
    pub meta: VersionMetadata,
    onnx: OnnxModel,
}

/// Load `model`/`version` from `store`: verify the file's sha256, build the ONNX Runtime
/// session, run a smoke batch (zeros, `[2, D]`) and require `[2, K]` finite logits.
///
/// # Errors
/// [`ServeError`] naming what failed.
pub fn load_version(store: &ModelStore, model: &str, version: u64) -> Result<Served, ServeError> {
    let meta = store.metadata(model, version)?;
    let path = store.version_dir(model, version)?.join(ONNX_FILE);
    let bytes = std::fs::read(&path).map_err(|source| StoreError::Io {
        path: path.clone(),
        error: source,
    })?;
    if meta.sha256.get(ONNX_FILE) != Some(&format!("{:x}", Sha256::digest(&bytes))) {
        return Err(ServeError::Checksum(path.display().to_string()));
    }
    let onnx = OnnxModel::from_bytes(&bytes, meta.input_dim)?;
    let logits = onnx.logits(&vec![0.0; 2 * meta.input_dim])?;
    if logits.len() != 2 * meta.num_classes || logits.iter().any(|v| !v.is_finite()) {
        return Err(ServeError::Smoke(format!(
            "{} logits for 2 samples of {} classes (finite: {})",
            logits.len(),
            meta.num_classes,
            logits.iter().all(|v| v.is_finite())
        )));
    }
    Ok(Served { meta, onnx })
}

/// Settings of the serving process.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to bind (default 127.0.0.1:8080).
    pub bind: SocketAddr,
    /// The model name served by `/v1/predict`.
    pub model: String,
    /// Bearer token of the admin endpoints; `None` or empty disables them.
    pub admin_token: Option<String>,
    /// How often the store is checked for a newer version.
    pub poll_interval: Duration,
    /// Largest batch `/v1/predict` accepts.
    pub max_batch: usize,
}

/// Shared state of the server.
pub struct AppState {
    store: ModelStore,
    cfg: ServeConfig,
    current: RwLock<Option<Arc<Served>>>,
    /// Serialises every change of version (watcher, rollback) from "decide" to "install",
    /// and guards the fields that decision reads.
    swap: Mutex<SwapState>,
    /// Metrics (`GET /metrics`): the daemon's when it runs in this process.
    metrics: crate::metrics::DaemonMetrics,
    /// The streaming daemon in this process (`rlap serve`), if any.
    daemon: Option<crate::stream::daemon::DaemonHandles>,
}

#[derive(Default)]
struct SwapState {
    /// A version pinned by rollback: the watcher stops following newer versions.
    pinned: Option<u64>,
    /// Versions refused since start, with the sha256 of the file that was refused, so the
    /// watcher does not reload the same bad file on every poll.
    refused: Vec<(u64, Option<String>)>,
}

impl AppState {
    /// State serving `cfg.model` from `store`: the newest version that loads and passes the
    /// smoke check (older ones are tried when the newest is refused).
    pub fn new(store: ModelStore, cfg: ServeConfig) -> Arc<Self> {
        Self::with_daemon(store, cfg, crate::metrics::DaemonMetrics::new(), None)
    }

    /// As [`AppState::new`], sharing `metrics` and, for `rlap serve`, the daemon's handles
    /// (`POST /v1/cycle` then asks the daemon for a cycle; `GET /v1/status` shows it).
    pub fn with_daemon(
        store: ModelStore,
        cfg: ServeConfig,
        metrics: crate::metrics::DaemonMetrics,
        daemon: Option<crate::stream::daemon::DaemonHandles>,
    ) -> Arc<Self> {
        let state = Arc::new(Self {
            store,
            cfg,
            current: RwLock::new(None),
            swap: Mutex::new(SwapState::default()),
            metrics,
            daemon,
        });
        let versions = state.store.versions(&state.cfg.model).unwrap_or_default();
        if versions.is_empty() {
            tracing::warn!(
                store = %state.store.root().display(),
                model = %state.cfg.model,
                "the store holds no version of this model yet: /v1/predict answers 503 until one is published"
            );
        }
        let mut guard = state.swap.lock().expect("lock");
        for &v in versions.iter().rev() {
            if state.install(&mut guard, v).is_ok() {
                break;
            }
        }
        drop(guard);
        state
    }

    /// The version being served, if any.
    pub fn current(&self) -> Option<Arc<Served>> {
        self.current.read().expect("lock").clone()
    }

    fn onnx_sha(&self, version: u64) -> Option<String> {
        self.store
            .metadata(&self.cfg.model, version)
            .ok()
            .and_then(|m| m.sha256.get(ONNX_FILE).cloned())
    }

    /// Load `version` and make it current, or record and return why it was refused (the
    /// current one keeps serving). Callers hold the swap lock.
    fn install(&self, swap: &mut SwapState, version: u64) -> Result<(), ServeError> {
        match load_version(&self.store, &self.cfg.model, version) {
            Ok(s) => {
                tracing::info!(model = %self.cfg.model, version, "serving model version");
                *self.current.write().expect("lock") = Some(Arc::new(s));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(model = %self.cfg.model, version, error = %e, "model version refused; keeping the current one");
                swap.refused.push((version, self.onnx_sha(version)));
                Err(e)
            }
        }
    }

    /// Serve `version` and pin it (rollback): the watcher stops following newer versions.
    ///
    /// # Errors
    /// [`ServeError`] when the version does not exist or is refused; nothing changes then.
    pub fn rollback_to(&self, version: u64) -> Result<(), ServeError> {
        let mut swap = self.swap.lock().expect("lock");
        self.install(&mut swap, version)?;
        swap.pinned = Some(version);
        Ok(())
    }

    /// Load the newest version when it is newer than the served one, unless a rollback pinned
    /// a version or this very file was refused before.
    pub fn follow_latest(&self) {
        let mut swap = self.swap.lock().expect("lock");
        if swap.pinned.is_some() {
            return;
        }
        let Ok(latest) = self.store.latest(&self.cfg.model) else {
            return;
        };
        let serving = self.current().map(|s| s.meta.version);
        if serving.is_some_and(|v| latest <= v) {
            return;
        }
        let sha = self.onnx_sha(latest);
        if swap.refused.iter().any(|(v, h)| *v == latest && *h == sha) {
            return;
        }
        let _ = self.install(&mut swap, latest);
    }
}

/// Every error answer: `{"error": "<what went wrong>"}`.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

impl AppState {
    /// Run a prediction handler (`/v1/predict`, `/v2/.../infer`) and count it in
    /// `rlap_predict_requests_total` and `rlap_predict_seconds`.
    async fn observe_predict(
        &self,
        handler: impl std::future::Future<Output = Response>,
    ) -> Response {
        use crate::events::InternalEvent as _;
        let t = std::time::Instant::now();
        let r = handler.await;
        crate::events::PredictServed {
            status: r.status().as_u16(),
            seconds: t.elapsed().as_secs_f64(),
        }
        .emit(&self.metrics);
        r
    }

    /// Why this process is not ready to serve (`/readyz`, `/v2/health/ready`), or `None`.
    fn not_ready(&self) -> Option<&'static str> {
        // In `rlap serve` readiness also needs the brokers: a replica that cannot reach any is
        // taken out of the Service rather than reported healthy.
        if self.daemon.is_some() && self.metrics.broker_reachable.get() == 0 {
            Some("no Kafka broker reachable (rlap_broker_reachable = 0; checked every 5 s)")
        } else if self.current().is_none() {
            Some("no model version loaded yet")
        } else {
            None
        }
    }
}

/// A raw byte body (`type: string, format: binary`): `model.onnx`, or the binary part of an
/// Open Inference Protocol request or answer.
// For the document only: nothing constructs it.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Binary(Vec<u8>);

/// The API's routes (see `openapi/rlap.json`), the Open Inference Protocol's ([`oip`]) among
/// them.
pub fn router(state: Arc<AppState>) -> Router {
    // Room for `max_batch` rows of JSON floats (up to ~24 characters each) of the model's D.
    let d = state.current().map_or(4096, |s| s.meta.input_dim.max(1));
    let body_limit = (state.cfg.max_batch.max(1) * d * 24).max(1 << 20);
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/models", get(list_models))
        .route(
            "/v1/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v1/models/{name}/versions/{version}/model.onnx",
            get(download_onnx),
        )
        .route("/v1/models/{name}/rollback", post(rollback))
        .route("/v1/cycle", post(cycle))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::serve_document))
        .merge(oip::routes())
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Watch the store every `poll_interval` and hot-swap to newer versions, until `shutdown`.
pub async fn watch_store(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.cfg.poll_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let st = state.clone();
                let _ = tokio::task::spawn_blocking(move || st.follow_latest()).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Serve until SIGINT or SIGTERM, then finish in-flight requests and return.
///
/// # Errors
/// I/O errors of binding or serving.
pub async fn run(store: ModelStore, cfg: ServeConfig) -> std::io::Result<()> {
    let bind = cfg.bind;
    let rt = crate::onnx::runtime::loaded().map_err(std::io::Error::other)?;
    tracing::info!(library = %rt.library.display(), version = %rt.version, build = %rt.build, "ONNX Runtime loaded");
    let state = tokio::task::spawn_blocking(move || AppState::new(store, cfg))
        .await
        .map_err(std::io::Error::other)?;
    if state.current().is_none() {
        // Versions exist but none loads (an opset the runtime refuses, a corrupt file): stop
        // with the newest one's reason rather than serve 503 behind a green /healthz.
        let versions = state.store.versions(&state.cfg.model).unwrap_or_default();
        if let Some(&newest) = versions.last() {
            let why = load_version(&state.store, &state.cfg.model, newest)
                .err()
                .map_or_else(String::new, |e| e.to_string());
            return Err(std::io::Error::other(format!(
                "no version of model '{}' in {} loads (versions {versions:?}); newest refused: {why}",
                state.cfg.model,
                state.store.root().display()
            )));
        }
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch_store(state.clone(), rx));
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    let _ = tx.send(true);
    let _ = watcher.await;
    tracing::info!("HTTP API stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
