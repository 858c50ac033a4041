"""`adain-ext env`, `adain-ext --version` and adain_ext.__version__."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import adain_ext
from adain_ext import env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyproject_version() -> str:
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_version_is_the_one_in_pyproject():
    assert adain_ext.__version__ == pyproject_version()


def test_version_follows_the_checkout_not_another_project(tmp_path, monkeypatch):
    (tmp_path / "adain_ext").mkdir()
    monkeypatch.setattr(env, "PACKAGE_DIR", str(tmp_path / "adain_ext"))
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\n\n[project]\nname = "adain_ext"\nversion = "9.8.7"\n')
    assert env.package_version() == "9.8.7"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "9.8.7"\n')
    assert env.package_version() != "9.8.7"  # the metadata, or 0+unknown


@pytest.mark.parametrize("archs, capability, runs", [
    ("8.0;9.0", (9, 0), "yes (sm_90"),
    ("8.0;9.0", (8, 6), "yes (sm_80"),   # same major, older minor: machine code runs
    ("8.6", (8, 0), "NO"),              # newer minor does not run on an older GPU
    ("8.0", (9, 0), "NO"),
    ("8.0+PTX", (9, 0), "yes (PTX"),
    ("9.0a", (9, 0), "yes (sm_90"),
])
def test_arch_coverage(archs, capability, runs):
    assert env._archs_cover(archs, capability).startswith(runs)


def test_backend_probe_reports_what_runs_and_catches_wrong_results(monkeypatch):
    support = env.backend_support("cpu")
    assert support["auto"] == adain_ext.resolve_backend("auto", torch.device("cpu"))
    assert support["reference"]["usable"] is True
    assert support["cpp"]["usable"] is adain_ext._extension.has_kernel("cpu")
    if not torch.cuda.is_available():
        assert not any(v["usable"] for k, v in env.backend_support("cuda").items() if k != "auto")

    real_adain = adain_ext.adain
    monkeypatch.setattr(adain_ext, "adain", lambda c, s, **kw: real_adain(c, s, **kw) * 1.001)
    wrong = env.backend_support("cpu")["reference"]
    assert wrong["usable"] is False and "disagrees" in wrong["why"]


def test_env_command_prints_the_report_and_json():
    text = subprocess.run([sys.executable, "-m", "adain_ext", "env"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    auto = adain_ext.resolve_backend("auto", torch.device("cpu"))
    for expected in (rf"\n  version +{re.escape(adain_ext.__version__)}\n",
                     rf"\n  torch +{re.escape(torch.__version__)}\n",
                     rf"\n  cpu: \"auto\" resolves to '{auto}'\n", r"archs torch was built for"):
        assert re.search(expected, text.stdout), (expected, text.stdout)
    as_json = subprocess.run([sys.executable, "-m", "adain_ext", "env", "--json"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    info = json.loads(as_json.stdout)
    assert info["adain_ext"]["version"] == adain_ext.__version__
    assert info["backends"]["cpu"]["auto"] == auto
    assert info["versions"]["python"] == sys.version.split()[0]


def test_version_option():
    result = subprocess.run([sys.executable, "-m", "adain_ext", "--version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    assert result.stdout.startswith(f"adain-ext {pyproject_version()} (torch {torch.__version__})")
