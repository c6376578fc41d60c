"""Vectorised building blocks of the samplers (small, public where useful, tested alone).

Every function works on a whole batch at once; shapes are in the docstrings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from retrofit.schedules import Schedule

from .config import CONFIDENCE_NAMES

__all__ = ["cap_insertions", "insert_masks", "num_transfer_tokens"]


def insert_masks(
    input_ids: Tensor,
    lengths: Tensor,
    counts: Tensor,
    *,
    mask_token_id: int,
    pad_token_id: int,
    width: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Insert ``counts[b, j]`` mask tokens into slot j (the gap before position j) of every row.

    input_ids: (B, W) right-padded; lengths: (B,); counts: (B, W + 1) non-negative integers, zero
    beyond each row's slot ``lengths[b]``. ``width``: the output width (default: the longest new
    row, at least 1); it must hold every new row. Returns ``(new_ids (B, W'), new_lengths (B,))``,
    with masks in the inserted places and ``pad_token_id`` beyond each new length. Old tokens move
    to ``position + (masks inserted in slots 0..position)``: one cumulative sum and one scatter.
    """
    batch_size, old_width = input_ids.shape
    if counts.shape != (batch_size, old_width + 1):
        raise ValueError(
            f"counts must have shape (B, W + 1) = {(batch_size, old_width + 1)}, "
            f"got {tuple(counts.shape)}"
        )
    counts = counts.to(torch.long)
    new_lengths = lengths + counts.sum(dim=1)  # (B,)
    longest = int(new_lengths.max()) if batch_size else 0
    new_width = max(1, longest) if width is None else width
    if longest > new_width:
        raise ValueError(f"width={new_width} cannot hold a row of length {longest}")
    device = input_ids.device
    positions = torch.arange(old_width, device=device)  # (W,)
    shift = counts[:, :old_width].cumsum(dim=1)  # (B, W): masks inserted at or before slot p
    valid = positions[None, :] < lengths[:, None]  # (B, W)
    # Tokens beyond a row's length go to a dump column (index new_width) that is dropped below.
    targets = torch.where(valid, positions[None, :] + shift, torch.full_like(shift, new_width))
    new_positions = torch.arange(new_width + 1, device=device)  # (W' + 1,)
    output = torch.where(
        new_positions[None, :] < new_lengths[:, None],
        torch.full((), mask_token_id, dtype=input_ids.dtype, device=device),
        torch.full((), pad_token_id, dtype=input_ids.dtype, device=device),
    )  # (B, W' + 1)
    output.scatter_(1, targets, input_ids)
    return output[:, :new_width], new_lengths


def cap_insertions(counts: Tensor, capacity: Tensor) -> tuple[Tensor, Tensor]:
    """Scale each row's insertion counts down so that they sum to at most ``capacity``.

    counts: (B, S) non-negative integers; capacity: (B,) room left in each row. A row whose total
    exceeds its capacity gets ``floor(count * capacity / total)`` per slot plus one extra token in
    the slots with the largest remainders until the row is exactly full (exact integer arithmetic;
    ties go to the leftmost slot). Returns ``(capped counts (B, S), truncated (B,) bool)``.
    """
    counts = counts.to(torch.long)
    capacity = capacity.to(torch.long).clamp_min(0)
    totals = counts.sum(dim=1)  # (B,)
    truncated = totals > capacity  # (B,)
    if not bool(truncated.any()):
        return counts, truncated
    safe_totals = totals.clamp_min(1)[:, None]  # (B, 1)
    scaled = counts * capacity[:, None]  # (B, S)
    base = scaled // safe_totals
    remainders = scaled % safe_totals
    leftover = capacity - base.sum(dim=1)  # (B,) < number of slots with a positive remainder
    order = torch.sort(remainders, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(counts.shape[1], device=counts.device).expand_as(order))
    extra = (rank < leftover[:, None]) & (remainders > 0)
    capped = torch.where(truncated[:, None], base + extra.long(), counts)
    return capped, truncated


def num_transfer_tokens(mask_counts: Tensor, steps: int) -> Tensor:
    """LLaDA's ``get_num_transfer_tokens``: split each row's mask count evenly over ``steps``.

    mask_counts: (B,) masks in the current block. Returns (B, steps): ``count // steps`` per step,
    plus one in the first ``count % steps`` steps, so each row sums to its count.
    """
    base = mask_counts // steps  # (B,)
    remainder = mask_counts % steps  # (B,)
    step_index = torch.arange(steps, device=mask_counts.device)  # (steps,)
    return base[:, None] + (step_index[None, :] < remainder[:, None]).long()


def _select_top_k(confidence: Tensor, k: Tensor) -> Tensor:
    """The k highest-confidence positions of each row.

    confidence: (B, W) with -inf where a position is not a candidate; k: (B,) at most the number of
    candidates of each row. Ties go to the leftmost position (stable sort). Returns (B, W) bool.
    """
    order = torch.sort(confidence, dim=1, descending=True, stable=True).indices  # (B, W)
    rank = torch.empty_like(order)
    rank.scatter_(
        1, order, torch.arange(confidence.shape[1], device=confidence.device).expand_as(order)
    )
    return rank < k[:, None]


def _confidence(logits: Tensor, name: str) -> Tensor:
    """Confidence of each candidate position from its logits (higher = unmask first).

    logits: (N, V) float, forbidden tokens already at -inf. Returns (N,). Only the candidate
    positions reach this function, so the softmax never spans the whole buffer.
    """
    log_normaliser = torch.logsumexp(logits, dim=-1)  # (N,)
    if name == "top_prob":
        return torch.exp(logits.max(dim=-1).values - log_normaliser)
    if name == "prob_diff":
        top2 = logits.topk(min(2, logits.shape[-1]), dim=-1).values  # (N, 2)
        probs = torch.exp(top2 - log_normaliser[:, None])
        second = probs[:, 1] if probs.shape[1] > 1 else torch.zeros_like(probs[:, 0])
        return probs[:, 0] - second
    if name == "entropy":
        log_probs = logits - log_normaliser[:, None]  # (N, V)
        plogp = torch.where(torch.isfinite(log_probs), log_probs.exp() * log_probs, 0.0)
        return plogp.sum(dim=-1)  # = -entropy
    raise ValueError(f"unknown confidence {name!r}; choose one of {CONFIDENCE_NAMES}")


def _sample_tokens(logits: Tensor, temperature: float, top_p: float, uniforms: Tensor) -> Tensor:
    """Sample one token per row from softmax(logits / temperature), restricted to the top-p nucleus.

    logits: (K, V) float; uniforms: (K,) float64 in [0, 1). Inverse-CDF sampling with one uniform
    per row (the nucleus always keeps the most likely token). Returns (K,) long.
    """
    probs = torch.softmax(logits.double() / temperature, dim=-1)  # (K, V)
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs = torch.where(before < top_p, sorted_probs, 0.0)
    cumulative = sorted_probs.cumsum(dim=-1)  # (K, V)
    targets = uniforms[:, None] * cumulative[:, -1:]  # (K, 1)
    index = torch.searchsorted(cumulative, targets, right=True).clamp_max(logits.shape[-1] - 1)
    # Never land on a zero-probability (forbidden / outside-nucleus) token through rounding.
    last_positive = (sorted_probs > 0).sum(dim=-1, keepdim=True) - 1
    index = torch.minimum(index, last_positive.clamp_min(0))
    return sorted_ids.gather(-1, index).squeeze(-1)


def _step_probabilities(schedule: Schedule, steps: int) -> list[float]:
    """``(a(t + dt) - a(t)) / (1 - a(t))`` at ``t = i / steps``, i < steps (float64 maths)."""
    times = torch.arange(steps + 1, dtype=torch.float64) / steps  # (steps + 1,)
    remaining = schedule.one_minus_at(times)  # (steps + 1,) 1 - a(t), cancellation-free
    probability = 1.0 - remaining[1:] / remaining[:-1].clamp_min(1e-300)
    return probability.nan_to_num(1.0).clamp(0.0, 1.0).tolist()

