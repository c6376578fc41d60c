"""Model plumbing and input handling shared by the samplers (calling the model, ids, batches, RNG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from retrofit.model_call import accepts_keyword, call_model, model_device
from retrofit.schedules import Schedule, get_schedule

TokenRows = Sequence[Sequence[int]] | Sequence[Tensor]


# The model-call protocol lives in retrofit.model_call (shared with retrofit.likelihood).
_accepts_logits_positions = accepts_keyword
_call_model = call_model
_model_device = model_device


def _config_value(model: Any, name: str, explicit: Any) -> Any:
    """An explicit argument, else ``model.config.<name>``, else None."""
    if explicit is not None:
        return explicit
    return getattr(getattr(model, "config", None), name, None)


def _resolve_schedule(model: Any, which: str, explicit: str | dict | Schedule | None) -> Schedule:
    """The insertion / unmasking schedule: explicit > ``model.<which>_schedule`` > config spec."""
    if explicit is not None:
        return get_schedule(explicit)
    attribute = getattr(model, f"{which}_schedule", None)
    if attribute is not None:
        return get_schedule(attribute)
    spec = getattr(getattr(model, "config", None), f"{which}_schedule", None)
    if spec is None:
        raise ValueError(
            f"no {which} schedule: the model has no `{which}_schedule` and its config none either; "
            f"pass {which}_schedule='linear' (or the schedule the model was trained with)"
        )
    return get_schedule(spec)


def _as_rows(rows: TokenRows | None, what: str) -> list[list[int]] | None:
    """Token id rows as lists of ints; raises a clear error for malformed input."""
    if rows is None:
        return None
    if isinstance(rows, Tensor):
        raise TypeError(f"{what} must be a list of token id sequences, not one tensor")
    rows = list(rows)
    if rows and isinstance(rows[0], int):
        raise TypeError(f"{what} must be a list of token id sequences; wrap a single one: [{what}]")
    result = []
    for index, row in enumerate(rows):
        if isinstance(row, Tensor):
            if row.dim() != 1:
                raise ValueError(f"{what}[{index}] must be 1-D, got shape {tuple(row.shape)}")
            row = row.tolist()
        elif isinstance(row, str):
            raise TypeError(f"{what}[{index}] is a string: tokenize it first")
        result.append([int(token) for token in row])
    return result


def _stream_ids(row_ids: Sequence[int] | None, n_prompts: int) -> list[int]:
    """The random-stream id of every prompt: ``row_ids``, or the prompt's index by default."""
    if row_ids is None:
        return list(range(n_prompts))
    row_ids = list(row_ids)
    if len(row_ids) != n_prompts:
        raise ValueError(f"row_ids has {len(row_ids)} entries for {n_prompts} prompts: give one each")
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in row_ids):
        raise ValueError("row_ids must be non-negative integers (one random-stream id per prompt)")
    return row_ids


def _check_common(steps: int, batch_size: int | None, n_prompts: int) -> None:
    """At least one prompt, ``steps >= 1``, ``batch_size >= 1`` or None (for samplers without a
    typed config, e.g. :mod:`retrofit.sampling.dream`)."""
    _check_prompt_count(n_prompts)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")


def _check_canvas_prompts(
    model: Any,
    prompt_rows: list[list[int]],
    mask_id: int | None,
    pad_id: int | None,
    gen_length: int,
) -> None:
    """For the fixed-canvas (MDM) samplers: the special ids are known, prompts are clean, and the
    longest prompt plus the ``gen_length`` canvas fits the model's ``max_length``."""
    if mask_id is None or pad_id is None:
        raise ValueError(
            "mask/pad token ids unknown: the model config has no mask_token_id/pad_token_id; "
            "pass mask_token_id= and pad_token_id="
        )
    for index, prompt in enumerate(prompt_rows):
        if mask_id in prompt:
            raise ValueError(
                f"prompt {index} contains the mask token id {mask_id}: prompts must be clean"
            )
    max_length = _config_value(model, "max_length", None)
    longest = max(len(p) for p in prompt_rows) + gen_length
    if max_length is not None and longest > max_length:
        raise ValueError(
            f"the longest prompt plus gen_length is {longest} tokens, more than the model's "
            f"max_length={max_length}: shorten the prompt or lower gen_length"
        )


def _check_prompt_count(n_prompts: int) -> None:
    """At least one prompt (the settings themselves are checked by the sampler configs)."""
    if n_prompts == 0:
        raise ValueError("no prompts given: pass at least one prompt (an empty prompt [] is fine)")


def _row_generator(seed: int, row_id: int, device: torch.device) -> torch.Generator:
    """The generator of prompt ``row_id`` (its random-stream id): a function of (seed, row_id)."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 0x9E3779B97F4A7C15 + row_id * 0xBF58476D1CE4E5B9 + 1) % 2**63)
    return generator


def _batches(lengths: list[int], batch_size: int | None, sort_by_length: bool) -> list[list[int]]:
    """Indices of the prompts in each batch (sorted by length when asked, longest first)."""
    order = list(range(len(lengths)))
    if sort_by_length:
        order.sort(key=lambda index: -lengths[index])
    size = batch_size or len(order)
    return [order[start : start + size] for start in range(0, len(order), size)]


def _progress_bar(total: int, enabled: bool, description: str) -> Any:
    """A tqdm bar over ``total`` steps (disabled unless ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, leave=False, dynamic_ncols=True)

