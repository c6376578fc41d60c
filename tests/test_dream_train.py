"""Both arms on a tiny Dream through the training entry point (recipes/tiny/*dream*), then sampling:
the FlexMDM arm with flexmdm_generate, the MDM arm with Dream's own sampler (and LLaDA's)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from retrofit.adapter import FlexMDM
from retrofit.config import load_config
from retrofit.models import DreamModel
from retrofit.sampling import flexmdm_generate, mdm_generate
from retrofit.sampling.dream import dream_generate
from retrofit.train import train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each run builds its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _train_one_step(recipe: str, output_dir: Path):
    cfg = load_config(
        REPO / "recipes" / "tiny" / f"{recipe}.yaml",
        [
            f"output_dir={output_dir}",
            "logging.progress_bar=false",
            f"data.path={GSM8K}",
            "training.max_steps=1",
            "training.micro_batch_size=2",
            "checkpoint.save_every=1",
        ],
    )
    return train(cfg)


@pytest.mark.parametrize(
    "recipe, kind", [("flexmdm-dream-gsm8k", "flexmdm"), ("mdm-dream-gsm8k", "mdm")]
)
def test_one_training_step_and_a_sampling_run_per_arm(recipe, kind, tmp_path):
    result = _train_one_step(recipe, tmp_path)
    assert result.steps == 1 and math.isfinite(result.losses[0]) and result.losses[0] > 0
    base = json.loads((tmp_path / "tiny-random-base" / "config.json").read_text())
    assert base["model_type"] == "Dream" and base["architectures"] == ["DreamModel"]
    recorded = json.loads((tmp_path / "final" / "retrofit_config.json").read_text())
    assert (recorded["kind"], recorded["backbone_type"], recorded["logit_shift"]) == (
        kind,
        "Dream",
        1,
    )

    model = FlexMDM.from_pretrained(tmp_path / "final")
    assert isinstance(model.lm, DreamModel)
    prompts = [[3, 7, 8], [9]]
    forbidden = {model.mask_token_id, model.pad_token_id}
    if kind == "flexmdm":
        sampled = flexmdm_generate(model, prompts, steps=8, max_length=40, progress=False)
        assert [
            row[: len(prompt)] for row, prompt in zip(sampled.full_sequences, prompts)
        ] == prompts
        assert all(token not in forbidden for row in sampled.sequences for token in row)
        assert sampled.num_forward_passes >= 1
    else:
        for alg in ("entropy", "origin"):
            sampled = dream_generate(
                model, prompts, gen_length=10, steps=5, alg=alg, progress=False
            )
            assert [len(row) for row in sampled.sequences] == [10, 10]
            assert all(
                0 <= token < model.config.vocab_size for row in sampled.sequences for token in row
            )
        baseline = mdm_generate(model, prompts, gen_length=10, steps=5, progress=False)
        assert [len(row) for row in baseline.sequences] == [10, 10]
        assert model.mask_token_id not in {token for row in baseline.sequences for token in row}


def test_dream_sampler_rows_do_not_depend_on_batching():
    torch.manual_seed(0)
    from retrofit.models import tiny_dream_config

    model = FlexMDM.retrofit(DreamModel(tiny_dream_config()), "tiny-dream", kind="mdm")
    prompts = [[5, 17, 42, 9], [61, 3], [77]]
    settings = {
        "gen_length": 8,
        "steps": 4,
        "alg": "entropy",
        "temperature": 0.8,
        "alg_temp": 0.3,
        "seed": 3,
        "progress": False,
    }
    together = dream_generate(model, prompts, **settings)
    alone = dream_generate(model, prompts, batch_size=1, **settings)
    assert together.sequences == alone.sequences
    assert dream_generate(model, prompts, **{**settings, "seed": 4}).sequences != together.sequences
    with pytest.raises(ValueError, match="unknown alg"):
        dream_generate(model, prompts, alg="low_confidence")


def _flatten(data: dict, prefix: str = "") -> dict:
    """Nested recipe mapping -> {dotted key: value}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize(
    "name", ["transfer", "gsm8k", "code-infill", "mdm-transfer", "mdm-gsm8k", "mdm-code-infill"]
)
def test_dream_7b_recipes_mirror_the_llada_8b_ones(name):
    import dataclasses

    dream = _flatten(
        dataclasses.asdict(load_config(REPO / "recipes" / "dream-7b" / f"{name}.yaml"))
    )
    llada = _flatten(
        dataclasses.asdict(load_config(REPO / "recipes" / "llada-8b" / f"{name}.yaml"))
    )
    assert dream.keys() == llada.keys()
    differing = {key for key in dream if dream[key] != llada[key]}
    assert differing <= {"output_dir", "model.base", "model.adapter", "model.init_from"}
    assert dream["model.base"] == "Dream-org/Dream-v0-Base-7B" and dream["model.adapter"] == "dream"
    header = (REPO / "recipes" / "dream-7b" / f"{name}.yaml").read_text().split("\n")
    assert any(f"-m retrofit.train recipes/dream-7b/{name}.yaml" in line for line in header)
