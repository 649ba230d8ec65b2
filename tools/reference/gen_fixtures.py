#!/usr/bin/env python3
"""Generate the numerical reference fixtures for skyreels-rs from PyTorch.

Run by hand (never by CI), see README.md next to this file:

    python tools/reference/gen_fixtures.py --skyreels-src /path/to/SkyReels-V2 \
        --out crates/skyreels-core/tests/fixtures

It builds tiny random-weight SkyReels-V2 transformers with diffusers, saves them in the
diffusers layout *and* in the original SkyReels/Wan naming, and records inputs, outputs and
per-layer intermediates of their forward passes; it records the flow-UniPC scheduler of the
original code (sigma grid linspace(0.999, 0)) and of diffusers (linspace(1, 1/1000)); a flow
Euler trajectory; diffusion-forcing timestep matrices; and (gen_vae_t5_fixtures.py,
gen_df_pipeline_fixtures.py) the VAE, umT5, tokenizer and end-to-end DF pipeline fixtures.
"""

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import SkyReelsV2Transformer3DModel, UniPCMultistepScheduler
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing import (
    SkyReelsV2DiffusionForcingPipeline,
)

torch.set_num_threads(2)

# ---------------------------------------------------------------------------------------------
# Name mapping diffusers -> original SkyReels/Wan (the inverse of diffusers'
# scripts/convert_skyreelsv2_to_diffusers.py). Used only to write the original-layout copy.
# ---------------------------------------------------------------------------------------------
DIFFUSERS_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
    ("fps_projection.net.0.proj", "fps_projection.0"),
    ("fps_projection.net.2", "fps_projection.2"),
    ("attn1.to_q", "self_attn.q"),
    ("attn1.to_k", "self_attn.k"),
    ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn1.norm_q", "self_attn.norm_q"),
    ("attn1.norm_k", "self_attn.norm_k"),
    ("attn2.to_q", "cross_attn.q"),
    ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn2.norm_q", "cross_attn.norm_q"),
    ("attn2.norm_k", "cross_attn.norm_k"),
    ("attn2.add_k_proj", "cross_attn.k_img"),
    ("attn2.add_v_proj", "cross_attn.v_img"),
    ("attn2.norm_added_k", "cross_attn.norm_k_img"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
]


def to_original_name(name: str) -> str:
    if name == "scale_shift_table":
        return "head.modulation"
    if name.startswith("proj_out."):
        return "head.head." + name[len("proj_out."):]
    if name.startswith("blocks.") and name.endswith(".scale_shift_table"):
        return name.replace(".scale_shift_table", ".modulation")
    if name.startswith("blocks.") and ".norm2." in name:
        return name.replace(".norm2.", ".norm3.")  # the cross-attention norm
    for d, o in DIFFUSERS_TO_ORIGINAL:
        if d in name:
            return name.replace(d, o)
    return name


def perturb_(model: torch.nn.Module, seed: int):
    """Give every parameter a non-trivial value: norm weights 1+0.1N, biases 0.05N, tables N/sqrt(d)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            elif "scale_shift_table" in name or "pos_embed" in name:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            elif "fps_embedding" in name:
                p.copy_(noise)


def write_original_layout(model, directory, original_config, shards=2, stray_key=None):
    """Write `config.json` + N `*.safetensors` shards with the original SkyReels key names."""
    os.makedirs(directory, exist_ok=True)
    state = {to_original_name(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    per = math.ceil(len(names) / shards)
    for i in range(shards):
        part = {n: state[n] for n in names[i * per:(i + 1) * per]}
        if i == 0 and stray_key is not None:
            part[stray_key] = torch.zeros(1, dtype=torch.float32)
        fname = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, os.path.join(directory, fname))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(original_config, f, indent=2)


def original_config(cfg, model_type):
    """The fields SkyReels' WanModel.from_config reads (text_dim and patch are not stored there)."""
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    out = {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "model_type": model_type,
        "dim": dim,
        "ffn_dim": cfg["ffn_dim"],
        "freq_dim": cfg["freq_dim"],
        "in_dim": cfg["in_channels"],
        "out_dim": cfg["out_channels"],
        "num_heads": cfg["num_attention_heads"],
        "num_layers": cfg["num_layers"],
        "eps": cfg["eps"],
        "text_len": 512,
    }
    if cfg.get("inject_sample_info"):
        out["inject_sample_info"] = True
    return out


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------
def tiny_transformer(seed, **overrides):
    cfg = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        eps=1e-6,
        inject_sample_info=False,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = SkyReelsV2Transformer3DModel(**cfg).eval().float()
    perturb_(model, seed + 1)
    return model, cfg


def record_transformer_case(model, path, case, *, latents, timestep, context, image_context=None,
                            fps=None, causal_block=1, diffusion_forcing=True):
    model.register_to_config(num_frame_per_block=causal_block)
    inter = {}
    hooks = []

    def keep(name):
        def hook(_m, _inp, out):
            inter[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return hook

    hooks.append(model.patch_embedding.register_forward_hook(keep("inter.patch_embedding")))
    ce = model.condition_embedder
    hooks.append(ce.time_embedder.register_forward_hook(keep("inter.temb")))
    hooks.append(ce.time_proj.register_forward_hook(keep("inter.timestep_proj")))
    hooks.append(ce.text_embedder.register_forward_hook(keep("inter.text_embedder")))
    if ce.image_embedder is not None:
        hooks.append(ce.image_embedder.register_forward_hook(keep("inter.image_embedder")))
    if getattr(model, "fps_projection", None) is not None:
        hooks.append(model.fps_projection.register_forward_hook(keep("inter.fps_projection")))
    for i, blk in enumerate(model.blocks):
        hooks.append(blk.attn1.register_forward_hook(keep(f"inter.blocks.{i}.attn1_out")))
        hooks.append(blk.attn2.register_forward_hook(keep(f"inter.blocks.{i}.attn2_out")))
        hooks.append(blk.ffn.register_forward_hook(keep(f"inter.blocks.{i}.ffn_out")))
        hooks.append(blk.register_forward_hook(keep(f"inter.blocks.{i}.out")))
    hooks.append(model.proj_out.register_forward_hook(keep("inter.proj_out")))
    with torch.no_grad():
        out = model(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=context,
            encoder_hidden_states_image=image_context,
            enable_diffusion_forcing=diffusion_forcing,
            fps=fps,
            return_dict=False,
        )[0]
    for h in hooks:
        h.remove()
    model.register_to_config(num_frame_per_block=1)
    tensors = {
        "hidden_states": latents.contiguous(),
        "timestep": timestep.to(torch.int64).contiguous(),
        "encoder_hidden_states": context.contiguous(),
        "output": out.contiguous(),
    }
    if image_context is not None:
        tensors["encoder_hidden_states_image"] = image_context.contiguous()
    if fps is not None:
        tensors["fps"] = torch.tensor(fps, dtype=torch.int64)
    tensors.update({k: v.contiguous() for k, v in inter.items()})
    meta = {"case": case, "causal_block_size": causal_block, "diffusion_forcing": diffusion_forcing}
    save_file(tensors, path, metadata={"json": json.dumps(meta)})
    print(f"  {os.path.basename(path)}: output {tuple(out.shape)} |max| {out.abs().max():.3f}")


def text_context(batch, length, valid, dim, seed):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(batch, length, dim, generator=g)
    ctx[:, valid:] = 0.0  # umT5 rows past the prompt are exact zeros
    return ctx


def gen_transformers(out):
    models_dir = os.path.join(out, "models")
    g = torch.Generator().manual_seed(1234)
    param_counts = {}

    # 1) DF-1.3B-like: fps embedding on; head_dim 16 (rope split 8/4/4).
    df, df_cfg = tiny_transformer(10, inject_sample_info=True)
    df.save_pretrained(os.path.join(models_dir, "df_fps_diffusers"), safe_serialization=True)
    param_counts["df_fps"] = sum(p.numel() for p in df.parameters())
    write_original_layout(df, os.path.join(models_dir, "df_fps_original"), original_config(df_cfg, "t2v"),
                          shards=2, stray_key="model_type.SkyReels-V2-DF-1.3B-540P")
    ctx = text_context(1, 16, 11, 32, 1)
    record_transformer_case(df, os.path.join(out, "transformer_df_f5_fps24.safetensors"), "df_f5_fps24",
                            latents=torch.randn(1, 16, 5, 8, 8, generator=g),
                            timestep=torch.tensor([[999, 800, 500, 250, 20]]), context=ctx, fps=[1])
    record_transformer_case(df, os.path.join(out, "transformer_df_f5_fps16.safetensors"), "df_f5_fps16",
                            latents=torch.randn(1, 16, 5, 8, 8, generator=g),
                            timestep=torch.tensor([[0, 0, 999, 999, 999]]), context=ctx, fps=[0])
    record_transformer_case(df, os.path.join(out, "transformer_df_f6_causal3.safetensors"), "df_f6_causal3",
                            latents=torch.randn(1, 16, 6, 8, 12, generator=g),
                            timestep=torch.tensor([[0, 0, 0, 700, 700, 700]]), context=ctx, fps=[1],
                            causal_block=3)
    record_transformer_case(df, os.path.join(out, "transformer_df_f4_causal2_nonsquare.safetensors"),
                            "df_f4_causal2_nonsquare",
                            latents=torch.randn(1, 16, 4, 6, 10, generator=g),
                            timestep=torch.tensor([[20, 20, 995, 995]]), context=ctx, fps=[0], causal_block=2)

    # 2) T2V / DF-14B-like: no fps; 3 heads x head_dim 20 (rope split 8/6/6), 3 layers.
    t2v, t2v_cfg = tiny_transformer(20, num_attention_heads=3, attention_head_dim=20, ffn_dim=72,
                                    text_dim=24, freq_dim=16, num_layers=3)
    t2v.save_pretrained(os.path.join(models_dir, "t2v_diffusers"), safe_serialization=True)
    param_counts["t2v"] = sum(p.numel() for p in t2v.parameters())
    write_original_layout(t2v, os.path.join(models_dir, "t2v_original"), original_config(t2v_cfg, "t2v"),
                          shards=1)
    ctx = text_context(1, 12, 7, 24, 2)
    record_transformer_case(t2v, os.path.join(out, "transformer_t2v_scalar.safetensors"), "t2v_scalar",
                            latents=torch.randn(1, 16, 3, 8, 8, generator=g), timestep=torch.tensor([937]),
                            context=ctx, diffusion_forcing=False)
    record_transformer_case(t2v, os.path.join(out, "transformer_t2v_df_f3_odd.safetensors"), "t2v_df_f3_odd",
                            latents=torch.randn(1, 16, 3, 6, 10, generator=g),
                            timestep=torch.tensor([[999, 500, 1]]), context=ctx)
    ctx2 = text_context(2, 12, 5, 24, 3)
    record_transformer_case(t2v, os.path.join(out, "transformer_t2v_df_batch2.safetensors"), "t2v_df_batch2",
                            latents=torch.randn(2, 16, 3, 4, 4, generator=g),
                            timestep=torch.tensor([[999, 500, 1], [10, 20, 30]]), context=ctx2)

    # 3) I2V-like: CLIP image branch (image_dim 24, 5 image tokens), 36 -> 16 channels like the real
    #    I2V models. diffusers hard-codes 512 text tokens when it splits image from text context.
    i2v, i2v_cfg = tiny_transformer(30, in_channels=36, image_dim=24, added_kv_proj_dim=32)
    i2v.save_pretrained(os.path.join(models_dir, "i2v_diffusers"), safe_serialization=True)
    param_counts["i2v"] = sum(p.numel() for p in i2v.parameters())
    write_original_layout(i2v, os.path.join(models_dir, "i2v_original"), original_config(i2v_cfg, "i2v"),
                          shards=1)
    ctx = text_context(1, 512, 9, 32, 4)
    img = torch.randn(1, 5, 24, generator=g)
    record_transformer_case(i2v, os.path.join(out, "transformer_i2v_scalar.safetensors"), "i2v_scalar",
                            latents=torch.randn(1, 36, 2, 4, 6, generator=g), timestep=torch.tensor([500]),
                            context=ctx, image_context=img, diffusion_forcing=False)

    # 4) Unusual but legal diffusers configs: head_dim 4 (empty spatial rope parts), no
    #    cross-attention norm, a 2x2x2 patch. Diffusers layout only (the original code has no such knobs).
    odd, _ = tiny_transformer(40, num_attention_heads=3, attention_head_dim=4, ffn_dim=20, text_dim=8,
                              freq_dim=8, num_layers=1, cross_attn_norm=False, patch_size=(2, 2, 2))
    odd.save_pretrained(os.path.join(models_dir, "odd_diffusers"), safe_serialization=True)
    ctx = text_context(1, 6, 4, 8, 5)
    record_transformer_case(odd, os.path.join(out, "transformer_odd_patch2_df.safetensors"), "odd_patch2_df",
                            latents=torch.randn(1, 16, 4, 6, 10, generator=g), timestep=torch.tensor([[999, 3]]),
                            context=ctx)

    # 5) First/last-frame image branch: a learned position table over two images' CLIP tokens.
    flf, _ = tiny_transformer(50, in_channels=36, image_dim=24, added_kv_proj_dim=32, pos_embed_seq_len=10)
    flf.save_pretrained(os.path.join(models_dir, "flf2v_diffusers"), safe_serialization=True)
    ctx = text_context(1, 512, 9, 32, 6)
    record_transformer_case(flf, os.path.join(out, "transformer_flf2v_scalar.safetensors"), "flf2v_scalar",
                            latents=torch.randn(1, 36, 2, 4, 6, generator=g), timestep=torch.tensor([700]),
                            context=ctx, image_context=torch.randn(2, 5, 24, generator=g), diffusion_forcing=False)

    with open(os.path.join(models_dir, "param_counts.json"), "w") as f:
        json.dump(param_counts, f, indent=2)


# ---------------------------------------------------------------------------------------------
# Schedulers
# ---------------------------------------------------------------------------------------------
def load_original_unipc(src):
    path = os.path.join(src, "skyreels_v2_infer", "scheduler", "fm_solvers_unipc.py")
    spec = importlib.util.spec_from_file_location("skyreels_fm_solvers_unipc", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FlowUniPCMultistepScheduler


def skyreels_scheduler(cls, n, shift):
    s = cls(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    s.set_timesteps(n, device="cpu", shift=shift)
    return s


def diffusers_scheduler(n, shift):
    s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                num_train_timesteps=1000, solver_order=2, solver_type="bh2", predict_x0=True,
                                lower_order_final=True, final_sigmas_type="zero")
    s.set_timesteps(n, device="cpu")
    return s


def trajectory(sched, x0, seed, prefix, tensors):
    g = torch.Generator().manual_seed(seed)
    x = x0.clone()
    tensors[f"{prefix}.x0"] = x.clone()
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(x.shape, generator=g)
        tensors[f"{prefix}.model_output.{i}"] = v
        x = sched.step(v, t, x, return_dict=False)[0]
        tensors[f"{prefix}.x.{i + 1}"] = x.clone()


def gen_schedulers(out, skyreels_src):
    original_cls = load_original_unipc(skyreels_src)
    tensors = {}
    for grid in ("skyreels", "diffusers"):
        for n in (1, 2, 3, 4, 7, 30, 50):
            for shift in (1.0, 3.0, 5.0, 8.0):
                s = skyreels_scheduler(original_cls, n, shift) if grid == "skyreels" else diffusers_scheduler(n, shift)
                key = f"{grid}.n{n}.shift{shift:g}"
                tensors[f"{key}.timesteps"] = s.timesteps.to(torch.int64).clone()
                tensors[f"{key}.sigmas"] = s.sigmas.to(torch.float32).clone()
        g = torch.Generator().manual_seed(7)
        for n, shift in ((1, 8.0), (2, 5.0), (3, 8.0), (6, 3.0), (10, 8.0)):
            s = skyreels_scheduler(original_cls, n, shift) if grid == "skyreels" else diffusers_scheduler(n, shift)
            x0 = torch.randn(1, 4, 3, 5, generator=g)
            trajectory(s, x0, 100 + n, f"{grid}.traj.n{n}.shift{shift:g}", tensors)
    # Flow Euler (diffusers FlowMatchEulerDiscreteScheduler) on the SkyReels sigma grid.
    g = torch.Generator().manual_seed(8)
    for n, shift in ((3, 8.0), (10, 5.0)):
        grid = skyreels_scheduler(original_cls, n, shift)
        e = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        e.set_timesteps(sigmas=grid.sigmas[:-1].numpy().astype(np.float64), device="cpu")
        x0 = torch.randn(1, 4, 3, 5, generator=g)
        trajectory(e, x0, 200 + n, f"euler.traj.n{n}.shift{shift:g}", tensors)
        tensors[f"euler.traj.n{n}.shift{shift:g}.sigmas"] = e.sigmas.to(torch.float32).clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "schedulers.safetensors"))
    print(f"  schedulers.safetensors: {len(tensors)} tensors")


# ---------------------------------------------------------------------------------------------
# Diffusion-forcing timestep matrices
# ---------------------------------------------------------------------------------------------
def gen_timestep_matrices(out, skyreels_src):
    original_cls = load_original_unipc(skyreels_src)
    pipe = SkyReelsV2DiffusionForcingPipeline.__new__(SkyReelsV2DiffusionForcingPipeline)
    cases = [
        # name, steps, frames, base, ar_step, pre_ready, block
        ("sync_t30_f25", 30, 25, 25, 0, 0, 1),
        ("sync_prefix1_t30_f25", 30, 25, 25, 0, 1, 1),
        ("async_t30_f25_ar5_cb5", 30, 25, 25, 5, 0, 5),
        ("async_t50_f25_ar5_cb5", 50, 25, 25, 5, 0, 5),
        ("async_prefix5_t30_f25_ar5_cb5", 30, 25, 25, 5, 5, 5),
        ("async_prefix5_t50_f25_ar5_cb5", 50, 25, 25, 5, 5, 5),
        ("async_t30_f30_base25_ar6_cb5", 30, 30, 25, 6, 0, 5),
        ("async_t30_f25_ar1_cb1", 30, 25, 25, 1, 0, 1),
        ("tiny_t3_f6_ar1_cb2", 3, 6, 6, 1, 0, 2),
        ("tiny_t4_f5_ar2_cb1_pre2", 4, 5, 5, 2, 2, 1),
        ("tiny_t3_f4_ar5_cb1", 3, 4, 4, 5, 0, 1),
        ("tiny_t3_f8_base4_ar2_cb1", 3, 8, 4, 2, 0, 1),
        ("tiny_t2_f9_base3_ar2_cb3_pre3", 2, 9, 3, 2, 3, 3),
    ]
    tensors = {}
    meta = {}
    for name, steps, frames, base, ar, pre, cb in cases:
        template = skyreels_scheduler(original_cls, steps, 8.0).timesteps
        sm, si, um, vi = pipe.generate_timestep_matrix(frames, template, base, ar, pre, cb)
        tensors[f"{name}.step_template"] = template.to(torch.int64).clone()
        tensors[f"{name}.step_matrix"] = sm.to(torch.int64).contiguous()
        tensors[f"{name}.step_index"] = si.to(torch.int64).contiguous()
        tensors[f"{name}.update_mask"] = um.to(torch.uint8).contiguous()
        tensors[f"{name}.valid_interval"] = torch.tensor(vi, dtype=torch.int64)
        meta[name] = dict(steps=steps, frames=frames, base=base, ar_step=ar, pre_ready=pre, block=cb)
        print(f"  {name}: {tuple(sm.shape)}")
    save_file(tensors, os.path.join(out, "timestep_matrix.safetensors"), metadata={"json": json.dumps(meta)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="fixture directory (replaced)")
    ap.add_argument("--skyreels-src", required=True,
                    help="a checkout of github.com/SkyworkAI/SkyReels-V2 (for its FlowUniPCMultistepScheduler)")
    args = ap.parse_args()
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    torch.manual_seed(0)
    print("transformers:")
    gen_transformers(args.out)
    print("schedulers:")
    gen_schedulers(args.out, args.skyreels_src)
    print("timestep matrices:")
    gen_timestep_matrices(args.out, args.skyreels_src)
    # The VAE, umT5 and tokenizer fixtures live in their own module (same output directory).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gen_vae_t5_fixtures

    print("vae:")
    gen_vae_t5_fixtures.gen_vae(args.out)
    print("umt5 and tokenizer:")
    gen_vae_t5_fixtures.gen_umt5_and_tokenizer(args.out)
    # End-to-end DF pipeline runs: a pipeline directory whose vae/text_encoder/tokenizer are symlinks
    # to the three directories just written, so this must come after them.
    import gen_df_pipeline_fixtures

    gen_df_pipeline_fixtures.gen_df_pipeline(args.out)
    manifest = {
        "generator": "tools/reference/gen_fixtures.py",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
