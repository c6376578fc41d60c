"""Demo stage 5 for one seed: both arms on the evaluation split through the eval runner, and the
FlexMDM's insertion head against the Bayes-optimal count.

Each benchmark is a ``task: jsonl`` spec (:func:`eval_spec`) scored by :func:`check_unconditional`
(a plain sample is valid) or :func:`check_infill` (the completed string is valid and has a length
the data has); generation is :class:`retrofit.evaluation.generator.ModelGenerator`, i.e. the
checkpoint's :class:`retrofit.pipeline.Pipeline`, with the settings the selection chose.
Per-sample JSONL, ``summary.json`` and ``lengths.png`` land in ``eval/<arm>/<benchmark>/``; a
killed evaluation resumes there, and results of other weights or settings are replaced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .decoding import BENCHMARKS, sampler_settings, special_ids
from .settings import ARM_TITLES, DemoSettings, SeedPaths
from .stages import log, read_jsonl
from .task import bayes_expected_missing, infill_ok, is_valid, length_w1, length_w1_interval

__all__ = ["bayes_check", "check_infill", "check_unconditional", "eval_spec", "evaluate_arm"]

PRESENCE_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def check_unconditional(task: Any, completion: str) -> bool:
    """``metric.check`` of the plain samples: the string is valid (non-empty, sorted)."""
    return is_valid(completion)


def check_infill(task: Any, completion: str) -> bool:
    """``metric.check`` of the infillings: the completed string is valid and has a data length."""
    return infill_ok(task.prefix or "", completion, task.suffix or "")


def eval_spec(benchmark: str, batch_size: int, kind: str, sampling: Mapping[str, Any]) -> dict:
    """The eval runner spec of one demo benchmark for a checkpoint kind and sampler settings."""
    return {
        "name": f"demo-{benchmark}",
        "task": "jsonl",
        "data": {"file": f"eval_{benchmark}.jsonl"},
        "generation": {"batch_size": batch_size, kind: dict(sampling)},
        "metric": {"check": f"retrofit.demo:check_{benchmark}", "primary": "accuracy"},
    }


def _weights_digest(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(checkpoint.glob("*.safetensors")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _run_benchmark(arm: str, benchmark: str, paths: SeedPaths, settings: DemoSettings, seed: int,
                   setting: Mapping[str, Any]) -> tuple[dict, list[dict]]:
    """One benchmark of one arm through the eval runner; returns (summary, samples)."""
    from retrofit.evaluation import run_evaluation
    from retrofit.evaluation.generator import ModelGenerator
    from retrofit.evaluation.specs import load_spec
    from retrofit.pipeline import Pipeline

    checkpoint = paths.arm(arm) / "final"
    special = special_ids(Pipeline.from_pretrained(checkpoint, device="cpu", dtype="float32"))
    sampling = sampler_settings(arm, setting, benchmark, settings, special)
    spec = load_spec(eval_spec(benchmark, settings.eval_batch_size, arm, sampling))
    generator = ModelGenerator(str(checkpoint), spec, device="cpu", dtype="float32", seed=seed)
    identity = {**generator.identity(), "weights_sha256": _weights_digest(checkpoint),
                "setting": setting["name"]}
    output = paths.eval / arm / benchmark
    run_file = output / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("model") != identity:
        shutil.rmtree(output)  # another arm's weights or settings: retrained or reselected
    summary = run_evaluation(
        spec, output, generate_fn=generator, data=paths.tasks("eval", benchmark),
        model_identity=identity, settings={**sampling, "seed": seed},
        count_tokens=generator.count_tokens, progress=settings.progress,
    )  # fmt: skip
    return summary, read_jsonl(output / "samples.jsonl")


def _interval(summary: Mapping[str, Any]) -> dict[str, float]:
    low, high = summary["interval_95"]
    return {"value": 100.0 * summary["accuracy"], "low": 100.0 * low, "high": 100.0 * high}


def evaluate_arm(arm: str, paths: SeedPaths, settings: DemoSettings, seed: int,
                 chosen: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Both benchmarks for one arm with its chosen settings; returns the seed's metrics."""
    log(f"seed {seed}: evaluating the {ARM_TITLES[arm]} arm ({settings.num_samples} samples with "
        f"{chosen['unconditional']['name']}, {settings.num_infill} infillings with "
        f"{chosen['infill']['name']}) -> {paths.eval / arm}")
    results = {b: _run_benchmark(arm, b, paths, settings, seed, chosen[b]) for b in BENCHMARKS}
    (plain, plain_samples), (infill, infill_samples) = results["unconditional"], results["infill"]
    lengths = [record["generated_tokens"] for record in plain_samples]
    middles = [record["generated_tokens"] for record in infill_samples]
    truth = [record["reference_tokens"] for record in infill_samples]
    return {
        "seed": seed,
        "length_w1": length_w1(lengths),
        "length_w1_interval": list(length_w1_interval(lengths, seed)),
        "mean_length": sum(lengths) / len(lengths),
        "valid": _interval(plain),
        "infill": _interval(infill),
        "infill_middle_mean": sum(middles) / len(middles),
        "infill_true_middle_mean": sum(truth) / len(truth),
        "lengths": lengths,
        "settings": {b: dict(chosen[b]) for b in BENCHMARKS},
        "results": {b: str(paths.eval / arm / b) for b in BENCHMARKS},
    }


def bayes_check(paths: SeedPaths, settings: DemoSettings, seed: int) -> dict[str, Any]:
    """The FlexMDM head's total ``sum_j ghat_j`` against ``E[L - l | l, t]`` on held-out strings
    noised by the model's own forward process (rows laid out as plain samples:
    ``BOS <|mid|> string <|suf|>``, the three markup tokens protected)."""
    import torch

    from retrofit.interpolant import forward_process
    from retrofit.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(paths.arm("flexmdm") / "final", device="cpu", dtype="float32")
    model, tokenizer = pipeline.model, pipeline.tokenizer
    texts = [r["reference"] for r in read_jsonl(paths.tasks("eval", "unconditional"))][: settings.bayes_rows]
    bos, start, end = tokenizer.convert_tokens_to_ids(["<|bos|>", "<|mid|>", "<|suf|>"])
    rows = [[bos, start, *tokenizer.convert_tokens_to_ids(list(text)), end] for text in texts]
    x1 = torch.full((len(rows), max(map(len, rows))), model.pad_token_id, dtype=torch.long)  # (N, L)
    for index, row in enumerate(rows):
        x1[index, : len(row)] = torch.tensor(row)
    lengths = torch.tensor([len(row) for row in rows])  # (N,)
    protected = (x1 == bos) | (x1 == start) | (x1 == end)  # (N, L)
    generator = torch.Generator().manual_seed(seed)
    table = []
    for time_value in PRESENCE_TIMES:
        noised = forward_process(
            x1, lengths, protected, torch.full((len(rows),), time_value),
            insertion=model.insertion_schedule, unmasking=model.unmasking_schedule,
            mask_token_id=model.mask_token_id, pad_token_id=model.pad_token_id, generator=generator,
        )  # fmt: skip
        with torch.inference_mode():
            head = model(noised.input_ids, noised.lengths, noised.t).gaps.sum(dim=1)  # (N,)
        alpha = float(model.insertion_schedule.at(torch.tensor(time_value, dtype=torch.float64)))
        bayes = torch.tensor([bayes_expected_missing(int(n) - 3, alpha) for n in noised.lengths])
        table.append({"t": time_value, "head_total": float(head.mean()),
                      "bayes_total": float(bayes.mean()),
                      "realised_missing": float((lengths - noised.lengths).float().mean()),
                      "mean_abs_head_minus_bayes": float((head - bayes).abs().mean())})
    return {"rows": len(rows), "table": table}
