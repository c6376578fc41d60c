"""Reading raw records with Hugging Face ``datasets`` (Hub ids or local files)."""

from __future__ import annotations

import dataclasses
import glob
import gzip
import itertools
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from retrofit.data.config import DEFAULT_FIELDS, DEFAULT_HUB_DATASETS, DataConfig

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


def load_records(cfg: DataConfig, tokenizer: Any = None, stats: Any = None) -> Any:
    """Load the raw records (no shuffling, sharding or tokenisation).

    Local JSON-lines files are validated when ``datasets`` cannot read them: a line that is not
    UTF-8, not valid JSON (a truncated last line too) or not a JSON object is handled by
    ``cfg.on_bad_record`` before training starts: ``error`` stops with ``file:line`` and the
    reason, ``skip`` / ``truncate`` skip it (counted in ``stats`` as ``bad_line``, one warning).
    A local source without records is an error naming it.

    A ``cfg.mixture`` is loaded by :func:`load_mixture` (``tokenizer`` measures record lengths for
    token weights).

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
    if cfg.mixture is not None:
        return load_mixture(cfg, tokenizer, stats)
    default_path, _ = DEFAULT_HUB_DATASETS[cfg.kind]
    path = cfg.path if cfg.path is not None else default_path
    assert path is not None  # DataConfig guarantees a path or a default
    builder = _builder_for(cfg, path)
    is_local = builder is not None or os.path.isdir(os.path.expanduser(path))
    if cfg.revision is not None and is_local:
        raise ValueError(
            f"data.revision={cfg.revision!r} applies to Hub datasets only, but data.path={path!r} "
            "is local; remove data.revision"
        )
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
        records = _load_local(cfg, builder, expanded, kwargs, stats)
    else:
        records = _load_hub(cfg, path, is_local, kwargs)
    if cfg.max_records is not None:
        # The first N records of the whole dataset; `ExampleStream` splits them between ranks by
        # example (a `take` inside `split_dataset_by_node` would take N / world_size per shard).
        if cfg.streaming:
            records = records.take(cfg.max_records)
        else:
            records = records.select(range(min(cfg.max_records, len(records))))
    return records




def mixture_sources(cfg: DataConfig) -> list[tuple[DataConfig, float]]:
    """(data config of one source, its weight) for every entry of ``cfg.mixture``."""
    sources = []
    for entry in cfg.mixture or []:
        defaults = {"name": None, "revision": None, "source": "auto", "fields": {}}
        settings = {**defaults, **{key: value for key, value in entry.items() if key != "weight"}}
        sub = dataclasses.replace(cfg, mixture=None, max_records=None, **settings)
        sources.append((sub, float(entry["weight"])))
    return sources


def _text_of(record: Any, columns: Sequence[str]) -> str:
    """The text a record contributes (its string columns joined), for length measurement."""
    return "".join(str(record[column]) for column in columns if isinstance(record.get(column), str))


def mixture_probabilities(cfg: DataConfig, parts: Sequence[Any], tokenizer: Any) -> list[float]:
    """The chance of drawing a record of each source: its weight (``mixture_unit: records``), or
    its weight divided by its mean tokens per record over its first ``mixture_probe`` records
    (``tokens``), normalised."""
    weights = [weight for _, weight in mixture_sources(cfg)]
    if cfg.mixture_unit == "tokens":
        if tokenizer is None:
            raise ValueError("data.mixture_unit: tokens needs the tokenizer to measure record "
                             "lengths (build_dataset passes it); or set mixture_unit: records")
        columns = list(DEFAULT_FIELDS[cfg.kind].values())
        for index, part in enumerate(parts):
            probe = list(itertools.islice(iter(part), cfg.mixture_probe))
            if not probe:
                raise ValueError(f"data.mixture[{index}] ({cfg.mixture[index]['path']}) has no records")
            lengths = [len(tokenizer(_text_of(r, columns), add_special_tokens=False)["input_ids"])
                       for r in probe]
            weights[index] /= max(1.0, sum(lengths) / len(lengths))
    total = sum(weights)
    return [weight / total for weight in weights]


def load_mixture(cfg: DataConfig, tokenizer: Any = None, stats: Any = None) -> Any:
    """Every source of ``cfg.mixture`` loaded, its columns renamed to the kind's default column
    names, and interleaved by :func:`mixture_probabilities` with ``datasets.interleave_datasets``
    (seeded with ``cfg.seed``, "all_exhausted"). ``cfg.max_records`` keeps the first N records of
    the mixture."""
    import datasets

    parts = []
    for sub, _ in mixture_sources(cfg):
        records = load_records(sub, stats=stats)
        renames = {sub.resolved_fields[role]: column for role, column in DEFAULT_FIELDS[cfg.kind].items()
                   if sub.resolved_fields[role] != column}
        if renames:
            records = records.rename_columns(renames)
        parts.append(records.select_columns(list(DEFAULT_FIELDS[cfg.kind].values())))
    mixed = datasets.interleave_datasets(
        parts, probabilities=mixture_probabilities(cfg, parts, tokenizer), seed=cfg.seed,
        stopping_strategy="all_exhausted",
    )  # fmt: skip
    if cfg.max_records is not None:
        if cfg.streaming:
            return mixed.take(cfg.max_records)
        return mixed.select(range(min(cfg.max_records, len(mixed))))
    return mixed


JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


def _builder_for(cfg: DataConfig, path: str) -> str | None:
    """The ``datasets`` builder of local files (json, parquet, text, csv), or None for a Hub id or
    a local dataset folder (``datasets`` infers its format)."""
    if cfg.source == "hub":
        return None
    if cfg.source != "auto":
        return cfg.source
    if os.path.isdir(path):
        return None
    looks_local = (
        os.path.exists(path)
        or path.startswith((".", "/", "~"))
        or any(char in path for char in "*?[")
        or _local_builder(path) is not None
    )
    if not looks_local:
        return None
    builder = _local_builder(path)
    if builder is None:
        raise ValueError(
            f"cannot infer the file format of data.path={path!r} from its extension; set "
            "data.source to one of json, parquet, text, csv"
        )
    return builder


def _load_hub(cfg: DataConfig, path: str, is_local: bool, kwargs: dict[str, Any]) -> Any:
    """A Hub dataset (or a local dataset folder) through ``datasets.load_dataset``; the kind's
    default config name for its default Hub id; an unreachable Hub is one ConnectionError that
    says how to use local files."""
    import datasets

    default_path, default_name = DEFAULT_HUB_DATASETS[cfg.kind]
    name = cfg.name
    if not is_local and name is None and default_path is not None and path.lower() == default_path.lower():
        name = default_name  # e.g. openai/gsm8k has configs "main" and "socratic"
    if name is not None:
        kwargs["name"] = name
    if cfg.revision is not None:
        kwargs["revision"] = cfg.revision
    try:
        return datasets.load_dataset(path, **kwargs)
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


def _load_local(cfg: DataConfig, builder: str, pattern: str, kwargs: dict[str, Any], stats: Any) -> Any:
    """Local files through ``datasets``. JSON-lines files are first read line by line
    (:func:`read_json_lines`): bad lines are handled by ``cfg.on_bad_record`` before training
    starts, and a file with bad lines that are skipped becomes a dataset of its good records. Any
    other failure is one ``ValueError`` naming the files."""
    import datasets

    from retrofit.data.examples import DataStats

    files = sorted(glob.glob(pattern)) or [pattern]
    if builder == "json" and all(f.lower().endswith(JSON_LINES_SUFFIXES) for f in files):
        stats = stats if stats is not None else DataStats()
        counted = stats.num_skipped
        rows = [row for path in files for row in read_json_lines(path, cfg.on_bad_record, stats)]
        if not rows:
            raise ValueError(f"data.path={cfg.path!r}: no records in {', '.join(files)}")
        if stats.num_skipped > counted:  # bad lines were skipped
            records = datasets.Dataset.from_list(rows)
            return records.to_iterable_dataset() if cfg.streaming else records
    try:
        records = datasets.load_dataset(builder, data_files={cfg.split: pattern}, **kwargs)
    except Exception as error:  # noqa: BLE001 - datasets / pyarrow raise many types: one line instead
        cause = error.__cause__ or error
        reason = (str(cause).splitlines() or [""])[0]
        raise ValueError(f"data.path={cfg.path!r}: could not read {', '.join(files)} as {builder} "
                         f"files ({type(cause).__name__}: {reason})") from None
    if not cfg.streaming and len(records) == 0:
        raise ValueError(f"data.path={cfg.path!r}: no records in {', '.join(files)}")
    return records


def read_json_lines(path: str, policy: str, stats: Any = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (``.gz`` too), one per non-blank line.

    A bad line (not UTF-8, not valid JSON -- a cut last line included -- or not an object) raises
    ``BadRecordError`` naming ``file:line`` under ``policy == "error"``; otherwise it is skipped,
    counted in ``stats`` (``bad_line``) and reported in one warning per file.
    """
    from retrofit.data.examples import BadRecordError

    opener = gzip.open if path.endswith(".gz") else open
    skipped: list[str] = []
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            record, reason = _parse_line(raw)
            if reason is None and record is None:
                continue  # blank line
            if reason is None:
                yield record
                continue
            if policy == "error":
                raise BadRecordError(f"{path}:{number}: {reason} (data.on_bad_record: skip skips it)")
            skipped.append(f"line {number}: {reason}")
            if stats is not None:
                stats.skip("bad_line")
    if skipped:
        warnings.warn(f"data: skipped {len(skipped)} bad line(s) of {path} ({'; '.join(skipped[:3])}"
                      + ("; ..." if len(skipped) > 3 else "") + ")", stacklevel=2)


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a JSON object, (None, reason) for a bad line, (None, None) for a blank."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 (byte {error.start} of the line)"
    if not text.strip():
        return None, None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        cut = "" if raw.endswith(b"\n") else "a truncated last line: "
        return None, f"{cut}not valid JSON ({error.msg})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    return record, None
