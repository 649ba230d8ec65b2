#!/usr/bin/env python3
"""Time diffusers' SkyReelsV2Transformer3DModel (random weights) for comparison with `skyreels bench`.

    python tools/reference/bench_transformer.py --layers 2 --frames 5 --height 30 --width 52
    python tools/reference/bench_transformer.py --device cuda --layers 30 --frames 25 --height 68 --width 120 --dtype bf16
"""
import argparse
import time

import torch
from diffusers import SkyReelsV2Transformer3DModel

ap = argparse.ArgumentParser()
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--frames", type=int, default=5)
ap.add_argument("--height", type=int, default=30)
ap.add_argument("--width", type=int, default=52)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
torch.set_num_threads(args.threads)
dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
device = torch.device(args.device)
cuda = device.type == "cuda"


def sync():
    if cuda:
        torch.cuda.synchronize(device)


# DF-1.3B-540P configuration (diffusers' convert script), truncated to --layers blocks.
model = SkyReelsV2Transformer3DModel(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                                     num_layers=args.layers, inject_sample_info=True).eval().to(device, dtype)
x = torch.randn(1, 16, args.frames, args.height, args.width, dtype=dtype, device=device)
t = torch.linspace(999, 2, args.frames).long()[None].to(device)
ctx = torch.randn(1, 512, 4096, dtype=dtype, device=device) * 0.1
with torch.no_grad():
    model(x, t, ctx, enable_diffusion_forcing=True, fps=[1])
    sync()
    times = []
    for _ in range(args.repeat):
        s = time.perf_counter()
        model(x, t, ctx, enable_diffusion_forcing=True, fps=[1])
        sync()
        times.append(time.perf_counter() - s)
tokens = args.frames * (args.height // 2) * (args.width // 2)
peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if cuda else "n/a"
where = torch.cuda.get_device_name(device) if cuda else f"{args.threads} threads"
print(f"| diffusers {torch.__version__} ({where}) | {args.layers} | {args.dtype} | {tokens} | {min(times):.3f} | "
      f"{sum(times) / len(times):.3f} | {peak} |")
