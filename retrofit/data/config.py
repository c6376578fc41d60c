"""The data configuration: what data to read and how to turn it into examples."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from retrofit.prompt_layout import (
    DEFAULT_INFILL_MARKERS,
    DEFAULT_PSM_TEMPLATE,
    check_layout_fields,
)

KINDS = ("pretrain", "sft", "gsm8k", "infill")

# Hub id and config name used when `DataConfig.path` is None.
DEFAULT_HUB_DATASETS: dict[str, tuple[str | None, str | None]] = {
    "pretrain": ("Skylion007/openwebtext", None),
    "sft": (None, None),
    "gsm8k": ("openai/gsm8k", "main"),
    "infill": ("OpenCoder-LLM/opc-sft-stage2", "educational_instruct"),
}

# Role -> column name, per kind; `DataConfig.fields` overrides entries.
DEFAULT_FIELDS: dict[str, dict[str, str]] = {
    "pretrain": {"text": "text"},
    "sft": {"prompt": "prompt", "response": "response"},
    "gsm8k": {"question": "question", "answer": "answer"},
    "infill": {"instruction": "instruction", "output": "output"},
}
# Roles a user may set per kind ("messages" switches sft to a chat-messages column).
_ALLOWED_ROLES: dict[str, tuple[str, ...]] = {
    "pretrain": ("text",),
    "sft": ("prompt", "response", "messages"),
    "gsm8k": ("question", "answer"),
    "infill": ("instruction", "output", "prefix", "suffix"),
}


_SOURCES = ("auto", "hub", "json", "parquet", "text", "csv")
_POLICIES = ("skip", "truncate", "error")
# The keys of one source of ``DataConfig.mixture``.
MIXTURE_KEYS = ("path", "name", "revision", "split", "source", "fields", "text_sample_by", "weight")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"data.{name} must be one of {list(choices)}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"data.{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"data.{name} must be >= {minimum}, got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"data.{name} must be true or false, got {value!r}")


@dataclass
class DataConfig:
    """What data to read and how to turn it into training examples.

    A plain dataclass with defaults (the trainer's recipe config embeds it under ``data:``);
    ``__post_init__`` validates every field and raises ValueError/TypeError naming the option.

    Source:
        kind: "pretrain" | "sft" | "gsm8k" | "infill" (see the module docstring).
        path: Hub dataset id, or a local file / glob / directory. None: the kind's default Hub id
            (``DEFAULT_HUB_DATASETS``; ``sft`` has none and needs a path).
        name: Hub config name; None: the kind's default ("main" for gsm8k, "educational_instruct"
            for infill) when ``path`` is None or is the kind's default Hub id, else none.
        revision: Hub dataset revision (branch, tag or commit sha, e.g. "refs/convert/parquet" for
            the Hub's auto-converted Parquet files of a dataset that still has a loading script,
            which datasets >= 4 refuses to run); None: the default branch. Hub datasets only: an
            error with local files.
        source: "auto" (local when ``path`` exists or looks like a file pattern, the builder
            inferred from the extension; else Hub) | "hub" | "json" | "parquet" | "text" | "csv".
        split: dataset split.
        fields: role -> column overrides, e.g. ``{"question": "problem"}`` (``DEFAULT_FIELDS``).
        text_sample_by: for text files: "line" | "paragraph" | "document" (one record per ...).
        cache_dir: datasets cache directory (None: the datasets default).
        streaming: read as an ``IterableDataset`` (large corpora; no full download).
        max_records: use only the first N records (before shuffling/sharding); None: all.
        mixture: several sources read as one stream instead of ``path``: a list of mappings with
            ``path`` and ``weight`` (and optionally ``name``, ``revision``, ``split``,
            ``source``, ``fields``, ``text_sample_by``), interleaved record by record with
            ``datasets.interleave_datasets`` (seeded with ``seed``; every source is read to its
            end, the others cycle: "all_exhausted"). Resumable like one source.
        mixture_unit: what the weights are shares of: "tokens" (default: the chance of drawing a
            record of source i is weight_i / mean tokens per record of source i, measured once on
            its first ``mixture_probe`` records, so long arXiv papers are not over-represented) or
            "records".
        mixture_probe: records per source used to measure mean record lengths.
    Order:
        shuffle: reshuffle each epoch with ``seed + epoch``.
        seed: shuffle seed; also seeds infill span choice.
        shuffle_buffer: buffer size of the streaming shuffle.
        num_epochs: passes over the data; None: loop forever (the trainer stops by steps).
    Examples:
        max_length: maximum tokens per example (prompt included).
        on_bad_record: "skip" | "truncate" | "error" (see the module docstring).
        pack: pretrain only: pack documents into full rows (default False: one document per row).
        long_documents: pretrain, unpacked: "chunk" (all rows of a long document) | "truncate"
            (first row only).
        min_chunk_length: pretrain: drop rows shorter than this (counted); 1 keeps everything.
        chat_template: "auto" (use the tokenizer's chat template when it has one) | "always" |
            "never" (plain "User:/Assistant:" format).
        append_eos: append EOS to responses (sft/gsm8k), after the suffix (infill), and to each
            pretraining document. null (default) = true for the mdm objective and for packed rows,
            false for flexmdm: a FlexMDM models length by insertion and needs no end marker, and
            LLaDA's EOS id is also its pad id, which the FlexMDM sampler never emits.
        gsm8k_template: the GSM8K prompt/target template (``retrofit.prompts.GSM8K_TEMPLATES``:
            ``gsm8k_zero_shot``, or ``gsm8k_research``, the research code's); a benchmark spec
            evaluating the checkpoint must name the same (``prompt.template``).
        response_suffix: text appended to each response before EOS (sft/gsm8k/infill), e.g.
            "<|eot_id|>" to close the assistant turn the way LLaDA-8B-Instruct's chat format does.
    Infill:
        objective: "flexmdm" (markers layout, middle unprotected) | "mdm" (PSM prompt, middle as
            response). The trainer sets it from its own objective.
        infill_span: "lines" (cut at line boundaries; single-line outputs fall back to "chars") |
            "chars". Not used for records that carry their own split (``fields`` maps the roles
            ``prefix`` and ``suffix`` to columns: the output is then the middle, and prefix,
            suffix and instruction may be empty; an empty prefix and suffix is plain generation in
            the infilling layout).
        infill_markers: (start, end) boundary marker strings around the middle (flexmdm).
        add_marker_tokens: add missing markers to the tokenizer as special tokens (in place).
        infill_instruction: one instruction for every infill record instead of its own (the
            research MDM baseline trained with a fixed infill instruction); None keeps each
            record's.
        empty_instruction_rate: share of infill records trained with an empty instruction (the
            same wrapper around an empty user turn), chosen per record from its content hash. An
            evaluation without instruction (HumanEval infilling) prompts with exactly that layout,
            so it must be part of training: 0 leaves it out of distribution.
        psm_template: MDM baseline prompt; must contain {instruction}, {prefix} and {suffix}.
    """

    kind: str = "pretrain"
    path: str | None = None
    name: str | None = None
    revision: str | None = None
    source: str = "auto"
    split: str = "train"
    fields: dict[str, str] = field(default_factory=dict)
    text_sample_by: str = "line"
    cache_dir: str | None = None
    streaming: bool = False
    mixture: list[dict[str, Any]] | None = None
    mixture_unit: str = "tokens"
    mixture_probe: int = 256
    max_records: int | None = None
    shuffle: bool = True
    seed: int = 0
    shuffle_buffer: int = 10_000
    num_epochs: int | None = None
    max_length: int = 1024
    on_bad_record: str = "skip"
    pack: bool = False
    long_documents: str = "chunk"
    min_chunk_length: int = 1
    chat_template: str = "auto"
    append_eos: bool | None = None
    response_suffix: str = ""
    gsm8k_template: str = "gsm8k_zero_shot"
    objective: str = "flexmdm"
    infill_span: str = "lines"
    infill_markers: tuple[str, str] = DEFAULT_INFILL_MARKERS
    add_marker_tokens: bool = False
    empty_instruction_rate: float = 0.0
    infill_instruction: str | None = None
    psm_template: str = DEFAULT_PSM_TEMPLATE

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("source", self.source, _SOURCES)
        _check_choice("on_bad_record", self.on_bad_record, _POLICIES)
        _check_choice("text_sample_by", self.text_sample_by, ("line", "paragraph", "document"))
        _check_choice("long_documents", self.long_documents, ("chunk", "truncate"))
        _check_choice("objective", self.objective, ("flexmdm", "mdm"))
        _check_choice("infill_span", self.infill_span, ("lines", "chars"))
        for name in ("path", "name", "revision", "cache_dir"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(value)):
                raise TypeError(f"data.{name} must be a non-empty string or null, got {value!r}")
        if self.path is not None:
            self.path = os.fspath(self.path)
        if self.revision is not None and self.source not in ("auto", "hub"):
            raise ValueError(
                f"data.revision={self.revision!r} applies to Hub datasets only, but data.source is "
                f"{self.source!r} (local files); remove data.revision or set data.source: hub"
            )
        if not isinstance(self.split, str) or not self.split:
            raise TypeError(f"data.split must be a non-empty string, got {self.split!r}")
        for name in ("streaming", "shuffle", "pack", "add_marker_tokens"):
            _check_bool(name, getattr(self, name))
        if self.append_eos is not None:
            _check_bool("append_eos", self.append_eos)
        _check_int("max_length", self.max_length, 1)
        rate = self.empty_instruction_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"data.empty_instruction_rate must be a number in [0, 1], got {rate!r}")
        self.empty_instruction_rate = float(rate)
        if self.infill_instruction is not None and not isinstance(self.infill_instruction, str):
            raise TypeError(f"data.infill_instruction must be a string or null, got {self.infill_instruction!r}")
        _check_int("seed", self.seed, 0)
        _check_int("shuffle_buffer", self.shuffle_buffer, 1)
        _check_int("min_chunk_length", self.min_chunk_length, 1)
        _check_int("num_epochs", self.num_epochs, 1, allow_none=True)
        _check_int("max_records", self.max_records, 1, allow_none=True)
        if self.min_chunk_length > self.max_length:
            raise ValueError(
                f"data.min_chunk_length ({self.min_chunk_length}) exceeds data.max_length "
                f"({self.max_length})"
            )
        if not isinstance(self.fields, Mapping):
            raise TypeError(f"data.fields must be a mapping role -> column, got {self.fields!r}")
        allowed = _ALLOWED_ROLES[self.kind]
        for role, column in self.fields.items():
            if role not in allowed:
                raise ValueError(
                    f"data.fields has unknown role {role!r} for kind {self.kind!r}; "
                    f"allowed roles: {list(allowed)}"
                )
            if not isinstance(column, str) or not column:
                raise TypeError(f"data.fields.{role} must be a column name, got {column!r}")
        self.fields = dict(self.fields)
        if self.kind == "infill" and ("prefix" in self.fields) != ("suffix" in self.fields):
            raise ValueError(
                "data.fields: an infill record's own split needs both roles prefix and suffix "
                f"(got {sorted(self.fields)})"
            )
        self.infill_markers = check_layout_fields(
            self.chat_template, self.infill_markers, self.response_suffix, self.psm_template
        )
        self._check_mixture()
        from retrofit.prompts import GSM8K_TEMPLATES

        _check_choice("gsm8k_template", self.gsm8k_template, sorted(GSM8K_TEMPLATES))
        if self.pack and self.kind != "pretrain":
            raise ValueError("data.pack applies to kind 'pretrain' only; set pack: false")
        if self.path is None and self.mixture is None and DEFAULT_HUB_DATASETS[self.kind][0] is None:
            raise ValueError(
                f"data.path is required for kind {self.kind!r} (no default dataset): give a Hub "
                "dataset id or a local json/jsonl/parquet/text file"
            )

    def _check_mixture(self) -> None:
        """A mixture is a non-empty list of sources with a path and a positive weight."""
        _check_choice("mixture_unit", self.mixture_unit, ("tokens", "records"))
        _check_int("mixture_probe", self.mixture_probe, 1)
        if self.mixture is None:
            return
        if self.path is not None:
            raise ValueError("data.path and data.mixture are both set: list every source in mixture")
        if not isinstance(self.mixture, list) or not self.mixture:
            raise TypeError(f"data.mixture must be a non-empty list of sources, got {self.mixture!r}")
        for index, source in enumerate(self.mixture):
            where = f"data.mixture[{index}]"
            if not isinstance(source, Mapping):
                raise TypeError(f"{where} must be a mapping with path and weight, got {source!r}")
            unknown = sorted(set(source) - set(MIXTURE_KEYS))
            if unknown:
                raise ValueError(f"{where} has unknown keys {unknown}; allowed: {list(MIXTURE_KEYS)}")
            if not isinstance(source.get("path"), str) or not source["path"]:
                raise TypeError(f"{where}.path must be a Hub dataset id or a local file")
            weight = source.get("weight")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise ValueError(f"{where}.weight must be a positive number, got {weight!r}")
        self.mixture = [dict(source) for source in self.mixture]

    @property
    def resolved_append_eos(self) -> bool:
        """Whether examples end with EOS: ``append_eos``, or by default mdm / packed rows only."""
        if self.append_eos is not None:
            return self.append_eos
        return self.objective == "mdm" or self.pack

    @property
    def resolved_fields(self) -> dict[str, str]:
        """The kind's default role -> column map with the user's overrides applied."""
        return {**DEFAULT_FIELDS[self.kind], **self.fields}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
        """Build from a mapping (e.g. a YAML section), rejecting unknown keys with a clear error."""
        known = {item.name for item in dataclass_fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown data option(s) {unknown}; known options: {sorted(known)}")
        return cls(**dict(values))


