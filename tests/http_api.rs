//! The HTTP API against its OpenAPI document (`openapi/rlap.json`, generated from the code and
//! also served at `/openapi.json`), on loopback, with the real
//! ONNX Runtime: every documented path and method is called, every JSON response is checked
//! against the documented schema for its status; hot swap under load, refusal of a corrupt
//! version, rollback and pinning, admin auth, path traversal.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use rlap::api::{router, watch_store, AppState, ServeConfig};
use rlap::data::{default_data_dir, load, DatasetSpec};
use rlap::model::{Arch, Model, ModelSpec};
use rlap::progress::Progress;
use rlap::store::{ModelStore, PublishInfo, ONNX_FILE};
use rlap::train::{train, TrainConfig};
use serde_json::Value;

/// Minimal OpenAPI 3.0/3.1 schema check: `$ref`, `oneOf`/`anyOf`/`allOf`, `type` (a name or,
/// in 3.1, a list of names with `"null"`), `nullable`, `required`, `properties`, `items`.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        return check(doc, &doc["components"]["schemas"][name], v, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            let errors: Vec<String> = alts
                .iter()
                .filter_map(|s| check(doc, s, v, at).err())
                .collect();
            if errors.len() == alts.len() {
                return Err(format!("{at}: no alternative of {key} fits: {errors:?}"));
            }
        }
    }
    for s in schema["allOf"].as_array().into_iter().flatten() {
        check(doc, s, v, at)?;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if v.is_null() && (schema["nullable"] == true || types.contains(&"null")) {
        return Ok(());
    }
    let fits = |t: &str| match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    };
    if !types.is_empty() && !types.iter().any(|t| fits(t)) {
        return Err(format!("{at}: expected {}, got {v}", schema["type"]));
    }
    for req in schema["required"].as_array().into_iter().flatten() {
        let k = req.as_str().unwrap();
        if v.get(k).is_none() {
            return Err(format!("{at}: missing required '{k}'"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if let Some(x) = v.get(k) {
                check(doc, s, x, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

struct Client {
    base: String,
    agent: ureq::Agent,
    doc: Value,
    exercised: BTreeSet<(String, String)>,
}

impl Client {
    /// Call `method path`, expect `status`, validate a JSON body against the document for
    /// `template` (the documented path). Returns the raw body.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        template: &str,
        body: Option<&str>,
        token: Option<&str>,
        status: u16,
    ) -> Vec<u8> {
        let url = format!("{}{}", self.base, path);
        let mut resp = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(t) = token {
                    r = r.header("Authorization", &format!("Bearer {t}"));
                }
                r.call().unwrap()
            }
            (_, b) => {
                let mut r = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(t) = token {
                    r = r.header("Authorization", &format!("Bearer {t}"));
                }
                r.send(b.unwrap_or("")).unwrap()
            }
        };
        let got = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp.body_mut().read_to_vec().unwrap();
        assert_eq!(
            got,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let op = &self.doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        let resp_doc = &op["responses"][status.to_string()];
        assert!(
            resp_doc.is_object(),
            "{method} {template} {status} is not documented"
        );
        if ctype.starts_with("application/json") {
            let schema = &resp_doc["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{method} {template} {status}: JSON body not documented"
            );
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let doc = self.doc.clone();
            check(&doc, schema, &v, "body")
                .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"));
        } else {
            let documented: Vec<&String> =
                resp_doc["content"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|k| ctype.starts_with(k.as_str())),
                "{method} {path}: content-type {ctype} not in {documented:?}"
            );
        }
        self.exercised
            .insert((template.to_string(), method.to_lowercase()));
        bytes
    }

    fn json(
        &mut self,
        method: &str,
        path: &str,
        template: &str,
        body: Option<&str>,
        token: Option<&str>,
        status: u16,
    ) -> Value {
        serde_json::from_slice(&self.call(method, path, template, body, token, status)).unwrap()
    }
}

fn trained_model(seed: u64, prune: &[usize]) -> Model {
    let split = load(&DatasetSpec::Mnist, &default_data_dir()).expect("run scripts/setup-data.sh");
    let set = split
        .train
        .select(&split.train.stratified_indices(1000, seed));
    let spec = ModelSpec::for_dataset(Arch::Mlp, 64, &set);
    let mut m = Model::new(spec, &Device::Cpu, seed).unwrap();
    let cfg = TrainConfig::paper(1, seed);
    train(&m, &set, &cfg, &Progress::hidden(), "t").unwrap();
    m.prune(prune).unwrap();
    m
}

fn wait_for_version(c: &mut Client, v: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let r = c.json("GET", "/readyz", "/readyz", None, None, 200);
        if r["version"] == v {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("version {v} never served");
}

#[test]
fn http_api_matches_its_openapi_document() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/rlap.json"))
            .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::open(dir.path(), 10).unwrap();
    let v1 = trained_model(1, &[]);
    store
        .publish("digits", &v1, PublishInfo::default())
        .unwrap();

    let cfg = ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        model: "digits".into(),
        admin_token: Some("s3cret".into()),
        poll_interval: Duration::from_millis(100),
        max_batch: 64,
    };
    let state = AppState::new(store.clone(), cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    rt.spawn(watch_store(state.clone(), rx));
    rt.spawn(async move { axum::serve(listener, router(state)).await.unwrap() });

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut c = Client {
        base: format!("http://{addr}"),
        agent,
        doc: doc.clone(),
        exercised: BTreeSet::new(),
    };
    let served = c.json("GET", "/openapi.json", "/openapi.json", None, None, 200);
    assert!(
        served == doc,
        "GET /openapi.json does not serve the document openapi/rlap.json holds"
    );
    // The checker itself rejects what it should (3.1 type lists, oneOf with null).
    let t = serde_json::json!({"type": ["integer", "null"]});
    assert!(check(&doc, &t, &Value::Null, "t").is_ok());
    assert!(check(&doc, &t, &serde_json::json!("x"), "t").is_err());
    let o =
        serde_json::json!({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Error"}]});
    assert!(check(&doc, &o, &serde_json::json!({"error": "e"}), "o").is_ok());
    assert!(check(&doc, &o, &serde_json::json!({"nope": 1}), "o").is_err());
    let h = c.json("GET", "/healthz", "/healthz", None, None, 200);
    assert!(
        h["onnxruntime"]["version"] == rlap::onnx::runtime::ORT_VERSION,
        "/healthz names the runtime version: {h}"
    );
    assert_eq!(
        c.json("GET", "/readyz", "/readyz", None, None, 200)["version"],
        1
    );

    // Predictions equal candle's on real test images.
    let split = load(&DatasetSpec::Mnist, &default_data_dir()).unwrap();
    let images: Vec<Vec<f32>> = (0..3).map(|i| split.test.row(i).to_vec()).collect();
    let body = serde_json::json!({ "instances": images }).to_string();
    let r = c.json("POST", "/v1/predict", "/v1/predict", Some(&body), None, 200);
    let want = v1.predict(&split.test.features[..3 * 784], 3).unwrap();
    for (i, p) in r["predictions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p["class"], want[i]);
        let s: f64 = p["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((s - 1.0).abs() < 1e-4);
    }
    c.json(
        "POST",
        "/v1/predict",
        "/v1/predict",
        Some(r#"{"instances": [[1.0, 2.0]]}"#),
        None,
        400,
    );
    c.json(
        "POST",
        "/v1/predict",
        "/v1/predict",
        Some("not json"),
        None,
        400,
    );
    let big = serde_json::json!({ "instances": vec![vec![0.0f32; 784]; 65] }).to_string();
    c.json("POST", "/v1/predict", "/v1/predict", Some(&big), None, 413);

    let models = c.json("GET", "/v1/models", "/v1/models", None, None, 200);
    assert_eq!(models["models"][0]["serving"], 1);
    let tmpl = "/v1/models/{name}/versions/{version}";
    let meta = c.json("GET", "/v1/models/digits/versions/1", tmpl, None, None, 200);
    assert_eq!(meta["opset"], 17);
    c.json("GET", "/v1/models/digits/versions/9", tmpl, None, None, 404);
    let onnx_t = "/v1/models/{name}/versions/{version}/model.onnx";
    let bytes = c.call(
        "GET",
        "/v1/models/digits/versions/1/model.onnx",
        onnx_t,
        None,
        None,
        200,
    );
    assert_eq!(
        bytes,
        std::fs::read(store.version_dir("digits", 1).unwrap().join(ONNX_FILE)).unwrap()
    );
    c.json(
        "GET",
        "/v1/models/..%2F..%2Fetc/versions/1/model.onnx",
        onnx_t,
        None,
        None,
        404,
    );

    // The Open Inference Protocol (KServe v2) beside /v1, on the same session: JSON tensors
    // here (tests/oip_tritonclient.rs drives it with Triton's own client, binary data too).
    c.json("GET", "/v2", "/v2", None, None, 200);
    assert_eq!(
        c.json("GET", "/v2/health/live", "/v2/health/live", None, None, 200)["live"],
        true
    );
    c.json(
        "GET",
        "/v2/health/ready",
        "/v2/health/ready",
        None,
        None,
        200,
    );
    let m = c.json(
        "GET",
        "/v2/models/digits",
        "/v2/models/{name}",
        None,
        None,
        200,
    );
    assert_eq!(m["platform"], "onnxruntime_onnx");
    assert_eq!(m["versions"], serde_json::json!(["1"]));
    assert_eq!(m["inputs"][0]["shape"], serde_json::json!([-1, 784]));
    assert_eq!(m["outputs"][0]["name"], "logits");
    assert_eq!(m["outputs"][0]["shape"], serde_json::json!([-1, 10]));
    c.json(
        "GET",
        "/v2/models/nope",
        "/v2/models/{name}",
        None,
        None,
        404,
    );
    let mv = "/v2/models/{name}/versions/{version}";
    c.json("GET", "/v2/models/digits/versions/1", mv, None, None, 200);
    c.json("GET", "/v2/models/digits/versions/9", mv, None, None, 404);
    c.json("GET", "/v2/models/digits/versions/01", mv, None, None, 400);
    let r = c.json(
        "GET",
        "/v2/models/digits/ready",
        "/v2/models/{name}/ready",
        None,
        None,
        200,
    );
    assert_eq!(
        (r["ready"].clone(), r["version"].clone()),
        (true.into(), "1".into())
    );
    c.json(
        "GET",
        "/v2/models/nope/ready",
        "/v2/models/{name}/ready",
        None,
        None,
        404,
    );
    let rv = "/v2/models/{name}/versions/{version}/ready";
    c.json(
        "GET",
        "/v2/models/digits/versions/1/ready",
        rv,
        None,
        None,
        200,
    );
    c.json(
        "GET",
        "/v2/models/digits/versions/7/ready",
        rv,
        None,
        None,
        404,
    );
    let flat: Vec<f32> = images.iter().flatten().copied().collect();
    let infer = serde_json::json!({
        "id": "req-1",
        "inputs": [{"name": "input", "shape": [3, 784], "datatype": "FP32", "data": images}],
    })
    .to_string();
    let r = c.json(
        "POST",
        "/v2/models/digits/infer",
        "/v2/models/{name}/infer",
        Some(&infer),
        None,
        200,
    );
    assert_eq!(
        (r["id"].clone(), r["model_version"].clone()),
        ("req-1".into(), "1".into())
    );
    assert_eq!(r["outputs"][0]["shape"], serde_json::json!([3, 10]));
    let logits: Vec<f32> = r["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let candle = v1
        .forward(&candle_core::Tensor::from_slice(&flat, (3, 784), &Device::Cpu).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let worst = logits
        .iter()
        .zip(&candle)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "v2 logits differ from candle's by {worst}");
    let iv = "/v2/models/{name}/versions/{version}/infer";
    let flat_body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [3, 784], "datatype": "FP32", "data": flat}],
        "outputs": [{"name": "logits"}],
    })
    .to_string();
    let r2 = c.json(
        "POST",
        "/v2/models/digits/versions/1/infer",
        iv,
        Some(&flat_body),
        None,
        200,
    );
    assert_eq!(
        r2["outputs"][0]["data"], r["outputs"][0]["data"],
        "flat data = nested data"
    );
    for (body, status) in [
        (r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}"#.to_string(), 400),
        (infer.replace("FP32", "INT64"), 400),
        (infer.replace(r#""name":"input""#, r#""name":"x""#), 400),
        ("not json".to_string(), 400),
        (serde_json::json!({"inputs": [{"name": "input", "shape": [65, 784], "datatype": "FP32", "data": vec![0.0f32; 65 * 784]}]}).to_string(), 413),
    ] {
        let e = c.json("POST", "/v2/models/digits/infer", "/v2/models/{name}/infer", Some(&body), None, status);
        assert!(e["error"].is_string(), "{e}");
    }
    c.json(
        "POST",
        "/v2/models/nope/infer",
        "/v2/models/{name}/infer",
        Some(&infer),
        None,
        404,
    );
    c.json(
        "POST",
        "/v2/models/digits/versions/5/infer",
        iv,
        Some(&infer),
        None,
        404,
    );

    c.json("POST", "/v1/cycle", "/v1/cycle", None, None, 401);
    c.json("POST", "/v1/cycle", "/v1/cycle", None, Some("s3cret"), 409);
    c.json("GET", "/v1/status", "/v1/status", None, None, 404);
    let text = String::from_utf8(c.call("GET", "/metrics", "/metrics", None, None, 200)).unwrap();
    assert!(
        text.contains("rlap_predict_requests_total{status=\"2xx\"}"),
        "predict requests are counted: {text}"
    );

    // Hot swap under load: no request fails while v2 replaces v1.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load_thread = {
        let (stop, ok, failed, base, body) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            c.base.clone(),
            body.clone(),
        );
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            while !stop.load(Ordering::Relaxed) {
                let r = agent
                    .post(&format!("{base}/v1/predict"))
                    .header("Content-Type", "application/json")
                    .send(body.as_str());
                match r {
                    Ok(resp) if resp.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    store
        .publish(
            "digits",
            &trained_model(2, &[1, 5, 9]),
            PublishInfo {
                parent_version: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    wait_for_version(&mut c, 2);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    load_thread.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the swap"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);

    // A corrupt version is refused; v2 keeps serving. It is prepared elsewhere and moved in
    // with one rename, so the watcher never sees a good v3 first.
    let side = tempfile::tempdir().unwrap();
    let side_store = ModelStore::open(side.path(), 1).unwrap();
    side_store
        .publish("digits", &trained_model(3, &[]), PublishInfo::default())
        .unwrap();
    let v3 = side_store.version_dir("digits", 1).unwrap();
    let meta_path = v3.join(rlap::store::METADATA_FILE);
    let mut meta: Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["version"] = 3.into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    std::fs::write(v3.join(ONNX_FILE), b"corrupt").unwrap();
    std::fs::rename(&v3, dir.path().join("digits").join("3")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.json("GET", "/readyz", "/readyz", None, None, 200)["version"],
        2
    );

    // Rollback: auth, refusal of the corrupt one, pinning.
    let rb = "/v1/models/{name}/rollback";
    c.json(
        "POST",
        "/v1/models/digits/rollback",
        rb,
        Some(r#"{"version": 1}"#),
        None,
        401,
    );
    c.json(
        "POST",
        "/v1/models/digits/rollback",
        rb,
        Some(r#"{"version": 1}"#),
        Some("wrong"),
        401,
    );
    c.json(
        "POST",
        "/v1/models/digits/rollback",
        rb,
        Some(r#"{"version": 3}"#),
        Some("s3cret"),
        422,
    );
    c.json(
        "POST",
        "/v1/models/digits/rollback",
        rb,
        Some(r#"{"version": 42}"#),
        Some("s3cret"),
        404,
    );
    let r = c.json(
        "POST",
        "/v1/models/digits/rollback",
        rb,
        Some(r#"{"version": 1}"#),
        Some("s3cret"),
        200,
    );
    assert_eq!(r["serving"], 1);
    store
        .publish("digits", &trained_model(4, &[]), PublishInfo::default())
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.json("GET", "/readyz", "/readyz", None, None, 200)["version"],
        1,
        "pinned by rollback"
    );
    // A version in the store that is not the one served is not ready: 503, with the reason.
    let e = c.json(
        "GET",
        "/v2/models/digits/versions/2/ready",
        rv,
        None,
        None,
        503,
    );
    assert!(
        e["error"].as_str().unwrap().contains("serving version 1"),
        "{e}"
    );
    c.json(
        "POST",
        "/v2/models/digits/versions/2/infer",
        iv,
        Some(&infer),
        None,
        503,
    );

    // Every documented operation was exercised.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            assert!(
                c.exercised.contains(&(path.clone(), method.clone())),
                "{method} {path} untested"
            );
        }
    }
}

/// A store whose versions all fail to load (here a corrupt ONNX file) stops `serve::run` at
/// start-up with one error naming the model and the reason, instead of a server that answers
/// 503 to every predict behind a green `/healthz`.
#[test]
fn a_store_where_no_version_loads_stops_the_server_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::open(dir.path(), 5).unwrap();
    store
        .publish("digits", &trained_model(5, &[]), PublishInfo::default())
        .unwrap();
    let v1 = store.version_dir("digits", 1).unwrap();
    std::fs::write(v1.join(ONNX_FILE), b"corrupt").unwrap();
    let cfg = ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        model: "digits".into(),
        admin_token: None,
        poll_interval: Duration::from_millis(100),
        max_batch: 16,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), rlap::api::run(store, cfg)).await
        })
        .expect("serve::run returns at start-up")
        .expect_err("no version loads");
    let msg = e.to_string();
    assert!(msg.contains("no version of model 'digits'"), "{msg}");
    assert!(msg.contains("[1]"), "{msg}");
}
