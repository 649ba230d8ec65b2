#!/usr/bin/env python3
"""Generate the CLIP image-encoder fixtures for skyreels-rs from PyTorch.

Run by hand (never by CI), with the reference venv described in README.md next to this file,
and a checkout of the upstream SkyReels-V2 repository OUTSIDE this repository (its code is
imported from there, never copied):

    python tools/reference/gen_clip_fixtures.py \
        --skyreels /path/to/SkyReels-V2 --out crates/skyreels-core/tests/fixtures

Only these files under `--out` are (re)written:

    models/clip_hf_a/              transformers CLIPVisionModel, save_pretrained (hidden 32,
                                   3 layers, 4 heads, 28 px images in 14 px patches, exact GELU)
    models/clip_hf_b/              the same kind, other shapes: hidden 24, 2 layers, 2 heads,
                                   35 px in 7 px patches, quick GELU, eps 1e-6
    models/clip_original/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth
                                   the upstream `modules/clip.py` VisionTransformer (hidden 32,
                                   3 layers, 2 heads, 28 px in 14 px patches, exact GELU) under
                                   `visual.*`, plus stray `textual.*` and `log_scale` entries as in
                                   the real file
    clip.safetensors               for each model: the pixels given and the penultimate block's
                                   output (`hidden_states[-2]` / `use_31_block=True`); for the
                                   original one also the [-1, 1] video before `encode_video`'s
                                   preprocessing (bicubic squash, x·0.5+0.5, normalisation)

The upstream `flash_attention` only runs on CUDA; it is replaced by the same attention computed
in f32 (softmax(q·kᵀ/√d)·v), as everything here runs in f32 on the CPU. Every LayerNorm weight
is 1 + 0.1·N(0,1) and every bias 0.05·N(0,1), so a port that ignores one fails. The output is
bit-identical from run to run (one thread, seeded generators).
"""

import argparse
import importlib
import os
import sys
import types

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def perturb_norms(module, generator):
    """LayerNorm weights 1 + 0.1·N, biases 0.05·N: the defaults (1, 0) would hide a missing norm."""
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            with torch.no_grad():
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=generator))


def hf_case(name, out, tensors, seed, **config):
    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**config)).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    perturb_norms(model, generator)
    pixels = torch.randn(2, 3, config["image_size"], config["image_size"], generator=generator)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    model.save_pretrained(os.path.join(out, "models", name))
    tensors[f"{name}.pixels"] = pixels.contiguous()
    tensors[f"{name}.penultimate"] = hidden[-2].contiguous()


def sdpa_f32(q, k, v, **_):
    """The upstream flash_attention's result, in f32 on the CPU: q, k, v are [B, L, N, D]."""
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).contiguous()


def original_case(skyreels, out, tensors, seed):
    # Import modules/clip.py alone: the packages' __init__ files pull in the whole pipeline
    # (decord, flash-attn, …), which the image encoder does not need.
    for package in ("skyreels_v2_infer", "skyreels_v2_infer.modules"):
        stub = types.ModuleType(package)
        stub.__path__ = [os.path.join(skyreels, *package.split("."))]
        sys.modules[package] = stub
    clip = importlib.import_module("skyreels_v2_infer.modules.clip")
    clip.flash_attention = sdpa_f32
    torch.manual_seed(seed)
    visual = clip.VisionTransformer(
        image_size=28, patch_size=14, dim=32, mlp_ratio=4, out_dim=16, num_heads=2, num_layers=3,
        pool_type="token", pre_norm=True, post_norm=False, activation="gelu",
    ).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    perturb_norms(visual, generator)
    # encode_video's input: one frame in [-1, 1], of a size other than the model's.
    video = torch.rand(1, 3, 1, 37, 53, generator=generator) * 2 - 1
    b, c, t, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=(28, 28), mode="bicubic", align_corners=False)
    frames = frames.mul(0.5).add(0.5)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    pixels = (frames - mean) / std
    with torch.no_grad():
        penultimate = visual(pixels, use_31_block=True)
    state = {f"visual.{k}": v.clone() for k, v in visual.state_dict().items()}
    state["textual.token_embedding.weight"] = torch.randn(10, 8, generator=generator)
    state["log_scale"] = torch.tensor(4.6)
    folder = os.path.join(out, "models", "clip_original")
    os.makedirs(folder, exist_ok=True)
    torch.save(state, os.path.join(folder, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"))
    tensors["original.video"] = video.contiguous()
    tensors["original.pixels"] = pixels.contiguous()
    tensors["original.penultimate"] = penultimate.contiguous()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skyreels", required=True, help="a checkout of SkyworkAI/SkyReels-V2")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tensors = {}
    hf_case("clip_hf_a", args.out, tensors, 11, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
            num_attention_heads=4, image_size=28, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5,
            projection_dim=16)
    hf_case("clip_hf_b", args.out, tensors, 12, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=2, image_size=35, patch_size=7, hidden_act="quick_gelu", layer_norm_eps=1e-6,
            projection_dim=16)
    original_case(args.skyreels, args.out, tensors, 13)
    save_file(tensors, os.path.join(args.out, "clip.safetensors"))


if __name__ == "__main__":
    main()
