"""Drive rlap's Open Inference Protocol (KServe v2) routes with Triton's own HTTP client.

Run by tests/oip_tritonclient.rs against a live rlap API on loopback (the real ONNX Runtime):
health, server and model metadata, model readiness, inference with binary tensors (the
client's default), JSON tensors and a pinned version, the protocol's errors; and the store's
config.pbtxt files parsed as Triton's ModelConfig (tritonclient ships its protobuf module).

Usage: python oip_tritonclient.py --url 127.0.0.1:PORT --model NAME --cases CASES.json --store DIR
CASES.json: {"features": [[...D...], ...], "logits": [[...K...], ...], "version": "1"} where
"logits" are the model's own (candle) logits of those rows. Exits non-zero on any mismatch.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")
    print(f"ok: {what}")


def expect_error(status, what, fn):
    try:
        fn()
    except InferenceServerException as e:
        check(e.status() == str(status) and e.message(), f"{what}: HTTP {e.status()} {e.message()!r}")
        return
    sys.exit(f"FAIL: {what}: no error")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--store", required=True)
    a = ap.parse_args()
    cases = json.loads(Path(a.cases).read_text())
    x = np.asarray(cases["features"], dtype=np.float32)
    want = np.asarray(cases["logits"], dtype=np.float32)
    version = cases["version"]
    n, d = x.shape
    k = want.shape[1]

    c = httpclient.InferenceServerClient(url=a.url)
    check(c.is_server_live(), "server live")
    check(c.is_server_ready(), "server ready")
    check(c.get_server_metadata()["name"] == "rlap", "server metadata names rlap")
    check(c.is_model_ready(a.model), f"model {a.model} ready")
    check(c.is_model_ready(a.model, version), f"model {a.model} version {version} ready")
    check(not c.is_model_ready("no-such-model"), "an unknown model is not ready")

    md = c.get_model_metadata(a.model)
    check(md["platform"] == "onnxruntime_onnx", f"platform {md['platform']}")
    check(version in md["versions"], f"versions {md['versions']} include {version}")
    (inp,), (out,) = md["inputs"], md["outputs"]
    check(
        (inp["name"], inp["datatype"], inp["shape"]) == ("input", "FP32", [-1, d]),
        f"input metadata {inp}",
    )
    check(
        (out["name"], out["datatype"], out["shape"]) == ("logits", "FP32", [-1, k]),
        f"output metadata {out}",
    )

    def infer(binary_in, binary_out, model_version=""):
        i = httpclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary_in)
        outputs = None
        if binary_out is not None:
            outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary_out)]
        t = time.perf_counter()
        r = c.infer(a.model, [i], model_version=model_version, outputs=outputs, request_id="t1")
        ms = (time.perf_counter() - t) * 1e3
        got = r.as_numpy("logits")
        resp = r.get_response()
        check(resp["model_version"] == version and resp["id"] == "t1", f"response {resp['model_name']} v{resp['model_version']} id {resp['id']}")
        check(got is not None and got.shape == (n, k) and got.dtype == np.float32, f"logits shape {None if got is None else got.shape}")
        diff = float(np.max(np.abs(got - want)))
        label = f"binary_in={binary_in} binary_out={binary_out} version={model_version or '-'}"
        check(diff < 1e-4, f"{label}: logits = candle's within {diff:.2e} ({ms:.1f} ms)")
        check(np.array_equal(got.argmax(1), want.argmax(1)), f"{label}: classes {got.argmax(1).tolist()}")

    infer(True, None)  # the client's defaults: binary input, every output binary
    infer(False, False)  # JSON both ways
    infer(True, False, version)  # binary in, JSON out, the version named in the path
    infer(False, True, version)

    bad = httpclient.InferInput("input", [n, 10], "FP32")
    bad.set_data_from_numpy(np.zeros((n, 10), np.float32))
    expect_error(400, "shape [n, 10]", lambda: c.infer(a.model, [bad]))
    f64 = httpclient.InferInput("input", list(x.shape), "FP64")
    f64.set_data_from_numpy(x.astype(np.float64))
    expect_error(400, "FP64 input", lambda: c.infer(a.model, [f64]))
    wrong = httpclient.InferInput("pixels", list(x.shape), "FP32")
    wrong.set_data_from_numpy(x)
    expect_error(400, "input named 'pixels'", lambda: c.infer(a.model, [wrong]))
    ok = httpclient.InferInput("input", list(x.shape), "FP32")
    ok.set_data_from_numpy(x)
    expect_error(404, "unknown model", lambda: c.infer("no-such-model", [ok]))
    expect_error(404, "unknown version", lambda: c.infer(a.model, [ok], model_version="999"))

    # Triton's model repository view of the store: <store>/<model>/config.pbtxt and
    # <store>/<model>/<version>/{model.onnx, config.pbtxt}.
    store = Path(a.store)
    check((store / a.model / version / "model.onnx").is_file(), "<store>/<model>/<version>/model.onnx")
    for path in (store / a.model / "config.pbtxt", store / a.model / version / "config.pbtxt"):
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        (ci,), (co,) = cfg.input, cfg.output
        check(
            cfg.name == a.model
            and cfg.platform == "onnxruntime_onnx"
            and cfg.max_batch_size > 0
            and (ci.name, ci.data_type, list(ci.dims)) == ("input", model_config_pb2.TYPE_FP32, [d])
            and (co.name, co.data_type, list(co.dims)) == ("logits", model_config_pb2.TYPE_FP32, [k]),
            f"{path.relative_to(store)} is a valid Triton ModelConfig (max_batch_size {cfg.max_batch_size})",
        )
    print("tritonclient: all checks passed")


if __name__ == "__main__":
    main()
