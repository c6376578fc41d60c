"""Tests of retrofit.adapter: spec loading, FlexMDM forward, checkpoints, merge, validation."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM

import retrofit.adapter.model as adapter_model
from retrofit.adapter import (
    NEW_MODULES_FILE,
    AdapterSpec,
    FlexMDM,
    RetrofitConfig,
    cli_main,
)
from retrofit.models import LLaDAConfig, LLaDAModelLM, tiny_llada_config

SHARED = Path(__file__).resolve().parents[2] / "shared"

# The official LLaDA config.json points auto_map at remote code; the native class must win.
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    "AutoModel": "modeling_llada.LLaDAModelLM",
}


def make_backbone(seed: int = 0, **overrides) -> LLaDAModelLM:
    """A tiny random LLaDA (2 blocks, d 64, vocab 128; mask 126, pad = eos 127)."""
    torch.manual_seed(seed)
    return LLaDAModelLM(tiny_llada_config(**overrides)).eval()


def perturb_trainable(model: FlexMDM, seed: int = 1, scale: float = 0.05) -> None:
    """Move every trainable weight off its initialisation so LoRA/modulation are non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def make_batch(batch_size: int = 3, seq_len: int = 10, seed: int = 2):
    """Random ids in [0, 120), lengths covering full, partial and empty rows, times in (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 120, (batch_size, seq_len), generator=generator)
    lengths = torch.tensor([seq_len, seq_len // 2 - 1, 0][:batch_size])
    t = torch.rand(batch_size, generator=generator)
    return input_ids, lengths, t


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer LLaDA saved with the official layout (key names, auto_map, architectures)."""
    directory = tmp_path_factory.mktemp("llada-tiny")
    make_backbone().save_pretrained(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = OFFICIAL_AUTO_MAP
    config["architectures"] = ["LLaDAModelLM"]
    config_path.write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, official_checkpoint):
    """(model with perturbed LoRA + new modules, its saved checkpoint directory)."""
    model = FlexMDM.retrofit(official_checkpoint, "tiny-llada")
    perturb_trainable(model)
    directory = tmp_path_factory.mktemp("ckpt") / "step-10"
    model.save_pretrained(directory)
    return model, directory


# ----------------------------------------------------------------------------------------------
# Loading a backbone and retrofitting it
# ----------------------------------------------------------------------------------------------


def test_official_layout_checkpoint_retrofits_in_one_call(official_checkpoint):
    keys = set(load_file(str(official_checkpoint / "model.safetensors")))
    assert "model.transformer.wte.weight" in keys
    assert "model.transformer.blocks.1.q_proj.weight" in keys
    assert "model.transformer.ff_out.weight" in keys

    model = FlexMDM.retrofit(official_checkpoint, "tiny-llada")

    assert isinstance(model.lm, LLaDAModelLM)
    assert model.config.base_model == str(official_checkpoint.resolve())
    assert (model.mask_token_id, model.pad_token_id, model.eos_token_id) == (126, 127, 127)
    assert model.config.slot_token_id == 127
    assert model.insertion_schedule.spec == "linear" and model.unmasking_schedule.spec == "linear"
    assert not model.training
    # LoRA lands on q/k/v of every block and on the LM head only (not on the blocks' ff_out).
    lora_modules = {
        name.rsplit(".lora_", 1)[0] for name, _ in model.named_parameter_groups()["lora"]
    }
    assert any(name.endswith("transformer.ff_out") for name in lora_modules)
    assert not any(".blocks.0.ff_out" in name for name in lora_modules)
    assert len(lora_modules) == 2 * 3 + 1


def test_spec_files_load_with_documented_defaults():
    llada = AdapterSpec.from_yaml("llada")
    assert llada.kind == "flexmdm" and llada.time_conditioning.group_size == 8
    assert llada.head.scale == 1024 and llada.max_length == 1024
    assert llada.lora is not None and (llada.lora.r, llada.lora.alpha, llada.lora.dropout) == (
        128,
        128,
        0.1,
    )
    assert llada.lora.target_modules == ["q_proj", "k_proj", "v_proj", "transformer.ff_out"]
    assert (llada.schedules.insertion, llada.schedules.unmasking) == ("linear", "linear")
    overridden = llada.with_overrides({"lora_r": 4, "group_size": 2, "insertion_schedule": "sin"})
    assert (overridden.lora.r, overridden.time_conditioning.group_size) == (4, 2)
    assert overridden.schedules.insertion == "sin" and llada.lora.r == 128


# ----------------------------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------------------------


def test_zero_init_returns_backbone_logits_exactly():
    backbone = make_backbone()
    reference = copy.deepcopy(backbone)
    model = FlexMDM.retrofit(backbone, "tiny-llada")
    input_ids, lengths, t = make_batch()

    output = model(input_ids, lengths, t)

    buffer_ids, attention_mask = model.build_slot_inputs(input_ids, lengths)
    expected = reference(buffer_ids, attention_mask=attention_mask).logits[:, : input_ids.shape[1]]
    assert torch.equal(output.logits, expected)
    # The head starts at init_gap = 1 token per slot.
    valid = torch.arange(11)[None, :] <= lengths[:, None]
    torch.testing.assert_close(output.gaps[valid], torch.ones(int(valid.sum())), rtol=1e-5, atol=0)

    mdm = FlexMDM.retrofit(copy.deepcopy(reference), "tiny-llada", kind="mdm")
    mdm_output = mdm(input_ids, lengths, None)
    key_mask = torch.arange(10)[None, :] < lengths[:, None]
    assert mdm_output.gaps is None and mdm.new_modules() == {}
    assert torch.equal(mdm_output.logits, reference(input_ids, attention_mask=key_mask).logits)


def test_gaps_shape_zero_beyond_length_and_padding_independence():
    model = FlexMDM.retrofit(make_backbone(), "tiny-llada")
    perturb_trainable(model)
    input_ids, lengths, t = make_batch(seq_len=10)
    short = model(input_ids, lengths, t)
    assert short.logits.shape == (3, 10, 128) and short.gaps.shape == (3, 11)
    slots = torch.arange(11)[None, :]
    assert torch.all(short.gaps[slots > lengths[:, None]] == 0)
    assert torch.all(short.gaps[slots <= lengths[:, None]] > 0)

    # Same rows in a buffer of 20 with different garbage beyond each row's length.
    padded = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(5))
    for row, length in enumerate(lengths.tolist()):
        padded[row, :length] = input_ids[row, :length]
    long = model(padded, lengths, t)
    assert long.gaps.shape == (3, 21)
    for row, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(
            long.logits[row, :length], short.logits[row, :length], rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            long.gaps[row, : length + 1], short.gaps[row, : length + 1], rtol=0, atol=1e-5
        )
        assert torch.all(long.gaps[row, length + 1 :] == 0)

    # Logits at selected positions only: (N, V), equal to the full logits there.
    positions = torch.rand(3, 10, generator=torch.Generator().manual_seed(6)) < 0.5
    selected = model(input_ids, lengths, t, logits_positions=positions)
    assert selected.logits.shape == (int(positions.sum()), 128)
    torch.testing.assert_close(selected.logits, short.logits[positions], rtol=0, atol=1e-6)
    torch.testing.assert_close(selected.gaps, short.gaps, rtol=0, atol=0)


def test_time_changes_outputs_once_modulation_trained():
    model = FlexMDM.retrofit(make_backbone(), "tiny-llada")
    perturb_trainable(model)
    input_ids, lengths, _ = make_batch()
    early = model(input_ids, lengths, torch.full((3,), 0.1))
    late = model(input_ids, lengths, torch.full((3,), 0.9))
    assert not torch.allclose(early.logits, late.logits)
    assert early.gaps.dtype == torch.float32


def test_block_groups_share_modulation_and_last_group_may_be_smaller():
    model = FlexMDM.retrofit(make_backbone(n_layers=3), "tiny-llada", group_size=2)
    assert len(model.modulation.layers) == 2  # blocks (0, 1) and (2,)
    per_block = model.time_modulation(torch.tensor([0.3, 0.7]), batch_size=2)
    assert len(per_block) == 3 and per_block[0] is per_block[1] and per_block[2] is not per_block[0]
    assert per_block[0][0].shape == (2, 64) and torch.all(per_block[2][1] == 0)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = FlexMDM.retrofit(make_backbone(), "tiny-llada")
    perturb_trainable(model)
    model.train()
    input_ids, lengths, t = make_batch()

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        output = model(input_ids, lengths, t)
        loss = torch.nn.functional.cross_entropy(output.logits.flatten(0, 1), input_ids.flatten())
        (loss + output.gaps.sum() * 1e-2).backward()
        groups = model.named_parameter_groups()
        return {name: param.grad.clone() for name, param in groups["lora"] + groups["new"]}

    plain = gradients()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    assert any(name.startswith("time_embedding") for name in plain)
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_backbone_keeps_fp32_new_modules(tmp_path):
    model = FlexMDM.retrofit(make_backbone(), "tiny-llada", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for _, p in model.named_parameter_groups()["new"])
    assert all(p.dtype == torch.float32 for _, p in model.named_parameter_groups()["lora"])
    output = model(*make_batch())
    assert output.logits.dtype == torch.bfloat16 and output.gaps.dtype == torch.float32
    # A merged export keeps the backbone in bf16 and the new modules in fp32.
    model.merge_and_save(tmp_path / "merged")
    loaded = FlexMDM.from_pretrained(tmp_path / "merged")
    assert loaded.dtype == torch.bfloat16
    assert loaded.time_embedding.mlp[0].weight.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# Parameter counts at the 8B shape (meta device: no memory, no init)
# ----------------------------------------------------------------------------------------------


def test_trainable_parameter_counts_at_8b_shape():
    with torch.device("meta"):
        backbone = LLaDAModelLM(LLaDAConfig())
    model = FlexMDM.retrofit(backbone, "llada")
    counts = model.parameter_counts()
    assert counts["lora"] == 117_374_976
    assert counts["time_embedding"] == 134_238_208
    assert counts["modulation"] == 134_250_496 and len(model.modulation.layers) == 4
    assert counts["insertion_head"] == 16_793_601
    assert counts["new"] == 134_238_208 + 134_250_496 + 16_793_601
    assert counts["backbone"] == 0


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def test_save_load_gives_identical_outputs(trained_checkpoint):
    model, directory = trained_checkpoint
    assert sorted(os.listdir(directory)) == sorted(
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            NEW_MODULES_FILE,
            "retrofit_config.json",
        ]
    )
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no staging left
    config = RetrofitConfig.load(directory)
    assert config.kind == "flexmdm" and config.weights == "adapter" and config.group_size == 1
    assert config.lora["r"] == 8 and config.max_length == 256 and config.head_scale == 64
    assert (
        json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
        == config.base_model
    )

    loaded = FlexMDM.from_pretrained(directory)
    input_ids, lengths, t = make_batch()
    expected, actual = model(input_ids, lengths, t), loaded(input_ids, lengths, t)
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.gaps, expected.gaps)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_base_model_override_accepts_an_instance(trained_checkpoint, official_checkpoint):
    model, directory = trained_checkpoint
    base = LLaDAModelLM.from_pretrained(official_checkpoint)
    loaded = FlexMDM.from_pretrained(directory, base_model=base)
    input_ids, lengths, t = make_batch()
    assert torch.equal(loaded(input_ids, lengths, t).logits, model(input_ids, lengths, t).logits)
    with pytest.raises(ValueError, match="shape"):
        FlexMDM.from_pretrained(directory, base_model=make_backbone(n_layers=3))


def test_merge_loads_without_peft(trained_checkpoint, tmp_path, monkeypatch):
    model, directory = trained_checkpoint
    merged_dir = tmp_path / "merged"
    assert cli_main(["merge", str(directory), str(merged_dir), "--max-shard-size", "40KB"]) == 0
    files = set(os.listdir(merged_dir))
    assert {
        "config.json",
        "model.safetensors.index.json",
        NEW_MODULES_FILE,
        "retrofit_config.json",
    } <= files
    assert "adapter_model.safetensors" not in files
    config = RetrofitConfig.load(merged_dir)
    assert config.merged and config.weights == "full"

    monkeypatch.setitem(sys.modules, "peft", None)  # any `import peft` now fails
    loaded = FlexMDM.from_pretrained(merged_dir)
    assert isinstance(loaded.backbone, LLaDAModelLM)
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    input_ids, lengths, t = make_batch()
    expected, actual = model(input_ids, lengths, t), loaded(input_ids, lengths, t)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual.gaps, expected.gaps, rtol=1e-5, atol=1e-5)

    # A model loaded from the merged export saves again as a complete, loadable checkpoint.
    loaded.save_pretrained(tmp_path / "resaved")
    assert RetrofitConfig.load(tmp_path / "resaved").weights == "full"
    resaved = FlexMDM.from_pretrained(tmp_path / "resaved")
    assert torch.equal(resaved(input_ids, lengths, t).logits, actual.logits)
    assert torch.equal(resaved(input_ids, lengths, t).gaps, actual.gaps)


def test_local_base_is_fingerprinted_and_a_changed_base_warns(tmp_path):
    base = tmp_path / "base"
    make_backbone().save_pretrained(base)
    model = FlexMDM.retrofit(base, "tiny-llada")
    assert model.config.base_model == str(base.resolve()) and model.config.base_revision is None
    assert model.config.base_fingerprint.startswith("sha256:")
    model.save_pretrained(tmp_path / "ckpt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unchanged base loads silently
        FlexMDM.from_pretrained(tmp_path / "ckpt")
    make_backbone(seed=3, n_layers=2, d_model=64).save_pretrained(base)  # same shape, new weights
    config = json.loads((base / "config.json").read_text())
    config["initializer_range"] = 0.5  # a changed config.json changes the fingerprint
    (base / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="differs from the one .* was trained on"):
        FlexMDM.from_pretrained(tmp_path / "ckpt")
    # A path into the Hugging Face cache is pinned to its snapshot commit instead.
    snapshot = tmp_path / "models--x--y" / "snapshots" / ("a" * 40)
    make_backbone().save_pretrained(snapshot)
    pinned = FlexMDM.retrofit(snapshot, "tiny-llada")
    assert pinned.config.base_revision == "a" * 40 and pinned.config.base_fingerprint is None


def test_lora_alpha_disagreeing_with_the_config_is_an_error(trained_checkpoint, tmp_path):
    _, directory = trained_checkpoint
    copy_dir = tmp_path / "alpha"
    copy_dir.mkdir()
    for path in directory.iterdir():
        (copy_dir / path.name).write_bytes(path.read_bytes())
    adapter_config = json.loads((copy_dir / "adapter_config.json").read_text())
    adapter_config["lora_alpha"] = adapter_config["lora_alpha"] * 2
    (copy_dir / "adapter_config.json").write_text(json.dumps(adapter_config))
    with pytest.raises(ValueError, match="alpha=.* disagrees with retrofit_config.json"):
        FlexMDM.from_pretrained(copy_dir)


def test_new_modules_keep_fp32_precision_under_bf16_autocast():
    """Time conditioning and the insertion head run in fp32 inside a bf16 autocast region: a
    modulation scale far below bf16's resolution of 1 + scale still changes the output, and the
    head's initial gap is exactly init_gap."""
    model = FlexMDM.retrofit(make_backbone(), "tiny-llada", lora=None)
    input_ids, lengths, t = make_batch()
    fp32_gaps = model(input_ids, lengths, t).gaps
    with torch.autocast("cpu", dtype=torch.bfloat16):
        initial = model(input_ids, lengths, t)
        assert torch.equal(initial.gaps, fp32_gaps)  # bf16 would give 0.9935 (raw ~ -7 to 1/32)
        torch.testing.assert_close(initial.gaps[0], torch.ones(11), rtol=1e-6, atol=0)
        with torch.no_grad():
            for layer in model.modulation.layers:
                layer.bias[: layer.out_features // 2] = 2e-3  # scale = 0.002 < 2^-8
        modulated = model(input_ids, lengths, t)
        conditioning = model.time_modulation(t, len(t))
    assert conditioning[0][0].dtype == torch.float32
    assert not torch.equal(modulated.logits, initial.logits)


def test_full_finetune_and_mdm_checkpoints_round_trip(tmp_path):
    full = FlexMDM.retrofit(make_backbone(), "tiny-llada", lora=None, full_finetune=True)
    groups = full.named_parameter_groups()
    assert groups["lora"] == [] and len(groups["backbone"]) == len(list(full.lm.parameters()))
    perturb_trainable(full)
    full.save_pretrained(tmp_path / "full")
    assert RetrofitConfig.load(tmp_path / "full").weights == "full"
    loaded = FlexMDM.from_pretrained(tmp_path / "full")
    batch = make_batch()
    assert torch.equal(loaded(*batch).logits, full(*batch).logits)

    mdm = FlexMDM.retrofit(make_backbone(), "tiny-llada", kind="mdm")
    perturb_trainable(mdm)
    base_dir = tmp_path / "base"
    make_backbone().save_pretrained(base_dir)
    mdm.config.base_model = str(base_dir)
    mdm.save_pretrained(tmp_path / "mdm")
    assert NEW_MODULES_FILE not in os.listdir(tmp_path / "mdm")
    loaded_mdm = FlexMDM.from_pretrained(tmp_path / "mdm")
    assert loaded_mdm.kind == "mdm"
    assert torch.equal(loaded_mdm(*batch).logits, mdm(*batch).logits)


def test_strict_load_rejects_tampered_checkpoint(trained_checkpoint, tmp_path):
    _, directory = trained_checkpoint
    for file_name in (NEW_MODULES_FILE, "adapter_model.safetensors"):
        tampered = tmp_path / file_name.split(".")[0]
        tampered.mkdir()
        for path in directory.iterdir():
            (tampered / path.name).write_bytes(path.read_bytes())
        tensors = load_file(str(tampered / file_name))
        renamed = min(tensors)
        tensors[renamed + "_renamed"] = tensors.pop(renamed)
        save_file(tensors, str(tampered / file_name))
        with pytest.raises(ValueError) as error:
            FlexMDM.from_pretrained(tampered)
        assert renamed in str(error.value) and renamed + "_renamed" in str(error.value)
        assert "missing" in str(error.value) and "unexpected" in str(error.value)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = FlexMDM.retrofit(make_backbone(), "tiny-llada")
    perturb_trainable(model)
    target = tmp_path / "ckpt"

    def failing_save_file(tensors, filename, metadata=None):
        if filename.endswith(NEW_MODULES_FILE):
            Path(filename).write_bytes(b"partial")
            raise OSError("disk full")
        return save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(adapter_model, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # staging directory removed

    monkeypatch.setattr(adapter_model, "save_file", save_file)
    model.save_pretrained(target)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    monkeypatch.setattr(adapter_model, "save_file", failing_save_file)
    perturb_trainable(model, seed=9)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(target)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["ckpt"]

    # A successful overwrite replaces the old checkpoint and leaves nothing else behind.
    monkeypatch.setattr(adapter_model, "save_file", save_file)
    model.save_pretrained(target)
    assert [path.name for path in tmp_path.iterdir()] == ["ckpt"]


def test_save_killed_mid_way_is_repaired_by_the_next_save(tmp_path):
    """A SIGKILL can leave a staging directory, or fall between the two renames (the checkpoint
    retired, the new one not yet in place): the next save to the same target repairs both."""
    from retrofit.adapter.checkpoint import recover_interrupted_save

    model = FlexMDM.retrofit(make_backbone(), "tiny-llada")
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    # The state a kill between `target -> .ckpt.old-*` and `staging -> target` leaves.
    os.replace(target, tmp_path / ".ckpt.old-1234abcd")
    (tmp_path / ".ckpt.tmp-xyz").mkdir()
    (tmp_path / ".ckpt.tmp-xyz" / "adapter_model.safetensors").write_bytes(b"partial")
    (tmp_path / ".other.tmp-keep").mkdir()  # another checkpoint's files are left alone
    recover_interrupted_save(target)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".other.tmp-keep", "ckpt"]
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    FlexMDM.from_pretrained(target, base_model=make_backbone())  # the restored checkpoint loads

    # Killed after the new checkpoint was in place: only the retired copy is left to remove.
    (tmp_path / ".ckpt.old-5678abcd").mkdir()
    perturb_trainable(model)
    model.save_pretrained(target)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".other.tmp-keep", "ckpt"]


# ----------------------------------------------------------------------------------------------
# Validation errors
# ----------------------------------------------------------------------------------------------


def test_missing_mask_id_is_an_error():
    with pytest.raises(ValueError, match="mask_token_id is not set"):
        FlexMDM.retrofit(make_backbone(mask_token_id=None), "tiny-llada")
    # The tokenizer is the fallback source, and must agree with the config when both set it.
    tokenizer = SimpleNamespace(mask_token_id=125, pad_token_id=127, eos_token_id=127)
    model = FlexMDM.retrofit(make_backbone(mask_token_id=None), "tiny-llada", tokenizer=tokenizer)
    assert model.mask_token_id == 125
    with pytest.raises(ValueError, match="tokenizer's mask_token_id 125 differs from 126"):
        FlexMDM.retrofit(make_backbone(), "tiny-llada", tokenizer=tokenizer)


def test_mask_id_equal_to_pad_id_is_an_error():
    with pytest.raises(ValueError, match="mask_token_id == pad_token_id"):
        FlexMDM.retrofit(make_backbone(), "tiny-llada", mask_token_id=127)


def test_unknown_backbone_type_is_an_error():
    with pytest.raises(ValueError, match="'dream' is not supported"):
        FlexMDM.retrofit(make_backbone(), "tiny-llada", backbone={"model_type": "dream"})
    # A real transformers backbone of another family.
    bert = BertForMaskedLM(
        BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    with pytest.raises(ValueError, match="'bert' is not supported"):
        FlexMDM.retrofit(bert, "tiny-llada")


def test_spec_naming_missing_modules_is_an_error():
    lora = {"r": 4, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "o_proj", "down_proj"]}
    with pytest.raises(ValueError, match=r"\['o_proj', 'down_proj'\] match no module"):
        FlexMDM.retrofit(make_backbone(), "tiny-llada", lora=lora)


def test_spec_errors_name_the_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: flexmdm\nlora:\n  rank: 8\n")
    # One strict loader for every YAML file (retrofit.yaml_config): file:line, dotted key.
    with pytest.raises(ValueError, match=r"bad\.yaml:3: lora\.rank: unknown key"):
        AdapterSpec.from_yaml(path)
    path.write_text("kind: flexmdm\nmax_len: 8\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:2: max_len: unknown key\. did you mean 'max_length'"):
        AdapterSpec.from_yaml(path)
    path.write_text("time_conditioning:\n  group_size: '8'\n")
    with pytest.raises(
        TypeError, match=r"bad\.yaml:2: time_conditioning\.group_size: expected an integer"
    ):
        AdapterSpec.from_yaml(path)
    path.write_text("schedules:\n  insertion: quadratic\n")
    with pytest.raises(ValueError, match=r"schedules\.insertion"):
        AdapterSpec.from_yaml(path)
    with pytest.raises(FileNotFoundError, match="no-such-spec"):
        AdapterSpec.from_yaml("no-such-spec")


def test_bad_forward_inputs_are_errors():
    model = FlexMDM.retrofit(make_backbone(), "tiny-llada", max_length=8)
    input_ids, lengths, t = make_batch(seq_len=10)
    with pytest.raises(ValueError, match="exceeds max_length=8"):
        model(input_ids, lengths, t)
    short_lengths = torch.tensor([8, 3, 0])
    with pytest.raises(ValueError, match="needs the time"):
        model(input_ids, short_lengths, None)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, L=10\]"):
        model(input_ids, torch.tensor([11, 3, 0]), t)
    with pytest.raises(ValueError, match="shape"):
        model(input_ids, short_lengths[:2], t)


def test_hub_ids_resolve_through_snapshot_download(
    trained_checkpoint, official_checkpoint, monkeypatch
):
    model, directory = trained_checkpoint
    calls = []

    def fake_snapshot_download(repo_id, revision=None, **kwargs):
        calls.append((repo_id, revision))
        return str(directory)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = FlexMDM.from_pretrained("someone/flexmdm-tiny", revision="v1")
    assert calls == [("someone/flexmdm-tiny", "v1")]
    batch = make_batch()
    assert torch.equal(loaded(*batch).logits, model(*batch).logits)
    # The base model can come from the Hub too; its snapshot commit is recorded.
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = directory.parent / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in official_checkpoint.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(snapshot)
    )
    retrofitted = FlexMDM.retrofit("someone/llada-tiny", "tiny-llada")
    assert retrofitted.config.base_model == "someone/llada-tiny"
    assert retrofitted.config.base_revision == commit
