#!/usr/bin/env python3
"""PyTorch's side of `tools/bench_vs_torch.sh`: one component timed at one size, one JSON line out.

Each run is one process, like `skyreels bench`'s, so the driver can interleave the two engines
and take the best of N. Random weights, the same shapes as the Rust benchmarks:

    bench_components.py transformer --layers 2 --dtype f32     # DF-1.3B width, 1950 tokens + 512 text
    bench_components.py vae-decode --latent-frames 5           # Wan2.1 VAE, 5 latents -> 17 x 240x416
    bench_components.py vae-encode --frames 17                 # 17 frames of 240x416 -> 5 latents
    bench_components.py text-encoder --layers 2                # umT5-XXL width, 512 tokens
    bench_components.py demo --model models/skyreels-demo      # the README's command in diffusers

Output: {"component": ..., "seconds": best, "mean": ..., "peak_rss_mib": ..., "torch": version}.
"""
import argparse
import json
import resource
import time

import torch


def timed(repeat, warmup, fn):
    """Best and mean wall time of `repeat` calls after `warmup` untimed ones."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times), sum(times) / len(times)


def dtype_of(name):
    return torch.float32 if name == "f32" else torch.bfloat16


def transformer(args):
    from diffusers import SkyReelsV2Transformer3DModel

    # DF-1.3B-540P (diffusers' conversion script), truncated to --layers blocks.
    model = SkyReelsV2Transformer3DModel(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                                         num_layers=args.layers, inject_sample_info=True).eval()
    model = model.to(dtype_of(args.dtype))
    x = torch.randn(1, 16, args.frames, args.height, args.width, dtype=dtype_of(args.dtype))
    t = torch.linspace(999, 2, args.frames).long()[None]
    ctx = torch.randn(1, 512, 4096, dtype=dtype_of(args.dtype)) * 0.1
    return timed(args.repeat, 1, lambda: model(x, t, ctx, enable_diffusion_forcing=True, fps=[1]))


def wan21_vae(dtype):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan().eval().to(dtype)  # the defaults are Wan2.1's VAE


def vae_decode(args):
    vae = wan21_vae(dtype_of(args.dtype))
    z = torch.randn(1, 16, args.latent_frames, args.height, args.width, dtype=dtype_of(args.dtype))
    return timed(args.repeat, 0, lambda: vae.decode(z))


def vae_encode(args):
    vae = wan21_vae(dtype_of(args.dtype))
    video = torch.rand(1, 3, args.frames, args.height, args.width, dtype=dtype_of(args.dtype)) * 2 - 1
    return timed(args.repeat, 0, lambda: vae.encode(video))


def text_encoder(args):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=args.layers,
                        num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True)
    model = UMT5EncoderModel(config).eval().to(dtype_of(args.dtype))
    ids = torch.randint(0, 256384, (1, args.tokens))
    mask = torch.ones(1, args.tokens, dtype=torch.long)
    return timed(args.repeat, 1, lambda: model(input_ids=ids, attention_mask=mask))


def demo(args):
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    from transformers import PreTrainedTokenizerFast

    # The demo's tokenizer is a word-level tokenizer.json, which T5TokenizerFast (what
    # model_index.json names, for the released models) cannot read; the generic class can.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{args.model}/tokenizer/tokenizer.json", pad_token="<pad>")
    pipe = SkyReelsV2DiffusionForcingPipeline.from_pretrained(args.model, tokenizer=tokenizer,
                                                              torch_dtype=torch.float32)
    prompt = "a red circle moves right on a blue background, the camera pans left"

    def run():
        pipe(prompt=prompt, negative_prompt="", height=64, width=64, num_frames=81, base_num_frames=33,
             overlap_history=17, num_inference_steps=20, guidance_scale=4.0, ar_step=0, fps=16,
             max_sequence_length=32, generator=torch.Generator().manual_seed(0), output_type="np")

    return timed(args.repeat, 0, run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("component", choices=["transformer", "vae-decode", "vae-encode", "text-encoder", "demo"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=None, help="latent frames (transformer) or video frames")
    ap.add_argument("--latent-frames", type=int, default=5)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--model", default="models/skyreels-demo")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    latent = args.component in ("transformer", "vae-decode")
    args.height = args.height or (30 if latent else 240)
    args.width = args.width or (52 if latent else 416)
    args.frames = args.frames or (5 if args.component == "transformer" else 17)
    run = {"transformer": transformer, "vae-decode": vae_decode, "vae-encode": vae_encode,
           "text-encoder": text_encoder, "demo": demo}[args.component]
    best, mean = run(args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"component": args.component, "dtype": args.dtype, "threads": args.threads,
                      "seconds": round(best, 4), "mean": round(mean, 4), "peak_rss_mib": round(peak),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
