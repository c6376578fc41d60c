"""Native backbones registered with transformers' Auto classes.

Importing this package registers model_types ``"llada"`` and ``"Dream"`` with ``AutoConfig``,
``AutoModel`` and ``AutoModelForMaskedLM`` (and Dream's tokenizer with ``AutoTokenizer``), so
official LLaDA and Dream checkpoints (whose ``config.json`` points ``auto_map`` at remote code)
load with ``AutoModel.from_pretrained(path)``: no ``trust_remote_code``, no network.
:func:`build_tiny_backbone` builds a small random model of either family (tests, CPU recipes).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
)

from .configuration_dream import DREAM_REQUIRED_CHECKPOINT_KEYS, DreamConfig, tiny_dream_config
from .configuration_llada import REQUIRED_CHECKPOINT_KEYS, LLaDAConfig, tiny_llada_config
from .modeling_dream import DreamDecoderLayer, DreamModel, DreamOutput, dream_rope_tables
from .modeling_llada import (
    LLaDABlock,
    LLaDAModel,
    LLaDAModelLM,
    LLaDAOutput,
    LLaDAPreTrainedModel,
    LLaDARMSNorm,
    apply_rotary,
    rotary_cos_sin,
)
from .tokenization_dream import DreamTokenizer

__all__ = [
    "DREAM_REQUIRED_CHECKPOINT_KEYS",
    "REQUIRED_CHECKPOINT_KEYS",
    "SUPPORTED_BACKBONES",
    "UNSUPPORTED_BACKBONES",
    "DreamConfig",
    "DreamDecoderLayer",
    "DreamModel",
    "DreamOutput",
    "DreamTokenizer",
    "LLaDABlock",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAOutput",
    "LLaDAPreTrainedModel",
    "LLaDARMSNorm",
    "apply_rotary",
    "build_tiny_backbone",
    "check_backbone_supported",
    "dream_rope_tables",
    "rotary_cos_sin",
    "tiny_dream_config",
    "tiny_llada_config",
]

# model_type -> native model class retrofit can adapt (in the order error messages list them).
SUPPORTED_BACKBONES: MappingProxyType[str, type[PreTrainedModel]] = MappingProxyType(
    {"llada": LLaDAModelLM, "Dream": DreamModel}
)

# model_type -> why it cannot be adapted (a hint for near misses; model types are case-sensitive).
UNSUPPORTED_BACKBONES: MappingProxyType[str, str] = MappingProxyType(
    {
        "dream": "model types are case-sensitive: Dream checkpoints (mask id 151666) declare "
        "model_type 'Dream'; write backbone.model_type: Dream (as adapters/dream.yaml does)",
    }
)

# model_type -> the config builder of its tiny test model (see build_tiny_backbone).
_TINY_CONFIGS: MappingProxyType[str, Any] = MappingProxyType(
    {"llada": tiny_llada_config, "Dream": tiny_dream_config}
)

# exist_ok: re-importing (e.g. importlib.reload) re-registers the same classes.
for _config_class, _model_class in ((LLaDAConfig, LLaDAModelLM), (DreamConfig, DreamModel)):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    AutoModelForMaskedLM.register(_config_class, _model_class, exist_ok=True)
# Dream's tokenizer_config.json names DreamTokenizer (remote code): the local class wins.
AutoTokenizer.register(DreamConfig, tokenizer_class=DreamTokenizer, exist_ok=True)


def check_backbone_supported(model_type: str) -> type[PreTrainedModel]:
    """Return the native model class for ``model_type`` (a config's ``model_type``).

    Raises ``ValueError`` naming the supported backbones if retrofit cannot adapt it, e.g. for
    ``"bert"``: "backbone 'bert' is not supported: ...; supported: llada, Dream".
    """
    if model_type in SUPPORTED_BACKBONES:
        return SUPPORTED_BACKBONES[model_type]
    supported = ", ".join(SUPPORTED_BACKBONES)
    if model_type in UNSUPPORTED_BACKBONES:
        raise ValueError(
            f"backbone {model_type!r} is not supported: {UNSUPPORTED_BACKBONES[model_type]}; "
            f"supported: {supported}"
        )
    raise ValueError(
        f"backbone {model_type!r} is not supported: retrofit adapts bidirectional masked diffusion "
        f"LMs with a native implementation; supported: {supported}"
    )


def build_tiny_backbone(model_type: str, **overrides: Any) -> PreTrainedModel:
    """A small random backbone of the family ``model_type`` (``"llada"`` or ``"Dream"``).

    ``overrides`` replace fields of the family's tiny config (:func:`tiny_llada_config`,
    :func:`tiny_dream_config`; their field names differ: ``d_model`` / ``hidden_size``). Shared
    names: ``vocab_size``, ``mask_token_id``, ``pad_token_id``, ``eos_token_id``.
    """
    model_class = check_backbone_supported(model_type)
    return model_class(_TINY_CONFIGS[model_type](**overrides))
