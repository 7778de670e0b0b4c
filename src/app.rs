//! `rlap serve`: the streaming daemon ([`crate::stream::daemon`]) and, when `api.enabled`,
//! the HTTP API ([`crate::api`]) composed in one process. The API reads the daemon's
//! handles (metrics, status, cycle requests); the daemon knows nothing of the API, so neither
//! imports the other.
//!
//! Shutdown order: the daemon stops first (it drains and commits), then the API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::metrics::DaemonMetrics;
use crate::store::{ModelStore, StoreError};
use crate::stream::config::ValidConfig;
use crate::stream::daemon::{self, DaemonError, DaemonHandles, DaemonSummary};

/// Why `rlap serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The daemon failed (see [`DaemonError`]).
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The API's model store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP API could not start: ONNX Runtime missing or too old, address taken.
    #[error("api: {0}")]
    Api(String),
}

/// Run the daemon and, when `api.enabled`, the HTTP API (predict, versions, rollback, cycle,
/// status, metrics) until `shutdown` becomes true.
///
/// # Errors
/// [`AppError::Daemon`] as [`daemon::run`], or [`AppError::Api`] when ONNX Runtime cannot be
/// loaded or the listen address is taken.
pub async fn serve(
    cfg: Arc<ValidConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<DaemonSummary, AppError> {
    let metrics = DaemonMetrics::new();
    let status = Arc::new(Mutex::new(None));
    let (control_tx, control_rx) = mpsc::channel(1);
    // The API stops after the daemon has (also when the daemon fails).
    let (api_stop_tx, api_stop) = watch::channel(false);
    let api = match cfg.listen() {
        Some(bind) => {
            let handles = DaemonHandles {
                metrics: metrics.clone(),
                status: status.clone(),
                control: control_tx,
            };
            Some(start_api(&cfg, bind, handles, api_stop).await?)
        }
        None => {
            drop(control_tx);
            None
        }
    };
    let r = daemon::run(cfg, metrics, shutdown, status, control_rx).await;
    let _ = api_stop_tx.send(true);
    if let Some(api) = api {
        let _ = api.await;
    }
    Ok(r?)
}

/// Bind `bind` and serve the API over the store's versions until `stop` flips.
async fn start_api(
    cfg: &ValidConfig,
    bind: std::net::SocketAddr,
    handles: DaemonHandles,
    api_stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    let store = ModelStore::open(&cfg.model.store, cfg.model.retain)?;
    let scfg = crate::api::ServeConfig {
        bind,
        model: cfg.model.name.clone(),
        admin_token: Some(cfg.api.admin_token.clone()).filter(|t| !t.is_empty()),
        poll_interval: Duration::from_secs(1),
        max_batch: cfg.api.max_batch,
    };
    // The API serves the published versions through ONNX Runtime: a missing or too old
    // library stops the daemon at start-up with one line, not 503s behind a green probe.
    let rt = crate::onnx::runtime::loaded().map_err(|e| AppError::Api(e.to_string()))?;
    tracing::info!(library = %rt.library.display(), version = %rt.version, build = %rt.build, "ONNX Runtime loaded");
    let m = handles.metrics.clone();
    let state = tokio::task::spawn_blocking(move || {
        crate::api::AppState::with_daemon(store, scfg, m, Some(handles))
    })
    .await
    .map_err(|e| AppError::Api(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| AppError::Api(format!("binding {bind}: {e}")))?;
    tracing::info!(addr = %bind, "HTTP API listening");
    let watcher = tokio::spawn(crate::api::watch_store(state.clone(), api_stop.clone()));
    let mut stop = api_stop;
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, crate::api::router(state))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
        let _ = watcher.await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP API failed");
        }
        tracing::info!("HTTP API stopped");
    }))
}
