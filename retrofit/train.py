"""Train a FlexMDM (or the MDM baseline) from a recipe.

    accelerate launch [--config_file recipes/accelerate/zero2.yaml] -m retrofit.train RECIPE.yaml [key=value ...]
    retrofit train RECIPE.yaml [key=value ...]

The loop reads top to bottom (torchtune style): accelerator -> seed -> tokenizer -> model (a
backbone retrofitted from an adapter spec) -> data -> AdamW over parameter groups + warmup/half-cosine
-> resume -> for each optimizer step: read its micro-batches, accumulate them (forward process,
model, loss divided by the step's normaliser (:func:`step_denominator`) here, explicitly, backward),
clip, step, log, checkpoint -> final save + summary.

Data parallelism and noise. Every rank reads the same stream of examples and builds the same
*global* micro-batch (``micro_batch_size * world_size`` rows); the noise (FlexMDM times and
forward process, or MDM mask ratios) is drawn for that global batch from a generator seeded by
``(seed, step, micro_step)``, and each rank then keeps its own rows and trims them to their longest
x_t. Hence a run on W processes computes exactly the gradient of one process with a W-times larger
micro-batch, FlexMDM times are stratified over the global batch, and resuming needs no RNG state for
the noise. Reading (tokenising) the global batch on every rank costs a little CPU time per step.

Checkpoints (every ``checkpoint.save_every`` steps) are written to ``output_dir/.tmp-checkpoint-N``
and renamed to ``output_dir/checkpoint-N`` once complete (a ``COMPLETE`` marker inside):
``model/`` (the adapter format, loadable with ``FlexMDM.from_pretrained``; tokenizer next to it),
``state/`` (accelerate ``save_state``: optimizer, scheduler, RNG states, DeepSpeed shards, and the
trainable weights in fp32) and ``trainer_state.json`` (step, tokens seen, data position).
``checkpoint.resume: latest`` continues from the newest complete one.

Hub push (main process only). With ``push_to_hub: true`` the token, its write access and the repo
``hub_repo_id`` are checked (the repo is created) at startup, before the model is built, so a
missing or read-only token fails in seconds; ``output_dir/final`` is pushed to ``main`` at the end
(a failure raises). ``hub_push_checkpoints: branch | commit`` also pushes each saved checkpoint's
``model/`` right after it is renamed into place, in a background thread (training goes on during
the upload; one upload at a time), to the branch ``step-NNNNNN`` or as a commit on ``main``; a
failed checkpoint push is reported loudly (stderr and a RuntimeWarning) and training continues.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import string
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import Tensor

from retrofit.config import TINY_RANDOM, ConfigError, TrainConfig, load_config, to_dict

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from retrofit.adapter import FlexMDM
    from retrofit.data import Batch
    from retrofit.schedules import Schedule
    from retrofit.tokenization import SpecialIds

__all__ = [
    "TrainResult",
    "build_optimizer",
    "cli_main",
    "find_latest_checkpoint",
    "lr_factor",
    "main",
    "train",
]

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE_FILE = "trainer_state.json"
TRAINABLE_WEIGHTS_FILE = "trainable_weights.safetensors"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"
# Sections of an adapter spec whose nested recipe overrides are applied field by field.
ADAPTER_SECTIONS = ("backbone", "time_conditioning", "head", "lora", "special_tokens", "schedules")
# Parameters whose name contains one of these never get weight decay (norm scales, biases).
NO_DECAY_MARKERS = ("norm", "bias", "ln_f", "layernorm")


@dataclass
class TrainResult:
    """What a finished (or stopped) run returns on every process.

    ``losses``: the global (all-rank mean) loss of every optimizer step run in this invocation;
    ``steps``: the optimizer step reached; ``tokens``: data tokens consumed since step 0 (sum of the
    batches' row lengths; for the MDM objective rows are EOS-filled to the batch width and those
    EOS count, as the loss trains on them).
    """

    output_dir: Path
    steps: int
    tokens: int
    losses: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    final_dir: Path | None = None
    resumed_from: Path | None = None


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule and optimizer
# ---------------------------------------------------------------------------------------------


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup over
    ``warmup_steps`` steps, then ONE half-cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_decay(name: str, param: Tensor) -> bool:
    """Norm scales, biases and other vectors are not weight-decayed."""
    lowered = name.lower()
    return param.ndim < 2 or any(marker in lowered for marker in NO_DECAY_MARKERS)


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW over the model's parameter groups (``lora`` / ``new`` / ``backbone``), each split into
    decayed and non-decayed parameters, with ``lr * lr_multipliers[group]``.

    Returns the optimizer and one name per param group (``"lora"``, ``"lora/no_decay"``, ...).
    Raises ValueError if a trainable parameter belongs to no group or nothing is trainable.
    """
    opt_cfg = cfg.optimizer
    named_groups = model.named_parameter_groups()
    param_groups: list[dict[str, Any]] = []
    names: list[str] = []
    seen: set[int] = set()
    for group_name, named_params in named_groups.items():
        trainable = [(n, p) for n, p in named_params if p.requires_grad]
        seen.update(id(p) for _, p in trainable)
        lr = opt_cfg.lr * opt_cfg.lr_multipliers.get(group_name, 1.0)
        decay = [p for n, p in trainable if not _no_decay(n, p)]
        no_decay = [p for n, p in trainable if _no_decay(n, p)]
        for params, weight_decay, suffix in (
            (decay, opt_cfg.weight_decay, ""),
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
    if not param_groups:
        raise ValueError(
            "the model has no trainable parameters: enable LoRA or full fine-tuning in the adapter spec"
        )
    optimizer = torch.optim.AdamW(
        param_groups,
        lr=opt_cfg.lr,
        betas=tuple(opt_cfg.betas),
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
    )
    return optimizer, names


def warmup_steps_for(cfg: TrainConfig) -> int:
    """Warmup length in optimizer steps (``scheduler.warmup_steps`` wins over the ratio)."""
    if cfg.scheduler.warmup_steps is not None:
        return cfg.scheduler.warmup_steps
    return round(cfg.scheduler.warmup_ratio * cfg.training.max_steps)


# ---------------------------------------------------------------------------------------------
# Accelerator, tokenizer, model
# ---------------------------------------------------------------------------------------------


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator for this run (DDP / DeepSpeed / single process come from ``accelerate launch``).

    On a machine without CUDA, torch.distributed uses gloo (DeepSpeed would otherwise ask for
    NCCL). The scheduler is stepped once per optimizer step by this loop, not once per process.
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
    if not torch.cuda.is_available() and _launched_world_size() > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        mixed_precision=cfg.training.mixed_precision,
        gradient_accumulation_steps=cfg.training.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
        log_with=list(cfg.logging.report_to) or None,
        project_dir=cfg.output_dir,
        kwargs_handlers=handlers,
    )


def _launched_world_size() -> int:
    """Number of processes the launcher started (``WORLD_SIZE``; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _configure_deepspeed(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed config's ``auto`` values owned by the recipe (micro-batch, accumulation,
    clipping) and reject explicit values that contradict it."""
    plugin = accelerator.state.deepspeed_plugin
    ds_config = plugin.deepspeed_config
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


def build_tokenizer(cfg: TrainConfig) -> PreTrainedTokenizerBase:
    """The tokenizer: a Hub/local tokenizer, or a character tokenizer for ``tiny-random`` bases."""
    name = cfg.tokenizer.name or cfg.model.init_from or cfg.model.base
    if name in ("char", TINY_RANDOM):
        from retrofit.tokenization import build_char_tokenizer

        alphabet = cfg.tokenizer.alphabet or string.printable
        return build_char_tokenizer(alphabet, unk_token="<|unk|>")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        name,
        revision=cfg.tokenizer.revision or cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def _tiny_base(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator
) -> str:
    """Build (once, on the main process) a random tiny backbone of the adapter spec's family (LLaDA
    or Dream) sized to the tokenizer and save it under ``output_dir/tiny-random-base`` so that
    checkpoints can name a base model that exists."""
    from retrofit.adapter import AdapterSpec
    from retrofit.models import build_tiny_backbone
    from retrofit.tokenization import resolve_special_ids

    base_dir = Path(cfg.output_dir) / "tiny-random-base"
    ids = resolve_special_ids(tokenizer)
    overrides = {
        "vocab_size": len(tokenizer),
        "mask_token_id": ids.mask,
        "pad_token_id": ids.pad,
        "eos_token_id": ids.eos,
        **cfg.model.tiny,
    }
    config_file = base_dir / "config.json"
    if accelerator.is_main_process and not config_file.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.training.seed)
            model_type = AdapterSpec.load(cfg.model.adapter).backbone.model_type
            backbone = build_tiny_backbone(model_type, **overrides)
        tmp_dir = base_dir.with_name(base_dir.name + ".tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        backbone.save_pretrained(tmp_dir)
        os.replace(tmp_dir, base_dir)
    accelerator.wait_for_everyone()
    # A resumed run reuses the saved base; refuse one built with other settings.
    saved = json.loads(config_file.read_text())
    changed = {
        key: (saved.get(key), value) for key, value in overrides.items() if saved.get(key) != value
    }
    if changed:
        raise ConfigError(
            f"{base_dir} was built with other settings (saved, requested): {changed}; use a new "
            "output_dir for a different tiny model"
        )
    return str(base_dir)


def adapter_override_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    """Recipe-style nested adapter overrides -> ``AdapterSpec.with_overrides`` keys.

    ``{lora: {r: 16}, max_length: 512}`` -> ``{"lora.r": 16, "max_length": 512}`` (one field of a
    section changes, the others keep the spec's values); ``{lora: null}`` stays a whole-section
    override.
    """
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and key in ADAPTER_SECTIONS:
            for sub_key, sub_value in value.items():
                flat[f"{key}.{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat


def build_model(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator
) -> FlexMDM:
    """Retrofit the backbone from the adapter spec (kind = ``objective.name``); trainable
    parameters are kept in fp32 (the master weights), the frozen backbone in ``model.dtype``."""
    import retrofit.models  # noqa: F401  (registers the LLaDA classes with transformers)
    from retrofit.adapter import AdapterSpec, FlexMDM

    dtype = getattr(torch, cfg.model.dtype)
    if cfg.model.init_from is not None:
        model = FlexMDM.from_pretrained(cfg.model.init_from, dtype=dtype)
        if model.kind != cfg.objective.name:
            raise ConfigError(
                f"model.init_from {cfg.model.init_from} is a kind '{model.kind}' checkpoint but "
                f"objective.name is '{cfg.objective.name}'"
            )
    else:
        spec = AdapterSpec.load(cfg.model.adapter)
        spec = spec.with_overrides(
            {"kind": cfg.objective.name, **adapter_override_keys(cfg.model.adapter_overrides)}
        )
        base = (
            _tiny_base(cfg, tokenizer, accelerator)
            if cfg.model.base == TINY_RANDOM
            else cfg.model.base
        )
        model = FlexMDM.retrofit(
            base, spec, revision=cfg.model.revision, dtype=dtype, tokenizer=tokenizer
        )
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class GlobalBatchStream:
    """Global micro-batches (``micro_batch_size * world_size`` rows), identical on every rank.

    Wraps ``retrofit.data``'s resumable example stream and batch iterator; ``state_dict()`` is the
    data position stored in checkpoints (the same on every rank).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        tokenizer: PreTrainedTokenizerBase,
        global_batch_size: int,
        special_ids: SpecialIds,
    ) -> None:
        from retrofit.data import BatchIterator, Collator, build_dataset

        # The infill layout (markers vs PSM prompt) follows the objective.
        data_cfg = dataclasses.replace(cfg.data, objective=cfg.objective.name)
        self.max_length = data_cfg.max_length
        self.examples = build_dataset(
            data_cfg, tokenizer, rank=0, world_size=1, eos_token_id=special_ids.eos,
            mask_token_id=special_ids.mask,
        )
        collator = Collator(
            special_ids.pad,
            eos_token_id=special_ids.eos if special_ids.eos is not None else special_ids.pad,
            # FlexMDM pads x_t itself (pad_to_max_length); the MDM baseline's rows are EOS-filled.
            pad_to="max_length"
            if cfg.training.pad_to_max_length and cfg.objective.name == "mdm"
            else "longest",
            max_length=data_cfg.max_length,
            objective=cfg.objective.name,
        )
        self.batches = BatchIterator(
            self.examples,
            collator,
            global_batch_size,
            bucket_batches=cfg.training.length_bucketing,
            seed=cfg.training.seed,
            drop_last=True,
        )
        self._iterator: Iterator | None = None

    def __next__(self) -> Batch:
        """The next global micro-batch: (W B, L) tensors, L its longest row."""
        if self._iterator is None:
            self._iterator = iter(self.batches)
        try:
            return next(self._iterator)
        except StopIteration:
            raise RuntimeError(
                "the data ran out before training.max_steps: set data.num_epochs: null (loop) or "
                "fewer steps"
            ) from None

    def state_dict(self) -> dict[str, Any]:
        """The data position (stored in ``trainer_state.json``)."""
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.batches.load_state_dict(state)
        self._iterator = None

    @property
    def stats_summary(self) -> str:
        """Records read / kept / skipped (by reason) / truncated so far."""
        return self.examples.stats.summary()


def build_data_stream(
    cfg: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    global_batch_size: int,
    special_ids: SpecialIds,
) -> GlobalBatchStream:
    """The global micro-batch stream of the recipe's ``data`` section."""
    return GlobalBatchStream(cfg, tokenizer, global_batch_size, special_ids)


# ---------------------------------------------------------------------------------------------
# One micro-batch: noise, forward, loss
# ---------------------------------------------------------------------------------------------


def noise_generator(seed: int, step: int, micro_step: int) -> torch.Generator:
    """The generator of the noise of one global micro-batch: identical on every rank, and a pure
    function of (seed, step, micro_step) so a resumed run draws the same noise."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + step * 1_009 + micro_step) % (2**63 - 1))
    return generator


def _rows(tensor: Tensor, start: int, stop: int, length: int | None = None) -> Tensor:
    rows = tensor[start:stop]
    return rows if length is None else rows[:, :length]


@dataclass
class MicroBatchOutput:
    """Loss of one rank's share of a micro-batch and what it consumed.

    ``loss`` (and its parts) is this micro-batch's contribution to the optimizer step's loss: the
    contributions of all micro-batches of the step, averaged over the ranks, are the loss of the
    step's whole batch (see :func:`step_denominator`).
    """

    loss: Tensor  # () with grad
    unmask_loss: float
    insert_loss: float
    tokens: int  # tokens in this rank's rows (sum of their lengths)


def flexmdm_micro_batch(
    model: FlexMDM | torch.nn.Module,
    batch: Batch,
    cfg: TrainConfig,
    *,
    schedules: tuple[Schedule, Schedule],
    special_ids: SpecialIds,
    generator: torch.Generator,
    rank: int,
    world_size: int,
    device: torch.device,
    denominator: float,
    pad_to: int | None = None,
) -> MicroBatchOutput:
    """FlexMDM: times (stratified over the global batch) -> forward process on the global batch ->
    this rank's rows, trimmed to their longest x_t -> model(x_t, lengths, t) -> flexmdm_loss.

    ``batch``: the global micro-batch, ``input_ids`` / ``protected`` (W B, L) and ``lengths``
    (W B,); ``schedules``: (insertion alpha, unmasking beta); ``generator``: the noise of this
    micro-batch (:func:`noise_generator`); ``model`` may be wrapped (DDP / DeepSpeed) and on
    ``device``; ``denominator``: this rank's share of the step's normaliser
    (:func:`step_denominator`). ``pad_to`` pads x_t to a fixed width instead (the research code's
    buffer).
    """
    from retrofit.interpolant import NoisedBatch, forward_process, sample_times
    from retrofit.objective import flexmdm_loss

    insertion, unmasking = schedules
    global_rows = batch.input_ids.shape[0]  # (W B)
    times = sample_times(
        global_rows,
        generator=generator,
        stratified=cfg.objective.stratified_times,
        eps=cfg.objective.time_eps,
    )  # (W B,)
    noised = forward_process(
        batch.input_ids,
        batch.lengths,
        batch.protected,
        times,
        insertion=insertion,
        unmasking=unmasking,
        mask_token_id=special_ids.mask,
        pad_token_id=special_ids.pad,
        generator=generator,
    )
    per_rank = global_rows // world_size
    start, stop = rank * per_rank, (rank + 1) * per_rank
    lengths = noised.lengths[start:stop]  # (B,)
    # Dynamic length: this rank's longest x_t (the model appends the trailing slot itself).
    width = int(lengths.max()) if pad_to is None else pad_to
    local = NoisedBatch(
        input_ids=_pad_width(_rows(noised.input_ids, start, stop, width), width, special_ids.pad),
        lengths=lengths,
        is_mask=_pad_width(_rows(noised.is_mask, start, stop, width), width, False),
        targets=_pad_width(_rows(noised.targets, start, stop, width), width, special_ids.pad),
        gap_counts=_pad_width(_rows(noised.gap_counts, start, stop, width + 1), width + 1, 0),
        protected=_pad_width(_rows(noised.protected, start, stop, width), width, False),
        t=noised.t[start:stop],
    ).to(device)
    output = model(local.input_ids, local.lengths, local.t, logits_positions=local.is_mask)
    loss = flexmdm_loss(
        output.logits,
        output.gaps,
        local,
        insertion=insertion,
        unmasking=unmasking,
        denominator=denominator,
    )
    return MicroBatchOutput(
        loss=loss.loss,
        unmask_loss=float(loss.unmask_loss),
        insert_loss=float(loss.insert_loss),
        tokens=int(batch.lengths[start:stop].sum()),
    )


def mdm_micro_batch(
    model: FlexMDM | torch.nn.Module,
    batch: Batch,
    cfg: TrainConfig,
    *,
    special_ids: SpecialIds,
    generator: torch.Generator,
    rank: int,
    world_size: int,
    device: torch.device,
    accumulation_steps: int,
    pad_to: int | None = None,
) -> MicroBatchOutput:
    """MDM baseline (LLaDA SFT): mask ratios + masks on the global batch -> this rank's rows ->
    model(noisy ids, lengths) -> mdm_loss over the response, divided by ``accumulation_steps``.

    ``batch``: the global micro-batch, ``input_ids`` / ``response_mask`` (W B, L) with rows
    EOS-filled to L and ``lengths`` (W B,) = L (the MDM collator's layout). The LLaDA loss is a
    mean over rows, and every rank holds B rows of every micro-batch, so ``1 / accumulation_steps``
    of this rank's mean is its exact share of the step's loss.
    """
    from retrofit.objective import mdm_forward_process, mdm_loss

    noisy, is_masked, mask_ratio = mdm_forward_process(
        batch.input_ids,
        batch.response_mask,
        mask_token_id=special_ids.mask,
        generator=generator,
        eps=cfg.objective.time_eps,
    )
    global_rows = batch.input_ids.shape[0]
    per_rank = global_rows // world_size
    start, stop = rank * per_rank, (rank + 1) * per_rank
    lengths = batch.lengths[start:stop]
    width = int(lengths.max()) if pad_to is None else pad_to
    noisy_local = _pad_width(_rows(noisy, start, stop, width), width, special_ids.pad).to(device)
    masked_local = _pad_width(_rows(is_masked, start, stop, width), width, False).to(device)
    targets_local = _pad_width(
        _rows(batch.input_ids, start, stop, width), width, special_ids.pad
    ).to(device)
    response_local = _pad_width(_rows(batch.response_mask, start, stop, width), width, False).to(
        device
    )
    output = model(noisy_local, lengths.to(device), None, logits_positions=masked_local)
    loss = mdm_loss(
        output.logits,
        targets_local,
        masked_local,
        mask_ratio[start:stop].to(device),
        response_local,
    )
    return MicroBatchOutput(
        loss=loss.loss / accumulation_steps,
        unmask_loss=float(loss.unmask_loss) / accumulation_steps,
        insert_loss=float(loss.insert_loss) / accumulation_steps,
        tokens=int(lengths.sum()),
    )


def step_denominator(batches: Sequence[Batch], cfg: TrainConfig, world_size: int) -> float:
    """This rank's share of the FlexMDM normaliser of one optimizer step.

    ``batches``: the step's global micro-batches (every rank holds all of them). The step's
    normaliser is computed on their concatenation (``"tokens"``: non-protected clean tokens, known
    before any noise is drawn; ``"fixed"``: rows * ``fixed_length``) and divided by ``world_size``,
    because DDP / DeepSpeed average the ranks' gradients. Every micro-batch of every rank divides
    its loss sum by this, so the step computes the gradient of one batch of all those rows.
    """
    from retrofit.objective import flexmdm_normalizer

    num_tokens = sum(int((b.lengths - b.protected.sum(dim=1)).sum()) for b in batches)
    num_rows = sum(b.input_ids.shape[0] for b in batches)
    total = flexmdm_normalizer(
        num_tokens,
        num_rows,
        normalizer=cfg.objective.normalizer,
        fixed_length=cfg.objective.fixed_length,
    )
    return total / world_size


def _pad_width(tensor: Tensor, width: int, value: Any) -> Tensor:
    """Right-pad (or keep) the last dimension of a (B, L) tensor to ``width``."""
    missing = width - tensor.shape[1]
    if missing <= 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, missing), value=value)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints (with the ``COMPLETE`` marker) in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and _checkpoint_step(p) is not None and (p / COMPLETE_MARKER).is_file()
    ]
    return sorted(found, key=lambda p: _checkpoint_step(p))


def find_latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``checkpoint-<step>`` in ``output_dir`` (None if there is none)."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _trainable_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """The trainable parameters of the (unwrapped) model, in fp32 on CPU."""
    return {
        name: param.detach().float().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def _load_trainable_state_dict(model: torch.nn.Module, path: Path) -> None:
    """Load trainable weights saved by ``_trainable_state_dict``; the key sets must match exactly."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model's trainable parameters (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}): was it written by a run with another adapter spec?"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name].to(param.dtype))


class HubCheckpointPusher:
    """Pushes saved checkpoints to ``cfg.hub_repo_id`` in a background thread (main process only).

    :meth:`submit` starts the push of one checkpoint's ``model/`` directory
    (``retrofit.hub.push_training_checkpoint`` in the ``cfg.hub_push_checkpoints`` mode) and
    returns at once, so training goes on during the upload; it first waits for the previous upload
    (one at a time, in step order). A failed push never stops training: it is printed to stderr
    when it happens and raised as a ``RuntimeWarning`` by the next :meth:`wait` (from the training
    thread); the checkpoint stays on disk, to be pushed later with ``retrofit push``.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.hub_repo_id is None or cfg.hub_push_checkpoints is None:
            raise ValueError("HubCheckpointPusher needs hub_repo_id and hub_push_checkpoints")
        self.repo_id: str = cfg.hub_repo_id
        self.mode: str = cfg.hub_push_checkpoints
        self.private = cfg.hub_private
        self.pushed: list[tuple[int, str]] = []  # (step, commit URL)
        self.failures: list[tuple[int, str]] = []  # (step, message)
        self._reported = 0
        self._thread: threading.Thread | None = None

    def submit(self, model_dir: Path, step: int) -> None:
        """Start pushing ``model_dir`` (the model of ``checkpoint-<step>``) in the background."""
        self.wait()
        self._thread = threading.Thread(
            target=self._push, args=(model_dir, step), name=f"hub-push-step-{step}"
        )
        self._thread.start()

    def wait(self) -> None:
        """Wait for the upload in flight (if any); warn about each push that failed since the
        last call."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for _, message in self.failures[self._reported :]:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        self._reported = len(self.failures)

    def _push(self, model_dir: Path, step: int) -> None:
        from retrofit.hub import push_training_checkpoint, training_branch_name

        try:
            # verify=False: the directory was just written from the live model by save_pretrained.
            url = push_training_checkpoint(
                model_dir, self.repo_id, step=step, mode=self.mode, private=self.private,
                verify=False,
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - a push must never kill the run
            branch = training_branch_name(step) if self.mode == "branch" else None
            where = self.repo_id + (f" (branch {branch})" if branch else "")
            command = f"retrofit push {model_dir} --repo-id {self.repo_id}"
            command += f" --revision {branch}" if branch else ""
            message = (
                f"hub_push_checkpoints: pushing checkpoint step {step} ({model_dir}) to {where} "
                f"FAILED ({type(error).__name__}: {error}). Training continues; the checkpoint "
                f"stays on disk: push it later with `{command}`."
            )
            self.failures.append((step, message))
            print(f"\n{'!' * 100}\n{message}\n{'!' * 100}", file=sys.stderr, flush=True)
            return
        self.pushed.append((step, url))
        print(f"hub_push_checkpoints: pushed checkpoint step {step} to {url}", flush=True)


class CheckpointManager:
    """Writes checkpoints atomically (temp dir + rename, ``COMPLETE`` marker) and keeps the last K.

    Every process must call :meth:`save` (DeepSpeed shards and per-rank RNG states); the output
    directory must be on a file system shared by all nodes. With a ``pusher`` (main process), each
    checkpoint's ``model/`` is handed to it right after the rename.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        accelerator: Accelerator,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        pusher: HubCheckpointPusher | None = None,
    ) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.model = model
        self.tokenizer = tokenizer
        self.pusher = pusher
        self.root = Path(cfg.output_dir)
        self.deepspeed = _is_deepspeed(accelerator)
        if not self.deepspeed:
            # accelerate would save (and load) the FULL model state dict in save_state: an 8B
            # backbone per checkpoint. The trainable weights are saved by this class instead.
            accelerator.register_save_state_pre_hook(
                lambda models, weights, output_dir: weights.clear()
            )
            accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())

    def save(self, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write ``checkpoint-<step>`` (all processes call this); returns its path."""
        accelerator = self.accelerator
        final = self.root / f"{CHECKPOINT_PREFIX}{step}"
        tmp = self.root / f".tmp-{CHECKPOINT_PREFIX}{step}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "state").mkdir(parents=True)  # every rank writes its RNG state there
        accelerator.wait_for_everyone()
        if self.deepspeed:
            accelerator.save_state(str(tmp / "state"), exclude_frozen_parameters=True)
        else:
            accelerator.save_state(str(tmp / "state"))
        save_model(self.model, self.accelerator, tmp / "model", self.tokenizer)
        if accelerator.is_main_process:
            if not self.deepspeed:
                from safetensors.torch import save_file

                unwrapped = accelerator.unwrap_model(self.model)
                save_file(
                    _trainable_state_dict(unwrapped), str(tmp / "state" / TRAINABLE_WEIGHTS_FILE)
                )
            (tmp / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
            (tmp / COMPLETE_MARKER).write_text(f"step {step}\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if self.pusher is not None:
                self.pusher.wait()  # the upload in flight may read a checkpoint _prune deletes
            self._prune()
            if self.pusher is not None:
                self.pusher.submit(final / "model", step)
        accelerator.wait_for_everyone()
        return final

    def _prune(self) -> None:
        checkpoints = list_checkpoints(self.root)
        for old in checkpoints[: max(0, len(checkpoints) - self.cfg.checkpoint.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, checkpoint: Path) -> dict[str, Any]:
        """Restore optimizer, scheduler, RNG and weights from ``checkpoint``; returns its trainer state."""
        state_dir = checkpoint / "state"
        if self.deepspeed:
            self.accelerator.load_state(str(state_dir), load_module_strict=False)
        else:
            self.accelerator.load_state(str(state_dir))
            _load_trainable_state_dict(
                self.accelerator.unwrap_model(self.model), state_dir / TRAINABLE_WEIGHTS_FILE
            )
        return json.loads((checkpoint / TRAINER_STATE_FILE).read_text())


def _is_deepspeed(accelerator: Accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def save_model(
    model: torch.nn.Module,
    accelerator: Accelerator,
    directory: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Save the trainable weights in the adapter format (+ tokenizer) to ``directory``; every
    process must call it (ZeRO-3 gathers the sharded weights)."""
    state_dict = accelerator.get_state_dict(model) if _is_deepspeed(accelerator) else None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if state_dict is not None:
            unwrapped.save_pretrained(directory, state_dict=state_dict)
        else:
            unwrapped.save_pretrained(directory)
        tokenizer.save_pretrained(directory)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


class MetricsWriter:
    """Metrics to ``output_dir/metrics.jsonl`` (main process, always) and to the accelerate trackers
    (tensorboard / wandb) when ``logging.report_to`` names them."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, resume_step: int) -> None:
        self.accelerator = accelerator
        self.path = Path(cfg.output_dir) / METRICS_FILE
        self.trackers = bool(cfg.logging.report_to)
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A resumed run rewrites history after its checkpoint: drop lines the killed run logged
            # past it, so the file holds one continuous curve.
            if self.path.is_file():
                kept = [
                    line
                    for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step
                ]
                self.path.write_text("".join(line + "\n" for line in kept))
        if self.trackers:
            flat = _flatten(to_dict(cfg))
            accelerator.init_trackers(
                cfg.logging.project,
                config=flat,
                init_kwargs={"wandb": {"name": cfg.logging.run_name}}
                if cfg.logging.run_name
                else {},
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Append one record (main process) and forward the numbers to the trackers."""
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.trackers:
            self.accelerator.log(
                {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step
            )

    def close(self) -> None:
        """Finish the trackers."""
        if self.trackers:
            self.accelerator.end_training()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config for trackers (``optimizer.lr`` -> value; lists as strings)."""
    flat: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    value = tree if isinstance(tree, (int, float, str, bool)) else str(tree)
    return {prefix[:-1]: value}


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig, *, stop_after_steps: int | None = None, recipe_path: str | None = None
) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns a :class:`TrainResult`.

    ``stop_after_steps`` stops this invocation after that many optimizer steps, without the final
    save, as if the job had been killed right after them (time-limited jobs; resume tests).
    """
    from tqdm.auto import tqdm

    from retrofit.data import PromptLayout
    from retrofit.tokenization import resolve_special_ids

    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)

    # 1. Accelerator (DDP / DeepSpeed / CPU from `accelerate launch`) and the seed.
    accelerator = build_accelerator(cfg)
    if accelerator.is_main_process and cfg.push_to_hub:
        _check_hub_access(cfg)  # a missing / read-only token fails now, not after the run
    pusher = (
        HubCheckpointPusher(cfg)
        if accelerator.is_main_process and cfg.push_to_hub and cfg.hub_push_checkpoints
        else None
    )
    from accelerate.utils import set_seed

    set_seed(cfg.training.seed)
    deepspeed = _is_deepspeed(accelerator)
    if deepspeed:
        _configure_deepspeed(accelerator, cfg)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        # The resolved recipe (loadable with load_config) next to the outputs.
        (output_dir / "recipe.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    accelerator.wait_for_everyone()

    # 2. Tokenizer and model.
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer, accelerator)
    special_ids = resolve_special_ids(tokenizer, mask_token_id=model.config.mask_token_id)
    schedules = (model.insertion_schedule, model.unmasking_schedule)

    # The prompt layout of this run's data goes into every checkpoint (generate / eval use it).
    data_cfg = dataclasses.replace(cfg.data, objective=cfg.objective.name)
    model.config.prompt_layout = PromptLayout.from_data_config(data_cfg).to_dict()

    # 3. Data: every rank reads the same stream of global micro-batches.
    world_size = accelerator.num_processes
    rank = accelerator.process_index
    global_micro_batch = cfg.training.micro_batch_size * world_size
    if cfg.data.max_length > model.config.max_length:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} exceeds the model's max_length={model.config.max_length}: "
            "lower data.max_length or set model.adapter_overrides.max_length"
        )
    data = build_data_stream(cfg, tokenizer, global_micro_batch, special_ids)

    # 4. Optimizer (parameter groups) and warmup + single half-cosine.
    optimizer, group_names = build_optimizer(model, cfg)
    schedule = partial(
        lr_factor,
        warmup_steps=warmup_steps_for(cfg),
        total_steps=cfg.training.max_steps,
        min_ratio=cfg.scheduler.min_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    accelerator.print(
        f"trainable parameters: {model.parameter_counts()}; optimizer groups: {group_names}; "
        f"global batch: {global_micro_batch * cfg.training.gradient_accumulation_steps} sequences "
        f"({world_size} processes x {cfg.training.micro_batch_size} x {cfg.training.gradient_accumulation_steps} accumulation)"
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    checkpoints = CheckpointManager(cfg, accelerator, model, tokenizer, pusher=pusher)

    # 5. Resume.
    step, tokens_seen, elapsed_before = 0, 0, 0.0
    resumed_from = None
    if cfg.checkpoint.resume is not None:
        resumed_from = (
            find_latest_checkpoint(output_dir)
            if cfg.checkpoint.resume == "latest"
            else Path(cfg.checkpoint.resume)
        )
        if resumed_from is not None:
            state = checkpoints.load(resumed_from)
            step, tokens_seen = int(state["step"]), int(state["tokens"])
            elapsed_before = float(state.get("elapsed_s", 0.0))
            data.load_state_dict(state["data"])
            accelerator.print(f"resumed from {resumed_from} at step {step}")
        else:
            accelerator.print(f"no complete checkpoint in {output_dir}: starting from step 0")
    metrics = MetricsWriter(cfg, accelerator, resume_step=step)

    # 6. The loop.
    accum = cfg.training.gradient_accumulation_steps
    pad_to = data.max_length if cfg.training.pad_to_max_length else None
    progress = tqdm(
        total=cfg.training.max_steps,
        initial=step,
        desc="train",
        dynamic_ncols=True,
        disable=not (accelerator.is_main_process and cfg.logging.progress_bar),
    )
    losses: list[float] = []
    window_tokens, window_start = 0, time.perf_counter()
    steps_this_run = 0
    model.train()
    while step < cfg.training.max_steps and (
        stop_after_steps is None or steps_this_run < stop_after_steps
    ):
        parts = torch.zeros(
            3, dtype=torch.float64
        )  # loss, unmask, insert: the sums of the micro-batch shares
        step_tokens = 0
        # The whole accumulation window is read first: the FlexMDM normaliser is the step's.
        step_batches = [next(data) for _ in range(accum)]
        denominator = (
            step_denominator(step_batches, cfg, world_size)
            if cfg.objective.name == "flexmdm"
            else None
        )
        for micro_step, batch in enumerate(step_batches):
            last = micro_step == accum - 1
            # Gradients are all-reduced (DDP) / the DeepSpeed boundary is reached only on the last
            # micro-batch; earlier ones accumulate locally.
            accelerator.sync_gradients = last
            sync_context = contextlib.nullcontext() if last else accelerator.no_sync(model)
            generator = noise_generator(cfg.training.seed, step, micro_step)
            with sync_context:
                if cfg.objective.name == "flexmdm":
                    out = flexmdm_micro_batch(
                        model,
                        batch,
                        cfg,
                        schedules=schedules,
                        special_ids=special_ids,
                        generator=generator,
                        rank=rank,
                        world_size=world_size,
                        device=accelerator.device,
                        denominator=denominator,
                        pad_to=pad_to,
                    )
                else:
                    out = mdm_micro_batch(
                        model,
                        batch,
                        cfg,
                        special_ids=special_ids,
                        generator=generator,
                        rank=rank,
                        world_size=world_size,
                        device=accelerator.device,
                        accumulation_steps=accum,
                        pad_to=pad_to,
                    )
                # The trainer owns accumulation scaling: out.loss is already this micro-batch's
                # share of the step's loss (FlexMDM: the step's normaliser; MDM: 1 / accum).
                if deepspeed:
                    # DeepSpeed would divide by its gradient_accumulation_steps again.
                    accelerator.backward(out.loss, scale_wrt_gas=False)
                else:
                    out.loss.backward()
            parts += torch.tensor(
                [out.loss.item(), out.unmask_loss, out.insert_loss], dtype=torch.float64
            )
            step_tokens += int(batch.lengths.sum())  # the global micro-batch: same on every rank

        max_norm = (
            cfg.optimizer.max_grad_norm if cfg.optimizer.max_grad_norm is not None else float("inf")
        )
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_run += 1
        tokens_seen += step_tokens
        window_tokens += step_tokens

        global_parts = accelerator.reduce(
            parts.to(accelerator.device, torch.float32), reduction="mean"
        ).cpu()
        loss_value, unmask_value, insert_value = (float(v) for v in global_parts)
        losses.append(loss_value)
        lr = cfg.optimizer.lr * schedule(step - 1)  # the base lr this update used
        progress.update(1)
        if step % cfg.logging.log_every == 0 or step == cfg.training.max_steps:
            now = time.perf_counter()
            tokens_per_s = window_tokens / max(now - window_start, 1e-9)
            window_tokens, window_start = 0, now
            record = {
                "loss": loss_value,
                "unmask_loss": unmask_value,
                "insert_loss": insert_value,
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens": tokens_seen,
                "tokens_per_s": tokens_per_s,
            }
            metrics.log(record, step)
            progress.set_postfix(
                loss=f"{loss_value:.4f}",
                unmask=f"{unmask_value:.4f}",
                insert=f"{insert_value:.4f}",
                tok_s=f"{tokens_per_s:.0f}",
                lr=f"{lr:.2e}",
            )
        if step % cfg.checkpoint.save_every == 0:
            checkpoints.save(
                step,
                {
                    "step": step,
                    "tokens": tokens_seen,
                    "data": data.state_dict(),
                    "elapsed_s": elapsed_before + time.perf_counter() - started,
                    "loss": loss_value,
                },
            )
    progress.close()
    if pusher is not None:
        pusher.wait()  # the last checkpoint's upload, before the final push
    accelerator.print(data.stats_summary)

    elapsed = elapsed_before + time.perf_counter() - started
    result = TrainResult(
        output_dir=output_dir,
        steps=step,
        tokens=tokens_seen,
        losses=losses,
        elapsed_s=elapsed,
        resumed_from=resumed_from,
    )
    if step >= cfg.training.max_steps:
        # 7. Final save (adapter format + tokenizer), summary, optional Hub push.
        if cfg.checkpoint.save_final:
            result.final_dir = output_dir / "final"
            save_model(model, accelerator, result.final_dir, tokenizer)
        if accelerator.is_main_process:
            summary = {
                "steps": step,
                "tokens": tokens_seen,
                "elapsed_s": elapsed,
                "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                "objective": cfg.objective.name,
                "base_model": cfg.model.base,
                "world_size": world_size,
                "global_batch_size": global_micro_batch * accum,
                "final_loss": losses[-1] if losses else None,
                "recipe": recipe_path,
                "resumed_from": str(resumed_from) if resumed_from else None,
                "data": data.stats_summary,
            }
            (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            if cfg.push_to_hub and result.final_dir is not None:
                _push_to_hub(cfg, result.final_dir, step)
    metrics.close()
    accelerator.wait_for_everyone()
    return result


def _check_hub_access(cfg: TrainConfig) -> None:
    """Startup preflight of ``push_to_hub`` (main process, before the model is built): a token
    exists, the Hub accepts it, it may write, and ``hub_repo_id`` exists (it is created now, private
    when ``hub_private``). Raises PermissionError / ConnectionError / ValueError saying what to fix."""
    from retrofit.hub import check_push_access

    try:
        user = check_push_access(cfg.hub_repo_id, create=True, private=cfg.hub_private)
    except (PermissionError, ConnectionError, ValueError) as error:
        message = (
            f"push_to_hub: the run would push to {cfg.hub_repo_id}, but the check before training "
            f"failed: {error} Nothing was trained. Fix the token (HF_TOKEN or `hf auth login`, "
            "with write access), or run with push_to_hub=false."
        )
        for kind in (PermissionError, ConnectionError, ValueError):
            if isinstance(error, kind):
                raise kind(message) from error
        raise
    owner = user or "this user"
    print(f"push_to_hub: {cfg.hub_repo_id} is writable with the token of {owner}", flush=True)


def _push_to_hub(cfg: TrainConfig, final_dir: Path, step: int) -> None:
    """Push the final checkpoint to ``main`` of ``cfg.hub_repo_id``; a failure raises."""
    from retrofit.hub import push_checkpoint

    push_checkpoint(
        str(final_dir), cfg.hub_repo_id, private=cfg.hub_private,
        commit_message=f"Final retrofit checkpoint (step {step})",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrofit train",
        description="Train a FlexMDM (or the MDM baseline) from a recipe YAML. Launch with "
        "`accelerate launch [--config_file recipes/accelerate/X.yaml] -m retrofit.train RECIPE.yaml`.",
    )
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny/flexmdm-gsm8k.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides parsed as YAML scalars, e.g. training.max_steps=10 optimizer.lr=3e-5",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved recipe and exit"
    )
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``retrofit train RECIPE.yaml [key=value ...]``; returns the exit code."""
    args = _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = load_config(args.recipe, args.overrides)
    except ConfigError as err:
        print(f"retrofit train: invalid recipe: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    train(cfg, recipe_path=args.recipe)
    if _launched_world_size() > 1:
        # torch + gloo abort at interpreter shutdown in a fraction of multi-process runs
        # ("terminate called without an active exception"): flush and leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def main() -> None:
    """Entry point of ``python -m retrofit.train`` / ``accelerate launch -m retrofit.train``."""
    sys.exit(cli_main())


if __name__ == "__main__":
    main()
