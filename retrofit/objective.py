"""Training objectives: the FlexMDM loss and the LLaDA SFT (MDM) baseline loss.

FlexMDM (per batch, ``kappa`` the schedules' rate factors):

    L = ( sum over masked positions j:  kappa_beta(t)  * CE(logits_j, x1[s[j]])
        + sum over slots j <= l:        kappa_alpha(t) * D(g_j, ghat_j) ) / normaliser

with ``D(x, y) = y - x + x (ln x - ln y)`` (both clamped >= 1e-6), the Bregman divergence of
x ln x, whose minimiser over y is E[g]: the insertion head learns the expected gap. Every one of the
l + 1 slots counts, also those inside a protected prompt (their target is 0, which the sampler never
asks for but which costs nothing to learn).

Normalisers (``normalizer=``):

- ``"tokens"`` (default): the number of non-protected tokens of the clean x1 in the batch,
  ``sum_b (len(x_t) - protected in x_t) + sum_j g_j`` = ``sum_b (n_b - |prompt_b|)``, clamped >= 1.
  It depends only on the clean data, never on t or the noise draw, so the loss is the batch's
  per-answer-token average of an unbiased per-sequence estimator and is comparable across batches
  of different lengths.
- ``"fixed"``: ``B * fixed_length``, the research code's constant ``B * 1024``.

``denominator=`` replaces the batch's own normaliser. The trainer passes this rank's share of the
whole optimizer step's normaliser (all micro-batches of the accumulation window on all ranks,
divided by the number of ranks), so the per-micro-batch losses of every rank add up to the loss of
the step's concatenated batch, whatever the split: accumulation and data parallelism then compute
exactly the gradient of one large batch, also for ``"tokens"``, whose per-batch counts differ.

MDM baseline (LLaDA SFT): mask ratio ``r ~ U[eps, 1]`` per row, each response token masked with
probability r, loss per row ``sum over masked CE / r / response_length`` averaged over the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from retrofit.interpolant import NoisedBatch
from retrofit.schedules import Schedule, get_schedule

__all__ = [
    "BREGMAN_CLAMP",
    "LossOutput",
    "bregman_poisson",
    "flexmdm_loss",
    "flexmdm_normalizer",
    "mdm_forward_process",
    "mdm_loss",
]

# Both arguments of the Bregman divergence are clamped to at least this value.
BREGMAN_CLAMP = 1e-6


@dataclass
class LossOutput:
    """A training loss and its parts for logging.

    ``loss`` is the scalar to backpropagate; ``unmask_loss + insert_loss == loss`` (both detached,
    already divided by the normaliser). ``num_masked``: masked positions scored; ``num_tokens``:
    the token count behind the normaliser (non-protected x1 tokens for FlexMDM, response tokens
    for the MDM loss).
    """

    loss: Tensor  # () float32, carries grad
    unmask_loss: Tensor  # () float32, detached
    insert_loss: Tensor  # () float32, detached
    num_masked: int
    num_tokens: int


def bregman_poisson(counts: Tensor, predicted: Tensor) -> Tensor:
    """D(x, y) = y - x + x (ln x - ln y), elementwise, with x, y clamped >= 1e-6.

    ``counts`` (any shape, int or float) and ``predicted`` (broadcastable float) give a float32
    tensor (float64 if either input is float64). D >= 0, D(x, x) = 0, D(0, y) ~= y; the minimiser
    of the mean D over samples of x is their mean.
    """
    dtype = torch.float64 if torch.float64 in (counts.dtype, predicted.dtype) else torch.float32
    x = counts.to(dtype).clamp_min(BREGMAN_CLAMP)
    y = predicted.to(dtype).clamp_min(BREGMAN_CLAMP)
    return y - x + x * (torch.log(x) - torch.log(y))


def _masked_cross_entropy(logits: Tensor, targets: Tensor, is_masked: Tensor) -> Tensor:
    """CE at masked positions only, in float32.  Returns (N,), N = is_masked.sum().

    ``logits``: (B, L, V) full logits, or (N, V) logits already gathered at the masked positions in
    row-major order (``logits_full[is_masked]``). Only the N masked rows are upcast and
    log-softmaxed: no (B, L, V) float32 tensor is built.
    """
    num_masked = int(is_masked.sum())
    if logits.dim() == 3:
        if logits.shape[:2] != is_masked.shape:
            raise ValueError(
                f"logits (B, L, V) {tuple(logits.shape)} must match the positions "
                f"{tuple(is_masked.shape)} of the batch; pass logits for exactly the batch's L"
            )
        masked_logits = logits[is_masked]  # (N, V)
    elif logits.dim() == 2:
        if logits.shape[0] != num_masked:
            raise ValueError(
                f"gathered logits (N, V) have N={logits.shape[0]} rows but the batch has "
                f"{num_masked} masked positions"
            )
        masked_logits = logits
    else:
        raise ValueError(f"logits must be (B, L, V) or (N, V), got shape {tuple(logits.shape)}")
    masked_targets = targets[is_masked]  # (N,)
    return F.cross_entropy(masked_logits.float(), masked_targets.long(), reduction="none")


def flexmdm_normalizer(
    num_tokens: int,
    num_rows: int,
    *,
    normalizer: Literal["tokens", "fixed"] = "tokens",
    fixed_length: int = 1024,
) -> float:
    """The FlexMDM loss normaliser of ``num_rows`` sequences holding ``num_tokens`` non-protected
    clean tokens: ``max(num_tokens, 1)`` (``"tokens"``) or ``num_rows * fixed_length``
    (``"fixed"``). Depends on the clean data only, never on the noise."""
    if normalizer == "tokens":
        return float(max(num_tokens, 1))
    if normalizer == "fixed":
        return float(num_rows * fixed_length)
    raise ValueError(f"normalizer must be 'tokens' or 'fixed', got {normalizer!r}")


def flexmdm_loss(
    logits: Tensor,
    gaps: Tensor,
    batch: NoisedBatch,
    *,
    insertion: Schedule | str | dict,
    unmasking: Schedule | str | dict,
    normalizer: Literal["tokens", "fixed"] = "tokens",
    fixed_length: int = 1024,
    denominator: float | None = None,
) -> LossOutput:
    """FlexMDM loss for one batch (see the module docstring).

    ``logits``: (B, L', V) token logits for ``batch.input_ids`` (any float dtype; the CE runs in
    float32 on the masked positions only), or (N, V) logits gathered at ``batch.is_mask``.
    ``gaps``: (B, L'+1) predicted expected gap counts ghat >= 0; only slots j <= lengths count.
    ``batch``: the :class:`NoisedBatch` from :func:`retrofit.interpolant.forward_process`.
    ``insertion`` / ``unmasking``: the alpha / beta schedules used to noise the batch.
    ``denominator``: divide by this (> 0) instead of the ``normalizer`` of this batch alone.
    """
    insertion = get_schedule(insertion)
    unmasking = get_schedule(unmasking)
    batch_size, trimmed_length = batch.input_ids.shape
    if gaps.shape != (batch_size, trimmed_length + 1):
        raise ValueError(
            f"gaps must be (B, L'+1) = {(batch_size, trimmed_length + 1)} for input_ids "
            f"{tuple(batch.input_ids.shape)}, got {tuple(gaps.shape)}"
        )
    if normalizer not in ("tokens", "fixed"):
        raise ValueError(f"normalizer must be 'tokens' or 'fixed', got {normalizer!r}")
    if normalizer == "fixed" and not (isinstance(fixed_length, int) and fixed_length > 0):
        raise ValueError(f"fixed_length must be a positive int, got {fixed_length!r}")
    if denominator is not None and not (math.isfinite(denominator) and denominator > 0):
        raise ValueError(f"denominator must be a finite number > 0, got {denominator!r}")

    time = batch.t.float()  # (B,)
    unmask_weight = unmasking.rate_factor(time)  # (B,) kappa_beta(t)
    insert_weight = insertion.rate_factor(time)  # (B,) kappa_alpha(t)

    # Unmasking term: kappa_beta(t) * CE at masked positions only.
    cross_entropy = _masked_cross_entropy(logits, batch.targets, batch.is_mask)  # (N,)
    masked_rows = torch.nonzero(batch.is_mask, as_tuple=True)[0]  # (N,)
    unmask_sum = (unmask_weight[masked_rows] * cross_entropy).sum()

    # Insertion term: kappa_alpha(t) * D(g_j, ghat_j) over the l + 1 slots of every row.
    slots = torch.arange(trimmed_length + 1, device=gaps.device)
    slot_valid = slots[None, :] <= batch.lengths[:, None]  # (B, L'+1)
    divergence = bregman_poisson(batch.gap_counts, gaps)  # (B, L'+1) float32
    divergence = torch.where(slot_valid, divergence, torch.zeros_like(divergence))
    insert_sum = (insert_weight[:, None] * divergence).sum()

    num_tokens = int(batch.num_noised_tokens.sum())
    if denominator is None:
        denominator = flexmdm_normalizer(
            num_tokens, batch_size, normalizer=normalizer, fixed_length=fixed_length
        )
    unmask_loss = unmask_sum / denominator
    insert_loss = insert_sum / denominator
    return LossOutput(
        loss=unmask_loss + insert_loss,
        unmask_loss=unmask_loss.detach(),
        insert_loss=insert_loss.detach(),
        num_masked=int(masked_rows.numel()),
        num_tokens=num_tokens,
    )


def mdm_forward_process(
    x1: Tensor,
    response_mask: Tensor,
    *,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor]:
    """LLaDA SFT noising: per row ``mask_ratio = (1 - eps) u + eps``, mask response tokens w.p. it.

    ``x1``: (B, L) ids; ``response_mask``: (B, L) bool, True on the answer tokens (EOS pads inside
    the answer included), False on the prompt and beyond the row. Returns ``(noisy_ids (B, L),
    is_masked (B, L) bool, mask_ratio (B,) float32)``; ``noisy_ids`` is x1 with mask_token_id at
    the masked positions.
    """
    if not isinstance(x1, Tensor) or x1.dim() != 2:
        raise ValueError(f"x1 must be a (B, L) tensor of ids, got {getattr(x1, 'shape', x1)}")
    if x1.dtype == torch.bool or x1.is_floating_point() or x1.is_complex():
        raise ValueError(f"x1 must hold integer token ids, got dtype {x1.dtype}")
    if x1.shape[0] == 0:
        raise ValueError("x1 is an empty batch (0 rows); pass at least one row")
    if not isinstance(response_mask, Tensor) or response_mask.dtype != torch.bool:
        raise ValueError("response_mask must be a bool tensor")
    if response_mask.shape != x1.shape:
        raise ValueError(
            f"response_mask shape {tuple(response_mask.shape)} must equal x1 shape "
            f"{tuple(x1.shape)}"
        )
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    sample_device = generator.device if generator is not None else x1.device
    row_uniform = torch.rand(x1.shape[0], generator=generator, device=sample_device)  # (B,)
    token_uniform = torch.rand(x1.shape, generator=generator, device=sample_device)  # (B, L)
    mask_ratio = ((1.0 - eps) * row_uniform + eps).to(x1.device)  # (B,)
    is_masked = response_mask.to(x1.device) & (token_uniform.to(x1.device) < mask_ratio[:, None])
    noisy_ids = torch.where(is_masked, torch.full_like(x1, mask_token_id), x1)  # (B, L)
    return noisy_ids, is_masked, mask_ratio


def mdm_loss(
    logits: Tensor,
    targets: Tensor,
    is_masked: Tensor,
    mask_ratio: Tensor,
    response_mask: Tensor,
) -> LossOutput:
    """LLaDA SFT loss: ``mean_b [ sum_{masked j in row b} CE_j / mask_ratio_b / response_len_b ]``.

    ``logits``: (B, L, V) (or (N, V) gathered at ``is_masked``); ``targets``: (B, L) clean ids;
    ``is_masked``: (B, L) bool; ``mask_ratio``: (B,); ``response_mask``: (B, L) bool.
    ``response_len_b`` counts the row's response tokens (EOS pads inside the response included),
    clamped >= 1; the mean runs over all B rows. The CE runs in float32 on masked positions only.
    """
    if is_masked.shape != targets.shape or response_mask.shape != targets.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)}, is_masked {tuple(is_masked.shape)} and "
            f"response_mask {tuple(response_mask.shape)} must all be (B, L)"
        )
    if mask_ratio.shape != (targets.shape[0],):
        raise ValueError(f"mask_ratio must be ({targets.shape[0]},), got {tuple(mask_ratio.shape)}")
    if bool((is_masked & ~response_mask).any()):
        raise ValueError("is_masked marks positions outside response_mask; only answers are noised")
    cross_entropy = _masked_cross_entropy(logits, targets, is_masked)  # (N,)
    masked_rows = torch.nonzero(is_masked, as_tuple=True)[0]  # (N,)
    response_lengths = response_mask.sum(dim=1).clamp_min(1).float()  # (B,)
    row_scale = 1.0 / (mask_ratio.float() * response_lengths)  # (B,)
    loss = (cross_entropy * row_scale[masked_rows]).sum() / targets.shape[0]
    return LossOutput(
        loss=loss,
        unmask_loss=loss.detach(),
        insert_loss=torch.zeros((), device=loss.device),
        num_masked=int(masked_rows.numel()),
        num_tokens=int(response_mask.sum()),
    )
