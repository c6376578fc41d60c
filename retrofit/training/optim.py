"""AdamW over the adapter's parameter groups, and the learning-rate schedule (warmup + one
half-cosine), both configured by the recipe's ``optimizer`` and ``scheduler`` sections."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import Tensor

from retrofit.config import TrainConfig

__all__ = [
    "NO_DECAY_MARKERS",
    "build_lr_schedule",
    "build_optimizer",
    "lr_factor",
    "warmup_steps_for",
]

# Parameters whose name contains one of these never get weight decay (norm scales, biases).
NO_DECAY_MARKERS = ("norm", "bias", "ln_f", "layernorm")


def lr_factor(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 0.0,
    cycles: float = 0.5,
) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup over
    ``warmup_steps`` steps, then ONE half-cosine from 1 down to ``min_ratio`` at ``total_steps``
    (``cycles = 0.5``; transformers' ``num_cycles``: ``cycles`` full cosine periods)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = math.cos(math.pi * (2.0 * cycles) * progress)  # 2 * 0.5 = 1: exactly cos(pi p)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + cosine)


def warmup_steps_for(cfg: TrainConfig) -> int:
    """Warmup length in optimizer steps (``scheduler.warmup_steps`` wins over the ratio)."""
    if cfg.scheduler.warmup_steps is not None:
        return cfg.scheduler.warmup_steps
    return round(cfg.scheduler.warmup_ratio * cfg.training.max_steps)


def build_lr_schedule(cfg: TrainConfig) -> partial[float]:
    """``step -> lr factor`` of this recipe (:func:`lr_factor` with its warmup and length)."""
    return partial(
        lr_factor,
        warmup_steps=warmup_steps_for(cfg),
        total_steps=cfg.training.max_steps,
        min_ratio=cfg.scheduler.min_lr_ratio,
        cycles=cfg.scheduler.cycles,
    )


def _no_decay(name: str, param: Tensor) -> bool:
    """Norm scales, biases and other vectors are not weight-decayed."""
    lowered = name.lower()
    return param.ndim < 2 or any(marker in lowered for marker in NO_DECAY_MARKERS)


def _param_groups(
    model: torch.nn.Module, cfg: TrainConfig
) -> tuple[list[dict[str, Any]], list[str]]:
    """The AdamW groups (``lora`` / ``new`` / ``backbone``, each split into decayed and
    non-decayed) and one name per group; raises ValueError on an orphan trainable parameter."""
    opt_cfg = cfg.optimizer
    param_groups: list[dict[str, Any]] = []
    names: list[str] = []
    seen: set[int] = set()
    for group_name, named_params in model.named_parameter_groups().items():
        trainable = [(n, p) for n, p in named_params if p.requires_grad]
        seen.update(id(p) for _, p in trainable)
        lr = opt_cfg.lr * opt_cfg.lr_multipliers.get(group_name, 1.0)
        group_decay = opt_cfg.group_weight_decay.get(group_name, opt_cfg.weight_decay)
        exempt = (lambda n, p: False) if opt_cfg.decay_norms_and_biases else _no_decay
        decay = [p for n, p in trainable if not exempt(n, p)]
        no_decay = [p for n, p in trainable if exempt(n, p)]
        for params, weight_decay, suffix in (
            (decay, group_decay, ""),
            (no_decay, 0.0, "/no_decay"),
        ):
            if params:  # DeepSpeed rejects empty groups
                param_groups.append({"params": params, "lr": lr, "weight_decay": weight_decay})
                names.append(group_name + suffix)
    orphans = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if orphans:
        raise ValueError(
            f"trainable parameters outside named_parameter_groups(): {orphans[:5]} ... "
            "(the adapter must assign every trainable parameter to lora/new/backbone)"
        )
    return param_groups, names


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW over the model's parameter groups (``lora`` / ``new`` / ``backbone``), each split into
    decayed and non-decayed parameters, with ``lr * lr_multipliers[group]``.

    Returns the optimizer and one name per param group (``"lora"``, ``"lora/no_decay"``, ...).
    Raises ValueError if a trainable parameter belongs to no group or nothing is trainable.
    """
    param_groups, names = _param_groups(model, cfg)
    if not param_groups:
        raise ValueError(
            "the model has no trainable parameters: enable LoRA or full fine-tuning in the adapter spec"
        )
    opt_cfg = cfg.optimizer
    optimizer = torch.optim.AdamW(
        param_groups,
        lr=opt_cfg.lr,
        betas=tuple(opt_cfg.betas),
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
    )
    return optimizer, names
