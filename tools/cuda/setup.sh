#!/usr/bin/env bash
# Installs the CUDA *build* toolchain (nvcc, headers, link-time libraries) from PyPI wheels into
# the ignored folder .cuda/ of this repository, so a CUDA binary can be built on a machine
# without a GPU (and without a system CUDA). Idempotent: a second run checks and does nothing.
#
# Everything is pinned to CUDA 13.0: the GPU machines run driver 580 (CUDA 13.0), which must be
# able to JIT the PTX candle's kernels are compiled to, so nvcc may not be newer than 13.0.
# nvvm must match nvcc's minor, or ptxas rejects the PTX version.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD/.cuda"
VENV="$ROOT/venv"

PACKAGES=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
  nvidia-cudnn-cu13==9.13.0.50
)
STAMP="$ROOT/installed.txt"

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "${PACKAGES[*]}" ]]; then
  echo "setup: CUDA 13.0 build toolchain already installed in $ROOT (nothing to do)"
else
  mkdir -p "$ROOT"
  if [[ ! -x "$VENV/bin/pip" ]]; then
    echo "setup: creating a Python virtual environment in $VENV"
    python3 -m venv "$VENV"
  fi
  echo "setup: installing ${#PACKAGES[@]} pinned wheels (about 2 GB; this takes a few minutes)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "${PACKAGES[@]}"
  echo "${PACKAGES[*]}" > "$STAMP"
fi

CU="$(echo "$VENV"/lib/python3*/site-packages/nvidia/cu13)"
if [[ ! -x "$CU/bin/nvcc" ]]; then
  echo "setup: nvcc not found under $CU after installation" >&2
  exit 1
fi

# Link-time stand-ins. cudarc links the driver (-lcuda), which only a GPU machine's driver
# provides: a stub library with the right soname and every driver entry point cudarc declares
# satisfies the linker, and the real driver is picked up at run time. Each stub entry point
# returns CUDA_ERROR_NO_DEVICE (100), so the binary can also be run here against the stub
# (as libcuda.so.1) to test its CPU paths and its "no GPU" answers. The wheels
# ship versioned sonames only, so unversioned names are added for -lcublas etc.
LINK="$ROOT/lib"
mkdir -p "$LINK"
if [[ ! -f "$LINK/libcuda.so" ]]; then
  cargo fetch --locked --quiet
  CUDARC="$(cargo metadata --locked --all-features --format-version 1 |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')"
  grep -ohE '^\s+fn cu[A-Za-z0-9_]+\(' "$(dirname "$CUDARC")/src/driver/sys/mod.rs" |
    sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/int \1(void) { return 100; }/' | sort -u > "$LINK/stub_cuda.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/stub_cuda.c"
  echo "setup: made the link-time stub $LINK/libcuda.so ($(wc -l < "$LINK/stub_cuda.c") driver entry points, soname libcuda.so.1)"
fi
CUDNN="$(echo "$VENV"/lib/python3*/site-packages/nvidia/cudnn/lib)"
for lib in "$CU"/lib/libcublas.so.* "$CU"/lib/libcublasLt.so.* "$CU"/lib/libcudart.so.* \
           "$CU"/lib/libcurand.so.* "$CU"/lib/libnvrtc.so.* "$CUDNN"/libcudnn.so.*; do
  [[ -e "$lib" ]] || continue
  name="$(basename "$lib")"
  base="${name%%.so.*}.so"
  [[ -e "$LINK/$base" ]] || { ln -s "$lib" "$LINK/$base"; echo "setup: linked $base -> $name"; }
done

cat > "$ROOT/env.sh" <<ENV
# Sourced by tools/cuda/build.sh: the CUDA 13.0 toolchain installed by tools/cuda/setup.sh.
export CUDA_ROOT="$CU"
export CUDA_PATH="$CU"
export CUDNN_LIB="$CUDNN"
export PATH="$CU/bin:\$PATH"
export LIBRARY_PATH="$LINK\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
ENV
echo "setup: nvcc $("$CU/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'); environment in $ROOT/env.sh"
