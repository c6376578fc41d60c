"""Tests of the native Dream backbone (retrofit.models): the official checkpoint layout and strict
loading, the 7B shape, config validation, numerics against an independent float64 reference
(biases, GQA, RoPE theta 1e6, position ids), masks, modulation, checkpointing, bf16, and Dream's
tokenizer without remote code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from retrofit.models import (
    DreamConfig,
    DreamModel,
    DreamTokenizer,
    build_tiny_backbone,
    check_backbone_supported,
    tiny_dream_config,
)

# The official per-layer tensors (Dream-org/Dream-v0-Base-7B, model.safetensors.index.json).
LAYER_TENSORS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)

# Dream-v0-Base-7B's config.json (architecture keys), with its remote-code pointers.
DREAM_7B_CONFIG = {
    "architectures": ["DreamModel"],
    "auto_map": {
        "AutoConfig": "configuration_dream.DreamConfig",
        "AutoModel": "modeling_dream.DreamModel",
    },
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "mask_token_id": 151666,
    "max_position_embeddings": 131072,
    "max_window_layers": 28,
    "model_type": "Dream",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "pad_token_id": 151643,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}


def official_keys(n_layers: int) -> set[str]:
    """The official Dream state-dict names, written out independently of the model code."""
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for index in range(n_layers):
        keys |= {f"model.layers.{index}.{name}" for name in LAYER_TENSORS}
    return keys


def random_dream(seed: int = 0, **overrides) -> DreamModel:
    """A tiny Dream with random weights (norm weights and biases randomised too)."""
    torch.manual_seed(seed)
    model = DreamModel(tiny_dream_config(**overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    return model


def write_official_checkpoint(directory: Path, model: DreamModel, rename=None, reshape=None):
    """safetensors + config.json the way the official repository lays them out (no code files)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in model.state_dict().items():
        if reshape and key in reshape:
            value = value[: reshape[key]]
        tensors[(rename or {}).get(key, key)] = value.contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = dict(DREAM_7B_CONFIG)
    config.update(
        {
            key: getattr(model.config, key)
            for key in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "max_position_embeddings",
                "max_window_layers",
                "mask_token_id",
                "pad_token_id",
                "eos_token_id",
                "bos_token_id",
            )
        }
    )
    config["torch_dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = random_dream()
    return write_official_checkpoint(tmp_path_factory.mktemp("dream"), model), model


# ---------------------------------------------------------------- independent reference ---------
def reference_forward(
    model: DreamModel, input_ids, key_mask=None, position_ids=None, modulation=None
):
    """Dream forward in float64 from the state dict: explicit softmax attention, complex RoPE."""
    config = model.config
    weights = {key: value.double() for key, value in model.state_dict().items()}
    batch, length = input_ids.shape
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    positions = (
        torch.arange(length)[None].expand(batch, -1) if position_ids is None else position_ids
    ).double()
    half = head_dim // 2
    freqs = config.rope_theta ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)
    rotor = torch.polar(
        torch.ones(batch, length, half, dtype=torch.float64), positions[..., None] * freqs
    )[:, :, None, :]  # (B, L, 1, D/2)

    def rope(x):  # (B, L, H, D): pair (i, i + D/2) rotated
        turned = torch.complex(x[..., :half], x[..., half:]) * rotor
        return torch.cat((turned.real, turned.imag), dim=-1)

    def rms(x, weight):
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps)

    hidden = weights["model.embed_tokens.weight"][input_ids]
    for index in range(config.num_hidden_layers):
        prefix = f"model.layers.{index}."

        def linear(x, name, prefix=prefix, bias=True):
            out = x @ weights[prefix + name + ".weight"].T
            return out + weights[prefix + name + ".bias"] if bias else out

        def modulate(y, index=index):
            if modulation is None:
                return y
            scale, shift = (t.double() for t in modulation[index])
            return y * (1 + scale[:, None]) + shift[:, None]

        normed = modulate(rms(hidden, weights[prefix + "input_layernorm.weight"]))
        query = rope(linear(normed, "self_attn.q_proj").view(batch, length, heads, head_dim))
        key = rope(linear(normed, "self_attn.k_proj").view(batch, length, kv_heads, head_dim))
        value = linear(normed, "self_attn.v_proj").view(batch, length, kv_heads, head_dim)
        kv_head = torch.arange(heads) // (heads // kv_heads)
        key, value = key[:, :, kv_head], value[:, :, kv_head]
        scores = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), value)
        hidden = hidden + linear(
            attended.reshape(batch, length, -1), "self_attn.o_proj", bias=False
        )
        normed = modulate(rms(hidden, weights[prefix + "post_attention_layernorm.weight"]))
        gated = F.silu(linear(normed, "mlp.gate_proj", bias=False)) * linear(
            normed, "mlp.up_proj", bias=False
        )
        hidden = hidden + linear(gated, "mlp.down_proj", bias=False)
    hidden = rms(hidden, weights["model.norm.weight"])
    return hidden @ weights["lm_head.weight"].T


# ---------------------------------------------------------------- layout and loading ------------
def test_7b_parameter_count_and_official_names_on_meta():
    with torch.device("meta"):
        model = DreamModel(DreamConfig())
    state = model.state_dict()
    assert sum(param.numel() for param in model.parameters()) == 7_615_616_512
    assert len(state) == 339 and set(state) == official_keys(28)
    assert list(model.buffers()) == []  # RoPE tables are never buffers
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (512, 3584)  # 4 KV heads
    assert state["model.layers.0.self_attn.q_proj.bias"].shape == (3584,)
    assert state["model.layers.0.mlp.down_proj.weight"].shape == (3584, 18944)
    assert state["lm_head.weight"].shape == (152064, 3584)
    assert model.get_output_embeddings() is model.lm_head and DreamModel.logit_shift == 1
    config = DreamConfig()
    assert (
        config.rope_theta,
        config.rms_norm_eps,
        config.mask_token_id,
        config.pad_token_id,
        config.eos_token_id,
    ) == (1e6, 1e-6, 151666, 151643, 151643)


def test_auto_classes_build_and_load_the_official_layout(checkpoint):
    path, original = checkpoint
    assert set(AutoModel.from_config(tiny_dream_config()).state_dict()) == official_keys(2)
    config = AutoConfig.from_pretrained(path)  # auto_map points at remote code: the native wins
    assert isinstance(config, DreamConfig) and config.model_type == "Dream"
    loaded = AutoModel.from_pretrained(path)
    assert (
        type(loaded) is DreamModel
        and type(AutoModelForMaskedLM.from_pretrained(path)) is DreamModel
    )
    assert check_backbone_supported("Dream") is DreamModel
    input_ids = torch.randint(0, 126, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(input_ids).logits, original(input_ids).logits)


@pytest.mark.parametrize(
    "rename, reshape, named",
    [
        (
            {"model.layers.1.self_attn.k_proj.bias": "model.layers.1.self_attn.k_proj.b"},
            None,
            ["model.layers.1.self_attn.k_proj.bias", "model.layers.1.self_attn.k_proj.b"],
        ),
        (
            None,
            {"model.layers.0.self_attn.v_proj.weight": 16},
            ["model.layers.0.self_attn.v_proj.weight"],
        ),
    ],
    ids=["renamed", "mis-shaped"],
)
def test_strict_loading_names_the_offending_tensor(tmp_path, rename, reshape, named):
    path = write_official_checkpoint(tmp_path, random_dream(), rename=rename, reshape=reshape)
    with pytest.raises(ValueError) as error:
        AutoModel.from_pretrained(path)
    assert all(name in str(error.value) for name in named), str(error.value)


def test_checkpoint_config_must_state_the_architecture(tmp_path):
    path = write_official_checkpoint(tmp_path, random_dream())
    config = json.loads((path / "config.json").read_text())
    del config[
        "num_key_value_heads"
    ]  # the remote code's default (32 heads) differs from Dream-7B's
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['num_key_value_heads'\]"):
        AutoConfig.from_pretrained(path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_act", "gelu"),
        ("use_sliding_window", True),
        ("tie_word_embeddings", True),
        ("num_key_value_heads", 3),
        ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
    ],
)
def test_unsupported_variants_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_dream_config(**{field: value})


# ---------------------------------------------------------------- numerics ----------------------
def test_forward_matches_float64_reference_with_masks_and_positions():
    model = random_dream()
    input_ids = torch.randint(0, 126, (3, 10))
    key_mask = torch.arange(10)[None, :] < torch.tensor([10, 6, 3])[:, None]
    positions = torch.randint(0, 50, (3, 10))
    with torch.no_grad():
        plain = model(input_ids).logits
        masked = model(input_ids, attention_mask=key_mask, position_ids=positions).logits
    torch.testing.assert_close(
        plain.double(), reference_forward(model, input_ids), rtol=1e-4, atol=1e-4
    )
    expected = reference_forward(model, input_ids, key_mask, positions)
    torch.testing.assert_close(masked.double()[key_mask], expected[key_mask], rtol=1e-4, atol=1e-4)
    # Padding keys are never attended: changing them leaves the real positions exactly unchanged.
    scrambled = torch.where(key_mask, input_ids, torch.randint(0, 126, input_ids.shape))
    with torch.no_grad():
        again = model(scrambled, attention_mask=key_mask, position_ids=positions).logits
    assert torch.equal(again[key_mask], masked[key_mask])


def test_modulation_matches_reference_and_zero_modulation_is_exact():
    model = random_dream()
    input_ids = torch.randint(0, 126, (2, 7))
    modulation = [(torch.randn(2, 64) * 0.1, torch.randn(2, 64) * 0.1) for _ in range(2)]
    zeros = [(torch.zeros(2, 64), torch.zeros(2, 64)) for _ in range(2)]
    with torch.no_grad():
        modulated = model(input_ids, modulation=modulation).logits
        assert torch.equal(model(input_ids, modulation=zeros).logits, model(input_ids).logits)
    torch.testing.assert_close(
        modulated.double(),
        reference_forward(model, input_ids, modulation=modulation),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="one \\(scale, shift\\) entry per layer"):
        model(input_ids, modulation=modulation[:1])


def test_gradient_checkpointing_gives_the_same_gradients():
    model = random_dream().train()
    input_ids = torch.randint(0, 126, (2, 8))
    modulation = [
        (torch.zeros(2, 64, requires_grad=True), torch.zeros(2, 64, requires_grad=True))
        for _ in range(2)
    ]

    def gradients():
        model.zero_grad(set_to_none=True)
        for scale, shift in modulation:
            scale.grad = shift.grad = None
        logits = model(input_ids, modulation=modulation).logits
        F.cross_entropy(logits.flatten(0, 1), input_ids.flatten()).backward()
        grads = {name: param.grad.clone() for name, param in model.named_parameters()}
        grads["scale0"] = modulation[0][0].grad.clone()
        return grads

    plain = gradients()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = gradients()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_forward_is_close_to_fp32(checkpoint):
    path, original = checkpoint
    low = AutoModel.from_pretrained(path, dtype=torch.bfloat16)
    assert all(param.dtype == torch.bfloat16 for param in low.parameters())
    input_ids = torch.randint(0, 126, (2, 12))
    with torch.no_grad():
        low_logits, high = low(input_ids).logits.float(), original(input_ids).logits
    assert torch.isfinite(low_logits).all()
    assert (low_logits - high).abs().max() < 0.05 * high.abs().max()


def test_build_tiny_backbone_and_pad_embedding():
    model = build_tiny_backbone(
        "Dream", vocab_size=100, mask_token_id=97, pad_token_id=98, eos_token_id=99
    )
    assert isinstance(model, DreamModel) and model.config.bos_token_id == 99
    assert model.model.embed_tokens.padding_idx == 98  # as in the official code
    assert torch.all(model.model.embed_tokens.weight[98] == 0)


def test_dream_tokenizer_loads_without_remote_code(tmp_path):
    """A Dream-style tokenizer directory (vocab.json + merges.txt, tokenizer_class DreamTokenizer
    with an auto_map to remote code) loads with AutoTokenizer and no trust_remote_code."""
    byte_level = [chr(code) for code in range(33, 127)]  # printable bytes map to themselves
    vocab = {char: index for index, char in enumerate(byte_level)}
    vocab["Ġ"] = len(vocab)  # byte-level space
    merges = ["h e", "l l", "he ll"]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    size = len(vocab)

    def added(content):
        return {
            "content": content,
            "special": True,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        }

    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "DreamTokenizer",
                "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
                "added_tokens_decoder": {
                    str(size): added("<|endoftext|>"),
                    str(size + 1): added("<|mask|>"),
                },
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "mask_token": "<|mask|>",
                "bos_token": None,
                "errors": "replace",
            }
        )
    )
    write_config = dict(
        DREAM_7B_CONFIG,
        vocab_size=size + 2,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mask_token_id=size + 1,
        pad_token_id=size,
        eos_token_id=size,
    )
    (tmp_path / "config.json").write_text(json.dumps(write_config))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tokenizer, DreamTokenizer)
    assert (tokenizer.mask_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (
        size + 1,
        size,
        size,
    )
    assert tokenizer("hello<|mask|>").input_ids == [vocab["hell"], vocab["o"], size + 1]
