"""Decoding both arms the way a user would, and choosing each arm's settings by one rule.

Every arm samples through :class:`retrofit.pipeline.Pipeline` (the checkpoint's own prompt layout:
the FlexMDM grows the middle between ``prefix <|mid|>`` and ``<|suf|> suffix``, the MDM writes it
after its PSM prompt and stops at EOS). A plain sample is an infilling task with an empty prefix
and suffix.

The grids (:func:`decoding_grid`): temperature for both arms; the FlexMDM's insertion draw
(``binomial``, exact as the arrival probability goes to 1, or the paper's ``poisson``; when the
installed sampler has the option); the MDM's remasking rule (LLaDA's ``low_confidence`` and
``random``) and semi-autoregressive blocks (one block, or two).

The rule (:func:`select_setting`), the same for both arms, on the selection split (held-out
strings of the first seed, never the evaluation set): for plain samples, validity first (the
settings within one sample of the arm's most valid one), then the lowest length W1 against the
data's length law; for infilling, the highest share of correct completions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .settings import DemoSettings, SeedPaths
from .stages import read_jsonl
from .task import CANVAS_LENGTH, MAX_MIDDLE, infill_ok, is_valid, length_w1

__all__ = ["choose_settings", "decoding_grid", "sampler_settings", "score_setting", "select_setting",
           "selection_is_current", "supports_draws"]

BENCHMARKS = ("unconditional", "infill")


def supports_draws() -> bool:
    """Whether the installed FlexMDM sampler has the ``insertion_draw`` option (issue 18 item 1)."""
    try:
        from retrofit.sampling import FlexMDMSamplingConfig
    except ImportError:
        return False
    return "insertion_draw" in getattr(FlexMDMSamplingConfig, "__dataclass_fields__", {})


def decoding_grid(arm: str, settings: DemoSettings) -> list[dict[str, Any]]:
    """The settings an arm is tried with (each a dict with a ``name``)."""
    grid = []
    if arm == "flexmdm":
        draws = settings.insertion_draws if supports_draws() else ("poisson",)
        for temperature in settings.temperatures:
            for draw in draws:
                entry = {"name": f"T={temperature:g} {draw}", "temperature": temperature}
                if supports_draws():
                    entry["insertion_draw"] = draw
                grid.append(entry)
        return grid
    for temperature in settings.temperatures:
        for remasking in settings.remasking:
            for blocks in settings.block_counts:
                grid.append({"name": f"T={temperature:g} {remasking} {blocks} block(s)",
                             "temperature": temperature, "remasking": remasking, "blocks": blocks})
    return grid


def sampler_settings(arm: str, setting: Mapping[str, Any], benchmark: str, settings: DemoSettings,
                     special: Mapping[str, int]) -> dict[str, Any]:
    """The Pipeline's sampler keywords of one grid setting for one benchmark. The samplers never
    emit BOS, the mask or a marker; the FlexMDM never emits EOS (its length is its insertions)."""
    values = {key: value for key, value in setting.items() if key not in ("name", "blocks")}
    never = [special["bos"], special["mask"], *special["markers"]]
    if arm == "flexmdm":
        return {**values, "steps": settings.sampling_steps, "max_length": 2 * CANVAS_LENGTH,
                "forbid_token_ids": [*never, special["eos"]]}
    gen_length = CANVAS_LENGTH if benchmark == "unconditional" else 2 * MAX_MIDDLE
    return {**values, "steps": settings.sampling_steps, "gen_length": gen_length,
            "block_length": gen_length // int(setting["blocks"]), "forbid_token_ids": never}


def special_ids(pipeline: Any) -> dict[str, Any]:
    """The ids the demo's samplers need, from the checkpoint's tokenizer."""
    tokenizer = pipeline.tokenizer
    markers = tokenizer.convert_tokens_to_ids(["<|mid|>", "<|suf|>"])
    return {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
            "mask": pipeline.model.mask_token_id, "markers": markers}


def generate(pipeline: Any, records: Sequence[Mapping[str, Any]], sampling: Mapping[str, Any],
             seed: int) -> list[str]:
    """Texts the pipeline generates for task records (each from its own random stream)."""
    from retrofit.evaluation.results import sample_stream_id
    from retrofit.pipeline import Task

    tasks = [Task(prefix=r["prefix"], suffix=r["suffix"], stream_id=sample_stream_id(r["task_id"], 0))
             for r in records]
    return [answer.text for answer in pipeline.generate(tasks, sampling, seed=seed)]


def score(benchmark: str, records: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> dict:
    """Selection metrics of one setting: validity, length W1 and mean length of plain samples, or
    the share of correct infillings."""
    from retrofit.evaluation.stats import wilson_interval

    if benchmark == "unconditional":
        hits = sum(is_valid(text) for text in texts)
        lengths = [len(text) for text in texts]
        return {"valid": hits / len(texts), "valid_hits": hits,
                "valid_interval": list(wilson_interval(hits, len(texts))),
                "length_w1": length_w1(lengths), "mean_length": sum(lengths) / len(lengths)}
    hits = sum(infill_ok(r["prefix"], text, r["suffix"]) for r, text in zip(records, texts))
    return {"infill": hits / len(texts), "infill_interval": list(wilson_interval(hits, len(texts)))}


def select_setting(results: Sequence[Mapping[str, Any]], benchmark: str) -> int:
    """Index of the chosen setting (see the module docstring); ties go to the earlier setting."""
    if benchmark == "infill":
        return max(range(len(results)), key=lambda i: (results[i]["infill"], -i))
    best = max(result["valid_hits"] for result in results)
    candidates = [i for i, result in enumerate(results) if result["valid_hits"] >= best - 1]
    return min(candidates, key=lambda i: (results[i]["length_w1"], i))


def _plan(arm: str, settings: DemoSettings, seed: int, identity: str) -> dict[str, Any]:
    return {"identity": identity, "grid": decoding_grid(arm, settings), "seed": seed,
            "steps": settings.sampling_steps,
            "sizes": [settings.selection_samples, settings.selection_infill]}


def _setting_file(paths: SeedPaths, arm: str, index: int) -> Path:
    return paths.selection(arm).with_suffix("") / f"setting-{index}.json"


def score_setting(arm: str, index: int, paths: SeedPaths, settings: DemoSettings, seed: int,
                  identity: str) -> dict[str, Any]:
    """One grid setting of an arm on the selection split (cached per setting for these weights)."""
    from retrofit.pipeline import Pipeline

    plan = _plan(arm, settings, seed, identity)
    path = _setting_file(paths, arm, index)
    cached = json.loads(path.read_text()) if path.is_file() else None
    if cached is not None and cached.get("plan") == plan:
        return cached
    setting = plan["grid"][index]
    started = time.perf_counter()
    pipeline = Pipeline.from_pretrained(paths.arm(arm) / "final", device="cpu", dtype="float32")
    special = special_ids(pipeline)
    rows = {}
    for benchmark in BENCHMARKS:
        records = read_jsonl(paths.tasks("select", benchmark))
        sampling = sampler_settings(arm, setting, benchmark, settings, special)
        rows[benchmark] = {"setting": setting["name"],
                           **score(benchmark, records, generate(pipeline, records, sampling, seed))}
    result = {"plan": plan, "rows": rows, "seconds": time.perf_counter() - started}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def selection_is_current(arm: str, paths: SeedPaths, settings: DemoSettings, seed: int,
                         identity: str) -> bool:
    """Whether ``select/<arm>.json`` holds the choice for these weights, grid and sizes."""
    path = paths.selection(arm)
    plan = _plan(arm, settings, seed, identity)
    return path.is_file() and json.loads(path.read_text()).get("plan") == plan


def choose_settings(arm: str, paths: SeedPaths, settings: DemoSettings, seed: int,
                    identity: str) -> dict[str, Any]:
    """Apply the rule to every scored setting of the arm's grid (scoring what is missing); the
    choice and the tables go to ``select/<arm>.json``."""
    plan = _plan(arm, settings, seed, identity)
    scored = [score_setting(arm, index, paths, settings, seed, identity)
              for index in range(len(plan["grid"]))]
    tables = {b: [entry["rows"][b] for entry in scored] for b in BENCHMARKS}
    chosen = {b: plan["grid"][select_setting(tables[b], b)] for b in BENCHMARKS}
    result = {"plan": plan, "tables": tables, "chosen": chosen,
              "seconds": sum(entry["seconds"] for entry in scored)}
    paths.selection(arm).write_text(json.dumps(result, indent=2))
    return result
