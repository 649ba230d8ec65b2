#!/usr/bin/env bash
# Trains the demo model from scratch by the documented recipe (docs/demo-model.md), one stage of
# at most about 2 hours per call on 2 cores: run it again with the same folder to do the next
# stage, after a reboot, a kill or a new session. Every stage is seeded and resumes bit-exactly.
#
#   tools/train_demo.sh runs/demo          # the next stage; prints what is left
#   DIT_STEPS=300000 DIT_STAGE=75000 tools/train_demo.sh runs/long   # a longer recipe in 2-hour stages
#   VAE_FROM=models/skyreels-demo tools/train_demo.sh runs/demo          # the shipped VAE and tokenizer
#                                                                        # (how the shipped DiT was made)
#   DIT_ARGS="--dim 192 --heads 6" tools/train_demo.sh runs/wide       # further `train dit` flags (give
#                                                                        # the same ones to every stage)
#
# Stages: (1) tokenizer and both VAE phases (about 30 min); (2…) the DiT + umT5, DIT_STAGE steps
# at a time (0.087 s a step on 2 cores: 60000 steps ≈ 87 min), on the same schedule of DIT_STEPS
# steps whatever the stages. The model is <run>/dit/export once the last stage is done (each
# DiT stage also leaves an export of where it stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: tools/train_demo.sh RUN_FOLDER}
dit_steps=${DIT_STEPS:-60000}
dit_stage=${DIT_STAGE:-60000}
clips=${DIT_CLIPS:-3000}
export CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-2}
cargo build --release --locked -q -p skyreels-cli
S=$PWD/target/release/skyreels
mkdir -p "$run"

# `--resume` when the folder already holds that run's checkpoint.
resume_flag() { [ -f "$1/checkpoint.json" ] && echo --resume || true; }
checkpoint_step() { sed -n 's/.*"step": *\([0-9]*\).*/\1/p' "$1/checkpoint.json" 2>/dev/null || echo 0; }

if [ -n "${VAE_FROM:-}" ]; then
  vae=$VAE_FROM/vae
  tokenizer=$VAE_FROM/tokenizer/tokenizer.json
  [ -f "$vae/config.json" ] && [ -f "$tokenizer" ] || { echo "$VAE_FROM holds no vae/ and tokenizer/" >&2; exit 2; }
elif [ ! -f "$run/vae-video/export/config.json" ]; then
  echo "stage 1: tokenizer and VAE (about 30 minutes)"
  [ -f "$run/tokenizer.json" ] || "$S" train tokenizer -o "$run/tokenizer.json"
  [ -f "$run/vae/export/config.json" ] ||
    "$S" train vae -o "$run/vae" --frames 1 --batch 16 --quiet $(resume_flag "$run/vae")
  "$S" train vae -o "$run/vae-video" --init-from "$run/vae" --warm-up-chunks 6 --steps 750 --quiet \
    $(resume_flag "$run/vae-video")
  echo "stage 1 done; run again for the DiT"
  exit 0
else
  vae=$run/vae-video/export
  tokenizer=$run/tokenizer.json
fi

done_steps=$(checkpoint_step "$run/dit")
done_steps=${done_steps:-0}
if [ "$done_steps" -ge "$dit_steps" ]; then
  echo "all stages done: the model is $run/dit/export"
  exit 0
fi
until=$((done_steps + dit_stage))
[ "$until" -le "$dit_steps" ] || until=$dit_steps
echo "DiT stage: steps $done_steps → $until of $dit_steps"
"$S" train dit -o "$run/dit" --vae "$vae" --tokenizer "$tokenizer" \
  --clips "$clips" --steps "$dit_steps" --until "$until" --quiet ${DIT_ARGS:-} $(resume_flag "$run/dit")
if [ "$until" -lt "$dit_steps" ]; then
  echo "stage ended at step $until; run again to continue"
else
  echo "all stages done: the model is $run/dit/export"
fi
