"""Markdown reports of benchmark and test results.

A pytest-benchmark JSON file as a table of median times and the fused op's speedup over each peer
measured in the same run, plus geometric means per direction:

    python benchmarks/report.py out/cpu.json [--machine "2-core Xeon, no GPU"] > benchmarks/results/cpu.md

The sections of benchmarks/gpu_check.sh's summary.md that read its files (test counts and failed
node ids from the JUnit XML, the ratios the GPU targets are stated in, from gpu_bench.json and the
application benchmarks' outputs), each ratio beside its target; also writes the failed node ids,
one per line, to OUT/failed_tests.txt (the --quick rerun's input):

    python benchmarks/report.py gpu-check --work WORK_DIR --out OUT_DIR
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
import xml.etree.ElementTree as ET

OURS = "adain_ext"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu-check"]:
        return gpu_check_main(argv[1:])
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



# ---- gpu_check.sh's summary sections.

# The GPU targets: (summary key or measure, comparison, floor or ceiling).
TARGETS = {
    "forward: speedup vs compiled_reference (geomean)": (">=", 1.5),
    "forward: speedup vs eager_reference (geomean)": (">=", 5.0),
    "forward: min % of copy bandwidth, shapes >= 64 MB": (">=", 80.0),
    "forward: adain_ext_triton / adain_ext time (worst)": ("<=", 1.10),
    "backward: adain_ext_triton / adain_ext time (worst)": ("<=", 1.10),
    "stylize: best adain_ext images/s / reference": (">=", 3.0),
    "train step: best adain_ext speedup over reference": (">=", 1.5),
    "StyleGAN step: fused speedup over reference": (">=", 1.3),
}
# The pytest steps of gpu_check.sh: their JUnit XML in OUT and their log in WORK.
TEST_STEPS = (("tests", "junit-tests.xml"), ("triton", "junit-triton.xml"))


def _target_cells(metric, value):
    if metric not in TARGETS:
        return "", ""
    op, bound = TARGETS[metric]
    met = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:g}", "yes" if met else "**no**"


def _node_id(classname: str, name: str) -> str:
    """pytest's node id from a JUnit testcase: classname 'tests.test_x[.TestClass]' and name."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if os.path.exists(os.path.join(ROOT, path)):
            return "::".join([path, *parts[cut:], name])
    return f"{classname}::{name}"


def read_junit(path: str) -> dict:
    """Counts, failed node ids (failures and errors) and the slowest tests of a JUnit XML file."""
    counts = collections.Counter()
    failed, times = [], []
    for case in ET.parse(path).getroot().iter("testcase"):
        if not case.get("name"):  # the test an interrupt stopped: pytest leaves it unnamed
            continue
        node = _node_id(case.get("classname", ""), case.get("name", ""))
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                message = (child.get("message") or "").strip().splitlines()
                failed.append((node, message[0][:160] if message else child.tag))
                break
            if child.tag == "skipped":
                outcome = "skipped"
        counts[outcome] += 1
        times.append((float(case.get("time") or 0), node))
    return {"counts": counts, "failed": failed, "slowest": sorted(times, reverse=True)[:5]}


def failed_from_log(path: str) -> list:
    """Failed node ids from pytest's -rfE short summary (when no JUnit XML was written)."""
    found = []
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"^(FAILED|ERROR) (\S+::\S+)(?: - (.*))?", line)
            if m:
                found.append((m.group(2), (m.group(3) or m.group(1))[:160]))
    return found


def tests_section(work: str, out: str) -> tuple[list[str], list[str]]:
    lines, failed_ids = [], []
    rows = []
    for step, xml_name in TEST_STEPS:
        xml_path, log_path = os.path.join(out, xml_name), os.path.join(work, f"{step}.log")
        if os.path.exists(xml_path):
            try:
                result = read_junit(xml_path)
            except ET.ParseError as error:
                rows.append(f"| {step} | unreadable {xml_name}: {error} | | | |")
                continue
            c = result["counts"]
            rows.append(f"| {step} | {c['passed']} | {c['failed']} | {c['errors']} | {c['skipped']} |")
            failed = result["failed"]
            slowest = ", ".join(f"{node.split('::', 1)[-1]} {t:.1f} s"
                                for t, node in result["slowest"] if t >= 1)
        elif os.path.exists(log_path):
            failed = failed_from_log(log_path)
            rows.append(f"| {step} | no {xml_name}: from the log | {len(failed)} failed | | |")
            slowest = ""
        else:
            continue
        for node, why in failed:
            failed_ids.append(node)
            lines.append(f"- `{node}`: {why}")
        if slowest:
            lines.append(f"- slowest in {step}: {slowest}")
    if not rows:
        return [], []
    head = ["", "## Tests", "", "| step | passed | failed | errors | skipped |", "|---|---|---|---|---|"]
    return head + rows + ([""] + lines if lines else []), failed_ids


def bench_section(out: str) -> list[str]:
    path = os.path.join(out, "gpu_bench.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    meta, summary, records = data["meta"], data["summary"], data["records"]
    measured = {(tuple(r["shape"]), r["dtype"], r["layout"]) for r in records if "ms" in r}
    compiled = {(tuple(r["shape"]), r["dtype"], r["layout"]) for r in records
                if r["provider"] == "compiled_reference" and "ms" in r}
    errors = sorted({f"{r['provider']} {r['direction']}: {r['error'][:80]}"
                     for r in records if "error" in r})
    lines = ["", f"## Benchmark: {meta['device_name']}, copy {meta['copy_gbs']:.0f} GB/s",
             "",
             f"{len(measured)} of {meta.get('configs', '?')} configurations measured "
             f"({len(compiled)} with torch.compile) in {meta.get('seconds', 0):.0f} s"
             + (f" (eager providers {meta['eager_seconds']:.0f} s; torch.compile: compilation "
                f"{meta.get('compile_seconds', 0):.0f} s, apart from its timed runs "
                f"{meta.get('compiled_run_seconds', 0):.0f} s)" if "eager_seconds" in meta else "")
             + "; the tables are gpu_bench.md in logs.tar.gz.",
             "", "| metric | value | target | met |", "|---|---|---|---|"]
    for metric, value in summary.items():
        target, met = _target_cells(metric, value)
        lines.append(f"| {metric} | {value:.3g} | {target} | {met} |")
    lines += [f"- error: {e}" for e in errors[:10]]
    return lines


def stylegan_ratios(log_path: str) -> dict:
    """bench_stylegan.py's printout: '  reference   12.3 ms   fused is 1.45x faster'."""
    ratios = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            m = re.match(r"^\s+(\w+)\s+[\d.]+ ms\s+fused is ([\d.]+)x faster", line)
            if m:
                ratios[m.group(1)] = float(m.group(2))
    return ratios


def style_transfer_ratios(json_path: str) -> dict:
    """Per group of bench_style_transfer.py ("stylize cuda 8x512", "train-step cuda 8x256"):
    reference mean time / each adain_ext provider's mean time."""
    with open(json_path) as f:
        data = json.load(f)
    groups = collections.defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["provider"]] = b["stats"]["mean"]
    return {group: {p: times["reference"] / t for p, t in times.items() if p != "reference"}
            for group, times in groups.items() if "reference" in times}


def apps_section(work: str) -> list[str]:
    rows = []
    log = os.path.join(work, "apps.log")
    if os.path.exists(log):
        stylegan = stylegan_ratios(log)
        for impl, ratio in stylegan.items():
            metric = f"StyleGAN step: fused speedup over {impl}"
            target, met = _target_cells(metric, ratio)
            rows.append(f"| {metric} | {ratio:.2f} | {target} | {met} |")
    path = os.path.join(work, "style_transfer.json")
    if os.path.exists(path):
        for group, ratios in sorted(style_transfer_ratios(path).items()):
            best = max(ratios, key=ratios.get)
            metric = ("stylize: best adain_ext images/s / reference" if group.startswith("stylize")
                      else "train step: best adain_ext speedup over reference")
            target, met = _target_cells(metric, ratios[best])
            others = ", ".join(f"{p} {r:.2f}" for p, r in ratios.items())
            rows.append(f"| {group}: {best} over reference ({others}) | {ratios[best]:.2f} "
                        f"| {target} | {met} |")
    if not rows:
        return []
    return ["", "## Applications", "", "| measure | ratio | target | met |", "|---|---|---|---|",
            *rows]


def gpu_check_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="report.py gpu-check")
    parser.add_argument("--work", required=True, help="gpu_check.sh's folder of logs")
    parser.add_argument("--out", required=True, help="gpu_check.sh's output folder")
    args = parser.parse_args(argv)
    lines = []
    tests, failed_ids = tests_section(args.work, args.out)
    lines += tests
    for section in (bench_section, apps_section):
        try:
            lines += section(args.out if section is bench_section else args.work)
        except (OSError, ValueError, KeyError, TypeError) as error:  # a file cut short by a kill
            lines += ["", f"({section.__name__}: could not read its file: {error!r})"]
    if failed_ids:
        with open(os.path.join(args.out, "failed_tests.txt"), "w") as f:
            f.write("\n".join(dict.fromkeys(failed_ids)) + "\n")
        lines += ["", f"{len(set(failed_ids))} failed node ids are in failed_tests.txt. After a "
                  "fix, rerun them with `bash benchmarks/gpu_check.sh --quick` after copying that "
                  "file to benchmarks/results/last_failed.txt, or with `--only-tests-file`."]
    if lines:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
