"""The file and directory names of a training run, defined once.

A run directory (``output_dir``) holds::

    recipe.yaml              the resolved recipe (loadable with retrofit.config.load_config)
    metrics.jsonl            one JSON record per logged optimizer step
    train_summary.json       written at the end of a complete run
    checkpoint-<step>/       a complete checkpoint (renamed from .tmp-checkpoint-<step> when done)
        COMPLETE             marker: the checkpoint was written to the end
        trainer_state.json   step, tokens seen, data position, elapsed time, loss
        model/               the model in the adapter format (+ tokenizer): FlexMDM.from_pretrained
        state/               accelerate save_state (optimizer, scheduler, RNG, DeepSpeed shards)
            trainable_weights.safetensors   the trainable weights in fp32 (non-DeepSpeed runs)
    final/                   the final model (adapter format + tokenizer)
    tiny-random-base/        the random backbone of a `model.base: tiny-random` run

Everything that reads or writes these (the trainer, ``retrofit.hub``'s model card, the demo)
imports the names from here. This module imports nothing but the standard library, so any layer
may import it. (The files inside ``model/`` -- ``retrofit_config.json``, the adapter weights --
are the adapter format's: ``retrofit.checkpoint_io`` names them.)
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "CHECKPOINT_PREFIX",
    "COMPLETE_MARKER",
    "FINAL_DIR",
    "METRICS_FILE",
    "MODEL_DIR",
    "RECIPE_FILE",
    "STATE_DIR",
    "SUMMARY_FILE",
    "TINY_BASE_DIR",
    "TMP_PREFIX",
    "TRAINABLE_WEIGHTS_FILE",
    "TRAINER_STATE_FILE",
    "checkpoint_name",
    "checkpoint_step",
]

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"
CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE_FILE = "trainer_state.json"
MODEL_DIR = "model"
STATE_DIR = "state"
TRAINABLE_WEIGHTS_FILE = "trainable_weights.safetensors"
FINAL_DIR = "final"
TINY_BASE_DIR = "tiny-random-base"


def checkpoint_name(step: int) -> str:
    """``checkpoint-<step>``: the directory name of the checkpoint after optimizer step ``step``."""
    return f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``checkpoint-<step>`` directory (None for any other name)."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", Path(path).name)
    return int(match.group(1)) if match else None
