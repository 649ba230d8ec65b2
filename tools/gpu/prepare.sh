#!/usr/bin/env bash
# Prepares everything tools/gpu/check.sh needs on a GPU machine that has no Rust toolchain and
# no network, in .cuda/carry/: the compressed CUDA binary (skyreels.xz, via tools/cuda/setup.sh
# and build.sh) and the diffusers wheel for the side-by-side timing (wheels/; the machine's
# Python has torch, huggingface_hub and safetensors but not diffusers). Idempotent. Then, with
# the device tool:  run  command: "bash tools/gpu/check.sh"  carry: [".cuda/carry"]
# (the fixtures travel with the working tree). Results land in $OUT (or ./gpu-check).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/cuda/setup.sh
tools/cuda/build.sh
mkdir -p .cuda/carry/wheels
# The version the fixtures were made with (crates/skyreels-core/tests/fixtures/manifest.json).
for spec in diffusers==0.42.1 importlib_metadata==10.2.0; do
  name="${spec%%==*}"
  if ls .cuda/carry/wheels/"${name}"-*.whl >/dev/null 2>&1; then
    echo "prepare: $spec already in .cuda/carry/wheels"
  else
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d .cuda/carry/wheels "$spec"
    echo "prepare: downloaded $spec"
  fi
done
du -sh .cuda/carry | sed 's/^/prepare: carry /'
