"""Native LLaDA (bidirectional masked-diffusion transformer) for transformers, without remote code.

Module names reproduce the official checkpoint layout exactly, so the 291 tensors of LLaDA-8B load
strictly::

    model.transformer.wte.weight                                   (embedding_size, d)
    model.transformer.blocks.{i}.attn_norm.weight                  (d,)
    model.transformer.blocks.{i}.q_proj.weight                     (d, d)
    model.transformer.blocks.{i}.{k_proj,v_proj}.weight            (n_kv_heads * head_dim, d)
    model.transformer.blocks.{i}.attn_out.weight                   (d, d)
    model.transformer.blocks.{i}.ff_norm.weight                    (d,)
    model.transformer.blocks.{i}.{ff_proj,up_proj}.weight          (mlp_hidden_size, d)
    model.transformer.blocks.{i}.ff_out.weight                     (d, mlp_hidden_size)
    model.transformer.ln_f.weight                                  (d,)
    model.transformer.ff_out.weight                                (embedding_size, d) LM head

Block i computes (pre-norm, no biases)::

    n   = mod(attn_norm(x))
    h   = x + attn_out(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))
    m   = mod(ff_norm(h))
    out = h + ff_out(silu(ff_proj(m)) * up_proj(m))

where ``mod(y) = y * (1 + scale) + shift`` is the optional per-block FlexMDM time modulation
(identity when no modulation is given). Attention is bidirectional (no causal mask).

**Prefix key/value reuse** (optional, inference only; :class:`retrofit.models.prefix_cache.PrefixCache`). A forward given an
empty ``PrefixCache(length=P)`` runs as usual and records every block's keys and values (after
RoPE) of positions ``0 .. P-1``. A later forward given the recorded cache takes only the positions
from P on (``input_ids (B, L - P)``, RoPE positions P..), and their queries attend to the recorded
prefix keys/values plus their own. In a bidirectional model this is approximate: the prefix's
states were computed when the rest of the row (and, with modulation, the time) was what it was at
recording, so callers decide when to re-record. Without a cache nothing changes.
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

from .configuration_llada import LLaDAConfig
from .prefix_cache import PrefixCache

__all__ = [
    "LLaDABlock",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAOutput",
    "LLaDAPreTrainedModel",
    "LLaDARMSNorm",
    "apply_rotary",
    "rotary_cos_sin",
]


@dataclass
class LLaDAOutput(ModelOutput):
    """Output of :class:`LLaDAModelLM`.

    Attributes:
        logits: ``(B, L, V)`` unshifted token logits (position j predicts token j), ``V =
            embedding_size``; ``None`` when ``return_logits=False``.
        last_hidden_state: ``(B, L, d)`` final hidden states after ``ln_f`` (the LM head's input).
        hidden_states: ``n_layers + 1`` tensors ``(B, L, d)`` when requested: the input of each
            block (entry 0 = token embeddings), then the post-``ln_f`` state.
    """

    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


class LLaDARMSNorm(nn.Module):
    """RMSNorm as in LLaDA: normalise in float32, cast back to the input dtype, scale by weight."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, hidden_states: Tensor) -> Tensor:
        """``(..., d) -> (..., d)``."""
        input_dtype = hidden_states.dtype
        # Statistics in at least float32 (float64 stays float64). No op here is one that autocast
        # runs in lower precision, so this also holds inside a bf16 autocast region.
        compute_dtype = torch.promote_types(input_dtype, torch.float32)
        upcast = hidden_states.to(compute_dtype)
        variance = upcast.pow(2).mean(-1, keepdim=True)  # (..., 1)
        normed = (upcast * torch.rsqrt(variance + self.eps)).to(input_dtype)
        return self.weight * normed


def rotary_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """RoPE tables for positions ``0 .. seq_len-1``: ``(cos, sin)``, each ``(L, head_dim)`` float32.

    Frequencies ``theta ** (-2i / head_dim)`` for ``i < head_dim / 2``, repeated for both halves
    (Llama / LLaDA half-split layout). Computed fresh in float32 on every call, so the tables are
    never stored in the state dict, never cast to bf16 with the weights and never left on the meta
    device; the cost (``seq_len * head_dim`` sin/cos) is negligible next to one block.
    """
    # Elementwise float32 ops only, so autocast leaves the precision alone.
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (head_dim/2,)
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)  # (L,)
    freqs = positions[:, None] * inv_freq[None, :]  # (L, head_dim/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (L, head_dim)
    return angles.cos(), angles.sin()


def _rotate_half(x: Tensor) -> Tensor:
    """``(..., D) -> (..., D)``: ``[x1, x2] -> [-x2, x1]`` (halves of the last dim)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, full_precision: bool = True) -> Tensor:
    """Rotate queries or keys ``x (B, H, L, D)`` by ``cos, sin (L, D)``; returns ``x``'s dtype.

    With ``full_precision`` (LLaDA's ``rope_full_precision``) the rotation runs in at least
    float32, otherwise in ``x``'s dtype.
    """
    out_dtype = x.dtype
    compute_dtype = torch.promote_types(out_dtype, torch.float32) if full_precision else out_dtype
    x = x.to(compute_dtype)
    cos, sin = cos.to(compute_dtype), sin.to(compute_dtype)
    return (x * cos + _rotate_half(x) * sin).to(out_dtype)


def _modulate(normed: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
    """FlexMDM modulation ``normed * (1 + scale) + shift``: ``normed (B, L, d)``, ``scale (B, d)``.

    Computed in at least float32 and returned in ``normed``'s dtype, so a small scale still acts on
    a bf16 backbone (in bf16, ``1 + scale`` is exactly 1 for |scale| < 2^-8). Zero scale and shift
    return ``normed`` bit-exactly.
    """
    if scale is None:
        return normed
    compute = torch.promote_types(normed.dtype, torch.float32)
    modulated = normed.to(compute) * (1 + scale[:, None, :].to(compute)) + shift[:, None, :].to(
        compute
    )
    return modulated.to(normed.dtype)


class LLaDABlock(GradientCheckpointingLayer):
    """One LLaDA ("llama" block type) transformer block; see the module docstring for the maths.

    All tensor inputs are positional, so gradient checkpointing (reentrant or not) recomputes the
    block with the same RoPE tables, attention mask and modulation and propagates their gradients.
    """

    def __init__(self, config: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.d_model // config.n_heads
        self.rope_full_precision = bool(config.rope_full_precision)
        self.attention_dropout = float(config.attention_dropout)
        d_model, kv_width = config.d_model, config.n_kv_heads * self.head_dim

        self.attn_norm = LLaDARMSNorm(d_model, config.rms_norm_eps)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, kv_width, bias=False)
        self.v_proj = nn.Linear(d_model, kv_width, bias=False)
        self.attn_out = nn.Linear(d_model, d_model, bias=False)
        self.ff_norm = LLaDARMSNorm(d_model, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d_model, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d_model, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d_model, bias=False)
        self.dropout = nn.Dropout(config.residual_dropout)

    def forward(
        self,
        hidden_states: Tensor,
        rope_cos: Tensor,
        rope_sin: Tensor,
        attention_mask: Tensor | None = None,
        mod_scale: Tensor | None = None,
        mod_shift: Tensor | None = None,
        prefix_cache: PrefixCache | None = None,
    ) -> Tensor:
        """Apply the block.

        Args:
            hidden_states: ``(B, L, d)``.
            rope_cos, rope_sin: ``(L, head_dim)`` float32 tables from :func:`rotary_cos_sin`.
            attention_mask: ``(B, 1, 1, K)`` bool, True = key may be attended; ``None`` = all keys
                (K = L, or P + L when reusing a prefix cache of P positions).
            mod_scale, mod_shift: ``(B, d)`` modulation of both norm outputs, or ``None``.
            prefix_cache: record (empty) or reuse (recorded) prefix keys/values, or ``None``.

        Returns:
            ``(B, L, d)``.
        """
        batch_size, seq_len, d_model = hidden_states.shape

        # --- attention ---
        normed = _modulate(self.attn_norm(hidden_states), mod_scale, mod_shift)  # (B, L, d)
        query = self.q_proj(normed).view(batch_size, seq_len, self.n_heads, self.head_dim)
        key = self.k_proj(normed).view(batch_size, seq_len, self.n_kv_heads, self.head_dim)
        value = self.v_proj(normed).view(batch_size, seq_len, self.n_kv_heads, self.head_dim)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, L, hd)
        query = apply_rotary(query, rope_cos, rope_sin, self.rope_full_precision)
        key = apply_rotary(key, rope_cos, rope_sin, self.rope_full_precision)
        if prefix_cache is not None:
            key, value = prefix_cache.update(self.layer_idx, key, value)  # (B, H_kv, K, hd)
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
        attended = attended.transpose(1, 2).reshape(batch_size, seq_len, d_model)
        hidden_states = hidden_states + self.dropout(self.attn_out(attended))

        # --- SwiGLU MLP ---
        normed = _modulate(self.ff_norm(hidden_states), mod_scale, mod_shift)  # (B, L, d)
        gated = F.silu(self.ff_proj(normed)) * self.up_proj(normed)  # (B, L, mlp_hidden_size)
        return hidden_states + self.dropout(self.ff_out(gated))


class LLaDAModel(nn.Module):
    """The LLaDA trunk: ``transformer = {wte, blocks, ln_f, ff_out}`` as in official checkpoints.

    A plain module (not a ``PreTrainedModel``) living at ``LLaDAModelLM.model``, so that parameter
    names carry the official ``model.transformer.`` prefix.
    """

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.embedding_size, config.d_model),
                "emb_drop": nn.Dropout(config.embedding_dropout),
                "blocks": nn.ModuleList(
                    LLaDABlock(config, index) for index in range(config.n_layers)
                ),
                "ln_f": LLaDARMSNorm(config.d_model, config.rms_norm_eps),
                "ff_out": nn.Linear(config.d_model, config.embedding_size, bias=False),
            }
        )


def _key_padding_mask(
    attention_mask: Tensor | None, batch_size: int, seq_len: int
) -> Tensor | None:
    """Turn a ``(B, L)`` key padding mask (bool, or 0/1 numbers; 1 = real token) into SDPA form.

    Returns ``None`` when every position is real (lets SDPA use its mask-free kernels), else a
    ``(B, 1, 1, L)`` bool mask. Rows with no real token at all attend to every position instead, so
    fully padded rows produce finite (meaningless) outputs rather than NaN.
    """
    if attention_mask is None:
        return None
    if attention_mask.shape != (batch_size, seq_len):
        raise ValueError(
            f"attention_mask must have shape (batch, seq_len) = {(batch_size, seq_len)}, got "
            f"{tuple(attention_mask.shape)}; pass a key padding mask (True/1 = real token)."
        )
    if attention_mask.dtype == torch.bool:
        keep = attention_mask
        valid, all_kept = True, bool(keep.all())
    else:
        keep = attention_mask != 0
        is_binary = ((attention_mask == 0) | (attention_mask == 1)).all()
        valid, all_kept = torch.stack((is_binary, keep.all())).tolist()
    if not valid:
        raise ValueError(
            "attention_mask must hold only 0/1 (or bool) values, 1 = attend; got other values "
            "(an additive -inf mask?). Pass the (B, L) padding mask instead."
        )
    if all_kept:
        return None
    keep = keep | ~keep.any(dim=-1, keepdim=True)  # fully padded rows: attend everywhere
    return keep[:, None, None, :]


class LLaDAPreTrainedModel(PreTrainedModel):
    """Shared transformers settings for the LLaDA classes."""

    config_class = LLaDAConfig
    config: LLaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["LLaDABlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, ``init_std``) for linear and embedding weights, ones for norm weights."""
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LLaDARMSNorm):
            init.ones_(module.weight)


class LLaDAModelLM(LLaDAPreTrainedModel):
    """LLaDA masked diffusion LM (``architectures: ["LLaDAModelLM"]``), optional FlexMDM modulation.

    Registered for ``AutoModel`` and ``AutoModelForMaskedLM`` (model_type ``"llada"``) by
    ``import retrofit.models``. ``from_pretrained`` is strict: any missing, unexpected or
    mis-shaped checkpoint tensor raises ``ValueError`` (pass ``strict=False`` to only warn).
    """

    def __init__(self, config: LLaDAConfig) -> None:
        if not isinstance(config, LLaDAConfig):
            raise TypeError(f"LLaDAModelLM needs an LLaDAConfig, got {type(config).__name__}.")
        config.validate_llada()
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    # --- embeddings access (used by transformers, PEFT and the adapter) ---
    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding ``model.transformer.wte``."""
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding."""
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        """The LM head ``model.transformer.ff_out`` (``d -> embedding_size``, no bias, untied)."""
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value: nn.Linear) -> None:
        """Replace the LM head."""
        self.model.transformer.ff_out = value

    @property
    def blocks(self) -> nn.ModuleList:
        """The ``n_layers`` :class:`LLaDABlock` modules, in order."""
        return self.model.transformer.blocks

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        modulation: Sequence[tuple[Tensor, Tensor] | None] | None = None,
        output_hidden_states: bool | None = False,
        return_logits: bool = True,
        return_dict: bool | None = True,
        prefix_cache: PrefixCache | None = None,
    ) -> LLaDAOutput | tuple[Tensor, ...]:
        """Run the backbone.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)`` key padding mask, bool or 0/1 (True/1 = real token), or
                ``None``. Padded positions are never attended to; their own outputs are finite but
                meaningless. An all-ones mask is equivalent to ``None``.
            modulation: ``None`` (plain LLaDA) or one entry per block; entry i is
                ``(scale, shift)``, each ``(B, d)``, and block i uses
                ``norm(x) * (1 + scale) + shift`` for the outputs of
                both ``attn_norm`` and ``ff_norm``. An entry may be ``None`` (block unmodulated).
            output_hidden_states: also return the ``n_layers + 1`` hidden states (``None`` = the
                config's ``output_hidden_states``).
            return_logits: compute the ``(B, L, V)`` logits; ``False`` skips the LM head (the caller
                can apply ``get_output_embeddings()`` to selected rows of ``last_hidden_state``).
            return_dict: return :class:`LLaDAOutput` (default) or a tuple of its non-None fields.
            prefix_cache: ``None`` (default), an empty :class:`PrefixCache` to record (the full
                rows run as usual), or a recorded one to reuse: then ``input_ids`` and
                ``attention_mask`` hold only the positions after the cached prefix, and the outputs
                cover those positions (see the module docstring).

        Returns:
            ``LLaDAOutput(logits (B, L, V) | None, last_hidden_state (B, L, d),
            hidden_states | None)``.
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
        transformer = self.model.transformer
        blocks = transformer.blocks
        modulation = self._check_modulation(modulation, batch_size)

        hidden_states = transformer.emb_drop(transformer.wte(input_ids))  # (B, L, d)
        rope_cos, rope_sin, key_mask = self._positions_and_keys(
            attention_mask, batch_size, seq_len, prefix_cache, hidden_states.device
        )  # (L, head_dim) each, (B, 1, 1, K) | None

        all_hidden_states: list[Tensor] = []
        for index, block in enumerate(blocks):
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            entry = modulation[index] if modulation is not None else None
            scale, shift = entry if entry is not None else (None, None)
            # Positional arguments only: see LLaDABlock (gradient checkpointing).
            hidden_states = block(
                hidden_states, rope_cos, rope_sin, key_mask, scale, shift, prefix_cache
            )
        if prefix_cache is not None:
            prefix_cache.recorded = True

        last_hidden_state = transformer.ln_f(hidden_states)  # (B, L, d)
        if output_hidden_states:
            all_hidden_states.append(last_hidden_state)
        logits = transformer.ff_out(last_hidden_state) if return_logits else None  # (B, L, V)

        output = LLaDAOutput(
            logits=logits,
            last_hidden_state=last_hidden_state,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()

    def _positions_and_keys(
        self, attention_mask: Tensor | None, batch_size: int, seq_len: int,
        prefix_cache: PrefixCache | None, device: torch.device,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """RoPE tables ``(L, head_dim)`` of the positions computed (P.. when reusing a prefix cache
        of P positions) and the SDPA key mask ``(B, 1, 1, K)`` or None (K = P + L when reusing)."""
        offset = prefix_cache.length if prefix_cache is not None and prefix_cache.recorded else 0
        if prefix_cache is not None and not prefix_cache.recorded and seq_len < prefix_cache.length:
            raise ValueError(f"cannot record a prefix of {prefix_cache.length} positions from "
                             f"{seq_len}: make the PrefixCache shorter")
        rope_cos, rope_sin = rotary_cos_sin(
            offset + seq_len, self.config.head_dim, float(self.config.rope_theta), device
        )  # (P + L, head_dim) each
        key_mask = _key_padding_mask(attention_mask, batch_size, seq_len)  # (B, 1, 1, L) | None
        if key_mask is not None and offset:
            # The cached prefix is real in every row: always attended.
            key_mask = torch.cat((key_mask.new_ones((batch_size, 1, 1, offset)), key_mask), dim=-1)
        return rope_cos[offset:], rope_sin[offset:], key_mask

    def _check_modulation(
        self, modulation: Sequence[tuple[Tensor, Tensor] | None] | None, batch_size: int
    ) -> Sequence[tuple[Tensor, Tensor] | None] | None:
        """Validate the per-block ``(scale, shift)`` pairs (each ``(B, d)``); return them as is."""
        return check_modulation(modulation, n_layers=self.config.n_layers, width=self.config.d_model,
                                batch_size=batch_size, width_name="d_model")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Any,
        *model_args: Any,
        strict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """``PreTrainedModel.from_pretrained`` that fails on any checkpoint/model key mismatch.

        transformers only warns about missing or unexpected tensors (newly initialised weights
        would silently replace them); for a backbone that is always a bug (renamed keys, wrong
        architecture), so with ``strict=True`` (default) it raises ``ValueError`` naming the keys.
        ``output_loading_info=True`` still returns ``(model, info)``.
        """
        want_info = kwargs.pop("output_loading_info", False)
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
                    f"exactly ({'; '.join(problems)}). Expected the official LLaDA key names "
                    "(model.transformer.wte.weight, "
                    "model.transformer.blocks.{i}.q_proj.weight, ...); "
                    "pass strict=False to load anyway."
                )
        return (model, info) if want_info else model
