#!/usr/bin/env bash
# skyreels-rs beside PyTorch on the CPU, both engines in one run, interleaved, best of N rounds,
# with peak memory: DiT (f32 at 2 and 1 threads, bf16), Wan VAE decode and encode, umT5, and the
# README's demo command. Prints a Markdown table with the ratio ours / theirs.
#
#   tools/bench_vs_torch.sh                        # every row, 3 rounds (about an hour on 2 cores)
#   tools/bench_vs_torch.sh --rows dit-f32,umt5 --runs 5
#   tools/bench_vs_torch.sh --resume               # go on after an interruption
#
# The PyTorch venv lives outside the repo: $SKYREELS_TORCH_VENV, default
# ~/.cache/skyreels-rs/torch-venv, made here on first use (pinned versions, about 6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SKYREELS_TORCH_VENV:-$HOME/.cache/skyreels-rs/torch-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, diffusers, transformers" 2>/dev/null; then
  echo "making the PyTorch venv in $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.15.0 diffusers==0.42.1 transformers==5.25.0 tokenizers==0.23.3 \
    safetensors==0.8.0 sentencepiece==0.2.3 ftfy==6.3.1 accelerate==1.16.0 numpy==2.4.6
fi
cargo build --release --locked -q -p skyreels-cli
exec "$venv/bin/python" tools/reference/bench_vs_torch.py --python "$venv/bin/python" \
  --markdown target/bench-vs-torch.md "$@"
