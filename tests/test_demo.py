"""The CPU demo (`retrofit demo`): the bracket task's pieces, and the whole path at test size."""

from __future__ import annotations

import json
import math
import random
import re
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest

from retrofit.demo import (
    LENGTH_DISTRIBUTION,
    MAX_MIDDLE,
    bayes_expected_missing,
    build_bracket_tokenizer,
    cli_main,
    is_balanced,
    make_infill_tasks,
    random_dyck,
    sample_dyck_strings,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> tuple[int, int]:
    """Parse the PNG chunk structure (CRC of every chunk) and return (width, height)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    offset, chunks, size = 8, [], None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in chunk {kind!r}"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        chunks.append(kind)
        offset += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    assert size is not None and size[0] > 100 and size[1] > 100
    return size


# ------------------------------------------------------------------------------------------
# The bracket task
# ------------------------------------------------------------------------------------------


def test_random_dyck_is_balanced_and_uniform() -> None:
    rng = random.Random(0)
    for pairs in range(12):
        text = random_dyck(pairs, rng)
        assert len(text) == 2 * pairs
        assert pairs == 0 or is_balanced(text)
    # 3 pairs: the 5 Dyck words (Catalan(3)) are equally likely.
    counts = Counter(random_dyck(3, rng) for _ in range(5000))
    assert set(counts) == {"((()))", "(()())", "(())()", "()(())", "()()()"}
    assert all(abs(count / 5000 - 0.2) < 0.03 for count in counts.values())


def test_is_balanced() -> None:
    assert is_balanced("()") and is_balanced("(()())")
    for text in ("", "(", ")(", "(()", "())(", "(x)", "()<|eos|>"):
        assert not is_balanced(text)


def test_sample_dyck_strings_follow_the_length_distribution() -> None:
    strings = sample_dyck_strings(20_000, random.Random(1))
    counts = Counter(len(text) for text in strings)
    assert set(counts) == set(LENGTH_DISTRIBUTION)
    for length, probability in LENGTH_DISTRIBUTION.items():
        assert abs(counts[length] / len(strings) - probability) < 0.015
    assert all(is_balanced(text) for text in strings)
    with pytest.raises(ValueError, match="even"):
        sample_dyck_strings(1, random.Random(0), {5: 1.0})


def test_infill_tasks_protocol() -> None:
    heldout = sample_dyck_strings(500, random.Random(2))
    tasks = make_infill_tasks(heldout, 300, random.Random(3))
    for task in tasks:
        whole = task.prefix + task.middle + task.suffix
        assert len(whole) in (16, 32) and is_balanced(whole)
        assert task.prefix and task.suffix and 1 <= len(task.middle) <= MAX_MIDDLE


def test_bracket_tokenizer_ids_and_round_trip(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from retrofit.data import encode_prompt

    tokenizer = build_bracket_tokenizer()
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.get_vocab() == {"(": 0, ")": 1, "<|mdm_mask|>": 2, "<|eos|>": 3, "<|bos|>": 4}
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 3 and tokenizer.mask_token_id == 2
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = reloaded("(()<|mdm_mask|>)", add_special_tokens=False)["input_ids"]
    assert ids == [0, 0, 1, 2, 1]
    # Every prompt renders to BOS alone (the data layer's chat-template path).
    assert encode_prompt(reloaded, "balanced brackets") == [4]


def test_bayes_expected_missing() -> None:
    mean_length = sum(length * p for length, p in LENGTH_DISTRIBUTION.items())
    # At t = 0 (alpha = 0) nothing is present: the whole expected length is missing.
    assert bayes_expected_missing(0, 0.0) == pytest.approx(mean_length)
    # Nearly all present: almost nothing missing.
    assert bayes_expected_missing(64, 0.999) == pytest.approx(0.0, abs=0.1)
    # One token present at alpha -> 0: the posterior over L is size-biased, p(L) L / E[L].
    size_biased = sum(length**2 * p for length, p in LENGTH_DISTRIBUTION.items()) / mean_length
    assert bayes_expected_missing(1, 1e-9) == pytest.approx(size_biased - 1, rel=1e-6)
    # 20 tokens present rule out lengths 4 and 16: with alpha = 0.5 the posterior favours L = 32.
    expected = bayes_expected_missing(20, 0.5)
    weights = {L: p * math.comb(L, 20) * 0.5**L for L, p in LENGTH_DISTRIBUTION.items() if L >= 20}
    direct = sum((L - 20) * w for L, w in weights.items()) / sum(weights.values())
    assert expected == pytest.approx(direct)
    assert 12 - 1e-9 <= expected <= 44


# ------------------------------------------------------------------------------------------
# End to end, test size
# ------------------------------------------------------------------------------------------

TABLE_ROW = re.compile(
    r"^\| (FlexMDM \(retrofit\)|MDM baseline) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$"
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "demo_output"
    assert cli_main(["--quick", "--output", str(output)]) == 0
    printed = capsys.readouterr().out

    # The table, printed and in results.md, with one well-formed row per arm.
    markdown = (output / "results.md").read_text()
    rows = {}
    for line in markdown.splitlines():
        match = TABLE_ROW.match(line)
        if match:
            rows[match.group(1)] = [float(value) for value in match.groups()[1:]]
            assert line in printed
    assert set(rows) == {"FlexMDM (retrofit)", "MDM baseline"}
    for w1, valid, infill in rows.values():
        assert 0 <= w1 <= 128 and 0 <= valid <= 100 and 0 <= infill <= 100
    assert (
        "![lengths](lengths.png)" in markdown
        and "retrofit train recipes/tiny/demo-flexmdm.yaml" in markdown
    )

    # PNGs: the combined histogram and one per arm.
    for png in ("lengths.png", "eval/lengths_flexmdm.png", "eval/lengths_mdm.png"):
        _check_png(output / png)

    # JSON summaries agree with the table.
    summary = json.loads((output / "results.json").read_text())
    for arm, title in (("flexmdm", "FlexMDM (retrofit)"), ("mdm", "MDM baseline")):
        table = summary["table"][arm]
        assert rows[title] == pytest.approx(
            [
                round(table["length_w1"], 2),
                round(table["valid_pct"], 1),
                round(table["infill_ok_pct"], 1),
            ],
            abs=0.011,
        )
        metrics = json.loads((output / "eval" / f"{arm}_metrics.json").read_text())
        assert metrics["num_samples"] == len(metrics["lengths"]) == 24
        assert all(0 <= length <= 128 for length in metrics["lengths"])
        # Both benchmarks ran through the eval runner: per-sample records and a summary each.
        runs = output / "eval" / arm
        samples = [
            json.loads(line)
            for line in (runs / "unconditional" / "samples.jsonl").read_text().splitlines()
        ]
        assert len(samples) == 24 and all(set(s["generated"]) <= {"(", ")"} for s in samples)
        assert [s["correct"] for s in samples] == [is_balanced(s["generated"]) for s in samples]
        assert [s["generated_tokens"] for s in samples] == metrics["lengths"]
        unconditional = json.loads((runs / "unconditional" / "summary.json").read_text())
        assert unconditional["metric"] == "accuracy" and unconditional["num_samples"] == 24
        assert 100 * unconditional["accuracy"] == pytest.approx(table["valid_pct"])
        assert unconditional["lengths"]["wasserstein_1"] == pytest.approx(table["length_w1"])
        tasks = {
            record["task_id"]: record
            for record in map(json.loads, (output / "data" / "eval_infill.jsonl").read_text().splitlines())
        }
        infill = [
            json.loads(line)
            for line in (runs / "infill" / "samples.jsonl").read_text().splitlines()
        ]
        assert len(infill) == 16
        for record in infill:
            task = tasks[record["task_id"]]
            assert record["correct"] == is_balanced(
                task["prefix"] + record["generated"] + task["suffix"]
            )
        _check_png(runs / "infill" / "lengths.png")
        assert (output / arm / "final" / "retrofit_config.json").is_file()
        assert (output / arm / "train_summary.json").is_file()
    bayes = summary["bayes"]["table"]
    assert [row["t"] for row in bayes] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert all(row["head_total"] >= 0 and row["bayes_total"] >= 0 for row in bayes)
    assert summary["timings"]["total"] > 0

    # The pretrained MDM is cached: the pretrain stage alone reuses it.
    pretrain_final = Path(summary["pretrain"]["final"])
    assert (pretrain_final / "config.json").is_file()
    assert cli_main(["--quick", "--output", str(output), "--stage", "pretrain"]) == 0
    assert "found in the cache" in capsys.readouterr().out
