#!/usr/bin/env bash
# The GPU run as ONE call on the device machine (CUDA 13 + PyTorch, no Rust, no network):
#
#   here:   scripts/build-cuda.sh && scripts/device-run.sh --pack     # -> .cache/device-pack (< 64 MiB)
#   device: run(command="scripts/device-run.sh cuda:0", carry=[".cache/device-pack"])
#   rehearsal here, on the CPU:  scripts/device-run.sh cpu            (the CPU build)
#                                PACKED=1 scripts/device-run.sh cpu   (the pack, unpacked and
#                                   run as on the device, CUDA libraries from the torch venv)
#
# --pack gathers what the device machine lacks into .cache/device-pack: the CUDA build of rlap
# (stripped, xz), cuRAND and the ONNX Runtime library (xz), 20,000 MNIST training images and the
# test split (gzip IDX). On the device the script unpacks
# them, finds the CUDA runtime libraries that PyTorch's wheels carry (site-packages/nvidia/...),
# and runs, each step logged with its exit status and wall time, stopping at nothing:
#   (a) rlap device-check: both attribution modes and the partition, CPU vs GPU;
#   (b,c) benches/torch_peer.py: rlap bench and the same work in PyTorch on the same GPU,
#         interleaved rounds, MLP and CNN at batch 256, 1024, 4096 (attribution samples/s,
#         training epoch samples/s), ratios;
#   (d) a short rlap experiment and rlap demo with model.device on the GPU (scoring, a cycle).
# Everything goes to $OUT (default out/device-run): one log per step, JSON figures,
# summary.txt (step | rc | seconds), nvidia-smi before and after.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pack=$root/.cache/device-pack

if [ "${1:-}" = "--pack" ]; then
  set -e
  bin=${RLAP_CUDA_BIN:-${CARGO_TARGET_DIR:-target}/release/rlap}
  grep -aq cudaGetDevice "$bin" || {
    echo "device-run: $bin is not a CUDA build (run scripts/build-cuda.sh, or set RLAP_CUDA_BIN)" >&2; exit 2; }
  ort=$(ls .cache/onnxruntime/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1)
  [ -n "$ort" ] || { echo "device-run: no ONNX Runtime library (run scripts/setup-ort.sh)" >&2; exit 2; }
  curand=.cache/cuda-toolkit/nvidia/cu13/lib/libcurand.so.10
  [ -e "$curand" ] || { echo "device-run: no $curand (run scripts/build-cuda.sh)" >&2; exit 2; }
  rm -rf "$pack" && mkdir -p "$pack/data/mnist" "$pack/lib"
  strip -o "$pack/rlap" "$bin"
  # PyTorch's cu13 wheels carry no cuRAND, which candle's CUDA device opens: bring the one
  # the binary was built against.
  cp -L "$curand" "$pack/lib/"
  cp -L "$ort" "$pack/lib/"
  for f in "$pack/rlap" "$pack"/lib/*; do xz -T0 -9e "$f"; done
  # MNIST: the first 20,000 training images (the device steps use at most that) and the test split.
  python3 - data/mnist "$pack/data/mnist" <<'EOF_PY'
import gzip, struct, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for name, keep in [("train-images-idx3-ubyte", 20000), ("train-labels-idx1-ubyte", 20000),
                   ("t10k-images-idx3-ubyte", None), ("t10k-labels-idx1-ubyte", None)]:
    raw = (src / name).read_bytes()
    ndim = raw[3]
    dims = list(struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim]))
    if keep is not None:
        per = 1
        for d in dims[1:]:
            per *= d
        dims[0] = min(keep, dims[0])
        raw = raw[:4] + struct.pack(">" + "I" * ndim, *dims) + raw[4 + 4 * ndim:4 + 4 * ndim + dims[0] * per]
    (dst / (name + ".gz")).write_bytes(gzip.compress(raw, 9))
EOF_PY
  du -sh "$pack"
  size=$(du -sm "$pack" | cut -f1)
  [ "$size" -lt 64 ] || { echo "device-run: the pack is ${size} MiB, over the 64 MiB carry limit" >&2; exit 2; }
  exit 0
fi

dev=${1:-cuda:0}
out=${OUT:-$root/out/device-run}
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"

# The peer's python: the device machine's own (it has PyTorch); here the project's venv.
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "$root/.cache/torch/bin/python" ]; then py=$root/.cache/torch/bin/python; else py=python3; fi
fi

if [ "$dev" = cpu ] && [ -z "${PACKED:-}" ]; then
  bin=${RLAP_BIN:-$root/target/release/rlap}
else
  # Unpack the carried binary, data and ONNX Runtime library (python's lzma: no xz needed).
  [ -d "$pack" ] || { echo "device-run: $pack missing: run scripts/device-run.sh --pack here and carry it" | tee -a "$summary"; exit 2; }
  mkdir -p "$root/.cache/device"
  "$py" - "$pack" "$root/.cache/device" <<'EOF'
import lzma, os, shutil, sys
src, dst = sys.argv[1:3]
for sub in ("", "lib"):
    os.makedirs(os.path.join(dst, sub), exist_ok=True)
    for name in os.listdir(os.path.join(src, sub)):
        if name.endswith(".xz"):
            target = os.path.join(dst, sub, name[:-3])
            with lzma.open(os.path.join(src, sub, name)) as f, open(target, "wb") as g:
                shutil.copyfileobj(f, g)
            os.chmod(target, 0o755)
EOF
  bin=$root/.cache/device/rlap
  export RLAP_DATA_DIR=$pack/data
  export ORT_DYLIB_PATH=$(ls "$root"/.cache/device/lib/libonnxruntime.so.* | head -1)
  # CUDA runtime libraries from the python packages (nvidia/cu13/lib, nvidia/*/lib).
  cudalibs=$("$py" - <<'EOF'
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
dirs = []
for r in roots:
    for pat in ("nvidia/*/lib", "nvidia/*/*/lib", "torch/lib"):
        for d in glob.glob(os.path.join(r, pat)):
            if glob.glob(os.path.join(d, "lib*.so*")) and d not in dirs:
                dirs.append(d)
print(":".join(dirs))
EOF
)
  # The machine's own libraries first; the packed cuRAND after them.
  export LD_LIBRARY_PATH=$cudalibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:$root/.cache/device/lib
  # Rehearsing the packed run on a machine without a driver: the build's link-time stub
  # stands in for libcuda.so.1 (never called with --device cpu).
  if [ "$dev" = cpu ] && [ -e "$root/.cache/cuda-toolkit/nvidia/cu13/lib/stubs/libcuda.so" ]; then
    mkdir -p "$root/.cache/device/stub"
    ln -sf "$root/.cache/cuda-toolkit/nvidia/cu13/lib/stubs/libcuda.so" "$root/.cache/device/stub/libcuda.so.1"
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$root/.cache/device/stub
  fi
  {
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for l in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libcurand.so.10 libcuda.so.1; do
      found=$(IFS=:; for d in $LD_LIBRARY_PATH /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/lib64; do
        [ -e "$d/$l" ] && echo "$d/$l" && break; done)
      echo "$l: ${found:-MISSING}"
    done
    ldd "$bin" | grep -i "not found" || echo "ldd: every library found"
  } > "$out/libraries.txt" 2>&1
  nvidia-smi > "$out/nvidia-smi-before.txt" 2>&1
fi
if [ "$dev" = cpu ]; then  # a rehearsal: small figures, one round
  batches=${BATCHES:-256}
  rounds=${ROUNDS:-1}
  epoch_samples=${EPOCH_SAMPLES:-2000}
else
  batches=${BATCHES:-256,1024,4096}
  rounds=${ROUNDS:-2}
  epoch_samples=${EPOCH_SAMPLES:-10000}
fi

step() {  # step NAME TIMEOUT_S CMD...: run, log, record rc and seconds; never stop the script
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s%N)
  echo "== $name: $*" > "$out/$name.log"
  timeout "$limit" "$@" >> "$out/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%-16s rc %-3s %4d.%01d s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000 / 100)) | tee -a "$summary"
  tail -n 25 "$out/$name.log"
}

step version 30 "$bin" --version
# Limits: the steps fit in 530 s (with unpacking, ~550 s), inside one 600 s device call.
step device-check 90 "$bin" device-check --device "$dev" --json "$out/device-check.json"
step peer "${PEER_TIMEOUT:-200}" "$py" benches/torch_peer.py --rlap "$bin" --device "$dev" \
  --models mlp,cnn --batch "$batches" --rounds "$rounds" --repeats 3 \
  --epoch-samples "$epoch_samples" --threads 0 --data-dir "${RLAP_DATA_DIR:-$root/data}" \
  --json "$out/peer.json"
step experiment 90 "$bin" --quiet experiment --device "$dev" --dataset mnist \
  --corruption label-symmetric:0.4 --train-size 10000 --epochs 3 --finetune-epochs 2 --seed 1 \
  --json "$out/experiment.json"
# 20,000 samples: a smaller bootstrap, warm-up and cycle minimum than configs/demo.toml so that
# cycles run (on the CPU here: 2 run, 1 accepted, v1 0.888 -> v2 0.917).
step demo 120 env RLAP__MODEL__DEVICE="$dev" RLAP__BOOTSTRAP__SAMPLES=5000 \
  RLAP__MIXTURE__WARMUP_SAMPLES=2000 RLAP__TRIGGER__COOLDOWN_SECS=2 RLAP__CYCLE__MIN_SAMPLES=5000 \
  "$bin" --quiet demo --limit 20000 --train-size 20000 --out "$out/demo" --json "$out/demo.json"
rm -rf "$out/demo"
[ "$dev" = cpu ] || nvidia-smi > "$out/nvidia-smi-after.txt" 2>&1
echo "device-run: done; figures in $out" | tee -a "$summary"
