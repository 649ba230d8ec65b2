#!/usr/bin/env bash
# Prepares everything tools/gpu/check.sh needs on a GPU machine that has no Rust toolchain and
# no network: the CUDA binary (.cuda/dist/skyreels, via tools/cuda/setup.sh and build.sh) and the
# diffusers wheel for the side-by-side timing (.cuda/wheels; the machine's Python has torch,
# huggingface_hub and safetensors but not diffusers). Idempotent. Then, with the device tool:
#   run  command: "bash tools/gpu/check.sh"  carry: [".cuda/dist", ".cuda/wheels"]
# (the fixtures travel with the working tree). Results land in $OUT (or ./gpu-check).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/cuda/setup.sh
tools/cuda/build.sh
mkdir -p .cuda/wheels
# The version the fixtures were made with (crates/skyreels-core/tests/fixtures/manifest.json).
for spec in diffusers==0.42.1 importlib_metadata==10.2.0; do
  name="${spec%%==*}"
  if ls .cuda/wheels/"${name}"-*.whl >/dev/null 2>&1; then
    echo "prepare: $spec already in .cuda/wheels"
  else
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d .cuda/wheels "$spec"
    echo "prepare: downloaded $spec"
  fi
done
du -sh .cuda/dist .cuda/wheels | sed 's/^/prepare: carry /'
