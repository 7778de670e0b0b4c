#!/usr/bin/env bash
# Build rlap with candle's CUDA backend on a machine with no GPU and no system CUDA toolkit:
#   scripts/build-cuda.sh [extra cargo build args]      -> target/release/rlap
# The CUDA 13.0 toolchain (nvcc, headers, cudart/nvrtc/cublas/curand) comes from pinned PyPI
# wheels, installed once into .cache/cuda-toolkit (git-ignored). CUDA 13.0 because cudarc 0.19.10
# knows 13.0..13.4 and the oldest one asks the least of the GPU host's driver (R580+).
# libcuda (the driver) is not on PyPI: a link-time stub libcuda.so (SONAME libcuda.so.1, every call
# returns CUDA_ERROR_STUB_LIBRARY, like NVIDIA's lib64/stubs) is generated; at run time the
# GPU host's real driver is used. Kernels are compiled for sm_90a (H100/H200).
# Running the binary needs libcudart.so.13, libnvrtc.so.13, libcublas(Lt).so.13, libcurand.so.10 and
# the driver's libcuda.so.1 loadable, e.g. LD_LIBRARY_PATH=.cache/cuda-toolkit/nvidia/cu13/lib.
# Time here (2 cores, cold target/, wheels ~20 s): 36 min wall, ~30 of it nvcc on candle-kernels.
set -euo pipefail
cd "$(dirname "$0")/.."

tk=$PWD/.cache/cuda-toolkit
wheels="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35"

# All wheels share nvidia/cu13/, and `pip --target` skips a top-level dir that already exists,
# so they must go in one pip call; a stamp records which pinned set is there.
if [ "$(cat "$tk/.stamp" 2>/dev/null)" != "$(echo $wheels)" ]; then
  rm -rf "$tk"
  python3 -m pip install --quiet --no-deps --target "$tk" $wheels
  echo $wheels > "$tk/.stamp"
fi
cuda=$tk/nvidia/cu13

# Unversioned .so names for the linker (the wheels ship only the SONAME files).
for l in cudart.so.13 nvrtc.so.13 cublas.so.13 cublasLt.so.13 curand.so.10; do
  ln -sf "lib$l" "$cuda/lib/lib${l%.so.*}.so"
done

# Driver stub: one symbol per driver API function in cuda.h (incl. the _v2/_ptsz names the
# macros map to) and in cudarc's bindings (which also covers newer API than this cuda.h).
if [ ! -f "$cuda/lib/stubs/libcuda.so" ]; then
  cargo fetch --quiet
  mkdir -p "$cuda/lib/stubs"
  { grep -ohP 'CUresult\s+CUDAAPI\s+\Kcu\w+' "$cuda/include/cuda.h"
    grep -ohP '^\s*#\s*define\s+cu\w+\s+\Kcu\w+(?=\s*$)' "$cuda/include/cuda.h"
    grep -ohP '^\s+fn \Kcu\w+(?=\()' "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs
  } | sort -u | grep -vx 'cuGetErrorString\|cuGetErrorName' | sed 's/.*/int &(void) { return 34; }/' \
    > "$cuda/lib/stubs/cuda_stub.c"
  cat >> "$cuda/lib/stubs/cuda_stub.c" <<'EOF'
int cuGetErrorString(int e, const char **s) { *s = "libcuda.so is the build-time stub: no NVIDIA driver here"; return 0; }
int cuGetErrorName(int e, const char **s) { *s = "CUDA_ERROR_STUB_LIBRARY"; return 0; }
EOF
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$cuda/lib/stubs/cuda_stub.c"
fi

export CUDA_ROOT=$cuda CUDA_HOME=$cuda CUDA_PATH=$cuda  # cudarc adds <root>/lib, lib/stubs to the link path
export PATH=$cuda/bin:$PATH                             # nvcc (finds its headers, cicc, ptxas itself)
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}         # no GPU to query; H200 = sm_90(a)
export CUDARC_CUDA_VERSION=13000                        # must match the nvcc above
exec nice -n 10 cargo build --release --features cuda "$@"
