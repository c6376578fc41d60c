"""The sampling benchmarks run end to end at test size (``--smoke``), so they cannot rot."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow  # two `accelerate launch` DeepSpeed worker processes (~15-20 s of start-up each)
def test_gpu_check_smoke(tmp_path, capsys):
    """The GPU check's code paths on CPU: training step (plain, ZeRO-2, ZeRO-3 through accelerate
    launch with the recipes' configs), live vs fixed sampling, fast sampling; one JSON."""
    output = tmp_path / "gpu_check.json"
    assert _load("gpu_check").main(["--smoke", "--output", str(output)]) == 0
    import json

    figures = json.loads(output.read_text())
    for name in ("train", "zero2", "zero3"):
        assert figures[name]["tokens_per_s"] > 0 and figures[name]["steps"] == 2
    assert figures["zero2"]["zero_stage"] == 2 and figures["zero3"]["zero_stage"] == 3
    assert "DEEPSPEED" in figures["zero3"]["distributed_type"]
    assert figures["sampling_live_vs_fixed"]["outputs_identical"] is True
    assert figures["fast_sampling"]["forward_pass_ratio"] > 0
    assert "fast sampling: forward-pass ratio" in capsys.readouterr().out
