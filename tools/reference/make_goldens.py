#!/usr/bin/python3
"""Regenerates the golden files in tests/data/golden/ from the NumPy reference.

For each variant: makes the checkpoint with build/bin/sambay-mkmodel, scores a fixed random
prompt with the float64 reference (sambay_ref.py) and records greedy generation ids.
Writes tests/data/golden/<name>/manifest.json and logits.npy (float32 [T, vocab]).

Usage (after building): /usr/bin/python3 tools/reference/make_goldens.py [--build build]
Rerun whenever sambay-mkmodel's weight generator changes (the golden test checks the model
fingerprint and says so).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sambay_ref  # noqa: E402

# name, sambay-mkmodel arguments, prompt length (several times the window), generation length
VARIANTS = [
    ("tiny8_f32", ["--preset", "tiny", "--seed", "1", "--dtype", "f32"], 64, 12),
    ("tiny12_f32", ["--preset", "tiny", "--layers", "12", "--seed", "2", "--dtype", "f32"], 64, 12),
    ("tiny8_bf16", ["--preset", "tiny", "--seed", "3", "--dtype", "bf16"], 48, 12),
    ("tiny8_f16", ["--preset", "tiny", "--seed", "5", "--dtype", "f16"], 32, 8),
    ("gqa4_f32", ["--preset", "tiny", "--heads", "8", "--kv-heads", "2", "--window", "8",
                  "--seed", "4", "--dtype", "f32"], 48, 12),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="tests/data/golden")
    args = ap.parse_args()
    mk = os.path.join(args.build, "bin", "sambay-mkmodel")
    run = os.path.join(args.build, "bin", "sambay-run")
    for name, mk_args, t, n_gen in VARIANTS:
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([mk, "--out", d] + mk_args, check=True, stderr=subprocess.DEVNULL)
            info = subprocess.run([run, "info", "--model", d], check=True, capture_output=True,
                                  text=True).stdout
            fingerprint = info.split()[1]
            model = sambay_ref.load_model(d)
            rng = np.random.RandomState(1000 + len(name))
            cfg = json.load(open(os.path.join(d, "config.json")))
            ids = rng.randint(0, cfg["vocab_size"], size=t).tolist()
            logits = sambay_ref.score(model, ids)
            gen_prompt = ids[:10]
            gen = sambay_ref.generate(model, gen_prompt, n_gen)
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        np.save(os.path.join(out, "logits.npy"), logits.astype(np.float32))
        manifest = {
            "mkmodel_args": mk_args,
            "fingerprint": fingerprint,
            "ids": ids,
            "gen_prompt": gen_prompt,
            "gen_ids": [int(x) for x in gen],
            "note": "float64 NumPy reference (tools/reference/sambay_ref.py); logits stored as float32",
        }
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        print(f"{name}: T={len(ids)} vocab={logits.shape[1]} fingerprint={fingerprint} gen={gen}")


if __name__ == "__main__":
    main()
