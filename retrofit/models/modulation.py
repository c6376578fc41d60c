"""The FlexMDM time modulation a backbone accepts: one optional ``(scale, shift)`` pair per block.

Every native backbone (LLaDA, Dream) applies ``normed * (1 + scale) + shift`` to the outputs of its
conditioned norms; this module owns the check of what the adapter passes in.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

Modulation = Sequence[tuple[Tensor, Tensor] | None]

__all__ = ["Modulation", "check_modulation"]


def check_modulation(
    modulation: Modulation | None, *, n_layers: int, width: int, batch_size: int, width_name: str,
    unit: str = "block",
) -> Modulation | None:
    """Validate per-block ``(scale, shift)`` pairs (each ``(B, width)``; None entries allowed) and
    return them as they are; ``width_name`` and ``unit`` name the width and the layers in errors
    (LLaDA: ``d_model`` per block, Dream: ``hidden_size`` per layer)."""
    if modulation is None:
        return None
    if len(modulation) != n_layers:
        raise ValueError(
            f"modulation must have one (scale, shift) entry per {unit} ({n_layers}), "
            f"got {len(modulation)}."
        )
    for index, entry in enumerate(modulation):
        if entry is None:
            continue
        if len(entry) != 2:
            raise ValueError(f"modulation[{index}] must be a (scale, shift) pair, got {len(entry)} items.")
        for name, tensor in zip(("scale", "shift"), entry):
            if not isinstance(tensor, Tensor) or tuple(tensor.shape) != (batch_size, width):
                shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                raise ValueError(
                    f"modulation[{index}] {name} must be a tensor of shape (batch, {width_name}) = "
                    f"{(batch_size, width)}, got {shape}."
                )
    return modulation
