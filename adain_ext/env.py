"""`adain-ext env`: what a bug report needs, as torch.utils.collect_env gives it for torch.

collect() returns the facts as one dict (versions, how the kernels were built, which backends run
on which device and what "auto" picks); format_report() prints it; `adain-ext env --json` dumps it.
Backends are probed by running them on a tiny input against the reference, so "usable" means
"ran and agreed here", not "should work".
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import sys
import warnings

PACKAGE = "adain_ext"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on `device` (a torch.device; MemAvailable on Linux for
    the CPU), None if unknown. The memory checks of `adain-ext bench` and the style commands."""
    if device.type == "cuda":
        try:
            import torch

            return torch.cuda.mem_get_info(device)[0]
        except Exception:  # noqa: BLE001
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def package_version() -> str:
    """The version pyproject.toml declares (its one definition).

    In a source checkout pyproject.toml sits beside the package and is read directly: installed
    metadata found there may be stale (an egg-info left by an older build). Elsewhere the installed
    distribution's metadata carries the same string.
    """
    pyproject = os.path.join(os.path.dirname(PACKAGE_DIR), "pyproject.toml")
    try:
        with open(pyproject) as f:
            text = f.read()
    except OSError:
        text = ""
    # Only a [project] table naming this package counts (a stray pyproject.toml in site-packages
    # belongs to someone else). A regex rather than tomllib: Python 3.10 has no tomllib.
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if project and re.search(rf'^name\s*=\s*"{PACKAGE}"', project.group(1), re.M):
        version = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
        if version:
            return version.group(1)
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _extension_file() -> str:
    import adain_ext._C as compiled

    return getattr(compiled, "__file__", "?")


def build_config() -> dict:
    """What setup.py resolved when it built adain_ext._C (it writes adain_ext/_build_config.py);
    empty when the package was not built by this setup.py. Read from beside the loaded _C (the
    record of the build that made it), or from the package when _C did not load."""
    import importlib.util

    from adain_ext import _extension

    if _extension.HAS_CPP:
        path = os.path.join(os.path.dirname(_extension_file()), "_build_config.py")
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("adain_ext._build_config", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return dict(module.CONFIG)
        return {}  # a _C built some other way: no record that belongs to it
    try:
        from adain_ext._build_config import CONFIG
    except ImportError:
        return {}
    return dict(CONFIG)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return None


def _build_isa_runs_here(cxx_flags: str) -> str:
    """Whether this CPU has every instruction set the build's -m flags asked for."""
    needed = {flag[2:].replace("-", "_") for flag in cxx_flags.split() if flag.startswith("-m")}
    if not needed:
        return "yes (no ISA flags)"
    have = _cpu_flags()
    if have is None:
        return "unknown (no /proc/cpuinfo)"
    missing = sorted(needed - have)
    return f"NO: this CPU lacks {', '.join(missing)}" if missing else "yes"


def _archs_cover(archs: str, capability: tuple[int, int]) -> str:
    """Whether kernels built for TORCH_CUDA_ARCH_LIST `archs` run on a GPU of `capability`: an exact
    machine-code arch of the same major version and no newer minor, or PTX of an older arch."""
    major, minor = capability
    for arch in re.split(r"[;\s]+", archs.strip()):
        match = re.fullmatch(r"(\d+)\.(\d+)a?(\+PTX)?", arch)
        if not match:
            continue
        a_major, a_minor, ptx = int(match.group(1)), int(match.group(2)), match.group(3)
        if a_major == major and a_minor <= minor:
            return f"yes (sm_{a_major}{a_minor} machine code)"
        if ptx and (a_major, a_minor) <= capability:
            return f"yes (PTX of {a_major}.{a_minor}, JIT-compiled at first use)"
    return f"NO: built for {archs}, this GPU is {major}.{minor}"


def _probe(backend: str, device: str) -> tuple[bool, str]:
    """Runs adain on a tiny input with this backend and compares it with the float64 reference."""
    import torch

    import adain_ext

    content = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    style = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(1)) * 2 + 1
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            out = adain_ext.adain(content.to(device), style.to(device), backend=backend).cpu()
    except Exception as error:  # the probe reports why a backend cannot run; it must not stop
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return False, f"{type(error).__name__}: {first_line[:160]}"
    error = (out.double() - adain_ext.reference.adain(content.double(), style.double())).abs().max()
    if not error <= 1e-4:
        return False, f"ran but disagrees with the reference (max abs error {error.item():.2e})"
    return True, "ran and matches the reference"


def backend_support(device: str) -> dict:
    """{"auto": the backend "auto" resolves to, backend: {"usable": bool, "why": str}, ...}."""
    import torch

    import adain_ext

    if device == "cuda" and not torch.cuda.is_available():
        why = "no CUDA device here (torch.cuda.is_available() is False)"
        return {"auto": None, **{b: {"usable": False, "why": why} for b in adain_ext.BACKENDS
                                 if b != "auto"}}
    found = {"auto": adain_ext.resolve_backend("auto", torch.device(device))}
    for backend in adain_ext.BACKENDS:
        if backend != "auto":
            usable, why = _probe(backend, device)
            found[backend] = {"usable": usable, "why": why}
    if device == "cpu" and not found.get("triton", {}).get("usable", True):
        found["triton"]["why"] += " (on CPU Triton runs only in its interpreter: TRITON_INTERPRET=1)"
    return found


def _version_of(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    """Every fact the report shows, as plain data (JSON-serialisable)."""
    import torch

    from adain_ext import _extension

    config = build_config()
    cuda_devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            capability = torch.cuda.get_device_capability(index)
            archs = config.get("CUDA archs")
            cuda_devices.append({
                "index": index, "name": torch.cuda.get_device_name(index),
                "capability": f"{capability[0]}.{capability[1]}",
                "adain_ext kernels run on it": (_archs_cover(archs, capability) if archs
                                                else "no CUDA kernels built"),
            })
    return {
        "adain_ext": {
            "version": package_version(),
            "location": PACKAGE_DIR,
            # The file, not just "loaded": with another checkout's editable install on the path,
            # _C and the build record can come from there rather than from `location`.
            "compiled extension": (f"loaded from {_extension_file()}" if _extension.HAS_CPP
                                   else f"NOT loaded: {_extension.IMPORT_ERROR}"),
            "kernels registered for": sorted(_extension.KERNEL_DEVICE_TYPES),
            "build": config or "unknown (adain_ext/_build_config.py missing: not built by setup.py)",
            "build ISA runs on this CPU": _build_isa_runs_here(config.get("cxx flags", "")),
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torch CUDA": torch.version.cuda,
            "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "triton": _version_of("triton"),
            "numpy": _version_of("numpy"),
        },
        "platform": {
            "os": platform.platform(),
            "cpu": _cpu_model(),
            "cpu threads torch uses": torch.get_num_threads(),
            "torch CPU capability": torch.backends.cpu.get_cpu_capability(),
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        },
        "cuda": {
            "available": torch.cuda.is_available(),
            "archs torch was built for": torch.cuda.get_arch_list(),
            "devices": cuda_devices,
        },
        "backends": {device: backend_support(device) for device in ("cpu", "cuda")},
    }


def format_report(info: dict) -> str:
    """The report as aligned `key: value` lines under one heading per section."""
    lines = []

    def section(title: str, items: dict, indent: str = ""):
        lines.append(f"{indent}{title}")
        width = max((len(k) for k in items), default=0)
        for key, value in items.items():
            if isinstance(value, dict):
                section(f"{key}:", value, indent + "  ")
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for item in value:
                    section(f"{key} {item.get('index', '')}:", item, indent + "  ")
            else:
                shown = ", ".join(map(str, value)) if isinstance(value, list) else value
                lines.append(f"{indent}  {key:<{width}}  {'-' if shown in (None, '') else shown}")

    for title in ("adain_ext", "versions", "platform", "cuda"):
        section(f"{title}:", info[title])
        lines.append("")
    lines.append("backends (usable per device; probed on a 2x3x5x4 input):")
    for device, support in info["backends"].items():
        auto = support["auto"]
        lines.append(f"  {device}: \"auto\" resolves to {auto!r}" if auto
                     else f"  {device}: no device")
        for backend, state in support.items():
            if backend != "auto":
                lines.append(f"    {backend:<10} {'yes' if state['usable'] else 'no '}  {state['why']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="adain-ext env", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=1, default=str) if args.json else format_report(info))
    return 0


if __name__ == "__main__":
    from adain_ext.cli import stdout_closed_quietly

    with stdout_closed_quietly():
        status = main()
        sys.stdout.flush()
        sys.exit(status)
    sys.exit(128 + 13)
