"""A damaged checkpoint is one error naming the file and what to do (issue 14)."""

from __future__ import annotations

import shutil
import string

import pytest

from retrofit.adapter import CheckpointFileError, FlexMDM


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An adapter checkpoint, its local base and a merged export of a tiny FlexMDM."""
    import torch

    from retrofit.models import LLaDAModelLM, tiny_llada_config
    from retrofit.tokenization import build_char_tokenizer

    root = tmp_path_factory.mktemp("checkpoints")
    tokenizer = build_char_tokenizer(string.printable, eos_token="<|pad|>", unk_token="<|unk|>")
    ids = {"mask_token_id": tokenizer.mask_token_id, "pad_token_id": tokenizer.pad_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    LLaDAModelLM(tiny_llada_config(vocab_size=len(tokenizer), **ids)).save_pretrained(root / "base")
    model = FlexMDM.retrofit(str(root / "base"), "tiny-llada", tokenizer=tokenizer, **ids)
    model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    model.merge_and_save(root / "merged")
    return root


def damaged_copy(saved, tmp_path, source: str = "adapter"):
    target = tmp_path / source
    shutil.copytree(saved / source, target)
    return target


@pytest.mark.parametrize("name", ["flexmdm_modules.safetensors", "adapter_model.safetensors"])
@pytest.mark.parametrize("cut", ["half", "empty"])
def test_truncated_or_empty_weights(saved, tmp_path, name, cut):
    checkpoint = damaged_copy(saved, tmp_path)
    data = (checkpoint / name).read_bytes()
    (checkpoint / name).write_bytes(data[: len(data) // 2] if cut == "half" else b"")
    with pytest.raises(CheckpointFileError, match=rf"{name} \(.* bytes\) is truncated or not a "
                                                 r"safetensors file .* save it again"):
        FlexMDM.from_pretrained(checkpoint)


def test_truncated_merged_export(saved, tmp_path):
    export = damaged_copy(saved, tmp_path, "merged")
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointFileError, match=r"model.safetensors.* is truncated"):
        FlexMDM.from_pretrained(export)


def test_invalid_or_missing_config(saved, tmp_path):
    checkpoint = damaged_copy(saved, tmp_path)
    (checkpoint / "retrofit_config.json").write_text('{"kind": "flexmdm",\n  oops}')
    with pytest.raises(CheckpointFileError, match=r"retrofit_config.json:2:3: .* not valid JSON"):
        FlexMDM.from_pretrained(checkpoint)
    (checkpoint / "retrofit_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        FlexMDM.from_pretrained(checkpoint)
    (checkpoint / "retrofit_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="retrofit_config.json is missing"):
        FlexMDM.from_pretrained(checkpoint)


def test_missing_adapter_or_base(saved, tmp_path):
    checkpoint = damaged_copy(saved, tmp_path)
    (checkpoint / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        FlexMDM.from_pretrained(checkpoint)
    checkpoint = damaged_copy(saved, tmp_path / "second")
    base = tmp_path / "moved-base"
    shutil.copytree(saved / "base", base)
    config = (checkpoint / "retrofit_config.json").read_text()
    (checkpoint / "retrofit_config.json").write_text(config.replace(str(saved / "base"), str(tmp_path / "gone")))
    with pytest.raises(FileNotFoundError, match=r"its base model .*gone cannot be loaded .* base_model="):
        FlexMDM.from_pretrained(checkpoint)
    assert FlexMDM.from_pretrained(checkpoint, base_model=str(base)).kind == "flexmdm"


def test_generate_reports_a_damaged_checkpoint_in_one_line(saved, tmp_path, capsys):
    from retrofit.cli import main

    checkpoint = damaged_copy(saved, tmp_path)
    (checkpoint / "flexmdm_modules.safetensors").write_bytes(b"")
    assert main(["generate", "--model", str(checkpoint), "--prompt", "hi"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("retrofit")]
    assert len(err) == 1 and err[0].startswith("retrofit generate: ") and "flexmdm_modules" in err[0]
