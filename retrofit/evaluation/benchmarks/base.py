"""What every benchmark kind shares: the task and generation records, and the protocol.

A benchmark kind (``task:`` of a spec) is one class with one method per stage, the way
lm-evaluation-harness keeps tasks: :meth:`Benchmark.load` (data -> tasks),
:meth:`Benchmark.reference_text` (the gold text whose length the generated lengths are compared
with), :meth:`Benchmark.score` (texts -> per-sample verdicts) and :meth:`Benchmark.summarize`
(per-sample records -> the metric with its interval). The runner (``retrofit.evaluation.runner``)
plans, generates, scores, merges and summarises any of them alike.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

from retrofit.evaluation.specs import EvalSpec

__all__ = ["Benchmark", "EvalTask", "Generation", "numbered_jsonl", "read_jsonl"]


@dataclass
class EvalTask:
    """One benchmark item, model-agnostic.

    kind "chat": `prompt` is the user message. kind "infill": `prefix`/`suffix` around the hole,
    `prompt` an optional instruction. `reference` is the gold text (GSM8K answer field, canonical
    middle), `gold` the GSM8K gold value, `infill` the HumanEval task. `sample_index` is which
    sample of the task a generate_fn is asked for (0 .. num_samples - 1; the runner sets it), so a
    generator can draw every sample from its own random stream (``sample_stream_id``).
    `answer_prefix` opens the answer as part of the prompt (the research GSM8K template).
    """

    task_id: str
    kind: str
    prompt: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    reference: str = ""
    gold: Fraction | None = None
    infill: Any = None
    sample_index: int = 0
    answer_prefix: str = ""


@dataclass
class Generation:
    """A generated text; num_tokens is the answer length in tokens when the generator knows it.

    ``extra`` holds generator facts recorded with the sample (e.g. FlexMDM steps); ``forward_passes``
    and ``seconds`` are its cost (None when the text came from a completions file)."""

    text: str
    num_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    forward_passes: int | None = None
    seconds: float | None = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (``.gz`` too); a line that is not a JSON object is an error naming
    ``file:line``."""
    return [record for _, record in numbered_jsonl(path)]


def numbered_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every non-blank line of a JSONL file (``.gz`` too); a line
    that is not a JSON object is an error naming ``file:line``."""
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(  # noqa: TRY004 - bad file content, not a bad argument
                    f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append((number, record))
    return records


class Benchmark:
    """A benchmark kind: subclasses set ``task`` and implement the stages."""

    task: ClassVar[str] = ""

    def __init__(self, spec: EvalSpec, *, workers: int | None = None) -> None:
        self.spec = spec
        self.workers = workers

    def load(self, data: str | Path | None) -> list[EvalTask]:
        """All tasks, in benchmark order (``data``: a local file or folder, else the default)."""
        raise NotImplementedError

    def reference_text(self, task: EvalTask) -> str:
        """The gold text whose length a generated answer's length is compared with."""
        return task.reference

    def score(self, tasks: Sequence[EvalTask], texts: Sequence[str]) -> list[dict[str, Any]]:
        """One result dict per (task, text): at least ``extracted``, ``verdict``, ``correct``."""
        raise NotImplementedError

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The metric fields of the summary (``metric``, ``value``, ``interval_95``, ...)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Start what scoring needs (the runner calls it before generating anything)."""

    def isolation(self) -> dict[str, Any] | None:
        """How generated programs are isolated (code benchmarks), for the summary."""
        return None

    def close(self) -> None:
        """Release what :meth:`score` holds (sandbox workers)."""
