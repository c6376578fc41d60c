"""Push retrofitted checkpoints to the Hugging Face Hub, with a model card rendered from their records.

``retrofit push DIR --repo-id USER/NAME [--private] [--revision BRANCH] [--merged]`` and
:func:`push_checkpoint` upload one checkpoint directory in a single commit:

* the adapter checkpoint's own files (``retrofit_config.json``, the peft adapter, the new FlexMDM
  modules, the tokenizer), never the frozen base weights; a full fine-tune also uploads its
  backbone weights (they are trained); ``merged=True`` uploads a standalone export written by
  ``FlexMDM.merge_and_save`` into a temporary directory instead;
* a generated ``README.md`` model card (see :func:`render_model_card`): Hub metadata, the retrofit
  settings, the training record, the eval results found next to the checkpoint, a usage snippet.
  Every number in it is read from the checkpoint's files.

Before anything is sent the exact set of files to upload is loaded with
``FlexMDM.from_pretrained`` on CPU: a checkpoint that lacks ``retrofit_config.json`` or does not
load is refused. The local checkpoint is only read, never written: files are staged as links in a
temporary directory. The token comes from ``token=``, ``HF_TOKEN`` or ``hf auth login``.

Loading by Hub id lives in :mod:`retrofit.checkpoint_io` (``resolve_checkpoint``), which lower
layers import; this module is an entry point (it imports :mod:`retrofit.adapter` lazily).

Model-card convention: ``library_name: retrofit`` (the checkpoints load with
``retrofit.adapter.FlexMDM.from_pretrained``, not with plain transformers or peft),
``base_model`` only when the base is a Hub id, ``license`` (with ``license_name`` /
``license_link`` when the base gives them, as the Hub expects for ``license: other``) inherited
from the base model's card when it can be read (local directory, Hub, or the Hub cache), else
omitted.

Training runs push through :func:`check_push_access` (at startup, before the model is built) and
:func:`push_training_checkpoint` (each saved checkpoint to a branch or as a commit, then the final
model to ``main``); see ``retrofit.train``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from retrofit.checkpoint_io import (
    ADAPTER_FILES,
    CONFIG_FILE,
    TOKENIZER_FILES,
    is_hub_id,
    resolve_checkpoint,
)
from retrofit.checkpoint_names import RECIPE_FILE, TRAINER_STATE_FILE
from retrofit.checkpoint_names import SUMMARY_FILE as TRAIN_SUMMARY_FILE

__all__ = [
    "CONFIG_FILE",
    "EvalRecord",
    "check_push_access",
    "checkpoint_files",
    "cli_main",
    "find_eval_summaries",
    "push_checkpoint",
    "push_model",
    "push_training_checkpoint",
    "render_model_card",
    "resolve_checkpoint",
    "training_branch_name",
]

logger = logging.getLogger(__name__)

EVAL_SUMMARY_FILE = "summary.json"
LIBRARY_NAME = "retrofit"
DISTRIBUTION_NAME = "flexmdm-retrofit"
USAGE_PROMPT = "Explain in one paragraph what a masked diffusion language model is."

# The adapter checkpoint: what FlexMDM.save_pretrained writes besides the (frozen) base weights.
# Backbone weights and config: uploaded only when they are trained (full fine-tune, merged export).
BACKBONE_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
)
# Files a previous push of the other format may have left in the repo: removed unless re-uploaded.
STALE_REMOTE_PATTERNS = list(ADAPTER_FILES + BACKBONE_FILE_PATTERNS + TOKENIZER_FILES)

# A value in an eval summary is reported as a metric when its key matches this.
METRIC_KEY_PATTERN = re.compile(r"(accuracy|pass@\d+|wasserstein|exact_match|\bf1\b|bleu|rouge)", re.IGNORECASE)
SAMPLE_COUNT_KEYS = ("num_samples", "n_samples", "samples", "n", "count", "total", "num_tasks", "num_problems")
BENCHMARK_NAME_KEYS = ("benchmark", "task", "spec_name", "spec", "name", "benchmark_name")
MODEL_IDENTITY_KEYS = ("model", "path", "checkpoint", "name_or_path", "model_name_or_path")
DATASET_KEYS = ("dataset", "datasets", "dataset_id", "dataset_name", "hub_dataset")


# ------------------------------------------------------------------------------------------------
# Reading the checkpoint's records
# ------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it") from error


def _read_retrofit_config(checkpoint_dir: Path) -> dict[str, Any]:
    """The checkpoint's retrofit_config.json as a dict; a clear error when it is missing."""
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {checkpoint_dir} does not exist")
    config_path = checkpoint_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(
            f"{checkpoint_dir} is not a retrofit checkpoint: {CONFIG_FILE} is missing. Push a directory "
            "written by FlexMDM.save_pretrained (or a training run's checkpoint folder); refusing to push."
        )
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise TypeError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
    return config


def _record_folders(checkpoint_dir: Path, search_run_dir: bool) -> tuple[Path, ...]:
    """Where a checkpoint's records are looked for: the checkpoint directory, then (a training run's
    layout: ``RUN/final``, ``RUN/checkpoint-N/model``) its parent and grandparent."""
    if not search_run_dir:
        return (checkpoint_dir,)
    return checkpoint_dir, checkpoint_dir.parent, checkpoint_dir.parent.parent


def _find_training_record(
    checkpoint_dir: Path, search_run_dir: bool = True
) -> tuple[dict[str, Any] | None, Path | None]:
    """The training record nearest to the checkpoint: ``train_summary.json`` (end of a run, in the
    run directory) or ``trainer_state.json`` (an intermediate ``checkpoint-N/`` of a run), looking in
    the checkpoint directory, then (``search_run_dir``) its parent, then its grandparent."""
    for folder in _record_folders(checkpoint_dir, search_run_dir):
        for name in (TRAIN_SUMMARY_FILE, TRAINER_STATE_FILE):
            path = folder / name
            if path.is_file():
                record = _read_json(path)
                if isinstance(record, dict):
                    return record, path
    return None, None


def _find_recipe(
    checkpoint_dir: Path, record: Mapping[str, Any] | None, search_run_dir: bool = True
) -> dict[str, Any] | None:
    """The resolved recipe the run saved (``recipe.yaml`` in the run directory), else the recipe file
    the training record names; None when neither can be read."""
    candidates = [folder / RECIPE_FILE for folder in _record_folders(checkpoint_dir, search_run_dir)]
    if record and isinstance(record.get("recipe"), str):
        candidates.append(Path(record["recipe"]))
    for path in candidates:
        if path.is_file():
            try:
                recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as error:
                logger.info("could not read the recipe %s: %s", path, error)
                continue
            if isinstance(recipe, dict):
                return recipe
    return None


def checkpoint_files(checkpoint_dir: str | os.PathLike, config: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the files of ``checkpoint_dir`` that a push uploads (before the model card).

    Adapter checkpoints: :data:`ADAPTER_FILES` and tokenizer files present; never backbone weights.
    ``weights: "full"`` checkpoints (full fine-tune or merged export) add the backbone's config and
    safetensors weights. Optimizer/scheduler/RNG states, logs and subdirectories are never uploaded.
    """
    directory = Path(checkpoint_dir)
    config = dict(config) if config is not None else _read_retrofit_config(directory)
    names = {name for name in ADAPTER_FILES + TOKENIZER_FILES if (directory / name).is_file()}
    if config.get("weights") == "full":
        for pattern in BACKBONE_FILE_PATTERNS:
            names.update(path.name for path in directory.glob(pattern) if path.is_file())
    return sorted(names)


# ------------------------------------------------------------------------------------------------
# Eval results
# ------------------------------------------------------------------------------------------------


@dataclass
class EvalRecord:
    """One metric of one benchmark run, read from an evaluator's summary.json."""

    benchmark: str
    metric: str
    value: float
    interval: tuple[float, float] | None
    num_samples: int | None
    dataset: str
    split: str | None
    source: str  # path of the summary.json, relative to the checkpoint's run directory


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, Mapping):
        for low_key, high_key in (("low", "high"), ("lower", "upper"), ("lo", "hi")):
            if _is_number(value.get(low_key)) and _is_number(value.get(high_key)):
                return float(value[low_key]), float(value[high_key])
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(item) for item in value):
        return float(value[0]), float(value[1])
    return None


def _metric_interval(summary: Mapping[str, Any], metrics: Mapping[str, Any], name: str) -> tuple[float, float] | None:
    """The 95% interval stored next to a metric, under the spellings retrofit eval and others use
    (``strict_accuracy`` -> ``strict_interval_95``; the primary metric -> ``interval_95``)."""
    stem = name.removesuffix("_accuracy")
    keys = [f"{name}_ci", f"{name}_ci95", f"{name}_interval", f"{name}_interval_95", f"{stem}_interval_95"]
    for container in (metrics, summary):
        for key in keys:
            if key in container and (interval := _interval(container[key])) is not None:
                return interval
        for key in ("ci", "ci95", "intervals", "confidence_intervals"):
            nested = container.get(key)
            if isinstance(nested, Mapping) and name in nested and (interval := _interval(nested[name])) is not None:
                return interval
    if summary.get("metric") == name:
        return _interval(summary.get("interval_95"))
    return None


def _first_string(summary: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = summary.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _eval_dataset(summary: Mapping[str, Any], benchmark: str) -> tuple[str, str | None]:
    """(dataset id, split) of an eval run: the spec's Hub source when it names one."""
    spec = summary.get("spec") if isinstance(summary.get("spec"), Mapping) else {}
    data = spec.get("data") if isinstance(spec.get("data"), Mapping) else {}
    dataset = data.get("hub") if isinstance(data.get("hub"), str) else _first_string(summary, DATASET_KEYS)
    split = data.get("split") if isinstance(data.get("split"), str) else summary.get("split")
    return dataset or benchmark, split if isinstance(split, str) else None


def _records_from_summary(summary: Mapping[str, Any], path: Path, relative_to: Path) -> list[EvalRecord]:
    """The metrics of one summary.json: accuracy / pass@k keys at the top level or under "metrics",
    the answer-length Wasserstein distance under "lengths", and the declared primary metric."""
    benchmark = _first_string(summary, BENCHMARK_NAME_KEYS) or path.parent.name
    benchmark = Path(benchmark).stem if benchmark.endswith((".yaml", ".yml")) else benchmark
    dataset, split = _eval_dataset(summary, benchmark)
    num_samples = next(
        (int(summary[key]) for key in SAMPLE_COUNT_KEYS
         if _is_number(summary.get(key)) and float(summary[key]).is_integer()),
        None,
    )
    metrics = summary.get("metrics") if isinstance(summary.get("metrics"), Mapping) else {}
    found: dict[str, tuple[float, tuple[float, float] | None]] = {}
    for container in (metrics, summary):
        for key, raw in container.items():
            if key in found or not METRIC_KEY_PATTERN.search(key) or re.search(r"(_ci|_ci95|_interval|_95ci)$", key):
                continue
            value, interval = raw, None
            if isinstance(raw, Mapping):  # {"value": 0.41, "ci95": [0.38, 0.44]} style
                value = next((raw[k] for k in ("value", "mean", "estimate", "score") if _is_number(raw.get(k))), None)
                interval = next((iv for k in ("ci95", "ci", "interval") if (iv := _interval(raw.get(k))) is not None),
                                None)
            if _is_number(value):
                found[key] = (float(value), interval or _metric_interval(summary, metrics, key))
    lengths = summary.get("lengths")
    if isinstance(lengths, Mapping) and _is_number(lengths.get("wasserstein_1")) and "wasserstein_1" not in found:
        found["wasserstein_1"] = (float(lengths["wasserstein_1"]), None)
    primary = summary.get("metric")
    if isinstance(primary, str) and primary not in found and _is_number(summary.get("value")):
        found[primary] = (float(summary["value"]), _interval(summary.get("interval_95")))
    try:
        source = path.relative_to(relative_to).as_posix()
    except ValueError:
        source = path.as_posix()
    return [
        EvalRecord(benchmark=benchmark, metric=name, value=value, interval=interval, num_samples=num_samples,
                   dataset=dataset, split=split, source=source)
        for name, (value, interval) in found.items()
    ]


def find_eval_summaries(
    checkpoint_dir: str | os.PathLike,
    eval_paths: Iterable[str | os.PathLike] = (),
    *,
    search_run_dir: bool = True,
) -> list[Path]:
    """summary.json files of eval runs on this checkpoint.

    ``eval_paths`` (files or directories, searched recursively) are used when given; otherwise the
    checkpoint directory and (``search_run_dir``) the run directory's ``eval*/`` folders are
    searched (3 levels deep). Discovered summaries that name another model are left out (see
    :func:`_summary_is_about`); explicit ``eval_paths`` are taken as they are.
    """
    checkpoint = Path(checkpoint_dir).expanduser().resolve()
    roots: list[Path] = [Path(path) for path in eval_paths]
    explicit = bool(roots)
    if not roots:
        roots = [checkpoint]
        if search_run_dir:
            roots += sorted(
                folder for folder in checkpoint.parent.glob("eval*") if folder.is_dir() and folder != checkpoint
            )
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"eval results path {root} does not exist")
        for depth in range(4):
            found.extend(sorted(root.glob("/".join(["*"] * depth + [EVAL_SUMMARY_FILE]))))
    unique = list(dict.fromkeys(path.resolve() for path in found))
    if explicit:
        return unique
    # Discovered summaries of another checkpoint of the same run (they name it) are not this model's.
    return [path for path in unique if _summary_is_about(path, checkpoint)]


def _path_names_checkpoint(recorded: str, checkpoint: Path, summary_path: Path) -> bool | None:
    """Whether the model path an eval recorded (in ``summary_path``) is ``checkpoint``; None when
    ``recorded`` may be a Hub id and nothing says which it is.

    Never resolved against the current directory (the eval may have run from anywhere):

    * an absolute path names the checkpoint when it resolves to it; one that no longer exists (the
      run directory was moved, or it was another checkpoint since pruned) when its last two
      components are the checkpoint's (``RUN/final``, ``checkpoint-N/model``);
    * a relative path (``runs/x/final``, ``./final``, ``../x/checkpoint-5/model``) names it when its
      components, without leading ``.``/``..``, are the trailing components of the checkpoint's
      absolute path; it names another directory when it exists relative to a folder holding the
      summary (``checkpoint-5/model`` next to ``eval/``), or when it cannot be a Hub id.
    """
    text = recorded.strip()
    expanded = Path(text).expanduser()
    if expanded.is_absolute():
        if expanded.exists():
            return expanded.resolve() == checkpoint
        tail = min(2, len(expanded.parts) - 1, len(checkpoint.parts) - 1)
        return tail > 0 and expanded.parts[-tail:] == checkpoint.parts[-tail:]
    parts = [part for part in Path(os.path.normpath(text)).parts if part not in (".", "..")]
    if not parts:
        return None
    names_it = len(parts) < len(checkpoint.parts) and tuple(parts) == checkpoint.parts[-len(parts):]
    if names_it:
        return True
    if any((folder / text).is_dir() for folder in summary_path.parents):
        return False  # a local directory that is not this checkpoint
    return None if is_hub_id(text, check_local=False) else False


def _file_sha256(path: Path) -> str | None:
    """sha256 hex digest of a file's bytes; None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _summary_is_about(path: Path, checkpoint: Path) -> bool:
    """Whether an eval summary found next to ``checkpoint`` is about it.

    ``retrofit eval`` records ``{"model": {"model": DIR_OR_HUB_ID, "retrofit_config_sha256": ...}}``.
    False when the recorded ``retrofit_config.json`` digest differs from the checkpoint's, or the
    recorded model path names another directory (absolute or relative paths; see
    :func:`_path_names_checkpoint`); True when nothing says otherwise (no identity, or a Hub id).
    """
    try:
        summary = _read_json(path)
    except ValueError:
        return False
    if not isinstance(summary, Mapping):
        return False
    checkpoint = checkpoint.expanduser().resolve()
    identity: Any = summary.get("model")
    if isinstance(identity, Mapping):
        digest = identity.get("retrofit_config_sha256")
        if isinstance(digest, str) and digest and digest != _file_sha256(checkpoint / CONFIG_FILE):
            return False
        identity = next((identity[key] for key in MODEL_IDENTITY_KEYS if isinstance(identity.get(key), str)), None)
    if isinstance(identity, str) and identity.strip():
        return _path_names_checkpoint(identity, checkpoint, path) is not False
    return True


# ------------------------------------------------------------------------------------------------
# The model card
# ------------------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    """Render a recorded value for a Markdown table (no rounding of integers)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        exact = repr(value)  # the shortest text that reads back as the recorded value
        return exact if len(exact) <= 12 else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value) if value else "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_format_value(item)}" for key, item in value.items()) or "none"
    if value is None:
        return "none"
    text = str(value)
    if os.path.isabs(text):  # a path on the training machine: its name is what is meaningful here
        text = f"{Path(text).name} (local path)"
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _summary_value(summary: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if _is_number(summary.get(key)):
            return summary[key]
    return None


def _find_strings(data: Any, keys: Sequence[str], depth: int = 0) -> list[str]:
    """Every string (or list of strings) stored under one of ``keys`` in nested dicts/lists."""
    if depth > 4:
        return []
    found: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            if key in keys:
                if isinstance(value, str):
                    found.append(value)
                elif isinstance(value, (list, tuple)):
                    found.extend(item for item in value if isinstance(item, str))
            found.extend(_find_strings(value, keys, depth + 1))
    elif isinstance(data, (list, tuple)):
        for item in data:
            found.extend(_find_strings(item, keys, depth + 1))
    return found


def _hub_datasets(record: Mapping[str, Any] | None, recipe: Mapping[str, Any] | None) -> list[str]:
    """Hub dataset ids the run trained on: named in the training record or in the recipe's data
    section (a recipe without ``data.path`` uses its kind's default Hub dataset). Local files are
    not Hub metadata and are left out."""
    names = _find_strings(record, DATASET_KEYS) if record else []
    data = recipe.get("data") if isinstance(recipe, Mapping) else None
    if isinstance(data, Mapping):
        names += _find_strings({"data": data}, DATASET_KEYS + ("path",))
        if data.get("path") is None and isinstance(data.get("kind"), str):
            from retrofit.data import DEFAULT_HUB_DATASETS

            default = DEFAULT_HUB_DATASETS.get(data["kind"], (None, None))[0]
            if default:
                names.append(default)
    hub_ids = [name for name in names if "/" in name and is_hub_id(name) and not re.search(r"\.\w+$", name)]
    return list(dict.fromkeys(hub_ids))


LICENSE_KEYS = ("license", "license_name", "license_link")


def _base_license(base_model: str | None, base_revision: str | None) -> dict[str, str]:
    """The license metadata of the base model's card, when it can be read: ``license`` and, when the
    card gives them (the Hub expects them with ``license: other``), ``license_name`` and
    ``license_link``. A relative ``license_link`` (``LICENSE``: a file of the base repo) becomes
    the URL of that file in the base repo at its recorded revision; one relative to a local base
    directory is dropped (it would point nowhere). Empty when nothing can be read."""
    if not base_model:
        return {}
    from huggingface_hub import constants, hf_hub_download, metadata_load, try_to_load_from_cache

    readme: str | os.PathLike | None = None
    local = Path(base_model).expanduser()
    if local.is_dir():
        readme = local / "README.md" if (local / "README.md").is_file() else None
    elif is_hub_id(base_model):
        cached = try_to_load_from_cache(base_model, "README.md", revision=base_revision)
        if isinstance(cached, str):
            readme = cached
        elif not constants.is_offline_mode():
            try:
                readme = hf_hub_download(base_model, "README.md", revision=base_revision)
            except (OSError, ValueError, *_transport_error_types()) as error:  # license stays unknown
                logger.info("could not read the base model's card for its license: %s", error)
    if readme is None:
        return {}
    try:
        metadata = metadata_load(readme) or {}
    except (OSError, ValueError, yaml.YAMLError) as error:  # malformed card: license stays unknown
        logger.info("could not parse the base model card %s: %s", readme, error)
        return {}
    if not isinstance(metadata.get("license"), str):
        return {}
    found = {key: value.strip() for key in LICENSE_KEYS
             if isinstance(value := metadata.get(key), str) and value.strip()}
    link = found.get("license_link")
    if link is not None and not re.match(r"^[a-z][a-z0-9+.-]*://", link, re.IGNORECASE):
        if local.is_dir():
            del found["license_link"]
        else:
            from urllib.parse import quote

            found["license_link"] = (f"{constants.ENDPOINT}/{base_model}/blob/"
                                     f"{quote(base_revision or constants.DEFAULT_REVISION, safe='')}/"
                                     f"{quote(link.removeprefix('./'))}")
    return found


def _retrofit_rows(config: Mapping[str, Any], merged: bool) -> list[tuple[str, str]]:
    weights = config.get("weights", "adapter")
    if merged or config.get("merged"):
        weights_text = "merged standalone weights (LoRA folded into the backbone)"
    elif weights == "full":
        weights_text = "full backbone weights (full fine-tune)"
    else:
        weights_text = "adapter only (LoRA + new modules); the base model is downloaded at load time"
    rows = [
        ("Model kind", _format_value(config.get("kind"))),
        ("Base model", _format_value(config.get("base_model"))),
        ("Base revision", _format_value(config.get("base_revision"))),
        ("Weights", weights_text),
        ("Insertion schedule", _format_value(config.get("insertion_schedule"))),
        ("Unmasking schedule", _format_value(config.get("unmasking_schedule"))),
    ]
    lora = config.get("lora")
    rows.append(("LoRA", _format_value(lora) if isinstance(lora, Mapping) else "none"))
    skip = {"kind", "base_model", "base_revision", "weights", "merged", "insertion_schedule", "unmasking_schedule", "lora"}
    rows += [(key, _format_value(value)) for key, value in config.items() if key not in skip]
    return rows


def _training_section(record: Mapping[str, Any] | None, record_path: Path | None, datasets: list[str],
                      run_dir: Path) -> list[str]:
    """Markdown lines describing the run, all values read from its training record."""
    if record is None or record_path is None:
        missing = f"No training record (`{TRAIN_SUMMARY_FILE}` or `{TRAINER_STATE_FILE}`) was found next to this checkpoint."
        return [missing, ""]
    lines: list[str] = []
    steps = _summary_value(record, ("steps", "global_step", "total_steps", "step", "optimizer_steps"))
    tokens = _summary_value(record, ("tokens", "tokens_seen", "total_tokens", "num_tokens", "train_tokens"))
    facts = []
    if steps is not None:
        facts.append(f"{int(steps):,} optimizer steps" if float(steps).is_integer() else f"{steps} optimizer steps")
    if tokens is not None:
        facts.append(f"{int(tokens):,} training tokens" if float(tokens).is_integer() else f"{tokens} training tokens")
    if facts:
        lines += ["Trained for " + " on ".join(facts) + ".", ""]
    if datasets:
        links = ", ".join(f"[{name}](https://huggingface.co/datasets/{name})" for name in datasets)
        lines += [f"Training data: {links}.", ""]
    rows = [(key, _format_value(value)) for key, value in record.items()
            if isinstance(value, (str, int, float, bool)) or value is None]
    if rows:
        lines += [_table(("Record", "Value"), rows), ""]
    try:
        shown = record_path.resolve().relative_to(run_dir).as_posix()
    except ValueError:
        shown = record_path.name
    lines += [f"Values from `{shown}`.", ""]
    return lines


def _eval_section(records: list[EvalRecord]) -> list[str]:
    """Markdown table of the eval results (one row per metric)."""
    if not records:
        return ["No evaluation results (`summary.json` from `retrofit eval`) were found next to this checkpoint.", ""]
    rows = [
        (
            record.benchmark,
            record.metric,
            _format_value(record.value),
            f"[{_format_value(record.interval[0])}, {_format_value(record.interval[1])}]" if record.interval else "",
            str(record.num_samples) if record.num_samples is not None else "",
            f"`{record.source}`",
        )
        for record in records
    ]
    return [_table(("Benchmark", "Metric", "Value", "95% interval", "Samples", "Source"), rows), ""]


def _usage_section(load_name: str, kind: str) -> list[str]:
    """How to load the model and generate: the CLI, and the same steps in Python through
    :class:`retrofit.pipeline.Pipeline` (tokenizer, recorded prompt layout, the sampler of the
    checkpoint's kind, the answer cut at its first stop id). tests/test_hub.py executes the
    Python snippet and compares it with ``retrofit generate``."""
    if kind == "mdm":
        call = [
            "# An MDM fills a fixed canvas: 256 tokens, or what the model's max_length leaves.",
            "prompt_length = len(pipe.encode([task])[0][0])",
            "settings = {\"gen_length\": min(256, pipe.model.config.max_length - prompt_length)}",
            "answer = pipe.generate([task], settings)[0]",
        ]
    else:
        call = ["answer = pipe.generate([task])[0]  # the model chooses the answer length"]
    return [
        "## Usage",
        "",
        "```bash",
        f"pip install {DISTRIBUTION_NAME}",
        f'retrofit generate --model {load_name} --prompt "{USAGE_PROMPT}"',
        "```",
        "",
        "```python",
        "from retrofit.pipeline import Pipeline, Task",
        "",
        "# Loads the tokenizer and the prompt layout the model was trained with; revision=... pins",
        "# a branch, tag or commit.",
        f'pipe = Pipeline.from_pretrained("{load_name}")',
        f'task = Task(prompt="{USAGE_PROMPT}")',
        *call,
        "print(answer.text)",
        "```",
        "",
        "Sampling settings (steps, confidence rule, infilling with `--prefix`/`--suffix`): `retrofit generate --help`.",
        "",
    ]


def _card_metadata(config: Mapping[str, Any], kind: str, model_name: str,
                   eval_records: list[EvalRecord], datasets: list[str], *, is_full: bool) -> Any:
    """The card's YAML front matter: base model, library, license, datasets, tags, eval results."""
    from huggingface_hub import EvalResult, ModelCardData

    base_model = config.get("base_model") if isinstance(config.get("base_model"), str) else None
    base_revision = config.get("base_revision") if isinstance(config.get("base_revision"), str) else None
    base_is_hub = bool(base_model) and is_hub_id(base_model)
    tags = ["flexmdm" if kind == "flexmdm" else "mdm-baseline", "retrofit", "masked-diffusion",
            "diffusion-language-model"]
    if isinstance(config.get("lora"), Mapping) and not is_full:
        tags.append("lora")
    eval_results = [
        EvalResult(task_type="text-generation", task_name="Text generation",
                   dataset_type=item.dataset, dataset_name=item.benchmark, dataset_split=item.split,
                   metric_type=item.metric, metric_name=item.metric, metric_value=item.value)
        for item in eval_records
    ]
    return ModelCardData(
        base_model=base_model if base_is_hub else None,
        library_name=LIBRARY_NAME,
        **_base_license(base_model, base_revision),
        datasets=datasets or None,
        tags=tags,
        pipeline_tag="text-generation",
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        base_model_relation=("finetune" if is_full else "adapter") if base_is_hub else None,
    )


def _card_intro(kind: str, base_model: str | None, *, is_full: bool) -> str:
    """The card's first paragraph: what the model is, what it was retrofitted from, what it holds."""
    base_is_hub = bool(base_model) and is_hub_id(base_model)
    if base_is_hub:
        base_text = f"[{base_model}](https://huggingface.co/{base_model})"
    else:
        base_text = f"`{_format_value(base_model)}`"
    what = ("a FlexMDM (any-length masked diffusion: insertion + unmasking)" if kind == "flexmdm"
            else "a masked diffusion model (MDM baseline)")
    weights = ("It holds standalone weights." if is_full else
               "It holds only the trained adapter (LoRA and the new time-conditioning and insertion "
               "modules); the base model is downloaded when it is loaded.")
    if not is_full and not base_is_hub:
        weights += (" The base model was a local directory when this adapter was trained: load it with "
                    "`FlexMDM.from_pretrained(..., base_model=PATH_OR_HUB_ID)`.")
    return (f"This model is {what} retrofitted from {base_text} with "
            f"[retrofit](https://pypi.org/project/{DISTRIBUTION_NAME}/). {weights}")


def render_model_card(
    checkpoint_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    merged: bool = False,
    eval_paths: Iterable[str | os.PathLike] = (),
    search_run_dir: bool = True,
) -> str:
    """Render the README.md model card of a checkpoint from its own files.

    Reads ``retrofit_config.json`` (retrofit settings), the nearest training record
    (``train_summary.json`` of the run, or ``trainer_state.json`` of an intermediate checkpoint:
    steps, tokens, other scalars), the run's ``recipe.yaml`` (training datasets), the base model's
    card (license) and the eval ``summary.json`` files from :func:`find_eval_summaries`.

    ``search_run_dir=False`` reads records from the checkpoint directory alone (and ``eval_paths``),
    never from its parent or grandparent: for a directory that is no run's (a live model saved to a
    temporary directory by :func:`push_model`), whose surroundings hold other runs' files.

    Returns:
        Markdown with YAML front matter (``base_model`` when the base is a Hub id,
        ``library_name: retrofit``, ``tags``, ``license`` (and ``license_name`` /
        ``license_link``) when the base model's card gives one,
        ``datasets``, ``model-index`` with the eval results) that ``huggingface_hub.ModelCard``
        parses. Every number in it comes from those files.
    """
    from huggingface_hub import ModelCard

    checkpoint = Path(checkpoint_dir).expanduser().resolve()
    config = _read_retrofit_config(checkpoint)
    record, record_path = _find_training_record(checkpoint, search_run_dir)
    recipe = _find_recipe(checkpoint, record, search_run_dir)
    run_dir = checkpoint.parent if search_run_dir else checkpoint
    eval_records = [
        item for path in find_eval_summaries(checkpoint, eval_paths, search_run_dir=search_run_dir)
        for item in _records_from_summary(_read_json(path), path, run_dir)
    ]

    kind = str(config.get("kind", "flexmdm"))
    base_model = config.get("base_model") if isinstance(config.get("base_model"), str) else None
    is_full = merged or bool(config.get("merged")) or config.get("weights") == "full"
    model_name = repo_id.split("/")[-1] if repo_id else checkpoint.name
    load_name = repo_id or str(checkpoint)

    datasets = _hub_datasets(record, recipe)
    card_data = _card_metadata(config, kind, model_name, eval_records, datasets, is_full=is_full)
    intro = _card_intro(kind, base_model, is_full=is_full)
    sections = [
        f"# {model_name}",
        "",
        intro,
        "",
        "## Retrofit",
        "",
        _table(("Setting", "Value"), _retrofit_rows(config, merged)),
        "",
        "## Training",
        "",
        *_training_section(record, record_path, datasets, run_dir),
        "## Evaluation",
        "",
        *_eval_section(eval_records),
        *_usage_section(load_name, kind),
    ]
    card = ModelCard("---\n" + card_data.to_yaml() + "\n---\n\n" + "\n".join(sections))
    return str(card)


# ------------------------------------------------------------------------------------------------
# Pushing
# ------------------------------------------------------------------------------------------------


def _transport_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean the network failed (the Hub client's HTTP library + builtins)."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            types.append(importlib.import_module(module_name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def _network_cause(error: BaseException) -> BaseException | None:
    """The network failure in ``error``'s cause/context chain, if any."""
    types = _transport_error_types()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _stage_files(source: Path, names: Sequence[str], staging: Path) -> None:
    """Expose ``names`` of ``source`` in ``staging`` without copying (symlink, else hard link, else copy)."""
    staging.mkdir(parents=True, exist_ok=True)
    for name in names:
        target, link = (source / name).resolve(), staging / name
        try:
            link.symlink_to(target)
        except OSError:
            try:
                os.link(target, link)
            except OSError:
                shutil.copy2(target, link)


def _load_for_check(directory: Path, what: str) -> Any:
    """Load ``directory`` with FlexMDM.from_pretrained on CPU; a ValueError when it does not load."""
    try:
        from retrofit.adapter import FlexMDM
    except ImportError as error:
        raise ImportError(f"retrofit.adapter is needed to check {what} before pushing: {error}") from error
    try:
        model = FlexMDM.from_pretrained(str(directory))
    except Exception as error:  # any load failure means the upload would be unusable
        raise ValueError(
            f"{what} does not load with FlexMDM.from_pretrained ({type(error).__name__}: {error}); "
            "refusing to push a checkpoint that others could not load. Re-save it with "
            "FlexMDM.save_pretrained, or make its base model reachable."
        ) from error
    return model


def _resolve_token(token: str | None) -> tuple[str, str]:
    """(token, where it came from); PermissionError when there is none."""
    from huggingface_hub import get_token

    if token:
        return token, "the token argument"
    found = get_token()
    if not found:
        raise PermissionError(
            "no Hugging Face token found: set HF_TOKEN, run `hf auth login` (formerly "
            "`huggingface-cli login`), or pass --token. Create a token with write access at "
            "https://huggingface.co/settings/tokens."
        )
    source = "HF_TOKEN" if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") else "`hf auth login`"
    return found, source


@contextmanager
def _hub_errors(action: str, where: str, token_source: str) -> Iterator[None]:
    """Turn the Hub client's errors into PermissionError / ConnectionError / RuntimeError that say
    what to do. ``action`` says what was being done ("pushing DIR"), ``where`` the repo URL."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"the Hub rejected the token from {token_source} for {where} (HTTP {status}): it is invalid, "
                "expired, or lacks write access to this namespace. Create a token with write access at "
                "https://huggingface.co/settings/tokens, then set HF_TOKEN or run `hf auth login`. "
                "Nothing was uploaded."
            ) from error
        raise RuntimeError(f"{action} to {where} failed: {error}") from error
    except Exception as error:
        cause = _network_cause(error)
        if cause is None:
            raise
        raise ConnectionError(
            f"network failure while {action} to {where} ({type(cause).__name__}: {cause}). "
            "Nothing was committed and the local checkpoint is unchanged; run the same command again "
            "(large files already uploaded are not sent twice)."
        ) from error


def _check_token_accepted(api: Any, action: str, where: str, token_source: str) -> Mapping[str, Any]:
    """Fail fast on a rejected or read-only token, before the (possibly long) load check; returns the
    token owner's identity (``whoami``), empty when the check could not run (e.g. rate-limited)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        with _hub_errors(action, where, token_source):
            identity = api.whoami(cache=True)
    except RuntimeError as error:  # e.g. rate-limited (429): the commit itself will tell
        if not isinstance(error.__cause__, HfHubHTTPError):
            raise
        logger.info("token check skipped: %s", error)
        return {}
    access = identity.get("auth", {}).get("accessToken", {}) if isinstance(identity, Mapping) else {}
    if isinstance(access, Mapping) and access.get("role") == "read":
        raise PermissionError(
            f"the token from {token_source} is read-only: it cannot push to {where}. Create a token with "
            "write access at https://huggingface.co/settings/tokens, then set HF_TOKEN or run `hf auth login`. "
            "Nothing was uploaded."
        )
    return identity if isinstance(identity, Mapping) else {}


def check_push_access(
    repo_id: str, *, token: str | None = None, create: bool = False, private: bool = False
) -> str:
    """Preflight for a run that will push later: a token exists, the Hub accepts it and it is not
    read-only. Call it before training so a missing or bad token fails in seconds, not hours.

    ``create=True`` also creates the repo now (``private`` as in :func:`push_checkpoint`; nothing
    happens when it exists), which proves the token may write to its namespace: a token of another
    user or an organisation it cannot write to fails here (HTTP 403) instead of at the first push.

    Returns the Hub user (or organisation) name the token belongs to.

    Raises:
        ValueError: invalid ``repo_id``.
        PermissionError: no token, rejected token, a read-only token, or (``create``) no write
            access to the repo's namespace.
        ConnectionError: offline mode, or the Hub cannot be reached.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid repo id {repo_id!r}: {error} (expected e.g. 'user/llada-flexmdm')") from error
    if constants.is_offline_mode():
        raise ConnectionError("offline mode is on (HF_HUB_OFFLINE=1): unset it to push to the Hub")
    resolved_token, token_source = _resolve_token(token)
    api = HfApi(token=resolved_token)
    where = f"{api.endpoint}/{repo_id}"
    identity = _check_token_accepted(api, "checking push access", where, token_source)
    if create:
        with _hub_errors("creating the repo", where, token_source):
            api.create_repo(repo_id, private=private, exist_ok=True)
    return str(identity.get("name", ""))


def _check_push_target(checkpoint: Path, config: Mapping[str, Any], repo_id: str, *, merged: bool) -> None:
    """A valid repo id; a warning when the adapter's base model is a local directory that others
    cannot download."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid repo id {repo_id!r}: {error} (expected e.g. 'user/llada-flexmdm')") from error
    base_model = config.get("base_model")
    if not merged and config.get("weights") != "full" and isinstance(base_model, str) and not is_hub_id(base_model):
        warnings.warn(
            f"{checkpoint} is an adapter on the local base model {base_model!r}, which others cannot download: "
            "they will need FlexMDM.from_pretrained(..., base_model=...). Push with merged=True (--merged) "
            "for a standalone model.",
            stacklevel=3,
        )


def _commit_folder(api: Any, repo_id: str, folder: Path, *, revision: str | None, private: bool,
                   message: str) -> Any:
    """Create the repo (and branch) if missing and upload ``folder`` as one commit, removing files
    a push of the other format (adapter / merged) left behind."""
    from huggingface_hub import constants

    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                             commit_message=message, delete_patterns=STALE_REMOTE_PATTERNS)


def _authorised_api(token: str | None, repo_id: str, revision: str | None, action: str) -> tuple[Any, str, str]:
    """(an ``HfApi`` with an accepted token, where the token came from, the target for messages);
    offline mode or a rejected token is one clear error before anything is staged."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise ConnectionError("offline mode is on (HF_HUB_OFFLINE=1): unset it to push to the Hub")
    resolved_token, token_source = _resolve_token(token)
    api = HfApi(token=resolved_token)
    where = f"{api.endpoint}/{repo_id}" + (f" (branch {revision})" if revision else "")
    _check_token_accepted(api, action, where, token_source)
    return api, token_source, where


def _stage_upload(checkpoint: Path, names: Sequence[str], staging: Path, *, merged: bool,
                  verify: bool) -> None:
    """Put the files to upload into ``staging``: the checkpoint's own files (linked), or a merged
    export plus the tokenizer; with ``verify`` the staged set must load with
    ``FlexMDM.from_pretrained`` (a file missing from the set fails here, not for the downloader)."""
    if merged:
        model = _load_for_check(checkpoint, f"checkpoint {checkpoint}")
        model.merge_and_save(str(staging))
        del model
        # The export holds weights only; the tokenizer saved with the checkpoint goes along.
        tokenizer_names = [name for name in names if name in TOKENIZER_FILES and not (staging / name).exists()]
        _stage_files(checkpoint, tokenizer_names, staging)
        if verify:
            _load_for_check(staging, f"the merged export of {checkpoint}")
        return
    _stage_files(checkpoint, names, staging)
    if verify:
        _load_for_check(staging, f"checkpoint {checkpoint} (files: {', '.join(names)})")


def push_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    merged: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    eval_paths: Iterable[str | os.PathLike] = (),
    verify: bool = True,
    dry_run: bool = False,
    search_run_dir: bool = True,
) -> str:
    """Upload a retrofit checkpoint and its generated model card to the Hub in one commit.

    Args:
        checkpoint_dir: a directory written by ``FlexMDM.save_pretrained`` (or a training run's
            checkpoint folder); only read, never modified.
        repo_id: ``namespace/name`` (or ``name`` for your own namespace); created if missing.
        private: create the repo private (ignored when it already exists, as on the Hub).
        revision: branch to commit to (created from ``main`` if missing); default ``main``.
        merged: upload a standalone export (``FlexMDM.merge_and_save``) instead of the adapter.
        token: Hub token; default ``HF_TOKEN`` or the ``hf auth login`` token.
        commit_message: default "Upload retrofit checkpoint <name>".
        eval_paths: eval result files/directories for the card (default: found next to the checkpoint).
        verify: load the upload set with ``FlexMDM.from_pretrained`` on CPU first (keep True unless
            the caller has just saved it from a live model). A merged push always loads the
            checkpoint (to merge it).
        dry_run: check and stage everything but contact no server; returns a description of the
            upload instead of a URL.
        search_run_dir: let the card read the training record, recipe and evals of the run
            directory around the checkpoint (see :func:`render_model_card`); False for a directory
            that belongs to no run.

    Returns:
        The URL of the commit on the Hub.

    Raises:
        ValueError: not a retrofit checkpoint (no ``retrofit_config.json``), it does not load, or
            ``repo_id`` is invalid.
        PermissionError: no token, or the Hub rejected it (HTTP 401/403).
        ConnectionError: the network failed or offline mode is on; nothing was committed and the
            local files are unchanged.
    """
    checkpoint = Path(checkpoint_dir).expanduser().resolve()
    config = _read_retrofit_config(checkpoint)
    _check_push_target(checkpoint, config, repo_id, merged=merged)
    names = checkpoint_files(checkpoint, config)
    api, token_source, where = None, "", repo_id
    if not dry_run:
        api, token_source, where = _authorised_api(token, repo_id, revision, f"pushing {checkpoint}")

    with tempfile.TemporaryDirectory(prefix="retrofit-push-") as temp:
        staging = Path(temp) / "upload"
        _stage_upload(checkpoint, names, staging, merged=merged, verify=verify)
        (staging / "README.md").write_text(
            render_model_card(checkpoint, repo_id=repo_id, merged=merged, eval_paths=eval_paths,
                              search_run_dir=search_run_dir),
            encoding="utf-8",
        )
        uploaded = sorted(path.name for path in staging.iterdir())
        if api is None:
            return f"dry run: would upload {', '.join(uploaded)} to {repo_id}" + (f"@{revision}" if revision else "")

        message = commit_message or f"Upload retrofit checkpoint {checkpoint.name}" + (" (merged)" if merged else "")
        with _hub_errors(f"pushing {checkpoint}", where, token_source):
            commit = _commit_folder(api, repo_id, staging, revision=revision, private=private, message=message)
    logger.info("pushed %s to %s: %s", checkpoint, where, commit.commit_url)
    return commit.commit_url


def push_model(model: Any, repo_id: str, **kwargs: Any) -> str:
    """Save a live ``FlexMDM`` to a temporary directory and push it to ``repo_id``.

    ``kwargs`` are those of :func:`push_checkpoint`. The model is saved into a private directory
    nested in a fresh temporary one, and the card reads records from that directory alone
    (``search_run_dir=False``): nothing around the system's temporary directory (another run's
    ``train_summary.json`` or ``eval*/`` results) can end up in the card. It therefore has no
    training record and only the evals passed as ``eval_paths`` (push the run's checkpoint
    directory instead to include its records).
    """
    kwargs.setdefault("search_run_dir", False)
    with tempfile.TemporaryDirectory(prefix="retrofit-save-") as temp:
        directory = Path(temp) / "model"
        model.save_pretrained(str(directory))
        return push_checkpoint(directory, repo_id, **kwargs)


def training_branch_name(step: int) -> str:
    """The branch a training checkpoint is pushed to in ``mode="branch"``: ``step-000500``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step-{step:06d}"


def push_training_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    step: int | None = None,
    final: bool = False,
    mode: Literal["commit", "branch"] = "commit",
    private: bool = False,
    token: str | None = None,
    verify: bool = True,
) -> str:
    """Push from a training loop (main process only): each saved checkpoint and/or the final one.

    ``mode="commit"`` adds one commit per checkpoint to ``main`` (history = checkpoints);
    ``mode="branch"`` pushes each checkpoint to its own branch ``step-NNNNNN`` (see
    :func:`training_branch_name`) and leaves ``main`` for the final model. ``final=True`` always
    commits to ``main``. Returns the commit URL.
    """
    if mode not in ("commit", "branch"):
        raise ValueError(f"mode must be 'commit' or 'branch', got {mode!r}")
    if not final and step is None:
        raise ValueError("push_training_checkpoint: pass step= for an intermediate checkpoint (or final=True)")
    revision = None if final or mode == "commit" else training_branch_name(step)
    message = "Final retrofit checkpoint" if final else f"Retrofit checkpoint at step {step}"
    if step is not None and final:
        message += f" (step {step})"
    return push_checkpoint(checkpoint_dir, repo_id, private=private, revision=revision, token=token,
                           commit_message=message, verify=verify)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrofit push",
        description="Push a retrofit checkpoint with a generated model card to the Hugging Face Hub (one commit).",
    )
    parser.add_argument("checkpoint", metavar="DIR", help="checkpoint directory (FlexMDM.save_pretrained output)")
    parser.add_argument("--repo-id", required=True, metavar="USER/NAME", help="target model repo (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", metavar="BRANCH", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--merged", action="store_true",
                        help="push a standalone merged export instead of the adapter (uploads full weights)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--eval", dest="eval_paths", action="append", default=[], metavar="PATH",
                        help="eval result directory or summary.json for the card (repeatable; default: found "
                             "next to the checkpoint)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check and stage the upload, print the model card, send nothing")
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """`retrofit push DIR --repo-id USER/NAME [--private] [--revision BRANCH] [--merged]`; returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.dry_run:
            print(render_model_card(args.checkpoint, repo_id=args.repo_id, merged=args.merged,
                                    eval_paths=args.eval_paths))
        url = push_checkpoint(
            args.checkpoint, args.repo_id, private=args.private, revision=args.revision, merged=args.merged,
            token=args.token, commit_message=args.message, eval_paths=args.eval_paths, dry_run=args.dry_run,
        )
    except (ValueError, TypeError, PermissionError, ConnectionError, FileNotFoundError, RuntimeError) as error:
        print(f"retrofit push: {error}", file=sys.stderr)
        return 2
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
