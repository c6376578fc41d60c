"""Losses: Bregman divergence, FlexMDM loss on hand-computed cases, MDM baseline loss."""

import math

import pytest
import torch

from retrofit.interpolant import NoisedBatch, forward_process
from retrofit.objective import (
    LossOutput,
    bregman_poisson,
    flexmdm_loss,
    flexmdm_normalizer,
    mdm_forward_process,
    mdm_loss,
)

MASK = 1000
PAD = 999
LN2 = math.log(2.0)


def clamped_divergence(x: float, y: float) -> float:
    """D(x, y) with the documented clamp, written out by hand."""
    x, y = max(x, 1e-6), max(y, 1e-6)
    return y - x + x * (math.log(x) - math.log(y))


# ---------------------------------------------------------------- Bregman divergence


def test_bregman_identities():
    values = torch.tensor([0.0, 1e-3, 0.5, 1.0, 3.0, 250.0])
    assert torch.equal(bregman_poisson(values, values), torch.zeros_like(values))
    predicted = torch.tensor([0.1, 1.0, 7.5])
    torch.testing.assert_close(
        bregman_poisson(torch.zeros(3), predicted), predicted, rtol=0, atol=2e-5
    )
    # D(2, 1) = 1 - 2 + 2 ln 2
    assert bregman_poisson(torch.tensor(2), torch.tensor(1.0)).item() == pytest.approx(
        2 * LN2 - 1, rel=1e-6
    )
    grid_x, grid_y = torch.meshgrid(
        torch.arange(0, 20.0), torch.linspace(0.01, 30, 50), indexing="ij"
    )
    assert bool((bregman_poisson(grid_x, grid_y) >= -1e-5).all())


def test_bregman_clamps_and_dtypes():
    # Both sides clamp at 1e-6: a zero prediction gives a finite value, never inf/nan.
    value = bregman_poisson(torch.tensor([3]), torch.tensor([0.0]))
    assert value.dtype == torch.float32 and bool(torch.isfinite(value).all())
    assert value.item() == pytest.approx(clamped_divergence(3, 0), rel=1e-6)
    assert (
        bregman_poisson(torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0])).dtype
        == torch.float64
    )
    assert (
        bregman_poisson(torch.tensor([1]), torch.tensor([2.0], dtype=torch.bfloat16)).dtype
        == torch.float32
    )


def test_bregman_minimiser_is_the_mean():
    generator = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((2000,), 3.7), generator=generator)  # includes zeros
    assert int((counts == 0).sum()) > 0
    # Newton's method on log(prediction), derivatives by autograd (no optimiser import needed).
    log_prediction = torch.zeros((), dtype=torch.float64, requires_grad=True)
    for _ in range(30):
        objective = bregman_poisson(counts.double(), log_prediction.exp()).mean()
        (gradient,) = torch.autograd.grad(objective, log_prediction, create_graph=True)
        (curvature,) = torch.autograd.grad(gradient, log_prediction)
        with torch.no_grad():
            log_prediction -= gradient / curvature
    assert abs(gradient.item()) < 1e-9
    assert log_prediction.exp().item() == pytest.approx(counts.mean().item(), rel=1e-6)
    # A prediction away from the mean has a larger mean divergence.
    best = bregman_poisson(counts, counts.mean()).mean()
    for other in (counts.mean() * 0.9, counts.mean() * 1.1, counts.median()):
        assert bregman_poisson(counts, other).mean() > best


# ---------------------------------------------------------------- FlexMDM loss, by hand


def hand_batch() -> tuple[NoisedBatch, torch.Tensor, torch.Tensor]:
    """Two rows at t = 0.5 and 0.75 (linear: kappa = 2 and 4).

    Row 0: x_t = (5, MASK), target of the mask 2, gaps (0, 1, 2): 5 noised x1 tokens.
    Row 1: x_t = (7) protected, gaps (0, 3): 3 noised x1 tokens (7 is the prompt).
    """
    batch = NoisedBatch(
        input_ids=torch.tensor([[5, MASK], [7, PAD]]),
        lengths=torch.tensor([2, 1]),
        is_mask=torch.tensor([[False, True], [False, False]]),
        targets=torch.tensor([[5, 2], [7, PAD]]),
        gap_counts=torch.tensor([[0, 1, 2], [0, 3, 0]]),
        protected=torch.tensor([[False, False], [True, False]]),
        t=torch.tensor([0.5, 0.75]),
    )
    logits = torch.tensor(
        [
            [[9.0, -4.0, 3.0], [0.0, 0.0, LN2]],  # masked position: p(2) = 2 / 4, CE = ln 2
            [[-7.0, 1.0, 30.0], [5.0, 5.0, 5.0]],  # not masked: must not count
        ]
    )
    # Row 1 slot 2 is beyond l = 1: its prediction 50 must be ignored.
    gaps = torch.tensor([[1.0, 1.0, 1.0], [0.5, 3.0, 50.0]])
    return batch, logits, gaps


def expected_hand_sums() -> tuple[float, float]:
    unmask = 2.0 * LN2  # kappa_beta(0.5) = 2 times CE = ln 2
    insert_row0 = 2.0 * (
        clamped_divergence(0, 1) + clamped_divergence(1, 1) + clamped_divergence(2, 1)
    )
    insert_row1 = 4.0 * (clamped_divergence(0, 0.5) + clamped_divergence(3, 3))
    # Without the clamp: D(0, 1) + D(1, 1) + D(2, 1) = 1 + 0 + (2 ln 2 - 1) = 2 ln 2, D(0, .5) = .5.
    assert insert_row0 == pytest.approx(4 * LN2, abs=1e-4)
    assert insert_row1 == pytest.approx(2.0, abs=1e-4)
    return unmask, insert_row0 + insert_row1


def test_flexmdm_loss_hand_case_tokens_normaliser():
    batch, logits, gaps = hand_batch()
    output = flexmdm_loss(logits, gaps, batch, insertion="linear", unmasking="linear")
    unmask, insert = expected_hand_sums()
    assert isinstance(output, LossOutput)
    assert output.num_tokens == 8 and output.num_masked == 1
    assert output.unmask_loss.item() == pytest.approx(unmask / 8, rel=1e-6)
    assert output.insert_loss.item() == pytest.approx(insert / 8, rel=1e-6)
    assert output.loss.item() == pytest.approx((unmask + insert) / 8, rel=1e-6)
    assert output.loss.dtype == torch.float32 and output.loss.dim() == 0


def test_flexmdm_loss_hand_case_fixed_normaliser():
    batch, logits, gaps = hand_batch()
    output = flexmdm_loss(
        logits,
        gaps,
        batch,
        insertion="linear",
        unmasking="linear",
        normalizer="fixed",
        fixed_length=16,
    )
    unmask, insert = expected_hand_sums()
    assert output.loss.item() == pytest.approx((unmask + insert) / (2 * 16), rel=1e-6)
    default = flexmdm_loss(
        logits, gaps, batch, insertion="linear", unmasking="linear", normalizer="fixed"
    )
    assert default.loss.item() == pytest.approx((unmask + insert) / (2 * 1024), rel=1e-6)


def test_flexmdm_loss_uses_each_schedule_rate():
    batch, logits, gaps = hand_batch()
    output = flexmdm_loss(logits, gaps, batch, insertion="poly(2)", unmasking="cosine")
    kappa_cosine = math.pi / 2 * math.tan(math.pi * 0.5 / 2)  # unmasking weight at t = 0.5
    kappa_poly = [2 * t / (1 - t**2) for t in (0.5, 0.75)]  # insertion weights
    insert = kappa_poly[0] * (
        clamped_divergence(0, 1) + clamped_divergence(1, 1) + clamped_divergence(2, 1)
    ) + kappa_poly[1] * (clamped_divergence(0, 0.5) + clamped_divergence(3, 3))
    assert output.unmask_loss.item() == pytest.approx(kappa_cosine * LN2 / 8, rel=1e-5)
    assert output.insert_loss.item() == pytest.approx(insert / 8, rel=1e-5)


def test_flexmdm_loss_gradients_only_where_scored():
    batch, logits, gaps = hand_batch()
    logits.requires_grad_(True)
    gaps.requires_grad_(True)
    output = flexmdm_loss(logits, gaps, batch, insertion="linear", unmasking="linear")
    output.loss.backward()
    assert logits.grad[0, 1].abs().sum() > 0
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[1].abs().sum() == 0
    assert gaps.grad[1, 2] == 0 and gaps.grad[0].abs().sum() > 0
    assert not output.unmask_loss.requires_grad and not output.insert_loss.requires_grad


def test_flexmdm_loss_accepts_gathered_logits():
    batch, logits, gaps = hand_batch()
    full = flexmdm_loss(logits, gaps, batch, insertion="linear", unmasking="linear")
    gathered = flexmdm_loss(
        logits[batch.is_mask], gaps, batch, insertion="linear", unmasking="linear"
    )
    assert gathered.loss.item() == pytest.approx(full.loss.item(), rel=1e-7)


def test_flexmdm_loss_on_sampled_batch_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    rows, width, vocab = 4, 24, 50
    x1 = torch.randint(0, vocab, (rows, width), generator=generator)
    lengths = torch.tensor([24, 20, 9, 0])
    protected = (torch.arange(width) < 3)[None, :] & (
        torch.arange(width)[None, :] < lengths[:, None]
    )
    batch = forward_process(
        x1,
        lengths,
        protected,
        torch.tensor([0.2, 0.5, 0.8, 0.6]),
        insertion="geometric(10, 0.01)",
        unmasking="linear",
        mask_token_id=vocab,
        pad_token_id=vocab + 1,
        generator=generator,
    )
    width_t = batch.input_ids.shape[1]
    logits = torch.randn(rows, width_t, vocab + 2, generator=generator)
    gaps = torch.rand(rows, width_t + 1, generator=generator) * 3
    reference = flexmdm_loss(
        logits, gaps, batch, insertion="geometric(10, 0.01)", unmasking="linear"
    )
    assert reference.num_tokens == int((lengths - protected.sum(1)).sum())
    assert reference.num_masked == int(batch.is_mask.sum()) > 0
    weight = torch.nn.Parameter(torch.eye(vocab + 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = logits @ weight  # bf16 under autocast
        assert projected.dtype == torch.bfloat16
        output = flexmdm_loss(
            projected, gaps.bfloat16(), batch, insertion="geometric(10, 0.01)", unmasking="linear"
        )
    assert output.loss.dtype == torch.float32 and bool(torch.isfinite(output.loss))
    assert output.loss.item() == pytest.approx(reference.loss.item(), rel=2e-2)
    output.loss.backward()
    assert weight.grad is not None and bool(torch.isfinite(weight.grad).all())


def test_shared_denominator_makes_split_batches_add_up_to_the_whole():
    """Micro-batches / ranks dividing by the step's normaliser sum to the concatenated batch's loss
    (for "tokens", whose per-part counts differ, dividing each part by its own count would not)."""
    generator = torch.Generator().manual_seed(1)
    rows, width, vocab = 4, 20, 30
    x1 = torch.randint(0, vocab, (rows, width), generator=generator)
    lengths = torch.tensor([20, 5, 14, 9])
    protected = (torch.arange(width) < 2)[None, :].expand(rows, width).clone()
    whole = forward_process(
        x1, lengths, protected, torch.tensor([0.3, 0.6, 0.5, 0.9]),
        insertion="linear", unmasking="linear", mask_token_id=vocab, pad_token_id=vocab + 1,
        generator=generator,
    )  # fmt: skip
    width_t = whole.input_ids.shape[1]
    logits = torch.randn(rows, width_t, vocab + 2, generator=generator)
    gaps = torch.rand(rows, width_t + 1, generator=generator) * 4
    schedules = {"insertion": "linear", "unmasking": "linear"}
    reference = flexmdm_loss(logits, gaps, whole, **schedules)
    total_tokens = flexmdm_normalizer(reference.num_tokens, rows)
    assert total_tokens == int((lengths - 2).sum())

    def part(rows_slice: slice, **kwargs) -> LossOutput:
        sliced = NoisedBatch(**{
            name: getattr(whole, name)[rows_slice] for name in whole.__dataclass_fields__
        })  # fmt: skip
        return flexmdm_loss(logits[rows_slice], gaps[rows_slice], sliced, **schedules, **kwargs)

    halves = [part(slice(0, 2), denominator=total_tokens), part(slice(2, 4), denominator=total_tokens)]
    assert sum(h.loss.item() for h in halves) == pytest.approx(reference.loss.item(), rel=1e-6)
    assert sum(h.insert_loss.item() for h in halves) == pytest.approx(
        reference.insert_loss.item(), rel=1e-6
    )
    own = [part(slice(0, 2)), part(slice(2, 4))]  # each normalised by its own token count
    assert sum(h.loss.item() for h in own) / 2 != pytest.approx(reference.loss.item(), rel=1e-3)
    # "fixed" is the same rows * fixed_length either way.
    fixed = flexmdm_loss(logits, gaps, whole, **schedules, normalizer="fixed", fixed_length=64)
    assert flexmdm_normalizer(0, rows, normalizer="fixed", fixed_length=64) == rows * 64
    assert part(slice(0, 4), denominator=rows * 64.0).loss.item() == pytest.approx(
        fixed.loss.item(), rel=1e-7
    )
    with pytest.raises(ValueError, match="denominator must be a finite number > 0"):
        part(slice(0, 2), denominator=0.0)
    with pytest.raises(ValueError, match="normalizer must be 'tokens' or 'fixed'"):
        flexmdm_normalizer(3, 1, normalizer="rows")


def test_flexmdm_loss_errors():
    batch, logits, gaps = hand_batch()
    with pytest.raises(ValueError, match=r"gaps must be \(B, L'\+1\) = \(2, 3\)"):
        flexmdm_loss(logits, gaps[:, :2], batch, insertion="linear", unmasking="linear")
    with pytest.raises(ValueError, match="logits .* must match the positions"):
        flexmdm_loss(logits[:, :1], gaps, batch, insertion="linear", unmasking="linear")
    with pytest.raises(ValueError, match="N=2 rows but the batch has 1 masked"):
        flexmdm_loss(logits[0], gaps, batch, insertion="linear", unmasking="linear")
    with pytest.raises(ValueError, match="normalizer must be 'tokens' or 'fixed'"):
        flexmdm_loss(logits, gaps, batch, insertion="linear", unmasking="linear", normalizer="seq")
    with pytest.raises(ValueError, match="fixed_length must be a positive int"):
        flexmdm_loss(
            logits,
            gaps,
            batch,
            insertion="linear",
            unmasking="linear",
            normalizer="fixed",
            fixed_length=0,
        )


# ---------------------------------------------------------------- MDM baseline


def test_mdm_loss_hand_case():
    # Row 0: prompt 1 token, response 3 tokens (the last an EOS pad), 2 masked, ratio 0.5.
    # Row 1: prompt 2 tokens, response 2 tokens, 1 masked, ratio 0.25. Uniform logits: CE = ln 4.
    vocab = 4
    targets = torch.tensor([[1, 2, 3, 0], [1, 1, 2, 3]])
    response = torch.tensor([[False, True, True, True], [False, False, True, True]])
    is_masked = torch.tensor([[False, True, False, True], [False, False, True, False]])
    mask_ratio = torch.tensor([0.5, 0.25])
    logits = torch.zeros(2, 4, vocab)
    logits[0, 0] = torch.tensor([10.0, -10.0, 0.0, 0.0])  # unmasked prompt position: ignored
    output = mdm_loss(logits, targets, is_masked, mask_ratio, response)
    ln4 = math.log(4.0)
    expected = ((2 * ln4 / 0.5) / 3 + (ln4 / 0.25) / 2) / 2
    assert output.loss.item() == pytest.approx(expected, rel=1e-6)
    assert output.unmask_loss.item() == pytest.approx(expected, rel=1e-6)
    assert output.insert_loss.item() == 0.0
    assert output.num_masked == 3 and output.num_tokens == 5
    gathered = mdm_loss(logits[is_masked].bfloat16(), targets, is_masked, mask_ratio, response)
    assert gathered.loss.item() == pytest.approx(expected, rel=1e-6)


def test_mdm_loss_rejects_masks_outside_response():
    targets = torch.zeros(1, 3, dtype=torch.long)
    response = torch.tensor([[False, True, True]])
    with pytest.raises(ValueError, match="outside response_mask"):
        mdm_loss(
            torch.zeros(1, 3, 5),
            targets,
            torch.tensor([[True, False, False]]),
            torch.ones(1),
            response,
        )
    with pytest.raises(ValueError, match=r"mask_ratio must be \(1,\)"):
        mdm_loss(torch.zeros(1, 3, 5), targets, response, torch.ones(2), response)


def test_mdm_forward_process():
    rows, width = 64, 400
    x1 = torch.randint(0, 100, (rows, width), generator=torch.Generator().manual_seed(0))
    response = torch.arange(width)[None, :].expand(rows, width) >= 100
    noisy, is_masked, mask_ratio = mdm_forward_process(
        x1, response, mask_token_id=MASK, generator=torch.Generator().manual_seed(1)
    )
    assert noisy.shape == x1.shape and mask_ratio.shape == (rows,)
    assert float(mask_ratio.min()) >= 1e-3 and float(mask_ratio.max()) <= 1.0
    assert not bool(is_masked[:, :100].any())  # the prompt is never masked
    assert bool((noisy[is_masked] == MASK).all()) and torch.equal(noisy[~is_masked], x1[~is_masked])
    fraction = is_masked.sum(1).double() / 300
    bound = 5 * torch.sqrt(mask_ratio.double() * (1 - mask_ratio.double()) / 300) + 1e-9
    assert bool(((fraction - mask_ratio.double()).abs() <= bound).all())
    again = mdm_forward_process(
        x1, response, mask_token_id=MASK, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(again[1], is_masked)


def test_mdm_forward_process_errors():
    x1 = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="response_mask shape"):
        mdm_forward_process(x1, torch.ones(2, 4, dtype=torch.bool), mask_token_id=MASK)
    with pytest.raises(ValueError, match="integer token ids"):
        mdm_forward_process(x1.float(), torch.ones(2, 3, dtype=torch.bool), mask_token_id=MASK)
    with pytest.raises(ValueError, match="empty batch"):
        mdm_forward_process(x1[:0], torch.ones(0, 3, dtype=torch.bool), mask_token_id=MASK)
