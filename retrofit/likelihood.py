"""Likelihoods of masked diffusion LMs: log p(continuation | context) by Monte Carlo.

Two estimators, both for a ``context`` (protected: always present and clean) followed by a
``continuation`` (the only part the diffusion noises). The derivation and the measurements are in
``docs/likelihood.md``.

**FlexMDM** (:func:`flexmdm_log_likelihood`): the variational bound of the model's continuous-time
Markov chain (Kim et al., "Any-Order Flexible Length Masked Diffusion", arXiv 2509.01025), i.e.
the training objective with per-sequence weights and every constant kept::

    -log p(y | c) <= E_{t ~ U(0, 1), x_t ~ q_t(. | c, y)} [ I(t, x_t) ]

    I = sum over masked positions j:  kq_b CE_j + k_b - kq_b + kq_b ln(kq_b / k_b)
      + sum over answer slots j:      k_a ghat_j - kq_a g_j ln(k_a ghat_j)
      + n (E[ln kq_a(T1)] - 1)        (n = len(y), T1 ~ q's insertion schedule)

``k_a, k_b`` are the model's rate factors ``kappa(t) = a'(t) / (1 - a(t))`` of the insertion and
unmasking schedules (``Schedule.rate_factor``, the training weights); ``kq_a, kq_b`` those of the
reference process ``q`` that noises the continuation: the same schedules, rescaled to run from 0
to 1 when a schedule does not (``geometric``: a(0) = e^-s0, a(1) = e^-s1 < 1), and without the
rate-factor clamp, so that q starts from the context alone and ends exactly at the data. For the
schedules with a(0) = 0 and a(1) = 1 (linear, cosine, sin, poly), kq = k up to the clamp, and in
expectation the integrand is the training loss's plus the term the loss drops as constant in ghat::

    E[I] = E[ k_b sum_masked CE_j + k_a sum_slots ( D(g_j, ghat_j) - g_j ln g_j ) ],  D the Bregman loss

(the per-sample form above keeps ``ln(k_a ghat)`` together, which is O(1) where ghat -> 0 as
t -> 1, and has a smaller variance). Times are importance-sampled (:func:`importance_times`).

The answer slots are those the sampler inserts into: ``|context| <= j <= len(x_t)``. With the exact
rates (Bayes-optimal ghat and token posteriors) the bound is tight: E[I] = -log p(y | c).

**MDM** (:func:`mdm_log_likelihood`): the estimator of LLaDA's evaluation code: per sample, a
number of masked continuation tokens ``k`` in 1..L (stratified over the ``mc_num`` samples from one
uniform draw), exactly ``k`` positions masked uniformly at random, and ``sum over masked CE * L / k``
(the 1 / mask-ratio weighting). It bounds log p(y | c, len(y)): the MDM conditions on the canvas.

Both return a :class:`LikelihoodEstimate` per request: the mean over ``mc_num`` samples and its
Monte Carlo standard error (sample standard deviation / sqrt(mc_num); with the stratified draws
used here this over-estimates the true error, i.e. it is conservative).

Model call protocol (the same as the samplers'): ``model(input_ids (B, L), lengths (B,), t (B,) |
None, logits_positions=(B, L) bool)`` returning an object with ``.logits`` ((N, V) at the True
positions in row-major order, or (B, L, V)) and ``.gaps`` ((B, L + 1), FlexMDM only), or a tuple
``(logits, gaps)``. :class:`retrofit.adapter.FlexMDM` is such a model.

Random streams: the noise of a request comes from a generator seeded by ``(seed, context ids)``,
so an estimate does not depend on batching, sorting or sharding, and the continuations of one
context (the choices of a multiple-choice question) share their noise levels (common random
numbers: their differences have a smaller variance than the estimates themselves).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retrofit.interpolant import NoisedBatch, forward_process
from retrofit.model_call import call_model, model_device
from retrofit.schedules import RATE_FACTOR_MIN_DENOMINATOR, Schedule, get_schedule

__all__ = [
    "LikelihoodEstimate",
    "expected_log_rate",
    "flexmdm_bound_integrand",
    "flexmdm_log_likelihood",
    "importance_times",
    "mdm_log_likelihood",
    "mdm_mask_counts",
    "reference_schedule",
]

TokenIds = Sequence[int]
Request = tuple[TokenIds, TokenIds]  # (context ids, continuation ids)
ProgressCallback = Callable[[int], None]  # called with the number of MC rows just scored

# Rows of (N, V) logits turned into float32 log-probabilities at once (bounds the memory of the
# float32 copy for a large vocabulary: 4096 x 126464 x 4 bytes = 2 GB).
_CE_CHUNK_ROWS = 4096
# Smallest rate / expected gap inside a logarithm (a rate of exactly 0 would give -inf).
_TINY = 1e-300


@dataclass(frozen=True)
class LikelihoodEstimate:
    """A Monte Carlo estimate of log p(continuation | context), in nats.

    ``log_likelihood`` is the mean of ``mc_num`` samples of minus the bound (a lower bound on the
    true log-likelihood in expectation); ``stderr`` its standard error; ``num_tokens`` the
    continuation's length.
    """

    log_likelihood: float
    stderr: float
    num_tokens: int
    mc_num: int

    @property
    def bits_per_token(self) -> float:
        """-log2 p / num_tokens (inf for an empty continuation with a non-zero cost)."""
        if self.num_tokens == 0:
            return 0.0 if self.log_likelihood == 0.0 else math.inf
        return -self.log_likelihood / (self.num_tokens * math.log(2.0))


# ---------------------------------------------------------------------------------------------
# The reference process q: the schedules rescaled to [0, 1]
# ---------------------------------------------------------------------------------------------


class _RescaledSchedule(Schedule):
    """``(a(t) - a(0)) / (a(1) - a(0))``: a schedule that starts at 0 and ends at 1 exactly."""

    name = "rescaled"

    def __init__(self, base: Schedule) -> None:
        self.base = base
        ends = base.at(torch.tensor([0.0, 1.0], dtype=torch.float64))
        self.start, self.end = float(ends[0]), float(ends[1])
        if not self.end > self.start:
            raise ValueError(f"schedule {base} does not increase on [0, 1]")

    @property
    def spec(self) -> str:
        return f"rescaled({self.base.spec})"

    def _at(self, t: Tensor) -> Tensor:
        return (self.base._at(t) - self.start) / (self.end - self.start)

    def _one_minus_at(self, t: Tensor) -> Tensor:
        # 1 - (a - a0) / (a1 - a0) = ((1 - a) - (1 - a1)) / (a1 - a0), no cancellation in 1 - a.
        return (self.base._one_minus_at(t) - (1.0 - self.end)) / (self.end - self.start)

    def _derivative(self, t: Tensor) -> Tensor:
        return self.base._derivative(t) / (self.end - self.start)

    def _inverse(self, a: Tensor) -> Tensor:
        return self.base._inverse(self.start + a * (self.end - self.start))


def reference_schedule(schedule: Schedule | str | dict) -> Schedule:
    """The schedule of the reference process q: ``schedule`` itself when a(0) = 0 and a(1) = 1,
    else its rescaling ``(a(t) - a(0)) / (a(1) - a(0))`` (``geometric``)."""
    return _reference_schedule(get_schedule(schedule))


@functools.lru_cache(maxsize=64)
def _reference_schedule(schedule: Schedule) -> Schedule:
    ends = schedule.at(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
    if abs(ends[0]) < 1e-12 and abs(ends[1] - 1.0) < 1e-12:
        return schedule
    return _RescaledSchedule(schedule)


@functools.lru_cache(maxsize=64)
def _expected_log_rate(schedule: Schedule) -> float:
    # a = (1 - cos(pi s)) / 2 clusters the nodes at both ends, where ln a'(t(a)) may have
    # integrable log singularities (poly: a -> 0, sin: a -> 1); midpoint rule in s.
    nodes = 1 << 14
    s = (torch.arange(nodes, dtype=torch.float64) + 0.5) / nodes
    a = 0.5 * (1.0 - torch.cos(math.pi * s))  # (nodes,)
    jacobian = 0.5 * math.pi * torch.sin(math.pi * s) / nodes  # (nodes,) da
    log_derivative = torch.log(schedule.derivative(schedule.inverse(a)).clamp_min(_TINY))
    return 1.0 + float((log_derivative * jacobian).sum())


def expected_log_rate(schedule: Schedule | str | dict) -> float:
    """E[ln kappa(T)] for T with CDF ``a`` (a schedule with a(0) = 0 and a(1) = 1).

    ``= int_0^1 a'(t) ln(a'(t) / (1 - a(t))) dt = 1 + int_0^1 ln a'(a^-1(u)) du``: the linear
    schedule gives 1, ``poly(p)`` gives ``ln p + 1 / p``. The FlexMDM bound needs it for the
    insertion process's path entropy (docs/likelihood.md); computed once per schedule by
    quadrature (absolute error < 1e-6 for the built-in schedules).
    """
    return _expected_log_rate(get_schedule(schedule))


def _rate_pair(
    schedule: Schedule, reference: Schedule, t: Tensor, min_denominator: float
) -> tuple[Tensor, Tensor]:
    """(model rate factor, reference rate factor) at ``t`` (B,), float64, both > 0.

    The model's is ``schedule.rate_factor(t, min_denominator)`` (the training weight with the
    default clamp); the reference's is ``a'(t) / (1 - a(t))`` of ``reference`` without clamp, so
    that q ends exactly at the data.
    """
    time = t.double()
    model_rate = schedule.rate_factor(time, min_denominator=min_denominator).clamp_min(_TINY)
    reference_rate = reference.derivative(time) / reference.one_minus_at(time).clamp_min(_TINY)
    return model_rate, reference_rate.clamp_min(_TINY)


# ---------------------------------------------------------------------------------------------
# The FlexMDM bound
# ---------------------------------------------------------------------------------------------


def _masked_log_probs(
    logits: Tensor, targets: Tensor, forbidden: Tensor | None
) -> Tensor:
    """log softmax(logits)[target] per row, float32 maths, forbidden tokens at -inf.

    ``logits``: (N, V); ``targets``: (N,) long; ``forbidden``: (F,) long ids or None. Returns (N,)
    float64 (-inf where the target is forbidden).
    """
    pieces = []
    for start in range(0, logits.shape[0], _CE_CHUNK_ROWS):
        chunk = logits[start : start + _CE_CHUNK_ROWS].float()  # (n, V)
        if forbidden is not None and forbidden.numel() > 0:
            chunk = chunk.index_fill(-1, forbidden.to(chunk.device), float("-inf"))
        log_probs = torch.log_softmax(chunk, dim=-1)  # (n, V)
        target = targets[start : start + _CE_CHUNK_ROWS].to(chunk.device)
        pieces.append(log_probs.gather(1, target[:, None]).squeeze(1).double())
    if not pieces:
        return torch.zeros(0, dtype=torch.float64, device=logits.device)
    return torch.cat(pieces)


def flexmdm_bound_integrand(
    logits: Tensor,
    gaps: Tensor,
    batch: NoisedBatch,
    *,
    insertion: Schedule | str | dict,
    unmasking: Schedule | str | dict,
    prompt_lengths: Tensor,
    forbidden_token_ids: Sequence[int] = (),
    min_rate_denominator: float = RATE_FACTOR_MIN_DENOMINATOR,
) -> Tensor:
    """One Monte Carlo sample of the FlexMDM bound per row: I(t, x_t) of the module docstring.

    Args:
        logits: (N, V) logits at ``batch.is_mask`` (row-major order) or (B, L', V).
        gaps: (B, L'+1) predicted expected gaps ghat >= 0.
        batch: x_t drawn from the reference process (:func:`reference_schedule` of each schedule)
            with the context protected.
        insertion, unmasking: the model's schedules (alpha, beta).
        prompt_lengths: (B,) context lengths; slots j < prompt_lengths (inside the context, where
            the sampler never inserts) do not count.
        forbidden_token_ids: tokens the model's distribution leaves out (the mask id).
        min_rate_denominator: the clamp of the model's rate factors (``Schedule.rate_factor``);
            the default is the training loss's, whose weights define the model.

    Returns:
        (B,) float64: the bound's integrand in nats; its mean over t ~ U(0, 1) and x_t is the
        bound on -log p(continuation | context).
    """
    insertion = get_schedule(insertion)
    unmasking = get_schedule(unmasking)
    batch_size, width = batch.input_ids.shape
    if gaps.shape != (batch_size, width + 1):
        raise ValueError(f"gaps must be (B, L'+1) = {(batch_size, width + 1)}, got {tuple(gaps.shape)}")
    device = gaps.device
    if logits.dim() == 3:
        logits = logits[batch.is_mask.to(logits.device)]  # (N, V)
    forbidden = torch.tensor(sorted(set(forbidden_token_ids)), dtype=torch.long)
    log_probs = _masked_log_probs(logits, batch.targets[batch.is_mask], forbidden)  # (N,)

    insert_model, insert_reference = _rate_pair(
        insertion, reference_schedule(insertion), batch.t, min_rate_denominator
    )
    unmask_model, unmask_reference = _rate_pair(
        unmasking, reference_schedule(unmasking), batch.t, min_rate_denominator
    )
    insert_model, insert_reference = insert_model.to(device), insert_reference.to(device)
    unmask_model, unmask_reference = unmask_model.to(device), unmask_reference.to(device)

    # Unmasking: per masked position kq CE + k - kq + kq ln(kq / k).
    masked_rows = torch.nonzero(batch.is_mask, as_tuple=True)[0].to(device)  # (N,)
    per_mask_constant = (
        unmask_model
        - unmask_reference
        + unmask_reference * torch.log(unmask_reference / unmask_model)
    )  # (B,)
    unmask_terms = (
        unmask_reference[masked_rows] * (-log_probs.to(device)) + per_mask_constant[masked_rows]
    )  # (N,)
    unmask_sum = torch.zeros(batch_size, dtype=torch.float64, device=device)
    unmask_sum.index_add_(0, masked_rows, unmask_terms)

    # Insertion: per answer slot k ghat - kq g ln(k ghat), plus n (E[ln kq(T1)] - 1) per row.
    slots = torch.arange(width + 1, device=device)
    lengths = batch.lengths.to(device)
    answer_slot = (slots[None, :] >= prompt_lengths.to(device)[:, None]) & (
        slots[None, :] <= lengths[:, None]
    )  # (B, L'+1)
    insert_rate = insert_model[:, None] * gaps.double().clamp_min(0.0)  # (B, L'+1) k ghat
    counts = batch.gap_counts.to(device).double()  # (B, L'+1)
    log_rate = torch.log(insert_rate.clamp_min(_TINY))
    count_log = torch.where(counts > 0, counts * log_rate, torch.zeros_like(counts))
    slot_terms = insert_rate - insert_reference[:, None] * count_log  # (B, L'+1)
    insert_sum = torch.where(answer_slot, slot_terms, torch.zeros_like(slot_terms)).sum(dim=1)
    noised_tokens = batch.num_noised_tokens.to(device).double()  # (B,) n = len(continuation)
    insert_constant = noised_tokens * (expected_log_rate(reference_schedule(insertion)) - 1.0)
    return unmask_sum + insert_sum + insert_constant


# ---------------------------------------------------------------------------------------------
# Shared plumbing: model calls, seeds, row batches
# ---------------------------------------------------------------------------------------------


def _request_generator(seed: int, context: TokenIds, salt: str) -> torch.Generator:
    """A CPU generator seeded by (seed, salt, the context's ids): independent of batching."""
    digest = hashlib.sha256(f"{seed}|{salt}|".encode() + bytes(str(list(context)), "ascii"))
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest.digest()[:8], "little") % 2**63)
    return generator


def _check_requests(requests: Sequence[Request], mask_token_id: int, max_length: int | None) -> None:
    for index, (context, continuation) in enumerate(requests):
        if mask_token_id in context or mask_token_id in continuation:
            raise ValueError(
                f"request {index} contains the mask id {mask_token_id}: contexts and "
                "continuations must be clean token ids"
            )
        total = len(context) + len(continuation)
        if max_length is not None and total > max_length:
            raise ValueError(
                f"request {index} has {total} tokens, more than the model's max_length "
                f"{max_length}: shorten it (loglikelihood_rolling splits long texts into windows)"
            )


def _summaries(
    samples: list[Tensor], requests: Sequence[Request], mc_num: int
) -> list[LikelihoodEstimate]:
    """Mean and standard error of each request's (mc_num,) NLL samples, as log-likelihoods."""
    estimates = []
    for values, (_, continuation) in zip(samples, requests):
        mean = float(values.mean())
        stderr = float(values.std()) / math.sqrt(mc_num) if mc_num > 1 else math.inf
        estimates.append(LikelihoodEstimate(-mean, stderr, len(continuation), mc_num))
    return estimates


def _check_mc(mc_num: int, batch_size: int) -> None:
    if isinstance(mc_num, bool) or not isinstance(mc_num, int) or mc_num < 1:
        raise ValueError(f"mc_num must be a positive int, got {mc_num!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


# A pool of Monte Carlo rows: per request a dict of tensors whose first dimension is the sample;
# "lengths" (mc,) holds each row's length, 2-D tensors are right-padded rows ((mc, W_r), or
# (mc, W_r + 1) for per-slot tensors), 1-D tensors are per-row values.
_Pool = list[dict[str, Tensor]]


def _pool_batches(pool: _Pool, batch_size: int) -> list[Tensor]:
    """(B, 2) (request, row) index pairs per batch, all rows sorted longest first (less padding;
    every row's value is independent of its batch)."""
    pairs = torch.cat(
        [
            torch.stack([torch.full_like(item["lengths"], index), torch.arange(len(item["lengths"]))], 1)
            for index, item in enumerate(pool)
        ]
    )  # (R, 2)
    lengths = torch.cat([item["lengths"] for item in pool])  # (R,)
    order = torch.sort(lengths, descending=True, stable=True).indices
    return list(pairs[order].split(batch_size))


def _gather(pool: _Pool, members: Tensor, fills: dict[str, int | bool]) -> dict[str, Tensor]:
    """The rows ``members`` (B, 2) of the pool as one batch, 2-D tensors padded to the longest
    row (``fills[name]`` beyond each row's length). One indexing per request in the batch."""
    groups = _groups(members)
    width = max(int(pool[request]["lengths"][rows].max()) for request, _, rows in groups)
    out: dict[str, Tensor] = {}
    for request, positions, rows in groups:
        item = pool[request]
        for name, tensor in item.items():
            values = tensor[rows]
            if values.dim() == 2:  # token rows (W_r) or slot rows (W_r + 1)
                target = width + tensor.shape[1] - item["input_ids"].shape[1]
                values = values[:, :target]
                if values.shape[1] < target:
                    pad = values.new_full((values.shape[0], target - values.shape[1]), fills[name])
                    values = torch.cat([values, pad], dim=1)
            if name not in out:
                out[name] = values.new_zeros((members.shape[0], *values.shape[1:]))
            out[name][positions] = values
    return out


def _groups(members: Tensor) -> list[tuple[int, Tensor, Tensor]]:
    """Split (B, 2) (request, row) pairs by request: [(request, positions in the batch, rows)]."""
    groups = []
    for request in members[:, 0].unique().tolist():
        positions = torch.nonzero(members[:, 0] == request).flatten()  # (b,)
        groups.append((request, positions, members[positions, 1]))
    return groups


def _scatter(values: list[Tensor], members: Tensor, batch_values: Tensor) -> None:
    """values[request][row] = batch_values[i] for each member i = (request, row)."""
    for request, positions, rows in _groups(members):
        values[request][rows] = batch_values[positions]


# The log-uniform third of the time draws covers 1 - t down to this value.
_LOG_UNIFORM_FLOOR = 1e-12


def importance_times(
    mc_num: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Times for the FlexMDM bound: ``(t (mc_num,), weight (mc_num,))``, float64.

    A deterministic mixture of three densities on [0, 1), a third of the draws each (the first
    takes the remainder), each third stratified (one draw per equal stratum of its quantiles):
    uniform; ``1 / (2 sqrt(1 - t))`` (t = 1 - (1 - u)^2); ``1 - t`` log-uniform on [1e-12, 1].
    ``weight = 1 / r(t)`` with ``r`` the mixture's density, so ``mean(weight * I(t))`` is
    unbiased for ``int_0^1 I(t) dt``. The rate factors of every built-in schedule grow like
    c / (1 - t) as t -> 1, where a token is still absent or masked with probability ~ 1 - t:
    with uniform times alone the bound's samples have an infinite variance. What happens there
    (the last insertions and unmaskings, and, for a continuation much rarer than its longer
    neighbours, the model's decision to stop at 1 - t ~ p(y) / p(longer)) lives on a scale of
    1 - t that the log-uniform third reaches, bounding each weighted sample there by
    ``3 ln(1e12) (1 - t) I(t)``. The mix was the best of six on the toy problem of
    tests/test_likelihood.py (docs/likelihood.md, "Variance"). float64: in float32, 1 - t
    underflows below 6e-8.
    """
    counts = [mc_num - 2 * (mc_num // 3), mc_num // 3, mc_num // 3]
    draws = torch.rand(mc_num, generator=generator, dtype=torch.float64)
    quantiles = [
        (torch.arange(count, dtype=torch.float64) + part) / max(count, 1)
        for count, part in zip(counts, draws.split(counts))
    ]
    log_floor = math.log(_LOG_UNIFORM_FLOOR)  # < 0
    remaining = torch.cat(
        [1.0 - quantiles[0], (1.0 - quantiles[1]).square(), torch.exp(quantiles[2] * log_floor)]
    ).clamp_min(1e-300)  # (mc,) 1 - t
    shares = [count / mc_num for count in counts]
    density = (
        shares[0]
        + shares[1] / (2.0 * remaining.sqrt())
        + shares[2] / (remaining * -log_floor) * (remaining >= _LOG_UNIFORM_FLOOR)
    )
    return 1.0 - remaining, 1.0 / density


def _noise_request(
    request: Request,
    *,
    mc_num: int,
    insertion: Schedule,
    unmasking: Schedule,
    mask_token_id: int,
    pad_token_id: int,
    seed: int,
) -> dict[str, Tensor]:
    """``mc_num`` draws of x_t for one request (reference process, importance-sampled times)."""
    context, continuation = request
    generator = _request_generator(seed, context, "flexmdm")
    times, weights = importance_times(mc_num, generator)  # (mc,), (mc,) float64
    sequence = torch.tensor([*context, *continuation], dtype=torch.long)
    x1 = sequence[None, :].expand(mc_num, -1).contiguous()  # (mc, n)
    protected = torch.zeros_like(x1, dtype=torch.bool)
    protected[:, : len(context)] = True
    noised = forward_process(
        x1, torch.full((mc_num,), len(sequence), dtype=torch.long), protected, times,
        insertion=reference_schedule(insertion), unmasking=reference_schedule(unmasking),
        mask_token_id=mask_token_id, pad_token_id=pad_token_id, generator=generator,
    )  # fmt: skip
    return {
        "input_ids": noised.input_ids,
        "is_mask": noised.is_mask,
        "targets": noised.targets,
        "gap_counts": noised.gap_counts,
        "protected": noised.protected,
        "lengths": noised.lengths,
        "t": times,
        "weight": weights,
        "prompt_length": torch.full((mc_num,), len(context), dtype=torch.long),
    }


@torch.inference_mode()
def flexmdm_log_likelihood(
    model: Callable[..., Any],
    requests: Sequence[Request],
    *,
    insertion: Schedule | str | dict,
    unmasking: Schedule | str | dict,
    mask_token_id: int,
    pad_token_id: int,
    mc_num: int = 32,
    batch_size: int = 32,
    seed: int = 0,
    max_length: int | None = None,
    forbidden_token_ids: Sequence[int] | None = None,
    min_rate_denominator: float = RATE_FACTOR_MIN_DENOMINATOR,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
) -> list[LikelihoodEstimate]:
    """Estimate log p(continuation | context) of a FlexMDM for each request (module docstring).

    Args:
        model: a FlexMDM or any callable with its forward protocol (logits and gaps).
        requests: ``(context ids, continuation ids)`` pairs; the context is protected.
        insertion, unmasking: the model's schedules (``model.insertion_schedule``, ...).
        mask_token_id, pad_token_id: the checkpoint's ids (pad fills the batch beyond lengths).
        mc_num: Monte Carlo samples (t, x_t) per request; the error falls as 1 / sqrt(mc_num).
        batch_size: rows (samples of any request) per forward pass; results do not depend on it.
        seed: base seed of the per-request random streams.
        max_length: refuse longer requests (default: none; the model raises on its own limit).
        forbidden_token_ids: tokens outside the model's distribution (default: the mask id).
        min_rate_denominator: clamp of the model's rate factors (default: training's, 1e-4; see
            docs/likelihood.md on what the clamp does to rare sequences).
        device: default the model's device.
        progress: called with the number of rows after every forward pass.

    Returns:
        One :class:`LikelihoodEstimate` per request, in order.
    """
    _check_mc(mc_num, batch_size)
    insertion, unmasking = get_schedule(insertion), get_schedule(unmasking)
    _check_requests(requests, mask_token_id, max_length)
    if not requests:
        return []
    forbidden = [mask_token_id] if forbidden_token_ids is None else list(forbidden_token_ids)
    run_device = model_device(model, device)
    pool = [
        _noise_request(
            request, mc_num=mc_num, insertion=insertion, unmasking=unmasking,
            mask_token_id=mask_token_id, pad_token_id=pad_token_id, seed=seed,
        )
        for request in requests
    ]  # fmt: skip
    fills = {"input_ids": pad_token_id, "targets": pad_token_id, "is_mask": False,
             "protected": False, "gap_counts": 0}  # fmt: skip
    values = [torch.zeros(mc_num, dtype=torch.float64) for _ in requests]
    for members in _pool_batches(pool, batch_size):
        rows = _gather(pool, members, fills)
        batch = NoisedBatch(
            input_ids=rows["input_ids"], lengths=rows["lengths"], is_mask=rows["is_mask"],
            targets=rows["targets"], gap_counts=rows["gap_counts"], protected=rows["protected"],
            t=rows["t"],
        ).to(run_device)  # fmt: skip
        logits, gaps = call_model(model, batch.input_ids, batch.lengths, batch.t, batch.is_mask)
        if gaps is None:
            raise ValueError(
                "the model returned no gaps: it is not a FlexMDM (kind 'mdm'?); use "
                "mdm_log_likelihood"
            )
        integrand = flexmdm_bound_integrand(
            logits, gaps, batch, insertion=insertion, unmasking=unmasking,
            prompt_lengths=rows["prompt_length"], forbidden_token_ids=forbidden,
            min_rate_denominator=min_rate_denominator,
        )  # fmt: skip
        _scatter(values, members, integrand.cpu() * rows["weight"])
        if progress is not None:
            progress(int(members.shape[0]))
    return _summaries(values, requests, mc_num)


# ---------------------------------------------------------------------------------------------
# MDM (LLaDA) Monte Carlo driver
# ---------------------------------------------------------------------------------------------


def mdm_mask_counts(length: int, mc_num: int, generator: torch.Generator | None = None) -> Tensor:
    """LLaDA's stratified numbers of masked tokens: (mc_num,) long in 1..length.

    One uniform start ``k`` in 1..length, then ``mc_num`` evenly spaced values ``k + i * length /
    mc_num`` rounded and wrapped into 1..length, so every count appears ~equally often.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    start = int(torch.randint(1, length + 1, (), generator=generator))
    spaced = torch.linspace(
        float(start), start + (mc_num - 1) * (length / mc_num), steps=mc_num, dtype=torch.float64
    )
    return ((torch.round(spaced).long() - 1) % length) + 1


def _mask_request(
    request: Request, *, mc_num: int, mask_token_id: int, seed: int
) -> dict[str, Tensor]:
    """``mc_num`` copies of one request with exactly k_i continuation tokens masked."""
    context, continuation = request
    length = len(continuation)
    generator = _request_generator(seed, context, "mdm")
    counts = mdm_mask_counts(length, mc_num, generator)  # (mc,)
    ranks = torch.rand(mc_num, length, generator=generator).argsort(dim=1).argsort(dim=1)
    sequence = torch.tensor([*context, *continuation], dtype=torch.long)
    is_mask = torch.zeros(mc_num, len(sequence), dtype=torch.bool)
    is_mask[:, len(context) :] = ranks < counts[:, None]  # exactly counts[i] per row
    return {
        "input_ids": torch.where(is_mask, mask_token_id, sequence),
        "is_mask": is_mask,
        "targets": sequence[None, :].expand(mc_num, -1),
        "lengths": torch.full((mc_num,), len(sequence), dtype=torch.long),
        "weight": length / counts.double(),  # 1 / mask ratio
    }


@torch.inference_mode()
def mdm_log_likelihood(
    model: Callable[..., Any],
    requests: Sequence[Request],
    *,
    mask_token_id: int,
    pad_token_id: int,
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    max_length: int | None = None,
    forbidden_token_ids: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
) -> list[LikelihoodEstimate]:
    """LLaDA's Monte Carlo estimate of log p(continuation | context) for an MDM, per request.

    Same arguments as :func:`flexmdm_log_likelihood` (no schedules: an MDM has none; ``pad``
    only fills the batch). An empty continuation has log-likelihood 0 (nothing to predict).
    The counts of masked tokens are stratified over all ``mc_num`` samples of a request (LLaDA
    stratifies within each batch of ``batch_size``; here the result does not depend on it).
    """
    _check_mc(mc_num, batch_size)
    _check_requests(requests, mask_token_id, max_length)
    forbidden = torch.tensor(
        [mask_token_id] if forbidden_token_ids is None else sorted(set(forbidden_token_ids)),
        dtype=torch.long,
    )
    run_device = model_device(model, device)
    scored = [index for index, (_, continuation) in enumerate(requests) if continuation]
    values = [torch.zeros(mc_num, dtype=torch.float64) for _ in requests]
    if not scored:
        return _summaries(values, requests, mc_num)
    pool = [
        _mask_request(requests[index], mc_num=mc_num, mask_token_id=mask_token_id, seed=seed)
        for index in scored
    ]
    fills = {"input_ids": pad_token_id, "targets": pad_token_id, "is_mask": False}
    pooled = [torch.zeros(mc_num, dtype=torch.float64) for _ in scored]
    for members in _pool_batches(pool, batch_size):
        rows = _gather(pool, members, fills)
        is_mask = rows["is_mask"].to(run_device)
        logits, _ = call_model(
            model, rows["input_ids"].to(run_device), rows["lengths"].to(run_device), None, is_mask
        )
        log_probs = _masked_log_probs(logits, rows["targets"].to(run_device)[is_mask], forbidden)
        sums = torch.zeros(members.shape[0], dtype=torch.float64, device=log_probs.device)
        sums.index_add_(0, torch.nonzero(is_mask, as_tuple=True)[0].to(log_probs.device), -log_probs)
        _scatter(pooled, members, sums.cpu() * rows["weight"])
        if progress is not None:
            progress(int(members.shape[0]))
    for index, sample in zip(scored, pooled):
        values[index] = sample
    return _summaries(values, requests, mc_num)
