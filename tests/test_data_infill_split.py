"""Infilling records that carry their own split (``data.fields`` maps ``prefix`` and ``suffix``):
the demo's training data (issue 18). The middle is the record's output verbatim, prefix, suffix and
instruction may be empty (an empty prefix and suffix is plain generation in the infilling
layout), and both objectives lay the record out exactly as the samplers are prompted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrofit.data import DataConfig, PromptLayout, build_dataset, encode_generation_inputs
from retrofit.tokenization import build_char_tokenizer

CHAT = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"
MARKERS = ("<|mid|>", "<|suf|>")
PSM = "{instruction}{prefix}<|suf|>{suffix}<|mid|>"
RECORDS = [
    {"prefix": "ab", "output": "bbc", "suffix": "cd"},
    {"prefix": "", "output": "aabd", "suffix": ""},
    {"prefix": "", "output": "a", "suffix": "bcd"},
    {"prefix": "abc", "output": "d", "suffix": None},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer("abcd", pad_token="<|eos|>", eos_token="<|eos|>",
                                bos_token="<|bos|>", extra_special_tokens=MARKERS, chat_template=CHAT)


def _examples(tokenizer, tmp_path: Path, objective: str, records=RECORDS) -> list[dict]:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    config = DataConfig(kind="infill", path=str(path), fields={"prefix": "prefix", "suffix": "suffix"},
                        max_length=32, shuffle=False, num_epochs=1, infill_markers=MARKERS,
                        psm_template=PSM, objective=objective, cache_dir=str(tmp_path / "cache"))
    return list(build_dataset(config, tokenizer))


def _text(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids))


def test_flexmdm_rows_use_the_given_split(tokenizer, tmp_path):
    examples = _examples(tokenizer, tmp_path, "flexmdm")
    assert len(examples) == len(RECORDS)
    for example, record in zip(examples, RECORDS):
        ids, start, end = example["input_ids"], example["middle_start"], example["middle_end"]
        assert _text(tokenizer, ids[start:end]) == record["output"]
        suffix = record["suffix"] or ""
        assert _text(tokenizer, ids) == f"<|bos|>{record['prefix']}<|mid|>{record['output']}<|suf|>{suffix}"
        assert example["protected"] == [True] * start + [False] * (end - start) + [True] * (len(ids) - end)


def test_mdm_rows_are_the_psm_layout_the_pipeline_prompts_with(tokenizer, tmp_path):
    examples = _examples(tokenizer, tmp_path, "mdm")
    layout = PromptLayout(chat_template="auto", infill_markers=MARKERS, psm_template=PSM,
                          append_eos=True)
    for example, record in zip(examples, RECORDS):
        ids, start = example["input_ids"], example["middle_start"]
        suffix = record["suffix"] or ""
        assert _text(tokenizer, ids) == (f"<|bos|>{record['prefix']}<|suf|>{suffix}<|mid|>"
                                         f"{record['output']}<|eos|>")
        prompts, _ = encode_generation_inputs(tokenizer, [(None, record["prefix"], suffix)],
                                              objective="mdm", layout=layout)
        assert prompts[0] == ids[:start]


def test_split_roles_come_in_pairs_and_an_empty_middle_is_skipped(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="both roles prefix and suffix"):
        DataConfig(kind="infill", path="x.jsonl", fields={"prefix": "prefix"})
    examples = _examples(tokenizer, tmp_path, "flexmdm",
                         [{"prefix": "a", "output": "", "suffix": "b"}, *RECORDS[:1]])
    assert len(examples) == 1
