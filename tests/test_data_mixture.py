"""data.mixture: several sources interleaved in the stated (token or record) proportions, resumable."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from retrofit.data import DataConfig, ExampleStream
from retrofit.tokenization import build_char_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def write_docs(path: Path, count: int, words: int, column: str, seed: int, tag: str) -> Path:
    """``count`` documents of about ``words`` words, each starting with ``tag`` (its source)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(count):
            text = tag + " ".join(rng.choice(WORDS) for _ in range(rng.randint(words // 2, words * 3 // 2)))
            handle.write(json.dumps({column: text}) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer("abcdefghijklmnopqrstuvwxyz ", unk_token="<|unk|>")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixture")
    short = write_docs(folder / "web.jsonl", 3000, 4, "text", seed=1, tag="w ")      # ~25 characters
    long = write_docs(folder / "math.jsonl", 400, 40, "content", seed=2, tag="m ")   # ~250 characters
    return short, long


def mixture_cfg(sources, unit: str, weights=(0.25, 0.75), **extra) -> DataConfig:
    short, long = sources
    return DataConfig(kind="pretrain", max_length=4096, seed=3, mixture_unit=unit, mixture=[
        {"path": str(short), "weight": weights[0]},
        {"path": str(long), "weight": weights[1], "fields": {"text": "content"}},
    ], **extra)


def shares(rows, tokenizer) -> tuple[float, float]:
    """(share of rows, share of tokens) that come from the long-document source."""
    tag = tokenizer.convert_tokens_to_ids("m")
    long_rows = [row for row in rows if row["input_ids"][0] == tag]
    return len(long_rows) / len(rows), sum(r["length"] for r in long_rows) / sum(r["length"] for r in rows)


@pytest.mark.parametrize("unit", ["tokens", "records"])
def test_mixture_proportions(sources, tokenizer, unit):
    stream = ExampleStream(mixture_cfg(sources, unit), tokenizer, eos_token_id=tokenizer.eos_token_id)
    rows = [next(iter(stream)) for _ in range(2000)]
    row_share, token_share = shares(rows, tokenizer)
    if unit == "tokens":
        assert token_share == pytest.approx(0.75, abs=0.04)
        assert row_share < 0.35  # long records are drawn less often to reach the token share
    else:
        assert row_share == pytest.approx(0.75, abs=0.04)


def test_mixture_resumes_at_the_same_position(sources, tokenizer):
    cfg = mixture_cfg(sources, "tokens")
    first = ExampleStream(cfg, tokenizer, eos_token_id=tokenizer.eos_token_id)
    iterator = iter(first)
    for _ in range(137):
        next(iterator)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    expected = [next(iterator)["input_ids"] for _ in range(50)]
    resumed = ExampleStream(cfg, tokenizer, eos_token_id=tokenizer.eos_token_id)
    resumed.load_state_dict(state)
    assert [next(iter(resumed))["input_ids"] for _ in range(50)] == expected


def test_mixture_ranks_split_the_one_stream(sources, tokenizer):
    """Two ranks read disjoint parts of the one interleaved stream (a cycled source repeats its
    records, so rows are compared as multisets against a single process)."""
    from collections import Counter

    cfg = mixture_cfg(sources, "records", num_epochs=1, shuffle=False)
    whole = Counter(tuple(row["input_ids"]) for row in
                    ExampleStream(cfg, tokenizer, eos_token_id=tokenizer.eos_token_id))
    parts = [Counter(tuple(row["input_ids"]) for row in
                     ExampleStream(cfg, tokenizer, rank=rank, world_size=2,
                                   eos_token_id=tokenizer.eos_token_id)) for rank in range(2)]
    assert parts[0] and parts[1] and parts[0] + parts[1] == whole


def test_mixture_config_errors(sources):
    short, _ = sources
    with pytest.raises(ValueError, match="data.path and data.mixture"):
        DataConfig(kind="pretrain", path=str(short), mixture=[{"path": str(short), "weight": 1}])
    with pytest.raises(ValueError, match=r"mixture\[0\].weight must be a positive number"):
        DataConfig(kind="pretrain", mixture=[{"path": str(short), "weight": 0}])
    with pytest.raises(ValueError, match=r"mixture\[0\] has unknown keys \['probability'\]"):
        DataConfig(kind="pretrain", mixture=[{"path": str(short), "probability": 1}])
    with pytest.raises(ValueError, match="mixture_unit"):
        DataConfig(kind="pretrain", mixture=[{"path": str(short), "weight": 1}], mixture_unit="bytes")
