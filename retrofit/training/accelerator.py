"""The Accelerator of a run (single process, DDP or DeepSpeed ZeRO, as ``accelerate launch`` set
up) and the DeepSpeed settings the recipe owns (micro-batch, accumulation, clipping)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from retrofit.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["build_accelerator", "configure_deepspeed", "is_deepspeed", "launched_world_size"]


def launched_world_size() -> int:
    """Number of processes the launcher started (``WORLD_SIZE``; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator for this run (DDP / DeepSpeed / single process come from ``accelerate launch``).

    On a machine without CUDA, torch.distributed uses gloo (DeepSpeed would otherwise ask for
    NCCL). The scheduler is stepped once per optimizer step by the loop, not once per process.
    Raises ConfigError when ``logging.report_to`` names a tracker that is not installed.
    """
    from accelerate import Accelerator
    from accelerate.utils import (
        InitProcessGroupKwargs,
        is_tensorboard_available,
        is_wandb_available,
    )

    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    for tracker in cfg.logging.report_to:
        if not available[tracker]:
            raise ConfigError(
                f"logging.report_to names {tracker!r} but it is not installed: pip install {tracker} "
                "(or remove it; metrics.jsonl is always written)."
            )
    handlers = []
    if not torch.cuda.is_available() and launched_world_size() > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        mixed_precision=cfg.training.mixed_precision,
        gradient_accumulation_steps=cfg.training.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
        log_with=list(cfg.logging.report_to) or None,
        project_dir=cfg.output_dir,
        kwargs_handlers=handlers,
    )


def is_deepspeed(accelerator: Accelerator) -> bool:
    """Whether ``accelerate launch`` set this run up with DeepSpeed."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def configure_deepspeed(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed config's ``auto`` values owned by the recipe (micro-batch, accumulation,
    clipping) and reject explicit values that contradict it, or an optimizer / scheduler there."""
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": cfg.training.micro_batch_size,
        "gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
        "gradient_clipping": cfg.optimizer.max_grad_norm or 0.0,
    }
    for key, value in wanted.items():
        current = ds_config.get(key, "auto")
        if current == "auto":
            ds_config[key] = value
        elif float(current) != float(value):
            raise ConfigError(
                f"DeepSpeed config sets {key}={current} but the recipe implies {value}; set it to "
                f'"auto" in the DeepSpeed JSON (the recipe owns it).'
            )
    if "optimizer" in ds_config or "scheduler" in ds_config:
        raise ConfigError(
            "the DeepSpeed config defines an optimizer/scheduler: remove them, the recipe's AdamW and "
            "warmup+cosine schedule are used (optimizer.* and scheduler.* in the recipe)."
        )
