"""The FlexMDM sampler: insert + unmask, from an empty answer (or infilling middle) to a finished one.

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
- **insert**: the step's arrivals in the answer's slots (slot j is the gap before position j:
  ``prompt_len <= j <= length`` when generating, ``prefix_len <= j <= length - suffix_len`` when
  infilling), drawn from the expected gaps ``ghat_j`` (``insertion_draw``, derivation below). New
  positions come from a cumulative sum and one scatter (no per-token Python loop).
- the **last step** is an ordinary step: with a schedule that reaches ``alpha(1) = 1`` (linear,
  cosine, ...) its arrival probability is 1, so every token the model still expects arrives then.
  A **fill pass** at t = 1 follows: one more forward for the rows that still hold masks, which
  fills every mask by argmax and inserts nothing (at most ``steps + 1`` forward passes).
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

**The insertion draw (``insertion_draw``).** Given the state x_t, each answer token still missing
arrives during [t, t + dt) independently with probability ``p = p_alpha(t)``. The head predicts
``ghat_j = E[N_j | x_t]``, the expected number of missing tokens in slot j, and the row's
``G = sum_j ghat_j = E[N | x_t]``. If the missing count N were known, the arrivals would be exactly
``A ~ Binomial(N, p)``, each landing in slot j with probability ``N_j / N``.

- ``poisson`` (the paper): ``e_j ~ Poisson(ghat_j p)``, i.e. ``A ~ Poisson(G p)``. It matches the
  continuous-time process as p -> 0 (a rate ``ghat_j kappa(t)`` per slot), but its variance
  ``G p`` stays ~G as p -> 1, while the true count then has variance ``Var(N | x_t)``, which the
  data drives to 0 late in the run (the current length fixes the final length). With a linear
  schedule p = 1 on the last step, so the paper's draw adds ~G of pure noise to the final length
  exactly when the model knows it.
- ``binomial`` (default): N = G rounded stochastically (``floor(G) + Bernoulli(frac(G))``, so
  ``E[N] = G`` and ``Var(N) <= 1/4``), ``A ~ Binomial(N, p)``, slots ~ ``Multinomial(A, ghat / G)``.
  Its conditional mean ``G p`` equals the Poisson draw's (and the exact law's), its variance
  ``E[N] p (1 - p) + p^2 Var(N)`` is the exact one whenever the missing count is determined by x_t
  (Var(N | x_t) ~ 0, where p ~ 1 matters) and differs from the exact one only by
  ``p^2 (Var(N | x_t) - Var(N))``, O(dt^2) per step while p = O(dt): the sampler is exact in the
  limit of exact rates and small steps, and no longer loses length at the end.

Measured with the exact Bayes rates of lengths {4: .1, 16: .4, 32: .4, 64: .1} (4,000 samples per
seed, 3 seeds, ``benchmarks/sampling.py --exact-rates``): see ``docs/sampling.md``.

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


**Fast modes** (options, all off by default; measured in ``docs/sampling.md``):

- ``unmask_threshold``: every eligible mask whose top-1 probability reaches the threshold is also
  unmasked in the step (the scheduled k stays the floor); its logits are computed for that.
- ``jump_insertions``: a row that holds no mask after its unmasking may draw the arrivals of
  several steps at once: up to the furthest step m at which it expects at most this many
  arrivals, with the exact interval probability ``(alpha(t_m) - alpha(t)) / (1 - alpha(t))``,
  stopping at the first step in which a token arrives (the model is asked again after every
  arrival). Exact only while the model's expected gaps would not change over the skipped steps;
  they do when the state's length is ambiguous (no arrival is information too), so larger budgets
  trade length fidelity for forward passes.
- ``prefix_cache``: the protected prefix's keys/values are computed once (or every
  ``prefix_cache_refresh`` forward passes) and reused while the answer grows. Approximate: the
  prefix then attends to the answer and is modulated with the time as they were when recorded.
  Infilling reuses the prefix only (the suffix moves with every insertion and is recomputed).

Each row keeps its own time (``n / steps``): rows move together unless a jump moves one ahead;
the forward pass takes each row's time.

**Phases.** One iteration (one forward pass of a batch) reads as its phases:
``live rows -> plan unmask -> forward -> unmask -> insert or stop`` (insertion in
:mod:`retrofit.sampling.insertion`); a call reads
``validate (config) -> per batch: set up rows -> iterate -> collect outputs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from retrofit.models.prefix_cache import PrefixCache

from .blocks import _confidence, _sample_tokens, _select_top_k, _step_probabilities
from .config import FlexMDMSamplingConfig, expose_config_keywords, resolve_config
from .insertion import insert_or_stop
from .plumbing import (
    TokenRows,
    _accepts_logits_positions,
    _as_rows,
    _batches,
    _call_model,
    _check_prompt_count,
    _config_value,
    _model_device,
    _progress_bar,
    _resolve_schedule,
    _row_generator,
    _stream_ids,
)
from .results import FlexMDMSamplingResult, TraceStep
from .state import BatchState, FlexOptions, LiveRows, UnmaskPlan

__all__ = ["flexmdm_generate"]


# ---------------------------------------------------------------------------------------------
# The call: validate once, then run each batch
# ---------------------------------------------------------------------------------------------


@expose_config_keywords(FlexMDMSamplingConfig)
@torch.inference_mode()
def flexmdm_generate(
    model: Callable[..., Any],
    prompts: TokenRows,
    *,
    suffixes: TokenRows | None = None,
    config: FlexMDMSamplingConfig | Mapping[str, Any] | None = None,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    seed: int = 0,
    row_ids: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    trace: Callable[[TraceStep], None] | None = None,
    **settings: Any,
) -> FlexMDMSamplingResult:
    """Generate answers (or infill middles) with a FlexMDM; see the module docstring for the method.

    Args:
        model: a FlexMDM (or any callable with its forward signature) returning logits and gaps.
        prompts: N token id sequences (lists or 1-D tensors) of any lengths; with ``suffixes``
            they are the infilling prefixes (including any boundary marker).
        suffixes: N suffix sequences for infilling (insertion only between prefix and suffix);
            the output is then the middle.
        config: the sampler settings (:class:`FlexMDMSamplingConfig`, or a mapping of its fields,
            e.g. an eval spec's ``generation.flexmdm``); default all defaults.
        **settings: fields of :class:`FlexMDMSamplingConfig` as keywords (``steps=64``,
            ``confidence="top_prob"``, ...), laid over ``config``; an unknown one is an error.
        mask_token_id, pad_token_id: default ``model.config``'s.
        seed: row i draws from a generator seeded by (seed, row_ids[i]).
        row_ids: random-stream id of each prompt (default: its index). Callers that sample one
            list in several calls (an evaluator's batches) pass globally distinct ids, so no two
            calls repeat a stream.
        device: default the model's device.
        progress: show a tqdm bar over steps.
        trace: called with a :class:`TraceStep` for the initial state and after every step.

    Returns:
        :class:`FlexMDMSamplingResult` in the order of ``prompts``.
    """
    config = resolve_config(FlexMDMSamplingConfig, config, settings, "flexmdm_generate")
    prefix_rows, suffix_rows = _prompt_rows(prompts, suffixes)
    stream_ids = _stream_ids(row_ids, len(prefix_rows))
    options = _flex_options(model, config, prefix_rows, suffix_rows, mask_token_id, pad_token_id,
                            seed, device, progress, trace)
    n_prompts = len(prefix_rows)
    sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    full_sequences: list[list[int]] = [[] for _ in range(n_prompts)]
    lengths = torch.zeros(n_prompts, dtype=torch.long)
    steps_taken = torch.zeros(n_prompts, dtype=torch.long)
    truncated = torch.zeros(n_prompts, dtype=torch.bool)
    forward_passes = 0
    batches = _batches([len(p) + len(s) for p, s in zip(prefix_rows, suffix_rows)],
                       config.batch_size, config.sort_by_length)
    for batch_index, members in enumerate(batches):
        batch = _run_batch(
            model, [prefix_rows[i] for i in members], [suffix_rows[i] for i in members], members,
            [stream_ids[i] for i in members], batch_index, options,
        )
        forward_passes += batch["forward_passes"]
        for position, row_id in enumerate(members):
            sequences[row_id] = batch["answers"][position]
            full_sequences[row_id] = batch["full"][position]
            lengths[row_id] = len(batch["answers"][position])
            steps_taken[row_id] = batch["steps"][position]
            truncated[row_id] = batch["truncated"][position]
    return FlexMDMSamplingResult(
        sequences=sequences, full_sequences=full_sequences, lengths=lengths, steps=steps_taken,
        truncated=truncated, num_forward_passes=forward_passes,
    )


def _prompt_rows(prompts: TokenRows, suffixes: TokenRows | None
                 ) -> tuple[list[list[int]], list[list[int]]]:
    """Prefix and suffix rows as lists of ints (empty suffixes when not infilling)."""
    prefix_rows = _as_rows(prompts, "prompts")
    suffix_rows = _as_rows(suffixes, "suffixes")
    _check_prompt_count(len(prefix_rows))
    if suffix_rows is None:
        return prefix_rows, [[] for _ in prefix_rows]
    if len(suffix_rows) != len(prefix_rows):
        raise ValueError(
            f"got {len(prefix_rows)} prefixes but {len(suffix_rows)} suffixes: pass one per prefix"
        )
    return prefix_rows, suffix_rows


def _resolve_max_length(model: Any, explicit: int | None) -> int:
    """The row-length bound: explicit (never above the model's), else the model config's."""
    model_max_length = _config_value(model, "max_length", None)
    max_length = model_max_length if explicit is None else explicit
    if max_length is None:
        raise ValueError("max_length unknown: the model config has none; pass max_length=")
    if model_max_length is not None and max_length > model_max_length:
        # Checked up front: the model itself refuses longer inputs, which would otherwise fail
        # partway through a run as soon as one row grows past its limit.
        raise ValueError(
            f"max_length={max_length} exceeds the model's max_length={model_max_length}: "
            "lower it, or retrofit with a larger max_length"
        )
    return int(max_length)


def _check_prompts_fit(prefix_rows: list[list[int]], suffix_rows: list[list[int]], max_length: int,
                       mask_id: int) -> None:
    """Every prompt fits ``max_length`` and holds no mask token."""
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


def _flex_options(
    model: Any, config: FlexMDMSamplingConfig, prefix_rows: list[list[int]],
    suffix_rows: list[list[int]], mask_token_id: int | None, pad_token_id: int | None, seed: int,
    device: torch.device | str | None, progress: bool, trace: Callable[[TraceStep], None] | None,
) -> FlexOptions:
    """Resolve the config against the model (ids, max length, schedules) and check the prompts."""
    mask_id = _config_value(model, "mask_token_id", mask_token_id)
    pad_id = _config_value(model, "pad_token_id", pad_token_id)
    if mask_id is None or pad_id is None:
        raise ValueError(
            "mask/pad token ids unknown: the model config has no mask_token_id/pad_token_id; "
            "pass mask_token_id= and pad_token_id="
        )
    max_length = _resolve_max_length(model, config.max_length)
    forbid = config.forbid_token_ids
    forbidden = {int(mask_id)} | ({int(pad_id)} if forbid is None else {int(i) for i in forbid})
    _check_prompts_fit(prefix_rows, suffix_rows, max_length, mask_id)
    if config.prefix_cache and not _accepts_logits_positions(model, "prefix_cache"):
        raise ValueError(f"prefix_cache: true needs a model whose forward takes prefix_cache= "
                         f"(a FlexMDM on a LLaDA backbone); {type(model).__name__} does not")
    run_device = _model_device(model, device)
    steps = config.steps
    insertion = _resolve_schedule(model, "insertion", config.insertion_schedule)
    unmasking = _resolve_schedule(model, "unmasking", config.unmasking_schedule)
    # Per-step arrival probabilities as Python floats (float64 maths), computed once.
    times = torch.arange(steps, dtype=torch.float64) / steps  # (steps,)
    alpha_one = float(insertion.at(torch.tensor(1.0, dtype=torch.float64)))
    one_minus_alpha = (1.0 - insertion.at(times)).clamp_min(1e-12)  # (steps,)
    arrival = ((alpha_one - insertion.at(times)) / one_minus_alpha).clamp(0.0, 1.0).tolist()
    return FlexOptions(
        config=config, steps=steps, confidence=config.confidence,
        temperature=float(config.temperature), top_p=float(config.top_p),
        window_alpha=config.window_alpha, max_window=config.max_window, max_length=max_length,
        stop_threshold=float(config.stop_threshold),
        forbidden=torch.tensor(sorted(forbidden), dtype=torch.long, device=run_device),
        mask_id=int(mask_id), pad_id=int(pad_id), seed=int(seed), fixed_buffer=config.fixed_buffer,
        device=run_device, insert_probability=_step_probabilities(insertion, steps),
        unmask_probability=_step_probabilities(unmasking, steps), arrival=arrival,
        insertion_draw=config.insertion_draw,
        absent=insertion.one_minus_at(torch.arange(steps + 1, dtype=torch.float64) / steps),
        pass_positions=_accepts_logits_positions(model), progress=progress, trace=trace,
    )


# ---------------------------------------------------------------------------------------------
# One batch: its state, its steps, its outputs
# ---------------------------------------------------------------------------------------------


def _run_batch(
    model: Callable[..., Any], prefixes: list[list[int]], suffixes: list[list[int]],
    row_ids: list[int], stream_ids: list[int], batch_index: int, options: FlexOptions,
) -> dict[str, Any]:
    """Run the FlexMDM sampler on one batch; returns per-row answers, full rows, steps, flags.

    Each iteration is one forward pass over the active rows, each at its own step (all rows in
    step unless jumps move some ahead): ``steps`` iterations, then the fill pass at t = 1.
    """
    batch = _start_batch(prefixes, suffixes, row_ids, stream_ids, batch_index, options)
    _emit_trace(batch, options, 0)
    progress_bar = _progress_bar(options.steps, options.progress, "flexmdm")
    iteration = 0
    while any(batch.active):
        slowest = min(batch.step_index[row] for row, on in enumerate(batch.active) if on)
        _retire_ended_rows(batch, options)
        if any(batch.active):
            _iterate(model, batch, options)
        iteration += 1
        done = [batch.step_index[row] for row, on in enumerate(batch.active) if on]
        progress_bar.update(max(0, min(min(done, default=options.steps), options.steps) - slowest))
        _emit_trace(batch, options, iteration)
    progress_bar.close()
    return _collect_outputs(batch, options)


def _start_batch(
    prefixes: list[list[int]], suffixes: list[list[int]], row_ids: list[int],
    stream_ids: list[int], batch_index: int, options: FlexOptions,
) -> BatchState:
    """The initial state: each row is its prefix followed by its suffix (an empty answer)."""
    device = options.device
    batch_size = len(prefixes)
    prefix_cpu = [len(p) for p in prefixes]
    suffix_cpu = [len(s) for s in suffixes]
    lengths_cpu = [p + s for p, s in zip(prefix_cpu, suffix_cpu)]
    # Live: as wide as the longest row (at least 1); fixed: max_length (the research layout).
    state_width = options.max_length if options.fixed_buffer else max(1, max(lengths_cpu))
    input_ids = torch.full((batch_size, state_width), options.pad_id, dtype=torch.long)
    for row, (prefix, suffix) in enumerate(zip(prefixes, suffixes)):
        input_ids[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        input_ids[row, len(prefix) : len(prefix) + len(suffix)] = torch.tensor(
            suffix, dtype=torch.long
        )
    return BatchState(
        input_ids=input_ids.to(device),
        lengths=torch.tensor(lengths_cpu, dtype=torch.long, device=device),
        lengths_cpu=lengths_cpu,
        prefix_len=torch.tensor(prefix_cpu, dtype=torch.long, device=device),
        suffix_len=torch.tensor(suffix_cpu, dtype=torch.long, device=device),
        prefix_cpu=prefix_cpu,
        suffix_cpu=suffix_cpu,
        generators=[_row_generator(options.seed, stream, device) for stream in stream_ids],
        active=[True] * batch_size,
        steps_taken=[0] * batch_size,
        truncated=torch.zeros(batch_size, dtype=torch.bool, device=device),
        row_ids=list(row_ids),
        batch_index=batch_index,
        step_index=[0] * batch_size,
    )


def _retire_ended_rows(batch: BatchState, options: FlexOptions) -> None:
    """Rows past the last step (t = 1) that hold no mask are done without a fill pass."""
    ended = [row for row, on in enumerate(batch.active) if on and batch.step_index[row] >= options.steps]
    if not ended:
        return
    live = _live_rows(batch, options)
    for row, n_mask in zip(live.rows, live.n_mask.tolist()):
        if batch.step_index[row] >= options.steps and n_mask == 0:
            batch.active[row] = False


def _iterate(model: Callable[..., Any], batch: BatchState, options: FlexOptions) -> None:
    """One forward pass: live rows -> plan unmask -> forward -> unmask -> insert or stop.

    A row at step n < steps takes an Euler step at t = n / steps (or a jump); a row at n = steps
    takes its fill pass at t = 1: every mask filled by argmax, nothing inserted, the row is done.
    (After the last step, with a schedule reaching alpha(1) = 1, every token still missing has
    arrived as a mask, so the rows that hold masks need this one more forward.)
    """
    live = _live_rows(batch, options)
    plan = _plan_unmask(live, batch, options)
    times = [1.0 if filling else step * (1.0 / options.steps)
             for step, filling in zip(live.step, live.filling_rows)]
    logits, gaps = _forward(model, live, plan.candidates, batch, options, times)
    if gaps is None and not all(live.filling_rows):
        raise ValueError(
            "the model returned no gaps: it is not a FlexMDM (kind 'mdm'?); use mdm_generate"
        )
    remaining_masks = _unmask(live, plan, logits, batch, options)
    for row, filling in zip(live.rows, live.filling_rows):
        batch.steps_taken[row] += 1
        if filling:
            batch.active[row] = False
    if not all(live.filling_rows):
        insert_or_stop(live, gaps, remaining_masks, batch, options)


def _live_rows(batch: BatchState, options: FlexOptions) -> LiveRows:
    """The active rows, cut to the live width (the longest active row, at least 1)."""
    device = options.device
    rows = [row for row, active in enumerate(batch.active) if active]
    index = torch.tensor(rows, dtype=torch.long, device=device)  # (A,)
    if options.fixed_buffer:
        width = options.max_length
    else:
        width = max(1, max(batch.lengths_cpu[row] for row in rows))
    ids = batch.input_ids[index, :width]  # (A, L) the live buffer
    lengths = batch.lengths[index]  # (A,)
    prefix = batch.prefix_len[index]  # (A,)
    middle_end = lengths - batch.suffix_len[index]  # (A,)
    positions = torch.arange(width, device=device)  # (L,)
    in_middle = (positions[None, :] >= prefix[:, None]) & (positions[None, :] < middle_end[:, None])
    is_mask = (ids == options.mask_id) & in_middle  # (A, L)
    step = [batch.step_index[row] for row in rows]
    filling_rows = [n >= options.steps for n in step]
    return LiveRows(rows=rows, index=index, width=width, ids=ids, lengths=lengths, prefix=prefix,
                    middle_end=middle_end, is_mask=is_mask, n_mask=is_mask.sum(dim=1), step=step,
                    filling=torch.tensor(filling_rows, dtype=torch.bool, device=device),
                    filling_rows=filling_rows)


def _plan_unmask(live: LiveRows, batch: BatchState, options: FlexOptions) -> UnmaskPlan:
    """How many masks to unmask, drawn before the forward (it decides where logits run).

    k ~ Poisson(n_mask * p_beta(t)) clamped to the eligible masks; candidates are the first
    ``window`` masks left to right (every mask without a window); rows with k = 0 need no logits.
    With ``unmask_threshold`` every eligible mask needs logits (its confidence decides). Rows in
    their fill pass unmask every mask (and draw nothing).
    """
    n_mask = live.n_mask
    probability = torch.tensor(
        [0.0 if filling else options.unmask_probability[step]
         for step, filling in zip(live.step, live.filling_rows)],
        dtype=torch.float64, device=options.device,
    )  # (A,)
    rates = n_mask.double() * probability  # (A,)
    k = torch.cat(
        [
            rates.new_zeros(1) if live.filling_rows[i]
            else torch.poisson(rates[i : i + 1], generator=batch.generators[row])
            for i, row in enumerate(live.rows)
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
    mask_rank = live.is_mask.long().cumsum(dim=1) - 1  # (A, L) rank among the row's masks
    ranked = live.is_mask & (mask_rank < window[:, None]) & (k > 0)[:, None]
    candidates = ranked
    if options.config.unmask_threshold is not None:
        eligible = live.is_mask  # (A, L): every mask, or the first max_window of them
        if options.max_window is not None:
            eligible = eligible & (mask_rank < options.max_window)
        candidates = ranked | eligible
    if any(live.filling_rows):
        filling = live.filling[:, None]  # (A, 1)
        k = torch.where(live.filling, n_mask, k)
        ranked = torch.where(filling, live.is_mask, ranked)
        candidates = torch.where(filling, live.is_mask, candidates)
    return UnmaskPlan(k=k, candidates=candidates, ranked=ranked)


def _forward(
    model: Callable[..., Any], live: LiveRows, candidates: Tensor, batch: BatchState,
    options: FlexOptions, times: list[float],
) -> tuple[Tensor, Tensor | None]:
    """One forward pass on the live rows at their times (A,): logits (N, V) at the candidates
    (A, L) and gaps (A, L + 1) (None from a model without an insertion head)."""
    t_batch = torch.tensor(times, dtype=torch.float32, device=options.device)  # (A,)
    logits, gaps = _call_model(
        model, live.ids, live.lengths, t_batch, candidates, options.pass_positions,
        _prefix_cache(live, batch, options),
    )
    batch.forward_passes += 1
    return logits, gaps


def _prefix_cache(live: LiveRows, batch: BatchState, options: FlexOptions) -> PrefixCache | None:
    """This forward's prefix cache (``prefix_cache`` mode, else None).

    The cached prefix is the batch's shortest protected prefix (prompt, infilling: prefix), whose
    positions never move. A new cache is recorded by the first forward and every
    ``prefix_cache_refresh`` forwards (a full forward, exact); the others reuse it for the live
    rows (rows only ever leave a batch).
    """
    if not options.config.prefix_cache or min(batch.prefix_cpu) == 0:
        return None
    refresh = options.config.prefix_cache_refresh
    if batch.cache is None or (refresh is not None and batch.cache_age >= refresh):
        batch.cache = PrefixCache(min(batch.prefix_cpu))
        batch.cache_rows, batch.cache_age = live.rows, 1
        return batch.cache
    batch.cache_age += 1
    if batch.cache_rows != live.rows:
        keep = [batch.cache_rows.index(row) for row in live.rows]
        batch.cache = batch.cache.select(torch.tensor(keep, dtype=torch.long, device=options.device))
        batch.cache_rows = live.rows
    return batch.cache


def _unmask(live: LiveRows, plan: UnmaskPlan, logits: Tensor, batch: BatchState,
            options: FlexOptions) -> Tensor:
    """Fill the selected masks of each row (fill pass: every mask, by argmax); returns the masks
    left (A,)."""
    if logits.shape[0] == 0:
        return live.n_mask
    logits = logits.float()  # (N, V); a fresh tensor of the LM head: filled in place
    logits.index_fill_(-1, options.forbidden, float("-inf"))
    candidates = plan.candidates
    if all(live.filling_rows):
        selected = candidates
    else:
        selected = _select(live, plan, logits, options)
        if any(live.filling_rows):
            selected = torch.where(live.filling[:, None], candidates, selected)
    candidate_index = candidates.flatten().long().cumsum(0) - 1  # (A * L,)
    chosen_logits = logits[candidate_index[selected.flatten()]]  # (K, V)
    tokens = chosen_logits.argmax(dim=-1)  # (K,)
    if options.temperature > 0.0 and not all(live.filling_rows):
        sampled = selected & ~live.filling[:, None]  # (A, L): the fill pass keeps the argmax
        per_row = sampled.sum(dim=1).tolist()
        uniforms = torch.cat(
            [
                torch.rand(count, generator=batch.generators[row], dtype=torch.float64,
                           device=options.device)
                for count, row, filling in zip(per_row, live.rows, live.filling_rows)
                if not filling
            ]
        )
        in_sample = sampled[selected]  # (K,) which chosen masks are sampled
        tokens[in_sample] = _sample_tokens(chosen_logits[in_sample], options.temperature,
                                           options.top_p, uniforms)
    ids = live.ids.masked_scatter(selected, tokens)
    batch.input_ids[live.index, : live.width] = ids
    return live.n_mask - selected.sum(dim=1)


def _select(live: LiveRows, plan: UnmaskPlan, logits: Tensor, options: FlexOptions) -> Tensor:
    """The masks to unmask (A, L): the k most confident of ``ranked`` (the leftmost k for
    ``position``), plus with ``unmask_threshold`` every candidate whose top-1 probability passes it.

    logits: (N, V) at the candidates, forbidden tokens at -inf.
    """
    candidates, ranked = plan.candidates, plan.ranked
    if options.confidence == "position":
        selected = ranked
    else:
        scores = torch.full(live.ids.shape, float("-inf"), device=options.device)  # (A, L)
        scores[candidates] = _confidence(logits, options.confidence)
        if ranked is not candidates:
            scores = scores.masked_fill(~ranked, float("-inf"))
        selected = _select_top_k(scores, plan.k) & ranked
    threshold = options.config.unmask_threshold
    if threshold is None:
        return selected
    top_prob = torch.zeros(live.ids.shape, device=options.device)  # (A, L)
    top_prob[candidates] = _confidence(logits, "top_prob")
    return selected | (candidates & (top_prob >= threshold))


def _emit_trace(batch: BatchState, options: FlexOptions, iteration: int) -> None:
    """Report the batch's state after ``iteration`` forward passes to the trace callback (if any).

    ``t``: the iteration's nominal time (iteration / steps; 1 for the fill pass), each row's own
    time when jumps moved rows apart is in ``row_t``."""
    if options.trace is None:
        return
    device = options.device
    positions = torch.arange(batch.input_ids.shape[1], device=device)
    middle = (positions[None, :] >= batch.prefix_len[:, None]) & (
        positions[None, :] < (batch.lengths - batch.suffix_len)[:, None]
    )
    n_mask = ((batch.input_ids == options.mask_id) & middle).sum(dim=1).tolist()
    answer_lengths = (batch.lengths - batch.prefix_len - batch.suffix_len).tolist()
    options.trace(
        TraceStep(
            batch_index=batch.batch_index,
            step=iteration,
            t=1.0 if iteration > options.steps else iteration * (1.0 / options.steps),
            row_ids=list(batch.row_ids),
            lengths=answer_lengths,
            n_clean=[a - m for a, m in zip(answer_lengths, n_mask)],
            n_mask=n_mask,
            active=list(batch.active),
            row_t=[min(n, options.steps) * (1.0 / options.steps) for n in batch.step_index],
        )
    )


def _collect_outputs(batch: BatchState, options: FlexOptions) -> dict[str, Any]:
    """Per-row answers (the middle), full rows, steps taken, truncation flags, forward passes."""
    answers, full = [], []
    rows = batch.input_ids.tolist()
    for row in range(len(rows)):
        sequence = rows[row][: batch.lengths_cpu[row]]
        middle = sequence[batch.prefix_cpu[row] : batch.lengths_cpu[row] - batch.suffix_cpu[row]]
        if options.mask_id in middle:  # cannot happen: the fill pass fills every mask
            raise RuntimeError("internal error: a mask survived the fill pass")
        answers.append(middle)
        full.append(sequence)
    return {
        "answers": answers,
        "full": full,
        "steps": batch.steps_taken,
        "truncated": batch.truncated.tolist(),
        "forward_passes": batch.forward_passes,
    }
