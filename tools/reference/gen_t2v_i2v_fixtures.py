#!/usr/bin/env python3
"""Generate the end-to-end fixtures of the non-DF pipelines (text-to-video, image-to-video).

Run by hand (never by CI), with the reference venv described in README.md next to this file,
after gen_fixtures.py and gen_clip_fixtures.py (it reuses their tiny models):

    python tools/reference/gen_t2v_i2v_fixtures.py --out crates/skyreels-core/tests/fixtures

It runs diffusers 0.42.1's `SkyReelsV2Pipeline` and `SkyReelsV2ImageToVideoPipeline` in f32 on
the CPU with `models/t2v_diffusers` / `models/i2v_diffusers`, `models/vae_diffusers` and a flow
UniPC scheduler, and writes `t2v_i2v.safetensors`:

    t2v.*     prompt states (positive, negative; only their first `text_rows` rows are stored —
              the rest are zeros, as umT5 pads them), the initial noise, the output latents
              (output_type="latent"), for guidance 5 and, as `t2v_nocfg.*`, guidance 1
    i2v.*     the same, plus the first frame in [0, 1] (`image`, [1, 3, h, w]), the CLIP pixels
              given to models/clip_hf_b (`clip_pixels`) and its penultimate states
              (`image_embeds`, width 24 = the transformer's image_dim), and the 20-channel
              condition `prepare_latents` builds (mask + normalised VAE latents of the frame
              followed by zeros)
    models/t2v_pipeline/, models/i2v_pipeline/
              complete tiny pipelines for the binary's integration tests (see pipeline_folders)

Settings (steps, shift, guidance, frames, size) are in the file's `json` metadata. The prompt
states and image embeddings are given to the pipelines directly, so no text encoder or image
processor runs (the pipeline's `encode_image` is replaced by one returning the recorded
states, as it refuses an image together with `image_embeds`). The output is bit-identical from run to run (one thread, seeded generators).
"""

import argparse
import json
import os

import torch
from diffusers import (
    AutoencoderKLWan,
    SkyReelsV2ImageToVideoPipeline,
    SkyReelsV2Pipeline,
    SkyReelsV2Transformer3DModel,
    UniPCMultistepScheduler,
)
from safetensors.torch import save_file
from transformers import CLIPVisionModel

TEXT_ROWS = 10


def scheduler(shift):
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )


def prompt_states(generator, length, width):
    """umT5-like states: TEXT_ROWS rows of values, the rest zero padding."""
    states = torch.zeros(1, length, width)
    states[:, :TEXT_ROWS] = torch.randn(1, TEXT_ROWS, width, generator=generator)
    return states


def t2v_case(models, tensors, settings, name, guidance):
    transformer = SkyReelsV2Transformer3DModel.from_pretrained(os.path.join(models, "t2v_diffusers")).eval()
    vae = AutoencoderKLWan.from_pretrained(os.path.join(models, "vae_diffusers")).eval()
    s = dict(steps=5, shift=5.0, guidance=guidance, frames=9, height=32, width=48, text_length=16)
    pipe = SkyReelsV2Pipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=scheduler(s["shift"]))
    generator = torch.Generator().manual_seed(21)
    positive = prompt_states(generator, s["text_length"], transformer.config.text_dim)
    negative = prompt_states(generator, s["text_length"], transformer.config.text_dim)
    latent_frames = (s["frames"] - 1) // 4 + 1
    noise = torch.randn(1, 16, latent_frames, s["height"] // 8, s["width"] // 8, generator=generator)
    with torch.no_grad():
        out = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, latents=noise.clone(),
                   height=s["height"], width=s["width"], num_frames=s["frames"], num_inference_steps=s["steps"],
                   guidance_scale=guidance, output_type="latent", return_dict=False)[0]
    tensors[f"{name}.positive"] = positive[:, :TEXT_ROWS].contiguous()
    tensors[f"{name}.negative"] = negative[:, :TEXT_ROWS].contiguous()
    tensors[f"{name}.noise"] = noise
    tensors[f"{name}.output_latents"] = out.contiguous()
    settings[name] = s


def i2v_case(models, tensors, settings):
    transformer = SkyReelsV2Transformer3DModel.from_pretrained(os.path.join(models, "i2v_diffusers")).eval()
    vae = AutoencoderKLWan.from_pretrained(os.path.join(models, "vae_diffusers")).eval()
    clip = CLIPVisionModel.from_pretrained(os.path.join(models, "clip_hf_b")).eval()
    # diffusers separates image from text tokens by assuming 512 text tokens.
    s = dict(steps=4, shift=3.0, guidance=5.0, frames=9, height=32, width=48, text_length=512)
    pipe = SkyReelsV2ImageToVideoPipeline(
        tokenizer=None, text_encoder=None, image_encoder=None, image_processor=None,
        transformer=transformer, vae=vae, scheduler=scheduler(s["shift"]),
    )
    generator = torch.Generator().manual_seed(22)
    positive = prompt_states(generator, s["text_length"], transformer.config.text_dim)
    negative = prompt_states(generator, s["text_length"], transformer.config.text_dim)
    image = torch.rand(1, 3, s["height"], s["width"], generator=generator)
    clip_pixels = torch.randn(1, 3, clip.config.image_size, clip.config.image_size, generator=generator)
    with torch.no_grad():
        image_embeds = clip(pixel_values=clip_pixels, output_hidden_states=True).hidden_states[-2]
    latent_frames = (s["frames"] - 1) // 4 + 1
    noise = torch.randn(1, 16, latent_frames, s["height"] // 8, s["width"] // 8, generator=generator)
    with torch.no_grad():
        pixels = pipe.video_processor.preprocess(image, height=s["height"], width=s["width"]).to(torch.float32)
        _, condition = pipe.prepare_latents(pixels, 1, 16, s["height"], s["width"], s["frames"], torch.float32,
                                            torch.device("cpu"), None, noise.clone(), None)
        # The pipeline refuses `image` together with `image_embeds`, but needs the image for the
        # condition video: its CLIP step answers with the recorded states instead.
        pipe.encode_image = lambda _image, _device=None: image_embeds
        out = pipe(image=image, prompt_embeds=positive, negative_prompt_embeds=negative,
                   latents=noise.clone(), height=s["height"], width=s["width"], num_frames=s["frames"],
                   num_inference_steps=s["steps"], guidance_scale=s["guidance"], output_type="latent",
                   return_dict=False)[0]
    tensors["i2v.positive"] = positive[:, :TEXT_ROWS].contiguous()
    tensors["i2v.negative"] = negative[:, :TEXT_ROWS].contiguous()
    tensors["i2v.image"] = image
    tensors["i2v.clip_pixels"] = clip_pixels
    tensors["i2v.image_embeds"] = image_embeds.contiguous()
    tensors["i2v.noise"] = noise
    tensors["i2v.condition"] = condition.contiguous()
    tensors["i2v.output_latents"] = out.contiguous()
    settings["i2v"] = s


def pipeline_folders(models):
    """Complete tiny pipelines for `skyreels generate` (no parity: they exercise the binary).

    models/t2v_pipeline/   model_index.json of SkyReelsV2Pipeline, the flow UniPC scheduler, and
                           symlinks to df_pipeline's transformer (text width 48), the tiny VAE,
                           umT5 and tokenizer
    models/i2v_pipeline/   SkyReelsV2ImageToVideoPipeline: a new tiny I2V transformer (36 input
                           channels, text width 48, CLIP width 24) and image_encoder -> clip_hf_b
    """
    def index(folder, cls, extra):
        components = {
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5Tokenizer"],
            "transformer": ["diffusers", "SkyReelsV2Transformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"],
            **extra,
        }
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            json.dump({"_class_name": cls, "_diffusers_version": "0.42.1", **components}, f, indent=2, sort_keys=True)
            f.write("\n")
        scheduler(5.0).save_pretrained(os.path.join(folder, "scheduler"))

    def link(folder, name, target):
        path = os.path.join(folder, name)
        if os.path.islink(path) or os.path.exists(path):
            os.remove(path)
        os.symlink(target, path)

    t2v = os.path.join(models, "t2v_pipeline")
    os.makedirs(t2v, exist_ok=True)
    index(t2v, "SkyReelsV2Pipeline", {})
    for name, target in [("transformer", "../df_pipeline/transformer"), ("vae", "../vae_diffusers"),
                         ("text_encoder", "../umt5_hf"), ("tokenizer", "../tokenizer")]:
        link(t2v, name, target)

    i2v = os.path.join(models, "i2v_pipeline")
    os.makedirs(i2v, exist_ok=True)
    index(i2v, "SkyReelsV2ImageToVideoPipeline",
          {"image_encoder": ["transformers", "CLIPVisionModel"], "image_processor": ["transformers", "CLIPImageProcessor"]})
    torch.manual_seed(23)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=36, out_channels=16,
        text_dim=48, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, image_dim=24, added_kv_proj_dim=32, rope_max_seq_len=1024, inject_sample_info=False,
    ).eval()
    transformer.save_pretrained(os.path.join(i2v, "transformer"))
    for name, target in [("vae", "../vae_diffusers"), ("text_encoder", "../umt5_hf"), ("tokenizer", "../tokenizer"),
                         ("image_encoder", "../clip_hf_b")]:
        link(i2v, name, target)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = os.path.join(args.out, "models")
    tensors, settings = {}, {"text_rows": TEXT_ROWS}
    t2v_case(models, tensors, settings, "t2v", 5.0)
    t2v_case(models, tensors, settings, "t2v_nocfg", 1.0)
    i2v_case(models, tensors, settings)
    save_file(tensors, os.path.join(args.out, "t2v_i2v.safetensors"), metadata={"json": json.dumps(settings)})
    pipeline_folders(models)


if __name__ == "__main__":
    main()
