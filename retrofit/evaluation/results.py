"""Result files of an evaluation run: per-sample JSONL shards, the run identity, resume and merge.

``samples.jsonl`` (``samples.rank{R}-of-{W}.jsonl`` while sharded) holds one JSON line per
sample, keyed ``task_id#sample_index``; a rerun skips every key already on disk, so a killed run
resumes where it stopped. ``run.json`` records what was run (benchmark, spec, model, settings,
data): a different run is refused in the same output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from retrofit.evaluation.benchmarks.base import numbered_jsonl

__all__ = [
    "atomic_write",
    "check_run_identity",
    "existing_records",
    "load_completions",
    "load_samples",
    "open_for_append",
    "read_records",
    "sample_key",
    "sample_stream_id",
    "shard_file",
    "wait_for_samples",
]


def sample_key(task_id: str, sample_index: int) -> str:
    """The key of one sample in samples.jsonl (and of its random stream)."""
    return f"{task_id}#{sample_index}"


def sample_stream_id(task_id: str, sample_index: int) -> int:
    """Random-stream id of one sample: a 62-bit int from sha256 of its key `task_id#sample_index`.

    Passed as the sampler's ``row_ids``, it makes a sample's randomness a function of (seed, task,
    sample index) alone: the same in every batch size, batch position and sharding, and different
    for every sample of a task.
    """
    digest = hashlib.sha256(sample_key(task_id, sample_index).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 2



def load_completions(path: str | Path) -> list[tuple[str, str]]:
    """(task_id, completion) pairs from a JSONL file, in file order (several per task allowed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--completions {path} does not exist")
    pairs = []
    for line_number, record in numbered_jsonl(path):
        if not isinstance(record.get("task_id"), str) or not isinstance(record.get("completion"), str):
            raise ValueError(f"{path}:{line_number}: each line needs string fields `task_id` and "  # noqa: TRY004 - bad file content
                             f"`completion`, got keys {sorted(record)}")
        pairs.append((record["task_id"], record["completion"]))
    return pairs



def shard_file(output: Path, rank: int, world_size: int) -> Path:
    return output / ("samples.jsonl" if world_size == 1 else f"samples.rank{rank}-of-{world_size}.jsonl")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a samples file (a line cut by a kill is ignored)."""
    records = []
    if not path.is_file():
        return records
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def existing_records(output: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in [output / "samples.jsonl", *sorted(output.glob("samples.rank*.jsonl"))]:
        for record in read_records(path):
            found.setdefault(record["key"], record)
    return found


def _keys_on_disk(output: Path, offsets: dict[Path, int], found: set[str]) -> None:
    """Add to `found` the keys of complete lines appended to the samples files since `offsets`.

    offsets (file -> bytes already read, complete lines only) is updated in place, so polling a
    large run reads every line once.
    """
    for path in [output / "samples.jsonl", *sorted(output.glob("samples.rank*.jsonl"))]:
        try:
            with path.open("rb") as handle:
                handle.seek(offsets.get(path, 0))
                data = handle.read()
        except FileNotFoundError:
            continue
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        offsets[path] = offsets.get(path, 0) + len(complete)
        for line in complete.splitlines():
            try:
                found.add(json.loads(line)["key"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue


def wait_for_samples(output: Path, expected: dict[str, int], world_size: int,
                      timeout_s: float, poll_s: float = 1.0) -> None:
    """Block until the samples files in `output` hold every key of `expected` (key -> rank).

    Raises TimeoutError naming the ranks (and some keys) still missing after `timeout_s`.
    """
    offsets: dict[Path, int] = {}
    found: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        _keys_on_disk(output, offsets, found)
        missing = [key for key in expected if key not in found]
        if not missing:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            ranks = sorted({expected[key] for key in missing})
            raise TimeoutError(
                f"{output}: after {timeout_s} s, {len(missing)} of {len(expected)} samples are "
                f"still missing, from rank(s) {ranks} of {world_size} (e.g. {missing[:3]}); are "
                "those ranks still running? Rerun the same command to resume")
        time.sleep(min(poll_s, remaining))


def open_for_append(path: Path):
    """Append handle; first drops a trailing partial line left by a kill mid-write."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with path.open("r+b") as handle:
                handle.truncate(cut)
    return path.open("a", encoding="utf-8")


def check_run_identity(output: Path, identity: dict[str, Any], *, write: bool) -> None:
    """Refuse to mix samples of different runs in one --output directory (rank 0 records it)."""
    path = output / "run.json"
    identity = json.loads(json.dumps(identity, default=str))  # compare as it reads back from disk
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise ValueError(
                f"{output} holds samples of a different run (differs in {changed}); use another "
                "--output directory, or delete this one to start over"
            )
        return
    if not write:
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(identity, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(temporary, path)


def atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)



def load_samples(result: str | Path) -> list[dict[str, Any]]:
    path = Path(result)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{result}: no samples.jsonl (pass an eval --output directory or the file)")
    return read_records(path)


# The parts of a spec that define the benchmark; the sampler settings (`generation`) may differ
