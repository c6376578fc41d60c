"""Invariants of training that a wrong number only shows after ~1,000 GPU-hours (issue 12):

* the global batch is the recipe's invariant: ``--print-config --world-size 1/8/16`` shows the same
  global batch and optimizer steps for every paper recipe, the accumulation derived; and one
  optimizer step computes the same loss and gradient whatever the split of its global batch into
  processes x accumulation micro-batches (both objectives);
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from retrofit.config import load_config
from retrofit.train import cli_main

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
        assert runs[16]["max_steps"] == 5839 and runs[16]["epochs"] == 100
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

