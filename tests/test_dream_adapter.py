"""Retrofitting Dream (adapters/dream.yaml, tiny-dream.yaml): the backbone boundary from the spec,
zero-init equivalence with the shift-aligned backbone logits, the slot alignment under the logit
shift, the 7B trainable counts, save / load / merge and the Hub push."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import LocalHub, hub_environment

from retrofit.adapter import AdapterSpec, FlexMDM, RetrofitConfig
from retrofit.hub import push_model
from retrofit.models import (
    DreamConfig,
    DreamModel,
    LLaDAModelLM,
    tiny_dream_config,
    tiny_llada_config,
)

USER = "test-user"
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_dream.DreamConfig",
    "AutoModel": "modeling_dream.DreamModel",
}


def make_backbone(seed: int = 0, **overrides) -> DreamModel:
    """A tiny random Dream (2 layers, hidden 64, vocab 128; mask 126, pad = eos 127)."""
    torch.manual_seed(seed)
    return DreamModel(tiny_dream_config(**overrides)).eval()


def perturb_trainable(model: FlexMDM, seed: int = 1, scale: float = 0.05) -> None:
    """Move every trainable weight off its initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def make_batch(batch_size: int = 3, seq_len: int = 10, seed: int = 2):
    """Random ids, lengths covering full, partial and empty rows, times in (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 120, (batch_size, seq_len), generator=generator)
    lengths = torch.tensor([seq_len, seq_len // 2 - 1, 0][:batch_size])
    return input_ids, lengths, torch.rand(batch_size, generator=generator)


def shifted(logits: torch.Tensor) -> torch.Tensor:
    """Dream's own alignment (its sampler): position i reads logits i - 1, position 0 its own."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory) -> Path:
    """A tiny Dream saved in the official layout (model_type Dream, remote-code auto_map)."""
    directory = tmp_path_factory.mktemp("dream-tiny")
    make_backbone().save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(auto_map=OFFICIAL_AUTO_MAP, architectures=["DreamModel"], rope_scaling=None)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, official_checkpoint):
    model = FlexMDM.retrofit(official_checkpoint, "tiny-dream")
    perturb_trainable(model)
    directory = tmp_path_factory.mktemp("ckpt") / "step-5"
    model.save_pretrained(directory)
    return model, directory


def test_spec_and_official_layout_retrofit(official_checkpoint):
    spec = AdapterSpec.from_yaml("dream")
    assert (spec.backbone.model_type, spec.backbone.name_or_path) == (
        "Dream",
        "Dream-org/Dream-v0-Base-7B",
    )
    assert (spec.backbone.layers, spec.backbone.lm_head, spec.backbone.logit_shift) == (
        "model.layers",
        "lm_head",
        1,
    )
    assert spec.time_conditioning.norms == ["input_layernorm", "post_attention_layernorm"]
    assert (spec.special_tokens.mask_token_id, spec.special_tokens.pad_token_id) == (151666, 151643)
    assert spec.lora.target_modules == ["q_proj", "k_proj", "v_proj", "lm_head"]

    model = FlexMDM.retrofit(official_checkpoint, "tiny-dream")
    assert isinstance(model.lm, DreamModel) and model.config.backbone_type == "Dream"
    assert model.config.logit_shift == 1
    assert (model.mask_token_id, model.pad_token_id, model.eos_token_id) == (126, 127, 127)
    lora_modules = {
        name.rsplit(".lora_", 1)[0] for name, _ in model.named_parameter_groups()["lora"]
    }
    assert len(lora_modules) == 2 * 3 + 1 and any(
        name.endswith(".lm_head") for name in lora_modules
    )


def test_zero_init_returns_the_shift_aligned_backbone_logits_exactly():
    backbone = make_backbone()
    reference = copy.deepcopy(backbone)
    model = FlexMDM.retrofit(backbone, "tiny-dream")
    input_ids, lengths, t = make_batch()
    output = model(input_ids, lengths, t)
    buffer_ids, attention_mask = model.build_slot_inputs(input_ids, lengths)
    expected = shifted(reference(buffer_ids, attention_mask=attention_mask).logits)[:, :10]
    assert torch.equal(output.logits, expected)
    valid = torch.arange(11)[None, :] <= lengths[:, None]
    torch.testing.assert_close(output.gaps[valid], torch.ones(int(valid.sum())), rtol=1e-5, atol=0)
    # Logits at selected positions equal the full logits there.
    positions = torch.rand(3, 10, generator=torch.Generator().manual_seed(6)) < 0.5
    selected = model(input_ids, lengths, t, logits_positions=positions)
    assert torch.equal(selected.logits, output.logits[positions])

    mdm = FlexMDM.retrofit(copy.deepcopy(reference), "tiny-dream", kind="mdm")
    key_mask = torch.arange(10)[None, :] < lengths[:, None]
    assert torch.equal(
        mdm(input_ids, lengths, None).logits,
        shifted(reference(input_ids, attention_mask=key_mask).logits),
    )


def test_slot_j_reads_the_hidden_state_before_it_and_padding_does_not_matter():
    model = FlexMDM.retrofit(make_backbone(), "tiny-dream")
    perturb_trainable(model)
    input_ids, lengths, t = make_batch()
    output = model(input_ids, lengths, t)
    # By hand: the head on every buffer position, slot j <- position (j - 1) mod (l + 1).
    buffer_ids, attention_mask = model.build_slot_inputs(input_ids, lengths)
    with torch.no_grad():
        hidden = model.lm(
            buffer_ids,
            attention_mask=attention_mask,
            modulation=model.time_modulation(t, 3),
            return_logits=False,
        )
        per_position = model.insertion_head(hidden.last_hidden_state)  # (B, L+1)
    for row, length in enumerate(lengths.tolist()):
        readers = [(slot - 1) % (length + 1) for slot in range(length + 1)]
        assert torch.equal(output.gaps[row, : length + 1], per_position[row, readers])
        assert torch.all(output.gaps[row, length + 1 :] == 0)
    # Same rows in a wider buffer with other padding: the same logits and gaps.
    padded = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(5))
    for row, length in enumerate(lengths.tolist()):
        padded[row, :length] = input_ids[row, :length]
    wide = model(padded, lengths, t)
    for row, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(
            wide.logits[row, :length], output.logits[row, :length], rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            wide.gaps[row, : length + 1], output.gaps[row, : length + 1], rtol=0, atol=1e-5
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"backbone.logit_shift": 0}, "backbone.logit_shift is 0 but DreamModel predicts"),
        ({"backbone.layers": "model.transformer.blocks"}, "backbone.layers 'model.transformer"),
        ({"backbone.lm_head": "model.norm"}, "backbone.lm_head 'model.norm' is not the LM head"),
        ({"time_conditioning.norms": ["attn_norm", "ff_norm"]}, "must list both"),
        ({"backbone.logit_shift": 2}, "must be 0 \\(LLaDA\\) or 1 \\(Dream\\)"),
    ],
)
def test_a_spec_that_does_not_describe_the_backbone_is_an_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        FlexMDM.retrofit(make_backbone(), "tiny-dream", **overrides)


def test_families_and_specs_must_match():
    with pytest.raises(ValueError, match="model_type 'Dream' but the adapter spec is for 'llada'"):
        FlexMDM.retrofit(make_backbone(), "tiny-llada")
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="model_type 'llada' but the adapter spec is for 'Dream'"):
        FlexMDM.retrofit(LLaDAModelLM(tiny_llada_config()), "tiny-dream")


def test_trainable_parameter_counts_at_7b_shape():
    with torch.device("meta"):
        backbone = DreamModel(DreamConfig())
    counts = FlexMDM.retrofit(backbone, "dream").parameter_counts()
    assert counts["lora"] == 74_973_184  # q/k/v 55,050,240 + lm_head 19,922,944
    assert counts["time_embedding"] == 102_778_368
    assert counts["modulation"] == 102_789_120  # 4 groups of 7 layers
    assert counts["insertion_head"] == 12_859_393
    assert counts["total_trainable"] == 293_400_065 and counts["backbone"] == 0


def test_save_load_and_merge_round_trip(trained_checkpoint, tmp_path):
    model, directory = trained_checkpoint
    config = RetrofitConfig.load(directory)
    # Configs written before the shift was recorded (format <= 2) are LLaDA's: shift 0.
    legacy = {key: value for key, value in config.to_dict().items() if key != "logit_shift"}
    assert RetrofitConfig.from_dict({**legacy, "format_version": 2}).logit_shift == 0
    assert config.logit_shift == 1 and config.conditioned_norms == [
        "input_layernorm",
        "post_attention_layernorm",
    ]
    input_ids, lengths, t = make_batch()
    expected = model(input_ids, lengths, t)
    loaded = FlexMDM.from_pretrained(directory)
    actual = loaded(input_ids, lengths, t)
    assert torch.equal(actual.logits, expected.logits) and torch.equal(actual.gaps, expected.gaps)

    merged_dir = model.merge_and_save(tmp_path / "merged")
    assert json.loads((merged_dir / "config.json").read_text())["model_type"] == "Dream"
    merged = FlexMDM.from_pretrained(merged_dir)
    assert not hasattr(merged.backbone, "peft_config") and merged.config.merged
    output = merged(input_ids, lengths, t)
    torch.testing.assert_close(output.logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.gaps, expected.gaps, rtol=1e-4, atol=1e-4)


def test_push_to_a_hub_and_load_by_repo_id(tmp_path_factory, monkeypatch):
    server = LocalHub().start()
    try:
        hub_environment(monkeypatch, server.url, tmp_path_factory.mktemp("hf_home"))
        base_dir = tmp_path_factory.mktemp("base")
        make_backbone().save_pretrained(base_dir)
        api = huggingface_hub.HfApi()
        api.create_repo(f"{USER}/tiny-dream-base")
        api.upload_folder(repo_id=f"{USER}/tiny-dream-base", folder_path=base_dir)

        model = FlexMDM.retrofit(f"{USER}/tiny-dream-base", "tiny-dream")
        perturb_trainable(model)
        push_model(model, f"{USER}/tiny-dream-flexmdm", verify=False)
        files = server.state.files(f"{USER}/tiny-dream-flexmdm")
        assert {
            "adapter_model.safetensors",
            "flexmdm_modules.safetensors",
            "retrofit_config.json",
            "README.md",
        } <= set(files)
        assert json.loads(files["retrofit_config.json"])["base_model"] == f"{USER}/tiny-dream-base"
        assert f"{USER}/tiny-dream-base" in files["README.md"].decode()

        input_ids, lengths, t = make_batch()
        expected = model(input_ids, lengths, t)
        loaded = FlexMDM.from_pretrained(f"{USER}/tiny-dream-flexmdm")
        actual = loaded(input_ids, lengths, t)
        assert torch.equal(actual.logits, expected.logits) and torch.equal(
            actual.gaps, expected.gaps
        )
    finally:
        server.stop()
