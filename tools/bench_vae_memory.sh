#!/usr/bin/env bash
# Peak memory of streaming VAE decode is flat in the number of latent frames: decodes 5 and 50
# latent frames with the full-size Wan2.1 VAE (random weights) in separate processes and prints
# their rows of `skyreels bench vae-decode`. Usage: tools/bench_vae_memory.sh [height] [width]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p skyreels-cli
h=${1:-8}
w=${2:-8}
for n in 5 50; do
  ./target/release/skyreels bench vae-decode --latent-frames "$n" --height "$h" --width "$w" | if [ "$n" = 5 ]; then cat; else tail -n 1; fi
done
