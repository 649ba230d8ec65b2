#!/usr/bin/env python3
"""Generate end-to-end diffusion-forcing (DF) pipeline fixtures for skyreels-rs from diffusers.

Run by hand (never by CI) with the reference venv described in README.md next to this file:

    python tools/reference/gen_df_pipeline_fixtures.py --out crates/skyreels-core/tests/fixtures

`--out` must be a fixture directory that already holds `models/vae_diffusers`, `models/umt5_hf` and
`models/tokenizer` (written by gen_vae_t5_fixtures.py; they are reused unchanged). This script writes
only:

    models/df_pipeline/            a complete diffusers pipeline directory for
                                   SkyReelsV2DiffusionForcingPipeline: model_index.json,
                                   scheduler/scheduler_config.json, transformer/{config.json,
                                   diffusion_pytorch_model.safetensors} (a new tiny DF transformer,
                                   text_dim 48 = the tiny umT5's d_model) and the relative symlinks
                                   vae -> ../vae_diffusers, text_encoder -> ../umt5_hf,
                                   tokenizer -> ../tokenizer
    df_<run>.safetensors           one file per pipeline run (see RUNS), every tensor the Rust
                                   pipeline needs to replay the run step by step

What diffusers 0.42.1 `SkyReelsV2DiffusionForcingPipeline.__call__` does (read from its source;
the Rust pipeline must replay exactly this, draws included, in this order; `replay_check` below
re-implements it from this description alone and matches every recorded run bit for bit)
--------------------------------------------------------------------------------------------------
Notation: num_frames is first replaced by num_frames//4*4 + 1 unless num_frames % 4 == 1;
N = (num_frames - 1)//4 + 1 latent frames, latent H = height//8, W = width//8, k = causal block
size, T = the scheduler's timesteps (UniPC flow, shift 8, n = 3: [999, 941, 800]).

0. Text: prompt_embeds = umT5(prompt) (padded/truncated to max_sequence_length, rows past the real
   tokens zeroed); only when guidance_scale > 1 also negative_prompt_embeds = umT5(negative_prompt
   or "").  fps_embeds = [0 if fps == 16 else 1].  If causal_block_size is None, k = the
   transformer's config.num_frame_per_block (1 here), else `_set_ar_attention(k)` writes k into the
   config (persistently; this script resets it to 1 after every run); with k > 1 the transformer
   applies its block-causal self-attention mask.
1. Windows.  Long-video mode iff overlap_history is not None and num_frames > base_num_frames.
   Short mode: one window, length N, no prefix (base_num_frames is not used).
   Long mode: ov = (overlap_history - 1)//4 + 1, base = (base_num_frames - 1)//4 + 1,
   n_iter = 1 + (N - base - 1)//(base - ov) + 1 windows.
   * window 0: length base, no prefix (p = 0).
   * window i > 0: length = min(N - (i*(base - ov) + ov) + ov, base);
     prefix = accumulated[:, :, -ov:][:, :, :p] with p = ov - ov % k, i.e. the last ov accumulated
     frames with their LAST ov % k frames dropped when ov is not a multiple of k.
2. Fresh noise, exactly once per window: latents = randn_tensor((1, 16, length, H, W), generator,
   float32) == torch.randn(shape, generator=<the user's CPU generator>, dtype=float32).  This is the
   only use of the user's generator.  The FULL window is drawn, then latents[:, :, :p] = prefix
   (the drawn noise of those p frames is discarded).
3. Per window: one copy of the scheduler per latent frame (each set_timesteps(n), own multistep
   history), and step_matrix, update_mask, valid_interval = generate_timestep_matrix(length, T,
   base_num_latent_frames = length (long) or N (short), ar_step, num_pre_ready = p, k).  Because
   the base passed equals the window length, valid_interval is always (0, (length//k)*k) in this
   pipeline: no sliding inside a window (tail frames past a multiple of k are never fed to the
   model nor updated).  Prefix frames are pre-ready: step_matrix 0 in their columns, update_mask
   False.  Every other frame's update_mask is True exactly len(T) times, so its scheduler is
   stepped once per template timestep, in order.
4. For each row i: (s, e) = valid_interval[i]; x = latents[:, :, s:e].clone();
   t = step_matrix[i][s:e] as int64 [1, e - s].
   If addnoise_condition a > 0 and s < p (always true when p > 0, since s = 0):
       x[:, :, s:p] = x[:, :, s:p] * f32(1 - 0.001*a) + torch.randn_like(x[:, :, s:p]) * f32(0.001*a)
       t[:, s:p] = a
   (the factors are computed in f64 Python and applied as f32 scalars).  torch.randn_like draws from
   torch's GLOBAL default CPU generator, NOT the user's generator (this script seeds it with
   torch.manual_seed(global_seed) right before each run).  So: one randn_like draw per row of every
   window i > 0, shape (1, 16, p, H, W), shared by the cond and uncond calls and applied to the model
   input only (latents keep the clean prefix).
   cond = transformer(x, t, prompt_embeds, enable_diffusion_forcing=True, fps_embeds); when
   guidance g > 1 then uncond = the same with negative_prompt_embeds (cond is always called first)
   and pred = uncond + g*(cond - uncond) in f32.  Then for every j in [s, e) with update_mask[i][j]:
   latents[:, :, j] = scheduler_j.step(pred[:, :, j - s], step_matrix[i][j], latents[:, :, j]).
   The scheduler sees the step_matrix timestep, never the addnoise one; prefix frames are never
   stepped.
5. Accumulate: window 0 -> accumulated = latents; window i > 0 -> accumulated =
   cat(accumulated, latents[:, :, ov:]) (ov frames, not p, are cut).  Short mode: the window.
6. output_type == "latent": return the accumulated latents.  Otherwise decode with the VAE config's
   statistics: z = latents / std_inv + mean in f32 with std_inv = 1.0 / torch.tensor(latents_std)
   computed first (a division by the reciprocal, which is not bit-identical to latents*std),
   video = vae.decode(z).sample (clamped to [-1, 1]), frames = (video*0.5 + 0.5).clamp(0, 1),
   returned as (B, F, H, W, C) float32 for "np".

Draw order of a run therefore: randn_tensor(window 0); randn_tensor(window 1), then (addnoise only)
one randn_like per row of window 1; randn_tensor(window 2), then its randn_like draws; ...

What each df_<run>.safetensors holds (metadata: "settings" = all pipeline arguments as JSON, "json" =
draws, calls, windows, notes):
    prompt_embeds, negative_prompt_embeds   [1,16,48] what the pipeline used (no negative one without CFG)
    noise.{i}                               every random draw in order, f32; metadata draws[i] gives
                                            kind (randn_tensor | randn_like), shape, window, row
    call.{i}.timestep                       int64 [1, e-s], every transformer call in order
    call.{i}.hidden_states, call.{i}.output first two calls of the run only
    step.{g}.latents                        the current window's full latents after row g (global
                                            numbering over the windows; metadata steps[g] = window,
                                            row), recorded by callback_on_step_end, i.e. after the
                                            scheduler steps of that row
    window.{w}.step_matrix / .update_mask (uint8) / .valid_interval  generate_timestep_matrix output
    output_latents                          output_type="latent" result (accumulated), f32
    output_u8                               (long_f29_base13_ov5_sync_nocfg only) second run with
                                            output_type="np" and the same seeds: round(np*255) as
                                            uint8 [1,F,H,W,3] (the decode input, not stored, was checked
                                            to be bit-exactly output_latents / (1/std) + mean)
"""

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from gen_fixtures import tiny_transformer  # noqa: E402  (perturb_: norms 1+0.1N, biases 0.05N, tables N/sqrt(d))

torch.set_num_threads(1)  # after gen_fixtures, which sets 2 at import

PROMPT = "A cat and a dog baking a cake together in the kitchen."
COMMON = dict(
    prompt=PROMPT,
    negative_prompt="",
    height=32,
    width=48,
    num_inference_steps=3,
    max_sequence_length=16,
    overlap_history=None,
    addnoise_condition=0,
    base_num_frames=97,
    ar_step=0,
    causal_block_size=None,
    fps=24,
    guidance_scale=6.0,
)
RUNS = [
    ("sync_f9", dict(num_frames=9)),
    ("async_f21_ar1_cb2", dict(num_frames=21, ar_step=1, causal_block_size=2)),
    ("long_f21_base13_ov5_an20", dict(num_frames=21, base_num_frames=13, overlap_history=5, addnoise_condition=20,
                                      ar_step=1, causal_block_size=2, fps=16)),
    ("long_f29_base13_ov5_sync_nocfg", dict(num_frames=29, base_num_frames=13, overlap_history=5,
                                            guidance_scale=1.0)),
    ("long_f29_base13_ov5_an20_sync", dict(num_frames=29, base_num_frames=13, overlap_history=5,
                                           addnoise_condition=20)),
]
NP_RUN = "long_f29_base13_ov5_sync_nocfg"
TRANSFORMER_SEED = 60  # weights: torch.manual_seed(60); perturbation: seed 61
GENERATOR_SEED_BASE = 1000  # run r: torch.Generator().manual_seed(1000 + r)
GLOBAL_SEED_BASE = 2000  # run r: torch.manual_seed(2000 + r) (feeds torch.randn_like)
RECORDED_CALL_TENSORS = 2
SIZE_BUDGET_BYTES = 900_000
PIPELINE_DIR = "models/df_pipeline"
SYMLINKS = {"vae": "../vae_diffusers", "text_encoder": "../umt5_hf", "tokenizer": "../tokenizer"}


def output_paths():
    return [PIPELINE_DIR] + [f"df_{name}.safetensors" for name, _ in RUNS]


# ---------------------------------------------------------------------------------------------
# Pipeline directory
# ---------------------------------------------------------------------------------------------
def build_transformer():
    model, cfg = tiny_transformer(TRANSFORMER_SEED, text_dim=48, inject_sample_info=True, num_frame_per_block=1,
                                  qk_norm="rms_norm_across_heads")
    return model, cfg


def build_scheduler():
    from diffusers import UniPCMultistepScheduler

    # As doc/pytorch-reference.md §2.4 (the Skywork *-Diffusers T2V/DF setting, flow_shift 8).
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0,
                                   num_train_timesteps=1000, solver_order=2, solver_type="bh2", predict_x0=True,
                                   lower_order_final=True, final_sigmas_type="zero")


def write_pipeline_dir(out):
    from diffusers import AutoencoderKLWan, SkyReelsV2DiffusionForcingPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    models = os.path.join(out, "models")
    for name, target in SYMLINKS.items():
        assert os.path.isdir(os.path.join(models, target[3:])), f"missing {target[3:]}: run gen_vae_t5_fixtures first"
    transformer, cfg = build_transformer()
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=AutoTokenizer.from_pretrained(os.path.join(models, "tokenizer")),
        text_encoder=UMT5EncoderModel.from_pretrained(os.path.join(models, "umt5_hf")).float().eval(),
        transformer=transformer,
        vae=AutoencoderKLWan.from_pretrained(os.path.join(models, "vae_diffusers")).float().eval(),
        scheduler=build_scheduler(),
    )
    assert pipe.text_encoder.config.d_model == cfg["text_dim"]
    target = os.path.join(out, PIPELINE_DIR)
    if os.path.islink(target) or os.path.isfile(target):
        os.remove(target)
    elif os.path.isdir(target):
        shutil.rmtree(target)
    os.makedirs(target)
    with tempfile.TemporaryDirectory() as tmp:
        # diffusers writes model_index.json and every component; keep ours, link the others.
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(os.path.join(tmp, "model_index.json"), target)
        for sub in ("transformer", "scheduler"):
            shutil.copytree(os.path.join(tmp, sub), os.path.join(target, sub))
    for name, link in SYMLINKS.items():
        os.symlink(link, os.path.join(target, name))
    print(f"  {PIPELINE_DIR}: transformer {sum(p.numel() for p in transformer.parameters())} params")
    return transformer


def load_pipeline(out, reference_transformer):
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    pipe = SkyReelsV2DiffusionForcingPipeline.from_pretrained(os.path.join(out, PIPELINE_DIR),
                                                              torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.transformer, pipe.vae, pipe.text_encoder):
        m.eval()
    ref = reference_transformer.state_dict()
    got = pipe.transformer.state_dict()
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref), "transformer round trip"
    return pipe


def save_deterministic(tensors, path, metadata):
    """safetensors.torch.save_file, but with the header's `__metadata__` keys sorted.

    safetensors keeps the metadata in a Rust HashMap, so with two or more keys their order in the
    header (and the file's sha256) changes from process to process. The tensors are untouched: only
    the header JSON is re-serialised (compact, padded with spaces to a multiple of 8 bytes, as
    safetensors itself pads)."""
    blob = safetensors_save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__").items()))}
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])
    with safe_open(path, "pt") as f:  # the rewritten header must describe the same tensors
        assert f.metadata() == metadata and set(f.keys()) == set(tensors)
        for k in tensors:
            assert torch.equal(f.get_tensor(k), tensors[k]), k


# ---------------------------------------------------------------------------------------------
# Recording a run
# ---------------------------------------------------------------------------------------------
class Recorder:
    """Records every random draw, transformer call, scheduler row and window of one pipeline call.

    randn_tensor is patched in the pipeline module (where it was imported by name) and torch.randn_like
    globally; generate_timestep_matrix, prepare_latents and encode_prompt are wrapped on the instance;
    the transformer gets a forward hook; vae.decode is wrapped to capture its input."""

    def __init__(self, pipe, module):
        self.pipe, self.module = pipe, module
        self.draws, self.draw_meta = [], []
        self.calls, self.call_meta = [], []
        self.steps, self.step_meta = [], []
        self.windows = []
        self.window = -1
        self.row = 0
        self.prompt_embeds = self.negative_prompt_embeds = None
        self.decode_input = self.decode_output = None

    # --- patches ---
    def _randn_tensor(self, shape, generator=None, device=None, dtype=None, layout=None):
        out = self._orig_randn_tensor(shape, generator=generator, device=device, dtype=dtype, layout=layout)
        caller = sys._getframe(1).f_code.co_name
        assert caller == "prepare_latents", caller
        self.window += 1
        self.row = 0
        self._draw("randn_tensor", out, caller)
        return out

    def _randn_like(self, x, *args, **kwargs):
        out = self._orig_randn_like(x, *args, **kwargs)
        caller = sys._getframe(1).f_code.co_name
        assert caller == "__call__", caller
        self._draw("randn_like", out, caller)
        return out

    def _draw(self, kind, t, caller):
        self.draw_meta.append({"index": len(self.draws), "kind": kind, "shape": list(t.shape),
                               "dtype": str(t.dtype).replace("torch.", ""), "window": self.window,
                               "row": self.row, "caller": caller})
        self.draws.append(t.detach().clone())

    def _prepare_latents(self, *args, **kwargs):
        res = self._orig_prepare_latents(*args, **kwargs)
        latents, n, prefix, p = res
        self.windows.append({"window": len(self.windows), "num_latent_frames": int(n), "prefix_frames": int(p)})
        return res

    def _generate_timestep_matrix(self, num_latent_frames, step_template, base_num_latent_frames, ar_step=5,
                                  num_pre_ready=0, causal_block_size=1, shrink_interval_with_mask=False):
        sm, si, um, vi = self._orig_gtm(num_latent_frames, step_template, base_num_latent_frames, ar_step,
                                        num_pre_ready, causal_block_size, shrink_interval_with_mask)
        w = self.windows[-1]
        w.update({"step_matrix": sm.to(torch.int64).clone(), "update_mask": um.to(torch.uint8).clone(),
                  "valid_interval": torch.tensor(vi, dtype=torch.int64),
                  "gtm_args": {"num_latent_frames": int(num_latent_frames),
                               "step_template": [int(x) for x in step_template],
                               "base_num_latent_frames": int(base_num_latent_frames), "ar_step": int(ar_step),
                               "num_pre_ready": int(num_pre_ready), "causal_block_size": int(causal_block_size)},
                  "rows": int(sm.shape[0])})
        return sm, si, um, vi

    def _encode_prompt(self, *args, **kwargs):
        pe, ne = self._orig_encode_prompt(*args, **kwargs)
        self.prompt_embeds = pe.detach().clone()
        self.negative_prompt_embeds = None if ne is None else ne.detach().clone()
        return pe, ne

    def _decode(self, z, *args, **kwargs):
        self.decode_input = z.detach().clone()
        res = self._orig_decode(z, *args, **kwargs)
        self.decode_output = (res[0] if isinstance(res, tuple) else res.sample).detach().clone()
        return res

    def _transformer_hook(self, _module, args, kwargs, output):
        assert not args, "the pipeline calls the transformer with keyword arguments only"
        out = output[0] if isinstance(output, tuple) else output.sample
        ehs = kwargs["encoder_hidden_states"]
        if torch.equal(ehs, self.prompt_embeds):
            branch = "cond"
        elif self.negative_prompt_embeds is not None and torch.equal(ehs, self.negative_prompt_embeds):
            branch = "uncond"
        else:
            raise AssertionError("unknown encoder_hidden_states")
        i = len(self.call_meta)
        self.call_meta.append({"index": i, "window": self.window, "row": self.row, "branch": branch,
                               "hidden_states_shape": list(kwargs["hidden_states"].shape),
                               "fps": list(kwargs["fps"]),
                               "enable_diffusion_forcing": bool(kwargs["enable_diffusion_forcing"]),
                               "num_frame_per_block": int(_module.config.num_frame_per_block)})
        rec = {"timestep": kwargs["timestep"].to(torch.int64).detach().clone()}
        if i < RECORDED_CALL_TENSORS:
            rec["hidden_states"] = kwargs["hidden_states"].detach().clone()
            rec["output"] = out.detach().clone()
        self.calls.append(rec)

    def callback(self, _pipe, i, t, callback_kwargs):
        assert i == self.row, (i, self.row)
        self.steps.append(callback_kwargs["latents"].detach().clone())
        self.step_meta.append({"index": len(self.step_meta), "window": self.window, "row": i,
                               "step_matrix_row": [int(x) for x in t]})
        self.row += 1
        return {}

    def __enter__(self):
        pipe, mod = self.pipe, self.module
        self._orig_randn_tensor = mod.randn_tensor
        self._orig_randn_like = torch.randn_like
        mod.randn_tensor = self._randn_tensor
        torch.randn_like = self._randn_like
        self._orig_prepare_latents = pipe.prepare_latents
        self._orig_gtm = pipe.generate_timestep_matrix
        self._orig_encode_prompt = pipe.encode_prompt
        self._orig_decode = pipe.vae.decode
        pipe.prepare_latents = self._prepare_latents
        pipe.generate_timestep_matrix = self._generate_timestep_matrix
        pipe.encode_prompt = self._encode_prompt
        pipe.vae.decode = self._decode
        self._hook = pipe.transformer.register_forward_hook(self._transformer_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.module.randn_tensor = self._orig_randn_tensor
        torch.randn_like = self._orig_randn_like
        for name in ("prepare_latents", "generate_timestep_matrix", "encode_prompt"):
            delattr(self.pipe, name)
        del self.pipe.vae.decode
        self._hook.remove()


def run_pipeline(pipe, module, settings, gen_seed, global_seed, output_type):
    args = {k: v for k, v in settings.items()}
    torch.manual_seed(global_seed)
    generator = torch.Generator().manual_seed(gen_seed)
    rec = Recorder(pipe, module)
    try:
        with rec, torch.no_grad():
            result = pipe(**args, generator=generator, output_type=output_type, callback_on_step_end=rec.callback,
                          callback_on_step_end_tensor_inputs=["latents"]).frames
    finally:
        # _set_ar_attention persists in the config (and would leak into later runs and save_pretrained).
        pipe.transformer.register_to_config(num_frame_per_block=1)
    return rec, result


def record_run(pipe, module, out, r, name, overrides):
    settings = dict(COMMON)
    settings.update(overrides)
    gen_seed, global_seed = GENERATOR_SEED_BASE + r, GLOBAL_SEED_BASE + r
    rec, latents = run_pipeline(pipe, module, settings, gen_seed, global_seed, "latent")
    latents = latents.detach().clone()

    tensors = {"prompt_embeds": rec.prompt_embeds, "output_latents": latents}
    if rec.negative_prompt_embeds is not None:
        tensors["negative_prompt_embeds"] = rec.negative_prompt_embeds
    for i, d in enumerate(rec.draws):
        tensors[f"noise.{i}"] = d.to(torch.float32)
    for i, c in enumerate(rec.calls):
        for k, v in c.items():
            tensors[f"call.{i}.{k}"] = v
    for g, s in enumerate(rec.steps):
        tensors[f"step.{g}.latents"] = s
    windows_meta = []
    for w in rec.windows:
        for k in ("step_matrix", "update_mask", "valid_interval"):
            tensors[f"window.{w['window']}.{k}"] = w[k]
        windows_meta.append({k: v for k, v in w.items() if k not in ("step_matrix", "update_mask", "valid_interval")}
                            | {"valid_interval": w["valid_interval"].tolist()})

    extra = {}
    if name == NP_RUN:
        rec2, frames = run_pipeline(pipe, module, settings, gen_seed, global_seed, "np")
        assert len(rec2.draws) == len(rec.draws) and all(torch.equal(a, b) for a, b in zip(rec.draws, rec2.draws))
        assert all(torch.equal(a["timestep"], b["timestep"]) for a, b in zip(rec.calls, rec2.calls))
        vae = pipe.vae
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(torch.float32)
        std_inv = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(torch.float32)
        z = latents / std_inv + mean
        assert torch.equal(z, rec2.decode_input), "decode input != latents / (1/std) + mean"
        frames = np.asarray(frames, dtype=np.float32)
        assert frames.shape == (1, settings["num_frames"], settings["height"], settings["width"], 3), frames.shape
        u8 = np.round(frames.astype(np.float64) * 255.0).astype(np.uint8)
        tensors["output_u8"] = torch.from_numpy(u8)
        clamped = float((rec2.decode_output.abs() >= 1.0).double().mean())
        extra = {
            "output_u8": "second run, output_type='np', same generator and global seeds (draws and timesteps "
                         "verified identical): uint8(np.round(frames * 255)) of the float32 (B,F,H,W,C) frames "
                         "in [0,1]; compare with a tolerance of 1 (values near .5 may round either way)",
            "decode_input": "not stored (size): vae.decode received exactly output_latents / (1/latents_std) "
                            "+ latents_mean in f32 (std_inv = 1/std computed first, then a division; checked "
                            "bit-exact by the generator)",
            "decoded_fraction_at_clamp": clamped,
        }

    nb = settings["causal_block_size"]
    settings_json = dict(settings, generator_seed=gen_seed, global_seed=global_seed, output_type="latent",
                         dtype="float32", device="cpu", generator="torch.Generator('cpu').manual_seed(generator_seed)")
    meta = {
        "run": name,
        "pipeline": "diffusers SkyReelsV2DiffusionForcingPipeline.from_pretrained(models/df_pipeline)",
        "num_latent_frames": (settings["num_frames"] - 1) // 4 + 1,
        "effective_causal_block_size": 1 if nb is None else nb,
        "cfg": settings["guidance_scale"] > 1.0,
        "windows": windows_meta,
        "draws": rec.draw_meta,
        "calls": rec.call_meta,
        "steps": rec.step_meta,
        "global_seed_note": "torch.manual_seed(global_seed) is called right before the pipeline; the "
                            "randn_like (addnoise) draws come from that global generator, the randn_tensor "
                            "draws from the passed generator",
        "noise": "noise.{i} = the i-th random draw, in draw order (draws[i] gives kind/shape/window/row); "
                 "randn_tensor = the full-window initial latents (prefix frames then overwritten), randn_like "
                 "= the addnoise noise of rows whose interval starts inside the prefix",
        "calls_note": "call.{i}.timestep for every transformer call in order (cond before uncond when CFG); "
                      f"call.{{i}}.hidden_states/.output only for i < {RECORDED_CALL_TENSORS}",
        "steps_note": "step.{g}.latents = the current window's latents after the scheduler updates of row "
                      "steps[g].row of window steps[g].window, recorded by callback_on_step_end "
                      "(callback_kwargs['latents'], cloned)",
        "windows_note": "window.{w}.step_matrix/update_mask/valid_interval = generate_timestep_matrix output",
        **extra,
    }
    path = os.path.join(out, f"df_{name}.safetensors")
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_deterministic(tensors, path, {"settings": json.dumps(settings_json), "json": json.dumps(meta)})
    summary = {
        "windows": len(rec.windows),
        "rows": [w["rows"] for w in rec.windows],
        "prefix": [w["prefix_frames"] for w in rec.windows],
        "window_frames": [w["num_latent_frames"] for w in rec.windows],
        "calls": len(rec.calls),
        "draws": [(d["kind"], tuple(d["shape"])) for d in rec.draw_meta],
    }
    first = rec.calls[0]["output"]
    print(f"  df_{name}: {summary['windows']} window(s) frames {summary['window_frames']} prefix {summary['prefix']} "
          f"rows {summary['rows']}, {summary['calls']} calls, {len(rec.draws)} draws; "
          f"|call0 out| max {first.abs().max():.3f} std {first.std():.3f}; "
          f"|latents| max {latents.abs().max():.3f} std {latents.std():.3f}; {os.path.getsize(path):,d} B")
    for d in rec.draw_meta:
        print(f"      draw {d['index']}: {d['kind']:12s} {tuple(d['shape'])} window {d['window']} row {d['row']}")
    return summary


# ---------------------------------------------------------------------------------------------
# Independent replay: the algorithm of the module docstring, fed only the recorded draws
# ---------------------------------------------------------------------------------------------
def replay_check(pipe, path):
    """Re-run a recorded run from the fixture file alone (recorded embeddings and noise, the
    transformer, fresh schedulers) following the module docstring step by step, and require
    bit-identical timesteps, model inputs, per-row latents and output. This checks that the docstring
    (what the Rust pipeline implements) is the whole story."""
    from copy import deepcopy

    with safe_open(path, "pt") as f:
        st = json.loads(f.metadata()["settings"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    nf = st["num_frames"] // 4 * 4 + 1 if st["num_frames"] % 4 != 1 else st["num_frames"]
    n_lat, lh, lw = (nf - 1) // 4 + 1, st["height"] // 8, st["width"] // 8
    k = 1 if st["causal_block_size"] is None else st["causal_block_size"]
    g, a = st["guidance_scale"], st["addnoise_condition"]
    cfg = g > 1.0
    fps = [0 if st["fps"] == 16 else 1]
    long = st["overlap_history"] is not None and nf > st["base_num_frames"]
    if long:
        ov = (st["overlap_history"] - 1) // 4 + 1
        base = (st["base_num_frames"] - 1) // 4 + 1
        n_iter = 1 + (n_lat - base - 1) // (base - ov) + 1
    else:
        ov, base, n_iter = 0, n_lat, 1
    sched = deepcopy(pipe.scheduler)
    sched.set_timesteps(st["num_inference_steps"])
    template = sched.timesteps
    draw = call = step = 0
    acc = None
    pipe.transformer.register_to_config(num_frame_per_block=k)
    try:
        for it in range(n_iter):
            if long and it > 0:
                p = ov - ov % k
                prefix = acc[:, :, -ov:][:, :, :p]
                length = min(n_lat - (it * (base - ov) + ov) + ov, base)
            else:
                p, prefix, length = 0, None, base
            lat = t[f"noise.{draw}"].clone()
            draw += 1
            assert tuple(lat.shape) == (1, 16, length, lh, lw), lat.shape
            if p:
                lat[:, :, :p] = prefix
            scheds = []
            for _ in range(length):
                s_ = deepcopy(pipe.scheduler)
                s_.set_timesteps(st["num_inference_steps"])
                scheds.append(s_)
            sm, _, um, vi = pipe.generate_timestep_matrix(length, template, length if long else n_lat,
                                                          st["ar_step"], p, k)
            for i, row in enumerate(sm):
                s, e = vi[i]
                x = lat[:, :, s:e].clone()
                ts = row[s:e].unsqueeze(0).clone()
                if a > 0 and s < p:
                    noise = t[f"noise.{draw}"]
                    draw += 1
                    x[:, :, s:p] = x[:, :, s:p] * (1.0 - 0.001 * a) + noise * (0.001 * a)
                    ts[:, s:p] = a
                branches = [t["prompt_embeds"]] + ([t["negative_prompt_embeds"]] if cfg else [])
                preds = []
                for ctx in branches:
                    assert torch.equal(ts, t[f"call.{call}.timestep"]), (call, ts)
                    if f"call.{call}.hidden_states" in t:
                        assert torch.equal(x, t[f"call.{call}.hidden_states"]), call
                    with torch.no_grad():
                        out = pipe.transformer(hidden_states=x, timestep=ts, encoder_hidden_states=ctx,
                                               enable_diffusion_forcing=True, fps=fps, return_dict=False)[0]
                    if f"call.{call}.output" in t:
                        assert torch.equal(out, t[f"call.{call}.output"]), call
                    preds.append(out)
                    call += 1
                pred = preds[1] + g * (preds[0] - preds[1]) if cfg else preds[0]
                for j in range(s, e):
                    if um[i][j]:
                        lat[:, :, j] = scheds[j].step(pred[:, :, j - s], row[j], lat[:, :, j], return_dict=False)[0]
                assert torch.equal(lat, t[f"step.{step}.latents"]), (it, i)
                step += 1
            acc = lat if acc is None else torch.cat([acc, lat[:, :, ov:]], dim=2)
    finally:
        pipe.transformer.register_to_config(num_frame_per_block=1)
    assert f"noise.{draw}" not in t and f"call.{call}.timestep" not in t and f"step.{step}.latents" not in t
    assert torch.equal(acc, t["output_latents"])


# ---------------------------------------------------------------------------------------------
def tree_files(path):
    if os.path.islink(path):
        return [(path, 0)]
    if os.path.isfile(path):
        return [(path, os.path.getsize(path))]
    out = []
    for d, dirs, files in sorted(os.walk(path)):  # symlinked directories are listed in dirs, not walked
        for f in sorted(files + [x for x in dirs if os.path.islink(os.path.join(d, x))]):
            p = os.path.join(d, f)
            out.append((p, 0 if os.path.islink(p) else os.path.getsize(p)))
    return out


def report_sizes(out):
    total = 0
    print("sizes:")
    for rel in output_paths():
        for p, size in tree_files(os.path.join(out, rel)):
            shown = f"-> {os.readlink(p)}" if os.path.islink(p) else f"{size:>10,d}"
            print(f"  {os.path.relpath(p, out):60s} {shown}")
            total += size
    print(f"  {'total':60s} {total:>10,d}")
    assert total <= SIZE_BUDGET_BYTES, f"DF pipeline fixtures exceed the {SIZE_BUDGET_BYTES:,d} byte budget"
    return total


def digests(out):
    """sha256 of every file written (for the determinism check)."""
    res = {}
    for rel in output_paths():
        for p, _ in tree_files(os.path.join(out, rel)):
            key = os.path.relpath(p, out)
            if os.path.islink(p):
                res[key] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as f:
                    res[key] = hashlib.sha256(f.read()).hexdigest()
    return res


def gen_df_pipeline(out):
    import diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing as module

    torch.set_num_threads(1)
    print("df pipeline:")
    transformer = write_pipeline_dir(out)
    pipe = load_pipeline(out, transformer)
    for p in [f for f in os.listdir(out) if f.startswith("df_") and f.endswith(".safetensors")]:
        os.remove(os.path.join(out, p))
    summaries = {}
    for r, (name, overrides) in enumerate(RUNS):
        summaries[name] = record_run(pipe, module, out, r, name, overrides)
        replay_check(pipe, os.path.join(out, f"df_{name}.safetensors"))
    print("  replay from the recorded draws (module docstring algorithm): bit-identical for every run")
    assert pipe.transformer.config.num_frame_per_block == 1
    report_sizes(out)
    return summaries


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="existing fixture directory (only the files above are replaced)")
    ap.add_argument("--print-digests", action="store_true", help="print sha256 of every written file")
    args = ap.parse_args()
    if not os.path.isdir(args.out):
        ap.error(f"{args.out} is not an existing directory")
    gen_df_pipeline(args.out)
    if args.print_digests:
        for k, v in sorted(digests(args.out).items()):
            print(f"sha256 {v}  {k}")


if __name__ == "__main__":
    main()
