"""Configuration of the native LLaDA backbone (model_type ``"llada"``).

LLaDA checkpoints (GSAI-ML/LLaDA-8B-Base, -Instruct, LLaDA-1.5) ship an OLMo-style ``config.json``
with many keys; this class reads that file as is. The defaults are LLaDA-8B's, so
``LLaDAConfig()`` describes the 8B model. Keys that select a variant this implementation does not
support (another block type, tied weights, biases, ALiBi, ...) are refused with a ``ValueError``
instead of being silently ignored, and a checkpoint ``config.json`` that lacks a key which decides
the architecture is refused too (see ``REQUIRED_CHECKPOINT_KEYS``): it never inherits the 8B
defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig

__all__ = ["REQUIRED_CHECKPOINT_KEYS", "LLaDAConfig", "tiny_llada_config"]

# Keys a checkpoint's config.json must carry. The original (OLMo) code gives these keys other
# defaults than LLaDA-8B (e.g. block_type "sequential", weight_tying true, include_bias true), so a
# config lacking one is ambiguous: loading it with our 8B defaults could build a different model.
REQUIRED_CHECKPOINT_KEYS: tuple[str, ...] = (
    "d_model",
    "n_layers",
    "n_heads",
    "vocab_size",
    "block_type",
    "activation_type",
    "layer_norm_type",
    "rms_norm_eps",
    "rope",
    "rope_theta",
    "weight_tying",
    "include_bias",
    "mask_token_id",
    "eos_token_id",
    "pad_token_id",
)

# Keys whose absence has a defined meaning in the original code ("derive me from other keys");
# a checkpoint config without them gets None here, never the 8B value.
_DERIVED_WHEN_ABSENT: tuple[str, ...] = ("n_kv_heads", "embedding_size", "mlp_hidden_size")


class LLaDAConfig(PreTrainedConfig):
    """LLaDA backbone configuration; every field default is LLaDA-8B's value.

    Architecture: ``n_layers`` pre-norm Llama-style blocks (RMSNorm, RoPE, bidirectional
    multi-head attention with ``n_kv_heads`` key/value heads, SwiGLU MLP of width
    ``mlp_hidden_size``), no biases, an untied LM head of ``embedding_size`` outputs.

    The OLMo-era keys that do not change the forward pass are accepted and stored (``mlp_ratio``
    when ``mlp_hidden_size`` is set, ``flash_attention``, ``init_fn``, ``init_device``,
    ``precision``, ``alibi_bias_max``, ...). Keys selecting unsupported variants raise
    ``ValueError`` at construction and again when a model is built.

    Use ``LLaDAConfig(**fields)`` or :func:`tiny_llada_config` to build a config in code;
    ``from_pretrained`` / ``from_dict`` are for complete checkpoint configs and require
    ``REQUIRED_CHECKPOINT_KEYS``.
    """

    model_type = "llada"
    # Standard transformers names (used by DeepSpeed "auto" values, PEFT, accelerate, ...).
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "num_key_value_heads": "n_kv_heads",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "weight_tying",
        "initializer_range": "init_std",
    }

    # --- shape ---
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 32
    n_layers: int = 32
    mlp_ratio: int | float = 4
    mlp_hidden_size: int | None = 12288
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    max_sequence_length: int = 4096
    # --- block ---
    block_type: str = "llama"
    block_group_size: int = 1
    activation_type: str = "silu"
    layer_norm_type: str = "rms"
    layer_norm_with_affine: bool = True
    bias_for_layer_norm: bool | None = False
    rms_norm_eps: float = 1e-5
    include_bias: bool = False
    include_qkv_bias: bool = False
    attention_layer_norm: bool = False
    attention_layer_norm_with_affine: bool = True
    clip_qkv: float | None = None
    multi_query_attention: bool | None = None
    input_emb_norm: bool = False
    scale_logits: bool = False
    weight_tying: bool = False
    # --- positions ---
    rope: bool = True
    rope_theta: float = 500000.0
    rope_full_precision: bool = True
    alibi: bool = False
    alibi_bias_max: float = 8.0
    # --- regularisation (LLaDA trains with none) ---
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0
    embedding_dropout: float = 0.0
    # --- special tokens ---
    mask_token_id: int | None = 126336
    eos_token_id: int | None = 126081
    pad_token_id: int | None = 126081
    # --- stored, no effect on the forward pass ---
    flash_attention: bool = False
    init_fn: str = "mitchell"
    init_std: float = 0.02
    init_device: str | None = "meta"
    init_cutoff_factor: float | None = None
    precision: str | None = "amp_bf16"
    use_cache: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        # Resolve the keys the original code derives from others when they are null.
        if self.n_kv_heads is None:
            self.n_kv_heads = 1 if self.multi_query_attention else self.n_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        if self.mlp_hidden_size is None:
            if self.mlp_ratio is None:
                raise ValueError("LLaDAConfig needs mlp_hidden_size (or mlp_ratio to derive it).")
            self.mlp_hidden_size = int(self.mlp_ratio * self.d_model)
        self.validate_llada()

    @property
    def head_dim(self) -> int:
        """Per-head width ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    def validate_llada(self) -> None:
        """Raise ``ValueError`` if this config selects a variant the native model lacks.

        Called at construction and again by the model's ``__init__`` (fields may be edited after
        construction). Every message names the key, its value and what is supported.
        """
        problems = self._variant_problems() + self._shape_problems()
        if problems:
            raise ValueError(
                "Unsupported LLaDA config: "
                + "; ".join(problems)
                + ". The native retrofit LLaDA implements LLaDA's 'llama'-block architecture only; "
                "fix the config or use the checkpoint's own remote code."
            )

    def _variant_problems(self) -> list[str]:
        """Architecture switches the native model does not implement (one message each)."""
        refused = [
            (self.block_type != "llama", (f"block_type={self.block_type!r}: only 'llama' blocks "
             "(separate q/k/v, SwiGLU) are supported")),
            (self.block_group_size != 1,
             f"block_group_size={self.block_group_size}: only 1 (no block groups) is supported"),
            (self.activation_type != "silu", (f"activation_type={self.activation_type!r}: only "
             "'silu' (SwiGLU with up_proj) is supported")),
            (self.layer_norm_type != "rms",
             f"layer_norm_type={self.layer_norm_type!r}: only 'rms' is supported"),
            (not self.layer_norm_with_affine,
             "layer_norm_with_affine=False: norms without a weight are not supported"),
            (bool(self.bias_for_layer_norm), "bias_for_layer_norm=True: norm biases are not supported"),
            (bool(self.include_bias), "include_bias=True: linear-layer biases are not supported"),
            (bool(self.include_qkv_bias), "include_qkv_bias=True: q/k/v biases are not supported"),
            (bool(self.attention_layer_norm),
             "attention_layer_norm=True: q/k layer norms are not supported"),
            (self.clip_qkv is not None, f"clip_qkv={self.clip_qkv}: q/k/v clipping is not supported"),
            (bool(self.input_emb_norm), "input_emb_norm=True: embedding scaling is not supported"),
            (bool(self.scale_logits), "scale_logits=True: logit scaling is not supported"),
            (bool(self.weight_tying), ("weight_tying=True: LLaDA's LM head (model.transformer.ff_out) "
             "is untied; tying is not supported")),
            (bool(self.alibi), "alibi=True: ALiBi is not supported (LLaDA uses RoPE)"),
            (not self.rope,
             "rope=False: only RoPE positions are supported (no learned position embeddings)"),
        ]
        return [message for condition, message in refused if condition]

    def _shape_problems(self) -> list[str]:
        """Sizes that are not positive, do not divide, or are out of range."""
        problems = []
        for name in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size",
                     "embedding_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name}={value!r}: must be a positive integer")
        if not problems:
            checks = [
                (self.d_model % self.n_heads != 0,
                 f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}"),
                (self.n_heads % self.n_kv_heads != 0,
                 f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}"),
                (self.multi_query_attention is True and self.n_kv_heads != 1,
                 f"multi_query_attention=True contradicts n_kv_heads={self.n_kv_heads} (must be 1)"),
                (self.head_dim % 2 != 0, f"head_dim={self.head_dim} must be even for RoPE"),
                (self.embedding_size < self.vocab_size, (f"embedding_size={self.embedding_size} is "
                 f"smaller than vocab_size={self.vocab_size}")),
            ]
            problems += [message for condition, message in checks if condition]
        for name in ("attention_dropout", "residual_dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                problems.append(f"{name}={value}: must be in [0, 1)")
        if not float(self.rope_theta) > 0:
            problems.append(f"rope_theta={self.rope_theta}: must be positive")
        if not float(self.rms_norm_eps) > 0:
            problems.append(f"rms_norm_eps={self.rms_norm_eps}: must be positive")
        return problems

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> LLaDAConfig:
        """Build a config from a checkpoint's ``config.json`` dict (used by ``from_pretrained``).

        Raises ``ValueError`` if a key in ``REQUIRED_CHECKPOINT_KEYS`` (or both ``mlp_hidden_size``
        and ``mlp_ratio``) is absent, so an incomplete file never inherits LLaDA-8B defaults. Keys
        passed as keyword overrides count as present.
        """
        present = set(config_dict) | set(kwargs)
        missing = [key for key in REQUIRED_CHECKPOINT_KEYS if key not in present]
        if "mlp_hidden_size" not in present and "mlp_ratio" not in present:
            missing.append("mlp_hidden_size")
        if missing:
            raise ValueError(
                f"LLaDA config is missing required key(s) {missing}. A checkpoint config.json must "
                "state them explicitly (LLaDA-8B's config.json does); refusing to fill them with "
                "defaults. To build a config in code use LLaDAConfig(**fields) or "
                "tiny_llada_config()."
            )
        config_dict = dict(config_dict)
        for key in _DERIVED_WHEN_ABSENT:
            if key not in present:
                config_dict[key] = None
        return super().from_dict(config_dict, **kwargs)


def tiny_llada_config(**overrides: Any) -> LLaDAConfig:
    """A tiny LLaDA config for tests and the demo: 2 blocks, d 64, 4 heads, MLP 128, vocab 128.

    Special ids sit inside the vocabulary: mask 126 (the last-but-one id), eos = pad 127.
    Any field can be overridden, e.g. ``tiny_llada_config(n_layers=4, n_kv_heads=2)``.
    """
    fields: dict[str, Any] = {
        "d_model": 64,
        "n_heads": 4,
        "n_kv_heads": 4,
        "n_layers": 2,
        "mlp_ratio": 2,
        "mlp_hidden_size": 128,
        "vocab_size": 128,
        "embedding_size": 128,
        "max_sequence_length": 512,
        "rope_theta": 10000.0,
        "mask_token_id": 126,
        "eos_token_id": 127,
        "pad_token_id": 127,
    }
    fields.update(overrides)
    if "vocab_size" in overrides and "embedding_size" not in overrides:
        fields["embedding_size"] = overrides["vocab_size"]
    return LLaDAConfig(**fields)
