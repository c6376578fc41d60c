"""FlexMDM forward process: sample x_t (insertions + masks) from clean sequences x1.

Time t runs from 0 (empty answer) to 1 (data). For every non-protected token i of x1 (length n):

- insertion time   ``T1_i = alpha^-1(U)``, U ~ Uniform[0, 1), clamped to ``T1 >= 1e-6``
- unmasking time   ``T2_i = beta^-1(U' (1 - beta(T1)) + beta(T1))`` (general form; T2 >= T1)
- at time t the token is absent if t < T1, a mask if T1 <= t < T2, itself if t >= T2.

Draws beyond a schedule's range never happen within [0, 1]: ``U > alpha(1)`` gives ``T1 = +inf``
and ``U' (1 - beta(T1)) + beta(T1) > beta(1)`` gives ``T2 = +inf``. This only matters for schedules
with a(1) < 1 (``geometric``: ~1% of tokens stay absent at t = 1 for s1 = 0.01) and keeps the
marginals exact on all of [0, 1]: ``P(present) = alpha(t)``,
``P(clean) = int_0^t alpha'(s) (beta(t) - beta(s)) / (1 - beta(s)) ds`` (plus the mass
``alpha(0) (beta(t) - beta(0)) / (1 - beta(0))`` of the draws below alpha(0), which are inserted
at t = 1e-6).

Protected tokens (prompt prefix; for infilling prefix + boundary markers + suffix) are always
present and clean. x_t is the order-preserving compaction of the present tokens; it has ``l + 1``
insertion slots, slot j < l being the gap just before position j and slot l the trailing gap, with
``gap_counts[j]`` = number of absent x1 tokens there (``g_j = s[j] - s[j-1] - 1`` with
``s[-1] = -1``, ``s[l] = n``; ``sum_j g_j = n - l``). Example: x1 = (a b c d e), absent {b, c, e}
-> x_t = (a d), gaps = (0, 2, 1).

Empty rows: a row of length 0 is allowed and gives l = 0 with one slot holding g = 0 (useful for
unconditional rows after filtering); a batch with zero rows is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from retrofit.schedules import Schedule, get_schedule

__all__ = [
    "MIN_INSERTION_TIME",
    "NoisedBatch",
    "build_noised_batch",
    "fit_width",
    "forward_process",
    "gap_counts_from_keep",
    "random_strata",
    "sample_times",
]

# Smallest insertion time: at t = 0 every non-protected token is absent, even for a draw U = 0.
MIN_INSERTION_TIME = 1e-6


@dataclass
class NoisedBatch:
    """A batch of noised sequences x_t with everything the FlexMDM loss needs.

    ``L'`` is the trimmed length ``max(lengths)`` (0 when every x_t is empty, e.g. at t = 0).
    """

    input_ids: Tensor  # (B, L') long: x_t, mask id at masked positions, pad_token_id beyond lengths
    lengths: Tensor  # (B,) long: len(x_t)
    is_mask: Tensor  # (B, L') bool: x_t position holds the mask token
    targets: Tensor  # (B, L') long: the clean x1 token at each x_t position, pad beyond lengths
    gap_counts: Tensor  # (B, L'+1) long: absent x1 tokens in slot j (j <= lengths); 0 beyond
    protected: Tensor  # (B, L') bool: x_t position holds a protected token
    t: Tensor  # (B,) float: the time each row was noised at

    def to(self, device: torch.device | str) -> NoisedBatch:
        """Return a copy with every tensor moved to ``device``."""
        return NoisedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def num_noised_tokens(self) -> Tensor:
        """(B,) long: non-protected x1 tokens per row = (present - protected) + absent."""
        return self.lengths - self.protected.sum(dim=1) + self.gap_counts.sum(dim=1)

    def shard(
        self, index: int, count: int, *, pad_token_id: int, width: int | None = None
    ) -> NoisedBatch:
        """Block ``index`` of ``count`` equal contiguous row blocks (a rank's rows, or one
        micro-batch of a noised global batch), cut (or right-padded) to ``width`` positions, by
        default its own longest x_t (``gap_counts`` to ``width + 1`` slots). Padding uses
        ``pad_token_id`` for ids and targets, False for flags and 0 for gap counts. Returns
        (B / count, width) tensors."""
        per_block = self.lengths.shape[0] // count
        rows = slice(index * per_block, (index + 1) * per_block)
        lengths = self.lengths[rows]  # (B / count,)
        width = int(lengths.max()) if width is None else width
        return NoisedBatch(
            input_ids=fit_width(self.input_ids[rows], width, pad_token_id),
            lengths=lengths,
            is_mask=fit_width(self.is_mask[rows], width, False),
            targets=fit_width(self.targets[rows], width, pad_token_id),
            gap_counts=fit_width(self.gap_counts[rows], width + 1, 0),
            protected=fit_width(self.protected[rows], width, False),
            t=self.t[rows],
        )


def fit_width(tensor: Tensor, width: int, value: int | bool) -> Tensor:
    """A (B, L) tensor cut to its first ``width`` columns, or right-padded with ``value`` to them."""
    tensor = tensor[:, :width]
    missing = width - tensor.shape[1]
    if missing <= 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, missing), value=value)


def sample_times(
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    stratified: bool = False,
    rank: int = 0,
    world_size: int = 1,
    eps: float = 1e-3,
) -> Tensor:
    """Draw FlexMDM training times ``t = (1 - eps) u + eps``, u in [0, 1).  Returns (B,) float32.

    With ``stratified=True`` u is low-discrepancy across the global batch: on rank r of W with
    batch B, ``u_i = (pi(i) + r B + U_i) / (B W)``, so the B * W times of one step cover [0, 1)
    with exactly one draw per stratum of width 1 / (B W). ``pi`` is a random permutation drawn
    from ``generator`` (:func:`random_strata`): which row gets which stratum is random, so t is
    independent of the row's position, hence of its length in length-bucketed batches (sorted by
    length), where "row i gets stratum i" made t follow the length. For B a power of two the
    permutation is also balanced: every aligned block of 2^k rows (a micro-batch of 2^k rows, the
    rows of one rank) holds one stratum in each 1 / 2^k of [0, 1).

    The trainer draws the times of the whole global batch at once (``rank=0, world_size=1``).
    Per-rank use (``rank``, ``world_size``) keeps rank r on the strata block r; pass the same
    ``world_size`` on every rank and a generator seeded differently per rank (or the same seed:
    strata differ, only offsets repeat).
    """
    _check_time_args(batch_size, rank, world_size, eps)
    sample_device = generator.device if generator is not None else device
    uniform = torch.rand(batch_size, generator=generator, device=sample_device)  # (B,)
    if stratified:
        strata = random_strata(batch_size, generator=generator, device=sample_device)  # (B,)
        offsets = strata.to(device=uniform.device, dtype=torch.float32)
        uniform = (offsets + rank * batch_size + uniform) / (batch_size * world_size)
        # Rounding can push (B W - 1 + U) / (B W) onto 1.0; keep u < 1 as in the plain case.
        uniform = uniform.clamp(max=1.0 - 2.0**-24)
    times = (1.0 - eps) * uniform + eps
    return times.to(device) if device is not None else times


def random_strata(
    size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(size,) long: a random permutation ``pi`` of 0..size-1 assigning strata to rows.

    For ``size = 2^m``: the bit-reversal permutation (row i -> i's m bits reversed: every aligned
    block of 2^k rows covers the 2^k coarse strata blocks once) with Owen's nested random digit
    scrambling (each bit flipped by a random bit chosen by the bits above it), which keeps that
    balance and makes every row's stratum uniform over 0..size-1. Other sizes: a uniformly random
    permutation.
    """
    bits = size.bit_length() - 1
    if size != 1 << bits:
        return torch.randperm(size, generator=generator, device=device)
    rows = torch.arange(size, device=device)
    reversed_rows = torch.zeros_like(rows)
    for bit in range(bits):
        reversed_rows |= ((rows >> bit) & 1) << (bits - 1 - bit)
    strata = torch.zeros_like(rows)
    for level in range(bits):  # most significant digit first
        shift = bits - 1 - level
        flips = torch.randint(0, 2, (1 << level,), generator=generator, device=device)
        prefix = reversed_rows >> (shift + 1)  # the digits above this one (before scrambling)
        strata |= (((reversed_rows >> shift) & 1) ^ flips[prefix]) << shift
    return strata


def _check_time_args(batch_size: int, rank: int, world_size: int, eps: float) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")


def _check_int_tensor(name: str, tensor: object) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(
            f"{name} must hold integer token ids/counts (e.g. torch.long), got dtype {tensor.dtype}"
        )
    return tensor


def _validate_batch(
    x1: Tensor, lengths: Tensor, protected: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes/dtypes/ranges; return ``(lengths long, protected bool, valid (B, L) bool)``."""
    _check_int_tensor("x1", x1)
    if x1.dim() != 2:
        raise ValueError(f"x1 must be (batch, length) token ids, got shape {tuple(x1.shape)}")
    batch_size, buffer_length = x1.shape
    if batch_size == 0:
        raise ValueError("x1 is an empty batch (0 rows); pass at least one row")
    _check_int_tensor("lengths", lengths)
    if lengths.shape != (batch_size,):
        raise ValueError(
            f"lengths must have shape ({batch_size},) to match x1 {tuple(x1.shape)}, "
            f"got {tuple(lengths.shape)}"
        )
    lengths = lengths.to(device=x1.device, dtype=torch.long)
    if bool((lengths < 0).any()):
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    if bool((lengths > buffer_length).any()):
        raise ValueError(
            f"lengths must be <= the buffer length {buffer_length} of x1, got max "
            f"{int(lengths.max())}; pad x1 to at least max(lengths)"
        )
    positions = torch.arange(buffer_length, device=x1.device)
    valid = positions[None, :] < lengths[:, None]  # (B, L)
    if protected is None:
        protected = torch.zeros_like(valid)
    else:
        if not isinstance(protected, Tensor):
            raise TypeError(f"protected must be a torch.Tensor, got {type(protected).__name__}")
        if protected.shape != x1.shape:
            raise ValueError(
                f"protected must have the shape of x1 {tuple(x1.shape)}, got "
                f"{tuple(protected.shape)}"
            )
        if protected.dtype != torch.bool:
            raise ValueError(f"protected must be a bool tensor, got dtype {protected.dtype}")
        protected = protected.to(x1.device)
        beyond = protected & ~valid
        if bool(beyond.any()):
            rows = torch.nonzero(beyond.any(dim=1)).flatten().tolist()
            raise ValueError(
                f"protected marks positions at or beyond the row length in rows {rows[:10]}; "
                "positions >= lengths must be False"
            )
    return lengths, protected, valid


def _validate_times(t: Tensor | float, batch_size: int, device: torch.device) -> Tensor:
    """Return t as a (B,) float tensor on ``device`` after checking shape and range."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.full((batch_size,), float(t), device=device)
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a (B,) float tensor or a float, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"t must be a float tensor, got dtype {t.dtype}")
    if t.shape != (batch_size,):
        raise ValueError(
            f"t must have shape ({batch_size},) (one time per row), got {tuple(t.shape)}"
        )
    t = t.to(device)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(
            f"t must lie in [0, 1] (FlexMDM time: 0 = empty answer, 1 = data), got min "
            f"{float(t.min())} max {float(t.max())}"
        )
    return t


def gap_counts_from_keep(
    keep_mask: Tensor, lengths: Tensor, num_slots: int | None = None
) -> Tensor:
    """Count the absent x1 tokens in every slot of the compacted sequence.

    ``keep_mask``: (B, L) bool, True where an x1 token is present in x_t (positions >= lengths are
    ignored). ``lengths``: (B,) x1 lengths. Returns (B, num_slots) long, ``num_slots`` defaulting to
    ``max(l) + 1``: slot j < l counts the absent tokens just before x_t position j, slot l the
    trailing ones; slots beyond a row's l are 0. Each absent token lands in the slot given by the
    number of kept tokens before it (an exclusive cumulative sum), so the whole batch is one
    ``scatter_add``.
    """
    if keep_mask.dim() != 2 or keep_mask.dtype != torch.bool:
        raise ValueError(
            f"keep_mask must be a (B, L) bool tensor, got {keep_mask.dtype} "
            f"{tuple(keep_mask.shape)}"
        )
    buffer_length = keep_mask.shape[1]
    positions = torch.arange(buffer_length, device=keep_mask.device)
    valid = positions[None, :] < lengths.to(keep_mask.device)[:, None]  # (B, L)
    keep = keep_mask & valid  # (B, L)
    absent = valid & ~keep_mask  # (B, L)
    kept_before = torch.cumsum(keep.long(), dim=1) - keep.long()  # (B, L) exclusive cumsum
    new_lengths = keep.sum(dim=1)  # (B,)
    if num_slots is None:
        num_slots = int(new_lengths.max()) + 1 if keep.shape[0] > 0 else 1
    gaps = torch.zeros(keep.shape[0], num_slots, dtype=torch.long, device=keep.device)
    slot = kept_before.clamp(max=num_slots - 1)  # only present/invalid positions could exceed it
    gaps.scatter_add_(1, slot, absent.long())
    return gaps


def build_noised_batch(
    x1: Tensor,
    lengths: Tensor,
    protected: Tensor | None,
    t: Tensor | float,
    keep_mask: Tensor,
    mask_mask: Tensor,
    *,
    mask_token_id: int,
    pad_token_id: int,
) -> NoisedBatch:
    """Deterministic half of :func:`forward_process`: compact x1 given which tokens are kept.

    ``x1``: (B, L) ids; ``lengths``: (B,); ``protected``: (B, L) bool or None; ``t``: (B,) or float.
    ``keep_mask``: (B, L) bool, True for x1 tokens present in x_t; ``mask_mask``: (B, L) bool, True
    for present tokens shown as the mask token. Protected tokens are always kept and never masked,
    positions >= lengths are ignored. The compaction keeps order: x_t position j holds x1 token
    ``s[j]``, the j-th kept index; it is computed with a cumulative sum and one indexed write.
    """
    lengths, protected, valid = _validate_batch(x1, lengths, protected)
    t = _validate_times(t, x1.shape[0], x1.device)
    for name, flags in (("keep_mask", keep_mask), ("mask_mask", mask_mask)):
        if not isinstance(flags, Tensor) or flags.dtype != torch.bool or flags.shape != x1.shape:
            raise ValueError(f"{name} must be a bool tensor of shape {tuple(x1.shape)}")
    return _compact(
        x1,
        lengths,
        protected,
        valid,
        t,
        keep_mask.to(x1.device),
        mask_mask.to(x1.device),
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
    )


def _compact(
    x1: Tensor,
    lengths: Tensor,
    protected: Tensor,
    valid: Tensor,
    t: Tensor,
    keep_mask: Tensor,
    mask_mask: Tensor,
    *,
    mask_token_id: int,
    pad_token_id: int,
) -> NoisedBatch:
    """:func:`build_noised_batch` on validated inputs: (B, L) tensors, t and lengths (B,)."""
    batch_size = x1.shape[0]
    keep = (keep_mask | protected) & valid  # (B, L)
    masked = mask_mask & keep & ~protected  # (B, L)

    new_lengths = keep.sum(dim=1)  # (B,)
    trimmed_length = int(new_lengths.max())
    target_position = torch.cumsum(keep.long(), dim=1) - 1  # (B, L) x_t index of each kept token
    rows, columns = torch.nonzero(keep, as_tuple=True)  # (K,), (K,) row-major: order preserved
    destination = target_position[rows, columns]  # (K,)

    targets = x1.new_full((batch_size, trimmed_length), pad_token_id)  # (B, L')
    targets[rows, destination] = x1[rows, columns]
    is_mask = torch.zeros(batch_size, trimmed_length, dtype=torch.bool, device=x1.device)
    is_mask[rows, destination] = masked[rows, columns]
    protected_out = torch.zeros_like(is_mask)
    protected_out[rows, destination] = protected[rows, columns]
    input_ids = torch.where(is_mask, torch.full_like(targets, mask_token_id), targets)  # (B, L')

    gap_counts = gap_counts_from_keep(keep, lengths, num_slots=trimmed_length + 1)  # (B, L'+1)
    return NoisedBatch(
        input_ids=input_ids,
        lengths=new_lengths,
        is_mask=is_mask,
        targets=targets,
        gap_counts=gap_counts,
        protected=protected_out,
        t=t,
    )


def forward_process(
    x1: Tensor,
    lengths: Tensor,
    protected: Tensor | None,
    t: Tensor | float,
    *,
    insertion: Schedule | str | dict,
    unmasking: Schedule | str | dict,
    mask_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> NoisedBatch:
    """Sample x_t ~ p(x_t | x1) for the FlexMDM interpolant (see the module docstring).

    ``x1``: (B, L) long, right-padded clean sequences; ``lengths``: (B,) their lengths (never
    inferred from pad ids); ``protected``: (B, L) bool (False beyond lengths) or None;
    ``t``: (B,) float in [0, 1] (or one float for all rows); ``insertion`` / ``unmasking``: alpha
    and beta (anything :func:`get_schedule` accepts). Random draws come from ``generator``
    (sampled on its device), so a seeded generator reproduces the batch. Returns a
    :class:`NoisedBatch` trimmed to ``L' = max(len(x_t))``. Fully vectorised: no Python loop over
    rows or tokens.
    """
    insertion = get_schedule(insertion)
    unmasking = get_schedule(unmasking)
    lengths, protected, valid = _validate_batch(x1, lengths, protected)
    t = _validate_times(t, x1.shape[0], x1.device)

    sample_device = generator.device if generator is not None else x1.device
    uniforms = torch.rand((2, *x1.shape), generator=generator, device=sample_device)
    uniforms = uniforms.to(x1.device)  # (2, B, L) float32
    insert_uniform, unmask_uniform = uniforms[0], uniforms[1]

    # Insertion time T1 = alpha^-1(U) >= 1e-6; draws above alpha(1) are never inserted in [0, 1].
    alpha_end = insertion.at(torch.ones((), device=x1.device))
    insert_time = insertion.inverse(insert_uniform).clamp_min(MIN_INSERTION_TIME)  # (B, L)
    insert_time = insert_time.masked_fill(insert_uniform > alpha_end, float("inf"))

    # Unmasking time T2 = beta^-1(U' (1 - beta(T1)) + beta(T1)), i.e. T2 | T1 has the conditional
    # law P(T2 <= t | T1 = s) = (beta(t) - beta(s)) / (1 - beta(s)) for t >= s.
    beta_at_insert = unmasking.at(insert_time.clamp(max=1.0))  # (B, L)
    unmask_level = unmask_uniform * (1.0 - beta_at_insert) + beta_at_insert  # (B, L)
    beta_end = unmasking.at(torch.ones((), device=x1.device))
    unmask_time = torch.maximum(unmasking.inverse(unmask_level), insert_time)  # (B, L), >= T1
    unmask_time = unmask_time.masked_fill(unmask_level > beta_end, float("inf"))

    time = t.float()[:, None]  # (B, 1)
    noised = valid & ~protected  # (B, L) tokens the process acts on
    keep = protected | (noised & (time >= insert_time))  # (B, L)
    masked = noised & (time >= insert_time) & (time < unmask_time)  # (B, L)
    return _compact(
        x1,
        lengths,
        protected,
        valid,
        t,
        keep,
        masked,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
    )
