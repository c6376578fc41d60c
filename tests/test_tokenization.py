"""Tests for retrofit.tokenization: local tokenizers and special-id resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from retrofit.tokenization import (
    SIMPLE_CHAT_TEMPLATE,
    SpecialIds,
    add_special_tokens,
    build_bpe_tokenizer,
    build_char_tokenizer,
    resolve_special_ids,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K_TRAIN = SHARED / "data" / "gsm8k" / "train.jsonl"


@pytest.fixture(scope="module")
def gsm8k_texts() -> list[str]:
    texts = []
    with open(GSM8K_TRAIN, encoding="utf-8") as handle:
        for line, _ in zip(handle, range(1500)):
            record = json.loads(line)
            texts += [record["question"], record["answer"]]
    return texts


@pytest.fixture(scope="module")
def bpe(gsm8k_texts):
    return build_bpe_tokenizer(
        gsm8k_texts, 1200, bos_token="<|bos|>", chat_template=SIMPLE_CHAT_TEMPLATE
    )


def test_char_tokenizer_ids_and_round_trip():
    tokenizer = build_char_tokenizer("()")
    vocab = tokenizer.get_vocab()
    assert vocab == {"(": 0, ")": 1, "<|mdm_mask|>": 2, "<|pad|>": 3, "<|eos|>": 4}
    assert (tokenizer.mask_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (2, 3, 4)
    ids = tokenizer("(()<|mdm_mask|>)", add_special_tokens=False)["input_ids"]
    assert ids == [0, 0, 1, 2, 1]  # the special token is matched whole
    assert tokenizer.decode([0, 1, 0, 0, 1, 1]) == "()(())"
    with pytest.raises(Exception, match="UNK"):
        tokenizer("(x)", add_special_tokens=False)


def test_char_tokenizer_newlines_unk_and_shared_pad_eos():
    tokenizer = build_char_tokenizer(
        "ab\n", pad_token="<|eos|>", eos_token="<|eos|>", unk_token="<|unk|>"
    )
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # LLaDA-style pad == eos: one token
    ids = tokenizer("a\nbz", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4 and ids[-1] == tokenizer.unk_token_id
    assert tokenizer.decode(ids[:3]) == "a\nb"
    with pytest.raises(ValueError, match="single characters"):
        build_char_tokenizer(["ab"])
    with pytest.raises(ValueError, match="empty"):
        build_char_tokenizer("")


def test_bpe_tokenizer_round_trip_and_specials(bpe, gsm8k_texts):
    assert len(bpe) == 1200
    assert (bpe.mask_token_id, bpe.pad_token_id, bpe.eos_token_id, bpe.bos_token_id) == (0, 1, 2, 3)
    for text in gsm8k_texts[:200] + ["naïve café – 12,345 \\boxed{7}\n\n  x"]:
        ids = bpe(text, add_special_tokens=False)["input_ids"]
        assert bpe.decode(ids) == text
    # Separately encoded pieces decode to their concatenation (byte-level).
    pieces = ["def f(x):\n", "    return x", " + 1\n"]
    ids = [token for piece in pieces for token in bpe(piece, add_special_tokens=False)["input_ids"]]
    assert bpe.decode(ids) == "".join(pieces)
    with pytest.raises(ValueError, match="vocab_size"):
        build_bpe_tokenizer(["abc"], 100)


def test_save_load_round_trip(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips<|eos|>"
    assert (
        loaded(text, add_special_tokens=False)["input_ids"]
        == bpe(text, add_special_tokens=False)["input_ids"]
    )
    assert resolve_special_ids(loaded) == resolve_special_ids(bpe) == SpecialIds(0, 1, 2)
    assert loaded.bos_token_id == 3
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == bpe.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_add_special_tokens_keeps_existing_ids():
    tokenizer = build_char_tokenizer("ab")
    ids = add_special_tokens(tokenizer, ["<|fim|>", "a", "<|eos|>"])
    assert ids == [5, 0, 4]
    assert tokenizer("a<|fim|>b", add_special_tokens=False)["input_ids"] == [0, 5, 1]


def test_resolve_llada_style_mask_from_model_config():
    # LLaDA: no mask token in the tokenizer, mask id in the model config, pad == eos.
    tokenizer = build_char_tokenizer(
        "ab",
        mask_token=None,
        pad_token="<|eos|>",
        eos_token="<|eos|>",
        extra_special_tokens=["<|reserved|>"],
    )
    assert tokenizer.mask_token_id is None
    config = {"mask_token_id": 3, "vocab_size": 8}
    assert resolve_special_ids(tokenizer, config) == SpecialIds(mask=3, pad=2, eos=2)
    # Explicit argument > model config > tokenizer.
    assert resolve_special_ids(tokenizer, config, mask_token_id=5).mask == 5

    class Config:  # attribute-style (PretrainedConfig-like), EOS stored as a list
        def __init__(self) -> None:
            self.mask_token_id = 3
            self.pad_token_id = None
            self.eos_token_id = [2]

    assert resolve_special_ids(None, Config()) == SpecialIds(mask=3, pad=2, eos=2)


def test_resolve_order_and_vocab_fallback():
    tokenizer = build_char_tokenizer("ab")  # mask 2, pad 3, eos 4
    assert resolve_special_ids(tokenizer) == SpecialIds(2, 3, 4)
    assert resolve_special_ids(tokenizer, {"mask_token_id": 1}).mask == 1
    # A known mask string in the vocabulary, not declared as the mask token.
    plain = build_char_tokenizer("ab", mask_token=None, extra_special_tokens=["<|mdm_mask|>"])
    assert plain.mask_token_id is None
    assert resolve_special_ids(plain).mask == plain.convert_tokens_to_ids("<|mdm_mask|>")
    # Pad falls back to the model config, then to EOS.
    no_pad = build_char_tokenizer("ab", pad_token="<|eos|>")
    no_pad.pad_token = None
    assert resolve_special_ids(no_pad, {"pad_token_id": 0}).pad == 0
    assert resolve_special_ids(no_pad).pad == no_pad.eos_token_id


def test_resolve_errors():
    no_mask = build_char_tokenizer("ab", mask_token=None)
    with pytest.raises(ValueError, match="mask_token_id"):
        resolve_special_ids(no_mask)
    with pytest.raises(ValueError, match="mask_token_id"):
        resolve_special_ids(no_mask, {"vocab_size": 10})
    tokenizer = build_char_tokenizer("ab")
    with pytest.raises(ValueError, match="equals the pad"):
        resolve_special_ids(tokenizer, mask_token_id=tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="equals the EOS"):
        resolve_special_ids(tokenizer, {"mask_token_id": tokenizer.eos_token_id})
    with pytest.raises(ValueError, match="outside the model vocabulary"):
        resolve_special_ids(tokenizer, {"vocab_size": 4})  # eos id 4 does not fit
    with pytest.raises(TypeError, match="integer"):
        resolve_special_ids(tokenizer, mask_token_id="126336")
