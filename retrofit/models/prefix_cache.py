"""A prefix key/value cache for bidirectional backbones (inference only).

A sampler whose rows keep a fixed prefix (the prompt of a FlexMDM answer, whose positions never
move when answer tokens are inserted after it) can compute that prefix's per-block keys and values
once and reuse them while the rest of the row changes. In a bidirectional model this is an
approximation (the prefix attends to the rest of the row, and a time-conditioned model modulates
the prefix with t too), so the caller chooses when to record again. A backbone supports it by
taking ``prefix_cache=`` in its forward and calling :meth:`PrefixCache.update` in every block
(see :mod:`retrofit.models.modeling_llada`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PrefixCache"]


class PrefixCache:
    """Keys and values of the first ``length`` positions of every row, one pair per block, each
    ``(B, n_kv_heads, length, head_dim)`` after RoPE (see the module docstring).

    Empty when made; :meth:`LLaDAModelLM.forward` records it (``recorded`` becomes True) and later
    forwards reuse it. :meth:`select` keeps some rows (a batch whose rows finish).
    """

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"a prefix cache needs length >= 1, got {length}")
        self.length = length
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.recorded = False

    def select(self, rows: Tensor) -> PrefixCache:
        """A recorded cache of the given rows (``rows``: (B',) long indices into this cache's)."""
        if not self.recorded:
            raise ValueError("select() needs a recorded PrefixCache: run a forward with it first")
        chosen = PrefixCache(self.length)
        chosen.keys = [key[rows] for key in self.keys]
        chosen.values = [value[rows] for value in self.values]
        chosen.recorded = True
        return chosen

    def update(self, layer_idx: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Block ``layer_idx``'s keys/values ``(B, H_kv, L, hd)``: recorded ones prepended when
        reusing, else the first ``length`` positions recorded and ``key, value`` returned as is."""
        if self.recorded:
            return (torch.cat((self.keys[layer_idx], key), dim=2),
                    torch.cat((self.values[layer_idx], value), dim=2))
        self.keys.append(key[:, :, : self.length])
        self.values.append(value[:, :, : self.length])
        return key, value
