"""Tests of the native LLaDA backbone (retrofit.models): checkpoint layout, strict loading, config
validation, numerics against an independent reference, masks, modulation, checkpointing, bf16."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from retrofit.models import (
    SUPPORTED_BACKBONES,
    DreamModel,
    LLaDAConfig,
    LLaDAModelLM,
    LLaDARMSNorm,
    apply_rotary,
    check_backbone_supported,
    rotary_cos_sin,
    tiny_llada_config,
)
from retrofit.models.modeling_llada import _key_padding_mask

BLOCK_PARAMS = (
    "attn_norm",
    "q_proj",
    "k_proj",
    "v_proj",
    "attn_out",
    "ff_norm",
    "ff_proj",
    "up_proj",
    "ff_out",
)

# The LLaDA-8B config.json keys and values (GSAI-ML/LLaDA-8B-Base), minus auto_map/architectures.
LLADA_8B_FACTS = {
    "activation_type": "silu",
    "alibi": False,
    "alibi_bias_max": 8.0,
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "d_model": 4096,
    "embedding_dropout": 0.0,
    "embedding_size": 126464,
    "eos_token_id": 126081,
    "flash_attention": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "init_cutoff_factor": None,
    "init_device": "meta",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mask_token_id": 126336,
    "max_sequence_length": 4096,
    "mlp_hidden_size": 12288,
    "mlp_ratio": 4,
    "model_type": "llada",
    "multi_query_attention": None,
    "n_heads": 32,
    "n_kv_heads": 32,
    "n_layers": 32,
    "pad_token_id": 126081,
    "precision": "amp_bf16",
    "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "scale_logits": False,
    "use_cache": False,
    "vocab_size": 126464,
    "weight_tying": False,
}


def expected_keys(n_layers: int) -> set[str]:
    """The official LLaDA state-dict key names, written out independently of the model code."""
    keys = {
        "model.transformer.wte.weight",
        "model.transformer.ln_f.weight",
        "model.transformer.ff_out.weight",
    }
    for index in range(n_layers):
        keys |= {f"model.transformer.blocks.{index}.{name}.weight" for name in BLOCK_PARAMS}
    return keys


def official_config_json(**values) -> dict:
    """A config.json in the official layout (remote-code auto_map, OLMo keys), tiny shape."""
    config = dict(LLADA_8B_FACTS)
    config.update(
        d_model=64,
        n_heads=4,
        n_kv_heads=4,
        n_layers=2,
        mlp_hidden_size=128,
        mlp_ratio=2,
        vocab_size=128,
        embedding_size=128,
        max_sequence_length=512,
        rope_theta=10000.0,
        mask_token_id=126,
        eos_token_id=127,
        pad_token_id=127,
        init_device="meta",
        architectures=["LLaDAModelLM"],
        transformers_version="4.46.3",
        auto_map={
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
    )
    config.update(values)
    return config


def random_model(seed: int = 0, **overrides) -> LLaDAModelLM:
    """A tiny LLaDA with random weights (norm weights randomised too, so they matter)."""
    torch.manual_seed(seed)
    model = LLaDAModelLM(tiny_llada_config(**overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "ln_f.weight")):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    return model


def write_official_checkpoint(
    directory: Path, model: LLaDAModelLM, rename: dict[str, str] | None = None, **config_values
) -> Path:
    """Write safetensors + config.json as the official repository does (no modeling files)."""
    directory.mkdir(parents=True, exist_ok=True)
    rename = rename or {}
    tensors = {
        rename.get(key, key): value.contiguous() for key, value in model.state_dict().items()
    }
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(
        json.dumps(official_config_json(**config_values), indent=2)
    )
    return directory


@pytest.fixture(autouse=True)
def _deterministic_inputs() -> None:
    torch.manual_seed(1234)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, LLaDAModelLM]:
    model = random_model()
    return write_official_checkpoint(tmp_path_factory.mktemp("llada"), model), model


# ---------------------------------------------------------------- independent reference ---------
def reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE via complex numbers: x (B, L, H, D); pair (i, i + D/2) turned by pos * theta^(-2i/D)."""
    length, dim = x.shape[1], x.shape[-1]
    half = dim // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None, :]  # (L, D/2)
    rotor = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    rotated = torch.complex(x[..., :half].double(), x[..., half:].double()) * rotor
    return torch.cat((rotated.real, rotated.imag), dim=-1)


def reference_forward(model: LLaDAModelLM, input_ids, key_mask=None, modulation=None):
    """LLaDA forward in float64 from the state dict, with explicit softmax attention."""
    config = model.config
    weights = {key: value.double() for key, value in model.state_dict().items()}
    batch, length = input_ids.shape
    n_heads, n_kv, head_dim = config.n_heads, config.n_kv_heads, config.d_model // config.n_heads

    def rms(x, weight):
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps)

    hidden = weights["model.transformer.wte.weight"][input_ids]
    for index in range(config.n_layers):

        def param(name, index=index):
            return weights[f"model.transformer.blocks.{index}.{name}.weight"]

        def modulate(y, index=index):
            if modulation is None:
                return y
            scale, shift = (t.double() for t in modulation[index])
            return y * (1 + scale[:, None]) + shift[:, None]

        normed = modulate(rms(hidden, param("attn_norm")))
        query = (normed @ param("q_proj").T).view(batch, length, n_heads, head_dim)
        key = (normed @ param("k_proj").T).view(batch, length, n_kv, head_dim)
        value = (normed @ param("v_proj").T).view(batch, length, n_kv, head_dim)
        query, key = (
            reference_rope(query, config.rope_theta),
            reference_rope(key, config.rope_theta),
        )
        kv_head = torch.arange(n_heads) // (n_heads // n_kv)
        key, value = key[:, :, kv_head], value[:, :, kv_head]
        scores = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), value).reshape(
            batch, length, -1
        )
        hidden = hidden + attended @ param("attn_out").T
        normed = modulate(rms(hidden, param("ff_norm")))
        hidden = (
            hidden
            + (F.silu(normed @ param("ff_proj").T) * (normed @ param("up_proj").T))
            @ param("ff_out").T
        )
    hidden = rms(hidden, weights["model.transformer.ln_f.weight"])
    return hidden @ weights["model.transformer.ff_out.weight"].T, hidden


# ---------------------------------------------------------------- layout and loading ------------
def test_official_checkpoint_loads_with_automodel(checkpoint):
    path, original = checkpoint
    config = AutoConfig.from_pretrained(path)
    assert isinstance(config, LLaDAConfig) and config.init_device == "meta"
    loaded = AutoModel.from_pretrained(path)
    assert type(loaded) is LLaDAModelLM
    assert set(loaded.state_dict()) == expected_keys(2)
    assert all(param.device.type == "cpu" for param in loaded.parameters())
    input_ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(input_ids).logits, original(input_ids).logits)
    masked_lm = AutoModelForMaskedLM.from_pretrained(path, device_map="cpu")
    assert type(masked_lm) is LLaDAModelLM


def test_save_pretrained_round_trip(checkpoint, tmp_path):
    _, original = checkpoint
    original.save_pretrained(tmp_path)
    loaded, info = LLaDAModelLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    input_ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, original(input_ids).logits)


def test_bf16_load(checkpoint):
    path, original = checkpoint
    loaded = AutoModel.from_pretrained(path, dtype=torch.bfloat16)
    assert all(param.dtype == torch.bfloat16 for param in loaded.parameters())
    input_ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        low, high = loaded(input_ids).logits.float(), original(input_ids).logits
    assert not torch.isnan(low).any()
    assert (low - high).abs().max() < 0.05 * high.abs().max()


def test_renamed_key_fails_strict_load(tmp_path):
    model = random_model()
    path = write_official_checkpoint(
        tmp_path,
        model,
        rename={
            "model.transformer.blocks.1.q_proj.weight": "model.transformer.blocks.1.att_proj.weight"
        },
    )
    with pytest.raises(ValueError) as error:
        AutoModel.from_pretrained(path)
    message = str(error.value)
    assert "model.transformer.blocks.1.q_proj.weight" in message  # missing
    assert "model.transformer.blocks.1.att_proj.weight" in message  # unexpected
    loaded = LLaDAModelLM.from_pretrained(path, strict=False)  # explicit opt-out still loads
    assert isinstance(loaded, LLaDAModelLM)


def test_8b_key_names_and_parameter_count():
    with torch.device("meta"):
        model = LLaDAModelLM(LLaDAConfig())
    state = model.state_dict()
    assert len(state) == 291 and set(state) == expected_keys(32)
    assert list(model.buffers()) == []  # RoPE tables are never buffers
    assert sum(param.numel() for param in model.parameters()) == 8_015_581_184
    assert state["model.transformer.ff_out.weight"].shape == (126464, 4096)
    assert state["model.transformer.blocks.0.ff_out.weight"].shape == (4096, 12288)
    assert model.get_output_embeddings() is model.model.transformer.ff_out
    assert model.get_input_embeddings() is model.model.transformer.wte


# ---------------------------------------------------------------- config ------------------------
def test_config_defaults_are_llada_8b():
    config = LLaDAConfig()
    for key, value in LLADA_8B_FACTS.items():
        assert getattr(config, key) == value, key
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        4096,
        32,
        32,
    )
    assert config.tie_word_embeddings is False
    tiny = tiny_llada_config()
    assert (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.mlp_hidden_size, tiny.vocab_size) == (
        64,
        2,
        4,
        128,
        128,
    )
    assert max(tiny.mask_token_id, tiny.pad_token_id, tiny.eos_token_id) < tiny.vocab_size


@pytest.mark.parametrize(
    "key, value",
    [
        ("block_type", "sequential"),
        ("weight_tying", True),
        ("include_bias", True),
        ("layer_norm_type", "default"),
        ("alibi", True),
        ("input_emb_norm", True),
        ("scale_logits", True),
        ("n_kv_heads", 3),
        ("clip_qkv", 8.0),
        ("attention_layer_norm", True),
        ("activation_type", "swiglu"),
        ("embedding_size", 100),
        ("rope", False),
        ("block_group_size", 2),
        ("include_qkv_bias", True),
        ("bias_for_layer_norm", True),
    ],
)
def test_unsupported_config_values_are_refused(key, value, tmp_path):
    with pytest.raises(ValueError, match=key):
        tiny_llada_config(**{key: value})
    (tmp_path / "config.json").write_text(json.dumps(official_config_json(**{key: value})))
    with pytest.raises(ValueError, match=key):
        AutoConfig.from_pretrained(tmp_path)


def test_config_edited_after_construction_is_refused_by_model():
    config = tiny_llada_config()
    config.weight_tying = True
    with pytest.raises(ValueError, match="weight_tying"):
        LLaDAModelLM(config)


def test_checkpoint_config_missing_required_key_is_refused(tmp_path):
    config = official_config_json()
    del config["block_type"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="block_type"):
        AutoConfig.from_pretrained(tmp_path)


def test_checkpoint_config_null_derived_keys_follow_original_semantics(tmp_path):
    config = official_config_json(
        n_kv_heads=None, mlp_hidden_size=None, mlp_ratio=3, embedding_size=None
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert (loaded.n_kv_heads, loaded.mlp_hidden_size, loaded.embedding_size) == (4, 192, 128)


def test_backbone_support():
    assert check_backbone_supported("llada") is LLaDAModelLM and "llada" in SUPPORTED_BACKBONES
    # Dream is supported under its official (case-sensitive) model_type; the lowercase spelling
    # is an error that names the right one.
    assert check_backbone_supported("Dream") is DreamModel and "Dream" in SUPPORTED_BACKBONES
    with pytest.raises(
        ValueError,
        match=r"backbone 'dream' is not supported: .*151666.*'Dream'.*supported: llada, Dream",
    ):
        check_backbone_supported("dream")
    with pytest.raises(ValueError, match="supported: llada"):
        check_backbone_supported("bert")


# ---------------------------------------------------------------- numerics ----------------------
def test_rope_matches_complex_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 16)  # (B, H, L, D)
    cos, sin = rotary_cos_sin(11, 16, 10000.0)
    ours = apply_rotary(x, cos, sin)
    reference = reference_rope(x.transpose(1, 2), 10000.0).transpose(1, 2)
    torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours[:, :, 0], x[:, :, 0])  # position 0 is not rotated


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_forward_matches_reference(n_kv_heads):
    model = random_model(n_kv_heads=n_kv_heads)
    input_ids = torch.randint(0, 128, (2, 10))
    modulation = [(0.3 * torch.randn(2, 64), 0.3 * torch.randn(2, 64)) for _ in range(2)]
    key_mask = torch.ones(2, 10, dtype=torch.bool)
    key_mask[1, 7:] = False
    with torch.no_grad():
        for mod in (None, modulation):
            output = model(input_ids, attention_mask=key_mask, modulation=mod)
            logits, hidden = reference_forward(model, input_ids, key_mask, mod)
            torch.testing.assert_close(output.logits.double(), logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                output.last_hidden_state.double(), hidden, atol=1e-4, rtol=1e-4
            )


def test_padding_mask_is_honoured():
    model = random_model()
    real = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        alone = model(real).logits[0]
        for pad_tokens in (torch.full((1, 3), 127), torch.randint(0, 128, (1, 3))):
            padded = torch.cat((real, pad_tokens), dim=1)
            full_row = torch.randint(0, 128, (1, 8))
            batch = torch.cat((padded, full_row))
            for mask in (
                torch.tensor([[1] * 5 + [0] * 3, [1] * 8]),
                torch.tensor([[True] * 5 + [False] * 3, [True] * 8]),
            ):
                output = model(batch, attention_mask=mask).logits
                torch.testing.assert_close(output[0, :5], alone, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(
                    output[1], model(full_row).logits[0], atol=1e-5, rtol=1e-5
                )
                assert torch.isfinite(output).all()


def test_all_ones_mask_equals_no_mask_and_bad_masks_are_refused():
    model = random_model()
    input_ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        plain = model(input_ids).logits
        assert torch.equal(
            model(input_ids, attention_mask=torch.ones(2, 7, dtype=torch.long)).logits, plain
        )
        assert torch.equal(
            model(input_ids, attention_mask=torch.ones(2, 7, dtype=torch.bool)).logits, plain
        )
        with pytest.raises(ValueError, match="0/1"):
            model(
                input_ids,
                attention_mask=torch.zeros(2, 7).masked_fill(torch.rand(2, 7) > 0.5, float("-inf")),
            )
        with pytest.raises(ValueError, match="shape"):
            model(input_ids, attention_mask=torch.ones(2, 1, 7, 7, dtype=torch.bool))


def test_fully_padded_rows_are_finite():
    model = random_model()
    input_ids = torch.randint(0, 128, (2, 6))
    mask = torch.tensor([[0] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        output = model(input_ids, attention_mask=mask, output_hidden_states=True)
    assert torch.isfinite(output.logits).all()
    assert all(torch.isfinite(state).all() for state in output.hidden_states)


def test_modulation():
    model = random_model()
    input_ids = torch.randint(0, 128, (2, 8))
    zeros = [(torch.zeros(2, 64), torch.zeros(2, 64)) for _ in range(2)]
    with torch.no_grad():
        plain = model(input_ids).logits
        assert torch.equal(model(input_ids, modulation=zeros).logits, plain)
        assert torch.equal(model(input_ids, modulation=[None, None]).logits, plain)
        shifted = model(
            input_ids, modulation=[zeros[0], (torch.zeros(2, 64), torch.full((2, 64), 0.5))]
        ).logits
        assert not torch.allclose(shifted, plain)
        with pytest.raises(ValueError, match="one \\(scale, shift\\) entry per block"):
            model(input_ids, modulation=zeros[:1])
        with pytest.raises(ValueError, match="shape"):
            model(input_ids, modulation=[(torch.zeros(2, 32), torch.zeros(2, 32))] * 2)


def test_hidden_states_and_output_forms():
    model = random_model()
    input_ids = torch.randint(0, 128, (3, 5))
    with torch.no_grad():
        output = model(input_ids, output_hidden_states=True)
        assert len(output.hidden_states) == 3
        assert all(state.shape == (3, 5, 64) for state in output.hidden_states)
        assert torch.equal(output.hidden_states[0], model.get_input_embeddings()(input_ids))
        assert torch.equal(output.hidden_states[-1], output.last_hidden_state)
        assert torch.equal(model.get_output_embeddings()(output.last_hidden_state), output.logits)
        headless = model(input_ids, return_logits=False)
        assert headless.logits is None and torch.equal(
            headless.last_hidden_state, output.last_hidden_state
        )
        as_tuple = model(input_ids, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.logits)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_same_gradients(use_reentrant):
    input_ids = torch.randint(0, 128, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
    targets = torch.randint(0, 128, (2, 8))
    gradients = []
    for checkpointing in (False, True):
        model = random_model(seed=3).train()
        if checkpointing:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", FutureWarning
                )  # deprecated alias in transformers 5.2x
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": use_reentrant}
                )
            assert all(block.gradient_checkpointing for block in model.blocks)
        torch.manual_seed(1)
        modulation = [
            (torch.randn(2, 64, requires_grad=True), torch.randn(2, 64, requires_grad=True))
            for _ in range(2)
        ]
        # Count attn_norm calls: a checkpointed block recomputes its forward during backward.
        norm_calls = []
        model.blocks[1].attn_norm.register_forward_hook(
            lambda *args, calls=norm_calls: calls.append(1)
        )
        logits = model(input_ids, attention_mask=mask, modulation=modulation).logits
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        assert len(norm_calls) == (2 if checkpointing else 1)
        grads = {name: param.grad.clone() for name, param in model.named_parameters()}
        grads.update(
            {
                f"mod{i}.{j}": tensor.grad.clone()
                for i, pair in enumerate(modulation)
                for j, tensor in enumerate(pair)
            }
        )
        gradients.append(grads)
    plain, checkpointed = gradients
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert plain["mod1.1"].abs().sum() > 0


def test_bf16_forward_close_to_fp32():
    model = random_model()
    input_ids = torch.randint(0, 128, (2, 16))
    mask = torch.tensor([[1] * 16, [1] * 10 + [0] * 6])
    modulation = [(0.1 * torch.randn(2, 64), 0.1 * torch.randn(2, 64)) for _ in range(2)]
    with torch.no_grad():
        high = model(input_ids, attention_mask=mask, modulation=modulation).logits
        low = model.to(torch.bfloat16)(input_ids, attention_mask=mask, modulation=modulation)
    assert low.logits.dtype == torch.bfloat16 and low.last_hidden_state.dtype == torch.bfloat16
    assert (low.logits.float() - high).abs().max() < 0.05 * high.abs().max()


def test_rms_norm_statistics_in_fp32():
    norm = LLaDARMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    hidden = (torch.randn(4, 9, 64) * 30).to(torch.bfloat16)
    upcast = hidden.float()
    expected = (
        norm.weight.bfloat16()
        * (upcast * torch.rsqrt(upcast.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    )
    with torch.no_grad():
        assert torch.equal(norm.bfloat16()(hidden), expected)


def test_fully_padded_rows_attend_everywhere_instead_of_nowhere():
    # Some SDPA kernels return NaN for a query row whose keys are all masked; such rows get a
    # harmless all-True mask instead.
    mask = _key_padding_mask(torch.tensor([[0, 0, 0], [1, 1, 0]]), 2, 3)
    assert torch.equal(mask[:, 0, 0], torch.tensor([[True, True, True], [True, True, False]]))
    assert _key_padding_mask(torch.ones(2, 3), 2, 3) is None
