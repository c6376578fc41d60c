"""Typed training recipes: nested dataclasses loaded from YAML, validated, with command-line overrides.

A recipe (``recipes/<model>/<stage>.yaml``) is a YAML mapping whose sections mirror the dataclasses
below (``model``, ``data``, ``objective``, ``optimizer``, ``scheduler``, ``training``,
``checkpoint``, ``logging``) plus a few top-level keys (``output_dir``, ``push_to_hub``, ...).
Loading goes through the one strict loader, :mod:`retrofit.yaml_config`: an unknown key is an error
(with a did-you-mean), a value of the wrong type is an error naming the dotted key, and both name
the file and line it was written at; a path that must exist (a local base model, an adapter spec
file, local data files, an explicit resume checkpoint) is checked before any model is built.

Overrides from the command line are ``dotted.key=value`` strings whose value is parsed as a YAML
scalar (``training.max_steps=10``, ``optimizer.lr=3e-5``, ``logging.report_to=[tensorboard]``,
``checkpoint.resume=latest``, ``model.revision=null``).

A recipe may start with ``extends: other.yaml`` (a path relative to the recipe file): the other
recipe is loaded first and this one's keys are merged over it, section by section.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from retrofit.yaml_config import (
    ConfigError,
    LocatedDict,
    apply_overrides,
    coerce,
    did_you_mean,
    from_dict,
    load_yaml,
    locate,
    parse_overrides,
    to_dict,
)

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "LoggingConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "TokenizerConfig",
    "TrainConfig",
    "TrainingConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_overrides",
    "to_dict",
]

# The base-model value that builds a small random LLaDA on the fly (tests, CPU demos: no download).
TINY_RANDOM = "tiny-random"
PARAMETER_GROUPS = ("lora", "new", "backbone")
# The budget of a recipe that states neither training.max_steps nor training.epochs.
DEFAULT_MAX_STEPS = 1000


# ---------------------------------------------------------------------------------------------
# The recipe schema
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Which backbone to retrofit and how.

    ``base`` is a Hub id, a local directory, or ``tiny-random`` (a random tiny LLaDA built from
    ``tiny`` overrides of ``retrofit.models.tiny_llada_config``). ``adapter`` is an adapter spec name
    (``adapters/<name>.yaml``) or a path to one; ``adapter_overrides`` replace fields of that spec
    (e.g. ``{lora: null, full_finetune: true}`` for full fine-tuning). The model kind (flexmdm /
    mdm) follows ``objective.name``. ``init_from`` starts from a saved retrofit checkpoint instead
    (e.g. stage 2 from stage 1's ``output_dir/final``); its LoRA and new modules keep training.
    """

    base: str = "GSAI-ML/LLaDA-8B-Base"
    revision: str | None = None
    init_from: str | None = None
    adapter: str = "llada"
    adapter_overrides: dict[str, Any] = field(default_factory=dict)
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    tiny: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False


@dataclass
class TokenizerConfig:
    """The tokenizer. ``name`` defaults to ``model.init_from`` or ``model.base``; ``char`` builds a character tokenizer
    (what ``tiny-random`` bases use) from ``alphabet`` (default: printable ASCII)."""

    name: str | None = None
    revision: str | None = None
    alphabet: str | None = None


@dataclass
class ObjectiveConfig:
    """Training objective: ``flexmdm`` (insertion + unmasking, spec section 3) or ``mdm`` (the
    LLaDA SFT baseline). ``normalizer`` divides the FlexMDM loss of an optimizer step by the
    number of non-protected clean tokens in the step's whole batch (``tokens``: every micro-batch
    of every rank divides by that global count) or by its number of sequences * ``fixed_length``
    (``fixed``, the research code's ``B * 1024``). Either way the step's loss and gradient do not
    depend on how its batch is split into ranks and accumulation micro-batches."""

    name: Literal["flexmdm", "mdm"] = "flexmdm"
    normalizer: Literal["tokens", "fixed"] = "fixed"
    fixed_length: int = 1024
    stratified_times: bool = True
    time_eps: float = 1e-3


@dataclass
class OptimizerConfig:
    """AdamW over parameter groups ``lora`` / ``new`` (time conditioning + insertion head) /
    ``backbone`` (full fine-tuning). Each group's lr is ``lr * lr_multipliers[group]`` and its
    weight decay ``group_weight_decay[group]`` (default ``weight_decay``); weight decay is not
    applied to norms, biases and other vectors unless ``decay_norms_and_biases`` (the research
    code decays every trainable parameter)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    group_weight_decay: dict[str, float] = field(default_factory=dict)
    decay_norms_and_biases: bool = False
    max_grad_norm: float | None = 1.0


@dataclass
class SchedulerConfig:
    """Linear warmup then a single half-cosine decay to ``min_lr_ratio * lr`` at ``max_steps``.
    ``warmup_steps`` (if set) wins over ``warmup_ratio``. ``cycles`` is transformers' cosine
    ``num_cycles``: the factor after warmup is ``0.5 (1 + cos(2 pi cycles progress))``; 0.5 is one
    half-cosine (default); the research code ran 5 (five full up-and-down cycles), by mistake."""

    warmup_ratio: float = 0.05
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    cycles: float = 0.5


@dataclass
class TrainingConfig:
    """Budget, batch sizes and numerics.

    The global batch is the recipe's invariant: ``global_batch_size`` sequences per optimizer step,
    whatever the number of processes W. ``micro_batch_size`` is per process and forward pass; the
    accumulation is derived at launch, ``gradient_accumulation_steps = global_batch_size / (W x
    micro_batch_size)`` (an error when that does not divide): leave it unset, or it must agree.
    Without ``global_batch_size`` (small CPU recipes), the global batch is ``W x micro_batch_size
    x gradient_accumulation_steps`` (default 1), i.e. it grows with W.
    ``retrofit train RECIPE --print-config --world-size N`` prints what a launch on N processes uses.

    Budget, one of: ``max_steps`` optimizer steps, or ``epochs`` passes over the training records
    (converted at launch to ``ceil(epochs x records / global_batch_size)`` steps; map-style data
    only; a record is one row except for chunked pretraining documents). Neither: 1000 steps.

    Batches are dynamic-length (x_t trimmed to its longest row); ``length_bucketing = k > 1`` sorts
    k global batches' worth of examples by length and cuts them into k global batches of similar
    lengths; ``pad_to_max_length`` pads every batch to ``data.max_length`` instead (the research
    code's fixed buffer; for comparisons only). ``mixed_precision: bf16`` autocasts the forward
    pass while the trainable weights (and their optimizer states) stay fp32."""

    max_steps: int | None = None
    epochs: float | None = None
    global_batch_size: int | None = None
    micro_batch_size: int = 4
    gradient_accumulation_steps: int | None = None
    mixed_precision: Literal["no", "bf16"] = "bf16"
    gradient_checkpointing: bool = False
    seed: int = 0
    length_bucketing: int = 1
    pad_to_max_length: bool = False


@dataclass
class CheckpointConfig:
    """Every ``save_every`` optimizer steps write ``output_dir/checkpoint-<step>`` (adapter weights,
    accelerate state, data position), keeping the last ``keep_last``. ``resume`` is ``latest`` (the
    newest complete checkpoint in ``output_dir``, or a fresh start if none) or a checkpoint path."""

    save_every: int = 1000
    keep_last: int = 3
    resume: str | None = None
    save_final: bool = True


@dataclass
class LoggingConfig:
    """Metrics go to ``output_dir/metrics.jsonl`` always; ``report_to`` adds tensorboard / wandb."""

    log_every: int = 10
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    project: str = "retrofit"
    run_name: str | None = None
    progress_bar: bool = True


@dataclass
class TrainConfig:
    """A whole training recipe. ``data`` is a ``retrofit.data.DataConfig`` (validated with the same
    rules when the recipe is loaded).

    Hub push (``retrofit.hub``; the token comes from ``HF_TOKEN`` or ``hf auth login``):
    ``push_to_hub`` pushes ``output_dir/final`` to ``main`` of ``hub_repo_id`` (created, private
    when ``hub_private``) at the end of the run; the token and write access are checked, and the
    repo created, at startup, before the model is built. ``hub_push_checkpoints`` also pushes each
    saved ``checkpoint-<step>``'s model: ``"branch"`` to its own branch ``step-<step, 6 digits>``
    (``main`` keeps only the final model), ``"commit"`` as a commit on ``main`` whose message names
    the step; ``null`` (default) pushes none. A failed checkpoint push warns and training goes on;
    a failed final push raises.
    """

    output_dir: str = "outputs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: Any = None
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    push_to_hub: bool = False
    hub_repo_id: str | None = None
    hub_private: bool = False
    hub_push_checkpoints: Literal["branch", "commit"] | None = None
    description: str | None = None


# ---------------------------------------------------------------------------------------------
# Validation beyond types: cross-field rules and files that must exist
# ---------------------------------------------------------------------------------------------


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".yaml", ".yml", ".json"))


def _check_values(cfg: TrainConfig) -> None:
    """Range checks that types cannot express."""
    positive = {
        "training.max_steps": cfg.training.max_steps,
        "training.micro_batch_size": cfg.training.micro_batch_size,
        "training.gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
        "training.global_batch_size": cfg.training.global_batch_size,
        "training.length_bucketing": cfg.training.length_bucketing,
        "checkpoint.save_every": cfg.checkpoint.save_every,
        "checkpoint.keep_last": cfg.checkpoint.keep_last,
        "logging.log_every": cfg.logging.log_every,
        "objective.fixed_length": cfg.objective.fixed_length,
    }
    for key, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}.")
    _check_budget(cfg)
    if cfg.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr: must be > 0, got {cfg.optimizer.lr}.")
    if len(cfg.optimizer.betas) != 2 or not all(0 <= b < 1 for b in cfg.optimizer.betas):
        raise ConfigError(
            f"optimizer.betas: expected two numbers in [0, 1), got {cfg.optimizer.betas}."
        )
    if cfg.optimizer.weight_decay < 0:
        raise ConfigError(
            f"optimizer.weight_decay: must be >= 0, got {cfg.optimizer.weight_decay}."
        )
    if cfg.optimizer.max_grad_norm is not None and cfg.optimizer.max_grad_norm <= 0:
        raise ConfigError("optimizer.max_grad_norm: must be > 0 (or null to disable clipping).")
    for section in ("lr_multipliers", "group_weight_decay"):
        for group, value in getattr(cfg.optimizer, section).items():
            if group not in PARAMETER_GROUPS:
                hint = did_you_mean(group, PARAMETER_GROUPS)
                raise ConfigError(f"optimizer.{section}.{group}: unknown parameter group.{hint}")
            if value < 0:
                raise ConfigError(f"optimizer.{section}.{group}: must be >= 0, got {value}.")
    if cfg.scheduler.cycles <= 0:
        raise ConfigError(f"scheduler.cycles: must be > 0, got {cfg.scheduler.cycles}.")
    if not 0 <= cfg.scheduler.warmup_ratio <= 1:
        raise ConfigError(
            f"scheduler.warmup_ratio: must be in [0, 1], got {cfg.scheduler.warmup_ratio}."
        )
    if cfg.scheduler.warmup_steps is not None and cfg.scheduler.warmup_steps < 0:
        raise ConfigError("scheduler.warmup_steps: must be >= 0.")
    if not 0 <= cfg.scheduler.min_lr_ratio <= 1:
        raise ConfigError(
            f"scheduler.min_lr_ratio: must be in [0, 1], got {cfg.scheduler.min_lr_ratio}."
        )
    if not 0 < cfg.objective.time_eps < 1:
        raise ConfigError(f"objective.time_eps: must be in (0, 1), got {cfg.objective.time_eps}.")
    _check_hub_options(cfg)
    if cfg.data is None:
        raise ConfigError(
            "data: missing section (which dataset to train on); see recipes/tiny/*.yaml."
        )


def _check_budget(cfg: TrainConfig) -> None:
    """One budget: ``max_steps`` or ``epochs`` (neither: ``DEFAULT_MAX_STEPS``, filled in here)."""
    training = cfg.training
    if training.max_steps is not None and training.epochs is not None:
        raise ConfigError(
            f"training.epochs: the budget is either max_steps ({training.max_steps}) or epochs "
            f"({training.epochs}); set the other to null (e.g. training.max_steps=null)."
        )
    if training.epochs is not None and training.epochs <= 0:
        raise ConfigError(f"training.epochs: must be > 0, got {training.epochs}.")
    if training.max_steps is None and training.epochs is None:
        training.max_steps = DEFAULT_MAX_STEPS
    global_batch, micro = training.global_batch_size, training.micro_batch_size
    if global_batch is not None and global_batch % micro:
        raise ConfigError(
            f"training.global_batch_size: {global_batch} is not a multiple of "
            f"training.micro_batch_size={micro}; choose a micro-batch that divides it."
        )


def _check_hub_options(cfg: TrainConfig) -> None:
    """``push_to_hub`` needs ``hub_repo_id`` (a valid Hub id); ``hub_push_checkpoints`` needs both."""
    if cfg.hub_push_checkpoints is not None and not (cfg.push_to_hub and cfg.hub_repo_id):
        raise ConfigError(
            f"hub_push_checkpoints: {cfg.hub_push_checkpoints!r} pushes every saved checkpoint to the "
            "Hub, which needs push_to_hub: true and hub_repo_id (e.g. push_to_hub=true "
            "hub_repo_id=me/llada-flexmdm); or set hub_push_checkpoints=null."
        )
    if cfg.push_to_hub and not cfg.hub_repo_id:
        raise ConfigError(
            "push_to_hub is true but hub_repo_id is not set (e.g. hub_repo_id=me/llada-flexmdm)."
        )
    if cfg.hub_repo_id is not None:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(cfg.hub_repo_id)
        except HFValidationError as error:
            raise ConfigError(
                f"hub_repo_id: {cfg.hub_repo_id!r} is not a valid Hub repo id (expected "
                f"namespace/name, e.g. me/llada-flexmdm): {error}"
            ) from error


def resolve_path(value: str, recipe_path: Path | None) -> Path:
    """A path from a recipe: as given (relative to the current directory) if it exists, else
    relative to the repository holding the recipe (the parent of its ``recipes/`` folder)."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or recipe_path is None:
        return path
    for parent in recipe_path.resolve().parents:
        if parent.name == "recipes":
            candidate = parent.parent / value
            if candidate.exists():
                return candidate
            break
    return path


def _check_files(cfg: TrainConfig, recipe_path: Path | None) -> None:
    """Paths that must exist before anything heavy is built."""
    base = cfg.model.base
    if base != TINY_RANDOM and (_looks_like_path(base) or os.path.exists(base)):
        resolved = resolve_path(base, recipe_path)
        if not resolved.is_dir():
            raise ConfigError(
                f"model.base: local path {base!r} does not exist (use a Hub id, an existing "
                f"directory, or {TINY_RANDOM!r})."
            )
        cfg.model.base = str(resolved)
    adapter = cfg.model.adapter
    if _looks_like_path(adapter) or os.sep in adapter:
        resolved = resolve_path(adapter, recipe_path)
        if not resolved.is_file():
            raise ConfigError(f"model.adapter: spec file {adapter!r} does not exist.")
        cfg.model.adapter = str(resolved)
    init_from = cfg.model.init_from
    if init_from is not None and (_looks_like_path(init_from) or os.path.exists(init_from)):
        resolved = resolve_path(init_from, recipe_path)
        if not resolved.is_dir():
            raise ConfigError(
                f"model.init_from: checkpoint directory {init_from!r} does not exist (run the stage "
                "it comes from first, or override model.init_from=null)."
            )
        cfg.model.init_from = str(resolved)
    tokenizer = cfg.tokenizer.name
    if tokenizer and tokenizer != "char" and _looks_like_path(tokenizer):
        resolved = resolve_path(tokenizer, recipe_path)
        if not resolved.exists():
            raise ConfigError(f"tokenizer.name: local path {tokenizer!r} does not exist.")
        cfg.tokenizer.name = str(resolved)
    resume = cfg.checkpoint.resume
    if resume not in (None, "latest") and not Path(resume).expanduser().is_dir():
        raise ConfigError(
            f"checkpoint.resume: {resume!r} is not a checkpoint directory (use 'latest' or a "
            "path to output_dir/checkpoint-<step>)."
        )
    _check_data_files(cfg, recipe_path)


def _check_data_files(cfg: TrainConfig, recipe_path: Path | None) -> None:
    """Local data files named in the data section must exist (Hub dataset ids are not checked)."""
    data = cfg.data
    if not dataclasses.is_dataclass(data):
        return
    for f in dataclasses.fields(data):
        if f.name not in ("data_files", "path", "train_file", "files", "local_files"):
            continue
        value = getattr(data, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        resolved_values = []
        for item in values:
            if not isinstance(item, str) or not item:
                resolved_values.append(item)
                continue
            is_local = _looks_like_path(item) or item.endswith(
                (".jsonl", ".json", ".parquet", ".txt", ".csv", ".gz")
            )
            if not is_local:
                resolved_values.append(item)
                continue
            resolved = resolve_path(item, recipe_path)
            if not any(ch in item for ch in "*?[") and not resolved.exists():
                raise ConfigError(f"data.{f.name}: local file {item!r} does not exist.")
            resolved_values.append(str(resolved))
        new_value = resolved_values if isinstance(value, (list, tuple)) else resolved_values[0]
        setattr(data, f.name, new_value)


def _data_config_class() -> type | None:
    try:
        from retrofit.data import DataConfig
    except ImportError:
        return None
    return DataConfig


def build_config(
    raw: Mapping[str, Any], *, recipe_path: Path | None = None, check_files: bool = True
) -> TrainConfig:
    """Validate a raw recipe mapping into a TrainConfig (types, values, and files). When ``raw``
    was read by :func:`retrofit.yaml_config.load_yaml`, errors name the file and line."""
    top = LocatedDict((key, value) for key, value in raw.items() if key != "data")
    top.locations.update(getattr(raw, "locations", {}))
    cfg = from_dict(TrainConfig, top, what="recipe")
    data_raw = raw.get("data")
    data_cls = _data_config_class()
    try:
        if data_raw is not None and data_cls is not None:
            cfg.data = coerce(data_raw, data_cls, "data")
        else:
            cfg.data = data_raw
        _check_values(cfg)
        if check_files:
            _check_files(cfg, recipe_path)
    except ConfigError as error:
        raise located(error, raw) from error.__cause__
    return cfg


def load_config(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), *, check_files: bool = True
) -> TrainConfig:
    """Load a recipe YAML, apply ``key=value`` overrides, and validate it. (For a launch on N
    processes, :func:`retrofit.training.run_size.load_resolved` also derives the accumulation.)

    Raises ConfigError (a ValueError) naming the offending dotted key, and the file and line it
    was written at, on an unknown key (with a did-you-mean), a wrong type, an out-of-range value,
    or a missing local file; ConfigFileNotFoundError when the recipe itself does not exist.
    """
    recipe_path = Path(path)
    raw = read_recipe(recipe_path, overrides)
    return build_config(raw, recipe_path=recipe_path, check_files=check_files)


def read_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> LocatedDict:
    """The raw recipe mapping (``extends`` followed, overrides applied), keys located."""
    raw = load_yaml(Path(path), what="recipe", extends_key="extends")
    return apply_overrides(raw, parse_overrides(overrides))


def located(error: ConfigError, raw: Mapping[str, Any]) -> ConfigError:
    """``error`` pointing at the line of its key in the recipe ``raw``: ``error.key``, else the
    dotted key every message of this module starts with (``training.max_steps: must be >= 1``)."""
    key = error.key
    if key is None:
        match = re.match(r"([A-Za-z_][\w.]*): ", error.message)
        key = match.group(1) if match else None
    return error.at(locate(raw, key)) if key else error
