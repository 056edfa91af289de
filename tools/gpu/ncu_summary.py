#!/usr/bin/env python3
"""Sums ncu's `--print-summary per-kernel` output by kernel name: total GPU time, share, calls
and DRAM bytes per kernel, for each '### name' section that scripts/gpu-check.sh writes into
profile.txt. Usage: ncu_summary.py profile.txt"""
import re
import sys
from collections import defaultdict

TIME = {"ns": 1e-9, "nsecond": 1e-9, "us": 1e-6, "usecond": 1e-6, "ms": 1e-3, "msecond": 1e-3,
        "s": 1.0, "second": 1.0}
BYTES = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12}
HEADER = re.compile(r"^\s{0,4}(\S.*?)\s+\(\d+, \d+, \d+\)x\(\d+, \d+, \d+\).*Invocations\s+(\d+)")


def short(name):
    name = name.replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    name = re.sub(r"<\(bool\)(\d)>", r"<\1>", name)  # GemvKernel<(bool)1>
    name = re.sub(r"\(.*$", "", name)  # drop the argument list
    name = re.sub(r"^void\s+", "", name)
    name = re.sub(r"<.*>", "<>", name)
    return name.split("::")[-1][:60]


def parse(lines):
    sections, cur, kernel, calls = {}, None, None, 0
    for line in lines:
        if line.startswith("### "):
            cur = sections.setdefault(line[4:].strip(), defaultdict(lambda: [0.0, 0, 0.0]))
            continue
        m = HEADER.match(line)
        if m and cur is not None:
            kernel, calls = short(m.group(1)), int(m.group(2))
            continue
        parts = line.split()
        if kernel is None or cur is None or len(parts) < 5:
            continue
        metric, unit, avg = parts[0], parts[1].lower(), parts[-1].replace(",", "")
        try:
            avg = float(avg)
        except ValueError:
            continue
        if metric == "gpu__time_duration.sum" and unit in TIME:
            cur[kernel][0] += avg * TIME[unit] * calls
            cur[kernel][1] += calls
        elif metric == "dram__bytes.sum" and unit in BYTES:
            cur[kernel][2] += avg * BYTES[unit] * calls
    return sections


def main():
    sections = parse(open(sys.argv[1], errors="replace").read().splitlines())
    for name, kernels in sections.items():
        total = sum(v[0] for v in kernels.values())
        print(f"\n{name}: {total * 1e3:.3f} ms of kernel time in {sum(v[1] for v in kernels.values())} launches")
        print("| kernel | ms | share | launches | GB | GB/s |")
        print("|---|---|---|---|---|---|")
        for k, (t, n, b) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:int(sys.argv[2]) if len(sys.argv) > 2 else 15]:
            bw = b / t / 1e9 if t > 0 else 0
            print(f"| {k} | {t * 1e3:.3f} | {100 * t / total if total else 0:.1f}% | {n} | {b / 1e9:.3f} | {bw:.0f} |")


if __name__ == "__main__":
    main()
