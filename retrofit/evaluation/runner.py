"""The evaluation runner: plan -> generate and score -> merge -> summarize, for any benchmark kind.

1. **plan**: load the benchmark's tasks (``data`` for a local copy; otherwise the Hub / upstream
   file), keep the first ``limit``, and list the samples (task x sample index, or the lines of a
   completions file); under ``accelerate launch`` (or any launcher that sets RANK and WORLD_SIZE)
   each rank takes every WORLD_SIZE-th task;
2. **generate and score**: in batches, ``generate_fn(tasks) -> texts`` (a checkpoint's
   :class:`retrofit.evaluation.generator.ModelGenerator`) or the completions, scored at once by the
   benchmark (GSM8K extraction; HumanEval programs in the sandbox); one JSON line per sample is
   appended and flushed to this rank's samples file. A rerun with the same output directory skips
   every sample already written, so a killed run resumes where it stopped;
3. **merge**: rank 0 waits until the samples on disk cover every sample of the run (no process
   group, hence none of gloo's exit crashes; no marker files a killed run could leave behind) and
   merges them in task order into ``samples.jsonl``;
4. **summarize**: the benchmark's metric with its 95% interval, length statistics (Wasserstein-1
   against the reference lengths, ``lengths.png``), the settings and the model identity, in
   ``summary.json``.

Every sample draws its randomness from its own stream, derived from its key (task id and sample
index, :func:`retrofit.evaluation.results.sample_stream_id`), so a sample's text depends on neither
the batch size, its position in a batch, nor the number of ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrofit.evaluation.benchmarks import Benchmark, EvalTask, Generation, benchmark_for
from retrofit.evaluation.results import (
    atomic_write,
    check_run_identity,
    existing_records,
    load_completions,
    open_for_append,
    sample_key,
    shard_file,
    wait_for_samples,
)
from retrofit.evaluation.specs import EvalSpec, load_spec

__all__ = ["GenerateFn", "distributed_position", "load_tasks", "run_evaluation", "summarize"]

GenerateFn = Callable[[list[EvalTask]], Sequence["Generation | str"]]


@dataclass
class WorkItem:
    """One sample to produce: its key, its task (with ``sample_index`` set), and the given
    completion when scoring a completions file."""

    key: str
    task: EvalTask
    completion: str | None = None


@dataclass
class RunPlan:
    """What one rank of a run does: its work items, every key of the run (key -> rank), the task
    order for merging, the run identity recorded in ``run.json``, and how many of the benchmark's
    tasks the run covers (a completions file may hold only some)."""

    items: list[WorkItem]
    expected: dict[str, int]
    task_order: dict[str, int]
    identity: dict[str, Any]
    model_identity: dict[str, Any]
    settings: dict[str, Any]
    coverage: dict[str, Any]


def load_tasks(spec: EvalSpec | str | Path, data: str | Path | None = None) -> list[EvalTask]:
    """All tasks of a spec, in benchmark order."""
    return benchmark_for(load_spec(spec)).load(data)


def distributed_position() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (accelerate/torchrun set RANK, WORLD_SIZE)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    return rank, world_size


# ----------------------------------------------------------------------------- plan
def _completion_items(
    completions: str | Path | Sequence[tuple[str, str]], by_id: dict[str, EvalTask], spec: EvalSpec,
    limit: int | None,
) -> tuple[list[WorkItem], dict[str, Any]]:
    """Work items of a completions file (several per task allowed) and its identity."""
    pairs = load_completions(completions) if isinstance(completions, (str, Path)) else list(completions)
    unknown = sorted({task_id for task_id, _ in pairs if task_id not in by_id})
    if unknown and limit is None:
        raise KeyError(f"{len(unknown)} completion task_id(s) are not in {spec.name}, e.g. {unknown[:3]}")
    seen: Counter[str] = Counter()
    items = []
    for task_id, completion in pairs:
        if task_id in by_id:
            index = seen[task_id]
            items.append(WorkItem(sample_key(task_id, index),
                                  dataclasses.replace(by_id[task_id], sample_index=index), completion))
            seen[task_id] += 1
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
    source = str(completions) if isinstance(completions, (str, Path)) else "<in-memory>"
    return items, {"completions": source, "sha256": digest}


def plan_run(
    spec: EvalSpec, benchmark: Benchmark, *, generate_fn: GenerateFn | None,
    completions: Any, data: str | Path | None, limit: int | None, rank: int, world_size: int,
    model_identity: dict[str, Any] | None, settings: dict[str, Any] | None, num_samples: int,
) -> RunPlan:
    """Load the tasks and list this rank's samples (see the module docstring, stage 1)."""
    tasks = benchmark.load(data)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        tasks = tasks[:limit]
    task_order = {task.task_id: index for index, task in enumerate(tasks)}
    if completions is not None:
        items, completion_identity = _completion_items(
            completions, {task.task_id: task for task in tasks}, spec, limit)
        model_identity = model_identity or completion_identity
    else:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        items = [WorkItem(sample_key(task.task_id, index), dataclasses.replace(task, sample_index=index))
                 for task in tasks for index in range(num_samples)]
    # every sample of the run (rank 0 merges once the files on disk hold all of them), key -> rank
    expected = {item.key: task_order[item.task.task_id] % world_size for item in items}
    if model_identity is None and hasattr(generate_fn, "identity"):
        model_identity = generate_fn.identity()
    if settings is None and hasattr(generate_fn, "settings"):
        settings = {"generation": generate_fn.settings, "seed": generate_fn.seed}
    settings = {**(settings or {}), "num_samples": num_samples if completions is None else None}
    identity = {"benchmark": spec.name, "spec": spec.to_dict(), "model": model_identity or {},
                "settings": settings, "data": str(data) if data is not None else "default"}
    covered = len({item.task.task_id for item in items})
    coverage = {"tasks": len(tasks), "tasks_covered": covered,
                "fraction": covered / len(tasks) if tasks else 0.0}
    return RunPlan([item for item in items if expected[item.key] == rank], expected, task_order,
                   identity, model_identity or {}, settings, coverage)


def check_coverage(plan: RunPlan, spec: EvalSpec, *, require_complete: bool) -> None:
    """Warn (or, with ``require_complete``, refuse) when the samples cover only some tasks: a
    metric over 3 of 1,033 tasks is not the benchmark's."""
    coverage = plan.coverage
    if coverage["tasks_covered"] == coverage["tasks"]:
        return
    message = (f"the completions cover {coverage['tasks_covered']:,} of the {coverage['tasks']:,} "
               f"tasks of {spec.name} ({100 * coverage['fraction']:.1f}%): the metric is over those "
               "alone")
    if require_complete:
        raise ValueError(message + " (--require-complete)")
    warnings.warn(message + "; summary.json records the coverage (--require-complete refuses)",
                  stacklevel=3)


# ----------------------------------------------------------------------------- generate and score
def _generations(generate_fn: GenerateFn | None, chunk: list[WorkItem]) -> list[Generation]:
    """The texts of one batch: generated, or the given completions."""
    if generate_fn is None:
        return [Generation(item.completion or "") for item in chunk]
    outputs = list(generate_fn([item.task for item in chunk]))
    if len(outputs) != len(chunk):
        raise ValueError(f"generate_fn returned {len(outputs)} texts for {len(chunk)} tasks")
    return [out if isinstance(out, Generation) else Generation(str(out)) for out in outputs]


def _record(item: WorkItem, generation: Generation, score: dict[str, Any], benchmark: Benchmark,
            count_tokens: Callable[[str], int] | None, times: tuple[float, float]) -> dict[str, Any]:
    """The samples.jsonl line of one sample."""
    task = item.task
    reference_text = benchmark.reference_text(task)
    return {
        "key": item.key, "task_id": task.task_id, "prompt_id": task.task_id,
        "sample_index": task.sample_index, "generated": generation.text, **score,
        "generated_tokens": generation.num_tokens,
        "generated_chars": len(generation.text),
        "reference_tokens": count_tokens(reference_text) if count_tokens else None,
        "reference_chars": len(reference_text),
        "generation_time_s": round(times[0] if generation.seconds is None else generation.seconds, 4),
        "scoring_time_s": round(times[1], 4),
        "forward_passes": generation.forward_passes,
        **({"generation": generation.extra} if generation.extra else {}),
    }


def generate_and_score(
    plan: RunPlan, benchmark: Benchmark, output: Path, *, generate_fn: GenerateFn | None,
    count_tokens: Callable[[str], int] | None, batch_size: int, rank: int, world_size: int,
    progress: bool,
) -> None:
    """Produce and score this rank's missing samples, appending them to its samples file."""
    from tqdm.auto import tqdm

    done = existing_records(output)
    mine_done = [done[item.key] for item in plan.items if item.key in done]
    correct_count, scored_count = sum(bool(r.get("correct")) for r in mine_done), len(mine_done)
    bar = tqdm(total=len(plan.items), initial=len(mine_done), disable=not progress,
               desc=benchmark.spec.name + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""),
               dynamic_ncols=True)
    with open_for_append(shard_file(output, rank, world_size)) as handle:
        # Every sample draws from its own random stream (seed, sample_stream_id(task, sample index)),
        # so its text depends on neither batch size, batch position nor sharding. Batches still sit
        # at fixed positions of this rank's work list and a resumed run regenerates a partly
        # written batch whole, so even float reductions (which may differ in the last bit with
        # the batch's shape) see exactly the batches of an uninterrupted run.
        for start in range(0, len(plan.items), batch_size):
            chunk = plan.items[start:start + batch_size]
            if all(item.key in done for item in chunk):
                continue
            clock = time.monotonic()
            generations = _generations(generate_fn, chunk)
            generation_time = (time.monotonic() - clock) / len(chunk)
            clock = time.monotonic()
            scores = benchmark.score([item.task for item in chunk], [g.text for g in generations])
            times = (generation_time, (time.monotonic() - clock) / len(chunk))
            written = 0
            for item, generation, score in zip(chunk, generations, scores):
                if item.key in done:
                    continue
                record = _record(item, generation, score, benchmark, count_tokens, times)
                handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                written += 1
                scored_count += 1
                correct_count += bool(record.get("correct"))
            handle.flush()
            bar.update(written)
            if benchmark.task != "lengths":
                bar.set_postfix(acc=f"{correct_count / max(1, scored_count):.3f}")
    bar.close()


# ----------------------------------------------------------------------------- merge
def merge_samples(output: Path, plan: RunPlan) -> list[dict[str, Any]]:
    """Every sample of the run, in task order, written to ``samples.jsonl``; the shard files go
    (every expected key is on disk, so no rank writes to them any more)."""
    merged = existing_records(output)
    records = sorted((merged[key] for key in plan.expected),
                     key=lambda r: (plan.task_order[r["task_id"]], r.get("sample_index", 0)))
    atomic_write(output / "samples.jsonl",
                 "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
    for path in output.glob("samples.rank*.jsonl"):
        path.unlink()
    for path in output.glob("rank*-of-*.done"):  # markers written by earlier versions
        path.unlink()
    return records


# ----------------------------------------------------------------------------- summarize
def summarize(spec: EvalSpec | Benchmark, records: Sequence[dict[str, Any]],
              output: Path | None = None) -> dict[str, Any]:
    """Aggregate per-sample records: the benchmark's metric, its 95% interval, length statistics."""
    from retrofit.evaluation.lengths import length_report, plot_length_histograms

    benchmark = spec if isinstance(spec, Benchmark) else benchmark_for(load_spec(spec))
    spec = benchmark.spec
    summary: dict[str, Any] = {"benchmark": spec.name, "task": spec.task,
                               "num_samples": len(records),
                               "num_tasks": len({r["task_id"] for r in records})}
    if records:
        summary.update(benchmark.summarize(records))
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
    summary["cost"] = cost_summary(records)
    skipped = Counter(r["generation"]["skipped"] for r in records
                      if isinstance(r.get("generation"), dict) and r["generation"].get("skipped"))
    if skipped:
        summary["skipped"] = dict(skipped)
    if output is not None and generated and reference:
        plot_length_histograms(generated, reference, output / "lengths.png", title=spec.name, unit=unit)
        summary["lengths_plot"] = "lengths.png"
    return summary


def cost_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the samples cost: mean forward passes and generation seconds per sample (None for
    scored completions, which cost no generation here)."""
    passes = [r["forward_passes"] for r in records if r.get("forward_passes") is not None]
    seconds = [r["generation_time_s"] for r in records if r.get("forward_passes") is not None]
    return {
        "forward_passes_per_sample": sum(passes) / len(passes) if passes else None,
        "seconds_per_sample": sum(seconds) / len(seconds) if seconds else None,
        "samples_generated": len(passes),
    }


# ----------------------------------------------------------------------------- the run
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
    require_complete: bool = False,
) -> dict[str, Any] | None:
    """Run (or resume) one benchmark; returns the summary on rank 0, None on other ranks.

    Exactly one of generate_fn (a callable `list[EvalTask] -> list[str | Generation]`, e.g. a
    :class:`~retrofit.evaluation.generator.ModelGenerator`) and completions (a JSONL path or
    (task_id, completion) pairs) is needed. count_tokens: tokenizer length function for reference
    lengths (the generator's ``count_tokens`` by default). num_samples: samples per task from
    generate_fn (pass@k for k <= num_samples); each sample of a task is a separate row of a batch,
    passed as the task with its `sample_index` set, so the generator draws it from its own random
    stream. merge_timeout_s: how long rank 0 of a sharded run waits for the other ranks' samples.
    require_complete: refuse completions that cover only some of the tasks (else a warning, and
    the coverage in the summary).
    """
    spec = load_spec(spec)
    if (generate_fn is None) == (completions is None):
        raise ValueError("pass exactly one of generate_fn (a model) and completions (a JSONL file)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    benchmark = benchmark_for(spec, workers=workers if workers else max(1, (os.cpu_count() or 1) // world_size))
    try:
        plan = plan_run(spec, benchmark, generate_fn=generate_fn, completions=completions, data=data,
                        limit=limit, rank=rank, world_size=world_size, model_identity=model_identity,
                        settings=settings, num_samples=num_samples)
        check_coverage(plan, spec, require_complete=require_complete)
        check_run_identity(output, plan.identity, write=rank == 0)
        benchmark.prepare()
        count_tokens = count_tokens or getattr(generate_fn, "count_tokens", None)
        size = batch_size or spec.batch_size
        if generate_fn is None:  # no model: large chunks keep every sandbox worker busy
            sandbox = getattr(benchmark, "sandbox", None)
            size = max(size, 16 * (sandbox.workers if sandbox is not None else 1))
        generate_and_score(plan, benchmark, output, generate_fn=generate_fn, count_tokens=count_tokens,
                           batch_size=size, rank=rank, world_size=world_size, progress=progress)
        if world_size > 1:
            if rank != 0:
                return None
            # Other ranks may still be appending: merge only once every sample is on disk.
            wait_for_samples(output, plan.expected, world_size, merge_timeout_s)
        records = merge_samples(output, plan)
        summary = summarize(benchmark, records, output)
        summary["coverage"] = plan.coverage
        runtime = generate_fn.runtime() if hasattr(generate_fn, "runtime") else {}
        summary.update({
            "model": plan.model_identity,
            "settings": {**plan.settings, "spec_path": spec.path, "data": plan.identity["data"],
                         "limit": limit, "world_size": world_size, "sandbox": benchmark.isolation(),
                         **runtime},
            "spec": spec.to_dict(),
            "elapsed_s": round(time.time() - started, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        atomic_write(output / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        return summary
    finally:
        benchmark.close()
