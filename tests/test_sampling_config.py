"""Typed sampler settings: FlexMDMSamplingConfig / MDMSamplingConfig (validated once, strict)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_sampling import StubFlexMDM, StubMDM, _prompts

from retrofit.evaluation.specs import load_spec
from retrofit.sampling import (
    ConfigError,
    FlexMDMSamplingConfig,
    MDMSamplingConfig,
    flexmdm_generate,
    mdm_generate,
)
from retrofit.schedules import get_schedule

EVAL_SPECS = sorted((Path(__file__).resolve().parents[1] / "eval").glob("*.yaml"))
CONFIGS = {"flexmdm": FlexMDMSamplingConfig, "mdm": MDMSamplingConfig}


@pytest.mark.parametrize("path", EVAL_SPECS, ids=lambda p: p.stem)
def test_every_eval_spec_generation_section_is_a_valid_config(path):
    spec = load_spec(path)
    for kind, cls in CONFIGS.items():
        settings = spec.generation_settings(kind)
        assert settings, f"{path.name} has no generation.{kind}"
        config = cls.from_dict(settings, where=f"{path.name}: generation.{kind}")
        assert config.to_dict() == {**cls().to_dict(), **settings}


def test_eval_specs_found():
    assert len(EVAL_SPECS) >= 5


def test_unknown_key_is_one_line_with_did_you_mean():
    with pytest.raises(ConfigError) as error:
        FlexMDMSamplingConfig.from_dict({"steps": 8, "confidense": "top_prob"},
                                        where="eval/x.yaml: generation.flexmdm")
    message = str(error.value)
    assert "\n" not in message
    assert "eval/x.yaml: generation.flexmdm.confidense: unknown key" in message
    assert "did you mean 'confidence'" in message
    with pytest.raises(ConfigError, match="gen_lenght: unknown key. did you mean 'gen_length'"):
        MDMSamplingConfig.from_dict({"gen_lenght": 8})


@pytest.mark.parametrize(
    "cls,raw,key",
    [
        (FlexMDMSamplingConfig, {"steps": "256"}, "steps"),
        (FlexMDMSamplingConfig, {"steps": 2.5}, "steps"),
        (FlexMDMSamplingConfig, {"temperature": "hot"}, "temperature"),
        (FlexMDMSamplingConfig, {"fixed_buffer": 1}, "fixed_buffer"),
        (FlexMDMSamplingConfig, {"max_window": 3.5}, "max_window"),
        (FlexMDMSamplingConfig, {"forbid_token_ids": 5}, "forbid_token_ids"),
        (MDMSamplingConfig, {"block_length": "32"}, "block_length"),
        (MDMSamplingConfig, {"remasking": 3}, "remasking"),
    ],
)
def test_wrong_type_is_one_line_naming_the_key(cls, raw, key):
    with pytest.raises(ConfigError) as error:
        cls.from_dict(raw, where="generation")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"generation.{key}: expected")


@pytest.mark.parametrize(
    "cls,raw,match",
    [
        (FlexMDMSamplingConfig, {"steps": 0}, "steps must be an integer >= 1"),
        (FlexMDMSamplingConfig, {"confidence": "prob_dif"}, "did you mean 'prob_diff'"),
        (FlexMDMSamplingConfig, {"top_p": 0.0}, "top_p"),
        (FlexMDMSamplingConfig, {"temperature": -1}, "temperature"),
        (FlexMDMSamplingConfig, {"window_alpha": 0}, "window_alpha"),
        (FlexMDMSamplingConfig, {"stop_threshold": -0.1}, "stop_threshold"),
        (FlexMDMSamplingConfig, {"batch_size": 0}, "batch_size"),
        (MDMSamplingConfig, {"gen_length": 10, "block_length": 4}, "multiple of block_length"),
        (MDMSamplingConfig, {"gen_length": 8, "block_length": 4, "steps": 3}, "divisible"),
        (MDMSamplingConfig, {"remasking": "lowconfidence"}, "did you mean 'low_confidence'"),
    ],
)
def test_out_of_range_values_rejected_at_construction(cls, raw, match):
    with pytest.raises(ConfigError, match=match):
        cls.from_dict(raw)
    with pytest.raises(ValueError, match=match):
        cls(**raw)  # the dataclass itself validates: an instance is valid by construction


def test_yaml_numbers_coerce_and_configs_are_frozen():
    config = FlexMDMSamplingConfig.from_dict({"temperature": 0, "window_alpha": 15, "top_p": "1e-1"})
    assert config.temperature == 0.0 and isinstance(config.window_alpha, float)
    assert config.top_p == pytest.approx(0.1)
    with pytest.raises(AttributeError):
        config.steps = 3  # type: ignore[misc]
    assert config.replace(steps=3).steps == 3
    with pytest.raises(ConfigError, match="unknown key"):
        config.replace(stepz=3)
    schedule = get_schedule("poly(2)")
    with_schedule = FlexMDMSamplingConfig(insertion_schedule=schedule)
    assert with_schedule.replace(steps=4).insertion_schedule is schedule
    assert with_schedule.to_dict()["insertion_schedule"] == "poly(2)"


def test_config_form_equals_keyword_form():
    prompts = _prompts(5)
    settings = {"steps": 12, "temperature": 0.8, "window_alpha": 2.0, "confidence": "top_prob"}
    by_keywords = flexmdm_generate(StubFlexMDM(), prompts, seed=3, progress=False, **settings)
    by_config = flexmdm_generate(StubFlexMDM(), prompts, seed=3, progress=False,
                                 config=FlexMDMSamplingConfig(**settings))
    by_mapping = flexmdm_generate(StubFlexMDM(), prompts, seed=3, progress=False, config=settings)
    overridden = flexmdm_generate(StubFlexMDM(), prompts, seed=3, progress=False,
                                  config={**settings, "steps": 99}, steps=12)
    assert by_keywords.sequences == by_config.sequences == by_mapping.sequences
    assert overridden.sequences == by_keywords.sequences
    mdm_settings = {"gen_length": 8, "block_length": 4, "steps": 8, "temperature": 0.5}
    first = mdm_generate(StubMDM(), prompts, progress=False, **mdm_settings)
    second = mdm_generate(StubMDM(), prompts, progress=False, config=MDMSamplingConfig(**mdm_settings))
    assert first.sequences == second.sequences


def test_samplers_reject_unknown_keywords():
    with pytest.raises(ConfigError, match="flexmdm_generate.temprature: unknown key. did you mean"):
        flexmdm_generate(StubFlexMDM(), [[1]], temprature=0.5, progress=False)
    with pytest.raises(ConfigError, match="mdm_generate.gen_len: unknown key"):
        mdm_generate(StubMDM(), [[1]], gen_len=4, progress=False)
    with pytest.raises(ConfigError, match="must be a MDMSamplingConfig or a mapping"):
        mdm_generate(StubMDM(), [[1]], config=FlexMDMSamplingConfig(), progress=False)


def test_forbid_token_ids_accepts_any_iterable_of_ids():
    config = FlexMDMSamplingConfig.from_dict({"forbid_token_ids": {3, 4}})
    assert sorted(config.forbid_token_ids) == [3, 4]
    result = flexmdm_generate(StubFlexMDM(), [[1]], steps=4, forbid_token_ids=range(3),
                              progress=False)
    assert not set(result.sequences[0]) & {0, 1, 2}
    assert torch.is_tensor(result.lengths)
