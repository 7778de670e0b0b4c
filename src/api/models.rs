//! The store's versions and files (`/v1/models…`: list, metadata, ONNX download) and the
//! admin operations behind the bearer token: rollback and a cycle request to the daemon.

use super::*;

/// One model of the store.
#[derive(Serialize, ToSchema)]
struct ModelEntry {
    name: String,
    /// Published versions, ascending.
    versions: Vec<u64>,
    /// The version this server serves, if it serves this model.
    serving: Option<u64>,
}

/// `GET /v1/models` answer.
#[derive(Serialize, ToSchema)]
struct ModelList {
    models: Vec<ModelEntry>,
}

/// Models in the store, their versions and the one being served.
#[utoipa::path(get, path = "/v1/models", tag = "v1",
    responses(
        (status = 200, description = "Model list", body = ModelList),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub(super) async fn list_models(State(st): State<Arc<AppState>>) -> Response {
    let names = match st.store.models() {
        Ok(n) => n,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let serving = st.current().map(|s| (s.meta.model.clone(), s.meta.version));
    let models: Vec<ModelEntry> = names
        .into_iter()
        .map(|name| ModelEntry {
            versions: st.store.versions(&name).unwrap_or_default(),
            serving: serving
                .as_ref()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| *v),
            name,
        })
        .collect();
    Json(ModelList { models }).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::BadName(_) | StoreError::NoSuchVersion { .. } | StoreError::Empty(_) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Metadata of one version (its `metadata.json`).
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}", tag = "v1",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = u64, Path, description = "Model version"),
    ),
    responses(
        (status = 200, description = "metadata.json of the version", body = VersionMetadata),
        (status = 404, description = "No such model or version", body = ErrorBody),
    ))]
pub(super) async fn version_metadata(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, u64)>,
) -> Response {
    match st.store.metadata(&name, version) {
        Ok(m) => Json(m).into_response(),
        Err(e) => store_error(e),
    }
}

/// Download the version's ONNX model.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}/model.onnx", tag = "v1",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = u64, Path, description = "Model version"),
    ),
    responses(
        (status = 200, description = "model.onnx", body = Binary, content_type = "application/octet-stream"),
        (status = 404, description = "No such model or version", body = ErrorBody),
    ))]
pub(super) async fn download_onnx(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, u64)>,
) -> Response {
    // `name` is checked as a plain folder name and `version` parsed as a number by the store:
    // no path can leave the store.
    let dir = match st.store.version_dir(&name, version) {
        Ok(d) => d,
        Err(e) => return store_error(e),
    };
    match std::fs::read(dir.join(ONNX_FILE)) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `None` when the request carries the admin bearer token, else the rejection to send.
fn authorize(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = st.cfg.admin_token.as_ref().filter(|t| !t.is_empty()) else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "admin API disabled: configure an admin token",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

/// Compare secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /v1/models/{name}/rollback` body.
#[derive(Deserialize, ToSchema)]
struct RollbackRequest {
    /// The version to serve (and pin).
    version: u64,
}

/// `POST /v1/models/{name}/rollback` answer.
#[derive(Serialize, ToSchema)]
struct RollbackResponse {
    model: String,
    /// The version now served.
    serving: u64,
    /// Always true: the watcher no longer follows newer versions.
    pinned: bool,
}

/// Serve a named version and stop following newer ones (admin).
#[utoipa::path(post, path = "/v1/models/{name}/rollback", tag = "v1",
    params(("name" = String, Path, description = "Model name")),
    request_body = RollbackRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Now serving that version", body = RollbackResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Admin API disabled (no token configured)", body = ErrorBody),
        (status = 404, description = "No such model or version", body = ErrorBody),
        (status = 422, description = "The version failed to load or its smoke check; the current one keeps serving", body = ErrorBody),
    ))]
pub(super) async fn rollback(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&st, &headers) {
        return r;
    }
    if name != st.cfg.model {
        return error(
            StatusCode::NOT_FOUND,
            format!("this server serves '{}', not '{name}'", st.cfg.model),
        );
    }
    let req: RollbackRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || st2.rollback_to(req.version)).await {
        Ok(Ok(())) => Json(RollbackResponse {
            model: name,
            serving: req.version,
            pinned: true,
        })
        .into_response(),
        Ok(Err(ServeError::Store(e))) => store_error(e),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /v1/cycle` answer.
#[derive(Serialize, ToSchema)]
struct CycleRequested {
    requested: bool,
}

/// Ask the daemon to run a prune-and-fine-tune cycle now (admin).
#[utoipa::path(post, path = "/v1/cycle", tag = "v1",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The daemon will start a cycle at its next micro-batch (its outcome appears in GET /v1/status and rlap_cycles_total)", body = CycleRequested),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Admin API disabled", body = ErrorBody),
        (status = 409, description = "This process serves models only; no daemon runs here", body = ErrorBody),
        (status = 429, description = "A cycle request is already pending", body = ErrorBody),
    ))]
pub(super) async fn cycle(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = authorize(&st, &headers) {
        return r;
    }
    match &st.daemon {
        Some(d) => match d.control.try_send(crate::stream::daemon::Control::Cycle) {
            Ok(()) => (
                StatusCode::ACCEPTED,
                Json(CycleRequested { requested: true }),
            )
                .into_response(),
            Err(_) => error(
                StatusCode::TOO_MANY_REQUESTS,
                "a cycle request is already pending",
            ),
        },
        None => error(
            StatusCode::CONFLICT,
            "this process only serves models (serve-model): cycles are run by the streaming daemon",
        ),
    }
}
