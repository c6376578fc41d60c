"""How samplers and estimators call a model: the protocol every retrofit model implements.

``model(input_ids (B, L), lengths (B,), t (B,) | None, logits_positions=(B, L) bool)`` returns an
object with ``.logits`` (``(N, V)`` rows for the True positions in row-major order, or ``(B, L, V)``)
and ``.gaps`` (``(B, L + 1)``, FlexMDM only); a tuple ``(logits, gaps)`` or a bare logits tensor is
accepted too, and a model whose forward has no ``logits_positions`` argument is called without it.
Torch only: the samplers (``retrofit.sampling``) and the likelihood estimators
(``retrofit.likelihood``) share it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["accepts_keyword", "call_model", "model_device"]


def accepts_keyword(model: Callable[..., Any], name: str = "logits_positions") -> bool:
    """Whether ``model``'s forward takes the keyword argument ``name`` (or ``**kwargs``)."""
    target = model.forward if isinstance(model, nn.Module) else model
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def call_model(
    model: Callable[..., Any],
    input_ids: Tensor,
    lengths: Tensor,
    t: Tensor | None,
    positions: Tensor,
    pass_positions: bool | None = None,
    prefix_cache: Any = None,
) -> tuple[Tensor, Tensor | None]:
    """Run one forward pass; returns ``(logits (N, V) at the True ``positions``, gaps or None)``.

    input_ids, positions: (B, L); lengths: (B,); t: (B,) or None; pass_positions: whether the
    model takes ``logits_positions`` (default: inspect it); prefix_cache: passed on as
    ``prefix_cache=`` when given (a :class:`retrofit.models.prefix_cache.PrefixCache`).
    """
    if pass_positions is None:
        pass_positions = accepts_keyword(model)
    extra = {} if prefix_cache is None else {"prefix_cache": prefix_cache}
    if pass_positions:
        output = model(input_ids, lengths, t, logits_positions=positions, **extra)
    else:
        output = model(input_ids, lengths, t, **extra)
    if isinstance(output, Tensor):
        logits, gaps = output, None
    elif isinstance(output, tuple):
        logits, gaps = output[0], (output[1] if len(output) > 1 else None)
    else:
        logits, gaps = output.logits, getattr(output, "gaps", None)
    if logits.dim() == 3:  # (B, L, V): the model ignored logits_positions
        logits = logits[positions.to(logits.device)]
    return logits, gaps


def model_device(model: Any, device: torch.device | str | None) -> torch.device:
    """The device to run on: explicit, else the model's first parameter or buffer, else CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        for tensor in list(model.parameters()) + list(model.buffers()):
            return tensor.device
    return torch.device("cpu")
