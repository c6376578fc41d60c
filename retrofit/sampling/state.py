"""The FlexMDM sampler's state: settings resolved for one call, a batch's rows, one iteration's view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from retrofit.models.prefix_cache import PrefixCache

from .config import FlexMDMSamplingConfig
from .results import TraceStep


@dataclass
class FlexOptions:
    """Validated FlexMDM sampling settings shared by all batches of one call, with what they
    resolve to for this model (ids, max length, per-step probabilities as Python floats;
    ``absent``: (steps + 1,) float64 1 - alpha(n / steps), for the arrival probability of a jump)."""

    config: FlexMDMSamplingConfig
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
    insertion_draw: str
    absent: Tensor
    pass_positions: bool
    progress: bool
    trace: Callable[[TraceStep], None] | None


@dataclass
class BatchState:
    """The sampling state of one batch of B rows (right-padded, explicit lengths).

    input_ids: (B, W) with W >= every row's length; lengths: (B,) prompt + answer (+ suffix);
    prefix_len / suffix_len: (B,) the protected tokens before / after the answer. ``*_cpu`` mirror
    the lengths as Python ints (no device sync per step). ``step_index``: each row's own step n
    (its time is n / steps; rows advance together unless a jump moves one ahead, and a row at
    n = steps is in its fill pass). ``cache`` (``prefix_cache`` mode): the recorded prefix
    keys/values of the batch rows ``cache_rows``, ``cache_age`` forward passes old.
    """

    input_ids: Tensor
    lengths: Tensor
    lengths_cpu: list[int]
    prefix_len: Tensor
    suffix_len: Tensor
    prefix_cpu: list[int]
    suffix_cpu: list[int]
    generators: list[torch.Generator]
    active: list[bool]
    steps_taken: list[int]
    truncated: Tensor
    row_ids: list[int]
    batch_index: int
    forward_passes: int = 0
    step_index: list[int] = field(default_factory=list)
    cache: PrefixCache | None = None
    cache_rows: list[int] = field(default_factory=list)
    cache_age: int = 0


@dataclass
class LiveRows:
    """The rows still sampling in this iteration, cut to the live width L (or max_length when
    fixed).

    rows: their indices in the batch; index: (A,) the same as a tensor; ids: (A, L);
    lengths, prefix, middle_end: (A,); is_mask: (A, L) masks of the answer; n_mask: (A,);
    step: each row's step n; filling: (A,) bool, rows in their fill pass (n = steps), with
    ``filling_rows`` the same as a list.
    """

    rows: list[int]
    index: Tensor
    width: int
    ids: Tensor
    lengths: Tensor
    prefix: Tensor
    middle_end: Tensor
    is_mask: Tensor
    n_mask: Tensor
    step: list[int]
    filling: Tensor
    filling_rows: list[bool]


@dataclass
class UnmaskPlan:
    """How many masks each live row unmasks at least (k: (A,)), among which masks they are the
    most confident (ranked: (A, L) bool), and where logits are needed (candidates: (A, L) bool,
    ``ranked`` plus, with ``unmask_threshold``, every eligible mask)."""

    k: Tensor
    candidates: Tensor
    ranked: Tensor
