"""Checkpoints of a training run: atomic writes (temp dir + rename + ``COMPLETE`` marker), the
last K kept, resume from the newest complete one, and the model export in the adapter format.
File names come from :mod:`retrofit.checkpoint_names`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from retrofit.checkpoint_names import (
    COMPLETE_MARKER,
    MODEL_DIR,
    STATE_DIR,
    TMP_PREFIX,
    TRAINABLE_WEIGHTS_FILE,
    TRAINER_STATE_FILE,
    checkpoint_name,
    checkpoint_step,
)
from retrofit.training.accelerator import is_deepspeed

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from retrofit.training.hub_push import HubCheckpointPusher

__all__ = ["CheckpointManager", "find_latest_checkpoint", "list_checkpoints", "save_model"]


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints (with the ``COMPLETE`` marker) in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and (p / COMPLETE_MARKER).is_file()
    ]
    return sorted(found, key=checkpoint_step)


def find_latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``checkpoint-<step>`` in ``output_dir`` (None if there is none)."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def trainable_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """The trainable parameters of the (unwrapped) model, in fp32 on CPU."""
    return {
        name: param.detach().float().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_trainable_state_dict(model: torch.nn.Module, path: Path) -> None:
    """Load trainable weights saved by :func:`trainable_state_dict`; the key sets must match."""
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


def save_model(
    model: torch.nn.Module,
    accelerator: Accelerator,
    directory: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Save the trainable weights in the adapter format (+ tokenizer) to ``directory``; every
    process must call it (ZeRO-3 gathers the sharded weights)."""
    state_dict = accelerator.get_state_dict(model) if is_deepspeed(accelerator) else None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if state_dict is not None:
            unwrapped.save_pretrained(directory, state_dict=state_dict)
        else:
            unwrapped.save_pretrained(directory)
        tokenizer.save_pretrained(directory)


class CheckpointManager:
    """Writes checkpoints atomically (temp dir + rename, ``COMPLETE`` marker) and keeps the last K.

    Every process must call :meth:`save` (DeepSpeed shards and per-rank RNG states); the output
    directory must be on a file system shared by all nodes. With a ``pusher`` (main process), each
    checkpoint's ``model/`` is handed to it right after the rename.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        output_dir: str | os.PathLike[str],
        keep_last: int,
        pusher: HubCheckpointPusher | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.tokenizer = tokenizer
        self.pusher = pusher
        self.root = Path(output_dir)
        self.keep_last = keep_last
        self.deepspeed = is_deepspeed(accelerator)
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
        final = self.root / checkpoint_name(step)
        tmp = self.root / f"{TMP_PREFIX}{checkpoint_name(step)}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / STATE_DIR).mkdir(parents=True)  # every rank writes its RNG state there
        accelerator.wait_for_everyone()
        if self.deepspeed:
            accelerator.save_state(str(tmp / STATE_DIR), exclude_frozen_parameters=True)
        else:
            accelerator.save_state(str(tmp / STATE_DIR))
        save_model(self.model, self.accelerator, tmp / MODEL_DIR, self.tokenizer)
        if accelerator.is_main_process:
            self._finalize(step, tmp, final, trainer_state)
        accelerator.wait_for_everyone()
        return final

    def _finalize(self, step: int, tmp: Path, final: Path, trainer_state: dict[str, Any]) -> None:
        """Main process: trainable weights + trainer state + marker, rename, prune, push."""
        if not self.deepspeed:
            from safetensors.torch import save_file

            unwrapped = self.accelerator.unwrap_model(self.model)
            save_file(
                trainable_state_dict(unwrapped), str(tmp / STATE_DIR / TRAINABLE_WEIGHTS_FILE)
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
            self.pusher.submit(final / MODEL_DIR, step)

    def _prune(self) -> None:
        checkpoints = list_checkpoints(self.root)
        for old in checkpoints[: max(0, len(checkpoints) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, checkpoint: Path) -> dict[str, Any]:
        """Restore optimizer, scheduler, RNG and weights from ``checkpoint``; returns its trainer state."""
        state_dir = checkpoint / STATE_DIR
        if self.deepspeed:
            self.accelerator.load_state(str(state_dir), load_module_strict=False)
        else:
            self.accelerator.load_state(str(state_dir))
            load_trainable_state_dict(
                self.accelerator.unwrap_model(self.model), state_dir / TRAINABLE_WEIGHTS_FILE
            )
        return json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
