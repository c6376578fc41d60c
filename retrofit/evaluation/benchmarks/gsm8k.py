"""GSM8K (``task: gsm8k``): zero-shot reasoning with a ``\\boxed{}`` answer, exact numeric match.

Tasks come from a local ``test.jsonl`` (``--data``) or the Hub (``openai/gsm8k``, config ``main``);
task ids are ``gsm8k/<split>/<0-based index>``. Scoring extracts the answer strictly and flexibly
(:func:`retrofit.evaluation.gsm8k.score_gsm8k`); the headline metric is strict accuracy with a
Wilson interval. The reference length is the gold answer in the training target format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrofit.evaluation.benchmarks.base import Benchmark, EvalTask, read_jsonl
from retrofit.evaluation.gsm8k import (
    parse_gold,
    score_gsm8k,
)
from retrofit.evaluation.stats import wilson_interval
from retrofit.prompts import GSM8KTemplate, gsm8k_template


class GSM8KBenchmark(Benchmark):
    """GSM8K test problems (see the module docstring)."""

    task = "gsm8k"

    def load(self, data: str | Path | None) -> list[EvalTask]:
        return load_tasks(self.spec, data)

    def reference_text(self, task: EvalTask) -> str:
        return template_of(self.spec).target(task.reference)

    def score(self, tasks: Sequence[EvalTask], texts: Sequence[str]) -> list[dict[str, Any]]:
        results = []
        for task, text in zip(tasks, texts):
            score = score_gsm8k(text, task.gold)
            record = score.to_dict()
            record.update(extracted=score.strict.text, gold=str(task.gold),
                          verdict="correct" if score.strict_correct else "wrong",
                          correct=score.strict_correct)
            results.append(record)
        return results

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        total = len(records)
        for mode in ("strict", "flexible"):
            correct = sum(bool(r[f"{mode}_correct"]) for r in records)
            summary[f"{mode}_accuracy"] = correct / total
            summary[f"{mode}_interval_95"] = list(wilson_interval(correct, total))
            summary[f"{mode}_rules"] = dict(Counter(str(r[f"{mode}_rule"]) for r in records))
        summary["metric"], summary["value"] = "strict_accuracy", summary["strict_accuracy"]
        summary["interval_95"], summary["interval_method"] = summary["strict_interval_95"], "wilson"
        return summary


def _records(spec: Any, data: str | Path | None) -> list[dict[str, Any]]:
    """Raw GSM8K records: ``data`` (a JSONL file or a folder holding ``data.file``), else the Hub."""
    if data is not None:
        path = Path(data)
        if path.is_dir():
            path = path / spec.data.get("file", "test.jsonl")
        if not path.is_file():
            raise FileNotFoundError(f"--data {data}: no GSM8K file there (expected a JSONL with "
                                    "`question` and `answer`, or a folder holding test.jsonl)")
        return read_jsonl(path)
    hub = spec.data.get("hub", "openai/gsm8k")
    try:
        from datasets import load_dataset

        dataset = load_dataset(hub, spec.data.get("config", "main"), split=spec.data.get("split", "test"))
    except Exception as error:
        raise RuntimeError(
            f"could not load {hub} from the Hugging Face Hub ({type(error).__name__}: {error}). "
            "Offline? Pass a local copy with `--data PATH` (e.g. --data ../shared/data/gsm8k/test.jsonl)."
        ) from error
    return [dict(row) for row in dataset]


def template_of(spec: Any) -> GSM8KTemplate:
    """The spec's GSM8K template (``prompt.template``, default ``gsm8k_zero_shot``): the recipe
    that trained the model must name the same (``data.gsm8k_template``)."""
    return gsm8k_template(spec.prompt.get("template", "gsm8k_zero_shot"))


def load_tasks(spec: Any, data: str | Path | None) -> list[EvalTask]:
    """The GSM8K tasks of a spec, in file order (task ids ``gsm8k/<split>/<index>``)."""
    tasks = []
    template = template_of(spec)
    split = spec.data.get("split", "test")
    for index, record in enumerate(_records(spec, data)):
        if "question" not in record or "answer" not in record:
            raise ValueError(f"GSM8K record {index} lacks `question`/`answer`: {sorted(record)}")
        tasks.append(EvalTask(
            task_id=f"gsm8k/{split}/{index}", kind="chat",
            prompt=template.prompt(record["question"]), reference=record["answer"],
            gold=parse_gold(record["answer"]), answer_prefix=template.answer_prefix,
        ))  # fmt: skip
    return tasks
