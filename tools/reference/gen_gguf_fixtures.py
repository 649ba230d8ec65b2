#!/usr/bin/env python3
"""GGUF fixtures for skyreels-rs (city96's layout for Wan/SkyReels GGUF files).

Writes into crates/skyreels-core/tests/fixtures/gguf/:
  df_fps_q8_0.gguf          the tiny `models/df_fps_original` transformer: every 2-D matrix whose
                            rows are a multiple of 32 as Q8_0, everything else F32 (the 5-D
                            patch embedding as a 5-D F32 tensor), original Wan names
  df_fps_q8_0_dequant.safetensors  gguf-py's own dequantisation of each Q8_0 tensor (f32)
  q4_k.gguf                 one [3, 512] Q4_K tensor built from random blocks (gguf-py cannot
                            quantise K-quants, but it dequantises them), plus an F16 and a BF16
                            tensor
  q4_k_dequant.safetensors  gguf-py's dequantisation of those three

Needs only numpy, safetensors and gguf (pip install gguf numpy safetensors); no torch.
    python tools/reference/gen_gguf_fixtures.py
"""
import json
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from safetensors.numpy import load_file, save_file

ROOT = os.path.join(os.path.dirname(__file__), "../../crates/skyreels-core/tests/fixtures")
OUT = os.path.join(ROOT, "gguf")
os.makedirs(OUT, exist_ok=True)


def transformer_q8_0():
    src = os.path.join(ROOT, "models/df_fps_original")
    tensors = {}
    for name in sorted(os.listdir(src)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(src, name)))
    writer = gguf.GGUFWriter(os.path.join(OUT, "df_fps_q8_0.gguf"), arch="wan")
    dequant = {}
    for name, value in sorted(tensors.items()):
        value = value.astype(np.float32)
        if value.ndim == 2 and value.shape[1] % 32 == 0 and name.startswith("blocks."):
            packed = quants.quantize(value, T.Q8_0)
            writer.add_tensor(name, packed, raw_dtype=T.Q8_0)
            dequant[name] = quants.dequantize(packed, T.Q8_0).astype(np.float32)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(dequant, os.path.join(OUT, "df_fps_q8_0_dequant.safetensors"))
    return len(dequant), len(tensors)


def q4_k_blocks(rows, cols, rng):
    """Random Q4_K super-blocks (256 values, 144 bytes: d, dmin as f16, 12 bytes of 6-bit
    scales and mins, 128 bytes of 4-bit quants) with small, finite d and dmin."""
    blocks = rows * cols // 256
    raw = rng.integers(0, 256, size=(blocks, 144), dtype=np.uint8)
    d = rng.uniform(0.001, 0.01, size=blocks).astype(np.float16)
    dmin = rng.uniform(0.001, 0.01, size=blocks).astype(np.float16)
    raw[:, 0:2] = d.view(np.uint8).reshape(blocks, 2)
    raw[:, 2:4] = dmin.view(np.uint8).reshape(blocks, 2)
    return raw.reshape(rows, cols // 256 * 144)


def single_tensors():
    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(os.path.join(OUT, "q4_k.gguf"), arch="wan")
    packed = q4_k_blocks(3, 512, rng)
    writer.add_tensor("q4k", packed, raw_dtype=T.Q4_K)
    half = rng.standard_normal((4, 6)).astype(np.float16)
    writer.add_tensor("f16", half)
    bf16 = rng.standard_normal((2, 5)).astype(np.float32)
    bf16_bits = (bf16.view(np.uint32) >> 16).astype(np.uint16)
    writer.add_tensor("bf16", bf16_bits.view(np.uint8).reshape(2, 10), raw_dtype=T.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(
        {
            "q4k": quants.dequantize(packed, T.Q4_K).astype(np.float32),
            "f16": half.astype(np.float32),
            "bf16": quants.dequantize(bf16_bits.view(np.uint8).reshape(2, 10), T.BF16).astype(np.float32),
        },
        os.path.join(OUT, "q4_k_dequant.safetensors"),
    )


if __name__ == "__main__":
    quantised, total = transformer_q8_0()
    single_tensors()
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "tools/reference/gen_gguf_fixtures.py", "gguf": gguf.__version__
                   if hasattr(gguf, "__version__") else "0.19.0", "q8_0_tensors": quantised,
                   "tensors": total}, f, indent=2)
    print(f"{quantised} of {total} tensors as Q8_0; Q4_K/F16/BF16 single tensors")
