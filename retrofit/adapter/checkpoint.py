"""Checkpoint files: reading them with one-line errors, atomic directory writes, strict key
checks, Hub resolution. The file names are defined once, in :mod:`retrofit.checkpoint_io`."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from retrofit.checkpoint_io import (  # noqa: F401 - the checkpoint file names, re-exported
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS_FILE,
    BACKBONE_FILE_PATTERNS,
    CONFIG_FILE,
    NEW_MODULES_FILE,
    TOKENIZER_FILES,
    is_hub_id,
    resolve_checkpoint,
)


class CheckpointFileError(ValueError):
    """A checkpoint file that exists but cannot be read (truncated, empty, not the format)."""


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """The JSON content of ``path``; a damaged file is one :class:`CheckpointFileError` naming
    ``file:line:column`` and what to do."""
    import json

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise CheckpointFileError(
            f"{path}:{error.lineno}:{error.colno}: {what} is not valid JSON ({error.msg}); the "
            "checkpoint is damaged: save it again or download it again") from None
    except UnicodeDecodeError:
        raise CheckpointFileError(f"{path}: {what} is not UTF-8 text; the checkpoint is damaged") from None


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, empty or truncated file is one error naming
    the file and what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint is incomplete (save it again)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        size = path.stat().st_size
        raise CheckpointFileError(
            f"{path} ({size:,} bytes) is truncated or not a safetensors file ({error}); the "
            "checkpoint is damaged: save it again or download it again") from None


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden staging directory next to ``target``; on success it becomes ``target``.

    The staging directory lives in the same parent (same filesystem, so renames are atomic). On
    success an existing ``target`` is renamed away, the staging directory renamed to ``target``
    and the old one removed; if the second rename fails the old checkpoint is put back. On any
    exception inside the block the staging directory is deleted and ``target`` is untouched.
    What a killed process leaves behind is repaired first (see :func:`recover_interrupted_save`).
    """
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(
            f"cannot save a checkpoint to {target}: it exists and is not a directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp creates 0700; a checkpoint is an ordinary readable directory
    try:
        yield staging
        _fsync_tree(staging)
        if target.exists():
            retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, retired)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired, target)
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def recover_interrupted_save(target: str | os.PathLike) -> None:
    """Repair what a save to ``target`` killed mid-way (SIGKILL, power loss) left next to it.

    Staging directories (``.NAME.tmp-*``) are incomplete by construction and are removed. A
    retired checkpoint (``.NAME.old-*``) is put back as ``target`` when the kill fell between the
    two renames (``target`` missing), and removed otherwise. Call it only while no other process
    is saving to ``target``.
    """
    target = Path(target).absolute()
    if not target.parent.is_dir():
        return
    pattern = glob.escape(f".{target.name}")
    for stale in target.parent.glob(f"{pattern}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    retired = sorted(target.parent.glob(f"{pattern}.old-*"), key=lambda path: path.stat().st_mtime)
    if retired and not target.exists():
        os.replace(retired.pop(), target)
    for old in retired:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    """Flush the files of ``directory`` to disk before it is renamed into place."""
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def check_state_dict_keys(
    expected: Mapping[str, Any] | set[str], found: Mapping[str, torch.Tensor], *, what: str
) -> None:
    """Raise ValueError listing missing, unexpected and (when shapes are known) mis-shaped keys.

    Args:
        expected: expected keys, or a key -> tensor mapping (then shapes are compared too).
        found: the tensors read from disk (or given by the caller).
        what: names the source in the message.
    """
    expected_keys = set(expected)
    missing = sorted(expected_keys - set(found))
    unexpected = sorted(set(found) - expected_keys)
    mismatched = []
    if isinstance(expected, Mapping):
        for key in sorted(expected_keys & set(found)):
            want = getattr(expected[key], "shape", None)
            if want is not None and tuple(want) != tuple(found[key].shape):
                mismatched.append(f"{key}: expected {tuple(want)}, found {tuple(found[key].shape)}")
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:20]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 20 else ""
                )
                parts.append(f"{label}: {shown}")
        raise ValueError(
            f"{what} does not match the model ({'; '.join(parts)}). The checkpoint was written for "
            "a different model/spec or was modified; loading is strict."
        )


def resolve_checkpoint_dir(checkpoint: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint directory, or the local snapshot of a Hub repository (whole repo).

    Delegates to :func:`retrofit.checkpoint_io.resolve_checkpoint` (a local directory wins over a
    Hub id of the same spelling; Hub errors become actionable FileNotFoundError/ConnectionError).
    """
    return resolve_checkpoint(checkpoint, revision)


def resolve_backbone_dir(
    name_or_path: str | os.PathLike, revision: str | None = None
) -> tuple[Path, str | None]:
    """(local directory, Hub commit hash or None) of a base model given as a path or Hub id.

    Only the files a backbone needs are fetched (``BACKBONE_FILE_PATTERNS``). The commit hash of
    a Hub snapshot is its folder name, recorded so a checkpoint pins the exact base weights.
    """
    if is_hub_id(name_or_path):
        directory = resolve_checkpoint(
            name_or_path, revision, allow_patterns=BACKBONE_FILE_PATTERNS
        )
        commit = directory.name if re.fullmatch(r"[0-9a-f]{40}", directory.name) else None
        return directory, commit
    directory = resolve_checkpoint(name_or_path, revision)
    # A local path into the Hugging Face cache (.../snapshots/<commit>) is pinned to that commit.
    is_snapshot = directory.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", directory.name)
    return directory, (directory.name if is_snapshot else None)


def local_fingerprint(directory: str | os.PathLike) -> str:
    """A cheap identity of a local backbone directory: sha256 over ``config.json`` and the names
    and sizes of its weight files (no weights are read). Recorded for a local base model, so that
    loading a checkpoint on top of a different local base warns."""
    import hashlib

    directory = Path(directory)
    digest = hashlib.sha256()
    config = directory / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    return "sha256:" + digest.hexdigest()[:32]
