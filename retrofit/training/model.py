"""The tokenizer and the model of a run: a backbone retrofitted from an adapter spec (or a saved
retrofit checkpoint to continue from), trainable weights in fp32."""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from retrofit.checkpoint_names import TINY_BASE_DIR
from retrofit.config import TINY_RANDOM, ConfigError, TrainConfig

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from retrofit.adapter import FlexMDM

__all__ = ["ADAPTER_SECTIONS", "adapter_override_keys", "build_model", "build_tokenizer"]

# Sections of an adapter spec whose nested recipe overrides are applied field by field.
ADAPTER_SECTIONS = ("backbone", "time_conditioning", "head", "lora", "special_tokens", "schedules")


def build_tokenizer(cfg: TrainConfig) -> PreTrainedTokenizerBase:
    """The tokenizer: a Hub/local tokenizer, or a character tokenizer for ``tiny-random`` bases."""
    name = cfg.tokenizer.name or cfg.model.init_from or cfg.model.base
    if name in ("char", TINY_RANDOM):
        from retrofit.tokenization import build_char_tokenizer

        alphabet = cfg.tokenizer.alphabet or string.printable
        return build_char_tokenizer(alphabet, unk_token="<|unk|>")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        name,
        revision=cfg.tokenizer.revision or cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def _tiny_base(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator
) -> str:
    """Build (once, on the main process) a random tiny backbone of the adapter spec's family (LLaDA
    or Dream) sized to the tokenizer and save it under ``output_dir/tiny-random-base`` so that
    checkpoints can name a base model that exists."""
    from retrofit.adapter import AdapterSpec
    from retrofit.models import build_tiny_backbone
    from retrofit.tokenization import resolve_special_ids

    base_dir = Path(cfg.output_dir) / TINY_BASE_DIR
    ids = resolve_special_ids(tokenizer)
    overrides = {
        "vocab_size": len(tokenizer),
        "mask_token_id": ids.mask,
        "pad_token_id": ids.pad,
        "eos_token_id": ids.eos,
        **cfg.model.tiny,
    }
    config_file = base_dir / "config.json"
    if accelerator.is_main_process and not config_file.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.training.seed)
            model_type = AdapterSpec.load(cfg.model.adapter).backbone.model_type
            backbone = build_tiny_backbone(model_type, **overrides)
        tmp_dir = base_dir.with_name(base_dir.name + ".tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        backbone.save_pretrained(tmp_dir)
        os.replace(tmp_dir, base_dir)
    accelerator.wait_for_everyone()
    # A resumed run reuses the saved base; refuse one built with other settings.
    saved = json.loads(config_file.read_text())
    changed = {
        key: (saved.get(key), value) for key, value in overrides.items() if saved.get(key) != value
    }
    if changed:
        raise ConfigError(
            f"{base_dir} was built with other settings (saved, requested): {changed}; use a new "
            "output_dir for a different tiny model"
        )
    return str(base_dir)


def adapter_override_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    """Recipe-style nested adapter overrides -> ``AdapterSpec.with_overrides`` keys.

    ``{lora: {r: 16}, max_length: 512}`` -> ``{"lora.r": 16, "max_length": 512}`` (one field of a
    section changes, the others keep the spec's values); ``{lora: null}`` stays a whole-section
    override.
    """
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and key in ADAPTER_SECTIONS:
            for sub_key, sub_value in value.items():
                flat[f"{key}.{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat


def build_model(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator
) -> FlexMDM:
    """Retrofit the backbone from the adapter spec (kind = ``objective.name``), or load
    ``model.init_from``; trainable parameters are kept in fp32 (the master weights), the frozen
    backbone in ``model.dtype``."""
    import retrofit.models  # noqa: F401  (registers the LLaDA classes with transformers)
    from retrofit.adapter import AdapterSpec, FlexMDM

    dtype = getattr(torch, cfg.model.dtype)
    if cfg.model.init_from is not None:
        model = FlexMDM.from_pretrained(cfg.model.init_from, dtype=dtype)
        if model.kind != cfg.objective.name:
            raise ConfigError(
                f"model.init_from {cfg.model.init_from} is a kind '{model.kind}' checkpoint but "
                f"objective.name is '{cfg.objective.name}'"
            )
    else:
        spec = AdapterSpec.load(cfg.model.adapter)
        spec = spec.with_overrides(
            {"kind": cfg.objective.name, **adapter_override_keys(cfg.model.adapter_overrides)}
        )
        base = (
            _tiny_base(cfg, tokenizer, accelerator)
            if cfg.model.base == TINY_RANDOM
            else cfg.model.base
        )
        model = FlexMDM.retrofit(
            base, spec, revision=cfg.model.revision, dtype=dtype, tokenizer=tokenizer
        )
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
