"""Dream's MDM baseline sampler (its ``diffusion_generate``) on the retrofit model protocol.

Each prompt gets ``gen_length`` masks after it (rows left-aligned, right-padded, explicit lengths;
the model reads each token's prediction with the backbone's logit alignment, see
``retrofit.adapter.model``). Time runs from 1 down to ``eps`` over ``steps`` steps of
``timesteps = linspace(1, eps, steps + 1)`` (float32); at step i, with ``t = timesteps[i]``,
``s = timesteps[i + 1]`` and logits at the masked positions only:

- ``origin``: every mask is revealed with probability ``1 - s / t`` (1 at the last step); a
  revealed mask takes a token sampled from its (filtered) distribution.
- ``maskgit_plus`` / ``topk_margin`` / ``entropy``: every mask proposes a token (argmax, or a
  sample when ``temperature > 0``) with a confidence: the proposal's probability, top1 - top2
  probability, or minus the entropy ``sum p log(p + 1e-10)``. ``int(n_mask * (1 - s / t))``
  proposals are accepted (all at the last step): the most confident ones, or with ``alg_temp > 0``
  a draw without replacement from ``softmax(confidence / alg_temp)`` over the row.

Token filtering, as Dream's ``sample_tokens``: logits / ``temperature`` (when > 0), then top-p
(keep the smallest prefix of the sorted distribution whose mass exceeds ``top_p``) and top-k, the
removed logits set to the dtype's lowest value. Samples come from the normalised probabilities;
when those fail ``torch.distributions``' simplex check (e.g. NaN) Dream falls back to the most
likely token, and so does this sampler. Nothing is forbidden by default (Dream may emit its mask
token, which then stays masked); ``forbid_token_ids`` sets logits to -inf first.

**Randomness.** By default every row draws from its own generator seeded by ``(seed, row id)``
(as :func:`retrofit.sampling.mdm_generate` does), so batching never changes a row's output. Pass
``generator=`` to draw instead from one stream in exactly the order of Dream's batched code: with
``generator = torch.Generator().manual_seed(k)`` the output equals Dream's ``diffusion_generate``
after ``torch.manual_seed(k)`` token for token (``tests/test_dream_parity.py``; the official
code left-pads shorter prompts; its draws follow the same order except ``alg_temp > 0``, whose
draw over each row's positions then sees the padding, so equal-length prompts are required there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retrofit.sampling.mdm import _mdm_trace
from retrofit.sampling.plumbing import (
    TokenRows,
    _accepts_logits_positions,
    _as_rows,
    _batches,
    _call_model,
    _check_canvas_prompts,
    _check_common,
    _config_value,
    _model_device,
    _progress_bar,
    _row_generator,
    _stream_ids,
)
from retrofit.sampling.results import MDMSamplingResult, TraceStep

__all__ = ["DREAM_ALGORITHMS", "dream_generate", "filter_logits"]

DREAM_ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
# Dream's neg_entropy adds this inside the log.
_ENTROPY_EPSILON = 1e-10
# torch.distributions' simplex check: non-negative and summing to 1 within this tolerance.
_SIMPLEX_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------
# Token choice
# ---------------------------------------------------------------------------------------------


def filter_logits(
    logits: Tensor, temperature: float, top_p: float | None, top_k: int | None
) -> Tensor:
    """Dream's logit filtering: ``(N, V) -> (N, V)``, a new tensor.

    Divides by ``temperature`` when it is > 0; top-p (when ``top_p < 1``) removes every token after
    the smallest prefix of the descending distribution whose cumulative probability exceeds
    ``top_p`` (the most likely token always stays); top-k keeps the ``top_k`` largest logits (and
    any tied with the k-th). Removed logits become ``finfo(dtype).min``.
    """
    if temperature > 0:
        logits = logits / temperature
    lowest = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)  # (N, V)
        cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
        past_nucleus = cumulative > top_p  # (N, V) in sorted order
        remove_sorted = torch.zeros_like(past_nucleus)
        remove_sorted[..., 1:] = past_nucleus[..., :-1]  # keep the token that crosses top_p
        remove = torch.zeros_like(past_nucleus).scatter_(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, lowest)
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        kth_largest = torch.topk(logits, k)[0][..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth_largest, lowest)
    return logits


@dataclass
class _Draws:
    """The random draws of one batch: one generator per row, or one shared stream.

    ``rows``: per-row generators (row-major concatenation of per-row draws, batch-invariant);
    ``shared``: a single generator consumed exactly as Dream's batched sampler consumes the global
    one (one draw over all rows at once).
    """

    rows: list[torch.Generator] | None
    shared: torch.Generator | None
    device: torch.device

    def uniform(self, counts: list[int]) -> Tensor:
        """``(sum(counts),)`` float32 uniforms, ``counts[r]`` of them for row r, row-major."""
        if self.shared is not None:
            return torch.rand(sum(counts), generator=self.shared, device=self.device)
        assert self.rows is not None
        parts = [
            torch.rand(count, generator=generator, device=self.device)
            for count, generator in zip(counts, self.rows)
        ]
        return torch.cat(parts) if parts else torch.empty(0, device=self.device)

    def categorical(self, probs: Tensor, counts: list[int]) -> Tensor:
        """One sample per row of ``probs (N, V)`` (rows grouped ``counts`` per batch row).

        Samples from ``probs / probs.sum(-1)`` as ``torch.distributions.Categorical`` does; where
        that fails its simplex check, Dream's sampler takes the argmax instead (the whole batch
        with a shared stream, as its ``try``/``except`` does; only the failing row otherwise).
        """
        normalised = probs / probs.sum(-1, keepdim=True)  # (N, V)
        valid = torch.all(normalised >= 0, dim=-1) & (
            (normalised.sum(-1) - 1).abs() < _SIMPLEX_TOLERANCE
        )  # (N,)
        if self.shared is not None:
            if not bool(valid.all()):
                return probs.argmax(dim=-1)
            return torch.multinomial(normalised, 1, True, generator=self.shared).squeeze(-1)
        assert self.rows is not None
        parts, start = [], 0
        for count, generator in zip(counts, self.rows):
            block = slice(start, start + count)
            start += count
            if count == 0:
                continue
            if bool(valid[block].all()):
                parts.append(
                    torch.multinomial(normalised[block], 1, True, generator=generator).squeeze(-1)
                )
            else:
                parts.append(probs[block].argmax(dim=-1))
        return torch.cat(parts) if parts else probs.new_empty(0, dtype=torch.long)

    def without_replacement(self, weights: Tensor, counts: list[int], widths: list[int]) -> Tensor:
        """``counts[r]`` indices of row r drawn without replacement from ``weights (B, W)``.

        Shared stream: one ``multinomial`` over the whole ``(B, W)`` matrix (all counts equal).
        Per row: row r draws from its first ``widths[r]`` columns (its unpadded layout).
        Returns ``(B, max(counts))`` long, each row's draws first (the rest repeat its last draw).
        """
        if self.shared is not None:
            return torch.multinomial(weights, counts[0], generator=self.shared)
        assert self.rows is not None
        size = max(counts)
        result = torch.zeros((weights.shape[0], size), dtype=torch.long, device=weights.device)
        for row, (count, width, generator) in enumerate(zip(counts, widths, self.rows)):
            if count == 0:
                continue
            drawn = torch.multinomial(weights[row : row + 1, :width], count, generator=generator)
            result[row, :count] = drawn[0]
            result[row, count:] = drawn[0, -1]
        return result


def _propose(
    logits: Tensor, alg: str, options: _DreamOptions, draws: _Draws, counts: list[int]
) -> tuple[Tensor, Tensor]:
    """Dream's ``sample_tokens`` for the confidence algorithms: ``logits (N, V)`` at the masks
    -> ``(confidence (N,), proposal (N,) long)``."""
    filtered = filter_logits(logits, options.temperature, options.top_p, options.top_k)
    probs = torch.softmax(filtered, dim=-1)  # (N, V)
    if options.temperature > 0:
        proposal = draws.categorical(probs, counts)
        confidence = probs.gather(-1, proposal[:, None]).squeeze(-1)
    else:
        confidence, proposal = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = torch.topk(probs, min(2, probs.shape[-1]), dim=-1).values  # (N, 2)
        confidence = top2[:, 0] - top2[:, -1]
    elif alg == "entropy":
        confidence = torch.sum(probs * torch.log(probs + _ENTROPY_EPSILON), dim=-1)
    return confidence, proposal


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------


@dataclass
class _DreamOptions:
    """Validated settings shared by every batch of one call."""

    gen_length: int
    steps: int
    eps: float
    alg: str
    alg_temp: float | None
    temperature: float
    top_p: float | None
    top_k: int | None
    mask_id: int
    pad_id: int
    forbidden: Tensor | None
    seed: int
    generator: torch.Generator | None
    device: torch.device
    pass_positions: bool
    progress: bool
    trace: Callable[[TraceStep], None] | None


@torch.inference_mode()
def dream_generate(
    model: Callable[..., Any],
    prompts: TokenRows,
    *,
    gen_length: int = 256,
    steps: int = 256,
    alg: str = "origin",
    alg_temp: float | None = None,
    eps: float = 1e-3,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    forbid_token_ids: Iterable[int] | None = None,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int = 0,
    row_ids: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    sort_by_length: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    trace: Callable[[TraceStep], None] | None = None,
) -> MDMSamplingResult:
    """Dream's ``diffusion_generate`` on batched prompts; see the module docstring for the method.

    Args:
        model: a retrofit model (``kind: mdm``, or any callable with the protocol of
            :mod:`retrofit.sampling`) returning aligned logits at the requested positions.
        prompts: N token id sequences (lists or 1-D tensors).
        gen_length: masks appended to every prompt (Dream's ``max_new_tokens``).
        steps, eps: diffusion steps and the final time of ``linspace(1, eps, steps + 1)``.
        alg: ``origin`` | ``maskgit_plus`` | ``topk_margin`` | ``entropy``.
        alg_temp: > 0 draws the accepted proposals from ``softmax(confidence / alg_temp)``.
        temperature, top_p, top_k: token choice (``temperature == 0``: argmax).
        forbid_token_ids: tokens never emitted (default: none, as Dream).
        mask_token_id, pad_token_id: default ``model.config``'s; ``eos_token_id`` (default the
            config's) only measures answer lengths.
        seed, row_ids: per-row random streams, as :func:`retrofit.sampling.mdm_generate`.
        generator: one shared stream in Dream's order instead (see the module docstring).
        batch_size, sort_by_length: batching (outputs do not change without ``generator``).
        device, progress, trace: as :func:`retrofit.sampling.mdm_generate`.

    Returns:
        :class:`retrofit.sampling.MDMSamplingResult` in the order of ``prompts``.
    """
    prompt_rows = _as_rows(prompts, "prompts")
    _check_common(steps, batch_size, len(prompt_rows))
    stream_ids = _stream_ids(row_ids, len(prompt_rows))
    _check_settings(gen_length, alg, eps, temperature, top_p, top_k)
    mask_id = _config_value(model, "mask_token_id", mask_token_id)
    pad_id = _config_value(model, "pad_token_id", pad_token_id)
    _check_canvas_prompts(model, prompt_rows, mask_id, pad_id, gen_length)
    run_device = _model_device(model, device)
    forbidden = sorted({int(i) for i in forbid_token_ids}) if forbid_token_ids else []
    options = _DreamOptions(
        gen_length=gen_length,
        steps=steps,
        eps=float(eps),
        alg=alg,
        alg_temp=alg_temp,
        temperature=float(temperature),
        top_p=top_p,
        top_k=top_k,
        mask_id=int(mask_id),
        pad_id=int(pad_id),
        forbidden=torch.tensor(forbidden, dtype=torch.long, device=run_device)
        if forbidden
        else None,
        seed=int(seed),
        generator=generator,
        device=run_device,
        pass_positions=_accepts_logits_positions(model),
        progress=progress,
        trace=trace,
    )
    eos_id = _config_value(model, "eos_token_id", eos_token_id)
    return _run_batches(model, prompt_rows, stream_ids, batch_size, sort_by_length, eos_id, options)


def _run_batches(
    model: Callable[..., Any],
    prompt_rows: list[list[int]],
    stream_ids: list[int],
    batch_size: int | None,
    sort_by_length: bool,
    eos_id: int | None,
    options: _DreamOptions,
) -> MDMSamplingResult:
    """Sample every batch and gather the rows in the order of the prompts."""
    n_prompts = len(prompt_rows)
    sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    full_sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    forward_passes = 0
    for batch_index, members in enumerate(
        _batches([len(p) for p in prompt_rows], batch_size, sort_by_length)
    ):
        rows = [prompt_rows[i] for i in members]
        full_rows = _dream_batch(
            model, rows, members, [stream_ids[i] for i in members], batch_index, options
        )
        forward_passes += options.steps
        for position, row_id in enumerate(members):
            end = len(rows[position]) + options.gen_length
            sequences[row_id] = full_rows[position][len(rows[position]) : end]
            full_sequences[row_id] = full_rows[position][:end]
    answer_lengths = torch.tensor(
        [seq.index(eos_id) if eos_id in seq else len(seq) for seq in sequences], dtype=torch.long
    )
    return MDMSamplingResult(
        sequences=sequences,
        full_sequences=full_sequences,
        lengths=answer_lengths,
        steps=options.steps,
        num_forward_passes=forward_passes,
    )


def _check_settings(
    gen_length: int,
    alg: str,
    eps: float,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
) -> None:
    """Raise ``ValueError`` for sampler settings outside their domain."""
    if not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length must be an integer >= 1, got {gen_length!r}")
    if alg not in DREAM_ALGORITHMS:
        raise ValueError(f"unknown alg {alg!r}; choose one of {DREAM_ALGORITHMS}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")


def _dream_batch(
    model: Callable[..., Any],
    rows: list[list[int]],
    members: list[int],
    stream_ids: list[int],
    batch_index: int,
    options: _DreamOptions,
) -> list[list[int]]:
    """Sample one batch; returns each row's prompt + ``gen_length`` tokens (+ right padding)."""
    device, mask_id = options.device, options.mask_id
    prompt_len = torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)
    lengths = prompt_len + options.gen_length  # (B,)
    width = int(lengths.max())
    input_ids = torch.full((len(rows), width), options.pad_id, dtype=torch.long)
    for row, prompt in enumerate(rows):
        input_ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        input_ids[row, len(prompt) : len(prompt) + options.gen_length] = mask_id
    input_ids = input_ids.to(device)  # (B, L)
    draws = _Draws(
        rows=None
        if options.generator is not None
        else [_row_generator(options.seed, stream_id, device) for stream_id in stream_ids],
        shared=options.generator,
        device=device,
    )
    timesteps = torch.linspace(1, options.eps, options.steps + 1, device=device)  # float32
    trace_state = (
        options.trace,
        batch_index,
        members,
        prompt_len,
        lengths,
        mask_id,
        options.gen_length,
    )
    _mdm_trace(trace_state, 0, options.steps, input_ids)
    progress_bar = _progress_bar(options.steps, options.progress, "dream")
    for step in range(options.steps):
        is_mask = input_ids == mask_id  # (B, L); padding is never a mask
        logits, _ = _call_model(model, input_ids, lengths, None, is_mask, options.pass_positions)
        if options.forbidden is not None:
            logits = logits.index_fill(-1, options.forbidden, float("-inf"))  # (N, V)
        last = step == options.steps - 1
        t, s = timesteps[step], timesteps[step + 1]
        if options.alg == "origin":
            input_ids = _origin_step(input_ids, is_mask, logits, t, s, last, draws, options)
        else:
            widths = lengths.tolist()
            input_ids = _confidence_step(
                input_ids, is_mask, logits, t, s, last, draws, widths, options
            )
        progress_bar.update(1)
        _mdm_trace(trace_state, step + 1, options.steps, input_ids)
    progress_bar.close()
    return input_ids.tolist()


def _origin_step(
    input_ids: Tensor,
    is_mask: Tensor,
    logits: Tensor,
    t: Tensor,
    s: Tensor,
    last: bool,
    draws: _Draws,
    options: _DreamOptions,
) -> Tensor:
    """``origin``: reveal each mask w.p. ``1 - s / t`` (all at the last step) with a sampled
    token. input_ids, is_mask: (B, L); logits: (N, V) at the masks, row-major."""
    counts = is_mask.sum(dim=1).tolist()
    reveal = draws.uniform(counts) < (1 if last else 1 - s / t)  # (N,)
    proposals = torch.full_like(input_ids[is_mask], options.mask_id)  # (N,)
    if bool(reveal.any()):
        revealed_rows = torch.repeat_interleave(
            torch.arange(len(counts), device=reveal.device),
            torch.tensor(counts, device=reveal.device),
        )[reveal]
        revealed_counts = torch.bincount(revealed_rows, minlength=len(counts)).tolist()
        filtered = filter_logits(logits[reveal], options.temperature, options.top_p, options.top_k)
        probs = torch.softmax(filtered, dim=-1)
        if options.temperature > 0:
            proposals[reveal] = draws.categorical(probs, revealed_counts)
        else:
            proposals[reveal] = probs.max(dim=-1).indices
    return input_ids.masked_scatter(is_mask, proposals)


def _confidence_step(
    input_ids: Tensor,
    is_mask: Tensor,
    logits: Tensor,
    t: Tensor,
    s: Tensor,
    last: bool,
    draws: _Draws,
    widths: list[int],
    options: _DreamOptions,
) -> Tensor:
    """``maskgit_plus`` / ``topk_margin`` / ``entropy``: accept the ``int(n_mask * (1 - s / t))``
    most confident proposals of each row (all at the last step), or a draw from
    ``softmax(confidence / alg_temp)``. input_ids, is_mask: (B, L); logits: (N, V)."""
    counts = is_mask.sum(dim=1).tolist()
    confidence, proposals = _propose(logits, options.alg, options, draws, counts)
    if options.generator is not None:
        # Dream's batch rule: one count for every row, from the mean number of masks per row.
        mean_masks = is_mask.sum() / is_mask.shape[0]
        accepted = [int(mean_masks if last else mean_masks * (1 - s / t))] * len(counts)
    else:
        row_masks = is_mask.sum(dim=1) / 1  # (B,) float32, as Dream computes its count
        factor = 1 if last else 1 - s / t
        accepted = [int(value) for value in (row_masks * factor).tolist()] if not last else counts
    accepted = [min(a, c) for a, c in zip(accepted, counts)]  # never re-mask a clean token
    if max(accepted, default=0) == 0:
        return input_ids
    scores = torch.full(input_ids.shape, float("-inf"), dtype=logits.dtype, device=input_ids.device)
    scores[is_mask] = confidence  # (B, L)
    if options.alg_temp is None or options.alg_temp == 0:
        chosen = torch.topk(scores, max(accepted), dim=-1).indices  # (B, k)
    else:
        weights = torch.softmax(scores / options.alg_temp, dim=-1)  # (B, L)
        chosen = draws.without_replacement(weights, accepted, widths)  # (B, k)
    take = (
        torch.arange(chosen.shape[1], device=chosen.device)[None, :]
        < torch.tensor(accepted, device=chosen.device)[:, None]
    )  # (B, k): each row's first accepted[r] choices
    hits = torch.zeros(input_ids.shape, dtype=torch.long, device=input_ids.device)
    selected = (hits.scatter_add_(1, chosen, take.long()) > 0) & is_mask  # (B, L)
    candidates = torch.full_like(input_ids, options.mask_id).masked_scatter(is_mask, proposals)
    return torch.where(selected, candidates, input_ids)
