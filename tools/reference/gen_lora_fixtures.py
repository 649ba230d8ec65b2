#!/usr/bin/env python3
"""Generate the LoRA fixtures: tiny adapters in three layouts and diffusers' outputs with them.

Run by hand (never by CI), with the reference venv described in README.md next to this file
plus `peft`, after gen_fixtures.py:

    python tools/reference/gen_lora_fixtures.py --out crates/skyreels-core/tests/fixtures

The tiny diffusers DiT `models/t2v_diffusers` gets two PEFT adapters through diffusers'
`add_adapter`, with random A and B matrices (PEFT starts B at zero, which would test nothing):
`a` (rank 2, alpha 4: scale 2) on six kinds of linear (self- and cross-attention, both FFN layers),
`b` (rank 2, alpha 2) on three.
Files written to `lora/`:

    a_diffusers.safetensors   diffusers/PEFT layout, as `save_lora_adapter` writes it:
                              `blocks.N.attn1.to_q.lora_A.weight`, alpha in the
                              `lora_adapter_metadata` JSON
    b_diffusers.safetensors   the same for `b`, keys prefixed `transformer.` as pipelines save them
    a_kohya.safetensors       `a` in the kohya layout: `lora_unet_blocks_N_self_attn_q.lora_down.weight`,
                              `.lora_up.weight`, `.alpha` (original Wan module names)
    a_comfy.safetensors       `a` in the ComfyUI / LightX2V layout: `diffusion_model.blocks.N.self_attn.q.
                              lora_down.weight` / `lora_up.weight` / `alpha`, plus a full-weight `diff`
                              and a bias `diff_b` for `blocks.1.self_attn.o`
    c_peft.safetensors        adapter `c` (rank 2, alpha 2) with PEFT's per-module `alpha_pattern`
                              and `rank_pattern` (rank 3 on `attn1.to_v`), as `save_lora_adapter` writes it
    d_rslora.safetensors      adapter `d` (rank 2, alpha 2) with `use_rslora` (scale alpha/sqrt(rank))

and `lora.safetensors` with the input and diffusers' outputs:

    latents, timestep, context     one input
    base                           no adapter
    a1, a05                        adapter `a` at strength 1 and 0.5
    ab                             `a` at 1 and `b` at 0.5, stacked
    comfy                          `a` at 1 with the `diff` / `diff_b` added to the base weights
    c1, d1                         adapters `c` and `d` alone at strength 1

The output is bit-identical from run to run (one thread, seeded generators).
"""

import argparse
import copy
import json
import os

import torch
from diffusers import SkyReelsV2Transformer3DModel
from peft import LoraConfig
from safetensors.torch import save_file

ALL = ["attn1.to_q", "attn1.to_k", "attn1.to_out.0", "attn2.to_v", "ffn.net.0.proj", "ffn.net.2"]
SOME = ["attn1.to_q", "attn1.to_v", "ffn.net.2"]
# diffusers module → original Wan module inside a block.
ORIGINAL = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
            "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
            "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0",
            "ffn.net.2": "ffn.2"}


def add_random_adapter(model, name, rank, alpha, targets, generator):
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True),
                      adapter_name=name)
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if hasattr(module, "lora_A") and name in module.lora_A:
                for layer in (module.lora_A[name], module.lora_B[name]):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.2)


def reproducible(path):
    """PEFT writes `target_modules` from a set, in hash order: sort it so reruns give the same bytes
    (and keep only the metadata entry readers use)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, "pt") as f:
        metadata = dict(f.metadata())
    config = json.loads(metadata["lora_adapter_metadata"])
    config["target_modules"] = sorted(config["target_modules"])
    # One metadata entry: safetensors writes several in hash order too.
    metadata = {"lora_adapter_metadata": json.dumps(config, indent=2, sort_keys=True)}
    save_file(load_file(path), path, metadata=metadata)


def adapter_terms(model, name):
    """{(block, diffusers module): (A, B)} of one adapter."""
    terms = {}
    for module_name, module in model.named_modules():
        if hasattr(module, "lora_A") and name in module.lora_A:
            _, block, rest = module_name.split(".", 2)
            terms[(int(block), rest)] = (module.lora_A[name].weight.detach().clone(),
                                         module.lora_B[name].weight.detach().clone())
    return terms


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = os.path.join(args.out, "lora")
    os.makedirs(folder, exist_ok=True)
    base = SkyReelsV2Transformer3DModel.from_pretrained(os.path.join(args.out, "models", "t2v_diffusers")).eval()
    generator = torch.Generator().manual_seed(83)
    latents = torch.randn(1, 16, 3, 4, 6, generator=generator)
    timestep = torch.tensor([613])
    context = torch.randn(1, 7, base.config.text_dim, generator=generator)

    def run(model):
        with torch.no_grad():
            return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=context,
                         return_dict=False)[0].contiguous()

    outputs = {"latents": latents, "timestep": timestep, "context": context, "base": run(base)}
    model = copy.deepcopy(base)
    add_random_adapter(model, "a", 2, 4, ALL, generator)
    add_random_adapter(model, "b", 2, 2, SOME, generator)
    model.set_adapters(["a"], weights=[1.0])
    outputs["a1"] = run(model)
    model.set_adapters(["a"], weights=[0.5])
    outputs["a05"] = run(model)
    model.set_adapters(["a", "b"], weights=[1.0, 0.5])
    outputs["ab"] = run(model)

    model.set_adapters(["a"], weights=[1.0])
    model.save_lora_adapter(folder, adapter_name="a", weight_name="a_diffusers.safetensors")
    reproducible(os.path.join(folder, "a_diffusers.safetensors"))
    model.set_adapters(["b"], weights=[1.0])
    b_terms = adapter_terms(model, "b")
    b_state = {}
    for (block, module), (a, b) in sorted(b_terms.items()):
        b_state[f"transformer.blocks.{block}.{module}.lora_A.weight"] = a.contiguous()
        b_state[f"transformer.blocks.{block}.{module}.lora_B.weight"] = b.contiguous()
    save_file(b_state, os.path.join(folder, "b_diffusers.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"r": 2, "lora_alpha": 2})})

    a_terms = adapter_terms(model, "a")
    kohya, comfy = {}, {}
    for (block, module), (a, b) in sorted(a_terms.items()):
        original = f"blocks.{block}.{ORIGINAL[module]}"
        stem = "lora_unet_" + original.replace(".", "_")
        kohya[f"{stem}.lora_down.weight"] = a.contiguous()
        kohya[f"{stem}.lora_up.weight"] = b.contiguous()
        kohya[f"{stem}.alpha"] = torch.tensor(4.0)
        comfy[f"diffusion_model.{original}.lora_down.weight"] = a.contiguous()
        comfy[f"diffusion_model.{original}.lora_up.weight"] = b.contiguous()
        comfy[f"diffusion_model.{original}.alpha"] = torch.tensor(4.0)
    out_linear = base.blocks[1].attn1.to_out[0]
    diff = torch.randn(out_linear.weight.shape, generator=generator) * 0.05
    diff_b = torch.randn(out_linear.bias.shape, generator=generator) * 0.05
    comfy["diffusion_model.blocks.1.self_attn.o.diff"] = diff
    comfy["diffusion_model.blocks.1.self_attn.o.diff_b"] = diff_b
    save_file(kohya, os.path.join(folder, "a_kohya.safetensors"))
    save_file(comfy, os.path.join(folder, "a_comfy.safetensors"))
    with torch.no_grad():
        model.base_model_layer = None
        for name_, module in model.named_modules():
            if name_ == "blocks.1.attn1.to_out.0":
                module.base_layer.weight += diff
                module.base_layer.bias += diff_b
    model.set_adapters(["a"], weights=[1.0])
    outputs["comfy"] = run(model)

    # PEFT's scaling options, on the unchanged base (new draws come last, so the files above
    # keep their bytes).
    for name, config, file in [
        ("c", LoraConfig(r=2, lora_alpha=2, target_modules=SOME, init_lora_weights=True,
                         alpha_pattern={"blocks.1.attn1.to_q": 8, "to_q": 6, "net.2": 1},
                         rank_pattern={"attn1.to_v": 3}), "c_peft.safetensors"),
        ("d", LoraConfig(r=2, lora_alpha=2, target_modules=["attn1.to_v"], init_lora_weights=True,
                         use_rslora=True), "d_rslora.safetensors"),
    ]:
        peft_model = copy.deepcopy(base)
        peft_model.add_adapter(config, adapter_name=name)
        with torch.no_grad():
            for _, module in peft_model.named_modules():
                if hasattr(module, "lora_A") and name in module.lora_A:
                    for layer in (module.lora_A[name], module.lora_B[name]):
                        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.2)
        peft_model.set_adapters([name], weights=[1.0])
        outputs[f"{name}1"] = run(peft_model)
        peft_model.save_lora_adapter(folder, adapter_name=name, weight_name=file)
        reproducible(os.path.join(folder, file))
    save_file(outputs, os.path.join(args.out, "lora.safetensors"))


if __name__ == "__main__":
    main()
