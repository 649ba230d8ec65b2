#!/usr/bin/env bash
# Time of the README's main command on the shipped demo model: a 5-second clip (81 frames,
# 64x64, 16 fps) from a prompt, whole process (model loading included), one row per run.
# Usage: tools/bench_demo.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p skyreels-cli
runs=${1:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
prompt="a red circle moves right on a blue background, the camera pans left"
echo "skyreels generate --prompt \"$prompt\" -o demo.mp4 (models/skyreels-demo), $(nproc) cores"
echo
echo "| run | frames | wall s (process) | generation s (sidecar) | peak RSS (MiB) |"
echo "|---|---|---|---|---|"
field() { grep -m1 "\"$1\"" "$2" | sed -E 's/.*: ([0-9.]+).*/\1/'; }
for run in $(seq 1 "$runs"); do
  start=$(date +%s.%N)
  env -u SKYREELS_DEMO_MODEL ./target/release/skyreels generate --prompt "$prompt" -o "$out/demo$run.mp4" --quiet
  end=$(date +%s.%N)
  s="$out/demo$run.mp4.json"
  printf '| %s | %s | %.2f | %.2f | %s |\n' "$run" "$(field frames "$s")" "$(awk "BEGIN {print $end - $start}")" \
    "$(field seconds "$s")" "$(field peak_rss_mib "$s")"
done
