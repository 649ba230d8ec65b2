#!/usr/bin/env python3
"""Generate the SkyReels-A2 (elements-to-video) fixtures from the upstream pipeline.

Run by hand (never by CI), with the reference venv described in README.md next to this file
(plus ftfy and regex, which the upstream pipeline imports), after gen_fixtures.py and
gen_clip_fixtures.py, and a checkout of SkyworkAI/SkyReels-A2 OUTSIDE this repository (its code
is imported from there, never copied):

    python tools/reference/gen_a2_fixtures.py --skyreels-a2 /path/to/SkyReels-A2 \
        --out crates/skyreels-core/tests/fixtures

It builds the upstream `A2Pipeline` (`models/pipeline_a2.py`) around the upstream `A2Model`
(`models/transformer_a2.py`) holding the weights of the tiny `models/i2v_pipeline/transformer`
(a diffusers-layout Wan I2V DiT), the tiny `models/vae_diffusers`, the tiny CLIP vision tower
`models/clip_hf_b` with a `CLIPImageProcessor` sized for it, and diffusers' flow UniPC (shift 8,
as `infer.py`), and runs it in f32 on the CPU with `vae_combine="before"`, `vae_repeat=True`
(the released settings) and `output_type="latent"`, for 2 and 3 elements. Upstream's single-element
layout is broken (its mask has 22 latent frames for 21, issue #42), so it is not recorded.

The VAE posterior is read at its mode (`retrieve_latents(..., sample_mode="argmax")`) so that the
condition is deterministic and can be rebuilt by our code from the same pixels; the released
pipeline samples it with the run's generator, as our `generate` does. Prompt states are given
(512 rows: the processor splits text and image tokens at 512 from the end), so no text encoder
runs. `a2.safetensors` holds, per case `e2` / `e3`, with settings in the `json` metadata:

    <case>.elements        [k, 3, H, W] the element images given to the VAE, in [-1, 1]
    <case>.condition       [1, 20, T, h, w] what `prepare_latents` returns beside the noise
    <case>.image_context   [1, k*L, 24] the CLIP tokens of all elements, concatenated
    <case>.positive / .negative   prompt states (first 10 rows; the rest are zero padding)
    <case>.noise           the initial latents
    <case>.output_latents  the pipeline's result

The output is bit-identical from run to run (one thread, seeded generators).
"""

import argparse
import importlib
import json
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor, CLIPVisionModel

TEXT_ROWS = 10
TEXT_LENGTH = 512


def import_module(root, name):
    """`models.<name>` of the checkout (its modules import each other by that name)."""
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"models.{name}")


def tiny_transformer(transformer_module, models):
    folder = os.path.join(models, "i2v_pipeline", "transformer")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    keep = ["patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim",
            "added_kv_proj_dim", "rope_max_seq_len"]
    model = transformer_module.A2Model(**{k: config[k] for k in keep})
    model.load_state_dict(load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors")), strict=True)
    return model.eval()


def element_images(generator, count, size):
    images = []
    for _ in range(count):
        pixels = (torch.rand(size[0], size[1], 3, generator=generator) * 255).to(torch.uint8).numpy()
        images.append(Image.fromarray(pixels, "RGB"))
    return images


def case(modules, models, tensors, settings, name, count):
    transformer_module, pipeline_module = modules
    s = dict(steps=4, shift=8.0, guidance=5.0, frames=13, height=16, width=32, elements=count, seed=29)
    transformer = tiny_transformer(transformer_module, models)
    vae = AutoencoderKLWan.from_pretrained(os.path.join(models, "vae_diffusers")).eval()
    clip = CLIPVisionModel.from_pretrained(os.path.join(models, "clip_hf_b")).eval()
    side = clip.config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=s["shift"])
    pipe = pipeline_module.A2Pipeline(tokenizer=None, text_encoder=None, image_encoder=clip,
                                      image_processor=processor, transformer=transformer, vae=vae,
                                      scheduler=scheduler)
    generator = torch.Generator().manual_seed(71 + count)
    width = transformer.config.text_dim
    positive = torch.zeros(1, TEXT_LENGTH, width)
    negative = torch.zeros(1, TEXT_LENGTH, width)
    positive[:, :TEXT_ROWS] = torch.randn(1, TEXT_ROWS, width, generator=generator)
    negative[:, :TEXT_ROWS] = torch.randn(1, TEXT_ROWS, width, generator=generator)
    clip_images = element_images(generator, count, (40, 40))
    elements = (torch.rand(count, 3, s["height"], s["width"], generator=generator) * 2 - 1)
    image_vae = [elements[i:i + 1].unsqueeze(2) for i in range(count)]
    latent_frames = (s["frames"] - 1) // 4 + 1
    noise = torch.randn(1, 16, latent_frames, s["height"] // 8, s["width"] // 8, generator=generator)
    seen = {}
    upstream_forward = transformer.forward

    def forward(*args, **kwargs):
        seen.setdefault("image_context", kwargs["encoder_hidden_states_image"].clone())
        return upstream_forward(*args, **kwargs)

    transformer.forward = forward
    with torch.no_grad():
        _, condition = pipe.prepare_latents(list(image_vae), 1, 16, s["height"], s["width"], s["frames"],
                                            torch.float32, torch.device("cpu"), None, noise.clone())
        out = pipe(image_clip=clip_images, image_vae=list(image_vae), prompt_embeds=positive,
                   negative_prompt_embeds=negative, height=s["height"], width=s["width"], num_frames=s["frames"],
                   num_inference_steps=s["steps"], guidance_scale=s["guidance"],
                   generator=torch.Generator().manual_seed(s["seed"]), latents=noise.clone(), output_type="latent",
                   return_dict=False, vae_combine="before")[0]
    tensors[f"{name}.elements"] = elements.contiguous()
    tensors[f"{name}.condition"] = condition.contiguous()
    tensors[f"{name}.image_context"] = seen["image_context"].contiguous()
    tensors[f"{name}.positive"] = positive[:, :TEXT_ROWS].contiguous()
    tensors[f"{name}.negative"] = negative[:, :TEXT_ROWS].contiguous()
    tensors[f"{name}.noise"] = noise
    tensors[f"{name}.output_latents"] = out.contiguous()
    settings[name] = s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skyreels-a2", required=True, help="a checkout of SkyworkAI/SkyReels-A2")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformer_module = import_module(args.skyreels_a2, "transformer_a2")
    pipeline_module = import_module(args.skyreels_a2, "pipeline_a2")
    # The condition at the posterior's mode (see the module docs).
    sample = pipeline_module.retrieve_latents
    pipeline_module.retrieve_latents = lambda output, generator=None, sample_mode="sample": sample(output, generator,
                                                                                                 "argmax")
    pipeline_module.A2Pipeline._execution_device = property(lambda self: torch.device("cpu"))
    models = os.path.join(args.out, "models")
    tensors, settings = {}, {"text_rows": TEXT_ROWS, "text_length": TEXT_LENGTH}
    case((transformer_module, pipeline_module), models, tensors, settings, "e2", 2)
    case((transformer_module, pipeline_module), models, tensors, settings, "e3", 3)
    save_file(tensors, os.path.join(args.out, "a2.safetensors"), metadata={"json": json.dumps(settings)})


if __name__ == "__main__":
    main()
