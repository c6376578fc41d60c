"""Your own benchmark (``task: jsonl``): a local task file and a ``module:function`` verdict.

Tasks are the lines of a JSONL file (``data.file`` relative to the spec, or ``--data``); record
keys default to task_id / prompt / prefix / suffix / reference (``data.fields`` renames them). A
record with a ``prefix`` is an infilling task. ``metric.check`` is imported as
``function(task, completion) -> bool``; the metric is accuracy with a Wilson interval.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from retrofit.evaluation.benchmarks.base import Benchmark, EvalTask, numbered_jsonl
from retrofit.evaluation.specs import JSONL_FIELDS
from retrofit.evaluation.stats import wilson_interval


class JsonlBenchmark(Benchmark):
    """A local task file scored by an importable check (see the module docstring)."""

    task = "jsonl"

    def __init__(self, spec: Any, *, workers: int | None = None) -> None:
        super().__init__(spec, workers=workers)
        self.check: Callable[[EvalTask, str], bool] | None = None

    def prepare(self) -> None:
        """Import ``metric.check`` (before any generation: a typo fails the run up front)."""
        if self.check is None:
            self.check = self._load_check()

    def _load_check(self) -> Callable[[EvalTask, str], bool]:
        spec = self.spec
        module_name, _, function_name = spec.metric["check"].partition(":")
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"spec {spec.name!r}: metric.check {spec.metric['check']!r} cannot be "
                             f"imported ({type(error).__name__}: {error})") from error
        if not callable(function):
            raise TypeError(f"spec {spec.name!r}: metric.check {spec.metric['check']!r} is not callable")
        return function

    def _path(self, data: str | Path | None) -> Path:
        spec, name = self.spec, self.spec.data.get("file")
        if data is not None:
            path = Path(data)
            if path.is_dir():
                if name is None:
                    raise FileNotFoundError(f"--data {data} is a folder but spec {spec.name!r} names "
                                            "no data.file to look for in it")
                path = path / name
        elif name is not None:
            path = Path(name)
            if not path.is_absolute() and spec.path is not None:
                path = Path(spec.path).parent / path
        else:
            raise ValueError(f"spec {spec.name!r} names no data.file: pass --data PATH (a JSONL file)")
        if not path.is_file():
            raise FileNotFoundError(f"spec {spec.name!r}: task file {path} does not exist (--data PATH)")
        return path

    def load(self, data: str | Path | None) -> list[EvalTask]:
        path = self._path(data)
        keys = {role: role for role in JSONL_FIELDS} | dict(self.spec.data.get("fields", {}))
        tasks, seen = [], set()
        for line, record in numbered_jsonl(path):
            task = _task_of(record, keys, f"{path}:{line}")
            if task.task_id in seen:
                raise ValueError(f"{path}:{line}: task id {task.task_id!r} appears twice")
            seen.add(task.task_id)
            tasks.append(task)
        return tasks

    def score(self, tasks: Sequence[EvalTask], texts: Sequence[str]) -> list[dict[str, Any]]:
        self.prepare()
        verdicts = [bool(self.check(task, text)) for task, text in zip(tasks, texts)]
        return [{"extracted": text, "verdict": "correct" if ok else "wrong", "correct": ok}
                for text, ok in zip(texts, verdicts)]

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        correct = sum(bool(r["correct"]) for r in records)
        return {"accuracy": correct / len(records),
                "interval_95": list(wilson_interval(correct, len(records))),
                "interval_method": "wilson", "metric": "accuracy", "value": correct / len(records)}


def _task_of(record: dict[str, Any], keys: dict[str, str], where: str) -> EvalTask:
    """One task from one record (``where``: ``file:line`` for errors)."""
    task_id = record.get(keys["task_id"])
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"{where}: needs a string `{keys['task_id']}` (the task id)")
    texts = {role: record.get(keys[role]) for role in ("prompt", "prefix", "suffix", "reference")}
    for role, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: `{keys[role]}` must be a string, got {value!r}")
    infill = texts["prefix"] is not None
    if infill and texts["suffix"] is None:
        raise ValueError(f"{where}: an infilling task needs `{keys['suffix']}` too")
    if not infill and texts["prompt"] is None:
        raise ValueError(f"{where}: needs `{keys['prompt']}` (or `{keys['prefix']}` and "
                         f"`{keys['suffix']}` for infilling)")
    return EvalTask(task_id=task_id, kind="infill" if infill else "chat", prompt=texts["prompt"],
                    prefix=texts["prefix"], suffix=texts["suffix"], reference=texts["reference"] or "")
