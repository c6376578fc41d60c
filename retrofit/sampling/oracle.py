"""An exact-rate FlexMDM for a known length distribution: the sampler's reference point.

:class:`LengthOracle` answers every forward pass with the Bayes-optimal expected number of missing
answer tokens given the current answer length ``l`` and time ``t``. Under the FlexMDM forward
process each of the ``L`` answer tokens of a sample is present at time t independently with
probability ``alpha(t)``, so ``l | L ~ Binomial(L, alpha(t))`` and

    E[L - l | l, t] = sum_L (L - l) p(L) Bin(l; L, alpha(t)) / sum_L p(L) Bin(l; L, alpha(t)),

spread uniformly over the answer's ``l + 1`` slots (the sampler's length law depends only on their
sum). Token logits are uniform over the content vocabulary (content is irrelevant here), or give
token 0 probability ``top_probability`` (a confident model, for the fast sampling modes). A sampler
that is exact in the limit of exact rates turns this model's answers into lengths distributed as
``p(L)``; tests and ``benchmarks/sampling.py --exact-rates`` measure how close it gets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from retrofit.schedules import get_schedule

__all__ = ["LengthOracle", "length_w1"]


class LengthOracle(nn.Module):
    """Exact expected gaps for answers whose lengths follow ``length_probs`` (see module docstring).

    Rows are ``prompt_length`` prompt tokens followed by the answer. Token ids: content
    ``0 .. vocab_size - 1``, then the mask and the pad id. Counts its forward passes in ``calls``.
    """

    def __init__(self, length_probs: Mapping[int, float], *, prompt_length: int = 1,
                 vocab_size: int = 2, schedule: str = "linear", max_length: int | None = None,
                 top_probability: float | None = None):
        super().__init__()
        lengths = sorted(int(length) for length in length_probs)
        probs = torch.tensor([float(length_probs[length]) for length in lengths], dtype=torch.float64)
        if min(lengths) < 0 or not torch.all(probs >= 0) or float(probs.sum()) <= 0:
            raise ValueError("length_probs maps lengths >= 0 to non-negative probabilities")
        self.register_buffer("support", torch.tensor(lengths, dtype=torch.float64))  # (S,)
        self.register_buffer("log_prior", torch.log(probs / probs.sum()))  # (S,)
        self.prompt_length = prompt_length
        self.vocab_size = vocab_size
        self.insertion_schedule = get_schedule(schedule)
        self.unmasking_schedule = get_schedule(schedule)
        self.config = SimpleNamespace(
            kind="flexmdm", mask_token_id=vocab_size, pad_token_id=vocab_size + 1,
            eos_token_id=vocab_size + 1,
            max_length=max_length or prompt_length + 2 * max(lengths) + 8,
        )
        self.calls = 0
        content = torch.zeros(vocab_size + 2)  # mask and pad: forbidden by the sampler anyway
        if top_probability is not None:
            if not 1.0 / vocab_size <= top_probability < 1.0:
                raise ValueError(f"top_probability must be in [1/vocab_size, 1), got {top_probability}")
            rest = (1.0 - top_probability) / max(vocab_size - 1, 1)
            content[0] = math.log(top_probability / rest) if vocab_size > 1 else 0.0
        self.register_buffer("content_logits", content)  # (V,)

    def expected_missing(self, answer_lengths: Tensor, t: Tensor) -> Tensor:
        """E[L - l | l, t] (B,) float64 for answer lengths l (B,) at times t (B,)."""
        current = answer_lengths.double()[:, None]  # (B, 1)
        alpha = self.insertion_schedule.at(t.double()).clamp(0.0, 1.0)[:, None]  # (B, 1)
        support = self.support[None, :]  # (1, S)
        missing = support - current  # (B, S)
        log_choose = (torch.lgamma(support + 1) - torch.lgamma(current + 1)
                      - torch.lgamma(missing.clamp_min(0) + 1))
        log_likelihood = (log_choose + torch.xlogy(current, alpha)
                          + torch.xlogy(missing.clamp_min(0), 1 - alpha))  # (B, S)
        log_weight = torch.where(missing >= 0, self.log_prior + log_likelihood, float("-inf"))
        possible = torch.isfinite(log_weight).any(dim=1)  # (B,) some L is consistent with l
        posterior = torch.softmax(torch.where(possible[:, None], log_weight, 0.0), dim=1)
        expected = (posterior * missing.clamp_min(0)).sum(dim=1)  # (B,)
        return torch.where(possible, expected, 0.0)

    def forward(self, input_ids: Tensor, lengths: Tensor, t: Tensor,
                logits_positions: Tensor | None = None) -> SimpleNamespace:
        """Uniform content logits and exact expected gaps (B, L + 1) on the answer's slots."""
        self.calls += 1
        batch_size, width = input_ids.shape
        answer_lengths = lengths - self.prompt_length  # (B,)
        per_slot = self.expected_missing(answer_lengths, t) / (answer_lengths + 1)  # (B,)
        slots = torch.arange(width + 1, device=input_ids.device)  # (L + 1,)
        in_answer = (slots[None, :] >= self.prompt_length) & (slots[None, :] <= lengths[:, None])
        gaps = torch.where(in_answer, per_slot[:, None], 0.0).float()  # (B, L + 1)
        rows = batch_size * width if logits_positions is None else int(logits_positions.sum())
        logits = self.content_logits.expand(rows, -1).clone()  # (N, V)
        if logits_positions is None:
            logits = logits.view(batch_size, width, -1)  # (B, L, V)
        return SimpleNamespace(logits=logits, gaps=gaps)


def length_w1(lengths: Tensor, length_probs: Mapping[int, float]) -> float:
    """Wasserstein-1 distance between the empirical law of ``lengths`` (N,) and ``length_probs``:
    the integral of |F_empirical - F| over lengths."""
    total = float(sum(length_probs.values()))
    top = int(max(int(lengths.max()), max(length_probs))) + 1
    empirical = torch.bincount(lengths.long(), minlength=top).double() / lengths.numel()
    target = torch.zeros(top, dtype=torch.float64)
    for length, probability in length_probs.items():
        target[int(length)] += probability / total
    return float((empirical.cumsum(0) - target.cumsum(0)).abs().sum())
