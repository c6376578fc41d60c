"""Tokenizers: small local tokenizers for tests and demos, and special-id resolution.

Two builders make `transformers` fast tokenizers entirely offline with the `tokenizers` library:

- `build_char_tokenizer(alphabet)`: one token per character (the bracket / toy demos);
- `build_bpe_tokenizer(texts, vocab_size)`: a byte-level BPE trained on the given texts in about a
  second (tests that need a realistic sub-word tokenizer).

Both set the mask, pad and EOS tokens (and optionally BOS / a chat template) and round-trip
through `save_pretrained` / `AutoTokenizer.from_pretrained`.

Special ids are resolved and recorded by :mod:`retrofit.special_ids` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from retrofit.special_ids import (
    END_OF_TURN_TOKENS,
    KNOWN_MASK_TOKENS,
    SpecialIds,
    cut_at_stop,
    resolve_special_ids,
    stop_token_ids,
)

__all__ = [
    "DEFAULT_EOS_TOKEN",
    "DEFAULT_MASK_TOKEN",
    "DEFAULT_PAD_TOKEN",
    "END_OF_TURN_TOKENS",
    "KNOWN_MASK_TOKENS",
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
