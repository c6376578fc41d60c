"""Samplers: the FlexMDM sampler (insert + unmask, infilling) and the MDM baseline (LLaDA generate).

FlexMDM (spec section 6). The state is the prompt plus a growing answer; time runs t = 0 -> 1 in
``steps`` Euler steps of ``dt = 1 / steps``. Each step runs ONE forward pass on the live buffer (the
batch's longest unfinished row; the model appends the trailing slot itself) and then:

- **unmask**: ``k ~ Poisson(n_mask * p_beta(t))`` per row, clamped to the number of
  eligible masks (a clean token is never overwritten); the k most confident masks are filled.
  Confidence (``prob_diff`` = top1 - top2 probability, ``top_prob``, ``entropy`` (lower entropy =
  more confident), ``position`` (leftmost first)) is computed from the logits at the candidate
  masked positions only: ``logits_positions`` makes the LM head run only there. With a sliding
  window (``window_alpha``) the candidates are the first ``min(ceil(window_alpha * k), max_window,
  n_mask)`` masks left to right. Tokens are the argmax (``temperature == 0``) or a temperature /
  top-p sample; ``forbid_token_ids`` (default: mask and pad, hence EOS where EOS == pad) are never
  emitted.
- **insert**: ``e_j ~ Poisson(ghat_j * p_alpha(t))`` new masks in slot j, only in the
  answer's slots (slot j is the gap before position j): ``prompt_len <= j <= length`` when
  generating, ``prefix_len <= j <= length - suffix_len`` when infilling. New positions come from a
  cumulative sum and one scatter (no per-token Python loop).
- the **last step** fills every remaining mask by argmax and inserts nothing.
- **per-step probabilities**: ``p_a(t) = (a(t + dt) - a(t)) / (1 - a(t))`` is the exact
  probability that a token still absent (``a = alpha``) or still masked (``a = beta``) at t
  arrives during the step. It equals ``kappa_a(t) * dt`` to first order and exactly for the linear
  schedule, and stays finite where ``kappa`` does not (``poly(p < 1)`` has ``kappa(0) = inf``).
- **early stop**: a row stops once it holds no mask and the expected number of tokens the model
  still wants to insert over the rest of the run, ``sum_j ghat_j * (alpha(1) - alpha(t)) / (1 -
  alpha(t))``, is below ``stop_threshold``. (ghat_j is the expected number of absent tokens in slot
  j, each of which arrives before t = 1 with probability ``(alpha(1) - alpha(t)) / (1 - alpha(t))``;
  this is stricter than comparing one step's expected insertions ``sum ghat kappa dt`` with the
  threshold, which is tiny whenever dt is.) Finished rows leave the forward pass.

**Maximum length policy.** ``max_length`` bounds the whole row (prompt + answer (+ suffix)). When a
step's insertions would push a row past it, that row's insertion counts are scaled down
proportionally to exactly fill the remaining room (largest-remainder rounding, exact integer
arithmetic), so every slot keeps its share; the row's ``truncated`` flag in the result records that
the model wanted more tokens than fitted. Other rows are unaffected.

**Reproducibility.** Every row draws its randomness (k, insertion counts, token samples) from its
own generator seeded by ``(seed, index of the prompt in the input list)``, with shapes that depend
only on the row's own content. So a seed gives identical outputs, and neither the buffer width
(``fixed_buffer=True`` pads every forward to ``max_length``, as the research sampler did) nor the
batch composition (``batch_size``, ``sort_by_length``) changes a row's output, as long as the model
itself is invariant to padding (the adapter masks attention beyond each row's length; float
reductions over a different width can still differ in the last bit on real hardware).

MDM baseline (LLaDA's ``generate``): ``gen_length`` masks after each prompt, semi-autoregressive
blocks of ``block_length``, ``steps`` split evenly across blocks, the number of tokens revealed per
step as LLaDA's ``get_num_transfer_tokens``, low-confidence or random remasking, temperature via
Gumbel noise in float64, optional classifier-free guidance (unconditional input = prompt masked).

Model protocol: ``model(input_ids (B, L), lengths (B,), t (B,) | None, logits_positions=(B, L) bool)``
returning an object with ``.logits`` (``(N, V)`` rows for the True positions in row-major order, or
``(B, L, V)``) and ``.gaps`` (``(B, L + 1)``, FlexMDM only). A tuple ``(logits, gaps)`` or a bare
logits tensor is accepted too, and models whose forward has no ``logits_positions`` argument are
called without it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from retrofit.schedules import Schedule, get_schedule

__all__ = [
    "CONFIDENCE_NAMES",
    "REMASKING_NAMES",
    "FlexMDMSamplingResult",
    "MDMSamplingResult",
    "SamplingTrace",
    "TraceStep",
    "cap_insertions",
    "flexmdm_generate",
    "insert_masks",
    "mdm_generate",
    "num_transfer_tokens",
    "plot_trace",
]

CONFIDENCE_NAMES = ("prob_diff", "top_prob", "entropy", "position")
REMASKING_NAMES = ("low_confidence", "random")

TokenRows = Sequence[Sequence[int]] | Sequence[Tensor]


# ---------------------------------------------------------------------------------------------
# Results and trace
# ---------------------------------------------------------------------------------------------


@dataclass
class TraceStep:
    """The state of one batch after ``step`` completed steps (``step = 0``: the initial state).

    ``row_ids`` are the indices of the batch's prompts in the input list; ``lengths`` the answer
    (infill: middle) lengths, ``n_clean`` / ``n_mask`` how many of those are clean / masked, and
    ``active`` whether the row still takes part in the forward passes.
    """

    batch_index: int
    step: int
    t: float
    row_ids: list[int]
    lengths: list[int]
    n_clean: list[int]
    n_mask: list[int]
    active: list[bool]


@dataclass
class SamplingTrace:
    """A trace callback that keeps every :class:`TraceStep` (pass it as ``trace=``)."""

    steps: list[TraceStep] = field(default_factory=list)

    def __call__(self, step: TraceStep) -> None:
        self.steps.append(step)

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class FlexMDMSamplingResult:
    """What :func:`flexmdm_generate` returns, in the order of the input prompts.

    sequences: the generated answer (infilling: the middle) token ids of each prompt.
    full_sequences: prompt + answer (infilling: prefix + middle + suffix).
    lengths: (N,) answer lengths.
    steps: (N,) forward passes each row took part in (< ``steps`` when it stopped early).
    truncated: (N,) True where ``max_length`` cut the row's insertions at least once.
    num_forward_passes: model calls made in total (all batches).
    """

    sequences: list[list[int]]
    full_sequences: list[list[int]]
    lengths: Tensor
    steps: Tensor
    truncated: Tensor
    num_forward_passes: int


@dataclass
class MDMSamplingResult:
    """What :func:`mdm_generate` returns, in the order of the input prompts.

    sequences: the ``gen_length`` generated token ids of each prompt (EOS padding included).
    full_sequences: prompt + generated tokens.
    lengths: (N,) answer lengths: index of the first EOS in the generated tokens (``gen_length``
        when there is none, or when no EOS id is known).
    steps: sampling steps per prompt (``steps``).
    num_forward_passes: model calls made in total (all batches).
    """

    sequences: list[list[int]]
    full_sequences: list[list[int]]
    lengths: Tensor
    steps: int
    num_forward_passes: int


# ---------------------------------------------------------------------------------------------
# Vectorised building blocks (public: small, tested alone)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Model plumbing and input validation
# ---------------------------------------------------------------------------------------------


def _accepts_logits_positions(model: Callable[..., Any]) -> bool:
    """Whether ``model``'s forward takes a ``logits_positions`` argument (or ``**kwargs``)."""
    target = model.forward if isinstance(model, nn.Module) else model
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name == "logits_positions" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


def _call_model(
    model: Callable[..., Any],
    input_ids: Tensor,
    lengths: Tensor,
    t: Tensor | None,
    positions: Tensor,
    pass_positions: bool,
) -> tuple[Tensor, Tensor | None]:
    """Run one forward pass; returns ``(logits (N, V) at the True ``positions``, gaps or None)``.

    input_ids, positions: (B, L); lengths: (B,); t: (B,) or None.
    """
    if pass_positions:
        output = model(input_ids, lengths, t, logits_positions=positions)
    else:
        output = model(input_ids, lengths, t)
    if isinstance(output, Tensor):
        logits, gaps = output, None
    elif isinstance(output, tuple):
        logits, gaps = output[0], (output[1] if len(output) > 1 else None)
    else:
        logits, gaps = output.logits, getattr(output, "gaps", None)
    if logits.dim() == 3:  # (B, L, V): the model ignored logits_positions
        logits = logits[positions]
    return logits, gaps


def _model_device(model: Any, device: torch.device | str | None) -> torch.device:
    """The device to run on: explicit, else the model's first parameter or buffer, else CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        for tensor in list(model.parameters()) + list(model.buffers()):
            return tensor.device
    return torch.device("cpu")


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


def _step_probabilities(schedule: Schedule, steps: int) -> list[float]:
    """``(a(t + dt) - a(t)) / (1 - a(t))`` at ``t = i / steps``, i < steps (float64 maths)."""
    times = torch.arange(steps + 1, dtype=torch.float64) / steps  # (steps + 1,)
    remaining = schedule.one_minus_at(times)  # (steps + 1,) 1 - a(t), cancellation-free
    probability = 1.0 - remaining[1:] / remaining[:-1].clamp_min(1e-300)
    return probability.nan_to_num(1.0).clamp(0.0, 1.0).tolist()


def _check_common(steps: int, batch_size: int | None, n_prompts: int) -> None:
    if n_prompts == 0:
        raise ValueError("no prompts given: pass at least one prompt (an empty prompt [] is fine)")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")


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


def _progress_bar(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# FlexMDM sampler
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def flexmdm_generate(
    model: Callable[..., Any],
    prompts: TokenRows,
    *,
    suffixes: TokenRows | None = None,
    steps: int = 256,
    confidence: str = "prob_diff",
    temperature: float = 0.0,
    top_p: float = 1.0,
    window_alpha: float | None = None,
    max_window: int | None = None,
    max_length: int | None = None,
    stop_threshold: float = 0.05,
    forbid_token_ids: Iterable[int] | None = None,
    insertion_schedule: str | dict | Schedule | None = None,
    unmasking_schedule: str | dict | Schedule | None = None,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    seed: int = 0,
    row_ids: Sequence[int] | None = None,
    batch_size: int | None = None,
    sort_by_length: bool = False,
    fixed_buffer: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    trace: Callable[[TraceStep], None] | None = None,
) -> FlexMDMSamplingResult:
    """Generate answers (or infill middles) with a FlexMDM; see the module docstring for the method.

    Args:
        model: a FlexMDM (or any callable with its forward signature) returning logits and gaps.
        prompts: N token id sequences (lists or 1-D tensors) of any lengths; with ``suffixes``
            they are the infilling prefixes (including any boundary marker).
        suffixes: N suffix sequences for infilling (insertion only between prefix and suffix);
            the output is then the middle.
        steps: Euler steps (the last one fills every remaining mask).
        confidence: ``prob_diff`` | ``top_prob`` | ``entropy`` | ``position``.
        temperature, top_p: token choice; ``temperature == 0`` is greedy.
        window_alpha, max_window: sliding window over the first masks (None = no window;
            ``max_window`` alone caps the window without the alpha factor).
        max_length: bound on prompt + answer (+ suffix); default ``model.config.max_length``.
        stop_threshold: early-stop threshold on the expected remaining insertions of a row.
        forbid_token_ids: tokens never emitted (default: mask and pad); the mask id is always added.
        insertion_schedule, unmasking_schedule: default the model's (its config's) schedules.
        mask_token_id, pad_token_id: default ``model.config``'s.
        seed: row i draws from a generator seeded by (seed, row_ids[i]).
        row_ids: random-stream id of each prompt (default: its index). Callers that sample one
            list in several calls (an evaluator's batches) pass globally distinct ids, so no two
            calls repeat a stream.
        batch_size: prompts per forward batch (None = all); ``sort_by_length`` groups similar
            lengths together (outputs do not change, see the module docstring).
        fixed_buffer: pad every forward to ``max_length`` (the research sampler's cost; for
            benchmarks and equivalence tests).
        device: default the model's device.
        progress: show a tqdm bar over steps.
        trace: called with a :class:`TraceStep` for the initial state and after every step.

    Returns:
        :class:`FlexMDMSamplingResult` in the order of ``prompts``.
    """
    prefix_rows = _as_rows(prompts, "prompts")
    suffix_rows = _as_rows(suffixes, "suffixes")
    _check_common(steps, batch_size, len(prefix_rows))
    stream_ids = _stream_ids(row_ids, len(prefix_rows))
    if suffix_rows is None:
        suffix_rows = [[] for _ in prefix_rows]
    elif len(suffix_rows) != len(prefix_rows):
        raise ValueError(
            f"got {len(prefix_rows)} prefixes but {len(suffix_rows)} suffixes: pass one per prefix"
        )
    if confidence not in CONFIDENCE_NAMES:
        raise ValueError(f"unknown confidence {confidence!r}; choose one of {CONFIDENCE_NAMES}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if window_alpha is not None and window_alpha <= 0:
        raise ValueError(f"window_alpha must be > 0 or None, got {window_alpha}")
    if max_window is not None and max_window < 1:
        raise ValueError(f"max_window must be >= 1 or None, got {max_window}")
    if stop_threshold < 0:
        raise ValueError(f"stop_threshold must be >= 0, got {stop_threshold}")

    mask_id = _config_value(model, "mask_token_id", mask_token_id)
    pad_id = _config_value(model, "pad_token_id", pad_token_id)
    if mask_id is None or pad_id is None:
        raise ValueError(
            "mask/pad token ids unknown: the model config has no mask_token_id/pad_token_id; "
            "pass mask_token_id= and pad_token_id="
        )
    model_max_length = _config_value(model, "max_length", None)
    max_length = model_max_length if max_length is None else max_length
    if max_length is None:
        raise ValueError("max_length unknown: the model config has none; pass max_length=")
    if model_max_length is not None and max_length > model_max_length:
        # Checked up front: the model itself refuses longer inputs, which would otherwise fail
        # partway through a run as soon as one row grows past its limit.
        raise ValueError(
            f"max_length={max_length} exceeds the model's max_length={model_max_length}: "
            "lower it, or retrofit with a larger max_length"
        )
    forbidden = {int(mask_id)} | (
        {int(pad_id)} if forbid_token_ids is None else {int(i) for i in forbid_token_ids}
    )
    for index, (prefix, suffix) in enumerate(zip(prefix_rows, suffix_rows)):
        if len(prefix) + len(suffix) > max_length:
            raise ValueError(
                f"prompt {index} has {len(prefix) + len(suffix)} tokens, more than "
                f"max_length={max_length}: shorten it or raise max_length"
            )
        if mask_id in prefix or mask_id in suffix:
            raise ValueError(
                f"prompt {index} contains the mask token id {mask_id}: prompts must be clean"
            )

    run_device = _model_device(model, device)
    insertion = _resolve_schedule(model, "insertion", insertion_schedule)
    unmasking = _resolve_schedule(model, "unmasking", unmasking_schedule)
    # Per-step arrival probabilities as Python floats (float64 maths), computed once.
    times = torch.arange(steps, dtype=torch.float64) / steps  # (steps,)
    insert_probability = _step_probabilities(insertion, steps)
    unmask_probability = _step_probabilities(unmasking, steps)
    alpha_one = float(insertion.at(torch.tensor(1.0, dtype=torch.float64)))
    one_minus_alpha = (1.0 - insertion.at(times)).clamp_min(1e-12)  # (steps,)
    arrival = ((alpha_one - insertion.at(times)) / one_minus_alpha).clamp(0.0, 1.0).tolist()

    options = _FlexOptions(
        steps=steps,
        confidence=confidence,
        temperature=float(temperature),
        top_p=float(top_p),
        window_alpha=window_alpha,
        max_window=max_window,
        max_length=int(max_length),
        stop_threshold=float(stop_threshold),
        forbidden=torch.tensor(sorted(forbidden), dtype=torch.long, device=run_device),
        mask_id=int(mask_id),
        pad_id=int(pad_id),
        seed=int(seed),
        fixed_buffer=fixed_buffer,
        device=run_device,
        insert_probability=insert_probability,
        unmask_probability=unmask_probability,
        arrival=arrival,
        pass_positions=_accepts_logits_positions(model),
        progress=progress,
        trace=trace,
    )
    n_prompts = len(prefix_rows)
    sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    full_sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    lengths = torch.zeros(n_prompts, dtype=torch.long)
    steps_taken = torch.zeros(n_prompts, dtype=torch.long)
    truncated = torch.zeros(n_prompts, dtype=torch.bool)
    forward_passes = 0
    batches = _batches(
        [len(p) + len(s) for p, s in zip(prefix_rows, suffix_rows)], batch_size, sort_by_length
    )
    for batch_index, members in enumerate(batches):
        batch = _flexmdm_batch(
            model,
            [prefix_rows[i] for i in members],
            [suffix_rows[i] for i in members],
            members,
            [stream_ids[i] for i in members],
            batch_index,
            options,
        )
        forward_passes += batch["forward_passes"]
        for position, row_id in enumerate(members):
            sequences[row_id] = batch["answers"][position]
            full_sequences[row_id] = batch["full"][position]
            lengths[row_id] = len(batch["answers"][position])
            steps_taken[row_id] = batch["steps"][position]
            truncated[row_id] = batch["truncated"][position]
    return FlexMDMSamplingResult(
        sequences=sequences,
        full_sequences=full_sequences,
        lengths=lengths,
        steps=steps_taken,
        truncated=truncated,
        num_forward_passes=forward_passes,
    )


@dataclass
class _FlexOptions:
    """Validated FlexMDM sampling settings shared by all batches of one call."""

    steps: int
    confidence: str
    temperature: float
    top_p: float
    window_alpha: float | None
    max_window: int | None
    max_length: int
    stop_threshold: float
    forbidden: Tensor
    mask_id: int
    pad_id: int
    seed: int
    fixed_buffer: bool
    device: torch.device
    insert_probability: list[float]
    unmask_probability: list[float]
    arrival: list[float]
    pass_positions: bool
    progress: bool
    trace: Callable[[TraceStep], None] | None


def _flexmdm_batch(
    model: Callable[..., Any],
    prefixes: list[list[int]],
    suffixes: list[list[int]],
    row_ids: list[int],
    stream_ids: list[int],
    batch_index: int,
    options: _FlexOptions,
) -> dict[str, Any]:
    """Run the FlexMDM sampler on one batch; returns per-row answers, full rows, steps, flags."""
    device = options.device
    batch_size = len(prefixes)
    prefix_cpu = [len(p) for p in prefixes]
    suffix_cpu = [len(s) for s in suffixes]
    lengths_cpu = [p + s for p, s in zip(prefix_cpu, suffix_cpu)]
    prefix_len = torch.tensor(prefix_cpu, dtype=torch.long, device=device)  # (B,)
    suffix_len = torch.tensor(suffix_cpu, dtype=torch.long, device=device)  # (B,)
    lengths = torch.tensor(lengths_cpu, dtype=torch.long, device=device)  # (B,)
    # Live: as wide as the longest row (at least 1); fixed: max_length (the research layout).
    state_width = options.max_length if options.fixed_buffer else max(1, max(lengths_cpu))
    input_ids = torch.full((batch_size, state_width), options.pad_id, dtype=torch.long)
    for row, (prefix, suffix) in enumerate(zip(prefixes, suffixes)):
        input_ids[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        input_ids[row, len(prefix) : len(prefix) + len(suffix)] = torch.tensor(
            suffix, dtype=torch.long
        )
    input_ids = input_ids.to(device)  # (B, W)
    generators = [_row_generator(options.seed, stream, device) for stream in stream_ids]
    active = [True] * batch_size
    steps_taken = [0] * batch_size
    truncated = torch.zeros(batch_size, dtype=torch.bool, device=device)
    forward_passes = 0
    dt = 1.0 / options.steps

    def emit_trace(step: int) -> None:
        if options.trace is None:
            return
        positions = torch.arange(input_ids.shape[1], device=device)
        middle = (positions[None, :] >= prefix_len[:, None]) & (
            positions[None, :] < (lengths - suffix_len)[:, None]
        )
        n_mask = ((input_ids == options.mask_id) & middle).sum(dim=1).tolist()
        answer_lengths = (lengths - prefix_len - suffix_len).tolist()
        options.trace(
            TraceStep(
                batch_index=batch_index,
                step=step,
                t=step * dt,
                row_ids=list(row_ids),
                lengths=answer_lengths,
                n_clean=[a - m for a, m in zip(answer_lengths, n_mask)],
                n_mask=n_mask,
                active=list(active),
            )
        )

    emit_trace(0)
    progress_bar = _progress_bar(options.steps, options.progress, "flexmdm")
    for step in range(options.steps):
        active_rows = [row for row in range(batch_size) if active[row]]
        if not active_rows:
            break
        last = step == options.steps - 1
        t = step * dt
        active_index = torch.tensor(active_rows, dtype=torch.long, device=device)  # (A,)
        if options.fixed_buffer:
            width = options.max_length
        else:
            width = max(1, max(lengths_cpu[row] for row in active_rows))
        ids = input_ids[active_index, :width]  # (A, L) the live buffer
        row_lengths = lengths[active_index]  # (A,)
        row_prefix = prefix_len[active_index]
        row_middle_end = row_lengths - suffix_len[active_index]  # (A,)
        positions = torch.arange(width, device=device)  # (L,)
        in_middle = (positions[None, :] >= row_prefix[:, None]) & (
            positions[None, :] < row_middle_end[:, None]
        )
        is_mask = (ids == options.mask_id) & in_middle  # (A, L)
        mask_rank = is_mask.long().cumsum(dim=1) - 1  # (A, L) rank among the row's masks
        n_mask = is_mask.sum(dim=1)  # (A,)

        # --- how many masks to unmask (drawn before the forward: it decides where logits run) ---
        if last:
            k = n_mask
            candidates = is_mask
        else:
            rates = n_mask.double() * options.unmask_probability[step]  # (A,)
            k = torch.cat(
                [
                    torch.poisson(rates[i : i + 1], generator=generators[row])
                    for i, row in enumerate(active_rows)
                ]
            ).long()
            k = torch.minimum(k, n_mask)  # never more than the eligible masks
            window = n_mask  # (A,) candidates: the first `window` masks left to right
            if options.window_alpha is not None:
                window = torch.minimum(window, torch.ceil(k.double() * options.window_alpha).long())
            if options.max_window is not None:
                window = window.clamp_max(options.max_window)
            k = torch.minimum(k, window)
            if options.confidence == "position":
                window = k  # leftmost first: the chosen masks are known before the forward
            # Rows with k = 0 need no logits at all.
            candidates = is_mask & (mask_rank < window[:, None]) & (k > 0)[:, None]

        if last and not bool(candidates.any()):
            # Nothing left to fill and no insertion on the last step: no forward pass needed.
            logits, gaps = ids.new_empty((0, 0), dtype=torch.float32), None
        else:
            t_batch = torch.full((len(active_rows),), t, dtype=torch.float32, device=device)
            logits, gaps = _call_model(
                model, ids, row_lengths, t_batch, candidates, options.pass_positions
            )
            forward_passes += 1
        if gaps is None and not last:
            raise ValueError(
                "the model returned no gaps: it is not a FlexMDM (kind 'mdm'?); use mdm_generate"
            )

        # --- unmask ---
        if logits.shape[0] > 0:
            logits = logits.float()  # (N, V); a fresh tensor of the LM head: filled in place
            logits.index_fill_(-1, options.forbidden, float("-inf"))
            if last or options.confidence == "position":
                selected = candidates
            else:
                scores = torch.full(ids.shape, float("-inf"), device=device)  # (A, L)
                scores[candidates] = _confidence(logits, options.confidence)
                selected = _select_top_k(scores, k) & candidates
            candidate_index = candidates.flatten().long().cumsum(0) - 1  # (A * L,)
            chosen_logits = logits[candidate_index[selected.flatten()]]  # (K, V)
            if last or options.temperature == 0.0:
                tokens = chosen_logits.argmax(dim=-1)
            else:
                per_row = selected.sum(dim=1).tolist()
                uniforms = torch.cat(
                    [
                        torch.rand(count, generator=generators[row], dtype=torch.float64, device=device)
                        for count, row in zip(per_row, active_rows)
                    ]
                )
                tokens = _sample_tokens(chosen_logits, options.temperature, options.top_p, uniforms)
            ids = ids.masked_scatter(selected, tokens)
            input_ids[active_index, :width] = ids
            remaining_masks = n_mask - selected.sum(dim=1)
        else:
            remaining_masks = n_mask
        for row in active_rows:
            steps_taken[row] += 1

        # --- early stop and insertion ---
        if last:
            for row in active_rows:
                active[row] = False
        else:
            gaps = gaps[:, : width + 1].double().clamp_min(0)  # (A, L + 1)
            slots = torch.arange(width + 1, device=device)  # (L + 1,)
            allowed = (slots[None, :] >= row_prefix[:, None]) & (
                slots[None, :] <= row_middle_end[:, None]
            )  # (A, L + 1): the answer's slots only
            expected_gaps = torch.where(allowed, gaps, 0.0)
            expected_remaining = expected_gaps.sum(dim=1) * options.arrival[step]  # (A,)
            finished = ((remaining_masks == 0) & (expected_remaining < options.stop_threshold)).tolist()
            insertion_rates = expected_gaps * options.insert_probability[step]  # (A, L + 1)
            draws = []
            for i, row in enumerate(active_rows):
                if finished[i]:
                    allowed[i] = False
                    active[row] = False
                    continue
                start, end = prefix_cpu[row], lengths_cpu[row] - suffix_cpu[row]
                draws.append(
                    torch.poisson(insertion_rates[i, start : end + 1], generator=generators[row])
                )
            if draws:
                counts = torch.zeros(allowed.shape, dtype=torch.long, device=device)
                counts[allowed] = torch.cat(draws).long()
                counts, cut = cap_insertions(counts, options.max_length - row_lengths)
                truncated[active_index] |= cut
                full_counts = torch.zeros(
                    (batch_size, input_ids.shape[1] + 1), dtype=torch.long, device=device
                )
                full_counts[active_index, : width + 1] = counts
                input_ids, lengths = insert_masks(
                    input_ids,
                    lengths,
                    full_counts,
                    mask_token_id=options.mask_id,
                    pad_token_id=options.pad_id,
                    width=options.max_length if options.fixed_buffer else None,
                )
                lengths_cpu = lengths.tolist()
        progress_bar.update(1)
        emit_trace(step + 1)
    progress_bar.close()

    answers, full = [], []
    rows = input_ids.tolist()
    for row in range(batch_size):
        sequence = rows[row][: lengths_cpu[row]]
        middle = sequence[prefix_cpu[row] : lengths_cpu[row] - suffix_cpu[row]]
        if options.mask_id in middle:  # cannot happen: the last step fills every mask
            raise RuntimeError("internal error: a mask survived the last step")
        answers.append(middle)
        full.append(sequence)
    return {
        "answers": answers,
        "full": full,
        "steps": steps_taken,
        "truncated": truncated.tolist(),
        "forward_passes": forward_passes,
    }


# ---------------------------------------------------------------------------------------------
# MDM baseline sampler (LLaDA generate)
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def mdm_generate(
    model: Callable[..., Any],
    prompts: TokenRows,
    *,
    gen_length: int = 256,
    block_length: int | None = None,
    steps: int = 256,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    forbid_token_ids: Iterable[int] | None = None,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int = 0,
    row_ids: Sequence[int] | None = None,
    batch_size: int | None = None,
    sort_by_length: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    trace: Callable[[TraceStep], None] | None = None,
) -> MDMSamplingResult:
    """LLaDA's semi-autoregressive sampler on batched prompts of different lengths.

    Each prompt gets ``gen_length`` masks after it (rows left-aligned, right-padded, explicit
    lengths). The masks form ``gen_length / block_length`` blocks unmasked left to right, each in
    ``steps / num_blocks`` steps revealing :func:`num_transfer_tokens` tokens per step: the most
    confident (``low_confidence``: probability of the chosen token) or random ones (``random``).
    ``temperature > 0`` picks tokens by Gumbel-max in float64 (LLaDA's ``add_gumbel_noise``);
    ``cfg_scale > 0`` mixes ``uncond + (cfg_scale + 1) * (cond - uncond)``, where the unconditional
    input has the prompt masked. The model is called as ``model(input_ids, lengths, None,
    logits_positions=...)`` with logits requested only at the current block's masks.

    forbid_token_ids: tokens never emitted (default: only the mask id; EOS is a normal MDM output).
    eos_token_id: used only to report answer lengths (default ``model.config.eos_token_id``).
    seed, row_ids: row i draws from a generator seeded by (seed, row_ids[i]) (default: its index).
    Returns :class:`MDMSamplingResult` in the order of ``prompts``.
    """
    prompt_rows = _as_rows(prompts, "prompts")
    _check_common(steps, batch_size, len(prompt_rows))
    stream_ids = _stream_ids(row_ids, len(prompt_rows))
    block_length = gen_length if block_length is None else block_length
    if gen_length < 1 or block_length < 1 or gen_length % block_length:
        raise ValueError(
            f"gen_length ({gen_length}) must be a positive multiple of block_length ({block_length})"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(
            f"steps ({steps}) must be divisible by the number of blocks ({num_blocks} = "
            f"gen_length / block_length) so that each block gets the same number of steps"
        )
    if remasking not in REMASKING_NAMES:
        raise ValueError(f"unknown remasking {remasking!r}; choose one of {REMASKING_NAMES}")
    if temperature < 0 or cfg_scale < 0:
        raise ValueError(f"temperature and cfg_scale must be >= 0, got {temperature}, {cfg_scale}")
    mask_id = _config_value(model, "mask_token_id", mask_token_id)
    pad_id = _config_value(model, "pad_token_id", pad_token_id)
    eos_id = _config_value(model, "eos_token_id", eos_token_id)
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
    run_device = _model_device(model, device)
    forbidden = {int(mask_id)} | ({int(i) for i in forbid_token_ids} if forbid_token_ids else set())
    forbidden_tensor = torch.tensor(sorted(forbidden), dtype=torch.long, device=run_device)
    pass_positions = _accepts_logits_positions(model)
    steps_per_block = steps // num_blocks

    n_prompts = len(prompt_rows)
    sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    full_sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    forward_passes = 0
    for batch_index, members in enumerate(
        _batches([len(p) for p in prompt_rows], batch_size, sort_by_length)
    ):
        rows = [prompt_rows[i] for i in members]
        size = len(rows)
        prompt_len = torch.tensor([len(r) for r in rows], dtype=torch.long, device=run_device)
        lengths = prompt_len + gen_length  # (B,)
        width = max(len(r) for r in rows) + gen_length
        input_ids = torch.full((size, width), int(pad_id), dtype=torch.long)
        for row, prompt in enumerate(rows):
            input_ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
            input_ids[row, len(prompt) : len(prompt) + gen_length] = int(mask_id)
        input_ids = input_ids.to(run_device)  # (B, L)
        positions = torch.arange(width, device=run_device)  # (L,)
        is_prompt = positions[None, :] < prompt_len[:, None]  # (B, L)
        generators = [_row_generator(seed, stream_ids[row_id], run_device) for row_id in members]

        trace_state = (trace, batch_index, members, prompt_len, lengths, int(mask_id), gen_length)
        _mdm_trace(trace_state, 0, steps, input_ids)
        progress_bar = _progress_bar(steps, progress, "mdm")
        for block in range(num_blocks):
            block_start = prompt_len + block * block_length  # (B,)
            in_block = (positions[None, :] >= block_start[:, None]) & (
                positions[None, :] < (block_start + block_length)[:, None]
            )  # (B, L)
            block_masks = ((input_ids == mask_id) & in_block).sum(dim=1)  # (B,)
            schedule = num_transfer_tokens(block_masks, steps_per_block)  # (B, steps_per_block)
            for inner_step in range(steps_per_block):
                is_mask = (input_ids == mask_id) & in_block  # (B, L): current block's masks
                if cfg_scale > 0:
                    unconditional = input_ids.masked_fill(is_prompt, int(mask_id))
                    logits, _ = _call_model(
                        model,
                        torch.cat([input_ids, unconditional]),
                        torch.cat([lengths, lengths]),
                        None,
                        torch.cat([is_mask, is_mask]),
                        pass_positions,
                    )
                    conditional, unconditional_logits = logits.double().chunk(2, dim=0)
                    logits = unconditional_logits + (cfg_scale + 1) * (
                        conditional - unconditional_logits
                    )
                else:
                    logits, _ = _call_model(
                        model, input_ids, lengths, None, is_mask, pass_positions
                    )
                    logits = logits.double()  # (N, V)
                forward_passes += 1
                logits.index_fill_(-1, forbidden_tensor, float("-inf"))  # a float64 copy: in place
                per_row = is_mask.sum(dim=1).tolist() if temperature > 0 or remasking == "random" else []
                if temperature > 0:
                    # Gumbel-max in float64: argmax(logits - T * log(-log u)) equals LLaDA's
                    # argmax(exp(logits) / (-log u) ** T).
                    noise = torch.cat(
                        [
                            torch.rand(
                                (count, logits.shape[-1]),
                                generator=generators[row],
                                dtype=torch.float64,
                                device=run_device,
                            )
                            for row, count in enumerate(per_row)
                        ]
                    )
                    proposals = (logits - temperature * torch.log(-torch.log(noise))).argmax(-1)
                else:
                    proposals = logits.argmax(dim=-1)  # (N,)
                if remasking == "low_confidence":
                    # softmax(logits)[proposal] without materialising the (N, V) softmax.
                    chosen = logits.gather(-1, proposals[:, None]).squeeze(-1)  # (N,)
                    scores_flat = torch.exp(chosen - torch.logsumexp(logits, dim=-1))
                else:
                    scores_flat = torch.cat(
                        [
                            torch.rand(
                                count, generator=generators[row], dtype=torch.float64,
                                device=run_device,
                            )
                            for row, count in enumerate(per_row)
                        ]
                    )
                scores = torch.full(is_mask.shape, float("-inf"), dtype=torch.float64,
                                    device=run_device)  # (B, L)
                scores[is_mask] = scores_flat
                k = torch.minimum(schedule[:, inner_step], is_mask.sum(dim=1))
                selected = _select_top_k(scores, k) & is_mask  # (B, L)
                candidate_index = is_mask.flatten().long().cumsum(0) - 1
                tokens = proposals[candidate_index[selected.flatten()]]
                input_ids = input_ids.masked_scatter(selected, tokens)
                progress_bar.update(1)
                _mdm_trace(trace_state, block * steps_per_block + inner_step + 1, steps, input_ids)
        progress_bar.close()
        rows_out = input_ids.tolist()
        for row, row_id in enumerate(members):
            start = len(rows[row])
            sequences[row_id] = rows_out[row][start : start + gen_length]
            full_sequences[row_id] = rows_out[row][: start + gen_length]

    answer_lengths = torch.tensor(
        [
            seq.index(eos_id) if eos_id is not None and eos_id in seq else len(seq)
            for seq in sequences
        ],
        dtype=torch.long,
    )
    return MDMSamplingResult(
        sequences=sequences,
        full_sequences=full_sequences,
        lengths=answer_lengths,
        steps=steps,
        num_forward_passes=forward_passes,
    )


def _mdm_trace(state: tuple, step: int, steps: int, input_ids: Tensor) -> None:
    """Report one MDM step to the trace callback (if any). input_ids: (B, L)."""
    trace, batch_index, row_ids, prompt_len, lengths, mask_id, gen_length = state
    if trace is None:
        return
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
    generated = (positions[None, :] >= prompt_len[:, None]) & (
        positions[None, :] < lengths[:, None]
    )  # (B, L)
    n_mask = ((input_ids == mask_id) & generated).sum(dim=1).tolist()
    trace(
        TraceStep(
            batch_index=batch_index,
            step=step,
            t=step / steps,
            row_ids=list(row_ids),
            lengths=[gen_length] * len(n_mask),
            n_clean=[gen_length - m for m in n_mask],
            n_mask=n_mask,
            active=[step < steps] * len(n_mask),
        )
    )


# ---------------------------------------------------------------------------------------------
# Trace plot
# ---------------------------------------------------------------------------------------------


def plot_trace(trace: Iterable[TraceStep], path: str | Path, *, max_rows: int = 16) -> Path:
    """Plot answer length and clean-token count against t for up to ``max_rows`` prompts.

    trace: the :class:`TraceStep` records of one call (e.g. a :class:`SamplingTrace`); path: the
    image file to write (format from the suffix). Uses matplotlib's Agg backend (no display).
    Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    series: dict[int, dict[str, list[float]]] = {}
    for record in trace:
        for position, row_id in enumerate(record.row_ids):
            if row_id not in series and len(series) >= max_rows:
                continue
            data = series.setdefault(row_id, {"t": [], "length": [], "clean": []})
            data["t"].append(record.t)
            data["length"].append(record.lengths[position])
            data["clean"].append(record.n_clean[position])
    if not series:
        raise ValueError("the trace is empty: pass trace=SamplingTrace() to the sampler first")
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot(1, 1, 1)
    colors = matplotlib.colormaps["tab10"]
    for index, (row_id, data) in enumerate(sorted(series.items())):
        color = colors(index % 10)
        axes.plot(data["t"], data["length"], color=color, label=f"prompt {row_id} length")
        axes.plot(data["t"], data["clean"], color=color, linestyle="--")
    axes.set_xlabel("t")
    axes.set_ylabel("tokens (solid: answer length, dashed: clean)")
    axes.set_title("sampling trace")
    if len(series) <= 8:
        axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
