"""Where a checkpoint lives: resolve a local directory or a Hugging Face Hub repo id to a local folder.

Every loader in retrofit (``FlexMDM.from_pretrained``, the backbone loaders, each CLI ``--model``)
calls :func:`resolve_checkpoint` so that a local path and a Hub id (``user/name``, optionally pinned
to a branch, tag or commit with ``revision``) behave the same. Hub repos are fetched with
``huggingface_hub.snapshot_download`` into the standard cache (``HF_HOME`` / ``HF_HUB_CACHE``), so
``HF_HUB_OFFLINE=1`` works from that cache and fails with an actionable message when something
is not there.

This module depends on ``huggingface_hub`` only (imported lazily): any layer may import it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_FILES",
    "ADAPTER_WEIGHTS_FILE",
    "BACKBONE_FILE_PATTERNS",
    "CONFIG_FILE",
    "NEW_MODULES_FILE",
    "TOKENIZER_FILES",
    "is_hub_id",
    "resolve_checkpoint",
]

# The files of a retrofit checkpoint (names defined here once; every module imports them).
CONFIG_FILE = "retrofit_config.json"
NEW_MODULES_FILE = "flexmdm_modules.safetensors"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_FILES = (CONFIG_FILE, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, NEW_MODULES_FILE)
# The files of a saved tokenizer (any of the first three means a checkpoint holds one).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)

# Files a backbone needs from a Hub repo (config, safetensors weights, tokenizer, remote-code
# modules): skips duplicate weight formats (.bin, .pth, .gguf, ...) that a repo may also carry.
BACKBONE_FILE_PATTERNS: tuple[str, ...] = (
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.py",
)


def _looks_like_local_path(name: str) -> bool:
    """True for strings that can only be meant as a filesystem path (never a Hub id)."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
        or (len(name) > 1 and name[1] == ":")  # Windows drive letter
    )


def is_hub_id(name: str | os.PathLike, *, check_local: bool = True) -> bool:
    """Whether ``name`` is a syntactically valid Hub repo id (``name`` or ``namespace/name``) and no
    existing local path. It does not contact the Hub.

    ``check_local=False`` checks the spelling only, not whether a path of that name exists relative
    to the current directory (for names recorded elsewhere, e.g. in another process's results).
    """
    if isinstance(name, os.PathLike):
        return False
    text = str(name)
    if not text or _looks_like_local_path(text):
        return False
    if check_local and Path(text).expanduser().exists():
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    *,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_patterns: Sequence[str] | None = None,
    local_files_only: bool = False,
) -> Path:
    """Return a local directory holding the checkpoint ``name_or_path``.

    Args:
        name_or_path: an existing local directory, or a Hub repo id ``namespace/name``.
            A local directory wins over a Hub id of the same spelling (as in transformers).
        revision: for Hub ids, the branch, tag or commit hash to pin (default: ``main``).
            Ignored with a warning for a local directory, which has no revisions.
        token: Hub token (default: ``HF_TOKEN`` or the ``hf auth login`` token); ``False`` for none.
        cache_dir: Hub cache directory (default: ``HF_HUB_CACHE``, i.e. ``$HF_HOME/hub``).
        allow_patterns: only download files matching these glob patterns (e.g.
            :data:`BACKBONE_FILE_PATTERNS` for a base model); default: the whole repo.
        local_files_only: never contact the Hub (also implied by ``HF_HUB_OFFLINE=1``).

    Returns:
        The absolute path of the directory: the local directory itself, or the cached snapshot of
        the Hub revision (treat it as read-only; it is shared by every user of the cache).

    Raises:
        FileNotFoundError: no such local directory and no such Hub repo or revision, or (offline)
            the revision is not in the cache; the message says which and how to fix it.
        NotADirectoryError: ``name_or_path`` is an existing file.
        PermissionError: the Hub refused access (gated or private repo, rejected token).
        ConnectionError: the Hub could not be reached and nothing usable is cached.
    """
    text = os.fspath(name_or_path)
    if not text:
        raise ValueError("resolve_checkpoint: empty model name; pass a local directory or a Hub id user/name")
    path = Path(text).expanduser()
    if path.is_dir():
        if revision is not None:
            warnings.warn(
                f"revision={revision!r} is ignored for the local directory {path} (revisions apply to Hub ids)",
                stacklevel=2,
            )
        return path.resolve()
    if path.exists():
        raise NotADirectoryError(f"{text} is a file; expected a checkpoint directory or a Hub repo id")
    if isinstance(name_or_path, os.PathLike) or not is_hub_id(text):
        raise FileNotFoundError(
            f"{text!r} is not an existing directory"
            + ("" if _looks_like_local_path(text) else " nor a valid Hub repo id (namespace/name)")
            + "; check the path, or pass a Hub id such as 'user/llada-flexmdm'"
        )
    return _download_snapshot(
        text,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        allow_patterns=allow_patterns,
        local_files_only=local_files_only,
    )


def _download_snapshot(
    repo_id: str,
    *,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike | None,
    allow_patterns: Sequence[str] | None,
    local_files_only: bool,
) -> Path:
    """snapshot_download with the Hub's errors turned into messages that say what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    shown_revision = revision or "main"
    where = f"Hub repo {repo_id!r} (revision {shown_revision!r})"
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    offline = local_files_only or constants.is_offline_mode()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
            local_files_only=local_files_only,
        )
    except RevisionNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id!r} has no revision {shown_revision!r} on the Hub ({constants.ENDPOINT}); "
            "pass an existing branch, tag or commit hash"
        ) from error
    except GatedRepoError as error:
        raise PermissionError(
            f"{where} is gated: accept its conditions on the Hub page, then log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local directory, and the Hub ({constants.ENDPOINT}) has no repository "
            f"{repo_id!r} visible to you: check the spelling, or for a private repo log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from error
    except LocalEntryNotFoundError as error:
        if offline:
            raise FileNotFoundError(
                f"{where} is not (completely) in the local Hugging Face cache ({cache}) and offline mode "
                "(HF_HUB_OFFLINE=1 or local_files_only) forbids downloading it. Download it once while "
                f"online (`hf download {repo_id}" + (f" --revision {revision}" if revision else "")
                + "`), point HF_HOME at the cache that holds it, or unset HF_HUB_OFFLINE."
            ) from error
        raise ConnectionError(
            f"could not download {where} from {constants.ENDPOINT} and it is not in the local cache "
            f"({cache}): {error}. Check the network connection (or HF_ENDPOINT), then retry."
        ) from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"the Hub refused access to {where} (HTTP {status}): check your token "
                "(HF_TOKEN or `hf auth login`) and its permissions"
            ) from error
        raise ConnectionError(f"downloading {where} from {constants.ENDPOINT} failed: {error}") from error
    return Path(folder).resolve()
