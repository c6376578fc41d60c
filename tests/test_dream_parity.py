"""Parity with Dream's official remote code (modeling_dream.py, generation_utils.py), tiny config.

The official files are kept out of the repository. Point ``RETROFIT_DREAM_OFFICIAL_DIR`` at a
directory holding ``configuration_dream.py``, ``modeling_dream.py`` and ``generation_utils.py`` as
published in Dream-org/Dream-v0-Base-7B (e.g. ``huggingface-cli download Dream-org/Dream-v0-Base-7B
--include "*.py" --local-dir /work/dream-official``); the tests skip without it.

The official code targets transformers 4.46; three shims keep it running on transformers 5 without
changing its numerics: the ``"default"`` RoPE initialiser (removed from ``ROPE_INIT_FUNCTIONS``) is
put back with transformers 4.46's formula, ``DreamGenerationConfig.validate`` accepts the keyword
transformers 5 passes, and the generation config is passed explicitly (its ``from_model_config``
compares against attributes the base class no longer has).

Checked: the official state dict loads strictly into the native model and back; fp32 logits are
identical (max |diff| = 0) without a mask, with a left-padding mask + position ids (official
sampler style) and with a 2-D mask; the native sampler is token-identical to
``diffusion_generate`` for every algorithm, with and without temperature / top-p / top-k /
alg_temp, on equal-length and (where the official draws allow) padded batches.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from retrofit.adapter import FlexMDM
from retrofit.models import DreamModel, tiny_dream_config
from retrofit.sampling.dream import dream_generate

OFFICIAL_DIR = os.environ.get("RETROFIT_DREAM_OFFICIAL_DIR")
pytestmark = pytest.mark.skipif(
    not OFFICIAL_DIR or not (Path(OFFICIAL_DIR) / "modeling_dream.py").is_file(),
    reason="set RETROFIT_DREAM_OFFICIAL_DIR to a directory with Dream's official "
    "configuration_dream.py, modeling_dream.py and generation_utils.py (kept out of the repo)",
)
CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rope_theta",
    "rms_norm_eps",
    "max_position_embeddings",
    "mask_token_id",
    "pad_token_id",
    "eos_token_id",
    "bos_token_id",
)
MASK, PAD = 126, 127


def _default_rope(config, device=None, seq_len=None, **kwargs):
    """transformers 4.46's default RoPE initialiser (inv_freq, attention scaling 1)."""
    dim = config.hidden_size // config.num_attention_heads
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
    return 1.0 / (config.rope_theta ** (exponents / dim)), 1.0


@pytest.fixture(scope="module")
def official():
    """The official modules, imported as package ``dream_official`` from OFFICIAL_DIR."""
    import transformers.modeling_rope_utils as rope_utils

    rope_utils.ROPE_INIT_FUNCTIONS.setdefault("default", _default_rope)
    package = types.ModuleType("dream_official")
    package.__path__ = [str(OFFICIAL_DIR)]
    sys.modules["dream_official"] = package
    modules = types.SimpleNamespace(
        configuration=importlib.import_module("dream_official.configuration_dream"),
        modeling=importlib.import_module("dream_official.modeling_dream"),
        generation=importlib.import_module("dream_official.generation_utils"),
    )
    modules.generation.DreamGenerationConfig.validate = lambda self, *args, **kwargs: None
    return modules


@pytest.fixture(scope="module")
def models(official):
    """(native model, official model) with the same random weights (biases and norms included)."""
    torch.manual_seed(0)
    native = DreamModel(tiny_dream_config()).eval()
    with torch.no_grad():
        for name, param in native.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.3)
    config = official.configuration.DreamConfig(
        **{key: getattr(native.config, key) for key in CONFIG_KEYS}
    )
    reference = official.modeling.DreamModel(config).eval()
    reference.load_state_dict(native.state_dict(), strict=True)
    round_trip = DreamModel(tiny_dream_config())
    round_trip.load_state_dict(reference.state_dict(), strict=True)  # official -> native, strict
    return native, reference


def _generation_config(official):
    return official.generation.DreamGenerationConfig(
        mask_token_id=MASK, pad_token_id=PAD, eos_token_id=PAD, bos_token_id=PAD
    )


def test_logits_are_identical_in_fp32(models):
    native, reference = models
    input_ids = torch.randint(0, MASK, (3, 11), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([11, 7, 4])
    left_mask = torch.arange(11)[None, :] >= (11 - lengths)[:, None]  # left padding, as Dream pads
    positions = (left_mask.long().cumsum(-1) - 1).masked_fill(~left_mask, 1)  # Dream's tok_idx
    square = left_mask[:, None, None, :] & left_mask[:, None, :, None]  # Dream's (B, 1, N, N) mask
    with torch.no_grad():
        plain = (native(input_ids).logits - reference(input_ids).logits).abs().max()
        ours = native(input_ids, attention_mask=left_mask, position_ids=positions).logits
        theirs = reference(input_ids, square, positions).logits
        padded = (ours - theirs)[left_mask].abs().max()
        theirs_2d = reference(input_ids, left_mask.long(), positions).logits
        padded_2d = (ours - theirs_2d)[left_mask].abs().max()
    print(
        f"max |logit diff| fp32: no mask {plain.item()}, padding mask {padded.item()} "
        f"(2-D mask {padded_2d.item()})"
    )
    assert plain.item() == 0.0 and padded.item() == 0.0 and padded_2d.item() == 0.0
    # Right padding (the retrofit layout): the same real-position logits as Dream's left padding.
    right = torch.full_like(input_ids, PAD)
    for row, length in enumerate(lengths.tolist()):
        right[row, :length] = input_ids[row, 11 - length :]
    with torch.no_grad():
        right_logits = native(
            right, attention_mask=torch.arange(11)[None] < lengths[:, None]
        ).logits
    for row, length in enumerate(lengths.tolist()):
        assert torch.equal(right_logits[row, :length], theirs[row, 11 - length :])


SETTINGS = [
    ("origin", 0.0, None, None, None),
    ("origin", 0.7, 0.9, None, None),
    ("maskgit_plus", 0.0, None, None, None),
    ("maskgit_plus", 1.0, 0.95, 20, None),
    ("topk_margin", 0.0, None, None, None),
    ("topk_margin", 0.5, None, None, 0.5),
    ("entropy", 0.0, None, None, None),
    ("entropy", 0.8, 0.9, 10, 0.3),
]


@pytest.fixture(scope="module")
def wrapped(models):
    """The native model behind the retrofit model protocol: a plain (kind mdm) FlexMDM."""
    native, _ = models
    return FlexMDM.retrofit(
        copy.deepcopy(native), "tiny-dream", kind="mdm", lora=None, full_finetune=True
    )


@pytest.mark.parametrize("alg, temperature, top_p, top_k, alg_temp", SETTINGS)
def test_sampler_is_token_identical_to_diffusion_generate(
    official, models, wrapped, alg, temperature, top_p, top_k, alg_temp
):
    _, reference = models
    prompts = torch.randint(0, 120, (3, 5), generator=torch.Generator().manual_seed(2))
    settings = {
        "alg": alg,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "alg_temp": alg_temp,
        "steps": 6,
    }
    torch.manual_seed(7)
    expected = reference.diffusion_generate(
        prompts,
        generation_config=_generation_config(official),
        max_new_tokens=12,
        return_dict_in_generate=True,
        **settings,
    ).sequences
    result = dream_generate(
        wrapped,
        prompts.tolist(),
        gen_length=12,
        progress=False,
        generator=torch.Generator().manual_seed(7),
        **settings,
    )
    assert result.full_sequences == expected.tolist()
    assert len({token for row in result.sequences for token in row}) > 3  # not a degenerate run


@pytest.mark.parametrize(
    "alg, temperature, top_p, top_k, alg_temp",
    [setting for setting in SETTINGS if setting[4] is None],
)
def test_sampler_matches_on_a_left_padded_official_batch(
    official, models, wrapped, alg, temperature, top_p, top_k, alg_temp
):
    _, reference = models
    rows = [[5, 17, 42, 9, 88], [61, 3, 100], [77]]
    left = torch.full((3, 5), PAD)
    attention = torch.zeros(3, 5, dtype=torch.long)
    for index, row in enumerate(rows):
        left[index, 5 - len(row) :] = torch.tensor(row)
        attention[index, 5 - len(row) :] = 1
    settings = {"alg": alg, "temperature": temperature, "top_p": top_p, "top_k": top_k, "steps": 6}
    torch.manual_seed(11)
    expected = reference.diffusion_generate(
        left,
        attention_mask=attention,
        generation_config=_generation_config(official),
        max_new_tokens=12,
        return_dict_in_generate=True,
        **settings,
    ).sequences[:, 5:]
    result = dream_generate(
        wrapped,
        rows,
        gen_length=12,
        progress=False,
        generator=torch.Generator().manual_seed(11),
        **settings,
    )
    assert result.sequences == expected.tolist()
