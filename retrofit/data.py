"""Data pipelines: datasets -> token ids -> batches with explicit lengths and protected prompts.

Three kinds of data (``DataConfig.kind``), all read with Hugging Face ``datasets`` (Hub ids by
default, local json/jsonl/parquet/text/csv files as an option, map-style or streaming) and
tokenised with the model's own tokenizer:

``pretrain``  (stage 1, web text; default Hub id ``Skylion007/openwebtext``)
    Each document is tokenised, EOS is appended and the ids are cut into rows of at most
    ``max_length`` tokens. Default (``pack=False``): **one document per row with its true
    length** -- FlexMDM learns lengths, so a row never mixes documents and is never padded inside
    its content; a long document yields several rows and its last, shorter row keeps its true
    length (``long_documents="truncate"`` keeps only the first row instead). ``pack=True``
    concatenates documents (EOS-separated) into full ``max_length`` rows, MDM pretraining style;
    the last row of an epoch keeps its true length. Nothing is protected.

``sft`` / ``gsm8k``  (stage 2, instruction tuning; GSM8K default Hub id ``openai/gsm8k``/``main``)
    A prompt and a response. The prompt goes through the tokenizer's chat template when it has one
    (LLaDA-8B-Instruct does), else the plain format ``"User: {prompt}\\nAssistant: "`` (after BOS
    when the tokenizer has one). Row = prompt ids + response ids (+ EOS); the prompt ids are
    ``protected`` (never noised, never part of the loss). ``gsm8k`` builds the prompt with
    ``format_gsm8k_prompt(question)`` (zero-shot step-by-step reasoning, ``\\boxed{}`` answer) and
    the target with ``format_gsm8k_target(answer)`` from ``retrofit.prompts`` so that
    training and evaluation share one template. ``sft`` reads ``prompt``/``response`` columns or
    a chat ``messages`` column (set ``fields={"messages": "messages"}``).

``infill``  (stage 2, code infilling; default ``OpenCoder-LLM/opc-sft-stage2``/``educational_instruct``)
    From an instruction/output pair, a random middle span of the output is chosen (seeded per
    record from a hash of its content, the seed and the epoch, so both arms of a comparison, every
    rank and every resumed run see the same span; ``infill_span="lines"`` cuts at line boundaries,
    ``"chars"`` anywhere). Two layouts, picked by ``objective``:

    - ``"flexmdm"``: ``prompt(instruction) + prefix + START + middle + END + suffix (+ EOS)``,
      everything but the middle protected: the model grows the middle between the markers.
    - ``"mdm"`` (the LLaDA baseline, PSM style): the prompt is the instruction followed by
      ``<prefix>{prefix}</prefix><suffix>{suffix}</suffix>`` (``psm_template``), and the middle
      (+ EOS) is the response.

    Markers (``infill_markers``) are plain strings. Decision: by default they are encoded as
    ordinary text (usually several tokens): they are protected, so they are never generated, and
    their embeddings are already trained -- LoRA does not train the embedding matrix, so a new
    special token would keep an untrained embedding. A marker that is already a single token in
    the vocabulary stays one token. ``add_marker_tokens=True`` adds missing markers to the
    tokenizer as special tokens (in place; the model's embedding must have room for the new ids).

Special tokens: record text is *content* and is encoded with special-token strings as plain text
(``encode_text``), so a literal ``"<|mdm_mask|>"`` or ``"<|endoftext|>"`` in a document, response
or infill prefix/middle/suffix never becomes the mask or EOS id. Special tokens are parsed only in
markup: a chat-template rendering of the prompt, the infill markers, ``response_suffix`` and the
literal text of ``PLAIN_PROMPT_TEMPLATE`` / ``psm_template``. A chat rendering embeds the user's
text, so a mask-token string there would still become the mask id: such records are skipped
(``mask_token_in_prompt``), and no row ever holds the mask id as a clean token
(``mask_token_in_content`` for a mask token the tokenizer does not mark as special).

Bad records are handled by ``on_bad_record`` (``skip`` | ``truncate`` | ``error``) and counted in
``DataStats`` (``stream.stats.summary()``):

- missing field / wrong type / empty text: skipped (``error``: raise);
- the mask id among the clean tokens (``mask_token_in_prompt`` / ``mask_token_in_content``):
  skipped (``error``: raise);
- prompt that leaves no room for a response within ``max_length``: always skipped (``error``: raise);
- too long: ``truncate`` cuts the response (sft/gsm8k; the EOS may be cut too) or the suffix
  (infill; in the MDM PSM prompt the suffix is shortened by characters, never inside a
  multi-byte character) and counts it in ``truncated``; ``skip`` skips it; ``error`` raises.
  Pretraining documents are chunked, never "too long".

A stream warns once (``warnings.warn``) when more than half of the first 1,000+ records it read
were skipped, which usually means wrong ``fields`` or a too small ``max_length``.

Positions: ``build_dataset`` returns an ``ExampleStream`` that loops over epochs (reshuffled with
``seed + epoch``) and exposes ``state_dict()``/``load_state_dict()``: a resumed run continues with
exactly the next example. ``BatchIterator`` groups examples into ``Batch`` es through a
``Collator``, optionally sorting by length within a window of batches (dynamic-length batches),
and is resumable the same way. Each data-parallel rank has its own stream and its own state (save
one state per rank). Iterate in the training process itself (not in ``DataLoader`` workers, whose
copies of the position would be lost); tokenisation costs ~1 ms per record on one core.

Typical use in a training loop::

    ids = resolve_special_ids(tokenizer, model.config)
    stream = build_dataset(cfg.data, tokenizer, rank=rank, world_size=world_size, eos_token_id=ids.eos)
    collator = Collator(ids.pad, eos_token_id=ids.eos, objective="flexmdm", max_length=cfg.data.max_length)
    batches = BatchIterator(stream, collator, micro_batch_size, bucket_batches=8, seed=cfg.data.seed)
    for batch in batches:          # Batch(input_ids (B, L), lengths (B,), protected, response_mask)
        batch = batch.to(device)

Examples are dicts: ``input_ids: list[int]``, ``protected: list[bool]`` (same length),
``length: int``, ``prompt_length: int`` and, for infill, ``middle_start``/``middle_end`` (token
positions of the middle, ``input_ids[middle_start:middle_end]``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
import random
import re
import string
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

import torch

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_HUB_DATASETS",
    "DEFAULT_INFILL_MARKERS",
    "DEFAULT_PSM_TEMPLATE",
    "KINDS",
    "PLAIN_PROMPT_TEMPLATE",
    "BadRecordError",
    "Batch",
    "BatchIterator",
    "Collator",
    "DataConfig",
    "DataStats",
    "ExampleStream",
    "PromptLayout",
    "build_dataset",
    "build_infill_example",
    "choose_infill_span",
    "encode_generation_inputs",
    "encode_infill_prompt",
    "encode_prompt",
    "encode_text",
    "load_records",
    "resolve_mask_token_id",
]

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
    "infill": ("instruction", "output"),
}

DEFAULT_INFILL_MARKERS: tuple[str, str] = ("<|fim_middle_start|>", "<|fim_middle_end|>")
DEFAULT_PSM_TEMPLATE = "{instruction}\n<prefix>{prefix}</prefix><suffix>{suffix}</suffix>"
PLAIN_PROMPT_TEMPLATE = "User: {prompt}\nAssistant: "

_SOURCES = ("auto", "hub", "json", "parquet", "text", "csv")
_EXTENSION_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_POLICIES = ("skip", "truncate", "error")
_STATE_VERSION = 1


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
        response_suffix: text appended to each response before EOS (sft/gsm8k/infill), e.g.
            "<|eot_id|>" to close the assistant turn the way LLaDA-8B-Instruct's chat format does.
    Infill:
        objective: "flexmdm" (markers layout, middle unprotected) | "mdm" (PSM prompt, middle as
            response). The trainer sets it from its own objective.
        infill_span: "lines" (cut at line boundaries; single-line outputs fall back to "chars") |
            "chars".
        infill_markers: (start, end) boundary marker strings around the middle (flexmdm).
        add_marker_tokens: add missing markers to the tokenizer as special tokens (in place).
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
    objective: str = "flexmdm"
    infill_span: str = "lines"
    infill_markers: tuple[str, str] = DEFAULT_INFILL_MARKERS
    add_marker_tokens: bool = False
    psm_template: str = DEFAULT_PSM_TEMPLATE

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("source", self.source, _SOURCES)
        _check_choice("on_bad_record", self.on_bad_record, _POLICIES)
        _check_choice("text_sample_by", self.text_sample_by, ("line", "paragraph", "document"))
        _check_choice("long_documents", self.long_documents, ("chunk", "truncate"))
        _check_choice("chat_template", self.chat_template, ("auto", "always", "never"))
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
        if isinstance(self.infill_markers, list):
            self.infill_markers = tuple(self.infill_markers)
        if (
            not isinstance(self.infill_markers, tuple)
            or len(self.infill_markers) != 2
            or not all(isinstance(marker, str) for marker in self.infill_markers)
        ):
            raise TypeError(
                "data.infill_markers must be two strings [start, end] (\"\" for no marker), got "
                f"{self.infill_markers!r}"
            )
        if not isinstance(self.response_suffix, str):
            raise TypeError(f"data.response_suffix must be a string, got {self.response_suffix!r}")
        if not isinstance(self.psm_template, str):
            raise TypeError(f"data.psm_template must be a string, got {self.psm_template!r}")
        for placeholder in ("{instruction}", "{prefix}", "{suffix}"):
            if placeholder not in self.psm_template:
                raise ValueError(f"data.psm_template must contain {placeholder}")
        if self.pack and self.kind != "pretrain":
            raise ValueError("data.pack applies to kind 'pretrain' only; set pack: false")
        if self.path is None and DEFAULT_HUB_DATASETS[self.kind][0] is None:
            raise ValueError(
                f"data.path is required for kind {self.kind!r} (no default dataset): give a Hub "
                "dataset id or a local json/jsonl/parquet/text file"
            )

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


# --------------------------------------------------------------------------------------------
# Statistics and bad records
# --------------------------------------------------------------------------------------------


class BadRecordError(ValueError):
    """A record could not be turned into an example and `on_bad_record` is "error"."""


@dataclass
class DataStats:
    """Counters of what the pipeline did with the records it read (kept in the stream state).

    seen: records read; kept: records that produced at least one example; skipped: reason ->
    count; truncated: records shortened to fit max_length; examples: rows produced;
    tokens: total tokens in produced rows; chunked: pretraining documents split into several rows.
    """

    seen: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    examples: int = 0
    tokens: int = 0
    chunked: int = 0

    def skip(self, reason: str) -> None:
        """Count one skipped record under `reason`."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for logs, e.g. 'data: seen 100, kept 97, skipped 3 (empty: 2, too_long: 1), ...'."""
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
        skipped = f"skipped {self.num_skipped}" + (f" ({reasons})" if reasons else "")
        return (
            f"data: seen {self.seen}, kept {self.kept}, {skipped}, truncated {self.truncated}, "
            f"chunked {self.chunked}, examples {self.examples}, tokens {self.tokens}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "truncated": self.truncated,
            "examples": self.examples,
            "tokens": self.tokens,
            "chunked": self.chunked,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.kept = int(state["kept"])
        self.skipped = {str(key): int(value) for key, value in state["skipped"].items()}
        self.truncated = int(state["truncated"])
        self.examples = int(state["examples"])
        self.tokens = int(state["tokens"])
        self.chunked = int(state.get("chunked", 0))


class _Skip(Exception):
    """Internal: the current record is skipped for `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------
# Loading records
# --------------------------------------------------------------------------------------------


def _local_builder(path: str) -> str | None:
    """The `datasets` builder for a local file path/glob from its extension, or None."""
    lowered = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        lowered = lowered.removesuffix(suffix)
    return _EXTENSION_BUILDERS.get(os.path.splitext(lowered)[1])


def _is_connection_error(exc: BaseException) -> bool:
    """True for the errors `datasets`/`huggingface_hub` raise when the Hub cannot be reached."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        name = type(exc).__name__
        if any(word in name for word in ("Connect", "Timeout", "Offline", "LocalEntryNotFound")):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def load_records(cfg: DataConfig) -> Any:
    """Load the raw records (no shuffling, sharding or tokenisation).

    Hub datasets: the config name is ``cfg.name``; when it is None and the dataset is the kind's
    default Hub id (``path`` None or equal to it, e.g. ``openai/gsm8k``), the kind's default config
    (``DEFAULT_HUB_DATASETS``, "main" for GSM8K) is used, since multi-config datasets cannot be
    loaded without one. ``cfg.revision`` is passed to ``load_dataset(..., revision=...)``.

    Returns:
        A ``datasets.Dataset`` (or ``datasets.IterableDataset`` with ``cfg.streaming``), limited to
        the first ``cfg.max_records`` records.

    Raises:
        FileNotFoundError: a local source whose file does not exist.
        ValueError: ``cfg.revision`` with local files.
        ConnectionError: the Hub cannot be reached (the message says how to use local files via
            ``data.path``).
    """
    import datasets

    default_path, default_name = DEFAULT_HUB_DATASETS[cfg.kind]
    path = cfg.path if cfg.path is not None else default_path
    name = cfg.name
    assert path is not None  # DataConfig guarantees a path or a default

    builder: str | None
    if cfg.source == "hub":
        builder = None
    elif cfg.source != "auto":
        builder = cfg.source
    else:
        looks_local = (
            os.path.exists(path)
            or path.startswith((".", "/", "~"))
            or any(char in path for char in "*?[")
            or _local_builder(path) is not None
        )
        if os.path.isdir(path):
            builder = None  # a local dataset folder: let `datasets` infer its format
        elif looks_local:
            builder = _local_builder(path)
            if builder is None:
                raise ValueError(
                    f"cannot infer the file format of data.path={path!r} from its extension; set "
                    "data.source to one of json, parquet, text, csv"
                )
        else:
            builder = None
    is_local = builder is not None or os.path.isdir(os.path.expanduser(path))
    if cfg.revision is not None and is_local:
        raise ValueError(
            f"data.revision={cfg.revision!r} applies to Hub datasets only, but data.path={path!r} "
            "is local; remove data.revision"
        )
    if (
        not is_local
        and name is None
        and default_path is not None
        and path.lower() == default_path.lower()
    ):
        name = default_name  # e.g. openai/gsm8k has configs "main" and "socratic"

    kwargs: dict[str, Any] = {"split": cfg.split, "streaming": cfg.streaming}
    if cfg.cache_dir is not None:
        kwargs["cache_dir"] = cfg.cache_dir
    if builder is not None:
        expanded = os.path.expanduser(path)
        if not any(char in expanded for char in "*?[") and not os.path.exists(expanded):
            raise FileNotFoundError(
                f"data.path={path!r} does not exist (source {builder!r}); give an existing file "
                "or a Hub dataset id"
            )
        if builder == "text":
            kwargs["sample_by"] = cfg.text_sample_by
        try:
            records = datasets.load_dataset(builder, data_files={cfg.split: expanded}, **kwargs)
        except Exception as exc:
            if hasattr(exc, "add_note"):  # say which option pointed at the unreadable file
                exc.add_note(f"while reading data.path={path!r} as {builder!r} files")
            raise
    else:
        if name is not None:
            kwargs["name"] = name
        if cfg.revision is not None:
            kwargs["revision"] = cfg.revision
        try:
            records = datasets.load_dataset(path, **kwargs)
        except Exception as exc:
            if _is_connection_error(exc):
                raise ConnectionError(
                    f"could not reach the Hugging Face Hub for dataset {path!r}"
                    + (f" (config {name!r})" if name else "")
                    + (f" (revision {cfg.revision!r})" if cfg.revision else "")
                    + f": {exc}. Offline, point data.path at local files (json/jsonl/parquet/"
                    "text), e.g. data.path=/data/gsm8k/train.jsonl, or pre-download the dataset "
                    "into the datasets cache."
                ) from exc
            raise
    if cfg.max_records is not None:
        # The first N records of the whole dataset; `ExampleStream` splits them between ranks by
        # example (a `take` inside `split_dataset_by_node` would take N / world_size per shard).
        if cfg.streaming:
            records = records.take(cfg.max_records)
        else:
            records = records.select(range(min(cfg.max_records, len(records))))
    return records


# --------------------------------------------------------------------------------------------
# Prompt layout: how training laid out prompts, recorded in checkpoints for sampling / evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLayout:
    """The part of a ``DataConfig`` that decides how a prompt (and an infilling task) is laid out.

    The trainer records it in the checkpoint (``retrofit_config.json``'s ``prompt_layout``), so
    ``retrofit generate`` and ``retrofit eval`` encode prompts exactly as the model saw them in
    training. ``append_eos`` is resolved (``DataConfig.resolved_append_eos``).
    """

    chat_template: str = "auto"
    append_eos: bool = False
    response_suffix: str = ""
    infill_markers: tuple[str, str] = DEFAULT_INFILL_MARKERS
    psm_template: str = DEFAULT_PSM_TEMPLATE

    @classmethod
    def from_data_config(cls, cfg: DataConfig) -> PromptLayout:
        """The layout a ``DataConfig`` trains with (its ``objective`` decides ``append_eos``)."""
        return cls(
            chat_template=cfg.chat_template,
            append_eos=cfg.resolved_append_eos,
            response_suffix=cfg.response_suffix,
            infill_markers=tuple(cfg.infill_markers),
            psm_template=cfg.psm_template,
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, **overrides: Any) -> PromptLayout:
        """From a checkpoint record (None: the defaults); ``overrides`` that are not None win."""
        values = dict(values or {})
        known = {item.name for item in dataclass_fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"prompt_layout has unknown keys {unknown}; known: {sorted(known)}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        if "infill_markers" in values:
            values["infill_markers"] = tuple(values["infill_markers"])
        layout = cls(**values)
        # The same checks as the training config (choices, markers, the PSM placeholders).
        DataConfig(
            kind="infill", path="-", chat_template=layout.chat_template,
            append_eos=layout.append_eos, response_suffix=layout.response_suffix,
            infill_markers=layout.infill_markers, psm_template=layout.psm_template,
        )  # fmt: skip
        return layout

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (markers as a list)."""
        return {
            "chat_template": self.chat_template,
            "append_eos": self.append_eos,
            "response_suffix": self.response_suffix,
            "infill_markers": list(self.infill_markers),
            "psm_template": self.psm_template,
        }


# --------------------------------------------------------------------------------------------
# Tokenisation helpers (shared with sampling / evaluation)
# --------------------------------------------------------------------------------------------


# A piece of text to encode: (text, is_template). Template text may contain special-token strings
# that are meant as special tokens (chat/infill markup); content text never does (see encode_text).
_Piece = tuple[str, bool]


def encode_text(tokenizer: Any, text: str, *, parse_special_tokens: bool = False) -> list[int]:
    """Token ids of `text` without any special tokens added (BOS/EOS are added explicitly).

    By default `text` is *content* (a document, a response, an infill prefix/middle/suffix, a
    user prompt): special-token strings inside it are encoded as ordinary text
    (``split_special_tokens=True``), so a literal ``"<|mdm_mask|>"`` or ``"<|endoftext|>"`` in a
    web page never becomes the mask or EOS id. ``parse_special_tokens=True`` is for *markup*
    written by this project or its config (a chat-template rendering, infill markers,
    ``response_suffix``), where such strings are meant as the special tokens.

    Added tokens that are not special (``tokenizer.add_tokens(..., special_tokens=False)``) are
    always matched: the tokenizer treats them as ordinary vocabulary.
    """
    if not text:
        return []
    try:
        encoded = tokenizer(
            text,
            add_special_tokens=False,
            split_special_tokens=not parse_special_tokens,
            verbose=False,
        )
    except Exception as error:  # e.g. a word-level vocabulary without an unknown token
        raise ValueError(
            f"the tokenizer cannot encode {text[:60]!r} ({type(error).__name__}: {error})"
        ) from error
    return list(encoded["input_ids"])


def _special_token_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex matching the tokenizer's special added tokens (longest first), or None."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special = {str(token) for token in decoder.values() if getattr(token, "special", False)}
    tokens = sorted((token for token in special if token), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def _encode_pieces(tokenizer: Any, pieces: Sequence[_Piece]) -> list[int]:
    """Encode concatenated pieces: special tokens are parsed in template pieces only.

    The text is cut at the special-token strings of the template pieces (each becomes its id) and
    every stretch between them -- template and content text together -- is encoded as content.
    The tokenizer itself cuts its input at special tokens before the sub-word model runs, so the
    ids equal ``encode_text(..., parse_special_tokens=True)`` of the joined text whenever the
    content holds no special-token string (special tokens with ``lstrip``/``rstrip`` set aside).
    """
    pattern = _special_token_pattern(tokenizer)
    ids: list[int] = []
    stretch: list[str] = []
    for text, is_template in pieces:
        if not is_template or pattern is None:
            stretch.append(text)
            continue
        position = 0
        for match in pattern.finditer(text):
            stretch.append(text[position : match.start()])
            ids += encode_text(tokenizer, "".join(stretch))
            ids.append(int(tokenizer.convert_tokens_to_ids(match.group())))
            stretch = []
            position = match.end()
        stretch.append(text[position:])
    return ids + encode_text(tokenizer, "".join(stretch))


def _format_pieces(template: str, **values: str | Sequence[_Piece]) -> list[_Piece]:
    """``template.format(**values)`` as pieces: literal template text vs the inserted values.

    A string value is content; a value that is already a list of pieces is inserted as is.
    """
    pieces: list[_Piece] = []
    for literal, field_name, format_spec, conversion in string.Formatter().parse(template):
        if literal:
            pieces.append((literal, True))
        if field_name is None:
            continue
        if field_name not in values:
            raise ValueError(
                f"template {template!r} has an unknown placeholder {{{field_name}}}; known: "
                + ", ".join(f"{{{key}}}" for key in values)
            )
        value = values[field_name]
        if isinstance(value, str):
            spec = f"!{conversion}" if conversion else ""
            spec += f":{format_spec}" if format_spec else ""
            pieces.append((("{0" + spec + "}").format(value), False))
        else:
            pieces.extend(value)
    return pieces


def resolve_mask_token_id(tokenizer: Any, mask_token_id: int | None = None) -> int | None:
    """The mask id the data must never contain: `mask_token_id` > ``tokenizer.mask_token_id`` >
    a known mask string in the vocabulary (LLaDA: ``"<|mdm_mask|>"`` = 126336, which its
    tokenizer does not declare); None when none is known (then nothing is checked)."""
    if mask_token_id is not None:
        return int(mask_token_id)
    mask = getattr(tokenizer, "mask_token_id", None)
    if mask is not None:
        return int(mask)
    from retrofit.tokenization import KNOWN_MASK_TOKENS

    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for token in KNOWN_MASK_TOKENS:
        if token in vocab:
            return int(vocab[token])
    return None


def _use_chat_template(tokenizer: Any, mode: str | bool | None) -> bool:
    """Whether prompts go through the tokenizer's chat template ("auto": when it has one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode in ("auto", None):
        return has_template
    if mode in ("always", True):
        if not has_template:
            raise ValueError(
                "data.chat_template='always' but the tokenizer has no chat template; use 'auto' "
                "or 'never', or set tokenizer.chat_template"
            )
        return True
    return False


def _plain_prompt_ids(
    tokenizer: Any, messages: Sequence[tuple[str, Sequence[_Piece]]]
) -> list[int]:
    """BOS + ``PLAIN_PROMPT_TEMPLATE`` per user/system message, assistant contents + newline."""
    if messages and messages[-1][0] != "user":
        raise ValueError("the last prompt message must be a user message")
    pieces: list[_Piece] = []
    for role, content in messages:
        if role in ("user", "system"):
            pieces += _format_pieces(PLAIN_PROMPT_TEMPLATE, prompt=content)
        else:
            pieces += [*content, ("\n", True)]
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    return bos + _encode_pieces(tokenizer, pieces)


def encode_prompt(
    tokenizer: Any,
    prompt: str | Sequence[Mapping[str, str]],
    *,
    chat_template: str | bool | None = "auto",
) -> list[int]:
    """Token ids of a user prompt, ready for the answer to follow (generation prompt included).

    With a chat template: ``apply_chat_template(messages, add_generation_prompt=True)`` (the
    template adds BOS itself), encoded with special tokens parsed -- the template's own markup
    needs it, and the user content embedded in the rendering is parsed too, so a mask-token string
    in a prompt becomes the mask id: training skips such records (``mask_token_in_prompt``) and
    ``encode_generation_inputs`` refuses them. Without: BOS (if the tokenizer has one) +
    ``PLAIN_PROMPT_TEMPLATE.format(prompt=...)``, the contents encoded as plain text. Used by the
    SFT pipelines and by samplers / evaluators that must prompt exactly as in training.

    Args:
        tokenizer: the model's tokenizer.
        prompt: the user text, or a list of chat messages ({"role", "content"}).
        chat_template: "auto" | "always" | "never" (or True/False/None).
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if _use_chat_template(tokenizer, chat_template):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return encode_text(tokenizer, text, parse_special_tokens=True)
    return _plain_prompt_ids(
        tokenizer, [(message["role"], [(message["content"], False)]) for message in messages]
    )


def choose_infill_span(text: str, rng: random.Random, *, mode: str = "lines") -> tuple[int, int]:
    """Pick a non-empty middle span ``text[start:end]`` uniformly at random.

    "lines": start and end fall on line boundaries (the middle is whole lines, one or more);
    texts with a single line fall back to "chars". "chars": any 0 <= start < end <= len(text).
    """
    if not text:
        raise ValueError("cannot choose an infill span in an empty text")
    if mode == "lines":
        lines = text.splitlines(keepends=True)
        if len(lines) >= 2:
            offsets = [0, *itertools.accumulate(len(line) for line in lines)]
            first = rng.randrange(len(lines))
            last = rng.randint(first + 1, len(lines))
            return offsets[first], offsets[last]
    elif mode != "chars":
        raise ValueError(f"infill span mode must be 'lines' or 'chars', got {mode!r}")
    start = rng.randrange(len(text))
    end = rng.randint(start + 1, len(text))
    return start, end


def build_infill_example(
    tokenizer: Any,
    instruction: str,
    prefix: str,
    middle: str,
    suffix: str,
    *,
    objective: str = "flexmdm",
    markers: Sequence[str] = DEFAULT_INFILL_MARKERS,
    psm_template: str = DEFAULT_PSM_TEMPLATE,
    chat_template: str | bool | None = "auto",
    eos_token_id: int | None = None,
    response_suffix: str = "",
) -> dict[str, Any]:
    """Token layout of one infilling example (training, or evaluation with ``middle=""``).

    flexmdm: ``prompt(instruction) + prefix + START + middle + END + suffix (+ EOS)``; everything
        but the middle is protected. ``middle_start``/``middle_end`` give the middle's token span;
        with an empty middle they coincide at the slot where a sampler inserts.
    mdm (PSM): ``prompt(psm_template(instruction, prefix, suffix)) + middle (+ response_suffix)
        (+ EOS)``; the prompt is protected and the middle is the response
        (``middle_start = prompt_length``).

    Pieces are tokenised separately and concatenated, so the decoded middle is exactly `middle`.
    `prefix`, `middle` and `suffix` are content: special-token strings in them are plain text
    (``encode_text``). Markers and `response_suffix` are markup: encoded with special tokens
    parsed, so a marker is a single token when it is one of the tokenizer (see
    ``retrofit.tokenization.add_special_tokens``) and several ordinary tokens otherwise. The PSM
    prompt follows ``encode_prompt``: with a chat template the whole rendering is parsed (the
    training pipeline then skips a prompt holding the mask id); without one only the
    ``psm_template``'s own text is parsed.

    Returns:
        An example dict: input_ids, protected, length, prompt_length, middle_start, middle_end.
    """
    if objective not in ("flexmdm", "mdm"):
        raise ValueError(f"objective must be 'flexmdm' or 'mdm', got {objective!r}")
    eos = [eos_token_id] if eos_token_id is not None else []
    if objective == "mdm":
        pieces = _format_pieces(psm_template, instruction=instruction, prefix=prefix, suffix=suffix)
        if _use_chat_template(tokenizer, chat_template):
            text = "".join(text for text, _ in pieces)
            prompt_ids = encode_prompt(tokenizer, text, chat_template=chat_template)
        else:
            prompt_ids = _plain_prompt_ids(tokenizer, [("user", pieces)])
        middle_ids = encode_text(tokenizer, middle)
        response = middle_ids + encode_text(tokenizer, response_suffix, parse_special_tokens=True)
        response += eos
        example = _example(
            prompt_ids + response,
            [True] * len(prompt_ids) + [False] * len(response),
            len(prompt_ids),
        )
        example["middle_start"] = len(prompt_ids)
        example["middle_end"] = len(prompt_ids) + len(middle_ids)
        return example
    start_marker, end_marker = markers
    # No instruction (e.g. HumanEval infilling): no chat turn around nothing, but the row still
    # starts with BOS (when the tokenizer has one), as every training row and the PSM prompt do.
    if instruction:
        prompt_ids = encode_prompt(tokenizer, instruction, chat_template=chat_template)
    else:
        bos = getattr(tokenizer, "bos_token_id", None)
        prompt_ids = [bos] if bos is not None else []
    left = (
        prompt_ids
        + encode_text(tokenizer, prefix)
        + encode_text(tokenizer, start_marker, parse_special_tokens=True)
    )
    middle_ids = encode_text(tokenizer, middle)
    right = (
        encode_text(tokenizer, end_marker, parse_special_tokens=True)
        + encode_text(tokenizer, suffix)
        + encode_text(tokenizer, response_suffix, parse_special_tokens=True)
        + eos
    )
    example = _example(
        left + middle_ids + right,
        [True] * len(left) + [False] * len(middle_ids) + [True] * len(right),
        len(prompt_ids),
    )
    example["middle_start"] = len(left)
    example["middle_end"] = len(left) + len(middle_ids)
    return example


def encode_infill_prompt(
    tokenizer: Any,
    instruction: str,
    prefix: str,
    suffix: str,
    *,
    objective: str = "flexmdm",
    layout: PromptLayout | None = None,
    eos_token_id: int | None = None,
) -> tuple[list[int], list[int]]:
    """Sampler inputs for infilling in exactly the training layout of :func:`build_infill_example`.

    ``layout``: the checkpoint's :class:`PromptLayout` (default: the training defaults);
    ``eos_token_id`` is appended after the suffix only when ``layout.append_eos`` (training did).
    Returns ``(left, right)`` token ids: for ``flexmdm`` the sampler inserts the middle between them
    (``right`` = END marker + suffix (+ response suffix) (+ EOS)); for ``mdm`` ``left`` is the PSM
    prompt the baseline generates after, and ``right`` is empty.
    """
    layout = layout or PromptLayout()
    example = build_infill_example(
        tokenizer, instruction, prefix, "", suffix, objective=objective,
        markers=layout.infill_markers, psm_template=layout.psm_template,
        chat_template=layout.chat_template,
        eos_token_id=eos_token_id if layout.append_eos else None,
        response_suffix=layout.response_suffix,
    )
    ids, cut = example["input_ids"], example["middle_start"]
    return ids[:cut], (ids[cut:] if objective == "flexmdm" else [])


def encode_generation_inputs(
    tokenizer: Any,
    tasks: Sequence[tuple[str | None, str | None, str | None]],
    *,
    objective: str,
    layout: PromptLayout | None = None,
    eos_token_id: int | None = None,
    mask_token_id: int | None = None,
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Sampler inputs for a list of ``(prompt, prefix, suffix)`` tasks in the training layout.

    Plain tasks (``prefix is None``): ``encode_prompt(prompt)``, no suffixes. Infilling tasks
    (``prefix`` and ``suffix`` given, ``prompt`` an optional instruction): :func:`encode_infill_prompt`;
    the suffixes are returned for the FlexMDM sampler (None for the MDM baseline, which generates
    after the PSM prompt). All tasks of one call must be of one kind. Texts are encoded exactly as
    in training: prompts, prefixes and suffixes are content (special-token strings are plain text)
    except inside a chat-template rendering.

    Raises:
        ValueError: a task's ids contain the mask id (``mask_token_id``, default
            :func:`resolve_mask_token_id`), e.g. a literal mask-token string in a chat-templated
            prompt: the sampler would take it for a position to fill (training skips such
            records as ``mask_token_in_prompt``).
    """
    layout = layout or PromptLayout()
    infill = {prefix is not None for _, prefix, _ in tasks}
    if len(infill) > 1:
        raise ValueError("mix of infilling and plain prompts: encode them in separate calls")
    if not infill or not infill.pop():
        lefts = [encode_prompt(tokenizer, prompt or "", chat_template=layout.chat_template)
                 for prompt, _, _ in tasks]
        rights = None
    else:
        pairs = [
            encode_infill_prompt(tokenizer, prompt or "", prefix, suffix or "",
                                 objective=objective, layout=layout, eos_token_id=eos_token_id)
            for prompt, prefix, suffix in tasks
        ]
        lefts = [left for left, _ in pairs]
        rights = None if objective == "mdm" else [right for _, right in pairs]
    mask = resolve_mask_token_id(tokenizer, mask_token_id)
    if mask is not None:
        for index, left in enumerate(lefts):
            if mask in left or (rights is not None and mask in rights[index]):
                raise ValueError(
                    f"task {index} encodes to the mask token id {mask}: its prompt holds the mask "
                    f"token string {tokenizer.convert_ids_to_tokens(mask)!r}, which the chat "
                    "template renders as the mask token (or the layout's infill_markers / "
                    "response_suffix do); remove it"
                )
    return lefts, rights


# --------------------------------------------------------------------------------------------
# Record -> examples
# --------------------------------------------------------------------------------------------


def _gsm8k_templates() -> tuple[Callable[[str], str], Callable[[str], str]]:
    """The GSM8K prompt/target formatters shared with the GSM8K evaluation."""
    from retrofit.prompts import format_gsm8k_prompt, format_gsm8k_target

    return format_gsm8k_prompt, format_gsm8k_target


class _RecordProcessor:
    """Turns one raw record into zero or more examples, applying the bad-record policy."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Any,
        eos_token_id: int | None,
        mask_token_id: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.fields = cfg.resolved_fields
        self.mask_id = resolve_mask_token_id(tokenizer, mask_token_id)
        append_eos = cfg.resolved_append_eos
        self.eos = [eos_token_id] if append_eos and eos_token_id is not None else []
        if append_eos and eos_token_id is None:
            raise ValueError(
                "data.append_eos is true but no EOS id is known: give the tokenizer an eos_token "
                "or pass special_ids, or set data.append_eos: false"
            )
        self.response_suffix = encode_text(
            tokenizer, cfg.response_suffix, parse_special_tokens=True
        )
        self._check_markup("response_suffix", self.response_suffix)
        if cfg.kind != "pretrain":
            _use_chat_template(tokenizer, cfg.chat_template)  # fail early on "always"
        if cfg.kind == "gsm8k":
            self.format_prompt, self.format_target = _gsm8k_templates()
        if cfg.kind == "infill":
            start, end = cfg.infill_markers
            if cfg.add_marker_tokens:
                from retrofit.tokenization import add_special_tokens

                add_special_tokens(tokenizer, [marker for marker in (start, end) if marker])
            self.marker_end = encode_text(tokenizer, end, parse_special_tokens=True)
            start_ids = encode_text(tokenizer, start, parse_special_tokens=True)
            self._check_markup("infill_markers", start_ids + self.marker_end)

    def _check_markup(self, option: str, ids: list[int]) -> None:
        """Markup from the config must not encode to the mask id (every row would be skipped)."""
        if self.mask_id is not None and self.mask_id in ids:
            raise ValueError(
                f"data.{option} encodes to the mask token id {self.mask_id}: the diffusion mask "
                "can never be a clean token; choose another string"
            )

    def check_mask(self, ids: Sequence[int], prompt_length: int) -> None:
        """Skip a row whose clean tokens hold the mask id (prompt first, then content).

        Content is encoded with special tokens as plain text, so the mask id can only come from a
        chat-template rendering of the prompt (``mask_token_in_prompt``), or from a mask token
        the tokenizer does not mark as special (``mask_token_in_content``).
        """
        mask = self.mask_id
        if mask is None:
            return
        if mask in ids[:prompt_length]:
            raise _Skip(
                "mask_token_in_prompt",
                f"the prompt encodes to the mask token id {mask} (a mask-token string in the "
                "prompt text, parsed by the chat template)",
            )
        if mask in ids[prompt_length:]:
            raise _Skip(
                "mask_token_in_content",
                f"the text encodes to the mask token id {mask}, which can never be a clean token",
            )

    # ---- field access ----

    def _text(self, record: Mapping[str, Any], role: str) -> str:
        column = self.fields[role]
        if column not in record or record[column] is None:
            raise _Skip("missing_field", f"field {column!r} ({role}) is missing")
        value = record[column]
        if not isinstance(value, str):
            raise _Skip("bad_type", f"field {column!r} ({role}) is {type(value).__name__}, not str")
        if not value.strip():
            raise _Skip("empty", f"field {column!r} ({role}) is empty")
        return value

    # ---- kinds ----

    def pretrain(self, record: Mapping[str, Any]) -> list[int]:
        """Token ids of one document with EOS appended (the stream chunks or packs them)."""
        ids = encode_text(self.tokenizer, self._text(record, "text"))
        self.check_mask(ids, 0)
        return ids + self.eos

    def _prompt_response(self, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        cfg = self.cfg
        if cfg.kind == "gsm8k":
            prompt = self.format_prompt(self._text(record, "question"))
            try:
                target = self.format_target(self._text(record, "answer"))
            except ValueError as error:  # e.g. no "#### <number>" line
                raise _Skip("bad_format", str(error)) from None
            return (
                encode_prompt(self.tokenizer, prompt, chat_template=cfg.chat_template),
                encode_text(self.tokenizer, target) + self.response_suffix + self.eos,
            )
        if "messages" in self.fields:
            column = self.fields["messages"]
            messages = record.get(column)
            if messages is None:
                raise _Skip("missing_field", f"field {column!r} (messages) is missing")
            if not isinstance(messages, list) or not all(
                isinstance(message, Mapping) and "role" in message and "content" in message
                for message in messages
            ):
                raise _Skip("bad_type", f"field {column!r} is not a list of role/content messages")
            if len(messages) < 2 or messages[-1]["role"] != "assistant":
                raise _Skip("bad_type", f"field {column!r} does not end with an assistant message")
            response = messages[-1]["content"]
            if not isinstance(response, str) or not response.strip():
                raise _Skip("empty", "the last assistant message is empty")
            history = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
            return (
                encode_prompt(self.tokenizer, history, chat_template=cfg.chat_template),
                encode_text(self.tokenizer, response) + self.response_suffix + self.eos,
            )
        prompt = self._text(record, "prompt")
        response = self._text(record, "response")
        return (
            encode_prompt(self.tokenizer, prompt, chat_template=cfg.chat_template),
            encode_text(self.tokenizer, response) + self.response_suffix + self.eos,
        )

    def sft(self, record: Mapping[str, Any], stats: DataStats) -> dict[str, Any]:
        """One example: protected prompt + response (truncated or skipped when too long)."""
        max_length = self.cfg.max_length
        prompt_ids, response_ids = self._prompt_response(record)
        self.check_mask(prompt_ids + response_ids, len(prompt_ids))
        if len(prompt_ids) >= max_length:
            raise _Skip(
                "prompt_too_long",
                f"prompt has {len(prompt_ids)} tokens, no room for a response in max_length "
                f"{max_length}",
            )
        if len(prompt_ids) + len(response_ids) > max_length:
            self._too_long(len(prompt_ids) + len(response_ids))
            response_ids = response_ids[: max_length - len(prompt_ids)]
            stats.truncated += 1
        ids = prompt_ids + response_ids
        return _example(
            ids, [True] * len(prompt_ids) + [False] * len(response_ids), len(prompt_ids)
        )

    def _too_long(self, total: int) -> None:
        """Apply the over-long policy: returns to truncate, raises _Skip to skip."""
        if self.cfg.on_bad_record != "truncate":
            raise _Skip("too_long", f"{total} tokens exceed max_length {self.cfg.max_length}")

    def infill(self, record: Mapping[str, Any], stats: DataStats, epoch: int) -> dict[str, Any]:
        """One infilling example (flexmdm marker layout or mdm PSM layout)."""
        cfg = self.cfg
        instruction = self._text(record, "instruction")
        output = self._text(record, "output")
        # Per-record seed from content + seed + epoch: independent of order, rank and resume.
        digest = hashlib.sha256(
            f"{cfg.seed}\x00{epoch}\x00{instruction}\x00{output}".encode()
        ).digest()
        rng = random.Random(int.from_bytes(digest[:8], "little"))
        start, end = choose_infill_span(output, rng, mode=cfg.infill_span)
        prefix, middle, suffix = output[:start], output[start:end], output[end:]

        def layout(suffix_text: str) -> dict[str, Any]:
            return build_infill_example(
                self.tokenizer,
                instruction,
                prefix,
                middle,
                suffix_text,
                objective=cfg.objective,
                markers=cfg.infill_markers,
                psm_template=cfg.psm_template,
                chat_template=cfg.chat_template,
                eos_token_id=self.eos[0] if self.eos else None,
                response_suffix=cfg.response_suffix,
            )

        example = layout(suffix)
        self.check_mask(example["input_ids"], example["prompt_length"])
        total = example["length"]
        if total <= cfg.max_length:
            return example
        self._too_long(total)
        if cfg.objective == "flexmdm":
            # Cut the protected tail (suffix, EOS); the end marker must survive.
            keep = cfg.max_length
            if keep < example["middle_end"] + len(self.marker_end):
                raise _Skip(
                    "too_long",
                    f"prompt + prefix + middle take {example['middle_end']} tokens, more than "
                    f"max_length {cfg.max_length}",
                )
            example = _example(
                example["input_ids"][:keep], example["protected"][:keep], example["prompt_length"]
            ) | {"middle_start": example["middle_start"], "middle_end": example["middle_end"]}
        else:
            # PSM: the suffix sits inside the prompt; shorten it by the overflow and re-render
            # (cut by characters: never inside a multi-byte character).
            suffix_ids = encode_text(self.tokenizer, suffix)
            keep = len(suffix_ids) - (total - cfg.max_length)
            if keep < 0:
                raise _Skip("too_long", f"{total} tokens exceed max_length {cfg.max_length}")
            example = layout(_decoded_prefix(self.tokenizer, suffix, suffix_ids[:keep]))
            if example["length"] > cfg.max_length:
                raise _Skip("too_long", f"{total} tokens exceed max_length {cfg.max_length}")
        stats.truncated += 1
        return example


def _decoded_prefix(tokenizer: Any, text: str, ids: Sequence[int]) -> str:
    """The longest prefix of `text` that the decoded `ids` (a prefix of its encoding) agree with.

    A token-level cut can end inside a multi-byte character, which decodes to U+FFFD; that partial
    character (and anything else decoding does not reproduce) is dropped, so the shortened text is
    always a true prefix of `text`.
    """
    return os.path.commonprefix([tokenizer.decode(list(ids)), text])


def _example(ids: list[int], protected: list[bool], prompt_length: int) -> dict[str, Any]:
    return {
        "input_ids": ids,
        "protected": protected,
        "length": len(ids),
        "prompt_length": prompt_length,
    }


# --------------------------------------------------------------------------------------------
# The resumable example stream
# --------------------------------------------------------------------------------------------


class ExampleStream:
    """Iterable of examples for one rank, looping over epochs, with a resumable position.

    Iterating continues from the current position (it does not restart): one stream feeds one
    training loop. ``state_dict()`` taken between two examples and loaded into a fresh stream built
    from the same config makes it yield exactly the examples the original would have yielded next.
    The state holds the epoch, the number of records of this rank's epoch already read, the
    examples produced but not yet yielded, the packing buffer and the statistics. On resume, the
    records already read are skipped without tokenisation (map-style: by index; streaming: the
    stream is re-read up to that point).

    Rows never contain the mask id (``mask_token_id``, default :func:`resolve_mask_token_id`) as
    a clean token: records that would are skipped (``mask_token_in_prompt`` /
    ``mask_token_in_content``).

    Attributes:
        stats: ``DataStats`` of everything read so far (restored on resume).
        special_eos_id: the EOS id appended to documents / responses.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Any,
        *,
        rank: int = 0,
        world_size: int = 1,
        eos_token_id: int | None = None,
        mask_token_id: int | None = None,
        records: Any = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.rank = rank
        self.world_size = world_size
        if eos_token_id is None:
            eos_token_id = getattr(tokenizer, "eos_token_id", None)
        self.special_eos_id = eos_token_id
        self._processor = _RecordProcessor(cfg, tokenizer, eos_token_id, mask_token_id)
        self._records = load_records(cfg) if records is None else records
        self.stats = DataStats()
        self._epoch = 0
        self._records_consumed = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._pack_buffer: list[int] = []
        self._records_iter: Iterator[Mapping[str, Any]] | None = None
        self._epoch_produced = 0
        self._warned = False

    # ---- records of one epoch for this rank ----

    def _epoch_records(self, epoch: int, skip: int) -> Iterator[Mapping[str, Any]]:
        from datasets.distributed import split_dataset_by_node

        records = self._records
        cfg = self.cfg
        if cfg.streaming:
            if cfg.shuffle:
                records = records.shuffle(seed=cfg.seed, buffer_size=cfg.shuffle_buffer)
            # With max_records, every rank reads the (same, shared-seed shuffled) first N records
            # and keeps every world_size-th: split_dataset_by_node would push the `take` into
            # the shards (N / world_size from each rank's own files, not the first N records).
            by_example = self.world_size > 1 and cfg.max_records is not None
            if self.world_size > 1 and not by_example:
                records = split_dataset_by_node(records, rank=self.rank, world_size=self.world_size)
            # The shuffle seed becomes seed + epoch. Set on the final dataset: the copy made by
            # split_dataset_by_node does not keep an epoch set before it (datasets 5.2).
            records.set_epoch(epoch)
            iterator: Iterator[Mapping[str, Any]] = iter(records)
            if by_example:
                iterator = itertools.islice(iterator, self.rank, None, self.world_size)
            # Records already read are re-read and dropped (no tokenisation): exact, whatever
            # the shuffle buffer held when the position was saved.
            return itertools.islice(iterator, skip, None)
        if cfg.shuffle:
            records = records.shuffle(seed=cfg.seed + epoch)
        if self.world_size > 1:
            records = split_dataset_by_node(records, rank=self.rank, world_size=self.world_size)
        if skip:
            records = records.select(range(min(skip, len(records)), len(records)))
        return iter(records)

    # ---- processing ----

    def _handle(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Examples from one record; updates stats; raises BadRecordError under policy 'error'."""
        stats = self.stats
        stats.seen += 1
        cfg = self.cfg
        try:
            if cfg.kind == "pretrain":
                examples = self._pretrain_rows(self._processor.pretrain(record))
            elif cfg.kind == "infill":
                examples = [self._processor.infill(record, stats, self._epoch)]
            else:
                examples = [self._processor.sft(record, stats)]
        except _Skip as skipped:
            if cfg.on_bad_record == "error":
                raise BadRecordError(
                    f"bad {cfg.kind} record (epoch {self._epoch}, record index "
                    f"{self._records_consumed - 1} of rank {self.rank}): {skipped.detail}. Set data.on_bad_record to 'skip' (or "
                    "'truncate' for over-long records) to count and drop such records."
                ) from None
            stats.skip(skipped.reason)
            self._warn_if_mostly_skipped()
            return []
        if examples or cfg.pack:
            stats.kept += 1
        for example in examples:
            stats.examples += 1
            stats.tokens += example["length"]
        return examples

    def _warn_if_mostly_skipped(self) -> None:
        """Warn once when more than half of at least 1,000 records read were skipped."""
        stats = self.stats
        if not self._warned and stats.seen >= 1000 and stats.num_skipped * 2 > stats.seen:
            self._warned = True
            warnings.warn(
                f"most {self.cfg.kind} records are being skipped ({stats.summary()}); check "
                "data.fields, data.max_length and data.on_bad_record",
                stacklevel=2,
            )

    def _pretrain_rows(self, ids: list[int]) -> list[dict[str, Any]]:
        cfg = self.cfg
        max_length = cfg.max_length
        if cfg.pack:
            self._pack_buffer.extend(ids)
            rows = []
            while len(self._pack_buffer) >= max_length:
                rows.append(self._pack_buffer[:max_length])
                del self._pack_buffer[:max_length]
            return [_example(row, [False] * len(row), 0) for row in rows]
        rows = [ids[start : start + max_length] for start in range(0, len(ids), max_length)]
        if len(rows) > 1:
            if cfg.long_documents == "truncate":
                rows = rows[:1]
                self.stats.truncated += 1
            else:
                self.stats.chunked += 1
        kept = [row for row in rows if len(row) >= cfg.min_chunk_length]
        for _ in range(len(rows) - len(kept)):
            self.stats.skip("short_chunk")
        return [_example(row, [False] * len(row), 0) for row in kept]

    def _flush_pack_buffer(self) -> None:
        """End of an epoch when packing: the leftover tokens form one last, shorter row."""
        if self.cfg.pack and self._pack_buffer:
            row, self._pack_buffer = self._pack_buffer, []
            if len(row) >= self.cfg.min_chunk_length:
                self._pending.append(_example(row, [False] * len(row), 0))
                self.stats.examples += 1
                self.stats.tokens += len(row)
            else:
                self.stats.skip("short_chunk")

    # ---- iteration ----

    def __iter__(self) -> Iterator[dict[str, Any]]:
        num_epochs = self.cfg.num_epochs
        while True:
            if self._pending:
                self._epoch_produced += 1
                yield self._pending.popleft()
                continue
            if self._records_iter is None:
                if num_epochs is not None and self._epoch >= num_epochs:
                    return
                self._records_iter = self._epoch_records(self._epoch, self._records_consumed)
            try:
                record = next(self._records_iter)
            except StopIteration:
                self._flush_pack_buffer()
                produced = self._epoch_produced + len(self._pending)
                self._records_iter = None
                self._epoch += 1
                self._records_consumed = 0
                self._epoch_produced = 0
                if produced == 0:
                    raise ValueError(
                        f"the {self.cfg.kind} data on rank {self.rank} produced no examples in a "
                        f"whole epoch ({self.stats.summary()}); check data.path, data.fields and "
                        "data.max_length"
                    )
                continue
            self._records_consumed += 1
            self._pending.extend(self._handle(record))

    # ---- resumable position ----

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, Any]:
        """The position (plain Python values; torch.save / json friendly)."""
        return {
            "version": _STATE_VERSION,
            "kind": self.cfg.kind,
            "seed": self.cfg.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self._epoch,
            "records_consumed": self._records_consumed,
            "epoch_produced": self._epoch_produced,
            "pending": copy.deepcopy(list(self._pending)),
            "pack_buffer": list(self._pack_buffer),
            "stats": self.stats.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a position saved by `state_dict` (same data config, rank and world size)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported data state version {state.get('version')!r}")
        for key, current in (
            ("kind", self.cfg.kind),
            ("seed", self.cfg.seed),
            ("rank", self.rank),
            ("world_size", self.world_size),
        ):
            if state[key] != current:
                raise ValueError(
                    f"data state was saved with {key}={state[key]!r} but this stream has "
                    f"{key}={current!r}; resume with the same data config and process layout"
                )
        self._epoch = int(state["epoch"])
        self._records_consumed = int(state["records_consumed"])
        self._epoch_produced = int(state.get("epoch_produced", 0))
        self._pending = deque(copy.deepcopy(list(state["pending"])))
        self._pack_buffer = list(state["pack_buffer"])
        self.stats.load_state_dict(state["stats"])
        self._records_iter = None


def build_dataset(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    rank: int = 0,
    world_size: int = 1,
    eos_token_id: int | None = None,
    mask_token_id: int | None = None,
) -> ExampleStream:
    """Build the resumable example stream of `cfg` for one data-parallel rank.

    Ranks read disjoint records: map-style datasets are split into contiguous shards after the
    (shared-seed) shuffle, streaming datasets with ``datasets.distributed.split_dataset_by_node``
    (whole shards when their number divides ``world_size``, else every world_size-th record).
    ``max_records`` always means the first N records of the dataset: with streaming and several
    ranks, each rank reads those N records and keeps every world_size-th one.

    Args:
        cfg: the data config.
        tokenizer: the model's tokenizer (a transformers tokenizer).
        rank, world_size: this process's data-parallel rank and the number of ranks.
        eos_token_id: EOS id to append (default: ``tokenizer.eos_token_id``; pass
            ``resolve_special_ids(...).eos`` when the tokenizer lacks one).
        mask_token_id: the model's mask id, which no row may contain as a clean token (default
            :func:`resolve_mask_token_id`: the tokenizer's mask token, else a known mask string
            in its vocabulary; pass ``resolve_special_ids(...).mask``).

    Returns:
        An ``ExampleStream`` yielding example dicts (see the module docstring).
    """
    return ExampleStream(
        cfg,
        tokenizer,
        rank=rank,
        world_size=world_size,
        eos_token_id=eos_token_id,
        mask_token_id=mask_token_id,
    )


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """A right-padded batch with explicit lengths.

    input_ids: LongTensor (B, L), ``pad`` beyond each row's length (flexmdm) or EOS-filled to L
        (mdm, where the EOS are content).
    lengths: LongTensor (B,), tokens per row (mdm: L for every row).
    protected: BoolTensor (B, L), positions never noised (prompt; infill prefix/markers/suffix);
        False at and beyond each row's length.
    response_mask: BoolTensor (B, L), ``~protected & (position < lengths)``: the positions the
        objective trains on (mdm: the response plus its EOS padding).
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    protected: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on `device`."""
        return Batch(
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            protected=self.protected.to(device, non_blocking=non_blocking),
            response_mask=self.response_mask.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copies (for asynchronous host-to-GPU transfer)."""
        return Batch(
            self.input_ids.pin_memory(),
            self.lengths.pin_memory(),
            self.protected.pin_memory(),
            self.response_mask.pin_memory(),
        )

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Sum of row lengths (the real tokens of the batch, padding excluded)."""
        return int(self.lengths.sum())


class Collator:
    """Collate example dicts into a ``Batch``.

    Args:
        pad_token_id: fill value beyond each row's length (flexmdm).
        eos_token_id: fill value for the mdm objective (LLaDA SFT pads responses with EOS, which
            are trained as part of the response); required when objective is "mdm".
        pad_to: "longest" (dynamic length: the longest row of the batch, rounded up to
            ``pad_to_multiple_of``) | "max_length" (always ``max_length``).
        max_length: rows longer than this are an error; required for pad_to="max_length".
        pad_to_multiple_of: round the padded length up to a multiple (capped at max_length).
        objective: "flexmdm" (lengths = true lengths) | "mdm" (rows EOS-filled to L; lengths = L).
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        eos_token_id: int | None = None,
        pad_to: str = "longest",
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        objective: str = "flexmdm",
    ) -> None:
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise TypeError(f"pad_token_id must be an int, got {pad_token_id!r}")
        if pad_to not in ("longest", "max_length"):
            raise ValueError(f"pad_to must be 'longest' or 'max_length', got {pad_to!r}")
        if objective not in ("flexmdm", "mdm"):
            raise ValueError(f"objective must be 'flexmdm' or 'mdm', got {objective!r}")
        if pad_to == "max_length" and max_length is None:
            raise ValueError("pad_to='max_length' needs max_length")
        if objective == "mdm" and eos_token_id is None:
            raise ValueError(
                "the mdm objective pads responses with EOS: pass eos_token_id (LLaDA: 126081)"
            )
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.pad_to = pad_to
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.objective = objective

    def padded_length(self, longest: int) -> int:
        """The batch width L for a batch whose longest row has `longest` tokens."""
        if self.pad_to == "max_length":
            assert self.max_length is not None
            return self.max_length
        width = max(longest, 1)
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            width = -(-width // multiple) * multiple
            if self.max_length is not None:
                width = min(width, max(self.max_length, longest))
        return width

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> Batch:
        """Collate; each example needs ``input_ids`` and optionally ``protected``."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        lengths_list = [len(example["input_ids"]) for example in examples]
        longest = max(lengths_list)
        if self.max_length is not None and longest > self.max_length:
            raise ValueError(
                f"an example has {longest} tokens, more than max_length {self.max_length}; "
                "build the data with the same max_length"
            )
        width = self.padded_length(longest)
        fill = self.eos_token_id if self.objective == "mdm" else self.pad_token_id
        input_ids = torch.full((len(examples), width), fill, dtype=torch.long)  # (B, L)
        protected = torch.zeros((len(examples), width), dtype=torch.bool)  # (B, L)
        for row, (example, length) in enumerate(zip(examples, lengths_list)):
            if length == 0:
                continue
            input_ids[row, :length] = torch.as_tensor(example["input_ids"], dtype=torch.long)
            flags = example.get("protected")
            if flags is not None:
                if len(flags) != length:
                    raise ValueError(
                        f"example {row}: protected has {len(flags)} entries for {length} tokens"
                    )
                protected[row, :length] = torch.as_tensor(flags, dtype=torch.bool)
        if self.objective == "mdm":
            lengths = torch.full((len(examples),), width, dtype=torch.long)  # (B,)
        else:
            lengths = torch.as_tensor(lengths_list, dtype=torch.long)  # (B,)
        positions = torch.arange(width)[None, :]  # (1, L)
        response_mask = ~protected & (positions < lengths[:, None])  # (B, L)
        return Batch(input_ids, lengths, protected, response_mask)


class BatchIterator:
    """Group a stream's examples into batches; optional length bucketing; resumable.

    With ``bucket_batches = k > 1`` it reads k * batch_size examples, sorts them by length, cuts
    them into k batches of similar lengths and yields those in a seeded random order (so short
    and long batches alternate): with ``Collator(pad_to="longest")`` the padding waste shrinks.
    ``k = 1`` keeps the stream order.

    ``state_dict()`` records the stream position at the start of the current window plus the
    number of batches of that window already yielded; loading it into a fresh iterator over a
    fresh stream of the same config yields the same next batch.

    Args:
        examples: the ``ExampleStream`` (or any iterable with state_dict/load_state_dict).
        collator: turns a list of examples into a ``Batch``.
        batch_size: examples per batch (per rank).
        bucket_batches: window size in batches for length sorting (1: no sorting).
        seed: seeds the order of batches within a window.
        drop_last: drop a final partial batch when a finite stream ends.
    """

    def __init__(
        self,
        examples: ExampleStream,
        collator: Callable[[Sequence[Mapping[str, Any]]], Batch],
        batch_size: int,
        *,
        bucket_batches: int = 1,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(bucket_batches, int) or bucket_batches < 1:
            raise ValueError(f"bucket_batches must be a positive integer, got {bucket_batches!r}")
        self.examples = examples
        self.collator = collator
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.seed = seed
        self.drop_last = drop_last
        self._window: list[list[dict[str, Any]]] | None = None
        self._window_state: dict[str, Any] | None = None
        self._window_index = 0
        self._next_batch = 0
        self._example_iter: Iterator[dict[str, Any]] | None = None

    def _fill_window(self) -> list[list[dict[str, Any]]]:
        if self._example_iter is None:
            self._example_iter = iter(self.examples)
        self._window_state = self.examples.state_dict()
        pool = list(itertools.islice(self._example_iter, self.batch_size * self.bucket_batches))
        if self.bucket_batches > 1:
            pool.sort(key=lambda example: len(example["input_ids"]))
        batches = [
            pool[start : start + self.batch_size] for start in range(0, len(pool), self.batch_size)
        ]
        if batches and self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.bucket_batches > 1:
            random.Random(self.seed * 1_000_003 + self._window_index).shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[Batch]:
        while True:
            if self._window is None:
                self._window = self._fill_window()
                if not self._window:
                    self._window = None
                    return
            while self._next_batch < len(self._window):
                batch = self._window[self._next_batch]
                self._next_batch += 1
                yield self.collator(batch)
            self._window = None
            self._next_batch = 0
            self._window_index += 1

    def state_dict(self) -> dict[str, Any]:
        """Position: stream state at the current window start + batches yielded from it."""
        if self._window is None:
            return {
                "stream": self.examples.state_dict(),
                "next_batch": 0,
                "window_index": self._window_index,
            }
        return {
            "stream": copy.deepcopy(self._window_state),
            "next_batch": self._next_batch,
            "window_index": self._window_index,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a position saved by `state_dict`."""
        self.examples.load_state_dict(state["stream"])
        self._window = None
        self._example_iter = None
        self._window_index = int(state["window_index"])
        skip = int(state["next_batch"])
        if skip:
            self._window = self._fill_window()
            self._next_batch = min(skip, len(self._window))
        else:
            self._next_batch = 0
