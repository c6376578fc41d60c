"""Paired comparison of two evaluation runs on the same samples (``retrofit compare``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from retrofit.evaluation.results import load_samples

__all__ = ["compare_results"]


# between two compared runs (that is often the point), the file it was read from too.
_BENCHMARK_FIELDS = ("name", "task", "data", "prompt", "extraction", "metric", "sandbox")


def _load_benchmark(result: str | Path) -> dict[str, Any] | None:
    """The spec a result was produced with (from run.json or summary.json); None if not recorded."""
    path = Path(result)
    if not path.is_dir():
        if path.name != "samples.jsonl":
            return None  # a loose samples file: nothing records its spec
        path = path.parent
    for name in ("run.json", "summary.json"):
        if (path / name).is_file():
            spec = json.loads((path / name).read_text(encoding="utf-8")).get("spec")
            if isinstance(spec, dict):
                return spec
    return None


def _check_same_benchmark(result_a: str | Path, result_b: str | Path) -> str | None:
    """Refuse to compare runs of different benchmarks or spec definitions; the benchmark name."""
    spec_a, spec_b = _load_benchmark(result_a), _load_benchmark(result_b)
    for result, spec in ((result_a, spec_a), (result_b, spec_b)):
        if spec is not None and spec.get("task") == "lengths":
            raise ValueError(f"{result} is a lengths run ({spec.get('name')!r}): its samples have no "
                             "correctness to pair; compare the wasserstein_1 of the summary.json files")
    if spec_a is None or spec_b is None:
        return (spec_a or spec_b or {}).get("name")
    changed = [key for key in _BENCHMARK_FIELDS if spec_a.get(key) != spec_b.get(key)]
    if changed:
        raise ValueError(
            f"{result_a} ({spec_a.get('name')!r}) and {result_b} ({spec_b.get('name')!r}) were run "
            f"with different benchmark specs (they differ in {changed}): a paired comparison needs "
            "the same benchmark, data, prompt, extraction and metric")
    return spec_a.get("name")


def compare_results(result_a: str | Path, result_b: str | Path) -> dict[str, Any]:
    """Paired comparison of two runs on the same samples: exact McNemar test + per-sample diff.

    Raises ValueError when the runs' recorded specs (run.json / summary.json) define different
    benchmarks (sampler settings may differ), when either is a lengths run (no per-sample
    correctness), or when they share no samples. Loose samples files record no spec: not checked.
    """
    from retrofit.evaluation.stats import mcnemar_exact

    benchmark = _check_same_benchmark(result_a, result_b)
    samples_a = {r["key"]: r for r in load_samples(result_a)}
    samples_b = {r["key"]: r for r in load_samples(result_b)}
    common = [key for key in samples_a if key in samples_b]
    if not common:
        raise ValueError(f"{result_a} and {result_b} share no samples: were they run on the same benchmark?")
    table = Counter()
    diff = []
    for key in common:
        a, b = bool(samples_a[key].get("correct")), bool(samples_b[key].get("correct"))
        table[(a, b)] += 1
        if a != b:
            diff.append({"key": key, "task_id": samples_a[key]["task_id"],
                         "a_correct": a, "b_correct": b,
                         "a_verdict": samples_a[key].get("verdict"), "b_verdict": samples_b[key].get("verdict"),
                         "a_extracted": samples_a[key].get("extracted"),
                         "b_extracted": samples_b[key].get("extracted")})
    total = len(common)
    only_a, only_b = table[(True, False)], table[(False, True)]
    accuracy_a = (table[(True, True)] + only_a) / total
    accuracy_b = (table[(True, True)] + only_b) / total
    return {
        "a": str(result_a), "b": str(result_b), "benchmark": benchmark, "num_pairs": total,
        "only_in_a": len(samples_a) - total, "only_in_b": len(samples_b) - total,
        "both_correct": table[(True, True)], "a_only_correct": only_a, "b_only_correct": only_b,
        "both_wrong": table[(False, False)], "accuracy_a": accuracy_a, "accuracy_b": accuracy_b,
        "difference_b_minus_a": accuracy_b - accuracy_a,
        "mcnemar_exact_p": mcnemar_exact(only_a, only_b), "diff": diff,
    }

