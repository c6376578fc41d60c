"""Native backbones registered with transformers' Auto classes.

Importing this package registers model_type ``"llada"`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForMaskedLM``, so official LLaDA checkpoints (whose ``config.json`` points
``auto_map`` at remote code) load with ``AutoModel.from_pretrained(path)``: no
``trust_remote_code``, no network.
"""

from __future__ import annotations

from types import MappingProxyType

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PreTrainedModel

from .configuration_llada import REQUIRED_CHECKPOINT_KEYS, LLaDAConfig, tiny_llada_config
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

__all__ = [
    "REQUIRED_CHECKPOINT_KEYS",
    "SUPPORTED_BACKBONES",
    "UNSUPPORTED_BACKBONES",
    "LLaDABlock",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAOutput",
    "LLaDAPreTrainedModel",
    "LLaDARMSNorm",
    "apply_rotary",
    "check_backbone_supported",
    "rotary_cos_sin",
    "tiny_llada_config",
]

# model_type -> native model class retrofit can adapt.
SUPPORTED_BACKBONES: MappingProxyType[str, type[PreTrainedModel]] = MappingProxyType(
    {"llada": LLaDAModelLM}
)

# model_type -> why it cannot be adapted yet (what a native implementation would need).
UNSUPPORTED_BACKBONES: MappingProxyType[str, str] = MappingProxyType(
    {
        "dream": "retrofit needs a native Dream implementation (Qwen2-style, logits read one "
        "position earlier, mask id 151666)",
    }
)

# exist_ok: re-importing (e.g. importlib.reload) re-registers the same classes.
AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig, exist_ok=True)
AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
AutoModelForMaskedLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)


def check_backbone_supported(model_type: str) -> type[PreTrainedModel]:
    """Return the native model class for ``model_type`` (a config's ``model_type``).

    Raises ``ValueError`` naming the supported backbones if retrofit cannot adapt it, e.g. for
    ``"dream"``: "backbone 'dream' is not supported yet: retrofit needs a native Dream
    implementation (...); supported: llada".
    """
    if model_type in SUPPORTED_BACKBONES:
        return SUPPORTED_BACKBONES[model_type]
    supported = ", ".join(sorted(SUPPORTED_BACKBONES))
    if model_type in UNSUPPORTED_BACKBONES:
        raise ValueError(
            f"backbone {model_type!r} is not supported yet: {UNSUPPORTED_BACKBONES[model_type]}; "
            f"supported: {supported}"
        )
    raise ValueError(
        f"backbone {model_type!r} is not supported: retrofit adapts bidirectional masked diffusion "
        f"LMs with a native implementation; supported: {supported}"
    )
