"""The size of a run on W processes: the global batch split into processes x micro-batch x
accumulation, and the budget in optimizer steps.

The global batch (sequences per optimizer step) is the recipe's invariant: a recipe with
``training.global_batch_size`` trains with that batch on 1, 8 or 16 GPUs, the accumulation being
derived at launch. Resolved once by the trainer (with the launcher's ``WORLD_SIZE``) and by
``retrofit train RECIPE --print-config --world-size N``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retrofit.config import ConfigError, TrainConfig, build_config, located, read_recipe

__all__ = ["RunSize", "count_records", "load_resolved", "resolve_run_size", "resolved_config"]


@dataclass(frozen=True)
class RunSize:
    """How a recipe runs on ``world_size`` processes.

    ``global_batch_size = world_size x micro_batch_size x gradient_accumulation_steps``;
    ``max_steps`` is None while an ``epochs`` budget waits for its ``num_records``.
    """

    world_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    global_batch_size: int
    max_steps: int | None
    epochs: float | None = None
    num_records: int | None = None

    def describe(self) -> list[str]:
        """Two lines: the batch split and the budget in optimizer steps."""
        split = (
            f"global batch {self.global_batch_size} sequences = {self.world_size} "
            f"process{'es' if self.world_size > 1 else ''} x "
            f"micro-batch {self.micro_batch_size} x {self.gradient_accumulation_steps} "
            "accumulation steps"
        )
        lines = [split]
        if self.epochs is None:
            lines.append(f"optimizer steps {self.max_steps} (training.max_steps)")
        elif self.max_steps is not None:
            lines.append(
                f"optimizer steps {self.max_steps} = ceil({self.epochs:g} epochs x "
                f"{self.num_records} records / {self.global_batch_size})"
            )
        else:
            lines.append(
                f"optimizer steps: ceil({self.epochs:g} epochs x records / "
                f"{self.global_batch_size}), the records counted at launch"
            )
        return lines


def _split_global_batch(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(gradient_accumulation_steps, global_batch_size) for ``world_size`` processes."""
    training = cfg.training
    micro, accumulation = training.micro_batch_size, training.gradient_accumulation_steps
    if training.global_batch_size is None:
        accumulation = accumulation or 1
        return accumulation, world_size * micro * accumulation
    per_pass = world_size * micro
    if training.global_batch_size % per_pass:
        raise ConfigError(
            f"training.global_batch_size: {training.global_batch_size} is not divisible by "
            f"{world_size} processes x micro_batch_size {micro} = {per_pass}; launch a number of "
            "processes (or set a training.micro_batch_size) whose product divides it."
        )
    derived = training.global_batch_size // per_pass
    if accumulation is not None and accumulation != derived:
        raise ConfigError(
            f"training.gradient_accumulation_steps: {accumulation} contradicts global_batch_size "
            f"{training.global_batch_size} on {world_size} processes x micro_batch_size {micro} "
            f"(which needs {derived}); leave it unset (null), it is derived at launch."
        )
    return derived, training.global_batch_size


def resolve_run_size(
    cfg: TrainConfig, world_size: int, *, num_records: int | None = None
) -> RunSize:
    """The run size of ``cfg`` on ``world_size`` processes; an ``epochs`` budget becomes steps
    when ``num_records`` (the training records of one epoch) is given. Raises ConfigError when the
    global batch does not divide into processes x micro-batch."""
    if world_size < 1:
        raise ConfigError(f"--world-size: must be >= 1, got {world_size}.")
    accumulation, global_batch = _split_global_batch(cfg, world_size)
    epochs, max_steps = cfg.training.epochs, cfg.training.max_steps
    if epochs is not None:
        max_steps = None if num_records is None else math.ceil(epochs * num_records / global_batch)
    return RunSize(
        world_size=world_size,
        micro_batch_size=cfg.training.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        global_batch_size=global_batch,
        max_steps=max_steps,
        epochs=epochs,
        num_records=num_records if epochs is not None else None,
    )


def resolved_config(cfg: TrainConfig, size: RunSize) -> TrainConfig:
    """A copy of ``cfg`` with the derived accumulation and (once known) the step budget filled in;
    what a launch on ``size.world_size`` processes runs and saves as ``recipe.yaml``. An epochs
    budget, once converted, becomes ``max_steps`` (``epochs: null``), so the saved recipe loads
    again and means the same run."""
    resolved = copy.deepcopy(cfg)
    resolved.training.gradient_accumulation_steps = size.gradient_accumulation_steps
    if size.max_steps is not None:
        resolved.training.max_steps = size.max_steps
        resolved.training.epochs = None
    return resolved


def count_records(cfg: TrainConfig) -> int:
    """The number of training records of one epoch (``data.max_records`` applied), for an
    ``epochs`` budget. Reads the dataset (the datasets cache for Hub data); map-style only."""
    if cfg.data.streaming:
        raise ConfigError(
            "training.epochs: a streaming dataset has no known length; state the budget as "
            "training.max_steps instead (and training.epochs=null)."
        )
    from retrofit.data import load_records

    return len(load_records(cfg.data))


def load_resolved(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    world_size: int,
    check_files: bool = True,
) -> TrainConfig:
    """:func:`retrofit.config.load_config` resolved for a launch on ``world_size`` processes: the
    accumulation that keeps ``training.global_batch_size`` filled in (an ``epochs`` budget stays
    in epochs: it needs the data, see :func:`count_records`). Errors name the recipe's file:line."""
    raw = read_recipe(path, overrides)
    cfg = build_config(raw, recipe_path=Path(path), check_files=check_files)
    try:
        return resolved_config(cfg, resolve_run_size(cfg, world_size))
    except ConfigError as error:
        raise located(error, raw) from None
