#!/usr/bin/env bash
# `skyreels bench cache` on the demo model and on a random-weight DF-1.3B-width model: the
# tables (markdown) and every figure (JSON) go to docs/bench/. A model whose table exists is
# skipped, so an interrupted run continues where it stopped (FORCE=1 redoes everything).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p skyreels-cli
out=docs/bench
mkdir -p "$out"
for model in demo df-1.3b-random; do
    if [ -s "$out/cache-$model.md" ] && [ "${FORCE:-0}" != 1 ]; then
        echo "kept $out/cache-$model.md"
        continue
    fi
    # The random model's runs take a minute each, long enough for one run to be a fair time.
    repeat=2
    [ "$model" = demo ] || repeat=1
    ./target/release/skyreels bench cache --model "$model" --repeat "$repeat" --report "$out/cache-$model.json" \
        >"$out/cache-$model.md.tmp"
    mv "$out/cache-$model.md.tmp" "$out/cache-$model.md"
    echo "wrote $out/cache-$model.md"
done
