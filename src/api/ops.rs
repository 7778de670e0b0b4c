//! Operations: `/metrics` (Prometheus text), `/v1/status` (the daemon's engine), `/healthz`
//! and `/readyz` (a model loaded and, in the daemon, a broker reachable).

use super::*;

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.encode(),
    )
        .into_response()
}

/// The streaming daemon's state: phase, model version, noise-rate estimates, leadership,
/// replay buffer, last cycles (`rlap serve` only).
#[utoipa::path(get, path = "/v1/status", tag = "v1",
    responses(
        (status = 200, description = "Daemon status", body = crate::stream::engine::EngineStatus),
        (status = 404, description = "This process serves models only (serve-model)", body = ErrorBody),
        (status = 503, description = "The daemon is starting", body = ErrorBody),
    ))]
pub(super) async fn status(State(st): State<Arc<AppState>>) -> Response {
    match &st.daemon {
        Some(d) => match d.status.lock().expect("status lock").clone() {
            Some(s) => Json(s).into_response(),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is starting"),
        },
        None => error(
            StatusCode::NOT_FOUND,
            "this process only serves models (serve-model): no daemon status",
        ),
    }
}

/// `GET /healthz` answer.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
    /// The ONNX Runtime this process serves with (`null` when it failed to load).
    onnxruntime: Option<crate::onnx::runtime::RuntimeInfo>,
}

/// Liveness, with the ONNX Runtime this process serves with.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up; the ONNX Runtime it serves with", body = Health)))]
pub(super) async fn healthz() -> Response {
    let onnxruntime = crate::onnx::runtime::loaded().ok();
    Json(Health {
        status: "ok",
        onnxruntime,
    })
    .into_response()
}

/// `GET /readyz` answer.
#[derive(Serialize, ToSchema)]
struct Ready {
    ready: bool,
    /// The model served.
    model: String,
    /// The version served.
    version: u64,
}

/// Readiness: a model version is loaded (and, in `rlap serve`, a Kafka broker is reachable).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
pub(super) async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if let Some(why) = st.not_ready() {
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    match st.current() {
        Some(s) => Json(Ready {
            ready: true,
            model: s.meta.model.clone(),
            version: s.meta.version,
        })
        .into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model version loaded yet",
        ),
    }
}
