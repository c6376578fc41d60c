"""Adapter specs (``adapters/*.yaml``) and the resolved config stored with every checkpoint.

An :class:`AdapterSpec` says *how* to retrofit one backbone family: which norms receive the time
conditioning, the insertion-head scale, the LoRA targets, the special ids, the schedules. It is
declarative and may leave values open (``null`` special ids are read from the backbone config).

A :class:`RetrofitConfig` is the spec resolved against one concrete backbone: every id filled in,
the base model id and revision recorded. It is what ``retrofit_config.json`` holds and all that
:meth:`retrofit.adapter.FlexMDM.from_pretrained` needs besides the weights.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrofit import __version__ as RETROFIT_VERSION
from retrofit.adapter.checkpoint import CONFIG_FILE, read_json_file
from retrofit.schedules import get_schedule
from retrofit.yaml_config import ConfigError, from_dict, load_yaml

KINDS = ("flexmdm", "mdm")
# The norms of each LLaDA block (the default backbone); the backbone applies one (scale, shift) to
# both. Other families name theirs in the spec's ``backbone.conditionable_norms``.
CONDITIONABLE_NORMS = ("attn_norm", "ff_norm")
# How many positions a backbone's logits lead its tokens by (``backbone.logit_shift``): 0 = the
# logits at position i predict token i (LLaDA), 1 = token i is read at position i - 1 (Dream).
LOGIT_SHIFTS = (0, 1)
# Version of the on-disk layout of retrofit_config.json; bump on incompatible changes.
# 2: bos_token_id and stop_token_ids recorded (format 1 checkpoints load; their readers derive
# those two from the checkpoint's tokenizer, see retrofit.special_ids.SpecialIds.from_legacy_config).
# 3: logit_shift recorded (absent in formats 1-2, whose checkpoints are all LLaDA: 0), so an older
# retrofit refuses a Dream checkpoint with "upgrade" instead of reading its logits misaligned.
CONFIG_FORMAT_VERSION = 3


def adapters_dir() -> Path:
    """The repository's ``adapters/`` directory (specs addressed by bare name live there)."""
    return Path(__file__).resolve().parents[2] / "adapters"


def _strict(cls: type, data: Mapping[str, Any], source: str, what: str) -> Any:
    """``cls`` from ``data`` through the one strict loader (:mod:`retrofit.yaml_config`): unknown
    keys (with a did-you-mean) and wrong types are errors naming the key and the file (and line,
    for YAML read by ``load_yaml``)."""
    try:
        return from_dict(cls, data, what=what)
    except ConfigError as error:
        if source in str(error) or error.location:
            raise
        raise type(error)(f"{source}: {error}") from None


def _schedule_spec_string(value: str | dict) -> str:
    """Canonical schedule string (validated by ``get_schedule``)."""
    return get_schedule(value).spec


# ----------------------------------------------------------------------------------------------
# AdapterSpec
# ----------------------------------------------------------------------------------------------


@dataclass
class BackboneSpec:
    """Which backbone family the spec applies to, the default checkpoint, and its boundary.

    The boundary names what the adapter touches, as module paths inside the backbone model (peft's
    naming): ``layers`` the block list (block i receives modulation entry i),
    ``conditionable_norms`` the norms of each block whose outputs the (scale, shift) modulates
    (``time_conditioning.norms`` must list the same), ``lm_head`` the output projection (it must be
    the model's ``get_output_embeddings()``). ``logit_shift`` is how far the backbone's
    predictions lead its positions (0: LLaDA; 1: Dream, whose logits at i - 1 predict token i);
    the adapter reads every token's logits and every slot's gap with that alignment (see
    ``retrofit.adapter.model``), so training and sampling agree. The defaults are LLaDA's.
    """

    model_type: str = "llada"
    name_or_path: str | None = None  # default base model (Hub id or local dir)
    revision: str | None = None
    layers: str = "model.transformer.blocks"
    conditionable_norms: list[str] = field(default_factory=lambda: list(CONDITIONABLE_NORMS))
    lm_head: str = "model.transformer.ff_out"
    logit_shift: int = 0


@dataclass
class TimeConditioningSpec:
    """Time conditioning: sinusoid(t) -> MLP -> one zero-init Linear(d, 2d) per block group.

    ``group_size`` consecutive blocks share one (scale, shift); when it does not divide the number
    of blocks the last group is smaller (ceil(n_layers / group_size) modulation layers).
    ``embedding_dim`` null means d_model. The sinusoid is taken of ``time_scale * t`` (t in [0, 1])
    with periods up to ``max_period``.
    """

    norms: list[str] = field(default_factory=lambda: list(CONDITIONABLE_NORMS))
    group_size: int = 8
    embedding_dim: int | None = None
    mlp_ratio: int = 4
    max_period: float = 10000.0
    time_scale: float = 1000.0


@dataclass
class HeadSpec:
    """Insertion-count head: LayerNorm -> Linear(d, d) -> GELU -> Linear(d, 1) -> softplus * scale.

    ``init_gap`` is the expected gap predicted for every slot at initialisation (the last Linear
    starts with zero weight and bias softplus^-1(init_gap / scale)).

    ``length_posterior`` (off = the paper's head): the row's total is the posterior mean of the
    missing count under a learned prior over the final length and the forward process's binomial
    likelihood; the per-slot MLP only shares it among the slots
    (:class:`retrofit.adapter.modules.LengthPosteriorHead`; why and what it measured: docs/demo.md).
    """

    scale: float = 1024.0
    init_gap: float = 1.0
    length_posterior: bool = False


@dataclass
class LoraSpec:
    """peft LoRA settings. Target names follow peft: a module matches when its full name equals
    the target or ends with ``"." + target``."""

    r: int = 128
    alpha: float = 128.0
    dropout: float = 0.1
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "transformer.ff_out"]
    )


@dataclass
class SpecialTokensSpec:
    """Special ids; null = read from the backbone config (slot id null = the pad id)."""

    mask_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    slot_token_id: int | None = None


@dataclass
class SchedulesSpec:
    """Insertion alpha(t) and unmasking beta(t) schedules: ``get_schedule`` strings or dicts."""

    insertion: str | dict = "linear"
    unmasking: str | dict = "linear"


@dataclass
class AdapterSpec:
    """How to retrofit one backbone family into a FlexMDM (or a LoRA MDM baseline).

    Loaded from YAML with :meth:`from_yaml` (a path, or a bare name looked up in ``adapters/``).
    Unknown keys and wrong value types raise errors naming the key and the file.
    """

    name: str | None = None
    kind: str = "flexmdm"
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    time_conditioning: TimeConditioningSpec = field(default_factory=TimeConditioningSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    lora: LoraSpec | None = field(default_factory=LoraSpec)
    full_finetune: bool = False
    special_tokens: SpecialTokensSpec = field(default_factory=SpecialTokensSpec)
    schedules: SchedulesSpec = field(default_factory=SchedulesSpec)
    max_length: int = 1024
    source: str = field(default="<AdapterSpec>", compare=False, repr=False, init=False)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> AdapterSpec:
        """Build a spec from a (YAML-shaped) mapping; ``source`` names it in error messages."""
        if not isinstance(data, Mapping):
            raise TypeError(
                f"{source}: an adapter spec must be a mapping, got {type(data).__name__}"
            )
        spec = _strict(cls, data, source, "adapter spec")
        spec.source = source
        spec.validate()
        return spec

    @classmethod
    def from_yaml(cls, path_or_name: str | Path) -> AdapterSpec:
        """Load a spec from a YAML file path, or by name from the repository's ``adapters/``.

        ``AdapterSpec.from_yaml("llada")`` reads ``adapters/llada.yaml``.
        """
        path = Path(path_or_name)
        if not path.is_file():
            candidate = adapters_dir() / f"{path_or_name}.yaml"
            if candidate.is_file() and path.suffix not in (".yaml", ".yml"):
                path = candidate
            else:
                available = sorted(p.stem for p in adapters_dir().glob("*.yaml"))
                raise FileNotFoundError(
                    f"adapter spec '{path_or_name}' is neither a YAML file nor a name in "
                    f"{adapters_dir()} (available: {', '.join(available) or 'none'})"
                )
        data = load_yaml(path, what="adapter spec")
        data.setdefault("name", path.stem)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def load(cls, spec: AdapterSpec | str | Path | Mapping[str, Any]) -> AdapterSpec:
        """Accept a spec object, a YAML path, a bare name in ``adapters/`` or a mapping."""
        if isinstance(spec, AdapterSpec):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        if isinstance(spec, (str, Path)):
            return cls.from_yaml(spec)
        raise TypeError(
            f"adapter spec must be an AdapterSpec, a YAML path, a name or a mapping, "
            f"got {type(spec).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain (YAML-serialisable) dict."""
        data = dataclasses.asdict(self)
        data.pop("source", None)
        return data

    def with_overrides(self, overrides: Mapping[str, Any]) -> AdapterSpec:
        """A copy with fields replaced.

        Keys may be top-level (``kind``, ``max_length``), dotted (``"lora.r"``), section-prefixed
        (``lora_r``, ``head_scale``) or a field name unique across sections (``group_size``,
        ``mask_token_id``); ``insertion_schedule``/``unmasking_schedule`` are accepted too.
        """
        if not overrides:
            return self
        data = self.to_dict()
        sections = {
            f.name: typing.get_type_hints(AdapterSpec)[f.name]
            for f in dataclasses.fields(AdapterSpec)
            if f.init
        }
        aliases = {
            "insertion_schedule": "schedules.insertion",
            "unmasking_schedule": "schedules.unmasking",
        }
        for key, value in overrides.items():
            path = self._resolve_override_key(aliases.get(key, key), sections)
            target = data
            for part in path[:-1]:
                if target.get(part) is None:
                    raise ValueError(
                        f"override '{key}': section '{part}' is null in spec {self.source}; "
                        f"pass the whole section instead (e.g. {part}={{...}})"
                    )
                target = target[part]
            target[path[-1]] = value
        return AdapterSpec.from_dict(data, source=f"{self.source} + overrides {sorted(overrides)}")

    @staticmethod
    def _resolve_override_key(key: str, sections: dict[str, Any]) -> list[str]:
        """Map an override key to a path of field names (see :meth:`with_overrides`)."""
        if "." in key:
            return key.split(".")
        if key in sections:
            return [key]
        section_fields = {
            name: [f.name for f in dataclasses.fields(_section_class(annotation))]
            for name, annotation in sections.items()
            if _section_class(annotation) is not None
        }
        for section, names in section_fields.items():
            prefix = section + "_"
            if key.startswith(prefix) and key[len(prefix) :] in names:
                return [section, key[len(prefix) :]]
        matches = [section for section, names in section_fields.items() if key in names]
        if len(matches) == 1:
            return [matches[0], key]
        if len(matches) > 1:
            raise ValueError(f"override '{key}' is ambiguous ({matches}); use a dotted key")
        raise ValueError(
            f"unknown override '{key}'; use a top-level field ({', '.join(sections)}) or a dotted "
            f"key such as 'lora.r' / 'time_conditioning.group_size'"
        )

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> None:
        """Check values that types alone cannot (ranges, enumerations, consistency)."""
        where = f"{self.source}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: 'kind' must be one of {KINDS}, got {self.kind!r}")
        tc = self.time_conditioning
        if tc.group_size < 1:
            raise ValueError(
                f"{where}: 'time_conditioning.group_size' must be >= 1, got {tc.group_size}"
            )
        backbone_norms = self.backbone.conditionable_norms
        if sorted(tc.norms) != sorted(backbone_norms):
            raise ValueError(
                f"{where}: 'time_conditioning.norms' must list both {list(backbone_norms)} "
                f"(the backbone applies each block's (scale, shift) to both norms), got {tc.norms}"
            )
        if self.backbone.logit_shift not in LOGIT_SHIFTS:
            raise ValueError(
                f"{where}: 'backbone.logit_shift' must be 0 (LLaDA) or 1 (Dream), got "
                f"{self.backbone.logit_shift}"
            )
        if tc.embedding_dim is not None and tc.embedding_dim < 2:
            raise ValueError(f"{where}: 'time_conditioning.embedding_dim' must be >= 2 or null")
        if tc.mlp_ratio < 1 or tc.max_period <= 1 or tc.time_scale <= 0:
            raise ValueError(
                f"{where}: 'time_conditioning' needs mlp_ratio >= 1, max_period > 1, time_scale > 0"
            )
        if not self.head.scale > 0 or not self.head.init_gap > 0:
            raise ValueError(
                f"{where}: 'head.scale' and 'head.init_gap' must be > 0, got "
                f"scale={self.head.scale}, init_gap={self.head.init_gap}"
            )
        if self.lora is not None:
            if self.full_finetune:
                raise ValueError(
                    f"{where}: set either 'lora' or 'full_finetune: true', not both "
                    f"(use 'lora: null' with 'full_finetune: true' for full fine-tuning)"
                )
            if self.lora.r < 1 or self.lora.alpha <= 0 or not 0 <= self.lora.dropout < 1:
                raise ValueError(f"{where}: 'lora' needs r >= 1, alpha > 0, 0 <= dropout < 1")
            if not self.lora.target_modules:
                raise ValueError(f"{where}: 'lora.target_modules' must name at least one module")
        elif self.kind == "mdm" and not self.full_finetune:
            raise ValueError(
                f"{where}: kind 'mdm' with 'lora: null' and 'full_finetune: false' has nothing to "
                f"train; enable LoRA or full fine-tuning"
            )
        if self.max_length < 1:
            raise ValueError(f"{where}: 'max_length' must be >= 1, got {self.max_length}")
        for key in ("insertion", "unmasking"):
            value = getattr(self.schedules, key)
            try:
                _schedule_spec_string(value)
            except (ValueError, TypeError, KeyError) as error:
                raise ValueError(
                    f"{where}: 'schedules.{key}' = {value!r} is invalid: {error}"
                ) from error


def _section_class(annotation: Any) -> type | None:
    """The dataclass inside a (possibly optional) section annotation, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


# ----------------------------------------------------------------------------------------------
# RetrofitConfig: the resolved spec, stored as retrofit_config.json
# ----------------------------------------------------------------------------------------------


@dataclass
class RetrofitConfig:
    """Everything needed to rebuild a retrofitted model around its backbone weights.

    ``logit_shift`` is the backbone's logit alignment (``backbone.logit_shift`` of the spec; 0 for
    checkpoints written before it was recorded, which were all LLaDA). ``weights`` says where the
    backbone weights live: ``"adapter"`` = load ``base_model`` at
    ``base_revision`` and apply the peft adapter stored next to this file; ``"full"`` = the
    checkpoint directory itself holds complete backbone weights (full fine-tuning or a merged
    export, ``merged`` true for the latter). ``lora`` records the LoRA settings used in training.
    ``base_fingerprint`` identifies a local base directory (config + weight file sizes; None for
    Hub bases, which ``base_revision`` pins). ``prompt_layout`` records how the training data laid
    out prompts and infilling tasks (:class:`retrofit.prompt_layout.PromptLayout`; written by
    ``retrofit.train``, None = the defaults), so sampling and evaluation prompt the model exactly
    as it was trained. The special ids (mask, pad, eos, slot, bos, and the stop ids at which an
    answer ends) are resolved once at retrofit time (:mod:`retrofit.special_ids`); every reader
    takes them from here.
    """

    kind: str
    backbone_type: str
    base_model: str | None
    base_revision: str | None
    d_model: int
    n_layers: int
    vocab_size: int
    mask_token_id: int
    pad_token_id: int
    eos_token_id: int | None
    slot_token_id: int
    insertion_schedule: str
    unmasking_schedule: str
    head_scale: float
    head_init_gap: float
    group_size: int
    conditioned_norms: list[str]
    time_embedding_dim: int
    time_mlp_ratio: int
    time_max_period: float
    time_scale: float
    lora: dict | None
    full_finetune: bool
    max_length: int
    weights: str = "adapter"
    merged: bool = False
    spec_name: str | None = None
    base_fingerprint: str | None = None
    prompt_layout: dict | None = None
    bos_token_id: int | None = None
    stop_token_ids: list[int] | None = None
    logit_shift: int = 0
    head_length_posterior: bool = False
    retrofit_version: str = RETROFIT_VERSION
    format_version: int = CONFIG_FORMAT_VERSION

    FILE_NAME: typing.ClassVar[str] = CONFIG_FILE

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"retrofit config: 'kind' must be one of {KINDS}, got {self.kind!r}")
        if self.logit_shift not in LOGIT_SHIFTS:
            raise ValueError(
                f"retrofit config: 'logit_shift' must be one of {LOGIT_SHIFTS}, "
                f"got {self.logit_shift}"
            )
        if self.weights not in ("adapter", "full"):
            raise ValueError(
                f"retrofit config: 'weights' must be 'adapter' or 'full', got {self.weights!r}"
            )

    @property
    def hidden_size(self) -> int:
        """Backbone width (the name DeepSpeed/accelerate "auto" settings look up)."""
        return self.d_model

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        """Indented, key-sorted JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | Path) -> Path:
        """Write ``retrofit_config.json`` into ``directory``; returns the file path."""
        path = Path(directory) / self.FILE_NAME
        path.write_text(self.to_json_string(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> RetrofitConfig:
        """Strictly rebuild from a dict (unknown keys / wrong types raise, naming the key)."""
        fmt = data.get("format_version", CONFIG_FORMAT_VERSION)
        if isinstance(fmt, int) and fmt > CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"{source}: format_version {fmt} is newer than this retrofit supports "
                f"({CONFIG_FORMAT_VERSION}); upgrade flexmdm-retrofit"
            )
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
        ]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        return _strict(cls, data, source, CONFIG_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> RetrofitConfig:
        """Read ``retrofit_config.json`` from a checkpoint directory."""
        path = Path(directory) / cls.FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} is not a retrofit checkpoint: {cls.FILE_NAME} is missing "
                f"(save one with FlexMDM.save_pretrained)"
            )
        data = read_json_file(path, cls.FILE_NAME)
        if not isinstance(data, dict):
            raise ValueError(  # noqa: TRY004 - bad file content, not a bad argument
                f"{path}: {cls.FILE_NAME} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))
