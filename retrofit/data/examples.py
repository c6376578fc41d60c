"""Records -> examples: the bad-record policy, statistics and the resumable example stream."""
from __future__ import annotations

import copy
import hashlib
import itertools
import os
import random
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrofit.data.config import DataConfig
from retrofit.data.sources import load_records
from retrofit.prompt_layout import (
    _use_chat_template,
    build_infill_example,
    encode_prompt,
    encode_text,
    make_example,
    resolve_mask_token_id,
)

_STATE_VERSION = 1

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
# Record -> examples
# --------------------------------------------------------------------------------------------


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




def split_infill_record(
    cfg: DataConfig, instruction: str, output: str, epoch: int
) -> tuple[str, str, str, str]:
    """``(instruction, prefix, middle, suffix)`` of one infill record in one epoch.

    The middle span is chosen from a per-record seed (content + ``cfg.seed`` + epoch: independent
    of order, rank and resume); the instruction is ``cfg.infill_instruction`` when set, and dropped
    (``""``) for a share ``cfg.empty_instruction_rate`` of records, decided from other bytes of the
    same digest, so the span choice does not depend on either.
    """
    digest = hashlib.sha256(f"{cfg.seed}\x00{epoch}\x00{instruction}\x00{output}".encode()).digest()
    if cfg.infill_instruction is not None:
        instruction = cfg.infill_instruction
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    start, end = choose_infill_span(output, rng, mode=cfg.infill_span)
    if int.from_bytes(digest[8:16], "little") / 2**64 < cfg.empty_instruction_rate:
        instruction = ""
    return instruction, output[:start], output[start:end], output[end:]


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
            from retrofit.prompts import gsm8k_template

            self.gsm8k = gsm8k_template(cfg.gsm8k_template)  # shared with the GSM8K benchmark
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

    def _text(self, record: Mapping[str, Any], role: str, *, allow_empty: bool = False) -> str:
        """The text of ``role`` in ``record``; ``allow_empty``: a missing, null or empty field
        reads as "" instead of skipping the record."""
        column = self.fields[role]
        if column not in record or record[column] is None:
            if allow_empty:
                return ""
            raise _Skip("missing_field", f"field {column!r} ({role}) is missing")
        value = record[column]
        if not isinstance(value, str):
            raise _Skip("bad_type", f"field {column!r} ({role}) is {type(value).__name__}, not str")
        if not value.strip() and not allow_empty:
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
            prompt = self.gsm8k.prompt(self._text(record, "question"))
            try:
                target = self.gsm8k.target(self._text(record, "answer"))
            except ValueError as error:  # e.g. no "#### <number>" line
                raise _Skip("bad_format", str(error)) from None
            return (
                encode_prompt(self.tokenizer, prompt, chat_template=cfg.chat_template,
                              answer_prefix=self.gsm8k.answer_prefix),
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
        return make_example(
            ids, [True] * len(prompt_ids) + [False] * len(response_ids), len(prompt_ids)
        )

    def _too_long(self, total: int) -> None:
        """Apply the over-long policy: returns to truncate, raises _Skip to skip."""
        if self.cfg.on_bad_record != "truncate":
            raise _Skip("too_long", f"{total} tokens exceed max_length {self.cfg.max_length}")

    def infill(self, record: Mapping[str, Any], stats: DataStats, epoch: int) -> dict[str, Any]:
        """One infilling example (flexmdm marker layout or mdm PSM layout)."""
        cfg = self.cfg
        if "prefix" in self.fields:  # the record carries its own split (DataConfig.infill_span)
            middle = self._text(record, "output")
            instruction, prefix, suffix = (
                self._text(record, role, allow_empty=True) for role in ("instruction", "prefix", "suffix")
            )
        else:
            instruction = self._text(record, "instruction")
            output = self._text(record, "output")
            instruction, prefix, middle, suffix = split_infill_record(
                cfg, instruction, output, epoch
            )

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
            example = make_example(
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
        self.stats = DataStats()
        self._records = load_records(cfg, tokenizer, self.stats) if records is None else records
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
            return [make_example(row, [False] * len(row), 0) for row in rows]
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
        return [make_example(row, [False] * len(row), 0) for row in kept]

    def _flush_pack_buffer(self) -> None:
        """End of an epoch when packing: the leftover tokens form one last, shorter row."""
        if self.cfg.pack and self._pack_buffer:
            row, self._pack_buffer = self._pack_buffer, []
            if len(row) >= self.cfg.min_chunk_length:
                self._pending.append(make_example(row, [False] * len(row), 0))
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


