"""HumanEval infilling (``task: humaneval_infill``): programs executed in the sandbox, pass@k.

Tasks: the single-line, multi-line or random-span variant (``data.variant``) of
openai/human-eval-infilling (a local copy with ``--data``, else the pinned upstream file). A
completion is normalised for its variant, placed between prefix and suffix with the tests, and run
in :class:`retrofit.evaluation.sandbox.Sandbox`. pass@1 (Wilson interval with one sample per task,
a bootstrap over tasks otherwise), pass@k for the spec's ``metric.k``, failure buckets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrofit.evaluation.benchmarks.base import Benchmark, EvalTask
from retrofit.evaluation.humaneval import load_infilling_tasks, score_completions
from retrofit.evaluation.stats import bootstrap_interval, mean_pass_at_k, wilson_interval


class HumanEvalInfillBenchmark(Benchmark):
    """HumanEval infilling (see the module docstring)."""

    task = "humaneval_infill"

    def __init__(self, spec: Any, *, workers: int | None = None) -> None:
        super().__init__(spec, workers=workers)
        self._sandbox: Any = None

    def prepare(self) -> None:
        """Start the shared sandbox (the spec's ``sandbox:`` limits) before any generation, so an
        unusable isolation mechanism fails the run up front."""
        if self._sandbox is None:
            from retrofit.evaluation.sandbox import Sandbox, SandboxLimits

            allowed = set(SandboxLimits.__dataclass_fields__)
            unknown = sorted(set(self.spec.sandbox) - allowed)
            if unknown:
                raise ValueError(f"spec {self.spec.name!r}: unknown sandbox keys {unknown}; "
                                 f"allowed: {sorted(allowed)}")
            self._sandbox = Sandbox(SandboxLimits(**self.spec.sandbox), workers=self.workers)

    @property
    def sandbox(self) -> Any:
        """The shared sandbox (started by :meth:`prepare` on first use)."""
        self.prepare()
        return self._sandbox

    def load(self, data: str | Path | None) -> list[EvalTask]:
        return load_tasks(self.spec, data)

    def score(self, tasks: Sequence[EvalTask], texts: Sequence[str]) -> list[dict[str, Any]]:
        task_map = {task.task_id: task.infill for task in tasks}
        verdicts = score_completions(task_map, [(t.task_id, x) for t, x in zip(tasks, texts)],
                                     self.spec.data["variant"], self.sandbox)
        results = []
        for verdict in verdicts:
            record = verdict.to_dict()
            record.pop("task_id")
            record.pop("completion")
            record["extracted"] = record.pop("normalized_completion")
            record["correct"] = record["passed"]
            results.append(record)
        return results

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        per_task: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            per_task.setdefault(record["task_id"], []).append(record)
        samples = [len(group) for group in per_task.values()]
        correct = [sum(bool(r["passed"]) for r in group) for group in per_task.values()]
        correct_raw = [sum(bool(r["raw_passed"]) for r in group) for group in per_task.values()]
        summary: dict[str, Any] = {}
        for k in sorted(set(self.spec.metric.get("k", [1])) | {1}):  # pass@1 is the headline
            if k <= min(samples):
                summary[f"pass@{k}"] = mean_pass_at_k(samples, correct, k)
        summary["raw_pass@1"] = mean_pass_at_k(samples, correct_raw, 1)
        if all(n == 1 for n in samples):
            summary["interval_95"] = list(wilson_interval(sum(correct), len(samples)))
            summary["interval_method"] = "wilson"
        else:
            per_task_pass = [c / n for c, n in zip(correct, samples)]
            summary["interval_95"] = list(bootstrap_interval(per_task_pass))
            summary["interval_method"] = "bootstrap over tasks"
        summary["failure_buckets"] = dict(Counter(r["failure_bucket"] for r in records))
        summary["verdicts"] = dict(Counter(r["verdict"] for r in records).most_common(20))
        summary["metric"], summary["value"] = "pass@1", summary["pass@1"]
        return summary

    def isolation(self) -> dict[str, Any] | None:
        return self.sandbox.isolation.describe()

    def close(self) -> None:
        if self._sandbox is not None and hasattr(self._sandbox, "close"):
            self._sandbox.close()


def load_tasks(spec: Any, data: str | Path | None) -> list[EvalTask]:
    """The tasks of the spec's ``data.variant`` (``data``: a local copy, else the upstream file)."""
    instruction = spec.instruction()  # a per-kind instruction is set by the generator
    return [EvalTask(task_id=task.task_id, kind="infill", prompt=instruction, prefix=task.prompt,
                     suffix=task.suffix, reference=task.canonical_solution, infill=task)
            for task in load_infilling_tasks(spec.data.get("variant"), data)]
