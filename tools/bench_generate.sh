#!/usr/bin/env bash
# Memory and speed of `skyreels generate` on the tiny fixture pipeline: a 3-window and a
# 30-window video in separate processes. Peak RSS must not grow with the length of the video
# (windows are decoded and written as they finish). Prints a markdown table.
# Usage: tools/bench_generate.sh [height] [width] [continuation]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p skyreels-cli
model=crates/skyreels-core/tests/fixtures/models/df_pipeline
h=${1:-256}
w=${2:-256}
continuation=${3:-latent}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
field() { grep -m1 "\"$1\"" "$2" | sed -E 's/.*: ([0-9.]+).*/\1/'; }
echo "tiny df_pipeline, ${w}x${h}, 3 steps, CFG on, windows of 13 frames overlapping by 5, $continuation continuation, $(nproc) cores"
echo
echo "| windows | frames | seconds | frames/s | peak RSS (MiB) |"
echo "|---|---|---|---|---|"
for windows in 3 30; do
  frames=$((13 + (windows - 1) * 8))
  ./target/release/skyreels generate --model "$model" --prompt "a red circle moves right" \
    --height "$h" --width "$w" --frames "$frames" --base-frames 13 --overlap-history 5 --steps 3 \
    --continuation "$continuation" --seed 1 -o "$out/w$windows.mp4" --quiet
  s="$out/w$windows.mp4.json"
  printf '| %s | %s | %.2f | %.1f | %s |\n' "$windows" "$(field frames "$s")" "$(field seconds "$s")" \
    "$(field frames_per_second_generated "$s")" "$(field peak_rss_mib "$s")"
done
