//! The Open Inference Protocol (KServe v2, the HTTP/REST protocol Triton speaks) beside the
//! `/v1` API: server and model health, model metadata and inference on the same ONNX Runtime
//! session `/v1/predict` uses, so KServe's and Triton's clients (`tritonclient[http]`) work
//! against rlap unchanged.
//!
//! Endpoints (`{name}` is the served model; `/versions/{version}` may follow `{name}`):
//! `GET /v2`, `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2/models/{name}`,
//! `GET /v2/models/{name}/ready`, `POST /v2/models/{name}/infer`.
//!
//! Tensors: one input, the graph's `input` (`FP32`, shape `[n, D]`), one output, the graph's
//! `logits` (`FP32`, `[n, K]`), both row-major. Input data comes as JSON (`data`, flat or
//! nested) or in the protocol's binary tensor extension (`Inference-Header-Content-Length`
//! header, `binary_data_size` parameter, little-endian bytes after the JSON header), which is
//! what `tritonclient` sends by default; outputs are JSON unless the request asks for binary
//! (`binary_data_output`, or `binary_data` on a requested output). Errors are the protocol's
//! `{"error": "..."}` with 400 (bad request), 404 (unknown model or version), 413 (batch
//! larger than `max_batch`), 503 (the version is not loaded) or 500.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{error, AppState, ErrorBody, Served};
use crate::onnx::export::{INPUT, OUTPUT};
use crate::store::StoreError;

/// The platform name KServe and Triton use for ONNX Runtime models (the store writes it
/// into each `config.pbtxt`).
pub use crate::store::PLATFORM;
/// The only tensor datatype rlap's models take and give.
pub const DATATYPE: &str = "FP32";
/// The header of the binary tensor extension: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A protocol error: the status and the message answered as `{"error": message}`.
#[derive(Debug)]
struct OipError(StatusCode, String);

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

impl From<StoreError> for OipError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::BadName(_) | StoreError::NoSuchVersion { .. } | StoreError::Empty(_) => {
                StatusCode::NOT_FOUND
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> OipError {
    OipError(StatusCode::BAD_REQUEST, msg.into())
}

/// Either response, as one.
fn respond(r: Result<Response, OipError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v2` answer: the server's name, version and protocol extensions.
#[derive(Serialize, ToSchema)]
#[schema(as = ServerMetadataV2)]
struct ServerMetadata {
    /// `rlap`.
    name: &'static str,
    /// rlap's version.
    version: &'static str,
    /// `binary_tensor_data`.
    extensions: Vec<&'static str>,
}

/// `GET /v2/health/live` answer.
#[derive(Serialize, ToSchema)]
#[schema(as = LiveV2)]
struct Live {
    live: bool,
}

/// `GET /v2/health/ready` answer.
#[derive(Serialize, ToSchema)]
#[schema(as = ReadyV2)]
struct ServerReady {
    ready: bool,
}

/// One tensor's description in model metadata.
#[derive(Serialize, ToSchema)]
#[schema(as = TensorMetadataV2)]
struct TensorMetadata {
    /// `input` or `logits`.
    name: &'static str,
    /// `FP32`.
    datatype: &'static str,
    /// `[-1, D]` (input) or `[-1, K]` (output); `-1` is the variable batch dimension.
    #[schema(value_type = Vec<i64>)]
    shape: [i64; 2],
}

/// `GET /v2/models/{name}[/versions/{version}]` answer.
#[derive(Serialize, ToSchema)]
#[schema(as = ModelMetadataV2)]
struct ModelMetadata {
    name: String,
    /// Every published version, as the protocol's strings.
    versions: Vec<String>,
    /// `onnxruntime_onnx`.
    platform: &'static str,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
}

/// `GET /v2/models/{name}[/versions/{version}]/ready` answer.
#[derive(Serialize, ToSchema)]
#[schema(as = ModelReadyV2)]
struct ModelReady {
    name: String,
    /// The version being served.
    version: String,
    ready: bool,
}

/// One input tensor of an inference request.
#[derive(Deserialize, ToSchema)]
#[schema(as = InferInputV2)]
struct InferInput {
    /// `input`.
    name: String,
    /// `[n, D]`.
    shape: Vec<i64>,
    /// `FP32`.
    datatype: String,
    /// `binary_data_size`: bytes of this tensor in the binary part of the body
    /// (little-endian FP32, row-major).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    /// Row-major values, flat or nested; absent with `binary_data_size`.
    #[schema(value_type = Option<Vec<Value>>)]
    data: Option<Value>,
}

/// One requested output.
#[derive(Deserialize, ToSchema)]
#[schema(as = RequestedOutputV2)]
struct RequestedOutput {
    /// `logits`.
    name: String,
    /// `binary_data`: true returns this output in the binary part of the body.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
}

/// `POST /v2/models/{name}[/versions/{version}]/infer` body (its JSON part).
#[derive(Deserialize, ToSchema)]
#[schema(as = InferRequestV2)]
struct InferRequest {
    /// Echoed in the answer.
    id: Option<String>,
    /// `binary_data_output`: true returns every output in binary form.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    inputs: Vec<InferInput>,
    /// The outputs wanted (default: all, i.e. `logits`).
    outputs: Option<Vec<RequestedOutput>>,
}

/// One output tensor of an inference response.
#[derive(Serialize, ToSchema)]
#[schema(as = InferOutputV2)]
struct InferOutput {
    /// `logits`.
    name: &'static str,
    /// `FP32`.
    datatype: &'static str,
    /// `[n, K]`.
    #[schema(value_type = Vec<u64>)]
    shape: [usize; 2],
    /// `binary_data_size` when the output is in the binary part of the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
    /// Row-major logits, flat (absent when binary).
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Vec<f32>>,
}

/// An inference answer (its JSON part).
#[derive(Serialize, ToSchema)]
#[schema(as = InferResponseV2)]
struct InferResponse {
    model_name: String,
    model_version: String,
    /// The request's id, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<InferOutput>,
}

/// The routes of the protocol, merged into [`super::router`].
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_version),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
}

/// Open Inference Protocol: server metadata.
#[utoipa::path(get, path = "/v2", tag = "v2",
    responses((status = 200, description = "Server name, version and protocol extensions", body = ServerMetadata)))]
pub(super) async fn server_metadata() -> Response {
    Json(ServerMetadata {
        name: "rlap",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data"],
    })
    .into_response()
}

/// Open Inference Protocol: liveness.
#[utoipa::path(get, path = "/v2/health/live", tag = "v2",
    responses((status = 200, description = "Live", body = Live)))]
pub(super) async fn live() -> Response {
    Json(Live { live: true }).into_response()
}

/// Open Inference Protocol: readiness (as `/readyz`).
#[utoipa::path(get, path = "/v2/health/ready", tag = "v2",
    responses(
        (status = 200, description = "Ready", body = ServerReady),
        (status = 503, description = "Not ready: no version loaded, or (rlap serve) no Kafka broker reachable", body = ErrorBody),
    ))]
pub(super) async fn ready(State(st): State<Arc<AppState>>) -> Response {
    match st.not_ready() {
        None => Json(ServerReady { ready: true }).into_response(),
        Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// The version named in a path: a canonical decimal integer, else 400.
fn parse_version(v: &str) -> Result<u64, OipError> {
    v.parse::<u64>()
        .ok()
        .filter(|n| n.to_string() == v)
        .ok_or_else(|| {
            bad(format!(
                "bad model version '{v}': versions are integers (1, 2, …)"
            ))
        })
}

fn metadata_of(st: &AppState, name: &str, version: Option<&str>) -> Result<Response, OipError> {
    let version = version.map(parse_version).transpose()?;
    let versions = st.store.versions(name)?;
    // The served version's shapes when it is the one asked for (or none is), else the store's.
    let served = st
        .current()
        .filter(|s| s.meta.model == name && version.is_none_or(|v| v == s.meta.version));
    let (d, k) = match served {
        Some(s) => (s.meta.input_dim, s.meta.num_classes),
        None => {
            let v = version
                .or_else(|| versions.last().copied())
                .ok_or_else(|| {
                    OipError(
                        StatusCode::NOT_FOUND,
                        format!("unknown model '{name}': it has no published version"),
                    )
                })?;
            let m = st.store.metadata(name, v)?;
            (m.input_dim, m.num_classes)
        }
    };
    Ok(Json(ModelMetadata {
        name: name.to_string(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: PLATFORM,
        inputs: vec![TensorMetadata {
            name: INPUT,
            datatype: DATATYPE,
            shape: [-1, d as i64],
        }],
        outputs: vec![TensorMetadata {
            name: OUTPUT,
            datatype: DATATYPE,
            shape: [-1, k as i64],
        }],
    })
    .into_response())
}

/// Open Inference Protocol: model metadata.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "v2",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Model metadata: platform, tensor names, datatypes and shapes", body = ModelMetadata),
        (status = 404, description = "Unknown model", body = ErrorBody),
    ))]
pub(super) async fn model_metadata(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    respond(metadata_of(&st, &name, None))
}

/// Open Inference Protocol: metadata of one model version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "v2",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "Model version (an integer, as a string in this protocol)"),
    ),
    responses(
        (status = 200, description = "Model metadata: platform, tensor names, datatypes and shapes", body = ModelMetadata),
        (status = 400, description = "The version is not an integer", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
    ))]
pub(super) async fn model_metadata_version(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Response {
    respond(metadata_of(&st, &name, Some(&version)))
}

/// The served version when it is `name` (and `version`, if given); else the response saying
/// why not: 404 for a model or version the store does not have, 503 for one not loaded.
fn served_as(st: &AppState, name: &str, version: Option<&str>) -> Result<Arc<Served>, OipError> {
    let version = version.map(parse_version).transpose()?;
    if name != st.cfg.model {
        let known = st.store.models().unwrap_or_default();
        return Err(if known.iter().any(|m| m == name) {
            OipError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "model '{name}' is in the store but this server serves '{}'",
                    st.cfg.model
                ),
            )
        } else {
            OipError(StatusCode::NOT_FOUND, format!("unknown model '{name}'"))
        });
    }
    if let Some(v) = version {
        st.store.version_dir(name, v)?;
    }
    let Some(served) = st.current() else {
        return Err(OipError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model version loaded yet".into(),
        ));
    };
    match version {
        Some(v) if v != served.meta.version => Err(OipError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "model '{name}' version {v} is not loaded (serving version {})",
                served.meta.version
            ),
        )),
        _ => Ok(served),
    }
}

fn ready_of(st: &AppState, name: &str, version: Option<&str>) -> Response {
    match served_as(st, name, version) {
        Ok(s) => Json(ModelReady {
            name: name.to_string(),
            version: s.meta.version.to_string(),
            ready: true,
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Open Inference Protocol: model readiness.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "v2",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The model is loaded and serving", body = ModelReady),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 503, description = "Not loaded: another model is served, or none yet", body = ErrorBody),
    ))]
pub(super) async fn model_ready(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    ready_of(&st, &name, None)
}

/// Open Inference Protocol: readiness of one model version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "v2",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "Model version (an integer, as a string in this protocol)"),
    ),
    responses(
        (status = 200, description = "The version is loaded and serving", body = ModelReady),
        (status = 400, description = "The version is not an integer", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 503, description = "Not loaded: another version is served, or none yet", body = ErrorBody),
    ))]
pub(super) async fn model_ready_version(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Response {
    ready_of(&st, &name, Some(&version))
}

/// Open Inference Protocol: inference on the served version (the `/v1/predict` session).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "v2",
    params(("name" = String, Path, description = "Model name")),
    request_body(description = "JSON, or a JSON header of Inference-Header-Content-Length bytes followed by the inputs' binary data",
        content((InferRequest = "application/json"), (super::Binary = "application/octet-stream"))),
    responses(
        (status = 200, description = "Logits [n, K]: JSON, or a JSON header (Inference-Header-Content-Length bytes) followed by binary tensor data",
            content((InferResponse = "application/json"), (super::Binary = "application/octet-stream"))),
        (status = 400, description = "Bad request: JSON, input name, datatype, shape, data size or values, output name", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 413, description = "Batch larger than max_batch", body = ErrorBody),
        (status = 500, description = "ONNX Runtime failed", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody),
    ))]
pub(super) async fn infer(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.observe_predict(async { respond(infer_inner(&st, &name, None, &headers, body).await) })
        .await
}

/// Open Inference Protocol: inference on a named version (only the served one answers).
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "v2",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "Model version (an integer, as a string in this protocol)"),
    ),
    request_body(description = "JSON, or a JSON header of Inference-Header-Content-Length bytes followed by the inputs' binary data",
        content((InferRequest = "application/json"), (super::Binary = "application/octet-stream"))),
    responses(
        (status = 200, description = "Logits [n, K]: JSON, or a JSON header (Inference-Header-Content-Length bytes) followed by binary tensor data",
            content((InferResponse = "application/json"), (super::Binary = "application/octet-stream"))),
        (status = 400, description = "Bad request: JSON, input name, datatype, shape, data size or values, output name, version", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Batch larger than max_batch", body = ErrorBody),
        (status = 500, description = "ONNX Runtime failed", body = ErrorBody),
        (status = 503, description = "The version is not loaded (another one is served)", body = ErrorBody),
    ))]
pub(super) async fn infer_version(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.observe_predict(async {
        respond(infer_inner(&st, &name, Some(&version), &headers, body).await)
    })
    .await
}

/// Append every number of a flat or nested JSON array to `out`, as f32.
fn flatten(v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|x| flatten(x, out)),
        Value::Number(n) => n
            .as_f64()
            .map(|x| out.push(x as f32))
            .ok_or_else(|| format!("{n} is not a number")),
        other => Err(format!("{other} is not a number")),
    }
}

/// A `bool` parameter (`false` when absent or not a boolean).
fn flag(params: &Map<String, Value>, key: &str) -> bool {
    params.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Split the body at the binary extension's header, if present: (JSON part, binary part).
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), OipError> {
    let Some(h) = headers.get(HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let n = h
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n <= body.len())
        .ok_or_else(|| {
            bad(format!(
                "Inference-Header-Content-Length {h:?} is not a length within the {}-byte body",
                body.len()
            ))
        })?;
    Ok(body.split_at(n))
}

async fn infer_inner(
    st: &Arc<AppState>,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, OipError> {
    let served = served_as(st, name, version)?;
    let (json, mut binary) = split_body(headers, &body)?;
    let req: InferRequest = serde_json::from_slice(json)
        .map_err(|e| bad(format!("bad inference request JSON: {e}")))?;
    let d = served.meta.input_dim;
    let [input] = req.inputs.as_slice() else {
        return Err(bad(format!(
            "{} inputs; the model takes one, '{INPUT}' [-1, {d}]",
            req.inputs.len()
        )));
    };
    if input.name != INPUT {
        return Err(bad(format!(
            "unexpected input '{}'; the model's input is '{INPUT}'",
            input.name
        )));
    }
    if input.datatype != DATATYPE {
        return Err(bad(format!(
            "input '{INPUT}': datatype {}; the model takes {DATATYPE}",
            input.datatype
        )));
    }
    let n = match input.shape.as_slice() {
        [n, dd] if *n >= 1 && *dd == d as i64 => *n as usize,
        _ => {
            return Err(bad(format!(
                "input '{INPUT}': shape {:?}; expected [n, {d}] with n ≥ 1",
                input.shape
            )))
        }
    };
    if n > st.cfg.max_batch {
        return Err(OipError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("batch of {n}; at most {} per request", st.cfg.max_batch),
        ));
    }
    let mut flat = Vec::with_capacity(n * d);
    if let Some(size) = input.parameters.get("binary_data_size") {
        let Some(size) = size.as_u64().map(|s| s as usize) else {
            return Err(bad(format!("binary_data_size {size} is not a byte count")));
        };
        if size != n * d * 4 || size > binary.len() {
            return Err(bad(format!(
                "input '{INPUT}': binary_data_size {size} bytes, {} left in the body; shape {:?} needs {}",
                binary.len(),
                input.shape,
                n * d * 4
            )));
        }
        let (mine, rest) = binary.split_at(size);
        binary = rest;
        flat.extend(
            mine.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    } else {
        let Some(data) = &input.data else {
            return Err(bad(format!(
                "input '{INPUT}' has neither data nor binary_data_size"
            )));
        };
        flatten(data, &mut flat).map_err(|e| bad(format!("input '{INPUT}': {e}")))?;
        if flat.len() != n * d {
            return Err(bad(format!(
                "input '{INPUT}': {} values for shape {:?} ({} expected)",
                flat.len(),
                input.shape,
                n * d
            )));
        }
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data that no input claims",
            binary.len()
        )));
    }
    if flat.iter().any(|v| !v.is_finite()) {
        return Err(bad(format!("input '{INPUT}': NaN or infinite value")));
    }
    // Which outputs, and in which form.
    let mut binary_out = flag(&req.parameters, "binary_data_output");
    if let Some(outs) = &req.outputs {
        if let Some(o) = outs.iter().find(|o| o.name != OUTPUT) {
            return Err(bad(format!(
                "unknown output '{}'; the model's output is '{OUTPUT}'",
                o.name
            )));
        }
        if let Some(o) = outs.first() {
            if let Some(b) = o.parameters.get("binary_data").and_then(Value::as_bool) {
                binary_out = b;
            }
        }
    }
    let run = {
        let served = served.clone();
        tokio::task::spawn_blocking(move || served.onnx.logits(&flat)).await
    };
    let internal = |e: String| OipError(StatusCode::INTERNAL_SERVER_ERROR, e);
    let logits = run
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| internal(e.to_string()))?;
    let k = served.meta.num_classes;
    let mut out = InferOutput {
        name: OUTPUT,
        datatype: DATATYPE,
        shape: [n, k],
        parameters: None,
        data: None,
    };
    let tail: Vec<u8> = if binary_out {
        out.parameters = Some(serde_json::json!({ "binary_data_size": logits.len() * 4 }));
        logits.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        out.data = Some(logits);
        Vec::new()
    };
    let resp = InferResponse {
        model_name: served.meta.model.clone(),
        model_version: served.meta.version.to_string(),
        id: req.id,
        outputs: vec![out],
    };
    let mut bytes = serde_json::to_vec(&resp).map_err(|e| internal(e.to_string()))?;
    if tail.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response());
    }
    let json_len = bytes.len().to_string();
    bytes.extend_from_slice(&tail);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::HeaderName::from_static(HEADER_LENGTH), json_len),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_data_flatten_alike() {
        let mut a = vec![];
        flatten(&serde_json::json!([[1.0, 2.0], [3.0, 4.5]]), &mut a).unwrap();
        let mut b = vec![];
        flatten(&serde_json::json!([1, 2, 3, 4.5]), &mut b).unwrap();
        assert_eq!(a, b);
        assert!(flatten(&serde_json::json!([1, "x"]), &mut vec![]).is_err());
    }

    #[test]
    fn versions_are_canonical_integers() {
        assert_eq!(parse_version("3").ok(), Some(3));
        for v in ["03", "+3", "x", "-1", ""] {
            assert!(parse_version(v).is_err(), "{v}");
        }
    }
}
