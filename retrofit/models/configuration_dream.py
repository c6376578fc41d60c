"""Configuration of the native Dream backbone (model_type ``"Dream"``).

Dream checkpoints (Dream-org/Dream-v0-Base-7B, -Instruct-7B, initialised from Qwen2.5-7B) ship a
Qwen2-style ``config.json`` whose ``model_type`` is ``"Dream"`` (capital D) and whose ``auto_map``
points at remote code; this class reads that file as is. The defaults are Dream-7B's, so
``DreamConfig()`` describes the 7B model (7,615,616,512 parameters). The official remote-code class
has other defaults (vocabulary 151,936, width 4096, 32 layers, RoPE theta 1e4), so a checkpoint
``config.json`` lacking a key that decides the architecture is refused
(``DREAM_REQUIRED_CHECKPOINT_KEYS``) rather than filled with the 7B value; variants this implementation does not have (sliding-window
attention, RoPE scaling, tied embeddings, another activation) are refused with a ``ValueError``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig

__all__ = ["DREAM_REQUIRED_CHECKPOINT_KEYS", "DreamConfig", "tiny_dream_config"]

# Keys whose default in Dream's remote-code DreamConfig differs from Dream-7B's value: a config.json
# without one of them means the remote default, which this class must not silently replace.
DREAM_REQUIRED_CHECKPOINT_KEYS: tuple[str, ...] = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rope_theta",
)


class DreamConfig(PreTrainedConfig):
    """Dream backbone configuration; every field default is Dream-7B's value.

    Architecture (Qwen2 layout): ``num_hidden_layers`` pre-norm blocks (RMSNorm ``input_layernorm``,
    bidirectional grouped-query attention with q/k/v biases and RoPE, RMSNorm
    ``post_attention_layernorm``, SwiGLU MLP of width ``intermediate_size``), a final RMSNorm and an
    untied ``lm_head``. The logits keep the autoregressive alignment of the Qwen2.5 initialisation:
    the prediction for position i is read at position i - 1 (see ``DreamModel.logit_shift``).

    Stored without effect on the forward pass: ``max_position_embeddings`` (RoPE needs no table),
    ``max_window_layers``, ``sliding_window`` (only with ``use_sliding_window``, which is refused),
    ``initializer_range``, ``use_cache``, ``bos_token_id``.
    """

    model_type = "Dream"
    # LLaDA-style names, so code written against either backbone can read the shape.
    attribute_map: ClassVar[dict[str, str]] = {
        "d_model": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
    }

    # --- shape ---
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    max_position_embeddings: int = 131072
    # --- block ---
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int = 28
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    # --- special tokens: <|mask|> 151666, pad = eos = <|endoftext|> 151643 ---
    mask_token_id: int | None = 151666
    pad_token_id: int | None = 151643
    eos_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    # --- stored, no effect on the forward pass ---
    initializer_range: float = 0.02
    use_cache: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        rope_scaling = kwargs.pop("rope_scaling", None)
        if rope_scaling is not None:
            raise ValueError(
                f"Unsupported Dream config: rope_scaling={rope_scaling!r}; the native Dream "
                "implements plain RoPE only (Dream-7B's config.json has rope_scaling: null)."
            )
        super().__post_init__(**kwargs)
        if self.num_key_value_heads is None:  # the remote code's rule
            self.num_key_value_heads = self.num_attention_heads
        self.validate_dream()

    @property
    def head_dim(self) -> int:
        """Per-head width ``hidden_size // num_attention_heads``."""
        return self.hidden_size // self.num_attention_heads

    def validate_dream(self) -> None:
        """Raise ``ValueError`` naming every key whose value selects a variant the model lacks."""
        problems: list[str] = []
        if self.hidden_act != "silu":
            problems.append(f"hidden_act={self.hidden_act!r}: only 'silu' (SwiGLU) is supported")
        if self.use_sliding_window:
            problems.append("use_sliding_window=True: sliding-window attention is not supported")
        if self.tie_word_embeddings:
            problems.append(
                "tie_word_embeddings=True: Dream's lm_head is untied; tying is not supported"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name}={value!r}: must be a positive integer")
        if not problems:
            if self.hidden_size % self.num_attention_heads:
                problems.append(
                    f"hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}"
                )
            elif self.head_dim % 2:
                problems.append(f"head_dim={self.head_dim} must be even for RoPE")
            if self.num_attention_heads % self.num_key_value_heads:
                problems.append(
                    f"num_key_value_heads={self.num_key_value_heads} does not divide "
                    f"num_attention_heads={self.num_attention_heads}"
                )
        if not 0.0 <= float(self.attention_dropout) < 1.0:
            problems.append(f"attention_dropout={self.attention_dropout}: must be in [0, 1)")
        if not float(self.rope_theta) > 0 or not float(self.rms_norm_eps) > 0:
            problems.append(
                f"rope_theta={self.rope_theta}, rms_norm_eps={self.rms_norm_eps}: must be positive"
            )
        if problems:
            raise ValueError(
                "Unsupported Dream config: " + "; ".join(problems) + ". The native retrofit Dream "
                "implements Dream-7B's architecture; fix the config or use the checkpoint's own "
                "remote code."
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> DreamConfig:
        """Build a config from a checkpoint's ``config.json`` dict (used by ``from_pretrained``).

        Raises ``ValueError`` if a key of ``DREAM_REQUIRED_CHECKPOINT_KEYS`` is absent (keyword
        overrides count as present), so an incomplete file never inherits Dream-7B defaults.
        """
        present = set(config_dict) | set(kwargs)
        missing = [key for key in DREAM_REQUIRED_CHECKPOINT_KEYS if key not in present]
        if missing:
            raise ValueError(
                f"Dream config is missing required key(s) {missing}. A checkpoint config.json must "
                "state them (Dream-v0-Base-7B's does); the remote code's defaults differ from "
                "Dream-7B's. To build a config in code use DreamConfig(**fields) or "
                "tiny_dream_config()."
            )
        return super().from_dict(dict(config_dict), **kwargs)


def tiny_dream_config(**overrides: Any) -> DreamConfig:
    """A tiny Dream config for tests: 2 layers, width 64, 4 query / 2 key-value heads, vocab 128.

    Special ids sit inside the vocabulary: mask 126, pad = eos = bos 127 (bos follows an
    overridden eos, as in Dream-7B where all three are 151643). Any field can be overridden, e.g.
    ``tiny_dream_config(num_hidden_layers=3)``.
    """
    fields: dict[str, Any] = {
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "max_window_layers": 2,
        "mask_token_id": 126,
        "pad_token_id": 127,
        "eos_token_id": 127,
        "bos_token_id": 127,
    }
    fields.update(overrides)
    if "bos_token_id" not in overrides:
        fields["bos_token_id"] = fields["eos_token_id"]
    return DreamConfig(**fields)
