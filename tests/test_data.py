"""Tests for retrofit.data: pipelines, bad-record policy, sharding, resume, collation."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from pathlib import Path

import pytest
import torch

from retrofit.data import (
    BadRecordError,
    BatchIterator,
    Collator,
    DataConfig,
    ExampleStream,
    PromptLayout,
    build_dataset,
    build_infill_example,
    encode_generation_inputs,
    encode_infill_prompt,
    encode_prompt,
    encode_text,
    load_records,
)
from retrofit.evaluation.gsm8k import format_gsm8k_prompt, format_gsm8k_target
from retrofit.tokenization import SIMPLE_CHAT_TEMPLATE, build_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K_TRAIN = SHARED / "data" / "gsm8k" / "train.jsonl"

CODE_SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "def is_even(n):\n    if n % 2 == 0:\n        return True\n    return False\n",
    (
        "def total(items):\n    result = 0\n    for item in items:\n        result += item\n"
        "    return result\n"
    ),
    (
        "class Counter:\n    def __init__(self):\n        self.count = 0\n\n    def step(self):\n"
        "        self.count += 1\n        return self.count\n"
    ),
    "import math\n\ndef circle_area(radius):\n    return math.pi * radius ** 2",
    "x = 1",
]


def read_gsm8k(count: int) -> list[dict[str, str]]:
    with open(GSM8K_TRAIN, encoding="utf-8") as handle:
        return [json.loads(line) for line in itertools.islice(handle, count)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    texts = [text for record in read_gsm8k(1500) for text in record.values()] + CODE_SNIPPETS * 20
    return build_bpe_tokenizer(texts, 1500, bos_token="<|bos|>", chat_template=SIMPLE_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def plain_tokenizer(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_datasets_cache"))


@pytest.fixture(autouse=True, scope="module")
def _private_datasets_cache(tmp_path_factory):
    """Datasets built without an explicit cache_dir write to a temporary cache, not ~/.cache."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("default_cache")
        )
        yield


@pytest.fixture(scope="module")
def infill_file(tmp_path_factory) -> Path:
    records = [
        {"instruction": f"Write function number {index}.", "output": snippet, "extra": index}
        for index, snippet in enumerate(CODE_SNIPPETS * 4)
    ]
    return write_jsonl(tmp_path_factory.mktemp("infill") / "infill.jsonl", records)


def gsm8k_config(cache_dir: str, **overrides) -> DataConfig:
    values = {
        "kind": "gsm8k",
        "path": str(GSM8K_TRAIN),
        "cache_dir": cache_dir,
        "max_length": 512,
        "shuffle": False,
        "num_epochs": 1,
    }
    values.update(overrides)
    return DataConfig(**values)


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids))


# ------------------------------------------------------------------------------ SFT / GSM8K


@pytest.mark.parametrize(
    ("objective", "append_eos", "expect_eos"),
    [("flexmdm", None, False), ("mdm", None, True), ("flexmdm", True, True)],
)
def test_gsm8k_prompt_protected_and_boxed_target(
    tokenizer, plain_tokenizer, cache_dir, objective, append_eos, expect_eos
):
    records = read_gsm8k(24)
    for tok, opening in (
        (tokenizer, "<|bos|><|start_header_id|>user"),
        (plain_tokenizer, "<|bos|>User: "),
    ):
        cfg = gsm8k_config(cache_dir, max_records=24)
        cfg = dataclasses.replace(cfg, objective=objective, append_eos=append_eos)
        stream = build_dataset(cfg, tok)
        examples = list(stream)
        assert stream.stats.seen == 24
        assert len(examples) == stream.stats.kept == 24 - stream.stats.num_skipped > 20
        by_prompt = {
            tuple(encode_prompt(tok, format_gsm8k_prompt(record["question"]))): record
            for record in records
        }
        for example in examples:
            ids, protected = example["input_ids"], example["protected"]
            prompt_length = example["prompt_length"]
            assert example["length"] == len(ids) == len(protected) <= 512
            # Protected is exactly the prompt prefix; the response is never protected.
            assert protected == [True] * prompt_length + [False] * (len(ids) - prompt_length)
            record = by_prompt[tuple(ids[:prompt_length])]
            prompt_text = decode(tok, ids[:prompt_length])
            assert prompt_text.startswith(opening)
            assert record["question"].strip() in prompt_text
            # The response is the \boxed{} target (followed by EOS by default only for the mdm
            # objective: a FlexMDM models length by insertion), and contains no prompt token run.
            response = ids[prompt_length:]
            assert (response[-1] == tok.eos_token_id) == expect_eos
            target = decode(tok, response[:-1] if expect_eos else response)
            assert target == format_gsm8k_target(record["answer"])
            final = record["answer"].rsplit("####", 1)[1].strip().replace(",", "")
            assert target.endswith(f"\\boxed{{{final}}}.")
            assert "<<" not in target and "Please reason step by step" not in target


def test_sft_prompt_response_and_messages(tokenizer, tmp_path, cache_dir):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"q": "What is 2+3?", "a": "5"}, {"q": "Name a color.", "a": "Blue"}],
    )
    stream = build_dataset(
        DataConfig(
            kind="sft",
            path=str(pairs),
            fields={"prompt": "q", "response": "a"},
            shuffle=False,
            num_epochs=1,
            append_eos=True,  # the layout under test ends with EOS
            cache_dir=cache_dir,
        ),
        tokenizer,
    )
    first, second = list(stream)
    assert first["input_ids"][: first["prompt_length"]] == encode_prompt(tokenizer, "What is 2+3?")
    assert first["input_ids"][first["prompt_length"] :] == encode_text(tokenizer, "5") + [2]
    assert decode(tokenizer, second["input_ids"][second["prompt_length"] :]) == "Blue<|eos|>"

    chats = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            },
            {"messages": [{"role": "user", "content": "no answer"}]},
        ],
    )
    stream = build_dataset(
        DataConfig(
            kind="sft",
            path=str(chats),
            fields={"messages": "messages"},
            shuffle=False,
            num_epochs=1,
            append_eos=True,  # the layout under test ends with EOS
            cache_dir=cache_dir,
        ),
        tokenizer,
    )
    (example,) = list(stream)
    assert stream.stats.skipped == {"bad_type": 1}
    assert example["input_ids"][: example["prompt_length"]] == encode_prompt(tokenizer, "Hi")
    assert decode(tokenizer, example["input_ids"][example["prompt_length"] :]) == "Hello<|eos|>"


# ------------------------------------------------------------------------------ pretraining


@pytest.fixture(scope="module")
def documents() -> list[str]:
    answers = [record["answer"] for record in read_gsm8k(40)]
    # Documents of very different lengths (1 to 6 GSM8K answers each).
    return ["\n\n".join(answers[start : start + 1 + start % 6]) for start in range(0, 40, 3)]


@pytest.mark.parametrize("source", ["json", "parquet", "text"])
def test_pretrain_one_document_per_row_keeps_every_token_once(
    tokenizer, documents, tmp_path, source
):
    if source == "json":
        path = write_jsonl(tmp_path / "docs.jsonl", [{"body": doc} for doc in documents])
        cfg = DataConfig(
            kind="pretrain",
            path=str(path),
            fields={"text": "body"},
            max_length=64,
            shuffle=False,
            num_epochs=1,
            streaming=True,
            append_eos=True,  # documents separated by EOS, as in LLaDA pretraining
        )
        expected_docs = documents
    elif source == "parquet":
        import datasets

        path = tmp_path / "docs.parquet"
        datasets.Dataset.from_list([{"text": doc} for doc in documents]).to_parquet(str(path))
        cfg = DataConfig(
            kind="pretrain",
            path=str(path),
            max_length=64,
            shuffle=False,
            num_epochs=1,
            streaming=True,
            append_eos=True,  # documents separated by EOS, as in LLaDA pretraining
        )
        expected_docs = documents
    else:
        path = tmp_path / "docs.txt"
        path.write_text("\n".join(doc.replace("\n", " ") for doc in documents) + "\n")
        cfg = DataConfig(
            kind="pretrain",
            path=str(path),
            max_length=64,
            shuffle=False,
            num_epochs=1,
            streaming=True,
            append_eos=True,  # documents separated by EOS, as in LLaDA pretraining
        )
        expected_docs = [doc.replace("\n", " ") for doc in documents]
    stream = build_dataset(cfg, tokenizer)
    rows = list(stream)
    flat = [token for row in rows for token in row["input_ids"]]
    expected = [token for doc in expected_docs for token in encode_text(tokenizer, doc) + [2]]
    assert flat == expected  # every token exactly once, in order
    position = 0
    for doc in expected_docs:  # rows never mix documents; only a document's last row is short
        ids = encode_text(tokenizer, doc) + [2]
        doc_rows = []
        while sum(len(row) for row in doc_rows) < len(ids):
            doc_rows.append(rows[position]["input_ids"])
            position += 1
        assert [token for row in doc_rows for token in row] == ids
        assert all(len(row) == 64 for row in doc_rows[:-1]) and 0 < len(doc_rows[-1]) <= 64
    for row in rows:
        assert row["length"] == len(row["input_ids"]) and not any(row["protected"])
    assert stream.stats.chunked == sum(
        len(encode_text(tokenizer, d)) + 1 > 64 for d in expected_docs
    )
    assert stream.stats.examples == len(rows)


def test_pretrain_packing_and_truncation(tokenizer, documents, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": doc} for doc in documents + [" "]])
    packed = build_dataset(
        DataConfig(
            kind="pretrain", path=str(path), max_length=50, pack=True, shuffle=False, num_epochs=1
        ),
        tokenizer,
    )
    rows = [row["input_ids"] for row in packed]
    expected = [token for doc in documents for token in encode_text(tokenizer, doc) + [2]]
    assert [token for row in rows for token in row] == expected
    assert all(len(row) == 50 for row in rows[:-1]) and len(rows[-1]) == len(expected) % 50
    assert packed.stats.skipped == {"empty": 1}

    first_rows = list(
        build_dataset(
            DataConfig(
                kind="pretrain",
                path=str(path),
                max_length=50,
                long_documents="truncate",
                shuffle=False,
                num_epochs=1,
            ),
            tokenizer,
        )
    )
    assert len(first_rows) == len(documents)
    for row, doc in zip(first_rows, documents):
        assert row["input_ids"] == (encode_text(tokenizer, doc) + [2])[:50]


# ------------------------------------------------------------------------------ infilling


def infill_examples(tokenizer, path, **overrides) -> tuple[ExampleStream, list[dict]]:
    values = {
        "kind": "infill",
        "path": str(path),
        "max_length": 512,
        "shuffle": False,
        "num_epochs": 1,
        "seed": 7,
        "append_eos": True,  # the layouts under test end with EOS
    }
    values.update(overrides)
    stream = build_dataset(DataConfig(**values), tokenizer)
    return stream, list(stream)


def test_infill_flexmdm_protects_all_but_the_middle(tokenizer, infill_file):
    start_marker, end_marker = "<|fim_middle_start|>", "<|fim_middle_end|>"
    _, examples = infill_examples(tokenizer, infill_file)
    assert len(examples) == len(CODE_SNIPPETS) * 4
    for example, output in zip(examples, CODE_SNIPPETS * 4):
        ids, protected = example["input_ids"], example["protected"]
        middle_start, middle_end = example["middle_start"], example["middle_end"]
        assert 0 < middle_start < middle_end <= len(ids) == example["length"]
        assert protected == [True] * middle_start + [False] * (middle_end - middle_start) + [
            True
        ] * (len(ids) - middle_end)
        prompt_length = example["prompt_length"]
        assert decode(tokenizer, ids[:prompt_length]).endswith("<|end_header_id|>\n\n")
        prefix = decode(tokenizer, ids[prompt_length:middle_start])
        middle = decode(tokenizer, ids[middle_start:middle_end])
        rest = decode(tokenizer, ids[middle_end:])
        assert prefix.endswith(start_marker) and rest.startswith(end_marker)
        assert rest.endswith("<|eos|>")
        prefix = prefix[: -len(start_marker)]
        suffix = rest[len(end_marker) : -len("<|eos|>")]
        assert prefix + middle + suffix == output  # the middle reconstructs the original output
        assert middle
        if output.count("\n") >= 1 and len(output.splitlines()) >= 2:  # line-aligned spans
            assert prefix == "" or prefix.endswith("\n")
            assert middle.endswith("\n") or suffix == ""
    # Spans depend on (seed, epoch, content) only: same in a rebuilt and in a shuffled stream.
    _, again = infill_examples(tokenizer, infill_file)
    assert again == examples
    _, shuffled = infill_examples(tokenizer, infill_file, shuffle=True)
    assert sorted(map(str, shuffled)) == sorted(map(str, examples))
    _, other_seed = infill_examples(tokenizer, infill_file, seed=8)
    assert other_seed != examples


@pytest.mark.parametrize(
    "overrides",
    [{"append_eos": None}, {"append_eos": True}, {"append_eos": None, "response_suffix": "<|eot_id|>"},
     {"append_eos": None, "objective": "mdm"}, {"append_eos": None, "infill_markers": ["", ""]}],
)
def test_sampler_inputs_reproduce_the_training_layout(tokenizer, infill_file, overrides):
    """encode_infill_prompt with the run's PromptLayout (what a checkpoint records) gives exactly
    the context of the training rows: the left side up to the middle and, for FlexMDM, the right
    side after it (no EOS unless training appended one)."""
    stream, examples = infill_examples(tokenizer, infill_file, **overrides)
    layout = PromptLayout.from_data_config(stream.cfg)
    objective = overrides.get("objective", "flexmdm")
    # Default: EOS closes MDM rows only (a FlexMDM models length by insertion).
    assert layout.append_eos == bool(overrides["append_eos"] or objective == "mdm")
    eos = tokenizer.eos_token_id
    for index, (example, record) in enumerate(zip(examples[:6], CODE_SNIPPETS * 4)):
        ids, start, end = example["input_ids"], example["middle_start"], example["middle_end"]
        instruction = f"Write function number {index}."
        middle = decode(tokenizer, ids[start:end])
        prefix, suffix = record[: record.index(middle)], record[record.index(middle) + len(middle):]
        left, right = encode_infill_prompt(
            tokenizer, instruction, prefix, suffix, objective=objective, layout=layout,
            eos_token_id=eos,
        )
        assert left == ids[:start]
        if objective == "flexmdm":
            assert right == ids[end:]
            assert (right[-1:] == [eos]) == layout.append_eos
        else:
            assert right == []
    round_trip = PromptLayout.from_dict(layout.to_dict())
    assert round_trip == layout
    assert PromptLayout.from_dict(None) == PromptLayout()
    assert PromptLayout.from_dict(layout.to_dict(), chat_template="never").chat_template == "never"
    with pytest.raises(ValueError, match="unknown keys"):
        PromptLayout.from_dict({"markers": ["a", "b"]})


def test_no_instruction_infill_prompt_starts_with_bos(tokenizer):
    # Issue 12: without an instruction the row keeps the training wrapper around an empty user
    # turn (it was BOS alone, a layout no training row had).
    left, right = encode_infill_prompt(tokenizer, "", "def f():\n", "    return 1\n")
    assert left[0] == tokenizer.bos_token_id
    assert left[: len(encode_prompt(tokenizer, ""))] == encode_prompt(tokenizer, "")
    assert decode(tokenizer, left[1:]) == (
        "<|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\ndef f():\n<|fim_middle_start|>"
    )
    assert decode(tokenizer, right) == "<|fim_middle_end|>    return 1\n"


def test_untokenizable_text_is_a_clear_error():
    from retrofit.tokenization import build_char_tokenizer

    brackets = build_char_tokenizer("()")
    with pytest.raises(ValueError, match="the tokenizer cannot encode 'x'"):
        encode_text(brackets, "x")


def test_infill_mdm_psm_layout_same_span(tokenizer, infill_file):
    _, flex = infill_examples(tokenizer, infill_file, infill_span="chars")
    _, psm = infill_examples(tokenizer, infill_file, infill_span="chars", objective="mdm")
    assert len(flex) == len(psm)
    for flex_example, psm_example, output in zip(flex, psm, CODE_SNIPPETS * 4):
        ids, prompt_length = psm_example["input_ids"], psm_example["prompt_length"]
        assert psm_example["protected"] == [True] * prompt_length + [False] * (
            len(ids) - prompt_length
        )
        middle = decode(
            tokenizer,
            flex_example["input_ids"][flex_example["middle_start"] : flex_example["middle_end"]],
        )
        assert decode(tokenizer, ids[prompt_length:]) == middle + "<|eos|>"
        start = output.index(middle) if output.count(middle) == 1 else None
        prompt = decode(tokenizer, ids[:prompt_length])
        assert "<|fim_middle_start|>" not in prompt
        if start is not None:
            prefix, suffix = output[:start], output[start + len(middle) :]
            assert f"<prefix>{prefix}</prefix><suffix>{suffix}</suffix>" in prompt
        assert prompt.startswith(
            "<|bos|><|start_header_id|>user<|end_header_id|>\n\nWrite function"
        )


def test_infill_markers_as_special_tokens(tokenizer, infill_file):
    local = copy.deepcopy(tokenizer)
    size = len(local)
    _, examples = infill_examples(
        local, infill_file, add_marker_tokens=True, infill_markers=["<FIM_A>", "<FIM_B>"]
    )
    assert len(local) == size + 2
    marker_a, marker_b = local.convert_tokens_to_ids(["<FIM_A>", "<FIM_B>"])
    for example in examples:
        assert example["input_ids"][example["middle_start"] - 1] == marker_a
        assert example["input_ids"][example["middle_end"]] == marker_b
    # Default: markers are encoded as text (several ordinary tokens), the tokenizer is unchanged.
    infill_examples(tokenizer, infill_file)
    assert len(tokenizer) == 1500


def test_infill_layout_for_evaluation_and_truncation(tokenizer, infill_file):
    # Evaluation prompt: an empty middle leaves the insertion slot between the two markers.
    example = build_infill_example(tokenizer, "Fill in.", "def f(x):\n", "", "    return y\n")
    assert example["middle_start"] == example["middle_end"]
    assert all(example["protected"])
    text = decode(tokenizer, example["input_ids"][example["prompt_length"] :])
    assert text == "def f(x):\n<|fim_middle_start|><|fim_middle_end|>    return y\n"
    psm = build_infill_example(tokenizer, "Fill in.", "a", "", "b", objective="mdm")
    assert decode(tokenizer, psm["input_ids"]).endswith(
        "Fill in.\n<prefix>a</prefix><suffix>b</suffix><|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\n"
    )
    # Over-long infill examples: "truncate" cuts the protected tail, never the middle.
    _, full = infill_examples(tokenizer, infill_file)
    longest = max(full, key=lambda example: example["length"] - example["middle_end"])
    limit = longest["length"] - 2
    stream, cut = infill_examples(
        tokenizer, infill_file, max_length=limit, on_bad_record="truncate"
    )
    assert len(cut) == len(full) and stream.stats.truncated >= 1
    for short, original in zip(cut, full):
        assert short["length"] <= limit
        assert short["input_ids"] == original["input_ids"][:limit]
        assert short["middle_end"] == original["middle_end"]
    stream, kept = infill_examples(tokenizer, infill_file, max_length=limit)
    assert len(kept) == len(full) - stream.stats.skipped["too_long"] < len(full)


def test_response_suffix_closes_the_turn(tokenizer, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "response": "Hello"}])
    (example,) = build_dataset(
        DataConfig(
            kind="sft", path=str(pairs), response_suffix="<|eot_id|>", num_epochs=1, append_eos=True
        ),
        tokenizer,
    )
    assert decode(tokenizer, example["input_ids"][example["prompt_length"] :]) == (
        "Hello<|eot_id|><|eos|>"
    )


# ------------------------------------------------------------------------------ bad records


def test_bad_record_policy_counts(tokenizer, tmp_path):
    good = read_gsm8k(3)
    long_answer = good[0]["answer"].replace("\n####", " " + "and then more " * 300 + "\n####")
    records = [
        good[0],
        {"question": "", "answer": good[1]["answer"]},  # empty
        {"answer": good[1]["answer"]},  # missing field
        {"question": "Q?", "answer": 42},  # wrong type
        {"question": "Q?", "answer": "no final answer line"},  # unparsable target
        {"question": good[1]["question"], "answer": long_answer},  # over-long response
        {"question": "word " * 2000, "answer": good[2]["answer"]},  # prompt alone too long
        good[2],
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", records)

    def run(policy):
        stream = build_dataset(
            gsm8k_config(None, path=str(path), max_length=320, on_bad_record=policy), tokenizer
        )
        return stream, list(stream)

    stream, examples = run("skip")
    assert len(examples) == 2 and stream.stats.seen == 8 and stream.stats.kept == 2
    assert stream.stats.skipped == {
        "empty": 1,
        "missing_field": 1,
        "bad_type": 1,
        "bad_format": 1,
        "too_long": 1,
        "prompt_too_long": 1,
    }
    assert stream.stats.truncated == 0
    summary = stream.stats.summary()
    assert "seen 8, kept 2, skipped 6" in summary and "too_long: 1" in summary

    stream, examples = run("truncate")
    assert len(examples) == 3 and stream.stats.truncated == 1
    truncated = examples[1]
    assert truncated["length"] == 320 and truncated["input_ids"][-1] != tokenizer.eos_token_id
    assert not any(truncated["protected"][truncated["prompt_length"] :])
    assert stream.stats.skipped == {
        "empty": 1,
        "missing_field": 1,
        "bad_type": 1,
        "bad_format": 1,
        "prompt_too_long": 1,
    }

    with pytest.raises(BadRecordError, match="on_bad_record"):
        run("error")


def test_mostly_skipped_data_warns_and_empty_epoch_raises(tokenizer, cache_dir):
    # Every prompt is longer than max_length: a warning after 1,000 records, an error at the end
    # of the epoch instead of looping forever over data that yields nothing.
    cfg = gsm8k_config(cache_dir, max_length=40, max_records=1000, num_epochs=None)
    stream = build_dataset(cfg, tokenizer)
    with (
        pytest.warns(UserWarning, match="most gsm8k records are being skipped"),
        pytest.raises(ValueError, match="produced no examples"),
    ):
        next(iter(stream))
    assert stream.stats.skipped == {"prompt_too_long": 1000}


# ------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize("streaming", [False, True])
def test_rank_sharding_is_disjoint_and_complete(tokenizer, cache_dir, streaming):
    cfg = gsm8k_config(cache_dir, max_records=40, streaming=streaming, shuffle=True, seed=1)
    everything = {tuple(example["input_ids"]) for example in build_dataset(cfg, tokenizer)}
    shards = [
        [
            tuple(example["input_ids"])
            for example in build_dataset(cfg, tokenizer, rank=rank, world_size=2)
        ]
        for rank in range(2)
    ]
    assert shards[0] and shards[1]
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == everything
    assert len(shards[0]) + len(shards[1]) == len(everything)


@pytest.mark.parametrize("streaming", [False, True])
def test_each_rank_reshuffles_every_epoch(tokenizer, cache_dir, streaming):
    cfg = gsm8k_config(
        cache_dir, max_records=24, streaming=streaming, shuffle=True, num_epochs=2, shuffle_buffer=8
    )
    ranks = [
        [
            tuple(example["input_ids"])
            for example in build_dataset(cfg, tokenizer, rank=rank, world_size=2)
        ]
        for rank in range(2)
    ]
    assert all(len(rows) == 24 for rows in ranks)  # 12 records per rank and epoch
    epochs = [ranks[0][:12] + ranks[1][:12], ranks[0][12:] + ranks[1][12:]]
    assert len(set(epochs[0])) == 24 and set(epochs[0]) == set(epochs[1])  # each epoch: all once
    assert ranks[0][:12] != ranks[0][12:]  # a new order (and split) every epoch


def test_streaming_matches_map_style(tokenizer, cache_dir):
    cfg = gsm8k_config(cache_dir, max_records=10)
    assert list(build_dataset(cfg, tokenizer)) == list(
        build_dataset(gsm8k_config(cache_dir, max_records=10, streaming=True), tokenizer)
    )


# ------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("streaming", [False, True])
def test_resumed_stream_yields_the_same_next_examples(tokenizer, cache_dir, streaming):
    # 12 records per epoch, shuffled per epoch, looping forever: resume across an epoch boundary.
    cfg = gsm8k_config(
        cache_dir,
        max_records=12,
        shuffle=True,
        seed=5,
        num_epochs=None,
        streaming=streaming,
        shuffle_buffer=8,
    )
    stream = build_dataset(cfg, tokenizer)
    iterator = iter(stream)
    first = [next(iterator) for _ in range(17)]
    state = json.loads(json.dumps(stream.state_dict()))  # plain values
    expected = [next(iterator) for _ in range(10)]
    assert stream.epoch >= 2
    # Epochs are reshuffled: the second epoch does not repeat the first one's order.
    assert [e["input_ids"] for e in first[:12]] != [e["input_ids"] for e in first[12:]] + [
        e["input_ids"] for e in expected[:7]
    ]

    resumed = build_dataset(cfg, tokenizer)
    resumed.load_state_dict(state)
    assert [next(iter(resumed)) for _ in range(10)] == expected
    assert resumed.stats.summary() == stream.stats.summary()

    with pytest.raises(ValueError, match="seed"):
        build_dataset(
            gsm8k_config(cache_dir, max_records=12, seed=6, streaming=streaming), tokenizer
        ).load_state_dict(state)


def test_resumed_packed_pretrain_stream(tokenizer, documents, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": doc} for doc in documents])
    cfg = DataConfig(kind="pretrain", path=str(path), max_length=40, pack=True, seed=2)
    stream = build_dataset(cfg, tokenizer)
    iterator = iter(stream)
    for _ in range(23):
        next(iterator)
    state = stream.state_dict()
    assert state["pack_buffer"]
    expected = [next(iterator) for _ in range(30)]
    resumed = build_dataset(cfg, tokenizer)
    resumed.load_state_dict(state)
    assert list(itertools.islice(resumed, 30)) == expected


def test_resumed_bucketed_batch_iterator_yields_the_same_next_batch(tokenizer, cache_dir):
    cfg = gsm8k_config(cache_dir, max_records=30, shuffle=True, num_epochs=None)
    collator = Collator(tokenizer.pad_token_id, max_length=512)
    batches = BatchIterator(build_dataset(cfg, tokenizer), collator, 3, bucket_batches=4, seed=9)
    iterator = iter(batches)
    for _ in range(6):  # into the second window of 4 batches
        next(iterator)
    state = copy.deepcopy(batches.state_dict())
    expected = [next(iterator) for _ in range(5)]
    resumed = BatchIterator(build_dataset(cfg, tokenizer), collator, 3, bucket_batches=4, seed=9)
    resumed.load_state_dict(state)
    for got, want in zip(resumed, expected):
        assert torch.equal(got.input_ids, want.input_ids)
        assert torch.equal(got.lengths, want.lengths)
        assert torch.equal(got.protected, want.protected)
    assert sum(1 for _ in zip(range(5), iter(resumed))) == 5


def test_length_bucketing_reduces_padding(tokenizer, cache_dir):
    cfg = gsm8k_config(cache_dir, max_records=96)
    collator = Collator(tokenizer.pad_token_id)

    def padded_tokens(bucket_batches):
        iterator = BatchIterator(
            build_dataset(cfg, tokenizer), collator, 4, bucket_batches=bucket_batches
        )
        batches = list(iterator)
        assert sum(batch.batch_size for batch in batches) == 96 - 0
        return sum(batch.input_ids.numel() for batch in batches), sum(b.num_tokens for b in batches)

    plain_width, plain_tokens = padded_tokens(1)
    bucketed_width, bucketed_tokens = padded_tokens(8)
    assert plain_tokens == bucketed_tokens
    assert bucketed_width < 0.9 * plain_width


# ------------------------------------------------------------------------------ collation


def test_collator_flexmdm_shapes_and_padding():
    examples = [
        {"input_ids": [5, 6, 7, 8], "protected": [True, True, False, False]},
        {"input_ids": [9, 10], "protected": [True, False]},
        {"input_ids": [11]},
    ]
    batch = Collator(pad_token_id=0)(examples)
    assert batch.input_ids.shape == (3, 4) and batch.input_ids.dtype == torch.long
    assert batch.lengths.tolist() == [4, 2, 1]
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0], [11, 0, 0, 0]]
    assert batch.protected.tolist() == [
        [True, True, False, False],
        [True, False, False, False],
        [False] * 4,
    ]
    assert batch.response_mask.tolist() == [
        [False, False, True, True],
        [False, True, False, False],
        [True, False, False, False],
    ]
    assert batch.num_tokens == 7
    wide = Collator(0, pad_to="max_length", max_length=8)(examples)
    assert wide.input_ids.shape == (3, 8) and wide.lengths.tolist() == [4, 2, 1]
    assert not wide.protected[:, 4:].any() and (wide.input_ids[:, 4:] == 0).all()
    rounded = Collator(0, pad_to_multiple_of=3, max_length=5)(examples)
    assert rounded.input_ids.shape == (3, 5)  # 4 -> 6, capped at max_length 5
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids)
    with pytest.raises(ValueError, match="max_length"):
        Collator(0, max_length=3)(examples)
    with pytest.raises(ValueError, match="eos_token_id"):
        Collator(0, objective="mdm")


def test_collator_mdm_pads_with_eos_inside_the_response():
    examples = [
        {"input_ids": [5, 6, 7, 8], "protected": [True, True, False, False]},
        {"input_ids": [9, 10, 11], "protected": [True, True, False]},
    ]
    batch = Collator(0, eos_token_id=99, objective="mdm", pad_to="max_length", max_length=6)(
        examples
    )
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 99, 99], [9, 10, 11, 99, 99, 99]]
    assert batch.lengths.tolist() == [6, 6]  # the EOS padding is content for the MDM baseline
    assert batch.protected.tolist() == [[True, True] + [False] * 4, [True, True] + [False] * 4]
    assert batch.response_mask.tolist() == [[False, False] + [True] * 4] * 2
    longest = Collator(0, eos_token_id=99, objective="mdm")(examples)
    assert longest.input_ids.shape == (2, 4) and longest.lengths.tolist() == [4, 4]
    assert longest.input_ids[1, 3] == 99 and longest.response_mask[1].tolist() == [
        False,
        False,
        True,
        True,
    ]


# ------------------------------------------------------------------------------ config & errors


def test_config_validation_errors():
    with pytest.raises(ValueError, match="data.kind"):
        DataConfig(kind="chat")
    with pytest.raises(ValueError, match="unknown role"):
        DataConfig(kind="gsm8k", fields={"text": "body"})
    with pytest.raises(ValueError, match="data.path is required"):
        DataConfig(kind="sft")
    with pytest.raises(ValueError, match="pack"):
        DataConfig(kind="gsm8k", pack=True)
    with pytest.raises(TypeError, match="max_length"):
        DataConfig(max_length="1024")
    with pytest.raises(ValueError, match="on_bad_record"):
        DataConfig(on_bad_record="ignore")
    with pytest.raises(ValueError, match="unknown data option"):
        DataConfig.from_dict({"kind": "pretrain", "max_len": 10})
    with pytest.raises(TypeError, match="infill_markers"):
        DataConfig(kind="infill", infill_markers=("<a>",))
    assert DataConfig.from_dict(
        {"kind": "infill", "infill_markers": ["<a>", "<b>"]}
    ).infill_markers == ("<a>", "<b>")
    assert DataConfig(kind="gsm8k").resolved_fields == {"question": "question", "answer": "answer"}
    # EOS closes examples by default only where it carries meaning: the mdm objective (LLaDA SFT)
    # and packed pretraining rows; a FlexMDM models length by insertion.
    assert DataConfig(kind="gsm8k").resolved_append_eos is False
    assert DataConfig(kind="gsm8k", objective="mdm").resolved_append_eos is True
    assert DataConfig(kind="pretrain", pack=True).resolved_append_eos is True
    assert DataConfig(kind="gsm8k", append_eos=True).resolved_append_eos is True
    with pytest.raises(TypeError, match="append_eos"):
        DataConfig(append_eos="yes")


def test_missing_local_file_and_unreachable_hub(tokenizer, monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        build_dataset(DataConfig(kind="gsm8k", path=str(tmp_path / "nope.jsonl")), tokenizer)
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="data.path"):
        build_dataset(DataConfig(kind="gsm8k", cache_dir=str(tmp_path)), tokenizer)


# ------------------------------------------------------------------------------ Hub name / revision


@pytest.fixture
def load_dataset_calls(monkeypatch):
    """Replace `datasets.load_dataset` by a recorder returning a tiny in-memory dataset."""
    import datasets

    calls: list[tuple[tuple, dict]] = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([{"question": "Q?", "answer": "A\n#### 1"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_default_hub_config_name_and_revision_reach_load_dataset(load_dataset_calls, tmp_path):
    def hub_call(**values):
        load_dataset_calls.clear()
        load_records(DataConfig(**values))
        ((args, kwargs),) = load_dataset_calls
        return args, kwargs

    # GSM8K has two configs: its default Hub id gets "main" whether or not data.path names it.
    for values in ({"kind": "gsm8k"}, {"kind": "gsm8k", "path": "openai/gsm8k"}):
        args, kwargs = hub_call(**values)
        assert args == ("openai/gsm8k",) and kwargs["name"] == "main"
        assert "revision" not in kwargs
    assert hub_call(kind="gsm8k", path="openai/gsm8k", name="socratic")[1]["name"] == "socratic"
    assert "name" not in hub_call(kind="gsm8k", path="someone/gsm8k-copy")[1]
    args, kwargs = hub_call(kind="infill", path="OpenCoder-LLM/opc-sft-stage2")
    assert kwargs["name"] == "educational_instruct"
    # data.revision pins a Hub revision (e.g. the auto-converted Parquet branch).
    args, kwargs = hub_call(
        kind="pretrain", path="Skylion007/openwebtext", revision="refs/convert/parquet"
    )
    assert args == ("Skylion007/openwebtext",) and kwargs["revision"] == "refs/convert/parquet"
    assert "name" not in kwargs
    # Local files have no revision: a clear error instead of a silently ignored option.
    load_dataset_calls.clear()
    local = write_jsonl(tmp_path / "gsm8k.jsonl", read_gsm8k(2))
    with pytest.raises(ValueError, match="data.revision.*Hub datasets only"):
        load_records(DataConfig(kind="gsm8k", path=str(local), revision="main"))
    with pytest.raises(ValueError, match="data.revision.*Hub datasets only"):
        load_records(DataConfig(kind="gsm8k", path=str(tmp_path), revision="main"))
    with pytest.raises(ValueError, match="data.revision.*Hub datasets only"):
        DataConfig(kind="gsm8k", path="x.jsonl", source="json", revision="main")
    with pytest.raises(TypeError, match="data.revision"):
        DataConfig(revision=3)
    assert not load_dataset_calls


def test_llada_recipes_name_the_gsm8k_config_and_pin_openwebtext(load_dataset_calls):
    from retrofit.config import load_config

    for name in ("gsm8k", "mdm-gsm8k"):
        cfg = load_config(
            REPO / f"recipes/llada-8b/{name}.yaml", ["model.init_from=null"], check_files=False
        )
        assert (cfg.data.path, cfg.data.name) == ("openai/gsm8k", "main")
        load_dataset_calls.clear()
        load_records(cfg.data)
        ((args, kwargs),) = load_dataset_calls
        assert args == ("openai/gsm8k",) and kwargs["name"] == "main"
    from retrofit.data.sources import mixture_sources

    for name in ("transfer", "mdm-transfer"):  # issue 12: OpenWebText + Proof-Pile-2, as researched
        cfg = load_config(REPO / f"recipes/llada-8b/{name}.yaml", check_files=False)
        sources = {sub.path: sub for sub, _ in mixture_sources(cfg.data)}
        assert set(sources) == {"Skylion007/openwebtext", "EleutherAI/proof-pile-2"}
        openwebtext = sources["Skylion007/openwebtext"]
        assert re.fullmatch(r"[0-9a-f]{40}|refs/convert/parquet", openwebtext.revision)
        for sub in sources.values():
            load_dataset_calls.clear()
            load_records(sub)
            ((args, kwargs),) = load_dataset_calls
            assert args == (sub.path,) and kwargs.get("revision") == sub.revision
            if sub.path == "EleutherAI/proof-pile-2":
                assert kwargs["name"] == "default"  # arXiv + OpenWebMath + AlgebraicStack


# ------------------------------------------------------------------------------ special tokens


MASK_STRING = "<|mdm_mask|>"


def test_special_token_strings_in_content_are_plain_text(tokenizer, tmp_path):
    mask, eos = tokenizer.mask_token_id, tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids(MASK_STRING) == mask  # a special token of the vocab
    text = f"A web page quoting {MASK_STRING} and <|eos|> and <|pad|>{MASK_STRING}."
    ids = encode_text(tokenizer, text)
    assert mask not in ids and eos not in ids and tokenizer.pad_token_id not in ids
    assert decode(tokenizer, ids) == text  # round-trips through decode
    # Markup keeps its special tokens.
    assert encode_text(tokenizer, "<|eos|>", parse_special_tokens=True) == [eos]

    # Pretraining documents.
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": text}, {"text": "plain words"}])
    stream = build_dataset(
        DataConfig(kind="pretrain", path=str(docs), shuffle=False, num_epochs=1), tokenizer
    )
    rows = list(stream)
    assert len(rows) == 2 and not stream.stats.skipped
    assert decode(tokenizer, rows[0]["input_ids"]) == text
    assert all(mask not in row["input_ids"] and eos not in row["input_ids"] for row in rows)

    # SFT responses (plain prompt format: the prompt text is content as well).
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": f"Say {MASK_STRING}", "response": text}]
    )
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    (example,) = build_dataset(
        DataConfig(
            kind="sft", path=str(pairs), shuffle=False, num_epochs=1, response_suffix="<|eos|>"
        ),
        plain,
    )
    prompt_length = example["prompt_length"]
    assert mask not in example["input_ids"]
    assert decode(plain, example["input_ids"][:prompt_length]) == (
        f"<|bos|>User: Say {MASK_STRING}\nAssistant: "
    )
    response = example["input_ids"][prompt_length:]
    assert response[-1] == eos and eos not in response[:-1]  # only response_suffix is parsed
    assert decode(plain, response[:-1]) == text

    # Infilling: prefix / middle / suffix are content, the markers markup.
    marked = copy.deepcopy(tokenizer)
    record = {"instruction": "Fill in.", "output": f"a = '{MASK_STRING}'\nb = '<|eos|>'\nc = 3\n"}
    path = write_jsonl(tmp_path / "infill.jsonl", [record])
    _, (example,) = infill_examples(
        marked, path, add_marker_tokens=True, infill_markers=["<FIM_A>", "<FIM_B>"]
    )
    ids = example["input_ids"]
    assert mask not in ids and ids.count(eos) == 1 and ids[-1] == eos
    marker_a, marker_b = marked.convert_tokens_to_ids(["<FIM_A>", "<FIM_B>"])
    assert ids[example["middle_start"] - 1] == marker_a and ids[example["middle_end"]] == marker_b
    text = decode(marked, ids[example["prompt_length"] :])
    assert text.replace("<FIM_A>", "").replace("<FIM_B>", "") == record["output"] + "<|eos|>"


def test_mask_token_in_a_chat_prompt_is_skipped_and_refused_for_generation(
    tokenizer, plain_tokenizer, tmp_path
):
    mask = tokenizer.mask_token_id
    records = [
        {"prompt": f"What does {MASK_STRING} mean?", "response": "Nothing."},
        {"prompt": "What is 2+3?", "response": "5"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)

    def run(tok, policy="skip"):
        cfg = DataConfig(
            kind="sft", path=str(path), shuffle=False, num_epochs=1, on_bad_record=policy
        )
        stream = build_dataset(cfg, tok)
        return stream, list(stream)

    # The chat template renders the user text into markup that is parsed: the prompt would hold
    # the mask id, so the record is skipped and counted.
    stream, examples = run(tokenizer)
    assert stream.stats.skipped == {"mask_token_in_prompt": 1}
    assert len(examples) == 1 and mask not in examples[0]["input_ids"]
    with pytest.raises(BadRecordError, match="mask token"):
        run(tokenizer, "error")
    # Plain prompt format: the prompt is content, the record is kept with the string as text.
    stream, examples = run(plain_tokenizer)
    assert not stream.stats.skipped and len(examples) == 2
    assert all(mask not in example["input_ids"] for example in examples)

    # Generation prompts follow the same rule.
    prompt = records[0]["prompt"]
    with pytest.raises(ValueError, match="mask token"):
        encode_generation_inputs(tokenizer, [(prompt, None, None)], objective="flexmdm")
    (ids,), _ = encode_generation_inputs(plain_tokenizer, [(prompt, None, None)], objective="mdm")
    assert ids == examples[0]["input_ids"][: examples[0]["prompt_length"]]
    assert mask not in ids
    # Infilling tasks: prefix and suffix are content (no mask id, the training layout).
    prefix, suffix = f"x = '{MASK_STRING}'\n", "y = '<|eos|>'\n"
    (left,), (right,) = encode_generation_inputs(
        tokenizer, [("Fill in.", prefix, suffix)], objective="flexmdm"
    )
    example = build_infill_example(tokenizer, "Fill in.", prefix, "", suffix)
    assert left + right == example["input_ids"] and mask not in left + right
    assert tokenizer.eos_token_id not in right
    assert decode(tokenizer, right) == "<|fim_middle_end|>" + suffix


def test_mask_token_that_is_not_special_never_enters_a_row(tokenizer, tmp_path):
    # A backbone whose mask string is an ordinary added token: even content encoding matches it.
    local = copy.deepcopy(tokenizer)
    local.add_tokens(["<|mask2|>"], special_tokens=False)
    mask2 = local.convert_tokens_to_ids("<|mask2|>")
    docs = write_jsonl(
        tmp_path / "docs.jsonl", [{"text": "a <|mask2|> b"}, {"text": "clean text"}]
    )
    cfg = DataConfig(kind="pretrain", path=str(docs), shuffle=False, num_epochs=1)
    stream = build_dataset(cfg, local, mask_token_id=mask2)
    rows = list(stream)
    assert stream.stats.skipped == {"mask_token_in_content": 1}
    assert [decode(local, row["input_ids"]) for row in rows] == ["clean text"]
    # Markup that encodes to the mask id is a config error (every row would be skipped).
    with pytest.raises(ValueError, match="data.response_suffix encodes to the mask token"):
        build_dataset(
            DataConfig(kind="sft", path=str(docs), response_suffix=MASK_STRING), tokenizer
        )
    with pytest.raises(ValueError, match="data.infill_markers encodes to the mask token"):
        build_dataset(
            DataConfig(kind="infill", path=str(docs), infill_markers=[MASK_STRING, "<b>"]),
            tokenizer,
        )


def test_psm_template_markup_is_parsed_but_its_content_is_not(plain_tokenizer):
    local = copy.deepcopy(plain_tokenizer)
    from retrofit.tokenization import add_special_tokens

    fim_prefix, fim_suffix = add_special_tokens(local, ["<|fim_prefix|>", "<|fim_suffix|>"])
    template = "{instruction}\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}"
    prefix, suffix = "p = '<|fim_suffix|>'\n", "s = 1\n"
    example = build_infill_example(
        local, "Fill in.", prefix, "m = 2\n", suffix, objective="mdm", psm_template=template
    )
    prompt = example["input_ids"][: example["prompt_length"]]
    assert prompt.count(fim_prefix) == 1 and prompt.count(fim_suffix) == 1
    assert decode(local, prompt) == (
        f"<|bos|>User: Fill in.\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}\nAssistant: "
    )
    # Without special-token strings in the content, the ids equal a parse of the whole text.
    clean = build_infill_example(
        local, "Fill in.", "p = 0\n", "m = 2\n", suffix, objective="mdm", psm_template=template
    )
    text = "User: " + template.format(instruction="Fill in.", prefix="p = 0\n", suffix=suffix)
    expected = [local.bos_token_id] + encode_text(
        local, text + "\nAssistant: ", parse_special_tokens=True
    )
    assert clean["input_ids"][: clean["prompt_length"]] == expected


def test_psm_truncation_never_cuts_inside_a_character(tokenizer):
    """The MDM baseline shortens the suffix inside its prompt: never into a partial character."""
    lines = [
        "名前 = '日本語のテキスト'\n",
        "grüße = 'ÄÖÜ äöü ß'\n",
        "emoji = '🙂🚀✨'\n",
        "文字列 = '漢字とかな'\n",
        "café = 'crème brûlée'\n",
    ]
    records = [
        {"instruction": f"Complete snippet {i}.", "output": "".join(lines[i:] + lines[:i])}
        for i in range(len(lines))
    ]
    values = {"kind": "infill", "path": "-", "objective": "mdm", "shuffle": False, "num_epochs": 1,
              "seed": 3, "on_bad_record": "truncate"}

    def examples(max_length, record):
        cfg = DataConfig(**values, max_length=max_length)
        stream = ExampleStream(cfg, tokenizer, records=[record])
        return stream, list(stream)

    def prompt_suffix(example):
        prompt = decode(tokenizer, example["input_ids"][: example["prompt_length"]])
        return prompt, re.search(r"<suffix>(.*)</suffix>", prompt, re.DOTALL).group(1)

    checked = 0
    for record in records:
        _, (full,) = examples(4096, record)
        _, suffix = prompt_suffix(full)
        if len(encode_text(tokenizer, suffix)) < 16:
            continue
        for cut in range(1, 9):
            limit = full["length"] - cut
            stream, kept = examples(limit, record)
            assert not stream.stats.skipped, (cut, stream.stats.summary())
            (short,) = kept
            assert stream.stats.truncated == 1 and short["length"] <= limit
            prompt, short_suffix = prompt_suffix(short)
            assert "\ufffd" not in prompt
            assert suffix.startswith(short_suffix) and len(short_suffix) < len(suffix)
            # The response (the middle) is untouched.
            assert short["input_ids"][short["prompt_length"] :] == full["input_ids"][
                full["prompt_length"] :
            ]
            checked += 1
    assert checked >= 16


# ------------------------------------------------------------------------------ max_records


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_max_records_are_the_first_records_on_every_rank(tokenizer, tmp_path, streaming, shuffle):
    # Two files = two shards: split_dataset_by_node would hand each rank its own file.
    for part in range(2):
        write_jsonl(
            tmp_path / f"part-{part}.jsonl",
            [{"text": f"file {part} document {index}"} for index in range(20)],
        )
    cfg = DataConfig(
        kind="pretrain", path=str(tmp_path / "part-*.jsonl"), streaming=streaming,
        shuffle=shuffle, seed=4, shuffle_buffer=8, max_records=10, num_epochs=1,
    )  # fmt: skip

    def texts(rank, world_size):
        stream = build_dataset(cfg, tokenizer, rank=rank, world_size=world_size)
        return [decode(tokenizer, row["input_ids"]) for row in stream]

    first = {f"file 0 document {index}" for index in range(10)}
    assert set(texts(0, 1)) == first
    for world_size in (2, 3):
        shards = [texts(rank, world_size) for rank in range(world_size)]
        assert all(shards)
        assert sum(len(shard) for shard in shards) == 10  # disjoint ...
        assert set().union(*shards) == first  # ... and exactly the first 10 records
