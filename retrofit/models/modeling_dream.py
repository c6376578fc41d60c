"""Native Dream (bidirectional masked-diffusion transformer, Qwen2 layout) without remote code.

Module names reproduce the official checkpoint layout exactly, so the 339 tensors of Dream-7B load
strictly::

    model.embed_tokens.weight                                    (vocab_size, d)
    model.layers.{i}.input_layernorm.weight                      (d,)
    model.layers.{i}.self_attn.q_proj.{weight,bias}              (d, d), (d,)
    model.layers.{i}.self_attn.{k_proj,v_proj}.{weight,bias}     (kv_heads * head_dim, d), (kv,)
    model.layers.{i}.self_attn.o_proj.weight                     (d, d)  no bias
    model.layers.{i}.post_attention_layernorm.weight             (d,)
    model.layers.{i}.mlp.{gate_proj,up_proj}.weight              (intermediate_size, d)
    model.layers.{i}.mlp.down_proj.weight                        (d, intermediate_size)
    model.norm.weight                                            (d,)
    lm_head.weight                                               (vocab_size, d)  untied

Layer i computes (pre-norm)::

    n   = mod(input_layernorm(x))
    h   = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))
    m   = mod(post_attention_layernorm(h))
    out = h + down_proj(silu(gate_proj(m)) * up_proj(m))

where ``mod(y) = y * (1 + scale) + shift`` is the optional FlexMDM time modulation (identity when
none is given), exactly as in the native LLaDA. Attention is bidirectional (no causal mask).

**Logit alignment.** Dream keeps the autoregressive alignment of its Qwen2.5 initialisation: the
logits at position i predict the token at position i + 1 (Dream's sampler shifts them right by one
and reuses position 0's logits for position 0). This module returns the raw, unshifted logits, as
the official code does; ``DreamModel.logit_shift = 1`` declares the alignment, and the adapter
(``retrofit.adapter``, spec field ``backbone.logit_shift``) reads each position's prediction from
the right hidden state.

Numerics follow the official code: RMSNorm statistics in float32, RoPE tables computed in float32
then cast to the activation dtype (so bf16 rotates in bf16), SDPA attention; in float32 the logits
equal the official implementation's bit for bit (``tests/test_dream_parity.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from retrofit.models.modulation import check_modulation

from .configuration_dream import DreamConfig
from .modeling_llada import LLaDARMSNorm, _key_padding_mask, _modulate, apply_rotary

__all__ = [
    "DreamAttention",
    "DreamBaseModel",
    "DreamDecoderLayer",
    "DreamMLP",
    "DreamModel",
    "DreamOutput",
    "DreamPreTrainedModel",
    "dream_rope_tables",
]


@dataclass
class DreamOutput(ModelOutput):
    """Output of :class:`DreamModel`.

    Attributes:
        logits: ``(B, L, V)`` raw logits: position i predicts the token at i + 1 (see the module
            docstring); ``None`` when ``return_logits=False``.
        last_hidden_state: ``(B, L, d)`` final hidden states after ``model.norm``.
        hidden_states: ``num_hidden_layers + 1`` tensors ``(B, L, d)`` when requested: the input
            of each layer (entry 0 = token embeddings), then the post-``norm`` state.
    """

    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


def dream_rope_tables(
    position_ids: Tensor | None,
    seq_len: int,
    head_dim: int,
    theta: float,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """RoPE ``(cos, sin)`` for Dream, computed in float32 and cast to ``dtype``.

    Args:
        position_ids: ``(B, L)`` positions (e.g. from a left-padding mask), or ``None`` for
            ``0 .. seq_len - 1``.
        seq_len, head_dim, theta: sequence length, per-head width, RoPE base.
        dtype, device: the activation dtype (the official code casts the tables to it) and device.

    Returns:
        ``cos, sin``, each ``(L, head_dim)`` (no ``position_ids``) or ``(B, 1, L, head_dim)``.
        Frequencies ``theta ** (-2i / head_dim)``, repeated for both halves (Qwen2 layout).
    """
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (head_dim/2,)
    if position_ids is None:
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)[None, :]  # (1, L)
    else:
        positions = position_ids.to(device=device, dtype=torch.float32)  # (B, L)
    freqs = positions[:, :, None] * inv_freq[None, None, :]  # (B, L, head_dim/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (B, L, head_dim)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    if position_ids is None:
        return cos[0], sin[0]  # (L, head_dim)
    return cos[:, None], sin[:, None]  # (B, 1, L, head_dim)


class DreamAttention(nn.Module):
    """Bidirectional grouped-query self-attention with q/k/v biases, RoPE and SDPA."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attention_dropout = float(config.attention_dropout)
        width, kv_width = config.hidden_size, config.num_key_value_heads * config.head_dim
        self.q_proj = nn.Linear(width, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(width, kv_width, bias=True)
        self.v_proj = nn.Linear(width, kv_width, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, width, bias=False)

    def forward(
        self, normed: Tensor, rope_cos: Tensor, rope_sin: Tensor, attention_mask: Tensor | None
    ) -> Tensor:
        """``normed (B, L, d)``, RoPE tables from :func:`dream_rope_tables`, ``attention_mask``
        ``(B, 1, 1, L)`` bool (True = key may be attended) or ``None`` -> ``(B, L, d)``."""
        batch_size, seq_len, _ = normed.shape
        query = self.q_proj(normed).view(batch_size, seq_len, self.n_heads, self.head_dim)
        key = self.k_proj(normed).view(batch_size, seq_len, self.n_kv_heads, self.head_dim)
        value = self.v_proj(normed).view(batch_size, seq_len, self.n_kv_heads, self.head_dim)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, L, hd)
        # Rotation in the activation dtype, as the official code does.
        query = apply_rotary(query, rope_cos, rope_sin, full_precision=False)
        key = apply_rotary(key, rope_cos, rope_sin, full_precision=False)
        if self.n_kv_heads != self.n_heads:
            # Grouped-query attention: query head h reads key/value head h // group.
            group = self.n_heads // self.n_kv_heads
            key = key.repeat_interleave(group, dim=1)
            value = value.repeat_interleave(group, dim=1)
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=False,
        )  # (B, H, L, hd)
        attended = attended.transpose(1, 2).reshape(batch_size, seq_len, -1)
        return self.o_proj(attended)


class DreamMLP(nn.Module):
    """SwiGLU MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, no biases."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        width, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(width, inner, bias=False)
        self.up_proj = nn.Linear(width, inner, bias=False)
        self.down_proj = nn.Linear(inner, width, bias=False)

    def forward(self, normed: Tensor) -> Tensor:
        """``(B, L, d) -> (B, L, d)``."""
        return self.down_proj(F.silu(self.gate_proj(normed)) * self.up_proj(normed))


class DreamDecoderLayer(GradientCheckpointingLayer):
    """One Dream layer; see the module docstring for the maths.

    All tensor inputs are positional, so gradient checkpointing (reentrant or not) recomputes the
    layer with the same RoPE tables, attention mask and modulation and propagates their gradients.
    """

    def __init__(self, config: DreamConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(
        self,
        hidden_states: Tensor,
        rope_cos: Tensor,
        rope_sin: Tensor,
        attention_mask: Tensor | None = None,
        mod_scale: Tensor | None = None,
        mod_shift: Tensor | None = None,
    ) -> Tensor:
        """Apply the layer.

        Args:
            hidden_states: ``(B, L, d)``.
            rope_cos, rope_sin: tables from :func:`dream_rope_tables`.
            attention_mask: ``(B, 1, 1, L)`` bool, True = key may be attended; ``None`` = all keys.
            mod_scale, mod_shift: ``(B, d)`` modulation of both norm outputs, or ``None``.

        Returns:
            ``(B, L, d)``.
        """
        normed = _modulate(self.input_layernorm(hidden_states), mod_scale, mod_shift)
        hidden_states = hidden_states + self.self_attn(normed, rope_cos, rope_sin, attention_mask)
        normed = _modulate(self.post_attention_layernorm(hidden_states), mod_scale, mod_shift)
        return hidden_states + self.mlp(normed)


class DreamBaseModel(nn.Module):
    """The Dream trunk ``{embed_tokens, layers, norm}``, living at ``DreamModel.model`` so that
    parameter names carry the official ``model.`` prefix.

    ``embed_tokens`` has ``padding_idx = pad_token_id`` as in the official code: the pad (= EOS)
    embedding receives no gradient under full fine-tuning.
    """

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        pad = config.pad_token_id
        padding_idx = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx)
        self.layers = nn.ModuleList(
            DreamDecoderLayer(config, index) for index in range(config.num_hidden_layers)
        )
        self.norm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamPreTrainedModel(PreTrainedModel):
    """Shared transformers settings for the Dream classes."""

    config_class = DreamConfig
    config: DreamConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["DreamDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, ``initializer_range``) weights, zero biases and pad row, ones for norms."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not module.weight.is_meta:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, LLaDARMSNorm):
            init.ones_(module.weight)


class DreamModel(DreamPreTrainedModel):
    """Dream masked diffusion LM (``architectures: ["DreamModel"]``), optional FlexMDM modulation.

    Registered for ``AutoModel`` and ``AutoModelForMaskedLM`` (model_type ``"Dream"``) by
    ``import retrofit.models``; the registered class wins over the checkpoint's ``auto_map``.
    ``from_pretrained`` is strict: a missing, unexpected or mis-shaped tensor raises ``ValueError``
    naming it (pass ``strict=False`` to only warn).
    """

    # Position i's prediction is read from the logits at i - logit_shift (see the module docstring).
    logit_shift: ClassVar[int] = 1

    def __init__(self, config: DreamConfig) -> None:
        if not isinstance(config, DreamConfig):
            raise TypeError(f"DreamModel needs a DreamConfig, got {type(config).__name__}.")
        config.validate_dream()
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # --- embeddings access (used by transformers, PEFT and the adapter) ---
    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding ``model.embed_tokens``."""
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding."""
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        """The LM head ``lm_head`` (``d -> vocab_size``, no bias, untied)."""
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        """Replace the LM head."""
        self.lm_head = value

    @property
    def blocks(self) -> nn.ModuleList:
        """The ``num_hidden_layers`` :class:`DreamDecoderLayer` modules, in order."""
        return self.model.layers

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        modulation: Sequence[tuple[Tensor, Tensor] | None] | None = None,
        output_hidden_states: bool | None = False,
        return_logits: bool = True,
        return_dict: bool | None = True,
        position_ids: Tensor | None = None,
    ) -> DreamOutput | tuple[Tensor, ...]:
        """Run the backbone.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)`` key padding mask, bool or 0/1 (True/1 = real token), or
                ``None``. Padded positions are never attended to; their own outputs are finite but
                meaningless. An all-ones mask is equivalent to ``None``.
            modulation: ``None`` (plain Dream) or one ``(scale, shift)`` entry (each ``(B, d)``)
                or ``None`` per layer; layer i uses ``norm(x) * (1 + scale) + shift`` for the
                outputs of both ``input_layernorm`` and ``post_attention_layernorm``.
            output_hidden_states: also return the ``num_hidden_layers + 1`` hidden states.
            return_logits: compute the ``(B, L, V)`` logits; ``False`` skips the LM head.
            return_dict: return :class:`DreamOutput` (default) or a tuple of its non-None fields.
            position_ids: ``(B, L)`` RoPE positions (Dream's sampler derives them from a
                left-padding mask), or ``None`` for ``0 .. L-1``.

        Returns:
            ``DreamOutput(logits (B, L, V) | None, last_hidden_state (B, L, d),
            hidden_states | None)``; the logits are unshifted (position i predicts token i + 1).
        """
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}."
            )
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        if return_dict is None:
            return_dict = bool(self.config.return_dict)
        batch_size, seq_len = input_ids.shape
        if position_ids is not None and tuple(position_ids.shape) != (batch_size, seq_len):
            raise ValueError(
                f"position_ids must have shape (batch, seq_len) = {(batch_size, seq_len)}, got "
                f"{tuple(position_ids.shape)}."
            )
        modulation = self._check_modulation(modulation, batch_size)

        hidden_states = self.model.embed_tokens(input_ids)  # (B, L, d)
        rope_cos, rope_sin = dream_rope_tables(
            position_ids,
            seq_len,
            self.config.head_dim,
            float(self.config.rope_theta),
            hidden_states.dtype,
            hidden_states.device,
        )
        key_mask = _key_padding_mask(attention_mask, batch_size, seq_len)  # (B, 1, 1, L) | None

        all_hidden_states: list[Tensor] = []
        for index, layer in enumerate(self.model.layers):
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            entry = modulation[index] if modulation is not None else None
            scale, shift = entry if entry is not None else (None, None)
            # Positional arguments only: see DreamDecoderLayer (gradient checkpointing).
            hidden_states = layer(hidden_states, rope_cos, rope_sin, key_mask, scale, shift)

        last_hidden_state = self.model.norm(hidden_states)  # (B, L, d)
        if output_hidden_states:
            all_hidden_states.append(last_hidden_state)
        logits = self.lm_head(last_hidden_state) if return_logits else None  # (B, L, V)
        output = DreamOutput(
            logits=logits,
            last_hidden_state=last_hidden_state,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()

    def _check_modulation(
        self, modulation: Sequence[tuple[Tensor, Tensor] | None] | None, batch_size: int
    ) -> Sequence[tuple[Tensor, Tensor] | None] | None:
        """Validate the per-block ``(scale, shift)`` pairs (each ``(B, d)``); return them as is."""
        return check_modulation(modulation, n_layers=self.config.num_hidden_layers, width=self.config.hidden_size,
                                batch_size=batch_size, width_name="hidden_size", unit="layer")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Any,
        *model_args: Any,
        strict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """``PreTrainedModel.from_pretrained`` that fails on any checkpoint/model key mismatch.

        With ``strict=True`` (default) a missing, unexpected or mis-shaped tensor raises
        ``ValueError`` naming the keys (transformers would only warn and initialise them anew).
        ``output_loading_info=True`` still returns ``(model, info)``.
        """
        want_info = kwargs.pop("output_loading_info", False)
        if strict:
            # Let transformers report mis-shaped tensors (instead of raising without naming
            # them), so that the error below names every offending key.
            kwargs.setdefault("ignore_mismatched_sizes", True)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if strict:
            problems = []
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
                keys = sorted(str(key) for key in info.get(kind, ()) or ())
                if keys:
                    shown = ", ".join(keys[:10]) + (
                        f", ... ({len(keys)} in all)" if len(keys) > 10 else ""
                    )
                    problems.append(f"{kind.replace('_', ' ')}: {shown}")
            if problems:
                raise ValueError(
                    f"Checkpoint {pretrained_model_name_or_path!s} does not match {cls.__name__} "
                    f"exactly ({'; '.join(problems)}). Expected the official Dream key names "
                    "(model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight, ..., "
                    "lm_head.weight); pass strict=False to load anyway."
                )
        return (model, info) if want_info else model
