"""Hub pushes during training (main process only): the startup preflight of ``push_to_hub``, the
background upload of each saved checkpoint, and the final push. The Hub API is ``retrofit.hub``'s."""

from __future__ import annotations

import sys
import threading
import warnings
from pathlib import Path

from retrofit.config import TrainConfig

__all__ = ["HubCheckpointPusher", "check_hub_access", "push_final"]


def check_hub_access(cfg: TrainConfig) -> None:
    """Startup preflight of ``push_to_hub`` (main process, before the model is built): a token
    exists, the Hub accepts it, it may write, and ``hub_repo_id`` exists (it is created now, private
    when ``hub_private``). Raises PermissionError / ConnectionError / ValueError saying what to fix."""
    from retrofit.hub import check_push_access

    try:
        user = check_push_access(cfg.hub_repo_id, create=True, private=cfg.hub_private)
    except (PermissionError, ConnectionError, ValueError) as error:
        message = (
            f"push_to_hub: the run would push to {cfg.hub_repo_id}, but the check before training "
            f"failed: {error} Nothing was trained. Fix the token (HF_TOKEN or `hf auth login`, "
            "with write access), or run with push_to_hub=false."
        )
        for kind in (PermissionError, ConnectionError, ValueError):
            if isinstance(error, kind):
                raise kind(message) from error
        raise
    owner = user or "this user"
    print(f"push_to_hub: {cfg.hub_repo_id} is writable with the token of {owner}", flush=True)


def push_final(cfg: TrainConfig, final_dir: Path, step: int) -> None:
    """Push the final checkpoint to ``main`` of ``cfg.hub_repo_id``; a failure raises."""
    from retrofit.hub import push_checkpoint

    push_checkpoint(
        str(final_dir), cfg.hub_repo_id, private=cfg.hub_private,
        commit_message=f"Final retrofit checkpoint (step {step})",
    )  # fmt: skip


class HubCheckpointPusher:
    """Pushes saved checkpoints to ``cfg.hub_repo_id`` in a background thread (main process only).

    :meth:`submit` starts the push of one checkpoint's ``model/`` directory
    (``retrofit.hub.push_training_checkpoint`` in the ``cfg.hub_push_checkpoints`` mode) and
    returns at once, so training goes on during the upload; it first waits for the previous upload
    (one at a time, in step order). A failed push never stops training: it is printed to stderr
    when it happens and raised as a ``RuntimeWarning`` by the next :meth:`wait` (from the training
    thread); the checkpoint stays on disk, to be pushed later with ``retrofit push``.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.hub_repo_id is None or cfg.hub_push_checkpoints is None:
            raise ValueError("HubCheckpointPusher needs hub_repo_id and hub_push_checkpoints")
        self.repo_id: str = cfg.hub_repo_id
        self.mode: str = cfg.hub_push_checkpoints
        self.private = cfg.hub_private
        self.pushed: list[tuple[int, str]] = []  # (step, commit URL)
        self.failures: list[tuple[int, str]] = []  # (step, message)
        self._reported = 0
        self._thread: threading.Thread | None = None

    def submit(self, model_dir: Path, step: int) -> None:
        """Start pushing ``model_dir`` (the model of ``checkpoint-<step>``) in the background."""
        self.wait()
        self._thread = threading.Thread(
            target=self._push, args=(model_dir, step), name=f"hub-push-step-{step}"
        )
        self._thread.start()

    def wait(self) -> None:
        """Wait for the upload in flight (if any); warn about each push that failed since the
        last call."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for _, message in self.failures[self._reported :]:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        self._reported = len(self.failures)

    def _push(self, model_dir: Path, step: int) -> None:
        from retrofit.hub import push_training_checkpoint, training_branch_name

        try:
            # verify=False: the directory was just written from the live model by save_pretrained.
            url = push_training_checkpoint(
                model_dir, self.repo_id, step=step, mode=self.mode, private=self.private,
                verify=False,
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - a push must never kill the run
            branch = training_branch_name(step) if self.mode == "branch" else None
            where = self.repo_id + (f" (branch {branch})" if branch else "")
            command = f"retrofit push {model_dir} --repo-id {self.repo_id}"
            command += f" --revision {branch}" if branch else ""
            message = (
                f"hub_push_checkpoints: pushing checkpoint step {step} ({model_dir}) to {where} "
                f"FAILED ({type(error).__name__}: {error}). Training continues; the checkpoint "
                f"stays on disk: push it later with `{command}`."
            )
            self.failures.append((step, message))
            print(f"\n{'!' * 100}\n{message}\n{'!' * 100}", file=sys.stderr, flush=True)
            return
        self.pushed.append((step, url))
        print(f"hub_push_checkpoints: pushed checkpoint step {step} to {url}", flush=True)
