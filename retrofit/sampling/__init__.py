"""Samplers: the FlexMDM sampler (insert + unmask, infilling) and the MDM baseline (LLaDA generate).

- :func:`flexmdm_generate` (module :mod:`retrofit.sampling.flexmdm`, which documents the method)
  with its settings :class:`FlexMDMSamplingConfig`;
- :func:`mdm_generate` (:mod:`retrofit.sampling.mdm`) with :class:`MDMSamplingConfig`;
- the settings (:mod:`retrofit.sampling.config`): typed dataclasses validated once, built from an
  eval spec's ``generation.flexmdm`` / ``generation.mdm`` with ``from_dict`` (unknown keys and wrong
  types are one-line errors naming the key). Both samplers take ``config=`` and/or the same fields
  as keywords;
- vectorised building blocks (:mod:`retrofit.sampling.blocks`), results and traces
  (:mod:`retrofit.sampling.results`), model plumbing (:mod:`retrofit.sampling.plumbing`).

Model protocol: ``model(input_ids (B, L), lengths (B,), t (B,) | None, logits_positions=(B, L) bool)``
returning an object with ``.logits`` (``(N, V)`` rows for the True positions in row-major order, or
``(B, L, V)``) and ``.gaps`` (``(B, L + 1)``, FlexMDM only). A tuple ``(logits, gaps)`` or a bare
logits tensor is accepted too, and models whose forward has no ``logits_positions`` argument are
called without it.
"""

from __future__ import annotations

from .blocks import _step_probabilities, cap_insertions, insert_masks, num_transfer_tokens
from .config import (
    CONFIDENCE_NAMES,
    REMASKING_NAMES,
    ConfigError,
    FlexMDMSamplingConfig,
    MDMSamplingConfig,
)
from .flexmdm import flexmdm_generate
from .mdm import _mdm_trace, mdm_generate
from .plumbing import (  # private helpers, importable here as before
    TokenRows,
    _accepts_logits_positions,
    _as_rows,
    _batches,
    _call_model,
    _check_common,
    _config_value,
    _model_device,
    _progress_bar,
    _row_generator,
    _stream_ids,
)
from .results import (
    FlexMDMSamplingResult,
    MDMSamplingResult,
    SamplingTrace,
    TraceStep,
    plot_trace,
)

__all__ = [
    "CONFIDENCE_NAMES",
    "REMASKING_NAMES",
    "ConfigError",
    "FlexMDMSamplingConfig",
    "FlexMDMSamplingResult",
    "MDMSamplingConfig",
    "MDMSamplingResult",
    "SamplingTrace",
    "TokenRows",
    "TraceStep",
    "_accepts_logits_positions",
    "_as_rows",
    "_batches",
    "_call_model",
    "_check_common",
    "_config_value",
    "_mdm_trace",
    "_model_device",
    "_progress_bar",
    "_row_generator",
    "_step_probabilities",
    "_stream_ids",
    "cap_insertions",
    "flexmdm_generate",
    "insert_masks",
    "mdm_generate",
    "num_transfer_tokens",
    "plot_trace",
]
