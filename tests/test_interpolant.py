"""FlexMDM forward process: exact compaction, Monte Carlo marginals, protection, validation."""

import math

import pytest
import torch

from retrofit.interpolant import (
    NoisedBatch,
    build_noised_batch,
    forward_process,
    gap_counts_from_keep,
    sample_times,
)
from retrofit.schedules import get_schedule

MASK = 1000
PAD = 999


def run(x1, lengths, protected, t, insertion="linear", unmasking="linear", seed=0) -> NoisedBatch:
    return forward_process(
        x1,
        lengths,
        protected,
        t,
        insertion=insertion,
        unmasking=unmasking,
        mask_token_id=MASK,
        pad_token_id=PAD,
        generator=torch.Generator().manual_seed(seed),
    )


def token_grid(rows: int, length: int) -> torch.Tensor:
    """(rows, length) distinct ids, increasing along each row (ids < MASK)."""
    return (torch.arange(length) % 900).repeat(rows, 1)


def reference_gaps(kept_indices: list[int], n: int) -> list[int]:
    """g_j = s[j] - s[j-1] - 1 with s[-1] = -1, s[l] = n (the spec's definition, with a loop)."""
    boundaries = [-1, *kept_indices, n]
    return [boundaries[j + 1] - boundaries[j] - 1 for j in range(len(kept_indices) + 1)]


# ---------------------------------------------------------------- exact, deterministic compaction


def test_worked_example():
    # x1 = (a b c d e), absent {b, c, e} -> x_t = (a d), gaps = (0, 2, 1); d is masked.
    a, b, c, d, e = 10, 11, 12, 13, 14
    x1 = torch.tensor([[a, b, c, d, e]])
    keep = torch.tensor([[True, False, False, True, False]])
    masked = torch.tensor([[False, False, False, True, False]])
    batch = build_noised_batch(
        x1, torch.tensor([5]), None, 0.5, keep, masked, mask_token_id=MASK, pad_token_id=PAD
    )
    assert batch.input_ids.tolist() == [[a, MASK]]
    assert batch.targets.tolist() == [[a, d]]
    assert batch.is_mask.tolist() == [[False, True]]
    assert batch.lengths.tolist() == [2]
    assert batch.gap_counts.tolist() == [[0, 2, 1]]
    assert batch.protected.tolist() == [[False, False]]
    assert batch.t.tolist() == [0.5]
    assert gap_counts_from_keep(keep, torch.tensor([5])).tolist() == [[0, 2, 1]]


def test_padding_empty_rows_and_trimming():
    x1 = torch.tensor(
        [
            [10, 11, 12, 13, 14, PAD],
            [20, 21, 22, PAD, PAD, PAD],
            [PAD, PAD, PAD, PAD, PAD, PAD],  # an empty row: l = 0, one slot with g = 0
            [40, 41, 42, 43, PAD, PAD],
        ]
    )
    lengths = torch.tensor([5, 3, 0, 4])
    keep = torch.tensor(
        [
            [1, 0, 0, 1, 0, 1],  # position 5 is beyond the length: ignored
            [0, 0, 0, 1, 1, 1],  # everything valid is absent
            [1, 1, 1, 1, 1, 1],
            [1, 1, 0, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    masked = torch.zeros_like(keep)
    masked[3, 1] = True
    batch = build_noised_batch(
        x1, lengths, None, torch.full((4,), 0.3), keep, masked, mask_token_id=MASK, pad_token_id=PAD
    )
    assert batch.lengths.tolist() == [2, 0, 0, 3]
    assert batch.input_ids.shape == (4, 3)  # trimmed to max(len(x_t))
    assert batch.input_ids.tolist() == [
        [10, 13, PAD],
        [PAD, PAD, PAD],
        [PAD, PAD, PAD],
        [40, MASK, 43],
    ]
    assert batch.targets.tolist()[3] == [40, 41, 43]
    assert batch.gap_counts.tolist() == [[0, 2, 1, 0], [3, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert batch.num_noised_tokens.tolist() == [5, 3, 0, 4]


def test_all_absent_batch_has_zero_width():
    x1 = torch.tensor([[1, 2, 3], [4, 5, PAD]])
    keep = torch.zeros(2, 3, dtype=torch.bool)
    batch = build_noised_batch(
        x1, torch.tensor([3, 2]), None, 0.0, keep, keep, mask_token_id=MASK, pad_token_id=PAD
    )
    assert batch.input_ids.shape == (2, 0) and batch.is_mask.shape == (2, 0)
    assert batch.gap_counts.tolist() == [[3], [2]]


def test_protected_overrides_keep_and_mask():
    x1 = torch.tensor([[1, 2, 3, 4]])
    protected = torch.tensor([[True, True, False, False]])
    keep = torch.tensor([[False, True, False, True]])
    masked = torch.tensor([[True, True, False, True]])
    batch = build_noised_batch(
        x1, torch.tensor([4]), protected, 1.0, keep, masked, mask_token_id=MASK, pad_token_id=PAD
    )
    assert batch.input_ids.tolist() == [[1, 2, MASK]]
    assert batch.protected.tolist() == [[True, True, False]]
    assert batch.gap_counts.tolist() == [[0, 0, 1, 0]]


def test_random_compaction_matches_loop_reference():
    generator = torch.Generator().manual_seed(1)
    rows, width = 16, 12
    x1 = torch.randint(0, 50, (rows, width), generator=generator)
    lengths = torch.randint(0, width + 1, (rows,), generator=generator)
    keep = torch.rand(rows, width, generator=generator) < 0.5
    masked = torch.rand(rows, width, generator=generator) < 0.5
    batch = build_noised_batch(
        x1, lengths, None, 0.5, keep, masked, mask_token_id=MASK, pad_token_id=PAD
    )
    for row in range(rows):
        n = int(lengths[row])
        kept = [i for i in range(n) if keep[row, i]]
        length = len(kept)
        assert batch.lengths[row].item() == length
        assert batch.targets[row, :length].tolist() == [x1[row, i].item() for i in kept]
        assert batch.is_mask[row, :length].tolist() == [bool(masked[row, i]) for i in kept]
        assert bool((batch.targets[row, length:] == PAD).all())
        assert not bool(batch.is_mask[row, length:].any())
        gaps = batch.gap_counts[row].tolist()
        assert gaps[: length + 1] == reference_gaps(kept, n)
        assert all(g == 0 for g in gaps[length + 1 :])


# ---------------------------------------------------------------- sampled process: structure


def test_order_preserved_and_gap_identity():
    rows, width = 64, 40
    x1 = token_grid(rows, width)
    lengths = torch.randint(0, width + 1, (rows,), generator=torch.Generator().manual_seed(2))
    t = sample_times(rows, generator=torch.Generator().manual_seed(3))
    batch = run(x1, lengths, None, t, insertion="geometric(10, 0.01)", unmasking="cosine")
    for row in range(rows):
        length = int(batch.lengths[row])
        indices = batch.targets[row, :length].tolist()  # ids equal x1 indices here
        assert indices == sorted(set(indices))  # strictly increasing: a subsequence of x1 in order
        assert all(0 <= i < int(lengths[row]) for i in indices)
        clean = ~batch.is_mask[row, :length]
        assert bool(
            (batch.input_ids[row, :length][clean] == batch.targets[row, :length][clean]).all()
        )
        assert bool((batch.input_ids[row, :length][~clean] == MASK).all())
        gaps = batch.gap_counts[row].tolist()
        assert gaps[: length + 1] == reference_gaps(indices, int(lengths[row]))
    assert (batch.gap_counts.sum(1) == lengths - batch.lengths).all()
    assert batch.input_ids.shape[1] == int(batch.lengths.max())


def test_protected_prefix_and_suffix_untouched():
    generator = torch.Generator().manual_seed(4)
    rows, width = 200, 30
    x1 = torch.randint(0, 500, (rows, width), generator=generator)
    lengths = torch.randint(10, width + 1, (rows,), generator=generator)
    prefix = torch.randint(0, 5, (rows,), generator=generator)
    suffix = torch.randint(0, 5, (rows,), generator=generator)
    positions = torch.arange(width)[None, :]
    protected = (positions < prefix[:, None]) | (
        (positions >= (lengths - suffix)[:, None]) & (positions < lengths[:, None])
    )
    t = torch.rand(rows, generator=generator)
    batch = run(x1, lengths, protected, t, insertion="linear", unmasking="sin", seed=5)
    for row in range(rows):
        p, s, n, length = (
            int(prefix[row]),
            int(suffix[row]),
            int(lengths[row]),
            int(batch.lengths[row]),
        )
        assert batch.input_ids[row, :p].tolist() == x1[row, :p].tolist()
        assert batch.input_ids[row, length - s : length].tolist() == x1[row, n - s : n].tolist()
        expected_flags = [True] * p + [False] * (length - p - s) + [True] * s
        assert batch.protected[row, :length].tolist() == expected_flags
        assert not bool(batch.is_mask[row][batch.protected[row]].any())
        gaps = batch.gap_counts[row]
        assert int(gaps[:p].sum()) == 0  # nothing absent inside or before the prefix
        assert int(gaps[length - s + 1 : length + 1].sum()) == 0  # nor inside / after the suffix
    assert (batch.num_noised_tokens == lengths - prefix - suffix).all()


def test_time_endpoints():
    x1 = token_grid(8, 20)
    lengths = torch.full((8,), 20)
    protected = torch.arange(20)[None, :].expand(8, 20) < 3
    empty = run(x1, lengths, protected, torch.zeros(8))
    assert (empty.lengths == 3).all() and not bool(empty.is_mask.any())
    assert (empty.gap_counts[:, 3] == 17).all()
    full = run(x1, lengths, protected, torch.ones(8))  # linear/linear: every token clean at t = 1
    assert torch.equal(full.input_ids, x1) and not bool(full.is_mask.any())


def test_seeded_generator_is_reproducible():
    x1 = token_grid(4, 50)
    lengths = torch.tensor([50, 40, 30, 0])
    t = torch.tensor([0.2, 0.5, 0.7, 0.9])
    first, second = run(x1, lengths, None, t, seed=7), run(x1, lengths, None, t, seed=7)
    for name in ("input_ids", "lengths", "is_mask", "targets", "gap_counts", "protected"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert not torch.equal(first.is_mask, run(x1, lengths, None, t, seed=8).is_mask)
    assert first.lengths[3] == 0 and first.gap_counts[3].tolist() == [0] * first.gap_counts.shape[1]


def test_batch_to_device_copy():
    batch = run(token_grid(2, 5), torch.tensor([5, 3]), None, 0.5)
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids) and moved is not batch


# ---------------------------------------------------------------- sampled process: marginals


def marginal_rates(batch: NoisedBatch, tokens: int) -> tuple[float, float, float]:
    """(P(present), P(mask), P(clean)) over all non-protected tokens of the batch."""
    valid = torch.arange(batch.input_ids.shape[1])[None, :] < batch.lengths[:, None]
    noised = valid & ~batch.protected
    present = int(noised.sum())
    masked = int((batch.is_mask & noised).sum())
    return present / tokens, masked / tokens, (present - masked) / tokens


def standard_error(p: float, count: int) -> float:
    return math.sqrt(p * (1 - p) / count)


def test_linear_linear_marginals_match_closed_form():
    rows, width, t = 1000, 200, 0.5
    batch = run(token_grid(rows, width), torch.full((rows,), width), None, t, seed=11)
    tokens = rows * width
    present, masked, clean = marginal_rates(batch, tokens)
    expected_clean = t + (1 - t) * math.log(1 - t)  # 0.1534
    expected_mask = -(1 - t) * math.log(1 - t)  # 0.3466
    assert expected_clean == pytest.approx(0.1534, abs=1e-4)
    assert expected_mask == pytest.approx(0.3466, abs=1e-4)
    assert present == pytest.approx(t, abs=5 * standard_error(t, tokens))
    assert clean == pytest.approx(expected_clean, abs=5 * standard_error(expected_clean, tokens))
    assert masked == pytest.approx(expected_mask, abs=5 * standard_error(expected_mask, tokens))


def test_present_probability_is_alpha_for_geometric():
    insertion = get_schedule("geometric(10, 0.01)")
    times = [0.05, 0.3, 0.6, 0.9, 1.0]
    rows_per_time, width = 300, 100
    t = torch.tensor(times).repeat_interleave(rows_per_time)
    rows = t.numel()
    batch = run(token_grid(rows, width), torch.full((rows,), width), None, t, insertion, "sin", 12)
    present_per_row = batch.lengths.view(len(times), rows_per_time).sum(1).double()
    tokens = rows_per_time * width
    for index, time in enumerate(times):
        alpha = insertion.at(torch.tensor(time, dtype=torch.float64)).item()
        observed = present_per_row[index].item() / tokens
        assert observed == pytest.approx(alpha, abs=5 * standard_error(alpha, tokens) + 1e-4)
    # At t = 1 about exp(-0.01) of the tokens are present: ~1% are never inserted.
    assert present_per_row[-1].item() / tokens < 0.995


def clean_probability_by_quadrature(insertion, unmasking, t: float, points: int = 200_001) -> float:
    """P(clean at t) = alpha(0) c(0) + int_0^t alpha'(s) c(s) ds, c(s) = P(T2 <= t | T1 = s).

    c(s) = (beta(t) - beta(s)) / (1 - beta(s)); trapezoid rule in float64.
    """
    s = torch.linspace(0.0, t, points, dtype=torch.float64)
    beta_t = unmasking.at(torch.tensor(t, dtype=torch.float64))
    conditional = (beta_t - unmasking.at(s)) / (1 - unmasking.at(s))
    integral = torch.trapezoid(insertion.derivative(s) * conditional, s).item()
    return insertion.at(s[:1]).item() * conditional[0].item() + integral


@pytest.mark.parametrize(
    "insertion, unmasking, t",
    [
        ("geometric(10, 0.01)", "cosine", 0.6),
        ("sin", "poly(2)", 0.7),
        ("linear", "geometric(5, 0.05)", 0.8),
    ],
)
def test_clean_probability_matches_quadrature(insertion, unmasking, t):
    insertion, unmasking = get_schedule(insertion), get_schedule(unmasking)
    rows, width = 800, 200
    batch = run(
        token_grid(rows, width), torch.full((rows,), width), None, t, insertion, unmasking, 13
    )
    tokens = rows * width
    present, masked, clean = marginal_rates(batch, tokens)
    expected_clean = clean_probability_by_quadrature(insertion, unmasking, t)
    expected_present = insertion.at(torch.tensor(t, dtype=torch.float64)).item()
    assert present == pytest.approx(
        expected_present, abs=5 * standard_error(expected_present, tokens)
    )
    assert clean == pytest.approx(expected_clean, abs=5 * standard_error(expected_clean, tokens))
    expected_mask = expected_present - expected_clean
    assert masked == pytest.approx(expected_mask, abs=5 * standard_error(expected_mask, tokens))


def test_linear_shortcut_would_fail_for_nonlinear_beta():
    """The shortcut T2 = beta^-1(U'(1 - T1) + T1) (right only for linear beta) differs here."""
    insertion, unmasking, t = get_schedule("linear"), get_schedule("poly(3)"), 0.6
    general = clean_probability_by_quadrature(insertion, unmasking, t)
    # With the shortcut, P(clean | T1 = s) = (beta(t) - s) / (1 - s) (clipped at 0).
    s = torch.linspace(0.0, t, 200_001, dtype=torch.float64)
    shortcut = torch.trapezoid(((t**3 - s) / (1 - s)).clamp_min(0), s).item()
    assert abs(general - shortcut) > 0.02
    rows, width = 800, 200
    batch = run(
        token_grid(rows, width), torch.full((rows,), width), None, t, insertion, unmasking, 14
    )
    _, _, clean = marginal_rates(batch, rows * width)
    assert clean == pytest.approx(general, abs=5 * standard_error(general, rows * width))


def test_length_is_binomial():
    rows, width, prompt, t = 4000, 55, 5, 0.6
    insertion = get_schedule("geometric(10, 0.01)")
    protected = (torch.arange(width) < prompt)[None, :].expand(rows, width)
    batch = run(
        token_grid(rows, width), torch.full((rows,), width), protected, t, insertion, "linear", 15
    )
    inserted = (batch.lengths - prompt).double()  # ~ Binomial(50, alpha(t))
    alpha = insertion.at(torch.tensor(t, dtype=torch.float64)).item()
    trials = width - prompt
    mean, variance = trials * alpha, trials * alpha * (1 - alpha)
    assert inserted.mean().item() == pytest.approx(mean, abs=5 * math.sqrt(variance / rows))
    # Sample variance: standard error ~ variance * sqrt(2 / (rows - 1)).
    assert inserted.var().item() == pytest.approx(
        variance, abs=5 * variance * math.sqrt(2 / (rows - 1))
    )
    assert int(inserted.min()) >= 0 and int(inserted.max()) <= trials


# ---------------------------------------------------------------- times


def test_sample_times_range_and_dtype():
    t = sample_times(10_000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (10_000,) and t.dtype == torch.float32
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    assert sample_times(4, eps=0.5, generator=torch.Generator().manual_seed(0)).min() >= 0.5


def test_stratified_times_cover_every_stratum_once():
    batch_size, world_size, eps = 8, 4, 1e-3
    times = torch.cat(
        [
            sample_times(
                batch_size,
                generator=torch.Generator().manual_seed(rank),
                stratified=True,
                rank=rank,
                world_size=world_size,
                eps=eps,
            )
            for rank in range(world_size)
        ]
    )
    uniform = (times - eps) / (1 - eps)
    strata = torch.floor(uniform * batch_size * world_size).long()
    assert sorted(strata.tolist()) == list(range(batch_size * world_size))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"batch_size": 4, "rank": 2, "world_size": 2}, "rank must be an int in"),
        ({"batch_size": 4, "world_size": 0}, "world_size must be a positive int"),
        ({"batch_size": 4, "eps": 1.0}, "eps must be in"),
    ],
)
def test_sample_times_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_times(**kwargs)


# ---------------------------------------------------------------- validation


def good_inputs():
    x1 = token_grid(2, 6)
    lengths = torch.tensor([6, 4])
    protected = torch.zeros(2, 6, dtype=torch.bool)
    protected[:, 0] = True
    return x1, lengths, protected, torch.tensor([0.3, 0.6])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, n, p, t: (x, n, p, torch.tensor([0.3, 1.5])), r"t must lie in \[0, 1\]"),
        (lambda x, n, p, t: (x, n, p, torch.tensor([-0.1, 0.5])), r"t must lie in \[0, 1\]"),
        (lambda x, n, p, t: (x, n, p, torch.tensor([0.5])), r"t must have shape \(2,\)"),
        (lambda x, n, p, t: (x, n, p, torch.tensor([[0.5, 0.5]])), r"t must have shape \(2,\)"),
        (lambda x, n, p, t: (x, n, p, torch.tensor([0, 1])), "t must be a float tensor"),
        (
            lambda x, n, p, t: (x, torch.tensor([7, 4]), p, t),
            "lengths must be <= the buffer length 6",
        ),
        (lambda x, n, p, t: (x, torch.tensor([-1, 4]), p, t), "lengths must be >= 0"),
        (lambda x, n, p, t: (x, torch.tensor([6]), p, t), r"lengths must have shape \(2,\)"),
        (lambda x, n, p, t: (x, n.float(), p, t), "lengths must hold integer"),
        (lambda x, n, p, t: (x[:0], n[:0], p[:0], t[:0]), "empty batch"),
        (lambda x, n, p, t: (x.float(), n, p, t), "x1 must hold integer token ids"),
        (lambda x, n, p, t: (x[0], n, p, t), r"x1 must be \(batch, length\)"),
        (lambda x, n, p, t: (x, n, p[:, :5], t), "protected must have the shape of x1"),
        (lambda x, n, p, t: (x, n, p.long(), t), "protected must be a bool tensor"),
        (
            lambda x, n, p, t: (x, n, p | (torch.arange(6) == 5), t),
            r"beyond the row length in rows \[1\]",
        ),
    ],
)
def test_forward_process_rejects_bad_inputs(change, message):
    x1, lengths, protected, t = change(*good_inputs())
    with pytest.raises(ValueError, match=message):
        run(x1, lengths, protected, t)


def test_forward_process_rejects_wrong_types():
    x1, lengths, protected, t = good_inputs()
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor"):
        run(x1.tolist(), lengths, protected, t)
    with pytest.raises(ValueError, match="unknown schedule"):
        run(x1, lengths, protected, t, insertion="exponential")


def test_build_noised_batch_rejects_bad_masks():
    x1, lengths, protected, t = good_inputs()
    with pytest.raises(ValueError, match="keep_mask must be a bool tensor of shape"):
        build_noised_batch(
            x1,
            lengths,
            protected,
            t,
            torch.ones(2, 5, dtype=torch.bool),
            torch.zeros_like(protected),
            mask_token_id=MASK,
            pad_token_id=PAD,
        )
