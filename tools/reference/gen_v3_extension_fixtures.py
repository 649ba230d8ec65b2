#!/usr/bin/env python3
"""Generate the SkyReels-V3 video-extension fixtures (single-shot continuation and shot switching).

Run by hand (never by CI), with the reference venv described in README.md next to this file,
after gen_fixtures.py, and a checkout of SkyworkAI/SkyReels-V3 OUTSIDE this repository (its code
is imported from there, never copied):

    python tools/reference/gen_v3_extension_fixtures.py --skyreels-v3 /path/to/SkyReels-V3 \
        --out crates/skyreels-core/tests/fixtures

The upstream `WanModel` (`skyreels_v3/modules/transformer.py`, the class both the `transformer/`
and `shot_transformer/` folders of SkyReels-V3-V2V load) is built with the config and weights of
the tiny `models/t2v_original` (the V2 T2V layout is the same module tree), in f32 on the CPU.
Its blocks end with a cast to bf16 (`x.to(torch.bfloat16)`) and its attention casts q, k, v to
bf16 by default (`attention(..., dtype=torch.bfloat16)`), both made for CUDA; here the module's
`torch.bfloat16` is pointed at f32 and attention is called with `dtype=torch.float32`, so the
reference stays in f32, as our engine does in f32. One upstream slip is worked around: the
forward reads `x.device` of its list input (shot switching) before checking that it is a tensor,
so lists are given a `device` attribute. Nothing else is changed.

`v3_extension.safetensors` holds, with settings in the `json` metadata:

    model.single.{latents,timesteps,context,output}   one call on [prefix, noise] with per-frame
                                                      timesteps 0 on the prefix (single shot)
    model.shot.{noise,prefix,timesteps,output}     one call on the list [noise, prefix]:
                                                      RoPE from 1024 on the prefix, its tokens
                                                      dropped after the head (shot switching;
                                                      same context as model.single)
    <case>.{positive,negative,prefix,noise,output_latents}   whole sampling loops of the upstream
                                                      `SingleShotExtensionPipeline.__call__` and
                                                      `ShotSwitchingExtensionPipeline.__call__`
                                                      (FlowUniPC, shift 8), for `single`,
                                                      `single_guided`, `shot` and `shot_guided`.

The pipelines run without their VAE and text encoder: prompt states and prefix latents are
given, the noise their generator draws is recorded (same seed, same draws), and the latents
handed to `vae.decode` are the output. The output is bit-identical from run to run.
"""

import argparse
import importlib
import json
import os
import sys
import types

import torch
from safetensors.torch import load_file, save_file

TEXT_ROWS = 7


def import_upstream(root):
    """The transformer, scheduler and extension pipelines alone: `skyreels_v3.modules` would load
    every model (and `utils` needs PyAV), so those packages are stubbed with what is imported."""
    for package in ("skyreels_v3", "skyreels_v3.modules", "skyreels_v3.pipelines", "skyreels_v3.scheduler",
                    "skyreels_v3.utils"):
        stub = types.ModuleType(package)
        stub.__path__ = [os.path.join(root, *package.split("."))]
        sys.modules[package] = stub
    for name in ("get_text_encoder", "get_transformer", "get_vae"):
        setattr(sys.modules["skyreels_v3.modules"], name, None)
    util = types.ModuleType("skyreels_v3.utils.util")
    util.get_video_info = None
    sys.modules["skyreels_v3.utils.util"] = util
    transformer = importlib.import_module("skyreels_v3.modules.transformer")
    f32 = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    f32.bfloat16 = torch.float32
    transformer.torch = f32
    bf16_attention = transformer.attention
    transformer.attention = lambda *args, **kwargs: bf16_attention(*args, **{**kwargs, "dtype": torch.float32})
    upstream_forward = transformer.WanModel.forward

    def forward(self, x, *args, **kwargs):
        return upstream_forward(self, Segments(x) if isinstance(x, list) else x, *args, **kwargs)

    transformer.WanModel.forward = forward
    single = importlib.import_module("skyreels_v3.pipelines.single_shot_extension_pipeline")
    shot = importlib.import_module("skyreels_v3.pipelines.shot_switching_extension_pipeline")
    scheduler = importlib.import_module("skyreels_v3.scheduler.fm_solvers_unipc")
    return transformer, single, shot, scheduler


class Segments(list):
    """The list input of shot switching. Upstream `WanModel.forward` reads `x.device` before it
    checks that `x` is a tensor, which fails for a plain list; this list answers it."""

    device = torch.device("cpu")


def tiny_model(transformer, models):
    folder = os.path.join(models, "t2v_original")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    state = load_file(os.path.join(folder, "model.safetensors"))
    keep = ["model_type", "dim", "ffn_dim", "freq_dim", "in_dim", "out_dim", "num_heads", "num_layers", "eps",
            "text_len"]
    model = transformer.WanModel(**{k: config[k] for k in keep}, text_dim=state["text_embedding.0.weight"].shape[1])
    model.load_state_dict(state, strict=True)
    return model.eval()


def model_cases(model, tensors, generator):
    prefix, frames, h, w, t = 2, 3, 4, 6, 733.0
    text_dim = model.text_dim
    context = torch.randn(1, TEXT_ROWS, text_dim, generator=generator)
    latents = torch.randn(1, 16, prefix + frames, h, w, generator=generator)
    timesteps = torch.tensor([[0.0] * prefix + [t] * frames])
    with torch.no_grad():
        out = model(latents, t=timesteps, context=context)
    tensors.update({"model.single.latents": latents, "model.single.timesteps": timesteps,
                    "model.single.context": context, "model.single.output": out.contiguous()})
    noise = torch.randn(1, 16, frames, h, w, generator=generator)
    clean = torch.randn(1, 16, prefix, h, w, generator=generator)
    timesteps = torch.tensor([[t] * frames + [0.0] * prefix])
    with torch.no_grad():
        out = model([noise, clean], t=timesteps, context=context)
    tensors.update({"model.shot.noise": noise, "model.shot.prefix": clean, "model.shot.timesteps": timesteps,
                    "model.shot.output": out.contiguous()})


class Recorder:
    """Stands in for the VAE wrapper: records the latents the pipeline decodes."""

    def __init__(self):
        self.vae = types.SimpleNamespace(z_dim=16)
        self.decoded = None

    def to(self, *args, **kwargs):
        return self

    def decode(self, latents):
        self.decoded = latents.clone()
        return torch.zeros(1, 3, 1, 8, 8)


class Prompts:
    """Stands in for the text encoder: the given states for the prompt and the negative prompt."""

    def __init__(self, positive, negative):
        self.states = {"p": positive, "": negative}

    def to(self, *args, **kwargs):
        return self

    def encode(self, prompt):
        return self.states[prompt]


def pipeline(module, class_name, model, scheduler, positive, negative):
    pipe = object.__new__(getattr(module, class_name))
    pipe.transformer = model
    pipe.vae = Recorder()
    pipe.text_encoder = Prompts(positive, negative)
    pipe.scheduler = scheduler.FlowUniPCMultistepScheduler()
    pipe.device = torch.device("cpu")
    pipe.offload = False
    pipe.low_vram = False
    pipe.vae_stride = (4, 8, 8)
    pipe.patch_size = (1, 2, 2)
    return pipe


def loop_case(upstream, model, tensors, settings, name, guidance, generator):
    _, single, shot, scheduler = upstream
    switching = name.startswith("shot")
    s = dict(steps=4, shift=8.0, guidance=guidance, height=32, width=48, seed=53,
             prefix_frames=3, new_frames=4 if not switching else None, pixel_frames=13 if switching else None)
    h, w = s["height"] // 8, s["width"] // 8
    positive = torch.randn(1, TEXT_ROWS, model.text_dim, generator=generator)
    negative = torch.randn(1, TEXT_ROWS, model.text_dim, generator=generator)
    prefix = torch.randn(1, 16, s["prefix_frames"], h, w, generator=generator)
    new = s["new_frames"] if not switching else (s["pixel_frames"] - 1) // 4 + 1
    # The draw the pipeline makes first with its seeded generator.
    noise = torch.randn(16, new, h, w, dtype=torch.float32, generator=torch.Generator().manual_seed(s["seed"]))
    args = dict(prompt="p", negative_prompt="", width=s["width"], height=s["height"], num_inference_steps=s["steps"],
                guidance_scale=guidance, shift=s["shift"], generator=torch.Generator().manual_seed(s["seed"]))
    if switching:
        pipe = pipeline(shot, "ShotSwitchingExtensionPipeline", model, scheduler, positive, negative)
        pipe(num_frames=s["pixel_frames"], prefix_video=prefix, **args)
        out = pipe.vae.decoded.unsqueeze(0)
    else:
        pipe = pipeline(single, "SingleShotExtensionPipeline", model, scheduler, positive, negative)
        pipe(num_frames=new, latent_num_frames=new, condition=prefix, **args)
        out = pipe.vae.decoded.unsqueeze(0)[:, :, s["prefix_frames"]:]
    tensors.update({f"{name}.positive": positive, f"{name}.negative": negative, f"{name}.prefix": prefix,
                    f"{name}.noise": noise.unsqueeze(0).contiguous(), f"{name}.output_latents": out.contiguous()})
    settings[name] = s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skyreels-v3", required=True, help="a checkout of SkyworkAI/SkyReels-V3")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    upstream = import_upstream(args.skyreels_v3)
    model = tiny_model(upstream[0], os.path.join(args.out, "models"))
    generator = torch.Generator().manual_seed(67)
    tensors, settings = {}, {"text_rows": TEXT_ROWS, "model_timestep": 733.0}
    model_cases(model, tensors, generator)
    loop_case(upstream, model, tensors, settings, "single", 1.0, generator)
    loop_case(upstream, model, tensors, settings, "single_guided", 4.0, generator)
    loop_case(upstream, model, tensors, settings, "shot", 1.0, generator)
    loop_case(upstream, model, tensors, settings, "shot_guided", 4.0, generator)
    save_file(tensors, os.path.join(args.out, "v3_extension.safetensors"), metadata={"json": json.dumps(settings)})


if __name__ == "__main__":
    main()
