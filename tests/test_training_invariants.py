"""Invariants of training that a wrong number only shows after ~1,000 GPU-hours (issue 12):

* the global batch is the recipe's invariant: ``--print-config --world-size 1/8/16`` shows the same
  global batch and optimizer steps for every paper recipe, the accumulation derived; and one
  optimizer step computes the same loss and gradient whatever the split of its global batch into
  processes x accumulation micro-batches (both objectives);
* FlexMDM time is independent of sequence length and of rank: on the length-bucketed GSM8K stream of
  the paper recipe, |corr(t, length)| < 0.03 over >= 10k rows and every rank's mean t is within 3
  standard errors of 0.5 (on main: corr 0.17, rank means from 0.03 to 0.97 on 16 processes).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from retrofit.config import load_config
from retrofit.train import cli_main
from retrofit.training.run_size import load_resolved

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"
PAPER_RECIPES = sorted((REPO / "recipes" / "llada-8b").glob("*.yaml"))
PRETRAIN = REPO / "recipes" / "tiny" / "flexmdm-pretrain.yaml"


def _print_config(recipe: Path, world_size: int, capsys: pytest.CaptureFixture[str]) -> dict:
    overrides = ["model.init_from=null"]
    if "gsm8k" in recipe.name:
        overrides.append(f"data.path={GSM8K}")  # the same 7,473 problems, counted offline
    code = cli_main([str(recipe), "--print-config", "--world-size", str(world_size), *overrides])
    assert code == 0
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if line.startswith("#")]
    resolved = yaml.safe_load(out)["training"]
    return {"header": header, **resolved}


@pytest.mark.skipif(not GSM8K.is_file(), reason=f"needs the shared GSM8K data at {GSM8K}")
@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: p.stem)
def test_print_config_shows_the_same_global_batch_on_1_8_16_processes(
    recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {n: _print_config(recipe, n, capsys) for n in (1, 8, 16)}
    for world_size, training in runs.items():
        assert training["global_batch_size"] == 128
        micro = training["micro_batch_size"]
        assert world_size * micro * training["gradient_accumulation_steps"] == 128
        assert f"global batch 128 sequences = {world_size} process" in training["header"][1]
    assert len({training["max_steps"] for training in runs.values()}) == 1
    if "gsm8k" in recipe.name:  # 100 epochs of 7,473 problems at 128 per step
        assert runs[16]["max_steps"] == 5839 and runs[16]["epochs"] is None
        assert "5839 = ceil(100 epochs x 7473 records / 128)" in runs[16]["header"][2]
    elif "transfer" in recipe.name:
        assert runs[16]["max_steps"] == 200_000


def test_a_global_batch_that_does_not_divide_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe = REPO / "recipes" / "llada-8b" / "transfer.yaml"
    assert cli_main([str(recipe), "--print-config", "--world-size", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        "transfer.yaml:" in err and "global_batch_size: 128 is not divisible by 3 processes" in err
    )
    overrides = ["--print-config", "--world-size", "8", "training.gradient_accumulation_steps=2"]
    assert cli_main([str(recipe), *overrides]) == 2
    assert "contradicts global_batch_size 128 on 8 processes" in capsys.readouterr().err


def _tiny_setup(tmp_path: Path, objective: str):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from retrofit.tokenization import resolve_special_ids
    from retrofit.train import GlobalBatchStream, build_model, build_tokenizer
    from retrofit.training.objectives import build_objective

    cfg = load_config(
        PRETRAIN,
        [f"output_dir={tmp_path}", f"data.path={GSM8K}", "data.max_length=48",
         "objective.normalizer=tokens", f"objective.name={objective}",
         "training.global_batch_size=4", "training.micro_batch_size=1"],
    )  # fmt: skip
    tokenizer = build_tokenizer(cfg)
    set_seed(0)
    model = build_model(cfg, tokenizer, Accelerator())
    special_ids = resolve_special_ids(tokenizer)
    batch = next(GlobalBatchStream(cfg, tokenizer, 4, special_ids))
    schedules = (model.insertion_schedule, model.unmasking_schedule)
    return cfg, model, batch, build_objective(cfg, special_ids, schedules)


@pytest.mark.skipif(not GSM8K.is_file(), reason=f"needs the shared GSM8K data at {GSM8K}")
@pytest.mark.parametrize("objective_name", ["flexmdm", "mdm"])
def test_one_step_is_the_same_for_every_split_of_its_global_batch(
    objective_name: str, tmp_path: Path
) -> None:
    """A global batch of 4 rows on W = 1, 2, 4 ranks with 4 / W accumulation micro-batches of one
    row each: the ranks' gradients, averaged as DDP does, and the step's loss are the same."""
    from retrofit.train import noise_generator
    from retrofit.training.objectives import StepPlan, step_denominator

    cfg, model, batch, objective = _tiny_setup(tmp_path, objective_name)
    noised = objective.noise(batch, noise_generator(0, 0))
    results = {}
    for world_size in (1, 2, 4):
        accumulation = 4 // world_size
        denominator = step_denominator([batch], cfg, world_size)
        plan = StepPlan(accumulation_steps=accumulation, denominator=denominator)
        loss, grads = 0.0, None
        for rank in range(world_size):
            model.zero_grad(set_to_none=True)
            for micro_step in range(accumulation):
                local = objective.shard(noised, micro_step * world_size + rank, 4)
                out = objective.loss(model, local, plan)
                out.loss.backward()
                loss += float(out.loss.detach()) / world_size
            rank_grads = [
                p.grad.clone() / world_size for p in model.parameters() if p.grad is not None
            ]
            grads = (
                rank_grads
                if grads is None
                else [a + b for a, b in zip(grads, rank_grads, strict=True)]
            )
        results[world_size] = (loss, grads)
    whole_loss, whole_grads = results[1]
    assert whole_loss > 0 and whole_grads
    for world_size in (2, 4):
        loss, grads = results[world_size]
        assert loss == pytest.approx(whole_loss, rel=1e-6)
        for got, want in zip(grads, whole_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.skipif(not GSM8K.is_file(), reason=f"needs the shared GSM8K data at {GSM8K}")
def test_time_is_independent_of_length_and_rank_on_the_bucketed_gsm8k_stream() -> None:
    """The real data pipeline with recipes/llada-8b/gsm8k.yaml's settings (global batch 128,
    micro-batch 4, length_bucketing 8, seed 42; a local BPE tokenizer, the local GSM8K train file):
    the times training draws (FlexMDMObjective.noise) for 79 steps = 10,112 rows, the ranks' rows
    taken as training takes them (micro-batch m * W + rank of the noised batch)."""
    from retrofit.schedules import get_schedule
    from retrofit.tokenization import build_bpe_tokenizer, resolve_special_ids
    from retrofit.train import GlobalBatchStream, noise_generator
    from retrofit.training.objectives import FlexMDMObjective

    records = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    tokenizer = build_bpe_tokenizer((r["question"] + "\n" + r["answer"] for r in records), 2048)
    recipe = REPO / "recipes" / "llada-8b" / "gsm8k.yaml"
    cfg = load_resolved(recipe, [f"data.path={GSM8K}", "model.init_from=null"], world_size=16)
    assert (cfg.training.global_batch_size, cfg.training.length_bucketing) == (128, 8)
    special_ids = resolve_special_ids(tokenizer)
    stream = GlobalBatchStream(cfg, tokenizer, cfg.training.global_batch_size, special_ids)
    schedules = (get_schedule("linear"), get_schedule("linear"))
    objective = FlexMDMObjective(cfg, special_ids, schedules)
    micro, slices = cfg.training.micro_batch_size, 128 // cfg.training.micro_batch_size
    times, answer_lengths, row_lengths = [], [], []
    rank_times: dict[int, dict[int, list[float]]] = {8: {}, 16: {}}
    for step in range(79):
        batch = next(stream)
        noised = objective.noise(batch, noise_generator(cfg.training.seed, step))
        times.append(noised.t)
        row_lengths.append(batch.lengths)
        answer_lengths.append(batch.lengths - batch.protected.sum(dim=1))
        for world_size, by_rank in rank_times.items():
            for index in range(slices):  # micro-batch index = micro_step * W + rank
                local = objective.shard(noised, index, slices)
                assert local.t.shape == (micro,)
                by_rank.setdefault(index % world_size, []).extend(local.t.tolist())
    t = torch.cat(times)
    assert t.numel() >= 10_000
    assert abs(_corr(t, torch.cat(answer_lengths))) < 0.03
    assert abs(_corr(t, torch.cat(row_lengths))) < 0.03
    for world_size, by_rank in rank_times.items():
        assert len(by_rank) == world_size
        for rank, values in by_rank.items():
            standard_error = statistics.pstdev(values) / len(values) ** 0.5
            assert abs(statistics.mean(values) - 0.5) < 3 * standard_error, (world_size, rank)


def test_stratified_times_are_a_random_balanced_assignment_of_strata() -> None:
    """One stratum per row; every aligned block of 2, 4 or 8 rows (a micro-batch) holds one stratum
    in each half / quarter / eighth of [0, 1); which row gets which stratum is random: over seeds,
    every row position gets every stratum equally often. Other sizes: still one stratum per row."""
    from retrofit.interpolant import sample_times

    rows, eps = 16, 1e-3
    counts = torch.zeros(rows, rows)  # (position, stratum)
    for seed in range(4000):
        t = sample_times(rows, generator=torch.Generator().manual_seed(seed), stratified=True)
        strata = torch.floor((t - eps) / (1 - eps) * rows).long()
        assert sorted(strata.tolist()) == list(range(rows))
        for block in (2, 4, 8):
            coarse = (strata // (rows // block)).view(rows // block, block)
            assert all(sorted(b.tolist()) == list(range(block)) for b in coarse)
        counts[torch.arange(rows), strata] += 1
    assert float(counts.min()) > 4000 / rows * 0.75 and float(counts.max()) < 4000 / rows * 1.25
    t = sample_times(12, generator=torch.Generator().manual_seed(0), stratified=True)
    assert sorted(torch.floor((t - 1e-3) / (1 - 1e-3) * 12).long().tolist()) == list(range(12))
