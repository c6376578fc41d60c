"""Benchmark kinds behind a registry: ``task:`` of a spec -> its :class:`Benchmark` class.

Adding a kind is adding a module with a ``Benchmark`` subclass and a line here.
"""

from __future__ import annotations

from retrofit.evaluation.benchmarks.base import Benchmark, EvalTask, Generation, read_jsonl
from retrofit.evaluation.benchmarks.gsm8k import GSM8KBenchmark
from retrofit.evaluation.benchmarks.humaneval_infill import HumanEvalInfillBenchmark
from retrofit.evaluation.benchmarks.jsonl import JsonlBenchmark
from retrofit.evaluation.benchmarks.lengths import LengthsBenchmark
from retrofit.evaluation.specs import EvalSpec

REGISTRY: dict[str, type[Benchmark]] = {
    "gsm8k": GSM8KBenchmark,
    "humaneval_infill": HumanEvalInfillBenchmark,
    "lengths": LengthsBenchmark,
    "jsonl": JsonlBenchmark,
}

__all__ = ["REGISTRY", "Benchmark", "EvalTask", "Generation", "benchmark_for", "read_jsonl"]


def benchmark_for(spec: EvalSpec, *, workers: int | None = None) -> Benchmark:
    """The benchmark of ``spec.task``, ready to load and score."""
    return REGISTRY[spec.task](spec, workers=workers)
