#!/usr/bin/env bash
# The demo model's DiT + umT5 training step, side by side with an earlier commit's, in one run:
# both binaries train the recipe's model (width 128, 4 blocks, batch 8 × 144 tokens) on the
# same 64 encoded clips, alternating round by round; the step time is read from each run's
# loss.csv over its steady steps (the same measurement for both, whatever their flags).
# Prints a Markdown table: seconds per step, samples per second, model GFLOP/s, speed-up.
#
#   tools/bench_train.sh                          # against 46c91e3 (before issue 27), 3 rounds
#   tools/bench_train.sh --base <commit> --rounds 5 --steps 60
#
# The baseline is built once from a git worktree into ~/.cache/skyreels-rs/bench-train/<commit>
# (a full release build: about 10 minutes on 2 cores). Results go to docs/bench/train-step.md.
set -euo pipefail
cd "$(dirname "$0")/.."
base=46c91e3
rounds=3
steps=40
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "unknown flag $1 (flags: --base COMMIT, --rounds N, --steps N)" >&2; exit 2 ;;
  esac
done
[ "$steps" -ge 12 ] || { echo "--steps must be at least 12 (the first 5 are not timed)" >&2; exit 2; }
repo=$PWD
cache=${SKYREELS_BENCH_CACHE:-$HOME/.cache/skyreels-rs/bench-train}/$(git rev-parse --short "$base")
cargo build --release --locked -q -p skyreels-cli
ours=$repo/target/release/skyreels
if [ ! -x "$cache/target/release/skyreels" ]; then
  echo "building the baseline $base in $cache (once)" >&2
  mkdir -p "$cache"
  [ -d "$cache/src" ] || git worktree add --detach "$cache/src" "$base" >/dev/null
  (cd "$cache/src" && CARGO_TARGET_DIR="$cache/target" cargo build --release --locked -q -p skyreels-cli)
fi
theirs=$cache/target/release/skyreels
model=$repo/models/skyreels-demo
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(train dit --vae "$model/vae" --tokenizer "$model/tokenizer/tokenizer.json" --clips 64 --batch 8
        --steps "$steps" --checkpoint-every 1000000 --quiet)

# Encode the 64 clips once; every run below starts from a copy of them.
"$ours" train dit -o "$work/data" --vae "$model/vae" --tokenizer "$model/tokenizer/tokenizer.json" \
  --bench 1 --json > "$work/flops.json"
gflop=$(python3 -c "import json; print(json.load(open('$work/flops.json'))['gflop_per_sample'])")
cpu=$(python3 -c "import json; print(json.load(open('$work/flops.json'))['cpu'])")

# Seconds per step over steps 6..N of a run's loss.csv (its clock has 0.1 s resolution, so
# the mean over the steady stretch, not single steps).
step_time() {
  python3 - "$1" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
first, last = rows[4], rows[-1]
print((float(last["seconds"]) - float(first["seconds"])) / (int(last["step"]) - int(first["step"])))
EOF
}

results=$work/results.txt
: > "$results"
for round in $(seq 1 "$rounds"); do
  for variant in base workers-1 workers-2; do
    out=$work/$variant-$round
    mkdir -p "$out"
    cp "$work/data/dataset.safetensors" "$work/data/dataset.json" "$out/"
    case $variant in
      base) "$theirs" "${common[@]}" -o "$out" > /dev/null ;;
      workers-1) "$ours" "${common[@]}" --workers 1 -o "$out" > /dev/null ;;
      workers-2) "$ours" "${common[@]}" --workers 2 -o "$out" > /dev/null ;;
    esac
    t=$(step_time "$out/loss.csv")
    echo "$variant $t" >> "$results"
    echo "round $round: $variant ${t} s/step" >&2
    rm -rf "$out"
  done
done

table=$(python3 - "$results" "$gflop" "$cpu" "$base" "$(git rev-parse --short HEAD)" "$rounds" "$steps" <<'EOF'
import sys, statistics
path, gflop, cpu, base, head, rounds, steps = sys.argv[1:]
gflop = float(gflop)
times = {}
for line in open(path):
    name, t = line.split()
    times.setdefault(name, []).append(float(t))
labels = {
    "base": f"{base} (before): one pass, candle's composed ops, 2 threads",
    "workers-1": f"{head}: fused kernels, one pass, 2 threads (--workers 1)",
    "workers-2": f"{head}: fused kernels, 2 data-parallel workers (default)",
}
best_base = min(times["base"])
print(f"DiT + umT5 training step of the demo recipe (width 128, 4 blocks, batch 8 × 144 tokens, "
      f"{gflop:.3f} GFLOP per sample), {cpu}; best of {rounds} alternating rounds, "
      f"mean over steps 6–{steps} of each run")
print()
print("| build | s/step (best) | s/step (median) | samples/s | effective GFLOP/s | speed-up |")
print("|---|---|---|---|---|---|")
for name in ["base", "workers-1", "workers-2"]:
    best, median = min(times[name]), statistics.median(times[name])
    print(f"| {labels[name]} | {best:.3f} | {median:.3f} | {8 / best:.1f} | {8 * gflop / best:.1f} | "
          f"{best_base / best:.2f}× |")
EOF
)
echo "$table"
mkdir -p docs/bench
echo "$table" > docs/bench/train-step.md
