#!/usr/bin/env python3
"""skyreels-rs beside PyTorch on the CPU, one component per row, both engines in one run.

Run through `tools/bench_vs_torch.sh`, which builds the release binary and makes the PyTorch
venv. Every measurement is its own process; the rounds interleave the two engines (ours, then
theirs, row by row) so that a noisy neighbour hurts both alike, and the table takes the best of
the rounds. Each measurement is appended to a JSON-lines file as it finishes, so a killed run
resumes where it stopped (`--resume`), and the table can be reprinted from the file alone
(`--runs 0 --resume`).
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPT = "a red circle moves right on a blue background, the camera pans left"

# name: (label, our command, PyTorch's bench_components.py arguments, threads)
ROWS = {
    "dit-f32": ("DiT forward, DF-1.3B width, 2 of 30 blocks, 1950 tokens + 512 text, f32",
                ["bench", "transformer", "--layers", "2", "--dtype", "f32", "--repeat", "2"],
                ["transformer", "--layers", "2", "--dtype", "f32", "--repeat", "2"], 2),
    "dit-f32-1t": ("the same, 1 thread",
                   ["bench", "transformer", "--layers", "2", "--dtype", "f32", "--repeat", "2"],
                   ["transformer", "--layers", "2", "--dtype", "f32", "--repeat", "2"], 1),
    "dit-bf16": ("the same, bf16",
                 ["bench", "transformer", "--layers", "2", "--dtype", "bf16", "--repeat", "2"],
                 ["transformer", "--layers", "2", "--dtype", "bf16", "--repeat", "2"], 2),
    "dit-bf16-1t": ("the same, bf16, 1 thread",
                    ["bench", "transformer", "--layers", "2", "--dtype", "bf16", "--repeat", "2"],
                    ["transformer", "--layers", "2", "--dtype", "bf16", "--repeat", "2"], 1),
    "vae-decode-5": ("Wan VAE decode, 5 latent frames -> 17 x 240x416, f32",
                     ["bench", "vae-decode", "--latent-frames", "5", "--height", "30", "--width", "52"],
                     ["vae-decode", "--latent-frames", "5", "--height", "30", "--width", "52"], 2),
    "vae-decode-5-1t": ("the same, 1 thread",
                        ["bench", "vae-decode", "--latent-frames", "5", "--height", "30", "--width", "52"],
                        ["vae-decode", "--latent-frames", "5", "--height", "30", "--width", "52"], 1),
    "vae-decode-13": ("the same, 2 threads, 13 latent frames -> 49 frames",
                      ["bench", "vae-decode", "--latent-frames", "13", "--height", "30", "--width", "52"],
                      ["vae-decode", "--latent-frames", "13", "--height", "30", "--width", "52"], 2),
    "vae-encode-17": ("Wan VAE encode, 17 frames of 240x416, f32",
                      ["bench", "vae-encode", "--frames", "17", "--height", "240", "--width", "416"],
                      ["vae-encode", "--frames", "17", "--height", "240", "--width", "416"], 2),
    "umt5": ("umT5-XXL width, 2 of 24 layers, 512 tokens, f32",
             ["bench", "text-encoder", "--layers", "2", "--dtype", "f32", "--repeat", "2"],
             ["text-encoder", "--layers", "2", "--dtype", "f32", "--repeat", "2"], 2),
    "demo": ("demo model, the README's command (81 frames at 64x64, 20 steps, guidance)",
             None, ["demo", "--model", "models/skyreels-demo"], 2),
}


# The table's order: each "the same" row right under the row it varies.
ORDER = ["dit-f32", "dit-f32-1t", "dit-bf16", "dit-bf16-1t", "vae-decode-5", "vae-decode-5-1t", "vae-decode-13", "vae-encode-17",
         "umt5", "demo"]


def run_ours(binary, name, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), CANDLE_NUM_THREADS=str(threads))
    if name == "demo":
        with tempfile.TemporaryDirectory() as out:
            video = os.path.join(out, "demo.mp4")
            env.pop("SKYREELS_DEMO_MODEL", None)
            subprocess.run([binary, "generate", "--prompt", PROMPT, "-o", video, "--quiet"], env=env, check=True,
                           cwd=ROOT)
            sidecar = json.load(open(video + ".json"))
            return {"seconds": sidecar["seconds"], "peak_rss_mib": sidecar.get("peak_rss_mib")}
    out = subprocess.run([binary, *ROWS[name][1], "--json"], env=env, check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {"seconds": result["seconds"], "peak_rss_mib": result.get("peak_rss_mib")}


def run_torch(python, name, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    script = ROOT / "tools" / "reference" / "bench_components.py"
    out = subprocess.run([python, str(script), *ROWS[name][2], "--threads", str(threads)], env=env, check=True,
                         cwd=ROOT, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {"seconds": result["seconds"], "peak_rss_mib": result["peak_rss_mib"], "torch": result["torch"]}


def cpu_name():
    flags = set()
    name = platform.processor()
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, {isa}" + "".join(f", {e}" for e in extras)


def table(records, names):
    best = {}
    for r in records:
        key = (r["row"], r["engine"])
        if key not in best or r["seconds"] < best[key]["seconds"]:
            best[key] = dict(r, rounds=best.get(key, {}).get("rounds", 0) + 1)
        else:
            best[key]["rounds"] += 1
    torch_version = next((r["torch"] for r in records if r.get("torch")), "?")
    lines = [f"CPU: {cpu_name()}; torch {torch_version}; best of the rounds, one process per measurement", "",
             "| component | skyreels-rs s | PyTorch s | ratio (ours / theirs) | peak MiB ours | peak MiB PyTorch | rounds |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        ours, theirs = best.get((name, "ours")), best.get((name, "torch"))
        if not ours and not theirs:
            continue
        fmt = lambda r: f"{r['seconds']:.2f}" if r else "—"
        mib = lambda r: f"{r['peak_rss_mib']:.0f}" if r and r.get("peak_rss_mib") else "—"
        ratio = f"{ours['seconds'] / theirs['seconds']:.2f}" if ours and theirs else "—"
        rounds = min(r["rounds"] for r in (ours, theirs) if r)
        lines.append(f"| {ROWS[name][0]} | {fmt(ours)} | {fmt(theirs)} | {ratio} | {mib(ours)} | {mib(theirs)} | {rounds} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "skyreels"))
    ap.add_argument("--python", default=sys.executable, help="the PyTorch venv's python")
    ap.add_argument("--rows", default=",".join(ORDER), help="comma-separated: " + ", ".join(ROWS))
    ap.add_argument("--runs", type=int, default=3, help="rounds of both engines per row")
    ap.add_argument("--results", default=str(ROOT / "target" / "bench-vs-torch.jsonl"))
    ap.add_argument("--resume", action="store_true", help="keep the measurements already in --results")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}: use {', '.join(ROWS)}")
    results = pathlib.Path(args.results)
    records = [json.loads(l) for l in results.read_text().splitlines() if l.strip()] if args.resume and results.exists() else []
    if not args.resume:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text("")
    for round_ in range(args.runs):
        for name in names:
            threads = ROWS[name][3]
            for engine in ("ours", "torch"):
                done = sum(1 for r in records if r["row"] == name and r["engine"] == engine)
                if done > round_:
                    continue
                measure = run_ours(args.binary, name, threads) if engine == "ours" else run_torch(args.python, name, threads)
                record = dict(measure, row=name, engine=engine, threads=threads,
                              at=datetime.datetime.now().isoformat(timespec="seconds"))
                records.append(record)
                with results.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"round {round_ + 1}: {name} {engine}: {measure['seconds']:.2f} s, "
                      f"{measure.get('peak_rss_mib')} MiB", file=sys.stderr, flush=True)
    text = table(records, names)
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
