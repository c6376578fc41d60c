"""Special token ids (mask, pad, EOS, BOS, end of turn, slot): one resolver, one record.

The ids are resolved ONCE, when a backbone is retrofitted (``FlexMDM.retrofit`` calls
:func:`resolve_special_ids`), and recorded in the checkpoint's ``retrofit_config.json``. Every
later reader -- training data, the inference pipeline, evaluation, lm-eval, the model card --
takes them from there (:meth:`SpecialIds.from_config`, ``FlexMDM.special_ids``) and never
re-derives them from a tokenizer.

Resolution order for each id: an explicit value (adapter spec or argument) > the backbone config >
the tokenizer's declared token. For the mask id only, a last resort: a known mask string in the
vocabulary (LLaDA's tokenizer keeps ``<|mdm_mask|>`` = 126336 without declaring it); that choice
is recorded like the others, so nothing is guessed after retrofit time. Pad falls back to EOS
(LLaDA's pad id equals its EOS id: lengths are always explicit, never inferred from pads).

Stop ids: an answer ends at the first EOS or end-of-turn token. The end-of-turn ids are the
tokens of :data:`END_OF_TURN_TOKENS` the tokenizer has as special tokens (LLaDA-8B-Instruct closes
a turn with ``<|eot_id|>``), plus the tokenizer's own EOS where it differs from the model's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "END_OF_TURN_TOKENS",
    "KNOWN_MASK_TOKENS",
    "SpecialIds",
    "cut_at_stop",
    "find_mask_token_id",
    "resolve_answer_ids",
    "resolve_special_ids",
    "stop_token_ids",
]

# Mask-token strings that backbones keep in their vocabulary without declaring them as the
# tokenizer's mask token (LLaDA: "<|mdm_mask|>" = 126336; Dream: "<|mask|>").
KNOWN_MASK_TOKENS: tuple[str, ...] = ("<|mdm_mask|>", "<|mask|>")

# End-of-turn tokens of common chat formats: an answer ends at the first of these the vocabulary has.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|endoftext|>", "<|im_end|>", "<|end|>")


@dataclass(frozen=True)
class SpecialIds:
    """The special token ids of a model.

    mask: the token the diffusion noises with. pad: right-pads batches (may equal ``eos``).
    eos: end of sequence (None when unknown). bos: beginning of sequence (None when the tokenizer
    has none). end_of_turn: further ids at which an answer ends. slot: the token at the trailing
    insertion slot (FlexMDM; default pad).
    """

    mask: int
    pad: int
    eos: int | None
    bos: int | None = None
    end_of_turn: tuple[int, ...] = ()
    slot: int | None = None

    @property
    def stop_ids(self) -> frozenset[int]:
        """The ids at which a generated answer ends: EOS and the end-of-turn ids."""
        return frozenset(([] if self.eos is None else [self.eos]) + list(self.end_of_turn))

    @classmethod
    def from_config(cls, config: Any) -> SpecialIds:
        """The ids a checkpoint records (a ``RetrofitConfig`` or its dict).

        Raises ValueError for a checkpoint that records no stop ids (written in the first format,
        or retrofitted without a tokenizer): use :meth:`from_legacy_config` with its tokenizer.
        """
        stops = _field(config, "stop_token_ids")
        if stops is None:
            raise ValueError(
                "this checkpoint predates recorded stop ids (retrofit_config.json has no "
                "stop_token_ids): load it with retrofit.pipeline.Pipeline, which derives them once "
                "from its tokenizer"
            )
        return cls._from_config(config, bos=_field(config, "bos_token_id"), stops=stops)

    @classmethod
    def from_legacy_config(cls, config: Any, tokenizer: Any) -> SpecialIds:
        """Ids of a checkpoint that records no stop ids (the first format, or retrofitted without a
        tokenizer): mask, pad, EOS and slot from the checkpoint, bos (when not recorded) and the
        end-of-turn ids from its tokenizer, by :func:`resolve_answer_ids`'s rule."""
        if _field(config, "stop_token_ids") is not None:
            return cls.from_config(config)
        eos = _field(config, "eos_token_id")
        bos = _field(config, "bos_token_id")
        bos = getattr(tokenizer, "bos_token_id", None) if bos is None else bos
        return cls._from_config(config, bos=bos, stops=stop_token_ids(tokenizer, eos))

    @classmethod
    def _from_config(cls, config: Any, *, bos: int | None, stops: Iterable[int]) -> SpecialIds:
        eos = _field(config, "eos_token_id")
        return cls(
            mask=int(_field(config, "mask_token_id")),
            pad=int(_field(config, "pad_token_id")),
            eos=eos,
            bos=bos,
            end_of_turn=tuple(sorted(int(i) for i in stops if i != eos)),
            slot=_field(config, "slot_token_id"),
        )


def _field(config: Any, name: str) -> Any:
    """``name`` of a config object or mapping; None when absent."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(name)
    return getattr(config, name, None)


def _as_id(value: Any, what: str) -> int | None:
    """Normalise a special-token id (int, or a one-element list as some configs store EOS)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer token id, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be a non-negative token id, got {value}")
    return int(value)


def _first(*candidates: tuple[Any, str]) -> int | None:
    """The first candidate id that is set (each a (value, description) pair)."""
    for value, what in candidates:
        resolved = _as_id(value, what)
        if resolved is not None:
            return resolved
    return None


def find_mask_token_id(
    tokenizer: Any, model_config: Any = None, mask_token_id: int | None = None
) -> int | None:
    """The mask id by the resolution order (explicit > model config > tokenizer's declared mask >
    a known mask string in the vocabulary); None when there is none."""
    mask = _first(
        (mask_token_id, "mask_token_id"),
        (_field(model_config, "mask_token_id"), "model_config.mask_token_id"),
        (getattr(tokenizer, "mask_token_id", None), "tokenizer.mask_token_id"),
    )
    if mask is None and tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        vocab = tokenizer.get_vocab()
        for token in KNOWN_MASK_TOKENS:
            if token in vocab:
                return int(vocab[token])
    return mask


def resolve_special_ids(
    tokenizer: Any,
    model_config: Any = None,
    mask_token_id: int | None = None,
    *,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    slot_token_id: int | None = None,
) -> SpecialIds:
    """Resolve every special id of a tokenizer / backbone pair (see the module docstring).

    Args:
        tokenizer: a transformers tokenizer (may be None when ``model_config`` has every id).
        model_config: the backbone's ``PretrainedConfig`` or a dict (e.g. a loaded config.json).
        mask_token_id, pad_token_id, eos_token_id, slot_token_id: explicit values (adapter spec).

    Returns:
        :class:`SpecialIds` of mask, pad, eos (and ``slot`` when given; the adapter defaults it to
        pad). :func:`resolve_answer_ids` adds bos and the end-of-turn ids.

    Raises:
        ValueError: no mask or pad id, the mask id equal to pad / EOS / slot, or an id outside
            ``vocab_size``.
    """
    mask = find_mask_token_id(tokenizer, model_config, mask_token_id)
    if mask is None:
        raise ValueError(
            "mask_token_id is not set: the tokenizer sets no mask token and the model config has no "
            "`mask_token_id`. Pass it explicitly (resolve_special_ids(..., mask_token_id=ID), or "
            "`mask_token_id` in the adapter spec / recipe; LLaDA-8B uses 126336)."
        )
    eos = _first(
        (eos_token_id, "eos_token_id"),
        (_field(model_config, "eos_token_id"), "model_config.eos_token_id"),
        (getattr(tokenizer, "eos_token_id", None), "tokenizer.eos_token_id"),
    )
    pad = _first(
        (pad_token_id, "pad_token_id"),
        (_field(model_config, "pad_token_id"), "model_config.pad_token_id"),
        (getattr(tokenizer, "pad_token_id", None), "tokenizer.pad_token_id"),
        (eos, "eos_token_id"),
    )
    if pad is None:
        raise ValueError(
            "no pad token id found: the tokenizer has neither a pad nor an EOS token and the model "
            "config has no `pad_token_id`/`eos_token_id`; set `tokenizer.pad_token` first"
        )
    ids = SpecialIds(mask=mask, pad=pad, eos=eos, slot=_as_id(slot_token_id, "slot_token_id"))
    _check_distinct(ids, _field(model_config, "vocab_size"))
    return ids


def resolve_answer_ids(ids: SpecialIds, tokenizer: Any, model_config: Any = None) -> SpecialIds:
    """``ids`` with the ids that frame an answer: bos (the backbone config's, else the
    tokenizer's) and the end-of-turn ids at which an answer stops (:func:`stop_token_ids`)."""
    bos = _first(
        (_field(model_config, "bos_token_id"), "model_config.bos_token_id"),
        (getattr(tokenizer, "bos_token_id", None), "tokenizer.bos_token_id"),
    )
    stops = stop_token_ids(tokenizer, ids.eos)
    return replace(ids, bos=bos, end_of_turn=tuple(sorted(i for i in stops if i != ids.eos)))


def _check_distinct(ids: SpecialIds, vocab_size: Any) -> None:
    """The mask must differ from pad, EOS and slot; every id must fit the vocabulary."""
    for name, value in (("pad", ids.pad), ("EOS", ids.eos), ("slot", ids.slot)):
        if value is not None and ids.mask == value:
            raise ValueError(
                f"mask_token_id == {name.lower()}_token_id == {ids.mask}: the mask token id equals "
                f"the {name} token id, but the mask must be a distinct token (pass the right "
                "`mask_token_id`, e.g. 126336 for LLaDA-8B)"
            )
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool):
        named = (("mask", ids.mask), ("pad", ids.pad), ("eos", ids.eos), ("slot", ids.slot))
        for name, value in named:
            if value is not None and value >= vocab_size:
                raise ValueError(
                    f"{name} token id {value} is outside the model vocabulary (vocab_size="
                    f"{vocab_size}); the tokenizer does not match the model"
                )


def stop_token_ids(tokenizer: Any, eos_token_id: int | None = None) -> set[int]:
    """The ids at which an answer ends: ``eos_token_id`` (the model's EOS), the tokenizer's EOS and
    the tokens of :data:`END_OF_TURN_TOKENS` the tokenizer has as special tokens."""
    stops = {int(eos_token_id)} if eos_token_id is not None else set()
    if tokenizer is None:
        return stops
    if getattr(tokenizer, "eos_token_id", None) is not None:
        stops.add(int(tokenizer.eos_token_id))
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    special |= {str(token) for token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()}
    for token in END_OF_TURN_TOKENS:
        if token in special:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id >= 0:
                stops.add(token_id)
    return stops


def cut_at_stop(ids: Sequence[int], stops: Iterable[int]) -> list[int]:
    """``ids`` up to (not including) the first stop id; all of ``ids`` when none occurs."""
    stops = set(stops)
    for index, token in enumerate(ids):
        if token in stops:
            return list(ids[:index])
    return list(ids)
