#!/usr/bin/env python3
"""PyTorch's bf16 outputs of the fixture transformers, for the bf16 parity test.

Run by hand (never by CI), after gen_fixtures.py, with the venv of tools/bench_vs_torch.sh:

    python tools/reference/gen_bf16_fixtures.py --fixtures crates/skyreels-core/tests/fixtures

For each diffusers-layout fixture transformer it loads the saved weights with
torch_dtype=torch.bfloat16 (diffusers then runs the whole forward in bf16 as on a GPU: bf16
weights and activations, its norms and softmax as the reference wrote them), replays the
recorded inputs of the f32 cases and saves the outputs, widened to f32, to
transformer_bf16_outputs.safetensors under "<folder>.<case>".
"""

import argparse
import json
import os

import torch
from diffusers import SkyReelsV2Transformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# (model folder, causal block size, case) as in src/check.rs's TRANSFORMER_CASES, diffusers only.
CASES = [
    ("df_fps_diffusers", 1, "df_f5_fps24"),
    ("df_fps_diffusers", 3, "df_f6_causal3"),
    ("t2v_diffusers", 1, "t2v_df_f3_odd"),
    ("i2v_diffusers", 1, "i2v_scalar"),
    ("odd_diffusers", 1, "odd_patch2_df"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = {}
    for folder, block, case in CASES:
        model = SkyReelsV2Transformer3DModel.from_pretrained(
            os.path.join(args.fixtures, "models", folder), torch_dtype=torch.bfloat16).eval()
        model.register_to_config(num_frame_per_block=block)
        path = os.path.join(args.fixtures, f"transformer_{case}.safetensors")
        t = load_file(path)
        with safe_open(path, "pt") as f:
            meta = json.loads(f.metadata()["json"])
        image = t.get("encoder_hidden_states_image")
        with torch.no_grad():
            y = model(
                hidden_states=t["hidden_states"].to(torch.bfloat16),
                timestep=t["timestep"],
                encoder_hidden_states=t["encoder_hidden_states"].to(torch.bfloat16),
                encoder_hidden_states_image=None if image is None else image.to(torch.bfloat16),
                enable_diffusion_forcing=meta["diffusion_forcing"],
                fps=t["fps"].tolist() if "fps" in t else None,
                return_dict=False,
            )[0].float()
        ref = t["output"]
        err = ((y - ref).norm() / ref.norm()).item()
        print(f"  {folder} {case}: bf16 against f32 {err:.2e}")
        out[f"{folder}.{case}"] = y.contiguous()
    path = os.path.join(args.fixtures, "transformer_bf16_outputs.safetensors")
    save_file(out, path, metadata={"json": json.dumps({"cases": [f"{f}.{c}" for f, _, c in CASES],
                                                       "torch": torch.__version__})})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
