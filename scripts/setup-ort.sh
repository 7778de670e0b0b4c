#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library that rlap loads at run time (ort's load-dynamic mode):
# the PyPI wheel onnxruntime==1.31.1 installed into .cache/onnxruntime (git-ignored).
# The binary finds it there by itself (see src/onnx/runtime.rs); ORT_DYLIB_PATH overrides.
# Idempotent: nothing is fetched when the library is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${RLAP_ORT_DIR:-$root/.cache/onnxruntime}
lib="$dest/onnxruntime/capi/libonnxruntime.so.1.31.1"
if [ -f "$lib" ]; then
  echo "setup-ort: ONNX Runtime present ($lib)"
  exit 0
fi
echo "setup-ort: installing onnxruntime==1.31.1 (PyPI wheel) into $dest"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" onnxruntime==1.31.1
[ -f "$lib" ] || { echo "setup-ort: $lib missing after install" >&2; exit 1; }
echo "setup-ort: ok ($lib)"
