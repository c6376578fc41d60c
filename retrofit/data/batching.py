"""Examples -> batches: right-padded batches with explicit lengths, dynamic-length bucketing."""
from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from retrofit.data.examples import ExampleStream

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

