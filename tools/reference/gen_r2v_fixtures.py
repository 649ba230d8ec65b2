#!/usr/bin/env python3
"""Generate the SkyReels-V3 reference-to-video (R2V) fixtures from the upstream pipeline.

Run by hand (never by CI), with the reference venv described in README.md next to this file
(plus torchvision), after gen_fixtures.py, and a checkout of SkyworkAI/SkyReels-V3 OUTSIDE this
repository (its code is imported from there, never copied):

    python tools/reference/gen_r2v_fixtures.py --skyreels-v3 /path/to/SkyReels-V3 \
        --out crates/skyreels-core/tests/fixtures

It builds the upstream `WanSkyReelsA2WanT2VPipeline` (`pipelines/reference_to_video_pipeline.py`)
around the upstream transformer class `SkyReelsA2WanI2v3DModel` holding the weights of the tiny
`models/t2v_diffusers` (the same diffusers-layout Wan DiT), the tiny `models/vae_diffusers` and a
flow UniPC scheduler, and runs it in f32 on the CPU with two reference images (so two of the four
reference slots are zero latents) and `output_type="latent"`. It writes `r2v.safetensors`:

    <case>.positive / .negative   prompt states (first 10 rows; the rest are zero padding)
    <case>.noise                  the initial latents given to the pipeline
    <case>.references             the [1, 16, 4, h, w] reference latents `prepare_latents` makes
                                  (the VAE posterior sampled with the run's generator, normalised,
                                  zero-padded to four) — given to our loop as they are
    <case>.output_latents         the pipeline's result

for `plain` (guidance 1 and 1: one model call per step, as upstream runs by default) and
`guided` (text guidance 5, image guidance 3: the three-call combination). The pipeline's
`_execution_device`, pinned to CUDA upstream, is set to the CPU. Settings are in the
`json` metadata. The output is bit-identical from run to run (one thread, seeded generators).
"""

import argparse
import importlib
import json
import os
import sys
import types

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

TEXT_ROWS = 10


def import_upstream(root):
    """The R2V pipeline module alone: the packages' __init__ files import every pipeline."""
    for package in ("skyreels_v3", "skyreels_v3.modules", "skyreels_v3.modules.reference_to_video",
                    "skyreels_v3.pipelines"):
        stub = types.ModuleType(package)
        stub.__path__ = [os.path.join(root, *package.split("."))]
        sys.modules[package] = stub
    return importlib.import_module("skyreels_v3.pipelines.reference_to_video_pipeline")


def tiny_transformer(upstream, models):
    folder = os.path.join(models, "t2v_diffusers")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    keep = ["patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim",
            "added_kv_proj_dim", "rope_max_seq_len"]
    model_class = sys.modules["skyreels_v3.modules.reference_to_video.transformer"].SkyReelsA2WanI2v3DModel
    model = model_class(**{k: config[k] for k in keep if k in config})
    state = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    model.load_state_dict(state, strict=True)
    return model.eval()


def reference_images(generator, count, height, width):
    images = []
    for _ in range(count):
        pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
        images.append(Image.fromarray(pixels, "RGB"))
    return images


def case(upstream, models, tensors, settings, name, guidance, guidance_img):
    transformer = tiny_transformer(upstream, models)
    vae = AutoencoderKLWan.from_pretrained(os.path.join(models, "vae_diffusers")).eval()
    s = dict(steps=4, shift=5.0, guidance=guidance, guidance_img=guidance_img, frames=9, height=32, width=48,
             text_length=16, references=2, seed=31)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=s["shift"], num_train_timesteps=1000,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )
    pipe = upstream.WanSkyReelsA2WanT2VPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                                                scheduler=scheduler)
    generator = torch.Generator().manual_seed(41)
    width = transformer.config.text_dim
    positive = torch.zeros(1, s["text_length"], width)
    negative = torch.zeros(1, s["text_length"], width)
    positive[:, :TEXT_ROWS] = torch.randn(1, TEXT_ROWS, width, generator=generator)
    negative[:, :TEXT_ROWS] = torch.randn(1, TEXT_ROWS, width, generator=generator)
    refs = reference_images(generator, s["references"], s["height"], s["width"])
    latent_frames = (s["frames"] - 1) // 4 + 1
    noise = torch.randn(1, 16, latent_frames, s["height"] // 8, s["width"] // 8, generator=generator)
    with torch.no_grad():
        # The reference latents the run below makes: same generator state, same draws.
        _, references = pipe.prepare_latents(refs, 1, 16, s["height"], s["width"], s["frames"], torch.float32,
                                             torch.device("cpu"), torch.Generator().manual_seed(s["seed"]),
                                             noise.clone())
        out = pipe(refs, prompt_embeds=positive, negative_prompt_embeds=negative, height=s["height"],
                   width=s["width"], num_frames=s["frames"], num_inference_steps=s["steps"], guidance_scale=guidance,
                   guidance_scale_img=guidance_img, generator=torch.Generator().manual_seed(s["seed"]),
                   latents=noise.clone(), output_type="latent", return_dict=False)[0]
    tensors[f"{name}.positive"] = positive[:, :TEXT_ROWS].contiguous()
    tensors[f"{name}.negative"] = negative[:, :TEXT_ROWS].contiguous()
    tensors[f"{name}.noise"] = noise
    tensors[f"{name}.references"] = references.contiguous()
    tensors[f"{name}.output_latents"] = out.contiguous()
    settings[name] = s


def on_the_cpu(upstream):
    """The upstream pipeline pins its execution device to CUDA; these runs are on the CPU."""
    upstream.WanSkyReelsA2WanT2VPipeline._execution_device = property(lambda self: torch.device("cpu"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skyreels-v3", required=True, help="a checkout of SkyworkAI/SkyReels-V3")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    upstream = import_upstream(args.skyreels_v3)
    on_the_cpu(upstream)
    models = os.path.join(args.out, "models")
    tensors, settings = {}, {"text_rows": TEXT_ROWS}
    case(upstream, models, tensors, settings, "plain", 1.0, 1.0)
    case(upstream, models, tensors, settings, "guided", 5.0, 3.0)
    save_file(tensors, os.path.join(args.out, "r2v.safetensors"), metadata={"json": json.dumps(settings)})


if __name__ == "__main__":
    main()
