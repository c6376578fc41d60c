"""FlexMDM: a masked diffusion backbone + time conditioning + insertion-count head + LoRA.

Forward pass of a ``kind: flexmdm`` model on a right-padded batch ``input_ids (B, L)`` with
explicit ``lengths (B,)``::

    buffer (B, L+1) = input_ids, with the slot token written at index lengths[b] of each row
    attention_mask  = position < lengths + 1            (padding beyond the slot is never attended)
    modulation      = BlockModulation(TimeEmbedding(t)) (one (scale, shift) per block)
    hidden (B, L+1, d) = backbone(buffer, attention_mask, modulation).last_hidden_state
    logits (B, L, V)   = lm_head(hidden[:, :L])         (or (N, V) at the selected positions)
    gaps   (B, L+1)    = InsertionHead(hidden), zero beyond each row's lengths[b] + 1 slots

Slot j < l reads the hidden state of position j (the gap just before token j); the trailing slot l
reads the appended slot position. ``kind: mdm`` is the plain backbone (+ LoRA) with the same
explicit-length masking and no slot, time or head.

**Logit shift** (``RetrofitConfig.logit_shift`` = the spec's ``backbone.logit_shift``). Some
backbones keep an autoregressive alignment: Dream's logits at position i - 1 predict the token at
i (``logit_shift = 1``), LLaDA's at i predict i (``0``). The forward pass returns *aligned* logits
whatever the backbone: row j of ``logits`` is always the prediction for token j, read from hidden
state ``max(j - shift, 0)`` (position 0 reuses its own state, as Dream's sampler does). Training
losses and samplers consume these rows, so both use the same alignment by construction. The
insertion head follows the same rule, "a hidden state speaks for the token after it": with shift
s, slot j (the gap before token j) reads hidden state ``(j - s) mod (l + 1)``. For Dream that is
position j - 1, the state that also predicts token j, so one state covers the region right after
token j - 1 (the next token and how many tokens are missing there); the trailing slot l reads the
last token's state, and slot 0 (before the first token, in practice inside the prompt) wraps
around to the appended slot position. With s = 0 this is the LLaDA layout above, unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import AutoConfig, PreTrainedModel
from transformers.utils import ModelOutput

from retrofit import __version__ as RETROFIT_VERSION
from retrofit.models import check_backbone_supported
from retrofit.models.prefix_cache import PrefixCache
from retrofit.schedules import Schedule, get_schedule
from retrofit.special_ids import SpecialIds, resolve_answer_ids, resolve_special_ids

from .checkpoint import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    NEW_MODULES_FILE,
    CheckpointFileError,
    atomic_directory,
    check_state_dict_keys,
    local_fingerprint,
    read_json_file,
    read_safetensors,
    resolve_backbone_dir,
    resolve_checkpoint_dir,
)
from .modules import BlockModulation, InsertionHead, LengthPosteriorHead, TimeEmbedding
from .spec import AdapterSpec, RetrofitConfig

# peft wraps the backbone as PeftModel(base_model=LoraModel(model=backbone)).
_PEFT_PREFIX = "base_model.model."
_ADAPTER_NAME = "default"


@dataclass
class FlexMDMOutput(ModelOutput):
    """Output of :meth:`FlexMDM.forward` (a transformers ``ModelOutput``, which DeepSpeed's ZeRO-3
    hooks and accelerate know how to traverse).

    Attributes:
        logits: (B, L, V) token logits, or (N, V) at the ``logits_positions`` (row-major order,
            the order of ``logits_positions.nonzero()``). Backbone dtype.
        gaps: (B, L+1) float32 expected number of absent tokens per slot (0 beyond each row's
            lengths[b] + 1 slots); None for ``kind: mdm``.
    """

    logits: Tensor | None = None
    gaps: Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Backbone loading and validation
# ----------------------------------------------------------------------------------------------


def load_backbone(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    expected_model_type: str | None = None,
) -> tuple[PreTrainedModel, str | None]:
    """Load a supported backbone (local dir or Hub id) with its native class, strictly.

    Returns ``(model, commit)``: ``commit`` is the Hub commit hash the weights came from (None
    for a local directory). Raises ValueError for an unsupported ``model_type`` or one different
    from ``expected_model_type`` (the adapter spec's ``backbone.model_type``).
    """
    directory, commit = resolve_backbone_dir(name_or_path, revision)
    config = AutoConfig.from_pretrained(str(directory))
    model_type = getattr(config, "model_type", None)
    _check_model_type(model_type, expected_model_type, where=str(name_or_path))
    model_class = check_backbone_supported(model_type)
    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    try:
        return model_class.from_pretrained(str(directory), config=config, **kwargs), commit
    except SafetensorError as error:
        files = ", ".join(sorted(path.name for path in Path(directory).glob("*.safetensors")))
        raise CheckpointFileError(
            f"{directory}: a weight file ({files}) is truncated or not a safetensors file "
            f"({error}); save the model again or download it again") from None


def _check_model_type(model_type: str | None, expected: str | None, where: str) -> None:
    """Backbone type must be supported by retrofit.models and match the spec."""
    if model_type is None:
        raise ValueError(f"backbone {where} has no config.model_type; cannot tell what it is")
    check_backbone_supported(model_type)
    if expected is not None and model_type != expected:
        raise ValueError(
            f"backbone {where} has model_type {model_type!r} but the adapter spec is for "
            f"{expected!r}; use the spec for {model_type!r} (e.g. adapters/{model_type}.yaml)"
        )


def _module_exists(root: nn.Module, target: str) -> bool:
    """peft's matching rule: a module's full name equals ``target`` or ends with '.' + target."""
    return any(name == target or name.endswith("." + target) for name, _ in root.named_modules())


def _resolve_special_ids(spec: AdapterSpec, backbone: PreTrainedModel, tokenizer: Any) -> SpecialIds:
    """The checkpoint's special ids, resolved once here by :func:`resolve_special_ids` (the spec's
    ``special_tokens`` > the backbone config > the tokenizer) and :func:`resolve_answer_ids` (bos,
    end of turn); the slot id defaults to pad.

    A tokenizer whose declared mask id disagrees with the resolved one is an error (pad/eos are
    not compared: LLaDA-Instruct's tokenizer eos is <|eot_id|> while its config eos is 126081).
    """
    explicit = spec.special_tokens
    try:
        ids = resolve_special_ids(
            tokenizer, backbone.config, explicit.mask_token_id,
            pad_token_id=explicit.pad_token_id, eos_token_id=explicit.eos_token_id,
            slot_token_id=explicit.slot_token_id,
        )  # fmt: skip
    except (TypeError, ValueError) as error:
        raise ValueError(f"{error} (set special_tokens in {spec.source})") from None
    tokenizer_mask = getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None
    if tokenizer_mask is not None and tokenizer_mask != ids.mask:
        raise ValueError(
            f"the tokenizer's mask_token_id {tokenizer_mask} differs from {ids.mask}, the mask id "
            f"of special_tokens in {spec.source} or the backbone config; fix one of them"
        )
    if tokenizer is not None:  # else the stop ids are left to the checkpoint's tokenizer
        ids = resolve_answer_ids(ids, tokenizer, backbone.config)
    return dataclasses.replace(ids, slot=ids.pad if ids.slot is None else ids.slot)


def _shape_of(backbone: PreTrainedModel) -> tuple[int, int, int]:
    """(d_model, n_layers, vocab_size) of a backbone config (standard transformers names, which
    every native config provides, LLaDA's through its ``attribute_map``)."""
    config = backbone.config
    return int(config.hidden_size), int(config.num_hidden_layers), int(config.vocab_size)


def _check_backbone_boundary(spec: AdapterSpec, backbone: PreTrainedModel) -> None:
    """The spec's ``backbone`` section must describe ``backbone``: its block list (one block per
    layer, each with the conditioned norms), its LM head and its logit alignment."""
    boundary, source = spec.backbone, spec.source
    model_type = backbone.config.model_type
    n_layers = _shape_of(backbone)[1]
    try:
        blocks = backbone.get_submodule(boundary.layers)
    except AttributeError:
        blocks = None
    if not isinstance(blocks, nn.ModuleList) or len(blocks) != n_layers:
        raise ValueError(
            f"{source}: backbone.layers '{boundary.layers}' is not the list of the {n_layers} "
            f"blocks of the {model_type} backbone (LLaDA: model.transformer.blocks, Dream: "
            "model.layers)"
        )
    for norm in spec.time_conditioning.norms:
        if not all(hasattr(block, norm) for block in blocks):
            raise ValueError(
                f"{source}: time_conditioning.norms names '{norm}', which the backbone's "
                f"blocks do not have"
            )
    try:
        head = backbone.get_submodule(boundary.lm_head)
    except AttributeError:
        head = None
    if head is None or head is not backbone.get_output_embeddings():
        raise ValueError(
            f"{source}: backbone.lm_head '{boundary.lm_head}' is not the LM head of the "
            f"{model_type} backbone (LLaDA: model.transformer.ff_out, Dream: lm_head)"
        )
    declared = int(getattr(backbone, "logit_shift", 0))
    if boundary.logit_shift != declared:
        raise ValueError(
            f"{source}: backbone.logit_shift is {boundary.logit_shift} but "
            f"{type(backbone).__name__} predicts token i at position i - {declared} "
            f"(logit_shift {declared}); fix the spec"
        )


def _attach_lora(backbone: PreTrainedModel, lora_config: Any) -> nn.Module:
    """Wrap ``backbone`` with peft LoRA (adapter name 'default'); freezes the backbone weights.

    On the meta device LoRA weights are created on meta too (``low_cpu_mem_usage``).
    """
    from peft import get_peft_model

    on_meta = any(param.is_meta for param in backbone.parameters())
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` property (harmless).
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        return get_peft_model(backbone, lora_config, low_cpu_mem_usage=on_meta)


def _lora_config_from_dict(settings: Mapping[str, Any]) -> Any:
    """peft LoraConfig from the ``lora`` section of a spec / RetrofitConfig (the base model id is
    filled in when the adapter is saved)."""
    from peft import LoraConfig

    return LoraConfig(
        r=int(settings["r"]),
        lora_alpha=settings["alpha"],
        lora_dropout=float(settings["dropout"]),
        target_modules=list(settings["target_modules"]),
        bias="none",
    )


# ----------------------------------------------------------------------------------------------
# FlexMDM
# ----------------------------------------------------------------------------------------------


def _backbone_and_origin(
    base: str | os.PathLike | PreTrainedModel, spec: AdapterSpec, *, revision: str | None,
    dtype: torch.dtype | str | None,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The backbone and where it came from (``base_model``, ``base_revision``,
    ``base_fingerprint`` as recorded in the checkpoint): loaded from a Hub id or local path, or
    an instance used in place (cast to ``dtype``)."""
    if isinstance(base, (str, os.PathLike)):
        revision = revision if revision is not None else spec.backbone.revision
        backbone, commit = load_backbone(
            base, revision=revision, dtype=dtype, expected_model_type=spec.backbone.model_type
        )
        local = Path(base).is_dir()
        return backbone, {
            "base_model": str(Path(base).resolve()) if local else str(base),
            "base_revision": commit or revision,  # pin the exact Hub commit when there is one
            "base_fingerprint": local_fingerprint(base) if local and commit is None else None,
        }
    if not isinstance(base, PreTrainedModel):
        raise TypeError(
            f"base must be a Hub id, a local path or a PreTrainedModel, got {type(base).__name__}"
        )
    _check_model_type(
        getattr(base.config, "model_type", None), spec.backbone.model_type, where=type(base).__name__
    )
    if dtype is not None:
        base.to(dtype=dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype))
    base_id = getattr(base, "name_or_path", None) or None  # "" for models built in code
    local = base_id is not None and Path(base_id).is_dir()
    if local:
        base_id = str(Path(base_id).resolve())
    # The commit the instance was loaded from beats a caller's label such as "main".
    base_revision = getattr(base.config, "_commit_hash", None) or revision
    fingerprint = local_fingerprint(base_id) if local and base_revision is None else None
    return base, {"base_model": base_id, "base_revision": base_revision, "base_fingerprint": fingerprint}


def _checkpoint_backbone(
    checkpoint: str | os.PathLike, directory: Path, config: RetrofitConfig, *,
    base_model: str | os.PathLike | PreTrainedModel | None, base_revision: str | None,
    dtype: torch.dtype | str | None,
) -> PreTrainedModel:
    """The backbone a checkpoint needs: its own weights (``weights: full``), an instance given as
    ``base_model``, or the recorded (or overriding) base model loaded from its path or Hub id."""
    if config.weights == "full":
        if base_model is not None:
            raise ValueError(
                f"{checkpoint} holds complete backbone weights (weights='full'); base_model "
                "overrides apply to adapter checkpoints only"
            )
        return load_backbone(directory, dtype=dtype, expected_model_type=config.backbone_type)[0]
    if isinstance(base_model, PreTrainedModel):
        if dtype is not None:
            base_model.to(dtype=dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype))
        _check_model_type(
            getattr(base_model.config, "model_type", None), config.backbone_type,
            where=type(base_model).__name__,
        )  # fmt: skip
        return base_model
    base = base_model if base_model is not None else config.base_model
    if base is None:
        raise ValueError(
            f"{checkpoint}: retrofit_config.json records no base_model; pass "
            "FlexMDM.from_pretrained(..., base_model='GSAI-ML/LLaDA-8B-Base')"
        )
    revision = base_revision if base_model is not None else (base_revision or config.base_revision)
    try:
        backbone, _ = load_backbone(
            base, revision=revision, dtype=dtype, expected_model_type=config.backbone_type
        )
    except (FileNotFoundError, OSError) as error:
        if base_model is not None:
            raise
        raise FileNotFoundError(
            f"{checkpoint}: its base model {base} cannot be loaded ({error}); pass "
            "FlexMDM.from_pretrained(..., base_model=PATH_OR_HUB_ID) (--base-model)"
        ) from None
    if (
        base_model is None
        and config.base_fingerprint is not None
        and Path(str(base)).is_dir()
        and local_fingerprint(base) != config.base_fingerprint
    ):
        warnings.warn(
            f"the local base model {base} differs from the one {checkpoint} was trained on "
            "(config.json or weight files changed since): outputs may not be the trained model's",
            stacklevel=3,
        )
    return backbone


def _check_lora_targets(spec: AdapterSpec, backbone: PreTrainedModel) -> None:
    """Every LoRA target must name a module of the backbone (peft's matching rule)."""
    if spec.lora is None:
        return
    missing = [name for name in spec.lora.target_modules if not _module_exists(backbone, name)]
    if missing:
        raise ValueError(
            f"{spec.source}: lora.target_modules {missing} match no module of the "
            f"{backbone.config.model_type} backbone (module names are matched like peft: "
            f"exact name or '.'-suffix, e.g. 'q_proj', 'transformer.ff_out')"
        )


def _retrofit_config(
    spec: AdapterSpec, backbone: PreTrainedModel, special_ids: SpecialIds, origin: dict[str, Any],
    *, recorded_stops: bool,
) -> RetrofitConfig:
    """What a checkpoint records about a fresh retrofit (``recorded_stops``: the stop ids are
    known, i.e. a tokenizer was given)."""
    d_model, n_layers, vocab_size = _shape_of(backbone)
    return RetrofitConfig(
        kind=spec.kind,
        backbone_type=backbone.config.model_type,
        d_model=d_model,
        n_layers=n_layers,
        vocab_size=vocab_size,
        mask_token_id=special_ids.mask,
        pad_token_id=special_ids.pad,
        eos_token_id=special_ids.eos,
        slot_token_id=special_ids.slot,
        bos_token_id=special_ids.bos,
        stop_token_ids=sorted(special_ids.stop_ids) if recorded_stops else None,
        insertion_schedule=get_schedule(spec.schedules.insertion).spec,
        unmasking_schedule=get_schedule(spec.schedules.unmasking).spec,
        head_scale=spec.head.scale,
        head_init_gap=spec.head.init_gap,
        head_length_posterior=spec.head.length_posterior,
        group_size=spec.time_conditioning.group_size,
        conditioned_norms=list(spec.time_conditioning.norms),
        time_embedding_dim=spec.time_conditioning.embedding_dim or d_model,
        time_mlp_ratio=spec.time_conditioning.mlp_ratio,
        time_max_period=spec.time_conditioning.max_period,
        time_scale=spec.time_conditioning.time_scale,
        lora=dataclasses.asdict(spec.lora) if spec.lora is not None else None,
        full_finetune=spec.full_finetune,
        max_length=spec.max_length,
        weights="adapter",
        merged=False,
        spec_name=spec.name,
        logit_shift=spec.backbone.logit_shift,
        retrofit_version=RETROFIT_VERSION,
        **origin,
    )


class FlexMDM(nn.Module):
    """A retrofitted masked diffusion LM (``kind: flexmdm``) or its LoRA MDM baseline (``mdm``).

    Build one with :meth:`retrofit` (from a base model and an adapter spec) or
    :meth:`from_pretrained` (from a saved checkpoint); both return the model in eval mode, as
    transformers does (call ``.train()`` to fine-tune).

    Attributes:
        backbone: the peft ``PeftModel`` wrapping the backbone (LoRA) or the backbone itself.
        config: :class:`RetrofitConfig` (saved as ``retrofit_config.json``).
        time_embedding, modulation, insertion_head: the new modules (None for ``kind: mdm``),
            float32 master weights on the backbone's device.
    """

    def __init__(self, backbone: nn.Module, config: RetrofitConfig) -> None:
        """Wrap an already prepared backbone (LoRA attached if any). Prefer :meth:`retrofit`."""
        super().__init__()
        self.backbone = backbone
        self.config = config
        d_model, n_layers, _ = _shape_of(self.lm)
        device = next(self.lm.parameters()).device
        self.time_embedding: TimeEmbedding | None = None
        self.modulation: BlockModulation | None = None
        self.insertion_head: InsertionHead | None = None
        if config.kind == "flexmdm":
            self.time_embedding = TimeEmbedding(
                config.time_embedding_dim,
                d_model,
                mlp_ratio=config.time_mlp_ratio,
                max_period=config.time_max_period,
                time_scale=config.time_scale,
                device=device,
            )
            self.modulation = BlockModulation(d_model, n_layers, config.group_size, device=device)
            if config.head_length_posterior:
                self.insertion_head = LengthPosteriorHead(
                    d_model, scale=config.head_scale, init_gap=config.head_init_gap,
                    max_length=config.max_length, device=device,
                )  # fmt: skip
            else:
                self.insertion_head = InsertionHead(
                    d_model, scale=config.head_scale, init_gap=config.head_init_gap, device=device
                )
        self._insertion_schedule = get_schedule(config.insertion_schedule)
        self._unmasking_schedule = get_schedule(config.unmasking_schedule)

    # -- accessors -------------------------------------------------------------------------

    @property
    def lm(self) -> PreTrainedModel:
        """The backbone language model itself (inside the peft wrapper when LoRA is used)."""
        if hasattr(self.backbone, "get_base_model"):
            return self.backbone.get_base_model()
        return self.backbone

    @property
    def kind(self) -> str:
        """The model kind: "flexmdm" or "mdm"."""
        return self.config.kind

    @property
    def insertion_schedule(self) -> Schedule:
        """alpha(t), the insertion schedule stored with the checkpoint."""
        return self._insertion_schedule

    @property
    def unmasking_schedule(self) -> Schedule:
        """beta(t), the unmasking schedule stored with the checkpoint."""
        return self._unmasking_schedule

    @property
    def special_ids(self) -> SpecialIds:
        """The special ids recorded at retrofit time (:meth:`SpecialIds.from_config`; raises for a
        checkpoint that records no stop ids: use ``retrofit.pipeline.Pipeline``)."""
        return SpecialIds.from_config(self.config)

    @property
    def mask_token_id(self) -> int:
        """Id of the mask token."""
        return self.config.mask_token_id

    @property
    def pad_token_id(self) -> int:
        """Id used for padding (LLaDA: equal to EOS)."""
        return self.config.pad_token_id

    @property
    def eos_token_id(self) -> int | None:
        """Id of end-of-sequence."""
        return self.config.eos_token_id

    @property
    def device(self) -> torch.device:
        """Device of the backbone parameters."""
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the backbone (the new modules stay float32)."""
        return self.lm.get_input_embeddings().weight.dtype

    def new_modules(self) -> dict[str, nn.Module]:
        """The modules added by the retrofit, by attribute name (empty for ``kind: mdm``)."""
        names = ("time_embedding", "modulation", "insertion_head")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    # -- parameters ------------------------------------------------------------------------

    def named_parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by group, as ``(name, parameter)`` pairs.

        ``"lora"``: LoRA A/B matrices; ``"new"``: time embedding, modulation and insertion head;
        ``"backbone"``: backbone weights that train (full fine-tuning only). Frozen parameters
        are left out, so ``sum(len(v) for v in groups.values())`` counts what the optimizer gets.
        """
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"lora": [], "new": [], "backbone": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if not name.startswith("backbone."):
                groups["new"].append((name, param))
            elif ".lora_" in name:
                groups["lora"].append((name, param))
            else:
                groups["backbone"].append((name, param))
        return groups

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameter counts per group and per new module (for logs and model cards)."""
        counts = {
            group: sum(param.numel() for _, param in params)
            for group, params in self.named_parameter_groups().items()
        }
        for name, module in self.new_modules().items():
            counts[name] = sum(param.numel() for param in module.parameters())
        counts["total_trainable"] = counts["lora"] + counts["new"] + counts["backbone"]
        return counts

    def _set_trainable(self) -> None:
        """requires_grad from the config: new modules and LoRA train; backbone only if full FT."""
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(".lora_" in name or self.config.full_finetune)
        for module in self.new_modules().values():
            module.requires_grad_(True)

    # -- gradient checkpointing --------------------------------------------------------------

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None
    ) -> None:
        """Checkpoint every backbone block (non-reentrant by default).

        The modulation enters each block as an explicit argument, so recomputation sees the same
        (scale, shift) and gradients reach the time embedding. With ``use_reentrant=True`` the
        input embeddings are made to require grad so frozen-embedding (LoRA) training still
        propagates gradients.
        """
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        lm = self.lm
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.x name
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if kwargs["use_reentrant"]:
            lm.enable_input_require_grads()

    activation_checkpointing_enable = gradient_checkpointing_enable

    def gradient_checkpointing_disable(self) -> None:
        """Turn block checkpointing off again."""
        lm = self.lm
        if hasattr(lm, "activation_checkpointing_disable"):
            lm.activation_checkpointing_disable()
        else:
            lm.gradient_checkpointing_disable()

    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether backbone blocks are checkpointed."""
        lm = self.lm
        if hasattr(lm, "is_activation_checkpointing"):
            return bool(lm.is_activation_checkpointing)
        return bool(getattr(lm, "is_gradient_checkpointing", False))

    # -- forward -----------------------------------------------------------------------------

    def _check_lengths(self, input_ids: Tensor, lengths: Tensor) -> None:
        """lengths: (B,) integers in [0, min(L, max_length)] (one device sync)."""
        batch_size, seq_len = input_ids.shape
        if not isinstance(lengths, Tensor) or lengths.shape != (batch_size,):
            shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
            raise ValueError(
                f"lengths must be a LongTensor of shape (B,) = ({batch_size},), got {shape}"
            )
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
        if batch_size == 0:
            return
        low, high = torch.stack([lengths.min(), lengths.max()]).tolist()
        if low < 0 or high > seq_len:
            raise ValueError(f"lengths must lie in [0, L={seq_len}], got min {low}, max {high}")
        if high > self.config.max_length:
            raise ValueError(
                f"a sequence of length {high} exceeds max_length={self.config.max_length} of this "
                "model; truncate the inputs or retrofit with a larger max_length"
            )

    def build_slot_inputs(self, input_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The backbone input of a FlexMDM forward: one slot token appended after each row.

        Args:
            input_ids: (B, L) right-padded ids.
            lengths: (B,) real lengths.

        Returns:
            buffer_ids (B, L+1) with the slot token at index lengths[b] and pad ids beyond it;
            attention_mask (B, L+1) bool, True at positions < lengths + 1.
        """
        batch_size, seq_len = input_ids.shape
        buffer_ids = input_ids.new_full((batch_size, seq_len + 1), self.config.pad_token_id)
        buffer_ids[:, :seq_len] = input_ids
        lengths = lengths.to(device=input_ids.device, dtype=torch.long)
        buffer_ids.scatter_(1, lengths[:, None], self.config.slot_token_id)  # slot token at l
        positions = torch.arange(seq_len + 1, device=input_ids.device)
        attention_mask = positions[None, :] < (lengths + 1)[:, None]  # (B, L+1)
        return buffer_ids, attention_mask

    def time_modulation(self, t: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """t (B,) or scalar -> per-block (scale (B, d), shift (B, d)) in float32."""
        assert self.time_embedding is not None and self.modulation is not None
        conditioning = self.time_embedding(self._time_vector(t, batch_size))  # (B, d)
        return self.modulation(conditioning)

    def _time_vector(self, t: Tensor | float, batch_size: int) -> Tensor:
        """t (B,) or scalar -> (B,) float32 on the model's device."""
        if not isinstance(t, Tensor):
            t = torch.tensor(float(t))
        t = t.to(device=self.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(
                f"t must have shape (B,) = ({batch_size},) or be a scalar, got {tuple(t.shape)}"
            )
        return t

    def forward(
        self,
        input_ids: Tensor,
        lengths: Tensor | None,
        t: Tensor | float | None = None,
        logits_positions: Tensor | None = None,
        prefix_cache: PrefixCache | None = None,
    ) -> FlexMDMOutput:
        """Token logits and (FlexMDM) expected gaps for a right-padded batch.

        Args:
            input_ids: (B, L) ids, padded with anything beyond ``lengths`` (never attended).
            lengths: (B,) real lengths, <= min(L, max_length). ``None`` only for ``kind: mdm``
                (every row full length).
            t: (B,) FlexMDM time in [0, 1] (a scalar broadcasts); required for ``kind: flexmdm``,
                ignored for ``mdm``.
            logits_positions: optional (B, L) bool; logits only at these positions, computed on the
                gathered hidden states (the LM head never sees the other rows).
            prefix_cache: optional, inference only (:class:`retrofit.models.prefix_cache.PrefixCache`
                of P positions, P <= every row's length): empty, it records the first P positions'
                keys/values during this forward; recorded, only positions P.. are computed, their
                queries reading the recorded prefix (approximate: see the prefix cache's module).
                Logits and gaps at positions / slots < P are then not computed (zeros in their
                place); ask for logits at positions >= P only.

        Returns:
            FlexMDMOutput(logits (B, L, V) or (N, V), gaps (B, L+1) float32 | None).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        batch_size, seq_len = input_ids.shape
        if logits_positions is not None and (
            logits_positions.shape != (batch_size, seq_len) or logits_positions.dtype != torch.bool
        ):
            raise ValueError(
                "logits_positions must be a bool tensor of shape (B, L) = "
                f"{(batch_size, seq_len)}, got {logits_positions.dtype} "
                f"{tuple(logits_positions.shape)}"
            )
        if self.kind == "flexmdm":
            if lengths is None:
                raise ValueError("a FlexMDM forward needs explicit lengths (B,)")
            if t is None:
                raise ValueError("a FlexMDM forward needs the time t (B,) in [0, 1]")
            self._check_lengths(input_ids, lengths)
            buffer_ids, attention_mask = self.build_slot_inputs(input_ids, lengths)
            modulation = self.time_modulation(t, batch_size)
        else:
            if lengths is None:
                attention_mask = None
            else:
                self._check_lengths(input_ids, lengths)
                positions = torch.arange(seq_len, device=input_ids.device)
                attention_mask = (
                    positions[None, :] < lengths.to(input_ids.device)[:, None]
                )  # (B, L)
            buffer_ids, modulation = input_ids, None

        hidden = self._backbone_hidden(
            buffer_ids, attention_mask, modulation, prefix_cache, logits_positions
        )  # (B, L(+1), d)
        token_hidden = self._token_hidden(hidden, seq_len)  # (B, L, d)
        if logits_positions is not None:
            token_hidden = token_hidden[logits_positions.to(hidden.device)]  # (N, d)
        logits = self.lm.get_output_embeddings()(token_hidden)  # (B, L, V) or (N, V)

        gaps = None
        if self.insertion_head is not None:
            assert lengths is not None
            if isinstance(self.insertion_head, LengthPosteriorHead):
                alpha = self.insertion_schedule.at(self._time_vector(t, batch_size))  # (B,)
                position_gaps = self.insertion_head(hidden, lengths, alpha)  # (B, L+1)
            else:
                position_gaps = self.insertion_head(hidden)  # (B, L+1)
            gaps = self._slot_gaps(position_gaps, lengths)  # (B, L+1)
            slots = torch.arange(seq_len + 1, device=gaps.device)
            valid = slots[None, :] <= lengths.to(gaps.device)[:, None]  # (B, L+1) slots 0..l
            gaps = torch.where(valid, gaps, torch.zeros((), dtype=gaps.dtype, device=gaps.device))
        return FlexMDMOutput(logits=logits, gaps=gaps)

    def _token_hidden(self, hidden: Tensor, seq_len: int) -> Tensor:
        """The hidden state that predicts each token: ``(B, S, d) -> (B, L, d)``, row j read at
        ``max(j - logit_shift, 0)`` (see the module docstring)."""
        shift = self.config.logit_shift
        if shift == 0:
            return hidden[:, :seq_len]
        readers = (torch.arange(seq_len, device=hidden.device) - shift).clamp_min(0)  # (L,)
        return hidden[:, readers]

    def _slot_gaps(self, position_gaps: Tensor, lengths: Tensor) -> Tensor:
        """Gaps per slot from the head's output per position: ``(B, L+1) -> (B, L+1)``, slot j read
        at position ``(j - logit_shift) mod (lengths + 1)`` (see the module docstring)."""
        shift = self.config.logit_shift
        if shift == 0:
            return position_gaps
        slots = torch.arange(position_gaps.shape[1], device=position_gaps.device)  # (L+1,)
        modulus = (lengths.to(position_gaps.device, torch.long) + 1)[:, None]  # (B, 1)
        readers = torch.remainder(slots[None, :] - shift, modulus)  # (B, L+1)
        return position_gaps.gather(1, readers)

    def _backbone_hidden(
        self,
        buffer_ids: Tensor,
        attention_mask: Tensor | None,
        modulation: list[tuple[Tensor, Tensor]] | None,
        prefix_cache: PrefixCache | None,
        logits_positions: Tensor | None,
    ) -> Tensor:
        """The backbone's last hidden states (B, S, d) for ``buffer_ids`` (B, S); with a recorded
        prefix cache of P positions only positions P.. are computed (zeros before them)."""
        if prefix_cache is None:
            return self.lm(
                input_ids=buffer_ids,
                attention_mask=attention_mask,
                modulation=modulation,
                return_logits=False,
            ).last_hidden_state
        if torch.is_grad_enabled() and self.training:
            raise ValueError("prefix_cache is for inference only: call model.eval() under no_grad")
        if self.config.logit_shift != 0 or self.lm.config.model_type != "llada":
            # A shifted backbone reads position P - 1 for token P; only LLaDA records caches.
            raise ValueError(f"prefix_cache supports the LLaDA backbone (logit_shift 0); this "
                             f"checkpoint's is {self.lm.config.model_type!r}: sample without it")
        offset = prefix_cache.length if prefix_cache.recorded else 0
        if offset and logits_positions is not None and bool(logits_positions[:, :offset].any()):
            raise ValueError(f"logits were asked inside the cached prefix (positions < {offset})")
        hidden = self.lm(
            input_ids=buffer_ids[:, offset:],
            attention_mask=None if attention_mask is None else attention_mask[:, offset:],
            modulation=modulation,
            return_logits=False,
            prefix_cache=prefix_cache,
        ).last_hidden_state  # (B, S - P, d)
        if not offset:
            return hidden
        prefix = hidden.new_zeros((hidden.shape[0], offset, hidden.shape[2]))  # not computed
        return torch.cat((prefix, hidden), dim=1)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def retrofit(
        cls,
        base: str | os.PathLike | PreTrainedModel | None = None,
        spec: AdapterSpec | str | os.PathLike | Mapping[str, Any] = "llada",
        *,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        tokenizer: Any = None,
        **overrides: Any,
    ) -> FlexMDM:
        """Retrofit a pretrained backbone following an adapter spec.

        Args:
            base: a Hub id or local directory (loaded strictly with the native class), a model
                instance (used in place, LoRA is injected into it), or None for the spec's
                ``backbone.name_or_path``.
            spec: an :class:`AdapterSpec`, a YAML path, a name in ``adapters/`` or a mapping.
            revision: Hub revision of ``base`` (default: the spec's ``backbone.revision``).
            dtype: backbone dtype when loading (e.g. ``torch.bfloat16``), or cast an instance.
                New modules and LoRA weights stay float32.
            device: move the result there.
            tokenizer: optional; fallback source of special ids the config lacks.
            **overrides: spec fields, e.g. ``kind="mdm"``, ``lora_r=8``, ``group_size=1``,
                ``insertion_schedule="geometric(10, 0.01)"`` (see ``AdapterSpec.with_overrides``).

        Returns:
            A :class:`FlexMDM` in eval mode whose step-0 logits equal the backbone's exactly.
        """
        spec = AdapterSpec.load(spec).with_overrides(overrides)
        spec.validate()
        check_backbone_supported(spec.backbone.model_type)  # the spec's family must be supported
        if base is None:
            base = spec.backbone.name_or_path
            if base is None:
                raise ValueError(
                    f"no base model given and {spec.source} sets no backbone.name_or_path; pass "
                    "FlexMDM.retrofit(base='GSAI-ML/LLaDA-8B-Base', spec=...)"
                )
        backbone, origin = _backbone_and_origin(base, spec, revision=revision, dtype=dtype)
        if (
            not hasattr(backbone, "get_output_embeddings")
            or backbone.get_output_embeddings() is None
        ):
            raise ValueError(
                f"backbone {type(backbone).__name__} has no LM head (get_output_embeddings)"
            )
        special_ids = _resolve_special_ids(spec, backbone, tokenizer)
        _check_backbone_boundary(spec, backbone)
        _check_lora_targets(spec, backbone)
        config = _retrofit_config(spec, backbone, special_ids, origin, recorded_stops=tokenizer is not None)
        lora_settings = config.lora
        if lora_settings is not None:
            backbone = _attach_lora(backbone, _lora_config_from_dict(lora_settings))
        model = cls(backbone, config)
        model._set_trainable()
        model.eval()
        if device is not None:
            model.to(device)
        return model

    # -- checkpoints -----------------------------------------------------------------------------

    def _split_state_dict(self, state_dict: Mapping[str, Tensor] | None) -> tuple[dict, dict]:
        """(backbone part keyed relative to ``self.backbone``, new-module part) of a state dict."""
        if state_dict is None:
            state_dict = self.state_dict()
        backbone_part, new_part = {}, {}
        for key, value in state_dict.items():
            if key.startswith("backbone."):
                backbone_part[key[len("backbone.") :]] = value
            else:
                new_part[key] = value
        expected_new = {
            f"{name}.{key}"
            for name, module in self.new_modules().items()
            for key in module.state_dict()
        }
        check_state_dict_keys(expected_new, new_part, what="new-module state dict")
        return backbone_part, new_part

    def _is_lora(self) -> bool:
        return hasattr(self.backbone, "peft_config")

    def _backbone_export_state_dict(self, backbone_part: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Backbone weights under the backbone's own key names, LoRA merged in (if any)."""
        if not self._is_lora():
            return {key: value for key, value in backbone_part.items()}
        merged: dict[str, Tensor] = {}
        for key, value in backbone_part.items():
            if not key.startswith(_PEFT_PREFIX):
                raise ValueError(f"unexpected key {key!r} in the peft backbone state dict")
            name = key[len(_PEFT_PREFIX) :]
            if ".lora_" in name:
                continue
            merged[name.replace(".base_layer.", ".")] = value
        from peft.tuners.lora import LoraLayer

        for module_name, layer in self.lm.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            if getattr(layer, "use_dora", {}).get(_ADAPTER_NAME, False):
                raise NotImplementedError("merging DoRA adapters is not supported")
            lora_a = backbone_part[f"{_PEFT_PREFIX}{module_name}.lora_A.{_ADAPTER_NAME}.weight"]
            lora_b = backbone_part[f"{_PEFT_PREFIX}{module_name}.lora_B.{_ADAPTER_NAME}.weight"]
            weight_key = f"{module_name}.weight"
            weight = merged[weight_key]
            delta = (lora_b.float() @ lora_a.float()) * layer.scaling[_ADAPTER_NAME]  # (out, in)
            merged[weight_key] = (weight.float() + delta.to(weight.device)).to(weight.dtype)
        return merged

    def _save_new_modules(self, directory: Path, new_part: Mapping[str, Tensor]) -> None:
        """Write the new modules as plain, contiguous, unshared tensors."""
        if not new_part:
            return
        tensors = {
            key: value.detach().to("cpu").contiguous().clone() for key, value in new_part.items()
        }
        save_file(tensors, str(directory / NEW_MODULES_FILE), metadata={"format": "pt"})

    def _save_full_backbone(
        self, directory: Path, weights: Mapping[str, Tensor], max_shard_size: int | str
    ) -> None:
        """Write complete backbone weights (+ config.json) with transformers' sharded layout."""
        lm = self.lm
        with torch.device("meta"):
            clean = type(lm)(lm.config)  # a LoRA-free twin, only for its save logic and config
        clean.to(dtype=self.dtype)  # config.json records the dtype of the saved weights
        clean.save_pretrained(
            str(directory),
            state_dict={key: value.detach().contiguous() for key, value in weights.items()},
            max_shard_size=max_shard_size,
        )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        state_dict: Mapping[str, Tensor] | None = None,
        max_shard_size: int | str = "5GB",
    ) -> Path:
        """Save a checkpoint atomically.

        Layout (LoRA): ``adapter_model.safetensors`` + ``adapter_config.json`` (peft format),
        ``flexmdm_modules.safetensors`` (new modules) and ``retrofit_config.json`` (written
        last). Full fine-tuning writes the whole backbone instead of the peft files
        (``config.json`` + ``model*.safetensors``). Everything is written into a hidden temporary
        directory next to the target, which then replaces the target (an existing target is
        renamed away first and removed after), so an interrupted save never leaves a
        complete-looking checkpoint.

        Args:
            save_directory: target directory.
            state_dict: optional full ``self.state_dict()``-keyed mapping (e.g. gathered from
                DeepSpeed ZeRO-3 by ``accelerator.get_state_dict``); default: this module's.
            max_shard_size: shard size for full backbone weights.

        Returns:
            The checkpoint directory.
        """
        backbone_part, new_part = self._split_state_dict(state_dict)
        target = Path(save_directory)
        with atomic_directory(target) as staging:
            if self._is_lora():
                from peft.utils import get_peft_model_state_dict

                adapter = get_peft_model_state_dict(
                    self.backbone, state_dict=backbone_part, save_embedding_layers=False
                )
                adapter = {
                    key: value.detach().to("cpu").contiguous().clone()
                    for key, value in adapter.items()
                }
                save_file(adapter, str(staging / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
                peft_config = self.backbone.peft_config[_ADAPTER_NAME]
                peft_config.base_model_name_or_path = self.config.base_model
                peft_config.revision = self.config.base_revision
                peft_config.save_pretrained(str(staging))
                config = self.config
            elif self.config.full_finetune or self.config.weights == "full":
                # Full fine-tuning, or a model loaded from a full / merged export: the backbone's
                # weights are part of the checkpoint.
                self._save_full_backbone(
                    staging, self._backbone_export_state_dict(backbone_part), max_shard_size
                )
                config = dataclasses.replace(self.config, weights="full")
            else:  # frozen backbone, no LoRA: the base model plus the new modules is everything
                config = self.config
            self._save_new_modules(staging, new_part)
            config.save(staging)
        return target

    def merge_and_save(
        self,
        save_directory: str | os.PathLike,
        *,
        state_dict: Mapping[str, Tensor] | None = None,
        max_shard_size: int | str = "5GB",
    ) -> Path:
        """Export a standalone checkpoint with LoRA merged into the backbone weights (atomic).

        Writes ``config.json`` + ``model*.safetensors`` (sharded at ``max_shard_size``, with an
        index when sharded), ``flexmdm_modules.safetensors`` and ``retrofit_config.json`` with
        ``weights: "full"`` and ``merged: true``. :meth:`from_pretrained` loads it without peft.
        This model is left unchanged (the merge is computed on copies of the weights).
        """
        backbone_part, new_part = self._split_state_dict(state_dict)
        merged_weights = self._backbone_export_state_dict(backbone_part)
        target = Path(save_directory)
        with atomic_directory(target) as staging:
            self._save_full_backbone(staging, merged_weights, max_shard_size)
            self._save_new_modules(staging, new_part)
            dataclasses.replace(self.config, weights="full", merged=True).save(staging)
        return target

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        revision: str | None = None,
        base_model: str | os.PathLike | PreTrainedModel | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        base_revision: str | None = None,
    ) -> FlexMDM:
        """Load a checkpoint written by :meth:`save_pretrained` or :meth:`merge_and_save`.

        Args:
            checkpoint: local directory or Hub id (fetched with ``snapshot_download``).
            revision: Hub revision of the checkpoint (Hub ids only).
            base_model: override the base model recorded in ``retrofit_config.json`` (a path, Hub id
                or loaded model instance); adapter checkpoints only.
            dtype: backbone dtype (new modules stay float32).
            device: move the model there.
            base_revision: revision of an overriding ``base_model`` (default: the recorded revision
                when the base is not overridden).

        Loading is strict: missing, unexpected or mis-shaped tensors in the LoRA adapter or the new
        modules raise ValueError naming them. Returns the model in eval mode.
        """
        directory = resolve_checkpoint_dir(checkpoint, revision)
        config = RetrofitConfig.load(directory)
        backbone = _checkpoint_backbone(
            checkpoint, directory, config, base_model=base_model, base_revision=base_revision,
            dtype=dtype,
        )  # fmt: skip
        shape = _shape_of(backbone)
        if shape != (config.d_model, config.n_layers, config.vocab_size):
            raise ValueError(
                f"base model shape (d_model, n_layers, vocab_size) = {shape} does not match the "
                f"checkpoint's {(config.d_model, config.n_layers, config.vocab_size)}; "
                "wrong base_model?"
            )
        if config.weights == "adapter" and config.lora is not None:
            backbone = _load_lora(backbone, directory, config)
        model = cls(backbone, config)
        model._load_new_modules(directory)
        model._set_trainable()
        model.eval()
        if device is not None:
            model.to(device)
        return model

    def _load_new_modules(self, directory: Path) -> None:
        """Strictly load ``flexmdm_modules.safetensors`` into the new modules (float32)."""
        expected = {
            f"{name}.{key}": tensor
            for name, module in self.new_modules().items()
            for key, tensor in module.state_dict().items()
        }
        path = directory / NEW_MODULES_FILE
        if not expected:
            if path.exists():
                raise ValueError(f"{path} exists but a kind '{self.kind}' model has no new modules")
            return
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the checkpoint has no FlexMDM modules")
        tensors = read_safetensors(path)
        check_state_dict_keys(expected, tensors, what=str(path))
        for name, module in self.new_modules().items():
            prefix = name + "."
            module_state = {
                key[len(prefix) :]: tensors[key].to(dtype=torch.float32)
                for key in tensors
                if key.startswith(prefix)
            }
            module.load_state_dict(module_state, strict=True)


def _load_lora(backbone: PreTrainedModel, directory: Path, config: RetrofitConfig) -> nn.Module:
    """Attach LoRA as described by ``adapter_config.json`` and load its weights strictly."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    config_path = directory / ADAPTER_CONFIG_FILE
    weights_path = directory / ADAPTER_WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint's LoRA adapter is incomplete"
            )
    lora_config = LoraConfig.from_pretrained(str(directory))
    stored = read_json_file(config_path, ADAPTER_CONFIG_FILE)
    recorded = config.lora or {}
    if recorded and (
        stored.get("r") != recorded.get("r")
        or float(stored.get("lora_alpha", 0)) != float(recorded.get("alpha", 0))
        or sorted(stored.get("target_modules") or []) != sorted(recorded.get("target_modules", []))
    ):
        raise ValueError(
            f"{config_path} (r={stored.get('r')}, alpha={stored.get('lora_alpha')}, "
            f"targets={stored.get('target_modules')}) disagrees with retrofit_config.json's "
            f"lora {recorded}"
        )
    model = _attach_lora(backbone, lora_config)
    expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    tensors = read_safetensors(weights_path)
    check_state_dict_keys(expected, tensors, what=str(weights_path))
    result = set_peft_model_state_dict(model, tensors)
    unexpected = [key for key in getattr(result, "unexpected_keys", []) if ".lora_" in key]
    if unexpected:
        raise ValueError(f"{weights_path}: peft did not place tensors {unexpected[:10]}")
    return model


def cli_main(argv: list[str] | None = None) -> int:
    """``retrofit merge CHECKPOINT OUTPUT_DIR``: export a merged standalone checkpoint."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="retrofit merge",
        description="Merge a retrofit checkpoint's LoRA adapter into its base model and save a "
        "standalone checkpoint (loads with FlexMDM.from_pretrained, no peft needed).",
    )
    parser.add_argument("checkpoint", help="checkpoint directory or Hub id")
    parser.add_argument("output_dir", help="where to write the merged checkpoint")
    parser.add_argument("--revision", default=None, help="Hub revision of the checkpoint")
    parser.add_argument("--base-model", default=None, help="override the recorded base model")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="dtype to load (and save) the backbone in (default: the checkpoint's)",
    )
    parser.add_argument(
        "--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)"
    )
    args = parser.parse_args(argv[1:] if argv and argv[0] == "merge" else argv)
    model = FlexMDM.from_pretrained(
        args.checkpoint,
        revision=args.revision,
        base_model=args.base_model,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
    )
    output = model.merge_and_save(args.output_dir, max_shard_size=args.max_shard_size)
    print(f"merged checkpoint written to {output}")
    return 0
