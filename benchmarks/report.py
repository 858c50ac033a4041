"""Turns a pytest-benchmark JSON file into a markdown table of median times and the fused op's
speedup over each peer measured in the same run, plus geometric means per direction.

    python benchmarks/report.py out/cpu.json [--machine "2-core Xeon, no GPU"] > benchmarks/results/cpu.md
"""
from __future__ import annotations

import argparse
import collections
import json
import math

OURS = "adain_ext"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("json_file")
    parser.add_argument("--machine", default=None)
    parser.add_argument("--stat", default="median", choices=["median", "min", "mean"],
                        help="which of pytest-benchmark's per-round statistics to compare")
    args = parser.parse_args(argv)
    with open(args.json_file) as f:
        data = json.load(f)
    medians = collections.defaultdict(dict)  # (direction, shape) -> provider -> seconds
    for b in data["benchmarks"]:
        info = b["extra_info"]
        key = (info["direction"], "x".join(map(str, info["shape"])))
        medians[key][info["provider"]] = b["stats"][args.stat]
    providers = sorted({p for row in medians.values() for p in row}, key=lambda p: (p != OURS, p))
    peers = [p for p in providers if p != OURS]
    machine = args.machine or data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    print(f"Machine: {machine}; torch {data.get('machine_info', {}).get('python_version', '')}"
          f" run {data.get('datetime', '')}\n")
    print(f"{args.stat.capitalize()} milliseconds per call over {data['benchmarks'][0]['stats']['rounds']}"
          " rounds; in brackets, the speedup of adain_ext over that peer.\n")
    print("| direction | shape | " + " | ".join(providers) + " |")
    print("|---|---|" + "---|" * len(providers))
    ratios = collections.defaultdict(list)
    for (direction, shape), row in sorted(medians.items()):
        cells = []
        for p in providers:
            t = row.get(p)
            if t is None:
                cells.append("-")
                continue
            cell = f"{t * 1e3:.3f}"
            if p != OURS and OURS in row:
                ratio = t / row[OURS]
                ratios[(direction, p)].append(ratio)
                cell += f" ({ratio:.2f}x)"
            cells.append(cell)
        print(f"| {direction} | {shape} | " + " | ".join(cells) + " |")
    print(f"\nGeometric-mean speedup of adain_ext ({args.stat} times):\n")
    for direction in sorted({d for d, _ in ratios}):
        parts = []
        for p in peers:
            values = ratios.get((direction, p))
            if values:
                parts.append(f"{p} {math.exp(sum(map(math.log, values)) / len(values)):.2f}x "
                             f"(slowest shape {min(values):.2f}x)")
        print(f"- {direction}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
