#!/usr/bin/env python3
"""Generate the VAE, umT5 and tokenizer reference fixtures for skyreels-rs from PyTorch.

Run by hand (never by CI), with the reference venv described in README.md next to this file
(plus `pip install ftfy sentencepiece protobuf`; transformers needs protobuf to read the .model):

    python tools/reference/gen_vae_t5_fixtures.py --out crates/skyreels-core/tests/fixtures

`--out` must be an existing fixture directory (normally the one `gen_fixtures.py` wrote); only the
files below are (re)written, everything else in it is left alone:

    models/vae_diffusers/          tiny random-weight diffusers AutoencoderKLWan (save_pretrained)
    models/vae_original/Wan2.1_VAE.pth
                                   the same weights under the original Wan2.1 `vae.py` key names
    vae.safetensors                encode (mu, logvar, per-stage intermediates) and decode cases;
                                   to fit the size budget the encoder input is stored as 8-bit
                                   pixels (`enc.video_u8`, input = p/128 - 1, exact) and the decoded
                                   video only as `dec.conv_out` (dec.video = its clamp to [-1, 1])
    models/tokenizer/              tokenizer.json built like google/umt5-xxl's, from a tiny
                                   SentencePiece unigram model trained here on a fixed corpus
    tokenizer_cases.safetensors    diffusers `prompt_clean` + tokenizer ids/masks for edge-case prompts
    models/umt5_hf/                tiny random-weight transformers UMT5EncoderModel (save_pretrained)
    models/umt5_original/models_t5_umt5-xxl-enc-bf16.pth
                                   the same weights in bf16 under the original Wan `t5.py` key names
    umt5.safetensors               per-block hidden states and outputs, f32 and bf16-rounded weights
    prompt_embeds.safetensors      diffusers SkyReels-V2 `_get_t5_prompt_embeds` for two prompts

Every norm weight is 1 + 0.1·N(0,1) and every bias 0.05·N(0,1), so a port that ignores one fails.
The output is bit-identical from run to run (one CPU thread, seeded generators, fixed corpus).
"""

import argparse
import copy
import io
import json
import os
import random
import re
import shutil
import tempfile

import torch
from safetensors.torch import save_file

torch.set_num_threads(1)

# Everything this script writes, relative to --out (used for cleaning and for the size report).
VAE_OUTPUTS = ["models/vae_diffusers", "models/vae_original", "vae.safetensors"]
TEXT_OUTPUTS = [
    "models/tokenizer",
    "tokenizer_cases.safetensors",
    "models/umt5_hf",
    "models/umt5_original",
    "umt5.safetensors",
    "prompt_embeds.safetensors",
]
SIZE_BUDGET_BYTES = int(3.8e6)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------
def save_tensors(path, tensors, meta):
    # clone: one tensor may be saved under two names (dec.z is enc.mu), which safetensors refuses
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_file(tensors, path, metadata={"json": json.dumps(meta)})
    print(f"  {os.path.basename(path)}: {len(tensors)} tensors")


def fresh_dir(path):
    """Empty one of *our* output directories so no stale file survives (never the fixture root)."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def perturb_norms_and_biases_(model, seed):
    """Norm weights/gammas -> 1 + 0.1·N, biases -> 0.05·N: the default 1 and 0 would hide a port
    that skips them."""
    g = torch.Generator().manual_seed(seed)
    norm_params = set()
    for module in model.modules():
        if "norm" in type(module).__name__.lower():
            for p in module.parameters(recurse=False):
                norm_params.add(id(p))
    counts = {"norm": 0, "bias": 0}
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if id(p) in norm_params and name.rsplit(".", 1)[-1] in ("weight", "gamma"):
                p.copy_(1.0 + 0.1 * noise)
                counts["norm"] += 1
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
                counts["bias"] += 1
    return counts


def uniform(shape, g):
    return torch.rand(shape, generator=g) * 2.0 - 1.0


def tree_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# ---------------------------------------------------------------------------------------------
# 1. VAE (diffusers AutoencoderKLWan <-> original Wan2.1 vae.py)
# ---------------------------------------------------------------------------------------------
VAE_CONFIG = dict(
    base_dim=4,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)

# A diffusers WanResidualBlock's parameters inside the original `ResidualBlock.residual`
# Sequential(RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d) and its shortcut.
RESNET_TO_ORIGINAL = [
    ("norm1.", "residual.0."),
    ("conv1.", "residual.2."),
    ("norm2.", "residual.3."),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
]


def resnet_part_to_original(rest):
    for d, o in RESNET_TO_ORIGINAL:
        if rest.startswith(d):
            return o + rest[len(d):]
    raise KeyError(rest)


def vae_key_to_original(key):
    """diffusers AutoencoderKLWan name -> original Wan2.1 `WanVAE_` name (the inverse of
    diffusers' convert_wan_vae_to_diffusers, checked by round trip in vae_original_state_dict)."""
    top = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
    for d, o in top.items():
        if key.startswith(d):
            return o + key[len(d):]
    side, rest = key.split(".", 1)  # "encoder" | "decoder"
    if rest.startswith("conv_in."):
        return f"{side}.conv1.{rest[len('conv_in.'):]}"
    if rest.startswith("norm_out."):
        return f"{side}.head.0.{rest[len('norm_out.'):]}"
    if rest.startswith("conv_out."):
        return f"{side}.head.2.{rest[len('conv_out.'):]}"
    m = re.match(r"mid_block\.resnets\.(\d)\.(.*)", rest)
    if m:  # original middle = Sequential(ResidualBlock, AttentionBlock, ResidualBlock)
        return f"{side}.middle.{2 * int(m[1])}.{resnet_part_to_original(m[2])}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)", rest)
    if m:
        return f"{side}.middle.1.{m[1]}"
    m = re.match(r"down_blocks\.(\d+)\.(.*)", rest)
    if m:  # the encoder list is flat in both layouts; a Resample keeps resample.1 / time_conv
        inner = m[2] if m[2].startswith(("resample.", "time_conv.")) else resnet_part_to_original(m[2])
        return f"{side}.downsamples.{m[1]}.{inner}"
    m = re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest)
    if m:  # the original decoder list is flat: 3 resnets then the upsampler, per block
        return f"{side}.upsamples.{4 * int(m[1]) + int(m[2])}.{resnet_part_to_original(m[3])}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest)
    if m:
        return f"{side}.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    raise KeyError(key)


def vae_original_state_dict(vae):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    ours = {k: v.detach().clone().contiguous() for k, v in vae.state_dict().items()}
    original = {vae_key_to_original(k): v.clone() for k, v in ours.items()}
    assert len(original) == len(ours), "two diffusers keys mapped to one original key"
    back = convert_wan_vae_to_diffusers(dict(original))
    assert set(back) == set(ours), sorted(set(back) ^ set(ours))
    for k, v in ours.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    return original


def build_vae(seed=100):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**VAE_CONFIG).float().eval()
    counts = perturb_norms_and_biases_(vae, seed + 1)
    print(f"  vae: {sum(p.numel() for p in vae.parameters())} params, perturbed {counts}")
    return vae


class ChunkRecorder:
    """Forward hooks that keep every call's output. diffusers runs the Wan VAE on frame chunks
    (encoder: 1, 4, 4, ... frames; decoder: one latent frame at a time), so a hook fires once per
    chunk; the chunks concatenated on the time axis form the whole-video intermediate."""

    def __init__(self, modules):
        self.outputs = {name: [] for name in modules}
        self.handles = [m.register_forward_hook(self._keep(name)) for name, m in modules.items()]

    def _keep(self, name):
        def hook(_module, _inputs, output):
            self.outputs[name].append((output[0] if isinstance(output, tuple) else output).detach().clone())

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def concatenated(self):
        return {name: torch.cat(chunks, dim=2) for name, chunks in self.outputs.items()}

    def calls(self):
        return {name: len(chunks) for name, chunks in self.outputs.items()}


def encode_with_intermediates(vae, video):
    enc = vae.encoder
    hooked = {f"enc.down_blocks.{i}": enc.down_blocks[i] for i in (2, 5, 8)}
    hooked.update({"enc.mid_block": enc.mid_block, "enc.conv_out": enc.conv_out})
    with torch.no_grad(), ChunkRecorder(hooked) as rec:
        dist = vae.encode(video).latent_dist
    return dist.mean.clone(), dist.logvar.clone(), rec.concatenated(), rec.calls()


def decode_with_intermediates(vae, z):
    dec = vae.decoder
    hooked = {"dec.conv_in": dec.conv_in, "dec.mid_block": dec.mid_block}
    hooked.update({f"dec.up_blocks.{i}": dec.up_blocks[i] for i in (0, 1)})
    hooked["dec.conv_out"] = dec.conv_out  # before decode() clamps to [-1, 1]
    with torch.no_grad(), ChunkRecorder(hooked) as rec:
        video = vae.decode(z).sample
    return video, rec.concatenated(), rec.calls()


def clamped_fraction(pre_clamp):
    return float((pre_clamp.abs() > 1.0).double().mean())


def tame_decoder_output_(vae, z, limit=0.05):
    """Random weights can push most decoded values past the [-1, 1] clamp, where they carry no
    information. If more than `limit` would be clamped, shrink decoder.conv_out's weight so that
    99 % of the pre-clamp values land inside (-0.9, 0.9)."""
    _, inter, _ = decode_with_intermediates(vae, z)
    pre = inter["dec.conv_out"]
    frac = clamped_fraction(pre)
    if frac <= limit:
        return frac, 1.0
    bias = vae.decoder.conv_out.bias.detach().view(1, -1, 1, 1, 1)
    q = float(torch.quantile((pre - bias).abs().flatten().double(), 0.99))
    factor = 0.9 / q
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(factor)
    return frac, factor


def video_pixels(shape, g):
    """8-bit pixels p and the model input p/128 - 1 (in [-1, 1)): exact in f32 whatever the order
    of operations, so storing the uint8 pixels loses nothing and costs a quarter of the bytes."""
    pixels = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return pixels, pixels.to(torch.float32) / 128.0 - 1.0


def gen_vae(out):
    print("vae:")
    vae = build_vae()
    g = torch.Generator().manual_seed(101)
    pixels, video = video_pixels((1, 3, 9, 40, 56), g)
    dec2_z = torch.randn((1, 16, 4, 3, 5), generator=g)
    enc1_video = uniform((1, 3, 1, 24, 40), g)

    # Tame the decoder before anything is saved, so models and cases agree.
    mu_probe, _, _, _ = encode_with_intermediates(vae, video)
    frac_before, factor = tame_decoder_output_(vae, mu_probe)

    models = os.path.join(out, "models")
    fresh_dir(os.path.join(models, "vae_diffusers"))
    vae.save_pretrained(os.path.join(models, "vae_diffusers"), safe_serialization=True)
    fresh_dir(os.path.join(models, "vae_original"))
    torch.save(vae_original_state_dict(vae), os.path.join(models, "vae_original", "Wan2.1_VAE.pth"))

    tensors, calls = {"enc.video_u8": pixels}, {}
    mu, logvar, enc_inter, calls["encode"] = encode_with_intermediates(vae, video)
    tensors.update({"enc.mu": mu, "enc.logvar": logvar, **enc_inter})

    dec_video, dec_inter, calls["decode"] = decode_with_intermediates(vae, mu)
    # dec.video is exactly the clamped dec.conv_out, so only the latter is stored (size budget).
    assert torch.equal(dec_video, dec_inter["dec.conv_out"].clamp(-1.0, 1.0))
    tensors.update({"dec.z": mu, **dec_inter})
    frac = clamped_fraction(dec_inter["dec.conv_out"])

    dec2_video, dec2_inter, _ = decode_with_intermediates(vae, dec2_z)
    tensors.update({"dec2.z": dec2_z, "dec2.video": dec2_video})
    frac2 = clamped_fraction(dec2_inter["dec.conv_out"])

    enc1_mu, _, _, _ = encode_with_intermediates(vae, enc1_video)
    tensors.update({"enc1.video": enc1_video, "enc1.mu": enc1_mu})

    assert dec_video.shape == video.shape and dec2_video.shape == (1, 3, 13, 24, 40)
    meta = {
        "config": VAE_CONFIG,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "enc.video": "not stored: enc.video = enc.video_u8.float() / 128 - 1 (exact in float32)",
        "dec.video": "not stored: dec.video = vae.decode(dec.z).sample = dec.conv_out.clamp(-1, 1) exactly",
        "hook_calls_per_run": calls,
        "intermediates": "forward-hook outputs of each frame chunk (encoder 1,4,4 frames; decoder one "
        "latent frame at a time) concatenated on dim 2; dec.conv_out is before the [-1,1] clamp",
        "enc.mu/enc.logvar": "vae.encode(x).latent_dist.mean / .logvar (logvar clamped to [-30, 20]); "
        "raw latents, not normalised with latents_mean/std",
        "decode_input": "vae.decode(z) takes raw latents (no latents_mean/std applied)",
        "clamped_fraction": {"dec": frac, "dec2": frac2},
        "clamped_fraction_before_scaling": frac_before,
        "decoder_conv_out_weight_scale": factor,
        "decoder_conv_out_weight_scaled": factor != 1.0,
        "seeds": {"weights": 100, "perturb": 101, "inputs": 101},
    }
    save_tensors(os.path.join(out, "vae.safetensors"), tensors, meta)
    print(f"  hook calls: {calls}")
    print(f"  clamped fraction: dec {frac:.4f}, dec2 {frac2:.4f} (before scaling {frac_before:.4f}, "
          f"conv_out weight x{factor:.4g})")


# ---------------------------------------------------------------------------------------------
# 2. Tokenizer (SentencePiece unigram -> transformers T5 fast tokenizer, like google/umt5-xxl)
# ---------------------------------------------------------------------------------------------
def scene_corpus(n=480, seed=2024):
    """A fixed pseudo-random corpus of English scene descriptions in prompt style."""
    rng = random.Random(seed)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "golden", "silver",
               "pink", "grey", "brown", "teal", "crimson"]
    things = ["cube", "sphere", "ball", "cat", "dog", "bird", "horse", "car", "train", "boat", "lantern",
              "tree", "flower", "robot", "dragon", "kite", "umbrella", "cup", "table", "window", "river",
              "mountain", "city", "market", "cafe", "café", "street", "fish", "cloud", "wave"]
    motions = ["rolls", "spins", "jumps", "flies", "walks", "runs", "floats", "falls", "drifts", "glides",
               "bounces", "turns", "sways", "rises", "moves"]
    places = ["across the table", "over the lake", "through the forest", "along the beach", "in the rain",
              "under a bridge", "at sunset", "into the night", "past the window", "on a wooden floor",
              "in the room", "around the corner", "between the trees", "above the city"]
    camera = ["The camera pans left", "Camera slowly zooms in", "A dolly shot follows", "Wide angle shot",
              "Close-up shot", "Tracking shot", "The camera tilts up", "Aerial view", "Static camera",
              "Handheld camera shakes", "Cinematic slow motion", "Time-lapse"]
    adverbs = ["slowly", "quickly", "gently", "smoothly", "suddenly", "calmly"]
    ends = [".", "!", "?", "...", ";", ":"]
    lines = []
    for i in range(n):
        c, t, m, p = rng.choice(colours), rng.choice(things), rng.choice(motions), rng.choice(places)
        kind = i % 6
        if kind == 0:
            s = f"A {c} {t} {m} {rng.choice(adverbs)} {p}{rng.choice(ends)}"
        elif kind == 1:
            s = f"{rng.choice(camera)}, {rng.randint(2, 99)} {c} {t}s {m[:-1] if m.endswith('s') else m} {p}."
        elif kind == 2:
            year, fps, pct = rng.randint(0, 2025), rng.randint(1, 60), rng.randint(10, 99)
            s = f"{c.upper()} {t.title()} {m} {p} ({year}) - {fps} fps, {pct}%."
        elif kind == 3:
            s = f"\"{t.title()}\" & the {c} {rng.choice(things)}: it {m} {p}, {rng.choice(camera).lower()}."
        elif kind == 4:
            s = f"{rng.choice(camera)}: a {c} {t} and a {rng.choice(colours)} {rng.choice(things)} {p}; don't stop!"
        else:
            s = f"Scene {rng.randint(1, 9)}/{rng.randint(10, 30)}: {c.title()} {t} #{rng.randint(1, 999)} {m} {p}?"
        lines.append(s)
    return lines


SPM_VOCAB_SIZE = 320


def train_sentencepiece(lines):
    """Train the tiny unigram model in memory. One thread, no shuffling, no sampling of the
    input: the trainer is then deterministic (checked by training twice)."""
    import sentencepiece as spm

    def train_once():
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type="unigram",
            vocab_size=SPM_VOCAB_SIZE,
            normalization_rule_name="nmt_nfkc",
            character_coverage=1.0,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
        return buf.getvalue()

    first, second = train_once(), train_once()
    assert first == second, "sentencepiece training is not deterministic"
    return first


def build_tokenizer(spm_model):
    """transformers' own SentencePiece -> tokenizers conversion, as for the real umT5 tokenizer.json:
    Unigram model, Precompiled (nmt_nfkc) normaliser, Metaspace pre-tokeniser, `$A </s>` template."""
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "spiece.model")
        with open(path, "wb") as f:
            f.write(spm_model)
        # from_pretrained runs the SentencePiece conversion; extra_ids=0: no <extra_id_*> sentinels
        return T5TokenizerFast.from_pretrained(d, extra_ids=0)


PROMPTS = [
    "a red ball rolls slowly across a wooden table",
    "The Camera PANS Left at SUNSET",
    "3 cats, 12 dogs & 1 bird: (fast!) 24 fps?",
    "ＡＢＣ blocks ﬁll the café, then the cafe\u0301 again",
    "x² and ½ cup™ with ① dog in the\u00a0room",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; sign says &quot;open&quot; &amp; lit",
    "  a   cat\t\tsits \n\n on  the\r\nmat   ",
    "a cafÃ© where you donâ€™t see the sun",
    "",
    "A slow cinematic dolly shot moves through a crowded night market with red lanterns, steaming food "
    "stalls, people in colorful jackets and a small white dog running between the tables while rain falls.",
    "a 日本 dragon 🐉 flies over 東京",
]
PROMPT_NOTES = [
    "plain lowercase",
    "mixed case",
    "digits and punctuation",
    "NFKC: full-width ABC, ligature fi, cafe with composed and decomposed e-acute (ftfy already fixes these)",
    "NFKC left to the tokenizer normaliser: superscript, vulgar fraction, trademark, circled digit, NBSP",
    "HTML entities, double-escaped",
    "runs of spaces, tabs, newlines, CRLF",
    "mojibake repaired by ftfy",
    "empty prompt",
    "longer than 32 tokens (truncated)",
    "characters outside the vocabulary (<unk>)",
]
MAX_LEN = 32


def tokenize(tok, text):
    enc = tok(text, padding="max_length", max_length=MAX_LEN, truncation=True, add_special_tokens=True,
              return_tensors="pt")
    return enc["input_ids"][0].to(torch.int64), enc["attention_mask"][0].to(torch.int64)


def gen_tokenizer(out, lines):
    import ftfy
    from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing import prompt_clean
    from diffusers.utils import is_ftfy_available

    # Without ftfy diffusers' prompt_clean would not run at all (it calls ftfy unconditionally).
    assert is_ftfy_available()
    print("tokenizer:")
    spm_model = train_sentencepiece(lines)
    tok = build_tokenizer(spm_model)
    tok_dir = os.path.join(out, "models", "tokenizer")
    fresh_dir(tok_dir)
    tok.save_pretrained(tok_dir)
    # The Rust side reads tokenizer.json; a copied spiece.model would only duplicate the
    # ~240 KB nmt_nfkc charsmap already inside it.
    for name in os.listdir(tok_dir):
        if name.endswith(".model"):
            os.remove(os.path.join(tok_dir, name))
    with open(os.path.join(tok_dir, "tokenizer.json")) as f:
        tj = json.load(f)
    components = {k: describe_component(tj.get(k)) for k in ("normalizer", "pre_tokenizer", "post_processor",
                                                                "decoder")}
    components["model"] = tj["model"]["type"]
    print(f"  vocab {len(tok)}; tokenizer.json: {components}")

    tensors, cases = {}, []
    for i, raw in enumerate(PROMPTS):
        cleaned = prompt_clean(raw)
        ids, mask = tokenize(tok, cleaned)
        raw_ids, raw_mask = tokenize(tok, raw)
        full = tok(cleaned, add_special_tokens=True)["input_ids"]
        n = int(mask.sum())
        tensors.update({f"p{i}.input_ids": ids, f"p{i}.attention_mask": mask,
                        f"p{i}.raw_input_ids": raw_ids, f"p{i}.raw_attention_mask": raw_mask})
        cases.append({
            "note": PROMPT_NOTES[i],
            "raw": raw,
            "cleaned": cleaned,
            "tokens": tok.convert_ids_to_tokens(ids[:n].tolist()),
            "num_tokens_untruncated": len(full),
        })
        print(f"  p{i}: {n:2d}/{len(full):2d} tokens  {cleaned[:60]!r}")
    meta = {
        "max_length": MAX_LEN,
        "call": "tokenizer(prompt_clean(raw), padding='max_length', max_length=32, truncation=True, "
        "add_special_tokens=True)",
        "raw_input_ids": "p{i}.raw_*: the same call on the raw text, without prompt_clean",
        "tokens": "tokens of the unpadded part (attention_mask == 1), </s> included",
        "prompt_clean": "diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing.prompt_clean",
        "ftfy_version": ftfy.__version__,
        "vocab_size": len(tok),
        "tokenizer_json": components,
        "cases": cases,
    }
    save_tensors(os.path.join(out, "tokenizer_cases.safetensors"), tensors, meta)
    return tok, components


def describe_component(c):
    if c is None:
        return None
    if c.get("type") == "Sequence":
        inner = c.get("normalizers") or c.get("pretokenizers") or c.get("processors") or c.get("decoders") or []
        return "Sequence[" + ", ".join(describe_component(x) for x in inner) + "]"
    return c["type"]


# ---------------------------------------------------------------------------------------------
# 3. umT5 encoder (transformers UMT5EncoderModel <-> original Wan t5.py T5Encoder)
# ---------------------------------------------------------------------------------------------
def build_umt5(vocab_size, seed=300):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=vocab_size,
        d_model=48,
        d_kv=10,  # 4 heads x 10 = 40 != d_model on purpose
        num_heads=4,
        d_ff=72,
        num_layers=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        is_encoder_decoder=False,
    )
    torch.manual_seed(seed)
    model = UMT5EncoderModel(cfg).float().eval()
    counts = perturb_norms_and_biases_(model, seed + 1)
    print(f"  umt5: {sum(p.numel() for p in model.parameters())} params, perturbed {counts}")
    return model


# HF UMT5 block parameter -> original `T5SelfAttention` parameter (per block i).
UMT5_BLOCK_TO_ORIGINAL = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",  # the GELU branch
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",  # the linear branch
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


def umt5_original_state_dict(model):
    """The `models_t5_umt5-xxl-enc-bf16.pth` layout: original key names, bfloat16."""
    original = {"token_embedding.weight": model.shared.weight}
    for i, block in enumerate(model.encoder.block):
        params = dict(block.named_parameters())
        assert set(params) == set(UMT5_BLOCK_TO_ORIGINAL), sorted(set(params) ^ set(UMT5_BLOCK_TO_ORIGINAL))
        for hf, orig in UMT5_BLOCK_TO_ORIGINAL.items():
            original[f"blocks.{i}.{orig}"] = params[hf]
    original["norm.weight"] = model.encoder.final_layer_norm.weight
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(v.numel() for v in original.values()) == n_params, "a parameter is missing from the mapping"
    return {k: v.detach().to(torch.bfloat16).clone().contiguous() for k, v in original.items()}


def random_ids(batch, length, valid, vocab, g):
    ids = torch.zeros(batch, length, dtype=torch.int64)  # pad id 0 after the valid part
    mask = torch.zeros(batch, length, dtype=torch.int64)
    for b, n in enumerate(valid):
        ids[b, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[b, :n] = 1
    return ids, mask


def run_umt5(model, ids, mask):
    blocks = {}

    def keep(i):
        def hook(_m, _inp, output):
            # transformers 5 returns a tensor from UMT5Block (4.x returned a tuple)
            blocks[i] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    handles = [blk.register_forward_hook(keep(i)) for i, blk in enumerate(model.encoder.block)]
    try:
        with torch.no_grad():
            last = model(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    return [blocks[i] for i in range(len(model.encoder.block))], last


UMT5_CASES = [("c0", 1, 16, [11]), ("c1", 1, 160, [150]), ("c2", 2, 24, [24, 7])]


def gen_umt5(out, tok):
    print("umt5:")
    model = build_umt5(len(tok))
    models = os.path.join(out, "models")
    fresh_dir(os.path.join(models, "umt5_hf"))
    model.save_pretrained(os.path.join(models, "umt5_hf"), safe_serialization=True)
    from safetensors import safe_open

    with safe_open(os.path.join(models, "umt5_hf", "model.safetensors"), "pt") as f:
        saved = list(f.keys())
    embedding_keys = [k for k in saved if k in ("shared.weight", "encoder.embed_tokens.weight")]
    print(f"  umt5_hf embedding key(s): {embedding_keys}")
    fresh_dir(os.path.join(models, "umt5_original"))
    torch.save(umt5_original_state_dict(model),
               os.path.join(models, "umt5_original", "models_t5_umt5-xxl-enc-bf16.pth"))

    # What a loader of the bf16 .pth computes: bf16-rounded weights, f32 arithmetic.
    model_bf16w = copy.deepcopy(model).to(torch.bfloat16).float()

    g = torch.Generator().manual_seed(302)
    tensors, meta_cases = {}, {}
    for name, batch, length, valid in UMT5_CASES:
        ids, mask = random_ids(batch, length, valid, len(tok), g)
        blocks, last = run_umt5(model, ids, mask)
        _, last_bf16w = run_umt5(model_bf16w, ids, mask)
        tensors.update({f"{name}.input_ids": ids, f"{name}.attention_mask": mask})
        tensors.update({f"{name}.block.{i}": b for i, b in enumerate(blocks)})
        tensors.update({f"{name}.pre_final_norm": blocks[-1], f"{name}.last_hidden_state": last,
                        f"{name}.last_hidden_state_bf16w": last_bf16w})
        meta_cases[name] = {"shape": [batch, length], "valid": valid}
        print(f"  {name}: {tuple(last.shape)} |bf16w - f32| max {float((last_bf16w - last).abs().max()):.3g}")

    rel = torch.arange(-300, 301)
    attn = model.encoder.block[0].layer[0].SelfAttention
    tensors["buckets"] = attn._relative_position_bucket(rel).to(torch.int64)
    meta = {
        "config": {k: getattr(model.config, k) for k in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff",
                                                         "num_layers", "relative_attention_num_buckets",
                                                         "relative_attention_max_distance", "feed_forward_proj",
                                                         "layer_norm_epsilon")},
        "cases": meta_cases,
        "block.{i}": "output hidden states of encoder block i (forward hook); pre_final_norm = last block",
        "last_hidden_state_bf16w": "same model with weights rounded to bfloat16 and back to float32",
        "buckets": "UMT5Attention._relative_position_bucket (bidirectional, 32 buckets, max distance 128) "
        "for relative positions -300..300 (memory - query)",
        "hf_embedding_keys": embedding_keys,
        "seeds": {"weights": 300, "perturb": 301, "ids": 302},
    }
    save_tensors(os.path.join(out, "umt5.safetensors"), tensors, meta)
    return model, embedding_keys


def gen_prompt_embeds(out, tok, text_encoder):
    from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing import (
        SkyReelsV2DiffusionForcingPipeline,
    )

    print("prompt embeds:")
    pipe = SkyReelsV2DiffusionForcingPipeline(tokenizer=tok, text_encoder=text_encoder, transformer=None,
                                              vae=None, scheduler=None)
    picks = [0, 9]  # one short prompt, one truncated to 32 tokens
    tensors, meta = {}, {"max_sequence_length": MAX_LEN, "prompts": {}}
    for e, i in enumerate(picks):
        with torch.no_grad():
            emb = pipe._get_t5_prompt_embeds(prompt=PROMPTS[i], max_sequence_length=MAX_LEN,
                                             device=torch.device("cpu"), dtype=torch.float32)
        tensors[f"e{e}.prompt_embeds"] = emb
        meta["prompts"][f"e{e}"] = {"tokenizer_case": f"p{i}", "prompt": PROMPTS[i]}
        print(f"  e{e}: {tuple(emb.shape)} from p{i}")
    meta["call"] = "SkyReelsV2DiffusionForcingPipeline._get_t5_prompt_embeds(prompt, max_sequence_length=32)"
    save_tensors(os.path.join(out, "prompt_embeds.safetensors"), tensors, meta)


def gen_umt5_and_tokenizer(out):
    tok, components = gen_tokenizer(out, scene_corpus())
    model, embedding_keys = gen_umt5(out, tok)
    gen_prompt_embeds(out, tok, model)
    return components, embedding_keys


# ---------------------------------------------------------------------------------------------
def report_sizes(out):
    total = 0
    print("sizes:")
    for rel in VAE_OUTPUTS + TEXT_OUTPUTS:
        path = os.path.join(out, rel)
        if os.path.isdir(path):
            for d, _, files in sorted(os.walk(path)):
                for f in sorted(files):
                    p = os.path.join(d, f)
                    print(f"  {os.path.relpath(p, out):60s} {os.path.getsize(p):>10,d}")
        elif os.path.isfile(path):
            print(f"  {rel:60s} {os.path.getsize(path):>10,d}")
        total += tree_size(path) if os.path.exists(path) else 0
    print(f"  {'total':60s} {total:>10,d}")
    assert total <= SIZE_BUDGET_BYTES, f"fixtures exceed the {SIZE_BUDGET_BYTES:,d} byte budget"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="existing fixture directory (only the files above are replaced)")
    args = ap.parse_args()
    if not os.path.isdir(args.out):
        ap.error(f"{args.out} is not an existing directory")
    os.makedirs(os.path.join(args.out, "models"), exist_ok=True)
    gen_vae(args.out)
    gen_umt5_and_tokenizer(args.out)
    report_sizes(args.out)


if __name__ == "__main__":
    main()
