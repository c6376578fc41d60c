"""The sampling benchmarks run end to end at test size (``--smoke``), so they cannot rot."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fast_sampling_smoke(tmp_path, capsys):
    """Builds the demo's FlexMDM at smoke size through the demo's stages (a few optimizer steps),
    samples every mode and prints the ratio line last."""
    benchmark = _load("fast_sampling")
    assert benchmark.main(["--smoke", "--cache-dir", str(tmp_path), "--threads", "1",
                           "--json", str(tmp_path / "figures.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"forward-pass ratio \d+\.\d\dx, wall-time ratio \d+\.\d\dx", lines[-1])
    figures = (tmp_path / "figures.json").read_text()
    for mode in benchmark.MODES:
        assert f'"{mode}"' in figures
    assert any(line.startswith("exact ") for line in lines)


def test_sampling_benchmark_exact_rates_smoke(capsys):
    arguments = ["--exact-rates", "--samples", "200", "--seeds", "1", "--exact-steps", "16"]
    assert _load("sampling").main(arguments) == 0
    out = capsys.readouterr().out
    for draw in ("binomial", "poisson"):
        assert re.search(rf"^{draw}\s+16\s", out, re.MULTILINE), out

