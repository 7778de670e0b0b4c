"""Peer for `rlap bench-serve`: the same ONNX model under python onnxruntime, one intra-op
thread (as rlap's session), timing session.run at batch 1 and 64.

Usage: python3 benches/ort_peer.py MODEL.onnx D ITERS_B1 ITERS_B64  -> one JSON line on stdout.
Needs onnxruntime (scripts/setup-ort.sh puts it in .cache/onnxruntime; rlap sets PYTHONPATH)
and numpy.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort

path, d, n1, n64 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
out = {"onnxruntime": ort.__version__}
for batch, iters in ((1, n1), (64, n64)):
    x = rng.random((batch, d), dtype=np.float32)
    for _ in range(20):
        sess.run(["logits"], {"input": x})
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(iters):
            sess.run(["logits"], {"input": x})
        times.append(time.perf_counter() - t)
    times.sort()
    out[f"batch{batch}_samples_per_second"] = batch * iters / times[len(times) // 2]
print(json.dumps(out))
