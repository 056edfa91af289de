#!/usr/bin/python3
"""Compares the C++ engine (build/bin/sambay-run) with the float64 NumPy reference.

For each case: makes a checkpoint with sambay-mkmodel, scores a long random prompt with both
(several times the sliding window), checks ||engine - ref|| / ||ref|| <= 1e-4 at every position,
and checks greedy generation ids are identical. Prints one line per case; exits 1 on failure.

Usage: /usr/bin/python3 tools/reference/compare_engine.py [--bin build/bin]
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sambay_ref  # noqa: E402

CASES = [
    # name, mkmodel args, prompt length, prefill chunk for generate
    ("tiny8 f32, T=200 (12.5x window)", ["--preset", "tiny", "--seed", "21"], 200, 0),
    ("tiny12 f32, T=160, chunked prefill", ["--preset", "tiny", "--layers", "12", "--seed", "22"], 160, 7),
    ("tiny8 bf16, T=120", ["--preset", "tiny", "--seed", "23", "--dtype", "bf16"], 120, 0),
    ("h8/kv2 window 8 sharded, T=100",
     ["--preset", "tiny", "--heads", "8", "--kv-heads", "2", "--window", "8", "--seed", "24",
      "--shards", "3"], 100, 5),
]
TOL = 1e-4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/bin")
    args = ap.parse_args()
    failed = 0
    for name, mk_args, t, chunk in CASES:
        with tempfile.TemporaryDirectory() as d:
            model_dir = os.path.join(d, "m")
            subprocess.run([os.path.join(args.bin, "sambay-mkmodel"), "--out", model_dir] + mk_args,
                           check=True, stderr=subprocess.DEVNULL)
            vocab = 320
            ids = np.random.RandomState(t).randint(0, vocab, size=t).tolist()
            ids_s = ",".join(map(str, ids))
            out = os.path.join(d, "engine.npy")
            subprocess.run([os.path.join(args.bin, "sambay-run"), "score", "--model", model_dir,
                            "--ids", ids_s, "--out", out], check=True, stderr=subprocess.DEVNULL)
            eng = np.load(out).astype(np.float64)
            model = sambay_ref.load_model(model_dir)
            ref = sambay_ref.score(model, ids)
            err = np.linalg.norm(eng - ref, axis=1) / np.linalg.norm(ref, axis=1)
            gen = subprocess.run([os.path.join(args.bin, "sambay-run"), "generate", "--model",
                                  model_dir, "--ids", ids_s, "--max-new-tokens", "16",
                                  "--prefill-chunk", str(chunk)],
                                 check=True, capture_output=True, text=True).stdout.split()
            gen = [int(x) for x in gen]
            ref_gen = sambay_ref.generate(model, ids, 16)
        ok = err.max() <= TOL and gen == ref_gen
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max rel err {err.max():.2e} "
              f"(mean {err.mean():.2e}), greedy ids {'equal' if gen == ref_gen else 'DIFFER'}")
    print(f"{len(CASES) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
