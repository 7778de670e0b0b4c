#!/usr/bin/env python3
"""PyTorch beside `rlap bench`: the same models, batches and work, interleaved, with ratios.

What is measured (both sides, samples/s, median over rounds):
  * attribution, label-gradient and max-class, at each batch size: forward through the body
    and `fc`, the head from the leaf `h`, the per-sample cross-entropy, one backward pass to
    `h` (label-gradient) or the closed form relu(h) * max_c W2[c, :] (max-class), and the
    attributions brought to the host; 40 batches per repeat from a 10,000-sample MNIST slice;
  * one training epoch (all parameters, Adam lr 1e-3, mean cross-entropy, shuffled, the loss
    read back every step as rlap's loop does) at the training batch size.

The peer's attributions are checked against rlap's definition (src/attribution.rs):
  label-gradient  a = | dCE(f(x), y)/dh * h |  with dCE/dh = ((softmax - onehot) W2) * 1[h > 0]
  max-class       a = | relu(h) * max_c W2[c, :] |
before anything is timed; a mismatch stops the run.

Rounds interleave the two sides so that machine noise hits both: round r runs rlap, then
PyTorch, for every thread setting. Each side runs in its own process (thread counts are fixed
at process start: RAYON_NUM_THREADS for rlap, torch.set_num_threads for PyTorch).

  make bench-peer                       # CPU, MLP and CNN: default, 1 and 2 threads
  .cache/torch/bin/python benches/torch_peer.py --device cuda:0 --batch 256,1024,4096

The last lines printed are the table (figure | rlap | PyTorch | ratio), then on CPU the
machine's dense-f32 ceiling per thread setting (PyTorch's sgemm on 2048x2048 matrices, the
rate a BLAS gets closest to the FMA units' peak at) with the MLP attribution rows in GFLOP/s
beside it, and, with --json, the figures as JSON.
"""
import argparse
import gzip
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Architecture constants of src/model/mod.rs.
MLP_WIDTH, CONV1, CONV2, KERNEL, HIDDEN = 512, 16, 32, 5, 256
# Floating-point operations of one MLP attribution forward (body, fc, fc2), per sample.
MLP_ATTRIBUTION_FLOP = 2 * (784 * MLP_WIDTH + MLP_WIDTH * HIDDEN + HIDDEN * 10)
# Side of the square sgemm that measures the dense-f32 ceiling.
SGEMM_N = 2048


def load_mnist(data_dir, n):
    """The first n MNIST training images (features in [0, 1]) and labels, from the IDX files."""
    import numpy as np

    def read(stem):
        for name in (stem, stem + ".gz"):
            p = Path(data_dir) / "mnist" / name
            if p.exists():
                raw = p.read_bytes()
                return gzip.decompress(raw) if name.endswith(".gz") else raw
        sys.exit(f"torch_peer: {stem} not found under {data_dir}/mnist (run `make setup`)")

    img = read("train-images-idx3-ubyte")
    lab = read("train-labels-idx1-ubyte")
    x = np.frombuffer(img, dtype=np.uint8, offset=16).reshape(-1, 784)[:n]
    y = np.frombuffer(lab, dtype=np.uint8, offset=8)[:n]
    return (x.astype(np.float32) / 255.0), y.astype(np.int64)


def build(arch, torch):
    nn = torch.nn
    if arch == "mlp":
        body = nn.Sequential(nn.Linear(784, MLP_WIDTH), nn.ReLU())
        width = MLP_WIDTH
    else:
        body = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, CONV1, KERNEL), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(CONV1, CONV2, KERNEL), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        width = CONV2 * 4 * 4
    fc = nn.Linear(width, HIDDEN)
    fc2 = nn.Linear(HIDDEN, 10)
    return body, fc, fc2


def worker(args):
    """Measure PyTorch in this process; print one JSON object."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    x_np, y_np = load_mnist(args.data_dir, args.epoch_samples)
    n = len(y_np)
    x_all, y_all = torch.from_numpy(x_np), torch.from_numpy(y_np)
    results = {}
    for arch in args.models:
        body, fc, fc2 = build(arch, torch)
        for m in (body, fc, fc2):
            m.to(dev)
        ce = torch.nn.CrossEntropyLoss(reduction="none")

        def attribute(x, y, mode):
            with torch.no_grad():
                h = fc(body(x))
            if mode == "label-gradient":
                h.requires_grad_(True)
                loss = ce(fc2(torch.relu(h)), y)
                (g,) = torch.autograd.grad(loss.sum(), h)
                a = (g * h).abs()
            else:
                with torch.no_grad():
                    logits = fc2(torch.relu(h))
                    loss = ce(logits, y)
                    a = (torch.relu(h) * fc2.weight.max(dim=0, keepdim=True).values).abs()
            return a.detach(), h.detach(), loss.detach()

        # Check against rlap's definition (closed forms) on one batch.
        xb, yb = x_all[:256].to(dev), y_all[:256].to(dev)
        for mode in ("label-gradient", "max-class"):
            a, h, _ = attribute(xb, yb, mode)
            with torch.no_grad():
                w2 = fc2.weight
                if mode == "label-gradient":
                    p = torch.softmax(fc2(torch.relu(h)), dim=1)
                    p[torch.arange(len(yb)), yb] -= 1.0
                    ref = ((p @ w2) * (h > 0) * h).abs()
                else:
                    ref = (torch.relu(h) * w2.max(dim=0).values).abs()
                rel = ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
            if rel > 1e-4:
                sys.exit(f"torch_peer: {arch} {mode} attribution differs from rlap's definition (rel {rel:.2e})")
            results[f"check {mode} {arch}"] = rel

        for batch in args.batch:
            inputs = [
                (x_all[idx].to(dev), y_all[idx].to(dev))
                for idx in (
                    [i % n for i in range(b * batch, (b + 1) * batch)] for b in range(40)
                )
            ]
            for mode in ("label-gradient", "max-class"):
                attribute(*inputs[0], mode)
                sync()
                secs = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    for x, y in inputs:
                        a, _, _ = attribute(x, y, mode)
                        a.cpu().numpy()
                    sync()
                    secs.append(time.perf_counter() - t)
                results[f"attribution {mode} {arch} batch {batch}"] = 40 * batch / statistics.median(secs)

        params = [p for m in (body, fc, fc2) for p in m.parameters()]
        secs = []
        for r in range(min(args.repeats, 3)):
            opt = torch.optim.Adam(params, lr=1e-3, fused=True)
            gen = torch.Generator().manual_seed(r)
            t = time.perf_counter()
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, args.train_batch):
                idx = order[s:s + args.train_batch]
                x, y = x_all[idx].to(dev), y_all[idx].to(dev)
                loss = torch.nn.functional.cross_entropy(fc2(torch.relu(fc(body(x)))), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss.item()
            sync()
            secs.append(time.perf_counter() - t)
        results[f"train epoch {arch} batch {args.train_batch}"] = n / statistics.median(secs)
    if dev.type == "cpu":
        # The machine's dense-f32 ceiling at this thread count: one large square sgemm, where
        # PyTorch's BLAS runs closest to the FMA units' peak.
        a, b = torch.randn(SGEMM_N, SGEMM_N), torch.randn(SGEMM_N, SGEMM_N)
        torch.mm(a, b)
        secs = []
        for _ in range(5):
            t = time.perf_counter()
            torch.mm(a, b)
            secs.append(time.perf_counter() - t)
        results["ceiling sgemm"] = 2 * SGEMM_N**3 / statistics.median(secs) / 1e9
    print(json.dumps(results))


def rlap_figures(args, arch, threads, out):
    """Run `rlap bench` once; return {figure: samples/s} with the peer's figure names."""
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    cmd = [
        args.rlap, "bench", "--model", arch, "--device", args.device,
        "--batch", ",".join(map(str, args.batch)), "--train-batch", str(args.train_batch),
        "--epoch-samples", str(args.epoch_samples), "--repeats", str(args.repeats),
        "--json", str(out),
    ]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    figures = {}
    for r in json.loads(Path(out).read_text())["results"]:
        name = r["name"]
        if name.startswith("train epoch"):
            name = name.split(" (N=")[0]
        figures[name] = r["samples_per_second"]
    return figures


def driver(args):
    importlib.import_module("numpy")  # fail early, before rlap runs, if the venv is incomplete

    if not Path(args.rlap).exists():
        sys.exit(f"torch_peer: no rlap binary at {args.rlap} (cargo build --release, or --rlap PATH)")
    # 0 = each side's own default (rlap: RAYON_NUM_THREADS unset; PyTorch: its default).
    settings = args.threads if args.device == "cpu" else [0]
    rlap, peer, ceiling = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for t in settings:
                for arch in args.models:
                    got = rlap_figures(args, arch, t, Path(tmp) / "rlap.json")
                    for k, v in got.items():
                        rlap.setdefault((k, t), []).append(v)
                cmd = [
                    sys.executable, __file__, "--worker", "--device", args.device,
                    "--models", ",".join(args.models), "--batch", ",".join(map(str, args.batch)),
                    "--train-batch", str(args.train_batch), "--epoch-samples", str(args.epoch_samples),
                    "--repeats", str(args.repeats), "--threads", str(t), "--data-dir", args.data_dir,
                ]
                env = dict(os.environ)
                if t:
                    env["OMP_NUM_THREADS"] = str(t)
                out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
                for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    if k == "ceiling sgemm":
                        ceiling.setdefault(t, []).append(v)
                    elif not k.startswith("check"):
                        peer.setdefault((k, t), []).append(v)
            print(f"torch_peer: round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    for key in sorted(rlap, key=lambda k: (k[1], k[0])):
        if key not in peer:
            continue
        r, p = statistics.median(rlap[key]), statistics.median(peer[key])
        rows.append({
            "figure": key[0], "threads": key[1], "device": args.device,
            "rlap_samples_per_second": r, "pytorch_samples_per_second": p, "ratio": r / p,
            "rounds": args.rounds,
        })
    print(f"rlap vs PyTorch {__import__('torch').__version__} on {args.device}, "
          f"medians of {args.rounds} interleaved rounds (samples/s; ratio = rlap / PyTorch)")
    print(f"{'figure':<44} {'threads':>7} {'rlap':>10} {'PyTorch':>10} {'ratio':>6}")
    for row in rows:
        th = row["threads"] or "default"
        print(f"{row['figure']:<44} {th:>7} {row['rlap_samples_per_second']:>10.0f} "
              f"{row['pytorch_samples_per_second']:>10.0f} {row['ratio']:>6.2f}")
    # How far the MLP's attribution is from what the machine can do at all: its forward is
    # dense f32 GEMMs, so the large sgemm's rate bounds it.
    for t, v in sorted(ceiling.items()):
        g = statistics.median(v)
        th = t or "default"
        print(f"ceiling, {th} threads: PyTorch sgemm {SGEMM_N}^3 {g:.0f} GFLOP/s = at most "
              f"{g * 1e9 / MLP_ATTRIBUTION_FLOP:.0f} MLP attribution samples/s "
              f"({MLP_ATTRIBUTION_FLOP / 1e6:.2f} MFLOP each)")
        for row in rows:
            if row["threads"] == t and row["figure"].startswith("attribution") and " mlp " in row["figure"]:
                print(f"  {row['figure']}: rlap {row['rlap_samples_per_second'] * MLP_ATTRIBUTION_FLOP / 1e9:.0f}"
                      f" GFLOP/s, PyTorch {row['pytorch_samples_per_second'] * MLP_ATTRIBUTION_FLOP / 1e9:.0f} GFLOP/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rlap", default=str(ROOT / "target" / "release" / "rlap"))
    ap.add_argument("--device", default="cpu", help="cpu | cuda:N (both sides)")
    ap.add_argument("--models", default="mlp,cnn", type=lambda s: s.split(","))
    ap.add_argument("--batch", default="256", type=lambda s: [int(v) for v in s.split(",")],
                    help="attribution batch sizes, comma-separated")
    ap.add_argument("--train-batch", default=64, type=int)
    ap.add_argument("--epoch-samples", default=10_000, type=int)
    ap.add_argument("--repeats", default=3, type=int)
    ap.add_argument("--rounds", default=3, type=int)
    ap.add_argument("--threads", default="0,1,2",
                    type=lambda s: [int(v) for v in s.split(",")] if isinstance(s, str) else s,
                    help="CPU thread counts to compare, 0 = each side's default (the worker takes one)")
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
