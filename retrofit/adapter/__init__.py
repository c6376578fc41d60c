"""Retrofit a pretrained masked diffusion LM into a FlexMDM (or its LoRA MDM baseline).

    from retrofit.adapter import FlexMDM
    model = FlexMDM.retrofit("GSAI-ML/LLaDA-8B-Base", "llada", dtype=torch.bfloat16)
    out = model(input_ids, lengths, t)          # out.logits (B, L, V), out.gaps (B, L+1)
    model.save_pretrained("runs/ckpt")          # peft adapter + new modules + retrofit_config.json
    model = FlexMDM.from_pretrained("runs/ckpt")
    model.merge_and_save("runs/merged")         # standalone export, loads without peft

``retrofit merge CHECKPOINT OUTPUT_DIR`` runs :func:`cli_main`.
"""

from .checkpoint import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS_FILE,
    CONFIG_FILE,
    NEW_MODULES_FILE,
    TOKENIZER_FILES,
    CheckpointFileError,
    atomic_directory,
)
from .model import (
    FlexMDM,
    FlexMDMOutput,
    cli_main,
    load_backbone,
)
from .modules import BlockModulation, InsertionHead, TimeEmbedding, sinusoidal_embedding
from .spec import (
    AdapterSpec,
    BackboneSpec,
    HeadSpec,
    LoraSpec,
    RetrofitConfig,
    SchedulesSpec,
    SpecialTokensSpec,
    TimeConditioningSpec,
    adapters_dir,
)

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_FILES",
    "ADAPTER_WEIGHTS_FILE",
    "CONFIG_FILE",
    "NEW_MODULES_FILE",
    "TOKENIZER_FILES",
    "AdapterSpec",
    "BackboneSpec",
    "BlockModulation",
    "CheckpointFileError",
    "FlexMDM",
    "FlexMDMOutput",
    "HeadSpec",
    "InsertionHead",
    "LoraSpec",
    "RetrofitConfig",
    "SchedulesSpec",
    "SpecialTokensSpec",
    "TimeConditioningSpec",
    "TimeEmbedding",
    "adapters_dir",
    "atomic_directory",
    "cli_main",
    "load_backbone",
    "sinusoidal_embedding",
]
