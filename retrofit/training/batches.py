"""The data stream of the training loop: global batches, identical on every rank.

One item is the whole batch of one optimizer step (``training.global_batch_size`` rows), read
(tokenised) by every rank: the objective noises it once, then each rank takes its micro-batches
from it (the noised batch shards itself). The rows of a step, their noise and their split into
slices of ``micro_batch_size`` rows are therefore the same on 1 or 16 processes: only which
process computes which slice changes. The data position is one number for all ranks.
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
    """Global batches of ``global_batch_size`` rows (true lengths), identical on every rank.

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
        # Rows keep their true lengths (pad beyond): the objective pads what the model sees (the
        # MDM baseline fills each micro-batch with EOS to its own width, FlexMDM trims x_t).
        collator = Collator(special_ids.pad, max_length=data_cfg.max_length, objective="flexmdm")
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
        """The next global batch: (G, L) tensors, L its longest row."""
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
    """The global batch stream of the recipe's ``data`` section (``global_batch_size`` rows each)."""
    return GlobalBatchStream(cfg, tokenizer, global_batch_size, special_ids)
