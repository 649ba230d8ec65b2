#!/usr/bin/env bash
# Builds the release `skyreels` binary with CUDA (and cuDNN) on a machine without a GPU, using
# the toolchain tools/cuda/setup.sh installed in .cuda/. The result, stripped, is
# .cuda/dist/skyreels, plus an xz-compressed copy .cuda/carry/skyreels.xz (its PTX and cubins
# compress about 8x) for copying: run it on a GPU machine with the driver's libcuda and the
# CUDA 13 / cuDNN 9 libraries on LD_LIBRARY_PATH (tools/gpu/check.sh sets that up).
#
#   CUDA_COMPUTE_CAP  target architecture, default 90 (H100/H200); 80 = A100, 89 = L40/4090
#   FEATURES          cargo features, default "cuda,cudnn" (add flash-attn only where its
#                     CUTLASS checkout is available offline)
# Idempotent: cargo rebuilds only what changed; a repeat run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ ! -f .cuda/env.sh ]]; then
  echo "build: no CUDA toolchain in .cuda/; run tools/cuda/setup.sh first" >&2
  exit 1
fi
# shellcheck source=/dev/null
source .cuda/env.sh
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
FEATURES="${FEATURES:-cuda,cudnn}"
TARGET_DIR="$PWD/target/cuda"
echo "build: skyreels with features [$FEATURES] for compute capability $CUDA_COMPUTE_CAP (nvcc in $CUDA_ROOT)"
# The release profile keeps line tables for CPU profiling; the GPU binary travels, so it is
# built without them, stripped, and with whole-program LTO and abort-on-panic (nothing here
# unwinds on purpose): LTO also drops candle's MoE kernels (33 MB of cubins we never call),
# taking the binary from 69 to 23 MiB.
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_LTO=fat \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort \
  cargo build --release --locked -p skyreels-cli --features "$FEATURES" --target-dir "$TARGET_DIR"
mkdir -p .cuda/dist
cp "$TARGET_DIR/release/skyreels" .cuda/dist/skyreels.tmp
mv .cuda/dist/skyreels.tmp .cuda/dist/skyreels
BYTES=$(stat -c %s .cuda/dist/skyreels)
LIMIT=$((64 * 1024 * 1024))
echo "build: .cuda/dist/skyreels is $((BYTES / 1024 / 1024)) MiB ($BYTES bytes); it needs at run time:"
objdump -p .cuda/dist/skyreels | awk '/NEEDED/ {print "  " $2}'
if (( BYTES > LIMIT )); then
  echo "build: the binary is larger than 64 MiB and cannot travel to a GPU machine" >&2
  exit 1
fi
mkdir -p .cuda/carry
xz -T0 -6 -c .cuda/dist/skyreels > .cuda/carry/skyreels.xz.tmp
mv .cuda/carry/skyreels.xz.tmp .cuda/carry/skyreels.xz
echo "build: .cuda/carry/skyreels.xz is $(( $(stat -c %s .cuda/carry/skyreels.xz) / 1024 / 1024 )) MiB (what travels)"

# Smoke test on this machine, against the stub driver when there is no real one: the CPU paths
# of the CUDA build must pass the parity check, and asking for a GPU must get the one-sentence
# answer rather than a crash.
if [[ ! -e /dev/nvidia0 ]]; then
  STUB_DIR="$(mktemp -d)"
  cp .cuda/lib/libcuda.so "$STUB_DIR/libcuda.so.1"
  LIBS="$STUB_DIR:$CUDA_ROOT/lib:$CUDNN_LIB"
  LD_LIBRARY_PATH="$LIBS" .cuda/dist/skyreels check --device cpu --only transformer >/dev/null
  answer="$(LD_LIBRARY_PATH="$LIBS" .cuda/dist/skyreels check --device cuda 2>&1 || true)"
  rm -rf "$STUB_DIR"
  if [[ "$answer" != *"reports no GPU"* ]]; then
    echo "build: --device cuda without a GPU answered: $answer" >&2
    exit 1
  fi
  echo "build: smoke test passed (CPU parity with the CUDA build; without a GPU: \"$answer\")"
fi
