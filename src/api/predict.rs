//! `POST /v1/predict`: class probabilities of a batch from the current model version (the
//! version a request starts with serves it to the end).

use super::*;

/// `POST /v1/predict` body.
#[derive(Deserialize, ToSchema)]
struct PredictRequest {
    /// `[batch][D]` features.
    instances: Vec<Vec<f32>>,
}

/// One instance's prediction.
#[derive(Serialize, ToSchema)]
struct Prediction {
    /// The most probable class.
    class: usize,
    /// Softmax of the logits, `[K]`.
    probabilities: Vec<f32>,
}

/// `POST /v1/predict` answer: one prediction per instance, and the version that made them.
#[derive(Serialize, ToSchema)]
struct PredictResponse {
    model: String,
    version: u64,
    predictions: Vec<Prediction>,
}

/// Classify a batch of samples with the current model version.
#[utoipa::path(post, path = "/v1/predict", tag = "v1",
    request_body = PredictRequest,
    responses(
        (status = 200, description = "One prediction per instance", body = PredictResponse),
        (status = 400, description = "Malformed JSON, wrong feature count, NaN/Inf", body = ErrorBody),
        (status = 413, description = "Batch larger than the configured maximum", body = ErrorBody),
        (status = 503, description = "No model version loaded yet", body = ErrorBody),
        (status = 500, description = "ONNX Runtime failed", body = ErrorBody),
    ))]
pub(super) async fn predict(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    st.observe_predict(predict_inner(&st, body)).await
}

async fn predict_inner(st: &Arc<AppState>, body: Bytes) -> Response {
    let req: PredictRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let Some(served) = st.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model version loaded yet",
        );
    };
    let d = served.meta.input_dim;
    if req.instances.is_empty() {
        return error(StatusCode::BAD_REQUEST, "instances is empty");
    }
    if req.instances.len() > st.cfg.max_batch {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} instances; at most {} per request",
                req.instances.len(),
                st.cfg.max_batch
            ),
        );
    }
    let mut flat = Vec::with_capacity(req.instances.len() * d);
    for (i, x) in req.instances.iter().enumerate() {
        if x.len() != d {
            return error(
                StatusCode::BAD_REQUEST,
                format!("instance {i}: {} features, expected {d}", x.len()),
            );
        }
        if x.iter().any(|v| !v.is_finite()) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("instance {i}: NaN or infinite feature"),
            );
        }
        flat.extend_from_slice(x);
    }
    // ONNX Runtime runs synchronously: keep it off the async workers.
    let run = {
        let served = served.clone();
        tokio::task::spawn_blocking(move || served.onnx.logits(&flat)).await
    };
    let logits = match run {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let k = served.meta.num_classes;
    let predictions = logits
        .chunks(k)
        .map(|row| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            let probabilities: Vec<f32> = e.iter().map(|v| v / s).collect();
            let class = probabilities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(c, _)| c);
            Prediction {
                class,
                probabilities,
            }
        })
        .collect();
    Json(PredictResponse {
        model: served.meta.model.clone(),
        version: served.meta.version,
        predictions,
    })
    .into_response()
}
