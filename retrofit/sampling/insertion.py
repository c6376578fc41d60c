"""The FlexMDM sampler's insert-or-stop phase: early stop, the insertion draw, jumps, the insertion.

See :mod:`retrofit.sampling.flexmdm` for the method (the two draws and their derivation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .blocks import cap_insertions, insert_masks
from .state import BatchState, FlexOptions, LiveRows

__all__ = ["insert_or_stop"]


def insert_or_stop(live: LiveRows, gaps: Tensor, remaining_masks: Tensor, batch: BatchState,
                   options: FlexOptions) -> None:
    """Stop the stepping rows that are done; draw and insert the others' new masks; advance each
    row's step (``batch.step_index``).

    Rows in their fill pass take no part. A row stops once it holds no mask and expects fewer than
    ``stop_threshold`` insertions over the rest of the run. The others draw the arrivals of their
    step (``poisson``: e_j ~ Poisson(ghat_j p) per slot; ``binomial``: :func:`binomial_arrivals`),
    or, after a jump (:func:`jump_windows`), of the steps until the first arrival, capped to
    ``max_length``. gaps: (A, L + 1); remaining_masks: (A,).
    """
    width = live.width
    gaps = gaps[:, : width + 1].double().clamp_min(0)  # (A, L + 1)
    slots = torch.arange(width + 1, device=options.device)  # (L + 1,)
    allowed = (slots[None, :] >= live.prefix[:, None]) & (
        slots[None, :] <= live.middle_end[:, None]
    )  # (A, L + 1): the answer's slots only
    expected_gaps = torch.where(allowed, gaps, 0.0)
    arrival = torch.tensor([options.arrival[min(n, options.steps - 1)] for n in live.step],
                           dtype=torch.float64, device=options.device)  # (A,)
    expected_remaining = expected_gaps.sum(dim=1) * arrival  # (A,)
    finished = ((remaining_masks == 0) & (expected_remaining < options.stop_threshold)).tolist()
    drawing = []
    for i, row in enumerate(live.rows):
        if live.filling_rows[i]:
            allowed[i] = False
        elif finished[i]:
            allowed[i] = False
            batch.active[row] = False
        else:
            drawing.append(i)
    if not drawing:
        for i, row in enumerate(live.rows):
            batch.step_index[row] = live.step[i] + 1
        return
    windows = jump_windows(expected_gaps, remaining_masks, drawing, live.step, options)
    generators = [batch.generators[live.rows[i]] for i in drawing]
    if options.insertion_draw == "poisson":
        counts, advance = poisson_arrivals(expected_gaps, allowed, drawing, windows, live.step,
                                           generators, options)
    else:
        horizons = _horizons(windows, live.step, drawing, options)
        counts, advance = binomial_arrivals(expected_gaps, drawing, horizons, windows, generators)
    for i, row in enumerate(live.rows):
        batch.step_index[row] = live.step[i] + int(advance[i])
    apply_insertions(live, counts, batch, options)


def jump_windows(expected_gaps: Tensor, remaining_masks: Tensor, drawing: list[int],
                 steps: list[int], options: FlexOptions) -> list[int]:
    """How many steps ahead each row may draw its arrivals (1 = an ordinary step).

    With ``jump_insertions``, a drawing row that holds no mask may look up to the furthest step m
    at which it expects at most that many arrivals, ``G (alpha(t_m) - alpha(t)) / (1 - alpha(t))``
    with ``G = sum_j ghat_j`` (exact for the interval). The row then takes the arrivals of the steps
    up to the first one in which a token arrives (the steps before it change nothing, so the model
    would be asked the same question again), so the model sees every arrival as in the exact
    sampler. Returns one window per row (A,); rows that do not draw get 1.
    """
    windows = [1] * expected_gaps.shape[0]
    budget = options.config.jump_insertions
    if budget is None:
        return windows
    totals = expected_gaps.sum(dim=1).tolist()  # (A,) G
    masks_left = remaining_masks.tolist()
    for i in drawing:
        if masks_left[i] > 0:
            continue
        ahead = _ahead_probabilities(steps[i], options)  # (steps - n,) rising
        windows[i] = max(1, int((totals[i] * ahead <= budget).sum()))
    return windows


def _ahead_probabilities(step: int, options: FlexOptions) -> Tensor:
    """(steps - n,) float64: the probability that a token missing at step n arrives within the
    next 1, 2, ... steps, ``1 - (1 - alpha(t_m)) / (1 - alpha(t_n))``."""
    absent = options.absent  # (steps + 1,) 1 - alpha(t)
    ahead = 1.0 - absent[step + 1 :] / absent[step].clamp_min(1e-300)
    return ahead.nan_to_num(1.0).clamp(0.0, 1.0)


def _horizons(windows: list[int], steps: list[int], drawing: list[int], options: FlexOptions
              ) -> Tensor:
    """(A, H) float64 cumulative arrival probabilities over each row's window, padded with its last
    value (H = the longest window); an ordinary step is the one value ``p_alpha(t_n)``."""
    longest = max(windows[i] for i in drawing)
    horizons = torch.zeros((len(windows), longest), dtype=torch.float64, device=options.device)
    for i in drawing:
        if windows[i] == 1:
            horizons[i] = options.insert_probability[steps[i]]
        else:
            ahead = _ahead_probabilities(steps[i], options)[: windows[i]].to(options.device)
            horizons[i, : windows[i]] = ahead
            horizons[i, windows[i] :] = ahead[-1]
    return horizons


def binomial_arrivals(expected_gaps: Tensor, drawing: list[int], horizons: Tensor,
                      windows: list[int], generators: list[torch.Generator]
                      ) -> tuple[Tensor, list[int]]:
    """Arrivals per slot under the ``binomial`` draw, over one step or a jump window.

    expected_gaps: (A, S) float64 ghat_j, zero outside each row's answer slots; drawing: the rows
    that draw (others get zeros); horizons: (A, H) the chance that a missing token arrives within
    the next 1..H steps (constant beyond a row's window); windows: (A,) each row's window in steps
    (1 for an ordinary step); generators: one per drawing row.
    Row i: the missing count N = stochastic rounding of G = sum_j ghat_j (E[N] = G, variance at
    most 1/4); each of the N tokens arrives in the step given by its uniform u (the number of
    horizons <= u; none within the window when u >= the last), in slot j with probability
    ghat_j / G (inverse CDF). Only the tokens of the first step with an arrival are taken. Every
    row takes 1 + 2 ceil(G) uniforms from its own generator (shapes depend on the row alone), the
    rest is batched. Returns counts (A, S) long and each row's advance in steps: the step of its
    first arrival + 1, or its whole window when nothing arrives.
    """
    device = expected_gaps.device
    cdf = expected_gaps.cumsum(dim=1)  # (A, S)
    totals = cdf[:, -1]  # (A,) G
    trials = torch.ceil(totals).long()  # (A,) ceil(G) >= N
    sizes = (1 + 2 * trials[drawing]).tolist()
    width = max(sizes) // 2  # most trials of a row
    flat = torch.cat([
        torch.rand(size, generator=generator, dtype=torch.float64, device=device)
        for size, generator in zip(sizes, generators)
    ])  # per row: [rounding u, c trial u, c slot u]
    # Lay each row's uniforms out as (A, 1 + 2 width): column 0, trials 1.., slots 1 + width..
    rows = torch.tensor(drawing, dtype=torch.long, device=device)
    size_tensor = torch.tensor(sizes, dtype=torch.long, device=device)
    row_of = torch.repeat_interleave(rows, size_tensor)  # (T,)
    starts = torch.repeat_interleave(size_tensor.cumsum(0) - size_tensor, size_tensor)
    offset = torch.arange(flat.numel(), device=device) - starts  # (T,) position within its row
    row_trials = trials[row_of]
    column = torch.where(offset <= row_trials, offset, offset - row_trials + width)
    uniforms = torch.ones((expected_gaps.shape[0], 1 + 2 * width), dtype=torch.float64,
                          device=device)
    uniforms[row_of, column] = flat
    whole = torch.floor(totals)
    missing = whole + (uniforms[:, 0] < totals - whole).double()  # (A,) N, E[N] = G
    is_drawing = torch.zeros_like(totals, dtype=torch.bool)
    is_drawing[rows] = True
    window = torch.tensor(windows, dtype=torch.long, device=device)  # (A,)
    arrives_in = torch.searchsorted(horizons, uniforms[:, 1 : 1 + width].contiguous(), right=True)
    trial_index = torch.arange(width, device=device)  # (W,)
    arrived = ((trial_index[None, :] < missing[:, None]) & is_drawing[:, None]
               & (arrives_in < horizons.shape[1]))  # (A, W)
    first = torch.where(arrived, arrives_in, horizons.shape[1]).min(dim=1).values  # (A,)
    taken = arrived & (arrives_in == first[:, None])
    advance = torch.where(first < horizons.shape[1], first + 1, window)  # (A,)
    targets = uniforms[:, 1 + width :] * totals[:, None]  # (A, W) in [0, G)
    slots = torch.searchsorted(cdf, targets.contiguous(), right=True)
    slots = slots.clamp_max(expected_gaps.shape[1] - 1)
    counts = torch.zeros(expected_gaps.shape, dtype=torch.long, device=device)
    return counts.scatter_add_(1, slots, taken.long()), advance.tolist()


def poisson_arrivals(expected_gaps: Tensor, allowed: Tensor, drawing: list[int], windows: list[int],
                     steps: list[int], generators: list[torch.Generator], options: FlexOptions
                     ) -> tuple[Tensor, list[int]]:
    """Arrivals per slot under the paper's ``poisson`` draw: e_j ~ Poisson(ghat_j p_alpha(t_n))
    per answer slot, step after step through a row's window until one with an arrival.

    expected_gaps: (A, S) float64; allowed: (A, S) bool answer slots of the drawing rows. Returns
    counts (A, S) long and each row's advance in steps.
    """
    counts = torch.zeros(allowed.shape, dtype=torch.long, device=options.device)
    advance = [1] * allowed.shape[0]
    draws = []
    for i, generator in zip(drawing, generators):
        for ahead in range(windows[i]):
            probability = options.insert_probability[steps[i] + ahead]
            draw = torch.poisson(expected_gaps[i, allowed[i]] * probability, generator=generator)
            if ahead == windows[i] - 1 or bool(draw.any()):
                break
        advance[i] = ahead + 1
        draws.append(draw)
    counts[allowed] = torch.cat(draws).long()
    return counts, advance


def apply_insertions(live: LiveRows, counts: Tensor, batch: BatchState, options: FlexOptions
                     ) -> None:
    """Insert ``counts`` (A, L + 1) masks into the live rows, capped to ``max_length``."""
    counts, cut = cap_insertions(counts, options.max_length - live.lengths)
    batch.truncated[live.index] |= cut
    full_counts = torch.zeros(
        (len(batch.active), batch.input_ids.shape[1] + 1), dtype=torch.long, device=options.device
    )
    full_counts[live.index, : live.width + 1] = counts
    batch.input_ids, batch.lengths = insert_masks(
        batch.input_ids,
        batch.lengths,
        full_counts,
        mask_token_id=options.mask_id,
        pad_token_id=options.pad_id,
        width=options.max_length if options.fixed_buffer else None,
    )
    batch.lengths_cpu = batch.lengths.tolist()
