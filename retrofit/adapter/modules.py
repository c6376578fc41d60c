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


class LengthPosteriorHead(InsertionHead):
    """Insertion head whose row total is a posterior mean over the final length
    (``head.length_posterior: true``; off = the paper's :class:`InsertionHead`).

    The paper's head predicts each slot's gap from that slot alone, so the row's total is a sum of
    ``l + 1`` per-slot predictions: every slot must infer the current length l and the time by
    itself, and small per-slot biases add up over the row. The quantity the total must learn,
    ``E[L - l | x_t]``, is a step function of (l, t) with jumps between the modes of the length
    distribution, which an MLP fits slowly. Under the FlexMDM forward process each answer token
    is present at time t independently with probability ``alpha(t)``, so with ``P`` context
    (protected) tokens and a prior ``q(L)`` over the final row length the posterior is

        log q(L | l, t) = prior_L + log C(L - P, l - P) + (L - l) log(1 - alpha(t)) + const,  L >= l

    and the row total is ``T = sum_L q(L | l, t) (L - l)``. This head learns the parts that depend
    on the data and keeps that structure::

        s_j, c_j = Linear(d, 2)(GELU(Linear(d, d)(LayerNorm(h_j))))   per position j
        pi_j     = softmax over the l + 1 slots of s_j                 how T is shared
        P        = sum_{j < l} sigmoid(c_j)                            context tokens (learned)
        prior_L  = Linear(d, max_length + 1)(GELU(Linear(d, d)(LayerNorm(mean_j h_j))))
        ghat_j   = T * pi_j

    so it can represent the Bayes-optimal count exactly for any length distribution (conditioned
    on the row's content through ``prior_L`` and ``P``). Initialisation: the slot scores and the
    prior's last Linear start at zero (uniform shares, uniform prior over ``[l, max_length]``);
    ``init_gap`` is not used. Measured in docs/demo.md.
    """

    def __init__(
        self,
        model_dim: int,
        scale: float = 1024.0,
        init_gap: float = 1.0,
        max_length: int = 1024,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(model_dim, scale=scale, init_gap=init_gap, device=device)
        factory = {"device": device, "dtype": torch.float32}
        self.max_length = int(max_length)
        self.out = nn.Linear(model_dim, 2, **factory)  # (slot score, context score) per position
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.prior_norm = nn.LayerNorm(model_dim, **factory)
        self.prior_proj = nn.Linear(model_dim, model_dim, **factory)
        self.prior_out = nn.Linear(model_dim, self.max_length + 1, **factory)
        nn.init.zeros_(self.prior_out.weight)
        nn.init.zeros_(self.prior_out.bias)

    def forward(  # type: ignore[override]
        self, hidden: Tensor, lengths: Tensor | None = None, alpha: Tensor | None = None
    ) -> Tensor:
        """hidden (B, S, d) final hidden states, lengths (B,) = l (positions 0..l are the slots),
        alpha (B,) = alpha(t) -> (B, S) float32 expected gaps (>= 0, zero beyond position l)."""
        if lengths is None or alpha is None:
            raise ValueError("a length-posterior insertion head needs the row lengths and alpha(t)")
        _, width, _ = hidden.shape
        with autocast_disabled(hidden.device):
            states = hidden.to(self.proj.weight.dtype)  # (B, S, d)
            lengths = lengths.to(hidden.device, torch.long)
            positions = torch.arange(width, device=hidden.device)
            slots = positions[None, :] <= lengths[:, None]  # (B, S) positions 0..l
            tokens = positions[None, :] < lengths[:, None]  # (B, S) positions 0..l-1
            features = self.act(self.proj(self.norm(states)))  # (B, S, d)
            scores = F.linear(features.float(), self.out.weight.float(), self.out.bias.float())
            shares = torch.softmax(scores[..., 0].masked_fill(~slots, float("-inf")), dim=-1)
            context = (torch.sigmoid(scores[..., 1]) * tokens).sum(dim=-1)  # (B,) P
            weights = slots.to(states.dtype)[..., None]  # (B, S, 1)
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1)  # (B, d)
            prior = self.prior_out(self.act(self.prior_proj(self.prior_norm(pooled)))).float()
            total = posterior_missing(prior, lengths, context, alpha.to(hidden.device))  # (B,)
            return total[:, None] * shares  # (B, S)


def posterior_missing(prior: Tensor, lengths: Tensor, context: Tensor, alpha: Tensor) -> Tensor:
    """``sum_L q(L | l, t) (L - l)`` for prior logits over the final length (B, M + 1), current
    lengths l (B,), context counts P (B,, real, <= l) and alpha(t) (B,); returns (B,) float32.

    ``q(L | l, t)`` is proportional to ``exp(prior_L) C(L - P, l - P) (1 - alpha)^(L - l)`` for
    L >= l and zero below (see :class:`LengthPosteriorHead`); binomials of real arguments use
    lgamma. Lengths beyond M get no mass, so a row at l = M expects nothing more.
    """
    support = torch.arange(prior.shape[1], device=prior.device, dtype=torch.float32)[None, :]
    current = lengths.float()[:, None]  # (B, 1)
    missing = (support - current).clamp_min(0.0)  # (B, M + 1)
    answer_now = (current - context.float()[:, None]).clamp_min(0.0)  # (B, 1) l - P
    log_choose = (
        torch.lgamma(answer_now + missing + 1.0)
        - torch.lgamma(answer_now + 1.0)
        - torch.lgamma(missing + 1.0)
    )  # log C(L - P, l - P) with L - P = (l - P) + (L - l)
    absent = torch.log1p(-alpha.float().clamp(0.0, 1.0 - 1e-6))[:, None]  # (B, 1) log(1 - alpha)
    logits = prior + log_choose + missing * absent  # (B, M + 1)
    logits = logits.masked_fill(support < current, float("-inf"))
    posterior = torch.softmax(logits, dim=-1)
    return (posterior * missing).sum(dim=-1)


def inverse_softplus(value: float) -> float:
    """x with softplus(x) = value (value > 0), stable for small and large values."""
    if value <= 0:
        raise ValueError(f"inverse_softplus needs a positive value, got {value}")
    if value > 20:
        return value + math.log(-math.expm1(-value))
    return math.log(math.expm1(value))
