"""The modules a retrofit adds to a backbone: time embedding, block modulation, insertion head.

All of them are created in float32 (master weights), cast their inputs to their own parameter
dtype and run with autocast disabled, so they compute in float32 while the backbone runs in bf16
(or under bf16 autocast). Under DeepSpeed's bf16 mode their weights are bf16 copies; the insertion
head's last layer and softplus then still run in float32.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device``'s type while it is on (else a no-op).

    Small modules that must not round to bf16 (time conditioning, the insertion head) run inside it.
    """
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type without autocast (e.g. meta)
        enabled = False
    return torch.autocast(device.type, enabled=False) if enabled else contextlib.nullcontext()


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of scalars (DiT/ADM convention: cosines then sines).

    Args:
        values: (B,) scalars (already scaled, e.g. ``1000 * t``).
        dim: embedding width; an odd width gets one zero column at the end.
        max_period: longest period of the sinusoids.

    Returns:
        (B, dim) float32 features.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=values.device) / half
    frequencies = torch.exp(-math.log(max_period) * exponent)  # (half,)
    angles = values.float()[:, None] * frequencies[None, :]  # (B, half)
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimeEmbedding(nn.Module):
    """t in [0, 1] -> sinusoid(time_scale * t) (dim ``embedding_dim``) -> Linear -> SiLU -> Linear.

    ``time_scale`` defaults to 1000 (the DiT convention): the research code embeds t itself, and
    with frequencies of at most 1 rad per unit time most sinusoid features are then nearly constant
    on [0, 1]. At the 8B shape (embedding_dim = d = 4096, ratio 4) this is 134,238,208 parameters.
    """

    def __init__(
        self,
        embedding_dim: int,
        model_dim: int,
        mlp_ratio: int = 4,
        max_period: float = 10000.0,
        time_scale: float = 1000.0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.max_period = max_period
        self.time_scale = time_scale
        hidden_dim = mlp_ratio * model_dim
        factory = {"device": device, "dtype": torch.float32}
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, hidden_dim, **factory),
            nn.SiLU(),
            nn.Linear(hidden_dim, model_dim, **factory),
        )

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) FlexMDM time -> (B, d) conditioning vector in the module's dtype."""
        features = sinusoidal_embedding(t * self.time_scale, self.embedding_dim, self.max_period)
        with autocast_disabled(features.device):
            return self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, d)


class BlockModulation(nn.Module):
    """One zero-initialised Linear(d, 2d) per group of consecutive blocks -> (scale, shift).

    ``n_layers`` blocks are split into ceil(n_layers / group_size) groups of ``group_size``
    consecutive blocks (the last group is smaller when group_size does not divide n_layers).
    The conditioning vector passes through SiLU first (DiT's adaLN-Zero convention; the time MLP
    ends with a Linear, so this is the only non-linearity between it and the modulation). Zero
    init makes every (scale, shift) exactly 0 at step 0, so the backbone's norms are untouched.
    """

    def __init__(
        self,
        model_dim: int,
        n_layers: int,
        group_size: int,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.n_layers = n_layers
        self.group_size = group_size
        num_groups = math.ceil(n_layers / group_size)
        self.layers = nn.ModuleList(
            nn.Linear(model_dim, 2 * model_dim, device=device, dtype=torch.float32)
            for _ in range(num_groups)
        )
        for layer in self.layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, conditioning: Tensor) -> list[tuple[Tensor, Tensor]]:
        """conditioning: (B, d) -> per-block list of (scale (B, d), shift (B, d)).

        Returned in the layers' dtype (float32 master weights); the backbone applies them in the
        promoted dtype and casts back to its own. Blocks of one group share the same tensors.
        """
        activated = F.silu(conditioning)
        per_group = []
        with autocast_disabled(conditioning.device):
            for layer in self.layers:
                scale, shift = layer(activated.to(layer.weight.dtype)).chunk(2, dim=-1)  # (B, d)
                per_group.append((scale, shift))
        return [per_group[block // self.group_size] for block in range(self.n_layers)]


class InsertionHead(nn.Module):
    """Expected gap per slot: LayerNorm -> Linear(d, d) -> GELU -> Linear(d, 1) -> softplus * scale.

    Initialisation: the last Linear has zero weight and bias softplus^-1(init_gap / scale), so
    every slot first predicts exactly ``init_gap`` (default 1 token) instead of the
    softplus(0) * 1024 ~ 710 tokens of a default-initialised head. Gradients still reach the
    last layer at step 0 (its input is non-zero) and the rest of the head from step 1.
    At the 8B shape this is 16,793,601 parameters.
    """

    def __init__(
        self,
        model_dim: int,
        scale: float = 1024.0,
        init_gap: float = 1.0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": torch.float32}
        self.scale = float(scale)
        self.norm = nn.LayerNorm(model_dim, **factory)
        self.proj = nn.Linear(model_dim, model_dim, **factory)
        self.act = nn.GELU()
        self.out = nn.Linear(model_dim, 1, **factory)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, inverse_softplus(init_gap / self.scale))

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (B, S, d) final hidden states -> (B, S) float32 expected gaps (>= 0).

        The last Linear (d -> 1) and the softplus always run in float32: near the initial bias
        softplus^-1(init_gap / scale) ~ -7, bf16 would resolve the raw value only to 1/32.
        """
        with autocast_disabled(hidden.device):
            features = self.act(self.proj(self.norm(hidden.to(self.proj.weight.dtype))))  # (B, S, d)
            weight, bias = self.out.weight.float(), self.out.bias.float()
            raw = F.linear(features.float(), weight, bias).squeeze(-1)  # (B, S)
            return F.softplus(raw) * self.scale


def inverse_softplus(value: float) -> float:
    """x with softplus(x) = value (value > 0), stable for small and large values."""
    if value <= 0:
        raise ValueError(f"inverse_softplus needs a positive value, got {value}")
    if value > 20:
        return value + math.log(-math.expm1(-value))
    return math.log(math.expm1(value))
