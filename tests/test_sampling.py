"""Tests for retrofit.sampling with stub models (CPU, fast).

The stubs have the FlexMDM forward signature and record every call, so the tests can check what
the sampler fed the model (prompt intact, masks only in the answer region, logits requested only at
masked positions) besides what it returned.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from retrofit.sampling import (
    SamplingTrace,
    cap_insertions,
    flexmdm_generate,
    insert_masks,
    mdm_generate,
    num_transfer_tokens,
    plot_trace,
)
from retrofit.schedules import LinearSchedule, get_schedule

VOCAB = 16
MASK = 14
PAD = 15  # pad == eos, as in LLaDA


class StubFlexMDM(nn.Module):
    """FlexMDM stand-in: constant expected gaps and fixed, content-dependent logits.

    logits[b, p] = table[p] + table[(sum of the row's clean tokens) % 7] + shift(t): they depend only
    on the row's own first ``lengths[b]`` tokens (never on padding), like the real adapter.
    gaps[b, j] = ``gap`` for j <= lengths[b], 0 beyond.
    """

    def __init__(self, gap: float = 1.0, max_length: int = 512, unmasking: object = "linear"):
        super().__init__()
        self.gap = gap
        self.config = SimpleNamespace(
            kind="flexmdm",
            mask_token_id=MASK,
            pad_token_id=PAD,
            eos_token_id=PAD,
            max_length=max_length,
            insertion_schedule="linear",
            unmasking_schedule="linear",
        )
        self.insertion_schedule = get_schedule("linear")
        self.unmasking_schedule = get_schedule(unmasking)
        generator = torch.Generator().manual_seed(1234)
        self.register_buffer("table", torch.randn(2048, VOCAB, generator=generator) * 3)
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, input_ids, lengths, t, logits_positions=None):
        _batch, width = input_ids.shape
        self.calls.append(
            {
                "input_ids": input_ids.clone(),
                "lengths": lengths.clone(),
                "t": t.clone(),
                "positions": None if logits_positions is None else logits_positions.clone(),
            }
        )
        positions = torch.arange(width)
        inside = positions[None, :] < lengths[:, None]
        clean = inside & (input_ids != MASK)
        content = (torch.where(clean, input_ids, 0).sum(dim=1) % 7) + 1000  # (B,)
        logits = self.table[positions][None] + self.table[content][:, None]  # (B, L, V)
        logits = logits + t[:, None, None] * self.table[2000][None, None]
        gaps = torch.where(
            torch.arange(width + 1)[None, :] <= lengths[:, None], self.gap, 0.0
        )  # (B, L + 1)
        if logits_positions is not None:
            logits = logits[logits_positions]
        return SimpleNamespace(logits=logits, gaps=gaps)


class StepTokenFlexMDM(StubFlexMDM):
    """Stub whose favourite token changes with every call (1 + call index % 9): an overwritten
    clean token would change value, which the clean-subsequence check below detects."""

    def forward(self, input_ids, lengths, t, logits_positions=None):
        output = super().forward(input_ids, lengths, t, logits_positions)
        favourite = 1 + (len(self.calls) - 1) % 9
        output.logits = output.logits.clone()
        output.logits[..., favourite] += 100.0
        return output


class HugeUnmaskRate(LinearSchedule):
    """beta jumps to 1 right after t = 0: every step's unmasking probability is 1, so
    k ~ Poisson(n_mask) exceeds the eligible masks about half the time."""

    def _one_minus_at(self, t):
        return (t == 0).to(t.dtype)


class StubMDM(nn.Module):
    """LLaDA stand-in without ``logits_positions``: returns full (B, L, V) logits."""

    def __init__(self, max_length: int = 512):
        super().__init__()
        self.config = SimpleNamespace(
            kind="mdm", mask_token_id=MASK, pad_token_id=PAD, eos_token_id=PAD,
            max_length=max_length,
        )
        generator = torch.Generator().manual_seed(99)
        self.register_buffer("table", torch.randn(1024, VOCAB, generator=generator) * 2)
        self.calls: list[torch.Tensor] = []

    def forward(self, input_ids, lengths, t):
        assert t is None
        self.calls.append(input_ids.clone())
        width = input_ids.shape[1]
        inside = torch.arange(width)[None, :] < lengths[:, None]
        content = (torch.where(inside & (input_ids != MASK), input_ids, 0).sum(1) % 5) + 900
        return self.table[torch.arange(width)][None] + self.table[content][:, None]


def _prompts(count: int, first_token: int = 0) -> list[list[int]]:
    """Distinct prompts of different lengths; the first token identifies the prompt."""
    return [[(first_token + i) % 13] + [(3 * i + j) % 13 for j in range(i % 5)] for i in range(count)]


def _is_subsequence(short: list[int], long: list[int]) -> bool:
    iterator = iter(long)
    return all(token in iterator for token in short)


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def test_insert_masks_places_masks_in_slots():
    ids = torch.tensor([[1, 2, 3, PAD], [4, 5, PAD, PAD]])
    lengths = torch.tensor([3, 2])
    counts = torch.tensor([[0, 2, 0, 1, 0], [1, 0, 1, 0, 0]])
    new_ids, new_lengths = insert_masks(ids, lengths, counts, mask_token_id=MASK, pad_token_id=PAD)
    assert new_lengths.tolist() == [6, 4]
    assert new_ids.tolist() == [[1, MASK, MASK, 2, 3, MASK], [MASK, 4, 5, MASK, PAD, PAD]]
    fixed, _ = insert_masks(ids, lengths, counts, mask_token_id=MASK, pad_token_id=PAD, width=9)
    assert fixed.shape == (2, 9) and torch.equal(fixed[:, :6], new_ids[:, :6])
    with pytest.raises(ValueError, match="shape"):
        insert_masks(ids, lengths, counts[:, :3], mask_token_id=MASK, pad_token_id=PAD)


def test_cap_insertions_scales_rows_proportionally():
    counts = torch.tensor([[4, 0, 4, 2], [1, 1, 0, 0], [3, 3, 3, 0]])
    capacity = torch.tensor([5, 10, 0])
    capped, truncated = cap_insertions(counts, capacity)
    assert truncated.tolist() == [True, False, True]
    assert capped.sum(1).tolist() == [5, 2, 0]
    assert capped[0].tolist() == [2, 0, 2, 1]  # 4*5/10 = 2, 2, 1: every slot keeps its share
    assert capped[1].tolist() == [1, 1, 0, 0]
    assert (capped <= counts).all()


def test_num_transfer_tokens_matches_llada():
    schedule = num_transfer_tokens(torch.tensor([10, 7, 0]), 4)
    assert schedule.tolist() == [[3, 3, 2, 2], [2, 2, 2, 1], [0, 0, 0, 0]]


# ------------------------------------------------------------------------------------------------
# FlexMDM sampler
# ------------------------------------------------------------------------------------------------


def _expected_answer_length(gap: float, steps: int) -> tuple[float, float]:
    """Exact mean, and the variance under the Poisson draw, of the final answer length m.

    With ghat_j = gap on each of the X = m + 1 answer slots, step n inserts on average c_n X masks,
    c_n = gap * (alpha(t_n + dt) - alpha(t_n)) / (1 - alpha(t_n)) = gap * dt / (1 - t_n) for the
    linear alpha (steps 0 .. steps-1, the last one included: its c = gap, every missing token
    arrives; the fill pass after it inserts nothing). Hence E[X'] = (1 + c) E[X], for both draws
    (the binomial draw's missing count is an unbiased rounding of gap X). Poisson:
    Var[X'] = c E[X] + (1 + c)^2 Var[X], from X = 1 (empty answer); the binomial draw's variance
    is smaller (its conditional variance gap X p (1 - p) + p^2 / 4 <= c X here).
    """
    mean, variance = 1.0, 0.0
    for step in range(steps):
        c = gap * (1 / steps) / (1 - step / steps)
        mean, variance = (1 + c) * mean, c * mean + (1 + c) ** 2 * variance
    return mean - 1.0, variance


@pytest.mark.parametrize("draw", ["binomial", "poisson"])
def test_inserted_token_count_matches_expectation(draw):
    gap, steps, rows = 0.8, 16, 600
    model = StubFlexMDM(gap=gap, max_length=4096)
    prompts = _prompts(rows)
    # Half the rows infill between a prefix and a suffix: the same number of answer slots.
    suffixes = [[7, 8] if i % 2 else [] for i in range(rows)]
    result = flexmdm_generate(
        model, prompts, suffixes=suffixes, steps=steps, seed=3, progress=False,
        insertion_draw=draw,
    )
    mean, variance = _expected_answer_length(gap, steps)
    standard_error = math.sqrt(variance / rows)
    observed = result.lengths.double().mean().item()
    assert abs(observed - mean) < 4 * standard_error, (observed, mean, standard_error)
    assert not result.truncated.any()
    # Stub ghat >= 0.8 per slot never allows an early stop: every row takes every step, and the
    # rows that still hold masks after the last one take part in the fill pass.
    assert ((result.steps == steps) | (result.steps == steps + 1)).all()
    assert result.num_forward_passes == steps + 1
    assert all(MASK not in seq for seq in result.sequences)


def test_insertions_never_touch_prompt_or_suffix():
    model = StubFlexMDM(gap=1.5, max_length=256)
    prefixes = _prompts(6)
    suffixes = [[9, 10, 11][: i % 4] for i in range(6)]
    result = flexmdm_generate(
        model, prefixes, suffixes=suffixes, steps=12, seed=0, temperature=0.7, progress=False
    )
    by_first = {prefix[0]: (prefix, suffix) for prefix, suffix in zip(prefixes, suffixes)}
    for call in model.calls:
        for row, length in zip(call["input_ids"], call["lengths"].tolist()):
            prefix, suffix = by_first[int(row[0])]
            tokens = row[:length].tolist()
            assert tokens[: len(prefix)] == prefix
            assert tokens[length - len(suffix) :] == suffix
            # Beyond the length: padding only.
            assert (row[length:] == PAD).all()
    for index, (prefix, suffix) in enumerate(zip(prefixes, suffixes)):
        full = result.full_sequences[index]
        assert full == prefix + result.sequences[index] + suffix
        assert MASK not in result.sequences[index] and PAD not in result.sequences[index]
        assert len(result.sequences[index]) == int(result.lengths[index]) > 0


def test_logits_only_at_masks_and_inside_window():
    model = StubFlexMDM(gap=2.0)
    flexmdm_generate(
        model, _prompts(4), steps=10, window_alpha=1.0, max_window=2, confidence="top_prob",
        seed=1, progress=False,
    )
    for call in model.calls[:-1]:  # the last step asks for every mask
        masks = call["input_ids"] == MASK
        assert not (call["positions"] & ~masks).any()
        rank = masks.long().cumsum(1)
        assert (rank[call["positions"]] <= 2).all()
    last = model.calls[-1]
    assert torch.equal(last["positions"], last["input_ids"] == MASK)


@pytest.mark.parametrize("confidence", ["prob_diff", "entropy", "position"])
def test_k_clamped_and_clean_tokens_never_overwritten(confidence):
    model = StepTokenFlexMDM(gap=1.0, unmasking=HugeUnmaskRate())
    trace = SamplingTrace()
    prompts = _prompts(5)
    result = flexmdm_generate(
        model, prompts, steps=12, confidence=confidence, seed=2, trace=trace, progress=False
    )
    # Trace: the clean count grows by at most the masks present before the step.
    for before, after in zip(trace.steps, trace.steps[1:]):
        for n_clean0, n_mask0, n_clean1 in zip(before.n_clean, before.n_mask, after.n_clean):
            assert 0 <= n_clean1 - n_clean0 <= n_mask0
    assert trace.steps[-1].n_mask == [0] * len(prompts)
    # Each call's clean answer tokens survive, unchanged and in order, into the next call.
    previous: dict[int, list[int]] = {}
    for call in model.calls:
        for row, length in zip(call["input_ids"], call["lengths"].tolist()):
            key = int(row[0])
            prompt_len = len(prompts[key])
            clean = [tok for tok in row[prompt_len:length].tolist() if tok != MASK]
            assert _is_subsequence(previous.get(key, []), clean)
            previous[key] = clean
    for index, clean in previous.items():
        assert _is_subsequence(clean, result.sequences[index])


def test_row_ids_make_streams_independent_of_how_a_list_is_split():
    """Row i draws from (seed, row_ids[i]): sampling a list in two calls with global row ids gives
    the single call's outputs; the default ids restart at 0 in every call, so identical prompts in
    two calls would repeat each other."""
    kwargs = {"steps": 12, "temperature": 1.0, "seed": 4, "progress": False}
    prompts = [[1, 2]] * 6  # identical prompts: only the random stream tells the rows apart
    whole = flexmdm_generate(StubFlexMDM(), prompts, **kwargs)
    assert len({tuple(seq) for seq in whole.sequences}) > 1
    halves = [
        flexmdm_generate(StubFlexMDM(), prompts[:3], row_ids=[0, 1, 2], **kwargs),
        flexmdm_generate(StubFlexMDM(), prompts[3:], row_ids=[3, 4, 5], **kwargs),
    ]
    assert halves[0].sequences + halves[1].sequences == whole.sequences
    repeated = flexmdm_generate(StubFlexMDM(), prompts[3:], **kwargs)  # ids 0, 1, 2 again
    assert repeated.sequences == halves[0].sequences
    mdm_kwargs = {"gen_length": 8, "block_length": 4, "steps": 8, "temperature": 1.0, "seed": 4,
                  "progress": False}
    mdm_whole = mdm_generate(StubMDM(), prompts, **mdm_kwargs)
    mdm_half = mdm_generate(StubMDM(), prompts[3:], row_ids=[3, 4, 5], **mdm_kwargs)
    assert mdm_half.sequences == mdm_whole.sequences[3:]
    with pytest.raises(ValueError, match="row_ids has 2 entries for 6 prompts"):
        flexmdm_generate(StubFlexMDM(), prompts, row_ids=[0, 1], **kwargs)
    with pytest.raises(ValueError, match="non-negative integers"):
        mdm_generate(StubMDM(), prompts[:1], row_ids=[-1], **mdm_kwargs)


@pytest.mark.parametrize("schedule", ["poly(0.5)", "geometric(10, 0.01)", "sin", "cosine", "poly(2)"])
def test_every_schedule_samples_with_finite_step_probabilities(schedule):
    """The sampler uses the exact per-step arrival probability (a(t+dt) - a(t)) / (1 - a(t)),
    which stays finite where the rate factor does not (poly(0.5): kappa(0) = inf)."""
    from retrofit.sampling import _step_probabilities

    probabilities = _step_probabilities(get_schedule(schedule), 16)
    assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) > 0
    linear = _step_probabilities(get_schedule("linear"), 16)
    assert linear == pytest.approx([(1 / 16) / (1 - i / 16) for i in range(16)], rel=1e-12)
    model = StubFlexMDM(gap=1.0, max_length=256)
    model.insertion_schedule = model.unmasking_schedule = get_schedule(schedule)
    result = flexmdm_generate(model, _prompts(4), steps=16, seed=0, progress=False)
    assert all(MASK not in seq for seq in result.sequences)
    assert (result.lengths >= 0).all() and result.lengths.sum() > 0


def test_same_seed_same_output_and_seed_matters():
    kwargs = {"steps": 16, "temperature": 1.0, "top_p": 0.9, "progress": False}
    first = flexmdm_generate(StubFlexMDM(), _prompts(6), seed=5, **kwargs)
    second = flexmdm_generate(StubFlexMDM(), _prompts(6), seed=5, **kwargs)
    other = flexmdm_generate(StubFlexMDM(), _prompts(6), seed=6, **kwargs)
    assert first.sequences == second.sequences
    assert torch.equal(first.lengths, second.lengths)
    assert first.sequences != other.sequences


@pytest.mark.parametrize("confidence", ["prob_diff", "top_prob"])
def test_live_length_equals_fixed_buffer_and_regrouping(confidence):
    kwargs = {
        "steps": 20, "temperature": 0.8, "top_p": 0.95, "confidence": confidence, "seed": 11, "progress": False,
        "window_alpha": 2.0,
    }
    prompts = _prompts(7)
    live_model, fixed_model, grouped_model = StubFlexMDM(), StubFlexMDM(), StubFlexMDM()
    live = flexmdm_generate(live_model, prompts, **kwargs)
    fixed = flexmdm_generate(fixed_model, prompts, fixed_buffer=True, **kwargs)
    grouped = flexmdm_generate(grouped_model, prompts, batch_size=3, sort_by_length=True, **kwargs)
    assert live.sequences == fixed.sequences == grouped.sequences
    assert live.lengths.sum() > 0
    # The live buffer is the longest row; the fixed one is max_length wide.
    assert all(call["input_ids"].shape[1] == 512 for call in fixed_model.calls)
    assert max(call["input_ids"].shape[1] for call in live_model.calls) < 512
    for call in live_model.calls:
        assert call["input_ids"].shape[1] == max(1, int(call["lengths"].max()))


def test_max_length_truncates_proportionally_and_early_stop():
    model = StubFlexMDM(gap=5.0, max_length=20)
    result = flexmdm_generate(model, [[1], [2, 3, 4]], steps=12, seed=0, progress=False)
    assert result.truncated.all()
    assert [len(seq) for seq in result.full_sequences] == [20, 20]
    # A model that predicts no insertions stops at once with an empty answer.
    empty = flexmdm_generate(StubFlexMDM(gap=0.0), [[1, 2]], steps=50, progress=False)
    assert empty.sequences == [[]] and empty.steps.tolist() == [1]
    assert empty.num_forward_passes == 1


def test_trace_and_plot(tmp_path):
    trace = SamplingTrace()
    flexmdm_generate(StubFlexMDM(), _prompts(3), steps=8, trace=trace, progress=False)
    # The initial state, 8 steps, and the fill pass after the last step (step 9, t = 1).
    assert [record.step for record in trace] == list(range(10))
    assert trace.steps[-1].t == 1.0 and trace.steps[-1].n_mask == [0, 0, 0]
    assert trace.steps[0].lengths == [0, 0, 0]
    path = plot_trace(trace, tmp_path / "trace.png")
    assert path.exists() and path.stat().st_size > 1000


def test_flexmdm_bad_inputs():
    model = StubFlexMDM(max_length=8)
    with pytest.raises(ValueError, match="no prompts"):
        flexmdm_generate(model, [], progress=False)
    with pytest.raises(ValueError, match="max_length"):
        flexmdm_generate(model, [list(range(9))], progress=False)
    with pytest.raises(ValueError, match="exceeds the model's max_length=8"):
        flexmdm_generate(model, [[1]], max_length=9, progress=False)
    with pytest.raises(ValueError, match="steps"):
        flexmdm_generate(model, [[1]], steps=0, progress=False)
    with pytest.raises(ValueError, match="unknown confidence"):
        flexmdm_generate(model, [[1]], confidence="margin", progress=False)
    with pytest.raises(ValueError, match="suffixes"):
        flexmdm_generate(model, [[1]], suffixes=[[2], [3]], progress=False)
    with pytest.raises(ValueError, match="mask token"):
        flexmdm_generate(model, [[1, MASK]], progress=False)
    with pytest.raises(TypeError, match="wrap"):
        flexmdm_generate(model, [1, 2, 3], progress=False)


# ------------------------------------------------------------------------------------------------
# MDM baseline sampler
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "remasking,temperature,cfg_scale",
    [("low_confidence", 0.0, 0.0), ("random", 1.0, 0.0), ("low_confidence", 0.5, 1.0)],
)
def test_mdm_reveals_block_by_block(remasking, temperature, cfg_scale):
    model = StubMDM()
    prompts = _prompts(4)
    gen_length, block_length, steps = 12, 4, 9
    trace = SamplingTrace()
    result = mdm_generate(
        model, prompts, gen_length=gen_length, block_length=block_length, steps=steps,
        remasking=remasking, temperature=temperature, cfg_scale=cfg_scale, seed=4, progress=False,
        trace=trace,
    )
    assert trace.steps[0].n_mask == [gen_length] * len(prompts)
    assert trace.steps[-1].n_mask == [0] * len(prompts) and len(trace) == steps + 1
    assert len(model.calls) == steps == result.num_forward_passes
    per_block = steps // (gen_length // block_length)
    expected_revealed = num_transfer_tokens(torch.tensor([block_length]), per_block)[0].tolist()
    for call_index, call in enumerate(model.calls):
        if cfg_scale > 0:
            conditional, unconditional = call.chunk(2)
            for row, prompt in enumerate(prompts):
                assert (unconditional[row, : len(prompt)] == MASK).all()
            call = conditional
        block = call_index // per_block
        for row, prompt in enumerate(prompts):
            generated = call[row, len(prompt) : len(prompt) + gen_length].view(-1, block_length)
            masks = generated == MASK
            assert not masks[:block].any()  # earlier blocks finished
            assert masks[block + 1 :].all()  # later blocks untouched
            revealed_before = sum(expected_revealed[: call_index % per_block])
            assert int((~masks[block]).sum()) == revealed_before
            assert call[row, : len(prompt)].tolist() == prompt
    for prompt, sequence, full in zip(prompts, result.sequences, result.full_sequences):
        assert len(sequence) == gen_length and MASK not in sequence
        assert full == prompt + sequence
    again = mdm_generate(
        StubMDM(), prompts, gen_length=gen_length, block_length=block_length, steps=steps,
        remasking=remasking, temperature=temperature, cfg_scale=cfg_scale, seed=4, progress=False,
    )
    assert again.sequences == result.sequences


def test_mdm_bad_inputs():
    model = StubMDM(max_length=16)
    with pytest.raises(ValueError, match="no prompts"):
        mdm_generate(model, [], gen_length=4, steps=4, progress=False)
    with pytest.raises(ValueError, match="max_length"):
        mdm_generate(model, [list(range(14))], gen_length=4, steps=4, progress=False)
    with pytest.raises(ValueError, match="steps"):
        mdm_generate(model, [[1]], gen_length=4, steps=0, progress=False)
    with pytest.raises(ValueError, match="divisible"):
        mdm_generate(model, [[1]], gen_length=8, block_length=4, steps=3, progress=False)
    with pytest.raises(ValueError, match="remasking"):
        mdm_generate(model, [[1]], gen_length=4, steps=4, remasking="top", progress=False)


# ------------------------------------------------------------------------------------------------
# `retrofit generate` on a tiny real checkpoint
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random LLaDA retrofitted with the tiny-llada spec, saved with a char tokenizer."""
    import string

    from retrofit.adapter import FlexMDM
    from retrofit.models import LLaDAModelLM, tiny_llada_config
    from retrofit.tokenization import build_char_tokenizer

    root = tmp_path_factory.mktemp("generate")
    tokenizer = build_char_tokenizer(string.printable, eos_token="<|pad|>")
    ids = {"mask_token_id": tokenizer.mask_token_id, "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    backbone = LLaDAModelLM(tiny_llada_config(vocab_size=len(tokenizer), **ids))
    backbone.save_pretrained(root / "base")
    model = FlexMDM.retrofit(str(root / "base"), "tiny-llada", max_length=128, **ids)
    checkpoint = model.save_pretrained(root / "ckpt")
    tokenizer.save_pretrained(checkpoint)
    return checkpoint


def test_generate_cli(tiny_checkpoint, tmp_path, capsys):
    from retrofit.generate import cli_main

    base = ["--model", str(tiny_checkpoint), "--steps", "6", "--no-progress", "--seed", "1"]
    assert cli_main(base + ["--prompt", "2+2="]) == 0
    first = capsys.readouterr().out
    assert cli_main(base + ["--prompt", "2+2="]) == 0
    assert capsys.readouterr().out == first  # same seed, same text

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n{"prompt": "a longer prompt", "id": "b"}\n')
    plot = tmp_path / "trace.png"
    output = tmp_path / "out.jsonl"
    code = cli_main(base + ["--prompts", str(prompts), "--json", "--trace-plot", str(plot),
                            "--output", str(output), "--temperature", "0.7", "--top-p", "0.9"])
    assert code == 0 and plot.exists()
    import json

    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in rows] == [0, "b"]
    assert rows == [json.loads(line) for line in output.read_text().splitlines()]

    assert cli_main(base + ["--prefix", "def f(x):\n", "--suffix", "\n    return y\n",
                            "--window", "2", "--max-window", "4"]) == 0
    capsys.readouterr()
    assert cli_main(base + ["--prefix", "abc"]) == 2
    assert "both --prefix and --suffix" in capsys.readouterr().err
    assert cli_main(base + ["--prompt", "x" * 200]) == 2  # longer than max_length 128
    assert "max_length" in capsys.readouterr().err


class PadLovingFlexMDM(StubFlexMDM):
    """Stub whose logits favour the pad and mask ids above everything else."""

    def forward(self, input_ids, lengths, t, logits_positions=None):
        output = super().forward(input_ids, lengths, t, logits_positions)
        output.logits = output.logits.clone()
        output.logits[..., PAD] += 100.0
        output.logits[..., MASK] += 200.0
        return output


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_forbidden_tokens_never_emitted(temperature):
    kwargs = {"steps": 10, "temperature": temperature, "seed": 0, "progress": False}
    default = flexmdm_generate(PadLovingFlexMDM(gap=2.0), _prompts(4), **kwargs)
    tokens = [tok for seq in default.sequences for tok in seq]
    assert tokens and MASK not in tokens and PAD not in tokens
    allowed = flexmdm_generate(PadLovingFlexMDM(gap=2.0), _prompts(4), forbid_token_ids=[], **kwargs)
    tokens = [tok for seq in allowed.sequences for tok in seq]
    assert set(tokens) == {PAD}  # the mask id stays forbidden even when not listed


def test_live_equals_fixed_on_tiny_flexmdm(tiny_checkpoint):
    """The real adapter masks attention beyond each row, so the buffer width changes nothing."""
    from retrofit.adapter import FlexMDM

    model = FlexMDM.from_pretrained(tiny_checkpoint)
    prompts = [[5, 6, 7], [8] * 11, [9, 10]]
    kwargs = {"steps": 24, "seed": 3, "temperature": 0.9, "progress": False}
    live = flexmdm_generate(model, prompts, **kwargs)
    fixed = flexmdm_generate(model, prompts, fixed_buffer=True, **kwargs)
    assert live.sequences == fixed.sequences
    assert live.lengths.sum() > 0


@pytest.mark.parametrize("sampler", ["llada", "dream"])
def test_canvas_samplers_share_one_prompt_check(sampler):
    """Both MDM samplers refuse, with the same one-line reason, a prompt holding the mask id, a
    prompt plus canvas longer than max_length, and a model without mask/pad ids."""
    from retrofit.sampling.dream import dream_generate

    def run(model, prompts):
        if sampler == "llada":
            return mdm_generate(model, prompts, gen_length=8, block_length=8, steps=8)
        return dream_generate(model, prompts, gen_length=8, steps=8)

    with pytest.raises(ValueError, match=f"prompt 1 contains the mask token id {MASK}"):
        run(StubMDM(), [[1, 2], [3, MASK]])
    with pytest.raises(ValueError, match="longest prompt plus gen_length is 12 tokens, more than "
                                          "the model's max_length=10"):
        run(StubMDM(max_length=10), [[1, 2, 3, 4], [1]])
    anonymous = StubMDM()
    anonymous.config.mask_token_id = None
    with pytest.raises(ValueError, match="mask/pad token ids unknown"):
        run(anonymous, [[1, 2]])
