#!/usr/bin/env bash
# The one prepared run for a GPU machine (Python and PyTorch there; no Rust, no network; minutes
# of time). Run tools/gpu/prepare.sh first on a build machine, then here, from the repo root:
#   bash tools/gpu/check.sh            # writes $OUT (or ./gpu-check): one .txt per step + summary.md
# Within about 10 minutes it
#   1. prints the GPU (nvidia-smi) and the binary's shared libraries as resolved here;
#   2. runs `skyreels check` in f32 and in bf16 (parity against the PyTorch fixtures);
#   3. times `skyreels bench transformer` at the real DF-1.3B size (30 blocks, the 540P window of
#      25 latent frames, bf16) and diffusers on the same shapes on the same GPU;
#   4. runs `skyreels bench window`: one 97-frame 544x960 window with random DF-1.3B weights
#      (5 steps with guidance; s/step, VAE decode time, peak GPU memory), then with
#      --offload model and --offload blocks (2 steps each) for their peak memory, and the VAE
#      decode alone in f32 and bf16 (17 frames at 544x960);
#   5. writes summary.md with every table.
# Each step has its own time limit and a failed step does not stop the others.
#   SKYREELS_BIN  the binary (default .cuda/dist/skyreels, else unpacked from .cuda/carry/skyreels.xz)
#   DEVICE        the --device to test (default cuda)
#   QUICK=1       tiny sizes: a dry run of this script itself, e.g. on a CPU with DEVICE=cpu
#   BUDGET        seconds the whole run may take (default 560, under the device tool's 600 s per
#                 command): each step's limit is cut to what is left, and steps that no longer
#                 fit are skipped and listed, so summary.md is always complete
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN="${SKYREELS_BIN:-.cuda/dist/skyreels}"
if [[ ! -x "$BIN" && -z "${SKYREELS_BIN:-}" && -f .cuda/carry/skyreels.xz ]]; then
  BIN=/tmp/skyreels-cuda
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    .cuda/carry/skyreels.xz "$BIN" && chmod +x "$BIN"
fi
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
OUT="${OUT:-gpu-check}"
BUDGET="${BUDGET:-560}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"

# The CUDA 13 and cuDNN 9 libraries of the machine's Python wheels, and the driver's libcuda.
PY="$(command -v python3 || true)"
if [[ -n "$PY" ]]; then
  SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)"
  for dir in "$SITE"/nvidia/cu13/lib "$SITE"/nvidia/cudnn/lib "$SITE"/nvidia/*/lib; do
    [[ -d "$dir" ]] && LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
fi
for dir in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [[ -d "$dir" ]] && LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit into $OUT/NAME.txt and notes
# its status and wall time in the summary.
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((BUDGET - SECONDS))
  if ((left < 15)); then
    echo "## $name: skipped (the ${BUDGET} s budget is spent)" | tee -a "$SUMMARY"
    return 0
  fi
  ((limit > left)) && limit=$left
  local start=$SECONDS
  echo "== $name: $*" | tee "$OUT/$name.txt"
  timeout "$limit" "$@" >>"$OUT/$name.txt" 2>&1
  local status=$?
  local took=$((SECONDS - start))
  tail -n 40 "$OUT/$name.txt"
  {
    echo "## $name (exit $status, ${took} s)"
    echo
    echo '`'"$*"'`'
    echo
    grep -E '^(\||device:|dtype:|all |error)' "$OUT/$name.txt" || tail -n 5 "$OUT/$name.txt"
    echo
  } >>"$SUMMARY"
  return 0
}

if [[ "$QUICK" == 1 ]]; then
  VAE=(--latent-frames 2 --height 4 --width 4)
  TRANSFORMER=(--layers 1 --frames 2 --height 8 --width 8 --repeat 1)
  WINDOW=(--layers 1 --frames 5 --height 32 --width 32)
  STEPS=2
else
  TRANSFORMER=(--layers 30 --frames 25 --height 68 --width 120 --repeat 3)
  WINDOW=(--frames 97 --height 544 --width 960)
  VAE=(--latent-frames 5 --height 68 --width 120)
  STEPS=5
fi

step gpu 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi"'
step libraries 30 bash -c "ldd '$BIN' | grep -E 'cuda|cublas|curand|nvrtc|cudnn|not found' || true"
step check_f32 150 "$BIN" check --device "$DEVICE" --dtype f32
step check_bf16 150 "$BIN" check --device "$DEVICE" --dtype bf16
step bench_transformer 180 "$BIN" bench transformer --device "$DEVICE" --dtype bf16 "${TRANSFORMER[@]}"

# diffusers on the same shapes, in a throwaway environment on top of the machine's torch.
if [[ -n "$PY" ]] && "$PY" -c 'import torch' 2>/dev/null; then
  REF_PY="$PY"
  if ! "$PY" -c 'import diffusers' 2>/dev/null && ls .cuda/carry/wheels/diffusers-*.whl >/dev/null 2>&1; then
    "$PY" -m venv --system-site-packages /tmp/skyreels-ref >/dev/null 2>&1 &&
      /tmp/skyreels-ref/bin/python -m pip install --quiet --no-index --no-deps .cuda/carry/wheels/*.whl &&
      REF_PY=/tmp/skyreels-ref/bin/python
  fi
  TORCH_DEVICE="$DEVICE"
  [[ "$DEVICE" == auto ]] && TORCH_DEVICE=cuda
  step bench_diffusers 180 "$REF_PY" tools/reference/bench_transformer.py --device "$TORCH_DEVICE" --dtype bf16 \
    "${TRANSFORMER[@]}"
else
  echo "## bench_diffusers: skipped (no python3 with torch here)" >>"$SUMMARY"
fi

step bench_window 240 "$BIN" bench window --device "$DEVICE" "${WINDOW[@]}" --steps "$STEPS"
# The VAE's decode in f32 and in bf16 at 540P: the measurement --vae-dtype's default waits for.
step vae_f32 120 "$BIN" bench vae-decode --device "$DEVICE" "${VAE[@]}" --vae-dtype f32
step vae_bf16 120 "$BIN" bench vae-decode --device "$DEVICE" "${VAE[@]}" --vae-dtype bf16
# Peak memory of each --offload mode (two steps are enough for the peak).
step bench_window_model 100 "$BIN" bench window --device "$DEVICE" "${WINDOW[@]}" --steps 2 --offload model
step bench_window_blocks 100 "$BIN" bench window --device "$DEVICE" "${WINDOW[@]}" --steps 2 --offload blocks
echo
echo "==== summary ($SUMMARY)"
cat "$SUMMARY"
