"""The data stream of the training loop: global micro-batches, identical on every rank.

Every rank reads the same stream of examples and builds the same *global* micro-batch
(``micro_batch_size * world_size`` rows); the objective then noises it and each rank keeps its own
rows. Reading (tokenising) the global batch on every rank costs a little CPU time per step, and
buys exact data parallelism: the data position is one number for all ranks, and a run on W
processes sees exactly the rows of one process with a W-times larger micro-batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from retrofit.config import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from retrofit.data import Batch
    from retrofit.tokenization import SpecialIds

__all__ = ["GlobalBatchStream", "build_data_stream"]


class GlobalBatchStream:
    """Global micro-batches (``micro_batch_size * world_size`` rows), identical on every rank.

    Wraps ``retrofit.data``'s resumable example stream and batch iterator; ``state_dict()`` is the
    data position stored in checkpoints (the same on every rank).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        tokenizer: PreTrainedTokenizerBase,
        global_batch_size: int,
        special_ids: SpecialIds,
    ) -> None:
        from retrofit.data import BatchIterator, Collator, build_dataset

        # The infill layout (markers vs PSM prompt) follows the objective.
        data_cfg = dataclasses.replace(cfg.data, objective=cfg.objective.name)
        self.max_length = data_cfg.max_length
        self.examples = build_dataset(
            data_cfg, tokenizer, rank=0, world_size=1, eos_token_id=special_ids.eos,
            mask_token_id=special_ids.mask,
        )  # fmt: skip
        collator = Collator(
            special_ids.pad,
            eos_token_id=special_ids.eos if special_ids.eos is not None else special_ids.pad,
            # FlexMDM pads x_t itself (pad_to_max_length); the MDM baseline's rows are EOS-filled.
            pad_to="max_length"
            if cfg.training.pad_to_max_length and cfg.objective.name == "mdm"
            else "longest",
            max_length=data_cfg.max_length,
            objective=cfg.objective.name,
        )
        self.batches = BatchIterator(
            self.examples,
            collator,
            global_batch_size,
            bucket_batches=cfg.training.length_bucketing,
            seed=cfg.training.seed,
            drop_last=True,
        )
        self._iterator: Iterator | None = None

    def __next__(self) -> Batch:
        """The next global micro-batch: (W B, L) tensors, L its longest row."""
        if self._iterator is None:
            self._iterator = iter(self.batches)
        try:
            return next(self._iterator)
        except StopIteration:
            raise RuntimeError(
                "the data ran out before training.max_steps: set data.num_epochs: null (loop) or "
                "fewer steps"
            ) from None

    def state_dict(self) -> dict[str, Any]:
        """The data position (stored in ``trainer_state.json``)."""
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.batches.load_state_dict(state)
        self._iterator = None

    @property
    def stats_summary(self) -> str:
        """Records read / kept / skipped (by reason) / truncated so far."""
        return self.examples.stats.summary()


def build_data_stream(
    cfg: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    global_batch_size: int,
    special_ids: SpecialIds,
) -> GlobalBatchStream:
    """The global micro-batch stream of the recipe's ``data`` section."""
    return GlobalBatchStream(cfg, tokenizer, global_batch_size, special_ids)
