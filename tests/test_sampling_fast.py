"""Fast FlexMDM sampling modes (issue 16 item 1): confidence-threshold unmasking, jumps in time,
prefix key/value reuse. Each is an option, off by default; off, outputs are those of the exact
sampler (checked bit for bit in tests/test_sampling.py and by the golden run of the refactoring).
"""

from __future__ import annotations

import pytest
import torch
from test_sampling import StubFlexMDM, _prompts

from retrofit.sampling import SamplingTrace, flexmdm_generate
from retrofit.sampling.oracle import LengthOracle, length_w1
from retrofit.schedules import get_schedule

LENGTHS = {4: 0.1, 16: 0.4, 32: 0.4, 64: 0.1}


@pytest.fixture(scope="module")
def tiny_flexmdm():
    """A tiny random LLaDA FlexMDM whose time modulation is not the identity (random weights), so
    that a prefix computed at one time differs from the same prefix at another."""
    from retrofit.adapter import FlexMDM
    from retrofit.models import LLaDAModelLM, tiny_llada_config

    ids = {"mask_token_id": 126, "pad_token_id": 127, "eos_token_id": 127}
    torch.manual_seed(0)
    model = FlexMDM.retrofit(LLaDAModelLM(tiny_llada_config(**ids)), "tiny-llada", max_length=96)
    with torch.no_grad():
        for parameter in model.modulation.parameters():
            parameter.normal_(0.0, 0.3)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Confidence-threshold unmasking
# ------------------------------------------------------------------------------------------------


def test_threshold_never_reached_changes_nothing():
    """With uniform content no mask is confident: the threshold adds logits, never a token."""
    kwargs = {"steps": 24, "seed": 2, "progress": False}
    exact = flexmdm_generate(LengthOracle(LENGTHS), [[0]] * 40, **kwargs)
    thresholded = flexmdm_generate(LengthOracle(LENGTHS), [[0]] * 40, unmask_threshold=0.9, **kwargs)
    assert thresholded.sequences == exact.sequences
    assert torch.equal(thresholded.steps, exact.steps)


def test_threshold_commits_every_confident_mask():
    trace = SamplingTrace()
    result = flexmdm_generate(LengthOracle(LENGTHS, top_probability=0.95), [[0]] * 30, steps=32,
                              seed=1, unmask_threshold=0.9, trace=trace, progress=False)
    # Every mask present at a forward pass is confident (p = 0.95), so none survives a step: the
    # masks seen after a step are only the ones inserted in it.
    assert result.lengths.sum() > 0
    for before, after in zip(trace.steps, trace.steps[1:]):
        assert all(clean_after >= clean_before + masks_before for clean_before, masks_before,
                   clean_after in zip(before.n_clean, before.n_mask, after.n_clean))


# ------------------------------------------------------------------------------------------------
# Jumps in time
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly(2)"])
def test_jump_arrival_probability_is_exact_for_the_interval(schedule):
    from retrofit.sampling.config import FlexMDMSamplingConfig
    from retrofit.sampling.flexmdm import _flex_options
    from retrofit.sampling.insertion import _ahead_probabilities

    steps = 16
    model = LengthOracle(LENGTHS, schedule=schedule)
    options = _flex_options(model, FlexMDMSamplingConfig(steps=steps, jump_insertions=1.0), [[0]],
                            [[]], None, None, 0, None, False, None)
    alpha = get_schedule(schedule).at(torch.arange(steps + 1, dtype=torch.float64) / steps)
    for step in (0, 5, 12):
        expected = (alpha[step + 1 :] - alpha[step]) / (1 - alpha[step])
        assert torch.allclose(_ahead_probabilities(step, options), expected, atol=1e-12)
        assert float(_ahead_probabilities(step, options)[0]) == pytest.approx(
            options.insert_probability[step], abs=1e-15)


def _lengths_and_forwards(steps: int, samples: int, **settings) -> tuple[torch.Tensor, float]:
    result = flexmdm_generate(LengthOracle(LENGTHS, top_probability=0.95), [[0]] * samples,
                              steps=steps, seed=0, unmask_threshold=0.9, progress=False, **settings)
    return result.lengths, float(result.steps.double().mean())


def test_jumps_save_forward_passes_and_keep_the_length_law():
    exact_lengths, exact_forwards = _lengths_and_forwards(64, 1000)
    lengths, forwards = _lengths_and_forwards(64, 1000, jump_insertions=0.25)
    assert forwards < exact_forwards - 1.0, (forwards, exact_forwards)
    assert length_w1(lengths, LENGTHS) <= max(1.2, length_w1(exact_lengths, LENGTHS) + 0.3)
    assert float((lengths % 2 == 1).double().mean()) <= 0.01
    # A large budget buys far fewer forward passes at a visible cost in length fidelity.
    coarse, coarse_forwards = _lengths_and_forwards(64, 1000, jump_insertions=1.0)
    assert coarse_forwards < 0.75 * exact_forwards
    assert length_w1(coarse, LENGTHS) > length_w1(lengths, LENGTHS)


def test_jumps_keep_rows_independent_of_batching():
    """Rows keep their own time, so a jump of one row never moves another: batching and
    regrouping still leave each row's output unchanged."""
    kwargs = {"steps": 32, "seed": 5, "temperature": 0.8, "unmask_threshold": 0.3,
              "jump_insertions": 0.5, "progress": False}
    prompts = _prompts(6)
    together = flexmdm_generate(StubFlexMDM(gap=0.3), prompts, **kwargs)
    apart = flexmdm_generate(StubFlexMDM(gap=0.3), prompts, batch_size=1, **kwargs)
    grouped = flexmdm_generate(StubFlexMDM(gap=0.3), prompts, batch_size=4, sort_by_length=True,
                               **kwargs)
    assert together.sequences == apart.sequences == grouped.sequences
    assert torch.equal(together.steps, apart.steps)
    assert (together.steps < 32).any()  # some row jumped


def test_jump_with_poisson_draw():
    lengths, forwards = _lengths_and_forwards(32, 200, jump_insertions=0.5, insertion_draw="poisson")
    assert forwards < 33 and lengths.sum() > 0


# ------------------------------------------------------------------------------------------------
# Prefix key/value reuse
# ------------------------------------------------------------------------------------------------


def test_prefix_cache_is_exact_when_nothing_changed(tiny_flexmdm):
    from retrofit.models.prefix_cache import PrefixCache

    model = tiny_flexmdm
    ids = torch.randint(0, 120, (3, 20), generator=torch.Generator().manual_seed(0))
    lengths, t = torch.tensor([20, 15, 18]), torch.full((3,), 0.3)
    with torch.no_grad():
        full = model(ids, lengths, t)
        cache = PrefixCache(8)
        recorded = model(ids, lengths, t, prefix_cache=cache)
        reused = model(ids, lengths, t, prefix_cache=cache)
        later = model(ids, lengths, torch.full((3,), 0.7), prefix_cache=cache)
        full_later = model(ids, lengths, torch.full((3,), 0.7))
        two_rows = model(ids[[2, 0]], lengths[[2, 0]], t[:2], prefix_cache=cache.select(torch.tensor([2, 0])))
    assert torch.equal(recorded.logits, full.logits) and torch.equal(recorded.gaps, full.gaps)
    assert torch.allclose(reused.logits[:, 8:], full.logits[:, 8:], atol=1e-5)
    assert torch.allclose(reused.gaps[:, 8:], full.gaps[:, 8:], atol=1e-5)
    assert torch.allclose(two_rows.logits[:, 8:], full.logits[[2, 0], 8:], atol=1e-5)
    # Approximate once the time moves on: the prefix was modulated with t = 0.3.
    assert not torch.allclose(later.logits[:, 8:], full_later.logits[:, 8:], atol=1e-3)
    with pytest.raises(ValueError, match="inside the cached prefix"):
        model(ids, lengths, t, logits_positions=torch.ones(3, 20, dtype=torch.bool), prefix_cache=cache)


def test_prefix_cache_refreshed_every_forward_is_the_exact_sampler(tiny_flexmdm):
    prompts = [[5, 6, 7, 8, 9], [10] * 9, [11, 12, 13, 14]]
    suffixes = [[20, 21], [22], [23, 24, 25]]
    kwargs = {"steps": 16, "seed": 3, "temperature": 0.7, "progress": False}
    for infill in (None, suffixes):
        exact = flexmdm_generate(tiny_flexmdm, prompts, suffixes=infill, **kwargs)
        refreshed = flexmdm_generate(tiny_flexmdm, prompts, suffixes=infill, prefix_cache=True,
                                     prefix_cache_refresh=1, **kwargs)
        assert refreshed.sequences == exact.sequences
        reused = flexmdm_generate(tiny_flexmdm, prompts, suffixes=infill, prefix_cache=True,
                                  **kwargs)
        assert all(126 not in sequence for sequence in reused.sequences)


def test_prefix_cache_needs_a_model_that_supports_it():
    with pytest.raises(ValueError, match="prefix_cache: true needs a model"):
        flexmdm_generate(LengthOracle(LENGTHS), [[0]], steps=4, prefix_cache=True, progress=False)
