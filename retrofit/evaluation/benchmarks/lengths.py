"""Length statistics (``task: lengths``): another benchmark's data and prompts, no verdicts.

``data.source`` names the task (gsm8k or humaneval_infill) whose tasks, prompts and reference
texts are reused; the metric is the Wasserstein-1 distance between generated and reference
lengths (computed by the runner for every benchmark, headline here).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrofit.evaluation.benchmarks import gsm8k, humaneval_infill
from retrofit.evaluation.benchmarks.base import Benchmark, EvalTask


class LengthsBenchmark(Benchmark):
    """Lengths of another benchmark's answers (see the module docstring)."""

    task = "lengths"

    def load(self, data: str | Path | None) -> list[EvalTask]:
        if self.spec.source_task == "gsm8k":
            return gsm8k.load_tasks(self.spec, data)
        return humaneval_infill.load_tasks(self.spec, data)

    def reference_text(self, task: EvalTask) -> str:
        if self.spec.source_task == "gsm8k":
            return gsm8k.template_of(self.spec).target(task.reference)
        return task.reference

    def score(self, tasks: Sequence[EvalTask], texts: Sequence[str]) -> list[dict[str, Any]]:
        return [{"extracted": None, "verdict": "n/a", "correct": None} for _ in tasks]

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {}  # the runner's length report holds the headline (wasserstein_1)
