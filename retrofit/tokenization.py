"""Tokenizers: small local tokenizers for tests and demos, and special-id resolution.

Two builders make `transformers` fast tokenizers entirely offline with the `tokenizers` library:

- `build_char_tokenizer(alphabet)`: one token per character (the bracket / toy demos);
- `build_bpe_tokenizer(texts, vocab_size)`: a byte-level BPE trained on the given texts in about a
  second (tests that need a realistic sub-word tokenizer).

Both set the mask, pad and EOS tokens (and optionally BOS / a chat template) and round-trip
through `save_pretrained` / `AutoTokenizer.from_pretrained`.

`resolve_special_ids` finds the mask / pad / EOS ids for a real backbone. LLaDA's tokenizer sets no
mask token: its mask id (126336) lives in the model config as `mask_token_id`, and its pad id equals
its EOS id (126081). The resolution order for the mask id is therefore explicit argument > model
config > tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "DEFAULT_EOS_TOKEN",
    "DEFAULT_MASK_TOKEN",
    "DEFAULT_PAD_TOKEN",
    "END_OF_TURN_TOKENS",
    "SIMPLE_CHAT_TEMPLATE",
    "SpecialIds",
    "add_special_tokens",
    "build_bpe_tokenizer",
    "build_char_tokenizer",
    "cut_at_stop",
    "resolve_special_ids",
    "stop_token_ids",
]

DEFAULT_MASK_TOKEN = "<|mdm_mask|>"
DEFAULT_PAD_TOKEN = "<|pad|>"
DEFAULT_EOS_TOKEN = "<|eos|>"

# Mask-token strings that backbones keep in their vocabulary without declaring them as the
# tokenizer's mask token (LLaDA: "<|mdm_mask|>" = 126336). Used as a last resort by
# `resolve_special_ids`.
KNOWN_MASK_TOKENS: tuple[str, ...] = ("<|mdm_mask|>", "<|mask|>")

# A minimal chat template in the shape of LLaDA-8B-Instruct's (header / end-of-turn markers as
# plain text so that any tokenizer can encode it). Test tokenizers use it to exercise the
# chat-template path of the SFT pipelines.
SIMPLE_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@dataclass(frozen=True)
class SpecialIds:
    """The special token ids a FlexMDM needs.

    mask: id of the mask token the diffusion noises with.
    pad: id used to right-pad batches (never used to infer lengths: it may equal `eos`).
    eos: end-of-sequence id, or None when neither the tokenizer nor the model config has one.
    """

    mask: int
    pad: int
    eos: int | None


def _special_token_list(
    mask_token: str | None,
    pad_token: str | None,
    eos_token: str | None,
    bos_token: str | None,
    unk_token: str | None,
    extra_special_tokens: Sequence[str],
) -> list[str]:
    """Unique special-token strings in a fixed order (mask, pad, eos, bos, unk, extras)."""
    ordered: list[str] = []
    for token in (mask_token, pad_token, eos_token, bos_token, unk_token, *extra_special_tokens):
        if token is not None and token not in ordered:
            if not isinstance(token, str) or not token:
                raise TypeError(f"special tokens must be non-empty strings, got {token!r}")
            ordered.append(token)
    return ordered


def _wrap(
    backend: Tokenizer,
    *,
    mask_token: str | None,
    pad_token: str | None,
    eos_token: str | None,
    bos_token: str | None,
    unk_token: str | None,
    extra_special_tokens: Sequence[str],
    chat_template: str | None,
    model_max_length: int | None,
) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers.Tokenizer` as a transformers fast tokenizer with its special tokens set."""
    kwargs: dict[str, Any] = {}
    for name, token in (
        ("mask_token", mask_token),
        ("pad_token", pad_token),
        ("eos_token", eos_token),
        ("bos_token", bos_token),
        ("unk_token", unk_token),
    ):
        if token is not None:
            kwargs[name] = token
    if extra_special_tokens:
        kwargs["additional_special_tokens"] = list(extra_special_tokens)
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_char_tokenizer(
    alphabet: str | Iterable[str],
    *,
    mask_token: str | None = DEFAULT_MASK_TOKEN,
    pad_token: str = DEFAULT_PAD_TOKEN,
    eos_token: str | None = DEFAULT_EOS_TOKEN,
    bos_token: str | None = None,
    unk_token: str | None = None,
    extra_special_tokens: Sequence[str] = (),
    chat_template: str | None = None,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Build a character-level fast tokenizer: one token per character of `alphabet`.

    Ids: the characters of `alphabet` in order (duplicates dropped) take ids 0..len-1, then the
    special tokens in the order mask, pad, eos, bos, unk, extras (a string given twice, e.g.
    `pad_token == eos_token` as in LLaDA, is one token). Special-token strings are matched whole
    before splitting into characters, so `"((<|mdm_mask|>)"` encodes to 4 ids. Decoding
    concatenates characters without separators.

    Args:
        alphabet: the characters (a string or an iterable of single characters).
        mask_token, pad_token, eos_token, bos_token: special-token strings (mask/eos/bos may be
            None to leave them unset; pad is required because batches are padded with it).
        unk_token: token for characters outside `alphabet`; None (default) makes encoding such a
            character raise, which catches data/alphabet mismatches early.
        extra_special_tokens: more special tokens (e.g. infilling boundary markers).
        chat_template: optional Jinja chat template (e.g. `SIMPLE_CHAT_TEMPLATE`).
        model_max_length: recorded in the tokenizer config (informational).

    Returns:
        A `transformers` fast tokenizer (`PreTrainedTokenizerFast`).
    """
    characters: list[str] = []
    for character in alphabet:
        if not isinstance(character, str) or len(character) != 1:
            raise ValueError(
                f"alphabet must contain single characters, got {character!r}; pass multi-character "
                "tokens as extra_special_tokens"
            )
        if character not in characters:
            characters.append(character)
    if not characters:
        raise ValueError("alphabet is empty: pass the characters the tokenizer must know")
    specials = _special_token_list(
        mask_token, pad_token, eos_token, bos_token, unk_token, extra_special_tokens
    )
    vocab = {character: index for index, character in enumerate(characters)}
    for token in specials:
        if token in vocab:
            raise ValueError(f"special token {token!r} collides with an alphabet character")
        vocab[token] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk_token))
    # Split every character into its own piece ([\s\S] also matches newlines).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    return _wrap(
        backend,
        mask_token=mask_token,
        pad_token=pad_token,
        eos_token=eos_token,
        bos_token=bos_token,
        unk_token=unk_token,
        extra_special_tokens=extra_special_tokens,
        chat_template=chat_template,
        model_max_length=model_max_length,
    )


def build_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    mask_token: str | None = DEFAULT_MASK_TOKEN,
    pad_token: str = DEFAULT_PAD_TOKEN,
    eos_token: str | None = DEFAULT_EOS_TOKEN,
    bos_token: str | None = None,
    extra_special_tokens: Sequence[str] = (),
    chat_template: str | None = None,
    min_frequency: int = 2,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (locally, ~1 s for a few MB).

    Byte-level: every string is encodable (no unknown token) and `decode(encode(s)) == s`
    exactly, also for any concatenation of separately encoded pieces. Special tokens get the
    first ids (mask, pad, eos, bos, extras), then the 256 byte tokens, then the merges.

    Args:
        texts: training corpus (any iterable of strings; consumed once).
        vocab_size: total vocabulary size including the 256 byte tokens and special tokens.
        mask_token, pad_token, eos_token, bos_token, extra_special_tokens: as in
            `build_char_tokenizer`.
        chat_template: optional Jinja chat template (e.g. `SIMPLE_CHAT_TEMPLATE`).
        min_frequency: minimum pair count for a merge.
        model_max_length: recorded in the tokenizer config (informational).

    Returns:
        A `transformers` fast tokenizer (`PreTrainedTokenizerFast`).
    """
    specials = _special_token_list(
        mask_token, pad_token, eos_token, bos_token, None, extra_special_tokens
    )
    minimum = 256 + len(specials)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least "
            f"{minimum} (256 bytes + {len(specials)} special tokens)"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return _wrap(
        backend,
        mask_token=mask_token,
        pad_token=pad_token,
        eos_token=eos_token,
        bos_token=bos_token,
        unk_token=None,
        extra_special_tokens=extra_special_tokens,
        chat_template=chat_template,
        model_max_length=model_max_length,
    )


def add_special_tokens(tokenizer: PreTrainedTokenizerFast, tokens: Sequence[str]) -> list[int]:
    """Make each string in `tokens` a single special token of `tokenizer` (in place).

    Tokens already in the vocabulary keep their ids. New tokens get ids from `len(tokenizer)` up:
    the model's embedding matrix must have room for them (check `max(ids) < vocab_size`, or resize
    the embeddings and train the new rows).

    Returns:
        The id of each token, in order.
    """
    vocab = tokenizer.get_vocab()
    missing = [token for token in tokens if token not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return [int(tokenizer.convert_tokens_to_ids(token)) for token in tokens]


def _config_value(model_config: Any, name: str) -> Any:
    """Read `name` from a PretrainedConfig-like object or a mapping; None when absent."""
    if model_config is None:
        return None
    if isinstance(model_config, Mapping):
        return model_config.get(name)
    return getattr(model_config, name, None)


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


def resolve_special_ids(
    tokenizer: Any,
    model_config: Any = None,
    mask_token_id: int | None = None,
) -> SpecialIds:
    """Find the mask, pad and EOS ids for a tokenizer / model pair.

    Resolution order:
      mask: `mask_token_id` argument > `model_config.mask_token_id` > `tokenizer.mask_token_id` >
            a known mask string in the tokenizer vocabulary ("<|mdm_mask|>", "<|mask|>").
      eos:  `tokenizer.eos_token_id` > `model_config.eos_token_id`.
      pad:  `tokenizer.pad_token_id` > `model_config.pad_token_id` > eos.
    LLaDA's tokenizer has no mask token; its config has `mask_token_id=126336`, and its pad id
    equals its EOS id (126081), which is allowed (lengths are always explicit).

    Args:
        tokenizer: a transformers tokenizer (may be None when `model_config` has every id).
        model_config: a `PretrainedConfig` or a dict (e.g. loaded config.json), or None.
        mask_token_id: explicit override for the mask id.

    Raises:
        ValueError: when no mask id or no pad id can be found, when the mask id equals the pad or
            EOS id, or when an id falls outside the model's `vocab_size`.
    """
    mask = _as_id(mask_token_id, "mask_token_id")
    if mask is None:
        mask = _as_id(_config_value(model_config, "mask_token_id"), "model_config.mask_token_id")
    if mask is None and tokenizer is not None:
        mask = _as_id(getattr(tokenizer, "mask_token_id", None), "tokenizer.mask_token_id")
    if mask is None and tokenizer is not None:
        vocab = tokenizer.get_vocab()
        for token in KNOWN_MASK_TOKENS:
            if token in vocab:
                mask = int(vocab[token])
                break
    if mask is None:
        raise ValueError(
            "no mask token id found: the tokenizer sets no mask token and the model config has no "
            "`mask_token_id`. Pass it explicitly (resolve_special_ids(..., mask_token_id=ID), or "
            "`mask_token_id` in the adapter spec / recipe; LLaDA-8B uses 126336)."
        )

    eos = None
    if tokenizer is not None:
        eos = _as_id(getattr(tokenizer, "eos_token_id", None), "tokenizer.eos_token_id")
    if eos is None:
        eos = _as_id(_config_value(model_config, "eos_token_id"), "model_config.eos_token_id")

    pad = None
    if tokenizer is not None:
        pad = _as_id(getattr(tokenizer, "pad_token_id", None), "tokenizer.pad_token_id")
    if pad is None:
        pad = _as_id(_config_value(model_config, "pad_token_id"), "model_config.pad_token_id")
    if pad is None:
        pad = eos
    if pad is None:
        raise ValueError(
            "no pad token id found: the tokenizer has neither a pad nor an EOS token and the model "
            "config has no `pad_token_id`/`eos_token_id`; set `tokenizer.pad_token` first"
        )

    if mask == pad:
        raise ValueError(
            f"mask token id {mask} equals the pad token id: the mask must be a distinct token "
            "(pass the right `mask_token_id`, e.g. 126336 for LLaDA-8B)"
        )
    if eos is not None and mask == eos:
        raise ValueError(
            f"mask token id {mask} equals the EOS token id: the mask must be a distinct token "
            "(pass the right `mask_token_id`, e.g. 126336 for LLaDA-8B)"
        )
    vocab_size = _config_value(model_config, "vocab_size")
    if isinstance(vocab_size, int):
        for name, value in (("mask", mask), ("pad", pad), ("eos", eos)):
            if value is not None and value >= vocab_size:
                raise ValueError(
                    f"{name} token id {value} is outside the model vocabulary (vocab_size="
                    f"{vocab_size}); the tokenizer does not match the model"
                )
    return SpecialIds(mask=mask, pad=pad, eos=eos)


# End-of-turn tokens of common chat formats: an answer ends at the first of these the vocabulary has.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|endoftext|>", "<|im_end|>", "<|end|>")


def stop_token_ids(tokenizer: Any, eos_token_id: int | None = None) -> set[int]:
    """The ids at which a generated answer ends: ``eos_token_id`` (the model config's EOS, LLaDA's
    126081), the tokenizer's EOS, and the end-of-turn tokens of :data:`END_OF_TURN_TOKENS` that the
    tokenizer has as special tokens (LLaDA-8B-Instruct closes a turn with ``<|eot_id|>``)."""
    stops = {int(eos_token_id)} if eos_token_id is not None else set()
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
