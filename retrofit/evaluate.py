"""`retrofit eval` / `retrofit compare`: run a benchmark spec on a checkpoint (or on completions).

    retrofit eval gsm8k --model runs/gsm8k-flexmdm --output results/gsm8k-flexmdm
    retrofit eval humaneval-infill-single-line --model user/flexmdm-llada --limit 100
    retrofit eval humaneval-infill-single-line --completions samples.jsonl --data ../shared/data/humaneval_infilling/
    accelerate launch -m retrofit.evaluate gsm8k --model DIR --output results/gsm8k   # sharded
    retrofit compare results/gsm8k-mdm results/gsm8k-flexmdm

Task ids (the `task_id` of a completions file): HumanEval's own (`SingleLineInfilling/HumanEval/0/L0`),
and `gsm8k/test/<0-based line of test.jsonl>` for GSM8K.

A spec (`eval/*.yaml`, see `retrofit.evaluation.specs`) names the data, the prompt, the sampler
settings for each checkpoint kind, the extraction and the metric. The runner

1. loads the tasks (`--data PATH` for a local copy; otherwise the Hub / upstream GitHub file),
   keeps the first `--limit N`, and under `accelerate launch` (or any launcher that sets RANK and
   WORLD_SIZE) takes every WORLD_SIZE-th task starting at RANK;
2. generates in batches with `generate_fn(tasks) -> texts` (a loaded checkpoint: FlexMDM insert +
   unmask, or the MDM baseline, per `retrofit_config.json`'s kind), or reads `--completions`;
3. scores each sample at once (GSM8K extraction; HumanEval programs in the sandbox) and appends one
   JSON line per sample to `samples.jsonl` (`samples.rank{R}-of-{W}.jsonl` when sharded), flushed as
   it goes. A rerun with the same `--output` skips every sample already written, so a killed run
   resumes where it stopped;
4. rank 0 waits until the samples on disk cover every sample of the run (no process group, hence
   none of gloo's exit crashes; no marker files that a killed earlier run could leave behind),
   merges them in task order into `samples.jsonl`, and writes `summary.json`: the metric with its
   95% interval, strict/flexible accuracy or pass@k, failure buckets, length statistics
   (Wasserstein-1 against the reference lengths, `lengths.png`), the settings and the model
   identity.

Every sample draws its randomness from its own stream, derived from its key (task id and sample
index, :func:`sample_stream_id`), so a sample's text depends on neither the batch size, its position
in a batch, nor the number of ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from retrofit.evaluation.specs import EvalSpec, load_spec

__all__ = [
    "EvalTask",
    "Generation",
    "ModelGenerator",
    "cli_main",
    "compare_cli_main",
    "compare_results",
    "load_completions",
    "load_tasks",
    "run_evaluation",
    "sample_stream_id",
    "summarize",
]


# ----------------------------------------------------------------------------- tasks
@dataclass
class EvalTask:
    """One benchmark item, model-agnostic.

    kind "chat": `prompt` is the user message. kind "infill": `prefix`/`suffix` around the hole,
    `prompt` an optional instruction. `reference` is the gold text (GSM8K answer field, canonical
    middle), `gold` the GSM8K gold value, `infill` the HumanEval task. `sample_index` is which
    sample of the task a generate_fn is asked for (0 .. num_samples - 1; the runner sets it), so a
    generator can draw every sample from its own random stream (:func:`sample_stream_id`).
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


@dataclass
class Generation:
    """A generated text; num_tokens is the answer length in tokens when the generator knows it."""

    text: str
    num_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


GenerateFn = Callable[[list[EvalTask]], Sequence["Generation | str"]]


def _sample_key(task_id: str, sample_index: int) -> str:
    """The key of one sample in samples.jsonl (and of its random stream)."""
    return f"{task_id}#{sample_index}"


def sample_stream_id(task_id: str, sample_index: int) -> int:
    """Random-stream id of one sample: a 62-bit int from sha256 of its key `task_id#sample_index`.

    Passed as the sampler's ``row_ids``, it makes a sample's randomness a function of (seed, task,
    sample index) alone: the same in every batch size, batch position and sharding, and different
    for every sample of a task.
    """
    digest = hashlib.sha256(_sample_key(task_id, sample_index).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _load_gsm8k_records(spec: EvalSpec, data: str | Path | None) -> list[dict[str, Any]]:
    if data is not None:
        path = Path(data)
        if path.is_dir():
            path = path / spec.data.get("file", "test.jsonl")
        if not path.is_file():
            raise FileNotFoundError(f"--data {data}: no GSM8K file there (expected a JSONL with "
                                    "`question` and `answer`, or a folder holding test.jsonl)")
        return _read_jsonl(path)
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


def _load_jsonl_tasks(spec: EvalSpec, data: str | Path | None) -> list[EvalTask]:
    """The tasks of a ``task: jsonl`` spec (see ``retrofit.evaluation.specs``), in file order."""
    from retrofit.evaluation.specs import JSONL_FIELDS

    name = spec.data.get("file")
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
    keys = {role: role for role in JSONL_FIELDS} | dict(spec.data.get("fields", {}))
    tasks, seen = [], set()
    for line, record in enumerate(_read_jsonl(path), start=1):
        task_id = record.get(keys["task_id"])
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"{path}:{line}: needs a string `{keys['task_id']}` (the task id)")
        if task_id in seen:
            raise ValueError(f"{path}:{line}: task id {task_id!r} appears twice")
        seen.add(task_id)
        texts = {role: record.get(keys[role]) for role in ("prompt", "prefix", "suffix", "reference")}
        for role, value in texts.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{path}:{line}: `{keys[role]}` must be a string, got {value!r}")
        infill = texts["prefix"] is not None
        if infill and texts["suffix"] is None:
            raise ValueError(f"{path}:{line}: an infilling task needs `{keys['suffix']}` too")
        if not infill and texts["prompt"] is None:
            raise ValueError(f"{path}:{line}: needs `{keys['prompt']}` (or `{keys['prefix']}` and "
                             f"`{keys['suffix']}` for infilling)")
        tasks.append(EvalTask(task_id=task_id, kind="infill" if infill else "chat",
                              prompt=texts["prompt"], prefix=texts["prefix"],
                              suffix=texts["suffix"], reference=texts["reference"] or ""))
    return tasks


def _load_check(spec: EvalSpec) -> Callable[[EvalTask, str], bool]:
    """The ``metric.check`` function of a jsonl spec, imported from ``module:function``."""
    import importlib

    module_name, _, function_name = spec.metric["check"].partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"spec {spec.name!r}: metric.check {spec.metric['check']!r} cannot be "
                         f"imported ({type(error).__name__}: {error})") from error
    if not callable(function):
        raise TypeError(f"spec {spec.name!r}: metric.check {spec.metric['check']!r} is not callable")
    return function


def load_tasks(spec: EvalSpec, data: str | Path | None = None) -> list[EvalTask]:
    """All tasks of a spec, in benchmark order."""
    from retrofit.evaluation.gsm8k import format_gsm8k_prompt, parse_gold

    source = spec.source_task
    if source == "jsonl":
        return _load_jsonl_tasks(spec, data)
    if source == "gsm8k":
        tasks = []
        for index, record in enumerate(_load_gsm8k_records(spec, data)):
            if "question" not in record or "answer" not in record:
                raise ValueError(f"GSM8K record {index} lacks `question`/`answer`: {sorted(record)}")
            tasks.append(EvalTask(
                task_id=f"gsm8k/{spec.data.get('split', 'test')}/{index}", kind="chat",
                prompt=format_gsm8k_prompt(record["question"]), reference=record["answer"],
                gold=parse_gold(record["answer"]),
            ))
        return tasks
    from retrofit.evaluation.humaneval import load_infilling_tasks

    variant = spec.data.get("variant")
    instruction = spec.prompt.get("instruction")
    return [EvalTask(task_id=task.task_id, kind="infill", prompt=instruction, prefix=task.prompt,
                     suffix=task.suffix, reference=task.canonical_solution, infill=task)
            for task in load_infilling_tasks(variant, data)]


def load_completions(path: str | Path) -> list[tuple[str, str]]:
    """(task_id, completion) pairs from a JSONL file, in file order (several per task allowed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--completions {path} does not exist")
    pairs = []
    for line_number, record in enumerate(_read_jsonl(path), start=1):
        if not isinstance(record.get("task_id"), str) or not isinstance(record.get("completion"), str):
            raise ValueError(f"{path}:{line_number}: each line needs string fields `task_id` and "  # noqa: TRY004 - bad file content
                             f"`completion`, got keys {sorted(record)}")
        pairs.append((record["task_id"], record["completion"]))
    return pairs


# ----------------------------------------------------------------------------- model generation
class ModelGenerator:
    """`generate_fn` for a checkpoint: its :class:`retrofit.pipeline.Pipeline` with a spec's sampler
    settings for the checkpoint's kind (FlexMDM insert + unmask, or the MDM baseline).

    Prompts are encoded exactly as in training (the checkpoint's recorded prompt layout; a spec's
    explicit ``prompt.chat_template`` / ``prompt.infill_markers`` override it). Each sample draws
    from the stream of its (task id, sample index). Lengths are answer tokens.
    """

    def __init__(self, model: str, spec: EvalSpec, *, revision: str | None = None,
                 tokenizer: str | None = None, device: str | None = None, dtype: str = "auto",
                 overrides: dict[str, Any] | None = None, seed: int = 0) -> None:
        from retrofit.pipeline import Pipeline, default_device_and_dtype

        self.model_id, self.revision = model, revision
        self.device, self.dtype = default_device_and_dtype(device, dtype)
        self.pipeline = Pipeline.from_pretrained(
            model, revision=revision, tokenizer=tokenizer, device=self.device, dtype=self.dtype,
            layout_overrides={"chat_template": spec.prompt.get("chat_template"),
                              "infill_markers": spec.prompt.get("infill_markers")},
        )  # fmt: skip
        self.model, self.kind = self.pipeline.model, self.pipeline.kind
        self.spec = spec
        self.settings = spec.generation_settings(self.kind)
        self.settings.update(overrides or {})
        self.seed = seed

    def identity(self) -> dict[str, Any]:
        """What was evaluated: checkpoint id or absolute local path, revision, kind, base model,
        config digest, dtype.

        The same on every rank of a sharded run (it is compared with the run.json rank 0 wrote), so
        per-process fields such as the device are not part of it: see :meth:`runtime`.
        """
        from retrofit.checkpoint_io import is_hub_id

        directory = self.pipeline.checkpoint_dir(self.model_id, self.revision)
        config_file = directory / "retrofit_config.json"
        digest = hashlib.sha256(config_file.read_bytes()).hexdigest() if config_file.is_file() else None
        # A local checkpoint is recorded by absolute path, so that results read later from another
        # working directory (e.g. a Hub model card) still name the right checkpoint.
        model = str(self.model_id) if is_hub_id(self.model_id) else str(directory.resolve())
        return {"model": model, "revision": self.revision, "kind": self.kind,
                "base_model": getattr(self.model.config, "base_model", None),
                "base_revision": getattr(self.model.config, "base_revision", None),
                "retrofit_config_sha256": digest, "dtype": self.dtype}

    def runtime(self) -> dict[str, Any]:
        """Per-process facts (the device of this rank): reported in summary.json, never compared."""
        return {"device": str(self.device)}

    def count_tokens(self, text: str) -> int:
        """Length of `text` in this checkpoint's tokens (no special tokens added)."""
        return self.pipeline.count_tokens(text)

    def __call__(self, tasks: list[EvalTask]) -> list[Generation]:
        """One answer per task; each sample draws from the stream of its (task_id, sample_index)."""
        from retrofit.pipeline import Task

        requests = [
            Task(prompt=task.prompt, prefix=task.prefix if task.kind == "infill" else None,
                 suffix=task.suffix, stream_id=sample_stream_id(task.task_id, task.sample_index))
            for task in tasks
        ]  # fmt: skip
        answers = self.pipeline.generate(requests, self.settings, seed=self.seed)
        outputs = []
        for answer in answers:
            extra = {} if self.kind == "mdm" else {"steps": answer.forward_passes,
                                                   "truncated": answer.truncated}
            outputs.append(Generation(answer.text, num_tokens=answer.num_tokens, extra=extra))
        return outputs


# ----------------------------------------------------------------------------- scoring
class _Scorer:
    """Scores samples of one spec; HumanEval programs run in a shared sandbox."""

    def __init__(self, spec: EvalSpec, workers: int | None) -> None:
        self.spec = spec
        self.sandbox = None
        self.check = _load_check(spec) if spec.task == "jsonl" else None
        if spec.source_task == "humaneval_infill" and spec.task != "lengths":
            from retrofit.evaluation.sandbox import Sandbox, SandboxLimits

            allowed = set(SandboxLimits.__dataclass_fields__)
            unknown = sorted(set(spec.sandbox) - allowed)
            if unknown:
                raise ValueError(f"spec {spec.name!r}: unknown sandbox keys {unknown}; allowed: "
                                 f"{sorted(allowed)}")
            limits = SandboxLimits(**spec.sandbox)
            self.sandbox = Sandbox(limits, workers=workers)

    def isolation(self) -> dict[str, Any] | None:
        return self.sandbox.isolation.describe() if self.sandbox is not None else None

    def score(self, tasks: Sequence[EvalTask], texts: Sequence[str]) -> list[dict[str, Any]]:
        """One result dict per (task, text): extracted answer, verdict, `correct`."""
        if self.spec.task == "lengths":
            return [{"extracted": None, "verdict": "n/a", "correct": None} for _ in tasks]
        if self.check is not None:
            verdicts = [bool(self.check(task, text)) for task, text in zip(tasks, texts)]
            return [{"extracted": text, "verdict": "correct" if ok else "wrong", "correct": ok}
                    for text, ok in zip(texts, verdicts)]
        if self.spec.source_task == "gsm8k":
            from retrofit.evaluation.gsm8k import score_gsm8k

            results = []
            for task, text in zip(tasks, texts):
                score = score_gsm8k(text, task.gold)
                record = score.to_dict()
                record.update(extracted=score.strict.text, gold=str(task.gold),
                              verdict="correct" if score.strict_correct else "wrong",
                              correct=score.strict_correct)
                results.append(record)
            return results
        from retrofit.evaluation.humaneval import score_completions

        variant = self.spec.data["variant"]
        task_map = {task.task_id: task.infill for task in tasks}
        verdicts = score_completions(task_map, [(t.task_id, x) for t, x in zip(tasks, texts)],
                                     variant, self.sandbox)
        results = []
        for verdict in verdicts:
            record = verdict.to_dict()
            record.pop("task_id")
            record.pop("completion")
            record["extracted"] = record.pop("normalized_completion")
            record["correct"] = record["passed"]
            results.append(record)
        return results


# ----------------------------------------------------------------------------- result files
def _shard_file(output: Path, rank: int, world_size: int) -> Path:
    return output / ("samples.jsonl" if world_size == 1 else f"samples.rank{rank}-of-{world_size}.jsonl")


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a samples file (a line cut by a kill is ignored)."""
    records = []
    if not path.is_file():
        return records
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _existing_records(output: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in [output / "samples.jsonl", *sorted(output.glob("samples.rank*.jsonl"))]:
        for record in _read_records(path):
            found.setdefault(record["key"], record)
    return found


def _keys_on_disk(output: Path, offsets: dict[Path, int], found: set[str]) -> None:
    """Add to `found` the keys of complete lines appended to the samples files since `offsets`.

    offsets (file -> bytes already read, complete lines only) is updated in place, so polling a
    large run reads every line once.
    """
    for path in [output / "samples.jsonl", *sorted(output.glob("samples.rank*.jsonl"))]:
        try:
            with path.open("rb") as handle:
                handle.seek(offsets.get(path, 0))
                data = handle.read()
        except FileNotFoundError:
            continue
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        offsets[path] = offsets.get(path, 0) + len(complete)
        for line in complete.splitlines():
            try:
                found.add(json.loads(line)["key"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue


def _wait_for_samples(output: Path, expected: dict[str, int], world_size: int,
                      timeout_s: float, poll_s: float = 1.0) -> None:
    """Block until the samples files in `output` hold every key of `expected` (key -> rank).

    Raises TimeoutError naming the ranks (and some keys) still missing after `timeout_s`.
    """
    offsets: dict[Path, int] = {}
    found: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        _keys_on_disk(output, offsets, found)
        missing = [key for key in expected if key not in found]
        if not missing:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            ranks = sorted({expected[key] for key in missing})
            raise TimeoutError(
                f"{output}: after {timeout_s} s, {len(missing)} of {len(expected)} samples are "
                f"still missing, from rank(s) {ranks} of {world_size} (e.g. {missing[:3]}); are "
                "those ranks still running? Rerun the same command to resume")
        time.sleep(min(poll_s, remaining))


def _open_for_append(path: Path):
    """Append handle; first drops a trailing partial line left by a kill mid-write."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with path.open("r+b") as handle:
                handle.truncate(cut)
    return path.open("a", encoding="utf-8")


def _check_run_identity(output: Path, identity: dict[str, Any], *, write: bool) -> None:
    """Refuse to mix samples of different runs in one --output directory (rank 0 records it)."""
    path = output / "run.json"
    identity = json.loads(json.dumps(identity, default=str))  # compare as it reads back from disk
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise ValueError(
                f"{output} holds samples of a different run (differs in {changed}); use another "
                "--output directory, or delete this one to start over"
            )
        return
    if not write:
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(identity, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(temporary, path)


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# ----------------------------------------------------------------------------- summary
def summarize(spec: EvalSpec, records: Sequence[dict[str, Any]], output: Path | None = None
              ) -> dict[str, Any]:
    """Aggregate per-sample records: the metric, its 95% interval, length statistics."""
    from retrofit.evaluation.lengths import length_report, plot_length_histograms
    from retrofit.evaluation.stats import bootstrap_interval, mean_pass_at_k, wilson_interval

    summary: dict[str, Any] = {"benchmark": spec.name, "task": spec.task,
                               "num_samples": len(records),
                               "num_tasks": len({r["task_id"] for r in records})}
    if spec.task == "gsm8k" and records:
        total = len(records)
        for mode in ("strict", "flexible"):
            correct = sum(bool(r[f"{mode}_correct"]) for r in records)
            summary[f"{mode}_accuracy"] = correct / total
            summary[f"{mode}_interval_95"] = list(wilson_interval(correct, total))
            summary[f"{mode}_rules"] = dict(Counter(str(r[f"{mode}_rule"]) for r in records))
        summary["metric"], summary["value"] = "strict_accuracy", summary["strict_accuracy"]
        summary["interval_95"], summary["interval_method"] = summary["strict_interval_95"], "wilson"
    elif spec.task == "humaneval_infill" and records:
        per_task: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            per_task.setdefault(record["task_id"], []).append(record)
        samples = [len(group) for group in per_task.values()]
        correct = [sum(bool(r["passed"]) for r in group) for group in per_task.values()]
        correct_raw = [sum(bool(r["raw_passed"]) for r in group) for group in per_task.values()]
        for k in sorted(set(spec.metric.get("k", [1])) | {1}):  # pass@1 is the headline metric
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
    elif spec.task == "jsonl" and records:
        correct = sum(bool(r["correct"]) for r in records)
        summary["accuracy"] = correct / len(records)
        summary["interval_95"], summary["interval_method"] = (
            list(wilson_interval(correct, len(records))), "wilson")
        summary["metric"], summary["value"] = "accuracy", summary["accuracy"]
    generated = [r["generated_tokens"] for r in records if r.get("generated_tokens") is not None]
    reference = [r["reference_tokens"] for r in records if r.get("reference_tokens") is not None]
    unit = "tokens"
    if not generated or not reference:
        generated = [r["generated_chars"] for r in records]
        reference = [r["reference_chars"] for r in records]
        unit = "characters"
    summary["lengths"] = {"unit": unit, **length_report(generated, reference)}
    if spec.task == "lengths" and "wasserstein_1" in summary["lengths"]:
        summary["metric"], summary["value"] = "wasserstein_1", summary["lengths"]["wasserstein_1"]
    if output is not None and generated and reference:
        plot_length_histograms(generated, reference, output / "lengths.png", title=spec.name, unit=unit)
        summary["lengths_plot"] = "lengths.png"
    return summary


# ----------------------------------------------------------------------------- the run
def _distributed_position() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (accelerate/torchrun set RANK, WORLD_SIZE)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    return rank, world_size


def run_evaluation(
    spec: EvalSpec | str | Path,
    output: str | Path,
    *,
    generate_fn: GenerateFn | None = None,
    completions: str | Path | Sequence[tuple[str, str]] | None = None,
    data: str | Path | None = None,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    model_identity: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    count_tokens: Callable[[str], int] | None = None,
    batch_size: int | None = None,
    num_samples: int = 1,
    workers: int | None = None,
    progress: bool = True,
    merge_timeout_s: float = 24 * 3600,
) -> dict[str, Any] | None:
    """Run (or resume) one benchmark; returns the summary on rank 0, None on other ranks.

    Exactly one of generate_fn (a callable `list[EvalTask] -> list[str | Generation]`, e.g. a
    :class:`ModelGenerator`) and completions (a JSONL path or (task_id, completion) pairs) is needed.
    count_tokens: tokenizer length function for reference lengths (a ModelGenerator's by default).
    num_samples: samples per task from generate_fn (pass@k for k <= num_samples); each sample of a
        task is a separate row of a batch, passed as the task with its `sample_index` set, so the
        generator draws it from its own random stream.
    merge_timeout_s: how long rank 0 of a sharded run waits for the other ranks' samples.
    """
    from tqdm.auto import tqdm

    spec = load_spec(spec)
    if (generate_fn is None) == (completions is None):
        raise ValueError("pass exactly one of generate_fn (a model) and completions (a JSONL file)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tasks = load_tasks(spec, data)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        tasks = tasks[:limit]
    task_order = {task.task_id: index for index, task in enumerate(tasks)}
    by_id = {task.task_id: task for task in tasks}

    # Work items: (key, task with its sample_index, sample index, given completion or None); each
    # rank keeps every world_size-th task, rank 0 waits for the keys of all of them.
    if completions is not None:
        pairs = load_completions(completions) if isinstance(completions, (str, Path)) else list(completions)
        unknown = sorted({task_id for task_id, _ in pairs if task_id not in by_id})
        if unknown and limit is None:
            raise KeyError(f"{len(unknown)} completion task_id(s) are not in {spec.name}, e.g. {unknown[:3]}")
        seen: Counter[str] = Counter()
        items = []
        for task_id, completion in pairs:
            if task_id in by_id:
                index = seen[task_id]
                items.append((_sample_key(task_id, index),
                              dataclasses.replace(by_id[task_id], sample_index=index), index, completion))
                seen[task_id] += 1
        digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
        model_identity = model_identity or {"completions": str(completions) if isinstance(
            completions, (str, Path)) else "<in-memory>", "sha256": digest}
    else:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        items = [(_sample_key(task.task_id, index), dataclasses.replace(task, sample_index=index),
                  index, None)
                 for task in tasks for index in range(num_samples)]
    # every sample of the run (rank 0 merges once the files on disk hold all of them), key -> rank
    expected = {item[0]: task_order[item[1].task_id] % world_size for item in items}
    items = [item for item in items if expected[item[0]] == rank]
    if count_tokens is None and isinstance(generate_fn, ModelGenerator):
        count_tokens = generate_fn.count_tokens
    if model_identity is None and isinstance(generate_fn, ModelGenerator):
        model_identity = generate_fn.identity()
    if settings is None and isinstance(generate_fn, ModelGenerator):
        settings = {"generation": generate_fn.settings, "seed": generate_fn.seed}
    settings = {**(settings or {}), "num_samples": num_samples if completions is None else None}
    identity = {"benchmark": spec.name, "spec": spec.to_dict(), "model": model_identity or {},
                "settings": settings, "data": str(data) if data is not None else "default"}
    _check_run_identity(output, identity, write=rank == 0)

    done = _existing_records(output)
    mine_done = [done[item[0]] for item in items if item[0] in done]
    scorer = _Scorer(spec, workers=workers if workers else max(1, (os.cpu_count() or 1) // world_size))
    shard_path = _shard_file(output, rank, world_size)
    size = batch_size or spec.batch_size
    if generate_fn is None:
        # No model: large chunks keep every sandbox worker busy.
        size = max(size, 16 * (scorer.sandbox.workers if scorer.sandbox is not None else 1))
    correct_count = sum(bool(r.get("correct")) for r in mine_done)
    scored_count = len(mine_done)
    bar = tqdm(total=len(items), initial=len(mine_done), disable=not progress,
               desc=f"{spec.name}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""),
               dynamic_ncols=True)
    with _open_for_append(shard_path) as handle:
        # Every sample draws from its own random stream (seed, sample_stream_id(task, sample index)),
        # so its text depends on neither batch size, batch position nor sharding. Batches still sit
        # at fixed positions of this rank's work list and a resumed run regenerates a partly
        # written batch whole, so even float reductions (which may differ in the last bit with
        # the batch's shape) see exactly the batches of an uninterrupted run.
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            if all(item[0] in done for item in chunk):
                continue
            batch_tasks = [item[1] for item in chunk]
            clock = time.monotonic()
            if generate_fn is not None:
                outputs = list(generate_fn(batch_tasks))
                if len(outputs) != len(chunk):
                    raise ValueError(f"generate_fn returned {len(outputs)} texts for {len(chunk)} tasks")
                generations = [out if isinstance(out, Generation) else Generation(str(out))
                               for out in outputs]
            else:
                generations = [Generation(item[3]) for item in chunk]
            generation_time = (time.monotonic() - clock) / len(chunk)
            clock = time.monotonic()
            scores = scorer.score(batch_tasks, [g.text for g in generations])
            scoring_time = (time.monotonic() - clock) / len(chunk)
            written = 0
            for (key, task, sample_index, _), generation, score in zip(chunk, generations, scores):
                if key in done:
                    continue
                written += 1
                reference_text = (_gsm8k_reference(task) if spec.source_task == "gsm8k"
                                  else task.reference)
                record = {
                    "key": key, "task_id": task.task_id, "prompt_id": task.task_id,
                    "sample_index": sample_index, "generated": generation.text, **score,
                    "generated_tokens": generation.num_tokens,
                    "generated_chars": len(generation.text),
                    "reference_tokens": count_tokens(reference_text) if count_tokens else None,
                    "reference_chars": len(reference_text),
                    "generation_time_s": round(generation_time, 4),
                    "scoring_time_s": round(scoring_time, 4),
                    **({"generation": generation.extra} if generation.extra else {}),
                }
                handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                scored_count += 1
                correct_count += bool(record.get("correct"))
            handle.flush()
            bar.update(written)
            if spec.task != "lengths":
                bar.set_postfix(acc=f"{correct_count / max(1, scored_count):.3f}")
    bar.close()

    if world_size > 1:
        if rank != 0:
            return None
        # Other ranks may still be appending: merge only once every sample of the run is on disk.
        _wait_for_samples(output, expected, world_size, merge_timeout_s)

    # Merge every samples file into samples.jsonl, in task order. Every expected key is on disk
    # now, so no rank writes to a shard file any more and the shard files can go.
    merged = _existing_records(output)
    records = sorted((merged[key] for key in expected),
                     key=lambda r: (task_order[r["task_id"]], r.get("sample_index", 0)))
    _atomic_write(output / "samples.jsonl",
                  "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
    for path in output.glob("samples.rank*.jsonl"):
        path.unlink()
    for path in output.glob("rank*-of-*.done"):  # markers written by earlier versions
        path.unlink()
    summary = summarize(spec, records, output)
    runtime = generate_fn.runtime() if isinstance(generate_fn, ModelGenerator) else {}
    summary.update({
        "model": model_identity or {},
        "settings": {**(settings or {}), "spec_path": spec.path, "data": identity["data"],
                     "limit": limit, "world_size": world_size, "sandbox": scorer.isolation(),
                     **runtime},
        "spec": spec.to_dict(),
        "elapsed_s": round(time.time() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    _atomic_write(output / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _gsm8k_reference(task: EvalTask) -> str:
    """Reference answer text in the training target format (its length is the reference length)."""
    from retrofit.evaluation.gsm8k import format_gsm8k_target

    return format_gsm8k_target(task.reference)


# ----------------------------------------------------------------------------- compare
def _load_samples(result: str | Path) -> list[dict[str, Any]]:
    path = Path(result)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{result}: no samples.jsonl (pass an eval --output directory or the file)")
    return _read_records(path)


# The parts of a spec that define the benchmark; the sampler settings (`generation`) may differ
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
    samples_a = {r["key"]: r for r in _load_samples(result_a)}
    samples_b = {r["key"]: r for r in _load_samples(result_b)}
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


# ----------------------------------------------------------------------------- CLI
def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `retrofit eval`."""
    parser = argparse.ArgumentParser(prog="retrofit eval", description=(
        "Run a benchmark spec (eval/*.yaml or a builtin name: gsm8k, humaneval-infill-single-line, "
        "humaneval-infill-multi-line, humaneval-infill-random-span, lengths) on a checkpoint or on "
        "completions produced elsewhere."))
    parser.add_argument("spec", help="spec YAML path or builtin name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory or Hub id (FlexMDM or MDM baseline)")
    source.add_argument("--completions", type=Path,
                        help="JSONL with `task_id` and `completion` per line: score without a model")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer")
    parser.add_argument("--output", type=Path, default=None,
                        help="result directory (default: results/<spec>-<model name>)")
    parser.add_argument("--data", default=None,
                        help="local data file or folder instead of the Hub / upstream download")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per generation batch")
    parser.add_argument("--samples", type=int, default=1,
                        help="samples per task (pass@k for k up to this; use --gen temperature=...)")
    parser.add_argument("--workers", type=int, default=None, help="parallel sandboxed programs")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sampler argument of the spec, e.g. --gen steps=64")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """`retrofit eval ...`; returns the exit code (2 for bad arguments or inputs)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        spec = load_spec(args.spec)
        overrides = {}
        for item in args.gen:
            if "=" not in item:
                raise ValueError(f"--gen expects KEY=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            overrides[key.strip()] = _parse_value(value)
        rank, world_size = _distributed_position()
        name = Path(str(args.model or args.completions)).name.replace(".jsonl", "")
        output = args.output or Path("results") / f"{spec.name}-{name}"
        generator = None
        if args.model is not None:
            device = args.device
            if device is None and world_size > 1:
                import torch

                if torch.cuda.is_available():
                    device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
            generator = ModelGenerator(args.model, spec, revision=args.revision, tokenizer=args.tokenizer,
                                       device=device, dtype=args.dtype, overrides=overrides, seed=args.seed)
        summary = run_evaluation(
            spec, output, generate_fn=generator,
            completions=args.completions if args.model is None else None, data=args.data,
            limit=args.limit, rank=rank, world_size=world_size, batch_size=args.batch_size,
            num_samples=args.samples,
            workers=args.workers, progress=not args.no_progress,
        )
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        # OSError covers missing files and a checkpoint/tokenizer the Hub cannot serve offline.
        print(f"retrofit eval: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    if summary is not None:
        shown = {k: v for k, v in summary.items() if k not in ("spec", "settings", "model", "verdicts")}
        print(json.dumps(shown, indent=2, default=str))
        print(f"samples: {output / 'samples.jsonl'}  summary: {output / 'summary.json'}")
    return 0


def compare_cli_main(argv: Sequence[str] | None = None) -> int:
    """`retrofit compare RESULT_A RESULT_B [--output diff.json] [--show N]`."""
    parser = argparse.ArgumentParser(prog="retrofit compare", description=(
        "Paired comparison of two eval results on the same benchmark: exact McNemar test on the "
        "discordant samples and the per-sample differences."))
    parser.add_argument("result_a", help="eval --output directory (or its samples.jsonl)")
    parser.add_argument("result_b")
    parser.add_argument("--output", type=Path, default=None, help="write the full comparison JSON")
    parser.add_argument("--show", type=int, default=20, help="differing samples to print")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        report = compare_results(args.result_a, args.result_b)
    except (ValueError, FileNotFoundError) as error:
        print(f"retrofit compare: {error}", file=sys.stderr)
        return 2
    print(f"A: {report['a']}\nB: {report['b']}")
    print(f"paired samples: {report['num_pairs']}  accuracy A {report['accuracy_a']:.4f}  "
          f"B {report['accuracy_b']:.4f}  B-A {report['difference_b_minus_a']:+.4f}")
    print(f"both correct {report['both_correct']}  only A {report['a_only_correct']}  "
          f"only B {report['b_only_correct']}  both wrong {report['both_wrong']}  "
          f"McNemar exact p = {report['mcnemar_exact_p']:.4g}")
    for row in report["diff"][: args.show]:
        winner = "A" if row["a_correct"] else "B"
        print(f"  {winner} only  {row['task_id']}  A={row['a_extracted']!r}  B={row['b_extracted']!r}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def main() -> None:
    """`python -m retrofit.evaluate` / `accelerate launch -m retrofit.evaluate`: eval, or compare
    when the first argument is `compare`."""
    argv = sys.argv[1:]
    if argv and argv[0] == "compare":
        code = compare_cli_main(argv[1:])
    else:
        code = cli_main(argv[1:] if argv and argv[0] == "eval" else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Multi-process launches: leave without interpreter teardown (torch + gloo can abort there).
    os._exit(code)


if __name__ == "__main__":
    main()
